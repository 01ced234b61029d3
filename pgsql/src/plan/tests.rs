//! The column plan without a database: catalog rows are written by hand as
//! `CATALOG_COLUMNS_SQL` returns them.

use sluice_wire::{column_fingerprint, Batch, BatchHeader, Column, ColumnType, Value};

use super::*;

fn batch(columns: &[(&str, ColumnType)], rows: Vec<Vec<Value>>) -> Batch {
    let columns: Vec<Column> = columns.iter().map(|(n, t)| Column::new(*n, *t)).collect();
    let mut by_column = vec![Vec::new(); columns.len()];
    for row in &rows {
        for (c, v) in row.iter().enumerate() {
            by_column[c].push(v.clone());
        }
    }
    Batch {
        header: BatchHeader {
            pulled: None,
            device_id: "cam-1".into(),
            stream_id: 7,
            table: "readings".into(),
            base_seq: 0,
            last_seq: rows.len() as i64,
            row_count: rows.len() as u32,
            sent_at_ms: 0,
            fingerprint: column_fingerprint(&columns),
            digest: None,
            origin: sluice_wire::Origin::default(),
            columns,
            resend: 0,
            changes: None,
        },
        versions: (1..=rows.len() as i64).collect(),
        deleted: Vec::new(),
        columns: by_column,
        checksum: 0,
    }
}

fn catalog(name: &str, type_sql: &str, class: &str, native: &str) -> CatalogColumn {
    CatalogColumn::from_row(
        name.into(),
        Some(type_sql.into()),
        Some(false),
        Some(class),
        Some(-1),
        Some(native),
        Some(type_sql.into()),
    )
}

fn keys(k: &[&str]) -> Vec<String> {
    k.iter().map(|s| s.to_string()).collect()
}

/// `(loc text, id bigint, x double precision)` keyed by `keys`.
fn plan(key: &[&str]) -> ColumnPlan {
    let b = batch(
        &[
            ("loc", ColumnType::Text),
            ("id", ColumnType::Integer),
            ("x", ColumnType::Real),
        ],
        vec![],
    );
    ColumnPlan::new(
        BatchColumns::new(&b.header.columns).unwrap(),
        vec![
            catalog("loc", "text", "plain", ""),
            catalog("id", "bigint", "plain", "int"),
            catalog("x", "double precision", "plain", "float8"),
        ],
        &keys(key),
    )
    .unwrap()
}

fn row(loc: &str, id: i64, x: f64) -> Vec<Value> {
    vec![Value::Text(loc.into()), Value::Integer(id), Value::Real(x)]
}

fn shaped(p: &ColumnPlan, rows: Vec<Vec<Value>>) -> Option<KeyShape> {
    let b = batch(
        &[
            ("loc", ColumnType::Text),
            ("id", ColumnType::Integer),
            ("x", ColumnType::Real),
        ],
        rows,
    );
    let params = p.params(&b).unwrap();
    p.key_shape(&b, &params)
}

#[test]
fn bookkeeping_columns_are_left_out_and_a_column_named_twice_is_refused() {
    let cols = [
        Column::new("id", ColumnType::Integer),
        Column::new(VERSION_COLUMN, ColumnType::Integer),
        Column::new("x", ColumnType::Text),
        Column::new(DEVICE_COLUMN, ColumnType::Text),
    ];
    let b = BatchColumns::new(&cols).unwrap();
    assert_eq!(b.names, ["id", "x"]);
    assert_eq!(b.batch_index, [0, 2]);
    let twice = [
        Column::new("id", ColumnType::Integer),
        Column::new("id", ColumnType::Text),
    ];
    assert_eq!(
        BatchColumns::new(&twice),
        Err(PlanError::DuplicateColumn {
            column: "id".into()
        })
    );
}

