//! Long outage (issue 7): days of the field's workload with the cloud
//! unreachable and a storage budget, then the catch-up.
//!
//! A time-compressed simulation in a real file database with the real
//! `sluice0.so`, the default schema (`sql/edge_schema.sql`) and its 5-minute
//! rollup of `metrics` into `metrics_5m`. Synthetic timestamps cover the
//! outage; every simulated hour the pipeline writes that hour (in 5-minute
//! transactions) and then the agent's jobs run as the daemon would: the real
//! `sluice rollup`, `sluice sync --mode hourly` against a cloud that refuses
//! connections, `sluice cleanup`, and the storage budget
//! (`sluice_enforce_budget` inside `BEGIN IMMEDIATE`, like the agent's
//! budget job, with `now` set to the simulated clock). After every hour:
//!
//! - what the budget measures (data pages + the WAL file) is within it, and
//!   so is the database on disk (main file + WAL) but for what only the
//!   next checkpoint gives back (the main file's shrink, and the WAL the
//!   budget job's own commit added);
//! - every aggregate is there and pending (none was ever dropped);
//! - per table, the rows recorded in `sluice_drops` are exactly the rows
//!   inserted minus the rows present;
//! - drops go oldest first, and the other tables lose rows only when no
//!   raw row that is rolled up and past the late-data horizon is left.
//!
//! Then the cloud comes up (`sluice migrate` on an empty database), `sluice
//! sync --mode full` catches up (timed), and the cloud must hold every
//! surviving row and every aggregate exactly once (`sluice verify` per
//! table, and counts).
//!
//! The workload per camera and day (docs/BENCHMARKS.md, "local storage, one
//! camera-day"): a metrics sample every 3 s, 30,000 division and 15,000 table
//! state changes, a key frame a minute (4 KB image, 1.5 KB embedding), a
//! health row a minute, a session a day. `cargo test` runs 7 days at a tenth
//! of these rates under an 8 MB budget; `scripts/bench-outage.sh` runs the
//! real rates under 50 MB and prints the figures. Environment (all
//! optional): `SLUICE_OUTAGE_DAYS` (7), `SLUICE_OUTAGE_SLOWDOWN` (rates
//! divided by this, 10), `SLUICE_OUTAGE_BUDGET` (bytes, 8,000,000),
//! `SLUICE_OUTAGE_CAMERAS` (1), `SLUICE_OUTAGE_BASELINE` (1: also run the
//! same days with no budget, and with the budget's `rolled_up_only`, and
//! print their sizes beside).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::{params, Connection};
use serde_json::json;
use sluice_tests::*;

const DEVICE: &str = "box-outage";
const LOCATION: &str = "store-042";
/// 2026-11-01T00:00:00Z: the outage starts here.
const T0: i64 = 1_793_491_200;
const HOUR: i64 = 3600;
/// The budget's late-data horizon (its default).
const HORIZON: i64 = 3600;
const WINDOW: i64 = 300;
/// Tables the pipeline appends to, and their time columns.
const RAW: [(&str, &str); 6] = [
    ("metrics", "recorded_at"),
    ("division_states", "recorded_at"),
    ("table_states", "recorded_at"),
    ("key_frames", "captured_at"),
    ("health_metrics", "recorded_at"),
    ("sessions", "started_at"),
];

