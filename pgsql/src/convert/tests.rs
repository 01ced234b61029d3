//! Conversions without a database: what PostgreSQL reads back.

use super::*;

#[test]
fn integers_and_nulls() {
    assert_eq!(value_to_text(&Value::Null), None);
    assert_eq!(value_to_text(&Value::Integer(-42)).as_deref(), Some("-42"));
    assert_eq!(
        value_to_text(&Value::Integer(i64::MIN)).as_deref(),
        Some("-9223372036854775808")
    );
}

#[test]
fn reals_round_trip() {
    for f in [
        0.1,
        -2.5e-300,
        1e300,
        123456.789,
        f64::MIN_POSITIVE,
        f64::MAX,
        0.0,
        -0.0,
    ] {
        let s = value_to_text(&Value::Real(f)).unwrap();
        assert_eq!(s.parse::<f64>().unwrap().to_bits(), f.to_bits(), "{s}");
    }
    assert_eq!(value_to_text(&Value::Real(0.1)).as_deref(), Some("0.1"));
    assert_eq!(
        value_to_text(&Value::Real(f64::NAN)).as_deref(),
        Some("NaN")
    );
    assert_eq!(
        value_to_text(&Value::Real(f64::INFINITY)).as_deref(),
        Some("Infinity")
    );
    assert_eq!(
        value_to_text(&Value::Real(f64::NEG_INFINITY)).as_deref(),
        Some("-Infinity")
    );
}

#[test]
fn text_and_blobs() {
    assert_eq!(
        value_to_text(&Value::Text("héllo 'x'".into())).as_deref(),
        Some("héllo 'x'")
    );
    assert_eq!(
        value_to_text(&Value::Blob(vec![0, 0xab, 0xff, 0x10])).as_deref(),
        Some("\\x00abff10")
    );
    assert_eq!(value_to_text(&Value::Blob(vec![])).as_deref(), Some("\\x"));
}

#[test]
fn columns_refuse_nul_text_and_null_keys() {
    let col = vec![Value::Integer(1), Value::Null];
    assert_eq!(
        column_to_texts(&col, false, ColumnKind::Plain).unwrap(),
        vec![Some("1".to_owned()), None]
    );
    assert_eq!(
        column_to_texts(&col, true, ColumnKind::Plain),
        Err(ConvertError::NullKey { row: 1 })
    );
    let col = vec![Value::Text("a\0b".into())];
    assert_eq!(
        column_to_texts(&col, false, ColumnKind::Plain),
        Err(ConvertError::NulInText { row: 0 })
    );
}

#[test]
fn blobs_become_vectors() {
    let b: Vec<u8> = [0.5f32, -1.25, 3.0e-8]
        .iter()
        .flat_map(|f| f.to_le_bytes())
        .collect();
    assert_eq!(
        blob_to_vector_text(&b, Some(3)).unwrap(),
        "[0.5,-1.25,0.00000003]"
    );
    assert_eq!(
        blob_to_vector_text(&b, None).unwrap(),
        "[0.5,-1.25,0.00000003]"
    );
    assert_eq!(
        blob_to_vector_text(&b, Some(384)).unwrap_err(),
        "expected 384 dimensions, got 3 (12 bytes)"
    );
    assert!(blob_to_vector_text(&b[..5], None)
        .unwrap_err()
        .contains("5 bytes"));
    let nan = f32::NAN.to_le_bytes();
    assert!(blob_to_vector_text(&nan, None)
        .unwrap_err()
        .contains("element 1"));
    let col = vec![
        Value::Blob(b.clone()),
        Value::Text("[1,2,3]".into()),
        Value::Null,
    ];
    assert_eq!(
        column_to_texts(&col, false, ColumnKind::Vector { dims: Some(3) }).unwrap(),
        vec![
            Some("[0.5,-1.25,0.00000003]".into()),
            Some("[1,2,3]".into()),
            None
        ]
    );
    assert!(matches!(
        column_to_texts(&col, false, ColumnKind::Vector { dims: Some(2) }),
        Err(ConvertError::BadVector { row: 0, .. })
    ));
}

