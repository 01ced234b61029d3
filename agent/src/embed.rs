//! `sluice embed` and the scheduled embedding job: the key-frame embedding
//! job against the edge SQLite database. The model code (tokenizer, ONNX
//! session, pooling) is `sluice-inference`, which turns texts into vectors
//! and knows nothing of the edge; the edge SQL is here, and the database is
//! opened by [`crate::edge::open_connection`], the one way the agent opens it.
//!
//! One run: find the rows whose text (`description`) is set and whose vector
//! (`embedding`) is missing or stale, embed them in batches, and write each
//! vector as a little-endian float32 BLOB (384 floats = 1536 bytes). The
//! table is tracked as mutable, so the update makes the row pending and the
//! vector syncs with the rest of the row. Inference is CPU-bound and the
//! edge calls block: a run goes to tokio's blocking pool, never a runtime
//! thread.
//!
//! Staleness: the side table `sluice_embeddings(tbl, row_id, text_hash)`
//! remembers a hash of the text (and of the model file's name and size) that
//! each vector was made from. It is not tracked, so it never syncs and the
//! synced table keeps its schema. A row is embedded again when its text or
//! the model changed; a row whose text became NULL or empty loses its vector.

use std::hash::Hasher;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use rusqlite::{functions::FunctionFlags, params, Connection};
use serde::Serialize;
use sluice_inference::Embedder;
use sluice_wire::quote_ident as quote;

/// What one run did (for the sync log and `sluice embed`'s output).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct EmbedReport {
    /// Rows that got a vector for the first time.
    pub embedded: u64,
    /// Rows whose vector was replaced because their text (or the model) changed.
    pub refreshed: u64,
    /// Rows whose text became NULL or blank: their vector was removed.
    pub cleared: u64,
    /// Rows whose text changed while being embedded; the next run takes them.
    pub raced: u64,
    /// Model calls (batches).
    pub batches: u64,
    /// Bytes of vectors written.
    pub bytes: u64,
    /// True when `max_rows_per_run` stopped the run before the backlog ended.
    pub more_pending: bool,
    /// Time spent, in milliseconds (model loading included for `run_embed`).
    pub elapsed_ms: u64,
}

/// A loaded model, ready for many runs (what `sluice run` keeps between
/// scheduled runs; loading takes a fraction of a second and ~100 MB).
#[derive(Debug)]
pub struct EmbedJob {
    cfg: EmbedJobConfig,
    embedder: Embedder,
    model_key: String,
}

/// Loads the model, runs the job once, and drops the model.
#[cfg(test)]
pub fn run_embed(edge_db: &Path, ext: &Path, cfg: &EmbedJobConfig) -> anyhow::Result<EmbedReport> {
    let t0 = Instant::now();
    let mut report = EmbedJob::load(cfg)?.run(edge_db, ext)?;
    report.elapsed_ms = t0.elapsed().as_millis() as u64;
    Ok(report)
}

impl EmbedJob {
    pub fn load(cfg: &EmbedJobConfig) -> anyhow::Result<EmbedJob> {
        for (what, name) in [
            ("table", &cfg.table),
            ("id_column", &cfg.id_column),
            ("text_column", &cfg.text_column),
            ("vector_column", &cfg.vector_column),
        ] {
            anyhow::ensure!(!name.is_empty(), "embed: {what} must not be empty");
        }
        anyhow::ensure!(
            cfg.max_rows_per_run > 0,
            "embed: max_rows_per_run must be at least 1"
        );
        let embedder = Embedder::load(&cfg.model).context("embed: cannot load the model")?;
        // Vectors of another model are stale too: the file's name and size
        // stand for the model without reading 90 MB every run.
        let size = std::fs::metadata(&cfg.model.model)
            .map(|m| m.len())
            .unwrap_or(0);
        let name = cfg
            .model
            .model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let model_key = format!("{}:{size}:{}", name.unwrap_or_default(), cfg.model.dims);
        Ok(EmbedJob {
            cfg: cfg.clone(),
            embedder,
            model_key,
        })
    }

    /// Opens the database (loading the sluice extension from `ext`) and runs once.
    pub fn run(&self, edge_db: &Path, ext: &Path) -> anyhow::Result<EmbedReport> {
        let conn = crate::edge::open_connection(edge_db, ext, self.cfg.busy_timeout_ms)?;
        self.run_on(&conn)
    }

