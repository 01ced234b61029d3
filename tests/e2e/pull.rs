//! Cloud to edge (issue 13), the cloud's side: `sluice.publish` and
//! `sluice.pull` against a real PostgreSQL, through ordinary sessions (a
//! pull serves only committed transactions below its snapshot's xmin, so
//! these need transactions of their own, which a `#[pg_test]` cannot give).
//! Batches are decoded with `sluice_wire::decode` and compared row by row.

use postgres::{Client, NoTls};
use sluice_tests::*;
use sluice_wire::{decode, Batch, Value};

fn connect(db: &CloudDb) -> Client {
    Client::connect(&db.url, NoTls).unwrap()
}

fn setup(test: &str) -> (CloudDb, Client) {
    let db = empty_cloud_db(test);
    let mut c = connect(&db);
    c.batch_execute(
        "CREATE EXTENSION sluice CASCADE;
         CREATE TABLE configs (
             location_id text NOT NULL,
             camera_id   text NOT NULL,
             settings    jsonb,
             threshold   double precision,
             enabled     boolean,
             device      text,
             valid_from  timestamptz,
             status      text,
             PRIMARY KEY (location_id, camera_id));
         SELECT sluice.publish('configs',
             columns => ARRAY['location_id', 'camera_id', 'settings', 'threshold', 'enabled', 'device', 'valid_from'],
             tenant_column => 'location_id', device_column => 'device');",
    )
    .unwrap();
    (db, c)
}

#[derive(Debug)]
struct Pulled {
    batch: Option<Batch>,
    checkpoint: i64,
    cursor: Option<String>,
    more: bool,
    rows: i32,
}

#[allow(clippy::too_many_arguments)]
fn try_pull(
    c: &mut Client,
    device: &str,
    checkpoint: i64,
    stream: i64,
    max_rows: i32,
    cursor: Option<&str>,
    tenant: Option<&str>,
) -> Result<Pulled, String> {
    let row = c
        .query_one(
            "SELECT batch, checkpoint, cursor, more, rows FROM sluice.pull('configs', $1, $2, $3, $4, $5, $6)",
            &[&device, &checkpoint, &stream, &max_rows, &cursor, &tenant],
        )
        .map_err(|e| pg_error(&e))?;
    let bytes: Option<Vec<u8>> = row.get(0);
    Ok(Pulled {
        batch: bytes.map(|b| decode(&b).unwrap()),
        checkpoint: row.get(1),
        cursor: row.get(2),
        more: row.get(3),
        rows: row.get(4),
    })
}

fn pull(c: &mut Client, device: &str, checkpoint: i64, stream: i64, tenant: &str) -> Pulled {
    try_pull(c, device, checkpoint, stream, 10_000, None, Some(tenant)).unwrap()
}

fn stream(c: &mut Client) -> i64 {
    c.query_one(
        "SELECT stream_id FROM sluice.publications WHERE edge_table = 'configs'",
        &[],
    )
    .unwrap()
    .get(0)
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(r) => r.to_string(),
        Value::Text(s) => s.clone(),
        Value::Blob(b) => format!("{b:?}"),
    }
}

