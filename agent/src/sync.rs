//! The sync loop. For every tracked table, in turn: cut the next pending batch
//! at the edge, apply it in the cloud with `sluice.ingest` (retrying
//! transient failures with backoff, reconnecting as needed), then acknowledge
//! it at the edge. A table whose batch is refused stops for this run; the other
//! tables go on. Each acknowledged batch stays acknowledged whatever happens
//! later, so an interrupted run is simply continued by the next one.
//!
//! Two modes: [`Mode::Hourly`] respects the bandwidth cap and the
//! run-time limit, and sends the pending rows of the last
//! `sync.hourly_window_secs` (two hours) of tables with a time column;
//! [`Mode::Full`] drains everything, uncapped. They are what the scheduled
//! jobs `sync` and `full_sync` run ([`Mode::job`]), and the sync log names a
//! run by its job. "Pending" is exactly what the cloud has not acknowledged;
//! `sync.order` chooses oldest or newest first.
//!
//! Every edge call goes through [`Edge::run`] (off the async runtime), so a
//! lane that waits for the pipeline's lock stalls no other lane.
//!
//! A batch the cloud refuses with SQLSTATE 55000 contradicts what the cloud
//! already has from this stream: the edge database was restored from a
//! backup or copied. The run then begins a new epoch at the edge
//! (`sluice_new_epoch`) and cuts the table's batch again, under the new
//! stream; at most once per table and run.
//!
//! A batch the cloud refuses for a value of one of its rows (a data
//! exception, a NULL, a unique or check constraint, a server limit:
//! [`crate::cloud::refuses_a_value`]) is narrowed down to that row by
//! cutting smaller batches ([`crate::narrow`]); the batches the cloud takes
//! are acknowledged as usual, the row the cloud refuses alone is moved aside
//! at the edge (`sluice_quarantine`, with the cloud's message and SQLSTATE),
//! and the table goes on with the rows behind it. Rows the edge moved aside
//! by itself while cutting (a row over the batch limit) are reported too.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tracing::{info, warn};

use crate::cloud::{Cloud, IngestError, IngestOutcome};
use crate::config::Config;
use crate::edge::{stream_hex, Edge, LogEntry, MachineMove, QuarantineEntry, RunStatus};
use crate::failpoint;
use crate::narrow::{cut, Narrowing, Narrowings, Refused};
use crate::schedule::Job;
use crate::shutdown::Shutdown;

/// `sluice sync --mode`: `hourly` or `full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Within `sync.bandwidth_bytes_per_sec` and `sync.max_run_secs`; the
    /// pending rows of the last `sync.hourly_window_secs`.
    Hourly,
    /// Everything pending, uncapped.
    Full,
}

impl Mode {
    /// The scheduled job that syncs this way (and names the run in the sync log).
    pub fn job(self) -> Job {
        match self {
            Mode::Hourly => Job::Sync,
            Mode::Full => Job::FullSync,
        }
    }
}

/// What to sync and how.
pub struct SyncOptions<'a> {
    pub mode: Mode,
    /// Only these tables; empty: `sync.tables` or every tracked table.
    pub tables: &'a [String],
    pub dry_run: bool,
    /// Show a progress bar (a person at a terminal).
    pub progress: bool,
    /// Where the narrowing of a refused batch is kept between runs (the
    /// daemon's); `None`: for this run only.
    pub narrowings: Option<&'a Narrowings>,
}

/// What happened to one table in one run.
#[derive(Debug, Default, serde::Serialize)]
pub struct TableReport {
    pub table: String,
    pub batches: u64,
    pub rows: u64,
    pub bytes: u64,
    pub inserted: i64,
    pub updated: i64,
    pub skipped: i64,
    pub replays: u64,
    /// New epochs this table's batches began (the cloud answered 55000:
    /// the edge database was restored or copied); 0 or 1.
    pub epochs: u64,
    /// Rows moved aside in this run: refused by the cloud for their values
    /// (`sluice_quarantine`), or over the batch limit (by the edge itself).
    pub quarantined: u64,
    pub pending_after: Option<i64>,
    pub error: Option<String>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub tables: Vec<TableReport>,
    pub dry_run: bool,
    pub interrupted: bool,
    /// Stopped by the run-time limit, with rows left for the next run.
    pub time_limited: bool,
    /// The edge database was found on another machine when this run opened
    /// it, and began a new epoch.
    pub moved: Option<MachineMove>,
    /// The edge database was found restored from a backup before anything
    /// was sent (the cloud holds more of its stream than it ever had), and
    /// began a new epoch.
    pub restored: Option<Restored>,
    /// The pull after the push (`sluice sync`): one entry per subscribed table.
    pub pulls: Vec<crate::pull::TablePull>,
    /// Why the pull did not run at all (the subscriptions not readable).
    pub pull_error: Option<String>,
    pub seconds: f64,
}

