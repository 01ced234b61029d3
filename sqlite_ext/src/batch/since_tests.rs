//! `sluice_batch`'s `since` window with times that are not in insertion
//! order (issue 12, case 6): a row stamped in the past never hides the
//! recent rows below it. Real SQLite with the extension loaded
//! ([`crate::testdb`]); times are relative to the real clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rusqlite::{params, Connection};
use sluice_wire::{decode, decode_header};

use crate::testdb::{memory, one};

const TWO_HOURS: &str = r#"{"since": "2 hours"}"#;

fn now() -> i64 {
    crate::glue::now_ms() / 1000
}

/// A tracked table `readings` with the time column `ts`.
fn readings(db: &Connection) {
    db.execute_batch(
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, ts TEXT, v INTEGER);
         SELECT sluice_device('box-1');
         SELECT sluice_track('readings', '{\"time\": \"ts\"}');",
    )
    .unwrap();
}

/// `n` rows, the first at unix second `from`, one a second.
fn rows(db: &Connection, from: i64, n: i64) {
    db.execute(
        "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i + 1 < ?2) \
         INSERT INTO readings (ts, v) \
         SELECT strftime('%Y-%m-%dT%H:%M:%SZ', ?1 + i, 'unixepoch'), i FROM c",
        params![from, n],
    )
    .unwrap();
}

/// One hourly run: every batch of the window, acknowledged; the ids sent.
fn hourly(db: &Connection) -> Vec<i64> {
    let mut sent = Vec::new();
    loop {
        let b: Option<Vec<u8>> = db
            .query_row(
                "SELECT sluice_batch('readings', 50, ?1)",
                [TWO_HOURS],
                |r| r.get(0),
            )
            .unwrap();
        let Some(b) = b else { break };
        // The version of a row of an append-only table is its rowid.
        sent.extend(decode(&b).unwrap().versions);
        db.query_row("SELECT sluice_ack(?1)", [b], |_| Ok(()))
            .unwrap();
    }
    sent.sort_unstable();
    sent
}

fn pending(db: &Connection) -> i64 {
    one(db, "SELECT sluice_pending('readings')")
}

#[test]
fn a_row_stamped_in_the_past_does_not_hide_the_recent_rows_below_it() {
    let db = memory();
    readings(&db);
    // Five hours ago (left for the full sync), then 100 rows of the last
    // hour, then one stamped a day ago (a clock that jumped back, a late
    // reading), then 10 more of the present.
    rows(&db, now() - 5 * 3600, 20);
    rows(&db, now() - 3600, 100);
    rows(&db, now() - 86_400, 1);
    rows(&db, now() - 60, 10);
    assert_eq!(hourly(&db), (21..=131).collect::<Vec<_>>());
    assert_eq!(pending(&db), 20);
    // The next run has nothing new.
    assert_eq!(hourly(&db), Vec::<i64>::new());
    assert_eq!(pending(&db), 20);
}

#[test]
fn the_window_starts_above_the_newest_old_row_when_the_times_are_in_order() {
    let db = memory();
    readings(&db);
    rows(&db, now() - 5 * 3600, 20);
    rows(&db, now() - 3600, 30);
    let b: Vec<u8> = one(
        &db,
        &format!("SELECT sluice_batch('readings', 1000, '{TWO_HOURS}')"),
    );
    let h = decode_header(&b).unwrap();
    assert_eq!((h.base_seq, h.last_seq), (20, 50));
}

#[test]
fn rows_from_the_future_below_the_window_do_not_pull_it_down() {
    let db = memory();
    readings(&db);
    // Written two years ahead, then the clock was corrected.
    rows(&db, now() + 2 * 365 * 86_400, 10);
    rows(&db, now() - 5 * 3600, 20);
    rows(&db, now() - 3600, 30);
    // A row from the future above the window's start goes with it.
    rows(&db, now() + 2 * 365 * 86_400, 1);
    assert_eq!(hourly(&db), (31..=61).collect::<Vec<_>>());
    assert_eq!(pending(&db), 30);
}
