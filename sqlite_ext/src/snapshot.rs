//! The snapshot a connection is applying (`sluice_apply`, issue 13): its
//! progress and the keys its pages carried, in TEMP tables of the
//! connection (so they roll back with it and no other connection sees
//! them), the mark that tells a snapshot into an empty table that nothing
//! else wrote between its pages, and the sweep of its last page. Used by
//! [`crate::apply`] and by [`crate::subscribe`] (a new key, or
//! unsubscribing, forgets a snapshot in progress).

use rusqlite::{params, Connection, OptionalExtension};
use sluice_wire::names::quote_ident;

use crate::glue::Res;
use crate::schema::TableInfo;

/// The TEMP table of the snapshots in progress on this connection: one row
/// per table, the snapshot's stream, checkpoint and last page applied.
const PROGRESS: &str = "sluice_snapshot_progress";

/// The name of the TEMP table of the keys a snapshot of `tbl` carried.
pub fn keys_table(tbl: &str) -> String {
    format!("sluice_snapshot_keys:{tbl}")
}

/// A snapshot in progress on this connection.
pub struct Progress {
    pub stream: i64,
    pub last_seq: i64,
    /// The last page applied.
    pub page: u32,
    /// `Some` while the keys are not recorded: the mark the database had
    /// when the last page was applied.
    pub unwritten_since: Option<Mark>,
}

/// What tells that nothing but `sluice_apply` wrote to the database: this
/// connection's count of changed rows (`sqlite3_total_changes`) and
/// `PRAGMA data_version` (which moves when another connection commits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    changes: i64,
    data_version: i64,
}

/// The rows a call changes after [`set_progress`]'s statement and before
/// the next call looks at its mark: the end of this call's
/// [`crate::bookkeeping::tombstones::quietly`] (a DELETE) and the start of the next one's (an
/// INSERT).
pub const CHANGES_BETWEEN_CALLS: i64 = 2;

impl Mark {
    pub fn now(conn: &Connection) -> Res<Mark> {
        Ok(Mark {
            changes: i64::try_from(conn.total_changes()).unwrap_or(i64::MAX),
            data_version: conn.query_row("PRAGMA main.data_version", [], |r| r.get(0))?,
        })
    }
}

/// The snapshot in progress on this connection for `tbl`.
pub fn progress_of(conn: &Connection, tbl: &str) -> Res<Option<Progress>> {
    if !temp_exists(conn, PROGRESS)? {
        return Ok(None);
    }
    Ok(conn
        .query_row(
            &format!(
                "SELECT stream_id, last_seq, page, fresh, changes, data_version \
                   FROM temp.{PROGRESS} WHERE tbl = ?1"
            ),
            [tbl],
            |r| {
                Ok(Progress {
                    stream: r.get(0)?,
                    last_seq: r.get(1)?,
                    page: r.get(2)?,
                    unwritten_since: if r.get::<_, bool>(3)? {
                        Some(Mark {
                            changes: r.get(4)?,
                            data_version: r.get(5)?,
                        })
                    } else {
                        None
                    },
                })
            },
        )
        .optional()?)
}

/// Records that `page` was applied. `fresh`: the keys are not recorded;
/// the progress then keeps the mark the next page must find. This is the
/// last statement of the call that writes (see [`CHANGES_BETWEEN_CALLS`]).
pub fn set_progress(
    conn: &Connection,
    tbl: &str,
    stream: i64,
    last_seq: i64,
    page: u32,
    fresh: bool,
) -> Res<()> {
    conn.execute_batch(&format!(
        "CREATE TEMP TABLE IF NOT EXISTS {PROGRESS} (
             tbl TEXT PRIMARY KEY,
             stream_id INTEGER NOT NULL,
             last_seq INTEGER NOT NULL,
             page INTEGER NOT NULL,
             fresh INTEGER NOT NULL,
             changes INTEGER,
             data_version INTEGER
         )"
    ))?;
    let mark = Mark::now(conn)?;
    // This statement changes one row.
    conn.execute(
        &format!(
            "INSERT INTO temp.{PROGRESS} VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (tbl) DO UPDATE SET stream_id = excluded.stream_id, \
                 last_seq = excluded.last_seq, page = excluded.page, fresh = excluded.fresh, \
                 changes = excluded.changes, data_version = excluded.data_version"
        ),
        params![
            tbl,
            stream,
            last_seq,
            page,
            fresh,
            mark.changes + 1 + CHANGES_BETWEEN_CALLS,
            mark.data_version
        ],
    )?;
    Ok(())
}

