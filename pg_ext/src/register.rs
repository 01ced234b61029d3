//! `sluice.tables`, the registrations, and its one owner:
//! `sluice.register_table` maps an edge table to a cloud table, after
//! checking that ingest will be able to upsert into it, and [`registration`]
//! reads a row back for ingest.

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use sluice_pgsql::registration::{check_arguments, ArgumentError};
use sluice_pgsql::sqlgen::{
    self, OnDelete, Policy, DELETED_AT_COLUMN, DEVICE_COLUMN, STREAM_COLUMN, VERSION_COLUMN,
};
use sluice_wire::names::quote_ident;

use crate::error::{error_code, Result, SluiceError};
use crate::spi::run_cached;

/// Registers (or re-registers) `edge_table` → `target`: validates the policy
/// and key columns, requires a unique index on exactly the key columns, adds
/// the bookkeeping columns `sluice_device text` and `sluice_version bigint`
/// to the target if missing (`sluice_stream bigint` is the target's choice:
/// checked when present, never added), and upserts the row of
/// `sluice.tables`. `on_delete` is what a delete at the edge does
/// ([`OnDelete`]); `mark` needs a `sluice_deleted_at timestamptz` column.
pub fn register(
    edge_table: &str,
    target: pg_sys::Oid,
    key_columns: &[String],
    policy: &str,
    tenant_column: Option<&str>,
    on_delete: &str,
) -> Result<()> {
    let fail = |code, msg: String| SluiceError::new(code, format!("sluice.register_table: {msg}"));
    let policy = check_arguments(edge_table, key_columns, policy)
        .map_err(|e| fail(error_code(ArgumentError::SQLSTATE), e.message))?;
    let on_delete = OnDelete::parse(on_delete).ok_or_else(|| {
        fail(
            error_code(ArgumentError::SQLSTATE),
            format!(
                "unknown on_delete '{on_delete}'; expected one of {}",
                OnDelete::ALL.map(|m| format!("'{}'", m.name())).join(", ")
            ),
        )
    })?;

    Spi::connect_mut(|client| {
        let found = client.select(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            Some(1),
            &[target.into()],
        )?;
        // No row: the OID names no relation (reading the first row of an
        // empty result would be an SPI error, not this message).
        let (schema, table) = if found.is_empty() {
            (None, None)
        } else {
            found.first().get_two::<String, String>()?
        };
        let (Some(schema), Some(table)) = (schema, table) else {
            return Err(fail(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!("relation with OID {} does not exist", target.to_u32()),
            ));
        };
        let target_sql = sqlgen::quote_qualified(&schema, &table);
        let target_name = format!("{schema}.{table}");

        // Existing columns among the keys, the bookkeeping columns and the tenant.
        let mut wanted: Vec<String> = key_columns.to_vec();
        wanted.push(DEVICE_COLUMN.into());
        wanted.push(VERSION_COLUMN.into());
        wanted.push(STREAM_COLUMN.into());
        wanted.push(DELETED_AT_COLUMN.into());
        let mut existing: Vec<(String, String)> = Vec::new();
        for row in client.select(
            "SELECT a.attname::text, format_type(a.atttypid, NULL) FROM pg_attribute a \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
               AND a.attname = ANY ($2::text[])",
            None,
            &[target.into(), wanted.clone().into()],
        )? {
            if let (Some(n), Some(t)) = (row.get::<String>(1)?, row.get::<String>(2)?) {
                existing.push((n, t));
            }
        }
        let type_of = |name: &str| {
            existing
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.as_str())
        };
        for k in key_columns {
            if type_of(k).is_none() {
                return Err(fail(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                    format!("key column '{k}' does not exist in {target_name}"),
                ));
            }
        }
        if let Some(tenant) = tenant_column {
            // Rows of different tenants must never meet in ON CONFLICT: a
            // device could otherwise overwrite another location's row.
            if !key_columns.iter().any(|k| k == tenant) {
                return Err(fail(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("tenant column '{tenant}' must be one of the key columns, so that rows of different tenants never share a key"),
                ));
            }
            let exists = client
                .select(
                    "SELECT 1 FROM pg_attribute WHERE attrelid = $1 AND attname = $2 \
                     AND attnum > 0 AND NOT attisdropped",
                    Some(1),
                    &[target.into(), tenant.into()],
                )?
                .len()
                == 1;
            if !exists {
                return Err(fail(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                    format!("tenant column '{tenant}' does not exist in {target_name}"),
                ));
            }
        }

        // ON CONFLICT (keys) needs a unique, immediate, non-partial index on
        // exactly these columns.
        let has_index = client
            .select(
                "SELECT EXISTS (
                   SELECT 1 FROM pg_index i
                   WHERE i.indrelid = $1 AND i.indisunique AND i.indimmediate AND i.indisvalid
                     AND i.indpred IS NULL AND i.indexprs IS NULL
                     AND i.indnkeyatts = cardinality($2::text[])
                     AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text COLLATE \"C\")
                          FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                          WHERE k.ord <= i.indnkeyatts)
                       = (SELECT array_agg(x ORDER BY x COLLATE \"C\") FROM unnest($2::text[]) AS x))",
                Some(1),
                &[target.into(), key_columns.to_vec().into()],
            )?
            .first()
            .get_one::<bool>()?
            .unwrap_or(false);
        if !has_index {
            return Err(fail(
                PgSqlErrorCode::ERRCODE_INVALID_OBJECT_DEFINITION,
                format!(
                    "{target_name} has no unique index or constraint on exactly the key columns ({}); ingest needs one to recognise rows it has seen",
                    key_columns.join(", ")
                ),
            )
            .with_hint(sqlgen::unique_index_hint(&target_sql, key_columns)));
        }

        // Bookkeeping columns.
        let mut adds = Vec::new();
        for (col, ty) in [(DEVICE_COLUMN, "text"), (VERSION_COLUMN, "bigint")] {
            match type_of(col) {
                None => adds.push(format!(
                    "ADD COLUMN IF NOT EXISTS {} {ty}",
                    quote_ident(col)
                )),
                Some(t) if t == ty => {}
                Some(t) => {
                    return Err(fail(
                        PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                        format!("{target_name}.{col} has type {t}; sluice needs {ty}"),
                    ))
                }
            }
        }
        if on_delete == OnDelete::Mark {
            match type_of(DELETED_AT_COLUMN) {
                Some("timestamp with time zone") => {}
                found => {
                    return Err(fail(
                        PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                        match found {
                            None => format!(
                                "on_delete 'mark' needs a column {DELETED_AT_COLUMN} timestamptz in {target_name}"
                            ),
                            Some(t) => format!(
                                "{target_name}.{DELETED_AT_COLUMN} has type {t}; on_delete 'mark' needs timestamptz"
                            ),
                        },
                    )
                    .with_hint(format!(
                        "ALTER TABLE {target_sql} ADD COLUMN {DELETED_AT_COLUMN} timestamptz"
                    )))
                }
            }
        }
        if let Some(t) = type_of(STREAM_COLUMN).filter(|t| *t != "bigint") {
            return Err(fail(
                PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                format!("{target_name}.{STREAM_COLUMN} has type {t}; sluice needs bigint"),
            ));
        }
        if !adds.is_empty() {
            client.update(
                &format!("ALTER TABLE {target_sql} {}", adds.join(", ")),
                None,
                &[],
            )?;
        }

        client.update(
            "INSERT INTO sluice.tables (edge_table, target, key_columns, policy, tenant_column, on_delete)
             VALUES ($1, $2::oid::regclass, $3, $4, $5, $6)
             ON CONFLICT (edge_table) DO UPDATE SET target = EXCLUDED.target,
               key_columns = EXCLUDED.key_columns, policy = EXCLUDED.policy,
               tenant_column = EXCLUDED.tenant_column, on_delete = EXCLUDED.on_delete,
               registered_at = now()",
            None,
            &[
                edge_table.into(),
                target.into(),
                key_columns.to_vec().into(),
                policy.name().into(),
                tenant_column.into(),
                on_delete.name().into(),
            ],
        )?;
        Ok(())
    })
}

