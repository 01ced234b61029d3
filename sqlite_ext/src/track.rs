//! Registering: `sluice_device` (the device id) and `sluice_track` (a table
//! for sync; a mutable table gets its version column and triggers).
//!
//! A tracked table has a watermark `acked_seq`; a row is pending when its
//! sequence number (the rowid of an append-only table, the `sluice_version`
//! of a mutable one) is above it (docs/sync-protocol.md).

use rusqlite::functions::Context;
use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;
use sluice_wire::names::{check_device_id, quote_ident};

use crate::bookkeeping::{self, meta, subscriptions, tables, tombstones};
use crate::glue::{
    arg_opt_text, arg_raw, arg_text, atomic, connection, describe_value, finish, now_ms, Fail, Res,
};
use crate::mutable::setup_mutable;
use crate::options::{parse_track_options, TrackOptions};
use crate::schema::{table_info, TableInfo};

/// `sluice_device()` → the device id or NULL; `sluice_device(id)` sets it.
pub fn sluice_device(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_device", device(ctx))
}

fn device(ctx: &Context<'_>) -> Res<Value> {
    let conn = connection(ctx)?;
    if ctx.is_empty() {
        return Ok(meta::device_id(&conn)?.unwrap_or(Value::Null));
    }
    let id = match arg_raw(ctx, 0)? {
        ValueRef::Text(_) => arg_text(ctx, 0, "the device id")?,
        other => {
            return Err(Fail(format!(
                "the device id must be text, got {}",
                describe_value(other)
            )))
        }
    };
    check_device_id(id).map_err(Fail)?;
    atomic(&conn, "sluice_device", || {
        bookkeeping::ensure(&conn)?;
        meta::set_device_id(&conn, id)
    })?;
    Ok(Value::Text(id.to_string()))
}

// ---------------------------------------------------------------------------
// sluice_track

/// `sluice_track(table [, options])` → 1.
pub fn sluice_track(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_track", track(ctx))
}

fn track(ctx: &Context<'_>) -> Res<Value> {
    let table = arg_text(ctx, 0, "the table name")?;
    let opts = match arg_opt_text(ctx, 1, "options")? {
        Some(text) => parse_track_options(text)?,
        None => TrackOptions::default(),
    };
    let conn = connection(ctx)?;
    let info = table_info(&conn, table)?;
    if info.name.to_ascii_lowercase().starts_with("sqlite_")
        || bookkeeping::is_bookkeeping(&info.name)
    {
        return Err(Fail(format!(
            "'{}' is an internal table and cannot be tracked",
            info.name
        )));
    }
    atomic(&conn, "sluice_track", || {
        bookkeeping::ensure(&conn)?;
        let existing = tables::get(&conn, &info.name)?;
        let mutable = match (&existing, opts.mutable) {
            (Some(e), Some(m)) if e.mutable != m => {
                return Err(Fail(format!(
                    "'{}' is already tracked as {}; changing \"mutable\" of a tracked table is \
                     not supported (its sequence numbers would change meaning)",
                    info.name,
                    if e.mutable { "mutable" } else { "append-only" }
                )))
            }
            (Some(e), _) => e.mutable,
            (None, m) => m.unwrap_or(false),
        };
        if !mutable && subscriptions::get(&conn, &info.name)?.is_some() {
            // Its rows would be numbered by rowid, and every row the cloud
            // writes would be sent back up (the quiet rule needs versions).
            return Err(Fail(format!(
                "'{}' is subscribed (sluice_subscribe): it can be tracked only as mutable, so that the rows the cloud writes are not sent back: SELECT sluice_track('{}', '{{\"mutable\": true}}')",
                info.name,
                info.name.replace('\'', "''")
            )));
        }
        let local_only = canonical_columns(
            &info,
            "local_only",
            opts.local_only
                .or_else(|| existing.as_ref().map(|e| e.local_only.clone()))
                .unwrap_or_default(),
        )?;
        let key = canonical_columns(
            &info,
            "key",
            opts.key
                .or_else(|| existing.as_ref().map(|e| e.key.clone()))
                .unwrap_or_default(),
        )?;
        let time_column = match &opts.time {
            Some(t) => Some(canonical_columns(&info, "time", vec![t.clone()])?.remove(0)),
            None => None,
        };
        let delete_key = if mutable {
            let track_deletes = opts.deletes.unwrap_or_else(|| {
                // A re-track keeps the choice; a table tracked before 0.2
                // (no choice stored) takes the default.
                existing
                    .as_ref()
                    .and_then(|e| e.delete_key.as_ref())
                    .is_none_or(|k| !k.is_empty())
            });
            let dk = if track_deletes {
                delete_key(&info, &key, &local_only)?
            } else {
                Vec::new()
            };
            let before = existing.as_ref().and_then(|e| e.deletes()).unwrap_or(&[]);
            if before != dk.as_slice() && tombstones::any(&conn, &info.name)? {
                return Err(Fail(format!(
                    "'{}' has deletes not yet sent; sync them before changing its key or                      \"deletes\"",
                    info.name
                )));
            }
            setup_mutable(&conn, &info)?;
            setup_deletes(&conn, &info, &dk)?;
            dk
        } else {
            if opts.deletes == Some(true) {
                return Err(Fail(format!(
                    "option 'deletes': '{}' is append-only; only the deletes of a mutable table                      are tracked (the cloud keeps what an append-only table sent)",
                    info.name
                )));
            }
            Vec::new()
        };
        if !mutable && info.rowid_alias().is_none() {
            return Err(Fail(format!(
                "append-only table '{}' needs an INTEGER PRIMARY KEY column (a rowid alias{}) to \
                 number its rows; add one, or track it as mutable: \
                 SELECT sluice_track('{}', '{{\"mutable\": true}}')",
                info.name,
                if info.without_rowid {
                    "; this is a WITHOUT ROWID table"
                } else {
                    ""
                },
                info.name.replace('\'', "''")
            )));
        }
        tables::upsert(
            &conn,
            &info.name,
            mutable,
            &local_only,
            &key,
            &delete_key,
            time_column.as_deref(),
            now_ms(),
        )?;
        Ok(())
    })?;
    Ok(Value::Integer(1))
}