#[test]
fn utc_timestamps_parse_as_postgresql_reads_them() {
    // 2000-01-01 is PostgreSQL's zero.
    assert_eq!(parse_utc_timestamp("2000-01-01T00:00:00Z"), Some(0));
    assert_eq!(
        parse_utc_timestamp("2024-05-01T12:00:00.040Z"),
        Some((1_714_564_800_000_000 + 40_000) - PG_EPOCH_MICROS)
    );
    assert_eq!(
        parse_utc_timestamp("2024-05-01 12:00:00.25+00"),
        Some(1_714_564_800_250_000 - PG_EPOCH_MICROS)
    );
    assert_eq!(
        parse_utc_timestamp("2000-02-29T00:00:00.000001+00:00"),
        Some(59 * 86_400_000_000 + 1)
    );
    assert_eq!(
        parse_utc_timestamp("1969-12-31T23:59:58.5Z"),
        Some(-1_500_000 - PG_EPOCH_MICROS)
    );
    for s in [
        "2024-05-01T12:00:00",          // no zone: the session's TimeZone
        "2024-05-01T12:00:00+02",       // another zone
        "2024-05-01T12:00:00.1234567Z", // more than microseconds
        "2023-02-29T00:00:00Z",         // no such day
        "2024-05-01T24:00:00Z",
        "2024-05-01T12:00:60Z", // leap second
        "0000-01-01T00:00:00Z",
        "2024-05-01T12:00:00.Z",
        "yesterday-ish",
        "2024-05-01T12:00:00Z ",
    ] {
        assert_eq!(parse_utc_timestamp(s), None, "{s}");
    }
}

#[test]
fn native_params_or_text() {
    let ints = vec![Value::Integer(1), Value::Null];
    assert_eq!(
        column_to_param(&ints, false, ColumnKind::Plain, Native::Int).unwrap(),
        Param::Int8(vec![Some(1), None])
    );
    // A NULL key is the same error as on the text path.
    assert_eq!(
        column_to_param(&ints, true, ColumnKind::Plain, Native::Int),
        Err(ConvertError::NullKey { row: 1 })
    );
    let mixed = vec![Value::Integer(1), Value::Text("2".into())];
    assert_eq!(
        column_to_param(&mixed, false, ColumnKind::Plain, Native::Int).unwrap(),
        Param::Text(vec![Some("1".into()), Some("2".into())])
    );
    let reals = vec![Value::Real(0.5), Value::Integer(2)];
    assert_eq!(
        column_to_param(&reals, false, ColumnKind::Plain, Native::Float8).unwrap(),
        Param::Float8(vec![Some(0.5), Some(2.0)])
    );
    let times = vec![
        Value::Text("2000-01-01T00:00:01Z".into()),
        Value::Integer(946_684_802),
        Value::Null,
    ];
    assert_eq!(
        column_to_param(&times, false, ColumnKind::Timestamp, Native::Timestamptz).unwrap(),
        Param::Timestamptz(vec![Some(1_000_000), Some(2_000_000), None])
    );
    let local = vec![Value::Text("2000-01-01 00:00:01".into())];
    assert_eq!(
        column_to_param(&local, false, ColumnKind::Timestamp, Native::Timestamptz).unwrap(),
        Param::Text(vec![Some("2000-01-01 00:00:01".into())])
    );
}

#[test]
fn the_ends_of_years_1_to_9999() {
    let first = -62_135_596_800.0;
    assert_eq!(epoch_to_text(first).unwrap(), "0001-01-01 00:00:00+00");
    assert_eq!(epoch_to_text(first - 1.0), None);
    assert_eq!(
        epoch_to_text(253_402_300_799.5).unwrap(),
        "9999-12-31 23:59:59.5+00"
    );
    assert_eq!(epoch_to_text(253_402_300_800.0), None);
    assert_eq!(epoch_to_micros(253_402_300_800.0), None);
    assert_eq!(
        parse_utc_timestamp("0001-01-01T00:00:00Z"),
        epoch_to_micros(first)
    );
    assert_eq!(
        parse_utc_timestamp("9999-12-31T23:59:59.999999Z"),
        Some(253_402_300_799_999_999 - PG_EPOCH_MICROS)
    );
}

#[test]
fn text_and_micros_of_an_epoch_agree() {
    // Every day of four years around a leap day and the epochs, at a
    // time with a fraction: epoch_to_text reads back through
    // parse_utc_timestamp as epoch_to_micros.
    for start in [-2_208_988_800i64, -86_400 * 800, 946_684_800, 4_102_444_800] {
        for day in 0..(4 * 366) {
            let secs = (start + day * 86_400 + 45_296) as f64 + 0.125;
            let text = epoch_to_text(secs).unwrap().replacen(' ', "T", 1);
            assert_eq!(parse_utc_timestamp(&text), epoch_to_micros(secs), "{text}");
        }
    }
}