/// The rows of a batch as `+loc/cam settings threshold enabled device
/// valid_from` (upserts) or `-loc/cam` (tombstones), in batch order.
fn rows(b: &Batch) -> Vec<String> {
    (0..b.versions.len())
        .map(|r| {
            let v: Vec<String> = b.columns.iter().map(|c| text(&c[r])).collect();
            if b.deleted.get(r).copied().unwrap_or(false) {
                assert!(
                    v[2..].iter().all(|x| x == "-"),
                    "a tombstone carries the key only: {v:?}"
                );
                format!("-{}/{}", v[0], v[1])
            } else {
                format!("+{}/{} {}", v[0], v[1], v[2..].join(" "))
            }
        })
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Pulls a whole snapshot (pages of `max_rows`); its rows and checkpoint.
fn snapshot(c: &mut Client, device: &str, tenant: &str, max_rows: i32) -> (Vec<String>, i64, u32) {
    let mut cursor: Option<String> = None;
    let mut all = Vec::new();
    let mut pages = 0;
    loop {
        let p = try_pull(c, device, 0, 0, max_rows, cursor.as_deref(), Some(tenant)).unwrap();
        let b = p.batch.unwrap();
        let ch = b.header.changes.unwrap();
        pages += 1;
        assert_eq!(ch.snapshot_page, pages);
        assert_eq!(b.header.base_seq, 0);
        assert!(b.versions.iter().all(|&v| v == b.header.last_seq));
        assert_eq!(ch.last_page, !p.more);
        assert!(p.rows <= max_rows);
        all.extend(rows(&b));
        if !p.more {
            assert!(p.cursor.is_none());
            return (all, p.checkpoint, pages);
        }
        cursor = p.cursor;
    }
}

#[test]
fn incremental_pulls_carry_upserts_tombstones_key_changes_and_moves() {
    let (_db, mut c) = setup("pull_incr");
    c.batch_execute(
        "INSERT INTO configs VALUES
           ('lyon', 'cam-1', '{\"fps\": 10}', 0.5, true, NULL, '2026-11-22 10:15:03.25+00', NULL),
           ('lyon', 'cam-2', '{}', NULL, false, 'box-2', NULL, NULL),
           ('paris', 'cam-1', '{}', 1, true, NULL, NULL, NULL);",
    )
    .unwrap();
    let s = stream(&mut c);
    let (snap, cp, _) = snapshot(&mut c, "box-1", "lyon", 100);
    assert_eq!(
        snap,
        ["+lyon/cam-1 {\"fps\": 10} 0.5 1 - 2026-11-22T10:15:03.250Z"],
        "box-1 of lyon gets lyon's rows for every device, not box-2's, not paris'"
    );
    // Nothing new: no batch, the same checkpoint.
    let p = pull(&mut c, "box-1", cp, s, "lyon");
    assert!(p.batch.is_none() || p.rows == 0);

    c.batch_execute("UPDATE configs SET threshold = 0.75 WHERE camera_id = 'cam-1'")
        .unwrap();
    c.batch_execute(
        "INSERT INTO configs VALUES ('lyon', 'cam-3', NULL, 2, true, NULL, NULL, NULL)",
    )
    .unwrap();
    // An edge-owned column only: nothing to send.
    c.batch_execute("UPDATE configs SET status = 'applied'")
        .unwrap();
    let p = pull(&mut c, "box-1", cp, s, "lyon");
    let b = p.batch.unwrap();
    assert_eq!((b.header.base_seq, b.header.last_seq), (cp, p.checkpoint));
    assert_eq!(b.header.changes.unwrap().snapshot_page, 0);
    assert_eq!(b.header.stream_id as i64, s);
    assert_eq!(b.header.device_id, "box-1");
    assert_eq!(
        rows(&b),
        [
            "+lyon/cam-1 {\"fps\": 10} 0.75 1 - 2026-11-22T10:15:03.250Z",
            "+lyon/cam-3 - 2 1 - -"
        ]
    );
    assert!(b.versions[0] < b.versions[1] && b.versions[0] > cp);
    let cp = p.checkpoint;

    // A key change, a delete, a move to paris, a row addressed to box-2
    // then to box-1, and one moved from every device to box-2.
    c.batch_execute(
        "BEGIN;
         UPDATE configs SET camera_id = 'cam-9' WHERE location_id = 'lyon' AND camera_id = 'cam-3';
         COMMIT;
         DELETE FROM configs WHERE location_id = 'paris';
         UPDATE configs SET device = 'box-1' WHERE camera_id = 'cam-2';",
    )
    .unwrap();
    let p = pull(&mut c, "box-1", cp, s, "lyon");
    assert_eq!(
        sorted(rows(&p.batch.unwrap())),
        [
            "+lyon/cam-2 {} - 0 box-1 -",
            "+lyon/cam-9 - 2 1 - -",
            "-lyon/cam-3"
        ]
    );
    let cp1 = p.checkpoint;
    c.batch_execute(
        "UPDATE configs SET location_id = 'paris' WHERE camera_id = 'cam-9';
         UPDATE configs SET device = 'box-2' WHERE camera_id = 'cam-1';",
    )
    .unwrap();
    let p = pull(&mut c, "box-1", cp1, s, "lyon");
    assert_eq!(
        sorted(rows(&p.batch.unwrap())),
        ["-lyon/cam-1", "-lyon/cam-9"]
    );
    // Paris sees its new row, box-2 of lyon its own.
    let (paris, _, _) = snapshot(&mut c, "box-7", "paris", 10);
    assert_eq!(paris, ["+paris/cam-9 - 2 1 - -"]);
    let (box2, _, _) = snapshot(&mut c, "box-2", "lyon", 10);
    assert_eq!(
        box2,
        ["+lyon/cam-1 {\"fps\": 10} 0.75 1 box-2 2026-11-22T10:15:03.250Z"]
    );

    // Replay safety: the same checkpoint gives the same changes.
    let again = pull(&mut c, "box-1", cp1, s, "lyon");
    assert_eq!(
        sorted(rows(&again.batch.unwrap())),
        ["-lyon/cam-1", "-lyon/cam-9"]
    );
    let again = pull(&mut c, "box-1", cp, s, "lyon");
    assert_eq!(
        sorted(rows(&again.batch.unwrap())),
        [
            "+lyon/cam-2 {} - 0 box-1 -",
            "-lyon/cam-1",
            "-lyon/cam-3",
            "-lyon/cam-9"
        ],
        "every key once, as it is now"
    );

    // The subscription records what the device acknowledged.
    let r = c
        .query_one(
            "SELECT v.checkpoint, s.stream_id, v.tenant, v.pending FROM sluice.subscription_status v
             JOIN sluice.subscriptions s USING (device_id, edge_table) WHERE device_id = 'box-1'",
            &[],
        )
        .unwrap();
    assert_eq!((r.get::<_, i64>(0), r.get::<_, i64>(1)), (cp, s));
    assert_eq!(r.get::<_, String>(2), "lyon");
    assert!(r.get::<_, i64>(3) >= 4);
}

#[test]
fn batches_are_cut_between_transactions() {
    let (_db, mut c) = setup("pull_cut");
    let s = stream(&mut c);
    let (_, cp, _) = snapshot(&mut c, "box-1", "lyon", 10);
    // Three transactions of 3, 1 and 2 rows.
    for sql in [
        "INSERT INTO configs (location_id, camera_id) VALUES ('lyon', 'a'), ('lyon', 'b'), ('lyon', 'c')",
        "INSERT INTO configs (location_id, camera_id) VALUES ('lyon', 'd')",
        "INSERT INTO configs (location_id, camera_id) VALUES ('lyon', 'e'), ('lyon', 'f')",
    ] {
        c.batch_execute(sql).unwrap();
    }
    let p = try_pull(&mut c, "box-1", cp, s, 2, None, Some("lyon")).unwrap();
    assert_eq!(
        (p.rows, p.more),
        (3, true),
        "a transaction larger than max_rows goes whole"
    );
    let b = p.batch.unwrap();
    assert!(b.versions.iter().all(|&v| v == p.checkpoint));
    let p = try_pull(&mut c, "box-1", p.checkpoint, s, 2, None, Some("lyon")).unwrap();
    assert_eq!(
        (p.rows, p.more),
        (1, true),
        "never split a transaction to fill a batch"
    );
    let p = try_pull(&mut c, "box-1", p.checkpoint, s, 2, None, Some("lyon")).unwrap();
    assert_eq!((p.rows, p.more), (2, false));
    assert_eq!(
        rows(&p.batch.unwrap()),
        ["+lyon/e - - - - -", "+lyon/f - - - - -"]
    );
    let p2 = try_pull(&mut c, "box-1", p.checkpoint, s, 2, None, Some("lyon")).unwrap();
    assert_eq!(p2.rows, 0);
}

#[test]
fn snapshots_page_in_key_order_and_come_again_when_needed() {
    let (_db, mut c) = setup("pull_snap");
    c.batch_execute(
        "INSERT INTO configs (location_id, camera_id, device)
         SELECT 'lyon', 'cam-' || lpad(i::text, 3, '0'), CASE WHEN i % 10 = 0 THEN 'box-2' END
         FROM generate_series(1, 95) i;
         INSERT INTO configs (location_id, camera_id) VALUES ('paris', 'cam-001');",
    )
    .unwrap();
    let (rows1, cp, pages) = snapshot(&mut c, "box-1", "lyon", 20);
    assert_eq!(pages, 5);
    assert_eq!(rows1.len(), 95 - 9);
    assert_eq!(rows1, sorted(rows1.clone()), "pages in key order");
    assert!(rows1.iter().all(|r| r.starts_with("+lyon/")));
    let s = stream(&mut c);
    // Incremental from the snapshot's checkpoint: nothing.
    let p = pull(&mut c, "box-1", cp, s, "lyon");
    assert_eq!(p.rows, 0);
    let cp = p.checkpoint.max(cp);

    // A stream the publication no longer has: a snapshot.
    let p = pull(&mut c, "box-1", cp, s ^ 1, "lyon");
    let ch = p.batch.unwrap().header.changes.unwrap();
    assert_eq!(ch.snapshot_page, 1);

    // Publishing with another scope makes a new stream: a snapshot.
    c.batch_execute(
        "SELECT sluice.publish('configs',
             columns => ARRAY['location_id', 'camera_id', 'settings', 'threshold', 'enabled', 'device', 'valid_from'],
             tenant_column => 'location_id')",
    )
    .unwrap();
    let s2 = stream(&mut c);
    assert_ne!(s2, s);
    let p = pull(&mut c, "box-1", cp, s, "lyon");
    assert_eq!(p.batch.unwrap().header.changes.unwrap().snapshot_page, 1);
    // The same settings again keep the stream.
    c.batch_execute(
        "SELECT sluice.publish('configs',
             columns => ARRAY['location_id', 'camera_id', 'settings', 'threshold', 'enabled', 'device', 'valid_from'],
             tenant_column => 'location_id', horizon => '1 day')",
    )
    .unwrap();
    assert_eq!(stream(&mut c), s2);
    let (all, cp, _) = snapshot(&mut c, "box-1", "lyon", 1000);
    assert_eq!(all.len(), 95, "without a device column, every lyon row");

    // A cursor whose stream changed begins again at page 1.
    let p = try_pull(&mut c, "box-1", 0, 0, 10, None, Some("lyon")).unwrap();
    let old_cursor = p.cursor.unwrap();
    c.batch_execute(
        "SELECT sluice.publish('configs',
             columns => ARRAY['location_id', 'camera_id', 'settings', 'threshold', 'enabled', 'device'],
             tenant_column => 'location_id')",
    )
    .unwrap();
    let p = try_pull(&mut c, "box-1", 0, 0, 10, Some(&old_cursor), Some("lyon")).unwrap();
    let b = p.batch.unwrap();
    assert_eq!(b.header.changes.unwrap().snapshot_page, 1);
    assert_eq!(b.header.columns.len(), 6);
    assert!(
        try_pull(&mut c, "box-1", 0, 0, 10, Some("s1:nonsense"), Some("lyon"))
            .unwrap_err()
            .contains("(22023)")
    );

    // Purged past the device's checkpoint (no subscription pulled within
    // the horizon): a snapshot.
    let s3 = stream(&mut c);
    let (_, cp3, _) = snapshot(&mut c, "box-1", "lyon", 1000);
    let _ = cp;
    c.batch_execute(
        "UPDATE configs SET threshold = 3 WHERE camera_id = 'cam-001';
         UPDATE sluice.subscriptions SET last_pulled = now() - interval '30 days';",
    )
    .unwrap();
    let purged: i64 = c
        .query_one("SELECT sluice.purge_changes()", &[])
        .unwrap()
        .get(0);
    assert!(purged >= 2, "{purged}");
    let through: i64 = c
        .query_one("SELECT purged_through FROM sluice.publications", &[])
        .unwrap()
        .get(0);
    assert!(through > cp3);
    let p = pull(&mut c, "box-1", cp3, s3, "lyon");
    assert_eq!(p.batch.unwrap().header.changes.unwrap().snapshot_page, 1);
    let snapshots: i64 = c
        .query_one(
            "SELECT snapshots FROM sluice.subscriptions WHERE device_id = 'box-1'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(snapshots >= 5, "{snapshots}");
}

