//! The cloud-to-edge direction, registering (issue 13):
//! `sluice_subscribe(table [, options])` makes a local table receive a
//! published cloud table, `sluice_unsubscribe(table)` stops it. The changes
//! themselves are applied by [`crate::apply`].
//!
//! A subscription names the key the changes are applied by (an upsert is
//! `INSERT ... ON CONFLICT (key) DO UPDATE`, so the key must be the primary
//! key or exactly the columns of a unique index) and the columns the cloud
//! owns (it writes only those; the edge's own columns keep their values).
//! A table tracked for the way up must be tracked as mutable: the rows
//! `sluice_apply` writes keep their versions, so they are not sent back.

use rusqlite::functions::Context;
use rusqlite::types::Value;
use rusqlite::Connection;
use serde_json::json;

use crate::bookkeeping::{self, subscriptions, tables};
use crate::glue::{arg_opt_text, arg_text, atomic, connection, finish, now_iso, Fail, Res};
use crate::mutable::ensure_quiet_triggers;
use crate::options::{parse_subscribe_options, SubscribeOptions};
use crate::schema::{table_info, TableInfo};
use crate::sequence::is_sluice_column;
use crate::snapshot::forget_snapshot;

/// `sluice_subscribe(table [, options])` → the subscription as JSON.
pub fn sluice_subscribe(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_subscribe", subscribe(ctx))
}

/// `sluice_unsubscribe(table)` → 1 if the table was subscribed, else 0.
pub fn sluice_unsubscribe(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_unsubscribe", unsubscribe(ctx))
}

fn subscribe(ctx: &Context<'_>) -> Res<Value> {
    let table = arg_text(ctx, 0, "the table name")?;
    let opts = match arg_opt_text(ctx, 1, "options")? {
        Some(text) => parse_subscribe_options(text)?,
        None => SubscribeOptions::default(),
    };
    let conn = connection(ctx)?;
    let info = table_info(&conn, table)?;
    if info.name.to_ascii_lowercase().starts_with("sqlite_")
        || bookkeeping::is_bookkeeping(&info.name)
    {
        return Err(Fail(format!(
            "'{}' is an internal table and cannot be subscribed",
            info.name
        )));
    }
    let out = atomic(&conn, "sluice_subscribe", || {
        bookkeeping::ensure(&conn)?;
        let existing = subscriptions::get(&conn, &info.name)?;
        let key = match opts
            .key
            .clone()
            .or_else(|| existing.as_ref().map(|e| e.key.clone()))
        {
            Some(k) => canonical(&info, "key", &k)?,
            None => default_key(&conn, &info)?,
        };
        check_unique(&conn, &info, &key)?;
        let columns = match opts
            .columns
            .clone()
            .or_else(|| existing.as_ref().and_then(|e| e.columns.clone()))
        {
            Some(c) => {
                let c = canonical(&info, "columns", &c)?;
                if let Some(k) = key.iter().find(|k| !c.contains(k)) {
                    return Err(Fail(format!(
                        "option 'columns' must include the key columns; '{k}' is missing"
                    )));
                }
                Some(c)
            }
            None => None,
        };
        if let Some(t) = tables::get(&conn, &info.name)? {
            if !t.mutable {
                return Err(Fail(format!(
                    "'{}' is tracked as append-only: the rows the cloud writes would be sent \
                     back up; track it as mutable to receive cloud changes",
                    info.name
                )));
            }
            ensure_quiet_triggers(&conn, &info)?;
        }
        let reset = existing.as_ref().is_some_and(|e| e.key != key);
        if reset {
            // A snapshot in progress on this connection recorded the old
            // key's values.
            forget_snapshot(&conn, &info.name)?;
        }
        subscriptions::upsert(
            &conn,
            &info.name,
            &key,
            columns.as_deref(),
            reset,
            &now_iso(&conn)?,
        )?;
        let s = subscriptions::get(&conn, &info.name)?
            .ok_or_else(|| Fail("the subscription was not recorded".to_string()))?;
        Ok(json!({
            "table": s.tbl,
            "key": s.key,
            "columns": s.columns,
            "stream_id": s.stream_id,
            "checkpoint": s.checkpoint,
        }))
    })?;
    Ok(Value::Text(out.to_string()))
}

