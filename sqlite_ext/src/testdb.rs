//! Tests only: a real SQLite connection with this extension loaded, in the
//! test process. The crate's rusqlite is built as a loadable extension, so
//! it calls SQLite through the routines SQLite hands an extension; the test
//! binary links the system's libsqlite3, registers the entry point
//! [`crate::sqlite3_sluice_init`] as an automatic extension, and opens the
//! database with the library's own `sqlite3_open_v2`: SQLite then calls the
//! entry point as it would for `.load`, which registers every function and
//! gives rusqlite the routines. The connection is then wrapped for rusqlite.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::CString;
use std::os::raw::{c_char, c_int, c_void};
use std::sync::Once;

use rusqlite::Connection;

#[link(name = "sqlite3")]
extern "C" {
    fn sqlite3_auto_extension(entry: Option<unsafe extern "C" fn()>) -> c_int;
    fn sqlite3_open_v2(
        filename: *const c_char,
        db: *mut *mut c_void,
        flags: c_int,
        vfs: *const c_char,
    ) -> c_int;
}

const SQLITE_OPEN_READWRITE: c_int = 0x2;
const SQLITE_OPEN_CREATE: c_int = 0x4;
const SQLITE_OPEN_URI: c_int = 0x40;

static REGISTER: Once = Once::new();

/// A connection to `path` (`:memory:` for a database of its own) with
/// sluice0 loaded, in autocommit mode like the sqlite3 shell.
pub fn open(path: &str) -> Connection {
    REGISTER.call_once(|| {
        // SAFETY: SQLite calls the entry point with the signature of an
        // extension's init function, which it has; the cast is how the C
        // API takes it.
        let entry: unsafe extern "C" fn() = unsafe {
            std::mem::transmute::<
                unsafe extern "C" fn(
                    *mut rusqlite::ffi::sqlite3,
                    *mut *mut c_char,
                    *mut rusqlite::ffi::sqlite3_api_routines,
                ) -> c_int,
                unsafe extern "C" fn(),
            >(crate::sqlite3_sluice_init)
        };
        // SAFETY: registering a valid entry point.
        let rc = unsafe { sqlite3_auto_extension(Some(entry)) };
        assert_eq!(rc, 0, "sqlite3_auto_extension");
    });
    let name = CString::new(path).unwrap();
    let mut db: *mut c_void = std::ptr::null_mut();
    // SAFETY: valid arguments; the handle is owned by the Connection below.
    let rc = unsafe {
        sqlite3_open_v2(
            name.as_ptr(),
            &mut db,
            SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "sqlite3_open_v2({path})");
    // SAFETY: a connection just opened, owned by nobody else.
    unsafe { Connection::from_handle_owned(db.cast()) }.unwrap()
}

/// A fresh in-memory database with sluice0 loaded.
pub fn memory() -> Connection {
    open(":memory:")
}

/// The single value of a query's single row.
pub fn one<T: rusqlite::types::FromSql>(conn: &Connection, sql: &str) -> T {
    conn.query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The error message of a statement that must fail.
pub fn err(conn: &Connection, sql: &str) -> String {
    match conn.query_row(sql, [], |_| Ok(())) {
        Ok(()) => panic!("{sql}: did not fail"),
        Err(rusqlite::Error::SqliteFailure(_, Some(m))) => m,
        Err(e) => e.to_string(),
    }
}
