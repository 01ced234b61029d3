//! What `sluice_insert` keeps on a connection between calls: its prepared
//! statements (the savepoint, the schema-version check, one INSERT per table
//! and column list) and the table descriptions, so that a call of a few rows
//! costs a few steps instead of a dozen prepares and queries.
//!
//! Why this is safe. A statement kept after a call would stop the connection
//! from closing: `sqlite3_close` refuses (`SQLITE_BUSY`) while statements
//! are unfinalized, and `sqlite3_close_v2` would leave the connection a
//! zombie for good. A function's destructor and client data run only after
//! that check. What runs before it is `xDisconnect` of every virtual table
//! of the connection (SQLite does this first precisely because "the v-table
//! implementation may be storing some prepared statements internally"). So
//! the cache belongs to the eponymous virtual table `sluice_insert_cache`:
//! its `xConnect` creates the cache of the connection and its `xDisconnect`
//! finalizes every statement in it, before the close looks for open
//! statements. `sluice_insert` connects the table on its first call (by
//! preparing a statement that names it) and uses the cache only while the
//! table is connected; when it is not (a user table of the same name
//! shadows it, say), each call prepares its statements and finalizes them
//! before returning, as before.
//!
//! Staleness. A description is valid while `PRAGMA main.schema_version`
//! reads the same inside the call's savepoint and the statement that reads
//! it was not prepared again: any schema change, by this connection or
//! another, changes the version, and a rollback that undoes one makes SQLite
//! expire (and so re-prepare) every statement of the connection. Then the
//! descriptions and INSERTs are dropped and read again.
//!
//! Reading `SELECT tbl, sql FROM sluice_insert_cache` lists the INSERTs the
//! connection keeps (for a look at what the cache holds; see docs/sqlite.md).

use std::collections::HashMap;
use std::os::raw::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use rusqlite::ffi;
use rusqlite::Connection;

use crate::raw_stmt::{Db, RawStmt};
use crate::schema::TableInfo;

/// The name of the virtual table that owns the caches.
pub const TABLE: &str = "sluice_insert_cache";

/// At most this many table descriptions and this many INSERTs per
/// connection; past it, the map is emptied and filled again.
const MAX_ENTRIES: usize = 64;

/// An INSERT: the table (its canonical name) and the columns bound, in
/// order, as indexes into the table's columns.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InsertKey {
    pub table: String,
    pub columns: Vec<usize>,
}

/// What one connection keeps between calls.
#[derive(Default)]
pub struct Cache {
    savepoint: Option<RawStmt>,
    release: Option<RawStmt>,
    version: Option<RawStmt>,
    /// The schema version the descriptions and INSERTs were made under.
    schema_version: Option<i64>,
    /// Keyed by the table name as the caller wrote it.
    tables: HashMap<String, Arc<TableInfo>>,
    inserts: HashMap<InsertKey, RawStmt>,
}

// SAFETY: the statements belong to one connection, and SQLite lets a
// connection be used from any thread, one call at a time. The cache is only
// touched inside a `sluice_insert` call on its connection (SQLite holds the
// connection's mutex, or the host serializes its calls) and from the
// `xDisconnect` of that connection's table, under the same rule.
unsafe impl Send for Cache {}

impl Cache {
    /// Steps the statement kept in `slot` (preparing `sql` the first time).
    fn run(db: Db<'_>, slot: &mut Option<RawStmt>, sql: &str) -> Result<(), String> {
        match slot {
            Some(s) => s.execute(),
            None => {
                // SAFETY: the statement is finalized with the cache, before
                // the connection closes.
                let s = slot.insert(unsafe { RawStmt::prepare(db, sql, true)? });
                s.execute()
            }
        }
    }

    /// `SAVEPOINT sluice_insert`.
    pub fn savepoint(&mut self, db: Db<'_>) -> Result<(), String> {
        Self::run(db, &mut self.savepoint, "SAVEPOINT sluice_insert")
    }

