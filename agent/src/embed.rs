//! `sluice embed` and the scheduled embedding job: the agent's side of the
//! key-frame embedding job, whose logic lives in `sluice-inference` (feature
//! `edge`) next to the model code it drives.
//!
//! One run embeds every key frame whose `description` is set and whose
//! `embedding` is missing or stale, and writes the vectors (little-endian
//! float32 BLOBs, 1536 bytes for 384 dims) back so that they sync. Inference
//! is CPU-bound: it runs on tokio's blocking pool, never on a runtime thread.

use std::path::Path;
use std::sync::Arc;

pub use sluice_inference::edge::{EmbedJob, EmbedJobConfig, EmbedReport};

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

/// The embedding of one text with the job's model (`sluice embed --query`).
pub async fn embed_query(cfg: &EmbedJobConfig, text: &str) -> anyhow::Result<Vec<f32>> {
    let (model, text) = (cfg.model.clone(), text.to_owned());
    tokio::task::spawn_blocking(move || {
        let embedder = sluice_inference::Embedder::load(&model)?;
        let mut v = embedder.embed(&[text.as_str()])?;
        v.pop()
            .ok_or_else(|| anyhow::anyhow!("the model returned no vector"))
    })
    .await?
}
