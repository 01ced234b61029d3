//! The pull: the cloud-to-edge direction (issue 13). For each table
//! subscribed at the edge (`sluice_subscriptions`), in turn: ask the cloud
//! for the next batch of the published table's changes for this device
//! (`sluice.pull(table, device, checkpoint, stream, max_rows, cursor,
//! tenant)`), apply it at the edge (`sluice_apply(?)`, atomic), and go on
//! while the cloud says `more`. The edge's checkpoint is the only state:
//! each call passes what the edge has applied, which is the cloud's
//! acknowledgement too, so a run killed at any point is continued by the
//! next one, and a batch applied twice is a replay (a no-op).
//!
//! A snapshot (a new subscription, a new publication stream, a device
//! offline past the cloud's horizon) comes in pages, all applied in ONE
//! edge transaction (`BEGIN IMMEDIATE` ... `COMMIT`): the edge table shows
//! either what it had before or the whole snapshot, never half of one. A
//! refused page, a cloud that stops answering, a shutdown: the transaction
//! is rolled back and the next run begins the snapshot again. The
//! transaction holds the edge's write lock while it lasts: the pipeline's
//! writers wait for it (up to their busy timeout).
//!
//! A batch the edge refuses (a gap, a column the table lacks, another
//! device's batch, ...) stops its table for this run, with an error that
//! names the table, the checkpoint and the batch; nothing of it is applied
//! and the other tables go on. Transient cloud errors are retried with the
//! sync's backoff (`sync.max_attempts`, `sync.backoff_*`).
//!
//! After the last batch of a table, when it carried rows, one more call
//! acknowledges it, so that the cloud's view (`sluice.subscription_lag`,
//! the purge of its change log) does not lag one batch behind.
//!
//! `sluice run` pulls in a task of its own ([`daemon`]), with its own edge
//! and cloud connections: on `pull.schedule`, at once when a dedicated
//! connection that listens (`LISTEN sluice_changes`) hears a commit to a
//! subscribed table, and every `pull.poll_interval` while it does not listen
//! (`pull.listen = false`, or the connection is down and reconnecting with
//! the sync's backoff). A notification is a commit the cloud may serve only
//! once every older transaction has ended (it serves positions below the
//! oldest transaction in progress); the listener therefore reads the cloud's
//! transaction horizon when it hears one, and the table is pulled again,
//! briefly backing off, until its checkpoint reaches that horizon
//! ([`Waiting`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::cloud::{Cloud, Listener, PullError, PullReply, PullRequest};
use crate::config::Config;
use crate::edge::{now_iso, Applied, Edge, LogEntry, RunStatus, Subscription};
use crate::metrics::Metrics;
use crate::schedule::Job;
use crate::shutdown::Shutdown;

/// A batch of cloud changes, as the pull's decisions need it (its header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchInfo {
    /// The batch's identity, for errors.
    pub id: String,
    pub table: String,
    pub stream_id: i64,
    pub base_seq: i64,
    pub last_seq: i64,
    pub rows: u32,
    /// 0: incremental; n >= 1: page n of a snapshot.
    pub snapshot_page: u32,
    pub last_page: bool,
}

impl BatchInfo {
    /// Reads the header; a batch that is not one of cloud changes is an error.
    pub fn read(batch: &[u8]) -> anyhow::Result<BatchInfo> {
        let h = sluice_wire::decode_header(batch)
            .context("the cloud sent a batch that does not decode")?;
        let Some(changes) = h.changes else {
            anyhow::bail!(
                "the cloud sent batch {} that is not a batch of cloud changes",
                h.id()
            );
        };
        Ok(BatchInfo {
            id: h.id().to_string(),
            table: h.table.clone(),
            stream_id: h.stream_id as i64,
            base_seq: h.base_seq,
            last_seq: h.last_seq,
            rows: h.row_count,
            snapshot_page: changes.snapshot_page,
            last_page: changes.last_page,
        })
    }
}

