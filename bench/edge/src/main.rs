//! `sluice-bench-edge`: benchmarks of `sluice0.so` from Rust, each beside the
//! baseline it competes with, measured in the same process and run. Loads
//! the built extension like any client; prints one markdown table row per
//! measurement (`scripts/bench-edge.sh` runs it and the Python baselines).
//!
//!     sluice-bench-edge EXT_PATH WORK_DIR [ROWS]
//!
//! - insert: ROWS ten-column rows (default 1,000,000) into a file database in
//!   WAL mode with synchronous=NORMAL: a prepared statement in one
//!   transaction; `sluice_insert` with 1,000 rows per call; SQLite's own
//!   `INSERT ... SELECT ... FROM json_each(?)`, 1,000 rows per call;
//!   `sluice_insert` with the compact form `{"columns": [...], "rows": [...]}`;
//!   `sluice_insert` calls inside one transaction (as the baseline);
//!   `BENCH_ONLY=insert` stops after these;
//! - tracking: `sluice_insert` into a tracked (append-only) table;
//! - ack: `sluice_ack` of a 10-row and of a 100,000-row batch;
//! - rollup: ROWS raw metrics rolled up (count, avg, max, p95, sketch; with
//!   and without pack) against a plain GROUP BY with count, avg, max;
//! - apply: `sluice_apply` of a snapshot of ROWS rows in pages of 10,000 in
//!   one transaction against a prepared INSERT of the same rows
//!   (`BENCH_ONLY=apply` runs only this; [`apply`]).

mod apply;

use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::{params, Connection};

type R<T> = Result<T, Box<dyn std::error::Error>>;

const BATCH: usize = 1000;

const COLUMNS: &str = "camera_id TEXT NOT NULL, location_id TEXT NOT NULL, \
    recorded_at TEXT NOT NULL, frame INTEGER NOT NULL, people INTEGER NOT NULL, \
    staff INTEGER NOT NULL, processing_ms REAL NOT NULL, confidence REAL NOT NULL, \
    state TEXT NOT NULL, temp_c REAL NOT NULL";
const NAMES: [&str; 10] = [
    "camera_id",
    "location_id",
    "recorded_at",
    "frame",
    "people",
    "staff",
    "processing_ms",
    "confidence",
    "state",
    "temp_c",
];

struct Row {
    camera: String,
    location: String,
    ts: String,
    frame: i64,
    people: i64,
    staff: i64,
    ms: f64,
    conf: f64,
    state: &'static str,
    temp: f64,
}

/// A small deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn iso(secs: i64, ms: i64) -> String {
    const ISO_MS: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(
        (i128::from(secs) * 1000 + i128::from(ms)) * 1_000_000,
    )
    .expect("benchmark times are in range")
    .format(ISO_MS)
    .expect("formatting a valid time")
}

const T0: i64 = 1_795_132_800; // 2026-11-21T00:00:00Z

fn rows(n: usize) -> Vec<Row> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let states = ["RED", "YELLOW", "GREEN"];
    (0..n)
        .map(|i| {
            let cam = i % 12;
            Row {
                camera: format!("cam-{cam:02}"),
                location: "store-042".to_string(),
                ts: iso(T0 + (i / 12) as i64 * 3, rng.below(1000) as i64),
                frame: (i / 12) as i64 * 75,
                people: rng.below(14) as i64,
                staff: 3 + rng.below(4) as i64,
                ms: (rng.unit() * 8000.0).round() / 100.0 + 5.0,
                conf: (rng.unit() * 1000.0).round() / 1000.0,
                state: states[rng.below(3) as usize],
                temp: 45.0 + (rng.unit() * 350.0).round() / 10.0,
            }
        })
        .collect()
}

fn json_escape(s: &str) -> String {
    // The generated strings hold no character that needs escaping.
    s.to_string()
}