    /// Runs once on an open connection.
    pub fn run_on(&self, conn: &Connection) -> anyhow::Result<EmbedReport> {
        let t0 = Instant::now();
        let c = &self.cfg;
        let (t, id, text, vec) = (
            quote(&c.table),
            quote(&c.id_column),
            quote(&c.text_column),
            quote(&c.vector_column),
        );
        let key = self.model_key.clone();
        conn.create_scalar_function(
            "sluice_embed_key",
            1,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
            move |ctx| {
                let text: Option<String> = ctx.get(0)?;
                Ok(text.map(|s| text_hash(&key, &s)))
            },
        )?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS sluice_embeddings (
               tbl       TEXT NOT NULL,
               row_id    INTEGER NOT NULL,
               text_hash INTEGER NOT NULL,
               PRIMARY KEY (tbl, row_id)
             ) WITHOUT ROWID;",
        )
        .context("embed: cannot create sluice_embeddings")?;

        let mut report = EmbedReport::default();
        let blank = format!("({text} IS NULL OR trim({text}) = '')");
        // Texts removed since they were embedded: their vectors go too.
        {
            let tx = conn.unchecked_transaction()?;
            report.cleared =
                tx.execute(
                    &format!(
                        "UPDATE {t} SET {vec} = NULL WHERE {blank} AND {vec} IS NOT NULL
                           AND {id} IN (SELECT row_id FROM sluice_embeddings WHERE tbl = ?1)"
                    ),
                    [&c.table],
                )
                .with_context(|| format!("embed: cannot read table {t}"))? as u64;
            tx.execute(
                &format!(
                    "DELETE FROM sluice_embeddings WHERE tbl = ?1 AND row_id NOT IN
                       (SELECT {id} FROM {t} WHERE NOT {blank})"
                ),
                [&c.table],
            )?;
            tx.commit()?;
        }

        let select = format!(
            "SELECT k.{id}, k.{text}, e.text_hash IS NOT NULL
               FROM {t} k LEFT JOIN sluice_embeddings e ON e.tbl = ?1 AND e.row_id = k.{id}
              WHERE NOT ({blank}) AND (k.{vec} IS NULL OR e.text_hash IS NOT sluice_embed_key(k.{text}))
              ORDER BY k.{id} LIMIT ?2"
        );
        let update = format!("UPDATE {t} SET {vec} = ?1 WHERE {id} = ?2 AND {text} IS ?3");
        let remember =
            "INSERT OR REPLACE INTO sluice_embeddings (tbl, row_id, text_hash) VALUES (?1, ?2, ?3)";
        let batch = c.model.batch_size;
        let mut attempted = 0usize;
        loop {
            let limit = batch.min(c.max_rows_per_run - attempted);
            if limit == 0 {
                report.more_pending = conn.prepare(&select)?.exists(params![&c.table, 1])?;
                break;
            }
            let rows: Vec<(i64, String, bool)> = conn
                .prepare(&select)
                .with_context(|| format!("embed: cannot read {t}.{text} and {t}.{vec}"))?
                .query_map(params![&c.table, limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<Result<_, _>>()?;
            if rows.is_empty() {
                break;
            }
            attempted += rows.len();
            let texts: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
            let vectors = self.embedder.embed(&texts)?;
            report.batches += 1;
            let tx = conn.unchecked_transaction()?;
            {
                let mut up = tx.prepare(&update)?;
                let mut rem = tx.prepare(remember)?;
                for ((row_id, body, had), v) in rows.iter().zip(&vectors) {
                    let blob = to_blob(v);
                    if up.execute(params![blob, row_id, body])? == 1 {
                        rem.execute(params![&c.table, row_id, text_hash(&self.model_key, body)])?;
                        report.bytes += blob.len() as u64;
                        if *had {
                            report.refreshed += 1;
                        } else {
                            report.embedded += 1;
                        }
                    } else {
                        report.raced += 1;
                    }
                }
            }
            tx.commit().context("embed: cannot write the vectors")?;
        }
        report.elapsed_ms = t0.elapsed().as_millis() as u64;
        tracing::info!(
            table = %c.table,
            embedded = report.embedded,
            refreshed = report.refreshed,
            cleared = report.cleared,
            batches = report.batches,
            more_pending = report.more_pending,
            elapsed_ms = report.elapsed_ms,
            "embed run done"
        );
        Ok(report)
    }
}

/// A vector as stored: float32, little-endian, no header.
pub fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The inverse of [`to_blob`]; `None` when the length is not a multiple of 4.
#[cfg(test)]
pub fn from_blob(b: &[u8]) -> Option<Vec<f32>> {
    if b.len() % 4 != 0 {
        return None;
    }
    Some(
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// 64-bit FNV-1a (the `fnv` crate) of model key and text: stable across
/// builds and platforms, so the hashes stored by earlier runs stay valid.
fn text_hash(model_key: &str, text: &str) -> i64 {
    let mut h = fnv::FnvHasher::default();
    h.write(model_key.as_bytes());
    h.write(&[0xff]);
    h.write(text.as_bytes());
    h.finish() as i64
}

#[cfg(test)]
mod tests;

pub use crate::embed_config::EmbedJobConfig;

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
