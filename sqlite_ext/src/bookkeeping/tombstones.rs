//! `sluice_tombstones`: the deletes of rows of mutable tables (and the old
//! key of a key change) waiting to be sent. A tombstone holds the values of
//! the table's delete key (up to [`MAX_KEY_COLUMNS`] columns, in `k1` ...)
//! and a version from `sluice_clock`, so that it is ordered with the rows'
//! versions and sent in the same batches; it goes once acknowledged.
//!
//! The delete and key-change triggers ([`crate::track`]) write them; a
//! delete made by sluice itself (cleanup, the storage budget) runs
//! [`quietly`], with a flag in `sluice_meta` that the triggers' `WHEN` tests,
//! so that it makes none.

use rusqlite::{params, Connection};
use sluice_wire::names::quote_ident;

use super::Table;
use crate::glue::Res;

/// Most key columns a table whose deletes are tracked may have.
pub const MAX_KEY_COLUMNS: usize = 8;

/// Key in `sluice_meta` present while sluice itself deletes rows.
const QUIET_KEY: &str = "quiet_deletes";

/// The DDL of the table (bookkeeping version 4).
pub(super) const CREATE: &str = "CREATE TABLE IF NOT EXISTS main.sluice_tombstones (
     tbl TEXT NOT NULL,
     version INTEGER NOT NULL,
     k1, k2, k3, k4, k5, k6, k7, k8,
     PRIMARY KEY (tbl, version)
 ) WITHOUT ROWID;";

/// The trigger condition under which a delete is recorded: not while sluice
/// deletes rows itself. Trigger bodies may not name a schema.
pub fn not_quiet_sql() -> String {
    format!("NOT EXISTS (SELECT 1 FROM sluice_meta WHERE key = '{QUIET_KEY}')")
}

/// The statements of a trigger body that record a tombstone of `tbl` whose
/// key is `key` (SQL expressions over `OLD`, at most [`MAX_KEY_COLUMNS`]).
pub fn record_sql(tbl: &str, key: &[String]) -> String {
    let cols: Vec<String> = (1..=key.len()).map(|i| format!("k{i}")).collect();
    format!(
        "UPDATE sluice_clock SET value = value + 1 WHERE id = 1; \
         INSERT INTO sluice_tombstones (tbl, version, {}) \
         VALUES ('{}', (SELECT value FROM sluice_clock WHERE id = 1), {});",
        cols.join(", "),
        tbl.replace('\'', "''"),
        key.join(", ")
    )
}

/// Runs `f` (deletes sluice makes itself) without making tombstones.
pub fn quietly<T>(conn: &Connection, f: impl FnOnce() -> Res<T>) -> Res<T> {
    conn.execute(
        "INSERT OR REPLACE INTO main.sluice_meta (key, value) VALUES (?1, 1)",
        [QUIET_KEY],
    )?;
    let out = f();
    conn.execute("DELETE FROM main.sluice_meta WHERE key = ?1", [QUIET_KEY])?;
    out
}

/// A `SELECT` of the tombstones of `tbl` with versions in `(?1, ?2]`, in
/// the shape of a batch's rows: for each of `columns`, the key value when it
/// is the `i`-th column of `key` (`k{i}`), NULL otherwise; then the version
/// and 1 (a delete). `?4` is the table's name.
pub fn select_sql(columns: &[String], key: &[String]) -> String {
    let values: Vec<String> = columns
        .iter()
        .map(
            |c| match key.iter().position(|k| k.eq_ignore_ascii_case(c)) {
                Some(i) => format!("k{}", i + 1),
                None => "NULL".to_string(),
            },
        )
        .collect();
    format!(
        "SELECT {}, version, 1 FROM main.sluice_tombstones \
         WHERE tbl = ?4 AND version > ?1 AND version <= ?2",
        values.join(", ")
    )
}

/// Number of tombstones of `tbl` with versions in `(lo, hi]`.
pub fn count(conn: &Connection, tbl: &str, lo: i64, hi: i64) -> Res<i64> {
    if !Table::Tombstones.exists(conn)? {
        return Ok(0);
    }
    Ok(conn.query_row(
        "SELECT count(*) FROM main.sluice_tombstones WHERE tbl = ?1 AND version > ?2 \
         AND version <= ?3",
        params![tbl, lo, hi],
        |r| r.get(0),
    )?)
}

/// The highest version of the tombstones of `tbl` waiting, if any.
pub fn highest(conn: &Connection, tbl: &str) -> Res<Option<i64>> {
    if !Table::Tombstones.exists(conn)? {
        return Ok(None);
    }
    Ok(conn.query_row(
        "SELECT max(version) FROM main.sluice_tombstones WHERE tbl = ?1",
        [tbl],
        |r| r.get(0),
    )?)
}

/// Whether `tbl` has tombstones waiting.
pub fn any(conn: &Connection, tbl: &str) -> Res<bool> {
    count(conn, tbl, i64::MIN, i64::MAX).map(|n| n > 0)
}

/// Forgets the tombstones of `tbl` with versions in `(lo, hi]`: an
/// acknowledged batch carried them.
pub fn forget(conn: &Connection, tbl: &str, lo: i64, hi: i64) -> Res<()> {
    if !Table::Tombstones.exists(conn)? {
        return Ok(());
    }
    conn.execute(
        "DELETE FROM main.sluice_tombstones WHERE tbl = ?1 AND version > ?2 AND version <= ?3",
        params![tbl, lo, hi],
    )?;
    Ok(())
}

/// The expressions `OLD."k"` of `key`.
pub fn old_values(key: &[String]) -> Vec<String> {
    key.iter()
        .map(|k| format!("OLD.{}", quote_ident(k)))
        .collect()
}
