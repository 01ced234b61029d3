//! `[embed]`: the embedding job's configuration (the model's is
//! `sluice_inference::EmbedderConfig`). Below both the agent's config and
//! the job, so that each imports it and neither imports the other.

use serde::Deserialize;
use sluice_inference::EmbedderConfig;

/// How long a write waits for a lock held by the pipeline, in milliseconds.
pub const DEFAULT_BUSY_TIMEOUT_MS: u64 = 5_000;
/// Rows one run embeds at most; the rest wait for the next run, so one run
/// of a large backlog cannot hold the box's CPU for long.
pub const DEFAULT_MAX_ROWS_PER_RUN: usize = 5_000;
/// The table whose rows get vectors, by default.
pub const DEFAULT_TABLE: &str = "key_frames";
/// Its integer key column (the rowid alias), by default.
pub const DEFAULT_ID_COLUMN: &str = "id";
/// The text to embed, by default.
pub const DEFAULT_TEXT_COLUMN: &str = "description";
/// The BLOB column that receives the vector, by default.
pub const DEFAULT_VECTOR_COLUMN: &str = "embedding";

/// The embedding job: which model, which table and columns.
///
/// ```toml
/// [embed]
/// table = "key_frames"
/// text_column = "description"
/// vector_column = "embedding"
/// [embed.model]
/// model = ".cache/models/all-MiniLM-L6-v2/model.onnx"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedJobConfig {
    /// The embedding model (see `EmbedderConfig`).
    pub model: EmbedderConfig,
    /// The table whose rows get vectors.
    #[serde(default = "default_table")]
    pub table: String,
    /// Its key column, an integer that identifies the row (the rowid alias).
    #[serde(default = "default_id_column")]
    pub id_column: String,
    /// The text to embed. Rows where it is NULL or blank get no vector.
    #[serde(default = "default_text_column")]
    pub text_column: String,
    /// The BLOB column that receives the vector (float32, little-endian).
    /// The job owns it: a vector written by anyone else is replaced.
    #[serde(default = "default_vector_column")]
    pub vector_column: String,
    /// Rows one run embeds at most ([`DEFAULT_MAX_ROWS_PER_RUN`]); the rest wait for the next run.
    #[serde(default = "default_max_rows")]
    pub max_rows_per_run: usize,
    /// How long a write waits for the pipeline's lock, in milliseconds.
    #[serde(default = "default_busy_timeout")]
    pub busy_timeout_ms: u64,
}

// Field defaults by function, not a container default: `model` has none, so
// the struct cannot implement `Default`. Each returns its constant above.
fn default_table() -> String {
    DEFAULT_TABLE.into()
}
fn default_id_column() -> String {
    DEFAULT_ID_COLUMN.into()
}
fn default_text_column() -> String {
    DEFAULT_TEXT_COLUMN.into()
}
fn default_vector_column() -> String {
    DEFAULT_VECTOR_COLUMN.into()
}
fn default_max_rows() -> usize {
    DEFAULT_MAX_ROWS_PER_RUN
}
fn default_busy_timeout() -> u64 {
    DEFAULT_BUSY_TIMEOUT_MS
}

impl EmbedJobConfig {
    /// The defaults (key_frames.description → key_frames.embedding) for a model.
    #[cfg(test)]
    pub fn new(model: EmbedderConfig) -> EmbedJobConfig {
        EmbedJobConfig {
            model,
            table: default_table(),
            id_column: default_id_column(),
            text_column: default_text_column(),
            vector_column: default_vector_column(),
            max_rows_per_run: DEFAULT_MAX_ROWS_PER_RUN,
            busy_timeout_ms: DEFAULT_BUSY_TIMEOUT_MS,
        }
    }
}
