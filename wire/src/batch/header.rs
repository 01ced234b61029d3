//! The header's bytes: device id, stream id, table, sequence range, row
//! count, send time, the columns and their fingerprint (checked on read);
//! from format version 2 also the content digest and the [`Origin`]
//! (machine, zone, fork).

use crate::codec::{self, Reader};
use crate::error::WireError;

use super::model::{
    column_fingerprint, BatchHeader, Changes, Column, ColumnType, Fork, Origin, Pulled,
    MAX_COLUMNS, MAX_ZONE_BYTES,
};

/// The header's bytes (format version 2), with `row_count`, `digest` and a
/// freshly computed fingerprint.
pub(super) fn write_header(
    header: &BatchHeader,
    row_count: u32,
    digest: u64,
) -> Result<Vec<u8>, WireError> {
    let origin = &header.origin;
    if origin.zone.len() > MAX_ZONE_BYTES {
        return Err(WireError::invalid(format!(
            "the zone is {} bytes, the limit is {MAX_ZONE_BYTES}",
            origin.zone.len()
        )));
    }
    if origin.fork.is_some_and(|f| f.parent_stream == 0) {
        return Err(WireError::invalid("a fork's parent stream is 0"));
    }
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
    codec::put_u64(&mut head, digest);
    codec::put_u64(&mut head, origin.machine);
    codec::put_str16(&mut head, &origin.zone, "zone")?;
    let (parent, fork_seq) = origin
        .fork
        .map_or((0, 0), |f| (f.parent_stream, f.fork_seq));
    codec::put_u64(&mut head, parent);
    codec::put_u64(&mut head, fork_seq as u64);
    if header.resend != 0 {
        codec::put_u32(&mut head, header.resend);
    }
    if header.changes.is_some() && header.pulled.is_some() {
        return Err(WireError::invalid(
            "a batch of cloud changes cannot say what its edge had pulled",
        ));
    }
    if let Some(c) = header.changes {
        codec::put_u32(&mut head, c.snapshot_page);
        head.push(u8::from(c.last_page));
    }
    if let Some(p) = header.pulled {
        codec::put_u64(&mut head, p.stream_id);
        codec::put_u64(&mut head, p.checkpoint as u64);
    }
    Ok(head)
}

/// Parses a header of format `version` (1 or 2, checked by the frame);
/// `resend`: the frame's flag says the header ends with a re-send number;
/// `changes`: that it ends with the fields of a batch of cloud changes
/// ([`Changes`]), after the re-send number if both are set; `pulled`: that
/// it ends with what the edge had pulled ([`Pulled`]; never with `changes`).
pub(super) fn parse_header(
    head: &[u8],
    version: u8,
    resend: bool,
    changes: bool,
    pulled: bool,
) -> Result<BatchHeader, WireError> {
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
    let (digest, origin) = if version >= 2 {
        let digest = r.u64("content digest")?;
        let machine = r.u64("machine")?;
        let zone = r.str16("zone")?;
        if zone.len() > MAX_ZONE_BYTES {
            return Err(WireError::malformed(format!(
                "the zone is {} bytes, the limit is {MAX_ZONE_BYTES}",
                zone.len()
            )));
        }
        let parent_stream = r.u64("parent stream")?;
        let fork_seq = r.i64("fork sequence")?;
        let fork = (parent_stream != 0).then_some(Fork {
            parent_stream,
            fork_seq,
        });
        (
            Some(digest),
            Origin {
                machine,
                zone,
                fork,
            },
        )
    } else {
        (None, Origin::default())
    };
    let resend = if resend {
        match r.u32("re-send number")? {
            0 => {
                return Err(WireError::malformed(
                    "the re-send flag is set with number 0",
                ))
            }
            n => n,
        }
    } else {
        0
    };
    let changes = if changes {
        let snapshot_page = r.u32("snapshot page")?;
        let last_page = match r.u8("last page")? {
            0 => false,
            1 => true,
            b => {
                return Err(WireError::malformed(format!(
                    "the last-page byte is {b}, not 0 or 1"
                )))
            }
        };
        if snapshot_page == 0 && !last_page {
            return Err(WireError::malformed(
                "an incremental batch of changes must say it is the last page",
            ));
        }
        if snapshot_page > 0 && base_seq != 0 {
            return Err(WireError::malformed(format!(
                "a snapshot page must have base sequence 0, not {base_seq}"
            )));
        }
        Some(Changes {
            snapshot_page,
            last_page,
        })
    } else {
        None
    };
    let pulled = if pulled {
        if changes.is_some() {
            return Err(WireError::malformed(
                "a batch of cloud changes cannot say what its edge had pulled",
            ));
        }
        let stream_id = r.u64("pulled stream")?;
        let checkpoint = r.i64("pulled checkpoint")?;
        if checkpoint < 0 {
            return Err(WireError::malformed(format!(
                "the pulled checkpoint is negative ({checkpoint})"
            )));
        }
        Some(Pulled {
            stream_id,
            checkpoint,
        })
    } else {
        None
    };
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
        digest,
        origin,
        resend,
        changes,
        pulled,
    })
}
