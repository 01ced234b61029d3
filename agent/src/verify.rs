//! `sluice verify`: proves that the cloud holds what the edge holds, for one
//! table, by per-range checksums.
//!
//! The edge keeps only recent rows (cleanup), so the comparison walks the
//! rows still at the edge, in buckets of [`BUCKET_ROWS`] rowids. For each
//! bucket it reads the edge rows (without local-only columns), finds the
//! cloud row of each by the registration's key (`sluice.tables.key_columns`;
//! `sluice_device` is this device), renders both sides as canonical text
//! (one rendering per cloud column type, so that `'2026-11-18T11:06:40.123Z'`
//! and a `timestamptz` agree) and compares the buckets' row counts and
//! hashes; a bucket that differs is descended into row by row. Rows still
//! pending at the edge are not compared (the cloud may hold an older
//! version: that is expected). Rows of this device in the cloud that the
//! edge never acknowledged and does not hold (version above the edge's
//! acknowledged watermark) are reported as extra; older cloud rows missing
//! at the edge were cleaned up there after their acknowledgement and are
//! only counted.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use anyhow::{bail, Context};
use rusqlite::types::ValueRef;
use tokio_postgres::types::ToSql;

use crate::cloud::Cloud;
use crate::config::Config;
use crate::edge::Edge;

/// Edge rowids per checksummed bucket.
pub const BUCKET_ROWS: i64 = 1000;

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

/// One compared column: its name and the cloud's type.
struct Column {
    name: String,
    kind: Kind,
    pg_type: String,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Float,
    Bool,
    Timestamp,
    Json,
    Bytes,
    /// pgvector `vector`: the edge holds it as little-endian float32 bytes.
    Vector,
    Text,
}

fn kind_of(pg_type: &str) -> Kind {
    if pg_type == "vector" || pg_type.starts_with("vector(") {
        return Kind::Vector;
    }
    match pg_type {
        "smallint" | "integer" | "bigint" => Kind::Int,
        "real" | "double precision" => Kind::Float,
        "boolean" => Kind::Bool,
        "timestamp with time zone" => Kind::Timestamp,
        "json" | "jsonb" => Kind::Json,
        "bytea" => Kind::Bytes,
        _ => Kind::Text,
    }
}

