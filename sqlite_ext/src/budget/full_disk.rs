//! A full disk (issue 12, case 5): the budget's options for the filesystem,
//! its goal of free space, the last resort (raw rows no rollup processed),
//! quarantined rows counted as unsynced, and the reserve it makes. Real
//! SQLite with the extension loaded ([`crate::testdb`]); the real disk-full
//! test, on a small tmpfs, is tests/e2e/disk_full.rs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use rusqlite::{params, Connection};

use super::*;
use crate::testdb::{err, memory, one, open};

fn now() -> i64 {
    crate::glue::now_ms() / 1000
}

/// `n` rows of `readings (ts, camera, people, note)`, one a second from
/// unix second `from`, `note` of `pad` bytes.
fn rows(db: &Connection, from: i64, n: i64, pad: i64) {
    db.execute(
        "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i + 1 < ?2) \
         INSERT INTO readings (ts, camera, people, note) \
         SELECT strftime('%Y-%m-%dT%H:%M:%SZ', ?1 + i, 'unixepoch'), 'c1', i % 7, \
                printf('%.*c', ?3, 'x') FROM c",
        params![from, n, pad],
    )
    .unwrap();
}

/// A tracked `readings` with a time column, rolled up into 5-minute windows.
fn rolled_readings(db: &Connection) {
    db.execute_batch(
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, ts TEXT, camera TEXT, people INTEGER,
                                note TEXT);
         SELECT sluice_device('box-1');
         SELECT sluice_track('readings', '{\"time\": \"ts\"}');
         SELECT sluice_rollup('r_5m', '{\"source\": \"readings\", \"time\": \"ts\",
             \"width\": \"5 minutes\", \"group\": [\"camera\"], \"target\": \"r_5m\",
             \"measures\": {\"n\": \"count\"}}');",
    )
    .unwrap();
}

fn sync(db: &Connection, table: &str) {
    loop {
        let b: Option<Vec<u8>> = db
            .query_row("SELECT sluice_batch(?1, 1000)", [table], |r| r.get(0))
            .unwrap();
        let Some(b) = b else { break };
        db.query_row("SELECT sluice_ack(?1)", [b], |_| Ok(()))
            .unwrap();
    }
}

fn opts() -> BudgetOptions {
    parse_budget_options(None).unwrap()
}

/// A goal of `bytes` more free space on a filesystem that has none, by
/// the data pages the drops free (deterministic: no real statvfs).
fn free_goal(db: &Connection, bytes: i64, full: bool) -> Goal {
    Goal {
        max: None,
        want_free: bytes,
        need_free: if full { bytes } else { 0 },
        free_base: 0,
        data_base: used_bytes(db).unwrap().0,
        step: None,
    }
}

/// Runs one transaction of the budget's drops toward `goal`.
fn drop_toward(db: &Connection, goal: &Goal) -> i64 {
    atomic(db, "t", || {
        let srcs = sources(db)?;
        tombstones_quietly(db, || drop_rows(db, goal, &opts(), &srcs))
    })
    .unwrap()
    .0
}

