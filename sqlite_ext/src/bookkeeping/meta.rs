//! `sluice_meta`: the device id, this database's stream id, the machine it
//! runs on and the device's zone (`sluice_machine`, `sluice_zone`), and the
//! seals that `sluice_cleanup` leaves on rollup sources (the bookkeeping
//! version is kept here too, by [`super::version`]).

use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension};

use super::Table;
use crate::glue::{Fail, Res};

/// A value of `sluice_meta`, if the table and the key exist (NULL is none).
/// The table is looked for only when the query fails: `sluice_batch` reads
/// four keys per batch.
fn get(conn: &Connection, key: &str) -> Res<Option<Value>> {
    let v = conn
        .query_row(
            "SELECT value FROM main.sluice_meta WHERE key = ?1",
            [key],
            |r| r.get(0),
        )
        .optional();
    match v {
        Ok(v) => Ok(v.filter(|v| *v != Value::Null)),
        Err(_) if !Table::Meta.exists(conn)? => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn set(conn: &Connection, key: &str, value: &dyn rusqlite::ToSql) -> Res<()> {
    conn.execute(
        "INSERT INTO main.sluice_meta (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// The device id as stored (text), if one was set.
pub fn device_id(conn: &Connection) -> Res<Option<Value>> {
    get(conn, "device_id")
}

/// Sets the device id (the bookkeeping must exist: [`super::ensure`]).
pub fn set_device_id(conn: &Connection, id: &str) -> Res<()> {
    set(conn, "device_id", &id)
}

/// This database's stream id.
pub fn stream_id(conn: &Connection) -> Res<i64> {
    match get(conn, "stream_id")? {
        Some(Value::Integer(i)) => Ok(i),
        _ => Err(Fail(
            "this database has no stream id in sluice_meta; track a table first".to_string(),
        )),
    }
}

/// Makes `stream` this database's stream (a new epoch).
pub fn set_stream_id(conn: &Connection, stream: i64) -> Res<()> {
    set(conn, "stream_id", &stream)
}

/// The machine id recorded by `sluice_machine`, if any.
pub fn machine(conn: &Connection) -> Res<Option<String>> {
    Ok(match get(conn, "machine")? {
        Some(Value::Text(m)) => Some(m),
        _ => None,
    })
}

/// Records the machine id (the bookkeeping must exist).
pub fn set_machine(conn: &Connection, machine: &str) -> Res<()> {
    set(conn, "machine", &machine)
}

/// The device's zone as `sluice_zone` stored it; `None` is UTC.
pub fn zone(conn: &Connection) -> Res<Option<String>> {
    Ok(match get(conn, "zone")? {
        Some(Value::Text(z)) => Some(z),
        _ => None,
    })
}

/// Records the device's zone (the bookkeeping must exist).
pub fn set_zone(conn: &Connection, zone: &str) -> Res<()> {
    set(conn, "zone", &zone)
}

/// Key prefix of the seal that `sluice_cleanup` leaves on a rollup source
/// (`sealed_until:<table>`, unix seconds).
const SEALED_KEY: &str = "sealed_until:";

/// The seal cleanup left on `source`, if any.
pub fn cleanup_seal(conn: &Connection, source: &str) -> Res<Option<i64>> {
    Ok(match get(conn, &format!("{SEALED_KEY}{source}"))? {
        Some(Value::Integer(i)) => Some(i),
        _ => None,
    })
}

/// Raises the seal of `source` to `until` (never lowers it).
pub fn raise_cleanup_seal(conn: &Connection, source: &str, until: i64) -> Res<()> {
    conn.execute(
        "INSERT INTO main.sluice_meta (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
        params![format!("{SEALED_KEY}{source}"), until],
    )?;
    Ok(())
}
