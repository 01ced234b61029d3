//! The jobs other than sync, and `sluice run`: the daemon that runs every
//! job on its cron schedule.
//!
//! Jobs run one after another on one edge connection and one cloud
//! connection, so a job never runs twice at once. At start, every job whose
//! scheduled time passed while the agent was down (per the sync log) runs
//! once. Every run, of every job, is recorded in `sluice_sync_log`. The
//! edge work of a job runs off the async runtime ([`Edge::run`]).

use std::sync::Arc;

use chrono::Utc;
use tracing::{info, warn};

use crate::budget::{when_full, Enforced};
use crate::cloud::Cloud;
use crate::config::{BudgetConfig, Config};
use crate::edge::{Edge, EdgeConn, EpochReason, LogEntry, RunStatus};
use crate::embed;
use crate::metrics::Metrics;
use crate::narrow::Narrowings;
use crate::schedule::{self, Job};
use crate::shutdown::Shutdown;
use crate::sync::{self, Mode, SyncOptions};

/// Deletes acknowledged rows older than `keep` from `tables` (default:
/// every tracked table).
fn cleanup(edge: &EdgeConn, tables: Option<Vec<String>>, keep: &str) -> anyhow::Result<LogEntry> {
    let tables = match tables {
        Some(t) => t,
        None => edge.tracked_tables()?,
    };
    let mut deleted = 0;
    let mut errors = Vec::new();
    for t in &tables {
        match edge.write_i64("SELECT sluice_cleanup(?1, ?2)", rusqlite::params![t, keep]) {
            Ok(n) => deleted += n,
            Err(e) => errors.push(format!("{t}: {e:#}")),
        }
    }
    Ok(outcome(deleted, errors, tables.len()))
}

/// Runs every registered rollup (`sluice_rollup_run()`), where the loaded
/// extension has rollups.
fn rollup(edge: &EdgeConn) -> anyhow::Result<LogEntry> {
    if !edge.has_function("sluice_rollup_run") {
        return Ok(skipped("the loaded sluice0.so has no sluice_rollup_run"));
    }
    let rows = edge.write_i64("SELECT sluice_rollup_run()", [])?;
    Ok(LogEntry {
        rows,
        status: RunStatus::Success,
        ..LogEntry::default()
    })
}

/// The storage budget job ([`crate::budget::enforce`]) as a run of the
/// sync log.
fn budget(edge: &EdgeConn, cfg: &BudgetConfig) -> anyhow::Result<LogEntry> {
    if cfg.enabled() && !edge.has_function("sluice_enforce_budget") {
        return Ok(skipped(
            "the loaded sluice0.so has no sluice_enforce_budget",
        ));
    }
    Ok(match crate::budget::enforce(edge.connection(), cfg)? {
        Enforced::Skipped(why) => skipped(why),
        Enforced::Done { rows, unmet } => LogEntry {
            rows,
            status: RunStatus::Success,
            error: unmet,
            ..LogEntry::default()
        },
    })
}

fn skipped(why: &str) -> LogEntry {
    LogEntry {
        status: RunStatus::Skipped,
        error: Some(why.into()),
        ..LogEntry::default()
    }
}

fn outcome(rows: i64, errors: Vec<String>, total: usize) -> LogEntry {
    let status = match errors.len() {
        0 => RunStatus::Success,
        n if n < total => RunStatus::Partial,
        _ => RunStatus::Failed,
    };
    LogEntry {
        rows,
        status,
        error: (!errors.is_empty()).then(|| errors.join("; ")),
        ..LogEntry::default()
    }
}

/// State kept across job runs by the daemon: the cloud connection and the
/// loaded embedding model.
#[derive(Default)]
pub struct JobState {
    pub cloud: Option<Cloud>,
    pub embedder: Option<Arc<embed::EmbedJob>>,
    /// What the last embedding run did (`sluice embed --json`).
    pub last_embed: Option<embed::EmbedReport>,
    pub metrics: Metrics,
    /// The narrowings of batches refused for a row's value, kept between
    /// sync runs so that a run stopped by `sync.max_run_secs` does not begin
    /// one again.
    pub narrowings: Narrowings,
}

/// Embeds key-frame descriptions (`[embed]`), keeping the model loaded in
/// `state` between runs.
pub async fn embed(cfg: &Config, state: &mut JobState) -> anyhow::Result<LogEntry> {
    let Some(ecfg) = &cfg.embed else {
        return Ok(skipped("no [embed] section configured"));
    };
    let job = match &state.embedder {
        Some(j) => j.clone(),
        None => {
            let j = embed::load_job(ecfg).await?;
            state.embedder = Some(j.clone());
            j
        }
    };
    let r = embed::run_loaded(&job, &cfg.edge.database, &cfg.extension_path()).await?;
    state.last_embed = Some(r.clone());
    Ok(LogEntry {
        rows: (r.embedded + r.refreshed + r.cleared) as i64,
        batches: r.batches as i64,
        bytes: r.bytes as i64,
        status: RunStatus::Success,
        error: r
            .more_pending
            .then(|| "more rows wait for the next run (embed.max_rows_per_run)".into()),
        ..LogEntry::default()
    })
}