/// Whether the table has no row.
pub fn is_empty(conn: &Connection, info: &TableInfo) -> Res<bool> {
    Ok(conn.query_row(
        &format!("SELECT NOT EXISTS (SELECT 1 FROM main.{})", info.quoted()),
        [],
        |r| r.get(0),
    )?)
}

/// Records the keys of every row the table has as received.
pub fn record_present(conn: &Connection, info: &TableInfo, key: &[String], keys: &str) -> Res<()> {
    let cols: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
    conn.execute(
        &format!(
            "INSERT OR IGNORE INTO temp.{} SELECT {} FROM main.{}",
            quote_ident(keys),
            cols.join(", "),
            info.quoted()
        ),
        [],
    )?;
    Ok(())
}

fn temp_exists(conn: &Connection, name: &str) -> Res<bool> {
    Ok(conn.query_row(
        "SELECT count(*) > 0 FROM temp.sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get(0),
    )?)
}

/// Forgets the snapshot of `tbl` in progress on this connection, if any:
/// its progress and its keys (an incremental batch, a new page 1, the last
/// page, or `sluice_unsubscribe`).
pub fn forget_snapshot(conn: &Connection, tbl: &str) -> Res<()> {
    if temp_exists(conn, PROGRESS)? {
        conn.execute(
            &format!("DELETE FROM temp.{PROGRESS} WHERE tbl = ?1"),
            [tbl],
        )?;
    }
    let keys = keys_table(tbl);
    if temp_exists(conn, &keys)? {
        conn.execute_batch(&format!("DROP TABLE temp.{}", quote_ident(&keys)))?;
    }
    Ok(())
}

/// Creates the TEMP table of the keys a snapshot carries, with the key
/// columns' declared types (so values compare as in the table).
pub fn create_keys(conn: &Connection, info: &TableInfo, key: &[String], keys: &str) -> Res<()> {
    let cols: Vec<String> = key
        .iter()
        .map(|k| {
            let decl = info
                .column(k)
                .map(|(_, c)| c.decl.clone())
                .unwrap_or_default();
            format!("{} {}", quote_ident(k), decl_type(&decl))
        })
        .collect();
    let names: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
    conn.execute_batch(&format!(
        "CREATE TEMP TABLE {} ({}, PRIMARY KEY ({})) WITHOUT ROWID",
        quote_ident(keys),
        cols.join(", "),
        names.join(", ")
    ))?;
    Ok(())
}

/// A declared type reduced to what gives the same affinity, so a type
/// name cannot carry SQL.
fn decl_type(decl: &str) -> &'static str {
    match sluice_wire::ColumnType::from_declared(decl) {
        sluice_wire::ColumnType::Integer => "INTEGER",
        sluice_wire::ColumnType::Real => "REAL",
        sluice_wire::ColumnType::Text => "TEXT",
        sluice_wire::ColumnType::Blob => "BLOB",
        sluice_wire::ColumnType::Numeric => "NUMERIC",
    }
}

/// The last page of a snapshot: deletes the rows whose key no page
/// carried. Returns how many.
pub fn sweep(conn: &Connection, info: &TableInfo, key: &[String], keys: &str) -> Res<i64> {
    let t = info.quoted();
    let k = quote_ident(keys);
    let cond: Vec<String> = key
        .iter()
        .map(|c| {
            let q = quote_ident(c);
            format!("s.{q} = {t}.{q}")
        })
        .collect();
    let n = conn.execute(
        &format!(
            "DELETE FROM main.{t} WHERE NOT EXISTS (SELECT 1 FROM temp.{k} AS s WHERE {})",
            cond.join(" AND ")
        ),
        [],
    )?;
    Ok(n as i64)
}
