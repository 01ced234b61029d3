//! `sluice verify`: proves that the cloud holds what the edge holds, for one
//! table, by per-range checksums.
//!
//! The edge keeps only recent rows (cleanup), so the comparison walks the
//! rows still at the edge, in buckets of [`BUCKET_ROWS`] rows in storage order
//! (rowid, or primary key for a `WITHOUT ROWID` table). For each
//! bucket it reads the edge rows (without local-only columns), finds the
//! cloud row of each by the registration's key (`sluice.tables.key_columns`;
//! `sluice_device` is this device), renders both sides as canonical text
//! (one rendering per cloud column type, so that `'2026-11-18T11:06:40.123Z'`
//! and a `timestamptz` agree) and compares the buckets' row counts and
//! hashes; a bucket that differs is descended into row by row. Rows still
//! pending at the edge are not compared (the cloud may hold an older
//! version: that is expected). An acknowledged edge row that the cloud does
//! not hold because it applied a newer delete of its key (a tombstone in
//! `sluice.tombstones` above the edge row's version: another device's, or
//! what this database sent before it was restored from a backup) is counted
//! like a row newer in the cloud, not reported missing; `sluice.tombstones`
//! is read only for the rows a bucket misses, and only if this role may
//! read it (otherwise those rows stay missing, and verify says so). Rows of
//! this device in the cloud that the
//! edge never acknowledged and does not hold (version above the edge's
//! acknowledged watermark) are reported as extra; older cloud rows missing
//! at the edge were cleaned up there after their acknowledgement and are
//! only counted. Where the cloud key holds the edge stream
//! (`sluice_stream`), rows are looked up under this database's streams (its
//! epochs, from `sluice_identity()`, and the streams the cloud records as
//! descending from one of them, where ingest may have left this database's
//! row out because such a stream sent it first), so the rows of another
//! database sending under the same device id are not compared; cloud rows of this database's
//! earlier epochs that the edge does not hold (what a restored box sent
//! before the restore, what the original of a copy went on sending) are
//! counted, not reported as extra. A mutable table's cloud key has no
//! stream: there, a version below the start of the current epoch (in
//! microseconds, where a new epoch moves the clock) is an earlier epoch's.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use sluice_wire::quote_ident as quote;
use tokio_postgres::types::ToSql;

use crate::cloud::Cloud;
use crate::config::Config;
use crate::edge::Edge;

mod canon;
mod scan;

use canon::{canon_cloud, cloud_expr, fnv, kind_of, Column, Kind};
pub use scan::BUCKET_ROWS;
use scan::{edge_columns, EdgeScan, ScanCursor};

/// Whether the cloud's version of a row that differs from the edge's is the
/// newer one: then the edge holds an older state (another device wrote
/// later, or this database was restored from a backup) and the row is no
/// difference. Equal versions with other content are.
fn cloud_holds_newer(edge: Option<&i64>, cloud: Option<&i64>) -> bool {
    matches!((edge, cloud), (Some(e), Some(c)) if c > e)
}

/// What an acknowledged edge row that the cloud does not hold is.
#[derive(Debug, PartialEq, Eq)]
enum Missing {
    /// The cloud applied a newer delete of its key (`sluice.tombstones`):
    /// sent by another device, or by this database before it was restored
    /// from a backup (the lost future). The cloud keeps the newer delete,
    /// as it keeps a newer write; no difference.
    DeletedByNewer,
    /// A difference.
    Missing,
}

/// Classifies an edge row at `edge_version` (of this `device`) that the
/// cloud does not hold, by the newest tombstone of its key in the cloud
/// (version and device), if any: a tombstone that wins over the edge's row
/// (higher `(version, device)`, as ingest orders them) explains it.
fn missing_row(edge_version: Option<i64>, device: &str, tombstone: Option<(i64, &str)>) -> Missing {
    match (edge_version, tombstone) {
        (Some(v), Some((tv, td))) if (tv, td) > (v, device) => Missing::DeletedByNewer,
        _ => Missing::Missing,
    }
}

/// The cloud column that holds the edge stream of a row.
const STREAM_COLUMN: &str = "sluice_stream";

/// The `sluice_stream` of a cloud row whose stream is not known (written
/// before 0.2, where the ledger does not cover it, or by hand).
const UNKNOWN_STREAM: i64 = 0;

