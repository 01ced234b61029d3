//! `sluice.pull`: the next batch of a published table's changes for one
//! device, in the device's scope only, encoded in the batch format
//! (`BatchHeader.changes`, flag bit 4). Positions are transaction ids; a
//! call serves only positions below the xmin of its snapshot, so a
//! transaction that took a lower position and commits later is never
//! skipped (`docs/sync-protocol.md`, "Cloud to edge"). A device at
//! checkpoint 0, on another stream, behind the purged changes or ahead of
//! the cloud gets a snapshot, in pages in key order. Every call records the
//! device's acknowledged checkpoint in `sluice.subscriptions`.
//!
//! `sluice.subscriptions` is written here only; `sql/publish.sql` reads it
//! (`sluice.purge_changes`, `sluice.subscription_lag`, the view).

use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiTupleTable};
use sluice_pgsql::publication::{
    pull_mode, serve_below, Cursor, PullMode, SnapshotReason, WireKind, HORIZON_SQL,
};
use sluice_wire::{
    encode_with_deletes, BatchHeader, Changes, Column, EncodeOptions, Origin, Value,
};

use crate::error::{Result, SluiceError};
use crate::publish::{self, Published};
use crate::spi::run_cached;
use crate::tenancy;

/// What one call returns.
pub struct Pulled {
    pub batch: Option<Vec<u8>>,
    pub checkpoint: i64,
    pub cursor: Option<String>,
    pub more: bool,
    pub rows: i32,
}

/// The arguments of `sluice.pull`.
pub struct PullArgs<'a> {
    pub edge_table: &'a str,
    pub device_id: &'a str,
    pub checkpoint: i64,
    pub stream_id: i64,
    pub max_rows: i32,
    pub cursor: Option<&'a str>,
    pub tenant: Option<&'a str>,
}

fn fail(code: PgSqlErrorCode, msg: impl Into<String>) -> SluiceError {
    SluiceError::new(code, format!("sluice.pull: {}", msg.into()))
}

pub fn pull(a: &PullArgs<'_>) -> Result<Pulled> {
    sluice_wire::check_device_id(a.device_id)
        .map_err(|e| fail(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, e))?;
    if a.max_rows < 1 {
        return Err(fail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("max_rows must be at least 1, not {}", a.max_rows),
        ));
    }
    Spi::connect_mut(|client| {
        // First: every transaction of this database with a lower id than
        // `xmin` has ended, and this call's later statements see all of
        // those that committed.
        let horizon = run_cached(client, HORIZON_SQL, &[], &[])?;
        let h = horizon.first();
        let next_xid = h.get::<i64>(1)?.unwrap_or(1);
        let xmin = serve_below(
            next_xid,
            &h.get::<Vec<i64>>(2)?.unwrap_or_default(),
            &h.get::<Vec<i64>>(3)?.unwrap_or_default(),
            h.get::<i64>(4)?,
        );
        let served = xmin - 1;
        let p = publish::publication(client, a.edge_table)?;
        let tenant = scope_tenant(client, a, &p)?;
        let tenant = tenant.as_deref();

        let continued = match a.cursor {
            Some(text) => {
                let c = Cursor::decode(text, p.publication.key.len())
                    .map_err(|e| fail(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, e))?;
                // The publication changed under the snapshot: begin again.
                (c.stream_id == p.stream_id).then_some(c)
            }
            None => None,
        };
        let (out, started) = match continued {
            Some(c) => (snapshot_page(client, a, &p, tenant, &c)?, false),
            None => {
                let mode = if a.cursor.is_some() {
                    PullMode::Snapshot(SnapshotReason::Stream)
                } else {
                    pull_mode(
                        a.checkpoint,
                        a.stream_id,
                        p.stream_id,
                        p.purged_through,
                        next_xid,
                    )
                };
                match mode {
                    PullMode::Incremental => (incremental(client, a, &p, tenant, xmin)?, false),
                    PullMode::Snapshot(_) => {
                        let first = Cursor {
                            stream_id: p.stream_id,
                            checkpoint: served,
                            page: 0,
                            after: Vec::new(),
                        };
                        (snapshot_page(client, a, &p, tenant, &first)?, true)
                    }
                }
            }
        };
        run_cached(
            client,
            "INSERT INTO sluice.subscriptions AS s
                 (device_id, edge_table, tenant, checkpoint, stream_id, first_pulled, last_pulled, snapshots)
             VALUES ($1, $2, $3, $4, $5, now(), now(), $6)
             ON CONFLICT (device_id, edge_table) DO UPDATE SET
                 tenant = EXCLUDED.tenant, checkpoint = EXCLUDED.checkpoint,
                 stream_id = EXCLUDED.stream_id, last_pulled = now(),
                 snapshots = s.snapshots + EXCLUDED.snapshots",
            &[
                PgBuiltInOids::TEXTOID,
                PgBuiltInOids::TEXTOID,
                PgBuiltInOids::TEXTOID,
                PgBuiltInOids::INT8OID,
                PgBuiltInOids::INT8OID,
                PgBuiltInOids::INT8OID,
            ],
            &[
                a.device_id.into(),
                a.edge_table.into(),
                tenant.into(),
                a.checkpoint.into(),
                a.stream_id.into(),
                i64::from(started).into(),
            ],
        )?;
        Ok(out)
    })
}

