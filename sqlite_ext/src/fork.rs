//! The fork of a tracked table: a new epoch (`sluice_new_epoch`) leaves on
//! every table the stream it continued and the largest sequence number the
//! table had then. Rows up to that number may already be in the cloud under
//! the earlier stream; batches say so (`origin.fork`) while they start below
//! it, and the fork is forgotten once nothing pending is left at or below it.
//!
//! The checks are range lookups on the sequence column's index (the rowid
//! of an append-only table): no work per row.

use rusqlite::Connection;

use crate::acked;
use crate::bookkeeping::ranges;
use crate::bookkeeping::tables::{self, Tracked};
use crate::glue::Res;
use crate::schema::TableInfo;
use crate::sequence::SeqColumn;

/// Whether a row of the table numbered at or below `upto` is pending (above
/// the watermark and in no acknowledged range).
fn pending_upto(
    conn: &Connection,
    info: &TableInfo,
    t: &Tracked,
    seq: &SeqColumn,
    upto: i64,
) -> Res<bool> {
    if upto <= t.acked_seq {
        return Ok(false);
    }
    let ranges = ranges::above(conn, &t.tbl, t.acked_seq)?;
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM main.{} WHERE {seq} > ?1 AND {seq} <= ?2)",
        info.quoted()
    );
    let mut stmt = conn.prepare(&sql)?;
    for (lo, hi) in acked::pending_gaps(&ranges, t.acked_seq) {
        if lo >= upto {
            break;
        }
        if stmt.query_row([lo, hi.min(upto)], |r| r.get::<_, bool>(0))? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// At a new epoch: records the table's largest sequence number now (its
/// `epoch_seq`, kept for good), and the table's fork is (`parent`, that
/// number), or none when nothing pending is at or below that number
/// (the earlier stream's batches were all acknowledged). Call it before a
/// mutable table's rows get their new versions.
pub fn start(
    conn: &Connection,
    info: &TableInfo,
    t: &Tracked,
    seq: &SeqColumn,
    parent: i64,
) -> Res<()> {
    let largest: Option<i64> = conn.query_row(
        &format!("SELECT max({seq}) FROM main.{}", info.quoted()),
        [],
        |r| r.get(0),
    )?;
    tables::set_epoch_seq(conn, &t.tbl, largest.unwrap_or(0))?;
    let fork = match largest {
        Some(upto) if pending_upto(conn, info, t, seq, upto)? => Some((parent, upto)),
        _ => None,
    };
    tables::set_fork(conn, &t.tbl, fork)
}

/// The fork a batch of the table starting at `base_seq` carries: the
/// table's fork while `base_seq` is below its `fork_seq`.
pub fn for_batch(conn: &Connection, tbl: &str, base_seq: i64) -> Res<Option<sluice_wire::Fork>> {
    Ok(tables::fork(conn, tbl)?.filter(|f| base_seq < f.fork_seq))
}

/// After an acknowledgement (`t` as it is now): forgets the table's fork
/// once the watermark reaches its `fork_seq`, or nothing pending is left at
/// or below it.
pub fn forget_if_done(
    conn: &Connection,
    info: &TableInfo,
    t: &Tracked,
    seq: &SeqColumn,
) -> Res<()> {
    let Some(f) = tables::fork(conn, &t.tbl)? else {
        return Ok(());
    };
    if !pending_upto(conn, info, t, seq, f.fork_seq)? {
        tables::set_fork(conn, &t.tbl, None)?;
    }
    Ok(())
}
