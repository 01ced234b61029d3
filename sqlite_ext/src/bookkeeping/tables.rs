//! `sluice_tables`: one row per tracked table, its options (`mutable`,
//! `local_only`, `key_columns`, `time_column`) and its acknowledged state
//! (`acked_seq`, the watermark, and the counters), and the fork a new epoch
//! left on it (`fork_parent`, `fork_seq`).

use rusqlite::{params, Connection, OptionalExtension};

use super::{rollups, Table};
use crate::glue::{Fail, Res};
use crate::schema::TableInfo;

/// The registration of a tracked table, as the sync functions need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    pub tbl: String,
    pub mutable: bool,
    pub local_only: Vec<String>,
    pub key: Vec<String>,
    pub acked_seq: i64,
    /// The key columns a tombstone of the table carries: `Some` non-empty
    /// when its deletes are tracked, `Some([])` when they are not, `None`
    /// for a table tracked before 0.2 and not since (not tracked).
    pub delete_key: Option<Vec<String>>,
}

impl Tracked {
    /// The key of the table's tombstones, when its deletes are tracked.
    pub fn deletes(&self) -> Option<&[String]> {
        self.delete_key
            .as_deref()
            .filter(|k| self.mutable && !k.is_empty())
    }
}

/// A registration with everything `sluice_tracked` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub tracked: Tracked,
    pub time_column: Option<String>,
    pub acked_batches: i64,
    pub acked_rows: i64,
    /// Unix milliseconds.
    pub acked_at: Option<i64>,
}

fn list_of(tbl: &str, what: &str, s: &str) -> Res<Vec<String>> {
    serde_json::from_str(s)
        .map_err(|e| Fail(format!("sluice_tables.{what} of '{tbl}' is damaged: {e}")))
}

fn json_list(names: &[String]) -> Res<String> {
    serde_json::to_string(names).map_err(|e| Fail(e.to_string()))
}

/// `time_column`, or NULL on a database tracked before the column existed
/// and not written to since (read-only functions do not upgrade it).
fn time_column_sql(conn: &Connection) -> Res<&'static str> {
    let has: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('sluice_tables', 'main') \
         WHERE name = 'time_column'",
        [],
        |r| r.get(0),
    )?;
    Ok(if has { "time_column" } else { "NULL" })
}

/// `delete_key`, or NULL on a database not upgraded to bookkeeping 4.
fn delete_key_sql(conn: &Connection) -> Res<&'static str> {
    let has: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('sluice_tables', 'main') \
         WHERE name = 'delete_key'",
        [],
        |r| r.get(0),
    )?;
    Ok(if has { "delete_key" } else { "NULL" })
}

fn opt_list_of(tbl: &str, s: Option<String>) -> Res<Option<Vec<String>>> {
    s.map(|s| list_of(tbl, "delete_key", &s)).transpose()
}

/// The registrations, sorted by table name; only `only` when given.
pub fn list(conn: &Connection, only: Option<&str>) -> Res<Vec<Registration>> {
    if !Table::Tables.exists(conn)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT tbl, mutable, local_only, key_columns, {}, acked_seq, acked_batches, \
                acked_rows, acked_at, {} \
           FROM main.sluice_tables WHERE ?1 IS NULL OR tbl = ?1 ORDER BY tbl",
        time_column_sql(conn)?,
        delete_key_sql(conn)?
    ))?;
    let rows = stmt
        .query_map(params![only], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, Option<i64>>(8)?,
                r.get::<_, Option<String>>(9)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(
            |(
                tbl,
                mutable,
                local_only,
                key,
                time_column,
                acked_seq,
                batches,
                acked_rows,
                at,
                del,
            )| {
                Ok(Registration {
                    tracked: Tracked {
                        delete_key: opt_list_of(&tbl, del)?,
                        local_only: list_of(&tbl, "local_only", &local_only)?,
                        key: list_of(&tbl, "key_columns", &key)?,
                        tbl,
                        mutable,
                        acked_seq,
                    },
                    time_column,
                    acked_batches: batches,
                    acked_rows,
                    acked_at: at,
                })
            },
        )
        .collect()
}

