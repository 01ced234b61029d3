//! Batch values as PostgreSQL text: every column of a batch travels to the
//! upsert as one `text[]` parameter and is cast to the target column's type in
//! SQL, so PostgreSQL's own input functions do the conversion (and name the
//! value when it cannot). Pure Rust, tested with ordinary `#[test]`s.
//!
//! Columns whose target type is simple travel as native arrays instead
//! ([`column_to_param`]): integers into `smallint`/`integer`/`bigint` as
//! `bigint[]`, numbers into `double precision` as `float8[]`, and UTC
//! timestamps (ISO-8601 text ending in `Z` or `+00`, or Unix times) into
//! `timestamptz` as microseconds. A column with any other value falls back to
//! text, so PostgreSQL reads, and reports, exactly what it read before.
//!
//! Two target types get a conversion of their own, because the edge stores
//! them as SQLite cannot otherwise: a BLOB going into a pgvector `vector`
//! column is a little-endian `float32` array (the edge's embeddings), and an
//! INTEGER or REAL going into a `timestamptz`/`timestamp` column is a Unix
//! time in seconds.

use sluice_wire::Value;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

/// Why a value cannot be given to PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvertError {
    /// PostgreSQL text cannot hold a NUL character.
    NulInText {
        /// The row, from 0.
        row: usize,
    },
    /// A key column is NULL: such a row could never be matched again, so a
    /// replayed or updated row would be duplicated.
    NullKey {
        /// The row, from 0.
        row: usize,
    },
    /// A blob that is not a float32 array of the vector column's dimension.
    BadVector {
        /// The row, from 0.
        row: usize,
        /// What is wrong with the blob.
        reason: String,
    },
    /// A number that is not a Unix time PostgreSQL can hold.
    BadEpoch {
        /// The row, from 0.
        row: usize,
        /// The number, as text.
        value: String,
    },
}

/// What a target column needs beyond PostgreSQL's text input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnKind {
    /// Values as text, cast by PostgreSQL.
    Plain,
    /// pgvector `vector`, with its declared dimension if any.
    Vector {
        /// The dimension of `vector(n)`, `None` for a plain `vector`.
        dims: Option<usize>,
    },
    /// `timestamptz` or `timestamp`: numbers are Unix seconds.
    Timestamp,
}

/// A target type that takes a native array parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Native {
    /// No native form: text.
    None,
    /// `smallint`, `integer`, `bigint`.
    Int,
    /// `double precision`.
    Float8,
    /// `timestamptz`.
    Timestamptz,
}

/// One column's values as the upsert's parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    /// `text[]`, cast to the column's type in SQL.
    Text(Vec<Option<String>>),
    /// `bigint[]`.
    Int8(Vec<Option<i64>>),
    /// `double precision[]`.
    Float8(Vec<Option<f64>>),
    /// Microseconds since 2000-01-01 00:00:00 UTC (PostgreSQL's `TimestampTz`).
    Timestamptz(Vec<Option<i64>>),
}

impl Param {
    /// The SQL type of the array parameter.
    pub fn array_type(&self) -> &'static str {
        match self {
            Param::Text(_) => "text[]",
            Param::Int8(_) => "bigint[]",
            Param::Float8(_) => "double precision[]",
            Param::Timestamptz(_) => "timestamptz[]",
        }
    }
}

/// Microseconds between 1970-01-01 and 2000-01-01 (PostgreSQL's epoch).
pub const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The Unix times, in seconds, that the conversions accept: years 1..9999
/// (PostgreSQL goes from 4713 BC to 294276 AD, but a clock outside this range
/// is wrong). 0001-01-01 inclusive to 10000-01-01 exclusive.
const EPOCH_RANGE: std::ops::Range<f64> = -62_135_596_800.0..253_402_300_800.0;

/// Unix seconds as microseconds since 1970-01-01, rounded to the
/// microsecond, within years 1..9999 (NaN and infinities are outside).
fn epoch_to_unix_micros(secs: f64) -> Option<i64> {
    // In range, |secs * 1e6| < 2^63: the cast cannot saturate.
    EPOCH_RANGE
        .contains(&secs)
        .then(|| (secs * 1e6).round() as i64)
}

/// Unix seconds as PostgreSQL's `TimestampTz`, rounded to the microsecond
/// as [`epoch_to_text`] rounds, within years 1..9999.
pub fn epoch_to_micros(secs: f64) -> Option<i64> {
    Some(epoch_to_unix_micros(secs)? - PG_EPOCH_MICROS)
}

/// `YYYY-MM-DD[T ]HH:MM:SS[.ffffff](Z|+00|+00:00|+0000)` as PostgreSQL's
/// `TimestampTz`; `None` for anything else (which then goes to PostgreSQL as
/// text: other zones, other spellings, leap seconds).
pub fn parse_utc_timestamp(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let d = b.get(r)?;
        d.iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut micros = 0u32;
    if b[i] == b'.' {
        let start = i + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        let digits = end - start;
        if digits == 0 || digits > 6 {
            return None;
        }
        micros = num(start..end)? * 10u32.pow((6 - digits) as u32);
        i = end;
    }
    if !matches!(&s[i..], "Z" | "+00" | "+00:00" | "+0000") {
        return None;
    }
    // Year 0 is a year for the proleptic calendar, not for this format.
    if y < 1 {
        return None;
    }
    // Both refuse what does not exist (2023-02-29, 24:00, a leap second).
    let date = Date::from_calendar_date(
        i32::try_from(y).ok()?,
        Month::try_from(u8::try_from(mo).ok()?).ok()?,
        u8::try_from(d).ok()?,
    )
    .ok()?;
    let time = Time::from_hms_micro(
        u8::try_from(h).ok()?,
        u8::try_from(mi).ok()?,
        u8::try_from(sec).ok()?,
        micros,
    )
    .ok()?;
    let unix_micros = PrimitiveDateTime::new(date, time)
        .assume_utc()
        .unix_timestamp_nanos()
        / 1000;
    i64::try_from(unix_micros).ok()?.checked_sub(PG_EPOCH_MICROS)
}

