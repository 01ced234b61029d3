//! Re-sends (issue 12, case 8): `sluice_resend` asks for a table's
//! acknowledged rows to be sent again (after a fix in the cloud, or an
//! edge-side `ALTER TABLE ... ADD COLUMN ... DEFAULT` that the cloud's copies
//! lack), and [`RequestRows`], the rows of a request that `sluice_batch`
//! sends, `sluice_ack` finishes, and `sluice_pending` and `sluice_tracked`
//! count. The requests are kept in `sluice_resends`
//! ([`crate::bookkeeping::resends`]).
//!
//! A request covers sequence numbers `(lo, hi]`, optionally only rows whose
//! time is in `[from, to)`; its batches carry re-send number `n` in their
//! header, so the cloud never takes them for replays of the batches that
//! first sent the rows; `done_seq` is how far acknowledged re-sent batches
//! reached. Quarantined rows are never in them. Nothing here touches the
//! table's watermark.

use rusqlite::functions::Context;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OptionalExtension, Statement};
use serde_json::Value as Json;
use sluice_wire::names::quote_ident;

use crate::bookkeeping::resends::{self, Request};
use crate::bookkeeping::tables::Tracked;
use crate::bookkeeping::{self, quarantine, ranges, streams, tables};
use crate::glue::{arg_opt_text, arg_text, atomic, connection, finish, now_ms, Fail, Res};
use crate::schema::{table_info, TableInfo};
use crate::sequence::{seq_column, SeqColumn};
use crate::time::{epoch_of, EpochSql};

/// The reason of a request when the options give none.
pub const DEFAULT_REASON: &str = "operator";
/// Largest length of a request's reason, in characters.
pub const MAX_REASON_CHARS: usize = 10_000;
/// The options `sluice_resend` accepts.
pub const RESEND_OPTIONS: &str = "from, to, reason";
/// The times a filter may name: the years 0000 to 9999, what SQLite's date
/// functions read and write.
const MIN_TIME: i64 = -62_167_219_200;
const MAX_TIME: i64 = 253_402_300_799;

/// The rows of a range of a tracked table, as a re-send takes them:
/// sequence numbers in `(lo, hi]`, the time filter `[from, to)` when given,
/// quarantined rows left out (looked at only when the table has some).
pub struct RequestRows<'a> {
    info: &'a TableInfo,
    tbl: &'a str,
    seq: &'a SeqColumn,
    /// The time column read as unix seconds, when a filter is given.
    time: Option<String>,
    from: Option<i64>,
    to: Option<i64>,
    quarantined: bool,
}

impl<'a> RequestRows<'a> {
    /// The rows of a filter `[from, to)` (unix seconds) of the table; the
    /// table must have a time column if either is given.
    pub fn new(
        conn: &Connection,
        info: &'a TableInfo,
        t: &'a Tracked,
        seq: &'a SeqColumn,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Res<RequestRows<'a>> {
        let time = if from.is_some() || to.is_some() {
            let Some(tc) =
                tables::time_column(conn, &info.name)?.filter(|c| info.column(c).is_some())
            else {
                return Err(Fail(format!(
                    "a time filter needs the time column of '{}'; declare it with \
                     SELECT sluice_track('{}', '{{\"time\": \"column\"}}')",
                    info.name,
                    info.name.replace('\'', "''")
                )));
            };
            Some(EpochSql(&quote_ident(&tc)).to_string())
        } else {
            None
        };
        Ok(RequestRows {
            info,
            tbl: &t.tbl,
            seq,
            time,
            from,
            to,
            quarantined: quarantine::any(conn, &t.tbl)?,
        })
    }

    /// The rows of request `r`.
    pub fn of(
        conn: &Connection,
        info: &'a TableInfo,
        t: &'a Tracked,
        seq: &'a SeqColumn,
        r: &Request,
    ) -> Res<RequestRows<'a>> {
        let from = stored_time(r.from_time.as_deref(), "from_time")?;
        let to = stored_time(r.to_time.as_deref(), "to_time")?;
        RequestRows::new(conn, info, t, seq, from, to)
    }