/// The tenant whose rows the caller receives (`None` for a publication
/// without a tenant column), or 42501 / 22023.
fn scope_tenant(
    client: &mut SpiClient<'_>,
    a: &PullArgs<'_>,
    p: &Published,
) -> Result<Option<String>> {
    let caller = tenancy::caller(client)?;
    let tenant = match &caller.device {
        Some(grant) => {
            if let Some(own) = &grant.device_id {
                if own != a.device_id {
                    return Err(fail(
                        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                        format!(
                            "role \"{}\" may pull for device '{own}' only, not '{}'",
                            caller.role, a.device_id
                        ),
                    ));
                }
            }
            if let Some(t) = a.tenant {
                if t != grant.tenant {
                    return Err(fail(
                        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                        format!(
                            "role \"{}\" may pull rows of tenant '{}' only, not '{t}'",
                            caller.role, grant.tenant
                        ),
                    ));
                }
            }
            Some(grant.tenant.clone())
        }
        None => {
            let allowed = run_cached(
                client,
                "SELECT pg_catalog.has_table_privilege($1, $2, 'SELECT')",
                &[PgBuiltInOids::OIDOID, PgBuiltInOids::OIDOID],
                &[caller.role_oid.into(), p.target.into()],
            )?
            .first()
            .get_one::<bool>()?
            .unwrap_or(false);
            if !allowed {
                return Err(fail(
                    PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                    format!(
                        "role \"{}\" is not a device role (sluice.grant_device) and may not SELECT from {}",
                        caller.role, p.publication.target_sql
                    ),
                ));
            }
            match a.tenant {
                Some(t) => Some(t.to_owned()),
                None if p.publication.tenant.is_none() => None,
                None => {
                    let found = run_cached(
                        client,
                        "SELECT array_agg(DISTINCT tenant) FROM sluice.device_roles WHERE device_id = $1",
                        &[PgBuiltInOids::TEXTOID],
                        &[a.device_id.into()],
                    )?
                    .first()
                    .get_one::<Vec<String>>()?
                    .unwrap_or_default();
                    match found.as_slice() {
                        [one] => Some(one.clone()),
                        _ => {
                            return Err(fail(
                                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                                format!(
                                    "name the tenant: '{}' has a tenant column and {} device role names device '{}'",
                                    a.edge_table,
                                    if found.is_empty() { "no" } else { "more than one" },
                                    a.device_id
                                ),
                            ))
                        }
                    }
                }
            }
        }
    };
    Ok(if p.publication.tenant.is_some() {
        tenant
    } else {
        None
    })
}

/// The values of published column `i` read from `row` at ordinal `ord`.
fn value(row: &pgrx::spi::SpiHeapTupleData<'_>, ord: usize, kind: WireKind) -> Result<Value> {
    Ok(match kind {
        WireKind::Integer | WireKind::Boolean => row.get::<i64>(ord)?.map(Value::Integer),
        WireKind::Real => row.get::<f64>(ord)?.map(Value::Real),
        WireKind::Blob => row.get::<Vec<u8>>(ord)?.map(Value::Blob),
        WireKind::Timestamptz | WireKind::Text => row.get::<String>(ord)?.map(Value::Text),
    }
    .unwrap_or(Value::Null))
}

fn header(a: &PullArgs<'_>, p: &Published, base: i64, last: i64, changes: Changes) -> BatchHeader {
    let sent_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    BatchHeader {
        pulled: None,
        device_id: a.device_id.to_owned(),
        stream_id: p.stream_id as u64,
        table: a.edge_table.to_owned(),
        base_seq: base,
        last_seq: last,
        row_count: 0,
        sent_at_ms,
        columns: p
            .publication
            .columns
            .iter()
            .map(|c| Column::new(c.name.clone(), c.kind.column_type()))
            .collect(),
        fingerprint: 0,
        digest: None,
        origin: Origin::default(),
        resend: 0,
        changes: Some(changes),
    }
}

