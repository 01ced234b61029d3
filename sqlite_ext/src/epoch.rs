//! Epochs and where the database runs: `sluice_machine` (the machine it
//! runs on; another one means it was copied), `sluice_zone` (the device's
//! zone, which batches carry), `sluice_new_epoch` (continue under a new
//! stream) and `sluice_identity` (all of it, as JSON).
//!
//! A new epoch gives the database a new random stream id, recorded in the
//! history of its streams with the one before it as parent; every tracked
//! table gets its fork ([`crate::fork`]); the pending rows of mutable tables
//! (above each table's own watermark, in no acknowledged range) and their
//! pending tombstones get new versions above the old clock and above the
//! current time in microseconds, so that the box's own changes, its deletes
//! too, are sent again and win in the cloud over whatever an earlier copy
//! of it sent. Append-only tables get no work per row
//! (docs/sync-protocol.md).

use rusqlite::functions::Context;
use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;
use serde_json::{json, Value as Json};
use sluice_wire::names::quote_ident;

use crate::acked;
use crate::bookkeeping::{self, clock, meta, ranges, streams, tables, Table};
use crate::fork;
use crate::glue::{
    arg_raw, arg_text, atomic, connection, describe_value, finish, now_ms, now_us, Fail, Res,
};
use crate::origin::{check_machine_id, check_zone, shown_zone};
use crate::schema::{find_table, table_info, TableInfo};
use crate::sequence::{seq_column, VERSION_COLUMN};

/// Largest length of the reason of a new epoch, in characters.
pub const MAX_REASON_CHARS: usize = 10_000;

/// Tries at drawing a stream id never used by this database before.
const STREAM_DRAWS: usize = 64;

/// Argument `i` as text, which may be empty; `what` names it in errors.
fn text_arg<'c>(ctx: &'c Context<'_>, i: usize, what: &str) -> Res<&'c str> {
    match arg_raw(ctx, i)? {
        ValueRef::Text(b"") => Ok(""),
        ValueRef::Text(_) => arg_text(ctx, i, what),
        other => Err(Fail(format!(
            "{what} must be text, got {}",
            describe_value(other)
        ))),
    }
}

// ---------------------------------------------------------------------------
// sluice_machine

/// `sluice_machine()` → the recorded machine id or NULL;
/// `sluice_machine(id)` → 0 (recorded, or the same), 1 (another machine:
/// a new epoch started).
pub fn sluice_machine(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_machine", machine(ctx))
}

fn machine(ctx: &Context<'_>) -> Res<Value> {
    let conn = connection(ctx)?;
    if ctx.is_empty() {
        return Ok(meta::machine(&conn)?.map_or(Value::Null, Value::Text));
    }
    let id = text_arg(ctx, 0, "the machine id")?;
    check_machine_id(id).map_err(Fail)?;
    let moved = atomic(&conn, "sluice_machine", || {
        bookkeeping::ensure(&conn)?;
        match meta::machine(&conn)? {
            Some(old) if old == id => Ok(false),
            Some(old) => {
                meta::set_machine(&conn, id)?;
                new_epoch(&conn, &format!("moved from machine '{old}' to '{id}'"))?;
                Ok(true)
            }
            None => {
                meta::set_machine(&conn, id)?;
                streams::set_machine_if_unknown(&conn, meta::stream_id(&conn)?, id)?;
                Ok(false)
            }
        }
    })?;
    Ok(Value::Integer(i64::from(moved)))
}

// ---------------------------------------------------------------------------
// sluice_zone

/// `sluice_zone()` → the device's zone; `sluice_zone(zone)` sets it and
/// returns it as stored ('' is `UTC`).
pub fn sluice_zone(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_zone", zone(ctx))
}

fn zone(ctx: &Context<'_>) -> Res<Value> {
    let conn = connection(ctx)?;
    if ctx.is_empty() {
        return Ok(Value::Text(shown_zone(meta::zone(&conn)?.as_deref())));
    }
    let zone = check_zone(text_arg(ctx, 0, "the zone")?).map_err(Fail)?;
    atomic(&conn, "sluice_zone", || {
        bookkeeping::ensure(&conn)?;
        meta::set_zone(&conn, &zone)
    })?;
    Ok(Value::Text(zone))
}

// ---------------------------------------------------------------------------
// sluice_new_epoch

/// `sluice_new_epoch(reason)` → the new stream id.
pub fn sluice_new_epoch(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_new_epoch", new_epoch_sql(ctx))
}

fn new_epoch_sql(ctx: &Context<'_>) -> Res<Value> {
    let reason = arg_text(ctx, 0, "the reason")?;
    let n = reason.chars().count();
    if n > MAX_REASON_CHARS {
        return Err(Fail(format!(
            "the reason is {n} characters, the limit is {MAX_REASON_CHARS}"
        )));
    }
    let conn = connection(ctx)?;
    let stream = atomic(&conn, "sluice_new_epoch", || new_epoch(&conn, reason))?;
    Ok(Value::Integer(stream))
}

