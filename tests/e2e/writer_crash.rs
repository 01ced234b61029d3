//! Writer crash: a separate process (Debian's `/usr/bin/python3`, its
//! `sqlite3` module loading the real `sluice0.so`) runs a loop of big calls of
//! `sluice_insert`, `sluice_rollup_run`, `sluice_ack` or `sluice_cleanup` on a
//! file database with the default schema, and is killed with SIGKILL at a
//! random moment (even kills) or aimed at a random call (odd kills: a random
//! delay of up to about one call's duration after its `begin`). Then the test opens the database (recovery from the WAL or
//! the hot journal happens here), and checks:
//!
//! - `PRAGMA integrity_check` says `ok`;
//! - the call that was running when the kill landed left all of its effect or
//!   none (see each `check_*` function for what that means per call);
//! - the database goes on working: the next call gives what it must.
//!
//! Every call carries a recognisable payload (its number in a column, or a
//! watermark that is a multiple of the call's size), so the checker can tell
//! a whole call from a part of one. The victim writes `begin N` before call N
//! and `end N` after it returns to its stdout (a pipe): a kill whose last
//! marker is `begin` landed inside a call (or in the microseconds between the
//! marker and the call), the others between calls. Odd calls run inside
//! `BEGIN IMMEDIATE ... COMMIT`, even ones in autocommit (the function's own
//! savepoint is then the transaction).
//!
//! Each kill uses a fresh copy of a template database. Most rounds run in WAL
//! mode (the default schema's), every fifth (round 1, 6, ...) in
//! `journal_mode=DELETE`.
//!
//! `SLUICE_CRASH_KILLS` kills per call kind (default 10); `SLUICE_SEED` fixes
//! the seed (default: the clock; printed). `scripts/crash.sh N` runs N per
//! kind.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use sluice_tests::*;

const PYTHON: &str = "/usr/bin/python3";
/// Rows per `sluice_insert` call.
const INSERT_ROWS: i64 = 20_000;
/// Raw `metrics` rows inserted before each `sluice_rollup_run`.
const ROLLUP_ROWS: i64 = 20_000;
/// `max_rows` of the batches acknowledged by the `sluice_ack` victim.
const ACK_ROWS: i64 = 2_000;
/// Rows per batch acknowledged, then cleaned up, by the `sluice_cleanup` victim.
const CLEANUP_ROWS: i64 = 50_000;
/// Rows of `division_states` in the ack and cleanup templates.
const TEMPLATE_ROWS: i64 = 300_000;

/// The victim. Arguments: database, extension, kind, journal mode, rows per
/// call. Writes `ready` when set up, then `begin N` / `end N RESULT` around
/// each call under test, and loops until killed.
const VICTIM: &str = r#"
import json, os, random, sqlite3, sys, time

db, ext, kind, journal, size = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])

def mark(s):
    os.write(1, (s + "\n").encode())

c = sqlite3.connect(db, isolation_level=None)
c.enable_load_extension(True)
c.load_extension(ext)
c.execute("PRAGMA busy_timeout = 5000")
mode = c.execute("PRAGMA journal_mode = " + journal).fetchone()[0]
if mode.lower() != journal.lower():
    raise SystemExit("journal_mode is %s, wanted %s" % (mode, journal))

def call(n, sql, args=()):
    tx = n % 2 == 1
    mark("begin %d" % n)
    if tx:
        c.execute("BEGIN IMMEDIATE")
    r = c.execute(sql, args).fetchone()[0]
    if tx:
        c.execute("COMMIT")
    mark("end %d %s" % (n, r))
    return r

def idle():
    mark("done")
    while True:
        time.sleep(1)

