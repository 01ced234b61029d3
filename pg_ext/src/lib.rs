//! `sluice-pg` is the sluice PostgreSQL extension (`CREATE EXTENSION sluice
//! CASCADE`, schema `sluice`): the cloud end of the sync protocol
//! (`docs/sync-protocol.md`). It applies batches cut at the edge exactly
//! once, through a ledger of batch identities, with a per-table conflict
//! policy; the DBA's guide is `docs/postgres.md`.
//!
//! This file holds the SQL surface (the bookkeeping tables and the
//! `#[pg_extern]` functions, each a thin wrapper); the work is in modules:
//!
//! - [`ingest`]: `sluice.ingest(batch)`, step by step as the protocol says.
//! - [`ledger`]: `sluice.batches`, `sluice.devices` and `sluice.streams`,
//!   their one owner, and `sluice.device_streams(device_id)`.
//! - [`zone`]: the batch's zone as the ingest's `TimeZone`.
//! - [`tenancy`]: who calls `ingest`, and may they write these rows.
//! - [`register`]: `sluice.tables`, its one owner: `sluice.register_table(...)`
//!   and its checks, and the registration ingest reads back.
//! - [`publish`]: `sluice.publications`, its one owner: `sluice.publish`
//!   and `sluice.unpublish` (the capture triggers), read back by `pull` and
//!   by `ingest` (the cloud's columns of a published target).
//! - [`pull`]: `sluice.pull` (the down direction's batches) and
//!   `sluice.subscription_lag`; the one writer of `sluice.subscriptions`.
//! - `sql/publish.sql`: the tables of the down direction,
//!   `sluice.purge_changes` and the view `sluice.subscription_status`.
//! - [`sketch`]: merging the edge's quantile sketches.
//! - [`worker`]: the optional retention worker, registered in `_PG_init`
//!   when the library is in `shared_preload_libraries`.
//! - `sql/retention.sql`: `sluice.set_retention` and the procedure
//!   `sluice.run_retention` (PL/pgSQL: it commits between chunks).
//! - [`versions`]: the upgrade-script convention and its test.
//!
//! Below them, used by all and using none of them:
//!
//! - [`spi`]: statements through plans prepared once per backend.
//! - [`error`]: the error type, raised as `ERROR` with a real SQLSTATE.
//! - [`guc`]: the settings, registered in `_PG_init`, read through accessors.
//!
//! Imports point down this list: `ingest` → `ledger` → `tenancy` →
//! `register` → `spi` → `error` (`zone` below `ingest`, beside `ledger`;
//! `ingest` and `pull` → `publish` → `tenancy`);
//! `docs/architecture.md` draws it.
//!
//! The pure logic (SQL text, value conversion, the column plan) is the crate
//! `sluice-pgsql`, tested without PostgreSQL; the batch format itself is the
//! `sluice-wire` crate, shared with the edge.

// No panic may cross into the backend: errors are `SluiceError`s raised as
// PostgreSQL ERRORs (tests may unwrap).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

use pgrx::prelude::*;

pub mod error;
pub mod guc;
pub mod ingest;
pub mod ledger;
pub mod publish;
pub mod pull;
pub mod register;
pub mod sketch;
pub mod spi;
pub mod tenancy;
pub mod versions;
pub mod worker;
pub mod zone;

::pgrx::pg_module_magic!(name, version);

/// Called when the library is loaded: registers the settings, and the
/// retention worker when loaded through `shared_preload_libraries`.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::register();
    // SAFETY: a flag PostgreSQL sets while it loads shared_preload_libraries.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        worker::register();
    }
}