fn tombstones_quietly<T>(db: &Connection, f: impl FnOnce() -> Res<T>) -> Res<T> {
    bookkeeping::tombstones::quietly(db, f)
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-budget-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_options_of_the_filesystem_are_checked() {
    let o = parse_budget_options(Some(
        r#"{"min_free_bytes": 1048576, "reserve_bytes": 8388608}"#,
    ))
    .unwrap();
    assert_eq!((o.min_free, o.reserve), (Some(1_048_576), Some(8_388_608)));
    let o = parse_budget_options(Some(r#"{"reserve_bytes": 0}"#)).unwrap();
    assert_eq!((o.min_free, o.reserve), (None, Some(0)));
    let e = |json: &str| parse_budget_options(Some(json)).err().unwrap().0;
    assert_eq!(
        e(r#"{"min_free_bytes": -1}"#),
        "option 'min_free_bytes' must be a whole number of bytes from 0 to 1125899906842624, \
         got -1"
    );
    assert_eq!(
        e(r#"{"reserve_bytes": 2147483648}"#),
        "option 'reserve_bytes' is 2147483648 bytes, more than the most, 1073741824"
    );
    assert!(e(r#"{"min_free_bytes": 1e300}"#).contains("more than the most"));
    assert!(e(r#"{"min_free_bytes": 18446744073709551615}"#).contains("more than the most"));
    assert!(e(r#"{"reserve_bytes": "8 MiB"}"#).ends_with("got text"));
    assert!(e(r#"{"reserve_bytes": null}"#).ends_with("got null"));
    assert!(e(r#"{"min_free_bytes": true}"#).ends_with("got a boolean"));
    assert!(e(r#"{"min_free_bytes": [1]}"#).ends_with("got JSON that is not a number"));
    assert!(e(r#"{"min_free_bytes": 1.5}"#).ends_with("got 1.5"));
    assert!(e(r#"{"reserve": 1}"#)
        .ends_with("(known options: horizon, now, rolled_up_only, min_free_bytes, reserve_bytes)"));
}

#[test]
fn the_arguments_of_the_filesystem_are_checked_at_the_call() {
    let db = memory();
    // NULL max_bytes only with min_free_bytes.
    assert_eq!(
        err(&db, "SELECT sluice_enforce_budget(NULL)"),
        "sluice_enforce_budget: max_bytes must be an integer, got NULL"
    );
    assert_eq!(
        err(
            &db,
            "SELECT sluice_enforce_budget(NULL, '{\"reserve_bytes\": 1}')"
        ),
        "sluice_enforce_budget: max_bytes must be an integer, got NULL"
    );
    assert_eq!(
        err(
            &db,
            "SELECT sluice_enforce_budget('1', '{\"min_free_bytes\": 1}')"
        ),
        "sluice_enforce_budget: max_bytes must be an integer, got text"
    );
    // An in-memory database has no filesystem.
    assert_eq!(
        err(
            &db,
            "SELECT sluice_enforce_budget(NULL, '{\"min_free_bytes\": 1}')"
        ),
        "sluice_enforce_budget: the options min_free_bytes and reserve_bytes need a database \
         file; this one is in memory or temporary"
    );
    // More than the filesystem holds.
    let d = temp_dir("args");
    let db = open(d.join("edge.db").to_str().unwrap());
    let e = err(
        &db,
        "SELECT sluice_enforce_budget(NULL, '{\"min_free_bytes\": 1125899906842624}')",
    );
    assert!(
        e.starts_with("sluice_enforce_budget: min_free_bytes + reserve_bytes (1125899906842624) is more than the size of the filesystem holding"),
        "{e}"
    );
    // Within what the filesystem has free: nothing to do, the state says so.
    assert_eq!(
        one::<i64>(
            &db,
            "SELECT sluice_enforce_budget(NULL, '{\"min_free_bytes\": 4096}')"
        ),
        0
    );
    let (max, within, free, min_free, reserve): (i64, i64, i64, i64, i64) = db
        .query_row(
            "SELECT max_bytes, within_budget, free_bytes, min_free_bytes, reserve_bytes \
             FROM sluice_budget",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    assert_eq!((max, within, min_free, reserve), (0, 1, 4096, 0));
    assert!(free > 4096, "{free}");
    drop(db);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn the_reserve_is_made_beside_the_database_resized_and_released() {
    let d = temp_dir("reserve");
    let file = d.join("edge.db");
    let db = open(file.to_str().unwrap());
    db.execute_batch("PRAGMA journal_mode = WAL").unwrap();
    let reserve = d.join("edge.db-sluice-reserve");
    assert_eq!(
        one::<i64>(
            &db,
            "SELECT sluice_enforce_budget(1000000000, '{\"reserve_bytes\": 65536}')"
        ),
        0
    );
    assert_eq!(std::fs::metadata(&reserve).unwrap().len(), 65_536);
    assert_eq!(
        one::<i64>(&db, "SELECT reserve_bytes FROM sluice_budget"),
        65_536
    );
    // Inside a caller's transaction too.
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    one::<i64>(
        &db,
        "SELECT sluice_enforce_budget(1000000000, '{\"reserve_bytes\": 4096}')",
    );
    db.execute_batch("COMMIT").unwrap();
    assert_eq!(std::fs::metadata(&reserve).unwrap().len(), 4096);
    // Without the option it stays as it is; 0 deletes it.
    one::<i64>(&db, "SELECT sluice_enforce_budget(1000000000)");
    assert!(reserve.exists());
    one::<i64>(
        &db,
        "SELECT sluice_enforce_budget(1000000000, '{\"reserve_bytes\": 0}')",
    );
    assert!(!reserve.exists());
    assert_eq!(
        one::<i64>(&db, "SELECT reserve_bytes FROM sluice_budget"),
        0
    );
    // sluice_reserve() releases it on demand.
    one::<i64>(
        &db,
        "SELECT sluice_enforce_budget(1000000000, '{\"reserve_bytes\": 8192}')",
    );
    assert_eq!(one::<i64>(&db, "SELECT sluice_reserve()"), 8192);
    assert!(!reserve.exists());
    drop(db);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn outside_a_transaction_in_wal_mode_the_budget_commits_and_checkpoints() {
    let d = temp_dir("wal");
    let file = d.join("edge.db");
    let db = open(file.to_str().unwrap());
    db.execute_batch("PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0")
        .unwrap();
    rolled_readings(&db);
    rows(&db, now() - 86_400, 3000, 200);
    db.execute_batch("SELECT sluice_rollup_run()").unwrap();
    let wal = |f: &std::path::Path| {
        std::fs::metadata(format!("{}-wal", f.display())).map_or(0, |m| m.len())
    };
    assert!(wal(&file) > 500_000, "{}", wal(&file));
    let n: i64 = one(&db, "SELECT sluice_enforce_budget(100000)");
    assert!(n > 0);
    // The WAL was given back (TRUNCATE) by the call itself; the state it
    // records after the checkpoint takes a page or two.
    assert!(wal(&file) <= 3 * 4096 + 32, "{}", wal(&file));
    assert!(db.is_autocommit());
    drop(db);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn the_last_resort_drops_rows_no_rollup_processed_counted_and_sealed() {
    let db = memory();
    rolled_readings(&db);
    // 600 rows rolled up, then 1,200 the rollup has not seen. They start 60 s
    // into a 5-minute window whatever the time of the run, so the window of
    // the 600th row holds unprocessed rows too: 540 rolled-up rows may go
    // (the run failed when they started on a window's boundary: all 600).
    let day_ago = now() - 86_400;
    let day_ago = day_ago - day_ago % 300 + 60;
    rows(&db, day_ago, 600, 100);
    db.execute_batch("SELECT sluice_rollup_run()").unwrap();
    rows(&db, day_ago + 600, 1200, 100);
    let aggregates: i64 = one(&db, "SELECT count(*) FROM r_5m");
    let total = 1800;
    // Over max_bytes only: the last resort never runs; the rolled-up
    // rows go, the others stay.
    let goal = Goal {
        max: Some(1),
        ..free_goal(&db, 0, false)
    };
    let n = drop_toward(&db, &goal);
    assert!(n > 0 && n < 600, "{n}");
    assert_eq!(
        one::<i64>(
            &db,
            "SELECT coalesce(sum(unrolled_rows), 0) FROM sluice_drops"
        ),
        0
    );
    // Short of free space on a full disk: unprocessed rows go too, oldest
    // first, counted.
    let before: i64 = one(&db, "SELECT count(*) FROM readings");
    let goal = free_goal(&db, 100_000, true);
    let m = drop_toward(&db, &goal);
    assert!(m > 0, "{m}");
    assert_eq!(one::<i64>(&db, "SELECT count(*) FROM readings"), before - m);
    let (rows_, unsynced, unrolled, from, to): (i64, i64, i64, String, String) = db
        .query_row(
            "SELECT rows, unsynced_rows, unrolled_rows, from_time, to_time FROM sluice_drops \
             ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    assert_eq!((rows_, unsynced), (m, m));
    assert!(unrolled > 0 && unrolled <= m, "{unrolled} of {m}");
    assert!(from <= to, "{from} {to}");
    // Oldest first: what is left is newer than what went.
    let oldest_left: String = one(&db, "SELECT min(ts) FROM readings");
    assert!(oldest_left.as_str() > to.as_str(), "{oldest_left} {to}");
    // The seal covers the dropped windows: the rollup leaves them as they
    // were, and aggregates only the windows after.
    let sealed: i64 = one(&db, "SELECT max(sealed_until) FROM sluice_drops");
    assert!(sealed > day_ago);
    db.execute_batch("SELECT sluice_rollup_run()").unwrap();
    let recomputed: i64 = one(
        &db,
        &format!(
            "SELECT count(*) FROM r_5m WHERE unixepoch(window_start) < {} AND n > 300",
            sealed - 300
        ),
    );
    assert_eq!(recomputed, 0);
    assert!(one::<i64>(&db, "SELECT count(*) FROM r_5m") >= aggregates);
    // The newest row stays (the rowid high-water mark), whatever the goal.
    let goal = free_goal(&db, i64::MAX / 4, true);
    drop_toward(&db, &goal);
    assert_eq!(one::<i64>(&db, "SELECT count(*) FROM readings"), 1);
    assert_eq!(one::<i64>(&db, "SELECT max(id) FROM readings"), total);
    // Every row is counted once.
    assert_eq!(
        one::<i64>(&db, "SELECT sum(rows) FROM sluice_drops"),
        total - 1
    );
}

#[test]
fn a_quarantined_row_counts_as_unsynced_inside_an_acknowledged_range() {
    let db = memory();
    db.execute_batch(
        "CREATE TABLE states (id INTEGER PRIMARY KEY, ts TEXT, v INTEGER);
         SELECT sluice_device('box-1');
         SELECT sluice_track('states', '{\"time\": \"ts\"}');",
    )
    .unwrap();
    db.execute(
        "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i + 1 < 100) \
         INSERT INTO states (ts, v) \
         SELECT strftime('%Y-%m-%dT%H:%M:%SZ', ?1 + i, 'unixepoch'), i FROM c",
        [now() - 86_400],
    )
    .unwrap();
    sync(&db, "states");
    // Two acknowledged rows the cloud never got (moved aside).
    db.execute_batch(
        "INSERT INTO sluice_quarantine (tbl, seq, row_id, reason, quarantined_at)
             VALUES ('states', 5, 5, 'test', '2026-01-01T00:00:00Z'),
                    ('states', 7, 7, 'test', '2026-01-01T00:00:00Z');",
    )
    .unwrap();
    let goal = Goal {
        max: Some(1),
        ..free_goal(&db, 0, false)
    };
    assert_eq!(drop_toward(&db, &goal), 99);
    let (rows_, unsynced, unrolled): (i64, i64, Option<i64>) = db
        .query_row(
            "SELECT rows, unsynced_rows, unrolled_rows FROM sluice_drops",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    // Not a rollup source: no unrolled count.
    assert_eq!((rows_, unsynced, unrolled), (99, 2, None));
}
