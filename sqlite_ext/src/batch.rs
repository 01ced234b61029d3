//! `sluice_batch`: the next pending rows of a tracked table as one batch of
//! the wire format, or the next rows of its oldest unfinished re-send
//! request ([`crate::resend`]). It reads, and until the batch is
//! acknowledged it cuts the same rows again; its one write is moving a row
//! that no batch could carry (over [`MAX_ROW_BYTES`]) aside into
//! `sluice_quarantine`, after which it cuts the batch without it.

use rusqlite::functions::Context;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{params, Connection, OptionalExtension};
use sluice_wire::names::{quote_ident, DrainOrder};
use sluice_wire::{encode_with_deletes, BatchHeader, Column, ColumnType, EncodeOptions, Pulled};

use crate::acked;
use crate::bookkeeping::resends::Request;
use crate::bookkeeping::tables::Tracked;
use crate::bookkeeping::{
    self, meta, quarantine, ranges, subscriptions, tables, tombstones, Table,
};
use crate::fork;
use crate::glue::{
    arg_int, arg_opt_text, arg_raw, arg_text, atomic, connection, finish, now_ms, Fail, Res,
};
use crate::options::{parse_batch_options, BatchOptions};
use crate::origin::{machine_hash, wire_zone};
use crate::resend_rows::{self, RequestRows};
use crate::schema::{table_info, TableInfo};
use crate::sequence::{check_high_water, seq_column, SeqColumn, VERSION_COLUMN};
use crate::time::{future_after, EpochSql};

/// Default `max_rows` of `sluice_batch`.
pub const DEFAULT_BATCH_ROWS: i64 = 1000;
/// Largest `max_rows` of `sluice_batch`.
pub const MAX_BATCH_ROWS: i64 = 1_000_000;
/// A batch stops growing before its uncompressed rows would pass this size.
pub const MAX_BATCH_BYTES: usize = 16 << 20;

/// A row alone is moved aside when its encoded size is over this: a batch
/// of it could never be encoded ([`sluice_wire::MAX_BODY_BYTES`]).
pub const MAX_ROW_BYTES: usize = sluice_wire::MAX_BODY_BYTES as usize;

/// `sluice_batch(table [, max_rows [, options]])` → BLOB, or NULL when
/// nothing is pending. Options: `{"order": "oldest"|"newest", "since": "2 hours"}`.
pub fn sluice_batch(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_batch", batch(ctx))
}

/// What the batch is cut for.
struct Cut<'a> {
    conn: &'a Connection,
    info: &'a TableInfo,
    t: &'a Tracked,
    seq: &'a SeqColumn,
    cols: &'a [Column],
    max_rows: i64,
}

/// A row too large for any batch, found while cutting one.
struct Giant {
    seq: i64,
    bytes: usize,
}

/// The rows of a batch being cut.
struct Rows {
    n: usize,
    versions: Vec<i64>,
    deleted: Vec<bool>,
    values: Vec<Vec<sluice_wire::Value>>,
    size: usize,
    giants: Vec<Giant>,
}

/// What [`Rows::take`] did with a row.
enum Took {
    Row,
    /// Over [`MAX_ROW_BYTES`]: to be moved aside.
    Aside,
    /// The batch is full (its size): the row is left for the next one.
    Full,
}

impl Rows {
    fn new(n: usize) -> Rows {
        Rows {
            n,
            versions: Vec::new(),
            deleted: Vec::new(),
            values: vec![Vec::new(); n],
            size: 0,
            giants: Vec::new(),
        }
    }

