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
use rusqlite::{params, Connection};
use sluice_wire::{decode_header, encode, BatchHeader, Column, ColumnType, EncodeOptions};

use crate::options::{
    check_device_id, check_keep, parse_duration, parse_track_options, quote_ident, TrackOptions,
};
use crate::schema::{
    atomic, autoincrement_covers, check_high_water, ensure_bookkeeping, has_bookkeeping, meta_get,
    require_tracked, seq_column, stream_id, table_info, tracked, TableInfo, Tracked, BOOKKEEPING,
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
        || BOOKKEEPING
            .iter()
            .any(|b| b.eq_ignore_ascii_case(&info.name))
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

/// `sluice_batch(table [, max_rows])` → BLOB, or NULL when nothing is pending.
pub fn sluice_batch(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_batch", batch(ctx))
}

fn batch(ctx: &Context<'_>) -> Res<Value> {
    let table = arg_text(ctx, 0, "the table name")?;
    let max_rows = if ctx.len() > 1 {
        arg_int(ctx, 1, "max_rows")?
    } else {
        DEFAULT_BATCH_ROWS
    };
    if !(1..=MAX_BATCH_ROWS).contains(&max_rows) {
        return Err(Fail(format!(
            "max_rows must be between 1 and {MAX_BATCH_ROWS}, got {max_rows}"
        )));
    }
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
    let select: Vec<String> = cols.iter().map(|c| quote_ident(&c.name)).collect();
    let sql = format!(
        "SELECT {}, {seq} FROM main.{} WHERE {seq} > ?1 ORDER BY {seq} LIMIT ?2",
        select.join(", "),
        info.quoted()
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(params![t.acked_seq, max_rows])?;
    let n = cols.len();
    let mut versions: Vec<i64> = Vec::new();
    let mut values: Vec<Vec<sluice_wire::Value>> = vec![Vec::new(); n];
    let mut size = 0usize;
    let mut row_buf: Vec<sluice_wire::Value> = Vec::with_capacity(n);
    while let Some(row) = rows.next()? {
        row_buf.clear();
        let mut row_size = 2usize;
        for i in 0..n {
            let v = wire_value(row.get_ref(i)?);
            row_size += value_size(&v);
            row_buf.push(v);
        }
        if !versions.is_empty() && size + row_size > MAX_BATCH_BYTES {
            break;
        }
        size += row_size;
        versions.push(row.get(n)?);
        for (col, v) in values.iter_mut().zip(row_buf.drain(..)) {
            col.push(v);
        }
    }
    let Some(&last_seq) = versions.last() else {
        return Ok(Value::Null);
    };
    let header = BatchHeader {
        device_id,
        stream_id: stream as u64,
        table: info.name.clone(),
        base_seq: t.acked_seq,
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
    if h.last_seq <= t.acked_seq {
        return Ok(Value::Integer(0));
    }
    if h.base_seq > t.acked_seq {
        return Err(Fail(format!(
            "batch {} starts after the watermark {} of '{}': acknowledging it would skip rows",
            h.id(),
            t.acked_seq,
            t.tbl
        )));
    }
    let now = now_ms();
    atomic(&conn, "sluice_ack", || {
        conn.execute(
            "UPDATE main.sluice_tables SET acked_seq = ?1, acked_at = ?2, \
             acked_batches = acked_batches + 1, acked_rows = acked_rows + ?3 \
             WHERE tbl = ?4",
            params![h.last_seq, now, h.row_count, t.tbl],
        )?;
        conn.execute(
            "INSERT INTO main.sluice_acks (tbl, acked_seq, acked_at) VALUES (?1, ?2, ?3)",
            params![t.tbl, h.last_seq, now],
        )?;
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
    let n: i64 = conn.query_row(
        &format!(
            "SELECT count(*) FROM main.{} WHERE {seq} > ?1",
            info.quoted()
        ),
        [t.acked_seq],
        |r| r.get(0),
    )?;
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
    let deleted = if !t.mutable && !autoincrement_covers(conn, &info.name, upto)? {
        // Keep the newest row: it holds the rowid high-water mark, so that
        // SQLite never hands out a rowid at or below the watermark again.
        conn.execute(
            &format!(
                "DELETE FROM main.{table} WHERE {seq} <= ?1 \
                 AND {seq} < (SELECT max({seq}) FROM main.{table})"
            ),
            [upto],
        )?
    } else {
        conn.execute(
            &format!("DELETE FROM main.{table} WHERE {seq} <= ?1"),
            [upto],
        )?
    };
    // The newest acknowledgement at or before the cutoff is kept: it is what
    // the next cleanup with the same keep needs.
    conn.execute(
        "DELETE FROM main.sluice_acks WHERE tbl = ?1 AND acked_at <= ?2 AND acked_seq < ?3",
        params![t.tbl, cutoff, upto],
    )?;
    Ok(deleted as i64)
}
