//! `sluice.publications`, its one owner: `sluice.publish` checks a cloud
//! table against [`Publication::check`], creates its capture trigger
//! (the SQL is [`sluice_pgsql::publication`]'s) and records the
//! publication; `sluice.unpublish` takes it back; [`publication`] reads one
//! back for `sluice.pull`, and [`of_target`] tells `sluice.ingest` which
//! columns of a target are the cloud's and which rows of an edge batch a
//! cloud delete the edge had not pulled yet overtakes.

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use sluice_pgsql::publication::{PubColumn, Publication, PublishArgs, TableColumn, WireKind};
use sluice_pgsql::sqlgen;

use crate::error::{error_code, Result, SluiceError};
use crate::spi::run_cached;
use crate::tenancy;

fn fail(code: PgSqlErrorCode, msg: impl Into<String>) -> SluiceError {
    SluiceError::new(code, format!("sluice.publish: {}", msg.into()))
}

/// The capture trigger function of a target, in schema `sluice`.
fn function_sql(target: pg_sys::Oid) -> String {
    format!("sluice.\"_internal_capture_{}\"", target.to_u32())
}

/// `sluice.publish(...)`: see `docs/postgres.md`, "Cloud to edge".
pub fn publish(target: pg_sys::Oid, args: PublishArgs, horizon: Option<Interval>) -> Result<()> {
    Spi::connect_mut(|client| {
        let role = tenancy::caller(client)?.role_oid;
        let found = client.select(
            "SELECT n.nspname::text, c.relname::text, c.relkind::text,
                    pg_catalog.pg_has_role($2, c.relowner, 'USAGE')
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = $1",
            Some(1),
            &[target.into(), role.into()],
        )?;
        if found.is_empty() {
            return Err(fail(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!("relation with OID {} does not exist", target.to_u32()),
            ));
        }
        let row = found.first();
        let schema = row.get::<String>(1)?.unwrap_or_default();
        let relname = row.get::<String>(2)?.unwrap_or_default();
        let kind = row.get::<String>(3)?.unwrap_or_default();
        let owner = row.get::<bool>(4)?.unwrap_or(false);
        let target_name = format!("{schema}.{relname}");
        if kind != "r" && kind != "p" {
            return Err(fail(
                PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
                format!("{target_name} is not a table"),
            ));
        }
        if !owner {
            return Err(fail(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("only the owner of {target_name} may publish it"),
            ));
        }
        let target_sql = sqlgen::quote_qualified(&schema, &relname);

        let mut table = Vec::new();
        for r in client.select(
            "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, NULL), a.attnotnull,
                    EXISTS (SELECT FROM pg_catalog.pg_operator o
                            WHERE o.oprname = '=' AND o.oprleft = b.base AND o.oprright = b.base
                              AND o.oprnamespace = 'pg_catalog'::regnamespace)
                    AND (a.attcollation = 0 OR COALESCE((SELECT c.collisdeterministic FROM pg_catalog.pg_collation c
                                                          WHERE c.oid = a.attcollation), true))
             FROM pg_catalog.pg_attribute a
             JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
             CROSS JOIN LATERAL (SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END AS base) b
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            None,
            &[target.into()],
        )? {
            table.push(TableColumn {
                name: r.get::<String>(1)?.unwrap_or_default(),
                type_sql: r.get::<String>(2)?.unwrap_or_default(),
                not_null: r.get::<bool>(3)?.unwrap_or(false),
                comparable: r.get::<bool>(4)?.unwrap_or(false),
            });
        }
        let mut primary_key = Vec::new();
        let mut unique_keys = Vec::new();
        for r in client.select(
            "SELECT i.indisprimary, array_agg(a.attname::text ORDER BY k.ord)
             FROM pg_catalog.pg_index i
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid
               AND i.indpred IS NULL AND i.indexprs IS NULL
             GROUP BY i.indexrelid, i.indisprimary",
            None,
            &[target.into()],
        )? {
            let cols = r.get::<Vec<String>>(2)?.unwrap_or_default();
            if r.get::<bool>(1)?.unwrap_or(false) {
                primary_key = cols.clone();
            }
            unique_keys.push(cols);
        }
        let publication = Publication::check(
            &target_name,
            &target_sql,
            &relname,
            &table,
            &primary_key,
            &unique_keys,
            &args,
        )
        .map_err(|e| fail(error_code(e.sqlstate), e.message))?;
        let edge = publication.edge_table.as_str();

        let other = client.select(
            "SELECT edge_table FROM sluice.publications WHERE target = $1::oid::regclass AND edge_table <> $2",
            Some(1),
            &[target.into(), edge.into()],
        )?;
        if !other.is_empty() {
            let name = other.first().get::<String>(1)?.unwrap_or_default();
            return Err(fail(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "{target_name} is already published as edge table '{name}'; unpublish it first"
                ),
            ));
        }

        // The previous settings: the stream is kept unless what a device
        // holds would no longer match (target, key, scope or columns).
        let old = client.select(
            "SELECT target::oid, stream_id, key_columns, columns, tenant_column, device_column
             FROM sluice.publications WHERE edge_table = $1",
            Some(1),
            &[edge.into()],
        )?;
        let mut keep_stream = None;
        let mut old_target = None;
        if !old.is_empty() {
            let r = old.first();
            let t = r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid);
            let same = t == target
                && r.get::<Vec<String>>(3)?.unwrap_or_default() == publication.key_names()
                && r.get::<Vec<String>>(4)?.unwrap_or_default() == publication.column_names()
                && r.get::<String>(5)? == args.tenant_column
                && r.get::<String>(6)? == args.device_column;
            if same {
                keep_stream = r.get::<i64>(2)?;
            }
            if t != target {
                old_target = Some(t);
            }
        }
        if let Some(t) = old_target {
            drop_capture(client, t)?;
        }

        let function = function_sql(target);
        client.update(&publication.capture_function_sql(&function), None, &[])?;
        drop_triggers(client, target, &target_sql)?;
        for sql in publication.create_triggers_sql(&function) {
            client.update(&sql, None, &[])?;
        }
        client.update(
            "INSERT INTO sluice.publications AS p
                 (edge_table, target, stream_id, key_columns, columns, tenant_column, device_column, horizon)
             VALUES ($1, $2::oid::regclass,
                     COALESCE($3, NULLIF(('x' || substr(md5(gen_random_uuid()::text), 1, 16))::bit(64)::bigint, 0), 1),
                     $4, $5, $6, $7, COALESCE($8, interval '7 days'))
             ON CONFLICT (edge_table) DO UPDATE SET
                 target = EXCLUDED.target, stream_id = EXCLUDED.stream_id,
                 key_columns = EXCLUDED.key_columns, columns = EXCLUDED.columns,
                 tenant_column = EXCLUDED.tenant_column, device_column = EXCLUDED.device_column,
                 horizon = EXCLUDED.horizon",
            None,
            &[
                edge.into(),
                target.into(),
                keep_stream.into(),
                publication.key_names().into(),
                publication.column_names().into(),
                args.tenant_column.clone().into(),
                args.device_column.clone().into(),
                horizon.into(),
            ],
        )?;
        if keep_stream.is_none() {
            // A new stream: every device takes a snapshot, and the entries
            // of the old one are never read again.
            client.update(
                "DELETE FROM sluice.changes WHERE edge_table = $1",
                None,
                &[edge.into()],
            )?;
        }
        Ok(())
    })
}

