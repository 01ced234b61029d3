//! The one error type of the extension's SQL functions: an SQLSTATE, a message
//! that names the batch, table or column, and an optional hint. Raised as a
//! PostgreSQL `ERROR` at the function boundary, which rolls back the caller's
//! transaction (or subtransaction): nothing of a failed call stays applied.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use sluice_pgsql::SqlState;

#[derive(Debug)]
pub struct SluiceError {
    pub code: PgSqlErrorCode,
    pub message: String,
    pub hint: Option<String>,
}

pub type Result<T> = std::result::Result<T, SluiceError>;

impl SluiceError {
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> Self {
        SluiceError {
            code,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// An error of `sluice.ingest`: the message prefixed with its name.
    pub fn ingest(code: PgSqlErrorCode, message: impl std::fmt::Display) -> Self {
        SluiceError::new(code, format!("sluice.ingest: {message}"))
    }

    /// Raises the error as a PostgreSQL `ERROR`; never returns.
    pub fn raise(self, function: &'static str) -> ! {
        let mut report = ErrorReport::new(self.code, self.message, function);
        if let Some(hint) = self.hint {
            report = report.set_hint(hint);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("an ERROR report returns control to PostgreSQL")
    }
}

/// An SPI failure that is not a PostgreSQL ERROR (those unwind by themselves
/// with their own SQLSTATE): a broken invariant of this extension.
impl From<spi::SpiError> for SluiceError {
    fn from(e: spi::SpiError) -> Self {
        SluiceError::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("sluice: internal error in SPI: {e}"),
        )
    }
}

/// The pgrx error code of an SQLSTATE of [`sluice_pgsql`].
pub fn error_code(s: SqlState) -> PgSqlErrorCode {
    match s {
        SqlState::DataException => PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
        SqlState::DatetimeFieldOverflow => PgSqlErrorCode::ERRCODE_DATETIME_FIELD_OVERFLOW,
        SqlState::UntranslatableCharacter => PgSqlErrorCode::ERRCODE_UNTRANSLATABLE_CHARACTER,
        SqlState::InvalidParameterValue => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        SqlState::NotNullViolation => PgSqlErrorCode::ERRCODE_NOT_NULL_VIOLATION,
        SqlState::UndefinedColumn => PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
        SqlState::GeneratedAlways => PgSqlErrorCode::ERRCODE_GENERATED_ALWAYS,
        SqlState::DuplicateColumn => PgSqlErrorCode::ERRCODE_DUPLICATE_COLUMN,
        SqlState::InvalidColumnReference => PgSqlErrorCode::ERRCODE_INVALID_COLUMN_REFERENCE,
        SqlState::ObjectNotInPrerequisiteState => {
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
        }
        SqlState::InternalError => PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        SqlState::DataCorrupted => PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
    }
}