    /// `RELEASE sluice_insert`.
    pub fn release(&mut self, db: Db<'_>) -> Result<(), String> {
        Self::run(db, &mut self.release, "RELEASE sluice_insert")
    }

    /// Reads the schema version and drops the descriptions and INSERTs if
    /// the schema may have changed since they were made.
    pub fn check_schema(&mut self, db: Db<'_>) -> Result<(), String> {
        let stmt = match &mut self.version {
            Some(s) => s,
            None => {
                // SAFETY: as in `run`.
                let s = unsafe { RawStmt::prepare(db, "PRAGMA main.schema_version", true)? };
                self.version.insert(s)
            }
        };
        let v = stmt.query_i64()?;
        let reprepared = stmt.take_reprepare_count() > 0;
        if reprepared || self.schema_version != Some(v) {
            self.tables.clear();
            self.inserts.clear();
            self.schema_version = Some(v);
        }
        Ok(())
    }

    /// The description of `name`, read by `read` when it is not kept.
    pub fn table<E>(
        &mut self,
        name: &str,
        read: impl FnOnce() -> Result<TableInfo, E>,
    ) -> Result<Arc<TableInfo>, E> {
        if let Some(t) = self.tables.get(name) {
            return Ok(Arc::clone(t));
        }
        let t = Arc::new(read()?);
        if self.tables.len() >= MAX_ENTRIES {
            self.tables.clear();
        }
        self.tables.insert(name.to_string(), Arc::clone(&t));
        Ok(t)
    }

    /// Takes the INSERT for `key` out of the cache, if it is kept.
    pub fn take_insert(&mut self, key: &InsertKey) -> Option<RawStmt> {
        self.inserts.remove(key)
    }

    /// Gives an INSERT back after a call (its bindings cleared).
    pub fn put_insert(&mut self, key: InsertKey, mut stmt: RawStmt) {
        stmt.clear_bindings();
        if self.inserts.len() >= MAX_ENTRIES {
            self.inserts.clear();
        }
        self.inserts.insert(key, stmt);
    }

    /// (table, SQL) of every INSERT kept, ordered.
    fn listing(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .inserts
            .iter()
            .map(|(k, s)| (k.table.clone(), s.sql()))
            .collect();
        out.sort();
        out
    }
}

/// The cache of one connection, shared by its table and by the calls.
pub struct Slot {
    /// Set by `xDisconnect`: the cache must not be used (or refilled) any
    /// more.
    closed: AtomicBool,
    cache: Mutex<Cache>,
}

impl Slot {
    /// The cache, for one call; `None` when the table is gone or the cache
    /// is in use (a call nested inside another on the same connection).
    pub fn try_use(&self) -> Option<MutexGuard<'_, Cache>> {
        if self.is_closed() {
            return None;
        }
        match self.cache.try_lock() {
            Ok(g) => Some(g),
            // A panic while it was held (none is expected): start afresh.
            Err(TryLockError::Poisoned(p)) => {
                let mut g = p.into_inner();
                *g = Cache::default();
                Some(g)
            }
            Err(TryLockError::WouldBlock) => None,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks the cache closed and finalizes its statements (unless a call
    /// holds it; that call empties it when it sees `closed`).
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let g = match self.cache.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        };
        if let Some(mut g) = g {
            *g = Cache::default();
        }
    }
}

/// The connected tables: connection address → (table instance, its cache).
/// An entry is added by `xConnect` and removed by `xDisconnect`, which
/// SQLite always calls before a connection is freed, so an address here is
/// always a live connection.
static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

type Registry = HashMap<usize, (u64, Arc<Slot>)>;

fn registry() -> MutexGuard<'static, Option<Registry>> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

fn lookup(db: Db<'_>) -> Option<Arc<Slot>> {
    registry()
        .as_ref()
        .and_then(|m| m.get(&db.addr()))
        .map(|(_, s)| Arc::clone(s))
}

