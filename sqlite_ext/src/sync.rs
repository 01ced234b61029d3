//! The edge half of the sync protocol (`docs/sync-protocol.md`):
//! `sluice_device`, `sluice_track`, `sluice_batch`, `sluice_ack`,
//! `sluice_pending`, `sluice_cleanup`.
//!
//! A tracked table has a watermark `acked_seq` in `sluice_tables`; a row is
//! pending when its sequence number (the rowid of an append-only table, the
//! `sluice_version` of a mutable one) is above it. Cutting a batch only
//! reads; acknowledging moves the watermark; cleanup deletes only rows at or
//! below a watermark that was acknowledged at least `keep` ago.

use rusqlite::functions::Context;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{params, Connection, OptionalExtension};
use sluice_wire::{decode_header, encode, BatchHeader, Column, ColumnType, EncodeOptions};

use crate::acked;
use crate::options::{
    check_device_id, check_keep, parse_batch_options, parse_duration, parse_track_options,
    quote_ident, BatchOptions, DrainOrder, TrackOptions,
};
use crate::schema::{
    atomic, autoincrement_covers, check_high_water, ensure_bookkeeping, has_bookkeeping, meta_get,
    require_tracked, seq_column, stream_id, table_info, tracked, TableInfo, Tracked,
    VERSION_COLUMN,
};
use crate::{
    arg_blob, arg_int, arg_opt_text, arg_raw, arg_text, connection, describe_value, finish, now_ms,
    Fail, Res,
};

/// Default `max_rows` of `sluice_batch`.
pub const DEFAULT_BATCH_ROWS: i64 = 1000;
/// Largest `max_rows` of `sluice_batch`.
pub const MAX_BATCH_ROWS: i64 = 1_000_000;
/// A batch stops growing before its uncompressed rows would pass this size.
pub const MAX_BATCH_BYTES: usize = 16 << 20;

// ---------------------------------------------------------------------------
// sluice_device

/// `sluice_device()` → the device id or NULL; `sluice_device(id)` sets it.
pub fn sluice_device(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_device", device(ctx))
}

fn device(ctx: &Context<'_>) -> Res<Value> {
    let conn = connection(ctx)?;
    if ctx.is_empty() {
        return Ok(meta_get(&conn, "device_id")?.unwrap_or(Value::Null));
    }
    let id = match arg_raw(ctx, 0)? {
        ValueRef::Text(_) => arg_text(ctx, 0, "the device id")?,
        other => {
            return Err(Fail(format!(
                "the device id must be text, got {}",
                describe_value(other)
            )))
        }
    };
    check_device_id(id)?;
    atomic(&conn, "sluice_device", || {
        ensure_bookkeeping(&conn)?;
        conn.execute(
            "INSERT INTO main.sluice_meta (key, value) VALUES ('device_id', ?1) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [id],
        )?;
        Ok(())
    })?;
    Ok(Value::Text(id.to_string()))
}

// ---------------------------------------------------------------------------
// sluice_track

/// `sluice_track(table [, options])` → 1.
pub fn sluice_track(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_track", track(ctx))
}

fn track(ctx: &Context<'_>) -> Res<Value> {
    let table = arg_text(ctx, 0, "the table name")?;
    let opts = match arg_opt_text(ctx, 1, "options")? {
        Some(text) => parse_track_options(text)?,
        None => TrackOptions::default(),
    };
    let conn = connection(ctx)?;
    let info = table_info(&conn, table)?;
    if info.name.to_ascii_lowercase().starts_with("sqlite_")
        || crate::bookkeeping::is_bookkeeping(&info.name)
    {
        return Err(Fail(format!(
            "'{}' is an internal table and cannot be tracked",
            info.name
        )));
    }
    atomic(&conn, "sluice_track", || {
        ensure_bookkeeping(&conn)?;
        let existing = tracked(&conn, &info.name)?;
        let mutable = match (&existing, opts.mutable) {
            (Some(e), Some(m)) if e.mutable != m => {
                return Err(Fail(format!(
                    "'{}' is already tracked as {}; changing \"mutable\" of a tracked table is \
                     not supported (its sequence numbers would change meaning)",
                    info.name,
                    if e.mutable { "mutable" } else { "append-only" }
                )))
            }
            (Some(e), _) => e.mutable,
            (None, m) => m.unwrap_or(false),
        };
        let local_only = canonical_columns(
            &info,
            "local_only",
            opts.local_only
                .or_else(|| existing.as_ref().map(|e| e.local_only.clone()))
                .unwrap_or_default(),
        )?;
        let key = canonical_columns(
            &info,
            "key",
            opts.key
                .or_else(|| existing.as_ref().map(|e| e.key.clone()))
                .unwrap_or_default(),
        )?;
        let time_column = match &opts.time {
            Some(t) => Some(canonical_columns(&info, "time", vec![t.clone()])?.remove(0)),
            None => None,
        };
        if mutable {
            setup_mutable(&conn, &info)?;
        } else if info.rowid_alias().is_none() {
            return Err(Fail(format!(
                "append-only table '{}' needs an INTEGER PRIMARY KEY column (a rowid alias{}) to \
                 number its rows; add one, or track it as mutable: \
                 SELECT sluice_track('{}', '{{\"mutable\": true}}')",
                info.name,
                if info.without_rowid {
                    "; this is a WITHOUT ROWID table"
                } else {
                    ""
                },
                info.name.replace('\'', "''")
            )));
        }
        conn.execute(
            "INSERT INTO main.sluice_tables \
             (tbl, mutable, local_only, key_columns, created_at, time_column) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (tbl) DO UPDATE SET local_only = excluded.local_only, \
             key_columns = excluded.key_columns, \
             time_column = coalesce(excluded.time_column, sluice_tables.time_column)",
            params![
                info.name,
                mutable,
                serde_json::to_string(&local_only).map_err(|e| Fail(e.to_string()))?,
                serde_json::to_string(&key).map_err(|e| Fail(e.to_string()))?,
                now_ms(),
                time_column
            ],
        )?;
        Ok(())
    })?;
    Ok(Value::Integer(1))
}