fn encode(
    h: &BatchHeader,
    versions: &[i64],
    deleted: &[bool],
    columns: &[Vec<Value>],
) -> Result<Vec<u8>> {
    encode_with_deletes(h, versions, deleted, columns, EncodeOptions::default()).map_err(|e| {
        fail(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!(
                "cannot encode the batch of '{}': {e}; pass a smaller max_rows",
                h.table
            ),
        )
    })
}

/// The changes after the device's checkpoint and below `xmin`.
fn incremental(
    client: &mut SpiClient<'_>,
    a: &PullArgs<'_>,
    p: &Published,
    tenant: Option<&str>,
    xmin: i64,
) -> Result<Pulled> {
    let pb = &p.publication;
    let served = xmin - 1;
    let (text, int8) = (PgBuiltInOids::TEXTOID, PgBuiltInOids::INT8OID);
    let first_out = run_cached(
        client,
        &pb.cut_sql(),
        &[text, int8, int8, int8, text, text],
        &[
            a.edge_table.into(),
            a.checkpoint.into(),
            xmin.into(),
            i64::from(a.max_rows).into(),
            tenant.into(),
            a.device_id.into(),
        ],
    )?;
    let first_out = if first_out.is_empty() {
        None
    } else {
        first_out.first().get_one::<i64>()?
    };
    // Whole transactions while they fit in max_rows; a first transaction
    // larger than that goes whole, alone.
    let (cut, more) = match first_out {
        None => (served, false),
        Some(out) => {
            let last = run_cached(
                client,
                &pb.last_before_sql(),
                &[text, int8, int8, text, text],
                &[
                    a.edge_table.into(),
                    a.checkpoint.into(),
                    out.into(),
                    tenant.into(),
                    a.device_id.into(),
                ],
            )?
            .first()
            .get_one::<i64>()?;
            match last {
                Some(last) => (last, true),
                None => {
                    let more = run_cached(
                        client,
                        &pb.more_sql(),
                        &[text, int8, int8, text, text],
                        &[
                            a.edge_table.into(),
                            out.into(),
                            xmin.into(),
                            tenant.into(),
                            a.device_id.into(),
                        ],
                    )?
                    .first()
                    .get_one::<bool>()?
                    .unwrap_or(false);
                    // Nothing in scope after it: the checkpoint moves on
                    // to xmin - 1.
                    (if more { out } else { served }, more)
                }
            }
        }
    };
    if cut <= a.checkpoint {
        return Ok(Pulled {
            batch: None,
            checkpoint: a.checkpoint,
            cursor: None,
            more: false,
            rows: 0,
        });
    }
    let rows = run_cached(
        client,
        &pb.changes_sql(),
        &[text, int8, int8, text, text],
        &[
            a.edge_table.into(),
            a.checkpoint.into(),
            cut.into(),
            tenant.into(),
            a.device_id.into(),
        ],
    )?;
    let (versions, deleted, columns) = read_changes(rows, p)?;
    let h = header(
        a,
        p,
        a.checkpoint,
        cut,
        Changes {
            snapshot_page: 0,
            last_page: true,
        },
    );
    let n = versions.len();
    Ok(Pulled {
        batch: Some(encode(&h, &versions, &deleted, &columns)?),
        checkpoint: cut,
        cursor: None,
        more,
        rows: i32::try_from(n).unwrap_or(i32::MAX),
    })
}

type Rows = (Vec<i64>, Vec<bool>, Vec<Vec<Value>>);

fn read_changes(rows: SpiTupleTable<'_>, p: &Published) -> Result<Rows> {
    let cols = &p.publication.columns;
    let mut versions = Vec::new();
    let mut deleted = Vec::new();
    let mut columns: Vec<Vec<Value>> = vec![Vec::new(); cols.len()];
    for row in rows {
        versions.push(row.get::<i64>(1)?.unwrap_or(0));
        deleted.push(row.get::<bool>(2)?.unwrap_or(true));
        for (i, c) in cols.iter().enumerate() {
            columns[i].push(value(&row, 3 + i, c.kind)?);
        }
    }
    Ok((versions, deleted, columns))
}

