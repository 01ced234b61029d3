//! Fault-injection trials: the real agent syncs a random edge workload
//! through a fault proxy (cuts, stalls, mid-batch drops), is SIGKILLed at
//! random moments, and sees its PostgreSQL restarted during a sync; then a
//! clean sync. The field's own operations come in between (issue 12): the
//! edge database is backed up and later restored, the cloud database's
//! TimeZone is changed, cameras and sessions are deleted and change their
//! keys, the edge clock jumps forward (rows stamped two years ahead, their
//! acknowledgements recorded ahead) or back, and a second box joins under
//! the same device id: a clone (the first box's database file copied as an
//! SD-card image would be, started on another machine) or a new, empty
//! database. Every row of `division_states`, `key_frames`, `metrics_5m`,
//! `cameras` and `sessions` must then be in the cloud exactly once, at its
//! latest version, and a row deleted at the edge must be gone: the test
//! keeps a model of every version the edge ever held (rows cleaned up at the
//! edge included, deletes as a version of their own) and classifies each
//! difference as lost, duplicated, reverted or otherwise different.
//! `sluice verify` must agree, `sluice status` must warn of the second box,
//! and once everything is acknowledged cleanup (or the storage budget) must
//! free the rows whatever their times. The down direction runs in the same
//! rounds (`faults_down.rs`): a cloud writer changes the published
//! `applied_configs`, and after a final clean pull each box holds exactly
//! its scope of it.
//!
//! `SLUICE_TRIALS` (default 20) trials; `SLUICE_SEED` fixes the first seed
//! (trial i uses seed + i). `scripts/soak.sh N` runs N trials. Each trial
//! prints its seed and its plan (the operations and faults as they ran).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use sluice_tests::fault::FaultProxy;
use sluice_tests::*;

/// The down direction of each trial (cloud to edge, issue 13).
mod faults_down;

const DEVICE: &str = "box-fault";

/// The line of a row deleted at the edge: expected absent in the cloud.
const DELETED: &str = "<deleted at the edge>";

/// The mutable tables whose rows the trials delete and re-key (tracked
/// with deletes, cloud `on_delete` 'delete': a deleted row leaves the cloud).
const WITH_DELETES: [&str; 2] = ["cameras", "sessions"];

/// The tables the model compares.
const TABLES: [&str; 5] = [
    "division_states",
    "key_frames",
    "metrics_5m",
    "cameras",
    "sessions",
];

/// A row's identity in the model: (table, key).
type Key = (String, String);

fn fnv(bytes: Option<Vec<u8>>) -> String {
    match bytes {
        None => "null".into(),
        Some(b) => format!(
            "{}:{:016x}",
            b.len(),
            checksum(&[String::from_utf8_lossy(&b).into_owned()]) ^ b.len() as u64
        ),
    }
}

fn canon_json(t: Option<String>) -> String {
    match t {
        None => "null".into(),
        Some(t) => serde_json::from_str::<serde_json::Value>(&t)
            .map(|v| v.to_string())
            .unwrap_or(t),
    }
}

/// The rows of one table at the edge as (key, canonical content), those
/// matching `filter` (an SQL condition, `1` for all).
fn edge_table(edge: &rusqlite::Connection, table: &str, filter: &str) -> Vec<(Key, String)> {
    let k = |key: String| (table.to_owned(), key);
    let query =
        |sql: &str, f: &mut dyn FnMut(&rusqlite::Row) -> rusqlite::Result<(String, String)>| {
            let mut s = edge.prepare(&format!("{sql} WHERE {filter}")).unwrap();
            let rows: Vec<(String, String)> = s
                .query_map([], |r| f(r))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            rows
        };
    let rows = match table {
        // Append-only rows never change: a row is its content. (A restored
        // box, a clone and a second database give row ids the cloud already
        // has to new rows: the id is no key.)
        "division_states" => query(
            "SELECT id, session_id, camera_id, location_id, frame_number, video_ts, recorded_at, \
             state, walking_waiters, service_waiters, total_staff FROM division_states",
            &mut |r| {
                let line = format!(
                    "{}|{}|{}|{}|{}|{:?}|{}|{}|{}|{}|{}",
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, f64>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, i64>(8)?,
                    r.get::<_, i64>(9)?,
                    r.get::<_, i64>(10)?,
                );
                Ok((line.clone(), line))
            },
        ),
        "key_frames" => query(
            "SELECT id, camera_id, location_id, captured_at, description, detections FROM key_frames",
            &mut |r| {
                Ok((
                    r.get::<_, i64>(0)?.to_string(),
                    format!(
                        "{}|{}|{}|{}|{:?}|{}",
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        canon_json(r.get(5)?)
                    ),
                ))
            },
        ),
        "metrics_5m" => query(
            "SELECT location_id, camera_id, window_start, samples, people_avg, people_max, people_p95, \
             processing_ms_avg, processing_ms_max, processing_ms_p95, processing_ms_sketch, raw FROM metrics_5m",
            &mut |r| {
                let line = format!(
                    "{}|{}|{}|{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{}|{}",
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<f64>>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                    r.get::<_, Option<f64>>(6)?,
                    r.get::<_, Option<f64>>(7)?,
                    r.get::<_, Option<f64>>(8)?,
                    r.get::<_, Option<f64>>(9)?,
                    fnv(r.get(10)?),
                    fnv(r.get(11)?),
                );
                Ok((line.splitn(4, '|').take(3).collect::<Vec<_>>().join("|"), line))
            },
        ),
        // Keyed by (location_id, camera_id) in the cloud: a key change is a
        // delete of the old key plus an insert of the new one.
        "cameras" => query(
            "SELECT location_id, camera_id, id, name, enabled FROM cameras",
            &mut |r| {
                let key = format!("{}|{}", r.get::<_, String>(0)?, r.get::<_, String>(1)?);
                let line = format!(
                    "{key}|{}|{:?}|{}",
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, i64>(4)? != 0
                );
                Ok((key, line))
            },
        ),
        "sessions" => query(
            "SELECT location_id, session_id, id, camera_id, started_at, ended_at FROM sessions",
            &mut |r| {
                let key = format!("{}|{}", r.get::<_, String>(0)?, r.get::<_, String>(1)?);
                let line = format!(
                    "{key}|{}|{}|{}|{:?}",
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<String>>(5)?
                );
                Ok((key, line))
            },
        ),
        other => panic!("no model of {other}"),
    };
    rows.into_iter().map(|(key, line)| (k(key), line)).collect()
}

/// (table, key) -> canonical content, from the edge, of `tables`.
fn edge_rows(edge: &rusqlite::Connection, tables: &[&str]) -> BTreeMap<Key, String> {
    tables
        .iter()
        .flat_map(|t| edge_table(edge, t, "1"))
        .collect()
}

