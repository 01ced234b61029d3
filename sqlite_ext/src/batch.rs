//! `sluice_batch`: the next pending rows of a tracked table as one batch of
//! the wire format. It only reads: until the batch is acknowledged, it cuts
//! the same rows again.

use rusqlite::functions::Context;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{params, Connection, OptionalExtension};
use sluice_wire::names::{quote_ident, DrainOrder};
use sluice_wire::{encode_with_deletes, BatchHeader, Column, ColumnType, EncodeOptions};

use crate::acked;
use crate::bookkeeping::tables::Tracked;
use crate::bookkeeping::{meta, ranges, tables, tombstones, Table};
use crate::fork;
use crate::glue::{
    arg_int, arg_opt_text, arg_raw, arg_text, connection, finish, now_ms, Fail, Res,
};
use crate::options::{parse_batch_options, BatchOptions};
use crate::origin::{machine_hash, wire_zone};
use crate::schema::{table_info, TableInfo};
use crate::sequence::{check_high_water, seq_column, SeqColumn, VERSION_COLUMN};
use crate::time::{future_after, EpochSql};

/// Default `max_rows` of `sluice_batch`.
pub const DEFAULT_BATCH_ROWS: i64 = 1000;
/// Largest `max_rows` of `sluice_batch`.
pub const MAX_BATCH_ROWS: i64 = 1_000_000;
/// A batch stops growing before its uncompressed rows would pass this size.
pub const MAX_BATCH_BYTES: usize = 16 << 20;

/// `sluice_batch(table [, max_rows [, options]])` → BLOB, or NULL when
/// nothing is pending. Options: `{"order": "oldest"|"newest", "since": "2 hours"}`.
pub fn sluice_batch(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_batch", batch(ctx))
}

