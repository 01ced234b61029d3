//! `sluice_apply(batch)`: applies a batch of cloud changes (flag bit 4,
//! built by the cloud's `sluice.pull`) to the subscribed local table, all or
//! nothing, exactly once (issue 13; docs/sync-protocol.md, "Cloud to edge").
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
use rusqlite::{params, Connection, OptionalExtension, Statement};
use serde_json::json;
use sluice_wire::names::quote_ident;
use sluice_wire::{Batch, Changes};

use crate::bookkeeping::{self, meta, subscriptions, tables, tombstones};
use crate::glue::{arg_blob, atomic, connection, finish, Fail, Res};
use crate::schema::{table_info, TableInfo};
use crate::sequence::VERSION_COLUMN;
use crate::subscribe::{is_sluice_column, now_iso};
use crate::track::ensure_quiet_triggers;

/// The TEMP table of the snapshots in progress on this connection: one row
/// per table, the snapshot's stream, checkpoint and last page applied.
const PROGRESS: &str = "sluice_snapshot_progress";

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
            "not a batch of cloud changes (flag bit 4 is not set): batch {} is a batch of the \
             edge's rows, which only the cloud ingests",
            batch.header.id()
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
            let (upserted, deleted) = plan.write(conn, batch, None)?;
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
        if page == 1 {
            forget_snapshot(conn, &info.name)?;
            create_keys(conn, &info, &sub.key, &keys)?;
        } else {
            match progress {
                Some((s, l, p)) if s == stream && l == h.last_seq && page <= p => {
                    // A page this snapshot already applied.
                    return Ok(Outcome::replay(sub.checkpoint).json(&info.name, page, false));
                }
                Some((s, l, p)) if s == stream && l == h.last_seq && page == p + 1 => {}
                Some((s, l, p)) if s == stream && l == h.last_seq => {
                    return Err(Fail(format!(
                        "page {page} of the snapshot of '{}' at checkpoint {} follows page {}, \
                         but page {p} is the last applied on this connection",
                        info.name,
                        h.last_seq,
                        page - 1
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
        }
        let (upserted, mut deleted) = plan.write(conn, batch, Some(&keys))?;
        if changes.last_page {
            deleted += sweep(conn, &info, &sub.key, &keys)?;
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
            set_progress(conn, &info.name, stream, h.last_seq, page)?;
            subscriptions::record_page(conn, &info.name, upserted, &now)?;
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
    upsert: String,
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
        let mut values: Vec<String> = (1..=quoted.len()).map(|i| format!("?{i}")).collect();
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
        let upsert = format!(
            "INSERT INTO main.{t} ({}) VALUES ({}) {on_conflict}",
            cols.join(", "),
            values.join(", ")
        );
        let cond: Vec<String> = key_q
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = ?{}", i + 1))
            .collect();
        let delete = format!("DELETE FROM main.{t} WHERE {}", cond.join(" AND "));
        Ok(Plan {
            upsert,
            delete,
            key_names: key_at.iter().map(|&i| names[i].clone()).collect(),
            key_at,
        })
    }

    /// Writes the rows; with `keys`, records each upserted key in that TEMP
    /// table (a snapshot page). Returns (upserted, deleted).
    fn write(&self, conn: &Connection, batch: &Batch, keys: Option<&str>) -> Res<(i64, i64)> {
        let rows = batch.versions.len();
        let cols = &batch.columns;
        let mut upsert: Option<Statement<'_>> = None;
        let mut delete: Option<Statement<'_>> = None;
        let mut record: Option<Statement<'_>> = match keys {
            Some(k) => Some(conn.prepare(&format!(
                "INSERT OR IGNORE INTO temp.{} VALUES ({})",
                quote_ident(k),
                (1..=self.key_at.len())
                    .map(|i| format!("?{i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))?),
            None => None,
        };
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
            let is_delete = batch.deleted.get(r).copied().unwrap_or(false);
            let row_err = |e: rusqlite::Error| {
                Fail(format!(
                    "row {} of the batch ({}): {}",
                    r + 1,
                    self.describe_key(batch, r),
                    crate::glue::sqlite_message(&e)
                ))
            };
            if is_delete {
                let stmt = match &mut delete {
                    Some(s) => s,
                    None => delete.insert(conn.prepare(&self.delete)?),
                };
                for (k, &c) in self.key_at.iter().enumerate() {
                    stmt.raw_bind_parameter(k + 1, Bind(&cols[c][r]))?;
                }
                deleted += stmt.raw_execute().map_err(row_err)? as i64;
            } else {
                let stmt = match &mut upsert {
                    Some(s) => s,
                    None => upsert.insert(conn.prepare(&self.upsert)?),
                };
                for (c, col) in cols.iter().enumerate() {
                    stmt.raw_bind_parameter(c + 1, Bind(&col[r]))?;
                }
                stmt.raw_execute().map_err(row_err)?;
                upserted += 1;
                if let Some(rec) = &mut record {
                    for (k, &c) in self.key_at.iter().enumerate() {
                        rec.raw_bind_parameter(k + 1, Bind(&cols[c][r]))?;
                    }
                    rec.raw_execute()?;
                }
            }
        }
        Ok((upserted, deleted))
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

/// The name of the TEMP table of the keys a snapshot of `tbl` carried.
fn keys_table(tbl: &str) -> String {
    format!("sluice_snapshot_keys:{tbl}")
}

/// The snapshot in progress on this connection for `tbl`: (stream,
/// checkpoint, last page applied).
fn progress_of(conn: &Connection, tbl: &str) -> Res<Option<(i64, i64, u32)>> {
    if !temp_exists(conn, PROGRESS)? {
        return Ok(None);
    }
    Ok(conn
        .query_row(
            &format!("SELECT stream_id, last_seq, page FROM temp.{PROGRESS} WHERE tbl = ?1"),
            [tbl],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?)
}

fn set_progress(conn: &Connection, tbl: &str, stream: i64, last_seq: i64, page: u32) -> Res<()> {
    conn.execute_batch(&format!(
        "CREATE TEMP TABLE IF NOT EXISTS {PROGRESS} (
             tbl TEXT PRIMARY KEY,
             stream_id INTEGER NOT NULL,
             last_seq INTEGER NOT NULL,
             page INTEGER NOT NULL
         )"
    ))?;
    conn.execute(
        &format!("INSERT OR REPLACE INTO temp.{PROGRESS} VALUES (?1, ?2, ?3, ?4)"),
        params![tbl, stream, last_seq, page],
    )?;
    Ok(())
}

fn temp_exists(conn: &Connection, name: &str) -> Res<bool> {
    Ok(conn.query_row(
        "SELECT count(*) > 0 FROM temp.sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get(0),
    )?)
}

/// Forgets the snapshot of `tbl` in progress on this connection, if any:
/// its progress and its keys (an incremental batch, a new page 1, the last
/// page, or `sluice_unsubscribe`).
pub fn forget_snapshot(conn: &Connection, tbl: &str) -> Res<()> {
    if temp_exists(conn, PROGRESS)? {
        conn.execute(
            &format!("DELETE FROM temp.{PROGRESS} WHERE tbl = ?1"),
            [tbl],
        )?;
    }
    let keys = keys_table(tbl);
    if temp_exists(conn, &keys)? {
        conn.execute_batch(&format!("DROP TABLE temp.{}", quote_ident(&keys)))?;
    }
    Ok(())
}

/// Creates the TEMP table of the keys a snapshot carries, with the key
/// columns' declared types (so values compare as in the table).
fn create_keys(conn: &Connection, info: &TableInfo, key: &[String], keys: &str) -> Res<()> {
    let cols: Vec<String> = key
        .iter()
        .map(|k| {
            let decl = info
                .column(k)
                .map(|(_, c)| c.decl.clone())
                .unwrap_or_default();
            format!("{} {}", quote_ident(k), decl_type(&decl))
        })
        .collect();
    let names: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
    conn.execute_batch(&format!(
        "CREATE TEMP TABLE {} ({}, PRIMARY KEY ({})) WITHOUT ROWID",
        quote_ident(keys),
        cols.join(", "),
        names.join(", ")
    ))?;
    Ok(())
}

/// A declared type reduced to what gives the same affinity, so a type
/// name cannot carry SQL.
fn decl_type(decl: &str) -> &'static str {
    match sluice_wire::ColumnType::from_declared(decl) {
        sluice_wire::ColumnType::Integer => "INTEGER",
        sluice_wire::ColumnType::Real => "REAL",
        sluice_wire::ColumnType::Text => "TEXT",
        sluice_wire::ColumnType::Blob => "BLOB",
        sluice_wire::ColumnType::Numeric => "NUMERIC",
    }
}

/// The last page of a snapshot: deletes the rows whose key no page
/// carried. Returns how many.
fn sweep(conn: &Connection, info: &TableInfo, key: &[String], keys: &str) -> Res<i64> {
    let t = info.quoted();
    let k = quote_ident(keys);
    let cond: Vec<String> = key
        .iter()
        .map(|c| {
            let q = quote_ident(c);
            format!("s.{q} = {t}.{q}")
        })
        .collect();
    let n = conn.execute(
        &format!(
            "DELETE FROM main.{t} WHERE NOT EXISTS (SELECT 1 FROM temp.{k} AS s WHERE {})",
            cond.join(" AND ")
        ),
        [],
    )?;
    Ok(n as i64)
}
