//! `sluice_insert(table, rows)`: many rows in one call, through one prepared
//! statement, all or nothing.
//!
//! The JSON is parsed by [`crate::rows`] as a stream: each row is checked
//! against the column affinities and bound straight into the statement, so
//! no per-row map is built. A savepoint around the whole call makes a failure
//! at row 17 leave no row behind.
//!
//! The fixed cost of a call is small: the savepoint statements, the table's
//! description and its INSERT are kept on the connection between calls by
//! [`crate::insert_cache`] (which says why that cannot keep the connection
//! from closing, and how a schema change is noticed). A call costs three
//! steps of cached statements besides its rows; the first call on a table,
//! or the first after a schema change, reads the table and prepares its
//! INSERT.
//!
//! Text without escapes, borrowed from the JSON argument, is bound with
//! `SQLITE_STATIC` instead of being copied for every row
//! ([`crate::raw_stmt`]); the bindings are cleared before the statement goes
//! back to the cache.

use std::borrow::Cow;
use std::os::raw::c_int;

use rusqlite::ffi;
use rusqlite::functions::Context;
use rusqlite::types::Value;
use rusqlite::Connection;

use crate::glue::{arg_text, connection, finish, Fail, Res};
use crate::insert_cache::{slot_for, Cache, InsertKey};
use crate::raw_stmt::{Db, RawStmt};
use crate::rows::{check_cell, parse_rows, Cell, RowSink};
use crate::schema::{table_info, TableInfo};
use sluice_wire::names::quote_ident;

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
                crate::glue::describe_value(other)
            )))
        }
    };
    let conn = connection(ctx)?;
    let db = Db::of(&conn);
    let slot = slot_for(db);
    let mut guard = slot.as_deref().and_then(|s| s.try_use());
    // Without the connection's cache (the table is shadowed, or a call is
    // nested in another), a cache for this call alone, dropped at its end.
    let mut own = Cache::default();
    let cache = guard.as_deref_mut().unwrap_or(&mut own);
    let n = atomic(&conn, db, cache, |cache| {
        cache.check_schema(db).map_err(Fail)?;
        let info = cache.table(table, || table_info(&conn, table))?;
        let mut sink = InsertSink {
            db,
            info: &info,
            cache: &mut *cache,
            stmt: None,
        };
        let r = parse_rows(json, &mut sink);
        if let Some((key, stmt)) = sink.stmt.take() {
            sink.cache.put_insert(key, stmt);
        }
        r.map_err(Fail)
    });
    // The table was disconnected during the call: nothing may stay behind.
    if let (Some(s), Some(g)) = (slot.as_deref(), guard.as_deref_mut()) {
        if s.is_closed() {
            *g = Cache::default();
        }
    }
    Ok(Value::Integer(i64::try_from(n?).unwrap_or(i64::MAX)))
}

/// Runs `f` inside `SAVEPOINT sluice_insert`: all of its writes, or none.
/// The savepoint statements are the cache's; the rollback, rare, is
/// prepared when needed.
fn atomic<T>(
    conn: &Connection,
    db: Db<'_>,
    cache: &mut Cache,
    f: impl FnOnce(&mut Cache) -> Res<T>,
) -> Res<T> {
    cache.savepoint(db).map_err(Fail)?;
    let rollback = || {
        let _ = conn.execute_batch("ROLLBACK TO sluice_insert; RELEASE sluice_insert");
    };
    match f(cache) {
        Ok(v) => match cache.release(db) {
            Ok(()) => Ok(v),
            Err(e) => {
                rollback();
                Err(Fail(e))
            }
        },
        Err(e) => {
            rollback();
            Err(e)
        }
    }
}

struct InsertSink<'c> {
    db: Db<'c>,
    info: &'c TableInfo,
    cache: &'c mut Cache,
    /// The INSERT of this call, with what it is kept under.
    stmt: Option<(InsertKey, RawStmt)>,
}

impl<'a> RowSink<'a> for InsertSink<'_> {
    fn columns(&mut self, names: &[Cow<'a, str>]) -> Result<(), String> {
        let mut cols: Vec<usize> = Vec::with_capacity(names.len());
        for key in names {
            let Some((i, c)) = self.info.column(key) else {
                return Err(format!("table '{}' has no column '{key}'", self.info.name));
            };
            if cols.contains(&i) {
                return Err(format!(
                    "row 0: keys '{key}' and '{}' name the same column",
                    names
                        .iter()
                        .find(|n| n.eq_ignore_ascii_case(&c.name))
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ));
            }
            cols.push(i);
        }
        let key = InsertKey {
            table: self.info.name.clone(),
            columns: cols,
        };
        self.stmt = Some(match self.cache.take_insert(&key) {
            Some(stmt) => (key, stmt),
            None => {
                let list: Vec<String> = key
                    .columns
                    .iter()
                    .filter_map(|&i| self.info.columns.get(i))
                    .map(|c| quote_ident(&c.name))
                    .collect();
                let marks: Vec<String> = (1..=list.len()).map(|i| format!("?{i}")).collect();
                let sql = format!(
                    "INSERT INTO main.{} ({}) VALUES ({})",
                    self.info.quoted(),
                    list.join(", "),
                    marks.join(", ")
                );
                // SAFETY: the connection of the call; the statement goes to
                // the cache, which finalizes it before the connection closes.
                let stmt = unsafe { RawStmt::prepare(self.db, &sql, true)? };
                (key, stmt)
            }
        });
        Ok(())
    }

    fn row(&mut self, index: usize, cells: &[Cell<'a>]) -> Result<(), String> {
        let Some((key, stmt)) = self.stmt.as_mut() else {
            return Err("internal error: no statement".to_string());
        };
        for (i, (cell, &col)) in cells.iter().zip(&key.columns).enumerate() {
            let Some(c) = self.info.columns.get(col) else {
                return Err("internal error: no such column".to_string());
            };
            check_cell(c.affinity, cell)
                .map_err(|e| format!("row {index}, column '{}': {e}", c.name))?;
            // Parameters are numbered from 1; there are at most a few
            // thousand columns.
            let p = c_int::try_from(i + 1).unwrap_or(c_int::MAX);
            let r = match cell {
                Cell::Null => stmt.bind_null(p),
                Cell::Bool(b) => stmt.bind_int(p, i64::from(*b)),
                Cell::Int(n) => stmt.bind_int(p, *n),
                Cell::Real(f) => stmt.bind_real(p, *f),
                // SAFETY: borrowed text points into the JSON argument, which
                // outlives this call; the bindings are cleared before the
                // statement is kept (`Cache::put_insert`) or finalized.
                Cell::Text(Cow::Borrowed(t)) => unsafe {
                    stmt.bind_text(p, t, ffi::SQLITE_STATIC())
                },
                // SAFETY: SQLite copies the text (SQLITE_TRANSIENT).
                Cell::Text(Cow::Owned(t)) => unsafe {
                    stmt.bind_text(p, t, ffi::SQLITE_TRANSIENT())
                },
                // SAFETY: as above.
                Cell::Json(j) => unsafe { stmt.bind_text(p, j, ffi::SQLITE_TRANSIENT()) },
            };
            r.map_err(|e| format!("row {index}, column '{}': {e}", c.name))?;
        }
        stmt.execute().map_err(|e| format!("row {index}: {e}"))
    }
}