/// The page after `c` (its page 0: the first) of the snapshot `c` names.
fn snapshot_page(
    client: &mut SpiClient<'_>,
    a: &PullArgs<'_>,
    p: &Published,
    tenant: Option<&str>,
    c: &Cursor,
) -> Result<Pulled> {
    let pb = &p.publication;
    let after = !c.after.is_empty();
    let mut types = vec![PgBuiltInOids::TEXTOID, PgBuiltInOids::TEXTOID];
    let mut args: Vec<pgrx::datum::DatumWithOid<'_>> = vec![tenant.into(), a.device_id.into()];
    for k in &c.after {
        types.push(PgBuiltInOids::TEXTOID);
        args.push(k.as_str().into());
    }
    types.push(PgBuiltInOids::INT8OID);
    args.push((i64::from(a.max_rows) + 1).into());
    let rows = run_cached(client, &pb.snapshot_sql(after), &types, &args)?;
    let ncols = pb.columns.len();
    let mut columns: Vec<Vec<Value>> = vec![Vec::new(); ncols];
    let mut last_key = Vec::new();
    let mut n = 0usize;
    let mut more = false;
    for row in rows {
        if n == a.max_rows as usize {
            more = true;
            break;
        }
        for (i, col) in pb.columns.iter().enumerate() {
            columns[i].push(value(&row, 1 + i, col.kind)?);
        }
        last_key = (0..pb.key.len())
            .map(|k| {
                row.get::<String>(1 + ncols + k)
                    .map(Option::unwrap_or_default)
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        n += 1;
    }
    let page = c.page.saturating_add(1);
    let versions = vec![c.checkpoint; n];
    let h = header(
        a,
        p,
        0,
        c.checkpoint,
        Changes {
            snapshot_page: page,
            last_page: !more,
        },
    );
    let cursor = more.then(|| {
        Cursor {
            stream_id: c.stream_id,
            checkpoint: c.checkpoint,
            page,
            after: last_key,
        }
        .encode()
    });
    Ok(Pulled {
        batch: Some(encode(&h, &versions, &[], &columns)?),
        checkpoint: c.checkpoint,
        cursor,
        more,
        rows: i32::try_from(n).unwrap_or(i32::MAX),
    })
}

/// One row of `sluice.subscription_lag`.
pub type Lag = (
    String,
    i64,
    i64,
    Option<TimestampWithTimeZone>,
    Option<TimestampWithTimeZone>,
);

/// `sluice.subscription_lag(device_id)`: the device's subscriptions as
/// `sluice.subscription_status` has them. A device role may ask for its own
/// device only (42501) and sees its tenant's subscriptions; another role
/// needs SELECT on the view.
pub fn subscription_lag(device_id: &str) -> Result<Vec<Lag>> {
    Spi::connect_mut(|client| {
        let caller = tenancy::caller(client)?;
        let tenant = match &caller.device {
            Some(grant) => {
                if grant.device_id.as_deref().is_some_and(|d| d != device_id) {
                    return Err(SluiceError::new(
                        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                        format!(
                            "sluice.subscription_lag: role \"{}\" may read device '{}' only, not '{device_id}'",
                            caller.role,
                            grant.device_id.as_deref().unwrap_or_default()
                        ),
                    ));
                }
                Some(grant.tenant.clone())
            }
            None => {
                let allowed = run_cached(
                    client,
                    "SELECT pg_catalog.has_table_privilege($1, 'sluice.subscription_status', 'SELECT')",
                    &[PgBuiltInOids::OIDOID],
                    &[caller.role_oid.into()],
                )?
                .first()
                .get_one::<bool>()?
                .unwrap_or(false);
                if !allowed {
                    return Err(SluiceError::new(
                        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                        format!(
                            "sluice.subscription_lag: role \"{}\" is not a device role and may not SELECT from sluice.subscription_status",
                            caller.role
                        ),
                    ));
                }
                None
            }
        };
        let mut out = Vec::new();
        for r in run_cached(
            client,
            "SELECT v.edge_table, v.checkpoint, v.pending, v.oldest_pending, v.last_pulled
             FROM sluice.subscription_status v
             WHERE v.device_id = $1 AND ($2::text IS NULL OR v.tenant IS NULL OR v.tenant = $2)
             ORDER BY v.edge_table",
            &[PgBuiltInOids::TEXTOID, PgBuiltInOids::TEXTOID],
            &[device_id.into(), tenant.into()],
        )? {
            out.push((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<i64>(2)?.unwrap_or(0),
                r.get::<i64>(3)?.unwrap_or(0),
                r.get::<TimestampWithTimeZone>(4)?,
                r.get::<TimestampWithTimeZone>(5)?,
            ));
        }
        Ok(out)
    })
}
