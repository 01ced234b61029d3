//! `sluice_pending_age(table)`: the age of the oldest pending row of a
//! tracked table, what the view `sluice_status` shows per table.

use rusqlite::functions::Context;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{params, OptionalExtension};
use sluice_wire::names::quote_ident;

use crate::acked;
use crate::bookkeeping::{quarantine, ranges, tables};
use crate::glue::{arg_text, connection, finish, now_ms, Res};
use crate::schema::table_info;
use crate::sequence::seq_column;
use crate::time::epoch_of;

/// `sluice_pending_age(table)` → seconds since the time of the oldest
/// pending row, or NULL (nothing pending, or no known time column).
pub fn sluice_pending_age(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_pending_age", pending_age(ctx))
}

fn pending_age(ctx: &Context<'_>) -> Res<Value> {
    let table = arg_text(ctx, 0, "the table name")?;
    let conn = connection(ctx)?;
    let info = table_info(&conn, table)?;
    let t = tables::require(&conn, &info)?;
    let Some(tc) = tables::time_column(&conn, &info.name)? else {
        return Ok(Value::Null);
    };
    if info.column(&tc).is_none() {
        return Ok(Value::Null);
    }
    let seq = seq_column(&info, &t)?;
    // The oldest pending row: the first row of the first non-empty gap
    // between acknowledged ranges (newest-first draining leaves ranges).
    let ranges = ranges::above(&conn, &t.tbl, t.acked_seq)?;
    // Quarantined rows are not pending (looked at only when there are some).
    let aside = quarantine::any(&conn, &t.tbl)?;
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM main.{} WHERE {seq} > ?1 AND {seq} <= ?2{} ORDER BY {seq} LIMIT 1",
        quote_ident(&tc),
        info.quoted(),
        if aside {
            format!(" AND {}", quarantine::exclude_sql(&seq.to_string(), "?3"))
        } else {
            String::new()
        }
    ))?;
    let mut v: Option<Value> = None;
    for (lo, hi) in acked::pending_gaps(&ranges, t.acked_seq) {
        v = if aside {
            stmt.query_row(params![lo, hi, t.tbl], |r| r.get(0))
        } else {
            stmt.query_row(params![lo, hi], |r| r.get(0))
        }
        .optional()?;
        if v.is_some() {
            break;
        }
    }
    let ep = v.as_ref().and_then(|v| match v {
        Value::Integer(i) => epoch_of(ValueRef::Integer(*i)),
        Value::Real(f) => epoch_of(ValueRef::Real(*f)),
        Value::Text(s) => epoch_of(ValueRef::Text(s.as_bytes())),
        _ => None,
    });
    // A time far in the past (-2^63 seconds) is older than any age an
    // integer holds: the age saturates at i64::MAX instead of wrapping to a
    // negative number.
    Ok(ep.map_or(Value::Null, |e| {
        Value::Integer((now_ms() / 1000).saturating_sub(e))
    }))
}
