//! The columnar body: the per-row versions (zigzag deltas from the base
//! sequence), then for each column one tag per row and its values (integers
//! as zigzag deltas, reals as short decimals or their 8 bytes, text
//! front-coded against the column's previous value, blobs length-prefixed).
//! Decoding never panics and allocates only what the input justifies.

use crate::codec::{self, Reader};
use crate::error::WireError;

use super::model::{BatchHeader, Value};

/// Row operation byte of a row that is written (inserted or updated).
pub(super) const OP_UPSERT: u8 = 0;
/// Row operation byte of a row that was deleted (a tombstone).
pub(super) const OP_DELETE: u8 = 1;

/// The body of `versions` and `columns`; with `deleted` non-empty (one flag
/// per row), the row operations follow the versions.
pub(super) fn encode_body(
    base_seq: i64,
    versions: &[i64],
    deleted: &[bool],
    columns: &[Vec<Value>],
) -> Vec<u8> {
    let mut body = Vec::with_capacity(versions.len() * (2 + 4 * columns.len()));
    let mut prev = base_seq;
    for &v in versions {
        codec::put_zigzag(&mut body, v.wrapping_sub(prev));
        prev = v;
    }
    body.extend(
        deleted
            .iter()
            .map(|&d| if d { OP_DELETE } else { OP_UPSERT }),
    );
    for col in columns {
        body.extend(col.iter().map(Value::tag));
        let mut prev_int: i64 = 0;
        let mut prev_mantissa: i64 = 0;
        let mut prev_text: &[u8] = &[];
        for v in col {
            match v {
                Value::Null => {}
                Value::Integer(i) => {
                    codec::put_zigzag(&mut body, i.wrapping_sub(prev_int));
                    prev_int = *i;
                }
                Value::Real(f) => match decimal(*f) {
                    Some((mantissa, scale)) => {
                        body.push(scale);
                        codec::put_zigzag(&mut body, mantissa.wrapping_sub(prev_mantissa));
                        prev_mantissa = mantissa;
                    }
                    None => {
                        body.push(REAL_RAW);
                        codec::put_u64(&mut body, f.to_bits());
                    }
                },
                Value::Text(s) => {
                    let b = s.as_bytes();
                    let mut shared = b.iter().zip(prev_text).take_while(|(x, y)| x == y).count();
                    while !s.is_char_boundary(shared) {
                        shared -= 1;
                    }
                    codec::put_varint(&mut body, shared as u64);
                    codec::put_bytes_varint(&mut body, &b[shared..]);
                    prev_text = b;
                }
                Value::Blob(b) => codec::put_bytes_varint(&mut body, b),
            }
        }
    }
    body
}

/// A real stored as its 8-byte bit pattern (not a short decimal).
const REAL_RAW: u8 = 0xff;
/// Most decimal places a real is tried with.
const MAX_DECIMAL_SCALE: u8 = 9;

/// `f` as `mantissa / 10^scale` with the smallest scale that gives back
/// exactly the same bits, for reals that are short decimals (sensor readings,
/// seconds with milliseconds). `None` for the rest (NaN, infinities, -0.0,
/// long fractions, magnitudes beyond 2^53).
pub(super) fn decimal(f: f64) -> Option<(i64, u8)> {
    if !f.is_finite() || (f == 0.0 && f.is_sign_negative()) {
        return None;
    }
    let mut pow = 1.0f64;
    for scale in 0..=MAX_DECIMAL_SCALE {
        let m = (f * pow).round();
        if m.abs() < 9_007_199_254_740_992.0 && (m / pow).to_bits() == f.to_bits() {
            return Some((m as i64, scale));
        }
        pow *= 10.0;
    }
    None
}

/// The rows of a body: versions, delete flags (empty when no row is a
/// delete) and the values by column.
pub(super) type Rows = (Vec<i64>, Vec<bool>, Vec<Vec<Value>>);

