//! Tests of the cloud-to-edge direction: `sluice_subscribe`,
//! `sluice_unsubscribe`, `sluice_apply` and bookkeeping version 6, on real
//! SQLite connections with the extension loaded, with batches made by
//! sluice-wire as the cloud makes them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rusqlite::Connection;
use sluice_wire::{
    encode_with_deletes, BatchHeader, Changes, Column, ColumnType, EncodeOptions, Origin, Value,
};

use crate::testdb::{err, memory, one};

const STREAM: u64 = 0xC10D_0000_0000_0001;
const DEVICE: &str = "box-1";

/// A batch of cloud changes of `table` with `columns` and `rows` (`None`
/// values: NULL; `deleted[r]`: row r is a tombstone).
struct B<'a> {
    device: &'a str,
    stream: u64,
    table: &'a str,
    base: i64,
    last: i64,
    page: u32,
    last_page: bool,
    columns: Vec<(&'a str, ColumnType)>,
    rows: Vec<(bool, Vec<Value>)>,
}

impl<'a> B<'a> {
    /// An incremental batch of `cameras (id, name, fps)` from `base` to `last`.
    fn inc(base: i64, last: i64, rows: Vec<(bool, Vec<Value>)>) -> Self {
        B {
            device: DEVICE,
            stream: STREAM,
            table: "cameras",
            base,
            last,
            page: 0,
            last_page: true,
            columns: camera_columns(),
            rows,
        }
    }

    /// Page `page` of a snapshot of `cameras` at checkpoint `at`.
    fn page(at: i64, page: u32, last_page: bool, rows: Vec<(bool, Vec<Value>)>) -> Self {
        B {
            base: 0,
            last: at,
            page,
            last_page,
            ..B::inc(0, at, rows)
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let columns: Vec<Column> = self
            .columns
            .iter()
            .map(|(n, t)| Column::new(*n, *t))
            .collect();
        let n = self.rows.len();
        let versions: Vec<i64> = if self.page > 0 {
            vec![self.last; n]
        } else {
            // Positions in (base, last], the last row at last.
            (0..n as i64)
                .map(|i| self.last - (n as i64 - 1 - i).min(self.last - self.base - 1))
                .collect()
        };
        let deleted: Vec<bool> = self.rows.iter().map(|r| r.0).collect();
        let mut by_col = vec![Vec::with_capacity(n); columns.len()];
        for (_, vals) in &self.rows {
            for (c, v) in vals.iter().enumerate() {
                by_col[c].push(v.clone());
            }
        }
        let header = BatchHeader {
            pulled: None,
            device_id: self.device.into(),
            stream_id: self.stream,
            table: self.table.into(),
            base_seq: self.base,
            last_seq: self.last,
            row_count: 0,
            sent_at_ms: 1_795_132_800_000,
            fingerprint: 0,
            columns,
            digest: None,
            origin: Origin::default(),
            resend: 0,
            changes: Some(Changes {
                snapshot_page: self.page,
                last_page: self.last_page,
            }),
        };
        encode_with_deletes(
            &header,
            &versions,
            &deleted,
            &by_col,
            EncodeOptions::default(),
        )
        .unwrap()
    }
}

fn camera_columns() -> Vec<(&'static str, ColumnType)> {
    vec![
        ("id", ColumnType::Integer),
        ("name", ColumnType::Text),
        ("fps", ColumnType::Integer),
    ]
}

fn cam(id: i64, name: &str, fps: i64) -> (bool, Vec<Value>) {
    (
        false,
        vec![
            Value::Integer(id),
            Value::Text(name.into()),
            Value::Integer(fps),
        ],
    )
}

fn gone(id: i64) -> (bool, Vec<Value>) {
    (true, vec![Value::Integer(id), Value::Null, Value::Null])
}

/// A database with device `box-1` and `cameras` (the cloud owns id, name,
/// fps; the edge owns status) subscribed.
fn edge() -> Connection {
    let db = memory();
    db.execute_batch(
        "SELECT sluice_device('box-1');
         CREATE TABLE cameras (id INTEGER PRIMARY KEY, name TEXT NOT NULL, fps INTEGER,
                               status TEXT NOT NULL DEFAULT 'new');
         SELECT sluice_subscribe('cameras', '{\"columns\": [\"id\", \"name\", \"fps\"]}');",
    )
    .unwrap();
    db
}

/// `sluice_apply` of `b`: the result as JSON.
fn apply(db: &Connection, b: &B<'_>) -> serde_json::Value {
    let s: String = db
        .query_row("SELECT sluice_apply(?1)", [b.bytes()], |r| r.get(0))
        .unwrap();
    serde_json::from_str(&s).unwrap()
}

/// The error of a `sluice_apply` of `bytes` that must fail.
fn refused(db: &Connection, bytes: &[u8]) -> String {
    match db.query_row("SELECT sluice_apply(?1)", [bytes], |_| Ok(())) {
        Ok(()) => panic!("sluice_apply did not fail"),
        Err(rusqlite::Error::SqliteFailure(_, Some(m))) => m,
        Err(e) => e.to_string(),
    }
}

/// The rows of cameras: (id, name, fps, status).
fn cameras(db: &Connection) -> Vec<(i64, String, Option<i64>, String)> {
    let mut s = db
        .prepare("SELECT id, name, fps, status FROM cameras ORDER BY id")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// (stream_id, checkpoint, batches, upserted, deleted, snapshots).
fn sub(db: &Connection) -> (i64, i64, i64, i64, i64, i64) {
    db.query_row(
        "SELECT stream_id, checkpoint, batches, upserted, deleted, snapshots \
           FROM sluice_subscriptions WHERE tbl = 'cameras'",
        [],
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        },
    )
    .unwrap()
}

/// A row of cameras and the counters of its subscription.
type Camera = (i64, String, Option<i64>, String);
type Counters = (i64, i64, i64, i64, i64, i64);

/// The state a refused batch must leave as it was.
fn state(db: &Connection) -> (Vec<Camera>, Counters) {
    (cameras(db), sub(db))
}

/// `edge()` after a one-page snapshot at checkpoint 10 of cameras 1 and 2.
fn synced() -> Connection {
    let db = edge();
    let r = apply(
        &db,
        &B::page(10, 1, true, vec![cam(1, "door", 15), cam(2, "bar", 30)]),
    );
    assert_eq!(r["complete"], true);
    db
}

// ---------------------------------------------------------------------------
// sluice_subscribe / sluice_unsubscribe

#[test]
fn subscribe_describes_the_subscription_and_takes_the_primary_key() {
    let db = memory();
    db.execute_batch("CREATE TABLE t (a TEXT, b TEXT, c, PRIMARY KEY (b, a))")
        .unwrap();
    let s: String = one(&db, "SELECT sluice_subscribe('T')");
    let v: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"table": "t", "key": ["b", "a"], "columns": null,
                           "stream_id": 0, "checkpoint": 0})
    );
    // The only unique index is the default key of a table without one.
    db.execute_batch("CREATE TABLE u (x, y, z); CREATE UNIQUE INDEX u_xy ON u (y, x);")
        .unwrap();
    let s: String = one(&db, "SELECT sluice_subscribe('u')");
    assert!(s.contains("\"key\":[\"y\",\"x\"]"), "{s}");
    // Any set of columns of a unique index, in any order.
    let s: String = one(
        &db,
        "SELECT sluice_subscribe('u', '{\"key\": [\"X\", \"y\"]}')",
    );
    assert!(s.contains("\"key\":[\"x\",\"y\"]"), "{s}");
    assert_eq!(
        one::<i64>(&db, "SELECT count(*) FROM sluice_subscriptions"),
        2
    );
    assert_eq!(one::<i64>(&db, "SELECT sluice_unsubscribe('U')"), 1);
    assert_eq!(one::<i64>(&db, "SELECT sluice_unsubscribe('u')"), 0);
    assert_eq!(one::<i64>(&db, "SELECT sluice_unsubscribe('never')"), 0);
    assert_eq!(
        one::<i64>(&db, "SELECT count(*) FROM sluice_subscriptions"),
        1
    );
}