fn batch(ctx: &Context<'_>) -> Res<Value> {
    let table = arg_text(ctx, 0, "the table name")?;
    let max_rows = match ctx.len() {
        0 | 1 => DEFAULT_BATCH_ROWS,
        // NULL: the default, so that options can be given alone.
        _ if matches!(arg_raw(ctx, 1)?, ValueRef::Null) => DEFAULT_BATCH_ROWS,
        _ => arg_int(ctx, 1, "max_rows")?,
    };
    if !(1..=MAX_BATCH_ROWS).contains(&max_rows) {
        return Err(Fail(format!(
            "max_rows must be between 1 and {MAX_BATCH_ROWS}, got {max_rows}"
        )));
    }
    let opts = match arg_opt_text(ctx, 2, "options")? {
        Some(text) => parse_batch_options(text)?,
        None => BatchOptions::default(),
    };
    let conn = connection(ctx)?;
    let info = table_info(&conn, table)?;
    let t = tables::require(&conn, &info)?;
    let device_id = match meta::device_id(&conn)? {
        Some(Value::Text(d)) => d,
        _ => {
            return Err(Fail(
                "no device id; set one with SELECT sluice_device('name')".to_string(),
            ))
        }
    };
    let stream = meta::stream_id(&conn)?;
    let seq = seq_column(&info, &t)?;
    check_high_water(&conn, &info, &t, &seq)?;

    let cols: Vec<Column> = info
        .columns
        .iter()
        .filter(|c| {
            !c.name.eq_ignore_ascii_case(VERSION_COLUMN)
                && !t.local_only.iter().any(|l| l.eq_ignore_ascii_case(&c.name))
        })
        .map(|c| Column::new(c.name.clone(), ColumnType::from_declared(&c.decl)))
        .collect();
    if cols.is_empty() {
        return Err(Fail(format!(
            "table '{}' has no column to send (all are local_only)",
            info.name
        )));
    }
    // The lowest sequence number this batch may take rows above: the
    // watermark, or with `since` the newest pending row older than that.
    let floor = match opts.since_secs {
        Some(secs) => since_floor(&conn, &info, &t, &seq, secs)?,
        None => t.acked_seq,
    };
    let ranges = ranges::above(&conn, &t.tbl, floor)?;
    let mut gaps = acked::pending_gaps(&ranges, floor);
    let newest = opts.order == DrainOrder::Newest;
    if newest {
        gaps.reverse();
    }
    let select: Vec<String> = cols.iter().map(|c| quote_ident(&c.name)).collect();
    let dir = if newest { "DESC" } else { "ASC" };
    // A mutable table's tombstones are rows of the batch like the others,
    // merged in version order (they share the clock); an append-only table
    // reads its rows alone.
    let with_tombstones = t.mutable && Table::Tombstones.exists(&conn)?;
    let rows_sql = format!(
        "SELECT {}, {seq}, 0 FROM main.{} WHERE {seq} > ?1 AND {seq} <= ?2",
        select.join(", "),
        info.quoted(),
    );
    let sql = if with_tombstones {
        let names: Vec<String> = cols.iter().map(|c| c.name.clone()).collect();
        let key = t.delete_key.as_deref().unwrap_or(&[]);
        format!(
            "{rows_sql} UNION ALL {} ORDER BY {} {dir} LIMIT ?3",
            tombstones::select_sql(&names, key),
            cols.len() + 1
        )
    } else {
        format!("{rows_sql} ORDER BY {seq} {dir} LIMIT ?3")
    };
    let mut stmt = conn.prepare(&sql)?;
    let n = cols.len();
    let mut deleted: Vec<bool> = Vec::new();
    let mut versions: Vec<i64> = Vec::new();
    let mut values: Vec<Vec<sluice_wire::Value>> = vec![Vec::new(); n];
    let mut size = 0usize;
    let mut row_buf: Vec<sluice_wire::Value> = Vec::with_capacity(n);
    // Whether every pending row above the floor was looked at.
    let mut exhausted = true;
    'gaps: for (lo, hi) in gaps {
        let room = max_rows - versions.len() as i64;
        if room <= 0 {
            exhausted = false;
            break;
        }
        let mut rows = if with_tombstones {
            stmt.query(params![lo, hi, room, t.tbl])?
        } else {
            stmt.query(params![lo, hi, room])?
        };
        let mut taken = 0i64;
        while let Some(row) = rows.next()? {
            row_buf.clear();
            let mut row_size = 2usize;
            for i in 0..n {
                let v = wire_value(row.get_ref(i)?);
                row_size += value_size(&v);
                row_buf.push(v);
            }
            if !versions.is_empty() && size + row_size > MAX_BATCH_BYTES {
                exhausted = false;
                break 'gaps;
            }
            size += row_size;
            taken += 1;
            versions.push(row.get(n)?);
            deleted.push(row.get::<_, i64>(n + 1)? == 1);
            for (col, v) in values.iter_mut().zip(row_buf.drain(..)) {
                col.push(v);
            }
        }
        if taken == room {
            // Full: rows may remain in this gap or the next.
            exhausted = false;
            break;
        }
    }
    if versions.is_empty() {
        return Ok(Value::Null);
    }
    if newest {
        // Newest first was only the choice of rows; a batch lists them in
        // sequence order.
        versions.reverse();
        deleted.reverse();
        for col in &mut values {
            col.reverse();
        }
    }
    let (first_seq, last_seq) = (versions[0], versions[versions.len() - 1]);
    // The batch covers (base_seq, last_seq]: every pending row in that
    // range is in it. Oldest first, or newest first down to the floor, it
    // starts at the floor, so its acknowledgement moves the watermark when
    // the floor is the watermark; otherwise it starts just below its first row.
    // `first_seq` is above the floor, so `first_seq - 1` cannot overflow;
    // checked all the same (a sequence number is the user's rowid).
    let base_seq = if !newest || exhausted {
        floor
    } else {
        first_seq.checked_sub(1).unwrap_or(floor)
    };
    let header = BatchHeader {
        device_id,
        stream_id: stream as u64,
        table: info.name.clone(),
        base_seq,
        last_seq,
        row_count: 0,
        sent_at_ms: now_ms(),
        columns: cols,
        fingerprint: 0,
        digest: None,
        origin: sluice_wire::Origin {
            machine: machine_hash(meta::machine(&conn)?.as_deref()),
            zone: wire_zone(meta::zone(&conn)?.as_deref()),
            fork: fork::for_batch(&conn, &t.tbl, base_seq)?,
        },
        resend: 0,
    };
    let bytes = encode_with_deletes(
        &header,
        &versions,
        &deleted,
        &values,
        EncodeOptions::default(),
    )
    .map_err(|e| Fail(e.to_string()))?;
    Ok(Value::Blob(bytes))
}

