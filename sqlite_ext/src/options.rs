//! Pure parsing of user arguments: `sluice_track` and `sluice_batch`
//! options, `sluice_cleanup` durations, the SQLite version check. No SQLite
//! here, so it is unit-tested with plain `cargo test`. Identifier quoting,
//! the device-id check and [`DrainOrder`] are `sluice_wire::names`, shared
//! with the agent and the cloud.

use serde_json::Value as Json;
use sluice_wire::names::DrainOrder;

/// Options of `sluice_track`. A field left out of the JSON is `None`: on a
/// first track it takes its default, on a re-track it keeps its stored value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackOptions {
    pub mutable: Option<bool>,
    pub local_only: Option<Vec<String>>,
    pub key: Option<Vec<String>>,
    /// The column holding each row's time (ISO-8601 text or unix seconds),
    /// used by the status view for the age of the oldest pending row.
    pub time: Option<String>,
    /// Whether deletes (and key changes) of a mutable table travel to the
    /// cloud as tombstones (default true).
    pub deletes: Option<bool>,
}

/// The option names `sluice_track` accepts.
pub const TRACK_OPTIONS: &str = "mutable, local_only, key, time, deletes";

/// Parses `{"mutable": bool, "local_only": [names], "key": [names], "time":
/// name}`. Unknown
/// keys are errors (a typo must not silently track a table the wrong way).
pub fn parse_track_options(text: &str) -> Result<TrackOptions, String> {
    let v: Json =
        serde_json::from_str(text).map_err(|e| format!("options are not valid JSON: {e}"))?;
    let Json::Object(map) = v else {
        return Err(format!(
            "options must be a JSON object like {{\"mutable\": true}}, got {}",
            json_kind(&v)
        ));
    };
    let mut o = TrackOptions::default();
    for (k, v) in &map {
        match k.as_str() {
            "mutable" => match v {
                Json::Bool(b) => o.mutable = Some(*b),
                other => {
                    return Err(format!(
                        "option 'mutable' must be true or false, got {}",
                        json_kind(other)
                    ))
                }
            },
            "deletes" => match v {
                Json::Bool(b) => o.deletes = Some(*b),
                other => {
                    return Err(format!(
                        "option 'deletes' must be true or false, got {}",
                        json_kind(other)
                    ))
                }
            },
            "local_only" => o.local_only = Some(string_list("local_only", v)?),
            "key" => o.key = Some(string_list("key", v)?),
            "time" => match v {
                Json::String(s) if !s.is_empty() => o.time = Some(s.clone()),
                other => {
                    return Err(format!(
                        "option 'time' must be a column name, got {}",
                        if matches!(other, Json::String(_)) {
                            "an empty string"
                        } else {
                            json_kind(other)
                        }
                    ))
                }
            },
            other => {
                return Err(format!(
                    "unknown option '{other}' (known options: {TRACK_OPTIONS})"
                ))
            }
        }
    }
    Ok(o)
}

/// Options of `sluice_subscribe`. A field left out is `None`: on a first
/// subscribe it takes its default, again it keeps its stored value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// The columns the changes are applied by (default: the primary key, or
    /// the only unique index).
    pub key: Option<Vec<String>>,
    /// The columns the cloud owns and may write (default: any column of the
    /// table but sluice's).
    pub columns: Option<Vec<String>>,
}

/// The option names `sluice_subscribe` accepts.
pub const SUBSCRIBE_OPTIONS: &str = "key, columns";

/// Parses `{"key": [names], "columns": [names]}`; unknown keys are errors.
pub fn parse_subscribe_options(text: &str) -> Result<SubscribeOptions, String> {
    let v: Json =
        serde_json::from_str(text).map_err(|e| format!("options are not valid JSON: {e}"))?;
    let Json::Object(map) = v else {
        return Err(format!(
            "options must be a JSON object like {{\"key\": [\"id\"]}}, got {}",
            json_kind(&v)
        ));
    };
    let mut o = SubscribeOptions::default();
    for (k, v) in &map {
        match k.as_str() {
            "key" => {
                let key = string_list("key", v)?;
                if key.is_empty() {
                    return Err("option 'key' must name at least one column".to_string());
                }
                o.key = Some(key);
            }
            "columns" => o.columns = Some(string_list("columns", v)?),
            other => {
                return Err(format!(
                    "unknown option '{other}' (known options: {SUBSCRIBE_OPTIONS})"
                ))
            }
        }
    }
    Ok(o)
}

