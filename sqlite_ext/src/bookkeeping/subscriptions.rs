//! `sluice_subscriptions`: the local tables that receive a published cloud
//! table (the cloud-to-edge direction, issue 13). One row per table: the key
//! the changes are applied by (`key_columns`), the columns the cloud owns
//! and may write (`columns`, NULL: any column of the table but sluice's),
//! the cloud stream (`stream_id`, the publication's random id) and the
//! checkpoint applied so far, the counters, and when it was subscribed and
//! last applied. `sluice_apply` moves the checkpoint in the same savepoint
//! as the rows.

use rusqlite::{params, Connection, OptionalExtension};

use super::Table;
use crate::glue::{Fail, Res};

/// The DDL of the table (bookkeeping version 6).
pub(super) const CREATE: &str = "CREATE TABLE IF NOT EXISTS main.sluice_subscriptions (
     tbl TEXT PRIMARY KEY,
     key_columns TEXT NOT NULL,
     columns TEXT,
     stream_id INTEGER NOT NULL DEFAULT 0,
     checkpoint INTEGER NOT NULL DEFAULT 0,
     batches INTEGER NOT NULL DEFAULT 0,
     upserted INTEGER NOT NULL DEFAULT 0,
     deleted INTEGER NOT NULL DEFAULT 0,
     snapshots INTEGER NOT NULL DEFAULT 0,
     subscribed_at TEXT,
     applied_at TEXT
 );";

/// A subscription, as `sluice_apply` needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub tbl: String,
    pub key: Vec<String>,
    /// The columns the cloud may write; `None`: any column but sluice's.
    pub columns: Option<Vec<String>>,
    /// The publication's stream id (u64 bits); 0 before the first snapshot.
    pub stream_id: i64,
    /// The last cloud position applied; 0 before the first snapshot.
    pub checkpoint: i64,
    pub batches: i64,
    pub upserted: i64,
    pub deleted: i64,
    pub snapshots: i64,
    pub subscribed_at: Option<String>,
    pub applied_at: Option<String>,
}

fn list_of(tbl: &str, what: &str, s: &str) -> Res<Vec<String>> {
    serde_json::from_str(s).map_err(|e| {
        Fail(format!(
            "sluice_subscriptions.{what} of '{tbl}' is damaged: {e}"
        ))
    })
}

fn json_list(names: &[String]) -> Res<String> {
    serde_json::to_string(names).map_err(|e| Fail(e.to_string()))
}

/// The subscription of `tbl` (canonical name), if any; none on a database
/// without the table.
pub fn get(conn: &Connection, tbl: &str) -> Res<Option<Subscription>> {
    if !Table::Subscriptions.exists(conn)? {
        return Ok(None);
    }
    let row = conn
        .query_row(
            "SELECT tbl, key_columns, columns, stream_id, checkpoint, batches, upserted, \
                    deleted, snapshots, subscribed_at, applied_at \
               FROM main.sluice_subscriptions WHERE tbl = ?1 COLLATE NOCASE",
            [tbl],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, i64>(7)?,
                    r.get::<_, i64>(8)?,
                    r.get::<_, Option<String>>(9)?,
                    r.get::<_, Option<String>>(10)?,
                ))
            },
        )
        .optional()?;
    let Some((
        tbl,
        key,
        columns,
        stream_id,
        checkpoint,
        batches,
        upserted,
        deleted,
        snapshots,
        at,
        applied,
    )) = row
    else {
        return Ok(None);
    };
    Ok(Some(Subscription {
        key: list_of(&tbl, "key_columns", &key)?,
        columns: columns.map(|c| list_of(&tbl, "columns", &c)).transpose()?,
        tbl,
        stream_id,
        checkpoint,
        batches,
        upserted,
        deleted,
        snapshots,
        subscribed_at: at,
        applied_at: applied,
    }))
}

/// Records or changes the subscription of `tbl` (the bookkeeping must
/// exist). A new subscription, or one whose key changed, starts over at
/// checkpoint 0 and stream 0: its next batch must be a snapshot.
pub fn upsert(
    conn: &Connection,
    tbl: &str,
    key: &[String],
    columns: Option<&[String]>,
    reset: bool,
    now: &str,
) -> Res<()> {
    let columns = columns.map(json_list).transpose()?;
    conn.execute(
        "INSERT INTO main.sluice_subscriptions (tbl, key_columns, columns, subscribed_at) \
         VALUES (?1, ?2, ?3, ?5) \
         ON CONFLICT (tbl) DO UPDATE SET key_columns = excluded.key_columns, \
             columns = excluded.columns, \
             stream_id = CASE WHEN ?4 THEN 0 ELSE stream_id END, \
             checkpoint = CASE WHEN ?4 THEN 0 ELSE checkpoint END",
        params![tbl, json_list(key)?, columns, reset, now],
    )?;
    Ok(())
}

/// Forgets the subscription of `tbl`; whether there was one.
pub fn remove(conn: &Connection, tbl: &str) -> Res<bool> {
    if !Table::Subscriptions.exists(conn)? {
        return Ok(false);
    }
    Ok(conn.execute(
        "DELETE FROM main.sluice_subscriptions WHERE tbl = ?1 COLLATE NOCASE",
        [tbl],
    )? > 0)
}

/// What one applied batch adds to a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub stream_id: i64,
    pub checkpoint: i64,
    pub upserted: i64,
    pub deleted: i64,
    /// A snapshot was completed by this batch.
    pub snapshot_done: bool,
}

/// Records an applied batch: the new stream and checkpoint and the counters.
pub fn record(conn: &Connection, tbl: &str, a: Applied, now: &str) -> Res<()> {
    conn.execute(
        "UPDATE main.sluice_subscriptions SET stream_id = ?2, checkpoint = ?3, \
             batches = batches + 1, upserted = upserted + ?4, deleted = deleted + ?5, \
             snapshots = snapshots + ?6, applied_at = ?7 \
         WHERE tbl = ?1",
        params![
            tbl,
            a.stream_id,
            a.checkpoint,
            a.upserted,
            a.deleted,
            i64::from(a.snapshot_done),
            now
        ],
    )?;
    Ok(())
}

/// Counts a page of a snapshot that is not its last: the rows, not the
/// checkpoint (which moves only with the last page).
pub fn record_page(conn: &Connection, tbl: &str, upserted: i64, now: &str) -> Res<()> {
    conn.execute(
        "UPDATE main.sluice_subscriptions SET batches = batches + 1, \
             upserted = upserted + ?2, applied_at = ?3 WHERE tbl = ?1",
        params![tbl, upserted, now],
    )?;
    Ok(())
}