/// What tells this database's current epoch from its earlier ones in the
/// cloud.
struct Epochs {
    /// The current stream, where the cloud key holds the stream.
    current_stream: Option<i64>,
    /// For a mutable table of a database with more than one epoch: every
    /// version below this is an earlier epoch's.
    earlier_end: Option<i64>,
}

/// What a cloud row of this device that the edge does not hold is.
#[derive(Debug, PartialEq, Eq)]
enum Absent {
    /// Of an earlier epoch: the edge cannot hold it, no error.
    EarlierEpoch,
    /// Acknowledged, then cleaned up at the edge.
    CleanedUp,
    /// Deleted at the edge: a tombstone explains it (one not yet sent, or
    /// the cloud's mark of one, `sluice_deleted_at`).
    Deleted,
    /// Never acknowledged by this database: a difference.
    Extra,
}

/// Of the cloud rows of `device` in `table` that no epoch of this database
/// explains (`rows`: key and version), the versions that a batch of
/// another stream of the device covers in the ledger (`sluice.batches`), so
/// another database sent them; `own`: this database's streams. Empty where
/// the ledger may not be read (a device role), or `own` is not known.
async fn other_databases_rows(
    client: &tokio_postgres::Client,
    device: &str,
    table: &str,
    rows: &[(String, i64)],
    own: Vec<i64>,
) -> anyhow::Result<BTreeSet<i64>> {
    if rows.is_empty() || own.is_empty() {
        return Ok(BTreeSet::new());
    }
    let readable: bool = client
        .query_one(
            "SELECT has_table_privilege('sluice.batches', 'SELECT')",
            &[],
        )
        .await?
        .get(0);
    if !readable {
        return Ok(BTreeSet::new());
    }
    let versions: Vec<i64> = rows.iter().map(|(_, v)| *v).collect();
    let found = client
        .query(
            "SELECT v FROM unnest($3::bigint[]) AS v WHERE EXISTS (
                 SELECT 1 FROM sluice.batches b
                 WHERE b.device_id = $1 AND b.edge_table = $2
                   AND v > b.base_seq AND v <= b.last_seq AND b.stream_id <> ALL ($4::bigint[]))",
            &[&device, &table, &versions, &own],
        )
        .await?;
    Ok(found.iter().map(|r| r.get(0)).collect())
}

/// `own` (this database's streams) and every stream of `device` that the
/// cloud records (`sluice.device_streams`) as descending from one of them,
/// as `sluice.ingest` follows the lineage of a fork batch. Where the cloud
/// does not say (an older extension, a role that may not read the
/// streams), `own` alone.
async fn lineage(client: &tokio_postgres::Client, device: &str, own: &[i64]) -> Vec<i64> {
    let Ok(rows) = client
        .query(
            "SELECT stream_id, parent_stream FROM sluice.device_streams($1)",
            &[&device],
        )
        .await
    else {
        return own.to_vec();
    };
    let edges: Vec<(i64, Option<i64>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut out: BTreeSet<i64> = own.iter().copied().collect();
    loop {
        let more: Vec<i64> = edges
            .iter()
            .filter(|(s, p)| !out.contains(s) && p.is_some_and(|p| out.contains(&p)))
            .map(|(s, _)| *s)
            .collect();
        if more.is_empty() {
            break;
        }
        out.extend(more);
    }
    out.into_iter().collect()
}

/// Classifies a cloud row the edge does not hold, by its stream (where
/// the key has one), its version, and whether the edge acknowledged it.
fn absent_row(epochs: &Epochs, stream: Option<i64>, version: i64, acked: bool) -> Absent {
    let earlier = stream.is_some_and(|s| s != UNKNOWN_STREAM && Some(s) != epochs.current_stream)
        || epochs.earlier_end.is_some_and(|end| version < end);
    if earlier {
        Absent::EarlierEpoch
    } else if acked {
        Absent::CleanedUp
    } else {
        Absent::Extra
    }
}

/// The cloud column that marks a row deleted at the edge (`on_delete =>
/// 'mark'`).
const DELETED_AT_COLUMN: &str = "sluice_deleted_at";

/// The keys of the table's pending tombstones at the edge, each as the
/// cloud key of `kinds` (name and kind of each key column, `sluice_device`
/// being this `device`) renders it; empty when the table's deletes are not
/// tracked, or its delete key does not cover the cloud key.
fn pending_tombstone_keys(
    conn: &rusqlite::Connection,
    table: &str,
    kinds: &[(String, Kind)],
    device: &str,
) -> anyhow::Result<BTreeSet<String>> {
    let exists: bool = conn.query_row(
        "SELECT count(*) = 2 FROM sqlite_master WHERE type = 'table' \
         AND name IN ('sluice_tombstones', 'sluice_tables')",
        [],
        |r| r.get(0),
    )?;
    let has_key_column: bool = exists
        && conn.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('sluice_tables') WHERE name = 'delete_key'",
            [],
            |r| r.get(0),
        )?;
    if !has_key_column {
        return Ok(BTreeSet::new());
    }
    let delete_key: Option<String> = conn
        .query_row(
            "SELECT delete_key FROM sluice_tables WHERE tbl = ?1",
            [table],
            |r| r.get(0),
        )
        .unwrap_or(None);
    let delete_key: Vec<String> = delete_key
        .and_then(|k| serde_json::from_str(&k).ok())
        .unwrap_or_default();
    // For each cloud key column, the tombstone column holding it (None:
    // the device).
    let mut at: Vec<Option<usize>> = Vec::new();
    for (name, _) in kinds {
        if name == "sluice_device" {
            at.push(None);
        } else if let Some(i) = delete_key.iter().position(|k| k == name) {
            at.push(Some(i));
        } else {
            return Ok(BTreeSet::new());
        }
    }
    let cols: Vec<String> = (1..=delete_key.len().max(1))
        .map(|i| format!("k{i}"))
        .collect();
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM sluice_tombstones WHERE tbl = ?1",
        cols.join(", ")
    ))?;
    let mut rows = stmt.query([table])?;
    let mut out = BTreeSet::new();
    while let Some(r) = rows.next()? {
        let mut key = Vec::with_capacity(kinds.len());
        for ((_, kind), i) in kinds.iter().zip(&at) {
            key.push(match i {
                Some(i) => canon::canon_edge(r.get_ref(*i)?, *kind),
                None => device.to_owned(),
            });
        }
        out.insert(key.join("|"));
    }
    Ok(out)
}