/// Runs one job and records it in the sync log.
pub async fn run_job(
    job: Job,
    cfg: &Config,
    edge: &Edge,
    state: &mut JobState,
    shutdown: &Shutdown,
) -> anyhow::Result<LogEntry> {
    let b = cfg.budget.clone();
    let id = edge
        .run(move |e| when_full(e.connection(), &b, "the sync log", || e.log_start(job)))
        .await?;
    let result = match job {
        Job::Sync | Job::FullSync => {
            let opts = SyncOptions {
                mode: if job == Job::Sync {
                    Mode::Hourly
                } else {
                    Mode::Full
                },
                tables: &[],
                dry_run: false,
                progress: false,
                narrowings: Some(&state.narrowings),
            };
            let report = sync::run(cfg, edge, &mut state.cloud, &opts, shutdown).await;
            report.map(|r| {
                state
                    .metrics
                    .epochs(EpochReason::RestoredOrCopied, r.epochs());
                for t in &r.tables {
                    state.metrics.quarantined(&t.table, t.quarantined);
                }
                r.log_entry()
            })
        }
        Job::Cleanup => {
            let (tables, keep) = (cfg.cleanup.tables.clone(), cfg.cleanup.keep.clone());
            edge.run(move |e| cleanup(e, tables, &keep)).await
        }
        Job::Rollup => edge.run(rollup).await,
        Job::Budget => {
            let b = cfg.budget.clone();
            edge.run(move |e| budget(e, &b)).await
        }
        Job::Embed => embed(cfg, state).await,
        Job::Pull => crate::pull::pass(cfg, edge, &mut state.cloud, None, shutdown)
            .await
            .map(|pulls| {
                crate::pull::record(&state.metrics, &pulls);
                crate::pull::log_entry(&pulls)
            }),
    };
    let entry = result.unwrap_or_else(|e| LogEntry {
        status: RunStatus::Failed,
        error: Some(format!("{e:#}")),
        ..LogEntry::default()
    });
    let logged = entry.clone();
    let b = cfg.budget.clone();
    edge.run(move |e| {
        when_full(e.connection(), &b, "the sync log", || {
            e.log_end(id, &logged)
        })
    })
    .await?;
    state.metrics.record(job, &entry);
    if matches!(job, Job::Sync | Job::FullSync | Job::Rollup | Job::Embed) {
        if let Ok(tables) = edge.run(|e| e.status()).await {
            state
                .metrics
                .set_pending(tables.into_iter().map(|t| (t.table, t.pending_rows)));
        }
    }
    match entry.status {
        RunStatus::Success => info!(
            job = job.name(),
            rows = entry.rows,
            batches = entry.batches,
            "job done"
        ),
        RunStatus::Skipped => tracing::debug!(
            job = job.name(),
            why = entry.error.as_deref().unwrap_or(""),
            "job skipped"
        ),
        _ => {
            warn!(job = job.name(), status = %entry.status, error = entry.error.as_deref().unwrap_or(""), "job did not fully succeed")
        }
    }
    Ok(entry)
}

/// `sluice run`: the daemon.
pub async fn run_daemon(cfg: &Config, shutdown: &Shutdown) -> anyhow::Result<()> {
    let entries = cfg.schedule.entries()?;
    let edge = Edge::open(cfg).await?;
    edge.run(|e| e.ensure_log()).await?;
    let mut state = JobState::default();
    if edge.moved().is_some() {
        state.metrics.epochs(EpochReason::MovedMachine, 1);
    }
    if let Some(addr) = cfg.metrics.listen {
        state.metrics.clone().serve(addr, shutdown.clone()).await?;
    }
    info!(
        device = %cfg.device.id,
        jobs = %entries.iter().map(|e| e.job.name()).collect::<Vec<_>>().join(","),
        pull = %if !cfg.pull.enabled { "off" } else if cfg.pull.listen { "listen" } else { "poll" },
        "sluice agent started"
    );

    // The pull has a task of its own (its own edge and cloud connections,
    // the listener): a long sync does not delay a cloud change.
    let metrics = state.metrics.clone();
    let pull = async {
        if let Err(e) = crate::pull::daemon(cfg, &metrics, shutdown).await {
            warn!(error = %format!("{e:#}"), "the pull stopped; the other jobs go on");
        }
    };
    let jobs_loop = async {
        let result = job_loop(cfg, &entries, &edge, &mut state, shutdown).await;
        if result.is_err() {
            shutdown.request();
        }
        result
    };
    let (result, ()) = tokio::join!(jobs_loop, pull);
    result?;
    info!("sluice agent stopped");
    Ok(())
}

/// The scheduled jobs: the missed ones at start, then each at its time.
async fn job_loop(
    cfg: &Config,
    entries: &[schedule::Entry],
    edge: &Edge,
    state: &mut JobState,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let now = Utc::now();
    let jobs: Vec<Job> = entries.iter().map(|e| e.job).collect();
    let last_runs = edge
        .run(move |e| {
            jobs.iter()
                .map(|j| e.last_run(*j))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .await?;
    let mut missed = Vec::new();
    for (e, last) in entries.iter().zip(last_runs) {
        if e.missed(last, now) {
            missed.push(e.job);
        }
    }
    missed.sort();
    for job in missed {
        if shutdown.requested() {
            break;
        }
        info!(job = job.name(), "running a missed scheduled run");
        run_job(job, cfg, edge, state, shutdown).await?;
    }

    while !shutdown.requested() {
        let Some((at, jobs)) = schedule::next_fire(entries, Utc::now()) else {
            info!("no job is scheduled; waiting for shutdown");
            while !shutdown.requested() {
                shutdown.sleep(std::time::Duration::from_secs(3600)).await;
            }
            break;
        };
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        shutdown.sleep(wait).await;
        for job in jobs {
            if shutdown.requested() {
                break;
            }
            run_job(job, cfg, edge, state, shutdown).await?;
        }
    }
    Ok(())
}
