//! Epochs, machine and zone, tested on a real SQLite with the extension
//! loaded ([`crate::testdb`]).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rusqlite::{params, Connection};
use serde_json::Value as Json;
use sluice_wire::{decode_header, BatchHeader, Fork};

use crate::glue::now_us;
use crate::testdb::{err, memory, one, open};

fn identity(db: &Connection) -> Json {
    serde_json::from_str(&one::<String>(db, "SELECT sluice_identity()")).unwrap()
}

fn stream(db: &Connection) -> i64 {
    one(db, "SELECT value FROM sluice_meta WHERE key = 'stream_id'")
}

fn batch(db: &Connection, table: &str, max_rows: i64) -> Option<Vec<u8>> {
    db.query_row(
        "SELECT sluice_batch(?1, ?2)",
        params![table, max_rows],
        |r| r.get(0),
    )
    .unwrap()
}

fn header(blob: &[u8]) -> BatchHeader {
    decode_header(blob).unwrap()
}

fn ack(db: &Connection, blob: &[u8]) -> i64 {
    db.query_row("SELECT sluice_ack(?1)", [blob], |r| r.get(0))
        .unwrap()
}

fn pending(db: &Connection, table: &str) -> i64 {
    db.query_row("SELECT sluice_pending(?1)", [table], |r| r.get(0))
        .unwrap()
}

fn fork_of(db: &Connection, table: &str) -> Option<(i64, i64)> {
    db.query_row(
        "SELECT fork_parent, fork_seq FROM sluice_tables WHERE tbl = ?1",
        [table],
        |r| Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?)),
    )
    .map(|(p, s)| p.zip(s))
    .unwrap()
}

/// An append-only table `readings` with `n` rows, tracked, device `box-1`.
fn readings(db: &Connection, n: i64) {
    db.execute_batch(
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, ts TEXT, camera TEXT, people INTEGER);
         SELECT sluice_device('box-1');
         SELECT sluice_track('readings');",
    )
    .unwrap();
    add_readings(db, n);
}

fn add_readings(db: &Connection, n: i64) {
    db.execute(
        "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < ?1)
         INSERT INTO readings (ts, camera, people)
         SELECT '2026-12-01 10:00:00', 'cam' || (i % 3), i FROM k",
        [n],
    )
    .unwrap();
}

/// A mutable table `cameras` with `n` rows, tracked.
fn cameras(db: &Connection, n: i64, without_rowid: bool) {
    db.execute_batch(&format!(
        "CREATE TABLE cameras (camera_id TEXT PRIMARY KEY, name TEXT){};
         SELECT sluice_device('box-1');
         SELECT sluice_track('cameras', '{{\"mutable\": true, \"key\": [\"camera_id\"]}}');",
        if without_rowid { " WITHOUT ROWID" } else { "" }
    ))
    .unwrap();
    db.execute(
        "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < ?1)
         INSERT INTO cameras (camera_id, name) SELECT 'cam' || i, 'door ' || i FROM k",
        [n],
    )
    .unwrap();
}

// ---------------------------------------------------------------------------
// sluice_machine

