//! A prepared statement driven through the C API, for `sluice_insert` and
//! its per-connection cache ([`crate::insert_cache`]).
//!
//! Not `rusqlite::Statement`: text borrowed from the JSON argument is bound
//! without a copy (`SQLITE_STATIC`; rusqlite always copies), and a statement
//! can outlive the call that prepared it (it is owned by the cache, not by a
//! `Connection` wrapper that lives for one call). Finalized on drop.

use std::marker::PhantomData;
use std::os::raw::c_int;

use rusqlite::ffi;
use rusqlite::Connection;

/// The handle of a connection, valid while the borrow it came from lasts.
#[derive(Clone, Copy)]
pub struct Db<'c> {
    ptr: *mut ffi::sqlite3,
    _conn: PhantomData<&'c Connection>,
}

impl<'c> Db<'c> {
    pub fn of(conn: &'c Connection) -> Self {
        Db {
            // SAFETY: the pointer is only used while `conn` is borrowed,
            // and by statements that are finalized before it closes.
            ptr: unsafe { conn.handle() },
            _conn: PhantomData,
        }
    }

    /// The address of the connection, to tell connections apart.
    pub fn addr(self) -> usize {
        self.ptr as usize
    }
}

/// One prepared statement of one connection.
pub struct RawStmt {
    db: *mut ffi::sqlite3,
    stmt: *mut ffi::sqlite3_stmt,
}

impl RawStmt {
    /// Prepares `sql` (one statement). `persistent`: the statement will be
    /// kept across calls (`SQLITE_PREPARE_PERSISTENT`, so SQLite does not
    /// take its memory from the connection's small lookaside pool).
    ///
    /// # Safety
    /// The statement must be finalized (dropped) before the connection
    /// closes.
    pub unsafe fn prepare(db: Db<'_>, sql: &str, persistent: bool) -> Result<Self, String> {
        let len = c_int::try_from(sql.len()).map_err(|_| "statement too long".to_string())?;
        let flags = if persistent {
            ffi::SQLITE_PREPARE_PERSISTENT
        } else {
            0
        };
        let db = db.ptr;
        let mut stmt = std::ptr::null_mut();
        // SAFETY: `sql` is valid for `len` bytes; `stmt` is an out pointer.
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                db,
                sql.as_ptr().cast(),
                len,
                flags,
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

    pub fn bind_null(&mut self, p: c_int) -> Result<(), String> {
        // SAFETY: a prepared statement of this connection.
        self.check(unsafe { ffi::sqlite3_bind_null(self.stmt, p) })
    }

    pub fn bind_int(&mut self, p: c_int, v: i64) -> Result<(), String> {
        // SAFETY: a prepared statement of this connection.
        self.check(unsafe { ffi::sqlite3_bind_int64(self.stmt, p, v) })
    }

    pub fn bind_real(&mut self, p: c_int, v: f64) -> Result<(), String> {
        // SAFETY: a prepared statement of this connection.
        self.check(unsafe { ffi::sqlite3_bind_double(self.stmt, p, v) })
    }

    /// # Safety
    /// With `SQLITE_STATIC`, `v` must stay valid until the statement is
    /// rebound, its bindings cleared ([`RawStmt::clear_bindings`]), or it
    /// is finalized.
    pub unsafe fn bind_text(
        &mut self,
        p: c_int,
        v: &str,
        destructor: ffi::sqlite3_destructor_type,
    ) -> Result<(), String> {
        let len = c_int::try_from(v.len()).map_err(|_| "text too long".to_string())?;
        // SAFETY: `v` is valid for `len` bytes (and for as long as the
        // caller promised with SQLITE_STATIC; SQLite copies otherwise).
        self.check(unsafe {
            ffi::sqlite3_bind_text(self.stmt, p, v.as_ptr().cast(), len, destructor)
        })
    }

    /// Unbinds every parameter (bound text borrowed from an argument must
    /// not stay behind in a statement that outlives the call).
    pub fn clear_bindings(&mut self) {
        // SAFETY: a prepared statement of this connection.
        unsafe { ffi::sqlite3_clear_bindings(self.stmt) };
    }

    /// Steps the statement once, for its effect, and resets it.
    pub fn execute(&mut self) -> Result<(), String> {
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

    /// Steps a statement that returns one integer (a PRAGMA), and resets it.
    pub fn query_i64(&mut self) -> Result<i64, String> {
        // SAFETY: a prepared statement of this connection; the column is
        // read before the reset.
        unsafe {
            let rc = ffi::sqlite3_step(self.stmt);
            let r = if rc == ffi::SQLITE_ROW {
                Ok(ffi::sqlite3_column_int64(self.stmt, 0))
            } else if rc == ffi::SQLITE_DONE {
                Err("the statement returned no row".to_string())
            } else {
                Err(errmsg(self.db))
            };
            ffi::sqlite3_reset(self.stmt);
            r
        }
    }

    /// How many times SQLite has prepared the statement again since the
    /// last look (after a schema change, or after a rollback that undid
    /// one: SQLite then expires every statement of the connection); the
    /// count starts again from 0.
    pub fn take_reprepare_count(&mut self) -> i64 {
        // SAFETY: a prepared statement of this connection.
        i64::from(unsafe {
            ffi::sqlite3_stmt_status(self.stmt, ffi::SQLITE_STMTSTATUS_REPREPARE, 1)
        })
    }

    /// The SQL text of the statement.
    pub fn sql(&self) -> String {
        // SAFETY: SQLite returns a NUL-terminated string owned by the
        // statement, or NULL.
        unsafe {
            let s = ffi::sqlite3_sql(self.stmt);
            if s.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(s).to_string_lossy().into_owned()
            }
        }
    }
}

impl Drop for RawStmt {
    fn drop(&mut self) {
        // SAFETY: prepared by `prepare`, finalized once.
        unsafe { ffi::sqlite3_finalize(self.stmt) };
    }
}

/// The connection's last error message (`db`: a live connection).
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
