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
//!
//! Imports point down: `plan` uses `convert` and `sqlgen`, which use only
//! `sluice-wire`; errors carry an [`SqlState`], which the caller raises with.

// Linked into the PostgreSQL backend by pg_ext: no panic may cross into it
// (tests may unwrap).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
#![warn(missing_docs)]

pub mod convert;
pub mod plan;
pub mod sqlgen;

use std::fmt;

pub use convert::{ColumnKind, ConvertError, Native, Param};
pub use plan::{BatchColumns, CatalogColumn, ColumnPlan, KeyShape, PlanError, CATALOG_COLUMNS_SQL};
pub use sqlgen::{Policy, TargetColumn, DEVICE_COLUMN, VERSION_COLUMN};

/// The SQLSTATE of an error of this crate: what the extension raises it
/// with, and what a client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SqlState {
    /// `22000` data_exception.
    DataException,
    /// `22008` datetime_field_overflow.
    DatetimeFieldOverflow,
    /// `22P05` untranslatable_character.
    UntranslatableCharacter,
    /// `23502` not_null_violation.
    NotNullViolation,
    /// `42703` undefined_column.
    UndefinedColumn,
    /// `428C9` generated_always.
    GeneratedAlways,
    /// `XX000` internal_error.
    InternalError,
    /// `XX001` data_corrupted.
    DataCorrupted,
}

impl SqlState {
    /// The five characters of the SQLSTATE.
    pub fn code(self) -> &'static str {
        match self {
            SqlState::DataException => "22000",
            SqlState::DatetimeFieldOverflow => "22008",
            SqlState::UntranslatableCharacter => "22P05",
            SqlState::NotNullViolation => "23502",
            SqlState::UndefinedColumn => "42703",
            SqlState::GeneratedAlways => "428C9",
            SqlState::InternalError => "XX000",
            SqlState::DataCorrupted => "XX001",
        }
    }
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}
