//! The batch: a run of rows from one edge table, with the identity the cloud
//! uses to recognise a replay and the column fingerprint it uses to refuse a
//! batch it cannot map.
//!
//! Layout (version 1, all integers little-endian; see `docs/wire-format.md`):
//!
//! ```text
//! magic "SLB" | version u8 = 1 | flags u8 | header_len u32 | header
//! body_raw_len u32 | body_len u32 | body (brotli if flags & 1) | crc32c u32
//! ```
//!
//! The header holds device id, stream id, table, sequence range, row count,
//! send time, columns and their fingerprint. The body is columnar: first the
//! per-row versions (zigzag deltas), then for each column a tag per row and
//! the values (integers as zigzag deltas, reals as 8 bytes, text and blobs
//! length-prefixed). The checksum (CRC-32C) covers every byte before it and is
//! checked before anything else is trusted.

use std::io::{Read, Write};

use crate::codec::{self, Reader};
use crate::error::WireError;

/// The first three bytes of every batch.
pub const MAGIC: &[u8; 3] = b"SLB";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Largest uncompressed body accepted (64 MiB): a header that claims more is
/// rejected before anything is allocated.
pub const MAX_BODY_BYTES: u32 = 64 << 20;
/// Largest number of columns in a batch.
pub const MAX_COLUMNS: usize = 2000;
/// Default brotli quality: a good ratio at edge-box CPU cost.
pub const DEFAULT_BROTLI_QUALITY: u32 = 5;
const BROTLI_WINDOW_BITS: u32 = 22;
const FLAG_BROTLI: u8 = 1;
/// The body uses the compact value codings: reals that are short decimals as
/// scaled integers, text front-coded against the previous value of its
/// column. Always written; a body without it (the first v1 writers) is read
/// with plain reals and text.
const FLAG_COMPACT_VALUES: u8 = 2;
/// magic + version + flags + header_len + raw_len + body_len + crc.
const MIN_BATCH_BYTES: usize = 3 + 1 + 1 + 4 + 4 + 4 + 4;

/// The declared type of an edge column (its SQLite affinity). The cloud uses
/// it to check that it can map the column; values themselves carry their own
/// storage class, as in SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ColumnType {
    Integer = 1,
    Real = 2,
    Text = 3,
    Blob = 4,
    Numeric = 5,
}

impl ColumnType {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => ColumnType::Integer,
            2 => ColumnType::Real,
            3 => ColumnType::Text,
            4 => ColumnType::Blob,
            5 => ColumnType::Numeric,
            _ => return None,
        })
    }

    /// The affinity SQLite gives a declared column type (section 3.1 of
    /// <https://sqlite.org/datatype3.html>).
    pub fn from_declared(decl: &str) -> Self {
        let d = decl.to_ascii_uppercase();
        if d.contains("INT") {
            ColumnType::Integer
        } else if d.contains("CHAR") || d.contains("CLOB") || d.contains("TEXT") {
            ColumnType::Text
        } else if d.contains("BLOB") || d.is_empty() {
            ColumnType::Blob
        } else if d.contains("REAL") || d.contains("FLOA") || d.contains("DOUB") {
            ColumnType::Real
        } else {
            ColumnType::Numeric
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Integer => "integer",
            ColumnType::Real => "real",
            ColumnType::Text => "text",
            ColumnType::Blob => "blob",
            ColumnType::Numeric => "numeric",
        }
    }
}

/// One column of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
}

impl Column {
    pub fn new(name: impl Into<String>, ty: ColumnType) -> Self {
        Column {
            name: name.into(),
            ty,
        }
    }
}

/// One value, with SQLite's storage classes.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    fn tag(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Integer(_) => 1,
            Value::Real(_) => 2,
            Value::Text(_) => 3,
            Value::Blob(_) => 4,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Integer(_) => "integer",
            Value::Real(_) => "real",
            Value::Text(_) => "text",
            Value::Blob(_) => "blob",
        }
    }
}

