//! Re-sends (issue 12, case 8) on a real SQLite with the extension loaded
//! ([`crate::testdb`]): `sluice_resend`, the re-send batches `sluice_batch`
//! cuts first, their acknowledgement, and what `sluice_pending` and
//! `sluice_tracked` count.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rusqlite::{params, Connection};
use serde_json::Value as Json;
use sluice_wire::{decode, decode_header, BatchHeader, Value};

use crate::testdb::{err, memory, one};

pub(crate) fn batch(db: &Connection, table: &str, max_rows: i64) -> Option<Vec<u8>> {
    db.query_row(
        "SELECT sluice_batch(?1, ?2)",
        params![table, max_rows],
        |r| r.get(0),
    )
    .unwrap()
}

pub(crate) fn ack(db: &Connection, blob: &[u8]) -> i64 {
    db.query_row("SELECT sluice_ack(?1)", [blob], |r| r.get(0))
        .unwrap()
}

pub(crate) fn pending(db: &Connection, table: &str) -> i64 {
    db.query_row("SELECT sluice_pending(?1)", [table], |r| r.get(0))
        .unwrap()
}

pub(crate) fn tracked(db: &Connection, table: &str) -> Json {
    let t: String = db
        .query_row("SELECT sluice_tracked(?1)", [table], |r| r.get(0))
        .unwrap();
    serde_json::from_str(&t).unwrap()
}

/// Sends and acknowledges everything pending of `table`, `max_rows` a batch.
pub(crate) fn send_all(db: &Connection, table: &str, max_rows: i64) -> Vec<BatchHeader> {
    let mut sent = Vec::new();
    while let Some(b) = batch(db, table, max_rows) {
        ack(db, &b);
        sent.push(decode_header(&b).unwrap());
        assert!(sent.len() < 1000, "no end of batches");
    }
    sent
}

fn resend(db: &Connection, table: &str, options: Option<&str>) -> i64 {
    db.query_row(
        "SELECT sluice_resend(?1, ?2)",
        params![table, options],
        |r| r.get(0),
    )
    .unwrap()
}

/// The values of column `name` of a decoded batch.
fn column(b: &sluice_wire::Batch, name: &str) -> Vec<Value> {
    let i = b
        .header
        .columns
        .iter()
        .position(|c| c.name == name)
        .unwrap_or_else(|| panic!("no column {name}"));
    b.columns[i].clone()
}

/// An append-only table of five readings, one an hour, all acknowledged.
fn readings() -> Connection {
    let db = memory();
    db.execute_batch(
        "SELECT sluice_device('box-1');
         CREATE TABLE readings (id INTEGER PRIMARY KEY, camera TEXT, ts TEXT);
         SELECT sluice_track('readings', '{\"time\": \"ts\"}');
         INSERT INTO readings (camera, ts) VALUES
           ('c1', '2026-12-01T10:00:00Z'), ('c1', '2026-12-01T11:00:00Z'),
           ('c2', '2026-12-01T12:00:00Z'), ('c2', '2026-12-01T13:00:00Z'),
           ('c3', '2026-12-01T14:00:00Z');",
    )
    .unwrap();
    send_all(&db, "readings", 1000);
    assert_eq!(pending(&db, "readings"), 0);
    db
}

