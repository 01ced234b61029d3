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
//! time in seconds, and so is a TEXT that is a Unix time as clocks write it
//! (`1765636500`, `1765636500.25`: [`plain_seconds`]), which PostgreSQL
//! would refuse.

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
    i64::try_from(unix_micros)
        .ok()?
        .checked_sub(PG_EPOCH_MICROS)
}

/// A text that is a Unix time in seconds as a clock writes it: 9 or 10
/// digits, optionally `.` and more digits (`1765636500`, `1765636500.25`:
/// 1973-03-03 to 2286-11-20), as the number; `None` for any other text,
/// which goes to PostgreSQL as text. Shorter and longer digit strings are
/// left to PostgreSQL, which reads some of them as dates (`20251213`,
/// `251213`, `20251213143500`); milliseconds (13 digits) are not guessed.
pub fn plain_seconds(s: &str) -> Option<f64> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit());
    if !(9..=10).contains(&int.len()) || !all_digits(int) || !frac.is_none_or(all_digits) {
        return None;
    }
    s.parse().ok()
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
        Native::Int => native_values(values, is_key, |v| match v {
            Value::Integer(i) => Some(*i),
            _ => None,
        })
        .map(Param::Int8),
        Native::Float8 => native_values(values, is_key, |v| match v {
            Value::Real(f) => Some(*f),
            Value::Integer(i) => Some(*i as f64),
            _ => None,
        })
        .map(Param::Float8),
        Native::Timestamptz => native_values(values, is_key, |v| match v {
            Value::Text(s) => {
                parse_utc_timestamp(s).or_else(|| plain_seconds(s).and_then(epoch_to_micros))
            }
            Value::Integer(i) => epoch_to_micros(*i as f64),
            Value::Real(f) => epoch_to_micros(*f),
            _ => None,
        })
        .map(Param::Timestamptz),
    };
    match native_param {
        Some(p) => Ok(p),
        None => column_to_texts(values, is_key, kind).map(Param::Text),
    }
}

/// Every value through `native`, NULLs as NULL outside the key; `None` when
/// one value has no native form (or a key is NULL): the column goes as text.
fn native_values<T>(
    values: &[Value],
    is_key: bool,
    native: impl Fn(&Value) -> Option<T>,
) -> Option<Vec<Option<T>>> {
    values
        .iter()
        .map(|v| match v {
            Value::Null if is_key => None,
            Value::Null => Some(None),
            v => native(v).map(Some),
        })
        .collect()
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
                (Value::Text(s), ColumnKind::Timestamp) => {
                    if let Some(secs) = plain_seconds(s) {
                        return epoch_to_text(secs).map(Some).ok_or_else(|| {
                            ConvertError::BadEpoch {
                                row,
                                value: s.clone(),
                            }
                        });
                    }
                }
                _ => {}
            }
            Ok(value_to_text(v))
        })
        .collect()
}

#[cfg(test)]
mod tests;
