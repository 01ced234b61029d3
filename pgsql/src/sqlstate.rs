//! SQLSTATEs of the errors of this crate, by name: the extension maps each
//! to pgrx's error code, a client compares them with what it receives.

use std::fmt;

use sluice_wire::WireError;

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
    /// `42701` duplicate_column.
    DuplicateColumn,
    /// `42P10` invalid_column_reference: key columns that no unique index
    /// covers.
    InvalidColumnReference,
    /// `55000` object_not_in_prerequisite_state: a batch that shows its edge
    /// database was restored or copied ([`crate::epoch`]).
    ObjectNotInPrerequisiteState,
    /// `XX000` internal_error.
    InternalError,
    /// `XX001` data_corrupted.
    DataCorrupted,
}

impl SqlState {
    /// The SQLSTATE of a batch that does not decode: `22023` for what a
    /// sender can mend (a format version, a size, a value it should not
    /// send), `XX001` for damaged bytes.
    pub fn of_wire_error(e: &WireError) -> SqlState {
        match e {
            WireError::UnsupportedVersion { .. }
            | WireError::TooLarge { .. }
            | WireError::Invalid { .. } => SqlState::InvalidParameterValue,
            _ => SqlState::DataCorrupted,
        }
    }

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
            SqlState::DuplicateColumn => "42701",
            SqlState::InvalidColumnReference => "42P10",
            SqlState::ObjectNotInPrerequisiteState => "55000",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undecodable_batches_are_mendable_or_damaged() {
        let mendable = WireError::Invalid {
            what: "a column name".into(),
        };
        assert_eq!(
            SqlState::of_wire_error(&mendable),
            SqlState::InvalidParameterValue
        );
        assert_eq!(
            SqlState::of_wire_error(&WireError::BadMagic),
            SqlState::DataCorrupted
        );
    }
}
