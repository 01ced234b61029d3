//! What the ledger (`sluice.batches`) and the device statistics
//! (`sluice.devices`) record of a batch besides its identity.

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
}
