//! Where a batch comes from, as its header's `origin` says it (pure): the
//! rules of a machine id (`sluice_machine`) and of a zone (`sluice_zone`),
//! the hash of the machine id, and the zone as a batch carries it.

use std::hash::Hasher;

/// Largest length of a machine id, in characters.
pub const MAX_MACHINE_ID_CHARS: usize = 256;

/// The zone stored and shown for UTC (a batch carries it as '').
pub const UTC: &str = "UTC";

/// Largest fixed offset, in hours (the widest in use is +14:00).
const MAX_OFFSET_HOURS: u32 = 14;

/// A character as an error message shows it: in double quotes, escaped
/// when it is not printable (`"'"`, `"\n"`, `"\u{1b}"`).
fn show_char(c: char) -> String {
    format!("{:?}", c.to_string())
}

/// Checks a machine id: 1 to [`MAX_MACHINE_ID_CHARS`] characters, no
/// control characters.
pub fn check_machine_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("the machine id must not be empty".to_string());
    }
    let n = id.chars().count();
    if n > MAX_MACHINE_ID_CHARS {
        return Err(format!(
            "the machine id is {n} characters, the limit is {MAX_MACHINE_ID_CHARS}"
        ));
    }
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return Err(format!(
            "the machine id must not contain control characters, got {}",
            show_char(c)
        ));
    }
    Ok(())
}

/// Checks a zone and returns it as stored: an IANA-style name (ASCII
/// letters, digits and `/ _ + -`, starting with a letter, no empty part
/// between slashes, at most [`sluice_wire::MAX_ZONE_BYTES`] bytes), `UTC`,
/// or a fixed offset `+HH:MM` / `-HH:MM` (east of UTC is `+`, as in
/// ISO-8601; hours 00 to 14, minutes 00 to 59). '' is UTC.
pub fn check_zone(zone: &str) -> Result<String, String> {
    const RULE: &str = "a zone is an IANA name like 'Europe/Berlin', 'UTC', or an offset like \
                        '+05:30'";
    if zone.is_empty() {
        return Ok(UTC.to_string());
    }
    if zone.len() > sluice_wire::MAX_ZONE_BYTES {
        return Err(format!(
            "the zone is {} bytes, the limit is {} ({RULE})",
            zone.len(),
            sluice_wire::MAX_ZONE_BYTES
        ));
    }
    if zone.starts_with(['+', '-']) {
        return check_offset(zone)
            .map(|()| zone.to_string())
            .map_err(|why| format!("the offset {zone:?} is not +HH:MM or -HH:MM: {why} ({RULE})"));
    }
    if let Some(c) = zone
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "/_+-".contains(*c)))
    {
        return Err(format!(
            "the zone {zone:?} has the character {}; a zone name has only ASCII letters, \
             digits and / _ + - ({RULE})",
            show_char(c)
        ));
    }
    if !zone.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(format!(
            "the zone {zone:?} does not start with a letter ({RULE})"
        ));
    }
    if zone.split('/').any(str::is_empty) {
        return Err(format!(
            "the zone {zone:?} has an empty part between slashes ({RULE})"
        ));
    }
    Ok(zone.to_string())
}

/// `+HH:MM` / `-HH:MM` after the sign has been seen.
fn check_offset(zone: &str) -> Result<(), &'static str> {
    let b = zone.as_bytes();
    if b.len() != 6 || b[3] != b':' {
        return Err("it must be 6 characters, a sign, two digits, ':' and two digits");
    }
    let two = |hi: u8, lo: u8| -> Option<u32> {
        (hi.is_ascii_digit() && lo.is_ascii_digit())
            .then(|| u32::from(hi - b'0') * 10 + u32::from(lo - b'0'))
    };
    let (Some(h), Some(m)) = (two(b[1], b[2]), two(b[4], b[5])) else {
        return Err("the hours and minutes must be digits");
    };
    if h > MAX_OFFSET_HOURS || (h == MAX_OFFSET_HOURS && m > 0) {
        return Err("an offset is at most 14:00");
    }
    if m > 59 {
        return Err("the minutes must be 00 to 59");
    }
    Ok(())
}

