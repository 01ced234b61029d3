//! `sluice-pgsql` is the cloud side of sluice without PostgreSQL: the pure
//! logic of applying a batch, which the PostgreSQL extension (`pg_ext/`, a
//! thin pgrx shell over this crate) runs inside the backend and any other
//! component can run through an ordinary client. No pgrx, no SPI: tested by
//! `cargo test -p sluice-pgsql` in seconds.
//!
//! - [`sqlgen`]: SQL text: the conflict policies ([`Policy`]), the set-based
//!   upsert, the plain insert of the fast path and its probe. Identifiers are
//!   quoted with [`sluice_wire::names::quote_ident`], values always bound.
//! - [`convert`]: batch values as PostgreSQL parameters (native arrays or
//!   text), with the edge's float32 vectors and Unix times.
//! - [`plan`]: the column plan of a batch against its target table (the
//!   catalog query, the checks, the parameters) and the shape of its keys.
//! - [`ledger`]: what the ledger records of a batch besides its identity.
//! - [`epoch`]: the error of a batch whose edge database was restored or
//!   copied (a fork of its stream), and the digests that show it.
//! - [`zone`]: a batch's zone as PostgreSQL's `TimeZone`.
//! - [`registration`]: the arguments of `sluice.register_table`.
//! - [`publication`]: the cloud-to-edge direction: the checks of
//!   `sluice.publish`, its capture trigger, the statements of `sluice.pull`,
//!   the wire type of a cloud column and the snapshot cursor.
//! - [`sqlstate`]: the [`SqlState`] every error carries, which the caller
//!   raises it with.
//!
//! Imports point down: `plan` and `registration` use `convert`, `sqlgen` and
//! `sqlstate`; `epoch` and `zone` use `sqlstate`; all of them use only
//! `sluice-wire`, `time` and `fnv`; this file only declares and re-exports.

// Linked into the PostgreSQL backend by pg_ext: no panic may cross into it
// (tests may unwrap).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
#![warn(missing_docs)]

pub mod convert;
pub mod epoch;
pub mod ledger;
pub mod plan;
pub mod publication;
pub mod registration;
pub mod sqlgen;
pub mod sqlstate;
pub mod zone;

pub use convert::{ColumnKind, ConvertError, Native, Param};
pub use plan::{BatchColumns, CatalogColumn, ColumnPlan, KeyShape, PlanError, CATALOG_COLUMNS_SQL};
pub use sqlgen::{
    Bookkeeping, Policy, StreamColumn, TargetColumn, DEVICE_COLUMN, STREAM_COLUMN, VERSION_COLUMN,
};
pub use sqlstate::SqlState;
