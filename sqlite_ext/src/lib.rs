//! `sluice0.so`: the SQLite loadable extension of sluice. Loaded into any
//! SQLite client (`.load ./sluice0`, Python's `load_extension`, rusqlite), it
//! adds the edge half of the sync protocol (`docs/sync-protocol.md`) and a
//! fast batched insert. Every SQL function is documented in `docs/sqlite.md`;
//! the layers and which way imports go are in `docs/architecture.md`.
//!
//! This file only registers: the entry point `sqlite3_sluice_init` and the
//! one table of SQL functions, scalar, aggregate and window ([`FUNCTIONS`]).
//! Below it, each module imports only from the layers under it:
//!
//! - the SQL functions: [`about`] (`sluice_version`, `sluice_debug`),
//!   [`track`] (`sluice_device`, `sluice_track`), [`batch`], [`ack`]
//!   (`sluice_ack`, `sluice_pending`, `sluice_cleanup`), [`epoch`]
//!   (`sluice_machine`, `sluice_zone`, `sluice_new_epoch`,
//!   `sluice_identity`), [`tracked`],
//!   [`status`] (`sluice_pending_age`), [`insert`] (with [`rows`],
//!   [`insert_cache`], [`raw_stmt`]), [`window`] (`sluice_bucket`,
//!   percentiles, sketches), [`pack`], [`rollup`], [`budget`]
//!   (`sluice_enforce_budget`), [`reserve`] (`sluice_reserve`, the free
//!   space of a full disk), [`resend`] (`sluice_resend`), [`quarantine`]
//!   (`sluice_quarantine`, `sluice_release`), [`subscribe`]
//!   (`sluice_subscribe`, `sluice_unsubscribe`) and [`apply`]
//!   (`sluice_apply`): the cloud-to-edge direction;
//! - the policies they share: [`seal`] (which raw rows of a rollup source may
//!   go, and the windows that are sealed), [`rollup_spec`] (a rollup's
//!   declaration), [`sequence`] (the sequence column of a tracked table),
//!   [`acked`] (acknowledged ranges above the watermark), [`fork`] (the
//!   fork a new epoch leaves on a table), [`resend_rows`] (the rows of
//!   re-send requests), [`mutable`] (the version column and triggers of a
//!   mutable table, quiet while `sluice_apply` writes), [`snapshot`] (the
//!   snapshot a connection is applying);
//! - the database: [`bookkeeping`] (every `sluice_*` table: DDL, versioned
//!   upgrades, typed accessors) and [`schema`] (the user's tables);
//! - pure: [`time`], [`options`], [`origin`] (machine ids, zones), and
//!   [`glue`] (errors, arguments, the savepoint, the clock).
//!
//! No panic may cross into the host: the crate denies `unwrap`, `expect` and
//! `panic!`, and every bad input becomes an SQLite error
//! `sluice_<fn>: <what is wrong>`.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod about;
pub mod ack;
pub mod acked;
pub mod apply;
#[cfg(test)]
mod apply_tests;
pub mod batch;
pub mod bookkeeping;
pub mod budget;
pub mod epoch;
pub mod fork;
pub mod glue;
pub mod insert;
pub mod insert_cache;
pub mod mutable;
pub mod options;
pub mod origin;
pub mod pack;
pub mod quarantine;
#[cfg(test)]
mod quarantine_tests;
pub mod raw_stmt;
pub mod resend;
pub mod resend_rows;
#[cfg(test)]
mod resend_tests;
pub mod reserve;
pub mod rollup;
pub mod rollup_spec;
pub mod rows;
pub mod schema;
pub mod seal;
pub mod sequence;
pub mod snapshot;
pub mod status;
pub mod subscribe;
#[cfg(test)]
pub mod testdb;
pub mod time;
#[cfg(test)]
mod tombstone_tests;
pub mod track;
pub mod tracked;
pub mod window;

use std::os::raw::{c_char, c_int};

use rusqlite::ffi;
use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::Value;
use rusqlite::Connection;