/// Where a table's pull stands between two calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Between batches: the next call passes the edge's checkpoint.
    Idle,
    /// A snapshot is going on in the open edge transaction: `page` pages
    /// applied; the next call passes `cursor`.
    Snapshot {
        page: u32,
        stream_id: i64,
        last_seq: i64,
        cursor: String,
    },
}

/// What to do with the cloud's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing moved: the table is done for now.
    Done,
    /// Apply the batch in its own edge transaction.
    Incremental,
    /// Begin the edge transaction, then apply page 1 in it.
    BeginSnapshot,
    /// Apply the next page in the open transaction.
    NextPage,
}

/// Decides what a reply means in `phase`; an error is a reply that breaks
/// the protocol (the table stops, a snapshot is rolled back).
pub fn decide(
    phase: &Phase,
    table: &str,
    more: bool,
    batch: Option<&BatchInfo>,
) -> Result<Action, String> {
    let Some(b) = batch else {
        return match (phase, more) {
            (Phase::Snapshot { page, .. }, _) => Err(format!(
                "the cloud sent no page after page {page} of a snapshot"
            )),
            (Phase::Idle, true) => Err("the cloud sent no batch but says more changes wait".into()),
            (Phase::Idle, false) => Ok(Action::Done),
        };
    };
    if !b.table.eq_ignore_ascii_case(table) {
        return Err(format!(
            "the cloud sent batch {} of table '{}' for table '{table}'",
            b.id, b.table
        ));
    }
    match (phase, b.snapshot_page) {
        (Phase::Idle, 0) => Ok(Action::Incremental),
        (Phase::Idle, 1) => Ok(Action::BeginSnapshot),
        (Phase::Idle, n) => Err(format!(
            "the cloud sent page {n} of a snapshot whose first page this run did not apply (batch {})",
            b.id
        )),
        (Phase::Snapshot { page, .. }, 0) => Err(format!(
            "the cloud sent incremental batch {} in the middle of a snapshot (after page {page})",
            b.id
        )),
        (
            Phase::Snapshot {
                page,
                stream_id,
                last_seq,
                ..
            },
            n,
        ) => {
            if n != page.saturating_add(1) {
                Err(format!(
                    "the cloud sent page {n} of a snapshot after page {page} (batch {})",
                    b.id
                ))
            } else if b.stream_id != *stream_id || b.last_seq != *last_seq {
                Err(format!(
                    "the cloud sent page {n} of another snapshot (batch {})",
                    b.id
                ))
            } else {
                Ok(Action::NextPage)
            }
        }
    }
}

/// The phase after a batch was applied, and whether the snapshot's
/// transaction is to be committed now; an error where the edge's report
/// and the cloud's reply disagree.
pub fn after_apply(
    b: &BatchInfo,
    applied: &Applied,
    reply: &PullReply,
) -> Result<(Phase, bool), String> {
    let (reply_more, reply_cursor) = (reply.more, reply.cursor.as_deref());
    if (b.snapshot_page == 0 || b.last_page) && reply.checkpoint != b.last_seq {
        return Err(format!(
            "the cloud answered checkpoint {} with batch {}, which leads to {}",
            reply.checkpoint, b.id, b.last_seq
        ));
    }
    if b.snapshot_page == 0 {
        if !applied.replay && applied.checkpoint != b.last_seq {
            return Err(format!(
                "the edge applied batch {} but reports checkpoint {}, not {}",
                b.id, applied.checkpoint, b.last_seq
            ));
        }
        return Ok((Phase::Idle, false));
    }
    if b.last_page {
        if !applied.complete {
            return Err(format!(
                "the edge applied the last page {} of a snapshot (batch {}) but does not report it complete",
                b.snapshot_page, b.id
            ));
        }
        return Ok((Phase::Idle, true));
    }
    match reply_cursor {
        Some(cursor) if reply_more => Ok((
            Phase::Snapshot {
                page: b.snapshot_page,
                stream_id: b.stream_id,
                last_seq: b.last_seq,
                cursor: cursor.to_owned(),
            },
            false,
        )),
        _ => Err(format!(
            "the cloud ended a snapshot at page {} (batch {}), which is not its last",
            b.snapshot_page, b.id
        )),
    }
}

