//! `sluice`, the edge agent and CLI. It moves batches of rows from the edge
//! SQLite database (with `sluice0.so` loaded) to the cloud PostgreSQL (with
//! the `sluice` extension), acknowledges them at the edge, and runs the other
//! edge jobs on a cron schedule.
//!
//! - [`config`]: the TOML configuration; its doc comments are the reference.
//! - [`edge`]: the SQLite side: opens the database, loads the extension,
//!   cuts and acknowledges batches through the extension's SQL functions;
//!   keeps the sync log.
//! - [`cloud`]: the PostgreSQL side: connects (credentials from the
//!   environment or a file, never the command line) and calls `sluice.ingest`.
//! - [`sync`]: the sync loop, with retries, bandwidth cap and progress.
//! - [`pull`]: the cloud-to-edge direction: `sluice.pull` to `sluice_apply`,
//!   the listener and the polling of `sluice run`.
//! - [`narrow`]: finding the row of a batch the cloud refuses for a value.
//! - [`quarantine`]: `sluice quarantine` (rows moved aside), `release`,
//!   `sluice resend`.
//! - [`jobs`]: cleanup, rollup, budget, and `sluice run` (the daemon).
//! - [`schedule`]: cron expressions, next fire times, missed runs.
//! - [`embed`]: the key-frame embedding job (model code in `sluice-inference`).
//! - [`migrate`]: applies `migrations/` to the cloud in order.
//! - [`machine`]: this box's machine identity (`device.machine_id` or derived).
//! - [`status`]: what `sluice status` reports.
//! - [`metrics`]: the optional Prometheus endpoint of `sluice run`.
//! - [`shutdown`], [`backoff`], [`failpoint`]: SIGTERM handling, retry waits,
//!   and the test-only failpoints.

mod backoff;
mod budget;
mod cloud;
mod config;
mod edge;
mod embed;
mod embed_config;
mod failpoint;
mod jobs;
mod machine;
mod metrics;
mod migrate;
mod narrow;
mod pull;
mod quarantine;
mod schedule;
mod shutdown;
mod status;
mod sync;
#[cfg(test)]
mod test_support;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::shutdown::Shutdown;

