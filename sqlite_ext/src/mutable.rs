//! The version column and the triggers of a mutable tracked table: every
//! insert or update gives the row the next version from `sluice_clock`,
//! so that it is pending; an update that `sluice_apply` makes (while
//! [`tombstones::quietly`] runs) keeps the row's version, so that what the
//! cloud wrote is not sent back (the quiet rule, docs/sqlite.md "Cloud to
//! edge"). Used by `sluice_track`, and by `sluice_subscribe` and
//! `sluice_apply` for a table tracked before the quiet rule.

use rusqlite::{Connection, OptionalExtension};
use sluice_wire::names::quote_ident;

use crate::bookkeeping::{clock, tombstones};
use crate::glue::Res;
use crate::schema::TableInfo;
use crate::sequence::VERSION_COLUMN;

/// Adds the version column, its index and the triggers of a mutable table,
/// and gives every row without a version one.
pub fn setup_mutable(conn: &Connection, info: &TableInfo) -> Res<()> {
    let t = info.quoted();
    let v = quote_ident(VERSION_COLUMN);
    if info.column(VERSION_COLUMN).is_none() {
        conn.execute_batch(&format!("ALTER TABLE main.{t} ADD COLUMN {v} INTEGER"))?;
    }
    let index = quote_ident(&format!("{}_sluice_version", info.name));
    let ins = quote_ident(&format!("{}_sluice_insert", info.name));
    let upd = quote_ident(&format!("{}_sluice_update", info.name));
    // Which row the trigger fired for: the rowid, or the primary key of a
    // WITHOUT ROWID table.
    let this_row = if info.without_rowid {
        info.columns
            .iter()
            .filter(|c| c.pk > 0)
            .map(|c| {
                let q = quote_ident(&c.name);
                format!("{q} IS NEW.{q}")
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    } else {
        "_rowid_ = NEW._rowid_".to_string()
    };
    let bump = clock::next_version_sql(&t, &v, &this_row);
    // Updates that sluice_apply makes (quietly) keep the row's version: a
    // row the cloud wrote is not pending for the way up (the quiet rule,
    // docs/sqlite.md "Cloud to edge"); the edge's own later updates bump
    // it.
    let quiet = tombstones::not_quiet_sql();
    conn.execute_batch(&format!(
        "CREATE INDEX IF NOT EXISTS main.{index} ON {t} ({v});"
    ))?;
    clock::raise_past(conn, &t, &v)?;
    conn.execute_batch(&format!(
        "DROP TRIGGER IF EXISTS main.{ins};
         DROP TRIGGER IF EXISTS main.{upd};
         CREATE TRIGGER main.{ins} AFTER INSERT ON {t} FOR EACH ROW
           WHEN NEW.{v} IS NULL
         BEGIN {bump} END;
         CREATE TRIGGER main.{upd} AFTER UPDATE ON {t} FOR EACH ROW
           WHEN (NEW.{v} IS OLD.{v} OR NEW.{v} IS NULL) AND {quiet}
         BEGIN {bump} END;
         UPDATE main.{t} SET {v} = NULL WHERE {v} IS NULL;"
    ))?;
    Ok(())
}

/// For `sluice_apply` and `sluice_subscribe`: makes sure the update trigger
/// of the mutable tracked table `info` keeps quiet while sluice_apply
/// writes (a table tracked by a release before the cloud-to-edge direction
/// has a trigger without the test); re-creates the triggers when not.
pub fn ensure_quiet_triggers(conn: &Connection, info: &TableInfo) -> Res<()> {
    let upd = format!("{}_sluice_update", info.name);
    let sql: Option<String> = conn
        .query_row(
            "SELECT sql FROM main.sqlite_master WHERE type = 'trigger' AND name = ?1",
            [&upd],
            |r| r.get(0),
        )
        .optional()?;
    if sql.is_some_and(|s| s.contains(&tombstones::not_quiet_sql())) {
        return Ok(());
    }
    setup_mutable(conn, info)
}