/// Replies in a row that moved nothing while the cloud said `more`: after
/// this many the table stops for the run (a cloud that repeats itself).
pub const STALL_LIMIT: u32 = 3;

/// What one table's pull did in one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TablePull {
    pub table: String,
    pub batches: u64,
    pub upserted: i64,
    pub deleted: i64,
    pub replays: u64,
    /// Snapshots completed (all their pages applied and committed).
    pub snapshots: u64,
    /// Pages of snapshots applied, including those of one rolled back.
    pub snapshot_pages: u64,
    pub checkpoint_before: i64,
    pub checkpoint: i64,
    pub error: Option<String>,
    /// Stopped by a shutdown (a snapshot in progress was rolled back).
    pub interrupted: bool,
}

impl TablePull {
    pub fn rows(&self) -> i64 {
        self.upserted + self.deleted
    }

    /// The line of `sluice sync`'s summary.
    pub fn summary(&self) -> String {
        let name = format!("pull {}", self.table);
        match &self.error {
            Some(e) => format!("{name:<20} FAILED after {} batches: {e}", self.batches),
            None => {
                let mut s = format!(
                    "{name:<20} applied {} batches: {} upserted, {} deleted, {} replays; checkpoint {}",
                    self.batches, self.upserted, self.deleted, self.replays, self.checkpoint
                );
                if self.snapshots > 0 {
                    s.push_str(&format!(
                        " ({} snapshot{})",
                        self.snapshots,
                        if self.snapshots == 1 { "" } else { "s" }
                    ));
                }
                if self.interrupted {
                    s.push_str("; interrupted");
                }
                s
            }
        }
    }
}

/// Pulls the subscriptions (`only`: those among these tables) one after
/// another. Without `sluice_subscriptions` (an older extension) or with
/// none, nothing.
pub async fn pass(
    cfg: &Config,
    edge: &Edge,
    cloud: &mut Option<Cloud>,
    only: Option<&BTreeSet<String>>,
    shutdown: &Shutdown,
) -> anyhow::Result<Vec<TablePull>> {
    let subs = edge.run(|e| e.subscriptions()).await?;
    let mut out = Vec::new();
    for sub in subs {
        if only.is_some_and(|o| !o.iter().any(|t| t.eq_ignore_ascii_case(&sub.table))) {
            continue;
        }
        if shutdown.requested() {
            break;
        }
        let table = sub.table.clone();
        let mut tp = TablePull {
            table: table.clone(),
            checkpoint_before: sub.checkpoint,
            checkpoint: sub.checkpoint,
            ..TablePull::default()
        };
        if let Err(e) = pull_table(cfg, edge, cloud, sub, &mut tp, shutdown).await {
            tp.error = Some(format!("{e:#}"));
        }
        out.push(tp);
    }
    Ok(out)
}

