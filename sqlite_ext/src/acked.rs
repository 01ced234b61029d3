//! Acknowledged ranges above the watermark, for draining newest first.
//!
//! Oldest-first draining acknowledges batches in sequence order, so one
//! watermark per table (`sluice_tables.acked_seq`) says what the cloud has.
//! Newest-first draining acknowledges the top of the backlog before its
//! bottom: such a batch's range `(base_seq, last_seq]` is kept in
//! `sluice_acked_ranges` (merged with its neighbours) until the watermark
//! reaches it, and then absorbed. A row is pending when its sequence number
//! is above the watermark and in no acknowledged range; the pending rows are
//! the *gaps* between the ranges. Acknowledging stays one or two statements
//! whatever the batch's size, and ranges stay few: consecutive newest-first
//! batches are adjacent and merge into one.

use rusqlite::Connection;

use crate::bookkeeping::ranges;
use crate::glue::Res;

/// The pending intervals `(lo, hi]` of sequence numbers above `from`: the
/// gaps between the acknowledged ranges, in order; the last one is open
/// (`hi` = `i64::MAX`).
pub fn pending_gaps(ranges: &[(i64, i64)], from: i64) -> Vec<(i64, i64)> {
    let mut gaps = Vec::with_capacity(ranges.len() + 1);
    let mut at = from;
    for &(lo, hi) in ranges {
        if lo > at {
            gaps.push((at, lo));
        }
        at = at.max(hi);
    }
    gaps.push((at, i64::MAX));
    gaps
}

/// Whether `(base, last]` is already acknowledged: at or below the
/// watermark, or inside one range.
pub fn covered(ranges: &[(i64, i64)], watermark: i64, base: i64, last: i64) -> bool {
    last <= watermark || ranges.iter().any(|&(lo, hi)| lo <= base && last <= hi)
}

/// What an acknowledgement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acked {
    /// The watermark moved to this sequence number.
    Watermark(i64),
    /// The batch is above the watermark: its range was recorded.
    Range,
}

/// Records the acknowledgement of `(base, last]` of `tbl` whose watermark is
/// `watermark` and whose ranges above it are `ranges` (from
/// [`ranges::above`]). Call inside the acknowledgement's transaction.
pub fn record(
    conn: &Connection,
    tbl: &str,
    watermark: i64,
    ranges: &[(i64, i64)],
    base: i64,
    last: i64,
) -> Res<Acked> {
    if base <= watermark {
        // The batch reaches the watermark: move it, absorbing every range it
        // now reaches (a range may reach further than the batch).
        let wm = advance(ranges, last.max(watermark));
        if ranges.iter().any(|&(lo, _)| lo <= wm) {
            ranges::forget_upto(conn, tbl, wm)?;
        }
        return Ok(Acked::Watermark(wm));
    }
    // Above the watermark: merge with every range it overlaps or touches.
    let touching = |&&(lo, hi): &&(i64, i64)| lo <= last && hi >= base;
    let lo = ranges
        .iter()
        .filter(touching)
        .map(|r| r.0)
        .fold(base, i64::min);
    let hi = ranges
        .iter()
        .filter(touching)
        .map(|r| r.1)
        .fold(last, i64::max);
    ranges::replace(conn, tbl, lo, hi)?;
    Ok(Acked::Range)
}

/// The watermark after moving to `wm`: past every range (in order) that
/// starts at or below it.
pub fn advance(ranges: &[(i64, i64)], mut wm: i64) -> i64 {
    for &(lo, hi) in ranges {
        if lo > wm {
            break;
        }
        wm = wm.max(hi);
    }
    wm
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn gaps_between_ranges() {
        assert_eq!(pending_gaps(&[], 5), vec![(5, i64::MAX)]);
        assert_eq!(
            pending_gaps(&[(10, 20), (30, 40)], 5),
            vec![(5, 10), (20, 30), (40, i64::MAX)]
        );
        // A range starting at the watermark leaves no gap below it.
        assert_eq!(pending_gaps(&[(5, 20)], 5), vec![(20, i64::MAX)]);
    }

    #[test]
    fn the_watermark_folds_in_the_ranges_it_reaches() {
        let r = [(500, 600), (800, 1000)];
        assert_eq!(advance(&r, 100), 100);
        assert_eq!(advance(&r, 500), 600);
        assert_eq!(advance(&r, 700), 700);
        assert_eq!(advance(&r, 800), 1000);
        assert_eq!(advance(&[(5, 20), (20, 30)], 5), 30);
    }

    #[test]
    fn covered_by_the_watermark_or_one_range() {
        let r = [(500, 600), (800, 1000)];
        assert!(covered(&r, 100, 50, 100));
        assert!(covered(&r, 100, 850, 900));
        assert!(!covered(&r, 100, 600, 800));
        assert!(!covered(&r, 100, 550, 850));
    }
}