if kind == "insert":
    states = ("RED", "YELLOW", "GREEN")
    rows = [["b@B@", "cam-%02d" % (i % 12), "store-042", i, i * 0.2,
             "2026-11-22T10:%02d:%02d.%03dZ" % (i // 60 % 60, i % 60, i % 1000),
             states[i % 3], i % 4, i % 3, 3 + i % 5] for i in range(size)]
    tmpl = json.dumps({"columns": ["session_id", "camera_id", "location_id", "frame_number",
                                   "video_ts", "recorded_at", "state", "walking_waiters",
                                   "service_waiters", "total_staff"], "rows": rows})
    mark("ready")
    n = 0
    while True:
        call(n, "SELECT sluice_insert('division_states', ?)", (tmpl.replace("@B@", str(n)),))
        n += 1
elif kind == "rollup":
    base = 1795000000
    mark("ready")
    n = 0
    while True:
        rnd = random.Random(n)
        data = []
        for i in range(size):
            g = n * size + i
            ts = base + (g // 8) * 3
            if rnd.random() < 0.05:
                ts = max(base, ts - rnd.randrange(0, 3 * 3600))
            ms = rnd.randrange(1000)
            iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + (".%03dZ" % ms)
            data.append(("cam-%02d" % (g % 8), "store-042", iso, rnd.randrange(20), rnd.random() * 100))
        c.execute("BEGIN IMMEDIATE")
        c.executemany("INSERT INTO metrics (camera_id, location_id, recorded_at, people_count, processing_ms) "
                      "VALUES (?, ?, ?, ?, ?)", data)
        c.execute("COMMIT")
        mark("raw %d" % n)
        call(n, "SELECT sluice_rollup_run()")
        n += 1
elif kind == "ack":
    mark("ready")
    n = 0
    while True:
        b = c.execute("SELECT sluice_batch('division_states', ?)", (size,)).fetchone()[0]
        if b is None:
            idle()
        call(n, "SELECT sluice_ack(?)", (b,))
        n += 1
elif kind == "cleanup":
    mark("ready")
    n = 0
    while True:
        b = c.execute("SELECT sluice_batch('division_states', ?)", (size,)).fetchone()[0]
        if b is None:
            idle()
        c.execute("SELECT sluice_ack(?)", (b,)).fetchone()
        mark("acked %d" % n)
        call(n, "SELECT sluice_cleanup('division_states', 0)")
        n += 1
else:
    raise SystemExit("unknown kind " + kind)
"#;

/// A small deterministic PRNG (splitmix64).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Insert,
    Rollup,
    Ack,
    Cleanup,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Insert => "insert",
            Kind::Rollup => "rollup",
            Kind::Ack => "ack",
            Kind::Cleanup => "cleanup",
        }
    }
    fn function(self) -> &'static str {
        match self {
            Kind::Insert => "sluice_insert",
            Kind::Rollup => "sluice_rollup_run",
            Kind::Ack => "sluice_ack",
            Kind::Cleanup => "sluice_cleanup",
        }
    }
    fn size(self) -> i64 {
        match self {
            Kind::Insert => INSERT_ROWS,
            Kind::Rollup => ROLLUP_ROWS,
            Kind::Ack => ACK_ROWS,
            Kind::Cleanup => CLEANUP_ROWS,
        }
    }
    /// For an aimed kill: the call (0..=n) and the longest delay after its
    /// `begin`, in µs: about one call's duration.
    fn aim(self) -> (u64, u64) {
        match self {
            Kind::Insert => (8, 150_000),
            Kind::Rollup => (4, 500_000),
            Kind::Ack => (120, 2_000),
            Kind::Cleanup => (4, 40_000),
        }
    }
    /// The longest delay before the kill, in ms: a few calls' worth.
    fn max_delay_ms(self) -> u64 {
        match self {
            Kind::Insert => 1500,
            Kind::Rollup => 2500,
            Kind::Ack => 1200,
            Kind::Cleanup => 1200,
        }
    }
}

/// When to kill the victim.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// This long after it is ready: anywhere.
    Delay(Duration),
    /// This long after it writes `begin N`: aimed at a call (it may have
    /// returned by then).
    AfterBegin(u64, Duration),
}

/// What the victim's markers say about the moment of the kill.
#[derive(Debug, Default)]
struct Markers {
    /// Calls under test that returned (`end N`).
    ended: i64,
    /// The last marker was `begin N`: the kill landed inside call N.
    inside: bool,
    /// The victim had finished its work (`done`).
    done: bool,
    last: String,
}

