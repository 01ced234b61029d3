//! `sluice_apply(batch)`: applies a batch of cloud changes (flag bit 4,
//! built by the cloud's `sluice.pull`) to the subscribed local table, all or
//! nothing, exactly once (issue 13; docs/sqlite.md and docs/sync-protocol.md,
//! "Cloud to edge").
//!
//! - Refused whole, nothing applied, with an error that names the problem:
//!   a damaged batch, a batch that is not of cloud changes, of another
//!   device, of a table not subscribed, naming a column the table lacks or
//!   the subscription does not give the cloud, or without the key columns.
//! - Incremental batches (`snapshot_page` 0) follow the checkpoint: a batch
//!   whose `last_seq` is at or below it is a replay (a no-op), one whose
//!   `base_seq` is not the checkpoint leaves a gap (refused), and one of
//!   another stream, or before the first snapshot, needs a snapshot first.
//! - Snapshot pages: page 1 starts a snapshot; page `n > 1` needs page
//!   `n - 1` of the same snapshot (stream, `last_seq`) applied earlier on
//!   this connection (the progress and the keys received are kept in TEMP
//!   tables, so a snapshot is never finished on half its pages); the last
//!   page deletes the local rows whose key no page carried, then the
//!   subscription takes the snapshot's stream and checkpoint.
//! - An upsert writes only the batch's columns (`INSERT ... ON CONFLICT
//!   (key) DO UPDATE SET` those): the edge's own columns keep their values,
//!   and take their defaults on insert.
//! - The quiet rule: rows written or deleted here never become pending for
//!   the way up. In a mutable tracked table a new row gets version 0 (below
//!   any watermark), an updated row keeps its version (the update trigger
//!   is quiet while this runs, [`tombstones::quietly`]), and deletes make no
//!   tombstone; the edge's own later writes bump the version as always.

use rusqlite::functions::Context;
use rusqlite::types::{Null, ToSql, Value};
use rusqlite::{Connection, Statement};
use serde_json::json;
use sluice_wire::names::quote_ident;
use sluice_wire::{Batch, Changes};

use crate::bookkeeping::{self, meta, subscriptions, tables, tombstones};
use crate::glue::now_iso;
use crate::glue::{arg_blob, atomic, connection, finish, Fail, Res};
use crate::mutable::ensure_quiet_triggers;
use crate::schema::{table_info, TableInfo};
use crate::sequence::is_sluice_column;
use crate::sequence::VERSION_COLUMN;
use crate::snapshot::{
    create_keys, forget_snapshot, is_empty, keys_table, progress_of, record_present, set_progress,
    sweep, Mark,
};

/// `sluice_apply(batch BLOB)` → what was applied, as JSON.
pub fn sluice_apply(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_apply", apply(ctx))
}

fn apply(ctx: &Context<'_>) -> Res<Value> {
    let bytes = arg_blob(ctx, 0, "the batch")?;
    let batch =
        sluice_wire::decode(bytes).map_err(|e| Fail(format!("the batch is damaged: {e}")))?;
    let Some(changes) = batch.header.changes else {
        return Err(Fail(format!(
            "not a batch of cloud changes (flag bit 4 is not set): a batch of the edge's rows \
             of '{}', which only the cloud ingests",
            batch.header.table
        )));
    };
    let conn = connection(ctx)?;
    let out = atomic(&conn, "sluice_apply", || {
        bookkeeping::ensure(&conn)?;
        tombstones::quietly(&conn, || apply_in(&conn, &batch, changes))
    })?;
    Ok(Value::Text(out.to_string()))
}

/// What one call did.
struct Outcome {
    upserted: i64,
    deleted: i64,
    replay: bool,
    checkpoint: i64,
    complete: bool,
}