#[test]
fn catalog_rows_classify_types() {
    let v = CatalogColumn::from_row(
        "e".into(),
        Some("vector".into()),
        Some(false),
        Some("vector"),
        Some(384),
        Some(""),
        Some("vector(384)".into()),
    );
    assert_eq!(v.kind, ColumnKind::Vector { dims: Some(384) });
    assert_eq!(v.native, Native::None);
    let v = CatalogColumn::from_row("e".into(), None, None, None, None, None, None);
    assert_eq!(v.kind, ColumnKind::Plain);
    assert!(!v.generated);
    assert_eq!(
        catalog("e", "vector", "vector", "").kind,
        ColumnKind::Vector { dims: None }
    );
    assert_eq!(
        catalog("t", "timestamp with time zone", "timestamp", "timestamptz").native,
        Native::Timestamptz
    );
    assert_eq!(
        catalog("t", "timestamp without time zone", "timestamp", "").kind,
        ColumnKind::Timestamp
    );
    assert_eq!(catalog("i", "smallint", "plain", "int").native, Native::Int);
}

#[test]
fn plan_maps_columns_and_keys() {
    let p = plan(&["loc", DEVICE_COLUMN, "id"]);
    assert_eq!(p.keys, [0, 1]);
    assert!(p.device_key);
    assert_eq!(p.natives, [Native::None, Native::Int, Native::Float8]);
    assert_eq!(p.columns[2].type_sql, "double precision");
    assert_eq!(plan(&["id"]).keys, [1]);
    assert!(!plan(&["id"]).device_key);
}

#[test]
fn plan_refusals_name_the_column_and_the_target() {
    let cols = [
        Column::new("id", ColumnType::Integer),
        Column::new("g", ColumnType::Integer),
    ];
    let bc = || BatchColumns::new(&cols).unwrap();
    let id = batch(&[("id", ColumnType::Integer)], vec![]).header.id();

    let missing = ColumnPlan::new(
        bc(),
        vec![
            catalog("id", "bigint", "plain", "int"),
            CatalogColumn::from_row("g".into(), None, None, None, None, None, None),
        ],
        &keys(&["id"]),
    )
    .unwrap_err();
    assert_eq!(missing, PlanError::MissingColumn { column: "g".into() });
    assert_eq!(missing.sqlstate().code(), "42703");
    assert_eq!(
        missing.message(&id, "public.t"),
        format!("batch {id}: column 'g' does not exist in target table public.t; add it to the table or exclude it at the edge")
    );

    let mut generated = catalog("g", "integer", "plain", "int");
    generated.generated = true;
    let e = ColumnPlan::new(
        bc(),
        vec![catalog("id", "bigint", "plain", "int"), generated],
        &keys(&["id"]),
    )
    .unwrap_err();
    assert_eq!(e.sqlstate(), SqlState::GeneratedAlways);
    assert_eq!(
        e.message(&id, "public.t"),
        format!(
            "batch {id}: column 'g' of target table public.t is generated and cannot be written"
        )
    );

    let e = ColumnPlan::new(
        bc(),
        vec![
            catalog("id", "bigint", "plain", "int"),
            catalog("g", "integer", "plain", "int"),
        ],
        &keys(&["id", "site"]),
    )
    .unwrap_err();
    assert_eq!(
        e,
        PlanError::MissingKey {
            column: "site".into()
        }
    );
    assert_eq!(
        e.message(&id, "public.t"),
        format!("batch {id}: key column 'site' of target table public.t is not in the batch")
    );

    let e = ColumnPlan::new(
        bc(),
        vec![catalog("id", "bigint", "plain", "int")],
        &keys(&["id"]),
    )
    .unwrap_err();
    assert_eq!(e, PlanError::CatalogMismatch { names: 2, rows: 1 });
    assert_eq!(e.sqlstate().code(), "XX000");
}

#[test]
fn params_name_the_column_of_a_bad_value() {
    let p = plan(&["loc", "id"]);
    let b = batch(
        &[
            ("loc", ColumnType::Text),
            ("id", ColumnType::Integer),
            ("x", ColumnType::Real),
        ],
        vec![
            row("a", 1, 0.5),
            vec![Value::Text("a".into()), Value::Null, Value::Null],
        ],
    );
    let e = p.params(&b).unwrap_err();
    assert_eq!(
        e,
        PlanError::Convert {
            column: "id".into(),
            error: ConvertError::NullKey { row: 1 }
        }
    );
    assert_eq!(e.sqlstate().code(), "23502");
    let id = b.header.id();
    assert_eq!(
        e.message(&id, "public.t"),
        format!("batch {id}, row 2: key column 'id' is NULL")
    );
    // A NULL outside the key is a NULL.
    let b = batch(
        &[
            ("loc", ColumnType::Text),
            ("id", ColumnType::Integer),
            ("x", ColumnType::Real),
        ],
        vec![vec![
            Value::Text("a\0".into()),
            Value::Integer(1),
            Value::Null,
        ]],
    );
    let e = p.params(&b).unwrap_err();
    assert_eq!(e.sqlstate(), SqlState::UntranslatableCharacter);
    assert!(e
        .message(&id, "public.t")
        .contains("row 1, column 'loc': text contains a NUL character"));
}

