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

mod common;
mod ingest;
mod retention;
mod search;

use std::time::{Duration, Instant};

use postgres::{Config, NoTls};

use common::*;
use ingest::*;
use retention::*;

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
    // The same rows in batches of another identity (cut again after lost
    // acknowledgements, with other boundaries: half a batch later) of the
    // same stream: new to the ledger, so applied, but every key exists: the
    // upsert path, every row skipped (and the fork check, which finds the
    // same content).
    let (upsert_n, upsert) = {
        let k = batches.len().saturating_sub(1).min(200);
        let half = BATCH_ROWS / 2;
        let again = self::batches(&rows[half..half + k * BATCH_ROWS], 0x5eed_0000_0000_0001);
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