    /// Takes a row: its `n` values, then its sequence number, then (`ops`)
    /// 1 for a tombstone.
    fn take(&mut self, row: &rusqlite::Row<'_>, ops: bool) -> Res<Took> {
        let n = self.n;
        let tombstone = ops && row.get::<_, i64>(n + 1)? == 1;
        let (mut size, mut bound) = (2usize, ROW_OVERHEAD);
        for i in 0..n {
            let v = row.get_ref(i)?;
            size = size.saturating_add(value_size(v));
            bound = bound.saturating_add(value_bound(v));
        }
        // A row alone over the limit could never be sent: moved aside (a
        // tombstone carries only its key, and is never one).
        if bound > MAX_ROW_BYTES && !tombstone {
            self.giants.push(Giant {
                seq: row.get(n)?,
                bytes: bound,
            });
            return Ok(Took::Aside);
        }
        if !self.versions.is_empty() && self.size.saturating_add(size) > MAX_BATCH_BYTES {
            return Ok(Took::Full);
        }
        self.size = self.size.saturating_add(size);
        self.versions.push(row.get(n)?);
        self.deleted.push(tombstone);
        for (i, col) in self.values.iter_mut().enumerate() {
            col.push(wire_value(row.get_ref(i)?));
        }
        Ok(Took::Row)
    }
}

/// What one pass of cutting found.
enum Found {
    Nothing,
    /// Rows over the limit: they are moved aside and the batch cut again.
    Giants(Vec<Giant>),
    /// A batch: its rows, `base_seq`, `last_seq` and re-send number.
    Batch(Rows, i64, i64, u32),
}

fn batch(ctx: &Context<'_>) -> Res<Value> {
    let table = arg_text(ctx, 0, "the table name")?;
    let max_rows = match ctx.len() {
        0 | 1 => DEFAULT_BATCH_ROWS,
        // NULL: the default, so that options can be given alone.
        _ if matches!(arg_raw(ctx, 1)?, ValueRef::Null) => DEFAULT_BATCH_ROWS,
        _ => arg_int(ctx, 1, "max_rows")?,
    };
    if !(1..=MAX_BATCH_ROWS).contains(&max_rows) {
        return Err(Fail(format!(
            "max_rows must be between 1 and {MAX_BATCH_ROWS}, got {max_rows}"
        )));
    }
    let opts = match arg_opt_text(ctx, 2, "options")? {
        Some(text) => parse_batch_options(text)?,
        None => BatchOptions::default(),
    };
    let conn = connection(ctx)?;
    let info = table_info(&conn, table)?;
    let t = tables::require(&conn, &info)?;
    let device_id = match meta::device_id(&conn)? {
        Some(Value::Text(d)) => d,
        _ => {
            return Err(Fail(
                "no device id; set one with SELECT sluice_device('name')".to_string(),
            ))
        }
    };
    let stream = meta::stream_id(&conn)?;
    let seq = seq_column(&info, &t)?;
    check_high_water(&conn, &info, &t, &seq)?;

    let cols: Vec<Column> = info
        .columns
        .iter()
        .filter(|c| {
            !c.name.eq_ignore_ascii_case(VERSION_COLUMN)
                && !t.local_only.iter().any(|l| l.eq_ignore_ascii_case(&c.name))
        })
        .map(|c| Column::new(c.name.clone(), ColumnType::from_declared(&c.decl)))
        .collect();
    if cols.is_empty() {
        return Err(Fail(format!(
            "table '{}' has no column to send (all are local_only)",
            info.name
        )));
    }
    let cut = Cut {
        conn: &conn,
        info: &info,
        t: &t,
        seq: &seq,
        cols: &cols,
        max_rows,
    };
    // A row over the limit is moved aside and the batch cut again without
    // it, so that the batch is the one a later call cuts. Each pass moves
    // at least one more row aside.
    let (rows, base_seq, last_seq, resend) = loop {
        // Re-sends first, oldest request first.
        let found = match resend_rows::next_request(&conn, &info, &t, &seq)? {
            Some(r) => cut.resend(&r)?,
            None => cut.pending(&opts)?,
        };
        match found {
            Found::Nothing => return Ok(Value::Null),
            Found::Batch(rows, base, last, resend) => break (rows, base, last, resend),
            Found::Giants(giants) => cut.move_aside(&giants)?,
        }
    };
    let header = BatchHeader {
        device_id,
        stream_id: stream as u64,
        table: info.name.clone(),
        base_seq,
        last_seq,
        row_count: 0,
        sent_at_ms: now_ms(),
        columns: cols,
        fingerprint: 0,
        digest: None,
        origin: sluice_wire::Origin {
            machine: machine_hash(meta::machine(&conn)?.as_deref()),
            zone: wire_zone(meta::zone(&conn)?.as_deref()),
            fork: fork::for_batch(&conn, &t.tbl, base_seq)?,
        },
        resend,
        changes: None,
        // A subscribed table (both sides write it): how far the edge had
        // applied the cloud's changes, read in the same statement as the
        // rows, so that the cloud lets a delete the edge had not seen win
        // over the edge's copy of the row.
        pulled: subscriptions::get(&conn, &info.name)?.map(|s| Pulled {
            stream_id: s.stream_id as u64,
            checkpoint: s.checkpoint,
        }),
    };
    let bytes = encode_with_deletes(
        &header,
        &rows.versions,
        &rows.deleted,
        &rows.values,
        EncodeOptions::default(),
    )
    .map_err(|e| Fail(e.to_string()))?;
    Ok(Value::Blob(bytes))
}

