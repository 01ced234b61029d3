//! The other end of a batch: `sluice_ack` (the cloud applied it),
//! `sluice_pending` (what is not acknowledged yet) and `sluice_cleanup`
//! (delete what was acknowledged long enough ago).
//!
//! Acknowledging moves the watermark (or records a range above it, see
//! [`crate::acked`]); cleanup deletes only rows at or below a watermark that
//! was acknowledged at least `keep` ago. An acknowledgement recorded by a
//! clock that was ahead counts as made when cleanup first sees it in the
//! future, so a corrected clock never makes cleanup wait for the wrong time.

use rusqlite::functions::Context;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{params, Connection};
use sluice_wire::{decode_header, BatchHeader};

use crate::acked;
use crate::bookkeeping::tables::Tracked;
use crate::bookkeeping::{acks, meta, quarantine, ranges, resends, tables, tombstones, Table};
use crate::fork;
use crate::glue::{
    arg_blob, arg_raw, arg_text, atomic, connection, describe_value, finish, now_ms, Fail, Res,
};
use crate::options::{check_keep, parse_duration};
use crate::resend_rows;
use crate::schema::{find_table, table_info, TableInfo};
use crate::seal;
use crate::sequence::{autoincrement_covers, check_high_water, seq_column, SeqColumn};

/// `sluice_ack(batch)` → the batch's row count, or 0 if it was acknowledged already.
pub fn sluice_ack(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_ack", ack(ctx))
}

fn ack(ctx: &Context<'_>) -> Res<Value> {
    let blob = arg_blob(ctx, 0, "the batch")?;
    let h = decode_header(blob).map_err(|e| Fail(e.to_string()))?;
    let conn = connection(ctx)?;
    if !Table::Tables.exists(&conn)? {
        return Err(Fail(format!(
            "batch {} belongs to another database: no table is tracked in this one",
            h.id()
        )));
    }
    let ours = meta::stream_id(&conn)?;
    if h.stream_id != ours as u64 {
        return Err(Fail(format!(
            "batch {} belongs to another database (stream id {:016x}, this database has {:016x})",
            h.id(),
            h.stream_id,
            ours as u64
        )));
    }
    let Some(t) = tables::get(&conn, &h.table)? else {
        return Err(Fail(format!(
            "batch {}: table '{}' is not tracked in this database",
            h.id(),
            h.table
        )));
    };
    if h.resend > 0 {
        return ack_resend(&conn, &h, &t);
    }
    let ranges = ranges::above(&conn, &t.tbl, t.acked_seq)?;
    if acked::covered(&ranges, t.acked_seq, h.base_seq, h.last_seq) {
        return Ok(Value::Integer(0));
    }
    let now = now_ms();
    // A full disk must not lose the acknowledgement of a batch the cloud
    // applied: the reserve goes first, and once more on SQLITE_FULL.
    crate::reserve::atomic(&conn, "sluice_ack", || {
        let rows = i64::from(h.row_count);
        match acked::record(&conn, &t.tbl, t.acked_seq, &ranges, h.base_seq, h.last_seq)? {
            acked::Acked::Watermark(wm) => {
                tables::record_ack(&conn, &t.tbl, Some(wm), rows, now)?;
                acks::record(&conn, &t.tbl, wm, now)?;
            }
            acked::Acked::Range => tables::record_ack(&conn, &t.tbl, None, rows, now)?,
        }
        if t.mutable {
            // The batch carried every tombstone of its range: they go.
            tombstones::forget(&conn, &t.tbl, h.base_seq, h.last_seq)?;
        }
        forget_fork(&conn, &t.tbl)?;
        resend_rows::finish_void(&conn, &t)
    })?;
    Ok(Value::Integer(i64::from(h.row_count)))
}

/// The acknowledgement of a batch of re-send request `h.resend`: the
/// request moves to the batch's `last_seq` (never backwards), and is
/// finished when nothing of it is left to send. The table's watermark and
/// ranges stay as they are. A replayed acknowledgement returns 0.
fn ack_resend(conn: &Connection, h: &BatchHeader, t: &Tracked) -> Res<Value> {
    let n = i64::from(h.resend);
    let Some((r, finished)) = resends::get(conn, &t.tbl, n)? else {
        return Err(Fail(format!(
            "batch {}: table '{}' has no re-send request {n} in this database",
            h.id(),
            t.tbl
        )));
    };
    if finished || h.last_seq <= r.done_seq {
        return Ok(Value::Integer(0));
    }
    if h.base_seq > r.done_seq || h.last_seq > r.hi {
        return Err(Fail(format!(
            "batch {} does not continue re-send request {n} of '{}', which stands at {} of              ({}, {}]",
            h.id(),
            t.tbl,
            r.done_seq,
            r.lo,
            r.hi
        )));
    }
    let info = table_info(conn, &t.tbl)?;
    let seq = seq_column(&info, t)?;
    let now = now_ms();
    // As for any acknowledgement: at a full disk, the reserve goes and it
    // is tried once more.
    crate::reserve::atomic(conn, "sluice_ack", || {
        resends::advance(conn, &t.tbl, n, h.last_seq, false, now)?;
        // Finished when no row is left above what was sent; with any other
        // request left empty meanwhile (its rows deleted).
        resend_rows::finish_empty(conn, &info, t, &seq)
    })?;
    Ok(Value::Integer(i64::from(h.row_count)))
}