#[test]
fn machine_first_same_and_another() {
    let db = memory();
    readings(&db, 3);
    assert_eq!(one::<Option<String>>(&db, "SELECT sluice_machine()"), None);
    let first = stream(&db);
    assert_eq!(one::<i64>(&db, "SELECT sluice_machine('machine-a')"), 0);
    assert_eq!(one::<String>(&db, "SELECT sluice_machine()"), "machine-a");
    // The first epoch now knows its machine.
    let id = identity(&db);
    assert_eq!(id["machine"], "machine-a");
    assert_eq!(id["epochs"][0]["machine"], "machine-a");
    assert_eq!(id["epochs"][0]["reason"], "created");
    // The same machine again: nothing happens.
    assert_eq!(one::<i64>(&db, "SELECT sluice_machine('machine-a')"), 0);
    assert_eq!(stream(&db), first);
    assert_eq!(identity(&db)["epochs"].as_array().unwrap().len(), 1);
    // Another machine: the database was copied; a new epoch.
    assert_eq!(one::<i64>(&db, "SELECT sluice_machine('machine-b')"), 1);
    let second = stream(&db);
    assert_ne!(second, first);
    assert!(second > 0);
    assert_eq!(one::<String>(&db, "SELECT sluice_machine()"), "machine-b");
    let id = identity(&db);
    assert_eq!(id["stream_id"], second);
    let epochs = id["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 2);
    assert_eq!(epochs[0]["stream_id"], first);
    assert_eq!(epochs[0]["parent_stream"], Json::Null);
    assert_eq!(epochs[1]["stream_id"], second);
    assert_eq!(epochs[1]["parent_stream"], first);
    assert_eq!(
        epochs[1]["reason"],
        "moved from machine 'machine-a' to 'machine-b'"
    );
    assert_eq!(epochs[1]["machine"], "machine-b");
    // The rows written before are pending under a fork of the old stream.
    assert_eq!(fork_of(&db, "readings"), Some((first, 3)));
    // And back: another move, another epoch, whose parent is the second.
    assert_eq!(one::<i64>(&db, "SELECT sluice_machine('machine-a')"), 1);
    let id = identity(&db);
    assert_eq!(id["epochs"][2]["parent_stream"], second);
    assert_eq!(fork_of(&db, "readings"), Some((second, 3)));
}

#[test]
fn machine_ids_that_are_refused() {
    let db = memory();
    let long = "m".repeat(257);
    for (sql, want) in [
        (
            "SELECT sluice_machine(NULL)".to_string(),
            "sluice_machine: the machine id must be text, got NULL",
        ),
        (
            "SELECT sluice_machine(42)".to_string(),
            "sluice_machine: the machine id must be text, got the integer 42",
        ),
        (
            "SELECT sluice_machine(x'00')".to_string(),
            "sluice_machine: the machine id must be text, got a blob of 1 bytes",
        ),
        (
            "SELECT sluice_machine('')".to_string(),
            "sluice_machine: the machine id must not be empty",
        ),
        (
            format!("SELECT sluice_machine('{long}')"),
            "sluice_machine: the machine id is 257 characters, the limit is 256",
        ),
        (
            "SELECT sluice_machine('a' || char(10) || 'b')".to_string(),
            r#"sluice_machine: the machine id must not contain control characters, got "\n""#,
        ),
    ] {
        assert_eq!(err(&db, &sql), want, "{sql}");
    }
    assert_eq!(
        one::<i64>(
            &db,
            &format!("SELECT sluice_machine('{}')", "m".repeat(256))
        ),
        0
    );
    // Nothing refused was recorded; reading never writes.
    assert_eq!(
        one::<String>(&db, "SELECT sluice_machine()"),
        "m".repeat(256)
    );
    let fresh = memory();
    assert_eq!(
        one::<Option<String>>(&fresh, "SELECT sluice_machine()"),
        None
    );
    assert_eq!(
        one::<i64>(
            &fresh,
            "SELECT count(*) FROM sqlite_master WHERE name LIKE 'sluice%'"
        ),
        0
    );
}

// ---------------------------------------------------------------------------
// sluice_zone

#[test]
fn zones_good_and_bad() {
    let db = memory();
    assert_eq!(one::<String>(&db, "SELECT sluice_zone()"), "UTC");
    for good in [
        "Europe/Berlin",
        "America/Argentina/Buenos_Aires",
        "Etc/GMT+3",
        "+05:30",
        "-03:00",
        "UTC",
    ] {
        assert_eq!(
            db.query_row("SELECT sluice_zone(?1)", [good], |r| r.get::<_, String>(0))
                .unwrap(),
            good
        );
        assert_eq!(one::<String>(&db, "SELECT sluice_zone()"), good);
    }
    assert_eq!(one::<String>(&db, "SELECT sluice_zone('')"), "UTC");
    assert_eq!(one::<String>(&db, "SELECT sluice_zone()"), "UTC");
    db.execute_batch("SELECT sluice_zone('Asia/Kolkata')")
        .unwrap();
    let bad = [
        ("'Europe/Berlin'''", r#"has the character "'""#),
        ("'Europe\"Berlin'", r#"has the character "\"""#),
        (
            "'Europe/' || char(9) || 'Berlin'",
            r#"has the character "\t""#,
        ),
        ("'Europe/' || char(0) || 'x'", r#"has the character "\0""#),
        ("'+25:00'", "at most 14:00"),
        ("'+5'", "is not +HH:MM or -HH:MM"),
        ("'//'", "does not start with a letter"),
        (
            "printf('%.65c', 'A')",
            "the zone is 65 bytes, the limit is 64",
        ),
        ("NULL", "the zone must be text, got NULL"),
        ("3", "the zone must be text, got the integer 3"),
        ("1.5", "the zone must be text, got the real 1.5"),
        ("x'41'", "the zone must be text, got a blob of 1 bytes"),
        ("CAST(x'ff' AS TEXT)", "the zone is not valid UTF-8"),
    ];
    for (arg, want) in bad {
        let e = err(&db, &format!("SELECT sluice_zone({arg})"));
        assert!(
            e.starts_with("sluice_zone: ") && e.contains(want),
            "{arg}: {e}"
        );
    }
    assert_eq!(
        one::<String>(&db, &format!("SELECT sluice_zone('{}')", "A".repeat(64))),
        "A".repeat(64)
    );
    // Refused zones left the last good one.
    db.execute_batch("SELECT sluice_zone('Asia/Kolkata')")
        .unwrap();
    assert_eq!(one::<String>(&db, "SELECT sluice_zone()"), "Asia/Kolkata");
    assert_eq!(identity(&db)["zone"], "Asia/Kolkata");
}

// ---------------------------------------------------------------------------
// sluice_new_epoch

#[test]
fn a_new_epoch_touches_no_row_of_an_append_only_table() {
    let db = memory();
    readings(&db, 10);
    let b = batch(&db, "readings", 4).unwrap();
    assert_eq!(ack(&db, &b), 4);
    // Any change to a row would be logged here.
    db.execute_batch(
        "CREATE TABLE touched (id INTEGER);
         CREATE TRIGGER readings_touched AFTER UPDATE ON readings
           BEGIN INSERT INTO touched VALUES (OLD.id); END;",
    )
    .unwrap();
    let rows_before: Vec<(i64, i64)> = {
        let mut s = db
            .prepare("SELECT id, people FROM readings ORDER BY id")
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let old = stream(&db);
    let new: i64 = one(&db, "SELECT sluice_new_epoch('restored from a backup')");
    assert_eq!(new, stream(&db));
    assert!(new > 0 && new != old);
    assert_eq!(one::<i64>(&db, "SELECT count(*) FROM touched"), 0);
    let rows_after: Vec<(i64, i64)> = {
        let mut s = db
            .prepare("SELECT id, people FROM readings ORDER BY id")
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(rows_after, rows_before);
    assert_eq!(fork_of(&db, "readings"), Some((old, 10)));
    assert_eq!(pending(&db, "readings"), 6);
    let id = identity(&db);
    assert_eq!(id["epochs"][1]["reason"], "restored from a backup");
    assert_eq!(id["epochs"][1]["parent_stream"], old);
    assert_eq!(id["epochs"][1]["machine"], Json::Null);
}

#[test]
fn a_new_epoch_restamps_the_rows_of_a_mutable_table_changed_since_the_last_ack() {
    for without_rowid in [false, true] {
        let db = memory();
        cameras(&db, 5, without_rowid);
        let b = batch(&db, "cameras", 1000).unwrap();
        assert_eq!(ack(&db, &b), 5);
        db.execute_batch("UPDATE cameras SET name = 'bar' WHERE camera_id = 'cam2'")
            .unwrap();
        assert_eq!(pending(&db, "cameras"), 1);
        let clock: i64 = one(&db, "SELECT value FROM sluice_clock");
        assert_eq!(clock, 6);
        let t0 = now_us();
        let old = stream(&db);
        db.execute_batch("SELECT sluice_new_epoch('restored')")
            .unwrap();
        let version = |cam: &str| -> i64 {
            db.query_row(
                "SELECT sluice_version FROM cameras WHERE camera_id = ?1",
                [cam],
                |r| r.get(0),
            )
            .unwrap()
        };
        // The row changed since the acknowledgement has a new version,
        // above the old clock and the time of the call; the triggers did not
        // bump it a second time. The others keep theirs: the cloud may hold
        // newer versions of them, which the epoch must not revert.
        let hi = version("cam2");
        assert!(hi > clock && hi >= t0, "{hi} {clock} {t0}");
        let mut kept: Vec<i64> = ["cam1", "cam3", "cam4", "cam5"]
            .iter()
            .map(|c| version(c))
            .collect();
        kept.sort();
        assert_eq!(kept, [1, 3, 4, 5]);
        assert_eq!(one::<i64>(&db, "SELECT value FROM sluice_clock"), hi);
        assert_eq!(pending(&db, "cameras"), 1);
        // The fork: the largest version before the epoch.
        assert_eq!(fork_of(&db, "cameras"), Some((old, 6)));
        // The rows in version order of before (cam2 last).
        let order: Vec<String> = {
            let mut s = db
                .prepare("SELECT camera_id FROM cameras ORDER BY sluice_version")
                .unwrap();
            s.query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert_eq!(order, ["cam1", "cam3", "cam4", "cam5", "cam2"]);
        // The triggers go on from the clock.
        db.execute_batch("UPDATE cameras SET name = 'x' WHERE camera_id = 'cam1'")
            .unwrap();
        assert_eq!(version("cam1"), hi + 1);
        // What changed goes out under the new stream, and the fork goes
        // with the acknowledgement past it.
        let b = batch(&db, "cameras", 1000).unwrap();
        let h = header(&b);
        assert_eq!((h.row_count, h.stream_id), (2, stream(&db) as u64));
        assert_eq!(
            h.origin.fork,
            Some(Fork {
                parent_stream: old as u64,
                fork_seq: 6
            })
        );
        assert_eq!(ack(&db, &b), 2);
        assert_eq!(fork_of(&db, "cameras"), None);
        assert_eq!(pending(&db, "cameras"), 0);
    }
}

#[test]
fn a_new_epoch_before_any_acknowledgement_restamps_every_row() {
    let db = memory();
    cameras(&db, 5, false);
    let t0 = now_us();
    db.execute_batch("SELECT sluice_new_epoch('copied')")
        .unwrap();
    let (lo, hi, n): (i64, i64, i64) = db
        .query_row(
            "SELECT min(sluice_version), max(sluice_version), count(DISTINCT sluice_version) \
             FROM cameras",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert!(lo >= t0, "{lo} {t0}");
    assert_eq!((n, hi - lo), (5, 4));
    assert_eq!(pending(&db, "cameras"), 5);
}

/// Two mutable tables `a` and `b` (key `k`), tracked, device `box-1`.
fn two_mutable(db: &Connection) {
    db.execute_batch(
        "CREATE TABLE a (k TEXT PRIMARY KEY, v TEXT);
         CREATE TABLE b (k TEXT PRIMARY KEY, v TEXT);
         SELECT sluice_device('box-1');
         SELECT sluice_track('a', '{\"mutable\": true, \"key\": [\"k\"]}');
         SELECT sluice_track('b', '{\"mutable\": true, \"key\": [\"k\"]}');",
    )
    .unwrap();
}

fn version_of(db: &Connection, table: &str, k: &str) -> i64 {
    db.query_row(
        &format!("SELECT sluice_version FROM {table} WHERE k = ?1"),
        [k],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn a_new_epoch_restamps_the_pending_rows_of_a_table_when_another_was_acknowledged_later() {
    // Found by the fault trials: the cut-off was the clock at the last
    // acknowledgement of any mutable table, so `b`'s pending row, older than
    // `a`'s acknowledgement, kept its version; the cloud skipped it as older
    // than what the lost future sent, and the edge acknowledged it: lost.
    let db = memory();
    two_mutable(&db);
    db.execute_batch(
        "INSERT INTO b (k, v) VALUES ('b1', 'mine'); INSERT INTO a (k, v) VALUES ('a1', 'x');",
    )
    .unwrap();
    assert_eq!(
        (version_of(&db, "b", "b1"), version_of(&db, "a", "a1")),
        (1, 2)
    );
    let b = batch(&db, "a", 100).unwrap();
    assert_eq!(ack(&db, &b), 1);
    let t0 = now_us();
    db.execute_batch("SELECT sluice_new_epoch('x')").unwrap();
    // `b`'s pending row gets a version from the jumped clock and goes out
    // under the new stream; `a`'s acknowledged row keeps its version.
    let v = version_of(&db, "b", "b1");
    assert!(v >= t0, "{v} {t0}");
    assert_eq!(version_of(&db, "a", "a1"), 2);
    assert_eq!((pending(&db, "a"), pending(&db, "b")), (0, 1));
    assert_eq!(one::<i64>(&db, "SELECT value FROM sluice_clock"), v);
    let blob = batch(&db, "b", 100).unwrap();
    let h = header(&blob);
    assert_eq!(
        (h.row_count, h.stream_id, h.base_seq, h.last_seq),
        (1, stream(&db) as u64, 0, v)
    );
    assert_eq!(ack(&db, &blob), 1);
    assert_eq!(pending(&db, "b"), 0);
}

#[test]
fn a_new_epoch_restamps_the_pending_rows_between_acknowledged_ranges() {
    // One table: the rows left pending by an acknowledgement of part of the
    // backlog (oldest first up to 2, newest first from 4) get new versions;
    // the acknowledged ones keep theirs, in the ranges and at the watermark.
    let db = memory();
    cameras(&db, 6, false);
    let b = batch(&db, "cameras", 2).unwrap();
    assert_eq!(ack(&db, &b), 2);
    let b: Vec<u8> = db
        .query_row(
            "SELECT sluice_batch('cameras', 2, '{\"order\": \"newest\"}')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let h = header(&b);
    assert_eq!((h.base_seq, h.last_seq), (4, 6));
    assert_eq!(ack(&db, &b), 2);
    assert_eq!(pending(&db, "cameras"), 2);
    let t0 = now_us();
    db.execute_batch("SELECT sluice_new_epoch('x')").unwrap();
    let version = |cam: &str| -> i64 {
        db.query_row(
            "SELECT sluice_version FROM cameras WHERE camera_id = ?1",
            [cam],
            |r| r.get(0),
        )
        .unwrap()
    };
    let kept: Vec<i64> = ["cam1", "cam2", "cam5", "cam6"]
        .iter()
        .map(|c| version(c))
        .collect();
    assert_eq!(kept, [1, 2, 5, 6]);
    let (v3, v4) = (version("cam3"), version("cam4"));
    assert!(v3 >= t0 && v4 == v3 + 1, "{v3} {v4} {t0}");
    assert_eq!(pending(&db, "cameras"), 2);
    let b = batch(&db, "cameras", 100).unwrap();
    assert_eq!(header(&b).row_count, 2);
    assert_eq!(ack(&db, &b), 2);
    assert_eq!(pending(&db, "cameras"), 0);
}

#[test]
fn restamping_tables_whose_names_look_like_its_own() {
    let db = memory();
    db.execute_batch("SELECT sluice_device('box-1')").unwrap();
    for (name, rowid) in [
        ("r", true),
        ("sluice_renumbered", true),
        ("n", false),
        ("x\"; DROP TABLE r; --", false),
    ] {
        let q = sluice_wire::names::quote_ident(name);
        db.execute_batch(&format!(
            "CREATE TABLE {q} (n TEXT PRIMARY KEY, k0 INTEGER, r TEXT){};
             INSERT INTO {q} (n, k0, r) VALUES ('a', 1, 'x'), ('b', 2, 'y'), ('c', 3, 'z');",
            if rowid { "" } else { " WITHOUT ROWID" }
        ))
        .unwrap();
        db.query_row(
            "SELECT sluice_track(?1, '{\"mutable\": true}')",
            [name],
            |r| r.get::<_, i64>(0),
        )
        .unwrap();
    }
    let t0 = now_us();
    db.execute_batch("SELECT sluice_new_epoch('names')")
        .unwrap();
    let mut all = Vec::new();
    for name in ["r", "sluice_renumbered", "n", "x\"; DROP TABLE r; --"] {
        let q = sluice_wire::names::quote_ident(name);
        let mut s = db
            .prepare(&format!("SELECT sluice_version, k0 FROM {q} ORDER BY n"))
            .unwrap();
        let rows: Vec<(i64, i64)> = s
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows.iter().map(|r| r.1).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(rows.iter().all(|r| r.0 >= t0), "{name}: {rows:?}");
        all.extend(rows.into_iter().map(|r| r.0));
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 12);
    assert_eq!(all[11] - all[0], 11);
}

#[test]
fn a_mutable_table_with_a_version_above_the_clock_gets_no_duplicate() {
    let db = memory();
    cameras(&db, 3, false);
    // A version written by hand above the clock.
    db.execute_batch("UPDATE cameras SET sluice_version = 1000 WHERE camera_id = 'cam1'")
        .unwrap();
    let t0 = now_us();
    db.execute_batch("SELECT sluice_new_epoch('test')").unwrap();
    let (lo, n): (i64, i64) = db
        .query_row(
            "SELECT min(sluice_version), count(DISTINCT sluice_version) FROM cameras",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(lo >= t0 && n == 3);
}

#[test]
fn epochs_in_a_row_chain_their_parents_and_never_reuse_a_stream() {
    let db = memory();
    readings(&db, 2);
    let mut seen = vec![stream(&db)];
    for i in 0..20 {
        let s: i64 = one(&db, &format!("SELECT sluice_new_epoch('epoch {i}')"));
        assert!(s > 0 && !seen.contains(&s));
        assert_eq!(fork_of(&db, "readings"), Some((*seen.last().unwrap(), 2)));
        seen.push(s);
    }
    let id = identity(&db);
    let epochs = id["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 21);
    for (i, e) in epochs.iter().enumerate() {
        assert_eq!(e["stream_id"], seen[i]);
        let parent = if i == 0 {
            Json::Null
        } else {
            seen[i - 1].into()
        };
        assert_eq!(e["parent_stream"], parent);
    }
}

#[test]
fn a_new_epoch_is_all_or_nothing_and_only_from_top_level_sql() {
    let db = memory();
    cameras(&db, 2, false);
    let old = stream(&db);
    let versions = |db: &Connection| -> Vec<i64> {
        let mut s = db
            .prepare("SELECT sluice_version FROM cameras ORDER BY camera_id")
            .unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let before = versions(&db);
    db.execute_batch("BEGIN; SELECT sluice_new_epoch('rolled back'); ROLLBACK;")
        .unwrap();
    assert_eq!((stream(&db), versions(&db)), (old, before));
    assert_eq!(identity(&db)["epochs"].as_array().unwrap().len(), 1);
    // Writers cannot run from a view or a trigger.
    db.execute_batch("CREATE VIEW sneaky AS SELECT sluice_new_epoch('from a view')")
        .unwrap();
    assert!(err(&db, "SELECT * FROM sneaky").contains("unsafe use of sluice_new_epoch"));
    db.execute_batch("CREATE VIEW sneaky2 AS SELECT sluice_machine('x'), sluice_zone('UTC')")
        .unwrap();
    assert!(err(&db, "SELECT * FROM sneaky2").contains("unsafe use of sluice_"));
    // Readers can.
    db.execute_batch(
        "PRAGMA trusted_schema = OFF;
         CREATE VIEW who AS SELECT sluice_identity(), sluice_machine(), sluice_zone();",
    )
    .unwrap();
    let (_, machine, zone): (String, Option<String>, String) = db
        .query_row("SELECT * FROM who", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!((machine, zone.as_str()), (None, "UTC"));
    for (sql, want) in [
        (
            "SELECT sluice_new_epoch(NULL)",
            "sluice_new_epoch: the reason must be text, got NULL",
        ),
        (
            "SELECT sluice_new_epoch('')",
            "sluice_new_epoch: the reason must not be empty",
        ),
        (
            "SELECT sluice_new_epoch(7)",
            "sluice_new_epoch: the reason must be text, got the integer 7",
        ),
        (
            "SELECT sluice_new_epoch(printf('%.10001c', 'x'))",
            "sluice_new_epoch: the reason is 10001 characters, the limit is 10000",
        ),
    ] {
        assert_eq!(err(&db, sql), want);
    }
    assert_eq!(stream(&db), old);
}

#[test]
fn a_new_epoch_on_a_new_database_makes_its_bookkeeping() {
    let db = memory();
    let s: i64 = one(&db, "SELECT sluice_new_epoch('first')");
    let id = identity(&db);
    assert_eq!(id["stream_id"], s);
    let epochs = id["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 2);
    assert_eq!(epochs[0]["reason"], "created");
    assert_eq!(epochs[1]["reason"], "first");
}

// ---------------------------------------------------------------------------
// batches

#[test]
fn batches_carry_the_origin_and_the_fork_until_it_is_acknowledged() {
    let db = memory();
    readings(&db, 10);
    // Before any machine or zone: unknown machine, UTC, no fork.
    let h = header(&batch(&db, "readings", 3).unwrap());
    assert_eq!(h.origin, sluice_wire::Origin::default());
    assert!(h.digest.is_some());
    db.execute_batch("SELECT sluice_machine('machine-a'); SELECT sluice_zone('Europe/Berlin');")
        .unwrap();
    let b = batch(&db, "readings", 3).unwrap();
    let h = header(&b);
    assert_eq!(
        h.origin.machine,
        crate::origin::machine_hash(Some("machine-a"))
    );
    assert_ne!(h.origin.machine, 0);
    assert_eq!(h.origin.zone, "Europe/Berlin");
    assert_eq!(h.origin.fork, None);
    assert_eq!(ack(&db, &b), 3);
    // A batch cut before the epoch.
    let before = batch(&db, "readings", 2).unwrap();
    let old = stream(&db);
    let new: i64 = one(&db, "SELECT sluice_new_epoch('restored')");
    let e = db
        .query_row("SELECT sluice_ack(?1)", [&before], |r| r.get::<_, i64>(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("belongs to another database"), "{e}");
    // Rows written after the epoch, above the fork.
    add_readings(&db, 2);
    db.execute_batch("SELECT sluice_zone('')").unwrap();
    let fork = Some(Fork {
        parent_stream: old as u64,
        fork_seq: 10,
    });
    let b = batch(&db, "readings", 4).unwrap();
    let h = header(&b);
    assert_eq!((h.stream_id, h.base_seq, h.last_seq), (new as u64, 3, 7));
    assert_eq!((h.origin.fork, h.origin.zone.as_str()), (fork, ""));
    assert_eq!(ack(&db, &b), 4);
    // Still below fork_seq: the next batch carries it too.
    let b = batch(&db, "readings", 4).unwrap();
    let h = header(&b);
    assert_eq!((h.base_seq, h.last_seq, h.origin.fork), (7, 11, fork));
    assert_eq!(fork_of(&db, "readings"), Some((old, 10)));
    // Acknowledged past fork_seq: forgotten.
    assert_eq!(ack(&db, &b), 4);
    assert_eq!(fork_of(&db, "readings"), None);
    let h = header(&batch(&db, "readings", 4).unwrap());
    assert_eq!((h.base_seq, h.origin.fork), (11, None));
}

#[test]
fn the_fork_goes_when_nothing_pending_is_left_below_it() {
    let db = memory();
    readings(&db, 10);
    let old = stream(&db);
    db.execute_batch("SELECT sluice_new_epoch('restored')")
        .unwrap();
    let fork = Some(Fork {
        parent_stream: old as u64,
        fork_seq: 10,
    });
    assert_eq!(fork_of(&db, "readings"), Some((old, 10)));
    add_readings(&db, 5);
    let newest = |db: &Connection, n: i64| -> Vec<u8> {
        db.query_row(
            "SELECT sluice_batch('readings', ?1, '{\"order\": \"newest\"}')",
            [n],
            |r| r.get(0),
        )
        .unwrap()
    };
    // Newest first, above fork_seq: no fork, though the table keeps it.
    let b = newest(&db, 3);
    let h = header(&b);
    assert_eq!((h.base_seq, h.last_seq, h.origin.fork), (12, 15, None));
    ack(&db, &b);
    assert_eq!(fork_of(&db, "readings"), Some((old, 10)));
    // Newest first, across fork_seq: a range above the watermark.
    let b = newest(&db, 6);
    let h = header(&b);
    assert_eq!((h.base_seq, h.last_seq, h.origin.fork), (6, 12, fork));
    ack(&db, &b);
    // Rows 1..6 are still pending below fork_seq.
    assert_eq!(fork_of(&db, "readings"), Some((old, 10)));
    let b = batch(&db, "readings", 2).unwrap();
    assert_eq!(header(&b).origin.fork, fork);
    ack(&db, &b);
    assert_eq!(fork_of(&db, "readings"), Some((old, 10)));
    // The last of them: the watermark folds in the range, up to 15.
    let b = batch(&db, "readings", 4).unwrap();
    ack(&db, &b);
    assert_eq!(fork_of(&db, "readings"), None);
    assert_eq!(pending(&db, "readings"), 0);
}

#[test]
fn nothing_pending_at_the_epoch_leaves_no_fork() {
    let db = memory();
    readings(&db, 5);
    cameras(&db, 2, false);
    for t in ["readings", "cameras"] {
        let b = batch(&db, t, 100).unwrap();
        ack(&db, &b);
    }
    db.execute_batch("CREATE TABLE empty (id INTEGER PRIMARY KEY); SELECT sluice_track('empty');")
        .unwrap();
    db.execute_batch("SELECT sluice_new_epoch('copied')")
        .unwrap();
    assert_eq!(fork_of(&db, "readings"), None);
    assert_eq!(fork_of(&db, "empty"), None);
    // A mutable table acknowledged whole has nothing changed since: no
    // fork, nothing to send again.
    assert_eq!(fork_of(&db, "cameras"), None);
    assert_eq!(pending(&db, "cameras"), 0);
    assert_eq!(batch(&db, "cameras", 100), None);
    assert_eq!(batch(&db, "readings", 100), None);
}

// ---------------------------------------------------------------------------
// sluice_identity

#[test]
fn identity_of_a_database_without_and_with_bookkeeping() {
    let db = memory();
    let id = identity(&db);
    assert_eq!(
        id,
        serde_json::json!({"device_id": null, "stream_id": null, "machine": null,
                           "zone": "UTC", "epochs": []})
    );
    // Reading wrote nothing.
    assert_eq!(
        one::<i64>(
            &db,
            "SELECT count(*) FROM sqlite_master WHERE name LIKE 'sluice%'"
        ),
        0
    );
    db.execute_batch("SELECT sluice_device('box-7'); SELECT sluice_machine('m1');")
        .unwrap();
    let id = identity(&db);
    let s = stream(&db);
    assert_eq!(id["device_id"], "box-7");
    assert_eq!(id["stream_id"], s);
    assert_eq!(id["machine"], "m1");
    assert_eq!(id["zone"], "UTC");
    let e = &id["epochs"][0];
    assert_eq!(
        (
            &e["stream_id"],
            &e["parent_stream"],
            &e["reason"],
            &e["machine"]
        ),
        (&s.into(), &Json::Null, &"created".into(), &"m1".into())
    );
    let started = e["started_at"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(started, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "{started}"
    );
    assert!(started.ends_with('Z'));
    assert_eq!(e.as_object().unwrap().len(), 5);
    assert_eq!(id.as_object().unwrap().len(), 5);
}

// ---------------------------------------------------------------------------
// upgrades

fn fixture(dir: &std::path::Path) -> String {
    let path = dir.join("edge.db");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/edge-v0.1.0.db"
        ),
        &path,
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "sluice-epoch-{name}-{}-{}",
        std::process::id(),
        now_us()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_v010_fixture_upgrades_with_its_stream_as_the_first_epoch() {
    let dir = tmpdir("fixture");
    let db = open(&fixture(&dir));
    let version = |db: &Connection| -> Option<i64> {
        db.query_row(
            "SELECT value FROM sluice_meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .ok()
    };
    assert_eq!(version(&db), None);
    let s = stream(&db);
    // Read as it is: the stream is shown as the upgrade will record it.
    let before = identity(&db);
    assert_eq!(before["stream_id"], s);
    assert_eq!(before["device_id"], "fixture-box");
    assert_eq!(before["epochs"][0]["reason"], "existing before sluice 0.2");
    assert_eq!(version(&db), None);
    // Batches of a database not upgraded carry no fork.
    let h = header(&batch(&db, "readings", 100).unwrap());
    assert_eq!(h.origin, sluice_wire::Origin::default());
    // The first write upgrades.
    db.execute_batch("SELECT sluice_machine('fixture-machine')")
        .unwrap();
    assert_eq!(version(&db), Some(crate::bookkeeping::VERSION));
    let after = identity(&db);
    assert_eq!(after["stream_id"], s);
    let epochs = after["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 1);
    assert_eq!(epochs[0]["reason"], "existing before sluice 0.2");
    assert_eq!(epochs[0]["started_at"], before["epochs"][0]["started_at"]);
    assert_eq!(epochs[0]["machine"], "fixture-machine");
    // Again, after the version was deleted by hand: the same.
    db.execute_batch(
        "DELETE FROM sluice_meta WHERE key = 'schema_version'; SELECT sluice_zone('UTC');",
    )
    .unwrap();
    assert_eq!(version(&db), Some(crate::bookkeeping::VERSION));
    assert_eq!(identity(&db)["epochs"], after["epochs"]);
    // A new epoch on it: the append-only table with pending rows forks;
    // the mutable one sends its pending row again under a new version (cam0,
    // version 3, above the watermark 2), and the acknowledged one (cam1,
    // version 2) keeps its version: the cloud has it.
    assert_eq!(pending(&db, "readings"), 11);
    assert_eq!(pending(&db, "cameras"), 1);
    let t0 = now_us();
    db.execute_batch("SELECT sluice_new_epoch('restored')")
        .unwrap();
    assert_eq!(fork_of(&db, "readings"), Some((s, 20)));
    assert_eq!(pending(&db, "readings"), 11);
    assert_eq!(pending(&db, "cameras"), 1);
    let cam = |c: &str| -> i64 {
        db.query_row(
            "SELECT sluice_version FROM cameras WHERE camera_id = ?1",
            [c],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(cam("cam1"), 2);
    assert!(cam("cam0") >= t0, "{} {t0}", cam("cam0"));
    let h = header(&batch(&db, "readings", 100).unwrap());
    assert_eq!((h.base_seq, h.row_count), (5, 11));
    assert_eq!(h.origin.fork.map(|f| f.parent_stream), Some(s as u64));
    assert_eq!(one::<String>(&db, "PRAGMA integrity_check"), "ok");
    drop(db);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_version_2_database_upgrades_to_3() {
    let dir = tmpdir("v2");
    let path = dir.join("edge.db").to_string_lossy().into_owned();
    let db = open(&path);
    readings(&db, 4);
    // What version 2 had: no history of streams, no fork columns.
    db.execute_batch(
        "DROP TABLE sluice_streams;
         ALTER TABLE sluice_tables DROP COLUMN fork_parent;
         ALTER TABLE sluice_tables DROP COLUMN fork_seq;
         UPDATE sluice_meta SET value = 2 WHERE key = 'schema_version';",
    )
    .unwrap();
    let s = stream(&db);
    assert_eq!(pending(&db, "readings"), 4);
    assert_eq!(
        header(&batch(&db, "readings", 2).unwrap()).origin.fork,
        None
    );
    db.execute_batch("SELECT sluice_device('box-2')").unwrap();
    assert_eq!(
        one::<i64>(
            &db,
            "SELECT value FROM sluice_meta WHERE key = 'schema_version'"
        ),
        crate::bookkeeping::VERSION
    );
    let id = identity(&db);
    assert_eq!(id["epochs"][0]["stream_id"], s);
    assert_eq!(id["epochs"][0]["reason"], "existing before sluice 0.2");
    assert_eq!(fork_of(&db, "readings"), None);
    drop(db);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bookkeeping_tables_of_epochs_cannot_be_tracked() {
    let db = memory();
    readings(&db, 1);
    assert!(err(&db, "SELECT sluice_track('sluice_streams')").contains("internal table"));
}

// ---------------------------------------------------------------------------
// hostile input

#[test]
fn hostile_arguments_are_errors_never_panics() {
    let db = memory();
    readings(&db, 3);
    let args = [
        "NULL",
        "0",
        "-1",
        "9223372036854775807",
        "-9223372036854775808",
        "1e308",
        "-0.0",
        "''",
        "' '",
        "x''",
        "x'00ff'",
        "zeroblob(100000)",
        "CAST(x'ff' AS TEXT)",
        "CAST(x'c3' AS TEXT)",
        "'a' || char(0) || 'b'",
        "char(0)",
        "printf('%.100000c', 'x')",
        "'x\"); DROP TABLE readings; --'",
        "'''; DROP TABLE readings; --'",
        "'Europe/Berlin'",
        "'+05:30'",
        "'\u{202e}evil'",
        "'\u{1F600}'",
    ];
    let functions = [
        "sluice_machine",
        "sluice_zone",
        "sluice_new_epoch",
        "sluice_identity",
    ];
    for f in functions {
        for a in args {
            for sql in [format!("SELECT {f}({a})"), format!("SELECT {f}({a}, {a})")] {
                match db.query_row(&sql, [], |r| r.get::<_, rusqlite::types::Value>(0)) {
                    Ok(_) => {}
                    Err(rusqlite::Error::SqliteFailure(_, Some(m))) => {
                        assert!(
                            (m.starts_with(&format!("{f}: "))
                                || m.starts_with("wrong number of arguments"))
                                && !m.contains("panic"),
                            "{sql}: {m}"
                        );
                    }
                    Err(e) => panic!("{sql}: {e}"),
                }
            }
        }
    }
    // The database is whole and still syncs.
    assert_eq!(one::<i64>(&db, "SELECT count(*) FROM readings"), 3);
    assert_eq!(one::<String>(&db, "PRAGMA integrity_check"), "ok");
    let b = batch(&db, "readings", 100).unwrap();
    assert_eq!(ack(&db, &b), 3);
    let id = identity(&db);
    assert_eq!(id["stream_id"], stream(&db));
}

#[test]
fn a_clock_written_by_hand_near_the_end_is_an_error() {
    let db = memory();
    cameras(&db, 2, false);
    db.execute_batch("UPDATE sluice_clock SET value = 9223372036854775806")
        .unwrap();
    let old = stream(&db);
    let e = err(&db, "SELECT sluice_new_epoch('x')");
    assert!(e.starts_with("sluice_new_epoch: sluice_clock is at"), "{e}");
    assert_eq!(stream(&db), old);
    db.execute_batch("UPDATE sluice_clock SET value = 9223372036854775807")
        .unwrap();
    let e = err(&db, "SELECT sluice_new_epoch('x')");
    assert!(e.starts_with("sluice_new_epoch: sluice_clock is at"), "{e}");
}

/// `sluice_tracked(table)`'s `high_water`.
fn high_water(db: &Connection, table: &str) -> i64 {
    one(
        db,
        &format!("SELECT json_extract(sluice_tracked('{table}'), '$.high_water')"),
    )
}

#[test]
fn a_mutable_tables_high_water_is_its_own_not_the_shared_clock() {
    // The restore check compares the cloud's high water of each table with
    // this one. With the shared clock, writes to one mutable table after a
    // restore lifted every table above what the lost future had sent of
    // another, and the restore went unseen (fault trial seed 20261297).
    let db = memory();
    db.execute_batch(
        "SELECT sluice_device('box-1');
         CREATE TABLE a (k TEXT PRIMARY KEY, v INTEGER);
         CREATE TABLE b (k TEXT PRIMARY KEY, v INTEGER);
         SELECT sluice_track('a', '{\"mutable\": true}');
         SELECT sluice_track('b', '{\"mutable\": true}');
         INSERT INTO b (k, v) VALUES ('b1', 1);",
    )
    .unwrap();
    ack(&db, &batch(&db, "b", 100).unwrap());
    db.execute_batch("INSERT INTO a (k, v) VALUES ('a1', 1), ('a2', 2), ('a3', 3)")
        .unwrap();
    assert_eq!(high_water(&db, "b"), 1);
    assert_eq!(high_water(&db, "a"), 4);
    // A delete: its tombstone's version, then the watermark that its
    // acknowledgement moves, keep the high water at what was sent.
    db.execute_batch("DELETE FROM b WHERE k = 'b1'").unwrap();
    assert_eq!(high_water(&db, "b"), 5);
    ack(&db, &batch(&db, "b", 100).unwrap());
    assert_eq!(one::<i64>(&db, "SELECT count(*) FROM b"), 0);
    assert_eq!(high_water(&db, "b"), 5);
    // Newest first: an acknowledged range above the watermark counts.
    db.execute_batch("UPDATE a SET v = 9 WHERE k = 'a1'; DELETE FROM a WHERE k = 'a1'")
        .unwrap();
    let newest: Vec<u8> = db
        .query_row(
            "SELECT sluice_batch('a', 1, '{\"order\": \"newest\"}')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    ack(&db, &newest);
    assert_eq!(high_water(&db, "a"), 7);
}

#[test]
fn a_new_epoch_restamps_the_pending_tombstones_too() {
    // Found by the fault trials (seed 20261764): a box restored from a
    // backup changed a session's key before the restore was found. The new
    // epoch gave the session's new row a fresh version but left the old
    // key's tombstone at its version from the restored clock, below what an
    // earlier restore of the same backup had sent for that key: the cloud
    // ordered the delete before that version and kept the row.
    for without_rowid in [false, true] {
        let db = memory();
        cameras(&db, 4, without_rowid);
        let b = batch(&db, "cameras", 1000).unwrap();
        assert_eq!(ack(&db, &b), 4);
        // cam1 deleted; cam2 deleted and inserted again; cam3 re-keyed as cam9.
        db.execute_batch(
            "DELETE FROM cameras WHERE camera_id = 'cam1';
             DELETE FROM cameras WHERE camera_id = 'cam2';
             INSERT INTO cameras (camera_id, name) VALUES ('cam2', 'again');
             UPDATE cameras SET camera_id = 'cam9' WHERE camera_id = 'cam3';",
        )
        .unwrap();
        let clock: i64 = one(&db, "SELECT value FROM sluice_clock");
        let tombs = |db: &Connection| -> Vec<(String, i64)> {
            let mut s = db
                .prepare("SELECT k1, version FROM sluice_tombstones ORDER BY version")
                .unwrap();
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let before = tombs(&db);
        assert_eq!(
            before.iter().map(|t| t.0.as_str()).collect::<Vec<_>>(),
            ["cam1", "cam2", "cam3"]
        );
        assert!(before.iter().all(|t| t.1 <= clock));
        assert_eq!(pending(&db, "cameras"), 5);
        let t0 = now_us();
        db.execute_batch("SELECT sluice_new_epoch('restored')")
            .unwrap();
        // Every pending change, the deletes too, is above the old clock and
        // the time of the call, each version once; a key's row stays newer
        // than its tombstone (cam2 inserted again after its delete).
        let after = tombs(&db);
        assert_eq!(
            after.iter().map(|t| t.0.as_str()).collect::<Vec<_>>(),
            ["cam1", "cam2", "cam3"]
        );
        assert!(
            after.iter().all(|t| t.1 > clock && t.1 >= t0),
            "{after:?} {clock} {t0}"
        );
        let again = version_of_camera(&db, "cam2");
        let rekeyed = version_of_camera(&db, "cam9");
        assert!(
            after.iter().all(|t| t.1 < again && t.1 < rekeyed),
            "{after:?} {again} {rekeyed}"
        );
        let mut all: Vec<i64> = after.iter().map(|t| t.1).chain([again, rekeyed]).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 5);
        assert_eq!(
            one::<i64>(&db, "SELECT value FROM sluice_clock"),
            *all.last().unwrap()
        );
        assert_eq!(version_of_camera(&db, "cam4"), 4, "acknowledged: kept");
        assert_eq!(pending(&db, "cameras"), 5);
        // One batch carries the five with their new versions, and its
        // acknowledgement forgets the tombstones.
        let b = batch(&db, "cameras", 1000).unwrap();
        let batch = sluice_wire::decode(&b).unwrap();
        let mut sent = batch.versions.clone();
        sent.sort();
        assert_eq!(sent, all);
        assert_eq!(batch.deleted.iter().filter(|d| **d).count(), 3);
        assert_eq!(ack(&db, &b), 5);
        assert_eq!(pending(&db, "cameras"), 0);
        assert!(tombs(&db).is_empty());
    }
}

fn version_of_camera(db: &Connection, cam: &str) -> i64 {
    db.query_row(
        "SELECT sluice_version FROM cameras WHERE camera_id = ?1",
        [cam],
        |r| r.get(0),
    )
    .unwrap()
}
