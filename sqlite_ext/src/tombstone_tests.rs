//! Deletes and key changes of mutable tables: tombstones written by the
//! triggers, merged into batches in version order, counted as pending,
//! forgotten once acknowledged, and never made by sluice's own deletes.
//! On a real SQLite with the extension loaded ([`crate::testdb`]).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rusqlite::Connection;
use sluice_wire::{decode, Batch, Value};

use crate::testdb::{err, memory, one};

fn cameras() -> Connection {
    let db = memory();
    db.execute_batch(
        "SELECT sluice_device('box-1');
         CREATE TABLE cameras (id INTEGER PRIMARY KEY, camera_id TEXT NOT NULL UNIQUE,
                               location_id TEXT NOT NULL, name TEXT, stream_url TEXT);
         SELECT sluice_track('cameras', '{\"mutable\": true, \"local_only\": [\"stream_url\"],
                                          \"key\": [\"location_id\", \"camera_id\"]}');
         INSERT INTO cameras (camera_id, location_id, name, stream_url)
           VALUES ('cam-1', 'loc-1', 'door', 'rtsp://secret'), ('cam-2', 'loc-1', 'till', NULL);",
    )
    .unwrap();
    db
}

fn batch(db: &Connection, options: &str) -> Option<Batch> {
    let blob: Option<Vec<u8>> = db
        .query_row("SELECT sluice_batch('cameras', NULL, ?1)", [options], |r| {
            r.get(0)
        })
        .unwrap();
    blob.map(|b| decode(&b).unwrap())
}

fn send_all(db: &Connection) {
    while let Some(b) = {
        let blob: Option<Vec<u8>> = db
            .query_row("SELECT sluice_batch('cameras')", [], |r| r.get(0))
            .unwrap();
        blob
    } {
        db.query_row("SELECT sluice_ack(?1)", [&b], |r| r.get::<_, i64>(0))
            .unwrap();
    }
}

fn pending(db: &Connection) -> i64 {
    one(db, "SELECT sluice_pending('cameras')")
}

fn tombstones(db: &Connection) -> i64 {
    one(db, "SELECT count(*) FROM sluice_tombstones")
}

/// A batch row: version, deleted, values by column name.
type Row = (i64, bool, Vec<(String, Value)>);

/// The rows of a batch.
fn rows(b: &Batch) -> Vec<Row> {
    (0..b.versions.len())
        .map(|r| {
            (
                b.versions[r],
                b.deleted.get(r).copied().unwrap_or(false),
                b.header
                    .columns
                    .iter()
                    .zip(&b.columns)
                    .map(|(c, col)| (c.name.clone(), col[r].clone()))
                    .collect(),
            )
        })
        .collect()
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

#[test]
fn a_delete_is_pending_and_travels_as_a_tombstone_of_the_key() {
    let db = cameras();
    send_all(&db);
    assert_eq!(pending(&db), 0);
    db.execute_batch("DELETE FROM cameras WHERE camera_id = 'cam-1'")
        .unwrap();
    assert_eq!(pending(&db), 1);
    let b = batch(&db, "{}").unwrap();
    assert_eq!(b.deleted, vec![true]);
    let r = rows(&b);
    assert_eq!(
        r[0].2,
        vec![
            ("id".into(), Value::Null),
            ("camera_id".into(), text("cam-1")),
            ("location_id".into(), text("loc-1")),
            ("name".into(), Value::Null),
        ]
    );
    // The tombstone's version comes from the clock, above every row's.
    assert_eq!(r[0].0, one::<i64>(&db, "SELECT value FROM sluice_clock"));
    let blob: Vec<u8> = db
        .query_row("SELECT sluice_batch('cameras')", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        db.query_row("SELECT sluice_ack(?1)", [&blob], |r| r.get::<_, i64>(0))
            .unwrap(),
        1
    );
    // Acknowledged: it goes, and is sent once.
    assert_eq!(tombstones(&db), 0);
    assert_eq!(pending(&db), 0);
    assert!(batch(&db, "{}").is_none());
}

#[test]
fn a_key_change_is_a_delete_of_the_old_key_and_an_upsert_of_the_new() {
    let db = cameras();
    send_all(&db);
    db.execute_batch("UPDATE cameras SET location_id = 'loc-2' WHERE camera_id = 'cam-1'")
        .unwrap();
    assert_eq!(pending(&db), 2);
    let b = batch(&db, "{}").unwrap();
    let r = rows(&b);
    assert_eq!(r.len(), 2);
    assert!(r[0].0 < r[1].0, "in version order");
    let del: Vec<_> = r.iter().filter(|x| x.1).collect();
    let up: Vec<_> = r.iter().filter(|x| !x.1).collect();
    assert_eq!(del.len(), 1);
    assert_eq!(del[0].2[2], ("location_id".into(), text("loc-1")));
    assert_eq!(del[0].2[1], ("camera_id".into(), text("cam-1")));
    assert_eq!(up[0].2[2], ("location_id".into(), text("loc-2")));
    // A change of a column that is not the key is an update only.
    send_all(&db);
    db.execute_batch("UPDATE cameras SET name = 'front door' WHERE camera_id = 'cam-1'")
        .unwrap();
    assert_eq!(pending(&db), 1);
    assert!(batch(&db, "{}").unwrap().deleted.is_empty());
}

#[test]
fn rows_and_tombstones_merge_in_version_order_both_ways() {
    let db = cameras();
    send_all(&db);
    db.execute_batch(
        "DELETE FROM cameras WHERE camera_id = 'cam-1';
         INSERT INTO cameras (camera_id, location_id) VALUES ('cam-3', 'loc-1');
         DELETE FROM cameras WHERE camera_id = 'cam-2';
         INSERT INTO cameras (camera_id, location_id) VALUES ('cam-4', 'loc-1');",
    )
    .unwrap();
    assert_eq!(pending(&db), 4);
    let b = batch(&db, "{}").unwrap();
    assert_eq!(b.deleted, vec![true, false, true, false]);
    assert!(b.versions.windows(2).all(|w| w[0] < w[1]));
    // Newest first, two at a time: the newest two, listed in order.
    let blob: Vec<u8> = db
        .query_row(
            "SELECT sluice_batch('cameras', 2, '{\"order\": \"newest\"}')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let newest = decode(&blob).unwrap();
    assert_eq!(newest.versions, b.versions[2..].to_vec());
    assert_eq!(newest.deleted, vec![true, false]);
    db.query_row("SELECT sluice_ack(?1)", [&blob], |r| r.get::<_, i64>(0))
        .unwrap();
    assert_eq!(pending(&db), 2);
    assert_eq!(tombstones(&db), 1);
    let rest = batch(&db, "{}").unwrap();
    assert_eq!(rest.versions, b.versions[..2].to_vec());
    assert_eq!(rest.deleted, vec![true, false]);
}

#[test]
fn cleanup_and_the_budget_make_no_tombstones() {
    let db = cameras();
    send_all(&db);
    // Acknowledged long enough ago: cleanup deletes both rows.
    db.execute_batch("UPDATE sluice_acks SET acked_at = acked_at - 3600000")
        .unwrap();
    assert_eq!(one::<i64>(&db, "SELECT sluice_cleanup('cameras', 60)"), 2);
    assert_eq!(tombstones(&db), 0);
    assert_eq!(pending(&db), 0);
    assert!(batch(&db, "{}").is_none());
    // The flag is gone: a delete by the application is recorded again.
    db.execute_batch(
        "INSERT INTO cameras (camera_id, location_id) VALUES ('cam-9', 'loc-1');
         DELETE FROM cameras;",
    )
    .unwrap();
    assert_eq!(tombstones(&db), 1);
    assert_eq!(
        one::<i64>(
            &db,
            "SELECT count(*) FROM sluice_meta WHERE key = 'quiet_deletes'"
        ),
        0
    );
}

#[test]
fn deletes_false_and_keys_by_default() {
    let db = memory();
    db.execute_batch(
        "SELECT sluice_device('box-1');
         CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
         CREATE TABLE pairs (a TEXT, b TEXT, v TEXT, PRIMARY KEY (b, a)) WITHOUT ROWID;
         CREATE TABLE quiet (id INTEGER PRIMARY KEY, body TEXT);
         CREATE TABLE heap (body TEXT);
         SELECT sluice_track('notes', '{\"mutable\": true}');
         SELECT sluice_track('pairs', '{\"mutable\": true}');
         SELECT sluice_track('quiet', '{\"mutable\": true, \"deletes\": false}');
         INSERT INTO notes (body) VALUES ('x');
         INSERT INTO pairs (a, b, v) VALUES ('1', '2', 'x');
         INSERT INTO quiet (body) VALUES ('x');
         DELETE FROM notes; DELETE FROM pairs; DELETE FROM quiet;",
    )
    .unwrap();
    let keys: Vec<(String, String, String)> = db
        .prepare("SELECT t.tbl, t.delete_key, coalesce(k1, '') || ',' || coalesce(k2, '') FROM sluice_tables t LEFT JOIN sluice_tombstones s ON s.tbl = t.tbl ORDER BY t.tbl")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        keys,
        vec![
            ("notes".into(), "[\"id\"]".into(), "1,".into()),
            ("pairs".into(), "[\"b\",\"a\"]".into(), "2,1".into()),
            ("quiet".into(), "[]".into(), ",".into()),
        ]
    );
    // Re-tracking keeps the choice.
    db.execute_batch("SELECT sluice_track('quiet', '{\"time\": \"body\"}')")
        .unwrap();
    assert_eq!(
        one::<String>(
            &db,
            "SELECT delete_key FROM sluice_tables WHERE tbl = 'quiet'"
        ),
        "[]"
    );
    let e = err(&db, "SELECT sluice_track('heap', '{\"mutable\": true}')");
    assert!(
        e.contains("no key to send its deletes by") && e.contains("\"deletes\": false"),
        "{e}"
    );
    db.execute_batch("SELECT sluice_track('heap', '{\"mutable\": true, \"deletes\": false}')")
        .unwrap();
    let e = err(
        &db,
        "SELECT sluice_track('notes', '{\"local_only\": [\"id\"]}')",
    );
    assert!(
        e.contains("key column 'id' of 'notes' is local_only"),
        "{e}"
    );
    // The key may not change under deletes not yet sent.
    let e = err(&db, "SELECT sluice_track('notes', '{\"key\": [\"body\"]}')");
    assert!(e.contains("deletes not yet sent"), "{e}");
    db.execute_batch("CREATE TABLE log (id INTEGER PRIMARY KEY)")
        .unwrap();
    let e = err(&db, "SELECT sluice_track('log', '{\"deletes\": true}')");
    assert!(e.contains("append-only"), "{e}");
}

#[test]
fn an_append_only_table_gets_no_delete_trigger() {
    let db = memory();
    db.execute_batch(
        "CREATE TABLE log (id INTEGER PRIMARY KEY, x);
         SELECT sluice_track('log');",
    )
    .unwrap();
    assert_eq!(
        one::<i64>(
            &db,
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'"
        ),
        0
    );
}

#[test]
fn a_version_3_database_upgrades_to_4_and_tracks_deletes_at_the_next_track() {
    let db = cameras();
    send_all(&db);
    // What version 3 had: no tombstones, no delete key, no delete triggers.
    db.execute_batch(
        "DROP TABLE sluice_tombstones;
         DROP TRIGGER cameras_sluice_delete; DROP TRIGGER cameras_sluice_rekey;
         ALTER TABLE sluice_tables DROP COLUMN delete_key;
         UPDATE sluice_meta SET value = 3 WHERE key = 'schema_version';",
    )
    .unwrap();
    // Read-only functions read it as it is.
    assert_eq!(pending(&db), 0);
    assert!(batch(&db, "{}").is_none());
    db.execute_batch("SELECT sluice_device('box-1')").unwrap();
    assert_eq!(
        one::<i64>(
            &db,
            "SELECT value FROM sluice_meta WHERE key = 'schema_version'"
        ),
        crate::bookkeeping::VERSION
    );
    // Tracked before 0.2: not tracked until the next sluice_track, which
    // takes the default.
    db.execute_batch("DELETE FROM cameras WHERE camera_id = 'cam-2'")
        .unwrap();
    assert_eq!(tombstones(&db), 0);
    db.execute_batch("SELECT sluice_track('cameras')").unwrap();
    assert_eq!(
        one::<String>(&db, "SELECT delete_key FROM sluice_tables"),
        "[\"location_id\",\"camera_id\"]"
    );
    db.execute_batch("DELETE FROM cameras").unwrap();
    assert_eq!(tombstones(&db), 1);
    assert_eq!(pending(&db), 1);
}

#[test]
fn rows_the_budget_drops_make_no_tombstones() {
    let db = memory();
    db.execute_batch(
        "SELECT sluice_device('box-1');
         CREATE TABLE sessions (id INTEGER PRIMARY KEY, started_at TEXT, pad BLOB);
         SELECT sluice_track('sessions', '{\"mutable\": true, \"time\": \"started_at\"}');
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
         INSERT INTO sessions (started_at, pad)
           SELECT '2020-01-01T00:00:00Z', randomblob(2000) FROM n;",
    )
    .unwrap();
    let dropped: i64 = one(&db, "SELECT sluice_enforce_budget(4096)");
    assert!(dropped > 0, "{dropped}");
    assert_eq!(one::<i64>(&db, "SELECT count(*) FROM sluice_tombstones"), 0);
}
