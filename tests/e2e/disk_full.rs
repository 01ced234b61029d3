//! A full disk at the edge (issue 12, case 5), on a real small filesystem:
//! a 3 MB tmpfs (the test runs as root, as CI does; it fails, loudly, when
//! the mount does). The edge database in it is filled through the
//! extension until SQLite says "database or disk is full"; then sluice must
//! free space from inside, with nothing freed outside it: its reserve, its
//! budget's drops (rows a rollup has not processed as the last resort,
//! counted), the checkpoint, and the acknowledgement of a batch the cloud
//! applied. The real sluice0.so, the real agent, a real PostgreSQL.
//!
//! With sluice 0.1 every one of these failed at 100 %: sluice_enforce_budget,
//! the checkpoint and the acknowledgement all ended in "database or disk is
//! full", and the budget could not drop the rows the rollup had not seen.
//!
//! The pipeline's connection checkpoints every 64 pages (256 KiB), so that
//! the WAL stays well below the reserve (768 KiB) as it does in the field
//! (SQLite's default 4 MB WAL against the agent's default 8 MiB reserve):
//! at a full disk the first checkpoint needs the WAL's size in room.

use std::ffi::CString;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use rusqlite::Connection;
use serde_json::json;
use sluice_tests::*;

const DEVICE: &str = "box-1";
const MIN_FREE: i64 = 512 * 1024;
const RESERVE: i64 = 768 * 1024;
const FULL: &str = "database or disk is full";

/// A tmpfs of `size` mounted on a directory of its own, unmounted when the
/// value is dropped, also when the test fails (declare it before anything
/// that keeps a file in it open: values drop in reverse order).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("sluice-disk-full-")
            .tempdir()
            .unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount: {e}"));
        assert!(
            out.status.success(),
            "this test needs a real small filesystem and runs as root: `mount -t tmpfs -o \
             size={size} tmpfs {}` failed ({}): {}",
            dir.path().display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds a file open (a failed test's agent):
            // detach it now, the kernel frees it when the file is closed.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// What an unprivileged process may still write on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> i64 {
    let c = CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string and a zeroed struct for statvfs to fill.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0, "statvfs");
    (s.f_bavail as i64) * (s.f_frsize as i64)
}

fn size(path: &Path) -> i64 {
    std::fs::metadata(path).map_or(0, |m| m.len() as i64)
}

/// The pipeline's connection to a new edge database with the default schema.
fn pipeline(path: &Path) -> Connection {
    let edge = edge_db(path, true);
    edge.execute_batch("PRAGMA wal_autocheckpoint = 64")
        .unwrap();
    edge.query_row("SELECT sluice_device(?1)", [DEVICE], |_| Ok(()))
        .unwrap();
    edge
}

fn options() -> String {
    json!({"min_free_bytes": MIN_FREE, "reserve_bytes": RESERVE}).to_string()
}

/// `sluice_enforce_budget(NULL, options)`, outside a transaction (as the
/// agent's budget job calls it).
fn enforce(edge: &Connection) -> i64 {
    edge.query_row("SELECT sluice_enforce_budget(NULL, ?1)", [options()], |r| {
        r.get(0)
    })
    .unwrap()
}

/// Unix milliseconds a day ago: the rows' windows ended long ago.
fn day_ago_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 86_400_000
}

