//! `sluice_resends`: ranges of a table that are sent again (issue 12, case
//! 8): an operator's `sluice_resend` after a fix in the cloud or an edge-side
//! `ALTER TABLE ... ADD COLUMN ... DEFAULT`, or a quarantined row released
//! after the range around it was acknowledged. Request `n` of a table sends
//! the rows whose sequence number is in `(lo, hi]` (and, with a time filter,
//! whose time is in `[from_time, to_time)`) in batches whose header carries
//! re-send number `n` (`BatchHeader::resend`), so the cloud never takes
//! them for replays; `done_seq` is how far the acknowledged re-sent batches
//! reached; the request is finished when it reaches `hi`.

/// The DDL of the table (bookkeeping version 5).
pub(super) const CREATE: &str = "CREATE TABLE IF NOT EXISTS main.sluice_resends (
     tbl TEXT NOT NULL,
     n INTEGER NOT NULL,
     lo INTEGER NOT NULL,
     hi INTEGER NOT NULL,
     done_seq INTEGER NOT NULL,
     from_time TEXT,
     to_time TEXT,
     reason TEXT NOT NULL,
     requested_at TEXT NOT NULL,
     finished_at TEXT,
     PRIMARY KEY (tbl, n)
 ) WITHOUT ROWID;";

use rusqlite::{params, Connection, OptionalExtension};

use super::Table;
use crate::glue::Res;

/// The reason of the request a released quarantined row makes.
pub const RELEASED_REASON: &str = "released from quarantine";

/// One re-send request of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub n: i64,
    pub lo: i64,
    pub hi: i64,
    /// How far acknowledged re-sent batches reached (`lo` at first).
    pub done_seq: i64,
    /// The time filter `[from_time, to_time)`, ISO-8601 UTC, when given.
    pub from_time: Option<String>,
    pub to_time: Option<String>,
    pub reason: String,
    /// ISO-8601 UTC, with milliseconds.
    pub requested_at: String,
}

fn request(r: &rusqlite::Row<'_>) -> rusqlite::Result<Request> {
    Ok(Request {
        n: r.get(0)?,
        lo: r.get(1)?,
        hi: r.get(2)?,
        done_seq: r.get(3)?,
        from_time: r.get(4)?,
        to_time: r.get(5)?,
        reason: r.get(6)?,
        requested_at: r.get(7)?,
    })
}

const COLUMNS: &str = "n, lo, hi, done_seq, from_time, to_time, reason, requested_at";

/// The unfinished requests of `tbl`, oldest first; none when the table of
/// requests does not exist yet (the common case costs one lookup).
pub fn unfinished(conn: &Connection, tbl: &str) -> Res<Vec<Request>> {
    if !Table::Resends.exists(conn)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM main.sluice_resends \
          WHERE tbl = ?1 AND finished_at IS NULL ORDER BY n"
    ))?;
    let rows = stmt.query_map([tbl], request)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Request `n` of `tbl`, finished or not, and whether it is finished.
pub fn get(conn: &Connection, tbl: &str, n: i64) -> Res<Option<(Request, bool)>> {
    if !Table::Resends.exists(conn)? {
        return Ok(None);
    }
    Ok(conn
        .query_row(
            &format!(
                "SELECT {COLUMNS}, finished_at IS NOT NULL FROM main.sluice_resends \
                  WHERE tbl = ?1 AND n = ?2"
            ),
            params![tbl, n],
            |r| Ok((request(r)?, r.get::<_, bool>(8)?)),
        )
        .optional()?)
}

/// Records request `1 + max(n)` of `tbl` for `(lo, hi]` with its time
/// filter (ISO-8601 UTC); returns its number. The bookkeeping must be at
/// the current version ([`super::ensure`]).
#[allow(clippy::too_many_arguments)]
pub fn record(
    conn: &Connection,
    tbl: &str,
    lo: i64,
    hi: i64,
    from_time: Option<&str>,
    to_time: Option<&str>,
    reason: &str,
    now_ms: i64,
) -> Res<i64> {
    let n: i64 = conn.query_row(
        "SELECT coalesce(max(n), 0) FROM main.sluice_resends WHERE tbl = ?1",
        [tbl],
        |r| r.get(0),
    )?;
    let n = n.saturating_add(1);
    conn.execute(
        "INSERT INTO main.sluice_resends \
         (tbl, n, lo, hi, done_seq, from_time, to_time, reason, requested_at) \
         VALUES (?1, ?2, ?3, ?4, ?3, ?5, ?6, ?7, \
                 strftime('%Y-%m-%dT%H:%M:%fZ', ?8 / 1000.0, 'unixepoch'))",
        params![tbl, n, lo, hi, from_time, to_time, reason, now_ms],
    )?;
    Ok(n)
}

/// Moves request `n` of `tbl` to `done_seq` (never backwards); with
/// `finished`, it is finished now.
pub fn advance(
    conn: &Connection,
    tbl: &str,
    n: i64,
    done_seq: i64,
    finished: bool,
    now_ms: i64,
) -> Res<()> {
    conn.execute(
        "UPDATE main.sluice_resends SET done_seq = max(done_seq, ?3), \
         finished_at = CASE WHEN ?4 THEN strftime('%Y-%m-%dT%H:%M:%fZ', ?5 / 1000.0, 'unixepoch') \
                            ELSE finished_at END \
         WHERE tbl = ?1 AND n = ?2 AND finished_at IS NULL",
        params![tbl, n, done_seq, finished, now_ms],
    )?;
    Ok(())
}
