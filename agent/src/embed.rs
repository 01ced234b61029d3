//! `sluice embed` and the scheduled embedding job: the agent's side of the
//! key-frame embedding job, whose logic lives in `sluice-inference` (feature
//! `edge`) next to the model code it drives.
//!
//! One run embeds every key frame whose `description` is set and whose
//! `embedding` is missing or stale, and writes the vectors (little-endian
//! float32 BLOBs, 1536 bytes for 384 dims) back so that they sync. Inference
//! is CPU-bound: it runs on tokio's blocking pool, never on a runtime thread.

// Until `sluice embed` and the schedule use every item here.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use sluice_inference::edge::{EmbedJob, EmbedJobConfig, EmbedReport};

/// Loads the model, runs the job once on `edge_db` (loading the sluice
/// extension from `ext`), and drops the model: what `sluice embed` does.
pub async fn run_embed(
    edge_db: &Path,
    ext: &Path,
    cfg: &EmbedJobConfig,
) -> anyhow::Result<EmbedReport> {
    let (db, ext, cfg): (PathBuf, PathBuf, EmbedJobConfig) =
        (edge_db.to_path_buf(), ext.to_path_buf(), cfg.clone());
    tokio::task::spawn_blocking(move || sluice_inference::edge::run_embed(&db, &ext, &cfg)).await?
}

/// Loads the model once, for a daemon that runs the job every minute
/// (`sluice run`): about 0.3 s and ~100 MB saved per run.
pub async fn load_job(cfg: &EmbedJobConfig) -> anyhow::Result<Arc<EmbedJob>> {
    let cfg = cfg.clone();
    Ok(Arc::new(
        tokio::task::spawn_blocking(move || EmbedJob::load(&cfg)).await??,
    ))
}

/// One run with an already loaded model.
pub async fn run_loaded(
    job: &Arc<EmbedJob>,
    edge_db: &Path,
    ext: &Path,
) -> anyhow::Result<EmbedReport> {
    let (job, db, ext) = (job.clone(), edge_db.to_path_buf(), ext.to_path_buf());
    tokio::task::spawn_blocking(move || job.run(&db, &ext)).await?
}