/// One table until nothing moves (or an error, or shutdown).
async fn pull_table(
    cfg: &Config,
    edge: &Edge,
    cloud: &mut Option<Cloud>,
    sub: Subscription,
    tp: &mut TablePull,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let table = sub.table.clone();
    let mut checkpoint = sub.checkpoint;
    let mut stream_id = sub.stream_id;
    let mut phase = Phase::Idle;
    let mut acknowledged = false;
    let mut stalls = 0u32;
    // The next page of a snapshot, asked for while this one was applied.
    let mut prefetched: Option<PullReply> = None;
    // A snapshot's edge transaction is open (begun, not yet committed).
    let mut open = false;
    let result: anyhow::Result<()> = async {
        loop {
            if shutdown.requested() {
                tp.interrupted = true;
                return Ok(());
            }
            let cursor = match &phase {
                Phase::Snapshot { cursor, .. } => Some(cursor.clone()),
                Phase::Idle => None,
            };
            let req = PullRequest {
                table: &table,
                device: &cfg.device.id,
                checkpoint,
                stream_id,
                max_rows: cfg.pull.max_rows,
                cursor: cursor.as_deref(),
                tenant: cfg.pull.tenant.as_deref(),
            };
            let reply = match prefetched.take() {
                Some(r) => r,
                None => pull_with_retry(cfg, cloud, &req, shutdown).await?,
            };
            let info = reply
                .batch
                .as_deref()
                .map(BatchInfo::read)
                .transpose()
                .with_context(|| format!("at checkpoint {checkpoint}"))?;
            let action = decide(&phase, &table, reply.more, info.as_ref())
                .map_err(|e| anyhow::anyhow!("{e} (at checkpoint {checkpoint})"))?;
            let (Some(b), Some(batch)) = (info, reply.batch.clone()) else {
                return Ok(());
            };
            if action == Action::BeginSnapshot {
                edge.run(|e| e.begin()).await?;
                open = true;
            }
            let apply = async {
                edge.run(move |e| e.apply(&batch)).await.with_context(|| {
                    format!(
                        "the edge refused batch {} ({}; at checkpoint {checkpoint}); nothing of it was applied",
                        b.id,
                        describe_batch(&b)
                    )
                })
            };
            // A snapshot's next page is asked for while this one is applied
            // (the cursor is in the reply; the checkpoint passed is still the
            // one applied before the snapshot, so nothing is acknowledged
            // early). Incremental batches go one after another: the next
            // call acknowledges what this one applied.
            let next_cursor = reply
                .cursor
                .as_deref()
                .filter(|_| b.snapshot_page > 0 && !b.last_page && reply.more);
            let applied = match next_cursor {
                Some(next) => {
                    let next_req = PullRequest {
                        cursor: Some(next),
                        ..req.clone()
                    };
                    let (applied, next) =
                        tokio::join!(apply, pull_with_retry(cfg, cloud, &next_req, shutdown));
                    let applied = applied?;
                    prefetched = Some(next?);
                    applied
                }
                None => apply.await?,
            };
            tp.batches += 1;
            tp.upserted += applied.upserted;
            tp.deleted += applied.deleted;
            if applied.replay {
                tp.replays += 1;
            }
            if b.snapshot_page > 0 {
                tp.snapshot_pages += 1;
                crate::failpoint::after_snapshot_page();
            }
            debug!(table = %table, batch = %b.id, rows = reply.rows, upserted = applied.upserted, deleted = applied.deleted, replay = applied.replay, "batch of cloud changes applied");
            let (next, commit) =
                after_apply(&b, &applied, &reply)
                    .map_err(|e| anyhow::anyhow!("{e} (at checkpoint {checkpoint})"))?;
            if commit {
                edge.run(|e| e.commit()).await?;
                open = false;
                tp.snapshots += 1;
                stream_id = b.stream_id;
                info!(table = %table, checkpoint = b.last_seq, pages = b.snapshot_page, "snapshot applied");
            }
            phase = next;
            if phase == Phase::Idle {
                let moved = applied.checkpoint != checkpoint || commit;
                checkpoint = applied.checkpoint.max(checkpoint);
                if b.snapshot_page == 0 && applied.replay {
                    checkpoint = checkpoint.max(b.last_seq);
                }
                tp.checkpoint = checkpoint;
                stalls = if moved || b.rows > 0 { 0 } else { stalls + 1 };
                if reply.more && stalls >= STALL_LIMIT {
                    anyhow::bail!(
                        "the cloud says more changes wait but sent nothing new {STALL_LIMIT} times (at checkpoint {checkpoint})"
                    );
                }
                if !reply.more {
                    // One more call acknowledges what carried rows.
                    if b.rows > 0 && !acknowledged {
                        acknowledged = true;
                        continue;
                    }
                    return Ok(());
                }
            }
        }
    }
    .await;
    if open {
        // A snapshot did not complete (its first page refused, a later one,
        // the cloud gone, shutdown): nothing of it stays.
        edge.run(|e| {
            e.rollback();
            Ok(())
        })
        .await?;
        if result.is_ok() {
            info!(table = %table, "snapshot interrupted by shutdown; rolled back, the next run begins it again");
        }
    }
    result.with_context(|| format!("pull of table '{table}'"))
}

