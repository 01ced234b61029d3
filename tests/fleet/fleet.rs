//! Fleet load: many simulated devices (one thread and one connection each)
//! encode `division_states` batches with `sluice-wire` and call
//! `sluice.ingest` concurrently on one PostgreSQL, directly and through a
//! transaction-mode pgbouncer; then each device replays its first batch
//! (must be answered "replay"). Every row must be in the cloud exactly once.
//! Prints total rows/s, p50/p99 batch latency and errors per mode.
//!
//! `SLUICE_FLEET_DEVICES` (default 100), `SLUICE_FLEET_BATCHES` per device
//! (default 3), `SLUICE_FLEET_ROWS` per batch (default 100): `cargo test`
//! runs this small fleet; `scripts/bench-fleet.sh` a bigger one.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use postgres::types::Type;
use sluice_tests::*;
use sluice_wire::{encode, BatchHeader, Column, ColumnType, EncodeOptions, Value};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Batch `b` of `device`: rows `b * rows + 1 ..= (b + 1) * rows`.
fn batch(device: usize, b: usize, rows: usize) -> Vec<u8> {
    let cols = [
        ("id", ColumnType::Integer),
        ("session_id", ColumnType::Text),
        ("camera_id", ColumnType::Text),
        ("location_id", ColumnType::Text),
        ("frame_number", ColumnType::Integer),
        ("video_ts", ColumnType::Real),
        ("recorded_at", ColumnType::Text),
        ("state", ColumnType::Text),
        ("walking_waiters", ColumnType::Integer),
        ("service_waiters", ColumnType::Integer),
        ("total_staff", ColumnType::Integer),
    ];
    let base = (b * rows) as i64;
    let versions: Vec<i64> = (base + 1..=base + rows as i64).collect();
    let mut data: Vec<Vec<Value>> = vec![Vec::with_capacity(rows); cols.len()];
    for &v in &versions {
        let cam = v % 8;
        let row = [
            Value::Integer(v),
            Value::Text(format!("s-{cam}-{}", v / 1000)),
            Value::Text(format!("cam-{cam:02}")),
            Value::Text(format!("store-{device:03}")),
            Value::Integer(v * 5),
            Value::Real(v as f64 * 0.2),
            Value::Text(iso_ms(1_795_000_000_000 + v * 200)),
            Value::Text(["RED", "YELLOW", "GREEN"][(v % 3) as usize].into()),
            Value::Integer(v % 4),
            Value::Integer(v % 3),
            Value::Integer(3 + v % 5),
        ];
        for (c, val) in row.into_iter().enumerate() {
            data[c].push(val);
        }
    }
    let header = BatchHeader {
        pulled: None,
        device_id: format!("fleet-{device:03}"),
        stream_id: 0xf1ee_7000 + device as u64,
        table: "division_states".into(),
        base_seq: base,
        last_seq: base + rows as i64,
        row_count: rows as u32,
        sent_at_ms: 1_795_000_000_000,
        columns: cols.iter().map(|(n, t)| Column::new(*n, *t)).collect(),
        fingerprint: 0,
        digest: None,
        origin: sluice_wire::Origin::default(),
        resend: 0,
        changes: None,
    };
    encode(&header, &versions, &data, EncodeOptions::default()).unwrap()
}

struct Run {
    rows: u64,
    secs: f64,
    latencies_ms: Vec<f64>,
    errors: u64,
    replays_ok: u64,
}

fn ingest(c: &mut postgres::Client, bytes: &[u8]) -> Result<(i64, bool), postgres::Error> {
    // query_typed: an unnamed statement, as a transaction-mode pooler needs.
    let row = c.query_typed(
        "SELECT inserted + updated + skipped, replay FROM sluice.ingest($1)",
        &[(&bytes, Type::BYTEA)],
    )?;
    Ok((row[0].get(0), row[0].get(1)))
}