fn parse_markers(lines: &[String]) -> Markers {
    let mut m = Markers::default();
    for l in lines {
        if l.starts_with("end ") {
            m.ended += 1;
        }
        if l == "done" {
            m.done = true;
        }
        m.inside = l.starts_with("begin ");
        m.last = l.clone();
    }
    m
}

/// Runs the victim on `db`, kills it `delay` after it is ready, and returns
/// its markers.
fn run_victim(script: &Path, db: &Path, kind: Kind, journal: &str, at: KillAt) -> Markers {
    let mut child = Command::new(PYTHON)
        .arg(script)
        .arg(db)
        .arg(private_extension())
        .arg(kind.name())
        .arg(journal)
        .arg(kind.size().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {PYTHON}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(l) if l == "ready" => break,
            Ok(l) => lines.push(l),
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "the {} victim exited before it was ready ({status}): {}",
                        kind.name(),
                        err_reader.join().unwrap()
                    );
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the {} victim was not ready after 120 s: {}",
                    kind.name(),
                    err_reader.join().unwrap()
                );
            }
        }
    }
    match at {
        KillAt::Delay(d) => std::thread::sleep(d),
        KillAt::AfterBegin(n, d) => {
            let want = format!("begin {n}");
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(l) => {
                        let hit = l == want || l == "done";
                        lines.push(l);
                        if hit {
                            break;
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            std::thread::sleep(d);
        }
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let status = child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    let err = err_reader.join().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the {} victim ended by itself before the kill ({status}); its output: {lines:?}\n{err}",
        kind.name()
    );
    parse_markers(&lines)
}

/// A private copy of `sluice0.so`, made once: a rebuild replacing the shared
/// file while a victim loads it must not disturb the test.
fn private_extension() -> PathBuf {
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sluice-crash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let to = dir.join("sluice0.so");
        std::fs::copy(sqlite_extension(), &to)
            .unwrap_or_else(|e| panic!("cannot copy {}: {e}", sqlite_extension().display()));
        to
    })
    .clone()
}

fn open(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    // SAFETY: loads the extension under test.
    unsafe {
        let _guard = rusqlite::LoadExtensionGuard::new(&conn).unwrap();
        conn.load_extension(private_extension(), None::<&str>)
            .unwrap();
    }
    conn
}

fn integrity(c: &Connection) -> Result<(), String> {
    let mut stmt = c
        .prepare("PRAGMA integrity_check")
        .map_err(|e| e.to_string())?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if rows == ["ok"] {
        Ok(())
    } else {
        Err(format!("integrity_check: {rows:?}"))
    }
}

fn one<T: rusqlite::types::FromSql>(c: &Connection, sql: &str) -> Result<T, String> {
    c.query_row(sql, [], |r| r.get(0))
        .map_err(|e| format!("{sql}: {e}"))
}

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// The number of calls that took effect must be the calls that returned, plus
/// the one that was running, if any (all or nothing).
fn calls_ok(effect: i64, m: &Markers, what: &str) -> Result<(), String> {
    ensure!(
        effect == m.ended || (m.inside && effect == m.ended + 1),
        "{what}: {effect} calls took effect, but {} returned and the kill landed {} a call",
        m.ended,
        if m.inside { "inside" } else { "between" }
    );
    Ok(())
}

// ---------------------------------------------------------------- insert