fn describe_batch(b: &BatchInfo) -> String {
    if b.snapshot_page > 0 {
        format!(
            "snapshot page {}{} at checkpoint {}",
            b.snapshot_page,
            if b.last_page { ", the last" } else { "" },
            b.last_seq
        )
    } else {
        format!("changes {} to {}, {} rows", b.base_seq, b.last_seq, b.rows)
    }
}

/// One `sluice.pull` call, retried on transient errors with the sync's
/// backoff, reconnecting as needed.
async fn pull_with_retry(
    cfg: &Config,
    cloud: &mut Option<Cloud>,
    req: &PullRequest<'_>,
    shutdown: &Shutdown,
) -> anyhow::Result<PullReply> {
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
            match Cloud::connect(&cfg.cloud).await {
                Ok(c) => *cloud = Some(c),
                Err(e) => {
                    let msg = format!("{e:#}");
                    if msg != last_message {
                        debug!(attempt = attempt + 1, error = %msg, "cloud unreachable for the pull; will retry");
                        last_message = msg;
                    }
                    last_error = Some(e);
                    continue;
                }
            }
        }
        let Some(c) = cloud.as_ref() else { continue };
        match c.pull(req).await {
            Ok(reply) => return Ok(reply),
            Err(PullError::Refused(e)) => {
                return Err(e.context(format!(
                    "the cloud refused sluice.pull at checkpoint {}",
                    req.checkpoint
                )))
            }
            Err(PullError::Transient(e)) => {
                let msg = e.to_string();
                if msg != last_message {
                    debug!(table = req.table, attempt = attempt + 1, error = %msg, "pull failed; will retry");
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
        "sluice.pull at checkpoint {} failed {} times",
        req.checkpoint, cfg.sync.max_attempts
    )))
}

/// The sync log's view of a pass.
pub fn log_entry(pulls: &[TablePull]) -> LogEntry {
    let failed: Vec<String> = pulls
        .iter()
        .filter_map(|t| t.error.as_ref().map(|e| format!("{}: {e}", t.table)))
        .collect();
    let status = if failed.is_empty() {
        RunStatus::Success
    } else if failed.len() < pulls.len() || pulls.iter().any(|t| t.batches > 0) {
        RunStatus::Partial
    } else {
        RunStatus::Failed
    };
    LogEntry {
        batches: pulls.iter().map(|t| t.batches as i64).sum(),
        rows: pulls.iter().map(TablePull::rows).sum(),
        status,
        error: (!failed.is_empty()).then(|| failed.join("; ")),
        ..LogEntry::default()
    }
}

/// Records a pass in the metrics: rows applied and checkpoints.
pub fn record(metrics: &Metrics, pulls: &[TablePull]) {
    for t in pulls {
        metrics.pulled(&t.table, t.rows().max(0) as u64);
        metrics.pull_checkpoint(&t.table, t.checkpoint);
    }
}

/// The first retry of a table whose checkpoint has not reached the cloud's
/// horizon after a notification.
pub const WAIT_FIRST: Duration = Duration::from_millis(50);
/// The longest pause between those retries.
pub const WAIT_MAX: Duration = Duration::from_secs(1);
/// How long after the notification the retries go on; then the schedule
/// (or the next notification) takes over. A writing cloud transaction open
/// longer than this holds the changes back for its duration.
pub const WAIT_WINDOW: Duration = Duration::from_secs(10);

