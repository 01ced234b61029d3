//! The schedule: which job runs when. Pure logic over a clock it is given,
//! so tests run on synthetic times instead of sleeping.
//!
//! Expressions use the `cron` crate's syntax, which has a seconds field:
//! `sec min hour day-of-month month day-of-week [year]`, e.g. `0 */5 * * * *`
//! every five minutes. Times are UTC. `off` disables a job.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use cron::Schedule;

/// The jobs the agent runs, in the order jobs due at the same moment run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Job {
    /// Aggregate new raw rows into the registered rollups (`sluice_rollup_run`).
    Rollup,
    /// Embed key-frame descriptions that have no (or a stale) embedding.
    Embed,
    /// Send pending batches, within the bandwidth cap and run-time limit.
    Sync,
    /// Send every pending batch, uncapped: drains a backlog overnight.
    FullSync,
    /// Delete acknowledged rows older than `cleanup.keep`.
    Cleanup,
    /// Keep the edge database under `budget.max_bytes`.
    Budget,
    /// Pull the changes of the published cloud tables to the subscribed edge
    /// tables (`[pull]`; its own task in `sluice run`).
    Pull,
}

impl Job {
    /// The name used in the config, the sync log and the logs.
    pub fn name(self) -> &'static str {
        match self {
            Job::Rollup => "rollup",
            Job::Embed => "embed",
            Job::Sync => "sync",
            Job::FullSync => "full_sync",
            Job::Cleanup => "cleanup",
            Job::Budget => "budget",
            Job::Pull => "pull",
        }
    }

    /// The config key of the job's cron expression.
    pub fn config_key(self) -> String {
        match self {
            Job::Pull => "pull.schedule".into(),
            j => format!("schedule.{}", j.name()),
        }
    }
}

/// A job with its parsed cron expression.
#[derive(Debug, Clone)]
pub struct Entry {
    pub job: Job,
    pub schedule: Schedule,
}

/// Parses `expr` for `job`; the error names the config field.
pub fn parse(job: Job, expr: &str) -> anyhow::Result<Option<Entry>> {
    let expr = expr.trim();
    if expr.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let schedule = Schedule::from_str(expr).map_err(|e| {
        anyhow::anyhow!(
            "{}: {expr:?} is not a cron expression ({e}); the syntax has a seconds field: \"sec min hour day month weekday\", e.g. \"0 */5 * * * *\"",
            job.config_key()
        )
    })?;
    if schedule.upcoming(Utc).next().is_none() {
        anyhow::bail!("{}: {expr:?} never fires", job.config_key());
    }
    Ok(Some(Entry { job, schedule }))
}

impl Entry {
    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.after(&t).next()
    }

    /// True when the job should have fired in `(last_run, now]` but did not
    /// run then (the box was off, or the agent was down): it runs once at
    /// start. A job that never ran counts as missed.
    pub fn missed(&self, last_run: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        match last_run {
            None => true,
            Some(last) => self.next_after(last).is_some_and(|t| t <= now),
        }
    }
}

/// The next moment any entry fires after `now`, and the jobs due then (in
/// the order of [`Job::ALL`], so a rollup precedes the sync that sends it).
pub fn next_fire(entries: &[Entry], now: DateTime<Utc>) -> Option<(DateTime<Utc>, Vec<Job>)> {
    let times: Vec<(Job, DateTime<Utc>)> = entries
        .iter()
        .filter_map(|e| e.next_after(now).map(|t| (e.job, t)))
        .collect();
    let first = times.iter().map(|(_, t)| *t).min()?;
    let mut jobs: Vec<Job> = times
        .iter()
        .filter(|(_, t)| *t == first)
        .map(|(j, _)| *j)
        .collect();
    jobs.sort();
    Some((first, jobs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, h, m, s).unwrap()
    }

    #[test]
    fn bad_expressions_name_the_field() {
        let err = parse(Job::Sync, "every hour").unwrap_err().to_string();
        assert!(err.contains("schedule.sync"), "{err}");
        assert!(err.contains("seconds field"), "{err}");
        assert!(parse(Job::Embed, "off").unwrap().is_none());
    }

    #[test]
    fn next_fire_groups_jobs_due_together_in_order() {
        let entries = vec![
            parse(Job::Sync, "0 0 * * * *").unwrap().unwrap(),
            parse(Job::Rollup, "0 */5 * * * *").unwrap().unwrap(),
            parse(Job::FullSync, "0 0 3 * * *").unwrap().unwrap(),
        ];
        let (t, jobs) = next_fire(&entries, at(2, 57, 10)).unwrap();
        assert_eq!(t, at(3, 0, 0));
        assert_eq!(jobs, vec![Job::Rollup, Job::Sync, Job::FullSync]);
        let (t, jobs) = next_fire(&entries, at(3, 0, 0)).unwrap();
        assert_eq!(t, at(3, 5, 0));
        assert_eq!(jobs, vec![Job::Rollup]);
    }

    #[test]
    fn a_run_missed_while_the_box_was_off_is_detected() {
        let full = parse(Job::FullSync, "0 0 3 * * *").unwrap().unwrap();
        // Last ran yesterday 03:00; the box was off at 03:00 today.
        let yesterday = at(3, 0, 0) - chrono::Duration::days(1);
        assert!(full.missed(Some(yesterday), at(9, 0, 0)));
        // Ran today at 03:00: nothing missed at 09:00.
        assert!(!full.missed(Some(at(3, 0, 1)), at(9, 0, 0)));
        assert!(full.missed(None, at(9, 0, 0)));
    }
}