/// Drops the capture triggers of `target` (if it still exists) and its
/// trigger function.
fn drop_capture(client: &mut SpiClient<'_>, target: pg_sys::Oid) -> Result<()> {
    let found = client.select(
        "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        Some(1),
        &[target.into()],
    )?;
    if !found.is_empty() {
        let (s, t) = found.first().get_two::<String, String>()?;
        let target_sql = sqlgen::quote_qualified(&s.unwrap_or_default(), &t.unwrap_or_default());
        drop_triggers(client, target, &target_sql)?;
    }
    client.update(
        &format!("DROP FUNCTION IF EXISTS {}()", function_sql(target)),
        None,
        &[],
    )?;
    Ok(())
}

/// Drops the capture triggers `target` has (without a NOTICE for those it
/// has not).
fn drop_triggers(client: &mut SpiClient<'_>, target: pg_sys::Oid, target_sql: &str) -> Result<()> {
    let names: Vec<String> = Publication::TRIGGERS
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut found = Vec::new();
    for r in client.select(
        "SELECT tgname::text FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND tgname = ANY ($2)",
        None,
        &[target.into(), names.into()],
    )? {
        found.push(r.get::<String>(1)?.unwrap_or_default());
    }
    for name in found {
        client.update(&Publication::drop_trigger_sql(target_sql, &name), None, &[])?;
    }
    Ok(())
}