#[test]
fn one_tenant_and_increasing_ids_are_a_range() {
    let p = plan(&["loc", "id"]);
    let s = shaped(
        &p,
        vec![row("a", 3, 0.0), row("a", 4, 0.0), row("a", 9, 0.0)],
    )
    .unwrap();
    assert_eq!(s.consts, [(0, "a".to_string())]);
    assert_eq!(s.range, Some((1, 3, 9)));
    assert!(s.distinct);
    assert_eq!(s.const_columns(), [0]);
    // Out of order but distinct.
    let s = shaped(&p, vec![row("a", 9, 0.0), row("a", 3, 0.0)]).unwrap();
    assert_eq!(s.range, Some((1, 3, 9)));
    assert!(s.distinct);
    // The same key twice.
    let s = shaped(
        &p,
        vec![row("a", 3, 0.0), row("a", 4, 0.0), row("a", 3, 1.0)],
    )
    .unwrap();
    assert!(!s.distinct);
}

#[test]
fn other_key_shapes_take_the_upsert() {
    let p = plan(&["loc", "id"]);
    // Two tenants and two ids: two varying key columns.
    assert_eq!(shaped(&p, vec![row("a", 1, 0.0), row("b", 2, 0.0)]), None);
    // A varying text key is not a range.
    assert_eq!(shaped(&p, vec![row("a", 1, 0.0), row("b", 1, 0.0)]), None);
    // No rows.
    assert_eq!(shaped(&p, vec![]), None);
    // One row: constant keys, distinct; two rows of one key: not distinct.
    let s = shaped(&p, vec![row("a", 1, 0.0)]).unwrap();
    assert_eq!(s.range, None);
    assert_eq!(s.consts, [(0, "a".to_string()), (1, "1".to_string())]);
    assert!(s.distinct);
    let s = shaped(&p, vec![row("a", 1, 0.0), row("a", 1, 2.0)]).unwrap();
    assert!(!s.distinct);
}

#[test]
fn lock_keys_separate_targets_tenants_and_devices() {
    let p = plan(&["loc", "id"]);
    let a = shaped(&p, vec![row("a", 1, 0.0), row("a", 2, 0.0)]).unwrap();
    let a_again = shaped(&p, vec![row("a", 5, 0.0), row("a", 9, 0.0)]).unwrap();
    let b = shaped(&p, vec![row("b", 1, 0.0), row("b", 2, 0.0)]).unwrap();
    assert_eq!(
        a.lock_key(16384, None, None),
        a_again.lock_key(16384, None, None)
    );
    assert_ne!(a.lock_key(16384, None, None), b.lock_key(16384, None, None));
    assert_ne!(a.lock_key(16384, None, None), a.lock_key(16385, None, None));
    assert_ne!(
        a.lock_key(16384, Some("cam-1"), None),
        a.lock_key(16384, Some("cam-2"), None)
    );
    assert_ne!(
        a.lock_key(16384, Some("cam-1"), None),
        a.lock_key(16384, None, None)
    );
    // Rows of another stream (an epoch of the edge database) have other keys.
    assert_ne!(
        a.lock_key(16384, Some("cam-1"), Some(7)),
        a.lock_key(16384, Some("cam-1"), Some(8))
    );
    assert_ne!(
        a.lock_key(16384, Some("cam-1"), Some(7)),
        a.lock_key(16384, Some("cam-1"), None)
    );
}

