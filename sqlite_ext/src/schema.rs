//! The user's tables as the extension reads them: a table's columns, always
//! looked up with bound parameters, never by pasting a name into SQL. (The
//! extension's own tables are [`crate::bookkeeping`].)

use rusqlite::{Connection, OptionalExtension};
use sluice_wire::names::quote_ident;
use sluice_wire::ColumnType;

use crate::glue::{Fail, Res};

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
    let Some(canonical) = find_table(conn, name)? else {
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

/// The name of the table `name` of the `main` schema as the schema spells
/// it (ignoring ASCII case), if there is one: the one lookup of a user's
/// table (views and virtual tables are not tables here).
pub fn find_table(conn: &Connection, name: &str) -> Res<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT name FROM main.sqlite_master WHERE type = 'table' AND name = ?1 COLLATE NOCASE \
             AND sql NOT LIKE 'CREATE VIRTUAL%'",
            [name],
            |r| r.get(0),
        )
        .optional()?)
}