/// The registration of `tbl` (canonical name), if it is tracked.
pub fn get(conn: &Connection, tbl: &str) -> Res<Option<Tracked>> {
    if !Table::Tables.exists(conn)? {
        return Ok(None);
    }
    let row = conn
        .query_row(
            &format!(
                "SELECT tbl, mutable, local_only, key_columns, acked_seq, {} \
                   FROM main.sluice_tables WHERE tbl = ?1",
                delete_key_sql(conn)?
            ),
            [tbl],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, bool>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            },
        )
        .optional()?;
    let Some((tbl, mutable, local_only, key, acked_seq, del)) = row else {
        return Ok(None);
    };
    Ok(Some(Tracked {
        delete_key: opt_list_of(&tbl, del)?,
        local_only: list_of(&tbl, "local_only", &local_only)?,
        key: list_of(&tbl, "key_columns", &key)?,
        tbl,
        mutable,
        acked_seq,
    }))
}

/// The table's registration, or an error saying how to track it.
pub fn require(conn: &Connection, info: &TableInfo) -> Res<Tracked> {
    get(conn, &info.name)?.ok_or_else(|| {
        Fail(format!(
            "table '{}' is not tracked; register it with SELECT sluice_track('{}')",
            info.name,
            info.name.replace('\'', "''")
        ))
    })
}

/// Registers `tbl`, or updates its options (a `time_column` of `None` keeps
/// the one stored); the watermark and counters stay.
#[allow(clippy::too_many_arguments)]
pub fn upsert(
    conn: &Connection,
    tbl: &str,
    mutable: bool,
    local_only: &[String],
    key: &[String],
    delete_key: &[String],
    time_column: Option<&str>,
    now_ms: i64,
) -> Res<()> {
    conn.execute(
        "INSERT INTO main.sluice_tables \
         (tbl, mutable, local_only, key_columns, created_at, time_column, delete_key) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (tbl) DO UPDATE SET local_only = excluded.local_only, \
         key_columns = excluded.key_columns, delete_key = excluded.delete_key, \
         time_column = coalesce(excluded.time_column, sluice_tables.time_column)",
        params![
            tbl,
            mutable,
            json_list(local_only)?,
            json_list(key)?,
            now_ms,
            time_column,
            json_list(delete_key)?
        ],
    )?;
    Ok(())
}

/// Counts an acknowledged batch of `rows` rows of `tbl` at `now_ms`; with
/// `Some(seq)` its watermark moves to `seq`.
pub fn record_ack(
    conn: &Connection,
    tbl: &str,
    watermark: Option<i64>,
    rows: i64,
    now_ms: i64,
) -> Res<()> {
    conn.execute(
        "UPDATE main.sluice_tables SET acked_seq = coalesce(?1, acked_seq), acked_at = ?2, \
         acked_batches = acked_batches + 1, acked_rows = acked_rows + ?3 \
         WHERE tbl = ?4",
        params![watermark, now_ms, rows, tbl],
    )?;
    Ok(())
}

/// The time column of a tracked table: the `time` option of `sluice_track`,
/// else the time column of a rollup that reads it, else `window_start` of a
/// rollup target.
pub fn time_column(conn: &Connection, tbl: &str) -> Res<Option<String>> {
    if Table::Tables.exists(conn)? {
        let own: Option<String> = conn
            .query_row(
                &format!(
                    "SELECT {} FROM main.sluice_tables WHERE tbl = ?1",
                    time_column_sql(conn)?
                ),
                [tbl],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        if own.is_some() {
            return Ok(own);
        }
    }
    rollups::time_column_of(conn, tbl)
}

/// Every tracked table with its own time column (`sluice_track`'s `time`),
/// by name.
pub fn with_time_column(conn: &Connection) -> Res<Vec<(String, String)>> {
    if !Table::Tables.exists(conn)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT tbl, {} FROM main.sluice_tables ORDER BY tbl",
        time_column_sql(conn)?
    ))?;
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        .filter_map(|(t, c)| c.map(|c| (t, c)))
        .collect())
}