/// The same canonical lines from the cloud (this device's rows; cameras and
/// sessions, keyed without the device, all of them); a key seen twice is
/// returned twice.
fn cloud_rows(c: &mut postgres::Client) -> Vec<(Key, String)> {
    let mut out = Vec::new();
    for line in cloud_division_states(c, DEVICE) {
        out.push((("division_states".into(), line.clone()), line));
    }
    let ts = |col: &str| {
        format!("to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
    };
    for r in c
        .query(
            &format!(
                "SELECT id, camera_id, location_id, {}, description, detections::text FROM key_frames WHERE sluice_device = $1",
                ts("captured_at")
            ),
            &[&DEVICE],
        )
        .unwrap()
    {
        let line = format!(
            "{}|{}|{}|{}|{:?}|{}",
            r.get::<_, i64>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            r.get::<_, String>(3),
            r.get::<_, Option<String>>(4),
            canon_json(r.get(5))
        );
        out.push((("key_frames".into(), r.get::<_, i64>(0).to_string()), line));
    }
    for r in c
        .query(
            &format!(
                "SELECT location_id, camera_id, {}, samples, people_avg, people_max, people_p95, processing_ms_avg, \
                 processing_ms_max, processing_ms_p95, processing_ms_sketch, raw FROM metrics_5m WHERE sluice_device = $1",
                ts("window_start")
            ),
            &[&DEVICE],
        )
        .unwrap()
    {
        let line = format!(
            "{}|{}|{}|{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{}|{}",
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            r.get::<_, i64>(3),
            r.get::<_, Option<f64>>(4),
            r.get::<_, Option<i32>>(5).map(i64::from),
            r.get::<_, Option<f64>>(6),
            r.get::<_, Option<f64>>(7),
            r.get::<_, Option<f64>>(8),
            r.get::<_, Option<f64>>(9),
            fnv(r.get(10)),
            fnv(r.get(11)),
        );
        let key = line.splitn(4, '|').take(3).collect::<Vec<_>>().join("|");
        out.push((("metrics_5m".into(), key), line));
    }
    for r in c
        .query(
            "SELECT location_id, camera_id, id, name, enabled FROM cameras",
            &[],
        )
        .unwrap()
    {
        let key = format!("{}|{}", r.get::<_, String>(0), r.get::<_, String>(1));
        let line = format!(
            "{key}|{}|{:?}|{}",
            r.get::<_, i64>(2),
            r.get::<_, Option<String>>(3),
            r.get::<_, bool>(4)
        );
        out.push((("cameras".into(), key), line));
    }
    for r in c
        .query(
            &format!(
                "SELECT location_id, session_id, id, camera_id, {}, {} FROM sessions",
                ts("started_at"),
                ts("ended_at")
            ),
            &[],
        )
        .unwrap()
    {
        let key = format!("{}|{}", r.get::<_, String>(0), r.get::<_, String>(1));
        let line = format!(
            "{key}|{}|{}|{}|{:?}",
            r.get::<_, i64>(2),
            r.get::<_, String>(3),
            r.get::<_, String>(4),
            r.get::<_, Option<String>>(5)
        );
        out.push((("sessions".into(), key), line));
    }
    out
}

/// Every version of every row the edge ever held, in order.
#[derive(Default)]
struct Model {
    versions: BTreeMap<Key, Vec<String>>,
    /// The history as it was when the edge database was backed up.
    at_backup: Option<BTreeMap<Key, Vec<String>>>,
    /// Rows of mutable tables at the last restore: (edge value, cloud value).
    /// A restore never reverts the cloud: while the edge keeps the restored
    /// value, the cloud may keep the newer one it had (docs/sync-protocol.md,
    /// "Epochs"), a delete of the lost future included (cloud value `None`).
    restored: BTreeMap<Key, (String, Option<String>)>,
    /// Rows of a clone's database that were pending when it was copied: the
    /// clone sends them under its own stream. An append-only row the first
    /// box had not sent yet may then be in the cloud twice, once per box
    /// (the clone's batch skips only what the original had sent already,
    /// docs/sync-protocol.md, "Epochs"); a mutable row may keep the clone's
    /// value (its epoch re-stamped it: two live databases under one device
    /// id overwrite each other's mutable rows, docs/agent.md, "Replacing,
    /// restoring and cloning boxes"). Counted apart, never as a loss.
    cloned_pending: BTreeMap<Key, String>,
}

impl Model {
    fn backup(&mut self) {
        self.at_backup = Some(self.versions.clone());
    }

    /// The edge database was put back to the backup: what it held only in
    /// between and never sent is gone for good (no system could deliver
    /// it), and every row's value at the edge and in the cloud is noted.
    fn restore(&mut self, edge: &rusqlite::Connection, cloud: &[(Key, String)]) {
        let mut in_cloud: HashMap<&Key, Vec<&String>> = HashMap::new();
        for (k, line) in cloud {
            in_cloud.entry(k).or_default().push(line);
        }
        let at_backup = self.at_backup.clone().unwrap_or_default();
        self.versions.retain(|k, versions| {
            let kept = at_backup.get(k).map_or(0, Vec::len).min(versions.len());
            let sent = in_cloud.get(k).cloned().unwrap_or_default();
            let mut i = kept;
            while i < versions.len() {
                // A delete reached the cloud when the key is not there.
                let reached = if versions[i] == DELETED {
                    sent.is_empty()
                } else {
                    sent.contains(&&versions[i])
                };
                if reached {
                    i += 1;
                } else {
                    versions.remove(i);
                }
            }
            !versions.is_empty()
        });
        // A row the restored database does not hold is no delete: the
        // lost future's rows stay in the cloud (docs/agent.md).
        self.observe(edge, &TABLES);
        self.restored.clear();
        let at_edge = edge_rows(edge, &TABLES[1..]);
        for (k, line) in &at_edge {
            let cloud_line = in_cloud
                .get(k)
                .and_then(|v| v.first())
                .map(|l| (*l).clone());
            self.restored.insert(k.clone(), (line.clone(), cloud_line));
        }
        for (k, lines) in &in_cloud {
            if WITH_DELETES.contains(&k.0.as_str()) && !at_edge.contains_key(*k) {
                self.restored
                    .insert((*k).clone(), (DELETED.to_owned(), Some(lines[0].clone())));
            }
        }
    }

    /// Records the edge's rows of `tables` as they are now. A row that is
    /// gone is not taken for a delete here: cleanup and the storage budget
    /// free rows too (see `deleted`).
    fn observe(&mut self, edge: &rusqlite::Connection, tables: &[&str]) {
        let now = edge_rows(edge, tables);
        for (k, line) in now {
            let v = self.versions.entry(k).or_default();
            if v.last() != Some(&line) {
                v.push(line);
            }
        }
    }

    /// The rows of `before` (cameras and sessions before a transaction of
    /// deletes and key changes) that are gone from the edge after it
    /// committed were deleted: expected absent in the cloud.
    fn deleted(&mut self, edge: &rusqlite::Connection, before: &BTreeSet<Key>) {
        let now = edge_rows(edge, &WITH_DELETES);
        for k in before.iter().filter(|k| !now.contains_key(*k)) {
            let v = self.versions.entry(k.clone()).or_default();
            if v.last().map(String::as_str) != Some(DELETED) {
                v.push(DELETED.to_owned());
            }
        }
    }

    /// The edge database `clone` was just copied from the first box's: note
    /// its pending rows (see `cloned_pending`).
    fn cloned(&mut self, clone: &rusqlite::Connection) {
        for t in TABLES {
            let acked = acked_seq(clone, t);
            let pending = if t == "division_states" {
                format!("id > {acked}")
            } else {
                format!("sluice_version > {acked}")
            };
            for (k, line) in edge_table(clone, t, &pending) {
                self.cloned_pending.insert(k, line);
            }
        }
        // Deletes not yet sent: the clone sends them too.
        let mut s = clone
            .prepare("SELECT tbl, k1 || '|' || k2 FROM sluice_tombstones AS d WHERE version > (SELECT json_extract(sluice_tracked(d.tbl), '$.acked_seq'))")
            .unwrap();
        let rows: Vec<(String, String)> = s
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for k in rows {
            self.cloned_pending.insert(k, DELETED.to_owned());
        }
    }
}

/// Waits until no other client is connected to the cloud database `c` is
/// connected to. An agent killed in the middle of a batch leaves its
/// backend running: PostgreSQL notices the lost client only when it next
/// reads or writes, so an ingest under way finishes, and commits when its
/// commit was sent. A snapshot of the cloud taken before then misses rows
/// that arrive afterwards (the restore of fault trial seed 20262040 took a
/// batch of 250 rows committed after it as never sent, then found them in
/// the cloud: 'extra (never at the edge)'). Panics after a minute.
fn quiesce(c: &mut postgres::Client) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let others: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_stat_activity \
                  WHERE datname = pg_catalog.current_database() \
                    AND pid <> pg_catalog.pg_backend_pid() AND backend_type = 'client backend'",
                &[],
            )
            .unwrap()
            .get(0);
        if others == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{others} other sessions still connected to the trial's database after a minute"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn acked_seq(edge: &rusqlite::Connection, table: &str) -> i64 {
    edge.query_row(
        "SELECT json_extract(sluice_tracked(?1), '$.acked_seq')",
        [table],
        |r| r.get(0),
    )
    .unwrap()
}

#[derive(Default, Debug, Clone, Copy)]
struct Tally {
    lost: u64,
    duplicated: u64,
    reverted: u64,
    different: u64,
    /// Rows pending in a clone's copy that the clone sent too (see
    /// `Model::cloned_pending`): documented, not a failure.
    sent_by_clone: u64,
    /// Rows the budget dropped at a full disk before they were sent,
    /// counted in `sluice_drops` (docs/agent.md, full disk).
    dropped: u64,
    /// The down direction's figures (faults_down.rs).
    down: faults_down::DownTally,
}

