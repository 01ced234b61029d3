//! `sluice-bench-cloud`: the cloud benchmarks of issue 4, run by
//! `scripts/bench-cloud.sh` against a database with `migrations/` applied.
//!
//! `BENCH_MODE=ingest` (the default) builds `BENCH_ROWS` (default 1,000,000)
//! rows of the default `division_states` shape, one device, encodes them in
//! batches of 1,000 with `sluice_wire::encode` exactly as the edge does, then
//! loads the same rows four ways, each into its own copy of the table (same
//! columns, keys and indexes, truncated first): `sluice.ingest` (each batch
//! its own transaction), COPY (one per 100,000 rows, and one per batch), a
//! prepared multi-row `INSERT ... ON CONFLICT DO UPDATE` per batch; then the
//! replay of batches already applied. The methods take turns in rounds of 100
//! batches, so that a shared machine's load falls on all alike. It prints a
//! markdown table of rows/s and ratios.
//!
//! `BENCH_MODE=retention`: `BENCH_ROWS` (default 5,000,000) expired rows
//! removed by `CALL sluice.run_retention()` while batches are ingested;
//! ingest latency with and without it ([`bench_retention`]).
//!
//! `BENCH_MODE=search`: `BENCH_ROWS` (default 100,000) key frames; latency of
//! `sluice.search`, `sluice.nearest` and `sluice.hybrid_search` (k = 10)
//! beside hand-written SQL on the same indexes ([`search`]).
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
    rows_range(0, n, start_ms)
}

