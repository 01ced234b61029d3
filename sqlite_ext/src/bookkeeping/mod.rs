//! The bookkeeping tables: every `sluice_*` table and view of an edge
//! database is created, upgraded and read here, and nowhere else.
//!
//! - this file: the DDL, the bookkeeping schema version kept in
//!   `sluice_meta` (`schema_version`) with its ordered upgrades, and the one
//!   way to ask whether a bookkeeping table exists ([`Table::exists`]);
//! - the submodules are the typed accessors, one per table (or pair of
//!   tables that are only ever read together).
//!
//! Functions that write call [`ensure`] inside their savepoint: it brings
//! the bookkeeping of any database, from none at all to one made by an older
//! release, up to [`VERSION`]. Functions that only read never create or
//! upgrade anything: they read a missing table as empty.

pub mod acks;
pub mod budget;
pub mod clock;
pub mod drops;
pub mod meta;
pub mod quarantine;
pub mod ranges;
pub mod resends;
pub mod rollups;
pub mod streams;
pub mod subscriptions;
pub mod tables;
pub mod tombstones;

use rusqlite::{Connection, OptionalExtension};

use crate::glue::{Fail, Res};

/// The bookkeeping tables and views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Meta,
    Tables,
    Acks,
    Clock,
    Drops,
    AckedRanges,
    Rollups,
    RollupSkipped,
    BudgetState,
    Streams,
    Tombstones,
    Quarantine,
    Resends,
    Subscriptions,
}

impl Table {
    /// Every bookkeeping table; none of them can be tracked.
    pub const ALL: [Table; 14] = [
        Table::Meta,
        Table::Tables,
        Table::Acks,
        Table::Clock,
        Table::Drops,
        Table::AckedRanges,
        Table::Rollups,
        Table::RollupSkipped,
        Table::BudgetState,
        Table::Streams,
        Table::Tombstones,
        Table::Quarantine,
        Table::Resends,
        Table::Subscriptions,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "sluice_meta",
            Table::Tables => "sluice_tables",
            Table::Acks => "sluice_acks",
            Table::Clock => "sluice_clock",
            Table::Drops => "sluice_drops",
            Table::AckedRanges => "sluice_acked_ranges",
            Table::Rollups => "sluice_rollups",
            Table::RollupSkipped => "sluice_rollup_skipped",
            Table::BudgetState => "sluice_budget_state",
            Table::Streams => "sluice_streams",
            Table::Tombstones => "sluice_tombstones",
            Table::Quarantine => "sluice_quarantine",
            Table::Resends => "sluice_resends",
            Table::Subscriptions => "sluice_subscriptions",
        }
    }

    /// Whether the table exists in `main`: the one check for a missing
    /// bookkeeping table (a database never tracked, or made by a release
    /// that did not have the table, and not written to since).
    pub fn exists(self, conn: &Connection) -> Res<bool> {
        Ok(conn.query_row(
            "SELECT count(*) > 0 FROM main.sqlite_master WHERE type = 'table' AND name = ?1",
            [self.name()],
            |r| r.get(0),
        )?)
    }
}

/// Whether `name` is a bookkeeping table (they cannot be tracked).
pub fn is_bookkeeping(name: &str) -> bool {
    Table::ALL
        .iter()
        .any(|t| t.name().eq_ignore_ascii_case(name))
}

/// The bookkeeping schema version this extension writes.
pub const VERSION: i64 = 6;

/// Key of the version in `sluice_meta`.
const VERSION_KEY: &str = "schema_version";

/// The upgrades, in order: upgrade `n` brings version `n - 1` to `n`.
/// Version 0 is a database without the key: no bookkeeping at all, or
/// bookkeeping made by v0.1.0 or older (which had no version).
const UPGRADES: [(i64, Upgrade); 6] = [
    (1, to_v1),
    (2, to_v2),
    (3, to_v3),
    (4, to_v4),
    (5, to_v5),
    (6, to_v6),
];

/// One upgrade step of the bookkeeping.
type Upgrade = fn(&Connection) -> Res<()>;

/// The bookkeeping version of this database; 0 without bookkeeping or
/// without a version (v0.1.0 and older).
pub fn version(conn: &Connection) -> Res<i64> {
    if !Table::Meta.exists(conn)? {
        return Ok(0);
    }
    let v: Option<i64> = conn
        .query_row(
            "SELECT value FROM main.sluice_meta WHERE key = ?1",
            [VERSION_KEY],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.unwrap_or(0))
}