/// `drops`: the budget's drops of rows not yet sent (`unsynced_drops`): a
/// row missing in the cloud, or there at an older version, whose time is in
/// one of its table's drops is counted as dropped, up to the rows they
/// dropped; never silent, so never lost.
fn compare(
    model: &Model,
    cloud: &[(Key, String)],
    drops: &[(String, String, String, i64)],
    report: &mut Vec<String>,
) -> Tally {
    let mut t = Tally::default();
    let mut droppable: HashMap<&str, i64> = HashMap::new();
    for (tbl, _, _, rows) in drops {
        *droppable.entry(tbl.as_str()).or_default() += rows;
    }
    let mut dropped = |k: &Key, latest: &String| -> bool {
        let Some(at) = row_time(&k.0, latest) else {
            return false;
        };
        let inside = drops
            .iter()
            .any(|(tbl, from, to, _)| *tbl == k.0 && *from <= at && at <= *to);
        match droppable.get_mut(k.0.as_str()) {
            Some(n) if inside && *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    };
    let mut seen: HashMap<&Key, Vec<&String>> = HashMap::new();
    for (k, line) in cloud {
        seen.entry(k).or_default().push(line);
    }
    for (k, lines) in &seen {
        if !model.versions.contains_key(*k) {
            t.duplicated += lines.len() as u64;
            report.push(format!("extra (never at the edge) {k:?}: {}", lines[0]));
            continue;
        }
        // Once per box that held it pending.
        let twice = k.0 == "division_states" && model.cloned_pending.contains_key(*k);
        if lines.len() == 2 && twice {
            t.sent_by_clone += 1;
        } else if lines.len() > 1 {
            t.duplicated += lines.len() as u64 - 1;
            report.push(format!("duplicated ({} times) {k:?}", lines.len()));
        }
    }
    for (k, versions) in &model.versions {
        let latest = versions.last().unwrap();
        let restored = model.restored.get(k);
        let cloned = model.cloned_pending.get(k);
        match seen.get(k).map(|v| v[0]) {
            None if latest == DELETED => {}
            // Unchanged at the edge since a restore: the cloud keeps the
            // lost future's delete.
            None if restored.is_some_and(|(edge, cloud)| edge == latest && cloud.is_none()) => {}
            None if cloned.is_some_and(|c| c == DELETED) => t.sent_by_clone += 1,
            None if dropped(k, latest) => t.dropped += 1,
            None => {
                t.lost += 1;
                report.push(format!("lost {k:?}: {latest}"));
            }
            Some(got) if got == latest => {}
            // Unchanged at the edge since a restore: the cloud keeps what it had.
            Some(got)
                if restored
                    .is_some_and(|(edge, cloud)| edge == latest && cloud.as_ref() == Some(got)) => {
            }
            Some(got) if k.0 != "division_states" && cloned == Some(got) => t.sent_by_clone += 1,
            Some(got) if latest == DELETED => {
                t.reverted += 1;
                report.push(format!(
                    "deleted at the edge, still in the cloud {k:?}: {got}"
                ));
            }
            Some(got) if versions.contains(got) && dropped(k, latest) => t.dropped += 1,
            Some(got) if versions.contains(got) => {
                t.reverted += 1;
                report.push(format!("reverted {k:?}: cloud {got}, latest {latest}"));
            }
            Some(got) => {
                t.different += 1;
                report.push(format!("different {k:?}: cloud {got}, latest {latest}"));
            }
        }
    }
    t
}

/// SQLite's message when the filesystem is full (a disk-full trial).
const FULL: &str = "database or disk is full";

/// A write that a full disk may refuse: `Err` with SQLite's message, the
/// transaction rolled back. Any other error fails the trial.
type Wrote = Result<(), String>;

fn refused(edge: &rusqlite::Connection, e: rusqlite::Error) -> String {
    if !edge.is_autocommit() {
        let _ = edge.execute_batch("ROLLBACK");
    }
    let m = e.to_string();
    assert!(m.contains(FULL), "an edge write failed: {m}");
    m
}

fn write_tx(
    edge: &rusqlite::Connection,
    f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<()>,
) -> Wrote {
    edge.execute_batch("BEGIN IMMEDIATE")
        .and_then(|()| f(edge))
        .and_then(|()| edge.execute_batch("COMMIT"))
        .map_err(|e| refused(edge, e))
}

/// `insert_rows` (through `sluice_insert`, `chunk` rows a transaction),
/// stopping at the first chunk a full disk refuses.
fn insert(
    edge: &rusqlite::Connection,
    table: &str,
    rows: &[serde_json::Value],
    chunk: usize,
) -> Wrote {
    for part in rows.chunks(chunk) {
        let json = serde_json::Value::Array(part.to_vec()).to_string();
        write_tx(edge, |e| {
            let n: i64 = e.query_row(
                "SELECT sluice_insert(?1, ?2)",
                rusqlite::params![table, json],
                |r| r.get(0),
            )?;
            assert_eq!(n as usize, part.len());
            Ok(())
        })?;
    }
    Ok(())
}

fn rollup(edge: &rusqlite::Connection) -> Wrote {
    write_tx(edge, |e| {
        e.query_row("SELECT sluice_rollup_run()", [], |_| Ok(()))
    })
}

/// The edge's state while the trial runs.
#[derive(Clone)]
struct Workload {
    /// The seed of the rows' content (each box its own).
    seed: u64,
    next_division: u64,
    next_minute: i64,
    descriptions: u64,
    /// Names handed out to cameras and sessions (keys never reused).
    names: u64,
    /// The clock ran ahead during this round: the acknowledgements the
    /// agent records are moved ahead too, after the round's sync.
    clock_ahead: bool,
}

const BASE_MS: i64 = 1_795_000_000_000;
const DAY_MS: i64 = 24 * 3600 * 1000;
const TWO_YEARS_MS: i64 = 2 * 365 * DAY_MS;
const LOCATIONS: [&str; 2] = ["store-042", "store-043"];

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn random_id(edge: &rusqlite::Connection, table: &str) -> Option<i64> {
    edge.query_row(
        &format!("SELECT id FROM {table} ORDER BY random() LIMIT 1"),
        [],
        |r| r.get(0),
    )
    .ok()
}

/// Cameras added, renamed, disabled, deleted, re-keyed (camera_id) and moved
/// to another location (location_id: also part of the cloud key).
fn camera_work(
    rng: &mut Rng,
    e: &rusqlite::Connection,
    w: &mut Workload,
) -> rusqlite::Result<String> {
    let mut done = Vec::new();
    for _ in 0..rng.range(1, 4) {
        let id = random_id(e, "cameras");
        let op = if id.is_none() { 0 } else { rng.below(6) };
        w.names += 1;
        let name = format!("cam-x{:03}", w.names);
        match (op, id) {
            (0, _) | (_, None) => {
                e.execute(
                    "INSERT INTO cameras (camera_id, location_id, name, stream_url) VALUES (?1, ?2, ?3, 'rtsp://secret')",
                    rusqlite::params![name, rng.pick(&LOCATIONS), format!("camera {}", w.names)],
                )?;
                done.push("add");
            }
            (1, Some(id)) => {
                e.execute(
                    "UPDATE cameras SET name = ?1, enabled = ?2 WHERE id = ?3",
                    rusqlite::params![format!("renamed {}", w.names), rng.below(2) as i64, id],
                )?;
                done.push("rename");
            }
            (2 | 3, Some(id)) => {
                e.execute("DELETE FROM cameras WHERE id = ?1", [id])?;
                done.push("delete");
            }
            (4, Some(id)) => {
                e.execute(
                    "UPDATE cameras SET camera_id = ?1 WHERE id = ?2",
                    rusqlite::params![name, id],
                )?;
                done.push("key change");
            }
            (_, Some(id)) => {
                e.execute(
                    "UPDATE cameras SET location_id = CASE location_id WHEN 'store-042' THEN 'store-043' ELSE 'store-042' END WHERE id = ?1",
                    [id],
                )?;
                done.push("move");
            }
        }
    }
    Ok(format!("cameras: {}", done.join(", ")))
}

/// Sessions started, ended, deleted and re-keyed (session_id).
fn session_work(
    rng: &mut Rng,
    e: &rusqlite::Connection,
    w: &mut Workload,
) -> rusqlite::Result<String> {
    let mut done = Vec::new();
    for _ in 0..rng.range(1, 4) {
        let id = random_id(e, "sessions");
        let op = if id.is_none() { 0 } else { rng.below(5) };
        w.names += 1;
        let name = format!("sess-{:04}", w.names);
        let at = iso_ms(BASE_MS + w.next_minute * 60_000 + w.names as i64);
        match (op, id) {
            (0 | 1, _) | (_, None) => {
                e.execute(
                    "INSERT INTO sessions (session_id, location_id, camera_id, started_at) VALUES (?1, ?2, ?3, ?4)",
                    rusqlite::params![name, rng.pick(&LOCATIONS), format!("cam-{:02}", rng.below(4)), at],
                )?;
                done.push("start");
            }
            (2, Some(id)) => {
                e.execute(
                    "UPDATE sessions SET ended_at = ?1 WHERE id = ?2",
                    rusqlite::params![at, id],
                )?;
                done.push("end");
            }
            (3, Some(id)) => {
                e.execute("DELETE FROM sessions WHERE id = ?1", [id])?;
                done.push("delete");
            }
            (_, Some(id)) => {
                e.execute(
                    "UPDATE sessions SET session_id = ?1 WHERE id = ?2",
                    rusqlite::params![name, id],
                )?;
                done.push("key change");
            }
        }
    }
    Ok(format!("sessions: {}", done.join(", ")))
}

/// Rows written under a wrong clock: two years ahead, or days to a year
/// behind (what the pipeline stamps them with; the extension takes the
/// times from the rows). Returns the plan's label.
fn wrong_clock_work(
    rng: &mut Rng,
    edge: &rusqlite::Connection,
    w: &mut Workload,
) -> Result<String, String> {
    let ahead = rng.below(2) == 0;
    let (at, label) = if ahead {
        w.clock_ahead = true;
        (now_ms() + TWO_YEARS_MS, "clock two years ahead".to_owned())
    } else {
        let days = rng.range(1, 365) as i64;
        (BASE_MS - days * DAY_MS, format!("clock {days} days behind"))
    };
    let n = rng.range(5, 120);
    let mut rows = division_states(w.next_division, n, w.seed);
    for (i, r) in rows.iter_mut().enumerate() {
        r["recorded_at"] = iso_ms(at + i as i64 * 200).into();
    }
    w.next_division += n;
    insert(edge, "division_states", &rows, 50)?;
    let mut metrics = Vec::new();
    for s in 0..12 {
        for cam in 0..3 {
            metrics.push(serde_json::json!({
                "camera_id": format!("cam-{cam:02}"), "location_id": "store-042",
                "recorded_at": iso_ms(at + s * 5_000), "people_count": rng.below(20),
                "processing_ms": rng.below(10_000) as f64 / 100.0,
            }));
        }
    }
    insert(edge, "metrics", &metrics, 500)?;
    let frames: Vec<_> = (0..rng.range(1, 5))
        .map(|i| {
            serde_json::json!({
                "camera_id": format!("cam-{:02}", rng.below(4)), "location_id": "store-042",
                "captured_at": iso_ms(at + i as i64 * 1000),
            })
        })
        .collect();
    insert(edge, "key_frames", &frames, 50)?;
    rollup(edge)?;
    Ok(format!("{label}: {n} rows"))
}

/// One random piece of edge work; returns a label for the plan when it is
/// one of the field's operations.
fn work(
    rng: &mut Rng,
    edge: &rusqlite::Connection,
    w: &mut Workload,
    model: &mut Model,
) -> Option<String> {
    let mut label = None;
    let wrote = match rng.below(9) {
        0 | 1 => {
            let n = rng.range(20, 400);
            let rows = division_states(w.next_division, n, w.seed);
            w.next_division += n;
            insert(edge, "division_states", &rows, rng.range(10, 200) as usize)
        }
        2 => {
            let n = rng.range(1, 30);
            let rows: Vec<_> = (0..n)
                .map(|i| {
                    let has = rng.below(2) == 0;
                    serde_json::json!({
                        "camera_id": format!("cam-{:02}", rng.below(4)),
                        "location_id": "store-042",
                        "captured_at": iso_ms(BASE_MS + w.next_minute * 60_000 + i as i64),
                        "description": if has { serde_json::Value::from(format!("frame {i} seen")) } else { serde_json::Value::Null },
                        "detections": if has { serde_json::Value::from(format!("{{\"persons\": {i}, \"kind\": \"x\"}}")) } else { serde_json::Value::Null },
                    })
                })
                .collect();
            insert(edge, "key_frames", &rows, 50)
        }
        3 => {
            // Describe (or re-describe) some key frames: each update makes the row pending again.
            let ids: Vec<i64> = edge
                .prepare("SELECT id FROM key_frames ORDER BY random() LIMIT 10")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            write_tx(edge, |e| {
                for id in ids {
                    w.descriptions += 1;
                    e.execute(
                        "UPDATE key_frames SET description = ?1, detections = ?2 WHERE id = ?3",
                        rusqlite::params![
                            format!("description v{}", w.descriptions),
                            format!("{{\"v\": {}}}", w.descriptions),
                            id
                        ],
                    )?;
                }
                Ok(())
            })
        }
        4 => {
            // Raw metrics for the next minutes (every 5 s per camera), then the rollup.
            let minutes = rng.range(1, 4) as i64;
            let mut rows = Vec::new();
            for m in 0..minutes {
                for s in 0..12 {
                    for cam in 0..3 {
                        let t = BASE_MS + (w.next_minute + m) * 60_000 + s * 5_000;
                        rows.push(serde_json::json!({
                            "camera_id": format!("cam-{cam:02}"), "location_id": "store-042",
                            "recorded_at": iso_ms(t), "people_count": rng.below(20),
                            "processing_ms": rng.below(10_000) as f64 / 100.0,
                        }));
                    }
                }
            }
            w.next_minute += minutes;
            insert(edge, "metrics", &rows, 500).and_then(|()| rollup(edge))
        }
        5 => {
            // Cleanup of acknowledged rows: remember every row first (same transaction).
            write_tx(edge, |e| {
                model.observe(e, &TABLES);
                for t in ["division_states", "key_frames"] {
                    e.query_row("SELECT sluice_cleanup(?1, 0)", [t], |_| Ok(()))?;
                }
                Ok(())
            })
        }
        n @ (6 | 7) => {
            let before: BTreeSet<Key> = edge_rows(edge, &WITH_DELETES).into_keys().collect();
            let wrote = write_tx(edge, |e| {
                label = Some(if n == 6 {
                    camera_work(rng, e, w)?
                } else {
                    session_work(rng, e, w)?
                });
                Ok(())
            });
            if wrote.is_ok() {
                model.deleted(edge, &before);
            }
            wrote
        }
        _ => wrong_clock_work(rng, edge, w).map(|l| label = Some(l)),
    };
    if wrote.is_err() {
        label = Some(format!(
            "{}write refused: disk full",
            label.map_or(String::new(), |l| format!("{l}: "))
        ));
    }
    model.observe(edge, &TABLES);
    label
}

/// The second box's own work: new division states (its own content), and
/// now and then a cleanup. It never touches the rows of mutable tables.
fn second_box_work(rng: &mut Rng, b: &mut SecondBox, model: &mut Model) {
    if rng.chance(25) {
        // (Not on a small filesystem: nothing refuses these writes.)
        write_tx(&b.edge, |e| {
            model.observe(e, &TABLES[..1]);
            e.query_row(
                "SELECT sluice_cleanup('division_states', 0)",
                [],
                |_| Ok(()),
            )
        })
        .unwrap();
    } else {
        let n = rng.range(20, 300);
        // Sessions of its own: the generator's fields of another seed can
        // coincide with the first box's for one row (seeds 9000, 9057 and
        // 9082 drew such a row: the same content under the same row id,
        // taken for a duplicate).
        let mut rows = division_states(b.w.next_division, n, b.w.seed);
        for r in &mut rows {
            r["session_id"] = format!("box2-{}", r["session_id"].as_str().unwrap()).into();
        }
        insert_rows(
            &b.edge,
            "division_states",
            &rows,
            rng.range(10, 200) as usize,
        );
        b.w.next_division += n;
    }
    model.observe(&b.edge, &TABLES[..1]);
}

/// The `[budget]` of a disk-full trial's first box.
const BUDGET: &str = "\n[budget]\nmin_free_bytes = 262144\nreserve_bytes = 524288\n";
const BUDGET_OPTIONS: &str = r#"{"min_free_bytes": 262144, "reserve_bytes": 524288}"#;

/// A 4 MB tmpfs on `dir` (the trials run as root, as CI does; a failed
/// mount fails the trial), unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path) -> Tmpfs {
        std::fs::create_dir(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4M", "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "a disk-full trial needs a small filesystem of its own and runs as root: \
             mount -t tmpfs -o size=4M tmpfs {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs {
            dir: dir.to_owned(),
        }
    }

    /// Fills the filesystem to the last byte with a file `ballast`, as
    /// something else on the box would; returns its size.
    fn fill(&self) -> u64 {
        use std::io::Write;
        let mut f = std::fs::File::create(self.dir.join("ballast")).unwrap();
        let mut written = 0u64;
        for chunk in [65536, 4096, 512, 1] {
            let buf = vec![0x5au8; chunk];
            while f.write_all(&buf).is_ok() {
                written += chunk as u64;
            }
        }
        let _ = f.sync_all();
        written
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds a file open (a hung agent): detach it.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.dir)
                .status();
        }
    }
}

