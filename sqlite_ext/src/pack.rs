//! Compression: `sluice_compress` / `sluice_decompress` (brotli, with the
//! original length up front so decompression is bounded), and the packing
//! aggregate `sluice_pack` that keeps a window's raw rows as one compressed
//! JSON array, read back with `sluice_unpack`.
//!
//! Frame of a compressed value (all integers little-endian):
//!
//! ```text
//! magic "SLZ" | version u8 = 1 | kind u8 (0 blob, 1 text, 2 packed rows)
//! raw_len u32 | brotli stream
//! ```

use std::io::{Read, Write};

use rusqlite::functions::{Aggregate, Context};
use rusqlite::types::{Value, ValueRef};

use crate::glue::{agg_err, arg_int, arg_raw, describe_value, finish, Fail, Res};

const MAGIC: &[u8; 3] = b"SLZ";
const VERSION: u8 = 1;
const HEADER: usize = 3 + 1 + 1 + 4;
/// Largest value compressed or decompressed: 64 MiB.
pub const MAX_RAW_BYTES: usize = 64 << 20;
/// Brotli quality of `sluice_compress` when none is given.
pub const DEFAULT_QUALITY: i64 = 5;
/// Brotli quality of `sluice_pack`: packs are written once per window and
/// kept long, so the ratio matters more than the CPU.
pub const PACK_QUALITY: u32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Blob = 0,
    Text = 1,
    Pack = 2,
}

fn compress(data: &[u8], kind: Kind, quality: u32) -> Res<Vec<u8>> {
    if data.len() > MAX_RAW_BYTES {
        return Err(Fail(format!(
            "the value is {} bytes, the limit is {MAX_RAW_BYTES}",
            data.len()
        )));
    }
    let mut out = Vec::with_capacity(HEADER + data.len() / 4 + 32);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 64 * 1024, quality.min(11), 22);
        w.write_all(data)
            .map_err(|e| Fail(format!("compression failed: {e}")))?;
    }
    Ok(out)
}

fn decompress(b: &[u8]) -> Res<(Kind, Vec<u8>)> {
    if b.len() < HEADER || &b[..3] != MAGIC {
        return Err(Fail(
            "not a value made by sluice_compress or sluice_pack (no \"SLZ\" header)".into(),
        ));
    }
    if b[3] != VERSION {
        return Err(Fail(format!(
            "compressed value of format version {} (this build reads {VERSION})",
            b[3]
        )));
    }
    let kind = match b[4] {
        0 => Kind::Blob,
        1 => Kind::Text,
        2 => Kind::Pack,
        k => return Err(Fail(format!("unknown kind {k} of compressed value"))),
    };
    let raw_len = u32::from_le_bytes([b[5], b[6], b[7], b[8]]) as usize;
    if raw_len > MAX_RAW_BYTES {
        return Err(Fail(format!(
            "the value claims {raw_len} bytes uncompressed, the limit is {MAX_RAW_BYTES}"
        )));
    }
    // Never trust raw_len for the allocation beyond a modest multiple of
    // the input; read at most one byte past it.
    let mut out = Vec::with_capacity(raw_len.min(b.len().saturating_mul(64)));
    brotli::Decompressor::new(&b[HEADER..], 64 * 1024)
        .take(raw_len as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Fail(format!("corrupt compressed value: {e}")))?;
    if out.len() != raw_len {
        return Err(Fail(format!(
            "corrupt compressed value: {} bytes decompressed, {raw_len} expected",
            out.len()
        )));
    }
    Ok((kind, out))
}

fn text_or_blob(kind: Kind, data: Vec<u8>) -> Res<Value> {
    match kind {
        Kind::Blob => Ok(Value::Blob(data)),
        Kind::Text | Kind::Pack => String::from_utf8(data)
            .map(Value::Text)
            .map_err(|_| Fail("corrupt compressed value: the text is not UTF-8".into())),
    }
}

/// `sluice_compress(value [, quality])`: brotli; text comes back as text,
/// a blob as a blob. NULL gives NULL.
pub fn sluice_compress(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_compress", compress_fn(ctx))
}

fn compress_fn(ctx: &Context<'_>) -> Res<Value> {
    let quality = if ctx.len() > 1 {
        let q = arg_int(ctx, 1, "quality")?;
        if !(0..=11).contains(&q) {
            return Err(Fail(format!("quality must be between 0 and 11, got {q}")));
        }
        q
    } else {
        DEFAULT_QUALITY
    };
    let (kind, data) = match arg_raw(ctx, 0)? {
        ValueRef::Null => return Ok(Value::Null),
        ValueRef::Text(t) => (Kind::Text, t),
        ValueRef::Blob(b) => (Kind::Blob, b),
        other => {
            return Err(Fail(format!(
                "the value must be text or a blob, got {}",
                describe_value(other)
            )))
        }
    };
    Ok(Value::Blob(compress(data, kind, quality as u32)?))
}

/// `sluice_decompress(blob)`: the value given to `sluice_compress`.
pub fn sluice_decompress(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_decompress", decompress_fn(ctx))
}