/// Creates the bookkeeping, or upgrades it in place, to [`VERSION`]. Call
/// it inside the savepoint of a writing function: an upgrade is all done
/// or not at all. Refuses a database whose bookkeeping is newer than this
/// extension.
pub fn ensure(conn: &Connection) -> Res<()> {
    let have = version(conn)?;
    if have == VERSION {
        return Ok(());
    }
    if have > VERSION {
        return Err(Fail(format!(
            "this database's bookkeeping is version {have}, made by a newer sluice0; this one \
             knows up to version {VERSION}: load the newer extension"
        )));
    }
    // Whether the stream is made now (a new database) rather than kept from
    // an older release: its epoch is then "created", not "existing".
    let new_stream = meta::stream_id(conn).is_err();
    for (to, upgrade) in UPGRADES {
        if to > have {
            upgrade(conn)?;
        }
    }
    if new_stream {
        streams::first_is_created(conn)?;
    }
    conn.execute(
        "INSERT INTO main.sluice_meta (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        rusqlite::params![VERSION_KEY, VERSION],
    )?;
    Ok(())
}

/// Version 1: the bookkeeping of v0.1.0. Every statement tolerates what
/// an older release left (tables created one by one as features came, and
/// `sluice_tables` without `time_column`).
fn to_v1(conn: &Connection) -> Res<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS main.sluice_meta (key TEXT PRIMARY KEY, value);
         INSERT OR IGNORE INTO main.sluice_meta (key, value)
             VALUES ('stream_id', max(1, random() & 0x7fffffffffffffff));
         CREATE TABLE IF NOT EXISTS main.sluice_tables (
             tbl TEXT PRIMARY KEY,
             mutable INTEGER NOT NULL DEFAULT 0,
             local_only TEXT NOT NULL DEFAULT '[]',
             key_columns TEXT NOT NULL DEFAULT '[]',
             acked_seq INTEGER NOT NULL DEFAULT 0,
             acked_at INTEGER,
             acked_batches INTEGER NOT NULL DEFAULT 0,
             acked_rows INTEGER NOT NULL DEFAULT 0,
             created_at INTEGER
         );
         CREATE TABLE IF NOT EXISTS main.sluice_acks (
             tbl TEXT NOT NULL,
             acked_seq INTEGER NOT NULL,
             acked_at INTEGER NOT NULL
         );
         CREATE INDEX IF NOT EXISTS main.sluice_acks_tbl ON sluice_acks (tbl, acked_at);
         CREATE TABLE IF NOT EXISTS main.sluice_clock (
             id INTEGER PRIMARY KEY CHECK (id = 1),
             value INTEGER NOT NULL
         );
         INSERT OR IGNORE INTO main.sluice_clock (id, value) VALUES (1, 0);",
    )?;
    add_column(conn, Table::Tables, "time_column", "TEXT")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS main.sluice_drops (
             id INTEGER PRIMARY KEY,
             tbl TEXT NOT NULL,
             rows INTEGER NOT NULL,
             unsynced_rows INTEGER,
             from_time TEXT,
             to_time TEXT,
             sealed_until INTEGER NOT NULL,
             dropped_at TEXT NOT NULL
         );
         CREATE INDEX IF NOT EXISTS main.sluice_drops_tbl ON sluice_drops (tbl);
         CREATE VIEW IF NOT EXISTS main.sluice_status AS
         SELECT t.tbl AS \"table\",
                sluice_pending(t.tbl) AS pending_rows,
                sluice_pending_age(t.tbl) AS oldest_pending_age_secs,
                strftime('%Y-%m-%dT%H:%M:%fZ', t.acked_at / 1000.0, 'unixepoch') AS last_ack_at,
                t.acked_rows AS acked_rows,
                coalesce((SELECT sum(d.rows) FROM sluice_drops d WHERE d.tbl = t.tbl), 0)
                    AS rows_dropped
           FROM sluice_tables t;
         CREATE VIEW IF NOT EXISTS main.sluice_budget AS
         SELECT json_extract(value, '$.max_bytes') AS max_bytes,
                json_extract(value, '$.used_bytes') AS used_bytes,
                json_extract(value, '$.file_bytes') AS file_bytes,
                json_extract(value, '$.within_budget') AS within_budget,
                json_extract(value, '$.dropped_rows') AS dropped_rows,
                json_extract(value, '$.checked_at') AS checked_at,
                json_extract(value, '$.note') AS note
           FROM sluice_meta WHERE key = 'budget';
         CREATE TABLE IF NOT EXISTS main.sluice_acked_ranges (
             tbl TEXT NOT NULL,
             lo INTEGER NOT NULL,
             hi INTEGER NOT NULL,
             PRIMARY KEY (tbl, lo)
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS main.sluice_rollups (
             name TEXT PRIMARY KEY,
             options TEXT NOT NULL,
             source TEXT NOT NULL,
             target TEXT NOT NULL,
             watermark INTEGER NOT NULL DEFAULT 0,
             last_run_at INTEGER,
             runs INTEGER NOT NULL DEFAULT 0,
             rows_written INTEGER NOT NULL DEFAULT 0
         );
         CREATE TABLE IF NOT EXISTS main.sluice_rollup_skipped (
             name TEXT NOT NULL,
             row_id INTEGER NOT NULL,
             reason TEXT NOT NULL,
             skipped_at INTEGER NOT NULL,
             PRIMARY KEY (name, row_id)
         ) WITHOUT ROWID;",
    )?;
    Ok(())
}