#[test]
fn purge_keeps_what_a_recent_subscription_has_not_acknowledged() {
    let (_db, mut c) = setup("pull_purge");
    let s = stream(&mut c);
    let (_, cp, _) = snapshot(&mut c, "box-1", "lyon", 10);
    // Acknowledge the snapshot's checkpoint, then changes arrive.
    pull(&mut c, "box-1", cp, s, "lyon");
    c.batch_execute("INSERT INTO configs (location_id, camera_id) VALUES ('lyon', 'a')")
        .unwrap();
    assert_eq!(
        c.query_one("SELECT sluice.purge_changes()", &[])
            .unwrap()
            .get::<_, i64>(0),
        0
    );
    let p = pull(&mut c, "box-1", cp, s, "lyon");
    assert_eq!(rows(&p.batch.unwrap()), ["+lyon/a - - - - -"]);
    // Acknowledged: purged.
    pull(&mut c, "box-1", p.checkpoint, s, "lyon");
    assert_eq!(
        c.query_one("SELECT sluice.purge_changes()", &[])
            .unwrap()
            .get::<_, i64>(0),
        1
    );
    let p = pull(&mut c, "box-1", p.checkpoint, s, "lyon");
    assert_eq!(
        p.batch
            .map(|b| b.header.changes.unwrap().snapshot_page)
            .unwrap_or(0),
        0
    );
}

