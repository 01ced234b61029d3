//! `sluice_drops`: one row per table and `sluice_enforce_budget` call that
//! dropped rows of it.

use rusqlite::{params, Connection};

use super::Table;
use crate::glue::Res;

/// What one budget call dropped of one table so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drop<'a> {
    pub tbl: &'a str,
    pub rows: i64,
    /// Rows above the watermark (never sent); `None` for an untracked table.
    pub unsynced: Option<i64>,
    /// Rows dropped that a rollup of the table had not processed (the last
    /// resort of a full disk); `None` when no rollup reads the table.
    pub unrolled: Option<i64>,
    /// The times of the oldest and newest row dropped, unix seconds.
    pub first: i64,
    pub last: i64,
    /// Windows starting before this (unix seconds) lost rows: the newest
    /// dropped row's time + 1, not counting rows from the future
    /// ([`crate::seal`]); `i64::MIN` when only those were dropped.
    pub sealed_until: i64,
    /// ISO-8601 UTC.
    pub dropped_at: &'a str,
}

/// Records a drop; returns its id for [`update`].
pub fn insert(conn: &Connection, d: &Drop<'_>) -> Res<i64> {
    conn.execute(
        "INSERT INTO main.sluice_drops \
         (tbl, rows, unsynced_rows, from_time, to_time, sealed_until, dropped_at, \
          unrolled_rows) \
         VALUES (?1, ?2, ?3, strftime('%Y-%m-%dT%H:%M:%SZ', ?4, 'unixepoch'), \
                 strftime('%Y-%m-%dT%H:%M:%SZ', ?5, 'unixepoch'), ?6, ?7, ?8)",
        params![
            d.tbl,
            d.rows,
            d.unsynced,
            d.first,
            d.last,
            d.sealed_until,
            d.dropped_at,
            d.unrolled
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Updates drop `id` to what `d` says now.
pub fn update(conn: &Connection, id: i64, d: &Drop<'_>) -> Res<()> {
    conn.execute(
        "UPDATE main.sluice_drops SET rows = ?2, unsynced_rows = ?3, \
         from_time = strftime('%Y-%m-%dT%H:%M:%SZ', ?4, 'unixepoch'), \
         to_time = strftime('%Y-%m-%dT%H:%M:%SZ', ?5, 'unixepoch'), \
         sealed_until = ?6, unrolled_rows = ?7 WHERE id = ?1",
        params![
            id,
            d.rows,
            d.unsynced,
            d.first,
            d.last,
            d.sealed_until,
            d.unrolled
        ],
    )?;
    Ok(())
}

/// Windows of `tbl` starting before this (unix seconds) lost raw rows to the
/// budget.
pub fn sealed_until(conn: &Connection, tbl: &str) -> Res<Option<i64>> {
    if !Table::Drops.exists(conn)? {
        return Ok(None);
    }
    Ok(conn.query_row(
        "SELECT max(sealed_until) FROM main.sluice_drops WHERE tbl = ?1",
        [tbl],
        |r| r.get(0),
    )?)
}
