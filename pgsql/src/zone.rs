//! The zone of a batch (`origin.zone`) as a value of PostgreSQL's `TimeZone`
//! setting, under which `sluice.ingest` reads zoneless timestamp text.
//!
//! The edge declares an IANA name (`Europe/Berlin`), `UTC`, or a fixed
//! offset `+HH:MM`/`-HH:MM` east of Greenwich (ISO 8601); '' means UTC.
//! PostgreSQL reads a `TimeZone` of `+05:30` as a POSIX zone, **west** of
//! Greenwich, so an offset becomes the POSIX spelling `<+0530>-05:30`, which
//! means what the edge meant. Names are given to the server as they are; it
//! knows them or not (checked by the caller).

use std::borrow::Cow;

use crate::sqlstate::SqlState;

/// Largest zone, in bytes (as [`sluice_wire::MAX_ZONE_BYTES`]).
const MAX_ZONE_BYTES: usize = sluice_wire::MAX_ZONE_BYTES;

/// A zone the cloud cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneError {
    /// The zone as the batch carries it.
    pub zone: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl ZoneError {
    /// `22023` invalid_parameter_value, also for a zone the server does not
    /// know.
    pub const SQLSTATE: SqlState = SqlState::InvalidParameterValue;
}

/// Whether zoneless text in `zone` is read as UTC, which `sluice.ingest`
/// sets for every call anyway.
pub fn is_utc(zone: &str) -> bool {
    matches!(zone, "" | "UTC")
}

/// The `TimeZone` setting for a batch's zone.
pub fn zone_setting(zone: &str) -> Result<Cow<'_, str>, ZoneError> {
    let fail = |reason| ZoneError {
        zone: zone.to_owned(),
        reason,
    };
    if is_utc(zone) {
        return Ok(Cow::Borrowed("UTC"));
    }
    if zone.len() > MAX_ZONE_BYTES {
        return Err(fail("longer than 64 bytes"));
    }
    let b = zone.as_bytes();
    if matches!(b.first(), Some(b'+' | b'-')) {
        // +HH:MM, east of Greenwich positive.
        let digits = |r: std::ops::Range<usize>| {
            b.get(r)
                .filter(|d| d.iter().all(u8::is_ascii_digit))
                .map(|d| d.iter().fold(0u32, |a, &c| a * 10 + u32::from(c - b'0')))
        };
        let (Some(h), Some(m)) = (digits(1..3), digits(4..6)) else {
            return Err(fail("an offset is +HH:MM or -HH:MM"));
        };
        if b.len() != 6 || b[3] != b':' {
            return Err(fail("an offset is +HH:MM or -HH:MM"));
        }
        if h > 15 || m > 59 {
            return Err(fail("an offset is at most 15:59 hours"));
        }
        let posix_sign = if b[0] == b'+' { '-' } else { '+' };
        return Ok(Cow::Owned(format!(
            "<{}{h:02}{m:02}>{posix_sign}{h:02}:{m:02}",
            char::from(b[0])
        )));
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'/' | b'_' | b'+' | b'-'))
    {
        return Err(fail(
            "a zone name has only ASCII letters, digits and / _ + -",
        ));
    }
    Ok(Cow::Borrowed(zone))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_names_and_offsets() {
        assert_eq!(zone_setting("").unwrap(), "UTC");
        assert_eq!(zone_setting("UTC").unwrap(), "UTC");
        assert_eq!(zone_setting("Asia/Shanghai").unwrap(), "Asia/Shanghai");
        assert_eq!(
            zone_setting("America/Argentina/Buenos_Aires").unwrap(),
            "America/Argentina/Buenos_Aires"
        );
        // An IANA name keeps its (POSIX) meaning: Etc/GMT+3 is UTC-3.
        assert_eq!(zone_setting("Etc/GMT+3").unwrap(), "Etc/GMT+3");
        // ISO offsets (east positive) in POSIX spelling (west positive).
        assert_eq!(zone_setting("+05:30").unwrap(), "<+0530>-05:30");
        assert_eq!(zone_setting("-03:00").unwrap(), "<-0300>+03:00");
        assert_eq!(zone_setting("+00:00").unwrap(), "<+0000>-00:00");
        assert!(is_utc("") && is_utc("UTC") && !is_utc("Etc/UTC"));
    }

    #[test]
    fn refusals_say_why() {
        for (zone, reason) in [
            ("+5", "an offset is +HH:MM or -HH:MM"),
            ("+05:30:00", "an offset is +HH:MM or -HH:MM"),
            ("+0530", "an offset is +HH:MM or -HH:MM"),
            ("-24:00", "an offset is at most 15:59 hours"),
            ("+05:60", "an offset is at most 15:59 hours"),
            (
                "Europe/Berlin; DROP",
                "a zone name has only ASCII letters, digits and / _ + -",
            ),
            (
                "Zürich",
                "a zone name has only ASCII letters, digits and / _ + -",
            ),
        ] {
            assert_eq!(zone_setting(zone).unwrap_err().reason, reason, "{zone}");
        }
        assert_eq!(
            zone_setting(&"A".repeat(65)).unwrap_err().reason,
            "longer than 64 bytes"
        );
        assert_eq!(ZoneError::SQLSTATE.code(), "22023");
    }
}
