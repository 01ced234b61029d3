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
//! there is no hook to finalize them first: a function's destructor, the
//! only close-time callback, runs after that check, so a cache it owned
//! would keep `sqlite3_close` busy and make `sqlite3_close_v2` leak the
//! connection). Preparing a single INSERT costs tens of microseconds; per-row
//! work dominates any call with more than a few rows.
//!
//! The statement is driven through the C API (`RawStmt`) so that strings
//! without escapes, borrowed from the JSON argument, are bound with
//! `SQLITE_STATIC` instead of being copied for every row.

use std::borrow::Cow;
use std::os::raw::c_int;

use rusqlite::ffi;
use rusqlite::functions::Context;
use rusqlite::types::Value;
use rusqlite::Connection;
use sluice_wire::ColumnType;

use crate::options::quote_ident;
use crate::rows::{check_cell, parse_rows, Cell, RowSink};
use crate::schema::{atomic, table_info, TableInfo};
use crate::{arg_text, connection, finish, Fail, Res};

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
    stmt: Option<RawStmt>,
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
        self.stmt = Some(RawStmt::prepare(self.conn, &sql)?);
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
            // Parameters are numbered from 1; there are at most a few
            // thousand columns.
            let p = c_int::try_from(i + 1).unwrap_or(c_int::MAX);
            // SAFETY: `Borrowed` text points into the JSON argument, which
            // outlives the statement (finalized when the sink is dropped,
            // before `insert` returns); everything else is copied by SQLite.
            let r = unsafe {
                match cell {
                    Cell::Null => stmt.bind_null(p),
                    Cell::Bool(b) => stmt.bind_int(p, i64::from(*b)),
                    Cell::Int(n) => stmt.bind_int(p, *n),
                    Cell::Real(f) => stmt.bind_real(p, *f),
                    Cell::Text(Cow::Borrowed(t)) => stmt.bind_text(p, t, ffi::SQLITE_STATIC()),
                    Cell::Text(Cow::Owned(t)) => stmt.bind_text(p, t, ffi::SQLITE_TRANSIENT()),
                    Cell::Json(j) => stmt.bind_text(p, j, ffi::SQLITE_TRANSIENT()),
                }
            };
            r.map_err(|e| format!("row {index}, column '{name}': {e}"))?;
        }
        stmt.execute().map_err(|e| format!("row {index}: {e}"))
    }
}

/// The INSERT statement, driven through the C API rather than
/// `rusqlite::Statement` so that text borrowed from the JSON argument is
/// bound without a copy (`SQLITE_STATIC`); rusqlite always copies. Finalized
/// on drop.
struct RawStmt {
    db: *mut ffi::sqlite3,
    stmt: *mut ffi::sqlite3_stmt,
}

impl RawStmt {
    fn prepare(conn: &Connection, sql: &str) -> Result<Self, String> {
        // SAFETY: the handle is the live connection the function was called
        // on; the statement is finalized before the call returns.
        let db = unsafe { conn.handle() };
        let len = c_int::try_from(sql.len()).map_err(|_| "statement too long".to_string())?;
        let mut stmt = std::ptr::null_mut();
        // SAFETY: `sql` is valid for `len` bytes; `stmt` is an out pointer.
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(
                db,
                sql.as_ptr().cast(),
                len,
                &mut stmt,
                std::ptr::null_mut(),
            )
        };
        if rc != ffi::SQLITE_OK || stmt.is_null() {
            // SAFETY: on failure `stmt` is NULL (finalizing NULL is a no-op).
            unsafe { ffi::sqlite3_finalize(stmt) };
            return Err(errmsg(db));
        }
        Ok(RawStmt { db, stmt })
    }

    fn check(&self, rc: c_int) -> Result<(), String> {
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(errmsg(self.db))
        }
    }

    unsafe fn bind_null(&mut self, p: c_int) -> Result<(), String> {
        self.check(ffi::sqlite3_bind_null(self.stmt, p))
    }

    unsafe fn bind_int(&mut self, p: c_int, v: i64) -> Result<(), String> {
        self.check(ffi::sqlite3_bind_int64(self.stmt, p, v))
    }

    unsafe fn bind_real(&mut self, p: c_int, v: f64) -> Result<(), String> {
        self.check(ffi::sqlite3_bind_double(self.stmt, p, v))
    }

    /// # Safety
    /// With `SQLITE_STATIC`, `v` must stay valid until the statement is
    /// rebound or finalized.
    unsafe fn bind_text(
        &mut self,
        p: c_int,
        v: &str,
        destructor: ffi::sqlite3_destructor_type,
    ) -> Result<(), String> {
        let len = c_int::try_from(v.len()).map_err(|_| "text too long".to_string())?;
        self.check(ffi::sqlite3_bind_text(
            self.stmt,
            p,
            v.as_ptr().cast(),
            len,
            destructor,
        ))
    }

    /// Steps the INSERT once and resets it.
    fn execute(&mut self) -> Result<(), String> {
        // SAFETY: a prepared statement of this connection.
        unsafe {
            let rc = ffi::sqlite3_step(self.stmt);
            let r = if rc == ffi::SQLITE_DONE || rc == ffi::SQLITE_ROW {
                Ok(())
            } else {
                Err(errmsg(self.db))
            };
            ffi::sqlite3_reset(self.stmt);
            r
        }
    }
}

impl Drop for RawStmt {
    fn drop(&mut self) {
        // SAFETY: prepared by `prepare`, finalized once.
        unsafe { ffi::sqlite3_finalize(self.stmt) };
    }
}

/// The connection's last error message.
fn errmsg(db: *mut ffi::sqlite3) -> String {
    // SAFETY: SQLite returns a NUL-terminated string owned by the connection.
    unsafe {
        let m = ffi::sqlite3_errmsg(db);
        if m.is_null() {
            "out of memory".to_string()
        } else {
            std::ffi::CStr::from_ptr(m).to_string_lossy().into_owned()
        }
    }
}