/// Checks that every name is a column of the table; returns the names as the
/// schema spells them.
fn canonical_columns(info: &TableInfo, option: &str, names: Vec<String>) -> Res<Vec<String>> {
    names
        .iter()
        .map(|n| {
            info.column(n).map(|(_, c)| c.name.clone()).ok_or_else(|| {
                Fail(format!(
                    "option '{option}': table '{}' has no column '{n}'",
                    info.name
                ))
            })
        })
        .collect()
}

/// Adds the version column, its index and the triggers of a mutable table,
/// and gives every row without a version one.
fn setup_mutable(conn: &Connection, info: &TableInfo) -> Res<()> {
    let t = info.quoted();
    let v = quote_ident(VERSION_COLUMN);
    if info.column(VERSION_COLUMN).is_none() {
        conn.execute_batch(&format!("ALTER TABLE main.{t} ADD COLUMN {v} INTEGER"))?;
    }
    let index = quote_ident(&format!("{}_sluice_version", info.name));
    let ins = quote_ident(&format!("{}_sluice_insert", info.name));
    let upd = quote_ident(&format!("{}_sluice_update", info.name));
    // Trigger bodies may not name a schema. Which row the trigger fired for: the rowid, or the primary key of a
    // WITHOUT ROWID table.
    let this_row = if info.without_rowid {
        info.columns
            .iter()
            .filter(|c| c.pk > 0)
            .map(|c| {
                let q = quote_ident(&c.name);
                format!("{q} IS NEW.{q}")
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    } else {
        "_rowid_ = NEW._rowid_".to_string()
    };
    let bump = format!(
        "UPDATE sluice_clock SET value = value + 1 WHERE id = 1; \
         UPDATE {t} SET {v} = (SELECT value FROM sluice_clock WHERE id = 1) \
         WHERE {this_row};"
    );
    conn.execute_batch(&format!(
        "CREATE INDEX IF NOT EXISTS main.{index} ON {t} ({v});
         UPDATE main.sluice_clock
            SET value = max(value, coalesce((SELECT max({v}) FROM main.{t}), 0))
          WHERE id = 1;
         DROP TRIGGER IF EXISTS main.{ins};
         DROP TRIGGER IF EXISTS main.{upd};
         CREATE TRIGGER main.{ins} AFTER INSERT ON {t} FOR EACH ROW
           WHEN NEW.{v} IS NULL
         BEGIN {bump} END;
         CREATE TRIGGER main.{upd} AFTER UPDATE ON {t} FOR EACH ROW
           WHEN NEW.{v} IS OLD.{v} OR NEW.{v} IS NULL
         BEGIN {bump} END;
         UPDATE main.{t} SET {v} = NULL WHERE {v} IS NULL;"
    ))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// sluice_batch

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
    let t = require_tracked(&conn, &info)?;
    let device_id = match meta_get(&conn, "device_id")? {
        Some(Value::Text(d)) => d,
        _ => {
            return Err(Fail(
                "no device id; set one with SELECT sluice_device('name')".to_string(),
            ))
        }
    };
    let stream = stream_id(&conn)?;
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
    let ranges = acked::ranges_above(&conn, &t.tbl, floor)?;
    let mut gaps = acked::pending_gaps(&ranges, floor);
    let newest = opts.order == DrainOrder::Newest;
    if newest {
        gaps.reverse();
    }
    let select: Vec<String> = cols.iter().map(|c| quote_ident(&c.name)).collect();
    let sql = format!(
        "SELECT {}, {seq} FROM main.{} WHERE {seq} > ?1 AND {seq} <= ?2 ORDER BY {seq} {} LIMIT ?3",
        select.join(", "),
        info.quoted(),
        if newest { "DESC" } else { "ASC" }
    );
    let mut stmt = conn.prepare(&sql)?;
    let n = cols.len();
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
        let mut rows = stmt.query(params![lo, hi, room])?;
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
    };
    let bytes = encode(&header, &versions, &values, EncodeOptions::default())
        .map_err(|e| Fail(e.to_string()))?;
    Ok(Value::Blob(bytes))
}

/// With `since`: the sequence number of the newest pending row whose time is
/// older than `secs` ago (or the watermark if there is none). The rows above
/// it are "the last `secs`" as one contiguous range, so that acknowledging
/// the batch can never cover a pending row it did not carry.
fn since_floor(conn: &Connection, info: &TableInfo, t: &Tracked, seq: &str, secs: i64) -> Res<i64> {
    let Some(tc) = crate::buffer::time_column(conn, &info.name)? else {
        return Err(Fail(format!(
            "option 'since' needs the time column of '{}'; declare it with \
             SELECT sluice_track('{}', '{{\"time\": \"column\"}}')",
            info.name,
            info.name.replace('\'', "''")
        )));
    };
    let cutoff = (now_ms() / 1000).saturating_sub(secs);
    let floor: Option<i64> = conn
        .query_row(
            &format!(
                "SELECT {seq} FROM main.{} WHERE {seq} > ?1 AND {} < ?2 ORDER BY {seq} DESC LIMIT 1",
                info.quoted(),
                crate::buffer::epoch_sql(&quote_ident(&tc))
            ),
            params![t.acked_seq, cutoff],
            |r| r.get(0),
        )
        .optional()?;
    Ok(floor.unwrap_or(t.acked_seq).max(t.acked_seq))
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

// ---------------------------------------------------------------------------
// sluice_ack

/// `sluice_ack(batch)` → the batch's row count, or 0 if it was acknowledged already.
pub fn sluice_ack(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_ack", ack(ctx))
}

fn ack(ctx: &Context<'_>) -> Res<Value> {
    let blob = arg_blob(ctx, 0, "the batch")?;
    let h = decode_header(blob).map_err(|e| Fail(e.to_string()))?;
    let conn = connection(ctx)?;
    if !has_bookkeeping(&conn)? {
        return Err(Fail(format!(
            "batch {} belongs to another database: no table is tracked in this one",
            h.id()
        )));
    }
    let ours = stream_id(&conn)?;
    if h.stream_id != ours as u64 {
        return Err(Fail(format!(
            "batch {} belongs to another database (stream id {:016x}, this database has {:016x})",
            h.id(),
            h.stream_id,
            ours as u64
        )));
    }
    let Some(t) = tracked(&conn, &h.table)? else {
        return Err(Fail(format!(
            "batch {}: table '{}' is not tracked in this database",
            h.id(),
            h.table
        )));
    };
    let ranges = acked::ranges_above(&conn, &t.tbl, t.acked_seq)?;
    if acked::covered(&ranges, t.acked_seq, h.base_seq, h.last_seq) {
        return Ok(Value::Integer(0));
    }
    let now = now_ms();
    atomic(&conn, "sluice_ack", || {
        match acked::record(&conn, &t.tbl, t.acked_seq, &ranges, h.base_seq, h.last_seq)? {
            acked::Acked::Watermark(wm) => {
                conn.execute(
                    "UPDATE main.sluice_tables SET acked_seq = ?1, acked_at = ?2, \
                     acked_batches = acked_batches + 1, acked_rows = acked_rows + ?3 \
                     WHERE tbl = ?4",
                    params![wm, now, h.row_count, t.tbl],
                )?;
                conn.execute(
                    "INSERT INTO main.sluice_acks (tbl, acked_seq, acked_at) VALUES (?1, ?2, ?3)",
                    params![t.tbl, wm, now],
                )?;
            }
            acked::Acked::Range => {
                conn.execute(
                    "UPDATE main.sluice_tables SET acked_at = ?1, \
                     acked_batches = acked_batches + 1, acked_rows = acked_rows + ?2 \
                     WHERE tbl = ?3",
                    params![now, h.row_count, t.tbl],
                )?;
            }
        }
        Ok(())
    })?;
    Ok(Value::Integer(i64::from(h.row_count)))
}

// ---------------------------------------------------------------------------
// sluice_pending

/// `sluice_pending(table)` → rows above the watermark.
pub fn sluice_pending(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_pending", pending(ctx))
}

fn pending(ctx: &Context<'_>) -> Res<Value> {
    let table = arg_text(ctx, 0, "the table name")?;
    let conn = connection(ctx)?;
    let info = table_info(&conn, table)?;
    let t = require_tracked(&conn, &info)?;
    let seq = seq_column(&info, &t)?;
    check_high_water(&conn, &info, &t, &seq)?;
    let ranges = acked::ranges_above(&conn, &t.tbl, t.acked_seq)?;
    let mut stmt = conn.prepare(&format!(
        "SELECT count(*) FROM main.{} WHERE {seq} > ?1 AND {seq} <= ?2",
        info.quoted()
    ))?;
    let mut n = 0i64;
    for (lo, hi) in acked::pending_gaps(&ranges, t.acked_seq) {
        n += stmt.query_row([lo, hi], |r| r.get::<_, i64>(0))?;
    }
    Ok(Value::Integer(n))
}

// ---------------------------------------------------------------------------
// sluice_cleanup

/// `sluice_cleanup(table, keep)` → rows deleted.
pub fn sluice_cleanup(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_cleanup", cleanup(ctx))
}

fn cleanup(ctx: &Context<'_>) -> Res<Value> {
    let table = arg_text(ctx, 0, "the table name")?;
    let keep = match arg_raw(ctx, 1)? {
        ValueRef::Integer(n) => check_keep(n)?,
        ValueRef::Text(_) => parse_duration(arg_text(ctx, 1, "keep")?)?,
        other => {
            return Err(Fail(format!(
                "keep must be seconds (an integer) or text like '24 hours', got {}",
                describe_value(other)
            )))
        }
    };
    let conn = connection(ctx)?;
    let info = table_info(&conn, table)?;
    let t = require_tracked(&conn, &info)?;
    let seq = seq_column(&info, &t)?;
    let cutoff = now_ms().saturating_sub(keep.saturating_mul(1000));
    let n = atomic(&conn, "sluice_cleanup", || {
        cleanup_rows(&conn, &info, &t, &seq, cutoff)
    })?;
    Ok(Value::Integer(n))
}

fn cleanup_rows(
    conn: &Connection,
    info: &TableInfo,
    t: &Tracked,
    seq: &str,
    cutoff: i64,
) -> Res<i64> {
    let upto: Option<i64> = conn.query_row(
        "SELECT max(acked_seq) FROM main.sluice_acks WHERE tbl = ?1 AND acked_at <= ?2",
        params![t.tbl, cutoff],
        |r| r.get(0),
    )?;
    // Never past the current watermark, whatever sluice_acks says.
    let Some(upto) = upto.map(|u| u.min(t.acked_seq)) else {
        return Ok(0);
    };
    let table = info.quoted();
    let mut cond = format!("{seq} <= ?1");
    if !t.mutable && !autoincrement_covers(conn, &info.name, upto)? {
        // Keep the newest row: it holds the rowid high-water mark, so that
        // SQLite never hands out a rowid at or below the watermark again.
        cond.push_str(&format!(
            " AND {seq} < (SELECT max({seq}) FROM main.{table})"
        ));
    }
    // A rollup source keeps the rows of windows that are not complete yet
    // (not processed by every rollup, or ended less than the late-data
    // horizon ago): a late row re-aggregates its window from all its raw
    // rows. The windows whose rows go are sealed, so that a row arriving
    // even later is not aggregated with what is left of them.
    let guard = crate::buffer::cleanup_guard(conn, info)?;
    let mut sealed: Option<i64> = None;
    if let Some((rolled_up, ep)) = &guard {
        cond = format!("{cond} AND {rolled_up}");
        sealed = conn.query_row(
            &format!("SELECT max({ep}) FROM main.{table} WHERE {cond}"),
            [upto],
            |r| r.get(0),
        )?;
    }
    let deleted = conn.execute(&format!("DELETE FROM main.{table} WHERE {cond}"), [upto])?;
    if let (true, Some(s)) = (deleted > 0, sealed) {
        crate::buffer::seal(conn, &info.name, s.saturating_add(1))?;
    }
    // The newest acknowledgement at or before the cutoff is kept: it is what
    // the next cleanup with the same keep needs.
    conn.execute(
        "DELETE FROM main.sluice_acks WHERE tbl = ?1 AND acked_at <= ?2 AND acked_seq < ?3",
        params![t.tbl, cutoff, upto],
    )?;
    Ok(deleted as i64)
}
