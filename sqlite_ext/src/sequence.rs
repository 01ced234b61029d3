//! Which column numbers the rows of a tracked table (the rowid of an
//! append-only table, `sluice_version` of a mutable one), and the check that
//! the rowid high-water mark is still above the watermark.

use std::fmt;

use rusqlite::{params, Connection, OptionalExtension};
use sluice_wire::names::quote_ident;

use crate::bookkeeping::tables::Tracked;
use crate::bookkeeping::{ranges, tombstones};
use crate::glue::{Fail, Res};
use crate::schema::{find_table, TableInfo};

/// Name of the version column of mutable tables.
pub const VERSION_COLUMN: &str = "sluice_version";

/// Whether `name` is one of the columns sluice adds to a user's table (the
/// cloud never owns them).
pub fn is_sluice_column(name: &str) -> bool {
    name.eq_ignore_ascii_case(VERSION_COLUMN)
}

/// The sequence column of a tracked table: the rowid alias of an
/// append-only table, `sluice_version` of a mutable one. Displayed, it is
/// the quoted name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqColumn(String);

impl fmt::Display for SeqColumn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&quote_ident(&self.0))
    }
}

/// The sequence column of a tracked table.
pub fn seq_column(info: &TableInfo, t: &Tracked) -> Res<SeqColumn> {
    if t.mutable {
        if info.column(VERSION_COLUMN).is_none() {
            return Err(Fail(format!(
                "mutable table '{}' has lost its sluice_version column; run sluice_track again",
                info.name
            )));
        }
        Ok(SeqColumn(VERSION_COLUMN.to_string()))
    } else {
        info.rowid_alias()
            .map(|c| SeqColumn(c.name.clone()))
            .ok_or_else(|| {
                Fail(format!(
                    "append-only table '{}' has no INTEGER PRIMARY KEY column any more",
                    info.name
                ))
            })
    }
}

/// For an append-only table: refuses to go on when the newest rows were
/// deleted below the watermark, because SQLite would then give new rows
/// rowids at or below it and they would never be sent.
pub fn check_high_water(
    conn: &Connection,
    info: &TableInfo,
    t: &Tracked,
    seq: &SeqColumn,
) -> Res<()> {
    if t.mutable || t.acked_seq <= 0 {
        return Ok(());
    }
    let max: Option<i64> = conn.query_row(
        &format!("SELECT max({seq}) FROM {}", info.quoted()),
        [],
        |r| r.get(0),
    )?;
    if max.is_none_or(|m| m < t.acked_seq) && !autoincrement_covers(conn, &info.name, t.acked_seq)?
    {
        return Err(Fail(format!(
            "the newest rows of '{}' were deleted outside sluice_cleanup (largest rowid {}, \
             acknowledged up to {}): new rows would reuse rowids at or below the watermark and \
             never be sent. Insert a row with rowid {} (or larger) before inserting new rows; \
             see docs/sync-protocol.md",
            info.name,
            max.map_or("none".to_string(), |m| m.to_string()),
            t.acked_seq,
            t.acked_seq
        )));
    }
    Ok(())
}

/// The largest sequence number this database has handed out for the table
/// and may have sent: its largest rowid (or the AUTOINCREMENT sequence, if
/// larger) for an append-only table. For a mutable one, the largest of its
/// rows' versions, its waiting tombstones' versions, its watermark and its
/// acknowledged ranges: a batch's `last_seq` is a version it carried, which
/// is still a row or a tombstone, or was acknowledged. (Not the clock: the
/// clock is shared by every mutable table, so after a restore the writes to
/// one table would lift it above what the lost future sent of another, and
/// hide the restore.) Nothing the database ever sent is above it, unless
/// the database went back in time (it was restored from a backup); `None`
/// when the table is gone.
pub fn high_water(conn: &Connection, t: &Tracked) -> Res<Option<i64>> {
    if find_table(conn, &t.tbl)?.is_none() {
        return Ok(None);
    }
    let info = crate::schema::table_info(conn, &t.tbl)?;
    let seq = seq_column(&info, t)?;
    if t.mutable {
        let rows: Option<i64> = conn.query_row(
            &format!("SELECT max({seq}) FROM main.{}", info.quoted()),
            [],
            |r| r.get(0),
        )?;
        let highest = [
            Some(t.acked_seq),
            rows,
            ranges::highest(conn, &t.tbl)?,
            tombstones::highest(conn, &t.tbl)?,
        ]
        .into_iter()
        .flatten()
        .max();
        return Ok(Some(highest.unwrap_or(0)));
    }
    let max: Option<i64> = conn.query_row(
        &format!("SELECT max({seq}) FROM main.{}", info.quoted()),
        [],
        |r| r.get(0),
    )?;
    let auto: Option<i64> = if find_table(conn, "sqlite_sequence")?.is_some() {
        conn.query_row(
            "SELECT seq FROM main.sqlite_sequence WHERE name = ?1",
            params![info.name],
            |r| r.get(0),
        )
        .optional()?
        .flatten()
    } else {
        None
    };
    Ok(Some(max.unwrap_or(0).max(auto.unwrap_or(0))))
}

/// Whether the table is AUTOINCREMENT and its sequence is already at or
/// above `seq`: then SQLite never hands out a rowid at or below `seq`.
pub fn autoincrement_covers(conn: &Connection, table: &str, seq: i64) -> Res<bool> {
    if find_table(conn, "sqlite_sequence")?.is_none() {
        return Ok(false);
    }
    let s: Option<i64> = conn
        .query_row(
            "SELECT seq FROM main.sqlite_sequence WHERE name = ?1",
            params![table],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    Ok(s.is_some_and(|s| s >= seq))
}
