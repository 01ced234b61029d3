//! The rows every mode loads, their batches, and the statistics the modes print.

use std::time::Duration;

use sluice_wire::{encode, BatchHeader, Column, ColumnType, EncodeOptions, Value};

pub const BATCH_ROWS: usize = 1000;
pub const DEVICE: &str = "edge-bench-1";
pub const LOCATION: &str = "loc-bench";

/// One row of `division_states` as the edge has it.
pub struct Row {
    pub id: i64,
    pub session_id: String,
    pub camera_id: &'static str,
    pub frame_number: i64,
    pub video_ts: f64,
    pub recorded_at: String,
    pub state: &'static str,
    pub walking: i64,
    pub service: i64,
    pub staff: i64,
}

pub fn rows(n: usize) -> Vec<Row> {
    // 2024-05-01T08:00:00Z.
    rows_from(n, 1_714_550_400_000)
}

/// `n` rows 40 ms apart from `start_ms` (Unix ms).
pub fn rows_from(n: usize, start_ms: i64) -> Vec<Row> {
    rows_range(0, n, start_ms)
}

/// Rows `first + 1 ..= first + n` (ids), 40 ms apart from `start_ms` for row
/// `first + 1`.
pub fn rows_range(first: usize, n: usize, start_ms: i64) -> Vec<Row> {
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
pub fn iso_ms(ms: i64) -> String {
    const ISO_MS: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .expect("benchmark times are in range")
        .format(ISO_MS)
        .expect("formatting a valid time")
}

pub fn columns() -> Vec<Column> {
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
pub fn batches(rows: &[Row], stream_id: u64) -> Vec<Vec<u8>> {
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
                pulled: None,
                device_id: DEVICE.into(),
                stream_id,
                table: "division_states".into(),
                base_seq: chunk[0].id - 1,
                last_seq: chunk[chunk.len() - 1].id,
                row_count: chunk.len() as u32,
                sent_at_ms: 1_714_550_400_000,
                columns: cols.clone(),
                fingerprint: 0,
                digest: None,
                origin: sluice_wire::Origin::default(),
                resend: 0,
                changes: None,
            };
            encode(&header, &versions, &values, EncodeOptions::default()).expect("encode")
        })
        .collect()
}

/// Rows per second.
pub fn rate(rows: usize, d: Duration) -> f64 {
    rows as f64 / d.as_secs_f64()
}

/// The `p` quantile of `lat` in milliseconds (sorts it).
pub fn pct(lat: &mut [Duration], p: f64) -> f64 {
    lat.sort();
    let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
    lat[i].as_secs_f64() * 1000.0
}