/// A row of `sluice.tables`, with the target's current name.
pub struct Registration {
    /// The target table.
    pub target: pg_sys::Oid,
    /// `"schema"."table"`.
    pub target_sql: String,
    /// `schema.table`, for messages.
    pub target_name: String,
    /// The key columns, in registration order (may include `sluice_device`).
    pub key_columns: Vec<String>,
    pub policy: Policy,
    /// The column holding the location (tenant), if registered.
    pub tenant_column: Option<String>,
    /// The target has a `sluice_stream` column, filled from the batch.
    pub stream_column: bool,
    /// What a delete at the edge does here.
    pub on_delete: OnDelete,
}

/// The registration of `edge_table`, for `sluice.ingest` (errors say so).
pub fn registration(client: &mut SpiClient<'_>, edge_table: &str) -> Result<Registration> {
    let table = run_cached(
        client,
        "SELECT t.target::oid, n.nspname::text, c.relname::text, t.key_columns, t.policy, t.tenant_column,
                EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = t.target::oid
                          AND a.attname = 'sluice_stream' AND a.attnum > 0 AND NOT a.attisdropped),
                t.on_delete
         FROM sluice.tables t
         LEFT JOIN pg_class c ON c.oid = t.target::oid
         LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE t.edge_table = $1",
        &[PgBuiltInOids::TEXTOID],
        &[edge_table.into()],
    )?;
    if table.is_empty() {
        return Err(SluiceError::ingest(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!(
                "edge table '{edge_table}' is not registered; call sluice.register_table('{edge_table}', '<target table>', ARRAY['<key column>', ...])"
            ),
        ));
    }
    let row = table.first();
    let target = row.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid);
    let (Some(schema), Some(relname)) = (row.get::<String>(2)?, row.get::<String>(3)?) else {
        return Err(SluiceError::ingest(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!(
                "the target table of edge table '{edge_table}' (OID {}) no longer exists; register the edge table again",
                target.to_u32()
            ),
        ));
    };
    let key_columns = row.get::<Vec<String>>(4)?.unwrap_or_default();
    let policy_name = row.get::<String>(5)?.unwrap_or_default();
    let policy = Policy::parse(&policy_name).ok_or_else(|| {
        SluiceError::ingest(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "edge table '{edge_table}' has unknown policy '{policy_name}' in sluice.tables"
            ),
        )
    })?;
    Ok(Registration {
        target,
        target_sql: sqlgen::quote_qualified(&schema, &relname),
        target_name: format!("{schema}.{relname}"),
        key_columns,
        policy,
        tenant_column: row.get::<String>(6)?,
        stream_column: row.get::<bool>(7)?.unwrap_or(false),
        on_delete: row
            .get::<String>(8)?
            .as_deref()
            .and_then(OnDelete::parse)
            .unwrap_or_default(),
    })
}
