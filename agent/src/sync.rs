//! The sync loop. For every tracked table, in turn: cut the next pending batch
//! at the edge, apply it in the cloud with `sluice.ingest` (retrying
//! transient failures with backoff, reconnecting as needed), then acknowledge
//! it at the edge. A table whose batch is refused stops for this run; the other
//! tables go on. Each acknowledged batch stays acknowledged whatever happens
//! later, so an interrupted run is simply continued by the next one.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tracing::{info, warn};

use crate::cloud::{Cloud, IngestError, IngestOutcome};
use crate::config::Config;
use crate::edge::Edge;
use crate::failpoint;

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
    pub pending_after: Option<i64>,
    pub error: Option<String>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub tables: Vec<TableReport>,
    pub dry_run: bool,
    pub interrupted: bool,
    pub seconds: f64,
}

impl Report {
    pub fn exit_code(&self) -> ExitCode {
        if self.tables.iter().any(|t| t.error.is_some()) || self.interrupted {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    }

    pub fn print_summary(&self) {
        let verb = if self.dry_run { "would send" } else { "sent" };
        for t in &self.tables {
            match (&t.error, self.dry_run) {
                (Some(e), _) => println!("{:<20} FAILED after {} batches: {e}", t.table, t.batches),
                (None, true) => println!("{:<20} {verb} {} rows", t.table, t.pending_after.unwrap_or(0)),
                (None, false) => println!(
                    "{:<20} {verb} {} batches, {} rows, {} bytes: {} inserted, {} updated, {} skipped, {} replays",
                    t.table, t.batches, t.rows, t.bytes, t.inserted, t.updated, t.skipped, t.replays
                ),
            }
        }
        if self.interrupted {
            println!("interrupted: the batch in flight was finished or left unacknowledged");
        }
        println!("done in {:.2}s", self.seconds);
    }
}

/// Stops the loop between batches on SIGINT or SIGTERM.
fn shutdown_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        info!("shutdown requested; finishing the batch in flight");
        f.store(true, Ordering::SeqCst);
    });
    flag
}

/// One pass over every (or the given) tracked table until nothing is pending.
pub async fn run_once(cfg: &Config, only: &[String], dry_run: bool) -> anyhow::Result<Report> {
    let started = Instant::now();
    let edge = Edge::open(cfg)?;
    let tracked = edge.tracked_tables()?;
    let wanted: Vec<String> = if !only.is_empty() {
        only.to_vec()
    } else if let Some(t) = &cfg.sync.tables {
        t.clone()
    } else {
        tracked.clone()
    };
    for t in &wanted {
        if !tracked.contains(t) {
            anyhow::bail!(
                "table '{t}' is not tracked at the edge (track it with SELECT sluice_track('{t}'))"
            );
        }
    }
    let mut report = Report {
        dry_run,
        ..Report::default()
    };
    if dry_run {
        for table in wanted {
            let pending = edge.pending(&table)?;
            report.tables.push(TableReport {
                table,
                pending_after: Some(pending),
                ..TableReport::default()
            });
        }
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    let shutdown = shutdown_flag();
    let mut cloud: Option<Cloud> = None;
    for table in wanted {
        if shutdown.load(Ordering::SeqCst) {
            report.interrupted = true;
            break;
        }
        let mut tr = TableReport {
            table: table.clone(),
            ..TableReport::default()
        };
        if let Err(e) = sync_table(cfg, &edge, &mut cloud, &table, &mut tr, &shutdown).await {
            warn!(table = %table, error = %format!("{e:#}"), "table sync failed; other tables go on");
            tr.error = Some(format!("{e:#}"));
        }
        tr.pending_after = edge.pending(&table).ok();
        report.tables.push(tr);
        if shutdown.load(Ordering::SeqCst) {
            report.interrupted = true;
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

async fn sync_table(
    cfg: &Config,
    edge: &Edge,
    cloud: &mut Option<Cloud>,
    table: &str,
    tr: &mut TableReport,
    shutdown: &AtomicBool,
) -> anyhow::Result<()> {
    while !shutdown.load(Ordering::SeqCst) {
        let Some(batch) = edge.next_batch(table, cfg.sync.batch_rows)? else {
            break;
        };
        let header =
            sluice_wire::decode_header(&batch).context("the edge produced an unreadable batch")?;
        let outcome = ingest_with_retry(cfg, cloud, &batch, &header).await?;
        failpoint::after_ingest();
        edge.ack(&batch)?;
        tr.batches += 1;
        tr.rows += u64::from(header.row_count);
        tr.bytes += batch.len() as u64;
        tr.inserted += outcome.inserted;
        tr.updated += outcome.updated;
        tr.skipped += outcome.skipped;
        tr.replays += u64::from(outcome.replay);
        tracing::debug!(
            batch = %header.id(), rows = header.row_count, bytes = batch.len(),
            inserted = outcome.inserted, updated = outcome.updated, skipped = outcome.skipped,
            replay = outcome.replay, "batch applied and acknowledged"
        );
    }
    if tr.batches > 0 {
        info!(
            table,
            batches = tr.batches,
            rows = tr.rows,
            bytes = tr.bytes,
            replays = tr.replays,
            "table synced"
        );
    }
    Ok(())
}

async fn ingest_with_retry(
    cfg: &Config,
    cloud: &mut Option<Cloud>,
    batch: &[u8],
    header: &sluice_wire::BatchHeader,
) -> anyhow::Result<IngestOutcome> {
    let backoff = cfg.sync.backoff();
    let mut rng = rand::thread_rng();
    let mut last_error = None;
    for attempt in 0..cfg.sync.max_attempts {
        if attempt > 0 {
            let wait = backoff.wait(attempt - 1, &mut rng);
            tokio::time::sleep(wait).await;
        }
        if cloud.as_ref().is_none_or(Cloud::is_closed) {
            match Cloud::connect(&cfg.cloud).await {
                Ok(c) => *cloud = Some(c),
                Err(e) => {
                    warn!(attempt = attempt + 1, error = %format!("{e:#}"), "cloud unreachable; will retry");
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
                return Ok(outcome);
            }
            Err(IngestError::Rejected(e)) => {
                return Err(e.context(format!("the cloud refused batch {}", header.id())));
            }
            Err(IngestError::Transient(e)) => {
                warn!(batch = %header.id(), attempt = attempt + 1, error = %e, "batch failed; will retry");
                *cloud = None;
                last_error = Some(e);
            }
        }
    }
    let e = last_error.unwrap_or_else(|| anyhow::anyhow!("no attempt was made"));
    Err(e.context(format!(
        "batch {} not applied after {} attempts; it stays pending",
        header.id(),
        cfg.sync.max_attempts
    )))
}

/// `sluice status`: reads only the edge.
pub fn print_status(cfg: &Config, json: bool) -> anyhow::Result<()> {
    let edge = Edge::open(cfg)?;
    let status = edge.status()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!(
        "{:<24} {:>12} {:>10} {:>12}  last ack",
        "table", "pending", "batches", "rows acked"
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    for s in status {
        let last = match s.last_ack_ms {
            Some(ms) => format!("{}s ago", (now_ms - ms).max(0) / 1000),
            None => "never".into(),
        };
        println!(
            "{:<24} {:>12} {:>10} {:>12}  {last}",
            s.table, s.pending_rows, s.acked_batches, s.acked_rows
        );
    }
    Ok(())
}