#[test]
fn subscribe_refuses_what_it_cannot_apply_by() {
    let db = memory();
    db.execute_batch(
        "CREATE TABLE nokey (a, b);
         CREATE TABLE two (a, b, c); CREATE UNIQUE INDEX two_a ON two (a);
         CREATE UNIQUE INDEX two_b ON two (b);
         CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, code TEXT);
         CREATE TABLE log (id INTEGER PRIMARY KEY, v);
         SELECT sluice_track('log');",
    )
    .unwrap();
    let cases = [
        ("SELECT sluice_subscribe('nope')", "sluice_subscribe: no such table: nope"),
        ("SELECT sluice_subscribe('sluice_tables')", "is an internal table"),
        ("SELECT sluice_subscribe('nokey')", "has no primary key and no unique index"),
        ("SELECT sluice_subscribe('two')", "has no primary key and 2 unique indexes"),
        (
            "SELECT sluice_subscribe('t', '{\"key\": [\"code\"]}')",
            "the key (code) of 't' is not its primary key nor exactly the columns of a unique index",
        ),
        ("SELECT sluice_subscribe('t', '{\"key\": [\"nope\"]}')", "option 'key': table 't' has no column 'nope'"),
        ("SELECT sluice_subscribe('t', '{\"key\": []}')", "option 'key' must name at least one column"),
        (
            "SELECT sluice_subscribe('t', '{\"columns\": [\"name\"]}')",
            "option 'columns' must include the key columns; 'id' is missing",
        ),
        (
            "SELECT sluice_subscribe('t', '{\"columns\": [\"id\", \"sluice_version\"]}')",
            "'sluice_version' is sluice's own column",
        ),
        ("SELECT sluice_subscribe('t', '{\"colums\": []}')", "unknown option 'colums' (known options: key, columns)"),
        ("SELECT sluice_subscribe('t', '[1]')", "options must be a JSON object"),
        ("SELECT sluice_subscribe('log')", "'log' is tracked as append-only"),
        ("SELECT sluice_subscribe(NULL)", "the table name must be text"),
    ];
    for (sql, want) in cases {
        let e = err(&db, sql);
        assert!(e.contains(want), "{sql}: {e}");
        assert!(e.starts_with("sluice_subscribe: "), "{e}");
    }
    assert_eq!(
        one::<i64>(&db, "SELECT count(*) FROM sluice_subscriptions"),
        0
    );
    // A subscribed table is tracked only as mutable.
    db.execute_batch("SELECT sluice_subscribe('t')").unwrap();
    let e = err(&db, "SELECT sluice_track('t')");
    assert!(
        e.contains("'t' is subscribed (sluice_subscribe): it can be tracked only as mutable"),
        "{e}"
    );
    db.execute_batch("SELECT sluice_track('t', '{\"mutable\": true}')")
        .unwrap();
}