/// The agent's budget job: `sluice_enforce_budget(NULL, options)` outside
/// a transaction. It must work at a full disk too.
fn budget_job(edge: &rusqlite::Connection, log: &mut Vec<String>, report: &mut Vec<String>) {
    match edge.query_row(
        "SELECT sluice_enforce_budget(NULL, ?1)",
        [BUDGET_OPTIONS],
        |r| r.get::<_, i64>(0),
    ) {
        Ok(0) => {}
        Ok(n) => log.push(format!("budget dropped {n} rows")),
        Err(e) => report.push(format!("the budget job failed: {e}")),
    }
}

/// The budget's drops of rows not yet sent, from `sluice_drops`: (table,
/// from, to (ISO seconds, 19 characters), rows).
fn unsynced_drops(edge: &rusqlite::Connection) -> Vec<(String, String, String, i64)> {
    let mut s = edge
        .prepare(
            "SELECT tbl, substr(from_time, 1, 19), substr(to_time, 1, 19), unsynced_rows \
             FROM sluice_drops WHERE unsynced_rows > 0",
        )
        .unwrap();
    let v: Vec<(String, String, String, i64)> = s
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    v
}

/// The time of a row of the model (the table's time column, ISO to the
/// second), when the table has one.
fn row_time(table: &str, line: &str) -> Option<String> {
    let field = match table {
        "division_states" => 6,
        "key_frames" => 3,
        "sessions" => 4,
        _ => return None,
    };
    line.split('|')
        .nth(field)
        .map(|t| t.chars().take(19).collect())
}

