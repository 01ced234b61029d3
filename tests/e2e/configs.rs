//! The configuration loop of the default schema end to end (issue 13): the
//! cloud inserts configurations (`applied_configs`, migration 0006) for the
//! cameras of a location, the box receives them with `sluice sync` (push,
//! then pull), its pipeline runs `sql/edge_configs.sql` and applies what is
//! due, and the next sync takes the statuses up. The real `sluice0.so`, the
//! real agent binary, a real PostgreSQL with the extension.
//!
//! What it shows: a configuration for another box never reaches this one; a
//! newer version for the same camera supersedes one not yet applied; one
//! whose deadline passed before the box received it ends `timed_out` and is
//! never applied; a failed one carries its error; the columns are split by
//! owner, so a cloud change of the settings and the box's status of the same
//! row, both made between two syncs, both survive (neither side overwrites
//! the other), and the status the box sends up is not echoed back down.

use std::path::Path;

use rusqlite::Connection;
use sluice_tests::*;

const DEVICE: &str = "store-042-box-1";
const LOCATION: &str = "store-042";

fn sync(config: &Path) -> String {
    run_ok(&["sync", "--config", config.to_str().unwrap()])
}

/// What the pipeline does at each look for configuration work: the file's
/// statements, then each due configuration applied (`"bad": true` in the
/// settings fails).
fn pipeline(edge: &Connection) -> Vec<String> {
    let sql = std::fs::read_to_string(repo_root().join("sql/edge_configs.sql")).unwrap();
    let (updates, select) = sql.rsplit_once("SELECT location_id").unwrap();
    edge.execute_batch(updates).unwrap();
    let mut stmt = edge
        .prepare(&format!("SELECT location_id{select}").replace(';', ""))
        .unwrap();
    let due: Vec<(String, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(4)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (location, config, settings) in &due {
        edge.execute(
            "UPDATE applied_configs SET status = 'in_progress' WHERE location_id = ?1 AND config_id = ?2",
            [location, config],
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(settings).unwrap();
        if v["bad"] == true {
            edge.execute(
                "UPDATE applied_configs SET status = 'failed', \
                 applied_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), \
                 error_message = 'camera refused the setting' \
                 WHERE location_id = ?1 AND config_id = ?2",
                [location, config],
            )
            .unwrap();
        } else {
            edge.execute(
                "UPDATE applied_configs SET status = 'success', \
                 applied_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
                 WHERE location_id = ?1 AND config_id = ?2",
                [location, config],
            )
            .unwrap();
        }
    }
    due.into_iter().map(|(_, c, _)| c).collect()
}

fn edge_statuses(edge: &Connection) -> Vec<(String, String)> {
    let mut stmt = edge
        .prepare("SELECT config_id, status FROM applied_configs ORDER BY config_id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn cloud_statuses(cloud: &CloudDb) -> Vec<(String, String, Option<String>)> {
    cloud
        .client()
        .query(
            "SELECT config_id, status, error_message FROM applied_configs ORDER BY config_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// A cloud database `name` with the default schema, an edge database with
/// the default edge schema, and the box's config pulling for its location.
fn setup(name: &str) -> (CloudDb, tempfile::TempDir, Connection, std::path::PathBuf) {
    let cloud = CloudDb::create(name);
    let dir = tempfile::tempdir().unwrap();
    let edge_path = dir.path().join("edge.db");
    let edge = edge_db(&edge_path, true);
    let config = write_config_with(
        dir.path(),
        &edge_path,
        &cloud.url,
        DEVICE,
        100,
        &format!("\n[pull]\ntenant = \"{LOCATION}\"\n"),
    );
    (cloud, dir, edge, config)
}

#[test]
fn configurations_go_down_statuses_come_up_and_neither_side_overwrites_the_other() {
    let (cloud, _dir, edge, config) = setup("configs");
    cloud
        .client()
        .batch_execute(&format!(
            "INSERT INTO applied_configs (location_id, config_id, camera_id, device_id, version, settings, deadline) VALUES
             ('{LOCATION}', 'c1', 'cam-01', NULL,        1, '{{\"fps\": 10}}', NULL),
             ('{LOCATION}', 'c2', 'cam-01', NULL,        2, '{{\"fps\": 15}}', NULL),
             ('{LOCATION}', 'c3', 'cam-02', '{DEVICE}',  1, '{{\"fps\": 5}}',  now() - interval '1 minute'),
             ('{LOCATION}', 'c4', 'cam-03', '{DEVICE}',  1, '{{\"bad\": true}}', now() + interval '1 hour'),
             ('{LOCATION}', 'c5', 'cam-09', 'store-042-box-2', 1, '{{\"fps\": 1}}', NULL),
             ('paris',      'c6', 'cam-01', NULL,        1, '{{\"fps\": 1}}',  NULL)"
        ))
        .unwrap();

    sync(&config);
    assert_eq!(
        edge_statuses(&edge),
        [
            ("c1".into(), "pending".into()),
            ("c2".into(), "pending".into()),
            ("c3".into(), "pending".into()),
            ("c4".into(), "pending".into()),
        ],
        "the box received its location's configurations for every box and for itself, not another box's, not another location's"
    );
    assert_eq!(
        pending(&edge, "applied_configs"),
        0,
        "rows received from the cloud are not sent back up"
    );
    assert_eq!(pipeline(&edge), ["c2", "c4"]);
    assert_eq!(
        edge_statuses(&edge),
        [
            ("c1".into(), "superseded".into()),
            ("c2".into(), "success".into()),
            ("c3".into(), "timed_out".into()),
            ("c4".into(), "failed".into()),
        ]
    );

    // Between two syncs the cloud changes c2's settings and the box has its
    // status: the next sync keeps both.
    cloud
        .client()
        .batch_execute(
            "UPDATE applied_configs SET settings = '{\"fps\": 20}' WHERE config_id = 'c2'",
        )
        .unwrap();
    sync(&config);
    assert_eq!(
        cloud_statuses(&cloud),
        [
            ("c1".into(), "superseded".into(), None),
            ("c2".into(), "success".into(), None),
            ("c3".into(), "timed_out".into(), None),
            (
                "c4".into(),
                "failed".into(),
                Some("camera refused the setting".into())
            ),
            ("c5".into(), "pending".into(), None),
            ("c6".into(), "pending".into(), None),
        ],
        "the cloud sees what the box did"
    );
    let settings: String = cloud
        .client()
        .query_one(
            "SELECT settings::text FROM applied_configs WHERE config_id = 'c2'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        settings, "{\"fps\": 20}",
        "the box's status did not overwrite the cloud's settings"
    );
    let (edge_settings, edge_status): (String, String) = edge
        .query_row(
            "SELECT settings, status FROM applied_configs WHERE config_id = 'c2'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        edge_settings, "{\"fps\": 20}",
        "the new settings reached the box"
    );
    assert_eq!(
        edge_status, "success",
        "the cloud's change did not overwrite the box's status"
    );
    let v: serde_json::Value = serde_json::from_str(&run_ok(&[
        "status",
        "--config",
        config.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    assert!(v.to_string().contains("applied_configs"), "{v}");

    // Which box runs which version: the cloud's view.
    let rows = cloud
        .client()
        .query(
            "SELECT camera_id, device_id, version FROM config_versions ORDER BY camera_id",
            &[],
        )
        .unwrap();
    let got: Vec<(String, String, i32)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(got, [("cam-01".into(), DEVICE.into(), 2)]);
}

/// The cloud withdraws a configuration while the box holds a status of it
/// that it has not sent: the next sync's push (cut before the box had
/// pulled the delete) must not bring the row back into the cloud, and its
/// pull removes the box's copy. A configuration the cloud inserts again
/// afterwards, and one the box receives and reports after that, go through
/// as usual.
#[test]
fn a_configuration_the_cloud_withdrew_stays_withdrawn_whatever_the_box_had_pending() {
    let (cloud, _dir, edge, config) = setup("configs_withdrawn");
    cloud
        .client()
        .batch_execute(&format!(
            "INSERT INTO applied_configs (location_id, config_id, camera_id, device_id, version, settings, deadline) VALUES
             ('{LOCATION}', 'c1', 'cam-01', NULL, 1, '{{\"fps\": 10}}', NULL),
             ('{LOCATION}', 'c2', 'cam-02', NULL, 1, '{{\"fps\": 15}}', NULL)"
        ))
        .unwrap();
    sync(&config);
    assert_eq!(pipeline(&edge), ["c1", "c2"]);
    assert_eq!(pending(&edge, "applied_configs"), 2);
    // Before the statuses go up, the cloud withdraws c1.
    cloud
        .client()
        .batch_execute("DELETE FROM applied_configs WHERE config_id = 'c1'")
        .unwrap();
    sync(&config);
    assert_eq!(
        cloud_statuses(&cloud),
        [("c2".into(), "success".into(), None)],
        "c1's status report did not insert it again"
    );
    assert_eq!(
        edge_statuses(&edge),
        [("c2".into(), "success".into())],
        "the pull removed the box's copy"
    );
    assert_eq!(pending(&edge, "applied_configs"), 0);
    // The cloud issues c1 again: the box receives it, applies it, reports.
    cloud
        .client()
        .batch_execute(&format!(
            "INSERT INTO applied_configs (location_id, config_id, camera_id, device_id, version, settings, deadline) VALUES
             ('{LOCATION}', 'c1', 'cam-01', NULL, 2, '{{\"fps\": 12}}', NULL)"
        ))
        .unwrap();
    sync(&config);
    assert_eq!(pipeline(&edge), ["c1"]);
    sync(&config);
    assert_eq!(
        cloud_statuses(&cloud),
        [
            ("c1".into(), "success".into(), None),
            ("c2".into(), "success".into(), None)
        ],
        "a configuration issued again after the delete reports as usual"
    );
}