/// Everything about a batch except its rows. Readable without decompressing
/// the body ([`decode_header`]), which is what acknowledging a batch needs.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchHeader {
    /// The device (edge box) that produced the batch.
    pub device_id: String,
    /// Random id of the edge database the rows come from; a database that is
    /// recreated gets a new one, so its sequence numbers never collide with
    /// the old ones in the cloud's ledger.
    pub stream_id: u64,
    /// The edge table.
    pub table: String,
    /// Exclusive lower bound of the sequence range: the table's acknowledged
    /// watermark when the batch was cut.
    pub base_seq: i64,
    /// Inclusive upper bound of the sequence range.
    pub last_seq: i64,
    pub row_count: u32,
    /// The device's clock when the batch was cut, in ms since the Unix epoch;
    /// the cloud compares it with its own clock to measure skew.
    pub sent_at_ms: i64,
    pub columns: Vec<Column>,
    /// [`column_fingerprint`] of `columns`.
    pub fingerprint: u64,
}

impl BatchHeader {
    pub fn id(&self) -> BatchId {
        BatchId {
            device_id: self.device_id.clone(),
            stream_id: self.stream_id,
            table: self.table.clone(),
            base_seq: self.base_seq,
            last_seq: self.last_seq,
        }
    }
}

/// The identity of a batch: the cloud's ledger key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BatchId {
    pub device_id: String,
    pub stream_id: u64,
    pub table: String,
    pub base_seq: i64,
    pub last_seq: i64,
}

impl std::fmt::Display for BatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{:016x} ({}, {}]",
            self.device_id, self.table, self.stream_id, self.base_seq, self.last_seq
        )
    }
}

/// A decoded batch: the header and the rows, stored by column.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub header: BatchHeader,
    /// The version of each row (its sequence number at the edge): what
    /// "last writer wins" compares.
    pub versions: Vec<i64>,
    /// `columns[c][r]` is the value of column `c` in row `r`.
    pub columns: Vec<Vec<Value>>,
    /// The CRC-32C stored at the end of the encoded batch.
    pub checksum: u32,
}

/// How to encode.
#[derive(Debug, Clone, Copy)]
pub struct EncodeOptions {
    /// Brotli quality 0..=11, or `None` to store the body uncompressed.
    pub brotli_quality: Option<u32>,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            brotli_quality: Some(DEFAULT_BROTLI_QUALITY),
        }
    }
}

/// A stable 64-bit fingerprint (FNV-1a) of column names and types, in order.
pub fn column_fingerprint(columns: &[Column]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    for c in columns {
        c.name.bytes().for_each(&mut eat);
        eat(0);
        eat(c.ty as u8);
    }
    h
}

/// Encodes `header` (its `row_count` and `fingerprint` are recomputed) with
/// rows given by column.
pub fn encode(
    header: &BatchHeader,
    versions: &[i64],
    columns: &[Vec<Value>],
    opts: EncodeOptions,
) -> Result<Vec<u8>, WireError> {
    let rows = versions.len();
    if columns.len() != header.columns.len() {
        return Err(WireError::invalid(format!(
            "{} columns declared but {} given",
            header.columns.len(),
            columns.len()
        )));
    }
    if header.columns.len() > MAX_COLUMNS {
        return Err(WireError::invalid(format!(
            "{} columns, the limit is {MAX_COLUMNS}",
            header.columns.len()
        )));
    }
    for (c, col) in header.columns.iter().zip(columns) {
        if col.len() != rows {
            return Err(WireError::invalid(format!(
                "column '{}' has {} values but there are {rows} rows",
                c.name,
                col.len()
            )));
        }
    }
    let row_count =
        u32::try_from(rows).map_err(|_| WireError::invalid(format!("{rows} rows in one batch")))?;

    let mut head = Vec::with_capacity(64 + 16 * header.columns.len());
    codec::put_str16(&mut head, &header.device_id, "device id")?;
    codec::put_u64(&mut head, header.stream_id);
    codec::put_str16(&mut head, &header.table, "table name")?;
    codec::put_u64(&mut head, header.base_seq as u64);
    codec::put_u64(&mut head, header.last_seq as u64);
    codec::put_u32(&mut head, row_count);
    codec::put_u64(&mut head, header.sent_at_ms as u64);
    codec::put_u16(&mut head, header.columns.len() as u16);
    for c in &header.columns {
        codec::put_str16(&mut head, &c.name, "column name")?;
        head.push(c.ty as u8);
    }
    codec::put_u64(&mut head, column_fingerprint(&header.columns));

    let body = encode_body(header.base_seq, versions, columns);
    let raw_len = u32::try_from(body.len())
        .ok()
        .filter(|&n| n <= MAX_BODY_BYTES)
        .ok_or_else(|| {
            WireError::invalid(format!(
                "the rows take {} bytes uncompressed, the limit is {MAX_BODY_BYTES}; send fewer rows per batch",
                body.len()
            ))
        })?;
    let (flags, stored) = match opts.brotli_quality {
        Some(q) => (FLAG_BROTLI | FLAG_COMPACT_VALUES, brotli_compress(&body, q)),
        None => (FLAG_COMPACT_VALUES, body),
    };

    let mut out = Vec::with_capacity(MIN_BATCH_BYTES + head.len() + stored.len());
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    out.push(flags);
    codec::put_u32(&mut out, head.len() as u32);
    out.extend_from_slice(&head);
    codec::put_u32(&mut out, raw_len);
    codec::put_u32(&mut out, stored.len() as u32);
    out.extend_from_slice(&stored);
    let crc = crc32c::crc32c(&out);
    codec::put_u32(&mut out, crc);
    Ok(out)
}

