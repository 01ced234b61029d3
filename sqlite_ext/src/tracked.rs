//! `sluice_tracked([table])`: the public, read-only view of the
//! registrations of tracked tables and their acknowledged state, so that
//! other components (the agent) never read the private `sluice_tables`.

use rusqlite::functions::Context;
use rusqlite::types::Value;
use rusqlite::{params, Connection};
use serde_json::{json, Value as Json};

use crate::schema::{has_bookkeeping, table_info};
use crate::{arg_opt_text, connection, finish, Fail, Res};

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
    let name = match table_info(&conn, table) {
        Ok(info) => info.name,
        Err(_) => table.to_string(),
    };
    let mut one = registrations(&conn, Some(&name))?;
    Ok(one
        .pop()
        .map_or(Value::Null, |o| Value::Text(o.to_string())))
}

/// The registrations as the JSON objects of `sluice_tracked`, sorted by
/// table name; only `only` when given. Empty without bookkeeping tables.
fn registrations(conn: &Connection, only: Option<&str>) -> Res<Vec<Json>> {
    if !has_bookkeeping(conn)? {
        return Ok(Vec::new());
    }
    // `time_column` came after the first release; a database tracked before
    // it and not written to since has no such column yet.
    let has_time: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('sluice_tables', 'main') \
         WHERE name = 'time_column'",
        [],
        |r| r.get(0),
    )?;
    let time = if has_time { "time_column" } else { "NULL" };
    let mut stmt = conn.prepare(&format!(
        "SELECT tbl, mutable, local_only, key_columns, {time}, acked_seq, acked_batches, \
                acked_rows, acked_at \
           FROM main.sluice_tables WHERE ?1 IS NULL OR tbl = ?1 ORDER BY tbl"
    ))?;
    let rows = stmt
        .query_map(params![only], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, Option<i64>>(8)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for (tbl, mutable, local_only, key, time, seq, batches, acked_rows, at) in rows {
        let list = |s: &str, what: &str| -> Res<Vec<String>> {
            serde_json::from_str(s)
                .map_err(|e| Fail(format!("sluice_tables.{what} of '{tbl}' is damaged: {e}")))
        };
        let local_only = list(&local_only, "local_only")?;
        let key = list(&key, "key_columns")?;
        let above: Vec<[i64; 2]> = crate::acked::ranges_above(conn, &tbl, seq)?
            .into_iter()
            .map(|(lo, hi)| [lo, hi])
            .collect();
        out.push(json!({
            "table": tbl,
            "mutable": mutable,
            "local_only": !local_only.is_empty(),
            "local_only_columns": local_only,
            "key_columns": if key.is_empty() { Json::Null } else { json!(key) },
            "time_column": time,
            "acked_seq": seq,
            "acked_batches": batches,
            "acked_rows": acked_rows,
            "acked_at": at,
            "acked_ranges": above,
        }));
    }
    Ok(out)
}