#[test]
fn a_resend_after_add_column_default_carries_the_new_column() {
    let db = readings();
    db.execute_batch("ALTER TABLE readings ADD COLUMN people INTEGER DEFAULT 7")
        .unwrap();
    // Nothing is pending: the rows were acknowledged before the column came.
    assert_eq!(pending(&db, "readings"), 0);
    assert!(batch(&db, "readings", 10).is_none());

    assert_eq!(resend(&db, "readings", None), 5);
    assert_eq!(pending(&db, "readings"), 5);
    let t = tracked(&db, "readings");
    assert_eq!(
        (t["resend_rows"].as_i64(), t["acked_seq"].as_i64()),
        (Some(5), Some(5))
    );
    assert_eq!(
        one::<String>(
            &db,
            "SELECT reason || ' ' || lo || ' ' || hi || ' ' || done_seq FROM sluice_resends"
        ),
        "operator 0 5 0"
    );

    // Cut by the row limit: it ends at its last row; cut twice, the same
    // identity and digest.
    let first = batch(&db, "readings", 3).unwrap();
    let again = batch(&db, "readings", 3).unwrap();
    let (h, h2) = (
        decode_header(&first).unwrap(),
        decode_header(&again).unwrap(),
    );
    assert_eq!(
        (h.resend, h.base_seq, h.last_seq, h.row_count),
        (1, 0, 3, 3)
    );
    assert_eq!(h.id(), h2.id());
    assert!(h.digest.is_some());
    assert_eq!(h.digest, h2.digest);
    assert!(h.id().to_string().ends_with(" re-send 1"), "{}", h.id());
    let b = decode(&first).unwrap();
    assert_eq!(b.versions, vec![1, 2, 3]);
    assert_eq!(column(&b, "people"), vec![Value::Integer(7); 3]);
    assert!(b.deleted.is_empty());

    assert_eq!(ack(&db, &first), 3);
    // The watermark stays where it was.
    let t = tracked(&db, "readings");
    assert_eq!(
        (t["acked_seq"].as_i64(), t["acked_batches"].as_i64()),
        (Some(5), Some(1))
    );
    assert_eq!(pending(&db, "readings"), 2);
    // A replayed acknowledgement is harmless.
    assert_eq!(ack(&db, &again), 0);
    assert_eq!(pending(&db, "readings"), 2);

    // The rest: not cut, it reaches hi.
    let rest = batch(&db, "readings", 3).unwrap();
    let h = decode_header(&rest).unwrap();
    assert_eq!(
        (h.resend, h.base_seq, h.last_seq, h.row_count),
        (1, 3, 5, 2)
    );
    assert_eq!(
        column(&decode(&rest).unwrap(), "people"),
        vec![Value::Integer(7); 2]
    );
    assert_eq!(ack(&db, &rest), 2);
    assert_eq!(pending(&db, "readings"), 0);
    assert_eq!(tracked(&db, "readings")["resend_rows"].as_i64(), Some(0));
    assert!(batch(&db, "readings", 3).is_none());
    assert_eq!(
        one::<i64>(
            &db,
            "SELECT count(*) FROM sluice_resends WHERE finished_at IS NOT NULL AND done_seq = 5"
        ),
        1
    );
    assert_eq!(ack(&db, &rest), 0);
    assert_eq!(tracked(&db, "readings")["acked_seq"].as_i64(), Some(5));

    // A second request is number 2.
    assert_eq!(
        resend(&db, "readings", Some(r#"{"reason": "cloud fix"}"#)),
        5
    );
    let h = decode_header(&batch(&db, "readings", 1000).unwrap()).unwrap();
    assert_eq!((h.resend, h.base_seq, h.last_seq), (2, 0, 5));
}

#[test]
fn a_resend_that_the_row_limit_cuts_on_its_last_row_is_finished_by_its_ack() {
    let db = readings();
    assert_eq!(resend(&db, "readings", None), 5);
    let b = batch(&db, "readings", 5).unwrap();
    let h = decode_header(&b).unwrap();
    assert_eq!((h.base_seq, h.last_seq), (0, 5));
    ack(&db, &b);
    assert_eq!(
        one::<i64>(
            &db,
            "SELECT count(*) FROM sluice_resends WHERE finished_at IS NULL"
        ),
        0
    );
    // Rows of a request deleted before they were sent are not sent.
    assert_eq!(resend(&db, "readings", None), 5);
    db.execute_batch(
        "DELETE FROM readings WHERE id <= 4; INSERT INTO readings (camera) VALUES ('c4')",
    )
    .unwrap();
    let b = batch(&db, "readings", 1).unwrap();
    let h = decode_header(&b).unwrap();
    assert_eq!((h.resend, h.base_seq, h.last_seq), (2, 0, 5));
    ack(&db, &b);
    let b = batch(&db, "readings", 1).unwrap();
    assert_eq!(decode_header(&b).unwrap().resend, 0);
    ack(&db, &b);
    assert_eq!(pending(&db, "readings"), 0);
}

#[test]
fn new_rows_wait_behind_a_resend_and_its_ack_never_moves_the_watermark() {
    let db = readings();
    assert_eq!(resend(&db, "readings", None), 5);
    db.execute_batch("INSERT INTO readings (camera) VALUES ('c9'), ('c9')")
        .unwrap();
    assert_eq!(pending(&db, "readings"), 7);
    let sent = send_all(&db, "readings", 4);
    let seen: Vec<(u32, i64, i64)> = sent
        .iter()
        .map(|h| (h.resend, h.base_seq, h.last_seq))
        .collect();
    // The re-send first, then the new rows from the watermark.
    assert_eq!(seen, vec![(1, 0, 4), (1, 4, 5), (0, 5, 7)]);
    let t = tracked(&db, "readings");
    assert_eq!(
        (t["acked_seq"].as_i64(), t["acked_batches"].as_i64()),
        (Some(7), Some(2))
    );
    assert_eq!(t["acked_ranges"], serde_json::json!([]));
}

#[test]
fn a_resend_with_a_time_filter_sends_only_those_rows() {
    let db = readings();
    let n = resend(
        &db,
        "readings",
        Some(r#"{"from": "2026-12-01T11:00:00Z", "to": "2026-12-01T13:00:00Z"}"#),
    );
    assert_eq!(n, 2);
    assert_eq!(pending(&db, "readings"), 2);
    assert_eq!(
        one::<String>(
            &db,
            "SELECT from_time || ' ' || to_time FROM sluice_resends"
        ),
        "2026-12-01T11:00:00Z 2026-12-01T13:00:00Z"
    );
    let b = batch(&db, "readings", 1000).unwrap();
    let d = decode(&b).unwrap();
    assert_eq!(d.versions, vec![2, 3]);
    assert_eq!((d.header.base_seq, d.header.last_seq), (0, 5));
    ack(&db, &b);
    assert_eq!(pending(&db, "readings"), 0);
    // Unix seconds work too; an empty range records nothing.
    assert_eq!(resend(&db, "readings", Some(r#"{"from": 1796133600}"#)), 1);
    assert_eq!(
        resend(&db, "readings", Some(r#"{"from": "2030-01-01"}"#)),
        0
    );
    assert_eq!(one::<i64>(&db, "SELECT max(n) FROM sluice_resends"), 2);

    // A table without a time column refuses a filter.
    db.execute_batch(
        "CREATE TABLE plain (id INTEGER PRIMARY KEY, v); SELECT sluice_track('plain');
         INSERT INTO plain (v) VALUES (1);",
    )
    .unwrap();
    assert!(err(&db, "SELECT sluice_resend('plain', '{\"to\": 5}')")
        .starts_with("sluice_resend: a time filter needs the time column of 'plain'"));
}

#[test]
fn an_append_only_table_never_resends_rows_from_before_the_epoch() {
    let db = memory();
    db.execute_batch(
        "SELECT sluice_device('box-1');
         CREATE TABLE readings (id INTEGER PRIMARY KEY, camera TEXT, ts TEXT);
         SELECT sluice_track('readings', '{\"time\": \"ts\"}');
         INSERT INTO readings (camera, ts) VALUES
           ('c1', '2026-12-01T10:00:00Z'), ('c1', '2026-12-01T11:00:00Z'),
           ('c2', '2026-12-01T12:00:00Z'), ('c2', '2026-12-01T13:00:00Z'),
           ('c3', '2026-12-01T14:00:00Z');",
    )
    .unwrap();
    ack(&db, &batch(&db, "readings", 2).unwrap());
    db.execute_batch("SELECT sluice_new_epoch('restored from a backup')")
        .unwrap();
    // The fork: rows up to 5 were written before the epoch (3 to 5 pending).
    assert_eq!(one::<i64>(&db, "SELECT fork_seq FROM sluice_tables"), 5);
    let e = err(&db, "SELECT sluice_resend('readings')");
    assert!(
        e.starts_with(
            "sluice_resend: append-only table 'readings' cannot re-send row 1: rows up to 5 were \
             written before the current epoch began"
        ),
        "{e}"
    );
    assert_eq!(one::<i64>(&db, "SELECT count(*) FROM sluice_resends"), 0);
    // Rows of this epoch, acknowledged newest first while the old ones wait.
    db.execute_batch(
        "INSERT INTO readings (camera, ts) VALUES ('c4', '2026-12-02T10:00:00Z'), ('c4', '2026-12-02T11:00:00Z')",
    )
    .unwrap();
    let b: Vec<u8> = db
        .query_row(
            "SELECT sluice_batch('readings', 2, '{\"order\": \"newest\"}')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    ack(&db, &b);
    assert!(err(&db, "SELECT sluice_resend('readings')").contains("cannot re-send row 1"));
    // Filtered to them, they may go again.
    assert_eq!(
        resend(&db, "readings", Some(r#"{"from": "2026-12-02"}"#)),
        2
    );
    assert_eq!(
        one::<String>(&db, "SELECT lo || ' ' || hi FROM sluice_resends"),
        "5 7"
    );
    // Once the fork is forgotten (everything acknowledged), the table's
    // epoch_seq still says where the epoch began: the old rows are refused,
    // the rows of this epoch may go again.
    send_all(&db, "readings", 1000);
    assert_eq!(pending(&db, "readings"), 0);
    assert_eq!(
        one::<Option<i64>>(&db, "SELECT fork_seq FROM sluice_tables"),
        None
    );
    let e = err(&db, "SELECT sluice_resend('readings')");
    assert!(e.contains("cannot re-send row 1: rows up to 5 were"), "{e}");
    assert_eq!(
        resend(&db, "readings", Some(r#"{"from": "2026-12-02"}"#)),
        2
    );
    send_all(&db, "readings", 1000);
    // A table first tracked in this epoch sent nothing under the parent.
    db.execute_batch(
        "CREATE TABLE later (id INTEGER PRIMARY KEY, v); SELECT sluice_track('later');
         INSERT INTO later (v) VALUES (1), (2);",
    )
    .unwrap();
    send_all(&db, "later", 1000);
    assert_eq!(resend(&db, "later", None), 2);
}

#[test]
fn a_mutable_table_resends_its_rows_at_their_versions() {
    let db = memory();
    db.execute_batch(
        "SELECT sluice_device('box-1');
         CREATE TABLE cameras (camera_id TEXT PRIMARY KEY, name TEXT);
         SELECT sluice_track('cameras', '{\"mutable\": true}');
         INSERT INTO cameras (camera_id, name) VALUES ('cam-1', 'door'), ('cam-2', 'till'), ('cam-3', 'back');
         DELETE FROM cameras WHERE camera_id = 'cam-3';",
    )
    .unwrap();
    send_all(&db, "cameras", 1000);
    assert_eq!(pending(&db, "cameras"), 0);
    let acked: i64 = tracked(&db, "cameras")["acked_seq"].as_i64().unwrap();
    db.execute_batch("ALTER TABLE cameras ADD COLUMN zone INTEGER DEFAULT 7")
        .unwrap();
    assert_eq!(resend(&db, "cameras", None), 2);
    let b = batch(&db, "cameras", 1000).unwrap();
    let d = decode(&b).unwrap();
    assert_eq!(d.header.resend, 1);
    assert_eq!((d.header.base_seq, d.header.last_seq), (0, acked));
    let versions: Vec<i64> = db
        .prepare("SELECT sluice_version FROM cameras ORDER BY sluice_version")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(d.versions, versions);
    // No tombstone in a re-send.
    assert!(d.deleted.is_empty());
    assert_eq!(column(&d, "zone"), vec![Value::Integer(7); 2]);
    assert_eq!(ack(&db, &b), 2);
    assert_eq!(pending(&db, "cameras"), 0);
    assert_eq!(tracked(&db, "cameras")["acked_seq"].as_i64(), Some(acked));
}

#[test]
fn cleanup_keeps_the_rows_of_an_unfinished_resend() {
    let db = readings();
    assert_eq!(resend(&db, "readings", None), 5);
    assert_eq!(one::<i64>(&db, "SELECT sluice_cleanup('readings', 0)"), 0);
    ack(&db, &batch(&db, "readings", 2).unwrap());
    assert_eq!(one::<i64>(&db, "SELECT sluice_cleanup('readings', 0)"), 2);
    send_all(&db, "readings", 1000);
    // The newest row stays (the rowid high-water mark).
    assert_eq!(one::<i64>(&db, "SELECT sluice_cleanup('readings', 0)"), 2);
}

#[test]
fn bad_arguments_give_clear_errors() {
    let db = readings();
    for (sql, want) in [
        (
            "SELECT sluice_resend('nope')",
            "sluice_resend: no such table: nope",
        ),
        (
            "SELECT sluice_resend(NULL)",
            "sluice_resend: the table name must be text, got NULL",
        ),
        (
            "SELECT sluice_resend(7)",
            "sluice_resend: the table name must be text, got the integer 7",
        ),
        (
            "SELECT sluice_resend('readings', '{\"from\": 99999999999999999999}')",
            "sluice_resend: option 'from' must be a time",
        ),
        (
            "SELECT sluice_resend('readings', '{\"to\": -9223372036854775808}')",
            "sluice_resend: option 'to' must be a time",
        ),
        (
            "SELECT sluice_resend('readings', '{\"fro\": 1}')",
            "sluice_resend: unknown option 'fro' (known options: from, to, reason)",
        ),
        (
            "SELECT sluice_resend('readings', 'x')",
            "sluice_resend: options are not valid JSON",
        ),
        (
            "SELECT sluice_resend('readings', 5)",
            "sluice_resend: options must be text",
        ),
    ] {
        let e = err(&db, sql);
        assert!(e.starts_with(want), "{sql}: {e}");
    }
    // A table name with quotes, tracked.
    db.execute_batch(
        "CREATE TABLE \"it's \"\"here\"\"\" (id INTEGER PRIMARY KEY, v);
         SELECT sluice_track('it''s \"here\"');
         INSERT INTO \"it's \"\"here\"\"\" (v) VALUES (1), (2);",
    )
    .unwrap();
    let name = "it's \"here\"";
    send_all(&db, name, 1000);
    assert_eq!(resend(&db, name, None), 2);
    let h = decode_header(&batch(&db, name, 1000).unwrap()).unwrap();
    assert_eq!((h.table.as_str(), h.resend), (name, 1));
    // An untracked table, and a tracked one with nothing acknowledged.
    db.execute_batch("CREATE TABLE loose (id INTEGER PRIMARY KEY)")
        .unwrap();
    assert!(err(&db, "SELECT sluice_resend('loose')")
        .starts_with("sluice_resend: table 'loose' is not tracked"));
    db.execute_batch(
        "CREATE TABLE fresh (id INTEGER PRIMARY KEY, v); SELECT sluice_track('fresh');
         INSERT INTO fresh (v) VALUES (1);",
    )
    .unwrap();
    assert_eq!(resend(&db, "fresh", None), 0);
    // An acknowledgement of a re-send this database never asked for.
    let b = batch(&db, name, 1000).unwrap();
    db.execute_batch("DELETE FROM sluice_resends").unwrap();
    let e = db
        .query_row("SELECT sluice_ack(?1)", [&b], |r| r.get::<_, i64>(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("has no re-send request 1"), "{e}");
    assert_eq!(one::<i64>(&db, "SELECT 1"), 1);
}

#[test]
fn a_new_epoch_voids_what_an_append_only_table_had_scheduled_but_not_a_release() {
    let db = readings();
    assert_eq!(resend(&db, "readings", None), 5);
    db.execute_batch("SELECT sluice_new_epoch('restored from a backup')")
        .unwrap();
    // Its rows are in the cloud under the parent stream: not sent again.
    assert_eq!(pending(&db, "readings"), 0);
    assert_eq!(tracked(&db, "readings")["resend_rows"].as_i64(), Some(0));
    assert!(batch(&db, "readings", 1000).is_none());
    db.execute_batch("INSERT INTO readings (camera) VALUES ('c9'), ('c9')")
        .unwrap();
    let b = batch(&db, "readings", 1000).unwrap();
    assert_eq!(decode_header(&b).unwrap().resend, 0);
    ack(&db, &b);
    // The acknowledgement finished the void request.
    assert_eq!(
        one::<i64>(
            &db,
            "SELECT count(*) FROM sluice_resends WHERE finished_at IS NULL"
        ),
        0
    );

    // A released quarantined row was never in the cloud: it still goes.
    db.execute_batch("INSERT INTO readings (camera) VALUES ('c10'), ('c11')")
        .unwrap();
    assert_eq!(
        one::<i64>(&db, "SELECT sluice_quarantine('readings', 8, 'bad')"),
        1
    );
    ack(&db, &batch(&db, "readings", 1000).unwrap());
    assert_eq!(one::<i64>(&db, "SELECT sluice_release('readings')"), 1);
    db.execute_batch("SELECT sluice_new_epoch('cloned')")
        .unwrap();
    assert_eq!(pending(&db, "readings"), 1);
    let d = decode(&batch(&db, "readings", 1000).unwrap()).unwrap();
    assert_eq!((d.header.resend, d.versions.clone()), (2, vec![8]));
}

#[test]
fn an_epoch_begun_with_nothing_pending_still_bounds_the_resends_of_append_only_rows() {
    let db = memory();
    db.execute_batch(
        "SELECT sluice_device('box-1');
         CREATE TABLE readings (id INTEGER PRIMARY KEY, camera TEXT, ts TEXT);
         SELECT sluice_track('readings', '{\"time\": \"ts\"}');
         INSERT INTO readings (camera, ts) VALUES
           ('c1', '2026-12-01T10:00:00Z'), ('c1', '2026-12-01T11:00:00Z');",
    )
    .unwrap();
    send_all(&db, "readings", 1000);
    // Nothing pending: the epoch leaves no fork, but records where it began.
    db.execute_batch("SELECT sluice_new_epoch('cloned from an image')")
        .unwrap();
    assert_eq!(
        one::<Option<i64>>(
            &db,
            "SELECT fork_seq FROM sluice_tables WHERE tbl = 'readings'"
        ),
        None
    );
    assert_eq!(
        one::<i64>(
            &db,
            "SELECT epoch_seq FROM sluice_tables WHERE tbl = 'readings'"
        ),
        2
    );
    db.execute_batch("INSERT INTO readings (camera, ts) VALUES ('c2', '2026-12-02T10:00:00Z')")
        .unwrap();
    send_all(&db, "readings", 1000);
    let e = err(&db, "SELECT sluice_resend('readings')");
    assert!(e.contains("cannot re-send row 1: rows up to 2 were"), "{e}");
    assert_eq!(
        resend(&db, "readings", Some(r#"{"from": "2026-12-02"}"#)),
        1
    );
    assert_eq!(
        one::<String>(&db, "SELECT lo || ' ' || hi FROM sluice_resends"),
        "2 3"
    );
}