/// Checks that every name is a column of the table; returns the names as the
/// schema spells them.
fn canonical_columns(info: &TableInfo, option: &str, names: Vec<String>) -> Res<Vec<String>> {
    names
        .iter()
        .map(|n| {
            info.column(n).map(|(_, c)| c.name.clone()).ok_or_else(|| {
                Fail(format!(
                    "option '{option}': table '{}' has no column '{n}'",
                    info.name
                ))
            })
        })
        .collect()
}

/// The columns that identify a row of a mutable table in the cloud, which a
/// tombstone carries: the `key` option, else the rowid alias or the
/// primary key.
fn delete_key(info: &TableInfo, key: &[String], local_only: &[String]) -> Res<Vec<String>> {
    let dk: Vec<String> = if !key.is_empty() {
        key.to_vec()
    } else if let Some(alias) = info.rowid_alias() {
        vec![alias.name.clone()]
    } else {
        let mut pk: Vec<_> = info.columns.iter().filter(|c| c.pk > 0).collect();
        pk.sort_by_key(|c| c.pk);
        pk.into_iter().map(|c| c.name.clone()).collect()
    };
    let hint = format!(
        "give its key with SELECT sluice_track('{0}', '{{\"key\": [\"column\", ...]}}'), or          turn delete tracking off with '{{\"deletes\": false}}'",
        info.name.replace('\'', "''")
    );
    if dk.is_empty() {
        return Err(Fail(format!(
            "mutable table '{}' has no key to send its deletes by (no primary key); {hint}",
            info.name
        )));
    }
    if dk.len() > tombstones::MAX_KEY_COLUMNS {
        return Err(Fail(format!(
            "the key of '{}' has {} columns; deletes are tracked for keys of at most {}: {hint}",
            info.name,
            dk.len(),
            tombstones::MAX_KEY_COLUMNS
        )));
    }
    if let Some(l) = dk
        .iter()
        .find(|k| local_only.iter().any(|l| l.eq_ignore_ascii_case(k)))
    {
        return Err(Fail(format!(
            "key column '{l}' of '{}' is local_only: a delete could not name its row in the              cloud; {hint}",
            info.name
        )));
    }
    Ok(dk)
}

/// Creates (or, with an empty `key`, drops) the triggers that record a
/// tombstone when a row is deleted or its key changes (a key change is a
/// delete of the old key and an insert of the new one). Not while sluice
/// deletes rows itself ([`tombstones::quietly`]).
fn setup_deletes(conn: &Connection, info: &TableInfo, key: &[String]) -> Res<()> {
    let t = info.quoted();
    let del = quote_ident(&format!("{}_sluice_delete", info.name));
    let rekey = quote_ident(&format!("{}_sluice_rekey", info.name));
    conn.execute_batch(&format!(
        "DROP TRIGGER IF EXISTS main.{del}; DROP TRIGGER IF EXISTS main.{rekey};"
    ))?;
    if key.is_empty() {
        return Ok(());
    }
    let record = tombstones::record_sql(&info.name, &tombstones::old_values(key));
    let quiet = tombstones::not_quiet_sql();
    let cols: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
    let changed: Vec<String> = cols
        .iter()
        .map(|c| format!("OLD.{c} IS NOT NEW.{c}"))
        .collect();
    conn.execute_batch(&format!(
        "CREATE TRIGGER main.{del} AFTER DELETE ON {t} FOR EACH ROW
           WHEN {quiet}
         BEGIN {record} END;
         CREATE TRIGGER main.{rekey} AFTER UPDATE OF {} ON {t} FOR EACH ROW
           WHEN ({}) AND {quiet}
         BEGIN {record} END;",
        cols.join(", "),
        changed.join(" OR ")
    ))?;
    Ok(())
}
