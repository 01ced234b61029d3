//! `sluice_streams`: the history of this database's streams (its epochs),
//! oldest first. The current stream is the one in `sluice_meta`
//! ([`super::meta::stream_id`]); each later epoch names the one before it
//! as its parent.

use rusqlite::{params, Connection, OptionalExtension};

use super::{meta, Table};
use crate::glue::Res;

/// The reason recorded for the stream of a database made before epochs
/// existed (bookkeeping version 3).
pub const EXISTING_REASON: &str = "existing before sluice 0.2";
/// The reason recorded for the first stream of a new database.
pub const CREATED_REASON: &str = "created";

/// One epoch of the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    pub stream_id: i64,
    /// The stream before it; `None` for the first.
    pub parent_stream: Option<i64>,
    /// ISO-8601, UTC.
    pub started_at: Option<String>,
    pub reason: String,
    /// The machine id recorded when it started (or later, by the first
    /// `sluice_machine`).
    pub machine: Option<String>,
}

/// SQL of an ISO-8601 UTC time from unix milliseconds `ms`.
fn iso_sql(ms: &str) -> String {
    format!("strftime('%Y-%m-%dT%H:%M:%fZ', {ms} / 1000.0, 'unixepoch')")
}

/// Records the stream in `sluice_meta` as the first epoch, started when its
/// first table was tracked (else now), if the history does not have it.
pub fn record_existing(conn: &Connection, reason: &str) -> Res<()> {
    let Ok(stream) = meta::stream_id(conn) else {
        return Ok(());
    };
    let started = iso_sql(&format!(
        "coalesce((SELECT min(created_at) FROM main.sluice_tables), {})",
        crate::glue::now_ms()
    ));
    conn.execute(
        &format!(
            "INSERT OR IGNORE INTO main.sluice_streams (stream_id, parent_stream, started_at, \
             reason, machine) VALUES (?1, NULL, {started}, ?2, NULL)"
        ),
        params![stream, reason],
    )?;
    Ok(())
}

/// The first epoch of a database whose bookkeeping was just made: it was
/// created now, and was not there before sluice 0.2.
pub fn first_is_created(conn: &Connection) -> Res<()> {
    conn.execute(
        &format!(
            "UPDATE main.sluice_streams SET reason = ?1, started_at = {} \
             WHERE n = (SELECT min(n) FROM main.sluice_streams)",
            iso_sql(&crate::glue::now_ms().to_string())
        ),
        params![CREATED_REASON],
    )?;
    Ok(())
}

/// Whether `stream` was ever a stream of this database.
pub fn known(conn: &Connection, stream: i64) -> Res<bool> {
    if !Table::Streams.exists(conn)? {
        return Ok(meta::stream_id(conn).is_ok_and(|s| s == stream));
    }
    Ok(conn
        .query_row(
            "SELECT 1 FROM main.sluice_streams WHERE stream_id = ?1",
            [stream],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Appends a new epoch (the bookkeeping must exist: [`super::ensure`]).
pub fn record(
    conn: &Connection,
    stream: i64,
    parent: i64,
    now_ms: i64,
    reason: &str,
    machine: Option<&str>,
) -> Res<()> {
    conn.execute(
        &format!(
            "INSERT INTO main.sluice_streams (stream_id, parent_stream, started_at, reason, \
             machine) VALUES (?1, ?2, {}, ?3, ?4)",
            iso_sql("?5")
        ),
        params![stream, parent, reason, machine, now_ms],
    )?;
    Ok(())
}

/// Records `machine` on the current epoch if it has none yet (the first
/// `sluice_machine` of a database).
pub fn set_machine_if_unknown(conn: &Connection, stream: i64, machine: &str) -> Res<()> {
    conn.execute(
        "UPDATE main.sluice_streams SET machine = ?2 WHERE stream_id = ?1 AND machine IS NULL",
        params![stream, machine],
    )?;
    Ok(())
}

/// The epochs, oldest first. A database whose bookkeeping predates the
/// history (read without being upgraded) shows its one stream as the
/// upgrade will record it; a database without bookkeeping has none.
pub fn list(conn: &Connection) -> Res<Vec<Epoch>> {
    if !Table::Streams.exists(conn)? {
        let Ok(stream) = meta::stream_id(conn) else {
            return Ok(Vec::new());
        };
        let started: Option<String> = if Table::Tables.exists(conn)? {
            conn.query_row(
                &format!(
                    "SELECT {} FROM main.sluice_tables WHERE created_at IS NOT NULL",
                    iso_sql("min(created_at)")
                ),
                [],
                |r| r.get(0),
            )?
        } else {
            None
        };
        return Ok(vec![Epoch {
            stream_id: stream,
            parent_stream: None,
            started_at: started,
            reason: EXISTING_REASON.to_string(),
            machine: None,
        }]);
    }
    let mut stmt = conn.prepare(
        "SELECT stream_id, parent_stream, started_at, reason, machine \
           FROM main.sluice_streams ORDER BY n",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Epoch {
            stream_id: r.get(0)?,
            parent_stream: r.get(1)?,
            started_at: r.get(2)?,
            reason: r.get(3)?,
            machine: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
