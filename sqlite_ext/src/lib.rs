//! `sluice0.so`: the SQLite loadable extension of sluice. Loaded into any
//! SQLite client (`.load ./sluice0`, Python's `load_extension`, rusqlite), it
//! adds the edge half of the sync protocol (`docs/sync-protocol.md`) and a
//! fast batched insert. Every SQL function is documented in `docs/sqlite.md`.
//!
//! - this file holds the entry point `sqlite3_sluice_init`, the one list of SQL
//!   functions ([`FUNCTIONS`]), `sluice_version`/`sluice_debug`, and the glue
//!   every function shares (argument checks, error messages);
//! - [`rows`] is the streaming parser of `sluice_insert`'s JSON rows (pure);
//! - [`options`] parses `sluice_track` options, `sluice_cleanup` durations,
//!   and quotes identifiers (pure);
//! - [`schema`] reads a table's columns and keeps the bookkeeping tables;
//! - [`insert`] is `sluice_insert`;
//! - [`sync`] holds `sluice_device`, `sluice_track`, `sluice_batch`, `sluice_ack`,
//!   `sluice_pending`, `sluice_cleanup`; [`tracked`] is `sluice_tracked`, the
//!   public view of the registrations; [`acked`] keeps the acknowledged
//!   ranges above the watermark (newest-first draining);
//! - [`window`] is window aggregation: `sluice_bucket`, `sluice_percentile`,
//!   and the quantile sketch functions (over `sluice_wire::sketch`);
//! - [`rollup`] is `sluice_rollup` and `sluice_rollup_run` (registered,
//!   incremental time-window rollups);
//! - [`buffer`] is the bounded local buffer: `sluice_enforce_budget`, the
//!   drop log and the status views (`sluice_status`, `sluice_pending_age`);
//! - [`pack`] is `sluice_compress`/`sluice_decompress` and the packing
//!   aggregate `sluice_pack` with `sluice_unpack`;
//!
//! No panic may cross into the host: the crate denies `unwrap`, `expect` and
//! `panic!`, and every bad input becomes an SQLite error
//! `sluice_<fn>: <what is wrong>`.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod acked;
pub mod bookkeeping;
pub mod glue;
pub mod buffer;
pub mod insert;
pub mod insert_cache;
pub mod options;
pub mod pack;
pub mod raw_stmt;
pub mod rollup;
pub mod rows;
pub mod schema;
pub mod sync;
pub mod tracked;
pub mod window;

use std::os::raw::{c_char, c_int};

use rusqlite::ffi;
use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::Value;
use rusqlite::Connection;

pub use glue::{
    arg_blob, arg_int, arg_opt_text, arg_raw, arg_text, connection, describe_value, finish,
    now_ms, sqlite_message, Fail, Res,
};