/// sluice: moves operational data from an edge SQLite database to PostgreSQL,
/// without losing it and without duplicating it.
#[derive(Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    /// Log format: `human` or `json`.
    #[arg(long, global = true, default_value = "human", value_parser = ["human", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every job on its schedule until SIGINT or SIGTERM.
    Run {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Send every pending batch to the cloud, then exit.
    Sync {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// `hourly`: within the bandwidth cap and run-time limit; `full`: everything, uncapped.
        #[arg(long, value_enum, default_value = "full")]
        mode: sync::Mode,
        /// Only this table (repeatable). Default: every tracked table.
        #[arg(long = "table")]
        tables: Vec<String>,
        /// Report what would be sent; send nothing.
        #[arg(long)]
        dry_run: bool,
        /// No progress bar even at a terminal.
        #[arg(long)]
        quiet: bool,
    },
    /// Show pending rows, the last syncs and errors, catch-up time, clock skew.
    Status {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Do not contact the cloud (no clock skew).
        #[arg(long)]
        offline: bool,
    },
    /// Delete acknowledged rows older than `cleanup.keep`, then exit.
    Cleanup {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the registered rollups once, then exit.
    Rollup {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Embed key-frame descriptions that have no (or a stale) embedding, then exit.
    Embed {
        #[arg(long, short)]
        config: PathBuf,
        /// Instead, print the embedding of this text as a pgvector literal
        /// (`[0.01,...]`), for `sluice.nearest` and `sluice.hybrid_search`.
        #[arg(long)]
        query: Option<String>,
        /// Print what the run did as JSON (rows embedded, refreshed and
        /// cleared, model calls, the model's loading time and the run's).
        #[arg(long, conflicts_with = "query")]
        json: bool,
    },
    /// Compare edge and cloud rows of a table by per-range checksums; exit 1 when they differ.
    Verify {
        #[arg(long, short)]
        config: PathBuf,
        /// The edge table.
        #[arg(long)]
        table: String,
        /// Only rows whose time column is at or after this (ISO-8601).
        #[arg(long)]
        since: Option<String>,
        /// Only rows whose time column is before this (ISO-8601).
        #[arg(long)]
        until: Option<String>,
    },
    /// List the rows moved aside (quarantined): refused by the cloud for their values, or over the batch limit.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Quarantine {
        /// The configuration file (TOML).
        #[arg(long, short, required = true)]
        config: Option<PathBuf>,
        /// Only the rows of this table.
        #[arg(long)]
        table: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<QuarantineAction>,
    },
    /// Send acknowledged rows of a table again (after a fix in the cloud, or an ADD COLUMN ... DEFAULT at the edge).
    Resend {
        #[arg(long, short)]
        config: PathBuf,
        /// The edge table.
        table: String,
        /// Only rows whose time column is at or after this.
        #[arg(long)]
        from: Option<String>,
        /// Only rows whose time column is before this.
        #[arg(long)]
        to: Option<String>,
        /// Why, as the edge records it (default `operator`).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Apply the cloud schema's migrations in order, then exit.
    Migrate {
        #[arg(long, short)]
        config: PathBuf,
        /// The migrations folder (default: `cloud.migrations`).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// List what would be applied; apply nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum QuarantineAction {
    /// The rows were fixed (or deleted) at the edge: release their entries, so that the next sync sends them.
    Release {
        #[arg(long, short)]
        config: PathBuf,
        /// The edge table.
        table: String,
        /// Only this entry (`id` of the listing); default: every entry of the table.
        id: Option<i64>,
    },
}

fn init_logging(format: &str) {
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(sync::interactive());
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<ExitCode> = runtime.block_on(run(cli.command));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a one-shot job's log entry and turns it into an exit status.
fn job_exit(name: &str, e: &edge::LogEntry) -> ExitCode {
    match e.status {
        edge::RunStatus::Success => {
            println!("{name}: {} rows", e.rows);
            ExitCode::SUCCESS
        }
        edge::RunStatus::Skipped => {
            println!("{name}: skipped ({})", e.error.as_deref().unwrap_or(""));
            ExitCode::SUCCESS
        }
        s => {
            println!("{name}: {s}: {}", e.error.as_deref().unwrap_or(""));
            ExitCode::FAILURE
        }
    }
}

/// Runs one scheduled job once (`sluice cleanup`, `rollup`, `embed`),
/// recorded in the sync log like a scheduled run.
async fn one_shot(job: schedule::Job, config: &std::path::Path) -> anyhow::Result<ExitCode> {
    let cfg = config::Config::load(config)?;
    let edge = edge::Edge::open(&cfg).await?;
    let entry = jobs::run_job(
        job,
        &cfg,
        &edge,
        &mut jobs::JobState::default(),
        &Shutdown::default(),
    )
    .await?;
    Ok(job_exit(job.name(), &entry))
}

/// `sluice embed --json`: the run, recorded in the sync log, with the
/// model's loading time apart from the run's.
async fn embed_json(config: &std::path::Path) -> anyhow::Result<ExitCode> {
    let cfg = config::Config::load(config)?;
    let ecfg = cfg
        .embed
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the config has no [embed] section"))?;
    let edge = edge::Edge::open(&cfg).await?;
    let mut state = jobs::JobState::default();
    let t0 = std::time::Instant::now();
    state.embedder = Some(embed::load_job(ecfg).await?);
    let load_ms = t0.elapsed().as_millis() as u64;
    let entry = jobs::run_job(
        schedule::Job::Embed,
        &cfg,
        &edge,
        &mut state,
        &Shutdown::default(),
    )
    .await?;
    let out = serde_json::json!({
        "status": entry.status,
        "error": entry.error,
        "load_ms": load_ms,
        "report": state.last_embed,
    });
    println!("{out}");
    Ok(if entry.status.is_error() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => {
            let cfg = config::Config::load(&config)?;
            jobs::run_daemon(&cfg, &Shutdown::on_signals()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync {
            config,
            mode,
            tables,
            dry_run,
            quiet,
        } => {
            let cfg = config::Config::load(&config)?;
            let opts = sync::SyncOptions {
                mode,
                tables: &tables,
                dry_run,
                progress: !quiet && sync::interactive(),
                narrowings: None,
            };
            let report = sync::run_once(&cfg, &opts, &Shutdown::on_signals()).await?;
            report.print_summary();
            Ok(report.exit_code())
        }
        Command::Status {
            config,
            json,
            offline,
        } => {
            let cfg = config::Config::load(&config)?;
            let status = status::collect(&cfg, !offline).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                status::print(&status);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cleanup { config } => one_shot(schedule::Job::Cleanup, &config).await,
        Command::Rollup { config } => one_shot(schedule::Job::Rollup, &config).await,
        Command::Embed {
            config,
            query: Some(text),
            ..
        } => {
            let cfg = config::Config::load(&config)?;
            let ecfg = cfg
                .embed
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("the config has no [embed] section"))?;
            let v = embed::embed_query(ecfg, &text).await?;
            let parts: Vec<String> = v.iter().map(|x| x.to_string()).collect();
            println!("[{}]", parts.join(","));
            Ok(ExitCode::SUCCESS)
        }
        Command::Embed {
            config,
            query: None,
            json: false,
        } => one_shot(schedule::Job::Embed, &config).await,
        Command::Embed {
            config,
            query: None,
            json: true,
        } => embed_json(&config).await,
        Command::Verify {
            config,
            table,
            since,
            until,
        } => {
            let cfg = config::Config::load(&config)?;
            verify::run(
                &cfg,
                &verify::VerifyOptions {
                    table,
                    since,
                    until,
                },
            )
            .await
        }
        Command::Quarantine {
            action: Some(QuarantineAction::Release { config, table, id }),
            ..
        } => {
            let cfg = config::Config::load(&config)?;
            quarantine::release(&cfg, table, id).await
        }
        Command::Quarantine {
            config,
            table,
            json,
            action: None,
        } => {
            let config = config.ok_or_else(|| anyhow::anyhow!("--config is required"))?;
            let cfg = config::Config::load(&config)?;
            quarantine::list(&cfg, table, json).await
        }
        Command::Resend {
            config,
            table,
            from,
            to,
            reason,
        } => {
            let cfg = config::Config::load(&config)?;
            quarantine::resend(
                &cfg,
                quarantine::ResendOptions {
                    table,
                    from,
                    to,
                    reason,
                },
            )
            .await
        }
        Command::Migrate {
            config,
            dir,
            dry_run,
        } => {
            let cfg = config::Config::load(&config)?;
            for m in migrate::migrate(&cfg, dir.as_deref(), dry_run).await? {
                match m {
                    migrate::Applied::Applied(n) if dry_run => println!("would apply {n}"),
                    migrate::Applied::Applied(n) => println!("applied {n}"),
                    migrate::Applied::AlreadyApplied(n) => println!("already applied {n}"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
