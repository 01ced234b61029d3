//! Finding the row the cloud refuses (issue 12, case 7: poison rows). When
//! `sluice.ingest` refuses a batch for a value of one of its rows
//! ([`crate::cloud::refuses_a_value`]), the other rows of the batch may well
//! be fine: the sync cuts smaller batches of the same table, halving the row
//! limit at each refusal, and sends and acknowledges every smaller batch the
//! cloud takes, until a batch of one row is refused. That row is moved aside
//! at the edge (`sluice_quarantine`) and the rows behind it go on. After the
//! refused row (or once the rows of the refused batch are all through), the
//! limit doubles again with each batch taken, up to `sync.batch_rows`, so a
//! run of bad rows costs one ingest each and a lone bad row does not slow
//! the rest of the table.
//!
//! Pure logic: [`Narrowing`] says what row limit the next batch is cut with;
//! the sync loop tells it what the cloud answered. The daemon keeps it per
//! table between runs ([`Narrowings`]), so a run stopped by
//! `sync.max_run_secs` in the middle of a narrowing does not begin it again.

use std::cell::RefCell;
use std::collections::HashMap;

/// Where a table's narrowing stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Narrowing {
    /// Rows per batch now (1 ..= the configured limit).
    limit: u32,
    /// Rows of the smallest refused batch that no accepted batch has carried
    /// yet: the refused row is among them (as long as the edge cuts the same
    /// rows again, which it does unless new rows go first).
    suspects: u32,
}

/// What the sync does after the cloud refused a batch for a row's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Cut a smaller batch (of [`Narrowing::limit`] rows) and try again.
    Narrower,
    /// The batch was one row: the cloud refuses that row itself; move it aside.
    Row,
}

impl Narrowing {
    /// No narrowing: batches of `full` rows.
    pub fn new(full: u32) -> Narrowing {
        Narrowing {
            limit: full.max(1),
            suspects: 0,
        }
    }

    /// The row limit of the next batch, never above `full` (the configured
    /// limit may have been lowered since).
    pub fn limit(&self, full: u32) -> u32 {
        self.limit.min(full.max(1))
    }

    /// True while no narrowing is under way (batches of the full limit).
    pub fn is_idle(&self, full: u32) -> bool {
        self.suspects == 0 && self.limit >= full.max(1)
    }

    /// The cloud refused a batch of `rows` rows for a value of one of them.
    pub fn refused(&mut self, rows: u32) -> Refused {
        if rows <= 1 {
            return Refused::Row;
        }
        self.suspects = rows;
        self.limit = rows / 2;
        Refused::Narrower
    }

    /// The refused row was moved aside: the rows behind it are not suspect,
    /// and the limit grows back from one row as batches are taken.
    pub fn moved_aside(&mut self) {
        self.suspects = 0;
        self.limit = 1;
    }

    /// The cloud took a batch of `rows` rows.
    pub fn accepted(&mut self, rows: u32, full: u32) {
        let full = full.max(1);
        if self.suspects > 0 {
            self.suspects = self.suspects.saturating_sub(rows);
            if self.suspects > 0 {
                return;
            }
        }
        self.limit = self.limit.saturating_mul(2).min(full);
    }
}

/// The narrowings of the tables, kept by the daemon between sync runs.
#[derive(Debug, Default)]
pub struct Narrowings(RefCell<HashMap<String, Narrowing>>);

impl Narrowings {
    /// The table's narrowing, or none under way.
    pub fn get(&self, table: &str, full: u32) -> Narrowing {
        self.0
            .borrow()
            .get(table)
            .copied()
            .unwrap_or_else(|| Narrowing::new(full))
    }

    /// Keeps the table's narrowing for the next run (forgets an idle one).
    pub fn put(&self, table: &str, n: Narrowing, full: u32) {
        let mut map = self.0.borrow_mut();
        if n.is_idle(full) {
            map.remove(table);
        } else {
            map.insert(table.to_owned(), n);
        }
    }
}