/// `metrics` rows (the rollup source of the default schema), one a second
/// from `from_ms`, numbered from `first`.
fn metrics(from_ms: i64, first: i64, n: i64) -> String {
    let rows: Vec<serde_json::Value> = (first..first + n)
        .map(|i| {
            json!({"camera_id": format!("cam-{:02}", i % 3), "location_id": "store-042",
                   "recorded_at": iso_ms(from_ms + i * 1000),
                   "people_count": i % 9, "processing_ms": 10.0 + (i % 5) as f64})
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

/// One commit of the pipeline: `n` rows through `sluice_insert`; the error
/// message when it fails.
fn write(edge: &Connection, from_ms: i64, first: i64, n: i64) -> Result<(), String> {
    edge.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| e.to_string())?;
    let r = edge
        .query_row(
            "SELECT sluice_insert('metrics', ?1)",
            [metrics(from_ms, first, n)],
            |_| Ok(()),
        )
        .and_then(|()| edge.execute_batch("COMMIT"));
    if let Err(e) = r {
        if !edge.is_autocommit() {
            let _ = edge.execute_batch("ROLLBACK");
        }
        return Err(e.to_string());
    }
    Ok(())
}

/// Writes `metrics` rows until the disk is full: 100 rows a commit, then
/// single rows, until even one row does not fit. The rollup runs once after
/// `rolled` rows, so the rows after them are ones it has not processed.
/// Returns the rows written; `next` is the number of the next row.
fn fill(edge: &Connection, from_ms: i64, next: &mut i64, rolled: Option<i64>) -> i64 {
    let mut written = 0;
    for chunk in [100, 1] {
        loop {
            match write(edge, from_ms, *next, chunk) {
                Ok(()) => {
                    *next += chunk;
                    written += chunk;
                    if rolled == Some(written) {
                        edge.execute_batch("SELECT sluice_rollup_run()").unwrap();
                    }
                }
                Err(e) => {
                    assert!(e.contains(FULL), "the fill failed otherwise: {e}");
                    break;
                }
            }
        }
    }
    written
}

fn count(edge: &Connection, sql: &str) -> i64 {
    edge.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// `metrics` ids of the device in the cloud, and how many rows hold them.
fn cloud_metrics(cloud: &CloudDb) -> (Vec<i64>, i64) {
    let mut c = cloud.client();
    let ids: Vec<i64> = c
        .query(
            "SELECT DISTINCT id FROM metrics WHERE sluice_device = $1 ORDER BY id",
            &[&DEVICE],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let rows: i64 = c
        .query_one(
            "SELECT count(*) FROM metrics WHERE sluice_device = $1",
            &[&DEVICE],
        )
        .unwrap()
        .get(0);
    (ids, rows)
}

fn edge_ids(edge: &Connection) -> Vec<i64> {
    let mut stmt = edge.prepare("SELECT id FROM metrics ORDER BY id").unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Every row at the edge is in the cloud, and no row is there twice.
fn assert_exactly_once(edge: &Connection, cloud: &CloudDb, what: &str) {
    let (ids, rows) = cloud_metrics(cloud);
    assert_eq!(
        rows,
        ids.len() as i64,
        "{what}: a row is twice in the cloud"
    );
    let missing: Vec<i64> = edge_ids(edge)
        .into_iter()
        .filter(|i| ids.binary_search(i).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{what}: {} edge rows never reached the cloud (first {:?})",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

#[test]
fn the_budget_frees_a_full_disk_from_inside() {
    let fs = Tmpfs::mount("3M");
    let path = fs.path().join("edge.db");
    let reserve = fs.path().join("edge.db-sluice-reserve");
    let edge = pipeline(&path);
    // The reserve is made while there is room, written out (not sparse).
    assert_eq!(enforce(&edge), 0);
    assert_eq!(size(&reserve), RESERVE);
    {
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&reserve).unwrap().blocks();
        assert!(blocks * 512 >= RESERVE as u64, "{blocks} blocks");
    }
    let from_ms = day_ago_ms();
    let mut next = 0;
    let written = fill(&edge, from_ms, &mut next, Some(1000));
    assert!(written > 5000, "{written} rows fit");
    assert!(
        free_bytes(fs.path()) < 64 * 1024,
        "{}",
        free_bytes(fs.path())
    );
    assert!(write(&edge, from_ms, next, 1).unwrap_err().contains(FULL));

    // The recovery, with nothing freed outside sluice.
    let t = Instant::now();
    let dropped = enforce(&edge);
    let took = t.elapsed();
    let (rows, unsynced, unrolled, from, to): (i64, i64, i64, String, String) = edge
        .query_row(
            "SELECT sum(rows), sum(unsynced_rows), sum(unrolled_rows), min(from_time), \
             max(to_time) FROM sluice_drops WHERE tbl = 'metrics'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    eprintln!(
        "disk full: {written} rows written to 100 %; sluice_enforce_budget dropped {dropped} \
         ({unrolled} not rolled up, {unsynced} unsynced, {from} .. {to}) in {took:?}; \
         free after: {} bytes",
        free_bytes(fs.path())
    );
    assert!(dropped > 0);
    assert_eq!(rows, dropped, "every dropped row is counted");
    assert_eq!(unsynced, dropped, "nothing was synced");
    // The rollup had processed 1,000 rows only: the rest went as the last
    // resort, counted as such.
    assert!(
        unrolled > 0 && unrolled <= dropped,
        "{unrolled} of {dropped}"
    );
    assert!(dropped - unrolled <= 1000);
    // The oldest went.
    let oldest_left: String = edge
        .query_row("SELECT min(recorded_at) FROM metrics", [], |r| r.get(0))
        .unwrap();
    assert!(oldest_left > to, "{oldest_left} after {to}");
    // The state: free space as asked, the reserve made again, the WAL given back.
    let (within, free, min_free, held, note): (i64, i64, i64, i64, Option<String>) = edge
        .query_row(
            "SELECT within_budget, free_bytes, min_free_bytes, reserve_bytes, note FROM sluice_budget",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    assert_eq!((within, min_free, held), (1, MIN_FREE, RESERVE), "{note:?}");
    assert!(free >= MIN_FREE, "{free}");
    assert!(
        note.as_deref()
            .is_some_and(|n| n.contains("the filesystem was full: released the reserve")),
        "{note:?}"
    );
    assert_eq!(size(&reserve), RESERVE);
    assert!(free_bytes(fs.path()) >= MIN_FREE);
    let wal = size(&fs.path().join("edge.db-wal"));
    assert!(
        wal <= 4 * 4096 + 32,
        "the checkpoint gave the WAL back: {wal}"
    );
    // The pipeline writes again, and the rollup runs.
    let left = count(&edge, "SELECT count(*) FROM metrics");
    assert_eq!(left, written - dropped);
    write(&edge, from_ms, next, 100).unwrap();
    next += 100;
    edge.execute_batch("SELECT sluice_rollup_run()").unwrap();
    assert_eq!(count(&edge, "SELECT count(*) FROM metrics"), left + 100);

    // An acknowledgement at 100 %: a batch is cut (and, say, applied by the
    // cloud), the disk fills, the acknowledgement still lands.
    let batch: Vec<u8> = edge
        .query_row("SELECT sluice_batch('metrics', 500)", [], |r| r.get(0))
        .unwrap();
    let pending = count(&edge, "SELECT sluice_pending('metrics')");
    let refill = fill(&edge, from_ms, &mut next, None);
    assert!(write(&edge, from_ms, next, 1).unwrap_err().contains(FULL));
    assert_eq!(size(&reserve), RESERVE);
    let acked: i64 = edge
        .query_row("SELECT sluice_ack(?1)", [&batch], |r| r.get(0))
        .unwrap();
    assert_eq!(acked, 500);
    assert_eq!(
        count(&edge, "SELECT sluice_pending('metrics')"),
        pending - 500 + refill
    );
    // The acknowledgement used the reserve; the next budget call makes it again.
    assert_eq!(size(&reserve), 0);
    enforce(&edge);
    assert_eq!(size(&reserve), RESERVE);
    drop(edge);
}

/// The agent, against a real PostgreSQL: (1) a sync that finds the disk
/// full says so, runs the budget job, and syncs; (2) a sync whose ingest
/// succeeded while the disk filled behind it still ends acknowledged;
/// every row exactly once in the cloud.
#[test]
fn a_sync_at_a_full_disk_ends_acknowledged_exactly_once() {
    let cloud = CloudDb::create("disk_full");
    let conf_dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount("3M");
    let path = fs.path().join("edge.db");
    let reserve = fs.path().join("edge.db-sluice-reserve");
    let cfg = write_config_with(
        conf_dir.path(),
        &path,
        &cloud.url,
        DEVICE,
        5000,
        &format!("\n[budget]\nmin_free_bytes = {MIN_FREE}\nreserve_bytes = {RESERVE}\n"),
    );
    let cfg_arg = cfg.to_str().unwrap().to_string();
    let edge = pipeline(&path);
    let from_ms = day_ago_ms();
    let mut next = 0;

    // The reserve, as the daemon's budget job (every 10 minutes) made it
    // while there was room: the same call with the figures of [budget].
    assert_eq!(enforce(&edge), 0);
    assert_eq!(size(&reserve), RESERVE);

    // (1) 100 % full: the agent's first write fails.
    let written = fill(&edge, from_ms, &mut next, Some(1000));
    assert!(free_bytes(fs.path()) < 64 * 1024);
    let t = Instant::now();
    let out = agent(&["sync", "--mode", "full", "--config", &cfg_arg])
        .output()
        .unwrap();
    let took = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "sync at a full disk failed ({}): {}\n{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains(
            "the filesystem of the edge database is full; running the storage budget job now"
        ),
        "{stderr}"
    );
    let (dropped, unrolled): (i64, i64) = edge
        .query_row(
            "SELECT sum(rows), sum(unrolled_rows) FROM sluice_drops WHERE tbl = 'metrics'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    eprintln!(
        "agent at a full disk: {written} rows; `sluice sync` ran the budget job (dropped \
         {dropped}, {unrolled} not rolled up) and synced the rest in {took:?}"
    );
    assert!(dropped > 0 && unrolled > 0, "{dropped} {unrolled}");
    assert_eq!(count(&edge, "SELECT sluice_pending('metrics')"), 0);
    assert_exactly_once(&edge, &cloud, "sync after a full disk");
    let held: i64 = count(&edge, "SELECT reserve_bytes FROM sluice_budget");
    assert_eq!(held, RESERVE, "the budget job made the reserve again");

    // (2) The disk fills between an ingest and its acknowledgement.
    write(&edge, from_ms, next, 3000).unwrap();
    next += 3000;
    assert_eq!(
        size(&reserve),
        RESERVE,
        "the reserve is there before the second fill"
    );
    let go = conf_dir.path().join("go");
    let mut child = agent(&["sync", "--mode", "full", "--config", &cfg_arg])
        .env(
            "SLUICE_FAILPOINT",
            format!("after-ingest:1:wait-for={}", go.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("failpoint after-ingest:1 reached") {
            break;
        }
    }
    assert!(
        seen.contains("reached"),
        "the agent ended before its first ingest: {seen}"
    );
    // The cloud has applied the first batch; the disk fills behind it.
    fill(&edge, from_ms, &mut next, None);
    assert!(write(&edge, from_ms, next, 1).unwrap_err().contains(FULL));
    assert_eq!(size(&reserve), RESERVE);
    std::fs::write(&go, b"").unwrap();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let rest = rest.join("\n");
    assert!(
        status.success(),
        "the sync whose acknowledgement met a full disk failed ({status}): {stdout}\n{seen}{rest}"
    );
    // The acknowledgement landed (the extension released the reserve for
    // it): nothing is pending, nothing was sent twice.
    assert_eq!(size(&reserve), 0, "the acknowledgement used the reserve");
    assert_eq!(
        count(&edge, "SELECT sluice_pending('metrics')"),
        0,
        "{stdout}"
    );
    assert_exactly_once(&edge, &cloud, "sync whose acknowledgement met a full disk");
    // A second run has nothing to send and no replay to find.
    let out = run_ok(&["sync", "--mode", "full", "--config", &cfg_arg]);
    assert!(out.contains("0 batches, 0 rows"), "{out}");
    assert_exactly_once(&edge, &cloud, "the run after");
    drop(edge);
}
