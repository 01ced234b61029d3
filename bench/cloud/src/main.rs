//! `sluice-bench-cloud`: the cloud ingest benchmark of issue 4, run by
//! `scripts/bench-cloud.sh` against a database with `migrations/` applied.
//!
//! It builds `BENCH_ROWS` (default 1,000,000) rows of the default
//! `division_states` shape, one device, encodes them in batches of 1,000 with
//! `sluice_wire::encode` exactly as the edge does, then loads the same rows
//! four ways, each into its own copy of the table (same columns, keys and
//! indexes, truncated first): `sluice.ingest` (each batch its own
//! transaction), COPY (one per 100,000 rows, and one per batch), a prepared
//! multi-row `INSERT ... ON CONFLICT DO UPDATE` per batch; then the replay of
//! batches already applied. The methods take turns in rounds of 100 batches,
//! so that a shared machine's load falls on all alike. It prints a markdown
//! table of rows/s and ratios.
//!
//! Connection: the libpq environment (`PGHOST`, `PGPORT`, `PGUSER`), database
//! from `BENCH_DB` (default `bench`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

use postgres::{Client, Config, NoTls};
use sluice_wire::{encode, BatchHeader, Column, ColumnType, EncodeOptions, Value};

const BATCH_ROWS: usize = 1000;
const DEVICE: &str = "edge-bench-1";
const LOCATION: &str = "loc-bench";

/// One row of `division_states` as the edge has it.
struct Row {
    id: i64,
    session_id: String,
    camera_id: &'static str,
    frame_number: i64,
    video_ts: f64,
    recorded_at: String,
    state: &'static str,
    walking: i64,
    service: i64,
    staff: i64,
}

fn rows(n: usize) -> Vec<Row> {
    // 2024-05-01T08:00:00Z.
    rows_from(n, 1_714_550_400_000)
}

/// `n` rows 40 ms apart from `start_ms` (Unix ms).
fn rows_from(n: usize, start_ms: i64) -> Vec<Row> {
    const CAMERAS: [&str; 4] = ["cam-entrance", "cam-bar", "cam-hall-1", "cam-hall-2"];
    const STATES: [&str; 3] = ["RED", "YELLOW", "GREEN"];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| {
            let cam = i % CAMERAS.len();
            let ms = start_ms + i as i64 * 40;
            let frame = (i / CAMERAS.len()) as i64;
            let r = rnd();
            Row {
                id: i as i64 + 1,
                session_id: format!("sess-{}-{}", CAMERAS[cam], i / 90_000),
                camera_id: CAMERAS[cam],
                frame_number: frame,
                video_ts: ((frame * 40) as f64 / 1000.0 * 1000.0).round() / 1000.0
                    + (r % 7) as f64 / 1000.0,
                recorded_at: iso_ms(ms),
                state: STATES[(r >> 8) as usize % 3],
                walking: (r >> 16) as i64 % 4,
                service: (r >> 24) as i64 % 3,
                staff: 3 + (r >> 32) as i64 % 5,
            }
        })
        .collect()
}

/// `2024-05-01T08:00:00.040Z`.
fn iso_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

fn columns() -> Vec<Column> {
    use ColumnType::*;
    [
        ("id", Integer),
        ("session_id", Text),
        ("camera_id", Text),
        ("location_id", Text),
        ("frame_number", Integer),
        ("video_ts", Real),
        ("recorded_at", Text),
        ("state", Text),
        ("walking_waiters", Integer),
        ("service_waiters", Integer),
        ("total_staff", Integer),
    ]
    .into_iter()
    .map(|(n, t)| Column::new(n, t))
    .collect()
}