/// Starts a new epoch (inside the caller's savepoint); returns the new
/// stream id.
fn new_epoch(conn: &Connection, reason: &str) -> Res<i64> {
    bookkeeping::ensure(conn)?;
    let old = meta::stream_id(conn)?;
    let stream = fresh_stream(conn)?;
    let now = now_ms();
    streams::record(
        conn,
        stream,
        old,
        now,
        reason,
        meta::machine(conn)?.as_deref(),
    )?;
    meta::set_stream_id(conn, stream)?;

    // Forks first, from the sequence numbers as they are; then the clock
    // passes every version of every mutable table before it jumps.
    // Each mutable table with its pending intervals of versions.
    let mut mutable: Vec<MutablePending> = Vec::new();
    for reg in tables::list(conn, None)? {
        let t = &reg.tracked;
        // A tracked table dropped since has nothing to send.
        if find_table(conn, &t.tbl)?.is_none() {
            tables::set_fork(conn, &t.tbl, None)?;
            continue;
        }
        let info = table_info(conn, &t.tbl)?;
        let seq = seq_column(&info, t)?;
        fork::start(conn, &info, t, &seq, old)?;
        if t.mutable {
            clock::raise_past(conn, &info.quoted(), &quote_ident(VERSION_COLUMN))?;
            let gaps = acked::pending_gaps(&ranges::above(conn, &t.tbl, t.acked_seq)?, t.acked_seq);
            mutable.push((info, t.tbl.clone(), gaps));
        }
    }
    if !mutable.is_empty() {
        let clock = clock::value(conn)?;
        let jump = clock
            .checked_add(1)
            .ok_or_else(|| Fail(clock_full(clock)))?
            .max(now_us());
        // The pending rows of each table (above its own watermark, in no
        // acknowledged range) are the database's own work the cloud does not
        // have (a restored box's changes since its restore point, a clone's
        // first ones): they get new versions and win in the cloud. So do its
        // pending tombstones: a delete (or the old key of a key change) made
        // since the restore point is the box's own change too, and left at
        // its old version it would lose to what an earlier copy sent of the
        // key (fault trial seed 20261764). The acknowledged rows keep
        // theirs: the cloud may hold newer versions of them (what the lost
        // future sent), which a restore must not revert. The cut-off is per
        // table: the acknowledgement of one table says nothing of another's
        // rows.
        // `last` is the last version handed out.
        let mut last = jump - 1;
        let with_tombstones = Table::Tombstones.exists(conn)?;
        for (info, tbl, gaps) in &mutable {
            if with_tombstones {
                last = restamp_tombstones(conn, tbl, last, gaps)?;
            }
            last = restamp(conn, info, last, gaps)?;
        }
        clock::set(conn, last.max(clock))?;
    }
    Ok(stream)
}

/// A mutable table at a new epoch: its description, its name as tracked
/// (its tombstones' `tbl`) and its pending intervals of versions.
type MutablePending = (TableInfo, String, Vec<(i64, i64)>);

fn clock_full(clock: i64) -> String {
    format!(
        "sluice_clock is at {clock}: the versions of mutable tables would overflow; \
         the bookkeeping was written by hand"
    )
}

/// A random stream id, positive and never one of this database's before.
fn fresh_stream(conn: &Connection) -> Res<i64> {
    for _ in 0..STREAM_DRAWS {
        let s: i64 = conn.query_row("SELECT random() & 0x7fffffffffffffff", [], |r| r.get(0))?;
        if s != 0 && !streams::known(conn, s)? {
            return Ok(s);
        }
    }
    Err(Fail(
        "could not draw a new stream id (SQLite's random() keeps returning known ones)".to_string(),
    ))
}

/// The condition "`v` (a quoted column) is in one of the intervals `gaps`"
/// (`(lo, hi]`, from [`acked::pending_gaps`]), or `None` without gaps.
/// Integers written into the statement: there is no limit on how many.
/// The first gap's floor comes first, alone, so that the planner reads the
/// index from there in version order (with only the OR of ranges it scans
/// the whole index for the numbering's ORDER BY).
fn pending_sql(v: &str, gaps: &[(i64, i64)]) -> Option<String> {
    let &(floor, _) = gaps.first()?;
    let mut pending = format!("{v} > {floor}");
    if gaps.len() > 1 {
        let ors: Vec<String> = gaps
            .iter()
            .map(|&(lo, hi)| {
                if hi == i64::MAX {
                    format!("{v} > {lo}")
                } else {
                    format!("({v} > {lo} AND {v} <= {hi})")
                }
            })
            .collect();
        pending = format!("{pending} AND ({})", ors.join(" OR "));
    }
    Some(pending)
}