fn encode_body(base_seq: i64, versions: &[i64], columns: &[Vec<Value>]) -> Vec<u8> {
    let mut body = Vec::with_capacity(versions.len() * (2 + 4 * columns.len()));
    let mut prev = base_seq;
    for &v in versions {
        codec::put_zigzag(&mut body, v.wrapping_sub(prev));
        prev = v;
    }
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
fn decimal(f: f64) -> Option<(i64, u8)> {
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

fn brotli_compress(data: &[u8], quality: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 4 + 64);
    {
        let mut w =
            brotli::CompressorWriter::new(&mut out, 64 * 1024, quality.min(11), BROTLI_WINDOW_BITS);
        // Writing into a Vec cannot fail.
        let _ = w.write_all(data);
    }
    out
}

/// Where the parts of an encoded batch are, after the checksum was verified.
struct Frame<'a> {
    flags: u8,
    header: BatchHeader,
    raw_len: u32,
    body: &'a [u8],
    checksum: u32,
}

fn parse_frame(bytes: &[u8]) -> Result<Frame<'_>, WireError> {
    if bytes.len() < MIN_BATCH_BYTES {
        return Err(WireError::TooShort {
            len: bytes.len(),
            min: MIN_BATCH_BYTES,
        });
    }
    if &bytes[..3] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if bytes[3] != FORMAT_VERSION {
        return Err(WireError::UnsupportedVersion {
            found: bytes[3],
            supported: FORMAT_VERSION,
        });
    }
    check_framed_length(bytes)?;
    let (payload, crc_bytes) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    let computed = crc32c::crc32c(payload);
    if stored != computed {
        return Err(WireError::ChecksumMismatch { stored, computed });
    }

    let mut r = Reader::new(payload);
    r.take(4, "magic")?;
    let flags = r.u8("flags")?;
    if flags & !(FLAG_BROTLI | FLAG_COMPACT_VALUES) != 0 {
        return Err(WireError::malformed(format!("unknown flags {flags:#04x}")));
    }
    let header_len = r.u32("header length")? as usize;
    let head = r.take(header_len, "header")?;
    let header = parse_header(head)?;
    let raw_len = r.u32("body length")?;
    if raw_len > MAX_BODY_BYTES {
        return Err(WireError::TooLarge {
            what: "the uncompressed body",
            size: raw_len.into(),
            limit: MAX_BODY_BYTES.into(),
        });
    }
    let body_len = r.u32("stored body length")? as usize;
    let body = r.take(body_len, "body")?;
    if r.remaining() != 0 {
        return Err(WireError::malformed(format!(
            "{} unexpected bytes after the body",
            r.remaining()
        )));
    }
    if flags & FLAG_BROTLI == 0 && body.len() != raw_len as usize {
        return Err(WireError::malformed(format!(
            "uncompressed body is {} bytes but the header says {raw_len}",
            body.len()
        )));
    }
    Ok(Frame {
        flags,
        header,
        raw_len,
        body,
        checksum: stored,
    })
}