fn env_i64(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

struct Scale {
    days: i64,
    slowdown: i64,
    budget: i64,
    cameras: i64,
    baseline: bool,
}

impl Scale {
    fn from_env() -> Scale {
        Scale {
            days: env_i64("SLUICE_OUTAGE_DAYS", 7),
            slowdown: env_i64("SLUICE_OUTAGE_SLOWDOWN", 10).max(1),
            budget: env_i64("SLUICE_OUTAGE_BUDGET", 8_000_000),
            cameras: env_i64("SLUICE_OUTAGE_CAMERAS", 1).max(1),
            baseline: env_i64("SLUICE_OUTAGE_BASELINE", 0) == 1,
        }
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// One stream of rows: an event every `every_ms` milliseconds (per camera).
fn ticks(from_ms: i64, to_ms: i64, every_ms: i64) -> impl Iterator<Item = i64> {
    let first = (from_ms + every_ms - 1).div_euclid(every_ms);
    (first..)
        .map(move |k| k * every_ms)
        .take_while(move |t| *t < to_ms)
}

/// The rows the pipeline writes for `[from, to)` (unix seconds), per table.
fn workload(s: &Scale, from: i64, to: i64) -> BTreeMap<&'static str, Vec<serde_json::Value>> {
    let (a, b) = (from * 1000, to * 1000);
    let k = s.slowdown;
    let mut out: BTreeMap<&'static str, Vec<serde_json::Value>> = BTreeMap::new();
    for c in 0..s.cameras {
        let cam = format!("cam-{c:02}");
        let session = |t: i64| format!("{LOCATION}-{cam}-{}", (t / 1000 - T0) / 86_400);
        let r = |t: i64, salt: u64| splitmix((t as u64) ^ (c as u64) << 56 ^ salt);
        for t in ticks(a, b, 86_400_000) {
            out.entry("sessions").or_default().push(json!({
                "session_id": session(t), "location_id": LOCATION, "camera_id": cam,
                "started_at": iso_ms(t), "ended_at": null}));
        }
        for t in ticks(a, b, 3_000 * k) {
            let x = r(t, 1);
            // Log-normal-ish processing times.
            let z = (0..4)
                .map(|i| ((x >> (i * 12)) & 0xfff) as f64 / 4096.0)
                .sum::<f64>()
                - 2.0;
            out.entry("metrics").or_default().push(json!({
                "camera_id": cam, "location_id": LOCATION,
                "recorded_at": iso_ms(t + (x % 1000) as i64),
                "people_count": (x >> 50) % 14,
                "processing_ms": ((3.3 + 0.35 * z).exp() * 100.0).round() / 100.0}));
        }
        for t in ticks(a, b, 2_880 * k) {
            let x = r(t, 2);
            let state = ["RED", "YELLOW", "GREEN"][(x % 3) as usize];
            out.entry("division_states").or_default().push(json!({
                "session_id": session(t), "camera_id": cam, "location_id": LOCATION,
                "frame_number": t / 40, "video_ts": (t % 86_400_000) as f64 / 1000.0,
                "recorded_at": iso_ms(t), "state": state,
                "walking_waiters": (x >> 8) % 4, "service_waiters": (x >> 16) % 3,
                "total_staff": 3 + (x >> 24) % 4,
                "screenshot_path": format!("/var/lib/pipeline/shots/{cam}/{}.jpg", t / 40)}));
        }
        for t in ticks(a, b, 5_760 * k) {
            let x = r(t, 3);
            let state = ["IDLE", "BUSY", "CLEANING"][(x % 3) as usize];
            out.entry("table_states").or_default().push(json!({
                "session_id": session(t), "camera_id": cam, "location_id": LOCATION,
                "table_id": format!("T{}", 1 + (x >> 8) % 8), "recorded_at": iso_ms(t),
                "state": state, "customers": if state == "BUSY" { (x >> 16) % 6 } else { 0 },
                "waiters": (x >> 24) % 2}));
        }
        for t in ticks(a, b, 60_000 * k) {
            let x = r(t, 4);
            out.entry("key_frames").or_default().push(json!({
                "camera_id": cam, "location_id": LOCATION, "captured_at": iso_ms(t),
                "description": format!("a waiter cleaning table {} after guests left", 1 + x % 8),
                "detections": json!([{"label": "person", "score": (x % 1000) as f64 / 1000.0}]).to_string()}));
            out.entry("health_metrics").or_default().push(json!({
                "location_id": LOCATION, "recorded_at": iso_ms(t),
                "cpu_pct": 20.0 + (x % 700) as f64 / 10.0, "mem_used_mb": 900.0 + (x % 2100) as f64,
                "disk_free_mb": 20_000.0 + (x % 20_000) as f64, "temp_c": 45.0 + (x % 35) as f64}));
        }
    }
    out
}

/// The pipeline: writes `[from, to)` in 5-minute transactions; images
/// (4 KB, incompressible like a JPEG) and embeddings arrive after their
/// key frame, as in the field. Counts what it inserted per table.
fn write_hour(conn: &Connection, s: &Scale, from: i64, inserted: &mut BTreeMap<&'static str, i64>) {
    for slice in (from..from + HOUR).step_by(WINDOW as usize) {
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        for (table, rows) in workload(s, slice, slice + WINDOW) {
            for part in rows.chunks(1000) {
                let json = serde_json::Value::Array(part.to_vec()).to_string();
                let n: i64 = conn
                    .query_row("SELECT sluice_insert(?1, ?2)", params![table, json], |r| {
                        r.get(0)
                    })
                    .unwrap();
                assert_eq!(n as usize, part.len());
                *inserted.entry(table).or_default() += n;
            }
        }
        // 384 float32 (what `sluice embed` stores; the cloud checks them).
        let embedding: Vec<u8> = (0..384u32)
            .flat_map(|i| ((((slice as u32) ^ i) % 1000) as f32 / 1000.0).to_le_bytes())
            .collect();
        conn.execute(
            "UPDATE key_frames SET image = randomblob(4096), embedding = ?1 \
             WHERE id > coalesce((SELECT max(id) FROM key_frames WHERE image IS NOT NULL), 0)",
            [embedding],
        )
        .unwrap();
        conn.execute_batch("COMMIT").unwrap();
    }
}

/// The database on disk: main file plus WAL.
fn disk_bytes(path: &Path) -> (i64, i64) {
    let size = |p: PathBuf| std::fs::metadata(p).map_or(0, |m| m.len() as i64);
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    (size(path.to_path_buf()), size(wal))
}

fn count(conn: &Connection, table: &str) -> i64 {
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

fn dropped(conn: &Connection, table: &str) -> i64 {
    conn.query_row(
        "SELECT coalesce(sum(rows), 0) FROM sluice_drops WHERE tbl = ?1",
        [table],
        |r| r.get(0),
    )
    .unwrap()
}

fn mb(b: i64) -> f64 {
    b as f64 / 1e6
}

/// What one simulated day ended with.
struct Day {
    file: i64,
    wal: i64,
    peak: i64,
    /// The most the main file + WAL were over the budget after the jobs of
    /// an hour of the day (negative: under).
    over: i64,
    used: i64,
    dropped: BTreeMap<&'static str, i64>,
    aggregates: i64,
    pending: i64,
}

/// What keeps the database small during the outage.
#[derive(Clone, Copy, PartialEq)]
enum Policy {
    /// Nothing: the baseline "no budget".
    NoBudget,
    /// The budget with `rolled_up_only` (what it was before the second
    /// tier): a baseline, not checked.
    RolledUpOnly(i64),
    /// The budget, checked after every hour.
    Budget(i64),
}

/// Runs the outage; returns the per-day figures and what was inserted.
fn outage(
    s: &Scale,
    dir: &Path,
    policy: Policy,
) -> (PathBuf, Vec<Day>, BTreeMap<&'static str, i64>) {
    let edge_path = dir.join("edge.db");
    let pipeline = edge_db(&edge_path, true);
    pipeline
        .execute_batch("PRAGMA synchronous = NORMAL")
        .unwrap();
    let mut inserted: BTreeMap<&'static str, i64> = BTreeMap::new();
    inserted.insert("cameras", s.cameras);
    let cams: Vec<serde_json::Value> = (0..s.cameras)
        .map(|c| json!({"camera_id": format!("cam-{c:02}"), "location_id": LOCATION,
                        "name": format!("Camera {c}"), "stream_url": "rtsp://10.0.0.10/s", "enabled": 1}))
        .collect();
    insert_rows(&pipeline, "cameras", &cams, 100);
    // Nothing listens on port 1: every sync attempt is refused at once.
    let config = write_config_with(
        dir,
        &edge_path,
        "postgres://postgres@127.0.0.1:1/postgres",
        DEVICE,
        1000,
        "max_attempts = 1\n",
    );
    let c = config.to_str().unwrap().to_string();
    // The agent's connection for the budget job (the daemon keeps one open).
    let agent_conn = edge_db(&edge_path, false);
    let mut days = Vec::new();
    let mut peak = 0i64;
    let mut over = i64::MIN;
    for h in 0..s.days * 24 {
        let from = T0 + h * HOUR;
        let now = from + HOUR;
        write_hour(&pipeline, s, from, &mut inserted);
        let (f, w) = disk_bytes(&edge_path);
        peak = peak.max(f + w);
        let out = run_ok(&["rollup", "--config", &c]);
        assert!(out.starts_with("rollup: "), "{out}");
        if policy == Policy::NoBudget {
            if h % 24 == 23 {
                let (file, wal) = disk_bytes(&edge_path);
                days.push(Day {
                    file,
                    wal,
                    peak,
                    over: 0,
                    used: 0,
                    dropped: BTreeMap::new(),
                    aggregates: count(&pipeline, "metrics_5m"),
                    pending: 0,
                });
            }
            continue;
        }
        let (max, checked) = match policy {
            Policy::Budget(m) => (m, true),
            Policy::RolledUpOnly(m) => (m, false),
            Policy::NoBudget => (i64::MAX, false),
        };
        if checked {
            let sync = agent(&["sync", "--config", &c, "--mode", "hourly", "--quiet"])
                .output()
                .unwrap();
            assert!(!sync.status.success(), "the cloud is down: the sync fails");
            let out = run_ok(&["cleanup", "--config", &c]);
            assert_eq!(out.trim(), "cleanup: 0 rows", "nothing is acknowledged");
        }
        let drops_before: i64 = pipeline
            .query_row("SELECT count(*) FROM sluice_drops", [], |r| r.get(0))
            .unwrap();
        let wal_before = disk_bytes(&edge_path).1;
        agent_conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        agent_conn
            .query_row(
                "SELECT sluice_enforce_budget(?1, ?2)",
                params![
                    max,
                    json!({"now": now, "rolled_up_only": !checked}).to_string()
                ],
                |r| r.get::<_, i64>(0),
            )
            .unwrap();
        agent_conn.execute_batch("COMMIT").unwrap();
        if checked {
            check_hour(
                &pipeline,
                s,
                &edge_path,
                max,
                h,
                now,
                wal_before,
                drops_before,
                &inserted,
            );
        }
        let (file, wal) = disk_bytes(&edge_path);
        over = over.max(file + wal - max);
        if h % 24 == 23 {
            let (file, wal) = disk_bytes(&edge_path);
            let used: i64 = pipeline
                .query_row("SELECT used_bytes FROM sluice_budget", [], |r| r.get(0))
                .unwrap();
            days.push(Day {
                file,
                wal,
                peak,
                over,
                used,
                dropped: RAW
                    .iter()
                    .map(|(t, _)| (*t, dropped(&pipeline, t)))
                    .collect(),
                aggregates: count(&pipeline, "metrics_5m"),
                pending: pending(&pipeline, "metrics_5m"),
            });
            peak = 0;
            over = i64::MIN;
        }
    }
    (edge_path, days, inserted)
}

/// The invariants after one simulated hour's jobs.
#[allow(clippy::too_many_arguments)]
fn check_hour(
    conn: &Connection,
    s: &Scale,
    path: &Path,
    max: i64,
    h: i64,
    now: i64,
    wal_before: i64,
    drops_before: i64,
    inserted: &BTreeMap<&'static str, i64>,
) {
    let at = format!("after hour {h} ({})", iso_ms(now * 1000));
    // What the budget measures (data pages + the WAL file) is within it.
    let (within, measured): (i64, i64) = conn
        .query_row(
            "SELECT within_budget, used_bytes FROM sluice_budget",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(
        within == 1 && measured <= max,
        "{at}: the budget measured {measured} bytes, over {max}"
    );
    // On disk, the main file and the WAL are within it too, but for what
    // no drop can give back before the next checkpoint: the main file's
    // bytes beyond its pages (it shrinks when a checkpoint copies the
    // shrink back) and what the budget job's own commit added to the WAL.
    let (file, wal) = disk_bytes(path);
    let pages: i64 = conn
        .query_row(
            "SELECT (SELECT page_count FROM pragma_page_count) * (SELECT page_size FROM pragma_page_size)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let pending_shrink = (file - pages).max(0);
    let own_wal = (wal - wal_before).max(0);
    assert!(
        file + wal <= max + pending_shrink + own_wal,
        "{at}: {file} + {wal} (WAL) bytes on disk, over the budget of {max} by more than \
         the pending shrink ({pending_shrink}) and the budget commit's WAL growth ({own_wal})"
    );
    // Every aggregate is there and waits for the cloud; none was dropped.
    let windows = (h + 1) * (HOUR / WINDOW) * s.cameras;
    assert_eq!(count(conn, "metrics_5m"), windows, "{at}: aggregates");
    assert_eq!(
        pending(conn, "metrics_5m"),
        windows,
        "{at}: pending aggregates"
    );
    assert_eq!(dropped(conn, "metrics_5m"), 0, "{at}");
    // Every raw row that is gone is in the drop records.
    for (t, n) in inserted {
        assert_eq!(
            *n - count(conn, t),
            dropped(conn, t),
            "{at}: rows of {t} missing vs recorded as dropped"
        );
        assert_eq!(pending(conn, t), count(conn, t), "{at}: {t} all pending");
    }
    // Oldest first: no row left is older than a row dropped.
    for (t, time) in RAW {
        let (oldest_left, newest_dropped): (Option<i64>, Option<i64>) = conn
            .query_row(
                &format!(
                    "SELECT (SELECT min(unixepoch({time})) FROM {t}), \
                     (SELECT max(unixepoch(to_time)) FROM sluice_drops WHERE tbl = ?1)"
                ),
                [t],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        if let (Some(l), Some(d)) = (oldest_left, newest_dropped) {
            assert!(
                l >= d,
                "{at}: {t} keeps a row of {l}, older than a dropped row of {d}"
            );
        }
    }
    // Rolled-up raw rows go first: the other tables lost rows in this run
    // only if no raw metric older than the horizon is left (the newest row
    // stays as the rowid high-water mark).
    let others: i64 = conn
        .query_row(
            "SELECT count(*) FROM sluice_drops WHERE id > ?1 AND tbl <> 'metrics'",
            [drops_before],
            |r| r.get(0),
        )
        .unwrap();
    if others > 0 {
        let rolled_up_left: i64 = conn
            .query_row(
                "SELECT count(*) FROM metrics WHERE id < (SELECT max(id) FROM metrics) \
                 AND unixepoch(sluice_bucket(recorded_at, ?1)) < ?2",
                params![WINDOW, now - HORIZON - WINDOW + 1],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            rolled_up_left, 0,
            "{at}: other tables lost rows while rolled-up metrics were left"
        );
    }
}

/// `(id, crc32c of the image, description)` of every key frame at the edge.
fn key_frames_edge(conn: &Connection) -> Vec<(i64, u32, String)> {
    conn.prepare("SELECT id, image, description FROM key_frames ORDER BY id")
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                crc32c::crc32c(&r.get::<_, Vec<u8>>(1)?),
                r.get(2)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The same of this device's key frames in the cloud.
fn key_frames_cloud(client: &mut postgres::Client) -> Vec<(i64, u32, String)> {
    client
        .query(
            "SELECT id, image, description FROM key_frames WHERE sluice_device = $1 ORDER BY id",
            &[&DEVICE],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), crc32c::crc32c(r.get::<_, &[u8]>(1)), r.get(2)))
        .collect()
}

#[test]
fn a_long_outage_stays_within_budget_keeps_aggregates_counts_drops_and_catches_up() {
    let s = Scale::from_env();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (edge_path, days, inserted) = outage(&s, dir.path(), Policy::Budget(s.budget));
    let simulated = started.elapsed().as_secs_f64();
    let edge = edge_db(&edge_path, false);

    // The cloud comes back: an empty database, the schema by `sluice migrate`.
    let cloud = empty_cloud_db("outage");
    let config = write_config(dir.path(), &edge_path, &cloud.url, DEVICE, 1000);
    let c = config.to_str().unwrap();
    let m = repo_root().join("migrations");
    run_ok(&["migrate", "--config", c, "--dir", m.to_str().unwrap()]);
    let tracked: Vec<String> = edge
        .prepare("SELECT tbl FROM sluice_tables ORDER BY tbl")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let backlog: i64 = tracked.iter().map(|t| pending(&edge, t)).sum();
    let catch_up = Instant::now();
    let out = run_ok(&["sync", "--config", c, "--mode", "full", "--quiet"]);
    let secs = catch_up.elapsed().as_secs_f64();
    let (batches, rows, bytes): (i64, i64, i64) = edge
        .query_row(
            "SELECT batches, rows, bytes FROM sluice_sync_log WHERE kind = 'full_sync' \
             ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(rows, backlog, "{out}");

    // The cloud holds every surviving row and every aggregate, once.
    let mut client = cloud.client();
    for t in &tracked {
        assert_eq!(pending(&edge, t), 0, "{t} is caught up");
        let at_edge = count(&edge, t);
        let in_cloud: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM {t} WHERE sluice_device = $1"),
                &[&DEVICE],
            )
            .unwrap()
            .get(0);
        assert_eq!(in_cloud, at_edge, "{t}: cloud rows vs edge rows");
        let want = inserted
            .get(t.as_str())
            .copied()
            .map(|n| n - dropped(&edge, t));
        if let Some(w) = want {
            assert_eq!(in_cloud, w, "{t}: inserted minus dropped");
        }
        if t == "key_frames" {
            // `sluice verify` renders a pgvector column as text and the
            // edge's float32 blob as bytes, so it reports every embedded
            // frame as different: compare ids, images and descriptions here.
            assert_eq!(
                key_frames_edge(&edge),
                key_frames_cloud(&mut client),
                "key_frames content"
            );
            continue;
        }
        let out = agent(&["verify", "--config", c, "--table", t])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sluice verify {t}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let windows = s.days * 24 * (HOUR / WINDOW) * s.cameras;
    let (aggs, distinct): (i64, i64) = {
        let row = client
            .query_one(
                "SELECT count(*), count(DISTINCT (camera_id, window_start)) FROM metrics_5m",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((aggs, distinct), (windows, windows), "every aggregate once");
    let samples: i64 = client
        .query_one("SELECT sum(samples)::bigint FROM metrics_5m", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        samples, inserted["metrics"],
        "the aggregates cover every raw sample, dropped or not"
    );

    // The figures (printed; `scripts/bench-outage.sh` shows them).
    println!(
        "outage: {} days, {} camera(s), rates / {}, budget {:.1} MB, simulated in {simulated:.1} s",
        s.days,
        s.cameras,
        s.slowdown,
        mb(s.budget)
    );
    let baseline = |policy: Policy| {
        s.baseline.then(|| {
            let d = tempfile::tempdir().unwrap();
            outage(&s, d.path(), policy).1
        })
    };
    let no_budget = baseline(Policy::NoBudget);
    let rolled_up_only = baseline(Policy::RolledUpOnly(s.budget));
    println!(
        "outage: | day | on disk at the day's end (file + WAL) | most over the budget on disk after the jobs | peak before the budget job | no budget (same run) | budget with rolled_up_only (same run) | budget's measure | raw rows dropped (cumulative) | aggregates kept (pending) |"
    );
    println!("outage: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |");
    for (i, d) in days.iter().enumerate() {
        let drops: Vec<String> = d
            .dropped
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(t, n)| format!("{t} {n}"))
            .collect();
        let base = |b: &Option<Vec<Day>>| {
            b.as_ref()
                .and_then(|b| b.get(i))
                .map_or("-".to_string(), |b| format!("{:.1} MB", mb(b.file + b.wal)))
        };
        let (base, ru) = (base(&no_budget), base(&rolled_up_only));
        let over = if d.over > 0 {
            format!("{:.1} KB", d.over as f64 / 1e3)
        } else {
            "never over".to_string()
        };
        println!(
            "outage: | {} | {:.2} MB ({:.2} + {:.2}) | {over} | {:.2} MB | {base} | {ru} | {:.2} MB | {} | {} ({}) |",
            i + 1,
            mb(d.file + d.wal),
            mb(d.file),
            mb(d.wal),
            mb(d.peak),
            mb(d.used),
            if drops.is_empty() { "none".into() } else { drops.join(", ") },
            d.aggregates,
            d.pending
        );
    }
    let inserted_total: i64 = inserted.values().sum();
    let dropped_total: i64 = RAW.iter().map(|(t, _)| dropped(&edge, t)).sum();
    println!(
        "outage: rows inserted {inserted_total}, raw rows dropped {dropped_total} (all recorded in sluice_drops), aggregates {windows} (all kept)"
    );
    println!(
        "outage: catch-up: sluice sync --mode full sent {rows} rows in {batches} batches, {:.1} MB, in {secs:.1} s ({:.0} rows/s, {:.2} MB/s); at the field's 50 KB/s uplink: {:.1} h",
        mb(bytes),
        rows as f64 / secs,
        mb(bytes) / secs,
        bytes as f64 / 50_000.0 / 3600.0
    );
}
