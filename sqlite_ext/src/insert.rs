//! `sluice_insert(table, rows)`: many rows in one call, through one prepared
//! statement, all or nothing.
//!
//! The JSON is parsed by [`crate::rows`] as a stream: each row is checked
//! against the column affinities and bound straight into the statement, so
//! no per-row map is built. A savepoint around the whole call makes a failure
//! at row 17 leave no row behind.
//!
//! The statement is prepared once per call, not cached across calls: a
//! statement kept alive after the call would stop the connection from
//! closing (`sqlite3_close` refuses while statements are unfinalized, and
//! there is no hook to finalize them first). Preparing a single INSERT costs
//! microseconds; per-row work dominates any call with more than a few rows.

use std::borrow::Cow;

use rusqlite::functions::Context;
use rusqlite::types::Value;
use rusqlite::{Connection, Statement};
use sluice_wire::ColumnType;

use crate::options::quote_ident;
use crate::rows::{check_cell, parse_rows, Cell, RowSink};
use crate::schema::{atomic, table_info, TableInfo};
use crate::{arg_text, connection, finish, sqlite_message, Fail, Res};

/// `sluice_insert(table TEXT, rows TEXT) -> INTEGER` rows inserted.
pub fn sluice_insert(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_insert", insert(ctx))
}

fn insert(ctx: &Context<'_>) -> Res<Value> {
    let table = arg_text(ctx, 0, "the table name")?;
    let json = match ctx.get_raw(1) {
        rusqlite::types::ValueRef::Text(t) => {
            std::str::from_utf8(t).map_err(|_| Fail::from("rows are not valid UTF-8"))?
        }
        other => {
            return Err(Fail(format!(
                "rows must be a JSON array of objects as text, got {}",
                crate::describe_value(other)
            )))
        }
    };
    let conn = connection(ctx)?;
    let info = table_info(&conn, table)?;
    let n = atomic(&conn, "sluice_insert", || {
        let mut sink = InsertSink {
            conn: &conn,
            info: &info,
            stmt: None,
            columns: Vec::new(),
        };
        parse_rows(json, &mut sink).map_err(Fail)
    })?;
    Ok(Value::Integer(n as i64))
}

struct InsertSink<'c> {
    conn: &'c Connection,
    info: &'c TableInfo,
    stmt: Option<Statement<'c>>,
    /// For each JSON key (in row-0 order): the column's name and affinity.
    columns: Vec<(String, ColumnType)>,
}

impl<'a> RowSink<'a> for InsertSink<'_> {
    fn columns(&mut self, names: &[Cow<'a, str>]) -> Result<(), String> {
        let mut cols: Vec<(String, ColumnType)> = Vec::with_capacity(names.len());
        for key in names {
            let Some((_, c)) = self.info.column(key) else {
                return Err(format!("table '{}' has no column '{key}'", self.info.name));
            };
            if cols.iter().any(|(n, _)| *n == c.name) {
                return Err(format!(
                    "row 0: keys '{key}' and '{}' name the same column",
                    names
                        .iter()
                        .find(|n| n.eq_ignore_ascii_case(&c.name))
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ));
            }
            cols.push((c.name.clone(), c.affinity));
        }
        let list: Vec<String> = cols.iter().map(|(n, _)| quote_ident(n)).collect();
        let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
        let sql = format!(
            "INSERT INTO main.{} ({}) VALUES ({})",
            self.info.quoted(),
            list.join(", "),
            marks.join(", ")
        );
        self.stmt = Some(self.conn.prepare(&sql).map_err(|e| sqlite_message(&e))?);
        self.columns = cols;
        Ok(())
    }

    fn row(&mut self, index: usize, cells: &[Cell<'a>]) -> Result<(), String> {
        let Some(stmt) = self.stmt.as_mut() else {
            return Err("internal error: no statement".to_string());
        };
        for (i, (cell, (name, affinity))) in cells.iter().zip(&self.columns).enumerate() {
            check_cell(*affinity, cell)
                .map_err(|e| format!("row {index}, column '{name}': {e}"))?;
            let r = match cell {
                Cell::Null => stmt.raw_bind_parameter(i + 1, rusqlite::types::Null),
                Cell::Bool(b) => stmt.raw_bind_parameter(i + 1, i64::from(*b)),
                Cell::Int(n) => stmt.raw_bind_parameter(i + 1, *n),
                Cell::Real(f) => stmt.raw_bind_parameter(i + 1, *f),
                Cell::Text(t) => stmt.raw_bind_parameter(i + 1, t.as_ref()),
                Cell::Json(j) => stmt.raw_bind_parameter(i + 1, j.as_str()),
            };
            r.map_err(|e| format!("row {index}, column '{name}': {}", sqlite_message(&e)))?;
        }
        stmt.raw_execute()
            .map_err(|e| format!("row {index}: {}", sqlite_message(&e)))?;
        Ok(())
    }
}
