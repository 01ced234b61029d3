//! `sluice_tracked([table])`: the public, read-only view of the
//! registrations of tracked tables and their acknowledged state, so that
//! other components (the agent) never read the private `sluice_tables`.

use rusqlite::functions::Context;
use rusqlite::types::Value;
use rusqlite::Connection;
use serde_json::{json, Value as Json};

use crate::bookkeeping::tables::Tracked;
use crate::bookkeeping::{quarantine, ranges, resends, tables};
use crate::glue::{arg_opt_text, connection, finish, Res};
use crate::resend_rows;
use crate::schema::{find_table, table_info};
use crate::sequence::{self, seq_column};

/// `sluice_tracked()` → JSON array of every tracked table, by name;
/// `sluice_tracked(table)` → that table's object, or NULL.
pub fn sluice_tracked(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_tracked", tracked_sql(ctx))
}

fn tracked_sql(ctx: &Context<'_>) -> Res<Value> {
    let conn = connection(ctx)?;
    if ctx.is_empty() {
        let all = registrations(&conn, None)?;
        return Ok(Value::Text(Json::Array(all).to_string()));
    }
    let Some(table) = arg_opt_text(ctx, 0, "the table name")? else {
        return Ok(Value::Null);
    };
    // The name as the schema spells it (lookups ignore case, as SQLite's).
    let name = find_table(&conn, table)?.unwrap_or_else(|| table.to_string());
    let mut one = registrations(&conn, Some(&name))?;
    Ok(one
        .pop()
        .map_or(Value::Null, |o| Value::Text(o.to_string())))
}

/// The registrations as the JSON objects of `sluice_tracked`, sorted by
/// table name; only `only` when given. Empty without bookkeeping tables.
fn registrations(conn: &Connection, only: Option<&str>) -> Res<Vec<Json>> {
    let mut out = Vec::new();
    for reg in tables::list(conn, only)? {
        let t = &reg.tracked;
        let above: Vec<[i64; 2]> = ranges::above(conn, &t.tbl, t.acked_seq)?
            .into_iter()
            .map(|(lo, hi)| [lo, hi])
            .collect();
        out.push(json!({
            "table": t.tbl,
            "mutable": t.mutable,
            "local_only": !t.local_only.is_empty(),
            "local_only_columns": t.local_only,
            "key_columns": if t.key.is_empty() { Json::Null } else { json!(t.key) },
            "time_column": reg.time_column,
            "acked_seq": t.acked_seq,
            "acked_batches": reg.acked_batches,
            "acked_rows": reg.acked_rows,
            "acked_at": reg.acked_at,
            "acked_ranges": above,
            "high_water": sequence::high_water(conn, t)?,
            "quarantined_rows": quarantine::count(conn, &t.tbl)?,
            "resend_rows": resend_rows(conn, t)?,
        }));
    }
    Ok(out)
}

/// The rows of the table's unfinished re-send requests still to send; 0
/// when it has none (one lookup) or the table is gone.
fn resend_rows(conn: &Connection, t: &Tracked) -> Res<i64> {
    if resends::unfinished(conn, &t.tbl)?.is_empty() || find_table(conn, &t.tbl)?.is_none() {
        return Ok(0);
    }
    let info = table_info(conn, &t.tbl)?;
    let seq = seq_column(&info, t)?;
    resend_rows::rows_to_send(conn, &info, t, &seq)
}
