//! What the ledger (`sluice.batches`) and the device statistics
//! (`sluice.devices`) record of a batch besides its identity, and the
//! identity's re-send number as the ledger stores it.

/// The largest send time stored, in ms since the Unix epoch:
/// 9999-12-31T23:59:59.999Z (PostgreSQL goes further, but a clock is wrong by
/// then). The smallest is its negation.
const MAX_SENT_AT_MS: i64 = 253_402_300_799_999;

/// The batch's send time as the ledger stores it (`to_timestamp($ms /
/// 1000)`), or `None` (stored as NULL) for a time no sane clock gives, any
/// `i64` included.
pub fn sent_at_ms(ms: i64) -> Option<i64> {
    (-MAX_SENT_AT_MS..=MAX_SENT_AT_MS)
        .contains(&ms)
        .then_some(ms)
}

/// A batch's re-send number ([`sluice_wire::BatchHeader::resend`]) as
/// `sluice.batches.resend` stores it (`integer`), or the message of a number
/// above `i32::MAX` (no edge asks for two billion re-sends of a table),
/// which is refused rather than wrapped into another identity.
pub fn resend_to_sql(resend: u32) -> Result<i32, String> {
    i32::try_from(resend).map_err(|_| {
        format!(
            "the batch's re-send number {resend} is out of range (at most {})",
            i32::MAX
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_times_outside_years_1_to_9999_are_null() {
        assert_eq!(sent_at_ms(1_700_000_000_000), Some(1_700_000_000_000));
        assert_eq!(sent_at_ms(0), Some(0));
        assert_eq!(sent_at_ms(MAX_SENT_AT_MS), Some(MAX_SENT_AT_MS));
        assert_eq!(sent_at_ms(-MAX_SENT_AT_MS), Some(-MAX_SENT_AT_MS));
        assert_eq!(sent_at_ms(MAX_SENT_AT_MS + 1), None);
        assert_eq!(sent_at_ms(i64::MAX), None);
        // `abs()` of this one overflows (a panic in a debug build, and
        // i64::MIN itself, "in range", in a release build).
        assert_eq!(sent_at_ms(i64::MIN), None);
    }

    #[test]
    fn resend_numbers_above_i32_are_refused_not_wrapped() {
        assert_eq!(resend_to_sql(0), Ok(0));
        assert_eq!(resend_to_sql(7), Ok(7));
        assert_eq!(resend_to_sql(i32::MAX as u32), Ok(i32::MAX));
        assert_eq!(
            resend_to_sql(u32::MAX),
            Err(
                "the batch's re-send number 4294967295 is out of range (at most 2147483647)".into()
            )
        );
    }
}
