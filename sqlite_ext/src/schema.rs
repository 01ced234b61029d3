//! What the extension reads from and keeps in the database: a user table's
//! columns (always looked up with bound parameters, never by pasting a name
//! into SQL), the bookkeeping tables (`sluice_meta`, `sluice_tables`,
//! `sluice_acks`, `sluice_clock`), and the savepoint that makes a function
//! atomic.

use rusqlite::{params, Connection, OptionalExtension};
use sluice_wire::ColumnType;

use crate::options::quote_ident;
use crate::{Fail, Res};

/// One column of a user table.
#[derive(Debug, Clone)]
pub struct ColumnInfo {
    pub name: String,
    /// The declared type, as written in `CREATE TABLE`.
    pub decl: String,
    pub affinity: ColumnType,
    /// Position in the primary key (1-based), 0 if not part of it.
    pub pk: i64,
}

/// A user table of the `main` schema.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// The name as stored in the schema (lookups are case-insensitive).
    pub name: String,
    pub columns: Vec<ColumnInfo>,
    pub without_rowid: bool,
    /// Whether the primary key is backed by an index of its own; then even a
    /// single `INTEGER PRIMARY KEY` column is not a rowid alias (the
    /// `INTEGER PRIMARY KEY DESC` quirk).
    pub pk_index: bool,
}

impl TableInfo {
    /// `name` quoted for SQL.
    pub fn quoted(&self) -> String {
        quote_ident(&self.name)
    }

    /// The column with this name: exact match first, then ignoring ASCII
    /// case (as SQLite does).
    pub fn column(&self, name: &str) -> Option<(usize, &ColumnInfo)> {
        self.columns
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == name)
            .or_else(|| {
                self.columns
                    .iter()
                    .enumerate()
                    .find(|(_, c)| c.name.eq_ignore_ascii_case(name))
            })
    }

    /// The `INTEGER PRIMARY KEY` column that aliases the rowid, if any.
    pub fn rowid_alias(&self) -> Option<&ColumnInfo> {
        if self.without_rowid || self.pk_index {
            return None;
        }
        let mut pk = self.columns.iter().filter(|c| c.pk > 0);
        match (pk.next(), pk.next()) {
            (Some(c), None) if c.decl.eq_ignore_ascii_case("INTEGER") => Some(c),
            _ => None,
        }
    }
}