/// Differences printed per kind; all are counted.
const MAX_LISTED: usize = 20;

/// What `sluice verify` compares.
pub struct VerifyOptions {
    pub table: String,
    /// Only rows whose time column is at or after this (ISO-8601).
    pub since: Option<String>,
    /// Only rows whose time column is before this (ISO-8601).
    pub until: Option<String>,
}

/// The differences found, by kind.
#[derive(Default)]
struct Findings {
    missing: Vec<String>,
    extra: Vec<String>,
    different: Vec<String>,
}

/// Runs `sluice verify`: prints the comparison; exit status 1 when anything differs.
pub async fn run(cfg: &Config, opts: &VerifyOptions) -> anyhow::Result<ExitCode> {
    let edge = Edge::open(cfg).await?;
    let table = opts.table.as_str();
    let t = table.to_owned();
    let (tracked, edge_columns, cursor) = edge
        .run(move |e| {
            let tracked = e
                .tracked_table(&t)?
                .with_context(|| format!("table '{t}' is not tracked at the edge"))?;
            let conn = e.connection();
            Ok((tracked, edge_columns(conn, &t)?, ScanCursor::of(conn, &t)?))
        })
        .await?;

    let mut cloud = Cloud::connect(&cfg.cloud).await?;
    let client = cloud.client_mut();
    let reg = client
        .query_opt(
            "SELECT target::text, key_columns, target::oid FROM sluice.tables WHERE edge_table = $1",
            &[&table],
        )
        .await?;
    let Some(reg) = reg else {
        bail!("edge table '{table}' is not registered in the cloud (sluice.tables)");
    };
    let target: String = reg.get(0);
    let key_columns: Vec<String> = reg.get(1);
    let target_oid: tokio_postgres::types::Oid = reg.get(2);
    let cloud_types: BTreeMap<String, String> = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
             WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
            &[&target_oid],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let column = |name: &str| -> Option<Column> {
        cloud_types.get(name).map(|t| Column {
            name: name.to_owned(),
            kind: kind_of(t),
            pg_type: t.clone(),
        })
    };
    // The compared columns: every uploaded edge column the cloud has.
    let columns: Vec<Column> = edge_columns
        .iter()
        .filter(|c| !tracked.local_only_columns.contains(c))
        .filter_map(|c| column(c))
        .collect();
    let has_device = cloud_types.contains_key("sluice_device");
    let has_version = cloud_types.contains_key("sluice_version");
    // A target whose key holds the edge stream (`sluice_stream`, filled by
    // sluice.ingest from the batch) is compared against the rows of this
    // database's streams (its epochs): the stream is not an edge column.
    let by_stream = key_columns.iter().any(|k| k == STREAM_COLUMN);
    let identity = edge
        .run(|e| {
            Ok(if e.has_function("sluice_identity") {
                Some(e.identity()?)
            } else {
                None
            })
        })
        .await?;
    let (streams, current_stream): (Vec<i64>, Option<i64>) = if by_stream {
        // Every epoch in the database's history.
        let Some(identity) = &identity else {
            bail!("{target} is keyed by {STREAM_COLUMN}, but the loaded sluice0.so has no sluice_identity (it is older than 0.2)");
        };
        // And stream 0: rows the cloud holds from before it knew streams
        // (migrations/0005 fills 0 where the ledger does not say), taken
        // as this database's, as before 0.2.
        let mut streams = identity.streams();
        streams.push(UNKNOWN_STREAM);
        (streams, Some(identity.stream_id))
    } else {
        (Vec::new(), None)
    };
    // Where a row this database holds may be in the cloud: under one of its
    // epochs, or under another stream of the device that descends from one
    // of them (another restore of the same backup, a copy of the database
    // sending under the same device id), because sluice.ingest leaves out a
    // row of a new epoch's batch, up to its fork, that such a stream sent
    // first with the same content (docs/sync-protocol.md, "Epochs"). Only
    // the rows the edge holds are looked up there: a cloud row of such a
    // stream that the edge does not hold is the other database's.
    let lookup_streams: Vec<i64> = if by_stream {
        lineage(client, &cfg.device.id, &streams).await
    } else {
        Vec::new()
    };
    let mut keys: Vec<Column> = Vec::new();
    for k in key_columns.iter().filter(|k| *k != STREAM_COLUMN) {
        let c = column(k).with_context(|| format!("key column '{k}' is not in {target}"))?;
        if k != "sluice_device" && !columns.iter().any(|x| &x.name == k) {
            bail!("key column '{k}' of {target} is not an uploaded column of the edge table '{table}'");
        }
        keys.push(c);
    }

    // The keys of the deletes at the edge not yet sent (sluice_tombstones),
    // in the canonical form of the cloud's key: a cloud row the edge does
    // not hold under one of them was deleted, not cleaned up.
    let tombstone_keys = {
        let t = table.to_owned();
        let device = cfg.device.id.clone();
        let kinds: Vec<(String, Kind)> = keys.iter().map(|k| (k.name.clone(), k.kind)).collect();
        edge.run(move |e| pending_tombstone_keys(e.connection(), &t, &kinds, &device))
            .await?
    };

    let range = if opts.since.is_some() || opts.until.is_some() {
        let Some(tc) = &tracked.time_column else {
            bail!("--since/--until: table '{table}' has no time column (sluice_track's \"time\" option)");
        };
        Some((tc.as_str(), opts.since.as_deref(), opts.until.as_deref()))
    } else {
        None
    };
    let key_index: Vec<Option<usize>> = keys
        .iter()
        .map(|k| columns.iter().position(|c| c.name == k.name))
        .collect();
    let scan = Arc::new(EdgeScan::new(
        table,
        tracked.clone(),
        &cursor,
        &columns,
        key_index,
        &cfg.device.id,
        range,
    ));
    let unit = cursor.unit;
    let cloud_sql = {
        let unnest: Vec<String> = (1..=keys.len()).map(|i| format!("${i}::text[]")).collect();
        let names: Vec<String> = (0..keys.len()).map(|i| format!("k{i}")).collect();
        let on: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("t.{} = u.k{i}::{}", quote(&k.name), k.pg_type))
            .collect();
        let mut exprs: Vec<String> = keys.iter().map(cloud_expr).collect();
        exprs.extend(columns.iter().map(cloud_expr));
        // The cloud row's version, to tell a row the cloud holds newer.
        exprs.push(if has_version {
            "t.sluice_version".to_owned()
        } else {
            "NULL::bigint".to_owned()
        });
        let stream = if by_stream {
            format!(
                " AND t.{STREAM_COLUMN} = ANY(${}::bigint[])",
                keys.len() + 1
            )
        } else {
            String::new()
        };
        format!(
            "SELECT {} FROM {target} t JOIN unnest({}) AS u({}) ON {}{stream}",
            exprs.join(", "),
            unnest.join(", "),
            names.join(", "),
            on.join(" AND ")
        )
    };

    // The newest tombstone in the cloud (sluice.tombstones) of each of the
    // keys `$2..` (the edge's raw text, cast to the key columns' types and
    // rendered as ingest stores the key: the key columns, then
    // sluice_device, then sluice_stream), `$1` numbering them; read only
    // for the rows a bucket misses. `None`: the cloud has no such table
    // (older than 0.2); `Some(false)`: this role may not read it.
    let tombstones_readable: Option<bool> = client
        .query_one(
            "SELECT CASE WHEN to_regclass('sluice.tombstones') IS NULL THEN NULL \
             ELSE has_table_privilege('sluice.tombstones', 'SELECT') END",
            &[],
        )
        .await?
        .get(0);
    let tombstone_sql = {
        let n = keys.len();
        let unnest: Vec<String> = (2..=n + 1).map(|i| format!("${i}::text[]")).collect();
        let names: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
        let cast = |i: usize| format!("CAST(u.k{i} AS {})::text", keys[i].pg_type);
        let mut parts: Vec<String> = (0..n)
            .filter(|&i| keys[i].name != "sluice_device")
            .map(cast)
            .collect();
        parts.extend(
            (0..n)
                .filter(|&i| keys[i].name == "sluice_device")
                .map(cast),
        );
        let m = parts.len();
        let key = if by_stream {
            format!(
                "tb.key[1:{m}] = ARRAY[{}]::text[] AND tb.key[{}] = ANY(${}::bigint[]::text[])",
                parts.join(", "),
                m + 1,
                n + 3
            )
        } else {
            format!("tb.key = ARRAY[{}]::text[]", parts.join(", "))
        };
        format!(
            "SELECT u.i, tb.version, tb.device_id FROM unnest($1::bigint[], {}) AS u(i, {}) \
             JOIN sluice.tombstones tb ON tb.target = ${}::oid::regclass AND {key}",
            unnest.join(", "),
            names.join(", "),
            n + 2
        )
    };

    let mut findings = Findings::default();
    // Acknowledged edge rows the cloud does not hold because it applied a
    // newer delete of their key: another device's, or what this database
    // sent before it was restored from a backup (the lost future). Like a
    // newer write, no difference.
    let mut deleted_in_cloud = 0u64;
    // Missing rows not checked against the cloud's deletes: this role may
    // not read sluice.tombstones.
    let mut deletes_unchecked = 0u64;
    // Rows the cloud holds at a higher version than the edge: another
    // device's later write, or what this database sent before it was
    // restored from a backup (a restore does not revert the cloud). The
    // edge's older content is no difference to report.
    let mut newer_in_cloud = 0u64;
    let (mut compared, mut pending, mut buckets, mut bad_buckets) = (0u64, 0u64, 0u64, 0u64);
    let mut edge_keys: BTreeSet<String> = BTreeSet::new();
    let mut last = None;
    loop {
        let s = scan.clone();
        let bucket = edge.run(move |e| s.bucket(e.connection(), last)).await?;
        if bucket.read == 0 {
            break;
        }
        last = bucket.last;
        edge_keys.extend(bucket.keys);
        pending += bucket.pending;
        let edge_rows = bucket.rows;
        let edge_versions = bucket.versions;
        buckets += 1;
        compared += edge_rows.len() as u64;
        let mut cloud_rows: BTreeMap<String, String> = BTreeMap::new();
        let mut cloud_versions: BTreeMap<String, i64> = BTreeMap::new();
        if !edge_rows.is_empty() {
            let mut bind: Vec<&(dyn ToSql + Sync)> = bucket
                .key_params
                .iter()
                .map(|v| v as &(dyn ToSql + Sync))
                .collect();
            if by_stream {
                bind.push(&lookup_streams);
            }
            for r in client.query(&cloud_sql, &bind).await? {
                let key: Vec<String> = keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| canon_cloud(&r, i, k.kind))
                    .collect();
                let values: Vec<String> = columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| canon_cloud(&r, keys.len() + i, c.kind))
                    .collect();
                // A row id of this database can be in the cloud under two
                // of its streams (a restored box reused it in a new epoch):
                // the one holding the edge's content is its row.
                let (key, values) = (key.join("|"), values.join("|"));
                let version: Option<i64> = r.get(keys.len() + columns.len());
                let keep_existing = cloud_rows
                    .get(&key)
                    .is_some_and(|held| edge_rows.get(&key) == Some(held));
                if !keep_existing {
                    if let Some(v) = version {
                        cloud_versions.insert(key.clone(), v);
                    }
                    cloud_rows.insert(key, values);
                }
            }
        }
        let digest = |m: &BTreeMap<String, String>| {
            let mut h = Vec::new();
            for (k, v) in m {
                h.extend_from_slice(k.as_bytes());
                h.push(0);
                h.extend_from_slice(v.as_bytes());
                h.push(b'\n');
            }
            (m.len(), fnv(&h))
        };
        if digest(&edge_rows) == digest(&cloud_rows) {
            continue;
        }
        bad_buckets += 1;
        // The newest cloud tombstone of each key the cloud does not hold.
        let absent: Vec<&String> = edge_rows
            .keys()
            .filter(|k| !cloud_rows.contains_key(*k))
            .collect();
        let mut tombstones: BTreeMap<&String, (i64, String)> = BTreeMap::new();
        if !absent.is_empty() && tombstones_readable == Some(true) {
            let index: Vec<i64> = (0..absent.len() as i64).collect();
            let params: Vec<Vec<String>> = (0..keys.len())
                .map(|c| {
                    absent
                        .iter()
                        .map(|k| bucket.key_params[c][bucket.param_index[*k]].clone())
                        .collect()
                })
                .collect();
            let mut bind: Vec<&(dyn ToSql + Sync)> = vec![&index];
            bind.extend(params.iter().map(|p| p as &(dyn ToSql + Sync)));
            bind.push(&target_oid);
            if by_stream {
                bind.push(&streams);
            }
            for r in client.query(&tombstone_sql, &bind).await? {
                let (i, version, device): (i64, i64, String) = (r.get(0), r.get(1), r.get(2));
                let Some(k) = usize::try_from(i).ok().and_then(|i| absent.get(i)) else {
                    continue;
                };
                let newest = tombstones.entry(*k).or_insert((version, device.clone()));
                if (version, &device) > (newest.0, &newest.1) {
                    *newest = (version, device);
                }
            }
        } else if tombstones_readable == Some(false) {
            deletes_unchecked += absent.len() as u64;
        }
        for (k, v) in &edge_rows {
            match cloud_rows.get(k) {
                None => {
                    let tombstone = tombstones.get(k).map(|(v, d)| (*v, d.as_str()));
                    match missing_row(edge_versions.get(k).copied(), &cfg.device.id, tombstone) {
                        Missing::DeletedByNewer => deleted_in_cloud += 1,
                        Missing::Missing => findings.missing.push(format!("{k}: {v}")),
                    }
                }
                Some(c) if c != v => {
                    if cloud_holds_newer(edge_versions.get(k), cloud_versions.get(k)) {
                        newer_in_cloud += 1;
                    } else {
                        findings
                            .different
                            .push(format!("{k}:\n      edge:  {v}\n      cloud: {c}"));
                    }
                }
                Some(_) => {}
            }
        }
    }

    // Cloud rows of this device the edge does not hold.
    let mut cleaned = 0u64;
    // Of those, rows of an earlier epoch of this database: sent before a
    // restore by what the backup did not keep (the lost future), or after a
    // copy by the original. This edge cannot hold them; they are no error.
    let mut earlier = 0u64;
    // A mutable table's key has no stream; but a new epoch moves the clock
    // to at least the Unix time in microseconds when it began and gives
    // every row a version above it (docs/sync-protocol.md), so a version
    // below that is an earlier epoch's.
    let earlier_epochs_end: Option<i64> = identity
        .as_ref()
        .filter(|i| tracked.mutable && !by_stream && i.epochs.len() > 1)
        .and_then(|i| i.epochs.last())
        .and_then(|e| e.started_at.as_deref())
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis().saturating_mul(1000));
    let mut deleted = 0u64;
    let mut other_database = 0u64;
    let mut unexplained: Vec<(String, i64)> = Vec::new();
    if has_device && has_version {
        let marked = if cloud_types.contains_key(DELETED_AT_COLUMN) {
            format!("t.{DELETED_AT_COLUMN} IS NOT NULL")
        } else {
            "false".to_owned()
        };
        let mut sql = format!(
            "SELECT {}, t.sluice_version, {marked}{} FROM {target} t WHERE t.sluice_device = $1",
            keys.iter().map(cloud_expr).collect::<Vec<_>>().join(", "),
            if by_stream {
                format!(", t.{STREAM_COLUMN}")
            } else {
                String::new()
            }
        );
        let mut bind: Vec<&(dyn ToSql + Sync)> = vec![&cfg.device.id];
        if by_stream {
            bind.push(&streams);
            sql += &format!(" AND t.{STREAM_COLUMN} = ANY($2::bigint[])");
        }
        let (since, until) = (opts.since.clone(), opts.until.clone());
        if let Some(tc) = tracked
            .time_column
            .as_ref()
            .filter(|tc| cloud_types.contains_key(*tc))
        {
            let tk = kind_of(&cloud_types[tc]);
            let cast = if tk == Kind::Timestamp {
                "::text::timestamptz"
            } else {
                "::text"
            };
            if let Some(s) = &since {
                bind.push(s);
                sql += &format!(" AND t.{} >= ${}{cast}", quote(tc), bind.len());
            }
            if let Some(u) = &until {
                bind.push(u);
                sql += &format!(" AND t.{} < ${}{cast}", quote(tc), bind.len());
            }
        }
        for r in client.query(&sql, &bind).await? {
            let key: Vec<String> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| canon_cloud(&r, i, k.kind))
                .collect();
            let key = key.join("|");
            if edge_keys.contains(&key) {
                continue;
            }
            let version: i64 = r.get(keys.len());
            let marked: bool = r.get(keys.len() + 1);
            let stream: Option<i64> = if by_stream {
                r.get(keys.len() + 2)
            } else {
                None
            };
            let epochs = Epochs {
                current_stream,
                earlier_end: earlier_epochs_end,
            };
            // A tombstone explains it: deleted at the edge, whatever its
            // version says.
            let absent = if marked || tombstone_keys.contains(&key) {
                Absent::Deleted
            } else {
                absent_row(&epochs, stream, version, tracked.acked(version))
            };
            match absent {
                Absent::EarlierEpoch => earlier += 1,
                Absent::CleanedUp => cleaned += 1,
                Absent::Deleted => deleted += 1,
                Absent::Extra => unexplained.push((key, version)),
            }
        }
        // A row no stream of this database sent may be another database's
        // under the same device id (a copy of this one, or a box given the
        // same id), where the key holds no stream: the ledger says which
        // stream's batch covered its version.
        let others = other_databases_rows(
            client,
            &cfg.device.id,
            table,
            &unexplained,
            identity.as_ref().map(|i| i.streams()).unwrap_or_default(),
        )
        .await?;
        for (key, version) in unexplained {
            if others.contains(&version) {
                other_database += 1;
            } else {
                findings.extra.push(format!(
                    "{key} (version {version}, edge acknowledged up to {})",
                    tracked.acked_seq
                ));
            }
        }
    }

    println!(
        "verify {table}: {compared} edge rows compared in {buckets} buckets of {BUCKET_ROWS} {} ({bad_buckets} differ), \
         {pending} pending rows not compared, {cleaned} cloud rows no longer at the edge (cleaned up after acknowledgement)",
        unit
    );
    if deleted > 0 {
        println!(
            "  {deleted} cloud rows were deleted at the edge (the delete is not sent yet, or the cloud marks the row deleted: on_delete 'mark')"
        );
    }
    if newer_in_cloud > 0 {
        println!(
            "  {newer_in_cloud} rows are newer in the cloud (a higher version: written by another device, or sent before this database was restored from a backup)"
        );
    }
    if deleted_in_cloud > 0 {
        println!(
            "  {deleted_in_cloud} rows were deleted in the cloud by a newer delete (a higher version: sent by another device, or before this database was restored from a backup)"
        );
    }
    if deletes_unchecked > 0 {
        println!(
            "  {deletes_unchecked} rows missing in the cloud not checked against its deletes: this role may not read sluice.tombstones"
        );
    }
    if other_database > 0 {
        println!(
            "  {other_database} cloud rows were sent by another database under this device id (a copy of this database, or another box given the same id: sluice status warns)"
        );
    }
    if earlier > 0 {
        println!(
            "  {earlier} cloud rows of earlier epochs of this database are not at the edge (sent before it was restored from a backup, or by the original of a copy)"
        );
    }
    if !(has_device && has_version) {
        println!("  extra rows not checked: {target} has no sluice_device/sluice_version column");
    }
    for (what, list) in [
        ("missing in the cloud", &findings.missing),
        ("extra in the cloud", &findings.extra),
        ("different", &findings.different),
    ] {
        println!("{what}: {}", list.len());
        for l in list.iter().take(MAX_LISTED) {
            println!("  {l}");
        }
        if list.len() > MAX_LISTED {
            println!("  ... and {} more", list.len() - MAX_LISTED);
        }
    }
    let differs = !(findings.missing.is_empty()
        && findings.extra.is_empty()
        && findings.different.is_empty());
    Ok(if differs {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_the_cloud_holds_at_a_higher_version_is_no_difference() {
        assert!(cloud_holds_newer(Some(&43), Some(&70)));
        assert!(!cloud_holds_newer(Some(&70), Some(&70)));
        assert!(!cloud_holds_newer(Some(&71), Some(&70)));
        assert!(!cloud_holds_newer(None, Some(&70)));
        assert!(!cloud_holds_newer(Some(&1), None));
    }

    /// Defect: after a restore from a backup, a camera that the lost future
    /// deleted (the cloud applied the delete, the restored edge holds the
    /// row again, unchanged since the backup) was reported missing in the
    /// cloud, and verify failed.
    #[test]
    fn a_row_the_cloud_deleted_by_a_newer_delete_is_no_difference() {
        // The edge's row is at version 40; the cloud's tombstone of its key
        // at 75, sent by this device before the restore.
        assert_eq!(
            missing_row(Some(40), "box-1", Some((75, "box-1"))),
            Missing::DeletedByNewer
        );
        // Or by another device, later.
        assert_eq!(
            missing_row(Some(40), "box-1", Some((41, "box-2"))),
            Missing::DeletedByNewer
        );
        // Equal versions: ordered by device, as ingest orders them.
        assert_eq!(
            missing_row(Some(40), "box-1", Some((40, "box-2"))),
            Missing::DeletedByNewer
        );
        assert_eq!(
            missing_row(Some(40), "box-2", Some((40, "box-1"))),
            Missing::Missing
        );
        // An older delete does not explain it: the edge's newer row should
        // have brought the row back.
        assert_eq!(
            missing_row(Some(40), "box-1", Some((39, "box-1"))),
            Missing::Missing
        );
        assert_eq!(
            missing_row(Some(40), "box-1", Some((40, "box-1"))),
            Missing::Missing
        );
        // No tombstone: missing.
        assert_eq!(missing_row(Some(40), "box-1", None), Missing::Missing);
        assert_eq!(
            missing_row(None, "box-1", Some((75, "box-1"))),
            Missing::Missing
        );
    }

    #[test]
    fn rows_of_earlier_epochs_are_no_difference() {
        // An append-only table keyed by stream: this database is on stream 2.
        let keyed = Epochs {
            current_stream: Some(2),
            earlier_end: None,
        };
        // The lost future of a restore sent rows under stream 1.
        assert_eq!(
            absent_row(&keyed, Some(1), 900, false),
            Absent::EarlierEpoch
        );
        assert_eq!(absent_row(&keyed, Some(2), 900, false), Absent::Extra);
        assert_eq!(absent_row(&keyed, Some(2), 10, true), Absent::CleanedUp);
        // A row of no known stream (from before 0.2) counts as this
        // database's, as it did then.
        assert_eq!(absent_row(&keyed, Some(0), 900, false), Absent::Extra);
        assert_eq!(absent_row(&keyed, Some(0), 10, true), Absent::CleanedUp);
        // A mutable table of a database whose current epoch began at
        // 1_796_000_000_000 ms: versions below it in microseconds are older.
        let mutable = Epochs {
            current_stream: None,
            earlier_end: Some(1_796_000_000_000_000),
        };
        assert_eq!(absent_row(&mutable, None, 28, false), Absent::EarlierEpoch);
        assert_eq!(
            absent_row(&mutable, None, 1_796_000_000_000_123, false),
            Absent::Extra
        );
        // One epoch only: everything not acknowledged is extra, as before.
        let first = Epochs {
            current_stream: None,
            earlier_end: None,
        };
        assert_eq!(absent_row(&first, None, 28, false), Absent::Extra);
        assert_eq!(absent_row(&first, None, 28, true), Absent::CleanedUp);
    }
}