/// The rows as JSON arrays of objects, BATCH rows each (built beforehand,
/// not timed, like the tuples of the Python baseline).
fn json_batches(rows: &[Row]) -> Vec<String> {
    rows.chunks(BATCH)
        .map(|chunk| {
            let mut s = String::with_capacity(chunk.len() * 230);
            s.push('[');
            for (i, r) in chunk.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&format!(
                    "{{\"camera_id\":\"{}\",\"location_id\":\"{}\",\"recorded_at\":\"{}\",\"frame\":{},\
                     \"people\":{},\"staff\":{},\"processing_ms\":{:?},\"confidence\":{:?},\"state\":\"{}\",\
                     \"temp_c\":{:?}}}",
                    json_escape(&r.camera),
                    json_escape(&r.location),
                    r.ts,
                    r.frame,
                    r.people,
                    r.staff,
                    r.ms,
                    r.conf,
                    r.state,
                    r.temp
                ));
            }
            s.push(']');
            s
        })
        .collect()
}

/// The same batches in the compact form `{"columns": [...], "rows": [[...]]}`.
fn compact_batches(rows: &[Row]) -> Vec<String> {
    let cols: Vec<String> = NAMES.iter().map(|n| format!("\"{n}\"")).collect();
    rows.chunks(BATCH)
        .map(|chunk| {
            let mut s = String::with_capacity(chunk.len() * 110);
            s.push_str(&format!("{{\"columns\":[{}],\"rows\":[", cols.join(",")));
            for (i, r) in chunk.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&format!(
                    "[\"{}\",\"{}\",\"{}\",{},{},{},{:?},{:?},\"{}\",{:?}]",
                    json_escape(&r.camera),
                    json_escape(&r.location),
                    r.ts,
                    r.frame,
                    r.people,
                    r.staff,
                    r.ms,
                    r.conf,
                    r.state,
                    r.temp
                ));
            }
            s.push_str("]}");
            s
        })
        .collect()
}

fn open(path: &Path, ext: &Path) -> R<Connection> {
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", path.display()));
        if p.exists() {
            std::fs::remove_file(&p)?;
        }
    }
    let conn = Connection::open(path)?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
    // SAFETY: loads the extension under test into this process.
    unsafe {
        let _guard = rusqlite::LoadExtensionGuard::new(&conn)?;
        conn.load_extension(ext, None::<&str>)?;
    }
    conn.execute_batch(&format!(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, {COLUMNS})"
    ))?;
    Ok(conn)
}

fn rate(n: usize, secs: f64) -> f64 {
    n as f64 / secs
}

fn insert_prepared(conn: &Connection, rows: &[Row]) -> R<f64> {
    let t = Instant::now();
    conn.execute_batch("BEGIN")?;
    {
        let mut stmt = conn.prepare(&format!(
            "INSERT INTO t ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            NAMES.join(", ")
        ))?;
        for r in rows {
            stmt.execute(params![
                r.camera, r.location, r.ts, r.frame, r.people, r.staff, r.ms, r.conf, r.state,
                r.temp
            ])?;
        }
    }
    conn.execute_batch("COMMIT")?;
    Ok(t.elapsed().as_secs_f64())
}