/// The cloud expression that reads a column in its canonical form.
fn cloud_expr(c: &Column) -> String {
    let q = quote(&c.name);
    match c.kind {
        Kind::Int => format!("t.{q}::bigint"),
        Kind::Float => format!("t.{q}::float8"),
        Kind::Bool | Kind::Bytes => format!("t.{q}"),
        // Exactly the float32 values, compared as the edge's bytes.
        Kind::Vector => format!("t.{q}::real[]"),
        Kind::Timestamp => {
            format!("to_char(t.{q} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
        }
        Kind::Json | Kind::Text => format!("t.{q}::text"),
    }
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn canon_bytes(b: &[u8]) -> String {
    format!("bytes:{}:{:016x}", b.len(), fnv(b))
}

fn canon_json(t: &str) -> String {
    serde_json::from_str::<serde_json::Value>(t)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| t.to_owned())
}

fn canon_time(t: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(t) {
        Ok(d) => d
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string(),
        Err(_) => t.to_owned(),
    }
}

/// An edge value in the canonical form of the cloud column's type.
fn canon_edge(v: ValueRef<'_>, kind: Kind) -> String {
    match (v, kind) {
        (ValueRef::Null, _) => "\\N".into(),
        (ValueRef::Integer(i), Kind::Float) => format!("{:?}", i as f64),
        (ValueRef::Integer(i), Kind::Bool) => (if i != 0 { "t" } else { "f" }).into(),
        (ValueRef::Integer(i), _) => i.to_string(),
        (ValueRef::Real(f), Kind::Int) if f.fract() == 0.0 => (f as i64).to_string(),
        (ValueRef::Real(f), _) => format!("{f:?}"),
        (ValueRef::Text(t), k) => {
            let t = String::from_utf8_lossy(t);
            match k {
                Kind::Timestamp => canon_time(&t),
                Kind::Json => canon_json(&t),
                Kind::Bytes => canon_bytes(t.as_bytes()),
                _ => t.into_owned(),
            }
        }
        (ValueRef::Blob(b), _) => canon_bytes(b),
    }
}

/// A cloud value (read through [`cloud_expr`]) in canonical form.
fn canon_cloud(row: &tokio_postgres::Row, i: usize, kind: Kind) -> String {
    let s = match kind {
        Kind::Int => row.get::<_, Option<i64>>(i).map(|v| v.to_string()),
        Kind::Float => row.get::<_, Option<f64>>(i).map(|v| format!("{v:?}")),
        Kind::Bool => row
            .get::<_, Option<bool>>(i)
            .map(|v| (if v { "t" } else { "f" }).to_owned()),
        Kind::Bytes => row.get::<_, Option<Vec<u8>>>(i).map(|b| canon_bytes(&b)),
        Kind::Vector => row.get::<_, Option<Vec<f32>>>(i).map(|v| {
            let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
            canon_bytes(&bytes)
        }),
        Kind::Json => row.get::<_, Option<String>>(i).map(|t| canon_json(&t)),
        Kind::Timestamp | Kind::Text => row.get::<_, Option<String>>(i),
    };
    s.unwrap_or_else(|| "\\N".into())
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
    let edge = Edge::open(cfg)?;
    let conn = edge.connection();
    let table = opts.table.as_str();
    let (mutable, local_only, acked_seq, time_column): (bool, String, i64, Option<String>) = conn
        .query_row(
            "SELECT mutable, local_only, acked_seq, time_column FROM sluice_tables WHERE tbl = ?1",
            [table],
            |r| Ok((r.get::<_, i64>(0)? != 0, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .with_context(|| format!("table '{table}' is not tracked at the edge"))?;
    let local_only: Vec<String> = serde_json::from_str(&local_only).unwrap_or_default();
    // Acknowledged ranges above the watermark (newest-first draining).
    let ranges: Vec<(i64, i64)> =
        match conn.prepare("SELECT lo, hi FROM sluice_acked_ranges WHERE tbl = ?1 AND hi > ?2") {
            Ok(mut stmt) => stmt
                .query_map(rusqlite::params![table, acked_seq], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<Result<_, _>>()?,
            // An edge database from before ranges existed.
            Err(_) => Vec::new(),
        };
    let acked = |v: i64| v <= acked_seq || ranges.iter().any(|&(lo, hi)| v > lo && v <= hi);
    let edge_columns: Vec<String> = conn
        .prepare(&format!(
            "SELECT name FROM pragma_table_info({})",
            sql_text(table)
        ))?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;

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
        .filter(|c| !local_only.contains(c))
        .filter_map(|c| column(c))
        .collect();
    let has_device = cloud_types.contains_key("sluice_device");
    let has_version = cloud_types.contains_key("sluice_version");
    let mut keys: Vec<Column> = Vec::new();
    for k in &key_columns {
        let c = column(k).with_context(|| format!("key column '{k}' is not in {target}"))?;
        if k != "sluice_device" && !columns.iter().any(|x| &x.name == k) {
            bail!("key column '{k}' of {target} is not an uploaded column of the edge table '{table}'");
        }
        keys.push(c);
    }

    // The edge scan, bucket by bucket in the table's storage order: by
    // rowid, or by primary key for a WITHOUT ROWID table (which has no rowid).
    let cursor = scan_cursor(conn, table)?;
    let nk = cursor.columns.len();
    let seq = if mutable {
        "\"sluice_version\"".to_owned()
    } else {
        cursor.columns.join(", ")
    };
    let mut filter = String::new();
    let mut params: Vec<String> = Vec::new();
    if opts.since.is_some() || opts.until.is_some() {
        let Some(tc) = &time_column else {
            bail!("--since/--until: table '{table}' has no time column (sluice_track's \"time\" option)");
        };
        if let Some(s) = &opts.since {
            params.push(s.clone());
            filter += &format!(" AND {} >= ?{}", quote(tc), params.len() + nk);
        }
        if let Some(u) = &opts.until {
            params.push(u.clone());
            filter += &format!(" AND {} < ?{}", quote(tc), params.len() + nk);
        }
    }
    let select_cols: Vec<String> = columns.iter().map(|c| quote(&c.name)).collect();
    let order = cursor.columns.join(", ");
    let after: Vec<String> = (1..=nk).map(|i| format!("?{i}")).collect();
    let edge_sql = |first: bool| {
        format!(
            "SELECT {order}, {seq}, {} FROM {} WHERE {}{filter} ORDER BY {order} LIMIT {BUCKET_ROWS}",
            select_cols.join(", "),
            quote(table),
            if first {
                "1".to_owned()
            } else {
                format!("({order}) > ({})", after.join(", "))
            },
        )
    };
    let mut first_stmt = conn.prepare(&edge_sql(true))?;
    let mut next_stmt = conn.prepare(&edge_sql(false))?;
    let key_index: Vec<Option<usize>> = keys
        .iter()
        .map(|k| columns.iter().position(|c| c.name == k.name))
        .collect();
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
        format!(
            "SELECT {} FROM {target} t JOIN unnest({}) AS u({}) ON {}",
            exprs.join(", "),
            unnest.join(", "),
            names.join(", "),
            on.join(" AND ")
        )
    };

    let mut findings = Findings::default();
    let (mut compared, mut pending, mut buckets, mut bad_buckets) = (0u64, 0u64, 0u64, 0u64);
    let mut edge_keys: BTreeSet<String> = BTreeSet::new();
    // The last row of the previous bucket, in `cursor.columns`.
    let mut last: Option<Vec<rusqlite::types::Value>> = None;
    loop {
        // key -> canonical row, for the rows of this bucket that are acknowledged.
        let mut edge_rows: BTreeMap<String, String> = BTreeMap::new();
        let mut key_params: Vec<Vec<String>> = vec![Vec::new(); keys.len()];
        let mut n = 0;
        {
            let previous = last.take();
            let mut bind: Vec<&dyn rusqlite::ToSql> = Vec::new();
            if let Some(p) = &previous {
                bind.extend(p.iter().map(|v| v as &dyn rusqlite::ToSql));
            }
            for p in &params {
                bind.push(p);
            }
            let stmt = if previous.is_some() {
                &mut next_stmt
            } else {
                &mut first_stmt
            };
            let mut rows = stmt.query(bind.as_slice())?;
            while let Some(r) = rows.next()? {
                n += 1;
                last = Some((0..nk).map(|i| r.get(i)).collect::<Result<_, _>>()?);
                let version: Option<i64> = r.get(nk)?;
                let values: Vec<String> = columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| r.get_ref(i + nk + 1).map(|v| canon_edge(v, c.kind)))
                    .collect::<Result<_, _>>()?;
                let key_values: Vec<String> = key_index
                    .iter()
                    .map(|i| match i {
                        Some(i) => values[*i].clone(),
                        None => cfg.device.id.clone(),
                    })
                    .collect();
                let key = key_values.join("|");
                edge_keys.insert(key.clone());
                if !acked(version.unwrap_or(i64::MAX)) {
                    pending += 1;
                    continue;
                }
                for (i, k) in keys.iter().enumerate() {
                    // The raw edge text of the key (timestamps as written), cast by the cloud.
                    let raw = match key_index[i] {
                        Some(ci) => {
                            let v = r.get_ref(ci + nk + 1)?;
                            match v {
                                ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                                _ => values[ci].clone(),
                            }
                        }
                        None => cfg.device.id.clone(),
                    };
                    let _ = k;
                    key_params[i].push(raw);
                }
                edge_rows.insert(key, values.join("|"));
            }
        }
        if n == 0 {
            break;
        }
        buckets += 1;
        compared += edge_rows.len() as u64;
        let mut cloud_rows: BTreeMap<String, String> = BTreeMap::new();
        if !edge_rows.is_empty() {
            let bind: Vec<&(dyn ToSql + Sync)> = key_params
                .iter()
                .map(|v| v as &(dyn ToSql + Sync))
                .collect();
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
                cloud_rows.insert(key.join("|"), values.join("|"));
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
        for (k, v) in &edge_rows {
            match cloud_rows.get(k) {
                None => findings.missing.push(format!("{k}: {v}")),
                Some(c) if c != v => findings
                    .different
                    .push(format!("{k}:\n      edge:  {v}\n      cloud: {c}")),
                Some(_) => {}
            }
        }
    }

    // Cloud rows of this device the edge does not hold.
    let mut cleaned = 0u64;
    if has_device && has_version {
        let mut sql = format!(
            "SELECT {}, t.sluice_version FROM {target} t WHERE t.sluice_device = $1",
            keys.iter().map(cloud_expr).collect::<Vec<_>>().join(", ")
        );
        let mut bind: Vec<&(dyn ToSql + Sync)> = vec![&cfg.device.id];
        let (since, until) = (opts.since.clone(), opts.until.clone());
        if let Some(tc) = time_column
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
            if !acked(version) {
                findings.extra.push(format!(
                    "{key} (version {version}, edge acknowledged up to {acked_seq})"
                ));
            } else {
                cleaned += 1;
            }
        }
    }

    println!(
        "verify {table}: {compared} edge rows compared in {buckets} buckets of {BUCKET_ROWS} {} ({bad_buckets} differ), \
         {pending} pending rows not compared, {cleaned} cloud rows no longer at the edge (cleaned up after acknowledgement)",
        cursor.unit
    );
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

/// How the edge scan walks a table in buckets: the columns of its storage
/// order, and what a bucket counts.
struct ScanCursor {
    /// `rowid`, or the quoted primary-key columns of a WITHOUT ROWID table.
    columns: Vec<String>,
    unit: &'static str,
}

fn scan_cursor(conn: &rusqlite::Connection, table: &str) -> anyhow::Result<ScanCursor> {
    let without_rowid: bool = conn
        .query_row(
            "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
            [table],
            |r| r.get(0),
        )
        .with_context(|| format!("edge table '{table}' does not exist"))?;
    if !without_rowid {
        return Ok(ScanCursor {
            columns: vec!["rowid".to_owned()],
            unit: "rowids",
        });
    }
    let mut pk: Vec<(i64, String)> = conn
        .prepare(&format!(
            "SELECT pk, name FROM pragma_table_info({}) WHERE pk > 0",
            sql_text(table)
        ))?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    pk.sort();
    Ok(ScanCursor {
        columns: pk.iter().map(|(_, c)| quote(c)).collect(),
        unit: "rows by primary key",
    })
}

/// A SQL text literal.
fn sql_text(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