/// Whether `sluice_tables` has the fork columns (bookkeeping version 3; a
/// database upgraded by no write yet has not).
fn has_fork(conn: &Connection) -> Res<bool> {
    Ok(conn.query_row(
        "SELECT count(*) = 2 FROM pragma_table_info('sluice_tables', 'main') \
         WHERE name IN ('fork_parent', 'fork_seq')",
        [],
        |r| r.get(0),
    )?)
}

/// The fork of `tbl` (the stream it continued and the largest sequence
/// number it had then), if a new epoch left one that is not forgotten yet.
/// The table and its columns are looked for only when the query fails (it is
/// read for every batch and acknowledgement).
pub fn fork(conn: &Connection, tbl: &str) -> Res<Option<sluice_wire::Fork>> {
    let row: Option<(Option<i64>, Option<i64>)> = match conn
        .query_row(
            "SELECT fork_parent, fork_seq FROM main.sluice_tables WHERE tbl = ?1",
            [tbl],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
    {
        Ok(row) => row,
        Err(_) if !Table::Tables.exists(conn)? || !has_fork(conn)? => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(match row {
        Some((Some(parent), Some(fork_seq))) if parent > 0 => Some(sluice_wire::Fork {
            parent_stream: parent as u64,
            fork_seq,
        }),
        _ => None,
    })
}

/// Sets the fork of `tbl`, or forgets it with `None` (the bookkeeping must
/// be at the current version: [`super::ensure`]).
pub fn set_fork(conn: &Connection, tbl: &str, fork: Option<(i64, i64)>) -> Res<()> {
    conn.execute(
        "UPDATE main.sluice_tables SET fork_parent = ?2, fork_seq = ?3 WHERE tbl = ?1",
        params![tbl, fork.map(|f| f.0), fork.map(|f| f.1)],
    )?;
    Ok(())
}

/// Records the largest sequence number `tbl` had when the current epoch
/// began (0 for an empty table). Unlike the fork, it is never forgotten
/// (the bookkeeping must be at the current version: [`super::ensure`]).
pub fn set_epoch_seq(conn: &Connection, tbl: &str, seq: i64) -> Res<()> {
    conn.execute(
        "UPDATE main.sluice_tables SET epoch_seq = ?2 WHERE tbl = ?1",
        params![tbl, seq],
    )?;
    Ok(())
}

/// The largest sequence number `tbl` had when the current epoch began, if
/// an epoch began since the table was tracked under bookkeeping version 5
/// or later (rows up to it were written under an earlier stream).
pub fn epoch_seq(conn: &Connection, tbl: &str) -> Res<Option<i64>> {
    let has: bool = Table::Tables.exists(conn)?
        && conn.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('sluice_tables', 'main') \
             WHERE name = 'epoch_seq'",
            [],
            |r| r.get(0),
        )?;
    if !has {
        return Ok(None);
    }
    Ok(conn
        .query_row(
            "SELECT epoch_seq FROM main.sluice_tables WHERE tbl = ?1",
            [tbl],
            |r| r.get::<_, Option<i64>>(0),
        )
        .optional()?
        .flatten())
}

/// When `tbl` was first tracked (unix milliseconds), if known.
pub fn created_at(conn: &Connection, tbl: &str) -> Res<Option<i64>> {
    if !Table::Tables.exists(conn)? {
        return Ok(None);
    }
    Ok(conn
        .query_row(
            "SELECT created_at FROM main.sluice_tables WHERE tbl = ?1",
            [tbl],
            |r| r.get::<_, Option<i64>>(0),
        )
        .optional()?
        .flatten())
}
