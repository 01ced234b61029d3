//! Tenancy inside `sluice.ingest`: who is calling, and may they write these
//! rows. `sluice.ingest` runs as the extension's owner (`SECURITY DEFINER`,
//! `search_path = pg_catalog, pg_temp`), so that a device role needs nothing
//! but `EXECUTE` on it; the checks below are what stands between a device and
//! the other locations' rows.
//!
//! - A **device role** (a row of `sluice.device_roles`, made by
//!   `sluice.grant_device`) may send only rows whose tenant column equals its
//!   tenant, only into tables registered with a tenant column, and, when the
//!   grant names a device id, only batches of that device. A batch that breaks
//!   any of this is refused whole (`42501`), before anything is applied.
//! - **Any other role** must hold `INSERT` and `UPDATE` on the target table
//!   (what it could do without sluice anyway); superusers do.
//!
//! The caller is PostgreSQL's "outer" user: the session's role, or the one
//! chosen with `SET ROLE`, which a `SECURITY DEFINER` function does not change.

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use sluice_pgsql::convert::value_to_text;
use sluice_wire::{Batch, BatchId, Value};

use crate::error::{Result, SluiceError};
use crate::register::Registration;
use crate::spi::run_cached;

/// The role calling `ingest`, and its device grant if it has one.
pub struct Caller {
    pub role_oid: pg_sys::Oid,
    pub role: String,
    pub device: Option<DeviceGrant>,
}

/// A row of `sluice.device_roles`.
pub struct DeviceGrant {
    pub tenant: String,
    pub device_id: Option<String>,
}

pub fn caller(client: &mut SpiClient<'_>) -> Result<Caller> {
    // SAFETY: reads a backend global; always set inside a transaction.
    let role_oid = unsafe { pg_sys::GetOuterUserId() };
    let rows = run_cached(
        client,
        "SELECT r.rolname::text, d.tenant, d.device_id
         FROM pg_catalog.pg_roles r LEFT JOIN sluice.device_roles d ON d.role = r.rolname
         WHERE r.oid = $1",
        &[PgBuiltInOids::OIDOID],
        &[role_oid.into()],
    )?;
    let row = rows.first();
    let role = row.get::<String>(1)?.unwrap_or_default();
    let device = row.get::<String>(2)?.map(|tenant| DeviceGrant {
        tenant,
        device_id: None,
    });
    let device = match device {
        Some(mut d) => {
            d.device_id = row.get::<String>(3)?;
            Some(d)
        }
        None => None,
    };
    Ok(Caller {
        role_oid,
        role,
        device,
    })
}

/// A device role bound to a device id may send only that device's batches
/// (otherwise it could claim another device's batch identities in the ledger,
/// and that device's real batches would later be taken for replays).
pub fn check_device_id(caller: &Caller, batch_device: &str, id: &BatchId) -> Result<()> {
    if let Some(DeviceGrant {
        device_id: Some(allowed),
        ..
    }) = &caller.device
    {
        if allowed != batch_device {
            return Err(SluiceError::ingest(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!(
                    "batch {id}: role \"{}\" may send batches of device '{allowed}' only, not '{batch_device}'",
                    caller.role
                ),
            ));
        }
    }
    Ok(())
}

/// The rows of a decoded batch against the caller's rights on the target.
pub(crate) fn check_rows(
    client: &mut SpiClient<'_>,
    caller: &Caller,
    batch: &Batch,
    id: &BatchId,
    reg: &Registration,
) -> Result<()> {
    let Some(grant) = &caller.device else {
        let allowed = run_cached(
            client,
            "SELECT pg_catalog.has_table_privilege($1, $2, 'INSERT')
                AND pg_catalog.has_table_privilege($1, $2, 'UPDATE')",
            &[PgBuiltInOids::OIDOID, PgBuiltInOids::OIDOID],
            &[caller.role_oid.into(), reg.target.into()],
        )?
        .first()
        .get_one::<bool>()?
        .unwrap_or(false);
        if !allowed {
            return Err(SluiceError::ingest(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!(
                    "batch {id}: role \"{}\" is not a device role (sluice.grant_device) and may not INSERT and UPDATE {}",
                    caller.role, reg.target_name
                ),
            ));
        }
        return Ok(());
    };
    let Some(tenant_column) = &reg.tenant_column else {
        return Err(SluiceError::ingest(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "batch {id}: {} was registered without a tenant column, so device role \"{}\" may not write to it",
                reg.target_name, caller.role
            ),
        )
        .with_hint("register the table again with tenant_column => '<location column>'"));
    };
    let Some(col) = batch
        .header
        .columns
        .iter()
        .position(|c| &c.name == tenant_column)
    else {
        return Err(SluiceError::ingest(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "batch {id}: the batch has no tenant column '{tenant_column}', which device role \"{}\" must send",
                caller.role
            ),
        ));
    };
    for (row, v) in batch.columns[col].iter().enumerate() {
        if matches!(v, Value::Text(s) if *s == grant.tenant) {
            continue;
        }
        let value = value_to_text(v);
        if value.as_deref() != Some(grant.tenant.as_str()) {
            return Err(SluiceError::ingest(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!(
                    "batch {id}, row {}: tenant column '{tenant_column}' is {}, but role \"{}\" may only write tenant '{}'; nothing of the batch was applied",
                    row + 1,
                    value.map_or_else(|| "NULL".to_owned(), |s| format!("'{s}'")),
                    caller.role,
                    grant.tenant
                ),
            ));
        }
    }
    Ok(())
}