fn run_fleet(url: &str, devices: usize, batches: usize, rows: usize) -> Run {
    let barrier = Arc::new(Barrier::new(devices + 1));
    let handles: Vec<_> = (0..devices)
        .map(|d| {
            let url = url.to_owned();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let encoded: Vec<Vec<u8>> = (0..batches).map(|b| batch(d, b, rows)).collect();
                let mut client = None;
                for _ in 0..50 {
                    match postgres::Client::connect(&url, postgres::NoTls) {
                        Ok(c) => {
                            client = Some(c);
                            break;
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
                let mut c = client.expect("device cannot connect");
                barrier.wait();
                let (mut lat, mut errors) = (Vec::new(), 0u64);
                for b in &encoded {
                    loop {
                        let t = Instant::now();
                        match ingest(&mut c, b) {
                            Ok((n, replay)) => {
                                assert_eq!(n as usize, rows);
                                assert!(!replay, "a first send was taken for a replay");
                                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                                break;
                            }
                            Err(e) => {
                                errors += 1;
                                assert!(errors < 20, "device {d}: {}", pg_error(&e));
                                std::thread::sleep(Duration::from_millis(50));
                                if c.is_closed() {
                                    c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                                }
                            }
                        }
                    }
                }
                barrier.wait();
                // The first batch again: recognised, nothing applied twice.
                let (n, replay) = ingest(&mut c, &encoded[0]).unwrap();
                (lat, errors, u64::from(replay && n as usize == rows))
            })
        })
        .collect();
    barrier.wait();
    let t0 = Instant::now();
    barrier.wait();
    let secs = t0.elapsed().as_secs_f64();
    let mut run = Run {
        rows: (devices * batches * rows) as u64,
        secs,
        latencies_ms: Vec::new(),
        errors: 0,
        replays_ok: 0,
    };
    for h in handles {
        let (lat, errors, replay) = h.join().unwrap();
        run.latencies_ms.extend(lat);
        run.errors += errors;
        run.replays_ok += replay;
    }
    run.latencies_ms.sort_by(f64::total_cmp);
    run
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let devices = env("SLUICE_FLEET_DEVICES", 100);
    let batches = env("SLUICE_FLEET_BATCHES", 3);
    let rows = env("SLUICE_FLEET_ROWS", 100);
    println!("fleet: {devices} devices x {batches} batches x {rows} rows, concurrently, per mode");
    let bouncer = Pgbouncer::start();
    let mut failed = false;
    for mode in ["direct", "pgbouncer"] {
        let cloud = CloudDb::create(&format!("fleet_{mode}"));
        let url = if mode == "direct" {
            cloud.url.clone()
        } else {
            bouncer.url(&cloud.name)
        };
        let run = run_fleet(&url, devices, batches, rows);
        let mut c = cloud.client();
        let row = c
            .query_one(
                "SELECT count(*), count(DISTINCT (sluice_device, id)), count(DISTINCT sluice_device) \
                 FROM division_states WHERE sluice_device LIKE 'fleet-%'",
                &[],
            )
            .unwrap();
        let (n, distinct, devs): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        let ok = n as u64 == run.rows
            && distinct == n
            && devs as usize == devices
            && run.replays_ok as usize == devices;
        failed |= !ok;
        println!(
            "fleet {mode:9}: {} rows in {:.2}s = {:.0} rows/s; batch latency p50 {:.1} ms, p99 {:.1} ms; \
             {} errors (retried); cloud rows {n} ({distinct} distinct, expected {}); replays recognised {}/{devices}: {}",
            run.rows,
            run.secs,
            run.rows as f64 / run.secs,
            pct(&run.latencies_ms, 0.5),
            pct(&run.latencies_ms, 0.99),
            run.errors,
            run.rows,
            run.replays_ok,
            if ok { "every row exactly once" } else { "MISMATCH" }
        );
    }
    assert!(
        !failed,
        "the fleet's rows are not all in the cloud exactly once"
    );
}