/// Gives every tombstone of `tbl` whose version is in one of the intervals
/// `gaps` (the pending ones) a new version, `after + 1`, `after + 2`, ...
/// in the order of their old versions; returns the last one handed out.
/// Call it before [`restamp`] of the table's rows, which then number on
/// from there: a row of a key is always newer than the key's tombstones (a
/// key deleted and inserted again; a deleted row is gone), so every row
/// staying above every tombstone keeps that order for each key. The new
/// versions are above every old one (`after` is at least the clock), so
/// the primary key `(tbl, version)` never meets itself.
fn restamp_tombstones(conn: &Connection, tbl: &str, after: i64, gaps: &[(i64, i64)]) -> Res<i64> {
    let Some(pending) = pending_sql("version", gaps) else {
        return Ok(after);
    };
    let n = conn.execute(
        &format!(
            "UPDATE main.sluice_tombstones SET version = ?1 + r.n \
               FROM (SELECT version AS old, row_number() OVER (ORDER BY version) AS n \
                       FROM main.sluice_tombstones WHERE tbl = ?2 AND {pending}) AS r \
              WHERE sluice_tombstones.tbl = ?2 AND sluice_tombstones.version = r.old"
        ),
        rusqlite::params![after, tbl],
    )?;
    after
        .checked_add(i64::try_from(n).unwrap_or(i64::MAX))
        .ok_or_else(|| Fail(clock_full(after)))
}

/// Gives every row of the mutable table whose version is in one of the
/// intervals `gaps` (`(lo, hi]`, from [`acked::pending_gaps`]: the pending
/// rows) a new version, `after + 1`, `after + 2`, ... in the order of their
/// old versions; returns the last one handed out. Only rows above the
/// watermark are read (ranges on the version's index). The update sets the
/// version itself, so the table's triggers (which fire only when it stays
/// the same or is NULL) do not bump it again.
fn restamp(conn: &Connection, info: &TableInfo, after: i64, gaps: &[(i64, i64)]) -> Res<i64> {
    let t = info.quoted();
    let v = quote_ident(VERSION_COLUMN);
    let Some(pending) = pending_sql(&v, gaps) else {
        return Ok(after);
    };
    let rows: i64 = conn.query_row(
        &format!("SELECT count(*) FROM main.{t} WHERE {pending}"),
        [],
        |r| r.get(0),
    )?;
    let Some(last) = after.checked_add(rows) else {
        return Err(Fail(clock_full(after)));
    };
    if rows == 0 {
        return Ok(after);
    }
    // Which row: the rowid, or the primary key of a WITHOUT ROWID table.
    let key: Vec<String> = if info.without_rowid {
        info.columns
            .iter()
            .filter(|c| c.pk > 0)
            .map(|c| quote_ident(&c.name))
            .collect()
    } else {
        vec!["_rowid_".to_string()]
    };
    // The numbered rows, under a name that is not the table's.
    let r = if info.name.eq_ignore_ascii_case("sluice_renumbered") {
        "sluice_renumbered_"
    } else {
        "sluice_renumbered"
    };
    let picked: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{k} AS k{i}"))
        .collect();
    let same: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{t}.{k} IS {r}.k{i}"))
        .collect();
    conn.execute(
        &format!(
            "UPDATE main.{t} SET {v} = ?1 + {r}.n \
               FROM (SELECT {}, row_number() OVER (ORDER BY {v}, {}) AS n FROM main.{t} \
                      WHERE {pending}) AS {r} \
              WHERE {}",
            picked.join(", "),
            key.join(", "),
            same.join(" AND ")
        ),
        [after],
    )?;
    Ok(last)
}

// ---------------------------------------------------------------------------
// sluice_identity

/// `sluice_identity()` → JSON: device id, stream id, machine, zone and the
/// epochs, oldest first.
pub fn sluice_identity(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_identity", identity(ctx))
}

fn identity(ctx: &Context<'_>) -> Res<Value> {
    let conn = connection(ctx)?;
    let device = match meta::device_id(&conn)? {
        Some(Value::Text(d)) => Json::String(d),
        _ => Json::Null,
    };
    let epochs: Vec<Json> = streams::list(&conn)?
        .into_iter()
        .map(|e| {
            json!({
                "stream_id": e.stream_id,
                "parent_stream": e.parent_stream,
                "started_at": e.started_at,
                "reason": e.reason,
                "machine": e.machine,
            })
        })
        .collect();
    let v = json!({
        "device_id": device,
        "stream_id": meta::stream_id(&conn).ok(),
        "machine": meta::machine(&conn)?,
        "zone": shown_zone(meta::zone(&conn)?.as_deref()),
        "epochs": epochs,
    });
    Ok(Value::Text(v.to_string()))
}

#[cfg(test)]
mod tests;
