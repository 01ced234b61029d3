//! `sluice_quarantine`: rows of tracked tables moved aside because they can
//! never be sent as they are (issue 12, case 7): a row over the batch limit
//! (found by `sluice_batch`), or a row the cloud refused for its value
//! (reported by the agent with `sluice_quarantine`). A quarantined row stays
//! in its table; it is not pending, no batch carries it, cleanup and the
//! budget keep it, and the rows behind it flow on. The operator lists the
//! table, fixes the row, and releases it (`sluice_release`): it is then sent
//! again (a re-send of its sequence number when the range around it was
//! acknowledged meanwhile, [`super::resends`]).

/// The DDL of the table (bookkeeping version 5). `seq` is the row's
/// sequence number (its version) when it was moved aside; `row_id` its
/// rowid, to find it (`SELECT * FROM t WHERE rowid = ...`); `bytes` its
/// encoded size when that was the reason; `sqlstate` the cloud's code when
/// the cloud refused it.
pub(super) const CREATE: &str = "CREATE TABLE IF NOT EXISTS main.sluice_quarantine (
     id INTEGER PRIMARY KEY,
     tbl TEXT NOT NULL,
     seq INTEGER NOT NULL,
     row_id INTEGER,
     bytes INTEGER,
     reason TEXT NOT NULL,
     sqlstate TEXT,
     quarantined_at TEXT NOT NULL,
     UNIQUE (tbl, seq)
 );";

use rusqlite::{params, Connection, OptionalExtension};

use super::Table;
use crate::glue::Res;

/// One quarantined row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: i64,
    pub tbl: String,
    pub seq: i64,
    pub row_id: Option<i64>,
    pub bytes: Option<i64>,
    pub reason: String,
    pub sqlstate: Option<String>,
}

/// Whether `tbl` has quarantined rows: the one cheap check before a query
/// of its rows excludes them ([`exclude_sql`]), so that an empty quarantine
/// costs nothing.
pub fn any(conn: &Connection, tbl: &str) -> Res<bool> {
    if !Table::Quarantine.exists(conn)? {
        return Ok(false);
    }
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM main.sluice_quarantine WHERE tbl = ?1)",
        [tbl],
        |r| r.get(0),
    )?)
}

/// SQL that is true for a row whose sequence number `seq` (an SQL
/// expression) is not quarantined, the table's name bound as parameter
/// `tbl_param` (`?4`). Only where [`any`] said so.
pub fn exclude_sql(seq: &str, tbl_param: &str) -> String {
    format!("{seq} NOT IN (SELECT seq FROM main.sluice_quarantine WHERE tbl = {tbl_param})")
}

/// The number of quarantined rows of `tbl`.
pub fn count(conn: &Connection, tbl: &str) -> Res<i64> {
    if !Table::Quarantine.exists(conn)? {
        return Ok(0);
    }
    Ok(conn.query_row(
        "SELECT count(*) FROM main.sluice_quarantine WHERE tbl = ?1",
        [tbl],
        |r| r.get(0),
    )?)
}

/// Whether sequence number `seq` of `tbl` is quarantined.
pub fn contains(conn: &Connection, tbl: &str, seq: i64) -> Res<bool> {
    if !Table::Quarantine.exists(conn)? {
        return Ok(false);
    }
    Ok(conn
        .query_row(
            "SELECT 1 FROM main.sluice_quarantine WHERE tbl = ?1 AND seq = ?2",
            params![tbl, seq],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Moves `seq` of `tbl` aside; false when it is already. The bookkeeping
/// must be at the current version ([`super::ensure`]).
#[allow(clippy::too_many_arguments)]
pub fn insert(
    conn: &Connection,
    tbl: &str,
    seq: i64,
    row_id: Option<i64>,
    bytes: Option<i64>,
    reason: &str,
    sqlstate: Option<&str>,
    now_ms: i64,
) -> Res<bool> {
    let n = conn.execute(
        "INSERT OR IGNORE INTO main.sluice_quarantine \
         (tbl, seq, row_id, bytes, reason, sqlstate, quarantined_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, strftime('%Y-%m-%dT%H:%M:%fZ', ?7 / 1000.0, 'unixepoch'))",
        params![tbl, seq, row_id, bytes, reason, sqlstate, now_ms],
    )?;
    Ok(n > 0)
}

/// The entries of `tbl` (only entry `id` when given), by id.
pub fn list(conn: &Connection, tbl: &str, id: Option<i64>) -> Res<Vec<Entry>> {
    if !Table::Quarantine.exists(conn)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(
        "SELECT id, tbl, seq, row_id, bytes, reason, sqlstate FROM main.sluice_quarantine \
          WHERE tbl = ?1 AND (?2 IS NULL OR id = ?2) ORDER BY id",
    )?;
    let rows = stmt.query_map(params![tbl, id], |r| {
        Ok(Entry {
            id: r.get(0)?,
            tbl: r.get(1)?,
            seq: r.get(2)?,
            row_id: r.get(3)?,
            bytes: r.get(4)?,
            reason: r.get(5)?,
            sqlstate: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Forgets entry `id`.
pub fn delete(conn: &Connection, id: i64) -> Res<()> {
    conn.execute("DELETE FROM main.sluice_quarantine WHERE id = ?1", [id])?;
    Ok(())
}