fn apply_in(conn: &Connection, batch: &Batch, changes: Changes) -> Res<serde_json::Value> {
    let h = &batch.header;
    match meta::device_id(conn)? {
        Some(Value::Text(d)) if d == h.device_id => {}
        Some(Value::Text(d)) => {
            return Err(Fail(format!(
                "the batch is for device '{}', this database is device '{d}'",
                h.device_id
            )))
        }
        _ => {
            return Err(Fail(format!(
                "this database has no device id; the batch is for device '{}': set it with \
                 SELECT sluice_device('...')",
                h.device_id
            )))
        }
    }
    let Some(sub) = subscriptions::get(conn, &h.table)? else {
        return Err(Fail(format!(
            "table '{}' is not subscribed on this database (sluice_subscribe)",
            h.table
        )));
    };
    let info = table_info(conn, &sub.tbl)?;
    let tracked_mutable = match tables::get(conn, &info.name)? {
        Some(t) if !t.mutable => {
            return Err(Fail(format!(
                "'{}' is tracked as append-only: the rows the cloud writes would be sent back \
                 up; track it as mutable",
                info.name
            )))
        }
        Some(_) => {
            ensure_quiet_triggers(conn, &info)?;
            true
        }
        None => false,
    };
    let plan = Plan::new(&info, &sub, batch, tracked_mutable)?;
    let stream = h.stream_id as i64;
    let page = changes.snapshot_page;
    let now = now_iso(conn)?;
    let outcome = if page == 0 {
        forget_snapshot(conn, &info.name)?;
        if sub.checkpoint == 0 || sub.stream_id != stream {
            return Err(Fail(format!(
                "'{}' needs a snapshot first: the batch continues stream {:016x} from checkpoint \
                 {}, the subscription is at {} of stream {:016x}",
                info.name, h.stream_id, h.base_seq, sub.checkpoint, sub.stream_id as u64
            )));
        }
        if h.last_seq <= sub.checkpoint {
            Outcome::replay(sub.checkpoint)
        } else if h.base_seq != sub.checkpoint {
            return Err(Fail(format!(
                "gap: the batch follows checkpoint {} but '{}' is at checkpoint {}; \
                 nothing was applied",
                h.base_seq, info.name, sub.checkpoint
            )));
        } else {
            let (upserted, deleted) = plan.write(conn, batch, None, false)?;
            subscriptions::record(
                conn,
                &info.name,
                subscriptions::Applied {
                    stream_id: stream,
                    checkpoint: h.last_seq,
                    upserted,
                    deleted,
                    snapshot_done: false,
                },
                &now,
            )?;
            Outcome {
                upserted,
                deleted,
                replay: false,
                checkpoint: h.last_seq,
                complete: true,
            }
        }
    } else if sub.stream_id == stream && sub.checkpoint != 0 && h.last_seq <= sub.checkpoint {
        // A snapshot the subscription has already gone past: applying it
        // again would take rows back to older values.
        Outcome::replay(sub.checkpoint)
    } else {
        let progress = progress_of(conn, &info.name)?;
        let keys = keys_table(&info.name);
        // Whether the keys received are recorded (else the table was empty
        // when the snapshot began and nothing else has written since: every
        // row in it came from a page, and the sweep has nothing to do).
        let recorded = if page == 1 {
            forget_snapshot(conn, &info.name)?;
            if is_empty(conn, &info)? {
                false
            } else {
                create_keys(conn, &info, &sub.key, &keys)?;
                true
            }
        } else {
            match progress {
                Some(p) if p.stream == stream && p.last_seq == h.last_seq && page <= p.page => {
                    // A page this snapshot already applied.
                    return Ok(Outcome::replay(sub.checkpoint).json(&info.name, page, false));
                }
                Some(p) if p.stream == stream && p.last_seq == h.last_seq && page == p.page + 1 => {
                    match p.unwritten_since {
                        Some(mark) if mark == Mark::now(conn)? => false,
                        Some(_) => {
                            // Something else wrote between the pages: from
                            // here on the keys are recorded, and the rows
                            // the table has now count as carried.
                            create_keys(conn, &info, &sub.key, &keys)?;
                            record_present(conn, &info, &sub.key, &keys)?;
                            true
                        }
                        None => true,
                    }
                }
                Some(p) if p.stream == stream && p.last_seq == h.last_seq => {
                    return Err(Fail(format!(
                        "page {page} of the snapshot of '{}' at checkpoint {} follows page {}, \
                         but page {} is the last applied on this connection",
                        info.name,
                        h.last_seq,
                        page - 1,
                        p.page
                    )))
                }
                _ => {
                    return Err(Fail(format!(
                        "page {page} of the snapshot of '{}' at checkpoint {} without its page \
                         {} applied before on this connection; a snapshot starts at page 1 \
                         (apply its pages in order, in one transaction)",
                        info.name,
                        h.last_seq,
                        page - 1
                    )))
                }
            }
        };
        let (upserted, mut deleted) =
            plan.write(conn, batch, recorded.then_some(keys.as_str()), !recorded)?;
        if changes.last_page {
            if recorded {
                deleted += sweep(conn, &info, &sub.key, &keys)?;
            }
            forget_snapshot(conn, &info.name)?;
            subscriptions::record(
                conn,
                &info.name,
                subscriptions::Applied {
                    stream_id: stream,
                    checkpoint: h.last_seq,
                    upserted,
                    deleted,
                    snapshot_done: true,
                },
                &now,
            )?;
            Outcome {
                upserted,
                deleted,
                replay: false,
                checkpoint: h.last_seq,
                complete: true,
            }
        } else {
            subscriptions::record_page(conn, &info.name, upserted, &now)?;
            set_progress(conn, &info.name, stream, h.last_seq, page, !recorded)?;
            Outcome {
                upserted,
                deleted,
                replay: false,
                checkpoint: sub.checkpoint,
                complete: false,
            }
        }
    };
    let complete = outcome.complete;
    Ok(outcome.json(&info.name, page, complete))
}