#[test]
fn a_device_role_reads_its_own_scope_only() {
    let (_db, mut c) = setup("pull_scope");
    let role = format!("pull_lyon_{}", std::process::id());
    let other = format!("pull_paris_{}", std::process::id());
    c.batch_execute(&format!(
        "DROP ROLE IF EXISTS {role}; DROP ROLE IF EXISTS {other};
         CREATE ROLE {role}; CREATE ROLE {other};
         SELECT sluice.grant_device('{role}', 'lyon', 'lyon-1');
         SELECT sluice.grant_device('{other}', 'paris');
         INSERT INTO configs (location_id, camera_id, device) VALUES
           ('lyon', 'a', NULL), ('lyon', 'b', 'lyon-1'), ('lyon', 'c', 'lyon-2'),
           ('paris', 'a', NULL), ('paris', 'b', 'lyon-1');"
    ))
    .unwrap();
    c.batch_execute(&format!("SET ROLE {role}")).unwrap();
    let (mine, cp, _) = snapshot(&mut c, "lyon-1", "lyon", 10);
    assert_eq!(mine, ["+lyon/a - - - - -", "+lyon/b - - - lyon-1 -"]);
    // The tenant may be left out: the grant's.
    let p = try_pull(&mut c, "lyon-1", 0, 0, 10, None, None).unwrap();
    assert_eq!(rows(&p.batch.unwrap()), mine);
    let e = try_pull(&mut c, "lyon-2", 0, 0, 10, None, Some("lyon")).unwrap_err();
    assert!(e.contains("(42501)"), "{e}");
    let e = try_pull(&mut c, "lyon-1", 0, 0, 10, None, Some("paris")).unwrap_err();
    assert!(e.contains("(42501)"), "{e}");
    let lag = c
        .query(
            "SELECT edge_table, checkpoint FROM sluice.subscription_lag('lyon-1')",
            &[],
        )
        .unwrap();
    assert_eq!(lag.len(), 1);
    assert_eq!(lag[0].get::<_, i64>(1), 0);
    let e = c
        .query("SELECT * FROM sluice.subscription_lag('lyon-2')", &[])
        .unwrap_err();
    assert!(pg_error(&e).contains("(42501)"));
    // The change of a lyon-2 row and of a paris row never reach lyon-1.
    c.batch_execute("RESET ROLE").unwrap();
    let s = stream(&mut c);
    c.batch_execute(
        "UPDATE configs SET threshold = 1 WHERE camera_id IN ('c', 'b') OR location_id = 'paris'",
    )
    .unwrap();
    c.batch_execute(&format!("SET ROLE {role}")).unwrap();
    let p = try_pull(&mut c, "lyon-1", cp, s, 10, None, None).unwrap();
    assert_eq!(rows(&p.batch.unwrap()), ["+lyon/b - 1 - lyon-1 -"]);
    // A device role of paris (no device id) may pull for any paris device,
    // never lyon rows.
    c.batch_execute(&format!("SET ROLE {other}")).unwrap();
    let (paris, _, _) = snapshot(&mut c, "lyon-1", "paris", 10);
    assert_eq!(paris, ["+paris/a - 1 - - -", "+paris/b - 1 - lyon-1 -"]);
    let e = try_pull(&mut c, "x", 0, 0, 10, None, Some("lyon")).unwrap_err();
    assert!(e.contains("(42501)"), "{e}");
    c.batch_execute("RESET ROLE").unwrap();
    // A role that is not a device role needs SELECT on the table; without a
    // tenant it is told to name one (no grant names device 'zz').
    let e = try_pull(&mut c, "zz", 0, 0, 10, None, None).unwrap_err();
    assert!(
        e.contains("(22023)") && e.contains("name the tenant"),
        "{e}"
    );
    // ... and finds the tenant of the grant naming the device.
    let p = try_pull(&mut c, "lyon-1", 0, 0, 10, None, None).unwrap();
    assert_eq!(
        rows(&p.batch.unwrap()),
        ["+lyon/a - - - - -", "+lyon/b - 1 - lyon-1 -"]
    );
    c.batch_execute(&format!(
        "SELECT sluice.revoke_device('{role}'); SELECT sluice.revoke_device('{other}');
         DROP ROLE {role}; DROP ROLE {other};"
    ))
    .unwrap();
}

