//! `sluice_acks`: one row per acknowledgement that moved a watermark, what
//! `sluice_cleanup` reads to know what was acknowledged long enough ago.

use rusqlite::{params, Connection};

use crate::glue::Res;

/// Records that the watermark of `tbl` moved to `seq` at `at_ms`.
pub fn record(conn: &Connection, tbl: &str, seq: i64, at_ms: i64) -> Res<()> {
    conn.execute(
        "INSERT INTO main.sluice_acks (tbl, acked_seq, acked_at) VALUES (?1, ?2, ?3)",
        params![tbl, seq, at_ms],
    )?;
    Ok(())
}

/// The highest watermark of `tbl` acknowledged at or before `cutoff_ms`.
pub fn acked_by(conn: &Connection, tbl: &str, cutoff_ms: i64) -> Res<Option<i64>> {
    Ok(conn.query_row(
        "SELECT max(acked_seq) FROM main.sluice_acks WHERE tbl = ?1 AND acked_at <= ?2",
        params![tbl, cutoff_ms],
        |r| r.get(0),
    )?)
}

/// Moves the acknowledgements of `tbl` recorded after `now_ms` back to
/// `now_ms`: a clock that was ahead recorded them and has been corrected
/// since. Cleanup then counts `keep` from now for their rows, instead of
/// waiting until the clock reaches the wrong time.
pub fn clamp_future(conn: &Connection, tbl: &str, now_ms: i64) -> Res<()> {
    conn.execute(
        "UPDATE main.sluice_acks SET acked_at = ?2 WHERE tbl = ?1 AND acked_at > ?2",
        params![tbl, now_ms],
    )?;
    Ok(())
}

/// Forgets the acknowledgements of `tbl` at or before `cutoff_ms` below
/// `seq` (the newest one at or before the cutoff stays: the next cleanup
/// with the same keep needs it).
pub fn prune(conn: &Connection, tbl: &str, cutoff_ms: i64, seq: i64) -> Res<()> {
    conn.execute(
        "DELETE FROM main.sluice_acks WHERE tbl = ?1 AND acked_at <= ?2 AND acked_seq < ?3",
        params![tbl, cutoff_ms, seq],
    )?;
    Ok(())
}