impl Outcome {
    fn replay(checkpoint: i64) -> Self {
        Outcome {
            upserted: 0,
            deleted: 0,
            replay: true,
            checkpoint,
            complete: true,
        }
    }

    fn json(&self, table: &str, page: u32, complete: bool) -> serde_json::Value {
        json!({
            "table": table,
            "upserted": self.upserted,
            "deleted": self.deleted,
            "replay": self.replay,
            "checkpoint": self.checkpoint,
            "snapshot_page": page,
            "complete": complete,
        })
    }
}

/// How the batch's rows are written: the statements and which batch column
/// is which.
struct Plan {
    /// `INSERT INTO main."t" (columns)`.
    head: String,
    /// The VALUES of one row: `(?, ?, ...)`.
    row: String,
    /// `ON CONFLICT (key) DO UPDATE SET` the batch's other columns: an
    /// upsert. Left out for a snapshot into a table that was empty (no
    /// conflict to resolve).
    on_conflict: String,
    delete: String,
    /// The batch's column index of each key column, in key order.
    key_at: Vec<usize>,
    /// The key columns' names as the schema spells them.
    key_names: Vec<String>,
}

impl Plan {
    fn new(
        info: &TableInfo,
        sub: &subscriptions::Subscription,
        batch: &Batch,
        tracked_mutable: bool,
    ) -> Res<Self> {
        let h = &batch.header;
        let mut names: Vec<String> = Vec::with_capacity(h.columns.len());
        for c in &h.columns {
            let Some((_, col)) = info.column(&c.name) else {
                return Err(Fail(format!(
                    "table '{}' has no column '{}' (the batch's columns: {})",
                    info.name,
                    c.name,
                    column_list(batch)
                )));
            };
            let allowed = match &sub.columns {
                Some(cols) => cols.iter().any(|s| s.eq_ignore_ascii_case(&col.name)),
                None => !is_sluice_column(&col.name),
            };
            if !allowed {
                return Err(Fail(format!(
                    "column '{}' of '{}' is not one the subscription gives the cloud ({})",
                    col.name,
                    info.name,
                    match &sub.columns {
                        Some(cols) => cols.join(", "),
                        None => "any column but sluice's".to_string(),
                    }
                )));
            }
            if names.iter().any(|n| n == &col.name) {
                return Err(Fail(format!("the batch names column '{}' twice", col.name)));
            }
            names.push(col.name.clone());
        }
        let mut key_at = Vec::with_capacity(sub.key.len());
        for k in &sub.key {
            match names.iter().position(|n| n.eq_ignore_ascii_case(k)) {
                Some(i) => key_at.push(i),
                None => {
                    return Err(Fail(format!(
                        "the batch lacks key column '{k}' of '{}' (the batch's columns: {})",
                        info.name,
                        column_list(batch)
                    )))
                }
            }
        }
        let t = info.quoted();
        let quoted: Vec<String> = names.iter().map(|n| quote_ident(n)).collect();
        let key_q: Vec<String> = key_at.iter().map(|&i| quoted[i].clone()).collect();
        let mut cols = quoted.clone();
        let mut values: Vec<String> = vec!["?".to_string(); quoted.len()];
        if tracked_mutable {
            // Below any watermark: not pending (the quiet rule).
            cols.push(quote_ident(VERSION_COLUMN));
            values.push("0".to_string());
        }
        let set: Vec<String> = quoted
            .iter()
            .enumerate()
            .filter(|(i, _)| !key_at.contains(i))
            .map(|(_, c)| format!("{c} = excluded.{c}"))
            .collect();
        let on_conflict = if set.is_empty() {
            format!("ON CONFLICT ({}) DO NOTHING", key_q.join(", "))
        } else {
            format!(
                "ON CONFLICT ({}) DO UPDATE SET {}",
                key_q.join(", "),
                set.join(", ")
            )
        };
        let cond: Vec<String> = key_q
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = ?{}", i + 1))
            .collect();
        let delete = format!("DELETE FROM main.{t} WHERE {}", cond.join(" AND "));
        Ok(Plan {
            head: format!("INSERT INTO main.{t} ({})", cols.join(", ")),
            row: format!("({})", values.join(", ")),
            on_conflict,
            delete,
            key_names: key_at.iter().map(|&i| names[i].clone()).collect(),
            key_at,
        })
    }