impl Report {
    /// 1 when a table failed, the run was interrupted, or rows were moved
    /// aside (someone must look at them); else 0.
    pub fn exit_code(&self) -> ExitCode {
        if self
            .tables
            .iter()
            .any(|t| t.error.is_some() || t.quarantined > 0)
            || self.interrupted
            || self.pull_error.is_some()
            || self.pulls.iter().any(|p| p.error.is_some())
        {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    }

    pub fn print_summary(&self) {
        for line in self.summary() {
            println!("{line}");
        }
    }

    /// The lines of [`Report::print_summary`].
    pub fn summary(&self) -> Vec<String> {
        let verb = if self.dry_run { "would send" } else { "sent" };
        let mut out = Vec::new();
        if let Some(m) = &self.moved {
            out.push(format!(
                "this database moved from machine {} to {}: it continues under a new epoch (stream {})",
                m.from.as_deref().unwrap_or("(none)"),
                m.to,
                stream_hex(m.new_stream)
            ));
        }
        if let Some(r) = &self.restored {
            out.push(format!(
                "this database was restored from a backup ({}): it continues under a new epoch (stream {})",
                r.evidence,
                stream_hex(r.new_stream)
            ));
        }
        for t in &self.tables {
            let mut line = match (&t.error, self.dry_run) {
                (Some(e), _) => format!("{:<20} FAILED after {} batches: {e}", t.table, t.batches),
                (None, true) => format!("{:<20} {verb} {} rows", t.table, t.pending_after.unwrap_or(0)),
                (None, false) => format!(
                    "{:<20} {verb} {} batches, {} rows, {} bytes: {} inserted, {} updated, {} skipped, {} replays",
                    t.table, t.batches, t.rows, t.bytes, t.inserted, t.updated, t.skipped, t.replays
                ),
            };
            if t.epochs > 0 {
                line.push_str(&format!(
                    "; {} new epoch{} (the edge database was restored or copied)",
                    t.epochs,
                    if t.epochs == 1 { "" } else { "s" }
                ));
            }
            if t.quarantined > 0 {
                line.push_str(&format!("; {}", quarantined_note(t.quarantined)));
            }
            out.push(line);
        }
        for p in &self.pulls {
            out.push(p.summary());
        }
        if let Some(e) = &self.pull_error {
            out.push(format!("pull                 FAILED: {e}"));
        }
        if self.interrupted {
            out.push("interrupted: the batch in flight was finished or left unacknowledged".into());
        }
        if self.time_limited {
            out.push("stopped at sync.max_run_secs: the rest goes at the next run".into());
        }
        let aside = self.quarantined();
        if aside > 0 {
            out.push(format!(
                "{aside} row{} moved aside: `sluice quarantine` lists {}; fix {} at the edge (or delete {}), then `sluice quarantine release TABLE`",
                if aside == 1 { "" } else { "s" },
                if aside == 1 { "it" } else { "them" },
                if aside == 1 { "it" } else { "them" },
                if aside == 1 { "it" } else { "them" },
            ));
        }
        out.push(format!("done in {:.2}s", self.seconds));
        out
    }

    /// New epochs begun in this run because the cloud found the database
    /// restored or copied (what `sluice_epochs_total{reason="restored_or_copied"}` counts).
    pub fn epochs(&self) -> u64 {
        self.tables.iter().map(|t| t.epochs).sum::<u64>() + u64::from(self.restored.is_some())
    }

    /// Rows moved aside in this run, of every table.
    pub fn quarantined(&self) -> u64 {
        self.tables.iter().map(|t| t.quarantined).sum()
    }

    /// The sync log's view of this run. A run that moved rows aside is
    /// `partial`, with the tables and counts in its error.
    pub fn log_entry(&self) -> LogEntry {
        let failed: Vec<String> = self
            .tables
            .iter()
            .filter_map(|t| t.error.as_ref().map(|e| format!("{}: {e}", t.table)))
            .chain(
                self.pulls
                    .iter()
                    .filter_map(|p| p.error.as_ref().map(|e| format!("pull {}: {e}", p.table))),
            )
            .chain(self.pull_error.iter().map(|e| format!("pull: {e}")))
            .collect();
        let aside: Vec<String> = self
            .tables
            .iter()
            .filter(|t| t.error.is_none() && t.quarantined > 0)
            .map(|t| format!("{}: {}", t.table, quarantined_note(t.quarantined)))
            .collect();
        let any_sent = self.tables.iter().any(|t| t.batches > 0);
        let status = if failed.is_empty() && aside.is_empty() && !self.interrupted {
            RunStatus::Success
        } else if any_sent
            || failed.len() < self.tables.len() + self.pulls.len()
            || self.pulls.iter().any(|p| p.batches > 0)
        {
            RunStatus::Partial
        } else {
            RunStatus::Failed
        };
        let mut error = failed
            .into_iter()
            .chain(aside)
            .collect::<Vec<_>>()
            .join("; ");
        if self.interrupted {
            error = if error.is_empty() {
                "interrupted by shutdown".into()
            } else {
                format!("{error}; interrupted by shutdown")
            };
        }
        LogEntry {
            batches: self.tables.iter().map(|t| t.batches as i64).sum(),
            rows: self.tables.iter().map(|t| t.rows as i64).sum(),
            bytes: self.tables.iter().map(|t| t.bytes as i64).sum(),
            status,
            error: (!error.is_empty()).then_some(error),
            ..LogEntry::default()
        }
    }
}

/// What the summary and the sync log say of rows moved aside.
fn quarantined_note(n: u64) -> String {
    format!(
        "{n} row{} quarantined (moved aside, not sent: `sluice quarantine` lists them)",
        if n == 1 { "" } else { "s" }
    )
}

/// Keeps the average send rate under a cap by sleeping between batches.
struct Throttle {
    bytes_per_sec: u64,
    started: Instant,
    sent: u64,
}

impl Throttle {
    fn new(bytes_per_sec: u64) -> Self {
        Throttle {
            bytes_per_sec,
            started: Instant::now(),
            sent: 0,
        }
    }

