//! The canonical text of a value, one rendering per cloud column type, so
//! that the edge's `'2026-11-18T11:06:40.123Z'` and the cloud's
//! `timestamptz` (or an integer 1 and a `boolean`, or float32 bytes and a
//! pgvector `vector`) compare equal.

use std::hash::Hasher;

use rusqlite::types::ValueRef;
use sluice_wire::quote_ident as quote;

/// One compared column: its name and the cloud's type.
pub struct Column {
    pub name: String,
    pub kind: Kind,
    pub pg_type: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
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

pub fn kind_of(pg_type: &str) -> Kind {
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
pub fn cloud_expr(c: &Column) -> String {
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

/// 64-bit FNV-1a (the `fnv` crate): stable across builds and platforms.
pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(bytes);
    h.finish()
}

pub fn canon_bytes(b: &[u8]) -> String {
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
pub fn canon_edge(v: ValueRef<'_>, kind: Kind) -> String {
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
pub fn canon_cloud(row: &tokio_postgres::Row, i: usize, kind: Kind) -> String {
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