/// Version 2: the state of the storage budget in columns of its own table
/// (it was JSON in `sluice_meta`), so that the view `sluice_budget` needs
/// no JSON function: SQLite before 3.41 does not flag them innocuous, and
/// the view failed under `PRAGMA trusted_schema=OFF`. Like every upgrade,
/// it may run again on what it made (a `schema_version` deleted by hand).
fn to_v2(conn: &Connection) -> Res<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS main.sluice_budget_state (
             id INTEGER PRIMARY KEY CHECK (id = 1),
             max_bytes INTEGER NOT NULL,
             used_bytes INTEGER NOT NULL,
             file_bytes INTEGER NOT NULL,
             wal_bytes INTEGER NOT NULL,
             within_budget INTEGER NOT NULL,
             dropped_rows INTEGER NOT NULL,
             checked_at TEXT NOT NULL,
             note TEXT
         );
         INSERT OR REPLACE INTO main.sluice_budget_state
             (id, max_bytes, used_bytes, file_bytes, wal_bytes, within_budget, dropped_rows,
              checked_at, note)
         SELECT 1, json_extract(value, '$.max_bytes'), json_extract(value, '$.used_bytes'),
                json_extract(value, '$.file_bytes'),
                coalesce(json_extract(value, '$.wal_bytes'), 0),
                json_extract(value, '$.within_budget'), json_extract(value, '$.dropped_rows'),
                json_extract(value, '$.checked_at'), json_extract(value, '$.note')
           FROM main.sluice_meta WHERE key = 'budget' AND json_valid(value);
         DELETE FROM main.sluice_meta WHERE key = 'budget';
         DROP VIEW IF EXISTS main.sluice_budget;
         CREATE VIEW main.sluice_budget AS
         SELECT max_bytes, used_bytes, file_bytes, within_budget, dropped_rows, checked_at, note
           FROM sluice_budget_state;",
    )?;
    Ok(())
}

/// Version 3 (sluice 0.2): epochs. `sluice_meta` gains the keys `machine`
/// and `zone` (nothing to create); `sluice_streams` is the history of this
/// database's streams, where the stream it has is recorded as "existing
/// before sluice 0.2" (started when its first table was tracked);
/// `sluice_tables` gains the fork of a new epoch (`fork_parent`,
/// `fork_seq`). Like every upgrade, it may run again on what it made.
fn to_v3(conn: &Connection) -> Res<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS main.sluice_streams (
             n INTEGER PRIMARY KEY,
             stream_id INTEGER NOT NULL UNIQUE,
             parent_stream INTEGER,
             started_at TEXT NOT NULL,
             reason TEXT NOT NULL,
             machine TEXT
         );",
    )?;
    streams::record_existing(conn, streams::EXISTING_REASON)?;
    for column in ["fork_parent", "fork_seq"] {
        add_column(conn, Table::Tables, column, "INTEGER")?;
    }
    Ok(())
}

/// Version 4 (sluice 0.2): deletes of mutable tables travel.
/// `sluice_tombstones` holds the deletes waiting to be sent
/// ([`tombstones`]); `sluice_tables` gains `delete_key`, the key columns a
/// tombstone of the table carries (JSON; `[]`: deletes are not tracked;
/// NULL: tracked before 0.2, decided at the next `sluice_track`). Like every
/// upgrade, it may run again on what it made.
fn to_v4(conn: &Connection) -> Res<()> {
    conn.execute_batch(tombstones::CREATE)?;
    add_column(conn, Table::Tables, "delete_key", "TEXT")?;
    Ok(())
}