    /// How long to wait after sending `bytes` more.
    fn after_send(&mut self, bytes: u64) -> Duration {
        self.sent += bytes;
        if self.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        let due = Duration::from_secs_f64(self.sent as f64 / self.bytes_per_sec as f64);
        due.saturating_sub(self.started.elapsed())
    }
}

/// The throttle's wait after a batch, cut at the run-time limit: a big
/// batch at a low bandwidth cap asks for a wait longer than the run may
/// last (a 2 MB row at 10 kB/s, 200 s, against a 10 s `sync.max_run_secs`).
/// `true` when the run reaches its limit by waiting.
fn wait_within(wait: Duration, deadline: Option<Instant>, now: Instant) -> (Duration, bool) {
    match deadline {
        Some(d) if now + wait >= d => (d.saturating_duration_since(now), true),
        _ => (wait, false),
    }
}

/// `sluice sync`: one run, recorded in the sync log.
pub async fn run_once(
    cfg: &Config,
    opts: &SyncOptions<'_>,
    shutdown: &Shutdown,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let edge = Edge::open(cfg).await?;
    let mut cloud = None;
    if opts.dry_run {
        return run(cfg, &edge, &mut cloud, opts, shutdown).await;
    }
    let job = opts.mode.job();
    let b = cfg.budget.clone();
    let log_id = edge
        .run(move |e| {
            crate::budget::when_full(e.connection(), &b, "the sync log", || e.log_start(job))
        })
        .await?;
    let mut report = run(cfg, &edge, &mut cloud, opts, shutdown).await;
    if let Ok(r) = &mut report {
        r.moved = edge.moved().cloned();
        // The pull, after the push: the cloud's changes to the subscribed
        // tables (only those of `--table`, when given).
        if cfg.pull.enabled && !shutdown.requested() {
            let only: Option<std::collections::BTreeSet<String>> =
                (!opts.tables.is_empty()).then(|| opts.tables.iter().cloned().collect());
            match crate::pull::pass(cfg, &edge, &mut cloud, only.as_ref(), shutdown).await {
                Ok(pulls) => r.pulls = pulls,
                Err(e) => r.pull_error = Some(format!("{e:#}")),
            }
            r.seconds = started.elapsed().as_secs_f64();
        }
    }
    let entry = match &report {
        Ok(r) => r.log_entry(),
        Err(e) => LogEntry {
            status: RunStatus::Failed,
            error: Some(format!("{e:#}")),
            ..LogEntry::default()
        },
    };
    let b = cfg.budget.clone();
    edge.run(move |e| {
        crate::budget::when_full(e.connection(), &b, "the sync log", || {
            e.log_end(log_id, &entry)
        })
    })
    .await?;
    report
}

/// One pass over the tables until nothing is pending (or a limit is hit).
pub async fn run(
    cfg: &Config,
    edge: &Edge,
    cloud: &mut Option<Cloud>,
    opts: &SyncOptions<'_>,
    shutdown: &Shutdown,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let tracked = edge.run(|e| e.tracked_tables()).await?;
    let wanted: Vec<String> = if !opts.tables.is_empty() {
        opts.tables.to_vec()
    } else if let Some(t) = &cfg.sync.tables {
        t.clone()
    } else {
        tracked.clone()
    };
    // A table named that is only subscribed (cloud to edge) is the pull's.
    let subscribed: Vec<String> = if wanted.iter().any(|t| !tracked.contains(t)) {
        edge.run(|e| e.subscriptions())
            .await?
            .into_iter()
            .map(|s| s.table)
            .collect()
    } else {
        Vec::new()
    };
    for t in &wanted {
        if !tracked.contains(t) && !subscribed.iter().any(|s| s.eq_ignore_ascii_case(t)) {
            anyhow::bail!(
                "table '{t}' is not tracked at the edge (track it with SELECT sluice_track('{t}'))"
            );
        }
    }
    let wanted: Vec<String> = wanted.into_iter().filter(|t| tracked.contains(t)).collect();
    let mut report = Report {
        dry_run: opts.dry_run,
        ..Report::default()
    };
    if opts.dry_run {
        let pending = pending_of(edge, &wanted).await?;
        for (table, pending) in wanted.into_iter().zip(pending) {
            report.tables.push(TableReport {
                table,
                pending_after: Some(pending),
                ..TableReport::default()
            });
        }
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    report.restored = check_restored(cfg, edge, cloud).await;

    let limits = Limits {
        throttle_bytes_per_sec: match opts.mode {
            Mode::Hourly => cfg.sync.bandwidth_bytes_per_sec,
            Mode::Full => 0,
        },
        deadline: match opts.mode {
            Mode::Hourly if cfg.sync.max_run_secs > 0 => {
                Some(started + Duration::from_secs(cfg.sync.max_run_secs))
            }
            _ => None,
        },
    };
    let progress = if opts.progress {
        let total: u64 = pending_of(edge, &wanted)
            .await?
            .into_iter()
            .map(|n| n.max(0) as u64)
            .sum();
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {msg:<18} [{bar:30}] {pos}/{len} rows  {per_sec}  eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Some(bar)
    } else {
        None
    };
    // Tables are independent (each has its own watermark), so several sync
    // at once, each lane with its own edge and cloud connection; lane 0 uses
    // the caller's. The bandwidth cap is shared.
    let lanes = (cfg.sync.concurrency as usize).clamp(1, wanted.len().max(1));
    let run_narrowings = Narrowings::default();
    let shared = Lanes {
        cfg,
        mode: opts.mode,
        shutdown,
        limits: &limits,
        progress: progress.as_ref(),
        queue: RefCell::new(wanted.iter().cloned().enumerate().collect()),
        throttle: RefCell::new(Throttle::new(limits.throttle_bytes_per_sec)),
        done: RefCell::new(Vec::new()),
        interrupted: Cell::new(false),
        time_limited: Cell::new(false),
        new_streams: RefCell::new(Vec::new()),
        narrowings: match opts.narrowings {
            Some(n) => n,
            None => &run_narrowings,
        },
    };
    let mut edges = Vec::with_capacity(lanes.saturating_sub(1));
    for _ in 1..lanes {
        edges.push(
            Edge::open(cfg)
                .await
                .context("cannot open another edge connection for a sync lane")?,
        );
    }
    let mut clouds: Vec<Option<Cloud>> = (1..lanes).map(|_| None).collect();
    {
        let mut work = vec![lane(&shared, edge, cloud)];
        for (e, c) in edges.iter().zip(clouds.iter_mut()) {
            work.push(lane(&shared, e, c));
        }
        futures_util::future::join_all(work).await;
    }
    let mut done = shared.done.into_inner();
    done.sort_by_key(|(i, _)| *i);
    report.tables = done.into_iter().map(|(_, t)| t).collect();
    report.interrupted = shared.interrupted.get();
    report.time_limited = shared.time_limited.get();
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// What the sync lanes share: the tables still to do, the bandwidth cap,
/// the reports of the tables done.
struct Lanes<'a> {
    cfg: &'a Config,
    mode: Mode,
    shutdown: &'a Shutdown,
    limits: &'a Limits,
    progress: Option<&'a ProgressBar>,
    queue: RefCell<VecDeque<(usize, String)>>,
    throttle: RefCell<Throttle>,
    done: RefCell<Vec<(usize, TableReport)>>,
    interrupted: Cell<bool>,
    time_limited: Cell<bool>,
    /// The streams this run began (new epochs): a 55000 on a batch of one of
    /// them is not answered with yet another epoch.
    new_streams: RefCell<Vec<i64>>,
    /// The tables' narrowings of refused batches.
    narrowings: &'a Narrowings,
}

/// One lane: takes the next table from the queue until none is left.
async fn lane(shared: &Lanes<'_>, edge: &Edge, cloud: &mut Option<Cloud>) {
    loop {
        if shared.shutdown.requested() {
            shared.interrupted.set(true);
            return;
        }
        if shared.limits.deadline.is_some_and(|d| Instant::now() >= d) {
            shared.time_limited.set(true);
            return;
        }
        let Some((index, table)) = shared.queue.borrow_mut().pop_front() else {
            return;
        };
        if let Some(bar) = shared.progress {
            bar.set_message(table.clone());
        }
        let mut tr = TableReport {
            table: table.clone(),
            ..TableReport::default()
        };
        let ctx = TableRun {
            cfg: shared.cfg,
            mode: shared.mode,
            edge,
            table: &table,
            shutdown: shared.shutdown,
            limits: shared.limits,
            progress: shared.progress,
            new_streams: &shared.new_streams,
            narrowings: shared.narrowings,
        };
        match sync_table(&ctx, cloud, &mut tr, &shared.throttle).await {
            Ok(TableEnd::Done) => {}
            Ok(TableEnd::TimeLimit) => shared.time_limited.set(true),
            Err(e) => {
                warn!(table = %table, error = %format!("{e:#}"), "table sync failed; other tables go on");
                tr.error = Some(format!("{e:#}"));
            }
        }
        let t = table.clone();
        tr.pending_after = edge.run(move |e| e.pending(&t)).await.ok();
        shared.done.borrow_mut().push((index, tr));
        if shared.shutdown.requested() {
            shared.interrupted.set(true);
        }
    }
}

struct Limits {
    throttle_bytes_per_sec: u64,
    deadline: Option<Instant>,
}

struct TableRun<'a> {
    cfg: &'a Config,
    mode: Mode,
    edge: &'a Edge,
    table: &'a str,
    shutdown: &'a Shutdown,
    limits: &'a Limits,
    progress: Option<&'a ProgressBar>,
    new_streams: &'a RefCell<Vec<i64>>,
    narrowings: &'a Narrowings,
}

enum TableEnd {
    Done,
    TimeLimit,
}

/// A table's rows moved aside by the edge are warned about and counted too,
/// whatever became of the table's run.
async fn sync_table(
    ctx: &TableRun<'_>,
    cloud: &mut Option<Cloud>,
    tr: &mut TableReport,
    throttle: &RefCell<Throttle>,
) -> anyhow::Result<TableEnd> {
    let full = ctx.cfg.sync.batch_rows;
    let t = ctx.table.to_owned();
    let aside_before = ctx.edge.run(move |e| e.last_quarantine_id(&t)).await?;
    let mut state = TableState {
        narrowing: ctx.narrowings.get(ctx.table, full),
        moved: Vec::new(),
        witnessed: false,
    };
    let result = drain_table(ctx, cloud, tr, throttle, &mut state).await;
    ctx.narrowings.put(ctx.table, state.narrowing, full);
    let t = ctx.table.to_owned();
    match ctx
        .edge
        .run(move |e| e.quarantined(Some(&t), aside_before))
        .await
    {
        Ok(entries) => {
            for entry in entries.iter().filter(|e| !state.moved.contains(&e.seq)) {
                warn_edge_quarantine(entry);
                tr.quarantined += 1;
            }
        }
        Err(e) => {
            warn!(table = ctx.table, error = %format!("{e:#}"), "cannot list the rows the edge moved aside")
        }
    }
    if tr.batches > 0 || tr.quarantined > 0 {
        info!(
            table = ctx.table,
            batches = tr.batches,
            rows = tr.rows,
            bytes = tr.bytes,
            replays = tr.replays,
            quarantined = tr.quarantined,
            "table synced"
        );
    }
    result
}

/// What one table's run keeps while it drains.
struct TableState {
    narrowing: Narrowing,
    /// Sequence numbers of the rows this run moved aside.
    moved: Vec<i64>,
    /// The cloud took a batch of the table in this run.
    witnessed: bool,
}

/// Rows moved aside one after another, each refused alone, while the cloud
/// took no batch of the table in the run: after this many the table stops
/// for the run. Every batch refused alike is a refusal of the batches (the
/// cloud's table or extension, the device's zone), not of single rows, and
/// must not move a whole backlog aside.
pub const UNWITNESSED_LIMIT: u64 = 10;

/// How much of a cloud message the edge keeps as a quarantined row's reason.
pub const REASON_CHARS: usize = 1000;

/// How much of a cloud message the log shows (a message may quote the value).
pub const LOG_MESSAGE_CHARS: usize = 160;

async fn drain_table(
    ctx: &TableRun<'_>,
    cloud: &mut Option<Cloud>,
    tr: &mut TableReport,
    throttle: &RefCell<Throttle>,
    state: &mut TableState,
) -> anyhow::Result<TableEnd> {
    let table = ctx.table;
    let full = ctx.cfg.sync.batch_rows;
    let options = batch_options(ctx).await?;
    while !ctx.shutdown.requested() {
        if ctx.limits.deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(TableEnd::TimeLimit);
        }
        let (t, rows, o) = (
            table.to_owned(),
            state.narrowing.limit(full),
            options.clone(),
        );
        let Some(batch) = ctx.edge.run(move |e| e.next_batch(&t, rows, &o)).await? else {
            break;
        };
        let header =
            sluice_wire::decode_header(&batch).context("the edge produced an unreadable batch")?;
        let outcome = match ingest_with_retry(ctx.cfg, cloud, &batch, &header, ctx.shutdown).await?
        {
            Ingested::Applied(outcome) => outcome,
            Ingested::RestoredOrCopied { message, error } => {
                new_epoch(ctx, tr, &header, &message, error).await?;
                continue;
            }
            Ingested::RowValue(refusal) => {
                refused_value(ctx, tr, state, &batch, &header, refusal).await?;
                // The refused batch used the link as much as a taken one.
                if pause(ctx, throttle, batch.len()).await {
                    return Ok(TableEnd::TimeLimit);
                }
                continue;
            }
        };
        failpoint::after_ingest();
        let bytes = batch.len();
        let batch_stream = header.stream_id as i64;
        // A full disk: the budget job frees space and the ack is tried once more.
        let b = ctx.cfg.budget.clone();
        let acked = ctx.edge.run(move |e| {
            crate::budget::when_full(e.connection(), &b, "the acknowledgement", || e.ack(&batch))
        });
        if let Err(e) = acked.await {
            // Another lane began a new epoch while this batch was in flight:
            // the edge refuses a batch of the old stream. The cloud has its
            // rows; the batch cut again under the new stream carries the
            // fork, and the cloud skips what it has.
            let current = ctx.edge.run(|e| e.identity()).await.map(|i| i.stream_id);
            if current.is_ok_and(|s| s != batch_stream) {
                info!(table, batch = %header.id(), "batch of the stream before the new epoch: cutting it again");
                continue;
            }
            return Err(e);
        }
        state.narrowing.accepted(header.row_count, full);
        state.witnessed = true;
        tr.batches += 1;
        tr.rows += u64::from(header.row_count);
        tr.bytes += bytes as u64;
        tr.inserted += outcome.inserted;
        tr.updated += outcome.updated;
        tr.skipped += outcome.skipped;
        tr.replays += u64::from(outcome.replay);
        if let Some(bar) = ctx.progress {
            bar.inc(u64::from(header.row_count));
        }
        tracing::debug!(
            batch = %header.id(), rows = header.row_count, bytes,
            inserted = outcome.inserted, updated = outcome.updated, skipped = outcome.skipped,
            replay = outcome.replay, "batch applied and acknowledged"
        );
        if pause(ctx, throttle, bytes).await {
            return Ok(TableEnd::TimeLimit);
        }
    }
    Ok(TableEnd::Done)
}

