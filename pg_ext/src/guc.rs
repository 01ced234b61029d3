//! The extension's settings (GUCs), all here, registered by `_PG_init` when
//! the library is loaded. `docs/postgres.md` ("Settings") lists them.

use std::ffi::CStr;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};

/// `sluice.retention_chunk_rows`: about how many rows one transaction of
/// `sluice.run_retention` deletes (it deletes by ranges of pages holding
/// about this many rows), so that no lock is held for long.
pub static RETENTION_CHUNK_ROWS: GucSetting<i32> = GucSetting::<i32>::new(10_000);

pub fn register() {
    const NAME: &CStr = c"sluice.retention_chunk_rows";
    GucRegistry::define_int_guc(
        NAME,
        c"Rows deleted per transaction by sluice.run_retention (about).",
        c"sluice.run_retention deletes expired rows by ranges of pages that hold about this many rows, committing after each range, so that concurrent ingest is never blocked for long.",
        &RETENTION_CHUNK_ROWS,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::default(),
    );
}