/// A second box sending as the same device: a clone of the first box's
/// database on another machine, or a new, empty database.
struct SecondBox {
    kind: &'static str,
    edge: rusqlite::Connection,
    config: PathBuf,
    w: Workload,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    Kill,
    Cut,
    Stall,
    DropMidBatch,
    Refuse,
    Restart,
}

const FAULTS: [Fault; 7] = [
    Fault::None,
    Fault::Kill,
    Fault::Cut,
    Fault::Stall,
    Fault::DropMidBatch,
    Fault::Refuse,
    Fault::Restart,
];

/// An agent config in `dir` for `edge`, on the machine `machine`.
/// `extra`: more TOML (a `[budget]`).
fn box_config(
    dir: &Path,
    edge: &Path,
    url: &str,
    batch_rows: u32,
    machine: &str,
    extra: &str,
) -> PathBuf {
    let config = write_config_with(
        dir,
        edge,
        url,
        DEVICE,
        batch_rows,
        &format!("max_attempts = 40\nbandwidth_bytes_per_sec = 20000\n{extra}"),
    );
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[device]\n",
        &format!("[device]\nmachine_id = \"{machine}\"\n"),
        1,
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// `sluice sync --mode hourly` (within the bandwidth cap, so that a sync
/// lasts long enough to be hit).
/// Its output (warnings and errors) goes to `log` for a post-mortem.
/// `failpoint`: the agent's `SLUICE_FAILPOINT` (agent/src/failpoint.rs).
fn spawn_sync(config: &Path, log: &Path, failpoint: Option<&str>) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    agent(&[
        "sync",
        "--config",
        config.to_str().unwrap(),
        "--mode",
        "hourly",
        "--quiet",
    ])
    .envs(failpoint.map(|f| ("SLUICE_FAILPOINT", f)))
    .stdout(Stdio::null())
    .stderr(out)
    .spawn()
    .unwrap()
}