/// The signature of every scalar SQL function of the extension.
pub type SqlFn = fn(&Context<'_>) -> rusqlite::Result<Value>;

/// Registers an aggregate or window function (their implementations are
/// types, so each is registered by a function of its own).
pub type RegisterFn = fn(&Connection, &'static str, c_int, FunctionFlags) -> rusqlite::Result<()>;

/// How a function is implemented.
#[derive(Clone, Copy)]
pub enum Imp {
    Scalar(SqlFn),
    Aggregate(RegisterFn),
    Window(RegisterFn),
}

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

use Imp::{Aggregate, Scalar, Window};

/// The registration of an aggregate implemented by `$imp`.
macro_rules! aggregate {
    ($imp:expr) => {
        Aggregate(|db, name, n, flags| db.create_aggregate_function(name, n, flags, $imp))
    };
}

/// The registration of a window function implemented by `$imp`.
macro_rules! window {
    ($imp:expr) => {
        Window(|db, name, n, flags| db.create_window_function(name, n, flags, $imp))
    };
}

/// Every SQL function: name, number of arguments (-1: any), flags,
/// implementation.
pub const FUNCTIONS: &[(&str, c_int, FunctionFlags, Imp)] = &[
    ("sluice_version", 0, PURE, Scalar(about::sluice_version)),
    ("sluice_debug", 0, READS, Scalar(about::sluice_debug)),
    ("sluice_device", 0, READS, Scalar(track::sluice_device)),
    ("sluice_device", 1, WRITES, Scalar(track::sluice_device)),
    ("sluice_insert", 2, WRITES, Scalar(insert::sluice_insert)),
    ("sluice_track", 1, WRITES, Scalar(track::sluice_track)),
    ("sluice_track", 2, WRITES, Scalar(track::sluice_track)),
    ("sluice_batch", 1, READS, Scalar(batch::sluice_batch)),
    ("sluice_batch", 2, READS, Scalar(batch::sluice_batch)),
    ("sluice_batch", 3, READS, Scalar(batch::sluice_batch)),
    ("sluice_ack", 1, WRITES, Scalar(ack::sluice_ack)),
    ("sluice_pending", 1, READS, Scalar(ack::sluice_pending)),
    ("sluice_tracked", 0, READS, Scalar(tracked::sluice_tracked)),
    ("sluice_tracked", 1, READS, Scalar(tracked::sluice_tracked)),
    ("sluice_cleanup", 2, WRITES, Scalar(ack::sluice_cleanup)),
    ("sluice_bucket", 2, PURE, Scalar(window::sluice_bucket)),
    (
        "sluice_sketch_quantile",
        2,
        PURE,
        Scalar(window::sluice_sketch_quantile),
    ),
    ("sluice_sketch", 1, PURE, aggregate!(window::SketchAgg)),
    (
        "sluice_sketch_merge",
        1,
        PURE,
        aggregate!(window::SketchMerge),
    ),
    ("sluice_percentile", 2, PURE, window!(window::Percentile)),
    ("sluice_compress", 1, PURE, Scalar(pack::sluice_compress)),
    ("sluice_compress", 2, PURE, Scalar(pack::sluice_compress)),
    (
        "sluice_decompress",
        1,
        PURE,
        Scalar(pack::sluice_decompress),
    ),
    ("sluice_pack", -1, PURE, aggregate!(pack::Pack)),
    ("sluice_unpack", 1, PURE, Scalar(pack::sluice_unpack)),
    ("sluice_rollup", 2, WRITES, Scalar(rollup::sluice_rollup)),
    (
        "sluice_rollup_run",
        0,
        WRITES,
        Scalar(rollup::sluice_rollup_run),
    ),
    (
        "sluice_rollup_run",
        1,
        WRITES,
        Scalar(rollup::sluice_rollup_run),
    ),
    (
        "sluice_enforce_budget",
        1,
        WRITES,
        Scalar(budget::sluice_enforce_budget),
    ),
    (
        "sluice_enforce_budget",
        2,
        WRITES,
        Scalar(budget::sluice_enforce_budget),
    ),
    ("sluice_reserve", 0, WRITES, Scalar(reserve::sluice_reserve)),
    (
        "sluice_pending_age",
        1,
        READS,
        Scalar(status::sluice_pending_age),
    ),
    ("sluice_machine", 0, READS, Scalar(epoch::sluice_machine)),
    ("sluice_machine", 1, WRITES, Scalar(epoch::sluice_machine)),
    ("sluice_zone", 0, READS, Scalar(epoch::sluice_zone)),
    ("sluice_zone", 1, WRITES, Scalar(epoch::sluice_zone)),
    (
        "sluice_new_epoch",
        1,
        WRITES,
        Scalar(epoch::sluice_new_epoch),
    ),
    ("sluice_identity", 0, READS, Scalar(epoch::sluice_identity)),
    ("sluice_resend", 1, WRITES, Scalar(resend::sluice_resend)),
    ("sluice_resend", 2, WRITES, Scalar(resend::sluice_resend)),
    (
        "sluice_quarantine",
        3,
        WRITES,
        Scalar(quarantine::sluice_quarantine),
    ),
    (
        "sluice_quarantine",
        4,
        WRITES,
        Scalar(quarantine::sluice_quarantine),
    ),
    (
        "sluice_release",
        1,
        WRITES,
        Scalar(quarantine::sluice_release),
    ),
    (
        "sluice_release",
        2,
        WRITES,
        Scalar(quarantine::sluice_release),
    ),
    (
        "sluice_subscribe",
        1,
        WRITES,
        Scalar(subscribe::sluice_subscribe),
    ),
    (
        "sluice_subscribe",
        2,
        WRITES,
        Scalar(subscribe::sluice_subscribe),
    ),
    (
        "sluice_unsubscribe",
        1,
        WRITES,
        Scalar(subscribe::sluice_unsubscribe),
    ),
    ("sluice_apply", 1, WRITES, Scalar(apply::sluice_apply)),
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
        .map_err(|m| rusqlite::Error::UserFunctionError(Box::new(glue::Fail(m))))?;
    for &(name, n_arg, flags, imp) in FUNCTIONS {
        match imp {
            Scalar(f) => db.create_scalar_function(name, n_arg, flags, f)?,
            Aggregate(register) | Window(register) => register(&db, name, n_arg, flags)?,
        }
    }
    insert_cache::register(&db)?;
    Ok(false)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// What SQLite lists of the loaded extension is the table, flags and
    /// all (tests/python/test_sqlite_ext.py checks the built `.so` against
    /// the promised list).
    #[test]
    fn sqlite_registers_exactly_the_table() {
        let db = testdb::memory();
        let mut stmt = db
            .prepare(
                "SELECT name, narg, flags FROM pragma_function_list \
                 WHERE name LIKE 'sluice%' ORDER BY name, narg",
            )
            .unwrap();
        let got: Vec<(String, i32, i32)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut want: Vec<(String, i32, i32)> = FUNCTIONS
            .iter()
            .map(|(name, n, flags, _)| {
                let f = flags.bits()
                    & (FunctionFlags::SQLITE_DETERMINISTIC
                        | FunctionFlags::SQLITE_DIRECTONLY
                        | FunctionFlags::SQLITE_INNOCUOUS)
                        .bits();
                (name.to_string(), *n, f)
            })
            .collect();
        want.sort();
        let got: Vec<(String, i32, i32)> = got
            .into_iter()
            .map(|(name, n, flags)| {
                let f = flags
                    & (FunctionFlags::SQLITE_DETERMINISTIC
                        | FunctionFlags::SQLITE_DIRECTONLY
                        | FunctionFlags::SQLITE_INNOCUOUS)
                        .bits();
                (name, n, f)
            })
            .collect();
        assert_eq!(got, want);
        // The writers of epochs are direct-only, their readers innocuous.
        let flags_of = |name: &str, n: i32| {
            got.iter()
                .find(|(g, m, _)| g == name && *m == n)
                .map(|f| f.2)
                .unwrap()
        };
        let direct = FunctionFlags::SQLITE_DIRECTONLY.bits();
        let innocuous = FunctionFlags::SQLITE_INNOCUOUS.bits();
        for (name, n) in [
            ("sluice_machine", 1),
            ("sluice_zone", 1),
            ("sluice_new_epoch", 1),
        ] {
            assert_eq!(flags_of(name, n), direct, "{name}/{n}");
        }
        for (name, n) in [
            ("sluice_machine", 0),
            ("sluice_zone", 0),
            ("sluice_identity", 0),
        ] {
            assert_eq!(flags_of(name, n), innocuous, "{name}/{n}");
        }
    }

    #[test]
    fn one_list_of_functions_with_distinct_signatures() {
        let kinds = |k: &Imp| match k {
            Imp::Scalar(_) => "scalar",
            Imp::Aggregate(_) => "aggregate",
            Imp::Window(_) => "window",
        };
        assert_eq!(
            FUNCTIONS.iter().filter(|f| kinds(&f.3) != "scalar").count(),
            4
        );
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
                        "sluice_unpack",
                        "sluice_sketch",
                        "sluice_sketch_merge",
                        "sluice_pack",
                        "sluice_percentile"
                    ]
                    .contains(name),
                    "{name}"
                );
            }
        }
    }
}
