//! The batch's zone as the `TimeZone` of the ingest, under which PostgreSQL
//! reads zoneless timestamp text. `sluice.ingest` is declared with `SET
//! TimeZone = 'UTC'` (a batch without a zone, and every batch of format
//! version 1, is UTC), so PostgreSQL puts the caller's value back when the
//! call returns, and also when it fails; a zone set here (`SET LOCAL`, for
//! the transaction) ends with the call too.

use std::ffi::CString;

use pgrx::prelude::*;
use sluice_pgsql::zone::{is_utc, zone_setting, ZoneError};
use sluice_wire::BatchId;

use crate::error::{error_code, Result, SluiceError};

/// Reads zoneless text in the batch's `zone` for the rest of the call; a
/// zone the server does not know is an ERROR 22023 naming the batch and the
/// zone.
pub fn set_batch_zone(id: &BatchId, zone: &str) -> Result<()> {
    if is_utc(zone) {
        return Ok(());
    }
    let fail = |reason: &str| {
        SluiceError::ingest(
            error_code(ZoneError::SQLSTATE),
            format!("batch {id}: zone '{zone}' cannot be used: {reason}"),
        )
    };
    let setting = zone_setting(zone).map_err(|e| fail(e.reason))?;
    let value = CString::new(setting.as_ref()).map_err(|_| fail("it contains a NUL"))?;
    // SAFETY: two NUL-terminated strings that outlive the call. With an
    // elevel below ERROR, an unknown value returns 0 instead of raising.
    let applied = unsafe {
        pg_sys::set_config_option(
            c"TimeZone".as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_LOCAL,
            true,
            pg_sys::DEBUG5 as i32,
            false,
        )
    };
    if applied <= 0 {
        return Err(fail(
            "this server does not know it (SELECT name FROM pg_timezone_names lists the zones it knows)",
        ));
    }
    Ok(())
}