/// Reads a table of the `main` schema; `no such table: x` if there is none
/// (views and virtual tables are not tables here).
pub fn table_info(conn: &Connection, name: &str) -> Res<TableInfo> {
    let found: Option<String> = conn
        .query_row(
            "SELECT name FROM main.sqlite_master WHERE type = 'table' AND name = ?1 COLLATE NOCASE \
             AND sql NOT LIKE 'CREATE VIRTUAL%'",
            [name],
            |r| r.get(0),
        )
        .optional()?;
    let Some(canonical) = found else {
        return Err(Fail(format!("no such table: {name}")));
    };
    let without_rowid: bool = conn
        .query_row(
            "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
            [&canonical],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(false);
    let pk_index: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_index_list(?1, 'main') WHERE origin = 'pk'",
        [&canonical],
        |r| r.get(0),
    )?;
    let mut stmt =
        conn.prepare("SELECT name, type, pk FROM pragma_table_info(?1, 'main') ORDER BY cid")?;
    let columns = stmt
        .query_map([&canonical], |r| {
            let decl: String = r.get(1)?;
            Ok(ColumnInfo {
                name: r.get(0)?,
                affinity: ColumnType::from_declared(&decl),
                decl,
                pk: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TableInfo {
        name: canonical,
        columns,
        without_rowid,
        pk_index,
    })
}

/// Runs `f` inside a savepoint: all of its writes, or none.
pub fn atomic<T>(conn: &Connection, name: &str, f: impl FnOnce() -> Res<T>) -> Res<T> {
    conn.execute_batch(&format!("SAVEPOINT {name}"))?;
    let rollback = || {
        let _ = conn.execute_batch(&format!("ROLLBACK TO {name}; RELEASE {name}"));
    };
    match f() {
        Ok(v) => match conn.execute_batch(&format!("RELEASE {name}")) {
            Ok(()) => Ok(v),
            Err(e) => {
                rollback();
                Err(e.into())
            }
        },
        Err(e) => {
            rollback();
            Err(e)
        }
    }
}

/// Creates the bookkeeping tables, or upgrades them, to the current version.
pub fn ensure_bookkeeping(conn: &Connection) -> Res<()> {
    crate::bookkeeping::ensure(conn)
}

/// Whether the bookkeeping tables exist (without creating them).
pub fn has_bookkeeping(conn: &Connection) -> Res<bool> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM main.sqlite_master WHERE type = 'table' \
         AND name IN ('sluice_meta', 'sluice_tables', 'sluice_acks')",
        [],
        |r| r.get(0),
    )?;
    Ok(n == 3)
}

/// A value of `sluice_meta`, if the table and the key exist.
pub fn meta_get(conn: &Connection, key: &str) -> Res<Option<rusqlite::types::Value>> {
    if !has_bookkeeping(conn)? {
        return Ok(None);
    }
    let v = conn
        .query_row(
            "SELECT value FROM main.sluice_meta WHERE key = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.filter(|v| *v != rusqlite::types::Value::Null))
}

/// This database's stream id.
pub fn stream_id(conn: &Connection) -> Res<i64> {
    match meta_get(conn, "stream_id")? {
        Some(rusqlite::types::Value::Integer(i)) => Ok(i),
        _ => Err(Fail(
            "this database has no stream id in sluice_meta; track a table first".to_string(),
        )),
    }
}

/// The registration of a tracked table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    pub tbl: String,
    pub mutable: bool,
    pub local_only: Vec<String>,
    pub key: Vec<String>,
    pub acked_seq: i64,
}

/// The registration of `tbl` (canonical name), if it is tracked.
pub fn tracked(conn: &Connection, tbl: &str) -> Res<Option<Tracked>> {
    if !has_bookkeeping(conn)? {
        return Ok(None);
    }
    let row = conn
        .query_row(
            "SELECT tbl, mutable, local_only, key_columns, acked_seq FROM main.sluice_tables \
             WHERE tbl = ?1",
            [tbl],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, bool>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            },
        )
        .optional()?;
    let Some((tbl, mutable, local_only, key, acked_seq)) = row else {
        return Ok(None);
    };
    let list = |s: &str, what: &str| -> Res<Vec<String>> {
        serde_json::from_str(s)
            .map_err(|e| Fail(format!("sluice_tables.{what} of '{tbl}' is damaged: {e}")))
    };
    Ok(Some(Tracked {
        local_only: list(&local_only, "local_only")?,
        key: list(&key, "key_columns")?,
        tbl,
        mutable,
        acked_seq,
    }))
}

/// The table's registration, or an error saying how to track it.
pub fn require_tracked(conn: &Connection, info: &TableInfo) -> Res<Tracked> {
    tracked(conn, &info.name)?.ok_or_else(|| {
        Fail(format!(
            "table '{}' is not tracked; register it with SELECT sluice_track('{}')",
            info.name,
            info.name.replace('\'', "''")
        ))
    })
}

/// Name of the version column of mutable tables.
pub const VERSION_COLUMN: &str = "sluice_version";

/// The sequence column of a tracked table, quoted: the rowid alias of an
/// append-only table, `sluice_version` of a mutable one.
pub fn seq_column(info: &TableInfo, t: &Tracked) -> Res<String> {
    if t.mutable {
        if info.column(VERSION_COLUMN).is_none() {
            return Err(Fail(format!(
                "mutable table '{}' has lost its sluice_version column; run sluice_track again",
                info.name
            )));
        }
        Ok(quote_ident(VERSION_COLUMN))
    } else {
        info.rowid_alias()
            .map(|c| quote_ident(&c.name))
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
pub fn check_high_water(conn: &Connection, info: &TableInfo, t: &Tracked, seq: &str) -> Res<()> {
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

/// Whether the table is AUTOINCREMENT and its sequence is already at or
/// above `seq`: then SQLite never hands out a rowid at or below `seq`.
pub fn autoincrement_covers(conn: &Connection, table: &str, seq: i64) -> Res<bool> {
    let has_seq_table: bool = conn.query_row(
        "SELECT count(*) FROM main.sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'",
        [],
        |r| r.get(0),
    )?;
    if !has_seq_table {
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