/// Options of `sluice_batch`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOptions {
    pub order: DrainOrder,
    /// Only rows newer than this many seconds (by the table's time column):
    /// the pending rows above the newest pending row older than that.
    pub since_secs: Option<i64>,
}

/// The option names `sluice_batch` accepts.
pub const BATCH_OPTIONS: &str = "order, since";

/// Parses `{"order": "oldest" | "newest", "since": "2 hours" | seconds}`.
pub fn parse_batch_options(text: &str) -> Result<BatchOptions, String> {
    let v: Json =
        serde_json::from_str(text).map_err(|e| format!("options are not valid JSON: {e}"))?;
    let Json::Object(map) = v else {
        return Err(format!(
            "options must be a JSON object like {{\"order\": \"newest\"}}, got {}",
            json_kind(&v)
        ));
    };
    let mut o = BatchOptions::default();
    for (k, v) in &map {
        match k.as_str() {
            "order" => {
                o.order = match v {
                    Json::String(s) => s.parse::<DrainOrder>().map_err(|_| {
                        format!("option 'order' must be \"oldest\" or \"newest\", got \"{s}\"")
                    })?,
                    other => {
                        return Err(format!(
                            "option 'order' must be \"oldest\" or \"newest\", got {}",
                            json_kind(other)
                        ))
                    }
                }
            }
            "since" => {
                let secs = match v {
                    Json::String(s) => parse_duration(s)?,
                    Json::Number(n) => match n.as_i64() {
                        Some(i) if (0..=MAX_KEEP_SECONDS).contains(&i) => i,
                        Some(i) => {
                            return Err(format!(
                                "option 'since' must be between 0 and {MAX_KEEP_SECONDS} seconds, got {i}"
                            ))
                        }
                        None => {
                            return Err(format!(
                                "option 'since' must be whole seconds or text like '2 hours', got {n}"
                            ))
                        }
                    },
                    other => {
                        return Err(format!(
                            "option 'since' must be seconds or text like '2 hours', got {}",
                            json_kind(other)
                        ))
                    }
                };
                o.since_secs = Some(secs);
            }
            other => {
                return Err(format!(
                    "unknown option '{other}' (known options: {BATCH_OPTIONS})"
                ))
            }
        }
    }
    Ok(o)
}

fn string_list(name: &str, v: &Json) -> Result<Vec<String>, String> {
    let Json::Array(items) = v else {
        return Err(format!(
            "option '{name}' must be an array of column names, got {}",
            json_kind(v)
        ));
    };
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Json::String(s) if !s.is_empty() => {
                if out.iter().any(|o| o.eq_ignore_ascii_case(s)) {
                    return Err(format!("option '{name}' names column '{s}' twice"));
                }
                out.push(s.clone());
            }
            other => {
                return Err(format!(
                    "option '{name}' must be an array of column names, got an element that is {}",
                    if matches!(other, Json::String(_)) {
                        "an empty string"
                    } else {
                        json_kind(other)
                    }
                ))
            }
        }
    }
    Ok(out)
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Longest `keep` accepted by `sluice_cleanup`: 100 years, in seconds.
pub const MAX_KEEP_SECONDS: i64 = 100 * 366 * 24 * 3600;

/// Parses a duration like `90`, `'90s'`, `'30 minutes'`, `'24 hours'`,
/// `'7 days'`, `'2w'` into seconds.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = t.split_at(digits);
    let unit = unit.trim();
    let bad = || {
        format!(
            "'{text}' is not a duration; write seconds as a number, or a number and a unit \
             (s, m, h, d, w or seconds, minutes, hours, days, weeks), e.g. '24 hours'"
        )
    };
    if num.is_empty() {
        return Err(bad());
    }
    let n: i64 = num.parse().map_err(|_| bad())?;
    let factor: i64 = match unit.to_ascii_lowercase().as_str() {
        "" | "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        "w" | "week" | "weeks" => 7 * 86_400,
        _ => return Err(bad()),
    };
    check_keep(n.checked_mul(factor).unwrap_or(i64::MAX))
}

/// Checks a `keep` given in seconds.
pub fn check_keep(seconds: i64) -> Result<i64, String> {
    if seconds < 0 {
        Err(format!("keep must not be negative, got {seconds}"))
    } else if seconds > MAX_KEEP_SECONDS {
        Err(format!(
            "keep is too long ({seconds} seconds; the limit is {MAX_KEEP_SECONDS}, 100 years)"
        ))
    } else {
        Ok(seconds)
    }
}