/// `text` cut to at most `max` characters (at a character boundary), with
/// `...` and the length when it was longer: what the log and the edge keep
/// of a cloud message that may quote a huge value.
pub fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((at, _)) => format!("{}... ({} bytes in all)", &text[..at], text.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The edge as the narrowing sees it: pending rows in order; a batch is
    /// the first `limit` of them; the cloud refuses a batch that holds a bad
    /// row. Returns the rows moved aside, the rows accepted and the number
    /// of ingests.
    fn drain(rows: u32, bad: &[u32], full: u32) -> (Vec<u32>, Vec<u32>, u32) {
        let mut pending: Vec<u32> = (1..=rows).collect();
        let (mut aside, mut taken, mut ingests) = (Vec::new(), Vec::new(), 0);
        let mut n = Narrowing::new(full);
        while !pending.is_empty() {
            let k = (n.limit(full) as usize).min(pending.len());
            let batch: Vec<u32> = pending[..k].to_vec();
            ingests += 1;
            if batch.iter().any(|r| bad.contains(r)) {
                match n.refused(k as u32) {
                    Refused::Narrower => {}
                    Refused::Row => {
                        aside.push(batch[0]);
                        pending.remove(0);
                        n.moved_aside();
                    }
                }
            } else {
                taken.extend(&batch);
                pending.drain(..k);
                n.accepted(k as u32, full);
            }
            assert!(ingests < 10_000, "no end");
        }
        (aside, taken, ingests)
    }

    #[test]
    fn the_refused_rows_are_found_and_every_other_row_goes() {
        for (rows, bad, full) in [
            (300, vec![151], 1000),
            (300, vec![1], 100),
            (300, vec![300], 100),
            (1000, vec![7, 8, 9, 10, 11], 1000),
            (1000, vec![1, 500, 999], 64),
            (5, vec![1, 2, 3, 4, 5], 1000),
            (1, vec![1], 1),
            (10, vec![], 3),
        ] {
            let (aside, taken, _) = drain(rows, &bad, full);
            assert_eq!(aside, bad, "{rows} rows, bad {bad:?}, limit {full}");
            let mut all = aside.clone();
            all.extend(&taken);
            all.sort();
            assert_eq!(all, (1..=rows).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_lone_bad_row_costs_a_few_ingests_and_a_run_of_them_one_each() {
        // 1000 rows in batches of 1000 with one bad row: about 2 x log2(1000)
        // ingests to find it, and the limit is back after log2(1000) more.
        let (_, _, ingests) = drain(3000, &[500], 1000);
        assert!(ingests <= 40, "{ingests}");
        // 50 bad rows in a row: found at one ingest each once the first is.
        let bad: Vec<u32> = (101..=150).collect();
        let (aside, _, ingests) = drain(1000, &bad, 1000);
        assert_eq!(aside, bad);
        assert!(ingests <= 50 + 40, "{ingests}");
    }

    #[test]
    fn the_limit_grows_back_and_the_narrowing_is_kept_between_runs() {
        let mut n = Narrowing::new(1000);
        assert!(n.is_idle(1000));
        assert_eq!(n.refused(1000), Refused::Narrower);
        assert_eq!(n.limit(1000), 500);
        // The first half goes: the bad row is in the other half, same limit.
        n.accepted(500, 1000);
        assert_eq!(n.limit(1000), 500);
        assert_eq!(n.refused(500), Refused::Narrower);
        assert_eq!(n.limit(1000), 250);
        // The configured limit was lowered meanwhile.
        assert_eq!(n.limit(100), 100);
        let memory = Narrowings::default();
        memory.put("t", n, 1000);
        assert_eq!(memory.get("t", 1000), n);
        assert_eq!(memory.get("other", 1000), Narrowing::new(1000));
        n.moved_aside();
        assert_eq!(n.limit(1000), 1);
        for want in [2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 1000] {
            n.accepted(1, 1000);
            assert_eq!(n.limit(1000), want);
        }
        assert!(n.is_idle(1000));
        memory.put("t", n, 1000);
        assert!(memory.0.borrow().is_empty());
        assert_eq!(Narrowing::new(1).refused(1), Refused::Row);
    }

    #[test]
    fn cut_keeps_short_text_and_cuts_long_text_at_a_character() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("ééééé", 5), "ééééé");
        assert_eq!(cut("éééééé", 5), "ééééé... (12 bytes in all)");
        assert_eq!(cut(&"x".repeat(70_000), 3), "xxx... (70000 bytes in all)");
    }
}