#[test]
fn numbers_become_timestamps() {
    assert_eq!(epoch_to_text(0.0).unwrap(), "1970-01-01 00:00:00+00");
    assert_eq!(
        epoch_to_text(1_714_564_800.0).unwrap(),
        "2024-05-01 12:00:00+00"
    );
    assert_eq!(
        epoch_to_text(1_714_564_800.25).unwrap(),
        "2024-05-01 12:00:00.25+00"
    );
    assert_eq!(epoch_to_text(-1.5).unwrap(), "1969-12-31 23:59:58.5+00");
    assert_eq!(
        epoch_to_text(951_782_400.0).unwrap(),
        "2000-02-29 00:00:00+00"
    );
    assert_eq!(epoch_to_text(f64::NAN), None);
    assert_eq!(epoch_to_text(1e300), None);
    let col = vec![Value::Integer(86_400), Value::Text("2024-01-01".into())];
    assert_eq!(
        column_to_texts(&col, false, ColumnKind::Timestamp).unwrap(),
        vec![
            Some("1970-01-02 00:00:00+00".into()),
            Some("2024-01-01".into())
        ]
    );
}

#[test]
fn plain_numbers_in_text_are_unix_seconds() {
    for (s, v) in [
        ("1765636500", Some(1_765_636_500.0)),
        ("1765636500.25", Some(1_765_636_500.25)),
        ("100000000", Some(100_000_000.0)),
        ("9999999999.999", Some(9_999_999_999.999)),
    ] {
        assert_eq!(plain_seconds(s), v, "{s}");
    }
    for s in [
        "",
        "-",
        ".5",
        "5.",
        "1e9",
        "+5",
        " 5",
        "5 ",
        "0x10",
        "1,5",
        "NaN",
        "inf",
        "2025-12-13",
        "12:00",
        "1.2.3",
        // Digit strings PostgreSQL reads as dates stay its own.
        "20251213",
        "251213",
        "20251213143500",
        // Negative, short, or milliseconds: not guessed.
        "-86400",
        "0",
        "1765636500123",
    ] {
        assert_eq!(plain_seconds(s), None, "{s}");
    }
    // Into timestamptz: native microseconds, beside ISO text.
    let times = vec![
        Value::Text("946684801".into()),
        Value::Text("946684801.5".into()),
        Value::Text("2000-01-01T00:00:03Z".into()),
    ];
    assert_eq!(
        column_to_param(&times, false, ColumnKind::Timestamp, Native::Timestamptz).unwrap(),
        Param::Timestamptz(vec![Some(1_000_000), Some(1_500_000), Some(3_000_000)])
    );
    // Beside zoneless text, the column goes as text: the number as a UTC time.
    let mixed = vec![
        Value::Text("1765636500".into()),
        Value::Text("2025-12-13 14:35:00".into()),
    ];
    assert_eq!(
        column_to_param(&mixed, false, ColumnKind::Timestamp, Native::Timestamptz).unwrap(),
        Param::Text(vec![
            Some("2025-12-13 14:35:00+00".into()),
            Some("2025-12-13 14:35:00".into())
        ])
    );
    // Into timestamp (without zone): the UTC wall-clock time.
    assert_eq!(
        column_to_texts(
            &[Value::Text("1765636500.25".into())],
            false,
            ColumnKind::Timestamp
        )
        .unwrap(),
        vec![Some("2025-12-13 14:35:00.25+00".into())]
    );
    // A digit string that is no Unix time as clocks write it goes to
    // PostgreSQL as it is (which reads 14 digits as a concatenated date and
    // time, and names a value it cannot read), on both paths.
    let far = vec![Value::Text("99999999999999".into())];
    for native in [Native::Timestamptz, Native::None] {
        assert_eq!(
            column_to_param(&far, false, ColumnKind::Timestamp, native),
            Ok(Param::Text(vec![Some("99999999999999".into())]))
        );
    }
    // Into a text column, a number stays text.
    assert_eq!(
        column_to_texts(
            &[Value::Text("1765636500".into())],
            false,
            ColumnKind::Plain
        )
        .unwrap(),
        vec![Some("1765636500".into())]
    );
}