/// The hard case: transaction A takes the lower position and stays open, B
/// takes a higher one and commits. A pull must not move past A's position;
/// once A commits, the next pull delivers A's row.
#[test]
fn a_transaction_that_commits_later_with_a_lower_position_is_never_skipped() {
    let (db, mut c) = setup("pull_order");
    let s = stream(&mut c);
    let (_, cp, _) = snapshot(&mut c, "box-1", "lyon", 10);
    let p = pull(&mut c, "box-1", cp, s, "lyon");
    let cp = p.checkpoint.max(cp);

    let mut a = connect(&db);
    let mut b = connect(&db);
    a.batch_execute("BEGIN").unwrap();
    let xa: i64 = a
        .query_one("SELECT pg_current_xact_id()::text::bigint", &[])
        .unwrap()
        .get(0);
    b.batch_execute("BEGIN").unwrap();
    let xb: i64 = b
        .query_one("SELECT pg_current_xact_id()::text::bigint", &[])
        .unwrap()
        .get(0);
    assert!(xa < xb);
    b.batch_execute(
        "INSERT INTO configs (location_id, camera_id) VALUES ('lyon', 'from-b'); COMMIT",
    )
    .unwrap();
    let p = pull(&mut c, "box-1", cp, s, "lyon");
    assert!(
        p.checkpoint < xa,
        "checkpoint {} must stay below A's position {xa}",
        p.checkpoint
    );
    assert!(p.batch.is_none() || p.rows == 0, "B's row waits for A");
    let cp = p.checkpoint;

    a.batch_execute(
        "INSERT INTO configs (location_id, camera_id) VALUES ('lyon', 'from-a'); COMMIT",
    )
    .unwrap();
    let p = pull(&mut c, "box-1", cp, s, "lyon");
    let batch = p.batch.unwrap();
    assert_eq!(
        rows(&batch),
        ["+lyon/from-a - - - - -", "+lyon/from-b - - - - -"]
    );
    assert_eq!(batch.versions, [xa, xb]);
    assert!(p.checkpoint >= xb);
}