/// `sluice.unpublish(edge_table)`: true when it was published.
pub fn unpublish(edge_table: &str) -> Result<bool> {
    Spi::connect_mut(|client| {
        let role = tenancy::caller(client)?.role_oid;
        let found = client.select(
            "SELECT p.target::oid, COALESCE(pg_catalog.pg_has_role($2, c.relowner, 'USAGE'), true)
             FROM sluice.publications p LEFT JOIN pg_catalog.pg_class c ON c.oid = p.target::oid
             WHERE p.edge_table = $1",
            Some(1),
            &[edge_table.into(), role.into()],
        )?;
        if found.is_empty() {
            return Ok(false);
        }
        let (target, owner) = found.first().get_two::<pg_sys::Oid, bool>()?;
        if owner != Some(true) {
            return Err(SluiceError::new(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!(
                    "sluice.unpublish: only the owner of the target may unpublish '{edge_table}'"
                ),
            ));
        }
        drop_capture(client, target.unwrap_or(pg_sys::InvalidOid))?;
        for sql in [
            "DELETE FROM sluice.changes WHERE edge_table = $1",
            "DELETE FROM sluice.subscriptions WHERE edge_table = $1",
            "DELETE FROM sluice.publications WHERE edge_table = $1",
        ] {
            client.update(sql, None, &[edge_table.into()])?;
        }
        Ok(true)
    })
}

/// A publication as `sluice.pull` needs it.
pub struct Published {
    pub publication: Publication,
    pub target: pg_sys::Oid,
    pub stream_id: i64,
    pub purged_through: i64,
}

/// The publication of `edge_table`, its columns' types read again from the
/// catalog (42704 when it is not published, 42P01 when its target is gone).
pub fn publication(client: &mut SpiClient<'_>, edge_table: &str) -> Result<Published> {
    let fail = |code, m: String| SluiceError::new(code, format!("sluice.pull: {m}"));
    let found = run_cached(
        client,
        "SELECT p.target::oid, n.nspname::text, c.relname::text, p.stream_id, p.purged_through,
                p.key_columns, p.columns, p.tenant_column, p.device_column,
                (SELECT array_agg(pg_catalog.format_type(a.atttypid, NULL) ORDER BY u.i)
                   FROM unnest(p.columns) WITH ORDINALITY AS u(name, i)
                   LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = p.target::oid
                        AND a.attname = u.name AND a.attnum > 0 AND NOT a.attisdropped)
         FROM sluice.publications p
         LEFT JOIN pg_catalog.pg_class c ON c.oid = p.target::oid
         LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE p.edge_table = $1",
        &[PgBuiltInOids::TEXTOID],
        &[edge_table.into()],
    )?;
    if found.is_empty() {
        return Err(fail(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("edge table '{edge_table}' is not published; call sluice.publish('<table>', '{edge_table}')"),
        ));
    }
    let r = found.first();
    let target = r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid);
    let (Some(schema), Some(relname)) = (r.get::<String>(2)?, r.get::<String>(3)?) else {
        return Err(fail(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("the table published as '{edge_table}' no longer exists"),
        ));
    };
    let keys = r.get::<Vec<String>>(6)?.unwrap_or_default();
    let names = r.get::<Vec<String>>(7)?.unwrap_or_default();
    let tenant = r.get::<String>(8)?;
    let device = r.get::<String>(9)?;
    let types = r.get::<Vec<Option<String>>>(10)?.unwrap_or_default();
    let mut columns = Vec::with_capacity(names.len());
    for (name, ty) in names.iter().zip(types) {
        let Some(type_sql) = ty else {
            return Err(fail(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!("published column \"{name}\" of '{edge_table}' no longer exists in {schema}.{relname}; publish the table again"),
            ));
        };
        columns.push(PubColumn {
            name: name.clone(),
            kind: WireKind::of(&type_sql),
            type_sql,
            // Only the capture trigger compares values: not used by pulls.
            comparable: false,
        });
    }
    let pos = |n: &str| columns.iter().position(|c| c.name == n);
    let publication = Publication {
        edge_table: edge_table.to_owned(),
        target_sql: sqlgen::quote_qualified(&schema, &relname),
        key: keys.iter().filter_map(|k| pos(k)).collect(),
        tenant: tenant.as_deref().and_then(pos),
        device: device.as_deref().and_then(pos),
        columns,
    };
    Ok(Published {
        publication,
        target,
        stream_id: r.get::<i64>(4)?.unwrap_or(0),
        purged_through: r.get::<i64>(5)?.unwrap_or(0),
    })
}

