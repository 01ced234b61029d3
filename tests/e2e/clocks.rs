//! Wrong clocks at the edge (issue 12, case 6): rows stamped in the future
//! or the past must not block cleanup, the storage budget or the hourly
//! sync. The real extension, the real agent, a real PostgreSQL.
//!
//! A clock two years ahead is simulated by the rows' times (what the
//! pipeline writes under it) and by moving the acknowledgements' times in
//! `sluice_acks` two years ahead (what the agent records under it), as
//! `tests/python/test_sqlite_ext.py` moves them to simulate time passing.
//! Each assertion marked "failed before" held with sluice 0.1 the other way.

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use serde_json::json;
use sluice_tests::*;

const DEVICE: &str = "box-1";
const SECOND_MS: i64 = 1000;
const HOUR_MS: i64 = 3600 * SECOND_MS;
const TWO_YEARS_MS: i64 = 2 * 365 * 24 * HOUR_MS;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `n` `metrics` rows (a rollup source) one a second from `from_ms`.
fn metrics(from_ms: i64, n: i64) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            json!({"camera_id": "cam-01", "location_id": "store-042",
                   "recorded_at": iso_ms(from_ms + i * SECOND_MS),
                   "people_count": i % 9, "processing_ms": 10.0 + (i % 5) as f64})
        })
        .collect()
}

/// `n` `health_metrics` rows (no rollup) one a second from `from_ms`.
fn health(from_ms: i64, n: i64) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            json!({"location_id": "store-042", "recorded_at": iso_ms(from_ms + i * SECOND_MS),
                   "cpu_pct": (i % 100) as f64, "mem_used_mb": 512.0,
                   "disk_free_mb": 1000.0, "temp_c": 50.0})
        })
        .collect()
}