/// The batches the edge would cut: `(base_seq, last_seq]` by rowid.
fn batches(rows: &[Row], stream_id: u64) -> Vec<Vec<u8>> {
    let cols = columns();
    rows.chunks(BATCH_ROWS)
        .map(|chunk| {
            let versions: Vec<i64> = chunk.iter().map(|r| r.id).collect();
            let mut values: Vec<Vec<Value>> = vec![Vec::with_capacity(chunk.len()); cols.len()];
            for r in chunk {
                let row = [
                    Value::Integer(r.id),
                    Value::Text(r.session_id.clone()),
                    Value::Text(r.camera_id.into()),
                    Value::Text(LOCATION.into()),
                    Value::Integer(r.frame_number),
                    Value::Real(r.video_ts),
                    Value::Text(r.recorded_at.clone()),
                    Value::Text(r.state.into()),
                    Value::Integer(r.walking),
                    Value::Integer(r.service),
                    Value::Integer(r.staff),
                ];
                for (c, v) in row.into_iter().enumerate() {
                    values[c].push(v);
                }
            }
            let header = BatchHeader {
                device_id: DEVICE.into(),
                stream_id,
                table: "division_states".into(),
                base_seq: chunk[0].id - 1,
                last_seq: chunk[chunk.len() - 1].id,
                row_count: chunk.len() as u32,
                sent_at_ms: 1_714_550_400_000,
                columns: cols.clone(),
                fingerprint: 0,
            };
            encode(&header, &versions, &values, EncodeOptions::default()).expect("encode")
        })
        .collect()
}

/// The tables COPY and INSERT write: `division_states` with the same
/// columns, keys and indexes, so that every method writes a table of the
/// same size at the same time.
const OTHERS: [&str; 3] = ["bench_copy", "bench_copy_batches", "bench_insert"];

fn reset(c: &mut Client) {
    for t in OTHERS {
        c.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {t} (LIKE division_states INCLUDING ALL)"
        ))
        .expect("create");
    }
    let all = format!("division_states, {}", OTHERS.join(", "));
    for sql in [
        format!("TRUNCATE {all}, sluice.batches, sluice.devices"),
        format!("VACUUM ANALYZE {all}"),
        "CHECKPOINT".to_owned(),
    ] {
        c.batch_execute(&sql).expect("reset");
    }
}

fn count(c: &mut Client, table: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .expect("count")
        .get(0)
}

fn copy_line(out: &mut String, r: &Row) {
    copy_line_of(out, r, DEVICE)
}

fn copy_line_of(out: &mut String, r: &Row, device: &str) {
    let _ = writeln!(
        out,
        "{LOCATION}\t{device}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
        r.id,
        r.session_id,
        r.camera_id,
        r.frame_number,
        r.video_ts,
        r.recorded_at,
        r.state,
        r.walking,
        r.service,
        r.staff,
        r.id
    );
}

fn copy_sql(table: &str) -> String {
    format!(
        "COPY {table} (location_id, sluice_device, id, session_id, camera_id, frame_number, \
         video_ts, recorded_at, state, walking_waiters, service_waiters, total_staff, \
         sluice_version) FROM STDIN"
    )
}

fn bench_ingest(c: &mut Client, batches: &[Vec<u8>]) -> (Duration, Vec<Duration>) {
    let stmt = c
        .prepare("SELECT inserted, updated, skipped, replay FROM sluice.ingest($1)")
        .expect("prepare ingest");
    let mut lat = Vec::with_capacity(batches.len());
    let t = Instant::now();
    for b in batches {
        let t1 = Instant::now();
        c.query_one(&stmt, &[b]).expect("ingest");
        lat.push(t1.elapsed());
    }
    (t.elapsed(), lat)
}

fn bench_copy_stream(c: &mut Client, table: &str, rows: &[Row]) -> Duration {
    let t = Instant::now();
    let mut w = c.copy_in(&copy_sql(table)).expect("copy");
    let mut buf = String::with_capacity(200 * BATCH_ROWS);
    for chunk in rows.chunks(BATCH_ROWS) {
        buf.clear();
        for r in chunk {
            copy_line(&mut buf, r);
        }
        w.write_all(buf.as_bytes()).expect("copy write");
    }
    w.finish().expect("copy finish");
    t.elapsed()
}

fn bench_copy_batches(c: &mut Client, table: &str, rows: &[Row]) -> Duration {
    let t = Instant::now();
    let mut buf = String::with_capacity(200 * BATCH_ROWS);
    for chunk in rows.chunks(BATCH_ROWS) {
        buf.clear();
        for r in chunk {
            copy_line(&mut buf, r);
        }
        let mut w = c.copy_in(&copy_sql(table)).expect("copy");
        w.write_all(buf.as_bytes()).expect("copy write");
        w.finish().expect("copy finish");
    }
    t.elapsed()
}

