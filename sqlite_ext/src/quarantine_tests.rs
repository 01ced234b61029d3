//! The quarantine (issue 12, case 7) on a real SQLite with the extension
//! loaded ([`crate::testdb`]): a row over the batch limit moved aside by
//! `sluice_batch`, a row the cloud refused moved aside by
//! `sluice_quarantine`, the rows behind them flowing on, cleanup keeping
//! them, and `sluice_release`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rusqlite::Connection;
use sluice_wire::{decode, decode_header, MAX_BODY_BYTES};

use crate::resend_tests::{ack, batch, pending, send_all, tracked};
use crate::testdb::{err, memory, one};

fn frames(n: i64) -> Connection {
    let db = memory();
    db.execute_batch(
        "SELECT sluice_device('box-1');
         CREATE TABLE frames (id INTEGER PRIMARY KEY, camera TEXT, image BLOB);
         SELECT sluice_track('frames');",
    )
    .unwrap();
    for _ in 0..n {
        db.execute_batch("INSERT INTO frames (camera, image) VALUES ('c1', x'00ff')")
            .unwrap();
    }
    db
}

/// A row of `sluice_quarantine`: id, seq, row_id, bytes, reason, sqlstate.
type Entry = (i64, i64, Option<i64>, Option<i64>, String, Option<String>);

