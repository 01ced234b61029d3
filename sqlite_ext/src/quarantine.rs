//! The quarantine (issue 12, case 7): `sluice_quarantine` moves a pending
//! row aside (the agent, after the cloud refused the row for its value),
//! `sluice_release` lets it go again once the operator fixed or deleted it.
//! `sluice_batch` moves a row over the batch limit aside by itself. A
//! quarantined row stays in its table: it is not pending, no batch carries
//! it, cleanup keeps it, and the rows behind it flow on. The entries are the
//! table `sluice_quarantine` ([`crate::bookkeeping::quarantine`]).

use rusqlite::functions::Context;
use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;

use crate::acked;
use crate::bookkeeping::tables::Tracked;
use crate::bookkeeping::{self, quarantine, ranges, resends, tables};
use crate::glue::{
    arg_int, arg_opt_text, arg_raw, arg_text, atomic, connection, describe_value, finish, now_ms,
    Fail, Res,
};
use crate::resend_rows::{self, MAX_REASON_CHARS};
use crate::schema::{table_info, TableInfo};
use crate::sequence::{seq_column, SeqColumn};

/// Whether the row numbered `n` exists.
fn row_exists(conn: &Connection, info: &TableInfo, seq: &SeqColumn, n: i64) -> Res<bool> {
    Ok(conn.query_row(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM main.{} WHERE {seq} = ?1)",
            info.quoted()
        ),
        [n],
        |r| r.get(0),
    )?)
}

/// Whether sequence number `n` is above the watermark and in no
/// acknowledged range.
fn is_pending_seq(conn: &Connection, t: &Tracked, n: i64) -> Res<bool> {
    if n <= t.acked_seq {
        return Ok(false);
    }
    let ranges = ranges::above(conn, &t.tbl, t.acked_seq)?;
    Ok(acked::pending_gaps(&ranges, t.acked_seq)
        .iter()
        .any(|&(lo, hi)| n > lo && n <= hi))
}

/// Argument `i` as an integer sequence number or id, never NULL.
fn arg_number(ctx: &Context<'_>, i: usize, what: &str) -> Res<i64> {
    match arg_raw(ctx, i)? {
        ValueRef::Null => Err(Fail(format!("{what} must be an integer, got NULL"))),
        _ => arg_int(ctx, i, what),
    }
}

// ---------------------------------------------------------------------------
// sluice_quarantine

/// `sluice_quarantine(table, seq, reason [, sqlstate])` → 1 (moved aside),
/// 0 (already aside).
pub fn sluice_quarantine(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_quarantine", quarantine_sql(ctx))
}

/// An SQLSTATE: five characters, digits and upper-case letters.
fn check_sqlstate(s: &str) -> Res<()> {
    if s.len() == 5
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
    {
        Ok(())
    } else {
        Err(Fail(format!(
            "the sqlstate must be five digits or upper-case letters like '22P02', got '{}'",
            s.chars().take(20).collect::<String>()
        )))
    }
}

fn quarantine_sql(ctx: &Context<'_>) -> Res<Value> {
    let table = arg_text(ctx, 0, "the table name")?;
    let n = arg_number(ctx, 1, "the sequence number")?;
    let reason = arg_text(ctx, 2, "the reason")?;
    let chars = reason.chars().count();
    if chars > MAX_REASON_CHARS {
        return Err(Fail(format!(
            "the reason is {chars} characters, the limit is {MAX_REASON_CHARS}"
        )));
    }
    let sqlstate = arg_opt_text(ctx, 3, "the sqlstate")?;
    if let Some(s) = sqlstate {
        check_sqlstate(s)?;
    }
    let conn = connection(ctx)?;
    let info = table_info(&conn, table)?;
    let t = tables::require(&conn, &info)?;
    let seq = seq_column(&info, &t)?;
    if quarantine::contains(&conn, &t.tbl, n)? {
        return Ok(Value::Integer(0));
    }
    // A row of an unfinished re-send counts as pending: the cloud may
    // refuse it as well.
    let pending = row_exists(&conn, &info, &seq, n)?
        && (is_pending_seq(&conn, &t, n)? || resend_rows::in_unfinished(&conn, &t, n)?);
    if !pending {
        return Err(Fail(format!(
            "table '{}' has no pending row with sequence number {n} (only a row waiting to be \
             sent can be moved aside)",
            info.name
        )));
    }
    let row_id = resend_rows::rowid_of(&conn, &info, &seq, n)?;
    let now = now_ms();
    let moved = atomic(&conn, "sluice_quarantine", || {
        bookkeeping::ensure(&conn)?;
        quarantine::insert(&conn, &t.tbl, n, row_id, None, reason, sqlstate, now)
    })?;
    Ok(Value::Integer(i64::from(moved)))
}

// ---------------------------------------------------------------------------
// sluice_release

/// `sluice_release(table [, id])` → entries released.
pub fn sluice_release(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_release", release(ctx))
}

fn release(ctx: &Context<'_>) -> Res<Value> {
    let table = arg_text(ctx, 0, "the table name")?;
    let id = match ctx.len() {
        0 | 1 => None,
        _ => match arg_raw(ctx, 1)? {
            ValueRef::Null => None,
            ValueRef::Integer(_) | ValueRef::Real(_) => Some(arg_int(ctx, 1, "the id")?),
            other => {
                return Err(Fail(format!(
                    "the id must be an integer (an id of sluice_quarantine) or NULL, got {}",
                    describe_value(other)
                )))
            }
        },
    };
    let conn = connection(ctx)?;
    let info = table_info(&conn, table)?;
    let t = tables::require(&conn, &info)?;
    let seq = seq_column(&info, &t)?;
    let entries = quarantine::list(&conn, &t.tbl, id)?;
    if let (Some(id), true) = (id, entries.is_empty()) {
        return Err(Fail(format!(
            "table '{}' has no quarantined row with id {id} (see SELECT * FROM sluice_quarantine)",
            info.name
        )));
    }
    let released = atomic(&conn, "sluice_release", || {
        bookkeeping::ensure(&conn)?;
        for e in &entries {
            // The row as it was moved aside is still there and was
            // acknowledged around (the batch over its range did not carry
            // it): it is sent again by a re-send of its sequence number.
            // Still pending, or in what an unfinished re-send is still to
            // send, it simply flows again; gone, or updated since (pending
            // under its new number), nothing more.
            if row_exists(&conn, &info, &seq, e.seq)?
                && !is_pending_seq(&conn, &t, e.seq)?
                && !resend_rows::in_unfinished(&conn, &t, e.seq)?
            {
                resend_rows::request_range(
                    &conn,
                    &t.tbl,
                    e.seq.saturating_sub(1),
                    e.seq,
                    resends::RELEASED_REASON,
                )?;
            }
            quarantine::delete(&conn, e.id)?;
        }
        Ok(entries.len())
    })?;
    Ok(Value::Integer(released as i64))
}