fn unsubscribe(ctx: &Context<'_>) -> Res<Value> {
    let table = arg_text(ctx, 0, "the table name")?;
    let conn = connection(ctx)?;
    let removed = atomic(&conn, "sluice_unsubscribe", || {
        let Some(s) = subscriptions::get(&conn, table)? else {
            return Ok(false);
        };
        forget_snapshot(&conn, &s.tbl)?;
        subscriptions::remove(&conn, &s.tbl)
    })?;
    Ok(Value::Integer(i64::from(removed)))
}

/// The names as the schema spells them; refuses a column the table lacks
/// and sluice's own columns.
fn canonical(info: &TableInfo, option: &str, names: &[String]) -> Res<Vec<String>> {
    names
        .iter()
        .map(|n| {
            if is_sluice_column(n) {
                return Err(Fail(format!(
                    "option '{option}': '{n}' is sluice's own column; the cloud cannot write it"
                )));
            }
            info.column(n).map(|(_, c)| c.name.clone()).ok_or_else(|| {
                Fail(format!(
                    "option '{option}': table '{}' has no column '{n}'",
                    info.name
                ))
            })
        })
        .collect()
}

/// The unique indexes of the table (not partial), each as its columns;
/// the primary key among them, also when it is the rowid alias.
fn unique_keys(conn: &Connection, info: &TableInfo) -> Res<Vec<Vec<String>>> {
    let mut keys = Vec::new();
    if let Some(alias) = info.rowid_alias() {
        keys.push(vec![alias.name.clone()]);
    }
    let mut stmt = conn.prepare(
        "SELECT name FROM pragma_index_list(?1, 'main') WHERE \"unique\" AND NOT partial",
    )?;
    let names: Vec<String> = stmt
        .query_map([&info.name], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut cols = conn.prepare("SELECT name FROM pragma_index_info(?1, 'main') ORDER BY seqno")?;
    for index in names {
        let c: Vec<Option<String>> = cols
            .query_map([&index], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        // An index on an expression has a NULL name: no key of columns.
        if c.iter().all(Option::is_some) {
            keys.push(c.into_iter().flatten().collect());
        }
    }
    Ok(keys)
}

/// The default key: the primary key, else the only unique index.
fn default_key(conn: &Connection, info: &TableInfo) -> Res<Vec<String>> {
    let mut pk: Vec<_> = info.columns.iter().filter(|c| c.pk > 0).collect();
    pk.sort_by_key(|c| c.pk);
    if !pk.is_empty() {
        return Ok(pk.into_iter().map(|c| c.name.clone()).collect());
    }
    let keys = unique_keys(conn, info)?;
    match keys.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Fail(format!(
            "'{}' has no primary key and no unique index: changes are applied by a key; \
             add one, or give the key with '{{\"key\": [\"column\", ...]}}' and a unique \
             index on exactly those columns",
            info.name
        ))),
        _ => Err(Fail(format!(
            "'{}' has no primary key and {} unique indexes; say which key the changes are \
             applied by with '{{\"key\": [\"column\", ...]}}'",
            info.name,
            keys.len()
        ))),
    }
}

/// Refuses a key that no unique index (or the primary key) covers exactly:
/// `ON CONFLICT (key)` needs one.
fn check_unique(conn: &Connection, info: &TableInfo, key: &[String]) -> Res<()> {
    let same = |k: &Vec<String>| {
        k.len() == key.len()
            && key
                .iter()
                .all(|c| k.iter().any(|d| d.eq_ignore_ascii_case(c)))
    };
    if unique_keys(conn, info)?.iter().any(same) {
        return Ok(());
    }
    Err(Fail(format!(
        "the key ({}) of '{}' is not its primary key nor exactly the columns of a unique \
         index; changes are applied with INSERT ... ON CONFLICT (key), which needs one: \
         CREATE UNIQUE INDEX ... ON {} ({})",
        key.join(", "),
        info.name,
        info.quoted(),
        key.iter()
            .map(|k| sluice_wire::names::quote_ident(k))
            .collect::<Vec<_>>()
            .join(", ")
    )))
}