fn quarantined(db: &Connection) -> Vec<Entry> {
    db.prepare("SELECT id, seq, row_id, bytes, reason, sqlstate FROM sluice_quarantine ORDER BY id")
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn a_row_over_the_batch_limit_is_moved_aside_and_the_rows_behind_it_are_sent() {
    let db = frames(1);
    // 65 MiB: over the body limit of a batch (64 MiB). Before the
    // quarantine, sluice_batch failed at every call ("send fewer rows per
    // batch") and the table was blocked for ever.
    let giant: i64 = 65 << 20;
    assert!(giant > i64::from(MAX_BODY_BYTES));
    db.execute(
        "INSERT INTO frames (camera, image) VALUES ('c2', zeroblob(?1))",
        [giant],
    )
    .unwrap();
    db.execute_batch("INSERT INTO frames (camera, image) VALUES ('c3', x'01'), ('c4', x'02')")
        .unwrap();
    assert_eq!(pending(&db, "frames"), 4);

    let b = batch(&db, "frames", 1000).unwrap();
    let d = decode(&b).unwrap();
    assert_eq!(d.versions, vec![1, 3, 4]);
    assert_eq!((d.header.base_seq, d.header.last_seq), (0, 4));
    let q = quarantined(&db);
    assert_eq!(q.len(), 1);
    let (_, seq, row_id, bytes, reason, sqlstate) = &q[0];
    assert_eq!((*seq, *row_id, sqlstate.as_deref()), (2, Some(2), None));
    let bytes = bytes.unwrap();
    assert!(bytes > giant && bytes < giant + 64, "{bytes}");
    assert_eq!(
        reason,
        &format!("row of {bytes} bytes is over the batch limit of 67108864 bytes")
    );
    // Cut again: the same batch.
    let again = batch(&db, "frames", 1000).unwrap();
    let (h, h2) = (decode_header(&b).unwrap(), decode_header(&again).unwrap());
    assert_eq!((h.id(), h.digest), (h2.id(), h2.digest));
    // The row is not pending, and a row limit of 1 cuts around it too.
    assert_eq!(pending(&db, "frames"), 3);
    let one_row = decode(&batch(&db, "frames", 2).unwrap()).unwrap();
    assert_eq!(one_row.versions, vec![1, 3]);

    assert_eq!(ack(&db, &b), 3);
    assert_eq!(pending(&db, "frames"), 0);
    assert!(batch(&db, "frames", 1000).is_none());
    let t = tracked(&db, "frames");
    assert_eq!(
        (t["acked_seq"].as_i64(), t["quarantined_rows"].as_i64()),
        (Some(4), Some(1))
    );
    assert_eq!(
        one::<i64>(
            &db,
            "SELECT quarantined_rows FROM sluice_status WHERE \"table\" = 'frames'"
        ),
        1
    );
    // Cleanup keeps it (and the newest row, the rowid high-water mark).
    assert_eq!(one::<i64>(&db, "SELECT sluice_cleanup('frames', 0)"), 2);
    assert_eq!(
        one::<String>(&db, "SELECT group_concat(id) FROM frames"),
        "2,4"
    );
    // New rows flow.
    db.execute_batch("INSERT INTO frames (camera) VALUES ('c5')")
        .unwrap();
    let d = decode(&batch(&db, "frames", 1000).unwrap()).unwrap();
    assert_eq!(d.versions, vec![5]);
}

#[test]
fn a_giant_row_alone_in_a_resend_is_moved_aside_as_well() {
    let db = frames(2);
    send_all(&db, "frames", 1000);
    db.execute(
        "UPDATE frames SET image = zeroblob(?1) WHERE id = 1",
        [65 << 20],
    )
    .unwrap();
    assert_eq!(one::<i64>(&db, "SELECT sluice_resend('frames')"), 2);
    let b = batch(&db, "frames", 1000).unwrap();
    let d = decode(&b).unwrap();
    assert_eq!(
        (d.header.resend, d.header.base_seq, d.header.last_seq),
        (1, 0, 2)
    );
    assert_eq!(d.versions, vec![2]);
    assert_eq!(quarantined(&db)[0].1, 1);
    ack(&db, &b);
    assert_eq!(pending(&db, "frames"), 0);
}

#[test]
fn a_row_the_cloud_refused_is_moved_aside_then_released_and_resent() {
    let db = frames(4);
    assert_eq!(
        one::<i64>(&db, "SELECT sluice_quarantine('frames', 2, 'value too long for type character varying(8)', '22001')"),
        1
    );
    // Idempotent.
    assert_eq!(
        one::<i64>(&db, "SELECT sluice_quarantine('frames', 2, 'again')"),
        0
    );
    assert_eq!(pending(&db, "frames"), 3);
    let b = batch(&db, "frames", 1000).unwrap();
    let d = decode(&b).unwrap();
    assert_eq!(d.versions, vec![1, 3, 4]);
    assert_eq!((d.header.base_seq, d.header.last_seq), (0, 4));
    ack(&db, &b);
    assert_eq!(pending(&db, "frames"), 0);
    let q = quarantined(&db);
    assert_eq!(
        q,
        vec![(
            1,
            2,
            Some(2),
            None,
            "value too long for type character varying(8)".to_string(),
            Some("22001".to_string())
        )]
    );
    assert_eq!(one::<i64>(&db, "SELECT sluice_cleanup('frames', 0)"), 2);
    assert_eq!(
        one::<String>(&db, "SELECT group_concat(id) FROM frames"),
        "2,4"
    );

    // Fixed by the operator, released: the range around it was
    // acknowledged, so it is re-sent, exactly that row.
    db.execute_batch("UPDATE frames SET camera = 'c2' WHERE id = 2")
        .unwrap();
    assert_eq!(one::<i64>(&db, "SELECT sluice_release('frames')"), 1);
    assert!(quarantined(&db).is_empty());
    assert_eq!(
        one::<String>(
            &db,
            "SELECT lo || ' ' || hi || ' ' || reason FROM sluice_resends"
        ),
        "1 2 released from quarantine"
    );
    assert_eq!(pending(&db, "frames"), 1);
    let b = batch(&db, "frames", 1000).unwrap();
    let d = decode(&b).unwrap();
    assert_eq!(
        (d.header.resend, d.header.base_seq, d.header.last_seq),
        (1, 1, 2)
    );
    assert_eq!(d.versions, vec![2]);
    ack(&db, &b);
    assert_eq!(pending(&db, "frames"), 0);
    assert_eq!(tracked(&db, "frames")["acked_seq"].as_i64(), Some(4));
    assert_eq!(one::<i64>(&db, "SELECT sluice_release('frames')"), 0);
}

#[test]
fn a_released_row_still_pending_simply_flows_again() {
    let db = frames(3);
    one::<i64>(&db, "SELECT sluice_quarantine('frames', 3, 'bad')");
    let b = batch(&db, "frames", 1000).unwrap();
    assert_eq!(decode(&b).unwrap().versions, vec![1, 2]);
    // Released before the batch around it was acknowledged: pending again.
    assert_eq!(one::<i64>(&db, "SELECT sluice_release('frames', 1)"), 1);
    assert_eq!(one::<i64>(&db, "SELECT count(*) FROM sluice_resends"), 0);
    assert_eq!(pending(&db, "frames"), 3);
    let b = batch(&db, "frames", 1000).unwrap();
    assert_eq!(decode(&b).unwrap().versions, vec![1, 2, 3]);
}

#[test]
fn a_released_mutable_row_updated_since_flows_under_its_new_version() {
    let db = memory();
    db.execute_batch(
        "SELECT sluice_device('box-1');
         CREATE TABLE cameras (camera_id TEXT PRIMARY KEY, name TEXT);
         SELECT sluice_track('cameras', '{\"mutable\": true}');
         INSERT INTO cameras (camera_id, name) VALUES ('cam-1', 'door'), ('cam-2', 'a name far too long');",
    )
    .unwrap();
    let v: i64 = one(
        &db,
        "SELECT sluice_version FROM cameras WHERE camera_id = 'cam-2'",
    );
    assert_eq!(
        db.query_row(
            "SELECT sluice_quarantine('cameras', ?1, 'too long', '22001')",
            [v],
            |r| r.get::<_, i64>(0)
        )
        .unwrap(),
        1
    );
    // A mutable row has no rowid alias; its rowid is recorded all the same.
    assert_eq!(quarantined(&db)[0].2, Some(2));
    send_all(&db, "cameras", 1000);
    assert_eq!(pending(&db, "cameras"), 0);
    // The operator fixes it: a new version, pending again.
    db.execute_batch("UPDATE cameras SET name = 'till' WHERE camera_id = 'cam-2'")
        .unwrap();
    assert_eq!(pending(&db, "cameras"), 1);
    let id: i64 = one(&db, "SELECT id FROM sluice_quarantine");
    assert_eq!(
        db.query_row("SELECT sluice_release('cameras', ?1)", [id], |r| r
            .get::<_, i64>(0))
            .unwrap(),
        1
    );
    assert_eq!(one::<i64>(&db, "SELECT count(*) FROM sluice_resends"), 0);
    assert_eq!(pending(&db, "cameras"), 1);
    let d = decode(&batch(&db, "cameras", 1000).unwrap()).unwrap();
    assert_eq!(d.header.resend, 0);
    assert_eq!(d.versions.len(), 1);
    // Not subscribed: the batch says nothing of a pull.
    assert_eq!(d.header.pulled, None);
}

#[test]
fn bad_arguments_give_clear_errors_and_never_crash() {
    let db = frames(3);
    send_all(&db, "frames", 2);
    db.execute_batch("INSERT INTO frames (camera) VALUES ('c9')")
        .unwrap();
    for (sql, want) in [
        ("SELECT sluice_quarantine('nope', 1, 'x')", "sluice_quarantine: no such table: nope"),
        (
            "SELECT sluice_quarantine('frames', 2, 'x')",
            "sluice_quarantine: table 'frames' has no pending row with sequence number 2",
        ),
        (
            "SELECT sluice_quarantine('frames', 99, 'x')",
            "sluice_quarantine: table 'frames' has no pending row with sequence number 99",
        ),
        (
            "SELECT sluice_quarantine('frames', 9223372036854775807, 'x')",
            "sluice_quarantine: table 'frames' has no pending row with sequence number 9223372036854775807",
        ),
        (
            "SELECT sluice_quarantine('frames', -9223372036854775808, 'x')",
            "sluice_quarantine: table 'frames' has no pending row",
        ),
        (
            "SELECT sluice_quarantine('frames', NULL, 'x')",
            "sluice_quarantine: the sequence number must be an integer, got NULL",
        ),
        (
            "SELECT sluice_quarantine('frames', 1e300, 'x')",
            "sluice_quarantine: the sequence number must be an integer, got the real",
        ),
        (
            "SELECT sluice_quarantine('frames', 4, NULL)",
            "sluice_quarantine: the reason must be text, got NULL",
        ),
        (
            "SELECT sluice_quarantine('frames', 4, '')",
            "sluice_quarantine: the reason must not be empty",
        ),
        (
            "SELECT sluice_quarantine('frames', 4, 'x', 'nope')",
            "sluice_quarantine: the sqlstate must be five digits or upper-case letters",
        ),
        (
            "SELECT sluice_quarantine(NULL, 4, 'x')",
            "sluice_quarantine: the table name must be text, got NULL",
        ),
        ("SELECT sluice_release('nope')", "sluice_release: no such table: nope"),
        (
            "SELECT sluice_release('frames', 7)",
            "sluice_release: table 'frames' has no quarantined row with id 7",
        ),
        (
            "SELECT sluice_release('frames', 'one')",
            "sluice_release: the id must be an integer",
        ),
        (
            "SELECT sluice_release('frames', 9223372036854775807)",
            "sluice_release: table 'frames' has no quarantined row with id 9223372036854775807",
        ),
        ("SELECT sluice_release(NULL)", "sluice_release: the table name must be text, got NULL"),
    ] {
        let e = err(&db, sql);
        assert!(e.starts_with(want), "{sql}: {e}");
    }
    assert!(quarantined(&db).is_empty());
    // Without an id and nothing aside: 0. NULL id: all of them.
    assert_eq!(one::<i64>(&db, "SELECT sluice_release('frames')"), 0);
    assert_eq!(
        one::<i64>(&db, "SELECT sluice_quarantine('frames', 4, 'x')"),
        1
    );
    assert_eq!(one::<i64>(&db, "SELECT sluice_release('frames', NULL)"), 1);

    // A table name with quotes.
    db.execute_batch(
        "CREATE TABLE \"it's \"\"here\"\"\" (id INTEGER PRIMARY KEY, v);
         SELECT sluice_track('it''s \"here\"');
         INSERT INTO \"it's \"\"here\"\"\" (v) VALUES (1), (2), (3);",
    )
    .unwrap();
    let name = "it's \"here\"";
    assert_eq!(
        db.query_row("SELECT sluice_quarantine(?1, 2, 'bad')", [name], |r| r
            .get::<_, i64>(0))
            .unwrap(),
        1
    );
    assert_eq!(pending(&db, name), 2);
    let b = batch(&db, name, 1000).unwrap();
    assert_eq!(decode(&b).unwrap().versions, vec![1, 3]);
    ack(&db, &b);
    assert_eq!(
        db.query_row("SELECT sluice_cleanup(?1, 0)", [name], |r| r
            .get::<_, i64>(0))
            .unwrap(),
        1
    );
    assert_eq!(
        db.query_row("SELECT sluice_release(?1)", [name], |r| r.get::<_, i64>(0))
            .unwrap(),
        1
    );
    assert_eq!(pending(&db, name), 1);
    assert_eq!(one::<i64>(&db, "SELECT 1"), 1);
}
