//! The glue every SQL function shares, below all of them: the error type
//! [`Fail`] and [`finish`] (which prefixes `sluice_<fn>: `), the argument
//! readers `arg_*`, the connection a function was called on, and the clock.

use std::fmt;

use rusqlite::functions::Context;
use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;

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

pub fn describe_value(v: ValueRef<'_>) -> String {
    describe(v)
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The current time as the bookkeeping writes it: ISO-8601 UTC with
/// milliseconds, SQLite's clock.
pub fn now_iso(conn: &Connection) -> Res<String> {
    Ok(
        conn.query_row("SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now')", [], |r| {
            r.get(0)
        })?,
    )
}

/// Microseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// An aggregate's error: `name: message`, as SQLite shows it.
pub fn agg_err(name: &str, m: impl Into<String>) -> rusqlite::Error {
    let m: String = m.into();
    rusqlite::Error::UserFunctionError(Box::new(Fail(format!(
        "{name}: {}",
        m.replace('\0', "\\0")
    ))))
}

/// Runs `f` inside a savepoint: all of its writes, or none.
pub fn atomic<T>(conn: &Connection, name: &str, f: impl FnOnce() -> Res<T>) -> Res<T> {
    conn.execute_batch(&format!("SAVEPOINT {name}"))?;
    let rollback = || {
        let _ = conn.execute_batch(&format!("ROLLBACK TO {name}; RELEASE {name}"));
    };
    match f() {
        Ok(v) => match conn.execute_batch(&format!("RELEASE {name}")) {
            Ok(()) => Ok(v),
            Err(e) => {
                rollback();
                Err(e.into())
            }
        },
        Err(e) => {
            rollback();
            Err(e)
        }
    }
}