/// Lowest SQLite runtime version the extension loads into: 3.38.0
/// (`pragma_table_list`, `->>`, RETURNING and math functions are relied on or
/// expected by users).
pub const MIN_SQLITE_VERSION: i32 = 3_038_000;

/// Refuses an SQLite runtime older than [`MIN_SQLITE_VERSION`].
pub fn check_sqlite_version(number: i32) -> Result<(), String> {
    if number >= MIN_SQLITE_VERSION {
        Ok(())
    } else {
        Err(format!(
            "sluice: SQLite {}.{}.{} is too old; sluice0 needs SQLite 3.38.0 or newer",
            number / 1_000_000,
            number / 1000 % 1000,
            number % 1000
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    // The shared definitions, as this crate uses them.
    use sluice_wire::names::{check_device_id, quote_ident};

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0").unwrap(), 0);
        assert_eq!(parse_duration("90").unwrap(), 90);
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration(" 30 minutes ").unwrap(), 1800);
        assert_eq!(parse_duration("24 hours").unwrap(), 86_400);
        assert_eq!(parse_duration("1 hour").unwrap(), 3600);
        assert_eq!(parse_duration("7 days").unwrap(), 604_800);
        assert_eq!(parse_duration("2W").unwrap(), 1_209_600);
        assert_eq!(parse_duration("15m").unwrap(), 900);
        for bad in ["", "s", "-5", "5 fortnights", "1.5h", "h5", "5 s s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("99999999999999999999").is_err());
        assert!(parse_duration("9999999999 weeks")
            .unwrap_err()
            .contains("too long"));
        assert!(check_keep(-1).unwrap_err().contains("negative"));
    }

    #[test]
    fn track_options() {
        assert_eq!(parse_track_options("{}").unwrap(), TrackOptions::default());
        let o = parse_track_options(
            r#"{"mutable": true, "local_only": ["screenshot_path"], "key": ["id"]}"#,
        )
        .unwrap();
        assert_eq!(o.mutable, Some(true));
        assert_eq!(o.local_only.unwrap(), ["screenshot_path"]);
        assert_eq!(o.key.unwrap(), ["id"]);
        let e = parse_track_options(r#"{"mutible": true}"#).unwrap_err();
        assert_eq!(
            e,
            "unknown option 'mutible' (known options: mutable, local_only, key, time, deletes)"
        );
        assert_eq!(
            parse_track_options(r#"{"time": "recorded_at"}"#)
                .unwrap()
                .time
                .as_deref(),
            Some("recorded_at")
        );
        assert!(parse_track_options(r#"{"time": 1}"#)
            .unwrap_err()
            .contains("column name"));
        assert!(parse_track_options(r#"{"mutable": 1}"#)
            .unwrap_err()
            .contains("true or false"));
        assert!(parse_track_options(r#"{"local_only": "a"}"#)
            .unwrap_err()
            .contains("array of column names"));
        assert!(parse_track_options(r#"{"local_only": [""]}"#)
            .unwrap_err()
            .contains("empty string"));
        assert!(parse_track_options(r#"{"key": ["a", "A"]}"#)
            .unwrap_err()
            .contains("twice"));
        assert!(parse_track_options("[1]").unwrap_err().contains("an array"));
        assert!(parse_track_options("{")
            .unwrap_err()
            .contains("not valid JSON"));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("t"), "\"t\"");
        assert_eq!(
            quote_ident("x\"; drop table t; --"),
            "\"x\"\"; drop table t; --\""
        );
    }

    #[test]
    fn versions_and_device_ids() {
        assert!(check_sqlite_version(3_040_001).is_ok());
        assert!(check_sqlite_version(3_038_000).is_ok());
        assert_eq!(
            check_sqlite_version(3_037_002).unwrap_err(),
            "sluice: SQLite 3.37.2 is too old; sluice0 needs SQLite 3.38.0 or newer"
        );
        assert!(check_device_id("box-1").is_ok());
        assert!(check_device_id("").is_err());
        assert!(check_device_id(&"x".repeat(200)).is_ok());
        assert!(check_device_id(&"x".repeat(201)).is_err());
        assert!(check_device_id("a\nb").is_err());
    }
}