/// The tables notified whose checkpoint has not reached the horizon the
/// listener read when it heard them: pulled again, backing off, until it
/// does or [`WAIT_WINDOW`] passes.
#[derive(Debug, Default)]
pub struct Waiting {
    tables: BTreeMap<String, Wait>,
}

#[derive(Debug, Clone, Copy)]
struct Wait {
    target: i64,
    since: Instant,
    tries: u32,
    next: Instant,
}

impl Waiting {
    /// A notification of `table` with the cloud's horizon then.
    pub fn notified(&mut self, table: &str, target: i64, now: Instant) {
        let w = self.tables.entry(table.to_owned()).or_insert(Wait {
            target,
            since: now,
            tries: 0,
            next: now,
        });
        w.target = w.target.max(target);
        w.since = now;
        w.tries = 0;
        w.next = now;
    }

    /// After a pull of `table` that reached `checkpoint` (`None`: it failed,
    /// which the schedule retries).
    pub fn pulled(&mut self, table: &str, checkpoint: Option<i64>, now: Instant) {
        let Some(w) = self.tables.get_mut(table) else {
            return;
        };
        match checkpoint {
            Some(c) if c < w.target && now.duration_since(w.since) < WAIT_WINDOW => {
                let pause = WAIT_FIRST
                    .saturating_mul(1u32.checked_shl(w.tries.min(20)).unwrap_or(u32::MAX))
                    .min(WAIT_MAX);
                w.tries += 1;
                w.next = now + pause;
            }
            _ => {
                self.tables.remove(table);
            }
        }
    }

    /// The tables due at `now`.
    pub fn due(&self, now: Instant) -> BTreeSet<String> {
        self.tables
            .iter()
            .filter(|(_, w)| w.next <= now)
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// When the next table is due.
    pub fn next(&self) -> Option<Instant> {
        self.tables.values().map(|w| w.next).min()
    }
}

/// What the listener tells the pull task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// Listening (again): pull everything, changes may have been missed.
    Listening,
    /// The listening connection is down: poll until it is back.
    NotListening,
    /// Commits to these tables; the cloud's horizon when they were heard.
    Changed {
        tables: BTreeSet<String>,
        horizon: Option<i64>,
    },
}

/// How often the listening connection is checked with a round trip (a
/// connection can die without a word: a NAT that forgot it).
pub const LISTEN_PING: Duration = Duration::from_secs(30);

