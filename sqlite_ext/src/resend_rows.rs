//! The rows of re-send requests (issue 12, case 8), what the features
//! share of them: [`RequestRows`] (a request's range, time filter and the
//! quarantined rows left out), the rows still to send (`sluice_pending`,
//! `sluice_tracked`), the request a batch serves next (`sluice_batch`), the
//! requests finished by an acknowledgement (`sluice_ack`), and the one-row
//! request of a released quarantined row (`sluice_release`). The requests
//! themselves are [`crate::bookkeeping::resends`]; `sluice_resend` is
//! [`crate::resend`].

use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OptionalExtension, Statement};
use sluice_wire::names::quote_ident;

use crate::bookkeeping::resends::{self, Request};
use crate::bookkeeping::tables::Tracked;
use crate::bookkeeping::{self, quarantine, ranges, streams, tables};
use crate::glue::{now_ms, Fail, Res};
use crate::schema::TableInfo;
use crate::sequence::SeqColumn;
use crate::time::{epoch_of, EpochSql};

/// Largest length of the reason of a re-send or of a quarantined row, in
/// characters.
pub const MAX_REASON_CHARS: usize = 10_000;

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

/// The unfinished requests of the table that may still be sent, oldest
/// first. An append-only table's request made before the current epoch
/// began is not: its rows may be in the cloud under the parent stream, and
/// re-sent under this one they would be copies (`sluice_resend` refuses such
/// rows; a new epoch voids what was scheduled before it). A released
/// quarantined row, never in the cloud, still goes.
pub fn live(conn: &Connection, t: &Tracked) -> Res<Vec<Request>> {
    let all = resends::unfinished(conn, &t.tbl)?;
    if all.is_empty() || t.mutable {
        return Ok(all);
    }
    let began = streams::list(conn)?
        .pop()
        .filter(|e| e.parent_stream.is_some())
        .and_then(|e| e.started_at);
    let Some(began) = began else { return Ok(all) };
    // Both are ISO-8601 UTC with milliseconds: they compare as text.
    Ok(all
        .into_iter()
        .filter(|r| r.reason == resends::RELEASED_REASON || r.requested_at > began)
        .collect())
}

/// The rows of the table's unfinished requests still to send (a pending row
/// in a request's range counts there too).
pub fn rows_to_send(conn: &Connection, info: &TableInfo, t: &Tracked, seq: &SeqColumn) -> Res<i64> {
    let mut n = 0i64;
    for r in live(conn, t)? {
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
/// ended on their last row) or may no longer be sent ([`live`]). Inside the
/// caller's savepoint.
pub fn finish_empty(conn: &Connection, info: &TableInfo, t: &Tracked, seq: &SeqColumn) -> Res<()> {
    let now = now_ms();
    let live: Vec<i64> = live(conn, t)?.iter().map(|r| r.n).collect();
    for r in resends::unfinished(conn, &t.tbl)? {
        let rows = RequestRows::of(conn, info, t, seq, &r)?;
        if !live.contains(&r.n) {
            // Void: finished where it stood.
            resends::advance(conn, &t.tbl, r.n, r.done_seq, true, now)?;
        } else if rows.first(conn, r.done_seq, r.hi)?.is_none() {
            resends::advance(conn, &t.tbl, r.n, r.hi, true, now)?;
        }
    }
    Ok(())
}

/// Finishes the unfinished requests of the table that may no longer be
/// sent ([`live`]); nothing to do (one lookup) when it has none. Inside the
/// caller's savepoint.
pub fn finish_void(conn: &Connection, t: &Tracked) -> Res<()> {
    let all = resends::unfinished(conn, &t.tbl)?;
    if all.is_empty() || t.mutable {
        return Ok(());
    }
    let live: Vec<i64> = live(conn, t)?.iter().map(|r| r.n).collect();
    let now = now_ms();
    for r in all.iter().filter(|r| !live.contains(&r.n)) {
        resends::advance(conn, &t.tbl, r.n, r.done_seq, true, now)?;
    }
    Ok(())
}

/// Records a request for the rows of `(lo, hi]` (no filter) of a table:
/// what releasing a quarantined row whose range was acknowledged does.
pub fn request_range(conn: &Connection, tbl: &str, lo: i64, hi: i64, reason: &str) -> Res<i64> {
    bookkeeping::ensure(conn)?;
    resends::record(conn, tbl, lo, hi, None, None, reason, now_ms())
}

/// The request's rows to send next for a batch, if it has any.
pub fn next_request(
    conn: &Connection,
    info: &TableInfo,
    t: &Tracked,
    seq: &SeqColumn,
) -> Res<Option<Request>> {
    for r in live(conn, t)? {
        let rows = RequestRows::of(conn, info, t, seq, &r)?;
        if rows.first(conn, r.done_seq, r.hi)?.is_some() {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

/// Whether `seq` of the table is still to be sent by an unfinished request.
pub fn in_unfinished(conn: &Connection, t: &Tracked, seq: i64) -> Res<bool> {
    Ok(live(conn, t)?
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