/// One column of a batch as the upsert's parameter: native when the target
/// takes it and every value fits, text otherwise (with the same errors as
/// [`column_to_texts`]).
pub fn column_to_param(
    values: &[Value],
    is_key: bool,
    kind: ColumnKind,
    native: Native,
) -> Result<Param, ConvertError> {
    let native_param = match native {
        Native::None => None,
        Native::Int => values
            .iter()
            .map(|v| match v {
                Value::Integer(i) => Some(Some(*i)),
                Value::Null if !is_key => Some(None),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(Param::Int8),
        Native::Float8 => values
            .iter()
            .map(|v| match v {
                Value::Real(f) => Some(Some(*f)),
                Value::Integer(i) => Some(Some(*i as f64)),
                Value::Null if !is_key => Some(None),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(Param::Float8),
        Native::Timestamptz => values
            .iter()
            .map(|v| match v {
                Value::Text(s) => parse_utc_timestamp(s).map(Some),
                Value::Integer(i) => epoch_to_micros(*i as f64).map(Some),
                Value::Real(f) => epoch_to_micros(*f).map(Some),
                Value::Null if !is_key => Some(None),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(Param::Timestamptz),
    };
    match native_param {
        Some(p) => Ok(p),
        None => column_to_texts(values, is_key, kind).map(Param::Text),
    }
}

/// The text PostgreSQL reads back as the same value, or `None` for NULL.
///
/// Integers and reals in decimal (reals in the shortest form that round-trips,
/// with PostgreSQL's spelling of infinities and NaN), text as is, blobs as
/// `\x` hex (the bytea input format).
pub fn value_to_text(v: &Value) -> Option<String> {
    Some(match v {
        Value::Null => return None,
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => real_to_text(*f),
        Value::Text(s) => s.clone(),
        Value::Blob(b) => blob_to_hex(b),
    })
}

fn real_to_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_owned()
    } else if f == f64::INFINITY {
        "Infinity".to_owned()
    } else if f == f64::NEG_INFINITY {
        "-Infinity".to_owned()
    } else {
        // `{}` prints the shortest decimal that reads back as the same f64.
        format!("{f}")
    }
}

fn blob_to_hex(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 + 2 * b.len());
    s.push_str("\\x");
    for &byte in b {
        s.push(HEX[usize::from(byte >> 4)] as char);
        s.push(HEX[usize::from(byte & 15)] as char);
    }
    s
}

/// A little-endian float32 array as pgvector's text form `[1,2.5,-3]`.
pub fn blob_to_vector_text(b: &[u8], dims: Option<usize>) -> Result<String, String> {
    if b.len() % 4 != 0 {
        return Err(format!(
            "a blob of {} bytes is not an array of float32 (4 bytes each)",
            b.len()
        ));
    }
    let n = b.len() / 4;
    if let Some(d) = dims {
        if n != d {
            return Err(format!(
                "expected {d} dimensions, got {n} ({} bytes)",
                b.len()
            ));
        }
    }
    if n == 0 {
        return Err("an empty blob is not a vector".into());
    }
    let mut s = String::with_capacity(2 + n * 12);
    s.push('[');
    for (i, c) in b.chunks_exact(4).enumerate() {
        let f = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        if !f.is_finite() {
            return Err(format!(
                "element {} is {f}; vectors hold finite numbers",
                i + 1
            ));
        }
        if i > 0 {
            s.push(',');
        }
        // `{}` prints the shortest decimal that reads back as the same f32.
        let _ = std::fmt::Write::write_fmt(&mut s, format_args!("{f}"));
    }
    s.push(']');
    Ok(s)
}

/// Unix seconds as a UTC timestamp PostgreSQL reads
/// (`2024-05-01 12:00:00.25+00`), to the microsecond, within years 1..9999.
pub fn epoch_to_text(secs: f64) -> Option<String> {
    let micros = epoch_to_unix_micros(secs)?;
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000).ok()?;
    let mut out = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let us = t.microsecond();
    if us != 0 {
        let frac = format!("{us:06}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push_str("+00");
    Some(out)
}

/// One column of a batch as the `text[]` parameter of the upsert.
pub fn column_to_texts(
    values: &[Value],
    is_key: bool,
    kind: ColumnKind,
) -> Result<Vec<Option<String>>, ConvertError> {
    values
        .iter()
        .enumerate()
        .map(|(row, v)| {
            match (v, kind) {
                (Value::Null, _) if is_key => return Err(ConvertError::NullKey { row }),
                (Value::Text(s), _) if s.contains('\0') => {
                    return Err(ConvertError::NulInText { row })
                }
                (Value::Blob(b), ColumnKind::Vector { dims }) => {
                    return blob_to_vector_text(b, dims)
                        .map(Some)
                        .map_err(|reason| ConvertError::BadVector { row, reason })
                }
                (Value::Integer(i), ColumnKind::Timestamp) => {
                    return epoch_to_text(*i as f64)
                        .map(Some)
                        .ok_or(ConvertError::BadEpoch {
                            row,
                            value: i.to_string(),
                        })
                }
                (Value::Real(f), ColumnKind::Timestamp) => {
                    return epoch_to_text(*f).map(Some).ok_or(ConvertError::BadEpoch {
                        row,
                        value: real_to_text(*f),
                    })
                }
                _ => {}
            }
            Ok(value_to_text(v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
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
}