impl Cut<'_> {
    fn select(&self) -> String {
        let select: Vec<String> = self.cols.iter().map(|c| quote_ident(&c.name)).collect();
        select.join(", ")
    }

    /// The pending rows of the table.
    fn pending(&self, opts: &BatchOptions) -> Res<Found> {
        let (conn, info, t, seq) = (self.conn, self.info, self.t, self.seq);
        // The lowest sequence number this batch may take rows above: the
        // watermark, or with `since` the newest pending row older than that.
        let floor = match opts.since_secs {
            Some(secs) => since_floor(conn, info, t, seq, secs)?,
            None => t.acked_seq,
        };
        let ranges = ranges::above(conn, &t.tbl, floor)?;
        let mut gaps = acked::pending_gaps(&ranges, floor);
        let newest = opts.order == DrainOrder::Newest;
        if newest {
            gaps.reverse();
        }
        let dir = if newest { "DESC" } else { "ASC" };
        // Quarantined rows are left out; the condition is added only when
        // the table has some.
        let aside = if quarantine::any(conn, &t.tbl)? {
            format!(" AND {}", quarantine::exclude_sql(&seq.to_string(), "?4"))
        } else {
            String::new()
        };
        // A mutable table's tombstones are rows of the batch like the others,
        // merged in version order (they share the clock); an append-only table
        // reads its rows alone.
        let with_tombstones = t.mutable && Table::Tombstones.exists(conn)?;
        let rows_sql = format!(
            "SELECT {}, {seq}, 0 FROM main.{} WHERE {seq} > ?1 AND {seq} <= ?2{aside}",
            self.select(),
            info.quoted(),
        );
        let sql = if with_tombstones {
            let names: Vec<String> = self.cols.iter().map(|c| c.name.clone()).collect();
            let key = t.delete_key.as_deref().unwrap_or(&[]);
            format!(
                "{rows_sql} UNION ALL {} ORDER BY {} {dir} LIMIT ?3",
                tombstones::select_sql(&names, key),
                self.cols.len() + 1
            )
        } else {
            format!("{rows_sql} ORDER BY {seq} {dir} LIMIT ?3")
        };
        let mut stmt = conn.prepare(&sql)?;
        let mut out = Rows::new(self.cols.len());
        // Whether every pending row above the floor was looked at.
        let mut exhausted = true;
        'gaps: for (lo, hi) in gaps {
            let room = self.max_rows - out.versions.len() as i64;
            if room <= 0 {
                exhausted = false;
                break;
            }
            let mut rows = if with_tombstones || !aside.is_empty() {
                stmt.query(params![lo, hi, room, t.tbl])?
            } else {
                stmt.query(params![lo, hi, room])?
            };
            let mut taken = 0i64;
            while let Some(row) = rows.next()? {
                match out.take(row, true)? {
                    Took::Row => taken += 1,
                    Took::Aside => {}
                    Took::Full => {
                        exhausted = false;
                        break 'gaps;
                    }
                }
            }
            if taken == room {
                // Full: rows may remain in this gap or the next.
                exhausted = false;
                break;
            }
        }
        if !out.giants.is_empty() {
            return Ok(Found::Giants(out.giants));
        }
        if out.versions.is_empty() {
            return Ok(Found::Nothing);
        }
        if newest {
            // Newest first was only the choice of rows; a batch lists them in
            // sequence order.
            out.versions.reverse();
            out.deleted.reverse();
            for col in &mut out.values {
                col.reverse();
            }
        }
        let (first_seq, last_seq) = (out.versions[0], out.versions[out.versions.len() - 1]);
        // The batch covers (base_seq, last_seq]: every pending row in that
        // range is in it. Oldest first, or newest first down to the floor, it
        // starts at the floor, so its acknowledgement moves the watermark when
        // the floor is the watermark; otherwise it starts just below its first row.
        // `first_seq` is above the floor, so `first_seq - 1` cannot overflow;
        // checked all the same (a sequence number is the user's rowid).
        let base_seq = if !newest || exhausted {
            floor
        } else {
            first_seq.checked_sub(1).unwrap_or(floor)
        };
        Ok(Found::Batch(out, base_seq, last_seq, 0))
    }

    /// The next rows of re-send request `r`: from its `done_seq` up, in
    /// sequence order, as many as the row limit and the batch size allow.
    /// The batch covers `(done_seq, hi]`, or ends at its last row when a
    /// limit cut it; no tombstones.
    fn resend(&self, r: &Request) -> Res<Found> {
        let (conn, info, t, seq) = (self.conn, self.info, self.t, self.seq);
        let n = u32::try_from(r.n).map_err(|_| {
            Fail(format!(
                "re-send request {} of '{}' is numbered beyond 4294967295 (sluice_resends was \
                 written by hand)",
                r.n, info.name
            ))
        })?;
        let rows = RequestRows::of(conn, info, t, seq, r)?;
        let mut stmt = rows.select(conn, &self.select(), r.done_seq, r.hi, self.max_rows)?;
        let mut out = Rows::new(self.cols.len());
        let mut cut = false;
        let mut fetched = 0i64;
        let mut q = stmt.raw_query();
        while let Some(row) = q.next()? {
            fetched += 1;
            match out.take(row, false)? {
                Took::Row | Took::Aside => {}
                Took::Full => {
                    cut = true;
                    break;
                }
            }
        }
        if fetched == self.max_rows {
            cut = true;
        }
        if !out.giants.is_empty() {
            return Ok(Found::Giants(out.giants));
        }
        let Some(&last) = out.versions.last() else {
            return Ok(Found::Nothing);
        };
        Ok(Found::Batch(
            out,
            r.done_seq,
            if cut { last } else { r.hi },
            n,
        ))
    }

    /// Moves the rows over the limit aside (`sluice_quarantine`).
    fn move_aside(&self, giants: &[Giant]) -> Res<()> {
        let (conn, info, t, seq) = (self.conn, self.info, self.t, self.seq);
        let now = now_ms();
        let moved = atomic(conn, "sluice_batch", || {
            bookkeeping::ensure(conn)?;
            let mut moved = 0;
            for g in giants {
                let reason = format!(
                    "row of {} bytes is over the batch limit of {MAX_ROW_BYTES} bytes",
                    g.bytes
                );
                let row_id = resend_rows::rowid_of(conn, info, seq, g.seq)?;
                let bytes = i64::try_from(g.bytes).ok();
                if quarantine::insert(conn, &t.tbl, g.seq, row_id, bytes, &reason, None, now)? {
                    moved += 1;
                }
            }
            Ok(moved)
        })?;
        if moved == 0 {
            // Every one was aside already, yet read again: cutting once more
            // would find them again.
            return Err(Fail(format!(
                "a row of '{}' over the batch limit could not be moved aside (sequence number {})",
                info.name,
                giants.first().map_or(0, |g| g.seq)
            )));
        }
        Ok(())
    }
}