    /// The condition on a row: parameters `:lo`, `:hi` and the filter's.
    fn condition(&self) -> String {
        let seq = self.seq;
        let mut c = format!("{seq} > :lo AND {seq} <= :hi");
        if let Some(time) = &self.time {
            if self.from.is_some() {
                c.push_str(&format!(" AND {time} >= :from"));
            }
            if self.to.is_some() {
                c.push_str(&format!(" AND {time} < :to"));
            }
        }
        if self.quarantined {
            c.push_str(" AND ");
            c.push_str(&quarantine::exclude_sql(&seq.to_string(), ":tbl"));
        }
        c
    }

    /// Binds the parameters of [`Self::condition`] present in `stmt`.
    fn bind(&self, stmt: &mut Statement<'_>, lo: i64, hi: i64) -> Res<()> {
        let named: [(&str, Value); 5] = [
            (":lo", Value::Integer(lo)),
            (":hi", Value::Integer(hi)),
            (":from", self.from.map_or(Value::Null, Value::Integer)),
            (":to", self.to.map_or(Value::Null, Value::Integer)),
            (":tbl", Value::Text(self.tbl.to_string())),
        ];
        for (name, v) in named {
            if let Some(i) = stmt.parameter_index(name)? {
                stmt.raw_bind_parameter(i, v)?;
            }
        }
        Ok(())
    }

    /// How many rows are in `(lo, hi]`.
    pub fn count(&self, conn: &Connection, lo: i64, hi: i64) -> Res<i64> {
        if lo >= hi {
            return Ok(0);
        }
        let mut stmt = conn.prepare(&format!(
            "SELECT count(*) FROM main.{} WHERE {}",
            self.info.quoted(),
            self.condition()
        ))?;
        self.bind(&mut stmt, lo, hi)?;
        let mut rows = stmt.raw_query();
        Ok(match rows.next()? {
            Some(r) => r.get(0)?,
            None => 0,
        })
    }

    /// The sequence number of the first row of the filter in `(lo, hi]`.
    pub fn first(&self, conn: &Connection, lo: i64, hi: i64) -> Res<Option<i64>> {
        if lo >= hi {
            return Ok(None);
        }
        let seq = self.seq;
        let mut stmt = conn.prepare(&format!(
            "SELECT {seq} FROM main.{} WHERE {} ORDER BY {seq} LIMIT 1",
            self.info.quoted(),
            self.condition()
        ))?;
        self.bind(&mut stmt, lo, hi)?;
        let mut rows = stmt.raw_query();
        Ok(match rows.next()? {
            Some(r) => Some(r.get(0)?),
            None => None,
        })
    }

    /// The statement that reads `select` (SQL of the columns, then the
    /// sequence number) of the rows in `(lo, hi]` in sequence order, at
    /// most `limit`; bound and ready for [`Statement::raw_query`].
    pub fn select<'c>(
        &self,
        conn: &'c Connection,
        select: &str,
        lo: i64,
        hi: i64,
        limit: i64,
    ) -> Res<Statement<'c>> {
        let seq = self.seq;
        let mut stmt = conn.prepare(&format!(
            "SELECT {select}, {seq} FROM main.{} WHERE {} ORDER BY {seq} LIMIT :limit",
            self.info.quoted(),
            self.condition()
        ))?;
        self.bind(&mut stmt, lo, hi)?;
        if let Some(i) = stmt.parameter_index(":limit")? {
            stmt.raw_bind_parameter(i, limit)?;
        }
        Ok(stmt)
    }
}

/// A time of a request as stored (ISO-8601 UTC), as unix seconds.
fn stored_time(s: Option<&str>, what: &str) -> Res<Option<i64>> {
    s.map(|s| {
        epoch_of(ValueRef::Text(s.as_bytes()))
            .ok_or_else(|| Fail(format!("sluice_resends.{what} '{s}' is damaged")))
    })
    .transpose()
}

/// The rows of the table's unfinished requests still to send (a pending row
/// in a request's range counts there too).
pub fn rows_to_send(conn: &Connection, info: &TableInfo, t: &Tracked, seq: &SeqColumn) -> Res<i64> {
    let mut n = 0i64;
    for r in resends::unfinished(conn, &t.tbl)? {
        let rows = RequestRows::of(conn, info, t, seq, &r)?;
        n = n.saturating_add(rows.count(conn, r.done_seq, r.hi)?);
    }
    Ok(n)
}