/// A client's own upsert: one prepared multi-row statement per batch.
fn bench_insert(c: &mut Client, table: &str, rows: &[Row]) -> Duration {
    const NCOL: usize = 13;
    let make_sql = |n: usize| {
        let mut sql = format!(
            "INSERT INTO {table} AS t (location_id, sluice_device, id, session_id, \
             camera_id, frame_number, video_ts, recorded_at, state, walking_waiters, \
             service_waiters, total_staff, sluice_version) VALUES "
        );
        for r in 0..n {
            let p = r * NCOL;
            let _ = write!(
                sql,
                "{}(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}::text::timestamptz, ${}, ${}, ${}, ${}, ${})",
                if r == 0 { "" } else { ", " },
                p + 1, p + 2, p + 3, p + 4, p + 5, p + 6, p + 7, p + 8, p + 9, p + 10, p + 11, p + 12, p + 13
            );
        }
        sql.push_str(
            " ON CONFLICT (location_id, sluice_device, id) DO UPDATE SET \
             session_id = EXCLUDED.session_id, camera_id = EXCLUDED.camera_id, \
             frame_number = EXCLUDED.frame_number, video_ts = EXCLUDED.video_ts, \
             recorded_at = EXCLUDED.recorded_at, state = EXCLUDED.state, \
             walking_waiters = EXCLUDED.walking_waiters, service_waiters = EXCLUDED.service_waiters, \
             total_staff = EXCLUDED.total_staff, sluice_device = EXCLUDED.sluice_device, \
             sluice_version = EXCLUDED.sluice_version \
             WHERE (EXCLUDED.sluice_version, EXCLUDED.sluice_device) > (t.sluice_version, t.sluice_device)",
        );
        sql
    };
    let full = c.prepare(&make_sql(BATCH_ROWS)).expect("prepare insert");
    let t = Instant::now();
    for chunk in rows.chunks(BATCH_ROWS) {
        let tail;
        let stmt = if chunk.len() == BATCH_ROWS {
            &full
        } else {
            tail = c.prepare(&make_sql(chunk.len())).expect("prepare tail");
            &tail
        };
        let ints: Vec<[i64; 6]> = chunk
            .iter()
            .map(|r| [r.id, r.frame_number, r.walking, r.service, r.staff, r.id])
            .collect();
        let ints32: Vec<[i32; 3]> = ints
            .iter()
            .map(|i| [i[2] as i32, i[3] as i32, i[4] as i32])
            .collect();
        let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> =
            Vec::with_capacity(NCOL * chunk.len());
        for ((r, i), i32s) in chunk.iter().zip(&ints).zip(&ints32) {
            params.push(&LOCATION);
            params.push(&DEVICE);
            params.push(&i[0]);
            params.push(&r.session_id);
            params.push(&r.camera_id);
            params.push(&i[1]);
            params.push(&r.video_ts);
            params.push(&r.recorded_at);
            params.push(&r.state);
            params.push(&i32s[0]);
            params.push(&i32s[1]);
            params.push(&i32s[2]);
            params.push(&i[5]);
        }
        c.execute(stmt, &params).expect("insert");
    }
    t.elapsed()
}

fn rate(rows: usize, d: Duration) -> f64 {
    rows as f64 / d.as_secs_f64()
}

fn pct(lat: &mut [Duration], p: f64) -> f64 {
    lat.sort();
    let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
    lat[i].as_secs_f64() * 1000.0
}