#[test]
fn the_stream_joins_the_key_or_is_written_beside_it() {
    let p = plan(&["loc", DEVICE_COLUMN, STREAM_COLUMN, "id"]);
    assert_eq!(p.keys, [0, 1]);
    assert_eq!(p.stream, StreamColumn::Key);
    let p = p.with_stream_column(true).unwrap();
    assert_eq!(
        p.bookkeeping(),
        Bookkeeping {
            device_key: true,
            stream: StreamColumn::Key
        }
    );
    // A key the target lost since it was registered.
    assert_eq!(
        plan(&["loc", STREAM_COLUMN, "id"])
            .with_stream_column(false)
            .unwrap_err(),
        PlanError::MissingKey {
            column: STREAM_COLUMN.into()
        }
    );
    // Outside the key: written with every row.
    let p = plan(&["loc", "id"]).with_stream_column(true).unwrap();
    assert_eq!(p.stream, StreamColumn::Column);
    let p = plan(&["loc", "id"]).with_stream_column(false).unwrap();
    assert_eq!(p.stream, StreamColumn::None);
    // A batch column of that name is bookkeeping, like sluice_device.
    let cols = [
        Column::new("id", ColumnType::Integer),
        Column::new(STREAM_COLUMN, ColumnType::Integer),
    ];
    assert_eq!(BatchColumns::new(&cols).unwrap().names, ["id"]);
}

#[test]
fn sqlstates_are_five_characters() {
    for s in [
        SqlState::DataException,
        SqlState::DatetimeFieldOverflow,
        SqlState::UntranslatableCharacter,
        SqlState::InvalidParameterValue,
        SqlState::NotNullViolation,
        SqlState::UndefinedColumn,
        SqlState::GeneratedAlways,
        SqlState::InternalError,
        SqlState::DataCorrupted,
    ] {
        assert_eq!(s.code().len(), 5, "{s:?}");
        assert_eq!(s.to_string(), s.code());
    }
}

#[test]
fn lock_key_is_pinned() {
    let s = KeyShape {
        consts: vec![(0, "site-a".into())],
        range: Some((1, 1, 9)),
        distinct: true,
    };
    // FNV-1a of "sluice.ingest", the OID's bytes, "site-a" (and "cam-1"),
    // each followed by a 0 byte: the key of the releases before this one,
    // so that two versions of the library never take different locks.
    assert_eq!(s.lock_key(16384, None, None), -8_039_552_780_182_160_623);
    assert_eq!(
        s.lock_key(16384, Some("cam-1"), None),
        6_227_322_318_620_800_638
    );
}

#[test]
fn a_bad_time_is_found_by_the_value_postgresql_quotes() {
    assert_eq!(
        quoted_value(r#"invalid input syntax for type timestamp with time zone: "yesterday-ish""#)
            .as_deref(),
        Some("yesterday-ish")
    );
    assert_eq!(
        quoted_value(r#"date/time field value out of range: "2025-13-45 10:00""#).as_deref(),
        Some("2025-13-45 10:00")
    );
    // A value with a quote and a colon in it: the last `: "` starts it.
    assert_eq!(
        quoted_value(r#"invalid input syntax for type timestamp: "a: "b""#).as_deref(),
        Some("b")
    );
    assert_eq!(quoted_value("timestamp out of range"), None);

    let b = batch(
        &[("id", ColumnType::Integer), ("at", ColumnType::Text)],
        vec![
            vec![Value::Integer(1), Value::Text("2025-12-13 14:35:00".into())],
            vec![Value::Integer(2), Value::Text("yesterday-ish".into())],
        ],
    );
    let p = ColumnPlan::new(
        BatchColumns::new(&b.header.columns).unwrap(),
        vec![
            catalog("id", "bigint", "plain", "int"),
            catalog("at", "timestamp with time zone", "timestamp", "timestamptz"),
        ],
        &keys(&["id"]),
    )
    .unwrap();
    let params = p.params(&b).unwrap();
    assert_eq!(p.find_time_text(&params, "yesterday-ish"), Some(("at", 1)));
    assert_eq!(p.find_time_text(&params, "2"), None, "not a time column");
    assert_eq!(p.find_time_text(&params, "tomorrow"), None);
    assert_eq!(
        bad_time_message(&b.header.id(), "public.t", "at", 1, "invalid input syntax"),
        "batch cam-1/readings/0000000000000007 (0, 2], row 2, column 'at' of public.t: invalid input syntax"
    );
}