#[test]
fn subscribing_again_changes_the_options_and_a_new_key_starts_over() {
    let db = synced();
    assert_eq!(sub(&db).1, 10);
    // Other columns: the checkpoint stays.
    db.execute_batch("SELECT sluice_subscribe('cameras', '{\"columns\": [\"id\", \"name\"]}')")
        .unwrap();
    assert_eq!(sub(&db).1, 10);
    assert_eq!(
        one::<String>(&db, "SELECT columns FROM sluice_subscriptions"),
        "[\"id\",\"name\"]"
    );
    // Without options: everything kept.
    db.execute_batch("SELECT sluice_subscribe('cameras')")
        .unwrap();
    assert_eq!(
        one::<String>(&db, "SELECT columns FROM sluice_subscriptions"),
        "[\"id\",\"name\"]"
    );
    // A new key: checkpoint and stream go back to 0 (a snapshot next).
    db.execute_batch(
        "CREATE UNIQUE INDEX cameras_name ON cameras (name);
         SELECT sluice_subscribe('cameras', '{\"key\": [\"name\"], \"columns\": null}');",
    )
    .unwrap_err();
    db.execute_batch(
        "SELECT sluice_subscribe('cameras', '{\"key\": [\"name\"], \"columns\": [\"id\", \"name\"]}');",
    )
    .unwrap();
    assert_eq!((sub(&db).0, sub(&db).1), (0, 0));
    assert_eq!(
        one::<String>(&db, "SELECT key_columns FROM sluice_subscriptions"),
        "[\"name\"]"
    );
}

// ---------------------------------------------------------------------------
// bookkeeping version 6