extension_sql!(
    r#"
-- Edge table -> cloud table registrations (sluice.register_table).
CREATE TABLE sluice.tables (
    edge_table    text PRIMARY KEY,
    target        regclass NOT NULL,
    key_columns   text[] NOT NULL,
    policy        text NOT NULL
                  CHECK (policy IN ('last_writer_wins', 'first_writer_wins', 'insert_only')),
    tenant_column text,
    registered_at timestamptz DEFAULT now(),
    on_delete     text NOT NULL DEFAULT 'delete'
                  CHECK (on_delete IN ('delete', 'mark', 'ignore'))
);

-- The ledger: one row per applied batch identity. A batch whose identity is
-- here is a replay, unless both digests are known and differ (a fork: the
-- edge database was restored or copied). digest: the content digest of the
-- rows (NULL for batches of format version 1 and rows of sluice 0.1).
-- resend: 0 for an ordinary batch, n for the n-th re-send request of the
-- edge table (sluice_resend at the edge): part of the identity, so that rows
-- sent again are never taken for a replay of the batch that first sent them.
CREATE TABLE sluice.batches (
    device_id  text,
    stream_id  bigint,
    edge_table text,
    base_seq   bigint,
    last_seq   bigint,
    row_count  int,
    checksum   bigint,
    inserted   int,
    updated    int,
    skipped    int,
    sent_at    timestamptz,
    applied_at timestamptz DEFAULT now(),
    digest     bigint,
    resend     integer NOT NULL DEFAULT 0,
    PRIMARY KEY (device_id, stream_id, edge_table, base_seq, last_seq, resend)
);

-- Per-device statistics, updated by every applied batch.
CREATE TABLE sluice.devices (
    device_id     text PRIMARY KEY,
    first_seen    timestamptz,
    last_batch_at timestamptz,
    batches       bigint,
    rows          bigint,
    clock_skew_ms bigint
);

-- Per-stream statistics (one row per edge database sending under a device
-- id: its epochs and clones), updated by every applied batch.
CREATE TABLE sluice.streams (
    device_id     text,
    stream_id     bigint,
    parent_stream bigint,
    machine       bigint,
    first_seen    timestamptz,
    last_seen     timestamptz,
    batches       bigint,
    rows          bigint,
    PRIMARY KEY (device_id, stream_id)
);

-- pg_dump keeps the contents of these tables: a restored database without
-- its ledger would apply replayed batches again.
SELECT pg_catalog.pg_extension_config_dump('sluice.tables', '');
SELECT pg_catalog.pg_extension_config_dump('sluice.batches', '');
SELECT pg_catalog.pg_extension_config_dump('sluice.devices', '');
SELECT pg_catalog.pg_extension_config_dump('sluice.streams', '');

-- The deletes applied to targets registered with on_delete 'delete' or
-- 'mark' (one row per target and key: the newest), so that an older write
-- of the key arriving later does not bring the row back. key: the key
-- columns' values as text, in the order ingest builds it.
CREATE TABLE sluice.tombstones (
    target     regclass,
    key        text[],
    version    bigint NOT NULL,
    device_id  text NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target, key)
);
SELECT pg_catalog.pg_extension_config_dump('sluice.tombstones', '');
"#,
    name = "bookkeeping_tables",
    bootstrap
);

/// `sluice.version()`: `v` and the extension's version.
#[pg_extern(immutable, parallel_safe)]
fn version() -> String {
    format!("v{}", env!("CARGO_PKG_VERSION"))
}

/// `sluice.register_table(edge_table, target, key_columns, policy, tenant_column, on_delete)`.
/// Not STRICT (`tenant_column` may be NULL), so every other argument is an
/// `Option` and a NULL is an ERROR (22004), not a panic.
///
/// `target` is declared `regclass` in SQL but taken as its OID: pgrx's
/// `PgRelation` opens the relation while decoding the argument, so a
/// `regclass` of a relation that does not exist (`1::regclass`, or one
/// dropped since the value was made) ended in an internal error (XX000,
/// "could not open relation with OID 1") before our check could name it.
#[pg_extern(
    volatile,
    parallel_unsafe,
    sql = r#"