fn insert_sluice(conn: &Connection, batches: &[String]) -> R<f64> {
    let t = Instant::now();
    let mut stmt = conn.prepare("SELECT sluice_insert('t', ?1)")?;
    for b in batches {
        stmt.query_row([b], |_| Ok(()))?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// `sluice_insert` calls inside one transaction, like the baseline.
fn insert_sluice_one_tx(conn: &Connection, batches: &[String]) -> R<f64> {
    let t = Instant::now();
    conn.execute_batch("BEGIN")?;
    let mut stmt = conn.prepare("SELECT sluice_insert('t', ?1)")?;
    for b in batches {
        stmt.query_row([b], |_| Ok(()))?;
    }
    conn.execute_batch("COMMIT")?;
    Ok(t.elapsed().as_secs_f64())
}

fn insert_json_each(conn: &Connection, batches: &[String]) -> R<f64> {
    let sel: Vec<String> = NAMES.iter().map(|n| format!("value ->> '{n}'")).collect();
    let t = Instant::now();
    let mut stmt = conn.prepare(&format!(
        "INSERT INTO t ({}) SELECT {} FROM json_each(?1)",
        NAMES.join(", "),
        sel.join(", ")
    ))?;
    for b in batches {
        stmt.execute([b])?;
    }
    Ok(t.elapsed().as_secs_f64())
}

fn row(what: &str, ours: String, base: String, ratio: String, goal: &str) {
    println!("| {what} | {ours} | {base} | {ratio} | {goal} |");
}

fn main() -> R<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: sluice-bench-edge EXT_PATH WORK_DIR [ROWS]".into());
    }
    let ext = PathBuf::from(&args[1]);
    let dir = PathBuf::from(&args[2]);
    let n: usize = args.get(3).map_or(Ok(1_000_000), |s| s.parse())?;
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("bench-edge.db");

    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "apply") {
        println!("| measurement | sluice | baseline | ratio | goal |");
        println!("| --- | ---: | ---: | ---: | --- |");
        return apply::bench(&dir, &ext, n);
    }
    let data = rows(n);
    let batches = json_batches(&data);
    let compact = compact_batches(&data);
    let mb = batches.iter().map(String::len).sum::<usize>() as f64 / 1e6;
    let cmb = compact.iter().map(String::len).sum::<usize>() as f64 / 1e6;
    eprintln!(
        "[bench-edge] {n} rows, {mb:.0} MB of JSON ({cmb:.0} MB compact) in batches of {BATCH}"
    );

    // (a) insert, interleaved over two rounds; the best of each is reported.
    let mut best = [f64::MAX; 7];
    for round in 0..2 {
        let c = open(&db, &ext)?;
        best[0] = best[0].min(insert_prepared(&c, &data)?);
        let c = open(&db, &ext)?;
        best[1] = best[1].min(insert_sluice(&c, &batches)?);
        let c = open(&db, &ext)?;
        best[4] = best[4].min(insert_sluice(&c, &compact)?);
        let c = open(&db, &ext)?;
        best[5] = best[5].min(insert_sluice_one_tx(&c, &batches)?);
        let c = open(&db, &ext)?;
        best[6] = best[6].min(insert_sluice_one_tx(&c, &compact)?);
        if round == 0 {
            let c = open(&db, &ext)?;
            best[2] = best[2].min(insert_json_each(&c, &batches)?);
        }
        // (b) tracked (append-only): same call, the table is tracked.
        let c = open(&db, &ext)?;
        c.query_row("SELECT sluice_track('t')", [], |_| Ok(()))?;
        best[3] = best[3].min(insert_sluice(&c, &batches)?);
        let count: i64 = c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
        if count != n as i64 {
            return Err(format!("inserted {count} rows, expected {n}").into());
        }
        eprintln!("[bench-edge] insert round {} done", round + 1);
    }
    let (prep, sl, je, tr, cp, tx, cptx) = (
        rate(n, best[0]),
        rate(n, best[1]),
        rate(n, best[2]),
        rate(n, best[3]),
        rate(n, best[4]),
        rate(n, best[5]),
        rate(n, best[6]),
    );
    println!("| measurement | sluice | baseline | ratio | goal |");
    println!("| --- | ---: | ---: | ---: | --- |");
    row(
        "insert rows/s: sluice_insert vs rusqlite prepared statement, one transaction",
        format!("{sl:.0}"),
        format!("{prep:.0}"),
        format!("{:.2}×", sl / prep),
        "≥ 0.8×",
    );
    row(
        "insert rows/s: sluice_insert, compact form {columns, rows} vs rusqlite prepared statement, one transaction",
        format!("{cp:.0}"),
        format!("{prep:.0}"),
        format!("{:.2}×", cp / prep),
        "≥ 0.8×",
    );
    row(
        "insert rows/s: sluice_insert, all calls in one transaction vs rusqlite prepared statement, one transaction",
        format!("{tx:.0}"),
        format!("{prep:.0}"),
        format!("{:.2}×", tx / prep),
        "(reported)",
    );
    row(
        "insert rows/s: sluice_insert, compact form, all calls in one transaction vs rusqlite prepared statement, one transaction (same transaction shape)",
        format!("{cptx:.0}"),
        format!("{prep:.0}"),
        format!("{:.2}×", cptx / prep),
        "≥ 0.8×",
    );
    row(
        "insert rows/s: sluice_insert vs INSERT ... SELECT FROM json_each(?)",
        format!("{sl:.0}"),
        format!("{je:.0}"),
        format!("{:.2}×", sl / je),
        "≥ 2.5×",
    );
    row(
        "insert rows/s: tracked (append-only) vs untracked table",
        format!("{tr:.0}"),
        format!("{sl:.0}"),
        format!("{:.2}×", tr / sl),
        "≥ 0.95×",
    );
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "insert") {
        return Ok(());
    }

    // (c) ack cost: 10-row vs 100,000-row batches of the table just filled.
    let c = open(&db, &ext)?;
    insert_sluice(&c, &batches)?;
    c.execute_batch("SELECT sluice_device('bench'); SELECT sluice_track('t');")?;
    // A batch stops at 16 MB of rows, so "100,000" is as many as fit.
    let mut big_bytes = 0usize;
    let mut ack = |size: i64, reps: usize| -> R<(f64, i64)> {
        let mut times = Vec::new();
        let mut rows = 0;
        for _ in 0..reps {
            let b: Option<Vec<u8>> =
                c.query_row("SELECT sluice_batch('t', ?1)", [size], |r| r.get(0))?;
            let Some(b) = b else { break };
            big_bytes = big_bytes.max(b.len());
            let pending: i64 = c.query_row("SELECT sluice_pending('t')", [], |r| r.get(0))?;
            let t = Instant::now();
            let acked: i64 = c.query_row("SELECT sluice_ack(?1)", [&b], |r| r.get(0))?;
            times.push(t.elapsed().as_secs_f64());
            let left: i64 = c.query_row("SELECT sluice_pending('t')", [], |r| r.get(0))?;
            if acked != pending - left || acked < 1 {
                return Err(
                    format!("acknowledged {acked} rows, pending went {pending} -> {left}").into(),
                );
            }
            rows = acked;
        }
        times.sort_by(f64::total_cmp);
        Ok((
            times.get(times.len() / 2).copied().unwrap_or(f64::NAN),
            rows,
        ))
    };
    let (small, small_rows) = ack(10, 50)?;
    let big_reps = (n / 100_000).saturating_sub(1).clamp(1, 5);
    let (big, big_rows) = ack(100_000, big_reps)?;
    // What any call taking that blob as a parameter costs (binding copies it).
    let blob: Vec<u8> = vec![0u8; big_bytes];
    let mut bind = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let _: i64 = c.query_row("SELECT length(?1)", [&blob], |r| r.get(0))?;
        bind.push(t.elapsed().as_secs_f64());
    }
    bind.sort_by(f64::total_cmp);
    eprintln!(
        "[bench-edge] binding a {big_bytes}-byte blob to SELECT length(?1): {:.3} ms",
        bind[2] * 1e3
    );
    row(
        &format!(
            "SELECT length(?) of the same {:.1} MB blob (the cost of passing it in)",
            big_bytes as f64 / 1e6
        ),
        format!("{:.3} ms", bind[2] * 1e3),
        "".into(),
        "".into(),
        "",
    );
    row(
        &format!(
            "sluice_ack of a {big_rows}-row batch vs a {small_rows}-row batch (median ms, commit included)"
        ),
        format!("{:.3} ms", big * 1e3),
        format!("{:.3} ms", small * 1e3),
        format!("{:.2}×", big / small),
        "same cost",
    );
    drop(c);

    // (d) rollup of n raw metrics vs a plain GROUP BY.
    rollup_bench(&dir.join("bench-rollup.db"), &ext, n)?;

    // (e) sluice_apply of a snapshot vs a prepared INSERT.
    apply::bench(&dir, &ext, n)?;
    Ok(())
}

