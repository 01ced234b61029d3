//! The frame around header and body, and the two entry points:
//!
//! ```text
//! magic "SLB" | version u8 = 2 | flags u8 | header_len u32 | header
//! body_raw_len u32 | body_len u32 | body (brotli if flags & 1) | crc32c u32
//! ```
//!
//! The checksum (CRC-32C) covers every byte before it and is checked before
//! anything else is trusted; a cut-off batch is reported as truncated.

use std::io::{Read, Write};

use crate::codec::{self, Reader};
use crate::error::WireError;

use super::body::{decode_body, encode_body};
use super::header::{parse_header, write_header};
use super::model::{content_digest, Batch, BatchHeader, EncodeOptions, Value, MAX_COLUMNS};

/// The first three bytes of every batch.
pub const MAGIC: &[u8; 3] = b"SLB";
/// The format version this build writes. It reads this one and version 1
/// (whose header has no content digest and no origin).
pub const FORMAT_VERSION: u8 = 2;
/// The oldest format version this build reads.
pub const OLDEST_READABLE_VERSION: u8 = 1;
/// Largest uncompressed body accepted (64 MiB): a header that claims more is
/// rejected before anything is allocated.
pub const MAX_BODY_BYTES: u32 = 64 << 20;
const BROTLI_WINDOW_BITS: u32 = 22;
const FLAG_BROTLI: u8 = 1;
/// The body uses the compact value codings: reals that are short decimals as
/// scaled integers, text front-coded against the previous value of its
/// column. Always written; a body without it (the first v1 writers) is read
/// with plain reals and text.
const FLAG_COMPACT_VALUES: u8 = 2;
/// The body carries one operation byte per row after the versions (0
/// upsert, 1 delete). Written only when a row is a delete; format version 2
/// only.
const FLAG_ROW_OPS: u8 = 4;
/// The header ends with a re-send number ([`BatchHeader::resend`]); written
/// only when it is not 0; format version 2 only.
const FLAG_RESEND: u8 = 8;
/// The batch carries changes from the cloud to a device and its header ends
/// with their fields ([`BatchHeader::changes`]); format version 2 only.
const FLAG_CHANGES: u8 = 16;
/// The header ends with what the edge had pulled of the table's
/// publication ([`BatchHeader::pulled`]); format version 2 only.
const FLAG_PULLED: u8 = 32;
/// magic + version + flags + header_len + raw_len + body_len + crc.
const MIN_BATCH_BYTES: usize = 3 + 1 + 1 + 4 + 4 + 4 + 4;

/// Encodes `header` (its `row_count` and `fingerprint` are recomputed) with
/// rows given by column, every row an upsert.
pub fn encode(
    header: &BatchHeader,
    versions: &[i64],
    columns: &[Vec<Value>],
    opts: EncodeOptions,
) -> Result<Vec<u8>, WireError> {
    encode_with_deletes(header, versions, &[], columns, opts)
}

/// [`encode`] with the operation of each row: `deleted[r]` says row `r` is a
/// delete (a tombstone: its key columns' values, NULL elsewhere). `deleted`
/// is empty or has one flag per row; without a `true` in it, the batch is
/// the same as [`encode`]'s.
pub fn encode_with_deletes(
    header: &BatchHeader,
    versions: &[i64],
    deleted: &[bool],
    columns: &[Vec<Value>],
    opts: EncodeOptions,
) -> Result<Vec<u8>, WireError> {
    let rows = versions.len();
    if !deleted.is_empty() && deleted.len() != rows {
        return Err(WireError::invalid(format!(
            "{} row operations given but there are {rows} rows",
            deleted.len()
        )));
    }
    let deleted: &[bool] = if deleted.contains(&true) {
        deleted
    } else {
        &[]
    };
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

    let body = encode_body(header.base_seq, versions, deleted, columns);
    let head = write_header(header, row_count, content_digest(&body))?;

    let raw_len = u32::try_from(body.len())
        .ok()
        .filter(|&n| n <= MAX_BODY_BYTES)
        .ok_or_else(|| {
            WireError::invalid(format!(
                "the rows take {} bytes uncompressed, the limit is {MAX_BODY_BYTES}; send fewer rows per batch",
                body.len()
            ))
        })?;
    let ops = if deleted.is_empty() { 0 } else { FLAG_ROW_OPS }
        | if header.resend == 0 { 0 } else { FLAG_RESEND }
        | if header.changes.is_none() {
            0
        } else {
            FLAG_CHANGES
        }
        | if header.pulled.is_none() {
            0
        } else {
            FLAG_PULLED
        };
    let (flags, stored) = match opts.brotli_quality {
        Some(q) => (
            FLAG_BROTLI | FLAG_COMPACT_VALUES | ops,
            brotli_compress(&body, q),
        ),
        None => (FLAG_COMPACT_VALUES | ops, body),
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
    let version = bytes[3];
    if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
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
    let known = if version >= 2 {
        FLAG_BROTLI | FLAG_COMPACT_VALUES | FLAG_ROW_OPS | FLAG_RESEND | FLAG_CHANGES | FLAG_PULLED
    } else {
        FLAG_BROTLI | FLAG_COMPACT_VALUES
    };
    if flags & !known != 0 {
        return Err(WireError::malformed(format!("unknown flags {flags:#04x}")));
    }
    let header_len = r.u32("header length")? as usize;
    let head = r.take(header_len, "header")?;
    let header = parse_header(
        head,
        version,
        flags & FLAG_RESEND != 0,
        flags & FLAG_CHANGES != 0,
        flags & FLAG_PULLED != 0,
    )?;
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
    if let Some(digest) = frame.header.digest {
        if content_digest(body) != digest {
            return Err(WireError::malformed(
                "the content digest does not match the rows",
            ));
        }
    }
    let compact = frame.flags & FLAG_COMPACT_VALUES != 0;
    let ops = frame.flags & FLAG_ROW_OPS != 0;
    let (versions, deleted, columns) = decode_body(&frame.header, body, compact, ops)?;
    Ok(Batch {
        header: frame.header,
        versions,
        deleted,
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