CREATE FUNCTION "register_table"(
	"edge_table" TEXT,
	"target" regclass,
	"key_columns" TEXT[],
	"policy" TEXT DEFAULT 'last_writer_wins',
	"tenant_column" TEXT DEFAULT NULL,
	"on_delete" TEXT DEFAULT 'delete'
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'register_table_wrapper';
"#
)]
fn register_table(
    edge_table: Option<&str>,
    target: Option<pg_sys::Oid>,
    key_columns: Option<Vec<Option<String>>>,
    policy: default!(Option<&str>, "'last_writer_wins'"),
    tenant_column: default!(Option<&str>, "NULL"),
    on_delete: default!(Option<&str>, "'delete'"),
) {
    fn null(what: &str) -> ! {
        error::SluiceError::new(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("sluice.register_table: {what} must not be NULL"),
        )
        .raise("register_table")
    }
    let edge_table = edge_table.unwrap_or_else(|| null("edge_table"));
    let policy = policy.unwrap_or_else(|| null("policy"));
    let on_delete = on_delete.unwrap_or_else(|| null("on_delete"));
    let key_columns: Vec<String> = key_columns
        .unwrap_or_else(|| null("key_columns"))
        .into_iter()
        .map(|k| k.unwrap_or_else(|| null("an element of key_columns")))
        .collect();
    // Only the OID is taken: an open relation would also make the ALTER
    // TABLE that adds the bookkeeping columns fail ("being used by active
    // queries"); register() looks the relation up and names a missing one.
    let oid = target.unwrap_or_else(|| null("target"));
    if let Err(e) = register::register(
        edge_table,
        oid,
        &key_columns,
        policy,
        tenant_column,
        on_delete,
    ) {
        e.raise("register_table")
    }
}

/// `sluice.ingest(batch bytea)`: applies one batch; one row of counts.
/// Runs as the extension's owner with a fixed `search_path`; the caller's
/// rights are checked inside ([`tenancy`]).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn ingest(
    batch: &[u8],
) -> TableIterator<
    'static,
    (
        name!(inserted, i64),
        name!(updated, i64),
        name!(skipped, i64),
        name!(replay, bool),
    ),
> {
    match ingest::ingest(batch) {
        Ok(o) => TableIterator::once((o.inserted, o.updated, o.skipped, o.replay)),
        Err(e) => e.raise("ingest"),
    }
}

/// `sluice.device_streams(device_id)`: the streams (edge databases) that sent
/// under a device id, oldest first; `live` when seen in the last 15 minutes.
/// Runs as the extension's owner; a device role may read its own device's
/// only (42501 otherwise), a role that may read `sluice.streams` any.
/// Parallel restricted: it runs statements through the backend's plan cache.
#[pg_extern(stable, parallel_restricted, security_definer)]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)]
fn device_streams(
    device_id: &str,
) -> TableIterator<
    'static,
    (
        name!(stream_id, i64),
        name!(parent_stream, Option<i64>),
        name!(machine, Option<i64>),
        name!(first_seen, Option<TimestampWithTimeZone>),
        name!(last_seen, Option<TimestampWithTimeZone>),
        name!(batches, Option<i64>),
        name!(rows, Option<i64>),
        name!(live, bool),
    ),
> {
    match ledger::device_streams(device_id) {
        Ok(rows) => TableIterator::new(rows),
        Err(e) => e.raise("device_streams"),
    }
}

/// `sluice.stream_high_water(device_id, stream_id)`: per edge table, the
/// largest sequence number the ledger holds of the stream. The agent
/// compares it with the edge database's own (`sluice_tracked`'s
/// `high_water`): below it, the database was restored from a backup, and it
/// begins a new epoch before it sends anything. Runs as the extension's
/// owner; the reading rule of `sluice.device_streams`.
#[pg_extern(stable, parallel_restricted, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn stream_high_water(
    device_id: &str,
    stream_id: i64,
) -> TableIterator<'static, (name!(edge_table, String), name!(last_seq, i64))> {
    match ledger::stream_high_water(device_id, stream_id) {
        Ok(rows) => TableIterator::new(rows),
        Err(e) => e.raise("stream_high_water"),
    }
}

extension_sql_file!(
    "sql/tenancy.sql",
    name = "tenancy",
    requires = ["bookkeeping_tables", ingest]
);