/// Rows `first + 1 ..= first + n` (ids), 40 ms apart from `start_ms` for row
/// `first + 1`.
fn rows_range(first: usize, n: usize, start_ms: i64) -> Vec<Row> {
    const CAMERAS: [&str; 4] = ["cam-entrance", "cam-bar", "cam-hall-1", "cam-hall-2"];
    const STATES: [&str; 3] = ["RED", "YELLOW", "GREEN"];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (first as u64).wrapping_mul(0x2545_f491_4f6c_dd1d);
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (first..first + n)
        .map(|i| {
            let cam = i % CAMERAS.len();
            let ms = start_ms + (i - first) as i64 * 40;
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
    const ISO_MS: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .expect("benchmark times are in range")
        .format(ISO_MS)
        .expect("formatting a valid time")
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

    // Fresh rows (recent timestamps), enough batches for both phases: 200
    // alone, then, while retention runs, up to one per 2,000 expired rows
    // (at least 400), about twice what a run has been seen to take.
    // Encoded 100,000 rows at a time, so that only the batches stay in memory.
    let during_n = (n / 2_000).max(400);
    let mut fresh_batches = Vec::with_capacity(200 + during_n);
    let block = 100 * BATCH_ROWS;
    let mut first = 0;
    while fresh_batches.len() < 200 + during_n {
        let fresh = rows_range(first, block, now_ms - 3_600_000 + first as i64 * 40);
        fresh_batches.extend(batches(&fresh, 0x5eed_0000_0000_0003));
        first += block;
    }
    fresh_batches.truncate(200 + during_n);
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
    let mode = std::env::var("BENCH_MODE").unwrap_or_default();
    let n: usize = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|s| s.replace('_', "").parse().ok())
        .unwrap_or(match mode.as_str() {
            "retention" => 5_000_000,
            "search" => 100_000,
            _ => 1_000_000,
        });
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    let mut config = Config::new();
    config
        .host(&env("PGHOST", "127.0.0.1"))
        .port(env("PGPORT", "5432").parse().expect("PGPORT"))
        .user(&env("PGUSER", "postgres"))
        .dbname(&env("BENCH_DB", "bench"));
    let mut c = config.connect(NoTls).expect("connect");
    match mode.as_str() {
        "retention" => {
            bench_retention(&mut c, &config, n);
            return;
        }
        "search" => {
            search::bench_search(&mut c, n);
            return;
        }
        "" | "ingest" => {}
        other => panic!("BENCH_MODE={other}: expected ingest (the default), retention or search"),
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

/// `BENCH_MODE=search`: latency of the search functions of issue 4 on `n`
/// key-frame rows (default 100,000), each beside the hand-written SQL a
/// client would run on the same indexes, in the same run.
///
/// The rows have the shape of `key_frames` (in a table of their own,
/// `bench_frames`): a description made from a vocabulary of restaurant
/// scenes ("a waiter wiping table 4 after the guests left"), and a
/// 384-dimension embedding. The embeddings are synthetic, not a model's: the
/// sum of a random unit vector per action and per place, plus noise,
/// normalised, so that rows describing the same scene are neighbours (as a
/// sentence model's would be) and the HNSW index has clusters to work with.
/// For latency that is what matters; the relevance of real embeddings is
/// tested in `tests/e2e/search.rs`.
///
/// `sluice.enable_search` and `sluice.enable_vectors` build the GIN and HNSW
/// (cosine) indexes after the COPY. Then 200 queries (after 20 of warm-up),
/// each run by the six methods in rotating order: two or three words in
/// `websearch_to_tsquery` syntax (a quarter with `or`, a fifth with a
/// `-word`), and a query vector made like a row's for the same scene.
mod search {
    use std::io::Write as _;
    use std::time::{Duration, Instant};

    use postgres::Client;

    use super::pct;

    const TABLE: &str = "bench_frames";
    const DIMS: usize = 384;
    const QUERIES: usize = 200;
    const WARMUP: usize = 20;
    const K: i32 = 10;

    const SUBJECTS: [&str; 12] = [
        "a waiter",
        "two customers",
        "a cook",
        "a delivery driver",
        "a staff member",
        "a family of four",
        "a queue of six people",
        "the manager",
        "a cleaner",
        "a child",
        "an elderly couple",
        "a barista",
    ];
    /// (phrase, the word a query uses for it)
    const ACTIONS: [(&str, &str); 12] = [
        ("cleaning", "cleaning"),
        ("waiting at", "waiting"),
        ("wiping", "wiping"),
        ("carrying plates to", "plates"),
        ("reading the menu at", "menu"),
        ("paying at", "paying"),
        ("plating food near", "food"),
        ("restocking", "restocking"),
        ("setting cutlery on", "cutlery"),
        ("mopping the floor by", "mopping"),
        ("arguing loudly at", "arguing"),
        ("dropping boxes at", "boxes"),
    ];
    const PLACES: [(&str, &str); 16] = [
        ("table 4", "table"),
        ("the counter", "counter"),
        ("the kitchen", "kitchen"),
        ("the entrance", "entrance"),
        ("the bar", "bar"),
        ("the back door", "door"),
        ("the window", "window"),
        ("the drinks fridge", "fridge"),
        ("the terrace", "terrace"),
        ("the cash desk", "desk"),
        ("the coffee machine", "coffee"),
        ("the dining room", "dining"),
        ("the stairs", "stairs"),
        ("the toilets", "toilets"),
        ("the pass", "pass"),
        ("the high chairs", "chairs"),
    ];
    const EXTRAS: [&str; 12] = [
        "after the guests left",
        "during the lunch rush",
        "with a tray",
        "in the evening",
        "while music plays",
        "before opening",
        "near closing time",
        "with a bucket",
        "in a hurry",
        "on a busy saturday",
        "during a quiet hour",
        "with a smile",
    ];

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        /// Uniform in (0, 1].
        fn unit(&mut self) -> f64 {
            ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
        }
        /// Standard normal (Box-Muller).
        fn gauss(&mut self) -> f64 {
            let (u, v) = (self.unit(), self.unit());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        }
        fn unit_vector(&mut self) -> Vec<f64> {
            normalise((0..DIMS).map(|_| self.gauss()).collect())
        }
    }

    fn normalise(mut v: Vec<f64>) -> Vec<f64> {
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }

    /// The random unit vectors of the actions and places.
    struct Centres {
        actions: Vec<Vec<f64>>,
        places: Vec<Vec<f64>>,
    }

    impl Centres {
        fn new() -> Centres {
            let mut rng = Rng(0x51ce_0000_c0ff_ee01);
            Centres {
                actions: (0..ACTIONS.len()).map(|_| rng.unit_vector()).collect(),
                places: (0..PLACES.len()).map(|_| rng.unit_vector()).collect(),
            }
        }

        /// A scene's vector: its action's and place's centres plus noise.
        fn vector(&self, rng: &mut Rng, action: usize, place: usize) -> String {
            let noise = 0.8 / (DIMS as f64).sqrt();
            let v: Vec<f64> = (0..DIMS)
                .map(|d| self.actions[action][d] + self.places[place][d] + noise * rng.gauss())
                .collect();
            let mut s = String::with_capacity(DIMS * 8);
            s.push('[');
            for (i, x) in normalise(v).iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&format!("{x:.4}"));
            }
            s.push(']');
            s
        }
    }

    fn load(c: &mut Client, n: usize, centres: &Centres) {
        c.batch_execute(&format!(
            "DELETE FROM sluice.search_columns WHERE target = to_regclass('{TABLE}');
             DELETE FROM sluice.vector_columns WHERE target = to_regclass('{TABLE}');
             DROP TABLE IF EXISTS {TABLE};
             CREATE TABLE {TABLE} (
                 location_id text NOT NULL, sluice_device text NOT NULL, id bigint NOT NULL,
                 camera_id text NOT NULL, captured_at timestamptz NOT NULL, description text,
                 embedding vector({DIMS}), sluice_version bigint NOT NULL,
                 PRIMARY KEY (location_id, sluice_device, id))"
        ))
        .expect("create bench_frames");
        let t = Instant::now();
        let mut rng = Rng(0x5eed_f00d_0000_0001);
        let mut w = c
            .copy_in(&format!(
                "COPY {TABLE} (location_id, sluice_device, id, camera_id, captured_at, description, embedding, sluice_version) FROM STDIN"
            ))
            .expect("copy");
        let mut buf = String::with_capacity(4 << 20);
        for i in 0..n {
            let (s, a, p, e) = (
                rng.below(SUBJECTS.len()),
                rng.below(ACTIONS.len()),
                rng.below(PLACES.len()),
                rng.below(EXTRAS.len()),
            );
            let mut description = format!(
                "{} {} {} {}",
                SUBJECTS[s], ACTIONS[a].0, PLACES[p].0, EXTRAS[e]
            );
            if rng.below(10) < 3 {
                let (s2, a2, p2) = (
                    rng.below(SUBJECTS.len()),
                    rng.below(ACTIONS.len()),
                    rng.below(PLACES.len()),
                );
                description.push_str(&format!(
                    " while {} is {} {}",
                    SUBJECTS[s2], ACTIONS[a2].0, PLACES[p2].0
                ));
            }
            let ms = 1_714_550_400_000i64 + i as i64 * 2_000;
            buf.push_str(&format!(
                "loc-bench\tedge-bench-1\t{}\tcam-{:02}\t{}\t{description}\t{}\t{}\n",
                i + 1,
                i % 8,
                super::iso_ms(ms),
                centres.vector(&mut rng, a, p),
                i + 1
            ));
            if buf.len() > 4 << 20 {
                w.write_all(buf.as_bytes()).expect("copy write");
                buf.clear();
            }
        }
        w.write_all(buf.as_bytes()).expect("copy write");
        w.finish().expect("copy finish");
        eprintln!("{n} rows loaded in {:.1} s", t.elapsed().as_secs_f64());

        c.batch_execute("SET maintenance_work_mem = '1GB'")
            .expect("maintenance_work_mem");
        for (what, sql) in [
            (
                "sluice.enable_search (generated tsvector column, GIN index)",
                format!("SELECT sluice.enable_search('{TABLE}', 'description')"),
            ),
            (
                "sluice.enable_vectors (HNSW index, cosine)",
                format!("SELECT sluice.enable_vectors('{TABLE}', 'embedding', {DIMS}, 'cosine')"),
            ),
            ("VACUUM ANALYZE", format!("VACUUM ANALYZE {TABLE}")),
        ] {
            let t = Instant::now();
            c.batch_execute(&sql).expect(what);
            eprintln!("{what}: {:.1} s", t.elapsed().as_secs_f64());
        }
    }

    struct Query {
        text: String,
        vector: String,
    }

    fn queries(centres: &Centres) -> Vec<Query> {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        (0..WARMUP + QUERIES)
            .map(|i| {
                let (a, p) = (rng.below(ACTIONS.len()), rng.below(PLACES.len()));
                let mut text = if i % 4 == 3 {
                    format!("{} or {}", ACTIONS[a].1, PLACES[p].1)
                } else {
                    format!("{} {}", ACTIONS[a].1, PLACES[p].1)
                };
                if i % 5 == 4 {
                    let other = (p + 1 + rng.below(PLACES.len() - 1)) % PLACES.len();
                    text.push_str(&format!(" -{}", PLACES[other].1));
                }
                Query {
                    text,
                    vector: centres.vector(&mut rng, a, p),
                }
            })
            .collect()
    }

    /// One method: its statement, its latencies and answers (ids).
    struct Method {
        name: &'static str,
        stmt: postgres::Statement,
        lat: Vec<Duration>,
        answers: Vec<Vec<i64>>,
    }

    pub fn bench_search(c: &mut Client, n: usize) {
        let centres = Centres::new();
        load(c, n, &centres);
        let qs = queries(&centres);

        let prepare = |c: &mut Client, name, sql: &str| Method {
            name,
            stmt: c
                .prepare(sql)
                .unwrap_or_else(|e| panic!("prepare {name}: {e}")),
            lat: Vec::new(),
            answers: Vec::new(),
        };
        let mut methods = vec![
            prepare(
                c,
                "`sluice.search`",
                &format!("SELECT (row_data->>'id')::int8 FROM sluice.search('{TABLE}', $1, $2)"),
            ),
            prepare(
                c,
                "SQL: `@@ websearch_to_tsquery`, `ORDER BY ts_rank_cd`, GIN index",
                &format!(
                    "SELECT t.id FROM {TABLE} t, websearch_to_tsquery('english', $1) q
                     WHERE t.description_tsv @@ q
                     ORDER BY ts_rank_cd(t.description_tsv, q) DESC, t.ctid LIMIT $2::int"
                ),
            ),
            prepare(
                c,
                "`sluice.nearest`",
                &format!(
                    "SELECT (row_data->>'id')::int8 FROM sluice.nearest('{TABLE}', $1::text::vector, $2)"
                ),
            ),
            prepare(
                c,
                "SQL: `ORDER BY embedding <=> q LIMIT 10`, HNSW index",
                &format!(
                    "SELECT id FROM {TABLE} ORDER BY embedding <=> $1::text::vector LIMIT $2::int"
                ),
            ),
            prepare(
                c,
                "`sluice.hybrid_search`",
                &format!(
                    "SELECT (row_data->>'id')::int8 FROM sluice.hybrid_search('{TABLE}', $1, $2::text::vector, $3)"
                ),
            ),
            prepare(
                c,
                "SQL: reciprocal rank fusion of both (top 40 each, k = 60)",
                &format!(
                    "WITH q AS (SELECT websearch_to_tsquery('english', $1) AS q),
                     tr AS (SELECT t.id, row_number() OVER (ORDER BY ts_rank_cd(t.description_tsv, q.q) DESC, t.ctid) AS r
                            FROM {TABLE} t, q WHERE t.description_tsv @@ q.q
                            ORDER BY ts_rank_cd(t.description_tsv, q.q) DESC, t.ctid LIMIT 40),
                     vr AS (SELECT v.id, row_number() OVER (ORDER BY v.d, v.id) AS r
                            FROM (SELECT t.id, t.embedding <=> $2::text::vector AS d FROM {TABLE} t
                                  ORDER BY t.embedding <=> $2::text::vector LIMIT 40) v)
                     SELECT coalesce(tr.id, vr.id)
                     FROM tr FULL JOIN vr ON tr.id = vr.id
                     ORDER BY coalesce(1.0 / (60 + tr.r), 0) + coalesce(1.0 / (60 + vr.r), 0) DESC,
                              tr.r NULLS LAST, vr.r NULLS LAST
                     LIMIT $3::int"
                ),
            ),
        ];

        for (i, q) in qs.iter().enumerate() {
            for j in 0..methods.len() {
                let m = &mut methods[(i + j) % 6];
                let text: &(dyn postgres::types::ToSql + Sync) = &q.text;
                let vector: &(dyn postgres::types::ToSql + Sync) = &q.vector;
                let k: &(dyn postgres::types::ToSql + Sync) = &K;
                let params: Vec<&(dyn postgres::types::ToSql + Sync)> = match (i + j) % 6 / 2 {
                    0 => vec![text, k],
                    1 => vec![vector, k],
                    _ => vec![text, vector, k],
                };
                let t = Instant::now();
                let rows = c
                    .query(&m.stmt, &params)
                    .unwrap_or_else(|e| panic!("{}: {e}", m.name));
                let took = t.elapsed();
                if i >= WARMUP {
                    m.lat.push(took);
                    m.answers.push(rows.iter().map(|r| r.get(0)).collect());
                }
            }
        }

        let mut matched = Vec::with_capacity(QUERIES);
        for q in &qs[WARMUP..] {
            let m: i64 = c
                .query_one(
                    &format!(
                        "SELECT count(*) FROM {TABLE} WHERE description_tsv @@ websearch_to_tsquery('english', $1)"
                    ),
                    &[&q.text],
                )
                .expect("count matches")
                .get(0);
            matched.push(m);
        }
        matched.sort_unstable();

        println!(
            "| k = {K}, {n} rows, {QUERIES} queries | p50 ms | p95 ms | same top {K} as sluice |"
        );
        println!("| --- | ---: | ---: | ---: |");
        for pair in methods.chunks_mut(2) {
            let (ours, theirs) = pair.split_at_mut(1);
            let (ours, base) = (&mut ours[0], &mut theirs[0]);
            let same = ours
                .answers
                .iter()
                .zip(&base.answers)
                .filter(|(a, b)| {
                    let (mut a, mut b) = ((*a).clone(), (*b).clone());
                    a.sort_unstable();
                    b.sort_unstable();
                    a == b
                })
                .count();
            println!(
                "| {} | {:.2} | {:.2} | |",
                ours.name,
                pct(&mut ours.lat, 0.5),
                pct(&mut ours.lat, 0.95)
            );
            println!(
                "| {} | {:.2} | {:.2} | {same}/{QUERIES} |",
                base.name,
                pct(&mut base.lat, 0.5),
                pct(&mut base.lat, 0.95)
            );
        }
        println!();
        println!(
            "rows matching a text query: median {}, max {}",
            matched[matched.len() / 2],
            matched[matched.len() - 1]
        );
    }
}