/// Every batch (`session_id` = `bN`) is whole, the batches are 0..k with k the
/// calls that returned (plus the killed one, whole, or not at all), and the
/// next insert works.
fn check_insert(c: &Connection, m: &Markers) -> Result<String, String> {
    let mut stmt = c
        .prepare(
            "SELECT session_id, count(*), min(id), max(id), sum(frame_number != (id - 1) % ?1) \
             FROM division_states GROUP BY session_id ORDER BY min(id)",
        )
        .map_err(|e| e.to_string())?;
    let groups: Vec<(String, i64, i64, i64, i64)> = stmt
        .query_map([INSERT_ROWS], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    for (i, (session, n, lo, hi, bad)) in groups.iter().enumerate() {
        let i = i as i64;
        ensure!(
            *session == format!("b{i}"),
            "batch {i} is missing; found {session} in its place"
        );
        ensure!(
            *n == INSERT_ROWS && *lo == i * INSERT_ROWS + 1 && *hi == (i + 1) * INSERT_ROWS,
            "batch {session} is partial: {n} rows, ids {lo}..{hi}"
        );
        ensure!(*bad == 0, "batch {session}: {bad} rows with wrong content");
    }
    let k = groups.len() as i64;
    calls_ok(k, m, "sluice_insert")?;
    // The next call works and adds exactly its rows.
    let rows: Vec<serde_json::Value> = division_states(0, 100, 7)
        .into_iter()
        .map(|mut r| {
            r["session_id"] = "after".into();
            r
        })
        .collect();
    let n: i64 = c
        .query_row(
            "SELECT sluice_insert('division_states', ?1)",
            [serde_json::Value::Array(rows).to_string()],
            |r| r.get(0),
        )
        .map_err(|e| format!("sluice_insert after the crash: {e}"))?;
    ensure!(n == 100, "sluice_insert after the crash returned {n}");
    let total: i64 = one(c, "SELECT count(*) FROM division_states")?;
    ensure!(
        total == k * INSERT_ROWS + 100,
        "{total} rows after one more insert"
    );
    Ok(format!("{k} whole batches"))
}

// ---------------------------------------------------------------- rollup

/// One window of `metrics_5m`, by (location, camera, window_start).
#[derive(Debug, Clone, PartialEq)]
struct Window {
    samples: i64,
    people_avg: f64,
    people_max: i64,
    people_p95: f64,
    ms_avg: f64,
    ms_max: f64,
    ms_min: f64,
    ms_p95: f64,
    packed: i64,
}

type Windows = BTreeMap<(String, String, String), Window>;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn same_window(a: &Window, b: &Window) -> bool {
    a.samples == b.samples
        && a.people_max == b.people_max
        && a.packed == b.packed
        && a.ms_max == b.ms_max
        && a.ms_min == b.ms_min
        && close(a.people_avg, b.people_avg)
        && close(a.people_p95, b.people_p95)
        && close(a.ms_avg, b.ms_avg)
        && close(a.ms_p95, b.ms_p95)
}

/// `percentile_cont(p)` of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let pos = p * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// The five-minute windows of the raw metrics with `id <= upto`, computed
/// with plain SQL (`GROUP BY` and a text bucket), percentiles in Rust.
fn reference_windows(c: &Connection, upto: i64) -> Result<Windows, String> {
    const BUCKET: &str = "substr(recorded_at, 1, 14) || printf('%02d', CAST(substr(recorded_at, 15, 2) AS INTEGER) / 5 * 5) || ':00.000Z'";
    let mut out = Windows::new();
    let sql = format!(
        "SELECT location_id, camera_id, {BUCKET}, count(*), avg(people_count), max(people_count), \
         avg(processing_ms), max(processing_ms), min(processing_ms) \
         FROM metrics WHERE id <= ?1 GROUP BY 1, 2, 3"
    );
    let mut stmt = c.prepare(&sql).map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([upto], |r| {
            Ok((
                (r.get(0)?, r.get(1)?, r.get(2)?),
                Window {
                    samples: r.get(3)?,
                    people_avg: r.get(4)?,
                    people_max: r.get(5)?,
                    people_p95: 0.0,
                    ms_avg: r.get(6)?,
                    ms_max: r.get(7)?,
                    ms_min: r.get(8)?,
                    ms_p95: 0.0,
                    packed: r.get(3)?,
                },
            ))
        })
        .map_err(|e| e.to_string())?;
    for row in rows {
        let (k, w) = row.map_err(|e| e.to_string())?;
        out.insert(k, w);
    }
    let sql = format!(
        "SELECT location_id, camera_id, {BUCKET}, people_count, processing_ms FROM metrics WHERE id <= ?1"
    );
    let mut stmt = c.prepare(&sql).map_err(|e| e.to_string())?;
    let mut values: BTreeMap<(String, String, String), (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    let rows = stmt
        .query_map([upto], |r| {
            Ok((
                (r.get(0)?, r.get(1)?, r.get(2)?),
                r.get::<_, f64>(3)?,
                r.get::<_, f64>(4)?,
            ))
        })
        .map_err(|e| e.to_string())?;
    for row in rows {
        let (k, p, ms) = row.map_err(|e| e.to_string())?;
        let e = values.entry(k).or_default();
        e.0.push(p);
        e.1.push(ms);
    }
    for (k, (mut p, mut ms)) in values {
        p.sort_by(f64::total_cmp);
        ms.sort_by(f64::total_cmp);
        let w = out.get_mut(&k).unwrap();
        w.people_p95 = percentile(&p, 0.95);
        w.ms_p95 = percentile(&ms, 0.95);
    }
    Ok(out)
}

/// What `metrics_5m` holds (the sketch read through its exact min and max).
fn target_windows(c: &Connection) -> Result<Windows, String> {
    let mut stmt = c
        .prepare(
            "SELECT location_id, camera_id, window_start, samples, people_avg, people_max, people_p95, \
             processing_ms_avg, processing_ms_max, sluice_sketch_quantile(processing_ms_sketch, 0), \
             processing_ms_p95, sluice_sketch_quantile(processing_ms_sketch, 1), \
             json_array_length(sluice_unpack(raw)) FROM metrics_5m",
        )
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([], |r| {
            let (sk_min, sk_max): (f64, f64) = (r.get(9)?, r.get(11)?);
            let ms_max: f64 = r.get(8)?;
            Ok((
                (r.get(0)?, r.get(1)?, r.get(2)?),
                Window {
                    samples: r.get(3)?,
                    people_avg: r.get(4)?,
                    people_max: r.get(5)?,
                    people_p95: r.get(6)?,
                    ms_avg: r.get(7)?,
                    // The sketch's exact maximum must be the column's.
                    ms_max: if sk_max == ms_max { ms_max } else { f64::NAN },
                    ms_min: sk_min,
                    ms_p95: r.get(10)?,
                    packed: r.get(12)?,
                },
            ))
        })
        .map_err(|e| e.to_string())?;
    let mut out = Windows::new();
    for row in rows {
        let (k, w) = row.map_err(|e| e.to_string())?;
        out.insert(k, w);
    }
    Ok(out)
}

fn compare_windows(what: &str, got: &Windows, want: &Windows) -> Result<(), String> {
    for (k, w) in want {
        match got.get(k) {
            None => return Err(format!("{what}: window {k:?} is missing")),
            Some(g) if !same_window(g, w) => {
                return Err(format!("{what}: window {k:?} is {g:?}, computed {w:?}"))
            }
            _ => {}
        }
    }
    if let Some(k) = got.keys().find(|k| !want.contains_key(*k)) {
        return Err(format!("{what}: window {k:?} has no raw rows"));
    }
    Ok(())
}

/// Every row of `metrics_5m` as text (including `sluice_version`): a second
/// run must not change a byte.
fn target_dump(c: &Connection) -> Result<Vec<String>, String> {
    let mut stmt = c
        .prepare("SELECT quote(id), quote(window_start), quote(samples), quote(people_avg), quote(people_p95), hex(processing_ms_sketch), hex(raw), quote(sluice_version) FROM metrics_5m ORDER BY id")
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([], |r| {
            (0..8)
                .map(|i| r.get::<_, String>(i))
                .collect::<Result<Vec<_>, _>>()
                .map(|v| v.join("|"))
        })
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok(rows)
}

/// The rollup's watermark and target moved together: the target is exactly
/// the windows of the raw rows at or below the watermark, and the watermark
/// is that of the last run that committed (the runs counter agrees). Then a
/// run brings it to a full recomputation, and a second run changes nothing.
fn check_rollup(c: &Connection, m: &Markers) -> Result<String, String> {
    let (wm, runs): (i64, i64) = c
        .query_row(
            "SELECT watermark, runs FROM sluice_rollups WHERE name = 'metrics_5m'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(|e| e.to_string())?;
    calls_ok(runs, m, "sluice_rollup_run")?;
    ensure!(
        wm == runs * ROLLUP_ROWS,
        "watermark {wm} after {runs} runs (each run follows {ROLLUP_ROWS} new raw rows)"
    );
    let raw: i64 = one(c, "SELECT count(*) FROM metrics")?;
    ensure!(
        raw % ROLLUP_ROWS == 0,
        "{raw} raw rows: a partial raw insert"
    );
    compare_windows(
        "before the re-run",
        &target_windows(c)?,
        &reference_windows(c, wm)?,
    )?;
    let n: i64 = one(c, "SELECT sluice_rollup_run()")?;
    ensure!(
        (n > 0) == (raw > wm),
        "sluice_rollup_run after the crash returned {n} with {} raw rows above the watermark",
        raw - wm
    );
    let full = reference_windows(c, i64::MAX)?;
    compare_windows("after the re-run", &target_windows(c)?, &full)?;
    let before = target_dump(c)?;
    let again: i64 = one(c, "SELECT sluice_rollup_run()")?;
    ensure!(again == 0, "a second run returned {again}");
    ensure!(target_dump(c)? == before, "a second run changed metrics_5m");
    Ok(format!(
        "{runs} runs committed, {} windows, re-run wrote {n}",
        full.len()
    ))
}

// ---------------------------------------------------------------- ack

fn ack_state(c: &Connection) -> Result<(i64, i64, i64, i64, Vec<i64>), String> {
    let (a, k, r): (i64, i64, i64) = c
        .query_row(
            "SELECT acked_seq, acked_batches, acked_rows FROM sluice_tables WHERE tbl = 'division_states'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(|e| e.to_string())?;
    let p: i64 = one(c, "SELECT sluice_pending('division_states')")?;
    let mut stmt = c
        .prepare("SELECT acked_seq FROM sluice_acks WHERE tbl = 'division_states' ORDER BY rowid")
        .map_err(|e| e.to_string())?;
    let acks = stmt
        .query_map([], |r| r.get(0))
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<i64>, _>>()
        .map_err(|e| e.to_string())?;
    Ok((a, k, r, p, acks))
}

/// The watermark, the counters, the pending count and the acknowledgement log
/// are all those of K whole acknowledgements; then a batch and its
/// acknowledgement continue from there, and acknowledging it again is a no-op.
fn check_ack(c: &Connection, m: &Markers) -> Result<String, String> {
    let (a, k, r, p, acks) = ack_state(c)?;
    calls_ok(k, m, "sluice_ack")?;
    ensure!(
        a == k * ACK_ROWS && r == a && p == TEMPLATE_ROWS - a,
        "between two acknowledgements: acked_seq {a}, acked_batches {k}, acked_rows {r}, pending {p}"
    );
    let want: Vec<i64> = (1..=k).map(|i| i * ACK_ROWS).collect();
    ensure!(acks == want, "sluice_acks holds {acks:?}, want {want:?}");
    let batch: Option<Vec<u8>> = c
        .query_row(
            "SELECT sluice_batch('division_states', ?1)",
            [ACK_ROWS],
            |r| r.get(0),
        )
        .map_err(|e| format!("sluice_batch after the crash: {e}"))?;
    let Some(batch) = batch else {
        ensure!(p == 0, "no batch with {p} rows pending");
        return Ok(format!("{k} acks, all acknowledged"));
    };
    let n: i64 = c
        .query_row("SELECT sluice_ack(?1)", [&batch], |r| r.get(0))
        .map_err(|e| format!("sluice_ack after the crash: {e}"))?;
    let step = ACK_ROWS.min(p);
    ensure!(n == step, "sluice_ack after the crash returned {n}");
    let (a2, k2, _, p2, _) = ack_state(c)?;
    ensure!(
        a2 == a + step && k2 == k + 1 && p2 == p - step,
        "after one more ack: acked_seq {a2}, acked_batches {k2}, pending {p2}"
    );
    let again: i64 = c
        .query_row("SELECT sluice_ack(?1)", [&batch], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    ensure!(
        again == 0,
        "acknowledging the same batch again returned {again}"
    );
    Ok(format!("{k} acks"))
}

// ---------------------------------------------------------------- cleanup

/// The rows left are ids L+1..=TEMPLATE_ROWS, contiguous and intact, where L
/// is a whole number of cleanup calls (a multiple of CLEANUP_ROWS) and at most
/// the watermark (no pending row deleted); L is the watermark, or one batch
/// below it when the kill landed between an ack and its cleanup. Then a
/// cleanup deletes exactly the rest of what is acknowledged.
fn check_cleanup(c: &Connection, m: &Markers) -> Result<String, String> {
    let a: i64 = one(
        c,
        "SELECT acked_seq FROM sluice_tables WHERE tbl = 'division_states'",
    )?;
    let (n, lo, hi, bad): (i64, i64, i64, i64) = c
        .query_row(
            "SELECT count(*), coalesce(min(id), 0), coalesce(max(id), 0), \
             coalesce(sum(frame_number != (id - 1) * 5), 0) FROM division_states",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .map_err(|e| e.to_string())?;
    ensure!(bad == 0, "{bad} rows with wrong content");
    ensure!(
        hi == TEMPLATE_ROWS && n == hi - lo + 1,
        "the rows left are not contiguous: {n} rows, ids {lo}..{hi}"
    );
    // When everything is acknowledged, cleanup keeps the row with the largest
    // rowid (the high-water mark): count it as deleted.
    let deleted = if a == TEMPLATE_ROWS && lo == TEMPLATE_ROWS {
        a
    } else {
        lo - 1
    };
    ensure!(
        deleted <= a,
        "pending rows were deleted: ids up to {deleted}, watermark {a}"
    );
    ensure!(
        deleted % CLEANUP_ROWS == 0,
        "{deleted} rows deleted: not a whole number of cleanup calls of {CLEANUP_ROWS}"
    );
    let calls = deleted / CLEANUP_ROWS;
    calls_ok(calls, m, "sluice_cleanup")?;
    ensure!(
        deleted == a || deleted == a - CLEANUP_ROWS,
        "{deleted} rows deleted with the watermark at {a}"
    );
    let pending: i64 = one(c, "SELECT sluice_pending('division_states')")?;
    ensure!(
        pending == TEMPLATE_ROWS - a,
        "{pending} rows pending, watermark {a}"
    );
    // A cleanup now deletes exactly the acknowledged rows that are left.
    let more: i64 = one(c, "SELECT sluice_cleanup('division_states', 0)")?;
    let want = if a == TEMPLATE_ROWS && deleted < a {
        a - deleted - 1
    } else {
        a - deleted
    };
    ensure!(
        more == want,
        "sluice_cleanup after the crash deleted {more}, want {want}"
    );
    let lo2: i64 = one(c, "SELECT min(id) FROM division_states")?;
    ensure!(
        lo2 == (a + 1).min(TEMPLATE_ROWS),
        "after the cleanup the first row is {lo2}"
    );
    Ok(format!("{calls} cleanups, watermark {a}"))
}

// ---------------------------------------------------------------- driver

/// A template database for `kind`: the default schema, and for ack and
/// cleanup TEMPLATE_ROWS rows of `division_states` and a device id.
/// Checkpointed and closed, so the one file is the whole database.
fn template(dir: &Path, kind: Kind) -> PathBuf {
    let path = dir.join(format!("template-{}.db", kind.name()));
    let c = edge_db(&path, true);
    if matches!(kind, Kind::Ack | Kind::Cleanup) {
        c.query_row("SELECT sluice_device('box-crash')", [], |_| Ok(()))
            .unwrap();
        let rows = division_states(0, TEMPLATE_ROWS as u64, 1);
        insert_rows(&c, "division_states", &rows, 20_000);
    }
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(c);
    path
}

struct Outcome {
    kind: Kind,
    inside: bool,
    done: bool,
    error: Option<String>,
}

fn one_kill(
    dir: &Path,
    script: &Path,
    template: &Path,
    kind: Kind,
    round: u64,
    seed: u64,
) -> Outcome {
    let mut rng = Rng(seed);
    let journal = if round % 5 == 1 { "delete" } else { "wal" };
    // Even kills at a random moment, odd ones aimed at a random call.
    let at = if round % 2 == 0 {
        KillAt::Delay(Duration::from_millis(rng.range(0, kind.max_delay_ms())))
    } else {
        let (calls, us) = kind.aim();
        KillAt::AfterBegin(rng.range(0, calls), Duration::from_micros(rng.range(0, us)))
    };
    let db = dir.join(format!("{}-{round}.db", kind.name()));
    std::fs::copy(template, &db).unwrap();
    let m = run_victim(script, &db, kind, journal, at);
    let c = open(&db);
    let result = integrity(&c).and_then(|()| match kind {
        Kind::Insert => check_insert(&c, &m),
        Kind::Rollup => check_rollup(&c, &m),
        Kind::Ack => check_ack(&c, &m),
        Kind::Cleanup => check_cleanup(&c, &m),
    });
    let result = result.and_then(|s| integrity(&c).map(|()| s));
    let mode: String = one(&c, "PRAGMA journal_mode").unwrap_or_default();
    drop(c);
    println!(
        "{} kill {round}: seed {seed}, journal {journal} ({mode}), {}, {} ({} calls returned, last marker {:?}): {}",
        kind.function(),
        match at {
            KillAt::Delay(d) => format!("{} ms after ready", d.as_millis()),
            KillAt::AfterBegin(n, d) => format!("{} µs after begin {n}", d.as_micros()),
        },
        if m.inside { "INSIDE a call" } else if m.done { "after the work" } else { "between calls" },
        m.ended,
        m.last,
        match &result {
            Ok(s) => format!("ok, {s}"),
            Err(e) => format!("FAILED: {e}"),
        }
    );
    if result.is_ok() {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
    }
    Outcome {
        kind,
        inside: m.inside,
        done: m.done,
        error: result
            .err()
            .map(|e| format!("seed {seed}: {e} (database kept at {})", db.display())),
    }
}

#[test]
fn a_writer_killed_mid_call_leaves_all_or_nothing() {
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is needed (Debian's python3, whose sqlite3 module can load extensions)"
    );
    let kills: u64 = env_number("SLUICE_CRASH_KILLS", 10);
    let seed0: u64 = env_seed("SLUICE_SEED");
    println!("writer crash: {kills} kills per call kind, SLUICE_SEED={seed0}");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("victim.py");
    std::fs::write(&script, VICTIM).unwrap();
    let started = Instant::now();
    let mut outcomes = Vec::new();
    let kinds = [Kind::Insert, Kind::Rollup, Kind::Ack, Kind::Cleanup];
    for (ki, kind) in kinds.into_iter().enumerate() {
        let t = template(dir.path(), kind);
        for round in 0..kills {
            let seed = seed0
                .wrapping_add(ki as u64 * 1_000_000)
                .wrapping_add(round);
            outcomes.push(one_kill(dir.path(), &script, &t, kind, round, seed));
        }
    }
    let mut failures = Vec::new();
    println!(
        "writer crash tally ({:.1} s, SLUICE_SEED={seed0}):",
        started.elapsed().as_secs_f64()
    );
    for kind in kinds {
        let of: Vec<&Outcome> = outcomes.iter().filter(|o| o.kind == kind).collect();
        let inside = of.iter().filter(|o| o.inside).count();
        let done = of.iter().filter(|o| o.done).count();
        let failed: Vec<&String> = of.iter().filter_map(|o| o.error.as_ref()).collect();
        println!(
            "  {}: {} kills, {inside} inside a call, {} between calls, {done} after the work; {} failed",
            kind.function(),
            of.len(),
            of.len() - inside - done,
            failed.len()
        );
        failures.extend(
            failed
                .into_iter()
                .map(|e| format!("{}: {e}", kind.function())),
        );
    }
    if let Some(copy) = private_extension().parent() {
        let _ = std::fs::remove_dir_all(copy);
    }
    // Leave the failed databases for inspection.
    if !failures.is_empty() {
        let kept = dir.keep();
        panic!(
            "{} kills broke all-or-nothing (databases in {}):\n{}",
            failures.len(),
            kept.display(),
            failures.join("\n")
        );
    }
}
