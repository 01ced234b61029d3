//! A clock that jumped forward and was corrected (issue 12, case 6):
//! cleanup, the storage budget and the rollups never wait for a time from
//! the future. Real SQLite with the extension loaded ([`crate::testdb`]);
//! times are relative to the real clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rusqlite::{params, Connection};

use crate::testdb::{memory, one};
use crate::time::FUTURE_TOLERANCE_SECS;

/// Two years, in seconds.
const TWO_YEARS: i64 = 2 * 365 * 86_400;

fn now() -> i64 {
    crate::glue::now_ms() / 1000
}

/// Inserts `n` rows into `table (ts, camera, people, note)`, the first at
/// unix second `from`, one a second, `note` of `pad` bytes.
fn rows(db: &Connection, table: &str, from: i64, n: i64, pad: i64) {
    db.execute(
        &format!(
            "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i + 1 < ?2) \
             INSERT INTO {table} (ts, camera, people, note) \
             SELECT strftime('%Y-%m-%dT%H:%M:%SZ', ?1 + i, 'unixepoch'), 'c1', i % 7, \
                    printf('%.*c', ?3, 'x') FROM c"
        ),
        params![from, n, pad],
    )
    .unwrap();
}

/// Sends every pending row of `table` and acknowledges it (what a sync does).
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

fn count(db: &Connection, sql: &str) -> i64 {
    one(db, sql)
}

/// Rows of `readings` whose time is from the future.
fn future_rows(db: &Connection) -> i64 {
    count(
        db,
        &format!(
            "SELECT count(*) FROM readings WHERE unixepoch(ts) > {}",
            now() + FUTURE_TOLERANCE_SECS
        ),
    )
}

/// A tracked table `readings` with a time column.
fn readings(db: &Connection) {
    db.execute_batch(
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, ts TEXT, camera TEXT, people INTEGER,
                                note TEXT);
         SELECT sluice_device('box-1');
         SELECT sluice_track('readings', '{\"time\": \"ts\"}');",
    )
    .unwrap();
}

/// `readings` with a rollup of 5-minute windows into `r_5m`.
fn rolled_readings(db: &Connection) {
    readings(db);
    db.execute_batch(
        "SELECT sluice_rollup('r_5m', '{\"source\": \"readings\", \"time\": \"ts\",
             \"width\": \"5 minutes\", \"group\": [\"camera\"], \"target\": \"r_5m\",
             \"measures\": {\"n\": \"count\"}}');",
    )
    .unwrap();
}

#[test]
fn cleanup_does_not_wait_for_acknowledgements_made_by_a_clock_that_was_ahead() {
    let db = memory();
    readings(&db);
    rows(&db, "readings", now() + TWO_YEARS, 3000, 1);
    sync(&db, "readings");
    // The clock that wrote and acknowledged them was two years ahead; it
    // has been corrected since.
    db.execute(
        "UPDATE sluice_acks SET acked_at = acked_at + ?1",
        [TWO_YEARS * 1000],
    )
    .unwrap();
    // Acknowledged "now" at the latest: kept `keep` from now, not for two years.
    assert_eq!(count(&db, "SELECT sluice_cleanup('readings', '1 hour')"), 0);
    db.execute_batch("UPDATE sluice_acks SET acked_at = acked_at - 2 * 3600 * 1000")
        .unwrap();
    assert_eq!(
        count(&db, "SELECT sluice_cleanup('readings', '1 hour')"),
        2999
    );
    // The newest row stays (the rowid high-water mark).
    assert_eq!(count(&db, "SELECT count(*) FROM readings"), 1);
    // Without keep, at once.
    let db = memory();
    readings(&db);
    rows(&db, "readings", now() + TWO_YEARS, 10, 1);
    sync(&db, "readings");
    db.execute(
        "UPDATE sluice_acks SET acked_at = acked_at + ?1",
        [TWO_YEARS * 1000],
    )
    .unwrap();
    assert_eq!(count(&db, "SELECT sluice_cleanup('readings', 0)"), 9);
}

#[test]
fn cleanup_of_a_rollup_source_lets_rows_from_the_future_go_and_seals_only_the_present() {
    let db = memory();
    rolled_readings(&db);
    // A day ago (windows long closed), then 3,000 rows two years ahead,
    // then the clock is corrected: an hour of rows of the present.
    let day_ago = now() - 86_400;
    rows(&db, "readings", day_ago, 600, 1);
    rows(&db, "readings", now() + TWO_YEARS, 3000, 1);
    rows(&db, "readings", now() - 3600, 60, 1);
    db.execute_batch("SELECT sluice_rollup_run()").unwrap();
    sync(&db, "readings");
    let deleted = count(&db, "SELECT sluice_cleanup('readings', 0)");
    // Every row of the past day and of the future; the last hour is within
    // the late-data horizon.
    assert_eq!(deleted, 600 + 3000, "deleted {deleted}");
    assert_eq!(future_rows(&db), 0);
    // The seal is in the past day: the rollup of the present goes on.
    let sealed = count(
        &db,
        "SELECT value FROM sluice_meta WHERE key = 'sealed_until:readings'",
    );
    assert!(
        sealed > day_ago && sealed <= day_ago + 600 + 300,
        "sealed until {sealed}"
    );
    rows(&db, "readings", now(), 1, 1);
    db.execute_batch("SELECT sluice_rollup_run()").unwrap();
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT n FROM r_5m WHERE window_start = strftime('%Y-%m-%dT%H:%M:%SZ', \
                 {0} - {0} % 300, 'unixepoch')",
                now()
            )
        ),
        1
    );
}