/// The schema of the bookkeeping: (type, name, sql) of every sluice object.
fn schema(db: &Connection) -> Vec<(String, String, Option<String>)> {
    let mut s = db
        .prepare(
            "SELECT type, name, sql FROM sqlite_master WHERE name LIKE 'sluice%' \
             ORDER BY type, name",
        )
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn a_version_5_database_upgrades_to_6_with_the_schema_of_a_fresh_one() {
    let fresh = memory();
    fresh
        .execute_batch("SELECT sluice_device('box-1')")
        .unwrap();
    assert_eq!(
        one::<i64>(
            &fresh,
            "SELECT value FROM sluice_meta WHERE key = 'schema_version'"
        ),
        6
    );
    let old = memory();
    // What version 5 had: everything but sluice_subscriptions.
    old.execute_batch(
        "SELECT sluice_device('box-1');
         DROP TABLE sluice_subscriptions;
         UPDATE sluice_meta SET value = 5 WHERE key = 'schema_version';",
    )
    .unwrap();
    // Read-only: a missing table reads as no subscription.
    assert_eq!(one::<i64>(&old, "SELECT count(*) FROM sluice_tables"), 0);
    old.execute_batch(
        "CREATE TABLE cameras (id INTEGER PRIMARY KEY, name TEXT);
         SELECT sluice_subscribe('cameras');",
    )
    .unwrap();
    assert_eq!(
        one::<i64>(
            &old,
            "SELECT value FROM sluice_meta WHERE key = 'schema_version'"
        ),
        6
    );
    old.execute_batch("SELECT sluice_unsubscribe('cameras'); DROP TABLE cameras;")
        .unwrap();
    assert_eq!(schema(&old), schema(&fresh));
    // The upgrade may run again on what it made.
    old.execute_batch(
        "DELETE FROM sluice_meta WHERE key = 'schema_version'; SELECT sluice_device('box-1');",
    )
    .unwrap();
    assert_eq!(schema(&old), schema(&fresh));
}

// ---------------------------------------------------------------------------
// sluice_apply: refusals

#[test]
fn every_refusal_names_the_problem_and_applies_nothing() {
    let db = synced();
    db.execute_batch("UPDATE cameras SET status = 'ok' WHERE id = 1")
        .unwrap();
    let before = state(&db);
    let good = B::inc(10, 11, vec![cam(1, "door 2", 15)]).bytes();
    let mut damaged = good.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x40;
    // An edge batch: no flag bit 4.
    let edge_batch = {
        let columns = vec![Column::new("id", ColumnType::Integer)];
        let header = BatchHeader {
            pulled: None,
            device_id: DEVICE.into(),
            stream_id: STREAM,
            table: "cameras".into(),
            base_seq: 10,
            last_seq: 11,
            row_count: 0,
            sent_at_ms: 0,
            fingerprint: 0,
            columns,
            digest: None,
            origin: Origin::default(),
            resend: 0,
            changes: None,
        };
        encode_with_deletes(
            &header,
            &[11],
            &[],
            &[vec![Value::Integer(1)]],
            EncodeOptions::default(),
        )
        .unwrap()
    };
    let other_device = B {
        device: "box-2",
        ..B::inc(10, 11, vec![cam(1, "x", 1)])
    }
    .bytes();
    let other_table = B {
        table: "zones",
        ..B::inc(10, 11, vec![cam(1, "x", 1)])
    }
    .bytes();
    let lacks = B {
        columns: vec![("id", ColumnType::Integer), ("nope", ColumnType::Text)],
        ..B::inc(
            10,
            11,
            vec![(false, vec![Value::Integer(1), Value::Text("x".into())])],
        )
    }
    .bytes();
    let edge_owned = B {
        columns: vec![("id", ColumnType::Integer), ("status", ColumnType::Text)],
        ..B::inc(
            10,
            11,
            vec![(false, vec![Value::Integer(1), Value::Text("x".into())])],
        )
    }
    .bytes();
    let no_key = B {
        columns: vec![("name", ColumnType::Text)],
        ..B::inc(10, 11, vec![(false, vec![Value::Text("x".into())])])
    }
    .bytes();
    let null_key = B::inc(
        10,
        12,
        vec![
            cam(3, "new", 1),
            (
                false,
                vec![Value::Null, Value::Text("x".into()), Value::Integer(1)],
            ),
        ],
    )
    .bytes();
    // Row 2 breaks a constraint of the table (name NOT NULL): row 1 is not
    // kept either.
    let bad_row = B::inc(
        10,
        12,
        vec![
            cam(3, "new", 1),
            (
                false,
                vec![Value::Integer(4), Value::Null, Value::Integer(1)],
            ),
        ],
    )
    .bytes();
    let gap = B::inc(11, 12, vec![cam(1, "x", 1)]).bytes();
    let other_stream = B {
        stream: STREAM + 1,
        ..B::inc(10, 11, vec![cam(1, "x", 1)])
    }
    .bytes();
    let page2 = B::page(20, 2, true, vec![cam(1, "x", 1)]).bytes();
    let cases: Vec<(&[u8], &str)> = vec![
        (&damaged, "sluice_apply: the batch is damaged: "),
        (b"not a batch", "sluice_apply: the batch is damaged: "),
        (&edge_batch, "sluice_apply: not a batch of cloud changes (flag bit 4 is not set)"),
        (&other_device, "sluice_apply: the batch is for device 'box-2', this database is device 'box-1'"),
        (&other_table, "sluice_apply: table 'zones' is not subscribed on this database (sluice_subscribe)"),
        (&lacks, "sluice_apply: table 'cameras' has no column 'nope' (the batch's columns: id, nope)"),
        (&edge_owned, "sluice_apply: column 'status' of 'cameras' is not one the subscription gives the cloud (id, name, fps)"),
        (&no_key, "sluice_apply: the batch lacks key column 'id' of 'cameras' (the batch's columns: name)"),
        (&null_key, "sluice_apply: row 2 of the batch has NULL in key column 'id'"),
        (&bad_row, "sluice_apply: row 2 of the batch (id = 4): NOT NULL constraint failed: cameras.name"),
        (&gap, "sluice_apply: gap: the batch follows checkpoint 11 but 'cameras' is at checkpoint 10; nothing was applied"),
        (&other_stream, "sluice_apply: 'cameras' needs a snapshot first: the batch continues stream c10d000000000002"),
        (&page2, "sluice_apply: page 2 of the snapshot of 'cameras' at checkpoint 20 without its page 1 applied before on this connection"),
    ];
    for (bytes, want) in cases {
        let e = refused(&db, bytes);
        assert!(e.starts_with(want), "want {want}\n got {e}");
        assert_eq!(state(&db), before, "{want}");
    }
    let e = err(&db, "SELECT sluice_apply('text')");
    assert_eq!(e, "sluice_apply: the batch must be a blob, got text");
    // No device id at all.
    let fresh = memory();
    fresh
        .execute_batch("CREATE TABLE cameras (id INTEGER PRIMARY KEY, name TEXT, fps INTEGER); SELECT sluice_subscribe('cameras');")
        .unwrap();
    let e = refused(&fresh, &good);
    assert!(
        e.contains("this database has no device id; the batch is for device 'box-1'"),
        "{e}"
    );
    // And the good batch applies after all that.
    let r = apply(&db, &B::inc(10, 11, vec![cam(1, "door 2", 15)]));
    assert_eq!(r["upserted"], 1);
    assert_eq!(cameras(&db)[0], (1, "door 2".into(), Some(15), "ok".into()));
}

#[test]
fn an_incremental_batch_before_the_first_snapshot_is_refused() {
    let db = edge();
    let e = refused(&db, &B::inc(0, 5, vec![cam(1, "door", 15)]).bytes());
    assert!(e.contains("'cameras' needs a snapshot first"), "{e}");
    assert!(cameras(&db).is_empty());
}

// ---------------------------------------------------------------------------
// sluice_apply: exactly once

#[test]
fn incremental_batches_apply_once_in_order() {
    let db = synced();
    assert_eq!(sub(&db), (STREAM as i64, 10, 1, 2, 0, 1));
    db.execute_batch("UPDATE cameras SET status = 'running'")
        .unwrap();
    let b = B::inc(
        10,
        14,
        vec![cam(2, "bar", 25), cam(3, "terrace", 10), gone(1)],
    );
    let r = apply(&db, &b);
    assert_eq!(
        r,
        serde_json::json!({"table": "cameras", "upserted": 2, "deleted": 1, "replay": false,
                           "checkpoint": 14, "snapshot_page": 0, "complete": true})
    );
    assert_eq!(
        cameras(&db),
        vec![
            (2, "bar".into(), Some(25), "running".into()),
            (3, "terrace".into(), Some(10), "new".into())
        ]
    );
    assert_eq!(sub(&db), (STREAM as i64, 14, 2, 4, 1, 1));
    // The same batch again, and an older one: no-ops.
    let before = state(&db);
    for b in [
        b,
        B::inc(10, 12, vec![cam(2, "old", 1)]),
        B::inc(12, 14, vec![cam(2, "old", 1)]),
    ] {
        let r = apply(&db, &b);
        assert_eq!(r["replay"], true);
        assert_eq!(
            (r["upserted"].as_i64(), r["checkpoint"].as_i64()),
            (Some(0), Some(14))
        );
        assert_eq!(state(&db), before);
    }
    // A batch with no rows moves the checkpoint.
    let r = apply(&db, &B::inc(14, 20, vec![]));
    assert_eq!(
        (r["upserted"].as_i64(), r["checkpoint"].as_i64()),
        (Some(0), Some(20))
    );
    assert_eq!(sub(&db).1, 20);
    // A delete of a row the edge does not have is nothing.
    let r = apply(&db, &B::inc(20, 21, vec![gone(99)]));
    assert_eq!(r["deleted"], 0);
    assert!(one::<String>(&db, "SELECT applied_at FROM sluice_subscriptions").ends_with('Z'));
}

#[test]
fn a_new_stream_needs_a_snapshot_which_replaces_the_rows() {
    let db = synced();
    let new = STREAM + 7;
    let e = refused(
        &db,
        &B {
            stream: new,
            ..B::inc(10, 11, vec![cam(1, "x", 1)])
        }
        .bytes(),
    );
    assert!(e.contains("needs a snapshot first"), "{e}");
    // Its snapshot at a lower checkpoint than the old stream's is taken.
    let r = apply(
        &db,
        &B {
            stream: new,
            ..B::page(3, 1, true, vec![cam(2, "bar", 30), cam(5, "hall", 5)])
        },
    );
    assert_eq!(
        (r["upserted"].as_i64(), r["deleted"].as_i64()),
        (Some(2), Some(1))
    );
    assert_eq!(sub(&db).0, new as i64);
    assert_eq!(sub(&db).1, 3);
    assert_eq!(
        cameras(&db).iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![2, 5]
    );
    // The old stream's batches are refused now.
    let e = refused(&db, &B::inc(10, 11, vec![cam(1, "x", 1)]).bytes());
    assert!(e.contains("needs a snapshot first"), "{e}");
    // A snapshot of this stream the subscription has gone past is a replay.
    apply(
        &db,
        &B {
            stream: new,
            ..B::inc(3, 8, vec![cam(2, "bar 2", 30)])
        },
    );
    let before = state(&db);
    let r = apply(
        &db,
        &B {
            stream: new,
            ..B::page(3, 1, true, vec![cam(2, "bar", 30)])
        },
    );
    assert_eq!(r["replay"], true);
    assert_eq!(state(&db), before);
}

// ---------------------------------------------------------------------------
// sluice_apply: snapshots in pages

#[test]
fn a_snapshot_in_three_pages_sweeps_the_rows_no_page_carried_and_keeps_edge_columns() {
    let db = synced();
    apply(
        &db,
        &B::inc(10, 12, vec![cam(3, "terrace", 10), cam(4, "kitchen", 12)]),
    );
    db.execute_batch("UPDATE cameras SET status = 'running' WHERE id IN (2, 4)")
        .unwrap();
    db.execute_batch("BEGIN").unwrap();
    let r = apply(
        &db,
        &B::page(50, 1, false, vec![cam(1, "door", 20), cam(2, "bar", 30)]),
    );
    assert_eq!(
        r,
        serde_json::json!({"table": "cameras", "upserted": 2, "deleted": 0, "replay": false,
                           "checkpoint": 12, "snapshot_page": 1, "complete": false})
    );
    // Nothing is swept or moved before the last page.
    assert_eq!(cameras(&db).len(), 4);
    assert_eq!(sub(&db).1, 12);
    // Page 3 cannot come before page 2; page 1 again starts the snapshot
    // again.
    let e = refused(&db, &B::page(50, 3, true, vec![cam(6, "x", 1)]).bytes());
    assert!(e.contains("page 3 of the snapshot of 'cameras' at checkpoint 50 follows page 2, but page 1 is the last applied"), "{e}");
    let r = apply(
        &db,
        &B::page(50, 1, false, vec![cam(1, "door", 20), cam(2, "bar", 30)]),
    );
    assert_eq!(
        (r["replay"].as_bool(), r["upserted"].as_i64()),
        (Some(false), Some(2))
    );
    // A page of another snapshot cannot continue this one.
    let e = refused(&db, &B::page(51, 2, false, vec![cam(6, "x", 1)]).bytes());
    assert!(e.contains("without its page 1 applied"), "{e}");
    let r = apply(&db, &B::page(50, 2, false, vec![cam(4, "kitchen", 24)]));
    assert_eq!(
        (r["upserted"].as_i64(), r["complete"].as_bool()),
        (Some(1), Some(false))
    );
    let r = apply(&db, &B::page(50, 3, true, vec![cam(5, "hall", 5)]));
    assert_eq!(
        r,
        serde_json::json!({"table": "cameras", "upserted": 1, "deleted": 1, "replay": false,
                           "checkpoint": 50, "snapshot_page": 3, "complete": true})
    );
    db.execute_batch("COMMIT").unwrap();
    // Camera 3 was in no page: swept. The edge's status stayed.
    assert_eq!(
        cameras(&db),
        vec![
            (1, "door".into(), Some(20), "new".into()),
            (2, "bar".into(), Some(30), "running".into()),
            (4, "kitchen".into(), Some(24), "running".into()),
            (5, "hall".into(), Some(5), "new".into()),
        ]
    );
    assert_eq!(sub(&db), (STREAM as i64, 50, 6, 10, 1, 2));
    // The snapshot's TEMP state is gone; the next batch follows 50.
    assert_eq!(
        one::<i64>(
            &db,
            "SELECT count(*) FROM temp.sqlite_master WHERE name LIKE 'sluice_snapshot_keys%'"
        ),
        0
    );
    apply(&db, &B::inc(50, 51, vec![gone(5)]));
    assert_eq!(cameras(&db).len(), 3);
}

#[test]
fn a_snapshot_rolled_back_leaves_nothing_and_its_page_2_is_refused() {
    let db = synced();
    db.execute_batch("BEGIN").unwrap();
    apply(&db, &B::page(50, 1, false, vec![cam(1, "door", 20)]));
    db.execute_batch("ROLLBACK").unwrap();
    let e = refused(&db, &B::page(50, 2, true, vec![cam(2, "bar", 1)]).bytes());
    assert!(
        e.contains("page 2 of the snapshot of 'cameras' at checkpoint 50 without its page 1"),
        "{e}"
    );
    // Another connection never sees this one's progress.
    let dir = std::env::temp_dir().join(format!("sluice-apply-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("edge.db").to_string_lossy().into_owned();
    let a = crate::testdb::open(&path);
    a.execute_batch(
        "SELECT sluice_device('box-1');
         CREATE TABLE cameras (id INTEGER PRIMARY KEY, name TEXT NOT NULL, fps INTEGER,
                               status TEXT NOT NULL DEFAULT 'new');
         SELECT sluice_subscribe('cameras');",
    )
    .unwrap();
    apply(&a, &B::page(50, 1, false, vec![cam(1, "door", 20)]));
    let b = crate::testdb::open(&path);
    let e = refused(&b, &B::page(50, 2, true, vec![cam(2, "bar", 1)]).bytes());
    assert!(
        e.contains("without its page 1 applied before on this connection"),
        "{e}"
    );
    // An incremental batch forgets a snapshot in progress.
    apply(&a, &B::page(60, 1, true, vec![cam(1, "door", 20)]));
    apply(&a, &B::page(70, 1, false, vec![cam(1, "door", 20)]));
    apply(&a, &B::inc(60, 61, vec![cam(1, "door", 21)]));
    let e = refused(&a, &B::page(70, 2, true, vec![cam(2, "bar", 1)]).bytes());
    assert!(e.contains("without its page 1"), "{e}");
    drop((a, b));
    std::fs::remove_dir_all(dir).unwrap();
}

// ---------------------------------------------------------------------------
// sluice_apply: the quiet rule, a table both ways

/// Pending rows of the tracked table `cameras`.
fn pending(db: &Connection) -> i64 {
    one(db, "SELECT sluice_pending('cameras')")
}

#[test]
fn rows_the_cloud_writes_are_not_sent_back_and_the_edges_own_writes_are() {
    let db = edge();
    db.execute_batch(
        "INSERT INTO cameras (id, name, fps) VALUES (9, 'own', 1);
         SELECT sluice_track('cameras', '{\"mutable\": true}');",
    )
    .unwrap();
    // The edge's own row is pending; send it (before any snapshot: it had
    // applied nothing of the cloud's).
    assert_eq!(pending(&db), 1);
    let b: Vec<u8> = one(&db, "SELECT sluice_batch('cameras')");
    assert_eq!(
        sluice_wire::decode(&b).unwrap().header.pulled,
        Some(sluice_wire::Pulled {
            stream_id: 0,
            checkpoint: 0,
        })
    );
    db.query_row("SELECT sluice_ack(?1)", [&b], |_| Ok(()))
        .unwrap();
    assert_eq!(pending(&db), 0);
    // The cloud's snapshot: inserts and an update of the edge's row.
    apply(
        &db,
        &B::page(
            10,
            1,
            true,
            vec![cam(1, "door", 15), cam(2, "bar", 30), cam(9, "own 2", 2)],
        ),
    );
    assert_eq!(pending(&db), 0);
    assert_eq!(one::<i64>(&db, "SELECT count(*) FROM sluice_tombstones"), 0);
    // Incremental: update, insert, delete: nothing pending, no tombstone.
    apply(
        &db,
        &B::inc(
            10,
            13,
            vec![cam(1, "door", 25), cam(3, "terrace", 10), gone(2)],
        ),
    );
    assert_eq!(pending(&db), 0);
    assert_eq!(one::<i64>(&db, "SELECT count(*) FROM sluice_tombstones"), 0);
    // The edge's own update of its column: pending, with the cloud's values.
    db.execute_batch("UPDATE cameras SET status = 'running' WHERE id = 1")
        .unwrap();
    assert_eq!(pending(&db), 1);
    let b: Vec<u8> = one(&db, "SELECT sluice_batch('cameras')");
    let batch = sluice_wire::decode(&b).unwrap();
    assert_eq!(batch.header.row_count, 1);
    // The batch says how far the edge had applied the cloud's changes, so
    // that the cloud lets a delete the edge had not seen win over it.
    assert_eq!(
        batch.header.pulled,
        Some(sluice_wire::Pulled {
            stream_id: sub(&db).0 as u64,
            checkpoint: 13,
        })
    );
    let names: Vec<&str> = batch
        .header
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let at = |n: &str| names.iter().position(|c| *c == n).unwrap();
    assert_eq!(batch.columns[at("fps")][0], Value::Integer(25));
    assert_eq!(
        batch.columns[at("status")][0],
        Value::Text("running".into())
    );
    db.query_row("SELECT sluice_ack(?1)", [&b], |_| Ok(()))
        .unwrap();
    // A cloud update of a row pending for the edge keeps it pending.
    db.execute_batch("UPDATE cameras SET status = 'failed' WHERE id = 3")
        .unwrap();
    assert_eq!(pending(&db), 1);
    apply(&db, &B::inc(13, 14, vec![cam(3, "terrace 2", 10)]));
    assert_eq!(pending(&db), 1);
    // The cloud's snapshot sweep deletes quietly too; the edge's own delete
    // records a tombstone.
    apply(
        &db,
        &B::page(
            20,
            1,
            true,
            vec![cam(1, "door", 25), cam(3, "terrace 2", 10)],
        ),
    );
    assert_eq!(
        one::<i64>(&db, "SELECT count(*) FROM cameras WHERE id = 9"),
        0
    );
    assert_eq!(one::<i64>(&db, "SELECT count(*) FROM sluice_tombstones"), 0);
    db.execute_batch("DELETE FROM cameras WHERE id = 1")
        .unwrap();
    assert_eq!(one::<i64>(&db, "SELECT count(*) FROM sluice_tombstones"), 1);
    // The quiet flag does not outlive the call.
    assert_eq!(
        one::<i64>(
            &db,
            "SELECT count(*) FROM sluice_meta WHERE key = 'quiet_deletes'"
        ),
        0
    );
}

#[test]
fn a_table_tracked_by_an_older_release_gets_quiet_triggers() {
    let db = edge();
    db.execute_batch("SELECT sluice_track('cameras', '{\"mutable\": true}')")
        .unwrap();
    // The update trigger as releases before 0.2's cloud-to-edge made it.
    db.execute_batch(
        "DROP TRIGGER cameras_sluice_update;
         CREATE TRIGGER cameras_sluice_update AFTER UPDATE ON cameras FOR EACH ROW
           WHEN NEW.sluice_version IS OLD.sluice_version OR NEW.sluice_version IS NULL
         BEGIN UPDATE sluice_clock SET value = value + 1 WHERE id = 1;
               UPDATE cameras SET sluice_version = (SELECT value FROM sluice_clock WHERE id = 1)
                WHERE _rowid_ = NEW._rowid_; END;",
    )
    .unwrap();
    apply(&db, &B::page(10, 1, true, vec![cam(1, "door", 15)]));
    apply(&db, &B::inc(10, 11, vec![cam(1, "door", 16)]));
    assert_eq!(pending(&db), 0);
}

// ---------------------------------------------------------------------------
// sluice_apply: size

#[test]
fn a_batch_of_100k_rows_applies_whole() {
    let db = edge();
    let rows: Vec<(bool, Vec<Value>)> = (1..=100_000)
        .map(|i| cam(i, &format!("camera {i}"), i % 60))
        .collect();
    let r = apply(&db, &B::page(1000, 1, true, rows));
    assert_eq!(
        (r["upserted"].as_i64(), r["complete"].as_bool()),
        (Some(100_000), Some(true))
    );
    assert_eq!(
        one::<i64>(&db, "SELECT count(*) FROM cameras WHERE status = 'new'"),
        100_000
    );
    let rows: Vec<(bool, Vec<Value>)> = (1..=100_000)
        .map(|i| {
            if i % 2 == 0 {
                gone(i)
            } else {
                cam(i, "renamed", 1)
            }
        })
        .collect();
    let r = apply(&db, &B::inc(1000, 200_000, rows));
    assert_eq!(
        (r["upserted"].as_i64(), r["deleted"].as_i64()),
        (Some(50_000), Some(50_000))
    );
    assert_eq!(
        one::<i64>(&db, "SELECT count(*) FROM cameras WHERE name = 'renamed'"),
        50_000
    );
}

#[test]
fn a_page_applied_twice_in_one_snapshot_is_a_replay() {
    let db = synced();
    apply(&db, &B::page(50, 1, false, vec![cam(1, "door", 20)]));
    apply(&db, &B::page(50, 2, false, vec![cam(2, "bar", 20)]));
    let r = apply(&db, &B::page(50, 2, false, vec![cam(2, "bar", 20)]));
    assert_eq!(
        (r["replay"].as_bool(), r["complete"].as_bool()),
        (Some(true), Some(false))
    );
    let r = apply(&db, &B::page(50, 3, true, vec![]));
    assert_eq!(
        (r["complete"].as_bool(), r["checkpoint"].as_i64()),
        (Some(true), Some(50))
    );
}

/// Whether a TEMP table of received keys exists on the connection.
fn keys_recorded(db: &Connection) -> bool {
    one::<i64>(
        db,
        "SELECT count(*) FROM temp.sqlite_master WHERE name LIKE 'sluice_snapshot_keys%'",
    ) > 0
}

#[test]
fn a_snapshot_into_an_empty_table_records_no_keys_until_something_else_writes() {
    let db = edge();
    db.execute_batch("BEGIN").unwrap();
    apply(
        &db,
        &B::page(10, 1, false, vec![cam(1, "door", 15), cam(2, "bar", 30)]),
    );
    // Every row comes from a page: nothing to record, nothing to sweep.
    assert!(!keys_recorded(&db));
    apply(&db, &B::page(10, 2, false, vec![cam(3, "terrace", 10)]));
    assert!(!keys_recorded(&db));
    let r = apply(&db, &B::page(10, 3, true, vec![cam(4, "hall", 5)]));
    db.execute_batch("COMMIT").unwrap();
    assert_eq!(
        (r["deleted"].as_i64(), r["complete"].as_bool()),
        (Some(0), Some(true))
    );
    assert_eq!(cameras(&db).len(), 4);
    assert_eq!(sub(&db).1, 10);

    // A write between the pages (on this connection): from then on the
    // keys are recorded; the rows present count as carried, the rows
    // deleted since are gone, and the sweep deletes what came after.
    let db = edge();
    apply(
        &db,
        &B::page(10, 1, false, vec![cam(1, "door", 15), cam(2, "bar", 30)]),
    );
    db.execute_batch(
        "INSERT INTO cameras (id, name) VALUES (7, 'local'); DELETE FROM cameras WHERE id = 2;",
    )
    .unwrap();
    apply(&db, &B::page(10, 2, false, vec![cam(3, "terrace", 10)]));
    assert!(keys_recorded(&db));
    let r = apply(&db, &B::page(10, 3, true, vec![cam(4, "hall", 5)]));
    assert_eq!(r["deleted"].as_i64(), Some(0));
    assert_eq!(
        cameras(&db).iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![1, 3, 4, 7]
    );

    // Another connection's commit between the pages: the same.
    let dir = std::env::temp_dir().join(format!("sluice-apply-fresh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("edge.db").to_string_lossy().into_owned();
    let a = crate::testdb::open(&path);
    a.execute_batch(
        "SELECT sluice_device('box-1');
         CREATE TABLE cameras (id INTEGER PRIMARY KEY, name TEXT NOT NULL, fps INTEGER,
                               status TEXT NOT NULL DEFAULT 'new');
         SELECT sluice_subscribe('cameras');",
    )
    .unwrap();
    apply(&a, &B::page(10, 1, false, vec![cam(1, "door", 15)]));
    let b = crate::testdb::open(&path);
    b.execute_batch("INSERT INTO cameras (id, name) VALUES (8, 'other')")
        .unwrap();
    apply(&a, &B::page(10, 2, true, vec![cam(3, "terrace", 10)]));
    assert_eq!(
        cameras(&a).iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![1, 3, 8]
    );
    drop((a, b));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_snapshot_into_an_empty_table_that_carries_a_key_twice_keeps_the_later_row() {
    let db = edge();
    let r = apply(
        &db,
        &B::page(
            10,
            1,
            true,
            vec![cam(1, "door", 15), cam(2, "bar", 30), cam(1, "door 2", 20)],
        ),
    );
    assert_eq!(r["upserted"].as_i64(), Some(3));
    assert_eq!(
        cameras(&db),
        vec![
            (1, "door 2".into(), Some(20), "new".into()),
            (2, "bar".into(), Some(30), "new".into())
        ]
    );
}

#[test]
fn a_new_key_forgets_the_snapshot_in_progress() {
    let db = synced();
    apply(&db, &B::page(50, 1, false, vec![cam(1, "door", 20)]));
    db.execute_batch(
        "CREATE UNIQUE INDEX cameras_name ON cameras (name);
         SELECT sluice_subscribe('cameras', '{\"key\": [\"name\"]}');",
    )
    .unwrap();
    let e = refused(&db, &B::page(50, 2, true, vec![cam(2, "bar", 1)]).bytes());
    assert!(e.contains("without its page 1 applied"), "{e}");
    // A snapshot by the new key starts at page 1.
    let r = apply(
        &db,
        &B::page(60, 1, true, vec![cam(1, "door", 20), cam(5, "hall", 1)]),
    );
    assert_eq!(
        (r["complete"].as_bool(), r["checkpoint"].as_i64()),
        (Some(true), Some(60))
    );
    assert_eq!(
        cameras(&db).iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![1, 5]
    );
}