/// With `since`: the sequence number the window starts above. Every row
/// above the watermark whose time is within the last `secs` is above it, so
/// that a row with a time from the past (a late reading, a clock that jumped
/// back) never hides the recent rows below it, and is sent with them: the
/// start is the newest pending row older than `secs` ago, or, when a row
/// below that one has a time of the window, just below the oldest such row
/// (a row acknowledged in a range counts, so that the window does not
/// depend on how it was cut into batches); the watermark if no row is older.
/// A time from the future ([`crate::time::future_after`]) is not of the
/// window. The rows above are one contiguous range, so that acknowledging
/// the batch can never cover a pending row it did not carry.
///
/// Finding the oldest recent row reads the rows between the watermark and
/// the newest old one (the time column is not assumed to be indexed).
fn since_floor(
    conn: &Connection,
    info: &TableInfo,
    t: &Tracked,
    seq: &SeqColumn,
    secs: i64,
) -> Res<i64> {
    let Some(tc) = tables::time_column(conn, &info.name)? else {
        return Err(Fail(format!(
            "option 'since' needs the time column of '{}'; declare it with \
             SELECT sluice_track('{}', '{{\"time\": \"column\"}}')",
            info.name,
            info.name.replace('\'', "''")
        )));
    };
    let now = now_ms() / 1000;
    let cutoff = now.saturating_sub(secs);
    let time = EpochSql(&quote_ident(&tc));
    let newest_old: Option<i64> = conn
        .query_row(
            &format!(
                "SELECT {seq} FROM main.{} WHERE {seq} > ?1 AND {time} < ?2 ORDER BY {seq} DESC LIMIT 1",
                info.quoted(),
            ),
            params![t.acked_seq, cutoff],
            |r| r.get(0),
        )
        .optional()?;
    let Some(old) = newest_old.filter(|o| *o > t.acked_seq) else {
        return Ok(t.acked_seq);
    };
    // The oldest row below it (pending, or acknowledged in a range above
    // the watermark) whose time is of the window.
    let recent: Option<i64> = conn
        .query_row(
            &format!(
                "SELECT {seq} FROM main.{} WHERE {seq} > ?1 AND {seq} < ?2 \
                 AND {time} >= ?3 AND {time} <= ?4 ORDER BY {seq} LIMIT 1",
                info.quoted(),
            ),
            params![t.acked_seq, old, cutoff, future_after(now)],
            |r| r.get(0),
        )
        .optional()?;
    // Above the watermark, so one below it is not under it.
    Ok(recent.map_or(old, |r| r.saturating_sub(1).max(t.acked_seq)))
}

fn wire_value(v: ValueRef<'_>) -> sluice_wire::Value {
    match v {
        ValueRef::Null => sluice_wire::Value::Null,
        ValueRef::Integer(i) => sluice_wire::Value::Integer(i),
        ValueRef::Real(f) => sluice_wire::Value::Real(f),
        // SQLite may hold text that is not valid UTF-8; it is sent with the
        // invalid bytes replaced.
        ValueRef::Text(t) => sluice_wire::Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => sluice_wire::Value::Blob(b.to_vec()),
    }
}

/// Upper bound of a value's size in the batch body.
fn value_size(v: &sluice_wire::Value) -> usize {
    1 + match v {
        sluice_wire::Value::Null => 0,
        sluice_wire::Value::Integer(_) => 10,
        sluice_wire::Value::Real(_) => 8,
        sluice_wire::Value::Text(s) => s.len() + 5,
        sluice_wire::Value::Blob(b) => b.len() + 5,
    }
}

#[cfg(test)]
mod since_tests;