/// The signature of every SQL function of the extension.
pub type SqlFn = fn(&Context<'_>) -> rusqlite::Result<Value>;

const UTF8: FunctionFlags = FunctionFlags::SQLITE_UTF8;
/// Pure: same arguments, same result; innocuous, so views and triggers may
/// call it under `PRAGMA trusted_schema=OFF`.
const PURE: FunctionFlags = UTF8
    .union(FunctionFlags::SQLITE_DETERMINISTIC)
    .union(FunctionFlags::SQLITE_INNOCUOUS);
/// Only reads the database: innocuous, so views (`sluice_status`) and
/// triggers may call it under `PRAGMA trusted_schema=OFF`.
const READS: FunctionFlags = UTF8.union(FunctionFlags::SQLITE_INNOCUOUS);
/// Writes: only from top-level SQL, never behind the user's back from a view
/// or trigger.
const WRITES: FunctionFlags = UTF8.union(FunctionFlags::SQLITE_DIRECTONLY);

/// Every SQL function: name, number of arguments, flags, implementation.
pub const FUNCTIONS: &[(&str, c_int, FunctionFlags, SqlFn)] = &[
    ("sluice_version", 0, PURE, sluice_version),
    ("sluice_debug", 0, READS, sluice_debug),
    ("sluice_device", 0, READS, sync::sluice_device),
    ("sluice_device", 1, WRITES, sync::sluice_device),
    ("sluice_insert", 2, WRITES, insert::sluice_insert),
    ("sluice_track", 1, WRITES, sync::sluice_track),
    ("sluice_track", 2, WRITES, sync::sluice_track),
    ("sluice_batch", 1, READS, sync::sluice_batch),
    ("sluice_batch", 2, READS, sync::sluice_batch),
    ("sluice_batch", 3, READS, sync::sluice_batch),
    ("sluice_ack", 1, WRITES, sync::sluice_ack),
    ("sluice_pending", 1, READS, sync::sluice_pending),
    ("sluice_tracked", 0, READS, tracked::sluice_tracked),
    ("sluice_tracked", 1, READS, tracked::sluice_tracked),
    ("sluice_cleanup", 2, WRITES, sync::sluice_cleanup),
    ("sluice_bucket", 2, PURE, window::sluice_bucket),
    (
        "sluice_sketch_quantile",
        2,
        PURE,
        window::sluice_sketch_quantile,
    ),
    ("sluice_compress", 1, PURE, pack::sluice_compress),
    ("sluice_compress", 2, PURE, pack::sluice_compress),
    ("sluice_decompress", 1, PURE, pack::sluice_decompress),
    ("sluice_unpack", 1, PURE, pack::sluice_unpack),
    ("sluice_rollup", 2, WRITES, rollup::sluice_rollup),
    ("sluice_rollup_run", 0, WRITES, rollup::sluice_rollup_run),
    ("sluice_rollup_run", 1, WRITES, rollup::sluice_rollup_run),
    (
        "sluice_enforce_budget",
        1,
        WRITES,
        buffer::sluice_enforce_budget,
    ),
    (
        "sluice_enforce_budget",
        2,
        WRITES,
        buffer::sluice_enforce_budget,
    ),
    ("sluice_pending_age", 1, READS, buffer::sluice_pending_age),
];

/// The aggregate functions (all pure), registered after [`FUNCTIONS`]:
/// `sluice_sketch(x)`, `sluice_sketch_merge(sketch)`, `sluice_pack(...)`;
/// and the window function `sluice_percentile(x, p)`.
pub const AGGREGATES: &[(&str, c_int)] = &[
    ("sluice_sketch", 1),
    ("sluice_sketch_merge", 1),
    ("sluice_pack", -1),
    ("sluice_percentile", 2),
];

/// Entry point; SQLite derives its name from the file name `sluice0.so`.
///
/// # Safety
/// Called by SQLite with a valid connection and API routines.
#[no_mangle]
pub unsafe extern "C" fn sqlite3_sluice_init(
    db: *mut ffi::sqlite3,
    pz_err_msg: *mut *mut c_char,
    p_api: *mut ffi::sqlite3_api_routines,
) -> c_int {
    Connection::extension_init2(db, pz_err_msg, p_api, init)
}

fn init(db: Connection) -> rusqlite::Result<bool> {
    options::check_sqlite_version(rusqlite::version_number())
        .map_err(|m| rusqlite::Error::UserFunctionError(Box::new(Fail(m))))?;
    for &(name, n_arg, flags, f) in FUNCTIONS {
        db.create_scalar_function(name, n_arg, flags, f)?;
    }
    db.create_aggregate_function("sluice_sketch", 1, PURE, window::SketchAgg)?;
    db.create_aggregate_function("sluice_sketch_merge", 1, PURE, window::SketchMerge)?;
    db.create_aggregate_function("sluice_pack", -1, PURE, pack::Pack)?;
    db.create_window_function("sluice_percentile", 2, PURE, window::Percentile)?;
    insert_cache::register(&db)?;
    Ok(false)
}

/// `sluice_version()`: `v` + the crate version.
pub fn sluice_version(_ctx: &Context<'_>) -> rusqlite::Result<Value> {
    Ok(Value::Text(version_string()))
}

pub fn version_string() -> String {
    format!("v{}", env!("CARGO_PKG_VERSION"))
}

/// `sluice_debug()`: version, git commit, SQLite runtime version and build
/// profile, as a JSON object.
pub fn sluice_debug(_ctx: &Context<'_>) -> rusqlite::Result<Value> {
    let v = serde_json::json!({
        "version": version_string(),
        "commit": env!("SLUICE_GIT_COMMIT"),
        "sqlite": rusqlite::version(),
        "profile": env!("SLUICE_BUILD_PROFILE"),
    });
    Ok(Value::Text(v.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn one_list_of_functions_with_distinct_signatures() {
        let mut seen = std::collections::HashSet::new();
        for (name, n, flags, _) in FUNCTIONS {
            assert!(name.starts_with("sluice_"), "{name}");
            assert!(seen.insert((name, n)), "{name}/{n} twice");
            // Each is either direct-only (writes) or innocuous (views and
            // triggers may call it under trusted_schema=OFF), never both.
            assert_ne!(
                flags.contains(FunctionFlags::SQLITE_DIRECTONLY),
                flags.contains(FunctionFlags::SQLITE_INNOCUOUS),
                "{name}/{n}"
            );
            // Only pure functions are deterministic.
            if flags.contains(FunctionFlags::SQLITE_DETERMINISTIC) {
                assert!(
                    [
                        "sluice_version",
                        "sluice_bucket",
                        "sluice_sketch_quantile",
                        "sluice_compress",
                        "sluice_decompress",
                        "sluice_unpack"
                    ]
                    .contains(name),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn version_has_a_v() {
        assert_eq!(version_string(), format!("v{}", env!("CARGO_PKG_VERSION")));
    }
}
