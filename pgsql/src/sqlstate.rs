//! SQLSTATEs of the errors of this crate, by name: the extension maps each
//! to pgrx's error code, a client compares them with what it receives.

use std::fmt;

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
    /// `22023` invalid_parameter_value.
    InvalidParameterValue,
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
            SqlState::InvalidParameterValue => "22023",
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
