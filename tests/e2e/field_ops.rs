//! Exactly once under the field's own operations (issue 12): a box restored
//! from a backup, an image cloned onto a second box, two databases under one
//! device id, zoneless local time. The real extension, the real agent, a
//! real PostgreSQL; every test compares the rows' content on both sides.
//!
//! Each of these lost or moved data silently with sluice 0.1 (the sync
//! exited 0): the assertions below are the ones that failed then.

use std::path::{Path, PathBuf};

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

/// A consistent copy of the edge database, as an operator's backup tool
/// takes it (`sqlite3 edge.db ".backup copy.db"`, `VACUUM INTO`).
fn backup(edge: &Connection, to: &Path) {
    edge.execute("VACUUM INTO ?1", [to.to_str().unwrap()])
        .unwrap();
}

/// Puts `from` back in place of the database at `path` (whose connections
/// must be closed), as restoring a backup does.
fn restore(from: &Path, path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    std::fs::copy(from, path).unwrap();
}

/// A config for `edge` with `[device]` extras (machine id, zone).
fn config(dir: &Path, edge: &Path, cloud: &CloudDb, device: &str, device_extra: &str) -> PathBuf {
    let path = write_config(dir, edge, &cloud.url, device, 100);
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        &format!("id = \"{device}\"\n"),
        &format!("id = \"{device}\"\n{device_extra}"),
        1,
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Every `division_states` row of the device in the cloud, whatever its
/// stream, sorted: a row twice shows up twice.
fn cloud_rows(cloud: &CloudDb, device: &str) -> Vec<String> {
    let mut rows = cloud_division_states(&mut cloud.client(), device);
    rows.sort();
    rows
}

/// The union of the given edge snapshots, each row once, sorted.
fn union(snapshots: &[&[String]]) -> Vec<String> {
    let mut all: Vec<String> = snapshots.iter().flat_map(|s| s.iter().cloned()).collect();
    all.sort();
    all.dedup();
    all
}

fn insert(edge: &Connection, from: u64, n: u64, seed: u64) {
    insert_rows(edge, "division_states", &division_states(from, n, seed), 50);
}

/// Sync, back up, sync more, restore the backup, write new rows (they get
/// the row ids of rows the cloud already has), sync. Each of the three
/// batch sizes meets the cloud's knowledge differently: the same batch
/// boundaries as before the restore (a known identity with other rows: the
/// ledger's digest), other boundaries (a known key with other content: the
/// conflict check), rows pending at backup time (in the cloud already, with
/// the same content: no duplicate).
#[test]
fn a_box_restored_from_a_backup_loses_nothing_and_duplicates_nothing() {
    for (case, batch_rows) in [("same", 100u32), ("other", 70)] {
        let cloud = CloudDb::create(&format!("restore_{case}"));
        let dir = tempfile::tempdir().unwrap();
        let edge_path = dir.path().join("edge.db");
        let copy = dir.path().join("backup.db");
        let cfg = write_config(dir.path(), &edge_path, &cloud.url, DEVICE, 100);
        let edge = edge_db(&edge_path, true);
        insert(&edge, 0, 300, 1);
        sync(&cfg);
        // 50 rows written but not yet synced when the backup is taken.
        insert(&edge, 300, 50, 1);
        backup(&edge, &copy);
        insert(&edge, 350, 250, 1);
        sync(&cfg);
        let lost_future = edge_division_states(&edge);
        assert_eq!(lost_future.len(), 600);
        drop(edge);

        restore(&copy, &edge_path);
        let edge = edge_db(&edge_path, false);
        // New rows after the restore: row ids 351.. again, other content.
        insert(&edge, 350, 200, 2);
        let cfg = write_config(dir.path(), &edge_path, &cloud.url, DEVICE, batch_rows);
        let out = sync(&cfg);
        assert_eq!(pending(&edge, "division_states"), 0, "{out}");
        let now = edge_division_states(&edge);
        assert_eq!(
            cloud_rows(&cloud, DEVICE),
            union(&[&lost_future, &now]),
            "case {case}: the cloud must hold every row either database ever had, once: {out}"
        );
        let identity: String = edge
            .query_row("SELECT sluice_identity()", [], |r| r.get(0))
            .unwrap();
        let identity: serde_json::Value = serde_json::from_str(&identity).unwrap();
        assert_eq!(
            identity["epochs"].as_array().unwrap().len(),
            2,
            "one new epoch: {identity}"
        );
        // A second run finds nothing to do and starts no epoch.
        let out = sync(&cfg);
        assert!(out.contains("0 batches, 0 rows"), "{out}");
        assert_eq!(cloud_rows(&cloud, DEVICE), union(&[&lost_future, &now]));
    }
}

/// A mutable table: the restored box's updates must win over what the lost
/// future sent, though the restored clock hands out versions the cloud has
/// seen.
#[test]
fn a_restored_box_keeps_its_updates_of_mutable_rows() {
    let cloud = CloudDb::create("restore_mutable");
    let dir = tempfile::tempdir().unwrap();
    let edge_path = dir.path().join("edge.db");
    let copy = dir.path().join("backup.db");
    let cfg = write_config(dir.path(), &edge_path, &cloud.url, DEVICE, 100);
    let edge = edge_db(&edge_path, true);
    let set_name = |edge: &Connection, name: &str| {
        edge.execute_batch("BEGIN IMMEDIATE").unwrap();
        edge.execute(
            "UPDATE cameras SET name = ?1 WHERE camera_id = 'cam-01'",
            [name],
        )
        .unwrap();
        edge.execute_batch("COMMIT").unwrap();
    };
    edge.execute_batch(
        "INSERT INTO cameras (camera_id, location_id, name) VALUES
           ('cam-01', 'store-042', 'door'), ('cam-02', 'store-042', 'till');",
    )
    .unwrap();
    sync(&cfg);
    backup(&edge, &copy);
    set_name(&edge, "door (lost future)");
    sync(&cfg);
    drop(edge);

    restore(&copy, &edge_path);
    let edge = edge_db(&edge_path, false);
    set_name(&edge, "door (after restore)");
    let out = sync(&cfg);
    assert_eq!(pending(&edge, "cameras"), 0, "{out}");
    let names: Vec<String> = cloud
        .client()
        .query(
            "SELECT camera_id || '=' || name FROM cameras ORDER BY camera_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        names,
        ["cam-01=door (after restore)", "cam-02=till"],
        "the box's state after the restore is what the cloud must hold: {out}"
    );
}

/// Two boxes made from one image: the image's database was used (and
/// synced) on the machine that built it, so each box finds it on another
/// machine at its first start and continues under an epoch of its own.
/// Both are then given the same device id by mistake: nothing is lost, and
/// `status` on each says that two databases send as this device.
#[test]
fn boxes_cloned_from_one_image_keep_their_rows_apart() {
    let cloud = CloudDb::create("clone_image");
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.db");
    {
        let edge = edge_db(&image, true);
        insert(&edge, 0, 100, 1);
        let cfg = config(
            dir.path(),
            &image,
            &cloud,
            DEVICE,
            "machine_id = \"golden\"\n",
        );
        sync(&cfg);
    }
    let mut boxes = Vec::new();
    for (name, seed) in [("a", 2u64), ("b", 3)] {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("edge.db");
        std::fs::copy(&image, &path).unwrap();
        let edge = edge_db(&path, false);
        insert(&edge, 100, 150, seed);
        let cfg = config(
            &sub,
            &path,
            &cloud,
            DEVICE,
            &format!("machine_id = \"machine-{name}\"\n"),
        );
        boxes.push((sub, path, edge, cfg));
    }
    for (_, _, _, cfg) in &boxes {
        sync(cfg);
    }
    let image_rows: Vec<String> = edge_division_states(&boxes[0].2)[..100].to_vec();
    let a = edge_division_states(&boxes[0].2);
    let b = edge_division_states(&boxes[1].2);
    assert_eq!(cloud_rows(&cloud, DEVICE), union(&[&image_rows, &a, &b]));
    assert_eq!(cloud_rows(&cloud, DEVICE).len(), 400);
    for (_, _, edge, cfg) in &boxes {
        assert_eq!(pending(edge, "division_states"), 0);
        let out = run_ok(&["status", "--config", cfg.to_str().unwrap()]);
        assert!(
            out.contains("databases are sending as device box-1"),
            "status must say that two databases share the device id: {out}"
        );
    }
}

/// Two separately installed boxes (two fresh databases, two streams) given
/// the same device id: with 0.1, 150 of 350 rows never reached the cloud
/// (their keys collided on (location, device, id)).
#[test]
fn two_databases_under_one_device_id_lose_nothing() {
    let cloud = CloudDb::create("shared_id");
    let dir = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    for (name, n, seed) in [("a", 200u64, 1u64), ("b", 150, 2)] {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("edge.db");
        let edge = edge_db(&path, true);
        insert(&edge, 0, n, seed);
        let cfg = config(
            &sub,
            &path,
            &cloud,
            DEVICE,
            &format!("machine_id = \"machine-{name}\"\n"),
        );
        sync(&cfg);
        assert_eq!(pending(&edge, "division_states"), 0);
        all.extend(edge_division_states(&edge));
    }
    all.sort();
    assert_eq!(cloud_rows(&cloud, DEVICE), all);
    assert_eq!(all.len(), 350);
}

/// `recorded_at` as zoneless local wall-clock text: the same instant in the
/// cloud whatever the cloud database's `TimeZone`, read in the zone the
/// device declares. A Unix time in a TEXT column arrives as that instant.
#[test]
fn zoneless_times_are_read_in_the_devices_zone() {
    let cloud = CloudDb::create("zones");
    cloud
        .client()
        .batch_execute(&format!(
            "ALTER DATABASE {} SET timezone = 'Asia/Shanghai'",
            cloud.name
        ))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut instants = Vec::new();
    for (name, zone) in [("utc", ""), ("berlin", "time_zone = \"Europe/Berlin\"\n")] {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("edge.db");
        let edge = edge_db(&path, true);
        let device = format!("box-{name}");
        edge.execute_batch(
            "INSERT INTO metrics (camera_id, location_id, recorded_at, people_count, processing_ms) VALUES
               ('cam-01', 'store-042', '2025-12-13 14:35:00', 1, 1.0),
               ('cam-01', 'store-042', '2025-12-13T14:35:00Z', 2, 1.0),
               ('cam-01', 'store-042', '1765636500', 3, 1.0);",
        )
        .unwrap();
        let cfg = config(&sub, &path, &cloud, &device, zone);
        let out = sync(&cfg);
        assert_eq!(pending(&edge, "metrics"), 0, "{out}");
        let got: Vec<String> = cloud
            .client()
            .query(
                "SELECT to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')
                 FROM metrics WHERE sluice_device = $1 ORDER BY people_count",
                &[&device],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        instants.push(got);
    }
    assert_eq!(
        instants[0],
        [
            "2025-12-13 14:35:00",
            "2025-12-13 14:35:00",
            "2025-12-13 14:35:00"
        ],
        "a UTC device: zoneless text is UTC, not the cloud's Asia/Shanghai"
    );
    assert_eq!(
        instants[1],
        [
            "2025-12-13 13:35:00",
            "2025-12-13 14:35:00",
            "2025-12-13 14:35:00"
        ],
        "a device in Europe/Berlin (UTC+1 in December): only the zoneless text moves"
    );
}