/// With `since`: the sequence number the window starts above. Every row
/// above the watermark whose time is within the last `secs` is above it, so
/// that a row with a time from the past (a late reading, a clock that jumped
/// back) never hides the recent rows below it, and is sent with them: the
/// start is the newest pending row older than `secs` ago, or, when a row
/// below that one has a time of the window, just below the oldest such row
/// (a row acknowledged in a range counts, so that the window does not
/// depend on how it was cut into batches); the watermark if no row is older.
/// A time from the future ([`crate::time::future_after`]) is not of the
/// window. The rows above are one contiguous range, so that acknowledging
/// the batch can never cover a pending row it did not carry.
///
/// Finding the oldest recent row reads the rows between the watermark and
/// the newest old one (the time column is not assumed to be indexed).
fn since_floor(
    conn: &Connection,
    info: &TableInfo,
    t: &Tracked,
    seq: &SeqColumn,
    secs: i64,
) -> Res<i64> {
    let Some(tc) = tables::time_column(conn, &info.name)? else {
        return Err(Fail(format!(
            "option 'since' needs the time column of '{}'; declare it with \
             SELECT sluice_track('{}', '{{\"time\": \"column\"}}')",
            info.name,
            info.name.replace('\'', "''")
        )));
    };
    let now = now_ms() / 1000;
    let cutoff = now.saturating_sub(secs);
    let time = EpochSql(&quote_ident(&tc));
    let newest_old: Option<i64> = conn
        .query_row(
            &format!(
                "SELECT {seq} FROM main.{} WHERE {seq} > ?1 AND {time} < ?2 ORDER BY {seq} DESC LIMIT 1",
                info.quoted(),
            ),
            params![t.acked_seq, cutoff],
            |r| r.get(0),
        )
        .optional()?;
    let Some(old) = newest_old.filter(|o| *o > t.acked_seq) else {
        return Ok(t.acked_seq);
    };
    // The oldest row below it (pending, or acknowledged in a range above
    // the watermark) whose time is of the window.
    let recent: Option<i64> = conn
        .query_row(
            &format!(
                "SELECT {seq} FROM main.{} WHERE {seq} > ?1 AND {seq} < ?2 \
                 AND {time} >= ?3 AND {time} <= ?4 ORDER BY {seq} LIMIT 1",
                info.quoted(),
            ),
            params![t.acked_seq, old, cutoff, future_after(now)],
            |r| r.get(0),
        )
        .optional()?;
    // Above the watermark, so one below it is not under it.
    Ok(recent.map_or(old, |r| r.saturating_sub(1).max(t.acked_seq)))
}