/// A new epoch's fork on the table goes once nothing pending is left at or
/// below its `fork_seq` (looked at only while the table has one).
fn forget_fork(conn: &Connection, tbl: &str) -> Res<()> {
    if tables::fork(conn, tbl)?.is_none() {
        return Ok(());
    }
    let (Some(t), Some(_)) = (tables::get(conn, tbl)?, find_table(conn, tbl)?) else {
        // A table dropped since has nothing left to send.
        return tables::set_fork(conn, tbl, None);
    };
    let info = table_info(conn, tbl)?;
    let seq = seq_column(&info, &t)?;
    fork::forget_if_done(conn, &info, &t, &seq)
}

// ---------------------------------------------------------------------------
// sluice_pending

/// `sluice_pending(table)` → rows above the watermark (with a mutable
/// table's deletes waiting to be sent).
pub fn sluice_pending(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_pending", pending(ctx))
}

fn pending(ctx: &Context<'_>) -> Res<Value> {
    let table = arg_text(ctx, 0, "the table name")?;
    let conn = connection(ctx)?;
    let info = table_info(&conn, table)?;
    let t = tables::require(&conn, &info)?;
    let seq = seq_column(&info, &t)?;
    check_high_water(&conn, &info, &t, &seq)?;
    let ranges = ranges::above(&conn, &t.tbl, t.acked_seq)?;
    // Quarantined rows are not pending (looked at only when there are some).
    let aside = quarantine::any(&conn, &t.tbl)?;
    let mut stmt = conn.prepare(&format!(
        "SELECT count(*) FROM main.{} WHERE {seq} > ?1 AND {seq} <= ?2{}",
        info.quoted(),
        if aside {
            format!(" AND {}", quarantine::exclude_sql(&seq.to_string(), "?3"))
        } else {
            String::new()
        }
    ))?;
    let mut n = 0i64;
    for (lo, hi) in acked::pending_gaps(&ranges, t.acked_seq) {
        n += if aside {
            stmt.query_row(params![lo, hi, t.tbl], |r| r.get::<_, i64>(0))?
        } else {
            stmt.query_row([lo, hi], |r| r.get::<_, i64>(0))?
        };
        if t.mutable {
            n += tombstones::count(&conn, &t.tbl, lo, hi)?;
        }
    }
    // And what unfinished re-sends are still to send.
    n = n.saturating_add(resend_rows::rows_to_send(&conn, &info, &t, &seq)?);
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
    let t = tables::require(&conn, &info)?;
    let seq = seq_column(&info, &t)?;
    let now = now_ms();
    let cutoff = now.saturating_sub(keep.saturating_mul(1000));
    let n = atomic(&conn, "sluice_cleanup", || {
        cleanup_rows(&conn, &info, &t, &seq, now, cutoff)
    })?;
    Ok(Value::Integer(n))
}

fn cleanup_rows(
    conn: &Connection,
    info: &TableInfo,
    t: &Tracked,
    seq: &SeqColumn,
    now: i64,
    cutoff: i64,
) -> Res<i64> {
    acks::clamp_future(conn, &t.tbl, now)?;
    let upto = acks::acked_by(conn, &t.tbl, cutoff)?;
    // Never past the current watermark, whatever sluice_acks says.
    let Some(upto) = upto.map(|u| u.min(t.acked_seq)) else {
        return Ok(0);
    };
    // Rows an unfinished re-send is still to send stay until it is done.
    let upto = resend_rows::live(conn, t)?
        .iter()
        .map(|r| r.done_seq)
        .fold(upto, i64::min);
    let table = info.quoted();
    let mut cond = format!("{seq} <= ?1");
    // Quarantined rows stay (looked at only when there are some).
    if quarantine::any(conn, &t.tbl)? {
        let name = t.tbl.replace('\'', "''");
        cond.push_str(&format!(
            " AND {}",
            quarantine::exclude_sql(&seq.to_string(), &format!("'{name}'"))
        ));
    }
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
    // even later is not aggregated with what is left of them. Rows from the
    // future go once rolled up, and seal nothing (see crate::seal).
    let mut sealed: Option<i64> = None;
    if let Some(rolled) = seal::cleanup_guard(conn, info)? {
        cond = format!("{cond} AND {}", rolled.may_leave());
        let ep = rolled.seal_time_sql();
        sealed = conn.query_row(
            &format!("SELECT max({ep}) FROM main.{table} WHERE {cond}"),
            [upto],
            |r| r.get(0),
        )?;
    }
    // Cleanup frees space at the edge; the cloud keeps the rows.
    let deleted = tombstones::quietly(conn, || {
        Ok(conn.execute(&format!("DELETE FROM main.{table} WHERE {cond}"), [upto])?)
    })?;
    if let (true, Some(s)) = (deleted > 0, sealed) {
        seal::seal(conn, &info.name, s.saturating_add(1))?;
    }
    // The newest acknowledgement at or before the cutoff is kept: it is what
    // the next cleanup with the same keep needs.
    acks::prune(conn, &t.tbl, cutoff, upto)?;
    Ok(deleted as i64)
}