/// Waits until the agent's log `log` (from byte `from` on) says that the
/// failpoint `name` was reached (true), or the agent ended or `deadline`
/// passed (false).
fn failpoint_reached(
    child: &mut Child,
    log: &Path,
    from: u64,
    name: &str,
    deadline: Instant,
) -> bool {
    let text = format!("failpoint {name} reached");
    loop {
        let bytes = std::fs::read(log).unwrap_or_default();
        let tail = bytes.get(from as usize..).unwrap_or_default();
        if String::from_utf8_lossy(tail).contains(&text) {
            return true;
        }
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_for(child: &mut Child, deadline: Instant) -> String {
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return format!("{s}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return "HUNG, killed after 120 s".to_owned();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The clean sync of one box at the end; nothing may stay pending.
fn settle(name: &str, config: &Path, edge: &rusqlite::Connection, report: &mut Vec<String>) {
    let out = agent(&["sync", "--config", config.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    if !out.status.success() {
        report.push(format!(
            "{name}: the final clean sync failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let pending: i64 = edge
        .query_row(
            "SELECT sum(sluice_pending(tbl)) FROM sluice_tables",
            [],
            |r| r.get(0),
        )
        .unwrap();
    if pending != 0 {
        let db: String = edge
            .query_row("PRAGMA database_list", [], |r| r.get(2))
            .unwrap();
        let fresh = edge_db(Path::new(&db), false);
        let fresh_pending: i64 = fresh
            .query_row(
                "SELECT sum(sluice_pending(tbl)) FROM sluice_tables",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let ckpt: String = edge
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok(format!(
                    "{:?}/{:?}/{:?}",
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?
                ))
            })
            .unwrap();
        report.push(format!(
            "{name}: {db}: pending on a fresh connection {fresh_pending}, checkpoint {ckpt}"
        ));
        let again = agent(&["sync", "--config", config.to_str().unwrap()])
            .env("SLUICE_LOG", "info")
            .output()
            .unwrap();
        let mut s = edge
            .prepare(
                "SELECT tbl || ': ' || sluice_pending(tbl) || ' pending, ' || sluice_tracked(tbl) \
                 FROM sluice_tables WHERE sluice_pending(tbl) > 0",
            )
            .unwrap();
        let tables: Vec<String> = s
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        report.push(format!(
            "{name}: {pending} rows still pending after the final sync (autocommit {}; {}; identity {}); a sync again: {}{}",
            edge.is_autocommit(),
            tables.join("; "),
            edge.query_row("SELECT sluice_identity()", [], |r| r.get::<_, String>(0)).unwrap(),
            String::from_utf8_lossy(&again.stdout),
            String::from_utf8_lossy(&again.stderr)
        ));
    }
}

fn verify(name: &str, config: &Path, tables: &[&str], report: &mut Vec<String>) {
    // The product's own check must agree: the edge and the cloud are in step.
    for t in tables {
        let out = agent(&["verify", "--config", config.to_str().unwrap(), "--table", t])
            .output()
            .unwrap();
        if !out.status.success() {
            report.push(format!(
                "{name}: sluice verify --table {t} found differences: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
}

/// `sluice status` of a box warns of the other database sending as the device.
fn warns_of_two_databases(name: &str, config: &Path, report: &mut Vec<String>) {
    let out = agent(&["status", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains("databases are sending as device") {
        report.push(format!(
            "{name}: sluice status does not warn of the second database under device {DEVICE}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
}

fn current_stream(edge: &rusqlite::Connection) -> i64 {
    edge.query_row(
        "SELECT json_extract(sluice_identity(), '$.stream_id')",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

/// The streams of an edge database's history.
fn streams(edge: &rusqlite::Connection) -> BTreeSet<i64> {
    let mut s = edge
        .prepare("SELECT json_extract(value, '$.stream_id') FROM json_each(sluice_identity(), '$.epochs')")
        .unwrap();
    let v: BTreeSet<i64> = s
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    v
}

/// Once everything is acknowledged, nothing holds rows back for ever,
/// whatever times the rows carry (clocks that were ahead or behind):
/// cleanup with `keep` 0 leaves each table its newest row at most (the rowid
/// high-water mark), or the storage budget leaves no row stamped in the
/// future but that one.
fn frees_everything(
    rng: &mut Rng,
    edge: &rusqlite::Connection,
    log: &mut Vec<String>,
    report: &mut Vec<String>,
) {
    let tables = [
        ("division_states", "recorded_at"),
        ("metrics", "recorded_at"),
        ("key_frames", "captured_at"),
    ];
    let count = |sql: &str| -> i64 { edge.query_row(sql, [], |r| r.get(0)).unwrap() };
    let budget = rng.below(2) == 0;
    write_tx(edge, |e| {
        e.query_row("SELECT sluice_rollup_run()", [], |_| Ok(()))?;
        if budget {
            e.query_row("SELECT sluice_enforce_budget(1)", [], |_| Ok(()))
        } else {
            for (t, _) in tables {
                e.query_row("SELECT sluice_cleanup(?1, 0)", [t], |_| Ok(()))?;
            }
            Ok(())
        }
    })
    .unwrap();
    for (t, time) in tables {
        let left = if budget {
            count(&format!(
                "SELECT count(*) FROM {t} WHERE unixepoch({time}) > unixepoch('now', '+1 day') \
                 AND rowid < (SELECT max(rowid) FROM {t})"
            ))
        } else {
            count(&format!(
                "SELECT count(*) FROM {t} WHERE rowid < (SELECT max(rowid) FROM {t})"
            ))
        };
        if left != 0 {
            report.push(format!(
                "{} left {left} acknowledged rows of {t}{}",
                if budget {
                    "sluice_enforce_budget(1)"
                } else {
                    "sluice_cleanup(t, 0)"
                },
                if budget { " stamped in the future" } else { "" }
            ));
        }
    }
    log.push(if budget {
        "then the budget".into()
    } else {
        "then cleanup".into()
    });
}

fn run_trial(server: &OwnServer, trial: u64, seed: u64) -> (Tally, Vec<String>, Vec<String>) {
    let mut rng = Rng(seed);
    let db = format!("trial_{}_{trial}", std::process::id());
    let direct = server.database(&db);
    let pg_port: u16 = direct
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let proxy = FaultProxy::start(pg_port);
    let user = direct
        .trim_start_matches("postgres://")
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    let url = format!("postgres://{user}@127.0.0.1:{}/{db}", proxy.port);
    let dir = tempfile::tempdir().unwrap();
    // A disk-full trial: the first box's database on a small filesystem
    // of its own, with a [budget] (declared before the connection: values
    // drop in reverse order).
    let fs = rng.chance(15).then(|| Tmpfs::mount(&dir.path().join("fs")));
    let edge_dir = fs.as_ref().map_or(dir.path(), |f| f.dir.as_path());
    let budget = if fs.is_some() { BUDGET } else { "" };
    let mut report = Vec::new();
    let edge_path = edge_dir.join("edge.db");
    let mut edge = edge_db(&edge_path, true);
    let batch_rows = [25, 100, 250][rng.below(3)];
    // The down direction draws from a generator of its own: a seed's plan
    // of the up direction stays what it was.
    let mut drng = Rng(seed ^ 0xd0e0_0000_0000_0000);
    let pull = faults_down::pull_config(&mut drng);
    let config = box_config(
        dir.path(),
        &edge_path,
        &url,
        batch_rows,
        "machine-a",
        &format!("{budget}{pull}"),
    );
    let mut writer = faults_down::CloudWriter::new(&direct);
    // SLUICE_DOWN=0: the trials of the up direction alone (no cloud writes,
    // the final pull and its check skipped), e.g. to time them.
    let down = std::env::var("SLUICE_DOWN").map_or(true, |v| v != "0");
    let mut model = Model::default();
    let mut w = Workload {
        seed,
        next_division: 0,
        next_minute: 0,
        descriptions: 0,
        names: 0,
        clock_ahead: false,
    };
    let mut log = Vec::new();
    let backup_path = dir.path().join("backup.db");
    let mut backed_up = false;
    let rounds = rng.range(4, 7);
    // The disk fills in one round after the first; it may be freed later.
    let full_at = fs.as_ref().map(|_| rng.range(1, rounds - 1));
    let mut ballast: Option<PathBuf> = None;
    // A second box under the same device id joins in one round after the
    // first: a clone of this box's database, or a new one.
    let second_at = match rng.below(10) {
        0..=2 => Some(("Clone", rng.range(1, rounds - 1))),
        3 | 4 => Some(("NewDatabase", rng.range(1, rounds - 1))),
        _ => None,
    };
    let mut second: Option<SecondBox> = None;
    for round in 0..rounds {
        // The field's own operations between syncs: a backup of the edge
        // database, and later its restore (the box goes back in time: its
        // bookkeeping too, and new rows get row ids the cloud has).
        if !backed_up && rng.chance(30) {
            edge.execute("VACUUM INTO ?1", [backup_path.to_str().unwrap()])
                .unwrap();
            model.backup();
            backed_up = true;
            log.push("Backup".to_owned());
        } else if backed_up && rng.chance(30) {
            // (The copy needs room: an operator restoring frees the disk first.)
            if let Some(b) = ballast.take() {
                std::fs::remove_file(b).unwrap();
                log.push("disk freed".into());
            }
            drop(edge);
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", edge_path.display()));
            }
            std::fs::copy(&backup_path, &edge_path).unwrap();
            edge = edge_db(&edge_path, false);
            let mut c = postgres::Client::connect(&direct, postgres::NoTls).unwrap();
            // A batch the agent killed last round left in flight may still
            // commit: the restore notes what the cloud holds once it is done.
            quiesce(&mut c);
            model.restore(&edge, &cloud_rows(&mut c));
            writer.restored();
            log.push("Restore".to_owned());
        }
        if let Some((kind, _)) = second_at.filter(|(_, at)| *at == round) {
            let dir2 = dir.path().join("box2");
            std::fs::create_dir(&dir2).unwrap();
            let path2 = dir2.join("edge.db");
            let (edge2, w2) = if kind == "Clone" {
                // The file as an SD-card image copies it, with its write-ahead
                // log (nothing writes at this moment), onto another machine;
                // its configuration comes along (the same device id). Copied
                // by another process: closing a file of the database here
                // would drop this process's POSIX locks on it, under the open
                // connection (sqlite.org/howtocorrupt.html, 2.2), and the
                // agent would then delete the write-ahead log it still uses.
                let mut files = vec![edge_path.clone()];
                let wal = PathBuf::from(format!("{}-wal", edge_path.display()));
                if wal.exists() {
                    files.push(wal);
                }
                let status = std::process::Command::new("cp")
                    .args(&files)
                    .arg(&dir2)
                    .status()
                    .unwrap();
                assert!(status.success(), "cp of the edge database failed");
                let edge2 = edge_db(&path2, false);
                model.cloned(&edge2);
                writer.cloned(&edge2);
                let w2 = Workload {
                    seed: seed ^ 0xc10e_0000_0000_0000,
                    ..w.clone()
                };
                (edge2, w2)
            } else {
                let w2 = Workload {
                    seed: seed ^ 0x0eb0_0000_0000_0000,
                    next_division: 0,
                    ..w.clone()
                };
                (edge_db(&path2, true), w2)
            };
            let config2 = box_config(&dir2, &path2, &url, batch_rows, "machine-b", &pull);
            second = Some(SecondBox {
                kind,
                edge: edge2,
                config: config2,
                w: w2,
            });
            log.push(format!("{kind} (a second box as {DEVICE})"));
        }
        // An operator changes the cloud database's zone: new sessions (the
        // agent's next connection) get it; nothing may move.
        if rng.chance(15) {
            let zone = *rng.pick(&[
                "Asia/Shanghai",
                "America/Los_Angeles",
                "UTC",
                "Asia/Kolkata",
            ]);
            let mut c = postgres::Client::connect(&direct, postgres::NoTls).unwrap();
            c.batch_execute(&format!("ALTER DATABASE {db} SET timezone = '{zone}'"))
                .unwrap();
            log.push(format!("TimeZone {zone}"));
        }
        for _ in 0..rng.range(1, 3) {
            if let Some(label) = work(&mut rng, &edge, &mut w, &mut model) {
                log.push(label);
            }
        }
        if let Some(b) = second.as_mut() {
            second_box_work(&mut rng, b, &mut model);
        }
        if let Some(fs) = &fs {
            if full_at == Some(round) {
                // The budget job ran while there was room (its reserve is made).
                budget_job(&edge, &mut log, &mut report);
                let bytes = fs.fill();
                ballast = Some(fs.dir.join("ballast"));
                log.push(format!("DiskFull ({bytes} bytes of ballast)"));
                if let Some(label) = work(&mut rng, &edge, &mut w, &mut model) {
                    log.push(label);
                }
            } else if ballast.is_some() && rng.chance(40) {
                std::fs::remove_file(ballast.take().unwrap()).unwrap();
                log.push("disk freed".into());
            } else {
                // The budget job's schedule (every 10 minutes in `sluice run`).
                budget_job(&edge, &mut log, &mut report);
            }
        }
        // The cloud's changes to the published table, the box's own
        // columns of it, and now and then the box offline past the horizon.
        let mut snapshot_due = round == 0;
        if down && round == 0 {
            log.push(writer.initial(&mut drng));
        }
        if down && drng.chance(80) {
            log.push(writer.work(&mut drng));
        }
        if down && drng.chance(60) {
            match writer.edge_work(&mut drng, &edge) {
                Ok(l) => log.push(l),
                Err(e) => log.push(format!("edge statuses refused: {e}")),
            }
        }
        if down && round > 0 && drng.chance(25) {
            log.push(writer.past_horizon());
            snapshot_due = true;
        }
        // The agent killed in the middle of the snapshot (inside its edge
        // transaction), after page N.
        let mid_snapshot = (down && snapshot_due && drng.chance(50))
            .then(|| format!("after-snapshot-page:{}", drng.range(1, 2)));
        let fault = FAULTS[rng.below(FAULTS.len())];
        let delay = Duration::from_millis(rng.range(0, 800));
        let started = Instant::now();
        let round_start_ms = now_ms();
        let agent_log = dir.path().join("agent.log");
        let log_from = std::fs::metadata(&agent_log).map_or(0, |m| m.len());
        let mut child = spawn_sync(&config, &agent_log, mid_snapshot.as_deref());
        let mut child2 = second
            .as_ref()
            .map(|b| spawn_sync(&b.config, &dir.path().join("agent-box2.log"), None));
        // Edge work while the agent syncs: rows inserted and updated with a
        // batch in flight. (Not while the agent waits at a failpoint inside
        // its edge transaction: the write would wait for ever.)
        let concurrent = rng.below(2) == 0 && mid_snapshot.is_none();
        if concurrent {
            if let Some(label) = work(&mut rng, &edge, &mut w, &mut model) {
                log.push(format!("{label} (while syncing)"));
            }
        }
        std::thread::sleep(delay.saturating_sub(started.elapsed()));
        if let Some(fp) = &mid_snapshot {
            let deadline = Instant::now() + Duration::from_secs(120);
            let reached = failpoint_reached(&mut child, &agent_log, log_from, fp, deadline);
            if reached {
                unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
                writer.tally.killed_mid_snapshot += 1;
            }
            log.push(format!(
                "Kill in the middle of the snapshot ({fp}): {}",
                if reached {
                    "killed there"
                } else {
                    "not reached"
                }
            ));
        }
        match fault {
            _ if mid_snapshot.is_some() => {}
            Fault::None => {}
            Fault::Kill => unsafe {
                libc::kill(child.id() as i32, libc::SIGKILL);
                if let Some(c) = &child2 {
                    libc::kill(c.id() as i32, libc::SIGKILL);
                }
            },
            Fault::Cut => proxy.cut_all(),
            Fault::Stall => {
                proxy.stall(true);
                std::thread::sleep(Duration::from_millis(rng.range(200, 1500)));
                proxy.stall(false);
            }
            Fault::DropMidBatch => proxy.drop_after_client_bytes(rng.range(100, 20_000)),
            Fault::Refuse => {
                proxy.refuse(true);
                proxy.cut_all();
                std::thread::sleep(Duration::from_millis(rng.range(200, 1000)));
                proxy.refuse(false);
            }
            Fault::Restart => server.restart(),
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut status = wait_for(&mut child, deadline);
        if let Some(c) = child2.as_mut() {
            status += &format!(", second box {}", wait_for(c, deadline));
        }
        proxy.heal();
        log.push(format!(
            "{fault:?} after {delay:?}{}: {status}",
            if concurrent { " (edge writing)" } else { "" }
        ));
        if let Some(l) = writer.finish_held() {
            log.push(l);
        }
        if down {
            writer.observe(&edge, &mut report);
        }
        if w.clock_ahead {
            // The agent recorded its acknowledgements by the clock that was ahead.
            edge.execute(
                "UPDATE sluice_acks SET acked_at = acked_at + ?1 WHERE acked_at >= ?2",
                [TWO_YEARS_MS, round_start_ms],
            )
            .unwrap();
            w.clock_ahead = false;
            log.push("acks of this round recorded two years ahead".into());
        }
    }
    // The final clean sync: everything must go through (at a full disk too).
    proxy.heal();
    settle("box 1", &config, &edge, &mut report);
    model.observe(&edge, &TABLES);
    if let Some(b) = &second {
        settle("box 2", &b.config, &b.edge, &mut report);
        model.observe(&b.edge, &TABLES[..1]);
    }
    let mut c = postgres::Client::connect(&direct, postgres::NoTls).unwrap();
    let tally = compare(
        &model,
        &cloud_rows(&mut c),
        &unsynced_drops(&edge),
        &mut report,
    );
    verify("box 1", &config, &TABLES, &mut report);
    if let Some(b) = &second {
        // Only the rows kept apart by stream: the mutable tables' keys are
        // shared by one device id, so there the other box's rows are extra.
        verify("box 2", &b.config, &TABLES[..1], &mut report);
        let own: Vec<i64> = streams(&b.edge)
            .difference(&streams(&edge))
            .copied()
            .collect();
        if own.is_empty() || streams(&edge).contains(&current_stream(&b.edge)) {
            // A clone begins an epoch of its own: at its first start when its
            // database recorded the first box's machine, or when the cloud
            // finds it, if the copy was made before the agent ever ran on it.
            report.push(format!(
                "box 2 ({}) sends under a stream of the first box's",
                b.kind
            ));
        }
        let sent: i64 = c
            .query_one(
                "SELECT count(*) FROM sluice.batches WHERE device_id = $1 AND stream_id = ANY($2)",
                &[&DEVICE, &own],
            )
            .unwrap()
            .get(0);
        if sent > 0 {
            // On the original at once; on a copy that left the original's
            // stream only once the original sent a minute after it (docs/agent.md).
            warns_of_two_databases("box 1", &config, &mut report);
            if b.kind == "NewDatabase" {
                warns_of_two_databases("box 2", &b.config, &mut report);
            }
        }
    }
    // The operator frees the disk; cleanup and the budget must then free
    // every acknowledged row. (After a failure the edge is kept as it is,
    // for the post-mortem.)
    if let Some(b) = ballast.take() {
        std::fs::remove_file(b).unwrap();
        log.push("disk freed".into());
    }
    // The down direction: once no session the killed agents left is in the
    // middle of a transaction (it would hold the pulls back), a final clean
    // pull of each box; then each edge holds exactly its scope of the cloud.
    let boxes = std::iter::once(("box 1", &config, &edge))
        .chain(second.as_ref().map(|b| ("box 2", &b.config, &b.edge)));
    for (name, cfg, e) in boxes.filter(|_| down) {
        quiesce(&mut c);
        settle(name, cfg, e, &mut report);
        let n = writer.compare(name, e, &mut c, DEVICE, name == "box 1", &mut report);
        log.push(format!("{name}: {n} configurations in its scope"));
    }
    let mut tally = tally;
    tally.down = writer.tally;
    if report.is_empty() {
        frees_everything(&mut rng, &edge, &mut log, &mut report);
    }
    drop(c);
    let cuts = proxy.cuts();
    drop(proxy);
    log.push(format!(
        "{} rows at the edge over the trial, {} connections cut by the proxy{}{}",
        model.versions.len(),
        cuts,
        if tally.sent_by_clone > 0 {
            format!(
                ", {} rows of the clone's copy sent by both boxes",
                tally.sent_by_clone
            )
        } else {
            String::new()
        },
        if tally.dropped > 0 {
            format!(
                ", {} unsent rows dropped by the budget (counted)",
                tally.dropped
            )
        } else {
            String::new()
        }
    ));
    if report.is_empty() {
        if let Ok(mut admin) = postgres::Client::connect(&server.url, postgres::NoTls) {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
        }
    } else {
        // Keep the edge database, the agent's logs and the cloud's ledger for a post-mortem.
        if let Ok(mut c) = postgres::Client::connect(&direct, postgres::NoTls) {
            let mut text = String::new();
            for m in c
                .simple_query("SELECT * FROM sluice.batches ORDER BY 1, 2, 3, 4")
                .unwrap_or_default()
            {
                if let postgres::SimpleQueryMessage::Row(r) = m {
                    let cols: Vec<&str> =
                        (0..r.len()).map(|i| r.get(i).unwrap_or("NULL")).collect();
                    text += &(cols.join(" | ") + "\n");
                }
            }
            std::fs::write(dir.path().join("cloud-ledger.txt"), text).unwrap();
            let mut text = String::new();
            for q in [
                "SELECT * FROM sluice.streams ORDER BY 1, 2",
                "SELECT * FROM sluice.tombstones",
                "SELECT id, sluice_device, sluice_version, captured_at, description FROM key_frames ORDER BY 1",
                "SELECT location_id, camera_id, id, name, sluice_version FROM cameras ORDER BY 1, 2",
                "SELECT location_id, session_id, id, ended_at, sluice_version FROM sessions ORDER BY 1, 2",
            ] {
                text += &format!("{q}\n");
                for m in c.simple_query(q).unwrap_or_default() {
                    if let postgres::SimpleQueryMessage::Row(r) = m {
                        let cols: Vec<&str> =
                            (0..r.len()).map(|i| r.get(i).unwrap_or("NULL")).collect();
                        text += &(cols.join(" | ") + "\n");
                    }
                }
            }
            std::fs::write(dir.path().join("cloud-state.txt"), text).unwrap();
        }
        if let Some(fs) = &fs {
            // The small filesystem goes with the trial: keep a copy.
            let _ = std::process::Command::new("cp")
                .arg("-a")
                .arg(&fs.dir)
                .arg(dir.path().join("fs-kept"))
                .status();
        }
        let kept = dir.keep();
        log.push(format!(
            "edge database and agent logs kept in {}, cloud database {db} kept",
            kept.display()
        ));
    }
    (tally, report, log)
}

#[test]
fn every_row_survives_random_faults_exactly_once_at_its_latest_version() {
    let trials: u64 = env_number("SLUICE_TRIALS", 20);
    let seed0: u64 = std::env::var("SLUICE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                % 1_000_000
        });
    // A durable server (fsync and synchronous_commit on): with
    // synchronous_commit off, a crash of the server (a backend killed, the
    // extension reinstalled under it) loses commits it already acknowledged,
    // and the agent rightly acknowledges those batches at the edge: a loss
    // the product cannot see. The trials test sluice, not that setting.
    std::env::set_var("SLUICE_PG_DURABLE", "1");
    // A private copy of sluice0.so: a rebuild rewrites target/release/sluice0.so
    // in place (cp -f), which crashes a process that has it loaded.
    let so_dir = tempfile::tempdir().unwrap();
    let so = so_dir.path().join("sluice0.so");
    std::fs::copy(sqlite_extension(), &so).unwrap();
    std::env::set_var("SLUICE_SQLITE_EXT", &so);
    let server = OwnServer::start("faults");
    // SLUICE_KEEP_FAILED=1: the server of a failed run is left running, for
    // the post-mortem of the cloud databases kept (scripts/pg.sh stop NAME).
    let keep_failed = std::env::var("SLUICE_KEEP_FAILED").is_ok_and(|v| v == "1");
    let mut total = Tally::default();
    let mut failed = Vec::new();
    for i in 0..trials {
        let seed = seed0 + i;
        let (t, report, log) = run_trial(&server, i, seed);
        total.lost += t.lost;
        total.duplicated += t.duplicated;
        total.reverted += t.reverted;
        total.different += t.different;
        total.sent_by_clone += t.sent_by_clone;
        total.dropped += t.dropped;
        total.down.add(&t.down);
        let ok = report.is_empty();
        println!(
            "trial {i} seed {seed}: {}  [{}]",
            if ok { "ok" } else { "FAILED" },
            log.join("; ")
        );
        if !ok {
            for r in report.iter().take(20) {
                println!("    {r}");
            }
            failed.push(seed);
        }
    }
    println!(
        "{trials} trials, {} lost, {} duplicated, {} reverted, {} otherwise different ({} rows of a clone's copy sent by both boxes, {} unsent rows dropped by the budget at a full disk and counted, as documented); \
         down: {} lost, {} extra, {} reverted, {} otherwise different at the edge, {} edge-owned values missing in the cloud, \
         {} rows the cloud deleted inserted again by an edge status ({} brought back by a restored or copied database after the purge dropped the delete, as documented; {} snapshots killed in the middle, {} rounds offline past the horizon); failed seeds: {failed:?}",
        total.lost, total.duplicated, total.reverted, total.different, total.sent_by_clone, total.dropped,
        total.down.lost, total.down.extra, total.down.reverted, total.down.different, total.down.status_lost,
        total.down.reinserted, total.down.revived, total.down.killed_mid_snapshot, total.down.past_horizon
    );
    if !failed.is_empty() && keep_failed {
        println!(
            "the server is left running: {} (scripts/pg.sh stop {})",
            server.url, server.name
        );
        std::mem::forget(server);
    }
    assert!(
        failed.is_empty(),
        "trials failed; reproduce one with SLUICE_SEED=<seed> SLUICE_TRIALS=1: seeds {failed:?}"
    );
}

/// `quiesce` (the restore's snapshot of the cloud) waits for the work a
/// client left behind: a backend whose client is gone finishes its
/// statement and commits, as the ingest of an agent killed mid-batch does
/// (fault trial seed 20262040). Without the wait the row is not there yet.
#[test]
fn the_snapshot_of_the_cloud_waits_for_a_gone_clients_commit() {
    let db = empty_cloud_db("quiesce");
    let port: u16 = db
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut c = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
    c.batch_execute("CREATE TABLE landed (x int)").unwrap();
    let proxy = FaultProxy::start(port);
    let via_proxy = {
        let (head, tail) = db.url.split_once("://").unwrap();
        let (user, rest) = tail.split_once('@').unwrap();
        let (_, name) = rest.split_once('/').unwrap();
        format!("{head}://{user}@127.0.0.1:{}/{name}", proxy.port)
    };
    let writer = std::thread::spawn(move || {
        let mut w = postgres::Client::connect(&via_proxy, postgres::NoTls).unwrap();
        // The client is cut off during the statement: an error here.
        let _ = w.batch_execute("INSERT INTO landed SELECT 1 FROM pg_sleep(2)");
    });
    // Once the statement runs, its client goes.
    loop {
        let running: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_stat_activity \
                  WHERE datname = pg_catalog.current_database() AND query LIKE 'INSERT INTO landed%'",
                &[],
            )
            .unwrap()
            .get(0);
        if running > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    proxy.cut_all();
    writer.join().unwrap();
    quiesce(&mut c);
    let landed: i64 = c
        .query_one("SELECT count(*) FROM landed", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        landed, 1,
        "the snapshot was taken before the gone client's commit"
    );
}