/// The throttle's wait after `bytes` went over the link, cut at the run-time
/// limit; `true` when the run reached its limit by waiting.
async fn pause(ctx: &TableRun<'_>, throttle: &RefCell<Throttle>, bytes: usize) -> bool {
    let wait = throttle.borrow_mut().after_send(bytes as u64);
    let (wait, at_limit) = wait_within(wait, ctx.limits.deadline, Instant::now());
    if !wait.is_zero() {
        ctx.shutdown.sleep(wait).await;
    }
    at_limit
}

/// The cloud refused `batch` for a value of one of its rows: narrow the
/// table's batches, or, when the batch was that one row, move the row aside.
async fn refused_value(
    ctx: &TableRun<'_>,
    tr: &mut TableReport,
    state: &mut TableState,
    batch: &[u8],
    header: &sluice_wire::BatchHeader,
    refusal: RowRefusal,
) -> anyhow::Result<()> {
    let refused = || format!("the cloud refused batch {}", header.id());
    if header.row_count == 0 {
        return Err(refusal.error.context(refused()));
    }
    let can_move_aside = ctx
        .edge
        .run(|e| Ok(e.has_function("sluice_quarantine")))
        .await?;
    if !can_move_aside {
        return Err(refusal.error.context(format!(
            "{}; the loaded sluice0.so has no sluice_quarantine (older than 0.2), so the row cannot be moved aside",
            refused()
        )));
    }
    let was_full = state.narrowing.limit(ctx.cfg.sync.batch_rows) >= ctx.cfg.sync.batch_rows;
    match state.narrowing.refused(header.row_count) {
        Refused::Narrower => {
            let limit = state.narrowing.limit(ctx.cfg.sync.batch_rows);
            if was_full {
                info!(
                    table = ctx.table, batch = %header.id(), rows = header.row_count, limit,
                    sqlstate = %refusal.sqlstate, cloud = %cut(&refusal.message, LOG_MESSAGE_CHARS),
                    "the cloud refused a value of a row of the batch: cutting smaller batches to find the row"
                );
            } else {
                tracing::debug!(table = ctx.table, batch = %header.id(), limit, "still refused: cutting smaller batches");
            }
            return Ok(());
        }
        Refused::Row => {}
    }
    let decoded = sluice_wire::decode(batch).context("the edge produced an unreadable batch")?;
    let Some(&seq) = decoded.versions.first() else {
        return Err(refusal.error.context(refused()));
    };
    let reason = cut(&refusal.reason(), REASON_CHARS);
    let (t, sqlstate) = (ctx.table.to_owned(), refusal.sqlstate.clone());
    let moved = match ctx
        .edge
        .run(move |e| e.quarantine(&t, seq, &reason, &sqlstate))
        .await
    {
        Ok(n) => n,
        Err(e) => {
            return Err(refusal.error.context(format!(
            "{}: row {seq} alone is refused for its value, and it could not be moved aside ({e:#})",
            refused()
        )))
        }
    };
    if moved == 0 {
        // Already aside, yet cut into a batch: moving it again would loop.
        return Err(refusal.error.context(format!(
            "{}: row {seq} is quarantined already, yet the edge cut it into a batch",
            refused()
        )));
    }
    warn!(
        table = ctx.table,
        seq,
        batch = %header.id(),
        sqlstate = %refusal.sqlstate,
        cloud = %cut(&refusal.message, LOG_MESSAGE_CHARS),
        "the cloud refuses a row for its value: moved it aside (quarantined); the rows behind it go on"
    );
    state.moved.push(seq);
    state.narrowing.moved_aside();
    tr.quarantined += 1;
    if let Some(bar) = ctx.progress {
        bar.inc(1);
    }
    let unwitnessed = state.moved.len() as u64;
    if !state.witnessed && unwitnessed >= UNWITNESSED_LIMIT {
        anyhow::bail!(
            "the cloud refused each of {unwitnessed} rows alone ({}: {}) and took no batch of the table in this run: \
             a refusal of every batch (the cloud's table or extension, the device's zone), not of single rows? \
             The {unwitnessed} rows are quarantined (`sluice quarantine` lists them); once the cause is fixed, \
             `sluice quarantine release {}` sends them again",
            refusal.sqlstate,
            cut(&refusal.message, LOG_MESSAGE_CHARS),
            ctx.table
        );
    }
    Ok(())
}

