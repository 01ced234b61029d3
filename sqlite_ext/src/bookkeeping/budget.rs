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
}

/// Replaces the state of the last check.
pub fn write(conn: &Connection, s: &BudgetState) -> Res<()> {
    conn.execute(
        "INSERT OR REPLACE INTO main.sluice_budget_state \
         (id, max_bytes, used_bytes, file_bytes, wal_bytes, within_budget, dropped_rows, \
          checked_at, note) VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            s.max_bytes,
            s.used_bytes,
            s.file_bytes,
            s.wal_bytes,
            s.within_budget,
            s.dropped_rows,
            s.checked_at,
            s.note
        ],
    )?;
    Ok(())
}