/// Decodes a body; `ops`: it carries the row operations (frame flag bit 2).
pub(super) fn decode_body(
    header: &BatchHeader,
    body: &[u8],
    compact: bool,
    ops: bool,
) -> Result<Rows, WireError> {
    let rows = header.row_count as usize;
    // Every row costs at least one byte of versions, so a row count larger
    // than the body is a lie: refuse it before allocating for it.
    if rows > body.len() {
        return Err(WireError::malformed(format!(
            "the header claims {rows} rows but the body has only {} bytes",
            body.len()
        )));
    }
    let mut r = Reader::new(body);
    let mut versions = Vec::with_capacity(rows);
    let mut prev = header.base_seq;
    for _ in 0..rows {
        let v = prev.wrapping_add(r.zigzag("row versions")?);
        if v <= header.base_seq || v > header.last_seq {
            return Err(WireError::malformed(format!(
                "row version {v} is outside the batch's range ({}, {}]",
                header.base_seq, header.last_seq
            )));
        }
        versions.push(v);
        prev = v;
    }
    let mut deleted = Vec::new();
    if ops {
        let bytes = r.take(rows, "row operations")?;
        deleted.reserve(rows);
        for (row, &op) in bytes.iter().enumerate() {
            deleted.push(match op {
                OP_UPSERT => false,
                OP_DELETE => true,
                op => {
                    return Err(WireError::malformed(format!(
                        "row {row}: unknown row operation {op}"
                    )))
                }
            });
        }
        if !deleted.contains(&true) {
            deleted.clear();
        }
    }
    let mut columns = Vec::with_capacity(header.columns.len());
    for col in &header.columns {
        let tags = r.take(rows, "value tags")?;
        let mut values = Vec::with_capacity(rows);
        let mut prev_int: i64 = 0;
        let mut prev_mantissa: i64 = 0;
        let mut prev_text: Vec<u8> = Vec::new();
        for (row, &tag) in tags.iter().enumerate() {
            values.push(match tag {
                0 => Value::Null,
                1 => {
                    prev_int = prev_int.wrapping_add(r.zigzag("integer value")?);
                    Value::Integer(prev_int)
                }
                2 if !compact => Value::Real(f64::from_bits(r.u64("real value")?)),
                3 if !compact => {
                    let b = r.bytes_varint("text value")?;
                    Value::Text(String::from_utf8(b.to_vec()).map_err(|_| {
                        WireError::malformed(format!(
                            "row {row}, column '{}': text is not valid UTF-8",
                            col.name
                        ))
                    })?)
                }
                2 => match r.u8("real encoding")? {
                    REAL_RAW => Value::Real(f64::from_bits(r.u64("real value")?)),
                    scale if scale <= MAX_DECIMAL_SCALE => {
                        prev_mantissa = prev_mantissa.wrapping_add(r.zigzag("real value")?);
                        Value::Real(prev_mantissa as f64 / 10f64.powi(i32::from(scale)))
                    }
                    scale => {
                        return Err(WireError::malformed(format!(
                            "row {row}, column '{}': unknown real scale {scale}",
                            col.name
                        )))
                    }
                },
                3 => {
                    let shared = r.varint("text value")?;
                    if shared > prev_text.len() as u64 {
                        return Err(WireError::malformed(format!(
                            "row {row}, column '{}': text shares {shared} bytes with a previous value of {}",
                            col.name,
                            prev_text.len()
                        )));
                    }
                    let suffix = r.bytes_varint("text value")?;
                    prev_text.truncate(shared as usize);
                    prev_text.extend_from_slice(suffix);
                    Value::Text(String::from_utf8(prev_text.clone()).map_err(|_| {
                        WireError::malformed(format!(
                            "row {row}, column '{}': text is not valid UTF-8",
                            col.name
                        ))
                    })?)
                }
                4 => Value::Blob(r.bytes_varint("blob value")?.to_vec()),
                t => {
                    return Err(WireError::malformed(format!(
                        "row {row}, column '{}': unknown value tag {t}",
                        col.name
                    )))
                }
            });
        }
        columns.push(values);
    }
    if r.remaining() != 0 {
        return Err(WireError::malformed(format!(
            "{} unexpected bytes at the end of the body",
            r.remaining()
        )));
    }
    Ok((versions, deleted, columns))
}
