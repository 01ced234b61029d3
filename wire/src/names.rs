//! The names both ends agree on, outside the batch bytes: how an SQL
//! identifier is quoted (SQLite and PostgreSQL quote the same way), what a
//! device id may be, and the draining orders of `sluice_batch`. One
//! definition, used by the SQLite extension, the PostgreSQL extension's
//! SQL generation and the agent's config check, so that no part accepts a
//! name another part refuses.

use std::fmt;
use std::str::FromStr;

/// Quotes an SQL identifier, always (so that its case and every character
/// survive exactly as in the catalog): `a"b` becomes `"a""b"`. Valid for
/// SQLite and PostgreSQL alike.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for ch in name.chars() {
        if ch == '"' {
            out.push('"');
        }
        out.push(ch);
    }
    out.push('"');
    out
}

/// The longest device id, in characters.
pub const MAX_DEVICE_ID_CHARS: usize = 200;

/// Checks a device id: 1 to [`MAX_DEVICE_ID_CHARS`] characters, no control
/// characters (a device id appears in logs, in the cloud's ledger and in
/// file names of operators' tools).
pub fn check_device_id(id: &str) -> Result<(), String> {
    let n = id.chars().count();
    if n == 0 {
        return Err("the device id must not be empty".to_string());
    }
    if n > MAX_DEVICE_ID_CHARS {
        return Err(format!(
            "the device id is {n} characters long, the limit is {MAX_DEVICE_ID_CHARS}"
        ));
    }
    if id.chars().any(char::is_control) {
        return Err("the device id must not contain control characters".to_string());
    }
    Ok(())
}

/// Which pending rows `sluice_batch` takes first (its option `order`, the
/// agent's `sync.order`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize, serde::Serialize),
    serde(rename_all = "lowercase")
)]
pub enum DrainOrder {
    /// Lowest sequence numbers first (the default): the backlog drains in
    /// the order it was written and the watermark advances with every
    /// acknowledgement.
    #[default]
    Oldest,
    /// Highest sequence numbers first: after an outage the freshest data
    /// reaches the cloud first; acknowledgements are kept as ranges above
    /// the watermark until the gap below them is filled.
    Newest,
}

impl DrainOrder {
    /// The name used in options and configs: `oldest` or `newest`.
    pub fn as_str(self) -> &'static str {
        match self {
            DrainOrder::Oldest => "oldest",
            DrainOrder::Newest => "newest",
        }
    }
}

impl fmt::Display for DrainOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DrainOrder {
    type Err = String;

    /// `oldest` or `newest`, in any case.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("oldest") {
            Ok(DrainOrder::Oldest)
        } else if s.eq_ignore_ascii_case("newest") {
            Ok(DrainOrder::Newest)
        } else {
            Err(format!(
                "the order must be \"oldest\" or \"newest\", got \"{s}\""
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_quotes_and_keeps_everything_else() {
        assert_eq!(quote_ident("a"), "\"a\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("Éa b;--"), "\"Éa b;--\"");
        assert_eq!(quote_ident(""), "\"\"");
    }

    #[test]
    fn device_ids() {
        assert!(check_device_id("box-1").is_ok());
        assert!(check_device_id("").is_err());
        assert!(check_device_id(&"é".repeat(200)).is_ok());
        assert!(check_device_id(&"x".repeat(201)).is_err());
        assert!(check_device_id("a\nb").is_err());
        assert!(check_device_id("a\u{7f}").is_err());
    }

    #[test]
    fn orders_round_trip() {
        for o in [DrainOrder::Oldest, DrainOrder::Newest] {
            assert_eq!(o.as_str().parse::<DrainOrder>(), Ok(o));
            assert_eq!(o.as_str().to_uppercase().parse::<DrainOrder>(), Ok(o));
        }
        assert!("latest".parse::<DrainOrder>().is_err());
    }
}
