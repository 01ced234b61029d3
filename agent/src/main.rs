//! `sluice`, the edge agent and CLI. It moves batches of rows from the edge
//! SQLite database (with `sluice0.so` loaded) to the cloud PostgreSQL (with
//! the `sluice` extension), and acknowledges them at the edge.
//!
//! - [`config`]: the TOML configuration; its doc comments are the reference.
//! - [`edge`]: the SQLite side: opens the database, loads the extension,
//!   cuts and acknowledges batches through the extension's SQL functions.
//! - [`cloud`]: the PostgreSQL side: connects (credentials from the
//!   environment or a file, never the command line) and calls `sluice.ingest`.
//! - [`sync`]: the sync loop: every pending batch of every tracked table,
//!   with retries, and a per-table outcome.
//! - [`backoff`]: exponential backoff with full jitter, capped.
//! - [`failpoint`]: test-only pauses that let a test SIGKILL the agent at an
//!   exact moment (after ingest, before the acknowledgement).

mod backoff;
mod cloud;
mod config;
mod edge;
mod failpoint;
mod sync;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

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
    /// Send every pending batch of every tracked table to the cloud, then exit.
    Sync {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Only this table (repeatable). Default: every tracked table.
        #[arg(long = "table")]
        tables: Vec<String>,
        /// Report what would be sent; send nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show, per tracked table, pending rows and the last acknowledgement.
    Status {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn init_logging(format: &str) {
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
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
    let result: anyhow::Result<ExitCode> = runtime.block_on(async {
        match cli.command {
            Command::Sync {
                config,
                tables,
                dry_run,
            } => {
                let cfg = config::Config::load(&config)?;
                let report = sync::run_once(&cfg, &tables, dry_run).await?;
                report.print_summary();
                Ok(report.exit_code())
            }
            Command::Status { config, json } => {
                let cfg = config::Config::load(&config)?;
                sync::print_status(&cfg, json)?;
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}
