//! `sluice_budget_state`: what the last `sluice_enforce_budget` found (one
//! row), shown by the view `sluice_budget`.

use rusqlite::{params, Connection};

use crate::glue::Res;

/// The outcome of one budget check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetState {
    pub max_bytes: i64,
    pub used_bytes: i64,
    pub file_bytes: i64,
    pub wal_bytes: i64,
    pub within_budget: bool,
    pub dropped_rows: i64,
    /// ISO-8601 UTC.
    pub checked_at: String,
    pub note: Option<String>,
    /// What the filesystem holding the database had free (statvfs, bytes
    /// available to unprivileged users), with the data pages the call freed
    /// counted as free; `None` for a database that is not a file.
    pub free_bytes: Option<i64>,
    /// The `min_free_bytes` the call was given.
    pub min_free_bytes: Option<i64>,
    /// The bytes the reserve holds; `None` for a database that is not a file.
    pub reserve_bytes: Option<i64>,
}

/// Replaces the state of the last check.
pub fn write(conn: &Connection, s: &BudgetState) -> Res<()> {
    conn.execute(
        "INSERT OR REPLACE INTO main.sluice_budget_state \
         (id, max_bytes, used_bytes, file_bytes, wal_bytes, within_budget, dropped_rows, \
          checked_at, note, free_bytes, min_free_bytes, reserve_bytes) \
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            s.max_bytes,
            s.used_bytes,
            s.file_bytes,
            s.wal_bytes,
            s.within_budget,
            s.dropped_rows,
            s.checked_at,
            s.note,
            s.free_bytes,
            s.min_free_bytes,
            s.reserve_bytes
        ],
    )?;
    Ok(())
}

/// Records what the filesystem has after the call's checkpoint and reserve
/// (`free`, `reserve` held) over the state the call wrote, and appends
/// `note` to its note.
pub fn record_disk(
    conn: &Connection,
    free: i64,
    min_free: Option<i64>,
    reserve: i64,
    note: Option<&str>,
) -> Res<()> {
    conn.execute(
        "UPDATE main.sluice_budget_state SET free_bytes = ?1, min_free_bytes = ?2, \
         reserve_bytes = ?3, note = CASE WHEN ?4 IS NULL THEN note WHEN note IS NULL THEN ?4 \
         ELSE note || '; ' || ?4 END WHERE id = 1",
        params![free, min_free, reserve, note],
    )?;
    Ok(())
}
