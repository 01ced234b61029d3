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
pub mod buffer;
pub mod insert;
pub mod options;
pub mod pack;
pub mod rollup;
pub mod rows;
pub mod schema;
pub mod sync;
pub mod tracked;
pub mod window;

use std::fmt;
use std::os::raw::{c_char, c_int};

use rusqlite::ffi;
use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;

/// The signature of every SQL function of the extension.
pub type SqlFn = fn(&Context<'_>) -> rusqlite::Result<Value>;

const UTF8: FunctionFlags = FunctionFlags::SQLITE_UTF8;
/// Pure: same arguments, same result.
const PURE: FunctionFlags = UTF8.union(FunctionFlags::SQLITE_DETERMINISTIC);
/// Reads the database; may be called from views and triggers.
const READS: FunctionFlags = UTF8;
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

// ---------------------------------------------------------------------------
// Errors and arguments, shared by all functions.

/// A failure inside a function, without the `sluice_<fn>: ` prefix that
/// [`finish`] adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail(pub String);

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fail {}

impl From<String> for Fail {
    fn from(s: String) -> Self {
        Fail(s)
    }
}

impl From<&str> for Fail {
    fn from(s: &str) -> Self {
        Fail(s.to_string())
    }
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail(sqlite_message(&e))
    }
}

/// Whether an error says a table does not exist (bookkeeping tables added
/// after a database was first tracked are created when first needed).
pub fn no_such_table(e: &rusqlite::Error) -> bool {
    sqlite_message(e).contains("no such table")
}

/// The message of an SQLite error, without rusqlite's decoration.
pub fn sqlite_message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(msg)) => msg.clone(),
        other => other.to_string(),
    }
}

pub type Res<T> = Result<T, Fail>;

/// Turns the result of a function body into what SQLite sees: errors get
/// the `name: ` prefix.
pub fn finish(name: &str, r: Res<Value>) -> rusqlite::Result<Value> {
    r.map_err(|Fail(m)| {
        // SQLite takes the message as a C string: a NUL byte (from a table
        // name, say) would lose all of it.
        let m = m.replace('\0', "\\0");
        rusqlite::Error::UserFunctionError(Box::new(Fail(format!("{name}: {m}"))))
    })
}

/// The connection a function was called on.
pub fn connection<'c>(ctx: &'c Context<'_>) -> Res<rusqlite::functions::ConnectionRef<'c>> {
    // SAFETY: the reference does not outlive the call and is not sent to
    // another thread.
    unsafe { ctx.get_connection() }.map_err(Fail::from)
}

fn describe(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".to_string(),
        ValueRef::Integer(i) => format!("the integer {i}"),
        ValueRef::Real(r) => format!("the real {r}"),
        ValueRef::Text(_) => "text".to_string(),
        ValueRef::Blob(b) => format!("a blob of {} bytes", b.len()),
    }
}

fn raw<'c>(ctx: &'c Context<'_>, i: usize) -> Res<ValueRef<'c>> {
    if i < ctx.len() {
        Ok(ctx.get_raw(i))
    } else {
        Err(Fail(format!("argument {} is missing", i + 1)))
    }
}

/// Argument `i` as non-empty UTF-8 text.
pub fn arg_text<'c>(ctx: &'c Context<'_>, i: usize, what: &str) -> Res<&'c str> {
    match raw(ctx, i)? {
        ValueRef::Text(t) => {
            let s =
                std::str::from_utf8(t).map_err(|_| Fail(format!("{what} is not valid UTF-8")))?;
            if s.is_empty() {
                Err(Fail(format!("{what} must not be empty")))
            } else {
                Ok(s)
            }
        }
        other => Err(Fail(format!(
            "{what} must be text, got {}",
            describe(other)
        ))),
    }
}

/// Argument `i` as text, or `None` when it is NULL.
pub fn arg_opt_text<'c>(ctx: &'c Context<'_>, i: usize, what: &str) -> Res<Option<&'c str>> {
    if i >= ctx.len() || matches!(ctx.get_raw(i), ValueRef::Null) {
        return Ok(None);
    }
    arg_text(ctx, i, what).map(Some)
}

/// Argument `i` as an integer (a real with no fractional part is accepted).
pub fn arg_int(ctx: &Context<'_>, i: usize, what: &str) -> Res<i64> {
    match raw(ctx, i)? {
        ValueRef::Integer(n) => Ok(n),
        ValueRef::Real(r) if r.fract() == 0.0 && r.abs() < 9.0e15 => Ok(r as i64),
        other => Err(Fail(format!(
            "{what} must be an integer, got {}",
            describe(other)
        ))),
    }
}

/// Argument `i` as a blob.
pub fn arg_blob<'c>(ctx: &'c Context<'_>, i: usize, what: &str) -> Res<&'c [u8]> {
    match raw(ctx, i)? {
        ValueRef::Blob(b) => Ok(b),
        other => Err(Fail(format!(
            "{what} must be a blob, got {}",
            describe(other)
        ))),
    }
}

/// Argument `i` as it is.
pub fn arg_raw<'c>(ctx: &'c Context<'_>, i: usize) -> Res<ValueRef<'c>> {
    raw(ctx, i)
}

pub(crate) fn describe_value(v: ValueRef<'_>) -> String {
    describe(v)
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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
