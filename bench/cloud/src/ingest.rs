//! `BENCH_MODE=ingest`: `sluice.ingest` beside COPY and a prepared multi-row
//! `INSERT ... ON CONFLICT`, then the replay.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

use postgres::Client;

use crate::common::*;

/// The tables COPY and INSERT write: `division_states` with the same
/// columns, keys and indexes, so that every method writes a table of the
/// same size at the same time.
pub const OTHERS: [&str; 3] = ["bench_copy", "bench_copy_batches", "bench_insert"];

pub fn reset(c: &mut Client) {
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

pub fn count(c: &mut Client, table: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .expect("count")
        .get(0)
}

pub fn copy_line(out: &mut String, r: &Row) {
    copy_line_of(out, r, DEVICE)
}

pub fn copy_line_of(out: &mut String, r: &Row, device: &str) {
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

pub fn copy_sql(table: &str) -> String {
    format!(
        "COPY {table} (location_id, sluice_device, id, session_id, camera_id, frame_number, \
         video_ts, recorded_at, state, walking_waiters, service_waiters, total_staff, \
         sluice_version) FROM STDIN"
    )
}

pub fn bench_ingest(c: &mut Client, batches: &[Vec<u8>]) -> (Duration, Vec<Duration>) {
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

pub fn bench_copy_stream(c: &mut Client, table: &str, rows: &[Row]) -> Duration {
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

pub fn bench_copy_batches(c: &mut Client, table: &str, rows: &[Row]) -> Duration {
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
pub fn bench_insert(c: &mut Client, table: &str, rows: &[Row]) -> Duration {
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
            " ON CONFLICT (location_id, sluice_device, sluice_stream, id) DO UPDATE SET \
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
