//! `BENCH_MODE=retention`: expired rows removed by `sluice.run_retention()`
//! while batches are ingested.

use std::io::Write as _;
use std::time::Instant;

use postgres::{Client, Config, NoTls};

use crate::common::*;
use crate::ingest::*;

/// `BENCH_MODE=retention`: `n` expired rows (100 days old, another device)
/// removed by `CALL sluice.run_retention()` while batches are ingested from
/// another connection; ingest latency per batch with and without it.
pub fn bench_retention(c: &mut Client, config: &Config, n: usize) {
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