/// `sluice.publish(target, edge_table, columns, key_columns, tenant_column,
/// device_column, horizon)`: publishes a cloud table to devices
/// (`docs/postgres.md`, "Cloud to edge"). Runs as the extension's owner;
/// the caller must own the target. `target` is taken as its OID, as in
/// `register_table`.
#[pg_extern(
    volatile,
    parallel_unsafe,
    security_definer,
    sql = r#"
CREATE FUNCTION "publish"(
	"target" regclass,
	"edge_table" TEXT DEFAULT NULL,
	"columns" TEXT[] DEFAULT NULL,
	"key_columns" TEXT[] DEFAULT NULL,
	"tenant_column" TEXT DEFAULT NULL,
	"device_column" TEXT DEFAULT NULL,
	"horizon" interval DEFAULT '7 days'
) RETURNS void
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'publish_wrapper';
"#
)]
#[allow(clippy::too_many_arguments)]
fn publish(
    target: Option<pg_sys::Oid>,
    edge_table: default!(Option<String>, "NULL"),
    columns: default!(Option<Vec<Option<String>>>, "NULL"),
    key_columns: default!(Option<Vec<Option<String>>>, "NULL"),
    tenant_column: default!(Option<String>, "NULL"),
    device_column: default!(Option<String>, "NULL"),
    horizon: default!(Option<Interval>, "'7 days'"),
) {
    fn null(what: &str) -> ! {
        error::SluiceError::new(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("sluice.publish: {what} must not be NULL"),
        )
        .raise("publish")
    }
    let list = |v: Option<Vec<Option<String>>>, what: &str| {
        v.map(|v| {
            v.into_iter()
                .map(|c| c.unwrap_or_else(|| null(what)))
                .collect::<Vec<_>>()
        })
    };
    let args = sluice_pgsql::publication::PublishArgs {
        edge_table,
        columns: list(columns, "an element of columns"),
        key_columns: list(key_columns, "an element of key_columns"),
        tenant_column,
        device_column,
    };
    let target = target.unwrap_or_else(|| null("target"));
    if let Err(e) = publish::publish(target, args, horizon) {
        e.raise("publish")
    }
}

/// `sluice.unpublish(edge_table)`: drops the capture triggers, the change
/// entries and the subscriptions; false when it was not published.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn unpublish(edge_table: &str) -> bool {
    publish::unpublish(edge_table).unwrap_or_else(|e| e.raise("unpublish"))
}

/// `sluice.pull(edge_table, device_id, checkpoint, stream_id, max_rows,
/// cursor, tenant)`: the next batch of changes for a device; exactly one
/// row. Runs as the extension's owner; the caller is checked inside
/// ([`pull`]).
#[pg_extern(
    volatile,
    parallel_unsafe,
    security_definer,
    sql = r#"
CREATE FUNCTION "pull"(
	"edge_table" TEXT,
	"device_id" TEXT,
	"checkpoint" bigint,
	"stream_id" bigint,
	"max_rows" INT DEFAULT 10000,
	"cursor" TEXT DEFAULT NULL,
	"tenant" TEXT DEFAULT NULL
) RETURNS TABLE (
	"batch" bytea,
	"checkpoint" bigint,
	"cursor" TEXT,
	"more" bool,
	"rows" INT
)
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'pull_wrapper';
"#
)]
#[allow(clippy::type_complexity)]
fn pull(
    edge_table: Option<&str>,
    device_id: Option<&str>,
    checkpoint: Option<i64>,
    stream_id: Option<i64>,
    max_rows: default!(Option<i32>, "10000"),
    cursor: default!(Option<&str>, "NULL"),
    tenant: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(batch, Option<Vec<u8>>),
        name!(checkpoint, i64),
        name!(cursor, Option<String>),
        name!(more, bool),
        name!(rows, i32),
    ),