/// The listener: a dedicated cloud connection that runs `LISTEN
/// sluice_changes`, reconnecting with the sync's backoff.
async fn listen(
    cfg: &Config,
    tx: mpsc::UnboundedSender<Heard>,
    mut subscribed: tokio::sync::watch::Receiver<bool>,
    shutdown: &Shutdown,
) {
    // No connection is kept for a box without subscriptions.
    tokio::select! {
        r = subscribed.wait_for(|s| *s) => if r.is_err() { return },
        _ = shutdown.cancelled() => return,
    }
    let backoff = cfg.sync.backoff();
    let mut rng = rand::thread_rng();
    let mut attempt = 0u32;
    let mut last_error = String::new();
    let mut ever = false;
    while !shutdown.requested() {
        let connected = tokio::select! {
            c = Listener::connect(&cfg.cloud) => c,
            _ = shutdown.cancelled() => return,
        };
        let mut l = match connected {
            Ok(l) => l,
            Err(e) => {
                let msg = format!("{e:#}");
                if msg != last_error {
                    warn!(error = %msg, poll_interval = %cfg.pull.poll_interval, "cannot listen for cloud changes; polling until the connection is back");
                    last_error = msg;
                }
                let _ = tx.send(Heard::NotListening);
                shutdown.sleep(backoff.wait(attempt, &mut rng)).await;
                attempt = attempt.saturating_add(1);
                continue;
            }
        };
        if attempt > 0 || ever {
            info!("listening for cloud changes again");
        } else {
            info!(
                channel = crate::cloud::CHANGES_CHANNEL,
                "listening for cloud changes"
            );
        }
        ever = true;
        attempt = 0;
        last_error.clear();
        if tx.send(Heard::Listening).is_err() {
            return;
        }
        loop {
            tokio::select! {
                n = l.notifications.recv() => {
                    let Some(table) = n else { break };
                    let mut tables = BTreeSet::from([table]);
                    while let Ok(t) = l.notifications.try_recv() {
                        tables.insert(t);
                    }
                    let horizon = l.horizon().await.ok();
                    if tx.send(Heard::Changed { tables, horizon }).is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep(LISTEN_PING) => {
                    let timeout = Duration::from_secs(cfg.cloud.connect_timeout_secs.max(1));
                    if !matches!(tokio::time::timeout(timeout, l.ping()).await, Ok(Ok(()))) {
                        break;
                    }
                }
                _ = shutdown.cancelled() => return,
            }
            if l.is_closed() {
                break;
            }
        }
        warn!(poll_interval = %cfg.pull.poll_interval, "the cloud listening connection was lost; polling until it is back");
        let _ = tx.send(Heard::NotListening);
        shutdown.sleep(backoff.wait(0, &mut rng)).await;
    }
}

/// `sluice run`'s pull task: its own edge and cloud connections, the
/// listener, the schedule and the polling, until shutdown.
pub async fn daemon(cfg: &Config, metrics: &Metrics, shutdown: &Shutdown) -> anyhow::Result<()> {
    if !cfg.pull.enabled {
        return Ok(());
    }
    let edge = Edge::open(cfg)
        .await
        .context("cannot open the edge connection of the pull")?;
    if !edge.run(|e| Ok(e.has_function("sluice_apply"))).await? {
        info!("the loaded sluice0.so has no sluice_apply: nothing is pulled");
        return Ok(());
    }
    let entry = cfg.pull.entry()?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::watch::channel(false);
    let listener = async {
        if cfg.pull.listen {
            listen(cfg, tx, subscribed, shutdown).await;
        } else {
            drop(tx);
        }
    };
    let work = async {
        let mut cloud: Option<Cloud> = None;
        let mut waiting = Waiting::default();
        let mut listening = false;
        let mut errors: BTreeMap<String, String> = BTreeMap::new();
        let poll = cfg.pull.poll();
        // At start: everything (changes may wait since the last run).
        let mut all = true;
        let mut scheduled = false;
        let mut next_poll = Instant::now() + poll;
        let mut next_fire = entry.as_ref().and_then(|e| e.next_after(Utc::now()));
        let mut heard_open = true;
        while !shutdown.requested() {
            let now = Instant::now();
            let mut tables = waiting.due(now);
            if all || scheduled || !tables.is_empty() {
                let started = now_iso();
                let only = (!all && !scheduled).then_some(&tables);
                let pulls = pass(cfg, &edge, &mut cloud, only, shutdown).await;
                let after = Instant::now();
                match pulls {
                    Ok(pulls) => {
                        if !pulls.is_empty() {
                            subscribed_tx.send_if_modified(|s| !std::mem::replace(s, true));
                        }
                        record(metrics, &pulls);
                        for t in &pulls {
                            waiting.pulled(
                                &t.table,
                                t.error.is_none().then_some(t.checkpoint),
                                after,
                            );
                            report_errors(&mut errors, t);
                        }
                        for t in &tables {
                            if !pulls.iter().any(|p| p.table.eq_ignore_ascii_case(t)) {
                                waiting.pulled(t, None, after);
                            }
                        }
                        if scheduled {
                            let e = log_entry(&pulls);
                            metrics.record(Job::Pull, &e);
                            if e.rows > 0 || e.status.is_error() {
                                let logged = e.clone();
                                let _ = edge
                                    .run(move |c| c.log_finished(Job::Pull, &started, &logged))
                                    .await;
                            }
                        }
                        if !pulls.is_empty() {
                            lag(cfg, &cloud, metrics).await;
                        }
                    }
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), "cannot read the subscriptions");
                        for t in &tables {
                            waiting.pulled(t, None, after);
                        }
                    }
                }
                all = false;
                scheduled = false;
                tables.clear();
                if !listening {
                    next_poll = Instant::now() + poll;
                }
                continue;
            }
            // Wait for the next thing to do.
            let mut wake = waiting.next();
            if !listening {
                wake = Some(wake.map_or(next_poll, |w| w.min(next_poll)));
            }
            let fire_in = next_fire.map(|t| (t - Utc::now()).to_std().unwrap_or_default());
            if let Some(d) = fire_in {
                let at = Instant::now() + d;
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                heard = rx.recv(), if heard_open => {
                    let mut heard = heard;
                    // What else was heard meanwhile (during a pull) makes
                    // the same next pull.
                    loop {
                        match heard {
                            None => {
                                heard_open = false;
                                break;
                            }
                            Some(Heard::Listening) => {
                                listening = true;
                                all = true;
                            }
                            Some(Heard::NotListening) => {
                                if listening {
                                    next_poll = Instant::now();
                                }
                                listening = false;
                            }
                            Some(Heard::Changed { tables, horizon }) => {
                                let now = Instant::now();
                                for t in tables {
                                    // Without a horizon: one pull.
                                    waiting.notified(&t, horizon.unwrap_or(i64::MIN), now);
                                }
                            }
                        }
                        heard = match rx.try_recv() {
                            Ok(h) => Some(h),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => None,
                        };
                    }
                }
                _ = sleep => {}
                _ = shutdown.cancelled() => {}
            }
            let now = Instant::now();
            if !listening && now >= next_poll {
                all = true;
            }
            if let Some(t) = next_fire {
                if Utc::now() >= t {
                    scheduled = true;
                    next_fire = entry.as_ref().and_then(|e| e.next_after(Utc::now()));
                }
            }
        }
        anyhow::Ok(())
    };
    let (_, result) = tokio::join!(listener, work);
    result
}