fn wire_value(v: ValueRef<'_>) -> sluice_wire::Value {
    match v {
        ValueRef::Null => sluice_wire::Value::Null,
        ValueRef::Integer(i) => sluice_wire::Value::Integer(i),
        ValueRef::Real(f) => sluice_wire::Value::Real(f),
        // SQLite may hold text that is not valid UTF-8; it is sent with the
        // invalid bytes replaced.
        ValueRef::Text(t) => sluice_wire::Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => sluice_wire::Value::Blob(b.to_vec()),
    }
}

/// The size a value counts for in the batch's growth (compared with
/// [`MAX_BATCH_BYTES`]).
fn value_size(v: ValueRef<'_>) -> usize {
    1 + match v {
        ValueRef::Null => 0,
        ValueRef::Integer(_) => 10,
        ValueRef::Real(_) => 8,
        ValueRef::Text(s) => text_len(s).saturating_add(5),
        ValueRef::Blob(b) => b.len().saturating_add(5),
    }
}

/// The most a row adds to a batch body besides its values: its version (a
/// varint of up to 10 bytes) and its operation byte.
const ROW_OVERHEAD: usize = 11;

/// The most a value takes in the body of a batch of one row: its tag, and
/// an integer's varint, a real's scale and varint, a text's shared-prefix
/// and length varints and bytes, a blob's length varint and bytes.
fn value_bound(v: ValueRef<'_>) -> usize {
    let varint_len = |n: usize| (usize::BITS - n.leading_zeros()).max(1).div_ceil(7) as usize;
    1 + match v {
        ValueRef::Null => 0,
        ValueRef::Integer(_) => 10,
        ValueRef::Real(_) => 11,
        ValueRef::Text(s) => {
            let n = text_len(s);
            n.saturating_add(1 + varint_len(n))
        }
        ValueRef::Blob(b) => b.len().saturating_add(varint_len(b.len())),
    }
}

/// The length of text as it is sent: invalid UTF-8 is replaced.
fn text_len(t: &[u8]) -> usize {
    match std::str::from_utf8(t) {
        Ok(s) => s.len(),
        Err(_) => String::from_utf8_lossy(t).len(),
    }
}

#[cfg(test)]
mod since_tests;