> {
    fn null(what: &str) -> ! {
        error::SluiceError::new(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("sluice.pull: {what} must not be NULL"),
        )
        .raise("pull")
    }
    let args = pull::PullArgs {
        edge_table: edge_table.unwrap_or_else(|| null("edge_table")),
        device_id: device_id.unwrap_or_else(|| null("device_id")),
        checkpoint: checkpoint.unwrap_or_else(|| null("checkpoint")),
        stream_id: stream_id.unwrap_or_else(|| null("stream_id")),
        max_rows: max_rows.unwrap_or(sluice_pgsql::publication::DEFAULT_MAX_ROWS),
        cursor,
        tenant,
    };
    match pull::pull(&args) {
        Ok(p) => TableIterator::once((p.batch, p.checkpoint, p.cursor, p.more, p.rows)),
        Err(e) => e.raise("pull"),
    }
}

/// `sluice.subscription_lag(device_id)`: per subscription of the device,
/// its checkpoint, the changes in its scope after it, the oldest of them,
/// and its last pull.
#[pg_extern(stable, parallel_restricted, security_definer)]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)]
fn subscription_lag(
    device_id: &str,
) -> TableIterator<
    'static,
    (
        name!(edge_table, String),
        name!(checkpoint, i64),
        name!(pending, i64),
        name!(oldest_pending, Option<TimestampWithTimeZone>),
        name!(last_pulled, Option<TimestampWithTimeZone>),
    ),
> {
    match pull::subscription_lag(device_id) {
        Ok(rows) => TableIterator::new(rows),
        Err(e) => e.raise("subscription_lag"),
    }
}

extension_sql_file!(
    "sql/publish.sql",
    name = "publish",
    requires = ["bookkeeping_tables"]
);

/// `sluice.float32_to_vector_text(bytes bytea, dims int DEFAULT NULL)`: the
/// edge's float32 little-endian embedding as pgvector's text form.
#[pg_extern(immutable, parallel_safe)]
fn float32_to_vector_text(
    bytes: Option<&[u8]>,
    dims: default!(Option<i32>, "NULL"),
) -> Option<String> {
    let dims = dims.and_then(|d| usize::try_from(d).ok());
    match sluice_pgsql::convert::blob_to_vector_text(bytes?, dims) {
        Ok(s) => Some(s),
        Err(reason) => error::SluiceError::new(
            PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
            format!("sluice.float32_to_vector_text: {reason}"),
        )
        .raise("float32_to_vector_text"),
    }
}

extension_sql_file!(
    "sql/search.sql",
    name = "search",
    requires = ["tenancy", float32_to_vector_text]
);

/// `sluice.retention_chunk_rows()`: the setting `sluice.retention_chunk_rows`
/// (calling it also loads the library, which defines the setting).
#[pg_extern(stable, parallel_safe)]
fn retention_chunk_rows() -> i32 {
    guc::retention_chunk_rows()
}

extension_sql_file!(
    "sql/retention.sql",
    name = "retention",
    requires = ["bookkeeping_tables", retention_chunk_rows]
);

extension_sql!(
    r#"
-- Only what a DBA grants: ingest through sluice.grant_device, the rest to
-- roles that administer sluice.
REVOKE EXECUTE ON FUNCTION sluice.ingest(bytea) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sluice.register_table(text, regclass, text[], text, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sluice.grant_device(regrole, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sluice.revoke_device(regrole) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sluice.grant_reader(regrole, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sluice.revoke_reader(regrole, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sluice.enable_tenant_rls(regclass, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sluice.enable_search(regclass, text, regconfig) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sluice.enable_vectors(regclass, text, int, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sluice.set_retention(regclass, text, interval, regclass, text, text[], jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sluice.drop_retention(regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sluice.retention_measure(regclass, text) FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE sluice.run_retention(regclass, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sluice.publish(regclass, text, text[], text[], text, text, interval) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sluice.unpublish(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sluice.pull(text, text, bigint, bigint, integer, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sluice.subscription_lag(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sluice.purge_changes() FROM PUBLIC;
-- Zoneless timestamp text is read in the batch's zone (UTC when it has
-- none); the caller's TimeZone is put back when the call ends.
ALTER FUNCTION sluice.ingest(bytea) SET "TimeZone" TO 'UTC';
"#,
    name = "privileges",
    finalize
);

#[cfg(any(test, feature = "pg_test"))]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod pg_tests;
#[cfg(any(test, feature = "pg_test"))]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod pg_tests_publish;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
