//! `sluice_clock`: the database-wide counter that numbers the versions of
//! the rows of mutable tables; their triggers advance it.

use rusqlite::{Connection, OptionalExtension};

use crate::glue::Res;

/// Moves the clock past every version already in `column` of `table` (both
/// quoted), so that no version is handed out twice.
pub fn raise_past(conn: &Connection, table: &str, column: &str) -> Res<()> {
    conn.execute_batch(&format!(
        "UPDATE main.sluice_clock
            SET value = max(value, coalesce((SELECT max({column}) FROM main.{table}), 0))
          WHERE id = 1;"
    ))?;
    Ok(())
}

/// The statements of a trigger body that give the row `this_row` (an SQL
/// condition over `NEW`) of `table` the next version in `column` (both
/// quoted). Trigger bodies may not name a schema.
pub fn next_version_sql(table: &str, column: &str, this_row: &str) -> String {
    format!(
        "UPDATE sluice_clock SET value = value + 1 WHERE id = 1; \
         UPDATE {table} SET {column} = (SELECT value FROM sluice_clock WHERE id = 1) \
         WHERE {this_row};"
    )
}

/// The clock: the last version handed out (0 without bookkeeping).
pub fn value(conn: &Connection) -> Res<i64> {
    if !super::Table::Clock.exists(conn)? {
        return Ok(0);
    }
    let v: Option<i64> = conn
        .query_row(
            "SELECT value FROM main.sluice_clock WHERE id = 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.unwrap_or(0))
}

/// Sets the clock to `value`, the last version handed out (a new epoch
/// moves it forward; the bookkeeping must exist).
pub fn set(conn: &Connection, value: i64) -> Res<()> {
    conn.execute(
        "INSERT INTO main.sluice_clock (id, value) VALUES (1, ?1) \
         ON CONFLICT (id) DO UPDATE SET value = excluded.value",
        [value],
    )?;
    Ok(())
}