/// The cache of the connection `db`, connecting the table if it is not yet.
pub fn slot_for(db: Db<'_>) -> Option<Arc<Slot>> {
    if let Some(s) = lookup(db) {
        return Some(s);
    }
    // Preparing a statement that names an eponymous table connects it
    // (xConnect); it stays connected until the connection closes.
    // SAFETY: the probe is finalized at once.
    drop(unsafe { RawStmt::prepare(db, "SELECT 1 FROM sluice_insert_cache", false) });
    lookup(db)
}

/// Registers the table on a connection (from the extension's entry point).
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    let name = std::ffi::CString::new(TABLE).map_err(|_| rusqlite::Error::InvalidQuery)?;
    // SAFETY: a live connection; the module is a static, the name is copied.
    let rc = unsafe {
        ffi::sqlite3_create_module_v2(
            conn.handle(),
            name.as_ptr(),
            &MODULE,
            std::ptr::null_mut(),
            None,
        )
    };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rusqlite::Error::SqliteFailure(
            ffi::Error::new(rc),
            Some(format!("cannot register {TABLE}")),
        ))
    }
}

// ---------------------------------------------------------------------------
// The virtual table (eponymous only: no CREATE VIRTUAL TABLE).

#[repr(C)]
struct Tab {
    base: ffi::sqlite3_vtab,
    db: usize,
    id: u64,
    slot: Arc<Slot>,
}

#[repr(C)]
struct Cursor {
    base: ffi::sqlite3_vtab_cursor,
    rows: Vec<(String, String)>,
    at: usize,
}

const ZERO_MODULE: ffi::sqlite3_module = {
    // SAFETY: a struct of integers and optional function pointers: all
    // zeroes is iVersion 0 and every method absent.
    unsafe { std::mem::zeroed() }
};

static MODULE: ffi::sqlite3_module = ffi::sqlite3_module {
    iVersion: 1,
    xCreate: None,
    xConnect: Some(x_connect),
    xBestIndex: Some(x_best_index),
    xDisconnect: Some(x_disconnect),
    xDestroy: None,
    xOpen: Some(x_open),
    xClose: Some(x_close),
    xFilter: Some(x_filter),
    xNext: Some(x_next),
    xEof: Some(x_eof),
    xColumn: Some(x_column),
    xRowid: Some(x_rowid),
    ..ZERO_MODULE
};

