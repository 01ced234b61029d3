//! End-to-end sync: the real extension, the real agent, a real PostgreSQL.
//! Every test compares every row's content on both sides.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use sluice_tests::*;

const DEVICE: &str = "box-1";

fn sync(config: &std::path::Path) -> String {
    run_ok(&["sync", "--config", config.to_str().unwrap()])
}

#[test]
fn hundred_thousand_rows_arrive_exactly_once() {
    let cloud = CloudDb::create("hundred_k");
    let dir = tempfile::tempdir().unwrap();
    let (edge_path, edge) = edge_with_division_states(dir.path(), 100_000, 1);
    assert_eq!(pending(&edge, "division_states"), 100_000);

    let config = write_config(dir.path(), &edge_path, &cloud.url, DEVICE, 1000);
    let out = sync(&config);
    assert!(out.contains("100 batches, 100000 rows"), "{out}");
    assert!(
        out.contains("100000 inserted, 0 updated, 0 skipped, 0 replays"),
        "{out}"
    );

    assert_eq!(pending(&edge, "division_states"), 0);
    let mut c = cloud.client();
    assert_same_rows(
        &edge_division_states(&edge),
        &cloud_division_states(&mut c, DEVICE),
    );
    // Local-only columns never arrive.
    let has_screenshot: bool = c
        .query_one(
            "SELECT count(*) > 0 FROM information_schema.columns WHERE table_name = 'division_states' AND column_name = 'screenshot_path'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!has_screenshot);
    // A second sync finds nothing to do.
    let out = sync(&config);
    assert!(out.contains("0 batches, 0 rows"), "{out}");
    assert_eq!(cloud.count("division_states"), 100_000);
}

#[test]
fn every_batch_replayed_changes_nothing() {
    let cloud = CloudDb::create("replay");
    let dir = tempfile::tempdir().unwrap();
    let edge = edge_db(&dir.path().join("edge.db"), true);
    edge.query_row("SELECT sluice_device(?1)", [DEVICE], |_| Ok(()))
        .unwrap();
    insert_rows(
        &edge,
        "division_states",
        &division_states(0, 5_000, 2),
        1000,
    );

    // The SQL-only loop, keeping every batch that was sent.
    let mut c = cloud.client();
    let mut sent = Vec::new();
    loop {
        let batch: Option<Vec<u8>> = edge
            .query_row("SELECT sluice_batch('division_states', 700)", [], |r| {
                r.get(0)
            })
            .unwrap();
        let Some(batch) = batch else { break };
        let row = c
            .query_one(
                "SELECT inserted, updated, skipped, replay FROM sluice.ingest($1)",
                &[&batch],
            )
            .unwrap();
        assert!(!row.get::<_, bool>(3));
        edge.query_row("SELECT sluice_ack(?1)", [&batch], |_| Ok(()))
            .unwrap();
        sent.push(batch);
    }
    assert_eq!(sent.len(), 8);
    let before = cloud_division_states(&mut c, DEVICE);
    assert_same_rows(&edge_division_states(&edge), &before);

    for batch in &sent {
        let header = sluice_wire::decode_header(batch).unwrap();
        let row = c
            .query_one(
                "SELECT inserted, updated, skipped, replay FROM sluice.ingest($1)",
                &[batch],
            )
            .unwrap();
        assert!(
            row.get::<_, bool>(3),
            "batch {} was not recognised as a replay",
            header.id()
        );
        assert_eq!(row.get::<_, i64>(0), 0);
        assert_eq!(row.get::<_, i64>(1), 0);
        assert_eq!(row.get::<_, i64>(2), i64::from(header.row_count));
        // Acknowledging again at the edge is a no-op.
        let acked: i64 = edge
            .query_row("SELECT sluice_ack(?1)", [batch], |r| r.get(0))
            .unwrap();
        assert_eq!(acked, 0);
    }
    assert_eq!(
        checksum(&cloud_division_states(&mut c, DEVICE)),
        checksum(&before)
    );
    let ledger: i64 = c
        .query_one("SELECT count(*) FROM sluice.batches", &[])
        .unwrap()
        .get(0);
    assert_eq!(ledger, 8);
}

#[test]
fn agent_killed_between_ingest_and_ack_loses_and_duplicates_nothing() {
    let cloud = CloudDb::create("sigkill");
    let dir = tempfile::tempdir().unwrap();
    let (edge_path, edge) = edge_with_division_states(dir.path(), 10_000, 3);
    let config = write_config(dir.path(), &edge_path, &cloud.url, DEVICE, 1000);

    let mut child = agent(&[
        "sync",
        "--config",
        config.to_str().unwrap(),
        "--table",
        "division_states",
    ])
    .env("SLUICE_FAILPOINT", "after-ingest:3")
    .stderr(Stdio::piped())
    .stdout(Stdio::null())
    .spawn()
    .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut reached = false;
    for line in BufReader::new(stderr).lines() {
        if line.unwrap().contains("failpoint after-ingest:3 reached") {
            reached = true;
            break;
        }
    }
    assert!(reached, "the agent never reached the failpoint");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // Batch 3 is in the cloud but not acknowledged at the edge.
    assert_eq!(cloud.count("division_states"), 3_000);
    assert_eq!(pending(&edge, "division_states"), 8_000);

    let out = sync(&config);
    assert!(out.contains("8 batches, 8000 rows"), "{out}");
    assert!(
        out.contains("1 replays"),
        "the re-sent batch 3 must be a replay: {out}"
    );
    assert_eq!(pending(&edge, "division_states"), 0);
    let mut c = cloud.client();
    assert_same_rows(
        &edge_division_states(&edge),
        &cloud_division_states(&mut c, DEVICE),
    );
}

#[test]
fn cleanup_that_empties_a_table_leaves_no_hole_for_new_rows() {
    let cloud = CloudDb::create("cleanup");
    let dir = tempfile::tempdir().unwrap();
    let edge_path = dir.path().join("edge.db");
    let edge = edge_db(&edge_path, true);
    let config = write_config(dir.path(), &edge_path, &cloud.url, DEVICE, 1000);

    insert_rows(&edge, "division_states", &division_states(0, 2_500, 4), 500);
    let first = edge_division_states(&edge);
    sync(&config);
    let deleted: i64 = edge
        .query_row("SELECT sluice_cleanup('division_states', 0)", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(
        deleted >= 2_499,
        "cleanup deleted only {deleted} acknowledged rows"
    );
    let left: i64 = edge
        .query_row("SELECT count(*) FROM division_states", [], |r| r.get(0))
        .unwrap();
    assert!(left <= 1, "{left} rows left after cleanup");

    insert_rows(
        &edge,
        "division_states",
        &division_states(2_500, 1_000, 4),
        500,
    );
    assert_eq!(
        pending(&edge, "division_states"),
        1_000,
        "new rows after cleanup must be pending"
    );
    sync(&config);
    assert_eq!(pending(&edge, "division_states"), 0);

    let mut c = cloud.client();
    let cloud_rows = cloud_division_states(&mut c, DEVICE);
    assert_eq!(cloud_rows.len(), 3_500);
    // The cloud holds the first rows (cleaned up at the edge since) and the
    // new ones; the row kept as the rowid high-water mark is among the first.
    let mut expected = first.clone();
    expected.extend(
        edge_division_states(&edge)
            .into_iter()
            .filter(|l| !first.contains(l)),
    );
    assert_same_rows(&expected, &cloud_rows);
}

#[test]
fn corrupt_batches_are_refused_whole_and_the_backend_keeps_serving() {
    let cloud = CloudDb::create("corrupt");
    let dir = tempfile::tempdir().unwrap();
    let edge = edge_db(&dir.path().join("edge.db"), true);
    edge.query_row("SELECT sluice_device(?1)", [DEVICE], |_| Ok(()))
        .unwrap();
    insert_rows(
        &edge,
        "division_states",
        &division_states(0, 1_000, 5),
        1000,
    );
    let batch: Vec<u8> = edge
        .query_row("SELECT sluice_batch('division_states', 1000)", [], |r| {
            r.get(0)
        })
        .unwrap();

    // A table the cloud does not know, and a table with a column it cannot take.
    let other = edge_db(&dir.path().join("other.db"), false);
    other
        .execute_batch(
            "CREATE TABLE unknown_table (id INTEGER PRIMARY KEY, x TEXT);
             CREATE TABLE division_states (id INTEGER PRIMARY KEY, location_id TEXT, bogus_column TEXT);
             SELECT sluice_track('unknown_table'); SELECT sluice_track('division_states');
             SELECT sluice_device('box-2');
             INSERT INTO unknown_table (x) VALUES ('a');
             INSERT INTO division_states (location_id, bogus_column) VALUES ('store-042', 'b');",
        )
        .unwrap();
    let unknown: Vec<u8> = other
        .query_row("SELECT sluice_batch('unknown_table')", [], |r| r.get(0))
        .unwrap();
    let wrong_cols: Vec<u8> = other
        .query_row("SELECT sluice_batch('division_states')", [], |r| r.get(0))
        .unwrap();

    let mut flipped = batch.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    let truncated = batch[..batch.len() - 7].to_vec();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("one flipped byte", flipped, "checksum mismatch"),
        ("truncated", truncated, "truncated"),
        ("empty", Vec::new(), "not a sluice batch"),
        (
            "random bytes",
            (0..500u32).map(|i| (i * 7919 % 251) as u8).collect(),
            "not a sluice batch",
        ),
        ("unknown table", unknown, "unknown_table"),
        ("wrong columns", wrong_cols, "bogus_column"),
    ];
    let mut c = cloud.client();
    for (what, bytes, expected) in cases {
        let err = c
            .query_one("SELECT * FROM sluice.ingest($1)", &[&bytes])
            .expect_err(&format!("{what}: ingest must fail"));
        let msg = pg_error(&err);
        assert!(
            msg.contains(expected),
            "{what}: the error should mention {expected:?}: {msg}"
        );
        // The same connection (the same backend) still serves.
        let one: i32 = c.query_one("SELECT 1", &[]).unwrap().get(0);
        assert_eq!(one, 1, "{what}");
        assert_eq!(
            cloud.count("division_states"),
            0,
            "{what}: nothing may be applied"
        );
        assert_eq!(
            cloud.count("sluice.batches"),
            0,
            "{what}: nothing may be recorded"
        );
    }
    // The good batch still applies.
    let row = c
        .query_one("SELECT inserted FROM sluice.ingest($1)", &[&batch])
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1_000);
}