fn count(edge: &Connection, sql: &str) -> i64 {
    edge.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Rows of `table` whose time is more than a day ahead of the clock.
fn from_the_future(edge: &Connection, table: &str) -> i64 {
    count(
        edge,
        &format!(
            "SELECT count(*) FROM {table} WHERE unixepoch(recorded_at) > unixepoch('now', '+1 day')"
        ),
    )
}

/// Config for `edge` with `[cleanup] keep = "1 hour"`.
fn config(dir: &Path, edge: &Path, cloud: &CloudDb) -> PathBuf {
    write_config_with(
        dir,
        edge,
        &cloud.url,
        DEVICE,
        500,
        "\n[cleanup]\nkeep = \"1 hour\"\n",
    )
}

/// The acknowledgements made so far were recorded by a clock two years
/// ahead.
fn acks_recorded_two_years_ahead(edge: &Connection) {
    edge.execute(
        "UPDATE sluice_acks SET acked_at = acked_at + ?1",
        [TWO_YEARS_MS],
    )
    .unwrap();
}

/// Three thousand rows of each table written two years ahead, rolled up,
/// synced and acknowledged under that clock; then the clock is corrected
/// and a few rows of the last day follow, synced too.
fn written_two_years_ahead(dir: &Path, cloud: &CloudDb) -> (Connection, PathBuf) {
    let edge_path = dir.join("edge.db");
    let edge = edge_db(&edge_path, true);
    let ahead = now_ms() + TWO_YEARS_MS;
    insert_rows(&edge, "metrics", &metrics(ahead, 3000), 500);
    insert_rows(&edge, "health_metrics", &health(ahead, 3000), 500);
    let cfg = config(dir, &edge_path, cloud);
    let c = cfg.to_str().unwrap();
    run_ok(&["rollup", "--config", c]);
    run_ok(&["sync", "--mode", "full", "--config", c]);
    acks_recorded_two_years_ahead(&edge);
    let day_ago = now_ms() - 24 * HOUR_MS;
    insert_rows(&edge, "metrics", &metrics(day_ago, 100), 100);
    insert_rows(&edge, "health_metrics", &health(day_ago, 100), 100);
    run_ok(&["rollup", "--config", c]);
    run_ok(&["sync", "--mode", "full", "--config", c]);
    assert_eq!(cloud.count("metrics"), 3100);
    assert_eq!(cloud.count("health_metrics"), 3100);
    assert_eq!(
        pending(&edge, "metrics") + pending(&edge, "health_metrics"),
        0
    );
    (edge, cfg)
}

#[test]
fn rows_written_two_years_ahead_are_cleaned_up_after_the_clock_is_corrected() {
    let cloud = CloudDb::create("clock_cleanup");
    let dir = tempfile::tempdir().unwrap();
    let (edge, cfg) = written_two_years_ahead(dir.path(), &cloud);
    let c = cfg.to_str().unwrap();
    // Every acknowledgement counts as made now at the latest: an hour
    // (`keep`) must pass, not two years.
    let out = run_ok(&["cleanup", "--config", c]);
    assert!(out.contains("cleanup: 0 rows"), "{out}");
    // An hour and more later.
    edge.execute_batch("UPDATE sluice_acks SET acked_at = acked_at - 2 * 3600 * 1000")
        .unwrap();
    run_ok(&["cleanup", "--config", c]);
    // Failed before: the 3,000 rows of each table stayed (the rollup
    // source's windows "not ended yet", the other's acknowledgements two
    // years ahead).
    assert_eq!(from_the_future(&edge, "metrics"), 0);
    assert_eq!(from_the_future(&edge, "health_metrics"), 0);
    // Each keeps its newest row (the rowid high-water mark).
    assert_eq!(count(&edge, "SELECT count(*) FROM metrics"), 1);
    assert_eq!(count(&edge, "SELECT count(*) FROM health_metrics"), 1);
    // Nothing of the present was sealed by the future: a new row of the
    // present is rolled up and synced.
    insert_rows(&edge, "metrics", &metrics(now_ms(), 1), 1);
    run_ok(&["rollup", "--config", c]);
    run_ok(&["sync", "--mode", "full", "--config", c]);
    assert_eq!(cloud.count("metrics"), 3101);
    let newest: i64 = cloud
        .client()
        .query_one(
            "SELECT count(*) FROM metrics_5m WHERE window_start > now() - interval '1 hour' \
             AND window_start <= now()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(newest, 1, "the window of the new row reached the cloud");
}

#[test]
fn the_budget_drops_rows_written_two_years_ahead_after_the_clock_is_corrected() {
    let cloud = CloudDb::create("clock_budget");
    let dir = tempfile::tempdir().unwrap();
    let (edge, _cfg) = written_two_years_ahead(dir.path(), &cloud);
    // Only rolled-up raw rows may go: before, none of the rows from the
    // future could (their windows "had not ended").
    edge.execute_batch("BEGIN IMMEDIATE").unwrap();
    let dropped = count(
        &edge,
        "SELECT sluice_enforce_budget(1, '{\"rolled_up_only\": true}')",
    );
    edge.execute_batch("COMMIT").unwrap();
    assert!(dropped >= 3000, "dropped {dropped}");
    assert_eq!(from_the_future(&edge, "metrics"), 0, "failed before");
    // Then the other tables; the rows from the future go first.
    edge.execute_batch("BEGIN IMMEDIATE").unwrap();
    count(&edge, "SELECT sluice_enforce_budget(1)");
    edge.execute_batch("COMMIT").unwrap();
    assert_eq!(from_the_future(&edge, "health_metrics"), 0);
    // Every row dropped had reached the cloud.
    assert_eq!(
        count(
            &edge,
            "SELECT coalesce(sum(unsynced_rows), 0) FROM sluice_drops"
        ),
        0
    );
    // The seal is of the present: the windows of the day before stay
    // sealed, the rollup of new rows goes on.
    let sealed = count(&edge, "SELECT max(sealed_until) FROM sluice_drops");
    assert!(
        sealed <= now_ms() / 1000,
        "sealed until {sealed}: a window of the future sealed the present"
    );
    insert_rows(&edge, "metrics", &metrics(now_ms(), 1), 1);
    edge.execute_batch("BEGIN IMMEDIATE; SELECT sluice_rollup_run(); COMMIT;")
        .unwrap();
    assert_eq!(
        count(
            &edge,
            "SELECT count(*) FROM metrics_5m WHERE unixepoch(window_start) > unixepoch('now', '-1 hour') \
             AND unixepoch(window_start) <= unixepoch('now')"
        ),
        1
    );
}

/// `sluice sync --mode hourly` of `division_states`; its output.
fn hourly(config: &Path) -> String {
    run_ok(&[
        "sync",
        "--config",
        config.to_str().unwrap(),
        "--mode",
        "hourly",
        "--table",
        "division_states",
    ])
}

#[test]
fn a_row_stamped_in_the_past_does_not_hide_pending_rows_from_the_hourly_sync() {
    let cloud = CloudDb::create("clock_past_row");
    let dir = tempfile::tempdir().unwrap();
    let edge_path = dir.path().join("edge.db");
    let edge = edge_db(&edge_path, true);
    let now = now_ms();
    // 200 rows from five hours ago (for the full sync), 300 of the last
    // hour, one stamped a day ago (a clock that jumped back, a late
    // reading), then 20 more of the present.
    let mut rows = division_states(0, 521, 61);
    for (i, r) in rows.iter_mut().enumerate() {
        let i = i as i64;
        let at = match i {
            0..200 => now - 5 * HOUR_MS + i * SECOND_MS,
            200..500 => now - HOUR_MS + (i - 200) * SECOND_MS,
            500 => now - 24 * HOUR_MS,
            _ => now - 60 * SECOND_MS + (i - 501) * SECOND_MS,
        };
        r["recorded_at"] = iso_ms(at).into();
    }
    insert_rows(&edge, "division_states", &rows, 521);
    let config = write_config(dir.path(), &edge_path, &cloud.url, DEVICE, 100);
    // The default window: two hours.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(WINDOW_LINE, "");
    std::fs::write(&config, text).unwrap();

    // Failed before: the first run sent the 20 rows above the row of a day
    // ago, the second nothing, and the 300 of the last hour waited for the
    // full sync.
    hourly(&config);
    assert_eq!(cloud.count("division_states"), 321);
    assert_eq!(pending(&edge, "division_states"), 200);
    let out = hourly(&config);
    assert!(out.contains("sent 0 batches"), "nothing new: {out}");
    assert_eq!(cloud.count("division_states"), 321);

    run_ok(&[
        "sync",
        "--config",
        config.to_str().unwrap(),
        "--mode",
        "full",
        "--table",
        "division_states",
    ]);
    assert_eq!(pending(&edge, "division_states"), 0);
    assert_same_rows(
        &edge_division_states(&edge),
        &cloud_division_states(&mut cloud.client(), DEVICE),
    );
}
