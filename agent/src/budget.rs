//! The storage budget job (`sluice_enforce_budget` with the `[budget]`
//! settings) and what the agent does when one of its own writes finds the
//! edge's disk full ([`when_full`]): run the budget once, which releases the
//! reserve and frees space from inside, and try once more. Below the edge
//! handle and the jobs, which both use it: it needs only the connection.

use anyhow::Context;
use rusqlite::Connection;
use tracing::{info, warn};

use crate::config::BudgetConfig;

/// What a run of the budget job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforced {
    /// Not run, and why (no budget configured).
    Skipped(&'static str),
    /// Run: `rows` dropped; `unmet` says why the budget is not met, if not.
    Done { rows: i64, unmet: Option<String> },
}

/// Keeps the edge database under `budget.max_bytes` and its filesystem
/// above `budget.min_free_bytes`, with the reserve of `budget.reserve_bytes`
/// (`sluice_enforce_budget`).
///
/// Called outside a transaction: the extension then commits as it goes and
/// checkpoints the WAL itself, which a full disk needs (a checkpoint cannot
/// run inside a transaction, and one transaction dropping much may not fit
/// in the space the reserve gives back).
pub fn enforce(conn: &Connection, cfg: &BudgetConfig) -> anyhow::Result<Enforced> {
    if !cfg.enabled() {
        return Ok(Enforced::Skipped(
            "no budget.max_bytes or budget.min_free_bytes configured",
        ));
    }
    let max = cfg.max_bytes.map(|m| i64::try_from(m).unwrap_or(i64::MAX));
    let dropped: i64 = conn
        .query_row(
            "SELECT sluice_enforce_budget(?1, ?2)",
            rusqlite::params![max, cfg.options_json()],
            |r| r.get(0),
        )
        .context("the storage budget (sluice_enforce_budget) failed")?;
    let (within, free, note): (bool, Option<i64>, Option<String>) = conn
        .query_row(
            "SELECT within_budget, free_bytes, note FROM sluice_budget",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .context("cannot read the state of the storage budget (sluice_budget)")?;
    if dropped > 0 {
        warn!(
            rows = dropped,
            max_bytes = cfg.max_bytes,
            min_free_bytes = cfg.min_free_bytes,
            free_bytes = free,
            note = note.as_deref().unwrap_or(""),
            "storage budget exceeded: dropped the oldest rows (rolled-up raw rows first); see sluice_drops"
        );
    }
    if !within {
        warn!(
            max_bytes = cfg.max_bytes,
            min_free_bytes = cfg.min_free_bytes,
            free_bytes = free,
            note = note.as_deref().unwrap_or(""),
            "storage budget not met: see sluice_budget"
        );
    }
    Ok(Enforced::Done {
        rows: dropped,
        unmet: (!within).then(|| note.unwrap_or_else(|| "storage budget not met".into())),
    })
}

/// Whether an error of the edge is SQLite's "database or disk is full"
/// (SQLITE_FULL), from the agent's own write or from the extension's.
pub fn disk_full(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<rusqlite::Error>()
            .is_some_and(|r| r.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull))
            || c.to_string().contains("database or disk is full")
    })
}

/// Runs `f`, a write of the agent to the edge database (`what`: the sync
/// log, an acknowledgement). When it finds the disk full, says so, runs the
/// storage budget job once (which releases the reserve and frees space from
/// inside), and runs `f` once more; no further retries: a disk still full
/// is an error that says what to do.
pub fn when_full<T>(
    conn: &Connection,
    cfg: &BudgetConfig,
    what: &str,
    f: impl Fn() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let e = match f() {
        Err(e) if disk_full(&e) => e,
        other => return other,
    };
    if !cfg.enabled() {
        return Err(e.context(format!(
            "{what}: the filesystem of the edge database is full and no [budget] is \
             configured; free space on it, or set budget.min_free_bytes (docs/agent.md, \
             \"Full disk\" in \"Recovering from common failures\")"
        )));
    }
    // A commit that failed for a full disk may leave its transaction open.
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    warn!(error = %format!("{e:#}"), "{what}: the filesystem of the edge database is full; running the storage budget job now");
    match enforce(conn, cfg) {
        Ok(Enforced::Done { rows, .. }) => {
            info!(rows, "storage budget job done after a full disk")
        }
        Ok(Enforced::Skipped(why)) => {
            warn!(why, "the storage budget job after a full disk was skipped")
        }
        Err(b) => {
            warn!(error = %format!("{b:#}"), "the storage budget job after a full disk failed")
        }
    }
    f().with_context(|| {
        format!(
            "{what}: the filesystem of the edge database is still full after the storage \
             budget job; free space on it, or raise budget.min_free_bytes (docs/agent.md, \
             \"Full disk\" in \"Recovering from common failures\")"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_recognised_through_the_context_the_agent_adds() {
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("database or disk is full".into()),
        );
        let e = anyhow::Error::from(full).context("cannot acknowledge the batch at the edge");
        assert!(disk_full(&e));
        // The extension's own message, as text (its functions fail with a
        // user error that carries SQLite's message).
        let e = anyhow::anyhow!("sluice_ack: database or disk is full").context("the sync log");
        assert!(disk_full(&e));
        let locked = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some("database is locked".into()),
        );
        assert!(!disk_full(&anyhow::Error::from(locked)));
        assert!(!disk_full(&anyhow::anyhow!(
            "no such table: sluice_sync_log"
        )));
    }
}