fn decompress_fn(ctx: &Context<'_>) -> Res<Value> {
    match arg_raw(ctx, 0)? {
        ValueRef::Null => Ok(Value::Null),
        ValueRef::Blob(b) => {
            let (kind, data) = decompress(b)?;
            text_or_blob(kind, data)
        }
        other => Err(Fail(format!(
            "the value must be a blob made by sluice_compress, got {}",
            describe_value(other)
        ))),
    }
}

/// `sluice_unpack(pack)`: the rows of a `sluice_pack` as a JSON array (read
/// it with `json_each`).
pub fn sluice_unpack(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_unpack", unpack(ctx))
}

fn unpack(ctx: &Context<'_>) -> Res<Value> {
    match arg_raw(ctx, 0)? {
        ValueRef::Null => Ok(Value::Null),
        ValueRef::Blob(b) => match decompress(b)? {
            (Kind::Pack, data) => text_or_blob(Kind::Pack, data),
            _ => Err(Fail(
                "the blob was made by sluice_compress, not sluice_pack; use sluice_decompress"
                    .into(),
            )),
        },
        other => Err(Fail(format!(
            "the pack must be a blob made by sluice_pack, got {}",
            describe_value(other)
        ))),
    }
}

// ---------------------------------------------------------------------------
// sluice_pack

/// `sluice_pack(v1, v2, ...)`: every row's values as a JSON array (one JSON
/// object when the one argument is a JSON object, e.g. from `json_object`),
/// all rows in one JSON array, brotli-compressed. NULL when there are no rows.
pub struct Pack;

const PACK: &str = "sluice_pack";

#[derive(Default)]
pub struct PackAcc {
    json: String,
    rows: u64,
}

fn push_json_value(out: &mut String, v: ValueRef<'_>) -> rusqlite::Result<()> {
    match v {
        ValueRef::Null => out.push_str("null"),
        ValueRef::Integer(i) => out.push_str(&i.to_string()),
        ValueRef::Real(r) if r.is_finite() => {
            let s = format!("{r:?}");
            out.push_str(&s);
        }
        ValueRef::Real(r) => out.push_str(if r > 0.0 { "9e999" } else { "-9e999" }),
        ValueRef::Text(t) => {
            let s = std::str::from_utf8(t).map_err(|_| agg_err(PACK, "text is not UTF-8"))?;
            out.push_str(&serde_json::Value::String(s.to_string()).to_string());
        }
        ValueRef::Blob(b) => {
            return Err(agg_err(
                PACK,
                format!(
                    "a blob of {} bytes cannot be packed into JSON; pass hex(x) or base64 instead",
                    b.len()
                ),
            ))
        }
    }
    Ok(())
}

impl Aggregate<PackAcc, Value> for Pack {
    fn init(&self, _ctx: &mut Context<'_>) -> rusqlite::Result<PackAcc> {
        Ok(PackAcc {
            json: String::from("["),
            rows: 0,
        })
    }

    fn step(&self, ctx: &mut Context<'_>, acc: &mut PackAcc) -> rusqlite::Result<()> {
        if ctx.is_empty() {
            return Err(agg_err(PACK, "give at least one value (column) to pack"));
        }
        if acc.json.len() > MAX_RAW_BYTES {
            return Err(agg_err(
                PACK,
                format!("the rows of one group pass {MAX_RAW_BYTES} bytes of JSON"),
            ));
        }
        if acc.rows > 0 {
            acc.json.push(',');
        }
        acc.rows += 1;
        // One JSON object argument is kept as the object.
        if ctx.len() == 1 {
            if let ValueRef::Text(t) = ctx.get_raw(0) {
                if t.first() == Some(&b'{') {
                    if let Ok(s) = std::str::from_utf8(t) {
                        if serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok() {
                            acc.json.push_str(s);
                            return Ok(());
                        }
                    }
                }
            }
        }
        acc.json.push('[');
        for i in 0..ctx.len() {
            if i > 0 {
                acc.json.push(',');
            }
            push_json_value(&mut acc.json, ctx.get_raw(i))?;
        }
        acc.json.push(']');
        Ok(())
    }

    fn finalize(&self, _ctx: &mut Context<'_>, acc: Option<PackAcc>) -> rusqlite::Result<Value> {
        let Some(mut acc) = acc.filter(|a| a.rows > 0) else {
            return Ok(Value::Null);
        };
        acc.json.push(']');
        compress(acc.json.as_bytes(), Kind::Pack, PACK_QUALITY)
            .map(Value::Blob)
            .map_err(|Fail(m)| agg_err(PACK, m))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let data = b"hello hello hello hello".repeat(100);
        let c = compress(&data, Kind::Blob, 5).unwrap();
        assert!(c.len() < data.len() / 10);
        assert_eq!(decompress(&c).unwrap(), (Kind::Blob, data.clone()));
        // A lie about the length is caught, without a huge allocation.
        let mut lie = c.clone();
        lie[5..9].copy_from_slice(&(MAX_RAW_BYTES as u32).to_le_bytes());
        assert!(decompress(&lie).unwrap_err().0.contains("expected"));
        let mut lie = c.clone();
        lie[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decompress(&lie).unwrap_err().0.contains("limit"));
        assert!(decompress(b"SLZ").is_err());
        let mut bad = c;
        let n = bad.len();
        bad[n / 2] ^= 0x55;
        assert!(decompress(&bad).is_err());
    }
}