/// WARN for a row the edge moved aside by itself while cutting a batch.
fn warn_edge_quarantine(entry: &QuarantineEntry) {
    warn!(
        table = %entry.table,
        seq = entry.seq,
        bytes = entry.bytes,
        reason = %cut(&entry.reason, LOG_MESSAGE_CHARS),
        "the edge moved a row aside (quarantined): it cannot be sent as it is; the rows behind it go on"
    );
}

/// A new epoch begun before anything was sent, because the edge database
/// went back in time.
#[derive(Debug, Clone)]
pub struct Restored {
    /// What showed it: the tables whose cloud high water is above the edge's.
    pub evidence: String,
    pub new_stream: i64,
}

/// Before anything is sent: when the cloud's ledger holds a sequence number
/// of this database's stream above the largest one the database ever handed
/// out for the table (`sluice_tracked`'s `high_water`), the database went
/// back in time: it was restored from a backup. It begins a new epoch then,
/// so that its new rows never go under the stream the lost future used.
/// Best effort: without a cloud connection now, or with a cloud older than
/// 0.2, the cloud's 55000 finds the restore when a batch meets it.
async fn check_restored(cfg: &Config, edge: &Edge, cloud: &mut Option<Cloud>) -> Option<Restored> {
    if cloud.as_ref().is_none_or(Cloud::is_closed) {
        match Cloud::connect(&cfg.cloud).await {
            Ok(c) => *cloud = Some(c),
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "no cloud connection yet: the restore check is left to the batches");
                return None;
            }
        }
    }
    let c = cloud.as_ref()?;
    let identity = edge.run(|e| e.identity()).await.ok()?;
    let marks = match c
        .stream_high_water(&cfg.device.id, identity.stream_id)
        .await
    {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(error = ?e, "sluice.stream_high_water not available: the restore check is left to the batches");
            return None;
        }
    };
    let tracked = edge.run(|e| e.tracked()).await.ok()?;
    let evidence = behind_the_cloud(&marks, &tracked);
    if evidence.is_empty() {
        return None;
    }
    let evidence = evidence.join(", ");
    let reason = format!(
        "restored from a backup: the cloud holds rows of stream {} that this database never had ({evidence})",
        stream_hex(identity.stream_id)
    );
    match edge.run(move |e| e.new_epoch(&reason)).await {
        Ok(new_stream) => {
            warn!(
                device = %cfg.device.id,
                old_stream = %stream_hex(identity.stream_id),
                new_stream = %stream_hex(new_stream),
                evidence = %evidence,
                "the edge database was restored from a backup: continuing under a new epoch"
            );
            Some(Restored {
                evidence,
                new_stream,
            })
        }
        Err(e) => {
            warn!(error = %format!("{e:#}"), "the edge database looks restored from a backup, but no new epoch could begin");
            None
        }
    }
}

