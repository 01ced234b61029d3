//! The extension's settings (GUCs), all here, registered by `_PG_init` when
//! the library is loaded, and read only through the accessors below.
//! `docs/postgres.md` ("Settings") lists them.
//!
//! The prefix `sluice.` is reserved ([`register`] calls
//! `MarkGUCPrefixReserved`): a misspelt setting (`SET sluice.retention_chunk
//! = 10`) is an error, not a placeholder that silently does nothing.

use std::ffi::{CStr, CString};
use std::time::Duration;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};

/// `sluice.retention_chunk_rows`: about how many rows one transaction of
/// `sluice.run_retention` deletes (it deletes by ranges of pages holding
/// about this many rows), so that no lock is held for long.
static RETENTION_CHUNK_ROWS: GucSetting<i32> = GucSetting::<i32>::new(10_000);

/// `sluice.retention_interval`: seconds between two passes of the retention
/// worker ([`crate::worker`]); 0, the default, leaves it idle. Read again on
/// SIGHUP (`pg_reload_conf()`).
static RETENTION_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(0);

/// The default of `sluice.retention_database`.
const DEFAULT_RETENTION_DATABASE: &CStr = c"postgres";

/// `sluice.retention_database`: the database the retention worker connects
/// to (at server start).
static RETENTION_DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(DEFAULT_RETENTION_DATABASE));

/// The prefix of every setting of the extension.
const PREFIX: &CStr = c"sluice";

/// Defines the settings and reserves their prefix; called once per process,
/// by `_PG_init`.
pub fn register() {
    GucRegistry::define_int_guc(
        c"sluice.retention_chunk_rows",
        c"Rows deleted per transaction by sluice.run_retention (about).",
        c"sluice.run_retention deletes expired rows by ranges of pages that hold about this many rows, committing after each range, so that concurrent ingest is never blocked for long.",
        &RETENTION_CHUNK_ROWS,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"sluice.retention_interval",
        c"Time between two retention passes of the sluice retention worker; 0 turns it off.",
        c"With sluice in shared_preload_libraries, a background worker calls sluice.run_retention for every policy of the database sluice.retention_database at this interval. 0 (the default) leaves it idle.",
        &RETENTION_INTERVAL,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    // A server-start setting may only be defined while the postmaster loads
    // shared_preload_libraries (elsewhere PostgreSQL refuses it with a
    // FATAL), and it matters only to the worker, which exists only then.
    // Elsewhere it is defined as a reload setting, so that a DBA can still
    // write it (`ALTER SYSTEM SET`, postgresql.conf) before adding sluice to
    // shared_preload_libraries: with the prefix reserved, an undefined
    // `sluice.` name would be refused.
    // SAFETY: a flag PostgreSQL sets while it loads shared_preload_libraries.
    let preloading = unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress };
    GucRegistry::define_string_guc(
        c"sluice.retention_database",
        c"Database in which the sluice retention worker runs retention.",
        c"The retention worker connects to this database at server start; the sluice extension must be installed there, or the worker does nothing.",
        &RETENTION_DATABASE,
        if preloading {
            GucContext::Postmaster
        } else {
            GucContext::Sighup
        },
        GucFlags::default(),
    );
    // SAFETY: called from _PG_init, after the definitions above; the name is
    // a NUL-terminated static. PostgreSQL 15 and later have it (the oldest
    // version this crate builds for, see the features of Cargo.toml).
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(PREFIX.as_ptr()) };
}

/// The value of `sluice.retention_chunk_rows` (at least 1).
pub fn retention_chunk_rows() -> i32 {
    RETENTION_CHUNK_ROWS.get()
}

/// `sluice.retention_interval` as the time between two passes of the
/// worker; `None` when it is 0 (the worker idles).
pub fn retention_interval() -> Option<Duration> {
    u64::try_from(RETENTION_INTERVAL.get())
        .ok()
        .filter(|&s| s > 0)
        .map(Duration::from_secs)
}

/// The value of `sluice.retention_database` (the default when unset).
pub fn retention_database() -> String {
    RETENTION_DATABASE
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| DEFAULT_RETENTION_DATABASE.to_string_lossy().into_owned())
}