/// Adds `column` (with its type and constraints, `decl`) to bookkeeping
/// table `table` unless it has it.
fn add_column(conn: &Connection, table: Table, column: &str, decl: &str) -> Res<()> {
    let has: bool = conn.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info(?1, 'main') WHERE name = ?2",
        [table.name(), column],
        |r| r.get(0),
    )?;
    if !has {
        conn.execute_batch(&format!(
            "ALTER TABLE main.{} ADD COLUMN {column} {decl}",
            table.name()
        ))?;
    }
    Ok(())
}

/// Version 5 (sluice 0.2): rows that cannot be sent, re-sends and a full
/// disk. `sluice_quarantine` holds the rows moved aside ([`quarantine`]);
/// `sluice_resends` the ranges an operator asked to send again
/// ([`resends`]); `sluice_tables` gains `epoch_seq` (the largest sequence
/// number the table had when the current epoch began, kept after its fork
/// is forgotten: rows up to it were written under an earlier stream);
/// `sluice_drops` gains `unrolled_rows` (rows dropped, as the
/// last resort of a full disk, before every rollup of their table had
/// processed them); `sluice_budget_state` gains what the budget found on
/// the filesystem (`free_bytes`, `min_free_bytes`, `reserve_bytes`); the
/// views `sluice_budget` and `sluice_status` show them and the quarantined
/// rows. Like every upgrade, it may run again on what it made.
fn to_v5(conn: &Connection) -> Res<()> {
    conn.execute_batch(quarantine::CREATE)?;
    conn.execute_batch(resends::CREATE)?;
    add_column(conn, Table::Drops, "unrolled_rows", "INTEGER")?;
    add_column(conn, Table::Tables, "epoch_seq", "INTEGER")?;
    for column in ["free_bytes", "min_free_bytes", "reserve_bytes"] {
        add_column(conn, Table::BudgetState, column, "INTEGER")?;
    }
    conn.execute_batch(
        "DROP VIEW IF EXISTS main.sluice_budget;
         CREATE VIEW main.sluice_budget AS
         SELECT max_bytes, used_bytes, file_bytes, within_budget, dropped_rows, checked_at, note,
                free_bytes, min_free_bytes, reserve_bytes
           FROM sluice_budget_state;
         DROP VIEW IF EXISTS main.sluice_status;
         CREATE VIEW main.sluice_status AS
         SELECT t.tbl AS \"table\",
                sluice_pending(t.tbl) AS pending_rows,
                sluice_pending_age(t.tbl) AS oldest_pending_age_secs,
                strftime('%Y-%m-%dT%H:%M:%fZ', t.acked_at / 1000.0, 'unixepoch') AS last_ack_at,
                t.acked_rows AS acked_rows,
                coalesce((SELECT sum(d.rows) FROM sluice_drops d WHERE d.tbl = t.tbl), 0)
                    AS rows_dropped,
                (SELECT count(*) FROM sluice_quarantine q WHERE q.tbl = t.tbl)
                    AS quarantined_rows
           FROM sluice_tables t;",
    )?;
    Ok(())
}

/// Version 6 (sluice 0.2): the cloud-to-edge direction (issue 13).
/// `sluice_subscriptions` holds the local tables that receive a published
/// cloud table, with the checkpoint `sluice_apply` moves
/// ([`subscriptions`]). Like every upgrade, it may run again on what it
/// made.
fn to_v6(conn: &Connection) -> Res<()> {
    conn.execute_batch(subscriptions::CREATE)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn every_bookkeeping_table_is_named_once_and_cannot_be_tracked() {
        let names: std::collections::HashSet<&str> = Table::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(names.len(), Table::ALL.len());
        for n in names {
            assert!(n.starts_with("sluice_") && is_bookkeeping(n), "{n}");
            assert!(is_bookkeeping(&n.to_uppercase()), "{n}");
        }
        assert!(!is_bookkeeping("readings"));
        assert!(!is_bookkeeping("sluice_status"));
    }

    #[test]
    fn upgrades_are_in_order_and_reach_the_version() {
        let steps: Vec<i64> = UPGRADES.iter().map(|(n, _)| *n).collect();
        assert_eq!(steps, (1..=VERSION).collect::<Vec<_>>());
    }
}
