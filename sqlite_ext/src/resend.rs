//! `sluice_resend` (issue 12, case 8): asks for a table's acknowledged rows
//! to be sent again (after a fix in the cloud, or an edge-side `ALTER TABLE
//! ... ADD COLUMN ... DEFAULT` that the cloud's copies lack), as a request
//! of `sluice_resends` ([`crate::bookkeeping::resends`]). The rows of
//! requests, which `sluice_batch` sends, `sluice_ack` finishes and
//! `sluice_pending` and `sluice_tracked` count, are
//! [`crate::resend_rows`].
//!
//! A request covers sequence numbers `(lo, hi]`, optionally only rows whose
//! time is in `[from, to)`; its batches carry re-send number `n` in their
//! header, so the cloud never takes them for replays of the batches that
//! first sent the rows; `done_seq` is how far acknowledged re-sent batches
//! reached. Quarantined rows are never in them. Nothing here touches the
//! table's watermark.

use rusqlite::functions::Context;
use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;
use serde_json::Value as Json;

use crate::bookkeeping::resends;
use crate::bookkeeping::tables::Tracked;
use crate::bookkeeping::{self, streams, tables};
use crate::glue::{arg_opt_text, arg_text, atomic, connection, finish, now_ms, Fail, Res};
use crate::resend_rows::{acknowledged_top, finish_empty, RequestRows, MAX_REASON_CHARS};
use crate::schema::{table_info, TableInfo};
use crate::sequence::seq_column;
use crate::time::epoch_of;

/// The reason of a request when the options give none.
pub const DEFAULT_REASON: &str = "operator";
/// The options `sluice_resend` accepts.
pub const RESEND_OPTIONS: &str = "from, to, reason";
/// The times a filter may name: the years 0000 to 9999, what SQLite's date
/// functions read and write.
const MIN_TIME: i64 = -62_167_219_200;
const MAX_TIME: i64 = 253_402_300_799;

// ---------------------------------------------------------------------------
// sluice_resend

/// `sluice_resend(table [, options])` → the rows scheduled to be sent again.
pub fn sluice_resend(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_resend", resend(ctx))
}

/// The options of `sluice_resend`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Options {
    from: Option<i64>,
    to: Option<i64>,
    reason: String,
}

fn time_option(name: &str, v: &Json) -> Res<i64> {
    let t = match v {
        Json::Number(n) => n.as_i64(),
        Json::String(s) => epoch_of(ValueRef::Text(s.as_bytes())),
        _ => None,
    };
    t.filter(|t| (MIN_TIME..=MAX_TIME).contains(t))
        .ok_or_else(|| {
            Fail(format!(
            "option '{name}' must be a time: ISO-8601 text like '2026-12-01T10:00:00Z' or unix \
             seconds (years 0000 to 9999), got {v}"
        ))
        })
}

fn parse_options(text: Option<&str>) -> Res<Options> {
    let mut o = Options {
        from: None,
        to: None,
        reason: DEFAULT_REASON.to_string(),
    };
    let Some(text) = text else { return Ok(o) };
    let v: Json =
        serde_json::from_str(text).map_err(|e| Fail(format!("options are not valid JSON: {e}")))?;
    let Json::Object(map) = v else {
        return Err(Fail(
            "options must be a JSON object like {\"from\": \"2026-12-01T00:00:00Z\"}".into(),
        ));
    };
    for (k, v) in &map {
        match k.as_str() {
            "from" => o.from = Some(time_option("from", v)?),
            "to" => o.to = Some(time_option("to", v)?),
            "reason" => match v {
                Json::String(s) if !s.is_empty() => {
                    let n = s.chars().count();
                    if n > MAX_REASON_CHARS {
                        return Err(Fail(format!(
                            "option 'reason' is {n} characters, the limit is {MAX_REASON_CHARS}"
                        )));
                    }
                    o.reason = s.clone();
                }
                _ => return Err(Fail("option 'reason' must be non-empty text".into())),
            },
            other => {
                return Err(Fail(format!(
                    "unknown option '{other}' (known options: {RESEND_OPTIONS})"
                )))
            }
        }
    }
    if let (Some(f), Some(t)) = (o.from, o.to) {
        if f >= t {
            return Err(Fail(format!(
                "option 'from' must be before 'to' (the range is [from, to)), got {f} and {t} \
                 (unix seconds)"
            )));
        }
    }
    Ok(o)
}

/// ISO-8601 UTC text of unix seconds, as a request stores its filter.
fn iso(conn: &Connection, secs: Option<i64>) -> Res<Option<String>> {
    let Some(s) = secs else { return Ok(None) };
    Ok(conn.query_row(
        "SELECT strftime('%Y-%m-%dT%H:%M:%SZ', ?1, 'unixepoch')",
        [s],
        |r| r.get(0),
    )?)
}

