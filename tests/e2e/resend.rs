//! Re-sending (issue 12, case 8) end to end: the real `sluice0.so`, the
//! real agent binary, a real PostgreSQL with the default schema. After
//! `ALTER TABLE ... ADD COLUMN ... DEFAULT 7` at the edge (and the column in
//! the cloud), the rows synced before are NULL in the cloud and `sluice
//! verify` reports them different; `sluice resend` and a sync send them
//! again, exactly once (no duplicate row), also when the agent is killed
//! between the cloud's commit of a re-send batch and its acknowledgement.
//!
//! With sluice 0.1 nothing could send them again: verify reported the rows
//! different for ever (the first verify below).
//!
//! The story of docs/agent.md's `sluice resend` section is run as written
//! ([`agent_docs`]).

mod agent_docs;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use agent_docs::Story;
use sluice_tests::*;

const DEVICE: &str = "store-042-box-1";

fn sync(config: &Path, table: &str) -> String {
    run_ok(&[
        "sync",
        "--config",
        config.to_str().unwrap(),
        "--table",
        table,
    ])
}

fn verify(config: &Path, table: &str, range: &[&str]) -> (bool, String) {
    let mut args = vec![
        "verify",
        "--config",
        config.to_str().unwrap(),
        "--table",
        table,
    ];
    args.extend(range);
    let out = agent(&args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Runs `sluice sync` with `SLUICE_FAILPOINT=after-ingest:N` and kills it
/// (SIGKILL) once the N-th ingest is committed in the cloud, before its
/// acknowledgement at the edge.
fn sync_killed_after_ingest(config: &Path, table: &str, n: u32) {
    let mut child = agent(&[
        "sync",
        "--config",
        config.to_str().unwrap(),
        "--table",
        table,
    ])
    .env("SLUICE_FAILPOINT", format!("after-ingest:{n}"))
    .stderr(Stdio::piped())
    .stdout(Stdio::null())
    .spawn()
    .unwrap();
    let want = format!("failpoint after-ingest:{n} reached");
    let stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut reached = false;
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if line.contains(&want) {
            reached = true;
            break;
        }
        seen.push(line);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(reached, "the agent never reached the failpoint: {seen:#?}");
}

/// The cloud's `zone_count` of the device's `division_states`, as
/// (value, rows) groups.
fn zone_counts(cloud: &CloudDb) -> Vec<(Option<i32>, i64)> {
    cloud
        .client()
        .query(
            "SELECT zone_count, count(*) FROM division_states GROUP BY 1 ORDER BY 1 NULLS FIRST",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Distinct cloud rows and all cloud rows of the table: equal when no row is
/// there twice.
fn rows_and_distinct(cloud: &CloudDb, table: &str, key: &str) -> (i64, i64) {
    let r = cloud
        .client()
        .query_one(
            &format!("SELECT count(*), count(DISTINCT ({key})) FROM {table}"),
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

#[test]
fn an_append_only_table_is_sent_again_after_add_column_default_exactly_once() {
    let cloud = CloudDb::create("resend");
    let dir = tempfile::tempdir().unwrap();
    let (edge_path, edge) = edge_with_division_states(dir.path(), 300, 31);
    let config = write_config(dir.path(), &edge_path, &cloud.url, DEVICE, 100);
    let out = sync(&config, "division_states");
    assert!(out.contains("sent 3 batches, 300 rows"), "{out}");
    let mut story = Story::new(&["### `sluice resend "], &config, &edge, &cloud);

    story.step("sqlite3 edge.db");
    story.step("psql cloud");
    let before = story.step("sluice verify");
    assert!(
        !before.success,
        "the rows synced before differ: {}",
        before.stdout
    );
    assert_eq!(zone_counts(&cloud), [(None, 300)]);

    assert!(story.step("sluice resend").success);
    assert_eq!(
        pending(&edge, "division_states"),
        300,
        "re-sent rows are pending"
    );
    let json = run_ok(&[
        "status",
        "--config",
        config.to_str().unwrap(),
        "--offline",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let t = v["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "division_states")
        .unwrap()
        .clone();
    assert_eq!(t["resend_rows"].as_i64(), Some(300), "{t}");
    let status = run_ok(&["status", "--config", config.to_str().unwrap(), "--offline"]);
    assert!(
        status.contains("re-sending:    division_states 300 rows"),
        "{status}"
    );

    assert!(story.step("sluice sync").success);
    assert!(story.step("sluice verify").success);
    assert_eq!(zone_counts(&cloud), [(Some(7), 300)]);
    assert_eq!(
        rows_and_distinct(&cloud, "division_states", "id"),
        (300, 300)
    );
    assert_eq!(pending(&edge, "division_states"), 0);

    // A part of the table, killed after the cloud committed the re-send
    // batch and before the edge acknowledged it: the next sync sends the
    // same batch again, the cloud answers replay, and the rows are there once.
    cloud
        .client()
        .batch_execute("UPDATE division_states SET zone_count = NULL")
        .unwrap();
    assert!(story.step("sluice resend").success);
    story.finish();
    sync_killed_after_ingest(&config, "division_states", 1);
    assert_eq!(zone_counts(&cloud), [(None, 250), (Some(7), 50)]);
    assert_eq!(pending(&edge, "division_states"), 50, "not acknowledged");
    let out = sync(&config, "division_states");
    assert!(
        out.contains("sent 1 batches, 50 rows") && out.contains("1 replays"),
        "{out}"
    );
    assert_eq!(pending(&edge, "division_states"), 0);
    assert_eq!(zone_counts(&cloud), [(None, 250), (Some(7), 50)]);
    assert_eq!(
        rows_and_distinct(&cloud, "division_states", "id"),
        (300, 300)
    );
    let (clean, out) = verify(
        &config,
        "division_states",
        &[
            "--since",
            "2026-11-18T11:06:50Z",
            "--until",
            "2026-11-18T11:07:00Z",
        ],
    );
    assert!(clean, "{out}");
    let (clean, out) = verify(&config, "division_states", &[]);
    assert!(!clean && out.contains("different: 250"), "{out}");

    // New rows written meanwhile go after the re-send, once each.
    insert_rows(&edge, "division_states", &division_states(300, 20, 31), 20);
    run_ok(&[
        "resend",
        "--config",
        config.to_str().unwrap(),
        "division_states",
    ]);
    let out = sync(&config, "division_states");
    assert!(
        out.contains("320 rows") && out.contains("20 inserted, 250 updated, 50 skipped"),
        "{out}"
    );
    assert_eq!(
        rows_and_distinct(&cloud, "division_states", "id"),
        (320, 320)
    );
    let (clean, out) = verify(&config, "division_states", &[]);
    assert!(clean, "{out}");
}

#[test]
fn a_mutable_table_is_sent_again_exactly_once_across_a_crash() {
    let cloud = CloudDb::create("resend_mutable");
    let dir = tempfile::tempdir().unwrap();
    let edge_path = dir.path().join("edge.db");
    let edge = edge_db(&edge_path, true);
    for i in 1..=5 {
        edge.execute(
            "INSERT INTO cameras (camera_id, location_id, name, stream_url) VALUES (?1, 'store-042', ?2, 'rtsp://admin:secret@10.0.0.9/')",
            rusqlite::params![format!("cam-{i}"), format!("camera {i}")],
        )
        .unwrap();
    }
    let config = write_config(dir.path(), &edge_path, &cloud.url, DEVICE, 2);
    sync(&config, "cameras");
    edge.execute_batch("ALTER TABLE cameras ADD COLUMN floor INTEGER DEFAULT 7")
        .unwrap();
    cloud
        .client()
        .batch_execute("ALTER TABLE cameras ADD COLUMN floor integer")
        .unwrap();
    let (clean, out) = verify(&config, "cameras", &[]);
    assert!(!clean && out.contains("different: 5"), "{out}");

    let out = run_ok(&["resend", "--config", config.to_str().unwrap(), "cameras"]);
    assert_eq!(
        out.trim(),
        "cameras: 5 rows scheduled to be sent again; the next sync sends them"
    );
    // Three re-send batches of two rows; killed after the second's commit.
    sync_killed_after_ingest(&config, "cameras", 2);
    let floors = |cloud: &CloudDb| -> Vec<(String, Option<i32>)> {
        cloud
            .client()
            .query("SELECT camera_id, floor FROM cameras ORDER BY 1", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    assert_eq!(
        floors(&cloud).iter().filter(|(_, f)| *f == Some(7)).count(),
        4
    );
    let out = sync(&config, "cameras");
    assert!(
        out.contains("sent 2 batches, 3 rows") && out.contains("1 replays"),
        "{out}"
    );
    assert_eq!(
        floors(&cloud),
        (1..=5)
            .map(|i| (format!("cam-{i}"), Some(7)))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        rows_and_distinct(&cloud, "cameras", "location_id, camera_id"),
        (5, 5)
    );
    let (clean, out) = verify(&config, "cameras", &[]);
    assert!(clean, "{out}");
    assert_eq!(pending(&edge, "cameras"), 0);
    // A later edge change still wins over the re-sent copy.
    edge.execute_batch("UPDATE cameras SET floor = 2 WHERE camera_id = 'cam-3'")
        .unwrap();
    sync(&config, "cameras");
    assert_eq!(floors(&cloud)[2], ("cam-3".to_owned(), Some(2)));
}