/// The highest acknowledged sequence number of the table: its watermark,
/// or the top of its highest acknowledged range.
pub fn acknowledged_top(conn: &Connection, t: &Tracked) -> Res<i64> {
    Ok(ranges::above(conn, &t.tbl, t.acked_seq)?
        .iter()
        .map(|r| r.1)
        .fold(t.acked_seq, i64::max))
}

/// Finishes the unfinished requests of the table that have no row left to
/// send (their rows were deleted, or the last batch the row limit cut
/// ended on their last row). Inside the caller's savepoint.
pub fn finish_empty(conn: &Connection, info: &TableInfo, t: &Tracked, seq: &SeqColumn) -> Res<()> {
    let now = now_ms();
    for r in resends::unfinished(conn, &t.tbl)? {
        let rows = RequestRows::of(conn, info, t, seq, &r)?;
        if rows.first(conn, r.done_seq, r.hi)?.is_none() {
            resends::advance(conn, &t.tbl, r.n, r.hi, true, now)?;
        }
    }
    Ok(())
}

/// Records a request for the rows of `(lo, hi]` (no filter) of a table:
/// what releasing a quarantined row whose range was acknowledged does.
pub fn request_range(conn: &Connection, tbl: &str, lo: i64, hi: i64, reason: &str) -> Res<i64> {
    bookkeeping::ensure(conn)?;
    resends::record(conn, tbl, lo, hi, None, None, reason, now_ms())
}

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
/// fork says where the epoch began; once it is forgotten (or when it was
/// never needed: nothing was pending at the epoch) nothing says it, and
/// then every re-send of a table tracked before the epoch began is refused.
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
    // A table first tracked after the epoch began sent nothing under the
    // parent stream.
    let began: Option<i64> = match epoch.started_at.as_deref() {
        Some(at) => conn.query_row(
            "SELECT CAST(round((julianday(?1) - 2440587.5) * 86400000.0) AS INTEGER)",
            [at],
            |r| r.get(0),
        )?,
        None => None,
    };
    if let (Some(began), Some(tracked)) = (began, tables::created_at(conn, &t.tbl)?) {
        if tracked >= began {
            return Ok(0);
        }
    }
    let (fork_seq, known) = match tables::fork(conn, &t.tbl)? {
        Some(f) => (f.fork_seq, true),
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
         began (the table's fork is forgotten), and the cloud copies of those are under the \
         parent stream: re-sent under this stream they would be copies"
            .to_string()
    };
    Err(Fail(format!(
        "append-only table '{}' cannot re-send row {first}: {why}",
        info.name
    )))
}

/// The request's rows to send next for a batch, if it has any.
pub fn next_request(
    conn: &Connection,
    info: &TableInfo,
    t: &Tracked,
    seq: &SeqColumn,
) -> Res<Option<Request>> {
    for r in resends::unfinished(conn, &t.tbl)? {
        let rows = RequestRows::of(conn, info, t, seq, &r)?;
        if rows.first(conn, r.done_seq, r.hi)?.is_some() {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

/// Whether `seq` of the table is still to be sent by an unfinished request.
pub fn in_unfinished(conn: &Connection, t: &Tracked, seq: i64) -> Res<bool> {
    Ok(resends::unfinished(conn, &t.tbl)?
        .iter()
        .any(|r| seq > r.done_seq && seq <= r.hi))
}

/// The rowid of the row numbered `seq`, when the table has rowids and the
/// row exists.
pub fn rowid_of(conn: &Connection, info: &TableInfo, seq: &SeqColumn, n: i64) -> Res<Option<i64>> {
    if info.without_rowid {
        return Ok(None);
    }
    Ok(conn
        .query_row(
            &format!(
                "SELECT _rowid_ FROM main.{} WHERE {seq} = ?1",
                info.quoted()
            ),
            [n],
            |r| r.get(0),
        )
        .optional()?)
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
