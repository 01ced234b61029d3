//! `sluice_acked_ranges`: acknowledged ranges `(lo, hi]` above a table's
//! watermark, left by newest-first draining (the logic is [`crate::acked`]).

use rusqlite::{params, Connection};

use super::Table;
use crate::glue::Res;

/// The ranges of `tbl` that reach above `from`, in order; none when the
/// table of ranges does not exist yet.
pub fn above(conn: &Connection, tbl: &str, from: i64) -> Res<Vec<(i64, i64)>> {
    if !Table::AckedRanges.exists(conn)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(
        "SELECT lo, hi FROM main.sluice_acked_ranges WHERE tbl = ?1 AND hi > ?2 ORDER BY lo",
    )?;
    let rows = stmt.query_map(params![tbl, from], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The top of the highest acknowledged range of `tbl`, if any.
pub fn highest(conn: &Connection, tbl: &str) -> Res<Option<i64>> {
    if !Table::AckedRanges.exists(conn)? {
        return Ok(None);
    }
    Ok(conn.query_row(
        "SELECT max(hi) FROM main.sluice_acked_ranges WHERE tbl = ?1",
        [tbl],
        |r| r.get(0),
    )?)
}

/// Forgets the ranges of `tbl` that start at or below `seq` (the watermark
/// absorbed them). Only for ranges [`above`] returned: the table exists.
pub fn forget_upto(conn: &Connection, tbl: &str, seq: i64) -> Res<()> {
    conn.execute(
        "DELETE FROM main.sluice_acked_ranges WHERE tbl = ?1 AND lo <= ?2",
        params![tbl, seq],
    )?;
    Ok(())
}

/// Replaces every range of `tbl` within `[lo, hi]` by `(lo, hi]`. Creates
/// the table on a database from before ranges existed.
pub fn replace(conn: &Connection, tbl: &str, lo: i64, hi: i64) -> Res<()> {
    super::ensure(conn)?;
    conn.execute(
        "DELETE FROM main.sluice_acked_ranges WHERE tbl = ?1 AND lo <= ?3 AND hi >= ?2",
        params![tbl, lo, hi],
    )?;
    conn.execute(
        "INSERT INTO main.sluice_acked_ranges (tbl, lo, hi) VALUES (?1, ?2, ?3)",
        params![tbl, lo, hi],
    )?;
    Ok(())
}
