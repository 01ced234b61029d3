//! The batch: a run of rows from one edge table, with the identity the cloud
//! uses to recognise a replay and the column fingerprint it uses to refuse a
//! batch it cannot map.
//!
//! Layout (version 2, all integers little-endian; see `docs/wire-format.md`):
//!
//! ```text
//! magic "SLB" | version u8 = 2 | flags u8 | header_len u32 | header
//! body_raw_len u32 | body_len u32 | body (brotli if flags & 1) | crc32c u32
//! ```
//!
//! The header holds device id, stream id, table, sequence range, row count,
//! send time, columns and their fingerprint, and (version 2) the content
//! digest, the machine, the zone and the fork of a new epoch. The body is columnar: first the
//! per-row versions (zigzag deltas), then for each column a tag per row and
//! the values (integers as zigzag deltas, reals as 8 bytes, text and blobs
//! length-prefixed). The checksum (CRC-32C) covers every byte before it and is
//! checked before anything else is trusted.
//!
//! By concern: [`model`] (the types, no bytes), [`header`] and [`body`] (their
//! bytes), [`frame`] (the envelope, checksum and compression, and the entry
//! points [`encode`], [`decode`], [`decode_header`]). Imports point that way:
//! frame uses header and body, both use model.

pub mod body;
pub mod frame;
pub mod header;
pub mod model;

pub use frame::{
    decode, decode_header, encode, encode_with_deletes, FORMAT_VERSION, MAGIC, MAX_BODY_BYTES,
    OLDEST_READABLE_VERSION,
};
pub use model::{
    column_fingerprint, content_digest, Batch, BatchHeader, BatchId, Changes, Column, ColumnType,
    EncodeOptions, Fork, Origin, Pulled, Value, DEFAULT_BROTLI_QUALITY, MAX_COLUMNS,
    MAX_ZONE_BYTES,
};

#[cfg(test)]
mod tests;