#[test]
fn cleanup_keeps_rows_from_the_future_that_a_rollup_has_not_processed() {
    let db = memory();
    rolled_readings(&db);
    // The rows of a day ago and the late row share one 5-minute window
    // whatever the time of the run: they start 60 s into a window.
    let day_ago = now() - 86_400;
    let day_ago = day_ago - day_ago % 300 + 60;
    rows(&db, "readings", day_ago, 10, 1);
    db.execute_batch("SELECT sluice_rollup_run()").unwrap();
    rows(&db, "readings", now() + TWO_YEARS, 10, 1);
    rows(&db, "readings", day_ago + 20, 1, 1);
    sync(&db, "readings");
    // The rollup has seen neither the rows from the future nor the late
    // row (whose window keeps the rows of a day ago): everything stays.
    assert_eq!(count(&db, "SELECT sluice_cleanup('readings', 0)"), 0);
    assert_eq!(future_rows(&db), 10);
    db.execute_batch("SELECT sluice_rollup_run()").unwrap();
    // All but the newest row (the late one).
    assert_eq!(count(&db, "SELECT sluice_cleanup('readings', 0)"), 20);
    assert_eq!(future_rows(&db), 0);
}

/// The bytes the budget counts now (an in-memory database has no WAL).
fn used(db: &Connection) -> i64 {
    count(
        db,
        "SELECT (SELECT page_count FROM pragma_page_count) - \
                (SELECT freelist_count FROM pragma_freelist_count)",
    ) * count(db, "SELECT page_size FROM pragma_page_size")
}

#[test]
fn the_budget_drops_rolled_up_rows_from_the_future_first_and_seals_only_the_present() {
    let db = memory();
    rolled_readings(&db);
    let day_ago = now() - 86_400;
    rows(&db, "readings", day_ago, 2000, 200);
    rows(&db, "readings", now() + TWO_YEARS, 2000, 200);
    rows(&db, "readings", now() - 60, 10, 1);
    db.execute_batch("SELECT sluice_rollup_run()").unwrap();
    sync(&db, "readings");
    // Room for all but some of what the rows take: the rows from the
    // future go first, and they are enough.
    let max = used(&db) - 100 * 1024;
    let dropped = count(
        &db,
        &format!("SELECT sluice_enforce_budget({max}, '{{\"rolled_up_only\": true}}')"),
    );
    assert!(dropped > 0 && dropped <= 2000, "dropped {dropped}");
    assert_eq!(count(&db, "SELECT within_budget FROM sluice_budget"), 1);
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT count(*) FROM readings WHERE unixepoch(ts) <= {}",
                now() + 3600
            )
        ),
        2010,
        "no row of the present went"
    );
    // Nothing sealed: the rows that went were all from the future.
    assert!(
        count(
            &db,
            "SELECT max(sealed_until) FROM sluice_drops WHERE tbl = 'readings'"
        ) <= day_ago
    );
    // Then, with no room at all, everything that may go goes, and the seal
    // stays in the past day.
    count(
        &db,
        "SELECT sluice_enforce_budget(1, '{\"rolled_up_only\": true}')",
    );
    assert_eq!(future_rows(&db), 0);
    let sealed = count(&db, "SELECT max(sealed_until) FROM sluice_drops");
    assert!(
        sealed > day_ago && sealed <= day_ago + 2000 + 300,
        "sealed until {sealed}"
    );
    rows(&db, "readings", now(), 1, 1);
    db.execute_batch("SELECT sluice_rollup_run()").unwrap();
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT n FROM r_5m WHERE window_start = strftime('%Y-%m-%dT%H:%M:%SZ', \
                 {0} - {0} % 300, 'unixepoch')",
                now()
            )
        ),
        count(
            &db,
            &format!(
                "SELECT count(*) FROM readings WHERE unixepoch(ts) >= {0} - {0} % 300",
                now()
            )
        )
    );
}

#[test]
fn the_budget_drops_rows_from_the_future_of_other_tables_first() {
    let db = memory();
    readings(&db);
    rows(&db, "readings", now() - 3 * 86_400, 2000, 200);
    rows(&db, "readings", now() + TWO_YEARS, 2000, 200);
    rows(&db, "readings", now() - 60, 10, 1);
    sync(&db, "readings");
    let max = used(&db) - 100 * 1024;
    let dropped = count(&db, &format!("SELECT sluice_enforce_budget({max})"));
    assert!(dropped > 0 && dropped <= 2000, "dropped {dropped}");
    assert_eq!(count(&db, "SELECT within_budget FROM sluice_budget"), 1);
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT count(*) FROM readings WHERE unixepoch(ts) <= {}",
                now() + 3600
            )
        ),
        2010,
        "the rows of three days ago stay while rows from the future are left"
    );
}

#[test]
fn rows_from_the_future_not_yet_rolled_up_do_not_hold_back_the_present() {
    let db = memory();
    rolled_readings(&db);
    rows(&db, "readings", now() - 86_400, 10, 1);
    db.execute_batch("SELECT sluice_rollup_run()").unwrap();
    rows(&db, "readings", now() + TWO_YEARS, 10, 1);
    sync(&db, "readings");
    // The rows of a day ago go; those from the future wait for the rollup.
    assert_eq!(count(&db, "SELECT sluice_cleanup('readings', 0)"), 10);
    assert_eq!(future_rows(&db), 10);
    let sealed = count(
        &db,
        "SELECT value FROM sluice_meta WHERE key = 'sealed_until:readings'",
    );
    assert!(sealed <= now() - 86_400 + 10 + 300, "sealed until {sealed}");
}