/// The tables whose cloud high water (`marks`: table, last sequence number
/// of this stream in the ledger) is above the edge's own, described.
fn behind_the_cloud(marks: &[(String, i64)], tracked: &[crate::edge::Tracked]) -> Vec<String> {
    marks
        .iter()
        .filter_map(|(table, cloud)| {
            let edge = tracked.iter().find(|t| &t.table == table)?.high_water?;
            (edge < *cloud).then(|| format!("{table} up to {cloud}, this database up to {edge}"))
        })
        .collect()
}

/// The cloud refused a batch with 55000: the edge database was restored or
/// copied. Begins a new epoch (once per table and run) so that the caller
/// cuts the batch again under the new stream; a 55000 on a batch of a
/// stream this run began, or a second one for the table, is an error for
/// the table.
async fn new_epoch(
    ctx: &TableRun<'_>,
    tr: &mut TableReport,
    header: &sluice_wire::BatchHeader,
    message: &str,
    error: anyhow::Error,
) -> anyhow::Result<()> {
    let old = header.stream_id as i64;
    let refused = || format!("the cloud refused batch {}", header.id());
    if tr.epochs > 0 || ctx.new_streams.borrow().contains(&old) {
        return Err(error.context(format!(
            "{}, a batch of the new epoch this run began: the edge database is not continued twice in one run",
            refused()
        )));
    }
    let current = ctx.edge.run(|e| e.identity()).await?.stream_id;
    if current != old {
        // Another lane began the new epoch after this batch was cut.
        info!(table = ctx.table, batch = %header.id(), "batch of the stream before the new epoch: cutting it again");
        return Ok(());
    }
    let reason = message.to_owned();
    let new = ctx
        .edge
        .run(move |e| e.new_epoch(&reason))
        .await
        .with_context(refused)?;
    ctx.new_streams.borrow_mut().push(new);
    tr.epochs += 1;
    warn!(
        device = %header.device_id,
        table = ctx.table,
        old_stream = %stream_hex(old),
        new_stream = %stream_hex(new),
        cloud = %format!("{error:#}"),
        "the edge database was restored or copied: continuing under a new epoch"
    );
    Ok(())
}