/// What `sluice.ingest` needs of the publication of its target (a table
/// both sides write: published down, registered up).
pub struct OfTarget {
    /// The columns the publication makes the cloud's (the published
    /// columns but the key): an upsert of `sluice.ingest` never updates
    /// them.
    pub cloud_owned: Vec<String>,
    pub edge_table: String,
    pub stream_id: i64,
    pub key: Vec<String>,
    pub tenant_column: Option<String>,
}

impl OfTarget {
    /// The rows to leave out of a batch whose edge had applied the
    /// publication's changes up to `pulled` ([`sqlgen::UnseenDeletes`];
    /// `columns`: the batch's columns as the target has them; `first_param`:
    /// where the edge table and the checkpoint are bound). A checkpoint of
    /// another stream (the table was published again, or the edge applied
    /// no snapshot yet) counts as none. `None` when the batch lacks a key
    /// column of the publication (its rows could not be inserted anyway).
    pub fn unseen_deletes(
        &self,
        columns: &[sqlgen::TargetColumn],
        pulled: sluice_wire::Pulled,
        first_param: usize,
    ) -> Option<(sqlgen::UnseenDeletes, i64)> {
        let pos = |n: &str| columns.iter().position(|c| c.name == n);
        let key = self
            .key
            .iter()
            .map(|k| pos(k))
            .collect::<Option<Vec<_>>>()?;
        let tenant = match &self.tenant_column {
            None => sqlgen::ChangeTenant::Unscoped,
            Some(t) => pos(t).map_or(sqlgen::ChangeTenant::Any, sqlgen::ChangeTenant::Column),
        };
        let checkpoint = if pulled.stream_id as i64 == self.stream_id {
            pulled.checkpoint
        } else {
            0
        };
        Some((
            sqlgen::UnseenDeletes {
                key,
                tenant,
                first_param,
            },
            checkpoint,
        ))
    }
}

/// The publication of `target`, when it is published.
pub fn of_target(client: &mut SpiClient<'_>, target: pg_sys::Oid) -> Result<Option<OfTarget>> {
    let found = run_cached(
        client,
        "SELECT ARRAY(SELECT c FROM unnest(p.columns) AS c WHERE c <> ALL (p.key_columns)),
                p.edge_table, p.stream_id, p.key_columns, p.tenant_column
         FROM sluice.publications p WHERE p.target = $1::regclass",
        &[PgBuiltInOids::OIDOID],
        &[target.into()],
    )?;
    if found.is_empty() {
        return Ok(None);
    }
    let r = found.first();
    Ok(Some(OfTarget {
        cloud_owned: r.get::<Vec<String>>(1)?.unwrap_or_default(),
        edge_table: r.get::<String>(2)?.unwrap_or_default(),
        stream_id: r.get::<i64>(3)?.unwrap_or(0),
        key: r.get::<Vec<String>>(4)?.unwrap_or_default(),
        tenant_column: r.get::<String>(5)?,
    }))
}
