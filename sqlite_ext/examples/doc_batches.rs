//! Prints, as hex, the batches of cloud changes of the examples in
//! docs/sqlite.md ("Cloud to edge"), as the cloud's `sluice.pull` makes
//! them (`cargo run -p sluice-sqlite --example doc_batches`), so that they
//! can be made again after a change of the batch format. Each line:
//! `name hex`.

use sluice_wire::{
    encode_with_deletes, BatchHeader, Changes, Column, ColumnType, EncodeOptions, Origin, Value,
};

/// The publication's stream id in the examples.
const STREAM: u64 = 0x0c10_ad00_0000_0042;

fn config(camera: &str, fps: i64, zones: &str) -> (bool, Vec<Value>) {
    (
        false,
        vec![
            Value::Text(camera.into()),
            Value::Integer(fps),
            Value::Text(zones.into()),
        ],
    )
}

fn gone(camera: &str) -> (bool, Vec<Value>) {
    (
        true,
        vec![Value::Text(camera.into()), Value::Null, Value::Null],
    )
}

fn print(name: &str, base: i64, last: i64, page: u32, rows: Vec<(bool, Vec<Value>)>) {
    let columns = vec![
        Column::new("camera_id", ColumnType::Text),
        Column::new("fps", ColumnType::Integer),
        Column::new("zones", ColumnType::Text),
    ];
    let n = rows.len();
    let versions: Vec<i64> = if page > 0 {
        vec![last; n]
    } else {
        // One change per position, the last at `last`.
        (0..n as i64).map(|i| last - (n as i64 - 1 - i)).collect()
    };
    let deleted: Vec<bool> = rows.iter().map(|r| r.0).collect();
    let mut by_col = vec![Vec::new(); columns.len()];
    for (_, values) in rows {
        for (c, v) in values.into_iter().enumerate() {
            by_col[c].push(v);
        }
    }
    let header = BatchHeader {
        pulled: None,
        device_id: "store-7-box-1".into(),
        stream_id: STREAM,
        table: "camera_configs".into(),
        base_seq: base,
        last_seq: last,
        row_count: 0,
        // 2026-12-01 12:00:00 UTC, the cloud's clock
        sent_at_ms: 1_796_126_400_000,
        fingerprint: 0,
        columns,
        digest: None,
        origin: Origin::default(),
        resend: 0,
        changes: Some(Changes {
            snapshot_page: page,
            last_page: true,
        }),
    };
    let bytes = encode_with_deletes(
        &header,
        &versions,
        &deleted,
        &by_col,
        EncodeOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    let hex: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
    println!("{name} {hex}");
}

fn main() {
    // The snapshot (one page) at checkpoint 100.
    print(
        "snapshot",
        0,
        100,
        1,
        vec![
            config("cam-1", 15, "[\"door\"]"),
            config("cam-2", 30, "[\"bar\", \"terrace\"]"),
        ],
    );
    // The changes after it: cam-1 at 25 fps, cam-2 deleted.
    print(
        "changes",
        100,
        104,
        0,
        vec![config("cam-1", 25, "[\"door\"]"), gone("cam-2")],
    );
    // Changes that follow checkpoint 110: a gap after 104.
    print("gap", 110, 112, 0, vec![config("cam-3", 10, "[]")]);
}