/// `sluice_batch`'s options for this run: the drain order, and for the
/// incremental sync of a table with a time column, the window.
async fn batch_options(ctx: &TableRun<'_>) -> anyhow::Result<String> {
    let mut o = serde_json::json!({ "order": ctx.cfg.sync.order.as_str() });
    if ctx.mode == Mode::Hourly && ctx.cfg.sync.hourly_window_secs > 0 {
        let t = ctx.table.to_owned();
        let tracked = ctx.edge.run(move |e| e.tracked_table(&t)).await?;
        if tracked.is_some_and(|t| t.time_column.is_some()) {
            o["since"] = ctx.cfg.sync.hourly_window_secs.into();
        }
    }
    Ok(o.to_string())
}

/// `sluice_pending` of each table, in one edge call.
async fn pending_of(edge: &Edge, tables: &[String]) -> anyhow::Result<Vec<i64>> {
    let tables = tables.to_vec();
    edge.run(move |e| tables.iter().map(|t| e.pending(t)).collect())
        .await
}

/// What became of a batch sent to the cloud (other refusals are errors).
enum Ingested {
    Applied(IngestOutcome),
    /// 55000: the edge database was restored or copied.
    RestoredOrCopied {
        message: String,
        error: anyhow::Error,
    },
    /// Refused for a value of one of its rows.
    RowValue(RowRefusal),
}

/// The cloud's refusal of a batch for a row's value.
struct RowRefusal {
    sqlstate: String,
    message: String,
    detail: Option<String>,
    error: anyhow::Error,
}

impl RowRefusal {
    /// What the edge keeps as the quarantined row's reason: the server's
    /// message, and its detail when that is one line (`Key (id)=(5) already
    /// exists.`; a server may put a backtrace there). The SQLSTATE has a
    /// column of its own.
    fn reason(&self) -> String {
        match self.detail.as_deref().map(str::trim) {
            Some(d) if !d.is_empty() && !d.contains('\n') => {
                format!("{}; detail: {d}", self.message)
            }
            _ => self.message.clone(),
        }
    }
}

async fn ingest_with_retry(
    cfg: &Config,
    cloud: &mut Option<Cloud>,
    batch: &[u8],
    header: &sluice_wire::BatchHeader,
    shutdown: &Shutdown,
) -> anyhow::Result<Ingested> {
    let backoff = cfg.sync.backoff();
    let mut rng = rand::thread_rng();
    let mut last_error: Option<anyhow::Error> = None;
    let mut last_message = String::new();
    for attempt in 0..cfg.sync.max_attempts {
        if attempt > 0 {
            if shutdown.requested() {
                break;
            }
            shutdown.sleep(backoff.wait(attempt - 1, &mut rng)).await;
        }
        if cloud.as_ref().is_none_or(Cloud::is_closed) {
            let reconnecting = cloud.is_some() || attempt > 0;
            match Cloud::connect(&cfg.cloud).await {
                Ok(c) => {
                    if reconnecting {
                        info!("reconnected to the cloud");
                    }
                    *cloud = Some(c);
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    // The same error again and again is logged once per run.
                    if msg != last_message {
                        warn!(attempt = attempt + 1, error = %msg, "cloud unreachable; will retry");
                        last_message = msg;
                    }
                    last_error = Some(e);
                    continue;
                }
            }
        }
        let Some(c) = cloud.as_ref() else { continue };
        match c.ingest(batch).await {
            Ok(outcome) => {
                if attempt > 0 {
                    info!(batch = %header.id(), attempts = attempt + 1, "batch applied after retrying");
                }
                return Ok(Ingested::Applied(outcome));
            }
            Err(IngestError::RestoredOrCopied { message, error }) => {
                return Ok(Ingested::RestoredOrCopied { message, error });
            }
            Err(IngestError::RowValue {
                sqlstate,
                message,
                detail,
                error,
            }) => {
                return Ok(Ingested::RowValue(RowRefusal {
                    sqlstate,
                    message,
                    detail,
                    error,
                }));
            }
            Err(IngestError::Rejected(e)) => {
                return Err(e.context(format!("the cloud refused batch {}", header.id())));
            }
            Err(IngestError::Transient(e)) => {
                let msg = e.to_string();
                if msg != last_message {
                    warn!(batch = %header.id(), attempt = attempt + 1, error = %msg, "batch failed; will retry");
                    last_message = msg;
                }
                *cloud = None;
                last_error = Some(e);
            }
        }
    }
    let e = last_error
        .unwrap_or_else(|| anyhow::anyhow!("shutdown requested before the first attempt"));
    Err(e.context(format!(
        "batch {} not applied after {} attempts; it stays pending",
        header.id(),
        cfg.sync.max_attempts
    )))
}

