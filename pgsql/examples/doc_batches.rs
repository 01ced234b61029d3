//! Prints, as hex, the literal batches of the examples in docs/postgres.md
//! and tests/sql/streams.sql (`cargo run -p sluice-pgsql --example
//! doc_batches`), so that they can be made again after a change of the
//! batch format. Each line: `name hex`.

use sluice_wire::{encode, BatchHeader, Column, ColumnType, EncodeOptions, Fork, Origin, Value};

struct Spec<'a> {
    name: &'a str,
    device: &'a str,
    stream: u64,
    table: &'a str,
    base_seq: i64,
    columns: Vec<Column>,
    rows: Vec<(i64, Vec<Value>)>,
    zone: &'a str,
    machine: u64,
    fork: Option<Fork>,
    resend: u32,
}

fn print(s: Spec<'_>) {
    let versions: Vec<i64> = s.rows.iter().map(|r| r.0).collect();
    let mut by_column = vec![Vec::new(); s.columns.len()];
    for (_, values) in s.rows {
        for (c, v) in values.into_iter().enumerate() {
            by_column[c].push(v);
        }
    }
    let header = BatchHeader {
        pulled: None,
        device_id: s.device.into(),
        stream_id: s.stream,
        table: s.table.into(),
        base_seq: s.base_seq,
        last_seq: versions.iter().copied().max().unwrap_or(s.base_seq),
        row_count: 0,
        // 2025-12-13 14:40:00 UTC
        sent_at_ms: 1_765_636_800_000,
        columns: s.columns,
        fingerprint: 0,
        digest: None,
        origin: Origin {
            machine: s.machine,
            zone: s.zone.into(),
            fork: s.fork,
        },
        resend: s.resend,
        changes: None,
    };
    let bytes = encode(
        &header,
        &versions,
        &by_column,
        EncodeOptions {
            brotli_quality: None,
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", s.name));
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    println!("{} {hex}", s.name);
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn main() {
    // docs/postgres.md: the table_states of box-17, now from a second edge
    // database (stream 43), twice with one identity.
    let states = || {
        vec![
            Column::new("table_id", ColumnType::Text),
            Column::new("state", ColumnType::Text),
            Column::new("customers", ColumnType::Integer),
        ]
    };
    for (name, customers) in [("doc_stream_43", 3), ("doc_stream_43_restored", 4)] {
        print(Spec {
            name,
            device: "box-17",
            stream: 43,
            table: "table_states",
            base_seq: 3,
            columns: states(),
            rows: vec![
                (4, vec![text("T1"), text("IDLE"), Value::Integer(0)]),
                (5, vec![text("T3"), text("BUSY"), Value::Integer(customers)]),
            ],
            zone: "",
            machine: 0x5eed,
            fork: None,
            resend: 0,
        });
    }
    // docs/postgres.md: the same range of stream 43 re-sent (request 1)
    // after the edge's `ALTER TABLE table_states ADD COLUMN area TEXT
    // DEFAULT 'hall'`.
    let mut with_area = states();
    with_area.push(Column::new("area", ColumnType::Text));
    print(Spec {
        name: "doc_stream_43_resend_1",
        device: "box-17",
        stream: 43,
        table: "table_states",
        base_seq: 3,
        columns: with_area,
        rows: vec![
            (
                4,
                vec![text("T1"), text("IDLE"), Value::Integer(0), text("hall")],
            ),
            (
                5,
                vec![text("T3"), text("BUSY"), Value::Integer(3), text("hall")],
            ),
        ],
        zone: "",
        machine: 0x5eed,
        fork: None,
        resend: 1,
    });
    // docs/postgres.md: zoneless local time of a box in Berlin.
    print(Spec {
        name: "doc_visits_berlin",
        device: "box-17",
        stream: 43,
        table: "visits",
        base_seq: 0,
        columns: vec![
            Column::new("id", ColumnType::Integer),
            Column::new("arrived_at", ColumnType::Text),
        ],
        rows: vec![
            (1, vec![Value::Integer(1), text("2025-12-13 14:35:00")]),
            (2, vec![Value::Integer(2), text("2025-12-13T14:35:00Z")]),
            (3, vec![Value::Integer(3), text("1765636500")]),
        ],
        zone: "Europe/Berlin",
        machine: 0x5eed,
        fork: None,
        resend: 0,
    });

    // tests/sql/streams.sql: metrics of box-9 in the default schema.
    let metrics = || {
        vec![
            Column::new("location_id", ColumnType::Text),
            Column::new("id", ColumnType::Integer),
            Column::new("camera_id", ColumnType::Text),
            Column::new("recorded_at", ColumnType::Text),
            Column::new("people_count", ColumnType::Integer),
            Column::new("processing_ms", ColumnType::Real),
        ]
    };
    let metric = |id: i64, people: i64| {
        (
            id,
            vec![
                text("store-9"),
                Value::Integer(id),
                text("cam-1"),
                text(&format!("2025-12-13 14:35:0{id}")),
                Value::Integer(people),
                Value::Real(12.5),
            ],
        )
    };
    let batch = |name, stream, base_seq, rows, zone, fork| Spec {
        name,
        device: "box-9",
        stream,
        table: "metrics",
        base_seq,
        columns: metrics(),
        rows,
        zone,
        machine: 0xabc,
        fork,
        resend: 0,
    };
    let shanghai = "Asia/Shanghai";
    print(batch(
        "m_first",
        81,
        0,
        vec![metric(1, 1), metric(2, 2), metric(3, 3)],
        shanghai,
        None,
    ));
    print(batch(
        "m_recut",
        81,
        1,
        vec![metric(2, 2), metric(3, 3)],
        shanghai,
        None,
    ));
    print(batch(
        "m_restored",
        81,
        1,
        vec![metric(2, 20), metric(3, 3), metric(4, 4)],
        shanghai,
        None,
    ));
    print(batch(
        "m_fork",
        82,
        0,
        vec![metric(1, 1), metric(2, 20), metric(3, 3), metric(4, 4)],
        shanghai,
        Some(Fork {
            parent_stream: 81,
            fork_seq: 3,
        }),
    ));
    print(batch(
        "m_bad_zone",
        83,
        0,
        vec![metric(1, 1)],
        "Mars/Olympus_Mons",
        None,
    ));
}