/// `BENCH_MODE=retention`: `n` expired rows (100 days old, another device)
/// removed by `CALL sluice.run_retention()` while batches are ingested from
/// another connection; ingest latency per batch with and without it.
fn bench_retention(c: &mut Client, config: &Config, n: usize) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    reset(c);
    c.batch_execute("DELETE FROM sluice.retention")
        .expect("clear policies");
    let old = rows_from(n, now_ms - 100 * 86_400_000);
    let t = Instant::now();
    let mut w = c.copy_in(&copy_sql("division_states")).expect("copy");
    let mut buf = String::with_capacity(200 * BATCH_ROWS);
    for chunk in old.chunks(BATCH_ROWS) {
        buf.clear();
        for r in chunk {
            copy_line_of(&mut buf, r, "edge-old");
        }
        w.write_all(buf.as_bytes()).expect("copy write");
    }
    w.finish().expect("copy finish");
    drop(old);
    for sql in ["VACUUM ANALYZE division_states", "CHECKPOINT"] {
        c.batch_execute(sql).expect("vacuum");
    }
    eprintln!(
        "{n} expired rows loaded in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Fresh rows (recent timestamps), enough batches for both phases.
    let fresh = rows_from(600 * BATCH_ROWS, now_ms - 3_600_000);
    let fresh_batches = batches(&fresh, 0x5eed_0000_0000_0003);
    let (base_batches, during_batches) = fresh_batches.split_at(200);
    let (_, mut base) = bench_ingest(c, base_batches);

    c.batch_execute("SELECT sluice.set_retention('division_states', 'recorded_at', '30 days')")
        .expect("set_retention");
    let mut rc = config.connect(NoTls).expect("connect retention");
    let chunk: i32 = rc
        .query_one("SELECT sluice.retention_chunk_rows()", &[])
        .expect("chunk")
        .get(0);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done2 = done.clone();
    let retention = std::thread::spawn(move || {
        let t = Instant::now();
        rc.batch_execute("CALL sluice.run_retention()")
            .expect("run_retention");
        done2.store(true, std::sync::atomic::Ordering::SeqCst);
        t.elapsed()
    });
    let stmt = c
        .prepare("SELECT inserted, updated, skipped, replay FROM sluice.ingest($1)")
        .expect("prepare ingest");
    let mut during = Vec::new();
    for b in during_batches {
        if done.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        let t1 = Instant::now();
        c.query_one(&stmt, &[b]).expect("ingest");
        during.push(t1.elapsed());
    }
    let took = retention.join().expect("retention thread");
    let left: i64 = c
        .query_one(
            "SELECT count(*) FROM division_states WHERE sluice_device = 'edge-old'",
            &[],
        )
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "expired rows left");
    let still_running = during.len() == during_batches.len();
    println!("| retention of {n} expired rows (chunk {chunk} rows) | value |");
    println!("| --- | ---: |");
    println!(
        "| `CALL sluice.run_retention()` | {:.1} s ({:.0} rows/s) |",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    println!(
        "| ingest p50 / p99 per 1,000-row batch, alone ({} batches) | {:.2} / {:.2} ms |",
        base.len(),
        pct(&mut base, 0.5),
        pct(&mut base, 0.99)
    );
    if during.is_empty() {
        println!("| ingest during retention | (retention ended before the first batch) |");
    } else {
        println!(
            "| ingest p50 / p99, retention running ({} batches{}) | {:.2} / {:.2} ms |",
            during.len(),
            if still_running { ", all of them" } else { "" },
            pct(&mut during, 0.5),
            pct(&mut during, 0.99)
        );
        println!(
            "| p99 with ÷ without (goal ≤ 2) | {:.2} |",
            pct(&mut during, 0.99) / pct(&mut base, 0.99)
        );
    }
}