/// The zone as a batch's `origin.zone` carries it: '' for UTC (and for a
/// database that never set one).
pub fn wire_zone(stored: Option<&str>) -> String {
    match stored {
        None | Some(UTC) | Some("") => String::new(),
        Some(z) => z.to_string(),
    }
}

/// The zone as `sluice_zone` and `sluice_identity` show it.
pub fn shown_zone(stored: Option<&str>) -> String {
    match stored {
        None | Some("") => UTC.to_string(),
        Some(z) => z.to_string(),
    }
}

/// A batch's `origin.machine`: FNV-1a 64 of the machine id's text, 0 when
/// none is recorded.
pub fn machine_hash(machine: Option<&str>) -> u64 {
    match machine {
        None => 0,
        Some(m) => {
            let mut h = fnv::FnvHasher::default();
            h.write(m.as_bytes());
            h.finish()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn zones() {
        for good in [
            "Europe/Berlin",
            "America/Argentina/Buenos_Aires",
            "Etc/GMT+3",
            "Etc/GMT-14",
            "UTC",
            "America/Port-au-Prince",
            "+05:30",
            "-03:00",
            "+00:00",
            "+14:00",
        ] {
            assert_eq!(check_zone(good).as_deref(), Ok(good), "{good}");
        }
        assert_eq!(check_zone("").as_deref(), Ok("UTC"));
        let sixty_four = format!("A{}", "b".repeat(63));
        assert!(check_zone(&sixty_four).is_ok());
        let e = check_zone(&format!("{sixty_four}c")).unwrap_err();
        assert!(
            e.starts_with("the zone is 65 bytes, the limit is 64"),
            "{e}"
        );
        for (bad, why) in [
            ("Europe/Berlin'", r#"the character "'""#),
            ("Europe\"Berlin", r#"the character "\"""#),
            ("Europe/Ber lin", r#"the character " ""#),
            ("Europe/\nBerlin", r#"the character "\n""#),
            ("Europe/\0", r#"the character "\0""#),
            ("Europe/Zürich", r#"the character "ü""#),
            ("Europe;DROP", r#"the character ";""#),
            ("/Europe", "does not start with a letter"),
            ("1Europe", "does not start with a letter"),
            ("_x", "does not start with a letter"),
            ("Europe//Berlin", "empty part"),
            ("Europe/", "empty part"),
            ("+5:30", "must be 6 characters"),
            ("+05:30:00", "must be 6 characters"),
            ("+0530", "must be 6 characters"),
            ("+05-30", "must be 6 characters"),
            ("+ab:cd", "digits"),
            ("+15:00", "at most 14:00"),
            ("+14:30", "at most 14:00"),
            ("-05:60", "00 to 59"),
            ("-", "must be 6 characters"),
        ] {
            let e = check_zone(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(e.contains("'Europe/Berlin'"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_zone_a_batch_carries() {
        assert_eq!(wire_zone(None), "");
        assert_eq!(wire_zone(Some("UTC")), "");
        assert_eq!(wire_zone(Some("Europe/Berlin")), "Europe/Berlin");
        assert_eq!(shown_zone(None), "UTC");
        assert_eq!(shown_zone(Some("+05:30")), "+05:30");
    }

    #[test]
    fn machine_ids() {
        assert!(check_machine_id("5f1c0e6a9b").is_ok());
        assert!(check_machine_id(&"é".repeat(256)).is_ok());
        assert_eq!(
            check_machine_id(&"x".repeat(257)).unwrap_err(),
            "the machine id is 257 characters, the limit is 256"
        );
        assert_eq!(
            check_machine_id("").unwrap_err(),
            "the machine id must not be empty"
        );
        assert!(check_machine_id("a\tb")
            .unwrap_err()
            .contains("control characters"));
        assert!(check_machine_id("a\u{85}b")
            .unwrap_err()
            .contains("control characters"));
    }

    #[test]
    fn the_machine_hash_is_fnv1a_64() {
        assert_eq!(machine_hash(None), 0);
        // FNV-1a 64 of "" is the offset basis; of "a" the published value.
        assert_eq!(machine_hash(Some("")), 0xcbf2_9ce4_8422_2325);
        assert_eq!(machine_hash(Some("a")), 0xaf63_dc4c_8601_ec8c);
    }
}