    /// Writes the rows; with `keys`, records each upserted key in that TEMP
    /// table (a snapshot page); `fresh`: every row is new (a snapshot into
    /// a table empty when it began, keys not recorded): plain INSERTs.
    /// Upserts go many rows to a statement ([`chunk`]), in batch
    /// order with the deletes. Returns (upserted, deleted).
    // `r` indexes every column of the batch (stored by column).
    #[allow(clippy::needless_range_loop)]
    fn write(
        &self,
        conn: &Connection,
        batch: &Batch,
        keys: Option<&str>,
        fresh: bool,
    ) -> Res<(i64, i64)> {
        let rows = batch.versions.len();
        let cols = &batch.columns;
        let per = chunk(conn, cols.len());
        let mut w = Writer {
            plan: self,
            conn,
            batch,
            keys,
            fresh,
            statements: Vec::new(),
            records: Vec::new(),
            single: None,
        };
        let mut delete: Option<Statement<'_>> = None;
        let mut waiting: Vec<usize> = Vec::with_capacity(per);
        let (mut upserted, mut deleted) = (0i64, 0i64);
        for r in 0..rows {
            for (k, &c) in self.key_at.iter().enumerate() {
                if matches!(cols[c][r], sluice_wire::Value::Null) {
                    return Err(Fail(format!(
                        "row {} of the batch has NULL in key column '{}'",
                        r + 1,
                        self.key_names[k]
                    )));
                }
            }
            if batch.deleted.get(r).copied().unwrap_or(false) {
                w.flush(&waiting)?;
                upserted += waiting.len() as i64;
                waiting.clear();
                let stmt = match &mut delete {
                    Some(s) => s,
                    None => delete.insert(conn.prepare(&self.delete)?),
                };
                for (k, &c) in self.key_at.iter().enumerate() {
                    stmt.raw_bind_parameter(k + 1, Bind(&cols[c][r]))?;
                }
                deleted += stmt.raw_execute().map_err(|e| self.row_err(batch, r, &e))? as i64;
            } else {
                waiting.push(r);
                if waiting.len() == per {
                    w.flush(&waiting)?;
                    upserted += waiting.len() as i64;
                    waiting.clear();
                }
            }
        }
        w.flush(&waiting)?;
        upserted += waiting.len() as i64;
        Ok((upserted, deleted))
    }

    fn row_err(&self, batch: &Batch, r: usize, e: &rusqlite::Error) -> Fail {
        Fail(format!(
            "row {} of the batch ({}): {}",
            r + 1,
            self.describe_key(batch, r),
            crate::glue::sqlite_message(e)
        ))
    }

    /// The INSERT of `n` rows (plain or upsert).
    fn insert_sql(&self, n: usize, fresh: bool) -> String {
        let rows = vec![self.row.as_str(); n].join(", ");
        if fresh {
            format!("{} VALUES {rows}", self.head)
        } else {
            format!("{} VALUES {rows} {}", self.head, self.on_conflict)
        }
    }

    /// The INSERT of `n` received keys into the TEMP table `keys`.
    fn record_sql(&self, n: usize, keys: &str) -> String {
        let one = format!("({})", vec!["?"; self.key_at.len()].join(", "));
        format!(
            "INSERT OR IGNORE INTO temp.{} VALUES {}",
            quote_ident(keys),
            vec![one.as_str(); n].join(", ")
        )
    }