fn rollup_bench(db: &Path, ext: &Path, n: usize) -> R<()> {
    let c = open(db, ext)?;
    c.execute_batch(
        "CREATE TABLE metrics (id INTEGER PRIMARY KEY, camera_id TEXT NOT NULL, \
         location_id TEXT NOT NULL, recorded_at TEXT NOT NULL, people_count INTEGER NOT NULL, \
         processing_ms REAL NOT NULL)",
    )?;
    let mut rng = Rng(42);
    c.execute_batch("BEGIN")?;
    {
        let mut stmt = c.prepare(
            "INSERT INTO metrics (camera_id, location_id, recorded_at, people_count, processing_ms) \
             VALUES (?1, 'store-042', ?2, ?3, ?4)",
        )?;
        for i in 0..n {
            let cam = format!("cam-{:02}", i % 12);
            let ts = iso(T0 + (i / 12) as i64 * 3, rng.below(1000) as i64);
            // Log-normal-ish processing times: exp of a sum of uniforms.
            let z = (0..4).map(|_| rng.unit()).sum::<f64>() - 2.0;
            stmt.execute(params![
                cam,
                ts,
                rng.below(14) as i64,
                (3.3 + 0.6 * z).exp()
            ])?;
        }
    }
    c.execute_batch("COMMIT")?;
    let measures = r#""samples": "count", "people_avg": "avg(people_count)", "people_max": "max(people_count)",
        "processing_ms_avg": "avg(processing_ms)", "processing_ms_max": "max(processing_ms)",
        "processing_ms_p95": "p95(processing_ms)", "processing_ms_sketch": "sketch(processing_ms)""#;
    let declare = |name: &str, extra: &str| -> R<()> {
        let opts = format!(
            r#"{{"source": "metrics", "time": "recorded_at", "width": "5 minutes",
                "group": ["location_id", "camera_id"], "target": "{name}", "track": false,
                "measures": {{{measures}{extra}}}}}"#
        );
        c.query_row("SELECT sluice_rollup(?1, ?2)", params![name, opts], |_| {
            Ok(())
        })?;
        Ok(())
    };
    declare("r_plain", "")?;
    declare("r_pack", r#", "raw": "pack""#)?;
    let time = |sql: &str| -> R<f64> {
        let t = Instant::now();
        c.execute_batch(sql)?;
        Ok(t.elapsed().as_secs_f64())
    };
    let group_by = "DROP TABLE IF EXISTS g; CREATE TABLE g AS SELECT location_id, camera_id, \
        sluice_bucket(recorded_at, 300) AS window_start, count(*) AS samples, \
        avg(people_count) AS people_avg, max(people_count) AS people_max, \
        avg(processing_ms) AS processing_ms_avg, max(processing_ms) AS processing_ms_max \
        FROM metrics GROUP BY 1, 2, 3";
    let base1 = time(group_by)?;
    let plain = time("SELECT sluice_rollup_run('r_plain')")?;
    let pack = time("SELECT sluice_rollup_run('r_pack')")?;
    let base2 = time(group_by)?;
    let base = base1.min(base2);
    let windows: i64 = c.query_row("SELECT count(*) FROM r_plain", [], |r| r.get(0))?;
    let g: i64 = c.query_row("SELECT count(*) FROM g", [], |r| r.get(0))?;
    if windows != g {
        return Err(format!("rollup wrote {windows} windows, GROUP BY {g}").into());
    }
    row(
        &format!(
            "rollup of {n} raw samples into {windows} windows: count, avg, max, p95, sketch vs GROUP BY count, avg, max (s)"
        ),
        format!("{plain:.2} s"),
        format!("{base:.2} s"),
        format!("{:.2}×", plain / base),
        "≤ 2×",
    );
    row(
        "the same rollup with the raw rows packed (pack)",
        format!("{pack:.2} s"),
        format!("{base:.2} s"),
        format!("{:.2}×", pack / base),
        "(reported)",
    );
    Ok(())
}