/// Compares the length the batch's own length fields add up to with the
/// number of bytes present, so that a cut-off batch is reported as truncated
/// rather than as a checksum mismatch.
fn check_framed_length(bytes: &[u8]) -> Result<(), WireError> {
    let le32 = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let Some(header_len) = le32(5) else {
        return Ok(());
    };
    let body_len_at = 9usize.saturating_add(header_len).saturating_add(4);
    let Some(body_len) = le32(body_len_at) else {
        return Err(WireError::malformed(format!(
            "truncated or damaged batch: its header says {header_len} header bytes but the batch is only {} bytes",
            bytes.len()
        )));
    };
    let expected = body_len_at
        .saturating_add(4)
        .saturating_add(body_len)
        .saturating_add(4);
    if expected > bytes.len() {
        return Err(WireError::malformed(format!(
            "truncated batch: its lengths add up to {expected} bytes but only {} arrived",
            bytes.len()
        )));
    }
    Ok(())
}

fn parse_header(head: &[u8]) -> Result<BatchHeader, WireError> {
    let mut r = Reader::new(head);
    let device_id = r.str16("device id")?;
    let stream_id = r.u64("stream id")?;
    let table = r.str16("table name")?;
    let base_seq = r.i64("base sequence")?;
    let last_seq = r.i64("last sequence")?;
    let row_count = r.u32("row count")?;
    let sent_at_ms = r.i64("send time")?;
    let ncols = r.u16("column count")? as usize;
    if ncols > MAX_COLUMNS {
        return Err(WireError::TooLarge {
            what: "the column count",
            size: ncols as u64,
            limit: MAX_COLUMNS as u64,
        });
    }
    let mut columns = Vec::with_capacity(ncols.min(r.remaining() / 3));
    for i in 0..ncols {
        let name = r.str16("column name")?;
        let t = r.u8("column type")?;
        let ty = ColumnType::from_u8(t).ok_or_else(|| {
            WireError::malformed(format!("column {i} ('{name}') has unknown type code {t}"))
        })?;
        columns.push(Column { name, ty });
    }
    let fingerprint = r.u64("column fingerprint")?;
    if r.remaining() != 0 {
        return Err(WireError::malformed(format!(
            "{} unexpected bytes at the end of the header",
            r.remaining()
        )));
    }
    if fingerprint != column_fingerprint(&columns) {
        return Err(WireError::malformed(
            "the column fingerprint does not match the columns",
        ));
    }
    if table.is_empty() {
        return Err(WireError::malformed("the table name is empty"));
    }
    if last_seq < base_seq {
        return Err(WireError::malformed(format!(
            "sequence range ({base_seq}, {last_seq}] is reversed"
        )));
    }
    Ok(BatchHeader {
        device_id,
        stream_id,
        table,
        base_seq,
        last_seq,
        row_count,
        sent_at_ms,
        columns,
        fingerprint,
    })
}

/// Verifies the checksum and decodes only the header: cheap whatever the
/// number of rows.
pub fn decode_header(bytes: &[u8]) -> Result<BatchHeader, WireError> {
    parse_frame(bytes).map(|f| f.header)
}

/// Verifies the checksum and decodes the whole batch. Never panics; never
/// allocates more than [`MAX_BODY_BYTES`] plus what the input justifies.
pub fn decode(bytes: &[u8]) -> Result<Batch, WireError> {
    let frame = parse_frame(bytes)?;
    let decompressed;
    let body: &[u8] = if frame.flags & FLAG_BROTLI != 0 {
        decompressed = brotli_decompress(frame.body, frame.raw_len)?;
        &decompressed
    } else {
        frame.body
    };
    let compact = frame.flags & FLAG_COMPACT_VALUES != 0;
    let (versions, columns) = decode_body(&frame.header, body, compact)?;
    Ok(Batch {
        header: frame.header,
        versions,
        columns,
        checksum: frame.checksum,
    })
}

