//! Batch values as PostgreSQL text: every column of a batch travels to the
//! upsert as one `text[]` parameter and is cast to the target column's type in
//! SQL, so PostgreSQL's own input functions do the conversion (and name the
//! value when it cannot). Pure Rust, tested with ordinary `#[test]`s.

use sluice_wire::Value;

/// Why a value cannot be given to PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvertError {
    /// PostgreSQL text cannot hold a NUL character.
    NulInText { row: usize },
    /// A key column is NULL: such a row could never be matched again, so a
    /// replayed or updated row would be duplicated.
    NullKey { row: usize },
}

/// The text PostgreSQL reads back as the same value, or `None` for NULL.
///
/// Integers and reals in decimal (reals in the shortest form that round-trips,
/// with PostgreSQL's spelling of infinities and NaN), text as is, blobs as
/// `\x` hex (the bytea input format).
pub fn value_to_text(v: &Value) -> Option<String> {
    Some(match v {
        Value::Null => return None,
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => real_to_text(*f),
        Value::Text(s) => s.clone(),
        Value::Blob(b) => blob_to_hex(b),
    })
}

fn real_to_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_owned()
    } else if f == f64::INFINITY {
        "Infinity".to_owned()
    } else if f == f64::NEG_INFINITY {
        "-Infinity".to_owned()
    } else {
        // `{}` prints the shortest decimal that reads back as the same f64.
        format!("{f}")
    }
}

fn blob_to_hex(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 + 2 * b.len());
    s.push_str("\\x");
    for &byte in b {
        s.push(HEX[usize::from(byte >> 4)] as char);
        s.push(HEX[usize::from(byte & 15)] as char);
    }
    s
}

/// One column of a batch as the `text[]` parameter of the upsert.
pub fn column_to_texts(
    values: &[Value],
    is_key: bool,
) -> Result<Vec<Option<String>>, ConvertError> {
    values
        .iter()
        .enumerate()
        .map(|(row, v)| {
            match v {
                Value::Null if is_key => return Err(ConvertError::NullKey { row }),
                Value::Text(s) if s.contains('\0') => return Err(ConvertError::NulInText { row }),
                _ => {}
            }
            Ok(value_to_text(v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_and_nulls() {
        assert_eq!(value_to_text(&Value::Null), None);
        assert_eq!(value_to_text(&Value::Integer(-42)).as_deref(), Some("-42"));
        assert_eq!(
            value_to_text(&Value::Integer(i64::MIN)).as_deref(),
            Some("-9223372036854775808")
        );
    }

    #[test]
    fn reals_round_trip() {
        for f in [
            0.1,
            -2.5e-300,
            1e300,
            123456.789,
            f64::MIN_POSITIVE,
            f64::MAX,
            0.0,
            -0.0,
        ] {
            let s = value_to_text(&Value::Real(f)).unwrap();
            assert_eq!(s.parse::<f64>().unwrap().to_bits(), f.to_bits(), "{s}");
        }
        assert_eq!(value_to_text(&Value::Real(0.1)).as_deref(), Some("0.1"));
        assert_eq!(
            value_to_text(&Value::Real(f64::NAN)).as_deref(),
            Some("NaN")
        );
        assert_eq!(
            value_to_text(&Value::Real(f64::INFINITY)).as_deref(),
            Some("Infinity")
        );
        assert_eq!(
            value_to_text(&Value::Real(f64::NEG_INFINITY)).as_deref(),
            Some("-Infinity")
        );
    }

    #[test]
    fn text_and_blobs() {
        assert_eq!(
            value_to_text(&Value::Text("héllo 'x'".into())).as_deref(),
            Some("héllo 'x'")
        );
        assert_eq!(
            value_to_text(&Value::Blob(vec![0, 0xab, 0xff, 0x10])).as_deref(),
            Some("\\x00abff10")
        );
        assert_eq!(value_to_text(&Value::Blob(vec![])).as_deref(), Some("\\x"));
    }

    #[test]
    fn columns_refuse_nul_text_and_null_keys() {
        let col = vec![Value::Integer(1), Value::Null];
        assert_eq!(
            column_to_texts(&col, false).unwrap(),
            vec![Some("1".to_owned()), None]
        );
        assert_eq!(
            column_to_texts(&col, true),
            Err(ConvertError::NullKey { row: 1 })
        );
        let col = vec![Value::Text("a\0b".into())];
        assert_eq!(
            column_to_texts(&col, false),
            Err(ConvertError::NulInText { row: 0 })
        );
    }
}