/// True when a person is watching stderr (progress bars, colours).
pub fn interactive() -> bool {
    std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_spreads_bytes_over_time() {
        let mut t = Throttle::new(1000);
        let wait = t.after_send(2000);
        assert!(
            wait > Duration::from_millis(1900) && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
        let mut free = Throttle::new(0);
        assert_eq!(free.after_send(1 << 30), Duration::ZERO);
    }

    #[test]
    fn the_throttles_wait_never_runs_past_the_run_time_limit() {
        let now = Instant::now();
        let s = Duration::from_secs;
        // A 200 s wait against a limit 10 s away: 10 s, and the run ends.
        assert_eq!(wait_within(s(200), Some(now + s(10)), now), (s(10), true));
        // Within the limit, or without one: the whole wait.
        assert_eq!(wait_within(s(2), Some(now + s(10)), now), (s(2), false));
        assert_eq!(wait_within(s(200), None, now), (s(200), false));
        // Already past it: no wait.
        assert_eq!(
            wait_within(s(5), Some(now), now + s(1)),
            (Duration::ZERO, true)
        );
    }

    fn tracked(table: &str, high_water: Option<i64>) -> crate::edge::Tracked {
        serde_json::from_value(serde_json::json!({
            "table": table, "mutable": false, "time_column": null, "acked_seq": 0,
            "acked_batches": 0, "acked_rows": 0, "acked_at": null, "high_water": high_water,
        }))
        .unwrap()
    }

    #[test]
    fn a_database_behind_its_streams_cloud_high_water_was_restored() {
        let edge = [
            tracked("a", Some(100)),
            tracked("b", Some(50)),
            tracked("gone", None),
        ];
        let marks = [
            ("a".to_owned(), 100),
            ("b".to_owned(), 70),
            ("gone".to_owned(), 9),
            ("not_at_the_edge".to_owned(), 5),
        ];
        assert_eq!(
            behind_the_cloud(&marks, &edge),
            ["b up to 70, this database up to 50"]
        );
        assert!(behind_the_cloud(&marks[..1], &edge).is_empty());
        let report = Report {
            restored: Some(Restored {
                evidence: "b up to 70, this database up to 50".into(),
                new_stream: 0x99,
            }),
            ..Report::default()
        };
        assert_eq!(
            report.summary()[0],
            "this database was restored from a backup (b up to 70, this database up to 50): it continues under a new epoch (stream 0000000000000099)"
        );
        assert_eq!(report.epochs(), 1);
    }

    #[test]
    fn the_summary_names_a_new_epoch_only_when_there_was_one() {
        let report = Report {
            tables: vec![
                TableReport {
                    table: "division_states".into(),
                    batches: 3,
                    rows: 250,
                    bytes: 4000,
                    inserted: 200,
                    skipped: 50,
                    epochs: 1,
                    ..TableReport::default()
                },
                TableReport {
                    table: "metrics".into(),
                    ..TableReport::default()
                },
                TableReport {
                    table: "cameras".into(),
                    epochs: 1,
                    error: Some("the cloud refused batch ...".into()),
                    ..TableReport::default()
                },
            ],
            moved: Some(MachineMove {
                from: Some("golden".into()),
                to: "machine-a".into(),
                new_stream: 0x1234,
            }),
            seconds: 0.5,
            ..Report::default()
        };
        let lines = report.summary();
        assert_eq!(
            lines,
            [
                "this database moved from machine golden to machine-a: it continues under a new epoch (stream 0000000000001234)",
                "division_states      sent 3 batches, 250 rows, 4000 bytes: 200 inserted, 0 updated, 50 skipped, 0 replays; 1 new epoch (the edge database was restored or copied)",
                "metrics              sent 0 batches, 0 rows, 0 bytes: 0 inserted, 0 updated, 0 skipped, 0 replays",
                "cameras              FAILED after 0 batches: the cloud refused batch ...; 1 new epoch (the edge database was restored or copied)",
                "done in 0.50s",
            ]
        );
        assert_eq!(report.epochs(), 2);
        assert_eq!(Report::default().epochs(), 0);
    }

    #[test]
    fn rows_moved_aside_are_in_the_summary_the_log_and_the_exit_status() {
        let report = Report {
            tables: vec![
                TableReport {
                    table: "division_states".into(),
                    batches: 12,
                    rows: 299,
                    bytes: 9000,
                    inserted: 299,
                    quarantined: 1,
                    ..TableReport::default()
                },
                TableReport {
                    table: "metrics".into(),
                    ..TableReport::default()
                },
            ],
            seconds: 0.25,
            ..Report::default()
        };
        assert_eq!(
            report.summary(),
            [
                "division_states      sent 12 batches, 299 rows, 9000 bytes: 299 inserted, 0 updated, 0 skipped, 0 replays; 1 row quarantined (moved aside, not sent: `sluice quarantine` lists them)",
                "metrics              sent 0 batches, 0 rows, 0 bytes: 0 inserted, 0 updated, 0 skipped, 0 replays",
                "1 row moved aside: `sluice quarantine` lists it; fix it at the edge (or delete it), then `sluice quarantine release TABLE`",
                "done in 0.25s",
            ]
        );
        assert_eq!(report.exit_code(), ExitCode::FAILURE);
        let e = report.log_entry();
        assert_eq!(e.status, RunStatus::Partial);
        assert_eq!(
            e.error.as_deref(),
            Some("division_states: 1 row quarantined (moved aside, not sent: `sluice quarantine` lists them)")
        );
        assert_eq!(e.rows, 299);
        // Nothing moved aside: success, exit 0.
        let clean = Report {
            tables: vec![TableReport {
                table: "metrics".into(),
                ..TableReport::default()
            }],
            ..Report::default()
        };
        assert_eq!(clean.exit_code(), ExitCode::SUCCESS);
        assert_eq!(clean.log_entry().status, RunStatus::Success);
    }

    #[test]
    fn a_quarantined_rows_reason_is_the_message_and_a_one_line_detail() {
        let refusal = |detail: Option<&str>| RowRefusal {
            sqlstate: "23505".into(),
            message: "duplicate key value violates unique constraint \"k\"".into(),
            detail: detail.map(str::to_owned),
            error: anyhow::anyhow!("x"),
        };
        assert_eq!(
            refusal(Some("Key (id)=(5) already exists.")).reason(),
            "duplicate key value violates unique constraint \"k\"; detail: Key (id)=(5) already exists."
        );
        for junk in [None, Some(""), Some("\n   0: pgrx::panic\n   1: main")] {
            assert_eq!(
                refusal(junk).reason(),
                "duplicate key value violates unique constraint \"k\""
            );
        }
    }

    #[test]
    fn the_log_entry_says_partial_when_some_tables_failed() {
        let report = Report {
            tables: vec![
                TableReport {
                    table: "a".into(),
                    batches: 2,
                    rows: 10,
                    ..TableReport::default()
                },
                TableReport {
                    table: "b".into(),
                    error: Some("refused".into()),
                    ..TableReport::default()
                },
            ],
            ..Report::default()
        };
        let e = report.log_entry();
        assert_eq!(e.status, RunStatus::Partial);
        assert_eq!(e.rows, 10);
        assert_eq!(e.error.as_deref(), Some("b: refused"));
    }
}