fn resend(ctx: &Context<'_>) -> Res<Value> {
    let table = arg_text(ctx, 0, "the table name")?;
    let opts = parse_options(arg_opt_text(ctx, 1, "options")?)?;
    let conn = connection(ctx)?;
    let info = table_info(&conn, table)?;
    let t = tables::require(&conn, &info)?;
    let seq = seq_column(&info, &t)?;
    let rows = RequestRows::new(&conn, &info, &t, &seq, opts.from, opts.to)?;
    let hi = acknowledged_top(&conn, &t)?;
    let lo = if t.mutable {
        0
    } else {
        before_epoch(&conn, &info, &t, &rows, hi)?
    };
    let n = rows.count(&conn, lo, hi)?;
    if n == 0 {
        return Ok(Value::Integer(0));
    }
    let (from, to) = (iso(&conn, opts.from)?, iso(&conn, opts.to)?);
    atomic(&conn, "sluice_resend", || {
        bookkeeping::ensure(&conn)?;
        finish_empty(&conn, &info, &t, &seq)?;
        resends::record(
            &conn,
            &t.tbl,
            lo,
            hi,
            from.as_deref(),
            to.as_deref(),
            &opts.reason,
            now_ms(),
        )
    })?;
    Ok(Value::Integer(n))
}

/// For an append-only table: where a re-send under the current stream may
/// start. Rows written before the current epoch began may be in the cloud
/// under the parent stream, and re-sent under this one they would be
/// copies: refused when the range (after the filter) has one. The table's
/// `epoch_seq` says where the epoch began (its fork, while it is not
/// forgotten, for an epoch begun under an older bookkeeping); when neither
/// says it, every re-send of a table tracked before the epoch began is
/// refused.
fn before_epoch(
    conn: &Connection,
    info: &TableInfo,
    t: &Tracked,
    rows: &RequestRows<'_>,
    hi: i64,
) -> Res<i64> {
    let epoch = streams::list(conn)?.pop();
    let Some(epoch) = epoch.filter(|e| e.parent_stream.is_some()) else {
        return Ok(0);
    };
    // The largest sequence number the table had when the epoch began,
    // recorded by the epoch for every table tracked then.
    let epoch_seq = tables::epoch_seq(conn, &t.tbl)?;
    // A table first tracked after the epoch began sent nothing under the
    // parent stream (the epoch recorded nothing for it; `started_at` has
    // whole seconds, so it is asked only then).
    let began: Option<i64> = match epoch.started_at.as_deref() {
        Some(at) => conn.query_row(
            "SELECT CAST(round((julianday(?1) - 2440587.5) * 86400000.0) AS INTEGER)",
            [at],
            |r| r.get(0),
        )?,
        None => None,
    };
    if let (None, Some(began), Some(tracked)) =
        (epoch_seq, began, tables::created_at(conn, &t.tbl)?)
    {
        if tracked >= began {
            return Ok(0);
        }
    }
    let known = match epoch_seq {
        Some(seq) => Some(seq),
        None => tables::fork(conn, &t.tbl)?.map(|f| f.fork_seq),
    };
    let (fork_seq, known) = match known {
        Some(seq) => (seq, true),
        None => (i64::MAX, false),
    };
    let Some(first) = rows.first(conn, 0, hi.min(fork_seq))? else {
        return Ok(fork_seq.min(hi));
    };
    let why = if known {
        format!(
            "rows up to {fork_seq} were written before the current epoch began, and their cloud \
             copies are under the parent stream: re-sent under this stream they would be copies. \
             Narrow the range with \"from\" to rows of this epoch"
        )
    } else {
        "this database does not know which of its rows were written before the current epoch \
         began (the epoch began before sluice 0.2 recorded it), and the cloud copies of those are under the \
         parent stream: re-sent under this stream they would be copies"
            .to_string()
    };
    Err(Fail(format!(
        "append-only table '{}' cannot re-send row {first}: {why}",
        info.name
    )))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o = parse_options(Some(
            r#"{"from": "2026-12-01T00:00:00Z", "to": 1796169600}"#,
        ))
        .unwrap();
        assert_eq!(o.from, Some(1_796_083_200));
        assert_eq!(o.to, Some(1_796_169_600));
        assert_eq!(o.reason, DEFAULT_REASON);
        assert_eq!(parse_options(None).unwrap().reason, "operator");
        for (bad, msg) in [
            (
                r#"{"form": 1}"#,
                "unknown option 'form' (known options: from, to, reason)",
            ),
            (r#"{"from": "soon"}"#, "option 'from' must be a time"),
            (r#"{"to": 1e300}"#, "option 'to' must be a time"),
            (
                r#"{"to": 9223372036854775807}"#,
                "option 'to' must be a time",
            ),
            (
                r#"{"from": 10, "to": 10}"#,
                "option 'from' must be before 'to'",
            ),
            (
                r#"{"reason": ""}"#,
                "option 'reason' must be non-empty text",
            ),
            ("[]", "options must be a JSON object"),
            ("{", "options are not valid JSON"),
        ] {
            let e = parse_options(Some(bad)).unwrap_err().0;
            assert!(e.starts_with(msg), "{bad}: {e}");
        }
    }
}
