//! Deletes and key changes reach the cloud (issue 12, case 3): the real
//! extension, the real agent, a real PostgreSQL with the default schema.
//!
//! With sluice 0.1 a deleted camera stayed in the cloud for ever, and a
//! camera whose key changed (renamed, moved to another location) was there
//! twice: the assertions below are the ones that failed then.

use std::path::Path;

use rusqlite::Connection;
use sluice_tests::*;

const DEVICE: &str = "box-1";

fn sync(config: &Path) -> String {
    run_ok(&[
        "sync",
        "--mode",
        "full",
        "--config",
        config.to_str().unwrap(),
    ])
}

/// The cloud's cameras as `location/camera=name`, sorted.
fn cloud_cameras(cloud: &CloudDb) -> Vec<String> {
    cloud
        .client()
        .query(
            "SELECT location_id || '/' || camera_id || '=' || coalesce(name, '-') \
             FROM cameras ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn edge_with_cameras(dir: &Path) -> Connection {
    let edge = edge_db(&dir.join("edge.db"), true);
    edge.execute_batch(
        "INSERT INTO cameras (camera_id, location_id, name, stream_url) VALUES
           ('cam-1', 'loc-1', 'door', 'rtsp://secret'),
           ('cam-2', 'loc-1', 'till', NULL),
           ('cam-3', 'loc-1', 'back', NULL);",
    )
    .unwrap();
    edge
}

#[test]
fn deletes_key_changes_and_moves_reach_the_cloud_once() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudDb::create("deletes");
    let edge = edge_with_cameras(dir.path());
    let config = write_config(
        dir.path(),
        &dir.path().join("edge.db"),
        &cloud.url,
        DEVICE,
        100,
    );
    sync(&config);
    assert_eq!(
        cloud_cameras(&cloud),
        ["loc-1/cam-1=door", "loc-1/cam-2=till", "loc-1/cam-3=back"]
    );

    // A delete, a change of the key column, a move to another location.
    edge.execute_batch(
        "DELETE FROM cameras WHERE camera_id = 'cam-1';
         UPDATE cameras SET camera_id = 'cam-20' WHERE camera_id = 'cam-2';
         UPDATE cameras SET location_id = 'loc-2' WHERE camera_id = 'cam-3';",
    )
    .unwrap();
    assert_eq!(pending(&edge, "cameras"), 5);
    sync(&config);
    assert_eq!(pending(&edge, "cameras"), 0);
    assert_eq!(
        edge.query_row("SELECT count(*) FROM sluice_tombstones", [], |r| r
            .get::<_, i64>(0))
            .unwrap(),
        0
    );
    assert_eq!(
        cloud_cameras(&cloud),
        ["loc-1/cam-20=till", "loc-2/cam-3=back"]
    );
    // Nothing left to send; a second sync changes nothing.
    sync(&config);
    assert_eq!(
        cloud_cameras(&cloud),
        ["loc-1/cam-20=till", "loc-2/cam-3=back"]
    );
}

#[test]
fn cleanup_at_the_edge_deletes_nothing_in_the_cloud() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudDb::create("deletes_cleanup");
    let edge = edge_with_cameras(dir.path());
    let config = write_config(
        dir.path(),
        &dir.path().join("edge.db"),
        &cloud.url,
        DEVICE,
        100,
    );
    sync(&config);
    edge.execute_batch("UPDATE sluice_acks SET acked_at = acked_at - 86400000")
        .unwrap();
    let cleaned: i64 = edge
        .query_row("SELECT sluice_cleanup('cameras', 3600)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(cleaned, 3);
    assert_eq!(pending(&edge, "cameras"), 0);
    sync(&config);
    assert_eq!(
        cloud_cameras(&cloud),
        ["loc-1/cam-1=door", "loc-1/cam-2=till", "loc-1/cam-3=back"]
    );
}

/// `sluice verify` tells a row deleted at the edge from one cleaned up:
/// before 0.2 a deleted camera was counted among "cloud rows no longer at
/// the edge (cleaned up after acknowledgement)".
#[test]
fn verify_counts_deleted_rows_apart_from_cleaned_up_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudDb::create("deletes_verify");
    let edge = edge_with_cameras(dir.path());
    let config = write_config(
        dir.path(),
        &dir.path().join("edge.db"),
        &cloud.url,
        DEVICE,
        100,
    );
    sync(&config);
    // Deleted at the edge, the delete not synced yet.
    edge.execute_batch("DELETE FROM cameras WHERE camera_id = 'cam-1'")
        .unwrap();
    let verify = || {
        run_ok(&[
            "verify",
            "--config",
            config.to_str().unwrap(),
            "--table",
            "cameras",
        ])
    };
    let out = verify();
    assert!(
        out.contains("1 cloud rows were deleted at the edge"),
        "{out}"
    );
    assert!(out.contains("0 cloud rows no longer at the edge"), "{out}");
    // Synced, the row is gone from the cloud: nothing left to explain.
    sync(&config);
    let out = verify();
    assert!(!out.contains("deleted at the edge"), "{out}");
    assert!(out.contains("missing in the cloud: 0"), "{out}");
}

/// `on_delete => 'mark'`: the synced delete keeps the cloud row, marked;
/// verify counts it as deleted, and a camera added again under its key
/// clears the mark.
#[test]
fn mark_keeps_the_cloud_row_marked_and_verify_counts_it_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = CloudDb::create("deletes_mark");
    cloud
        .client()
        .batch_execute(
            "ALTER TABLE cameras ADD COLUMN sluice_deleted_at timestamptz;
             SELECT sluice.register_table('cameras', 'cameras', ARRAY['location_id', 'camera_id'],
                                          tenant_column => 'location_id', on_delete => 'mark');",
        )
        .unwrap();
    let edge = edge_with_cameras(dir.path());
    let config = write_config(
        dir.path(),
        &dir.path().join("edge.db"),
        &cloud.url,
        DEVICE,
        100,
    );
    sync(&config);
    edge.execute_batch("DELETE FROM cameras WHERE camera_id = 'cam-1'")
        .unwrap();
    sync(&config);
    let marked = |cloud: &CloudDb| -> Vec<String> {
        cloud
            .client()
            .query(
                "SELECT camera_id FROM cameras WHERE sluice_deleted_at IS NOT NULL ORDER BY 1",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert_eq!(marked(&cloud), ["cam-1"]);
    assert_eq!(cloud.count("cameras"), 3);
    let out = run_ok(&[
        "verify",
        "--config",
        config.to_str().unwrap(),
        "--table",
        "cameras",
    ]);
    assert!(
        out.contains("1 cloud rows were deleted at the edge"),
        "{out}"
    );
    edge.execute_batch(
        "INSERT INTO cameras (camera_id, location_id, name) VALUES ('cam-1', 'loc-1', 'door 2')",
    )
    .unwrap();
    sync(&config);
    assert!(marked(&cloud).is_empty());
    assert!(cloud_cameras(&cloud).contains(&"loc-1/cam-1=door 2".to_string()));
}
