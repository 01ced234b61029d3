//! SPI helpers below every feature: statements run through plans prepared
//! once per backend and kept ([`run_cached`]). `ingest`, `tenancy` and
//! `register` run their fixed statements here.

use std::cell::RefCell;
use std::collections::HashMap;

use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};

use crate::error::{Result, SluiceError};

/// Largest number of prepared statements kept per backend (the fixed ones,
/// and the upserts: one per target table, column set and parameter types);
/// the cache is emptied when it is full.
const MAX_CACHED_PLANS: usize = 128;

thread_local! {
    /// Plans by statement text and parameter types. A backend is
    /// single-threaded; plans are revalidated by PostgreSQL when a table
    /// they use changes.
    static PLANS: RefCell<HashMap<String, OwnedPreparedStatement>> = RefCell::new(HashMap::new());
}

/// Runs `sql` through a plan prepared once per backend (per text and
/// parameter types) and kept.
pub fn run_cached<'conn>(
    client: &mut SpiClient<'conn>,
    sql: &str,
    types: &[PgBuiltInOids],
    args: &[pgrx::datum::DatumWithOid<'_>],
) -> Result<pgrx::spi::SpiTupleTable<'conn>> {
    // Keyed by the text and the parameter types: one text prepared with
    // other types (`has_table_privilege($1, $2, ...)` with a table name or
    // an OID) is another plan, and running a plan with a datum of another
    // type than it was prepared for reads the datum as that type (an OID as
    // a pointer to text: a crash of the backend).
    let mut key = String::with_capacity(sql.len() + 8 * types.len());
    key.push_str(sql);
    for t in types {
        key.push('\0');
        key.push_str(&(*t as u32).to_string());
    }
    let key = key.as_str();
    let cached = PLANS.with(|p| p.borrow().contains_key(key));
    if !cached {
        let types: Vec<PgOid> = types.iter().map(|&t| PgOid::BuiltIn(t)).collect();
        let stmt = client.prepare_mut(sql, &types)?.keep();
        PLANS.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() >= MAX_CACHED_PLANS {
                p.clear();
            }
            p.insert(key.to_owned(), stmt);
        });
    }
    // The plan stays in the cache while it runs: an ERROR unwinds through
    // here, and freeing a plan that the aborting query still uses is unsafe.
    let result = PLANS.with(|p| match p.borrow().get(key) {
        Some(stmt) => client.update(stmt, None, args).map(Some),
        None => Ok(None),
    });
    result?.ok_or_else(|| {
        SluiceError::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            "sluice.ingest: internal error: prepared statement vanished from the cache",
        )
    })
}