    fn describe_key(&self, batch: &Batch, r: usize) -> String {
        self.key_at
            .iter()
            .zip(&self.key_names)
            .map(|(&c, n)| format!("{n} = {}", show(&batch.columns[c][r])))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Most rows one INSERT statement carries: as many as the connection's
/// limit of bound parameters allows, up to 256. SQLite opens a statement
/// journal for each statement of an upsert, or of a table with triggers;
/// one for many rows costs little.
fn chunk(conn: &Connection, columns: usize) -> usize {
    // SAFETY: reading a limit of an open connection.
    let limit = unsafe {
        rusqlite::ffi::sqlite3_limit(
            conn.handle(),
            rusqlite::ffi::SQLITE_LIMIT_VARIABLE_NUMBER,
            -1,
        )
    };
    let limit = usize::try_from(limit).unwrap_or(999);
    (limit / columns.max(1)).clamp(1, 256)
}

/// Whether `e` is a conflict on the primary key or a unique index.
fn is_key_conflict(e: &rusqlite::Error) -> bool {
    // The extended code when the connection reports them, else the
    // message (both kinds say "UNIQUE constraint failed").
    match e {
        rusqlite::Error::SqliteFailure(f, m) => {
            f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || (f.code == rusqlite::ErrorCode::ConstraintViolation
                    && m.as_deref()
                        .is_some_and(|m| m.starts_with("UNIQUE constraint failed")))
        }
        _ => false,
    }
}

/// The statements of one call's upserts, by number of rows.
struct Writer<'p, 'c> {
    plan: &'p Plan,
    conn: &'c Connection,
    batch: &'p Batch,
    keys: Option<&'p str>,
    fresh: bool,
    statements: Vec<(usize, Statement<'c>)>,
    records: Vec<(usize, Statement<'c>)>,
    single: Option<Statement<'c>>,
}

impl<'c> Writer<'_, 'c> {
    /// Upserts the rows `rows` of the batch with one statement (and records
    /// their keys with another).
    fn flush(&mut self, rows: &[usize]) -> Res<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let n = rows.len();
        let cols = &self.batch.columns;
        let i = match self.statements.iter().position(|(m, _)| *m == n) {
            Some(i) => i,
            None => {
                let sql = self.plan.insert_sql(n, self.fresh);
                self.statements.push((n, self.conn.prepare(&sql)?));
                self.statements.len() - 1
            }
        };
        let stmt = &mut self.statements[i].1;
        let mut p = 1;
        for &r in rows {
            for col in cols {
                stmt.raw_bind_parameter(p, Bind(&col[r]))?;
                p += 1;
            }
        }
        if let Err(e) = stmt.raw_execute() {
            if self.fresh && is_key_conflict(&e) {
                // The batch carries a key twice (the statement undid its
                // rows): upserts from here on, so the later row wins.
                self.fresh = false;
                self.statements.clear();
                self.single = None;
                return self.flush(rows);
            }
            return Err(self.locate(rows, &e));
        }
        if let Some(keys) = self.keys {
            let i = match self.records.iter().position(|(m, _)| *m == n) {
                Some(i) => i,
                None => {
                    let sql = self.plan.record_sql(n, keys);
                    self.records.push((n, self.conn.prepare(&sql)?));
                    self.records.len() - 1
                }
            };
            let rec = &mut self.records[i].1;
            let mut p = 1;
            for &r in rows {
                for &c in &self.plan.key_at {
                    rec.raw_bind_parameter(p, Bind(&cols[c][r]))?;
                    p += 1;
                }
            }
            rec.raw_execute()?;
        }
        Ok(())
    }

    /// The statement of many rows failed (and undid its rows): which row
    /// fails, tried one by one, for an error that names it.
    fn locate(&mut self, rows: &[usize], e: &rusqlite::Error) -> Fail {
        let cols = &self.batch.columns;
        for &r in rows {
            let stmt = match &mut self.single {
                Some(s) => s,
                None => match self.conn.prepare(&self.plan.insert_sql(1, self.fresh)) {
                    Ok(s) => self.single.insert(s),
                    Err(e) => return e.into(),
                },
            };
            for (c, col) in cols.iter().enumerate() {
                if let Err(e) = stmt.raw_bind_parameter(c + 1, Bind(&col[r])) {
                    return e.into();
                }
            }
            if let Err(e) = stmt.raw_execute() {
                return self.plan.row_err(self.batch, r, &e);
            }
        }
        // The rows pass one by one (two of them conflict with each other).
        Fail(format!(
            "rows {} to {} of the batch: {}",
            rows.first().map_or(0, |r| r + 1),
            rows.last().map_or(0, |r| r + 1),
            crate::glue::sqlite_message(e)
        ))
    }
}

fn show(v: &sluice_wire::Value) -> String {
    match v {
        sluice_wire::Value::Null => "NULL".to_string(),
        sluice_wire::Value::Integer(i) => i.to_string(),
        sluice_wire::Value::Real(f) => f.to_string(),
        sluice_wire::Value::Text(s) => format!("'{}'", s.chars().take(40).collect::<String>()),
        sluice_wire::Value::Blob(b) => format!("a blob of {} bytes", b.len()),
    }
}

fn column_list(batch: &Batch) -> String {
    batch
        .header
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A wire value bound as a parameter.
struct Bind<'a>(&'a sluice_wire::Value);

impl ToSql for Bind<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self.0 {
            sluice_wire::Value::Null => return Null.to_sql(),
            sluice_wire::Value::Integer(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            sluice_wire::Value::Real(f) => ToSqlOutput::Borrowed(ValueRef::Real(*f)),
            sluice_wire::Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            sluice_wire::Value::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}