unsafe extern "C" fn x_connect(
    db: *mut ffi::sqlite3,
    _aux: *mut c_void,
    _argc: c_int,
    _argv: *const *const c_char,
    pp_vtab: *mut *mut ffi::sqlite3_vtab,
    _pz_err: *mut *mut c_char,
) -> c_int {
    // SAFETY: `db` is the connecting connection; the schema is a literal.
    let rc =
        unsafe { ffi::sqlite3_declare_vtab(db, c"CREATE TABLE x(tbl TEXT, sql TEXT)".as_ptr()) };
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    // Reading it is harmless: views and triggers may.
    // SAFETY: called from xConnect, as required.
    unsafe { ffi::sqlite3_vtab_config(db, ffi::SQLITE_VTAB_INNOCUOUS) };
    let slot = Arc::new(Slot {
        closed: AtomicBool::new(false),
        cache: Mutex::new(Cache::default()),
    });
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    registry()
        .get_or_insert_with(HashMap::new)
        .insert(db as usize, (id, Arc::clone(&slot)));
    let tab = Box::new(Tab {
        base: ffi::sqlite3_vtab::default(),
        db: db as usize,
        id,
        slot,
    });
    // SAFETY: SQLite passes a valid out pointer.
    unsafe { *pp_vtab = Box::into_raw(tab).cast() };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_disconnect(vtab: *mut ffi::sqlite3_vtab) -> c_int {
    if vtab.is_null() {
        return ffi::SQLITE_OK;
    }
    // SAFETY: made by `x_connect` with Box::into_raw; SQLite disconnects it
    // once.
    let tab = unsafe { Box::from_raw(vtab.cast::<Tab>()) };
    {
        let mut reg = registry();
        if let Some(m) = reg.as_mut() {
            if m.get(&tab.db).is_some_and(|(id, _)| *id == tab.id) {
                m.remove(&tab.db);
            }
        }
    }
    tab.slot.close();
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_best_index(
    _vtab: *mut ffi::sqlite3_vtab,
    info: *mut ffi::sqlite3_index_info,
) -> c_int {
    // SAFETY: SQLite passes a valid index info.
    unsafe {
        (*info).estimatedCost = 10.0;
        (*info).estimatedRows = 10;
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_open(
    vtab: *mut ffi::sqlite3_vtab,
    pp_cursor: *mut *mut ffi::sqlite3_vtab_cursor,
) -> c_int {
    let _ = vtab;
    let cur = Box::new(Cursor {
        base: ffi::sqlite3_vtab_cursor::default(),
        rows: Vec::new(),
        at: 0,
    });
    // SAFETY: SQLite passes a valid out pointer.
    unsafe { *pp_cursor = Box::into_raw(cur).cast() };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_close(cursor: *mut ffi::sqlite3_vtab_cursor) -> c_int {
    if !cursor.is_null() {
        // SAFETY: made by `x_open`; closed once.
        drop(unsafe { Box::from_raw(cursor.cast::<Cursor>()) });
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_filter(
    cursor: *mut ffi::sqlite3_vtab_cursor,
    _idx_num: c_int,
    _idx_str: *const c_char,
    _argc: c_int,
    _argv: *mut *mut ffi::sqlite3_value,
) -> c_int {
    // SAFETY: a cursor made by `x_open`, whose `pVtab` SQLite set to the
    // table it was opened on.
    let cur = unsafe { &mut *cursor.cast::<Cursor>() };
    let tab = unsafe { &*cur.base.pVtab.cast::<Tab>() };
    cur.rows = tab.slot.try_use().map(|c| c.listing()).unwrap_or_default();
    cur.at = 0;
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_next(cursor: *mut ffi::sqlite3_vtab_cursor) -> c_int {
    // SAFETY: a cursor made by `x_open`.
    let cur = unsafe { &mut *cursor.cast::<Cursor>() };
    cur.at = cur.at.saturating_add(1);
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_eof(cursor: *mut ffi::sqlite3_vtab_cursor) -> c_int {
    // SAFETY: a cursor made by `x_open`.
    let cur = unsafe { &*cursor.cast::<Cursor>() };
    c_int::from(cur.at >= cur.rows.len())
}

unsafe extern "C" fn x_column(
    cursor: *mut ffi::sqlite3_vtab_cursor,
    ctx: *mut ffi::sqlite3_context,
    i: c_int,
) -> c_int {
    // SAFETY: a cursor made by `x_open`.
    let cur = unsafe { &*cursor.cast::<Cursor>() };
    let Some((tbl, sql)) = cur.rows.get(cur.at) else {
        // SAFETY: the context SQLite passed.
        unsafe { ffi::sqlite3_result_null(ctx) };
        return ffi::SQLITE_OK;
    };
    let text = if i == 0 { tbl } else { sql };
    let Ok(len) = c_int::try_from(text.len()) else {
        return ffi::SQLITE_TOOBIG;
    };
    // SAFETY: SQLite copies the text (SQLITE_TRANSIENT).
    unsafe { ffi::sqlite3_result_text(ctx, text.as_ptr().cast(), len, ffi::SQLITE_TRANSIENT()) };
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_rowid(cursor: *mut ffi::sqlite3_vtab_cursor, rowid: *mut i64) -> c_int {
    // SAFETY: a cursor made by `x_open`; SQLite passes a valid out pointer.
    unsafe {
        let cur = &*cursor.cast::<Cursor>();
        *rowid = i64::try_from(cur.at).unwrap_or(i64::MAX).saturating_add(1);
    }
    ffi::SQLITE_OK
}