fn brotli_decompress(data: &[u8], raw_len: u32) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity((raw_len as usize).min(data.len().saturating_mul(16)));
    let mut d = brotli::Decompressor::new(data, 64 * 1024).take(u64::from(raw_len) + 1);
    d.read_to_end(&mut out)
        .map_err(|e| WireError::malformed(format!("the body does not decompress: {e}")))?;
    if out.len() > raw_len as usize {
        return Err(WireError::malformed(format!(
            "the body decompresses to more than the {raw_len} bytes the header says"
        )));
    }
    if out.len() != raw_len as usize {
        return Err(WireError::malformed(format!(
            "the body decompresses to {} bytes but the header says {raw_len}",
            out.len()
        )));
    }
    Ok(out)
}

fn decode_body(
    header: &BatchHeader,
    body: &[u8],
    compact: bool,
) -> Result<(Vec<i64>, Vec<Vec<Value>>), WireError> {
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
    Ok((versions, columns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(columns: Vec<Column>, base: i64, last: i64) -> BatchHeader {
        BatchHeader {
            device_id: "box-1".into(),
            stream_id: 0xdead_beef,
            table: "division_states".into(),
            base_seq: base,
            last_seq: last,
            row_count: 0,
            sent_at_ms: 1_700_000_000_000,
            fingerprint: column_fingerprint(&columns),
            columns,
        }
    }

    fn sample() -> (BatchHeader, Vec<i64>, Vec<Vec<Value>>) {
        let cols = vec![
            Column::new("id", ColumnType::Integer),
            Column::new("state", ColumnType::Text),
            Column::new("score", ColumnType::Real),
            Column::new("img", ColumnType::Blob),
        ];
        let versions = vec![11, 12, 15];
        let data = vec![
            vec![Value::Integer(11), Value::Integer(12), Value::Integer(15)],
            vec![
                Value::Text("RED".into()),
                Value::Null,
                Value::Text("GREEN \u{e9}".into()),
            ],
            vec![Value::Real(0.5), Value::Real(-1e300), Value::Integer(3)],
            vec![Value::Blob(vec![0, 1, 2]), Value::Null, Value::Blob(vec![])],
        ];
        (header(cols, 10, 15), versions, data)
    }

    #[test]
    fn round_trip_keeps_everything() {
        let (h, v, d) = sample();
        for opts in [
            EncodeOptions::default(),
            EncodeOptions {
                brotli_quality: None,
            },
        ] {
            let bytes = encode(&h, &v, &d, opts).unwrap();
            let b = decode(&bytes).unwrap();
            assert_eq!(b.header.row_count, 3);
            assert_eq!(b.header.id(), h.id());
            assert_eq!(b.versions, v);
            assert_eq!(b.columns, d);
            assert_eq!(decode_header(&bytes).unwrap(), b.header);
        }
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let (h, v, d) = sample();
        let bytes = encode(&h, &v, &d, EncodeOptions::default()).unwrap();
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= bit;
                assert!(decode(&b).is_err(), "flip at byte {i} went unnoticed");
            }
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let (h, v, d) = sample();
        let bytes = encode(&h, &v, &d, EncodeOptions::default()).unwrap();
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err());
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let (h, v, d) = sample();
        let mut bytes = encode(&h, &v, &d, EncodeOptions::default()).unwrap();
        assert!(decode(b"hello")
            .unwrap_err()
            .to_string()
            .contains("shorter than"));
        assert!(decode(&[0u8; 64])
            .unwrap_err()
            .to_string()
            .contains("magic"));
        let n = bytes.len();
        bytes[n - 10] ^= 0xff;
        assert!(decode(&bytes)
            .unwrap_err()
            .to_string()
            .contains("checksum mismatch"));
    }

    /// Re-signs `bytes` after tampering so the checksum no longer protects
    /// the decoder: what a hostile sender could do.
    fn resign(mut bytes: Vec<u8>) -> Vec<u8> {
        let n = bytes.len() - 4;
        let crc = crc32c::crc32c(&bytes[..n]);
        bytes[n..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn a_lying_row_count_does_not_allocate_it() {
        let (h, v, d) = sample();
        let bytes = encode(
            &h,
            &v,
            &d,
            EncodeOptions {
                brotli_quality: None,
            },
        )
        .unwrap();
        // row_count sits right after device id, stream id, table, base, last.
        let off = 9 + 2 + h.device_id.len() + 8 + 2 + h.table.len() + 16;
        let mut b = bytes.clone();
        b[off..off + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = decode(&resign(b)).unwrap_err().to_string();
        assert!(err.contains("claims 4294967295 rows"), "{err}");
    }

    #[test]
    fn a_huge_claimed_body_is_refused_before_allocating() {
        let (h, v, d) = sample();
        let bytes = encode(&h, &v, &d, EncodeOptions::default()).unwrap();
        let header_len = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) as usize;
        let off = 9 + header_len;
        let mut b = bytes.clone();
        b[off..off + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = decode(&resign(b)).unwrap_err();
        assert!(matches!(err, WireError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn encode_rejects_inconsistent_input() {
        let (h, v, mut d) = sample();
        d[1].pop();
        let err = encode(&h, &v, &d, EncodeOptions::default()).unwrap_err();
        assert!(
            err.to_string().contains("column 'state' has 2 values"),
            "{err}"
        );
    }

    #[test]
    fn bodies_without_the_compact_flag_still_read() {
        // A batch of the first v1 writers: plain 8-byte real, plain text.
        let cols = vec![
            Column::new("x", ColumnType::Real),
            Column::new("t", ColumnType::Text),
        ];
        let h = header(cols.clone(), 0, 1);
        let mut head = Vec::new();
        codec::put_str16(&mut head, &h.device_id, "").unwrap();
        codec::put_u64(&mut head, h.stream_id);
        codec::put_str16(&mut head, &h.table, "").unwrap();
        codec::put_u64(&mut head, 0);
        codec::put_u64(&mut head, 1);
        codec::put_u32(&mut head, 1);
        codec::put_u64(&mut head, h.sent_at_ms as u64);
        codec::put_u16(&mut head, 2);
        for c in &cols {
            codec::put_str16(&mut head, &c.name, "").unwrap();
            head.push(c.ty as u8);
        }
        codec::put_u64(&mut head, column_fingerprint(&cols));
        let mut body = Vec::new();
        codec::put_zigzag(&mut body, 1);
        body.push(2);
        codec::put_u64(&mut body, 2.5f64.to_bits());
        body.push(3);
        codec::put_bytes_varint(&mut body, b"hi");
        let mut out = b"SLB\x01\x00".to_vec();
        codec::put_u32(&mut out, head.len() as u32);
        out.extend_from_slice(&head);
        codec::put_u32(&mut out, body.len() as u32);
        codec::put_u32(&mut out, body.len() as u32);
        out.extend_from_slice(&body);
        let crc = crc32c::crc32c(&out);
        codec::put_u32(&mut out, crc);
        let b = decode(&out).unwrap();
        assert_eq!(
            b.columns,
            vec![vec![Value::Real(2.5)], vec![Value::Text("hi".into())]]
        );
    }

    #[test]
    fn short_decimals_and_shared_prefixes_take_few_bytes() {
        for f in [
            0.0,
            1.5,
            -2.25,
            12.345,
            1e-9,
            0.1 + 0.2,
            1e300,
            f64::MIN_POSITIVE,
            -0.0,
            123456.789,
        ] {
            if let Some((m, k)) = decimal(f) {
                assert_eq!(
                    (m as f64 / 10f64.powi(i32::from(k))).to_bits(),
                    f.to_bits(),
                    "{f}"
                );
            }
        }
        assert_eq!(decimal(12.345), Some((12345, 3)));
        assert_eq!(decimal(-0.0), None);
        assert_eq!(decimal(0.1 + 0.2), None);
        let cols = vec![
            Column::new("t", ColumnType::Text),
            Column::new("x", ColumnType::Real),
        ];
        let n = 100;
        let versions: Vec<i64> = (1..=n).collect();
        let data = vec![
            (0..n)
                .map(|i| {
                    Value::Text(format!(
                        "2026-11-22T10:15:{:02}.{:03}Z",
                        i % 60,
                        i * 7 % 1000
                    ))
                })
                .collect(),
            (0..n)
                .map(|i| Value::Real(i as f64 * 0.25 + 1000.125))
                .collect(),
        ];
        let bytes = encode(
            &header(cols, 0, n),
            &versions,
            &data,
            EncodeOptions {
                brotli_quality: None,
            },
        )
        .unwrap();
        assert!(bytes.len() < 100 * 16, "{} bytes for 100 rows", bytes.len());
        let b = decode(&bytes).unwrap();
        assert_eq!(b.columns, data);
    }

    #[test]
    fn affinity_follows_sqlite_rules() {
        assert_eq!(ColumnType::from_declared("BIGINT"), ColumnType::Integer);
        assert_eq!(ColumnType::from_declared("varchar(20)"), ColumnType::Text);
        assert_eq!(ColumnType::from_declared(""), ColumnType::Blob);
        assert_eq!(
            ColumnType::from_declared("DOUBLE PRECISION"),
            ColumnType::Real
        );
        assert_eq!(ColumnType::from_declared("TIMESTAMP"), ColumnType::Numeric);
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Integer),
            any::<f64>()
                .prop_filter("NaN != NaN", |f| !f.is_nan())
                .prop_map(Value::Real),
            ".{0,40}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Blob),
        ]
    }

    fn batch_parts() -> impl Strategy<Value = (BatchHeader, Vec<i64>, Vec<Vec<Value>>)> {
        (0usize..6, 0usize..50, any::<i32>()).prop_flat_map(|(ncols, nrows, base)| {
            let base = i64::from(base);
            (
                proptest::collection::vec(("[a-z_]{1,12}", 1u8..=5), ncols),
                proptest::collection::vec(1i64..1000, nrows),
                proptest::collection::vec(proptest::collection::vec(value(), nrows), ncols),
                "[a-z0-9-]{0,20}",
                any::<u64>(),
                proptest::option::of(0u32..=11),
            )
                .prop_map(move |(cols, gaps, data, device, stream, q)| {
                    let cols: Vec<Column> = cols
                        .into_iter()
                        .map(|(n, t)| Column::new(n, ColumnType::from_u8(t).unwrap()))
                        .collect();
                    let mut versions = Vec::with_capacity(gaps.len());
                    let mut s = base;
                    for g in gaps {
                        s += g;
                        versions.push(s);
                    }
                    let last = versions.last().copied().unwrap_or(base) + 3;
                    let mut h = header(cols, base, last);
                    h.device_id = device;
                    h.stream_id = stream;
                    h.row_count = u32::from(q.unwrap_or(99) as u8);
                    (h, versions, data)
                })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn prop_round_trip((h, v, d) in batch_parts(), q in proptest::option::of(0u32..=11)) {
            let bytes = encode(&h, &v, &d, EncodeOptions { brotli_quality: q }).unwrap();
            let b = decode(&bytes).unwrap();
            prop_assert_eq!(&b.versions, &v);
            prop_assert_eq!(&b.columns, &d);
            prop_assert_eq!(b.header.row_count as usize, v.len());
            prop_assert_eq!(b.header.id(), h.id());
        }

        #[test]
        fn prop_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
            let mut framed = b"SLB\x01".to_vec();
            framed.extend_from_slice(&bytes);
            let _ = decode(&resign(framed.clone()));
            let _ = decode_header(&resign(framed));
        }

        #[test]
        fn prop_resigned_mutations_never_panic((h, v, d) in batch_parts(), pos in any::<usize>(), byte in any::<u8>()) {
            let mut bytes = encode(&h, &v, &d, EncodeOptions { brotli_quality: None }).unwrap();
            let n = bytes.len() - 4;
            bytes[pos % n] = byte;
            let _ = decode(&resign(bytes));
        }
    }
}
