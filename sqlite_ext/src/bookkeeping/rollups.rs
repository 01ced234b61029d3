//! `sluice_rollups` (one row per rollup: its options, watermark and runs)
//! and `sluice_rollup_skipped` (source rows a run left out because their
//! time is not a time).

use rusqlite::{params, Connection, OptionalExtension};

use super::Table;
use crate::glue::Res;

/// The name of the window-start column of every rollup target.
pub const WINDOW_COLUMN: &str = "window_start";

/// A rollup as stored: its options are parsed by [`crate::rollup_spec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub name: String,
    pub options: String,
    /// The largest source rowid it has processed (0 before its first run).
    pub watermark: i64,
}

/// The rollups, by name; only `only` when given. None without the table.
pub fn list(conn: &Connection, only: Option<&str>) -> Res<Vec<Stored>> {
    if !Table::Rollups.exists(conn)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(
        "SELECT name, options, watermark FROM main.sluice_rollups \
         WHERE ?1 IS NULL OR name = ?1 ORDER BY name",
    )?;
    let rows = stmt
        .query_map([only], |r| {
            Ok(Stored {
                name: r.get(0)?,
                options: r.get(1)?,
                watermark: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// The targets of all rollups.
pub fn targets(conn: &Connection) -> Res<Vec<String>> {
    if !Table::Rollups.exists(conn)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare("SELECT target FROM main.sluice_rollups")?;
    let rows = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Declares or re-declares a rollup; new options reset its watermark (the
/// next run recomputes every window).
pub fn upsert(conn: &Connection, name: &str, options: &str, source: &str, target: &str) -> Res<()> {
    conn.execute(
        "INSERT INTO main.sluice_rollups (name, options, source, target) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (name) DO UPDATE SET options = excluded.options, source = excluded.source, \
         target = excluded.target, \
         watermark = CASE WHEN sluice_rollups.options = excluded.options THEN watermark ELSE 0 END",
        params![name, options, source, target],
    )?;
    Ok(())
}

/// The watermark of rollup `name` (0 before its first run).
pub fn watermark(conn: &Connection, name: &str) -> Res<i64> {
    Ok(conn
        .query_row(
            "SELECT watermark FROM main.sluice_rollups WHERE name = ?1",
            [name],
            |row| row.get(0),
        )
        .optional()?
        .unwrap_or(0))
}

/// Records a run that processed the source up to rowid `upto` and wrote
/// `rows` rows.
pub fn record_run(conn: &Connection, name: &str, upto: i64, at_ms: i64, rows: i64) -> Res<()> {
    conn.execute(
        "UPDATE main.sluice_rollups SET watermark = ?2, last_run_at = ?3, runs = runs + 1, \
         rows_written = rows_written + ?4 WHERE name = ?1",
        params![name, upto, at_ms, rows],
    )?;
    Ok(())
}

/// The time column of a table as the rollups know it: the time column of
/// the first rollup (by name) that reads it, else [`WINDOW_COLUMN`] if a
/// rollup writes it.
pub fn time_column_of(conn: &Connection, tbl: &str) -> Res<Option<String>> {
    if !Table::Rollups.exists(conn)? {
        return Ok(None);
    }
    Ok(conn
        .query_row(
            "SELECT CASE WHEN source = ?1 COLLATE NOCASE THEN json_extract(options, '$.time') \
                    ELSE ?2 END \
               FROM main.sluice_rollups \
              WHERE source = ?1 COLLATE NOCASE OR target = ?1 COLLATE NOCASE \
              ORDER BY source = ?1 COLLATE NOCASE DESC, name LIMIT 1",
            params![tbl, WINDOW_COLUMN],
            |r| r.get(0),
        )
        .optional()?
        .flatten())
}

/// Records source rows a run of `name` leaves out, with why (once each).
pub fn skip(conn: &Connection, name: &str, rows: &[(i64, String)], at_ms: i64) -> Res<()> {
    super::ensure(conn)?;
    let mut ins = conn.prepare(
        "INSERT OR IGNORE INTO main.sluice_rollup_skipped (name, row_id, reason, skipped_at) \
         VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (id, why) in rows {
        ins.execute(params![name, id, why, at_ms])?;
    }
    Ok(())
}

/// Whether a run of `name` has left rows out.
pub fn any_skipped(conn: &Connection, name: &str) -> Res<bool> {
    Ok(Table::RollupSkipped.exists(conn)?
        && conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM main.sluice_rollup_skipped WHERE name = ?1)",
            [name],
            |row| row.get::<_, bool>(0),
        )?)
}

/// SQL condition over the source rows of `name`: the row was not left out.
/// The named parameter `:rollup_name` must be bound to the rollup's name.
pub const NOT_SKIPPED: &str =
    "rowid NOT IN (SELECT row_id FROM main.sluice_rollup_skipped WHERE name = :rollup_name)";