/// Logs a table's pull error once while it lasts, and its recovery once.
fn report_errors(errors: &mut BTreeMap<String, String>, t: &TablePull) {
    match &t.error {
        Some(e) => {
            if errors.get(&t.table) != Some(e) {
                warn!(table = %t.table, checkpoint = t.checkpoint, error = %e, "pull failed; the table waits for the next pull");
                errors.insert(t.table.clone(), e.clone());
            }
        }
        None => {
            if errors.remove(&t.table).is_some() {
                info!(table = %t.table, checkpoint = t.checkpoint, "pull works again");
            }
            if t.rows() > 0 || t.snapshots > 0 {
                info!(table = %t.table, upserted = t.upserted, deleted = t.deleted, checkpoint = t.checkpoint, "pulled");
            }
        }
    }
}

/// Sets the lag gauges from `sluice.subscription_lag` (best effort: a cloud
/// without it, or unreachable, leaves them as they were).
async fn lag(cfg: &Config, cloud: &Option<Cloud>, metrics: &Metrics) {
    let Some(c) = cloud.as_ref().filter(|c| !c.is_closed()) else {
        return;
    };
    match c.subscription_lag(&cfg.device.id).await {
        Ok(rows) => {
            for r in rows {
                let secs = if r.pending > 0 {
                    r.oldest_pending_age_secs.unwrap_or(0.0).max(0.0)
                } else {
                    0.0
                };
                metrics.pull_lag(&r.table, secs);
            }
        }
        Err(e) => debug!(error = %format!("{e:#}"), "cannot read sluice.subscription_lag"),
    }
}

#[cfg(test)]
mod tests;