fn main() {
    let n: usize = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|s| s.replace('_', "").parse().ok())
        .unwrap_or(1_000_000);
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    let mut config = Config::new();
    config
        .host(&env("PGHOST", "127.0.0.1"))
        .port(env("PGPORT", "5432").parse().expect("PGPORT"))
        .user(&env("PGUSER", "postgres"))
        .dbname(&env("BENCH_DB", "bench"));
    let mut c = config.connect(NoTls).expect("connect");
    if std::env::var("BENCH_MODE").as_deref() == Ok("retention") {
        bench_retention(&mut c, &config, n);
        return;
    }

    let rows = rows(n);
    let t = Instant::now();
    let batches = batches(&rows, 0x5eed_0000_0000_0001);
    let encode_time = t.elapsed();
    let bytes: usize = batches.iter().map(Vec::len).sum();
    eprintln!(
        "{n} rows, {} batches of {BATCH_ROWS}, {:.1} bytes/row encoded (brotli), encoded in {:.2} s",
        batches.len(),
        bytes as f64 / n as f64,
        encode_time.as_secs_f64()
    );

    // Warm-up: a few batches through every path (plans, caches, the extension loaded).
    let warm = n.min(10 * BATCH_ROWS);
    reset(&mut c);
    bench_ingest(&mut c, &batches[..warm / BATCH_ROWS]);
    bench_copy_stream(&mut c, OTHERS[0], &rows[..warm]);
    bench_copy_batches(&mut c, OTHERS[1], &rows[..warm]);
    bench_insert(&mut c, OTHERS[2], &rows[..warm]);

    if std::env::var("BENCH_ONLY").as_deref() == Ok("ingest") {
        // For profiling: ingest alone, in a loop.
        loop {
            reset(&mut c);
            let (d, _) = bench_ingest(&mut c, &batches);
            eprintln!("ingest: {:.0} rows/s", rate(n, d));
        }
    }

    // Rounds of 100 batches; in each round every method writes the same
    // rows into its own table, in a rotating order, so that the load of a
    // shared machine falls on all of them alike.
    reset(&mut c);
    let round_batches = 100;
    let (mut ingest, mut copy, mut copy_b, mut insert) = (
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
    );
    let mut lat = Vec::with_capacity(batches.len());
    for (round, bs) in batches.chunks(round_batches).enumerate() {
        let first = round * round_batches * BATCH_ROWS;
        let rs = &rows[first..(first + bs.len() * BATCH_ROWS).min(n)];
        for m in 0..4 {
            match (m + round) % 4 {
                0 => {
                    let (d, l) = bench_ingest(&mut c, bs);
                    ingest += d;
                    lat.extend(l);
                }
                1 => copy += bench_copy_stream(&mut c, OTHERS[0], rs),
                2 => copy_b += bench_copy_batches(&mut c, OTHERS[1], rs),
                _ => insert += bench_insert(&mut c, OTHERS[2], rs),
            }
        }
    }
    for t in ["division_states"].into_iter().chain(OTHERS) {
        assert_eq!(count(&mut c, t) as usize, n, "rows in {t}");
    }
    let (replay_n, replay) = {
        let k = batches.len().min(200);
        let (d, l) = bench_ingest(&mut c, &batches[..k]);
        assert!(l.len() == k);
        (k, d)
    };
    // The same rows in batches of another identity (an edge database
    // restored from a backup, a batch cut again): new to the ledger, so
    // applied, but every key exists: the upsert path, every row skipped.
    let (upsert_n, upsert) = {
        let k = batches.len().min(200);
        let again = self::batches(&rows[..k * BATCH_ROWS], 0x5eed_0000_0000_0002);
        let (d, _) = bench_ingest(&mut c, &again);
        (k, d)
    };
    let applied: i64 = c
        .query_one("SELECT count(*) FROM sluice.batches", &[])
        .unwrap()
        .get(0);
    assert_eq!(applied as usize, batches.len() + upsert_n, "ledger rows");

    let (ri, rc, rcb, rin) = (
        rate(n, ingest),
        rate(n, copy),
        rate(n, copy_b),
        rate(n, insert),
    );
    println!("| method ({n} rows of division_states, batches of {BATCH_ROWS}) | seconds | rows/s | ingest ÷ this |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| `sluice.ingest` (brotli batches from `sluice_wire::encode`) | {:.2} | {:.0} | 1.00 |",
        ingest.as_secs_f64(),
        ri
    );
    println!(
        "| COPY text, one COPY per 100,000 rows | {:.2} | {:.0} | {:.2} (goal ≥ 0.5) |",
        copy.as_secs_f64(),
        rc,
        ri / rc
    );
    println!(
        "| COPY text, one COPY per batch | {:.2} | {:.0} | {:.2} |",
        copy_b.as_secs_f64(),
        rcb,
        ri / rcb
    );
    println!(
        "| prepared multi-row INSERT ... ON CONFLICT DO UPDATE | {:.2} | {:.0} | {:.2} (goal ≥ 1.5) |",
        insert.as_secs_f64(),
        rin,
        ri / rin
    );
    println!(
        "| `sluice.ingest` of {} rows already present (other batch identity: upsert path, all skipped) | {:.2} | {:.0} | |",
        upsert_n * BATCH_ROWS,
        upsert.as_secs_f64(),
        rate(upsert_n * BATCH_ROWS, upsert)
    );
    println!();
    println!(
        "ingest latency per batch: p50 {:.2} ms, p99 {:.2} ms; replay of {replay_n} applied batches: {:.3} ms per batch ({:.2}% of an applied batch's mean)",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        replay.as_secs_f64() * 1000.0 / replay_n as f64,
        100.0 * (replay.as_secs_f64() / replay_n as f64) / (ingest.as_secs_f64() / batches.len() as f64)
    );
}
