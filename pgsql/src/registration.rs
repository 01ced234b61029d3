//! The arguments of `sluice.register_table`, checked before any catalog is
//! read: the policy by name, and key columns that a unique index can cover
//! and that ingest can fill.

use crate::sqlgen::{Policy, DEVICE_COLUMN, STREAM_COLUMN, VERSION_COLUMN};
use crate::sqlstate::SqlState;

/// Why the arguments of a registration are refused; raised with
/// [`ArgumentError::SQLSTATE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgumentError {
    /// What is wrong, without the function's name.
    pub message: String,
}

impl ArgumentError {
    /// `22023` invalid_parameter_value, for every refusal.
    pub const SQLSTATE: SqlState = SqlState::InvalidParameterValue;

    fn new(message: impl Into<String>) -> ArgumentError {
        ArgumentError {
            message: message.into(),
        }
    }
}

/// Checks the arguments of a registration of `edge_table` keyed by
/// `key_columns` under the policy named `policy`; returns the policy.
///
/// The key columns are distinct and not empty, never include
/// `sluice_version`, and include `sluice_device` and `sluice_stream` only
/// beside other columns (rows numbered per device and stream, such as an
/// edge table's rowid).
pub fn check_arguments(
    edge_table: &str,
    key_columns: &[String],
    policy: &str,
) -> Result<Policy, ArgumentError> {
    if edge_table.is_empty() {
        return Err(ArgumentError::new("the edge table name is empty"));
    }
    let policy = Policy::parse(policy).ok_or_else(|| {
        ArgumentError::new(format!(
            "unknown policy '{policy}'; expected one of {}",
            Policy::ALL.map(|p| format!("'{}'", p.name())).join(", ")
        ))
    })?;
    if key_columns.is_empty() {
        return Err(ArgumentError::new(
            "key_columns is empty; give the columns of the target's unique key",
        ));
    }
    for (i, k) in key_columns.iter().enumerate() {
        if key_columns[..i].contains(k) {
            return Err(ArgumentError::new(format!(
                "key column '{k}' is listed twice"
            )));
        }
        if k == VERSION_COLUMN {
            return Err(ArgumentError::new(format!(
                "'{k}' is a sluice bookkeeping column and cannot be a key column"
            )));
        }
    }
    if key_columns
        .iter()
        .all(|k| k == DEVICE_COLUMN || k == STREAM_COLUMN)
    {
        let named: Vec<String> = key_columns.iter().map(|k| format!("'{k}'")).collect();
        return Err(ArgumentError::new(format!(
            "{} alone cannot be the key: add the columns that identify a row within one device",
            named.join(" and ")
        )));
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    fn refusal(edge: &str, k: &[&str], policy: &str) -> String {
        check_arguments(edge, &keys(k), policy).unwrap_err().message
    }

    #[test]
    fn good_arguments_give_the_policy() {
        assert_eq!(
            check_arguments("t", &keys(&["id"]), "insert_only"),
            Ok(Policy::InsertOnly)
        );
        assert_eq!(
            check_arguments(
                "t",
                &keys(&["loc", DEVICE_COLUMN, STREAM_COLUMN, "rowid"]),
                "last_writer_wins"
            ),
            Ok(Policy::LastWriterWins)
        );
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        assert_eq!(
            refusal("", &["id"], "insert_only"),
            "the edge table name is empty"
        );
        assert_eq!(
            refusal("t", &["id"], "newest"),
            "unknown policy 'newest'; expected one of 'last_writer_wins', 'first_writer_wins', 'insert_only'"
        );
        assert_eq!(
            refusal("t", &[], "insert_only"),
            "key_columns is empty; give the columns of the target's unique key"
        );
        assert_eq!(
            refusal("t", &["a", "b", "a"], "insert_only"),
            "key column 'a' is listed twice"
        );
        assert_eq!(
            refusal("t", &["a", VERSION_COLUMN], "insert_only"),
            "'sluice_version' is a sluice bookkeeping column and cannot be a key column"
        );
        assert_eq!(
            refusal("t", &[DEVICE_COLUMN], "insert_only"),
            "'sluice_device' alone cannot be the key: add the columns that identify a row within one device"
        );
        assert_eq!(
            refusal("t", &[DEVICE_COLUMN, STREAM_COLUMN], "insert_only"),
            "'sluice_device' and 'sluice_stream' alone cannot be the key: add the columns that identify a row within one device"
        );
        assert_eq!(ArgumentError::SQLSTATE.code(), "22023");
    }
}