/// A box's status report of a row the cloud deleted, cut before the box
/// had pulled the delete, from a box that comes back after the horizon:
/// the purge kept the delete for it (every other entry of the key and the
/// entries of keys the table still has went), so the report does not bring
/// the row back; once the box has pulled past it and the horizon has passed
/// since the delete, it is purged too.
#[test]
fn purge_keeps_a_delete_a_box_past_the_horizon_has_not_pulled() {
    use sluice_wire::{encode, BatchHeader, Column, ColumnType, EncodeOptions, Pulled};
    let (_db, mut c) = setup("pull_purge_delete");
    c.batch_execute(
        "SELECT sluice.register_table('configs', 'configs', ARRAY['location_id', 'camera_id']);
         INSERT INTO configs (location_id, camera_id) VALUES ('lyon', 'gone-1'), ('lyon', 'kept');",
    )
    .unwrap();
    let s = stream(&mut c);
    let (_, cp_a, _) = snapshot(&mut c, "box-1", "lyon", 100);
    pull(&mut c, "box-1", cp_a, s, "lyon");
    let (_, cp, _) = snapshot(&mut c, "box-2", "lyon", 100);
    pull(&mut c, "box-2", cp, s, "lyon");
    c.batch_execute(
        "DELETE FROM configs WHERE camera_id = 'gone-1';
         UPDATE configs SET threshold = 1 WHERE camera_id = 'kept';",
    )
    .unwrap();
    // box-2 pulls and acknowledges past both; box-1 stays behind, away for
    // longer than the horizon.
    let p = pull(&mut c, "box-2", cp, s, "lyon");
    pull(&mut c, "box-2", p.checkpoint, s, "lyon");
    c.batch_execute(
        "UPDATE sluice.subscriptions SET last_pulled = now() - interval '30 days' WHERE device_id = 'box-1'",
    )
    .unwrap();
    let entries = |c: &mut Client| -> Vec<String> {
        c.query(
            "SELECT array_to_string(key, '/') FROM sluice.changes ORDER BY position, key",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    let purged: i64 = c
        .query_one("SELECT sluice.purge_changes()", &[])
        .unwrap()
        .get(0);
    assert!(purged >= 3, "{purged}");
    assert_eq!(entries(&mut c), ["lyon/gone-1"], "only the delete stays");
    let through: i64 = c
        .query_one("SELECT purged_through FROM sluice.publications", &[])
        .unwrap()
        .get(0);
    assert!(
        through > cp_a,
        "box-1 is behind the purge: its next pull is a snapshot"
    );

    // box-1's report of both rows, cut at its old checkpoint.
    let header = BatchHeader {
        pulled: Some(Pulled {
            stream_id: s as u64,
            checkpoint: cp_a,
        }),
        device_id: "box-1".into(),
        stream_id: 4242,
        table: "configs".into(),
        base_seq: 0,
        last_seq: 2,
        row_count: 0,
        sent_at_ms: 1_795_000_000_000,
        columns: vec![
            Column::new("location_id", ColumnType::Text),
            Column::new("camera_id", ColumnType::Text),
            Column::new("status", ColumnType::Text),
        ],
        fingerprint: 0,
        digest: None,
        origin: sluice_wire::Origin::default(),
        resend: 0,
        changes: None,
    };
    let text = |s: &str| Value::Text(s.into());
    let bytes = encode(
        &header,
        &[1, 2],
        &[
            vec![text("lyon"), text("lyon")],
            vec![text("gone-1"), text("kept")],
            vec![text("applied"), text("applied")],
        ],
        EncodeOptions::default(),
    )
    .unwrap();
    c.execute("SELECT sluice.ingest($1)", &[&bytes]).unwrap();
    let cloud: Vec<String> = c
        .query(
            "SELECT camera_id || ' ' || coalesce(status, '-') FROM configs ORDER BY camera_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(cloud, ["kept applied"], "the deleted row did not come back");

    // box-1 takes its snapshot and acknowledges it: the delete stays for
    // the horizon after it was made (a box restored from a backup younger
    // than that still has the row), then goes.
    let (rows_now, cp_b, _) = snapshot(&mut c, "box-1", "lyon", 100);
    assert_eq!(rows_now.len(), 1, "{rows_now:?}");
    pull(&mut c, "box-1", cp_b, s, "lyon");
    c.query_one("SELECT sluice.purge_changes()", &[]).unwrap();
    assert_eq!(entries(&mut c), ["lyon/gone-1"]);
    c.batch_execute("UPDATE sluice.changes SET changed_at = now() - interval '8 days'")
        .unwrap();
    c.query_one("SELECT sluice.purge_changes()", &[]).unwrap();
    assert_eq!(entries(&mut c), Vec::<String>::new());
}
