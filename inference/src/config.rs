//! What to run: the model, its tokenizer, the ONNX Runtime library, and how
//! the model's inputs and outputs are named and read.
//!
//! The defaults fit the all-MiniLM-L6-v2 graph that `scripts/setup.sh` writes
//! (`scripts/convert_minilm.py`): inputs `input_ids`, `attention_mask`,
//! `token_type_ids`; output `sentence_embedding`, already mean-pooled and
//! L2-normalised, 384 floats.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::InferenceError;

/// Environment variable consulted when `onnxruntime` is not set.
pub const ORT_LIB_ENV: &str = "SLUICE_ORT_LIB";
/// Output width of all-MiniLM-L6-v2.
pub const DEFAULT_DIMS: usize = 384;
/// Tokens per text, special tokens included; longer texts are truncated.
/// 256 is what sentence-transformers uses for all-MiniLM-L6-v2.
pub const DEFAULT_MAX_LENGTH: usize = 256;
/// Texts per ONNX Runtime call.
pub const DEFAULT_BATCH_SIZE: usize = 32;
/// Threads ONNX Runtime may use inside one call. The box also runs the video
/// pipeline: keep this small.
pub const DEFAULT_INTRA_THREADS: usize = 2;

/// How one vector per text is made from the model's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The output already holds one vector per text, `[batch, dims]` (the graph
    /// pools, as the converted all-MiniLM-L6-v2 does).
    #[default]
    None,
    /// Average of the token vectors of `[batch, tokens, dims]`, padding
    /// excluded (what sentence-transformers models use).
    Mean,
    /// The first token's vector of `[batch, tokens, dims]` (BERT's `[CLS]`).
    Cls,
}

/// An embedding model: ONNX graph, tokenizer, runtime and how to read it.
///
/// In TOML (all keys but `model` optional):
///
/// ```toml
/// model = ".cache/models/all-MiniLM-L6-v2/model.onnx"
/// tokenizer = ".cache/models/all-MiniLM-L6-v2/tokenizer.json"
/// onnxruntime = ".cache/onnxruntime/libonnxruntime.so.1.31.1"
/// output = "sentence_embedding"
/// pooling = "none"
/// normalize = true
/// dims = 384
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedderConfig {
    /// The ONNX model file.
    pub model: PathBuf,
    /// The Hugging Face `tokenizer.json` of the model. Default: `tokenizer.json`
    /// in the model's folder.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// The ONNX Runtime shared library (`libonnxruntime.so.1.x`, version 1.31
    /// or newer), loaded at run time. Default: the environment variable
    /// `SLUICE_ORT_LIB`. One library per process: every model of the process
    /// must name the same file.
    #[serde(default)]
    pub onnxruntime: Option<PathBuf>,
    /// Name of the graph input that takes the token ids (int64 `[batch, tokens]`).
    #[serde(default = "default_input_ids")]
    pub input_ids: String,
    /// Name of the graph input that takes the attention mask (int64, 1 for a
    /// token, 0 for padding). Fed only when the graph has such an input.
    #[serde(default = "default_attention_mask")]
    pub attention_mask: String,
    /// Name of the graph input that takes the token type (segment) ids. Fed
    /// (all zeros for a single text) only when the graph has such an input.
    #[serde(default = "default_token_type_ids")]
    pub token_type_ids: String,
    /// Name of the graph output to read (float32).
    #[serde(default = "default_output")]
    pub output: String,
    /// How the output becomes one vector per text: `none` (the output is
    /// `[batch, dims]`), `mean` or `cls` (the output is `[batch, tokens, dims]`).
    #[serde(default)]
    pub pooling: Pooling,
    /// Scale every vector to length 1, so that the dot product is the cosine
    /// (what pgvector's cosine distance and HNSW index expect). Harmless when
    /// the graph already normalises.
    #[serde(default = "default_true")]
    pub normalize: bool,
    /// Length of the vectors; checked when the model loads. Must match the
    /// cloud column (`vector(384)`).
    #[serde(default = "default_dims")]
    pub dims: usize,
    /// Tokens per text, special tokens included; longer texts are truncated.
    /// At most the model's position limit (512 for BERT models).
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// Texts per ONNX Runtime call. Each batch is padded to its longest text.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Threads ONNX Runtime uses inside one call (0: one per core).
    #[serde(default = "default_intra_threads")]
    pub intra_threads: usize,
}

fn default_input_ids() -> String {
    "input_ids".into()
}
fn default_attention_mask() -> String {
    "attention_mask".into()
}
fn default_token_type_ids() -> String {
    "token_type_ids".into()
}
fn default_output() -> String {
    "sentence_embedding".into()
}
fn default_true() -> bool {
    true
}
fn default_dims() -> usize {
    DEFAULT_DIMS
}
fn default_max_length() -> usize {
    DEFAULT_MAX_LENGTH
}
fn default_batch_size() -> usize {
    DEFAULT_BATCH_SIZE
}
fn default_intra_threads() -> usize {
    DEFAULT_INTRA_THREADS
}

impl EmbedderConfig {
    /// The defaults for a model file (the converted all-MiniLM-L6-v2 layout).
    pub fn for_model(model: impl Into<PathBuf>) -> EmbedderConfig {
        EmbedderConfig {
            model: model.into(),
            tokenizer: None,
            onnxruntime: None,
            input_ids: default_input_ids(),
            attention_mask: default_attention_mask(),
            token_type_ids: default_token_type_ids(),
            output: default_output(),
            pooling: Pooling::None,
            normalize: true,
            dims: DEFAULT_DIMS,
            max_length: DEFAULT_MAX_LENGTH,
            batch_size: DEFAULT_BATCH_SIZE,
            intra_threads: DEFAULT_INTRA_THREADS,
        }
    }

    /// The defaults for a folder holding `model.onnx` and `tokenizer.json`
    /// (what `scripts/setup.sh` leaves in `$SLUICE_MODEL_DIR`).
    pub fn for_model_dir(dir: impl AsRef<Path>) -> EmbedderConfig {
        EmbedderConfig::for_model(dir.as_ref().join("model.onnx"))
    }

    /// The model `scripts/setup.sh` installed, as `scripts/env.sh` names it:
    /// `$SLUICE_MODEL_DIR` (with `model.onnx`) and ONNX Runtime from
    /// `$SLUICE_ORT_LIB`. The error says what is missing and how to get it.
    pub fn from_setup_env() -> Result<EmbedderConfig, String> {
        let var = |name: &str| match std::env::var_os(name) {
            Some(v) if !v.is_empty() => Ok(PathBuf::from(v)),
            _ => Err(format!(
                "{name} is not set: run `bash scripts/setup.sh` once, then \
                 `source scripts/env.sh` (scripts/test.sh does both)"
            )),
        };
        let dir = var("SLUICE_MODEL_DIR")?;
        let lib = var(ORT_LIB_ENV)?;
        if !dir.join("model.onnx").is_file() {
            return Err(format!(
                "{} has no model.onnx: run `bash scripts/setup.sh`",
                dir.display()
            ));
        }
        let mut cfg = EmbedderConfig::for_model_dir(&dir);
        cfg.onnxruntime = Some(lib);
        Ok(cfg)
    }

    /// The tokenizer file: as configured, else next to the model.
    pub fn tokenizer_path(&self) -> PathBuf {
        match &self.tokenizer {
            Some(p) => p.clone(),
            None => self
                .model
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join("tokenizer.json"),
        }
    }

    /// The ONNX Runtime library: as configured, else `SLUICE_ORT_LIB`.
    pub fn onnxruntime_path(&self) -> Result<PathBuf, InferenceError> {
        if let Some(p) = &self.onnxruntime {
            return Ok(p.clone());
        }
        match std::env::var_os(ORT_LIB_ENV) {
            Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
            _ => Err(InferenceError::Config(format!(
                "no ONNX Runtime library: set `onnxruntime` to the path of libonnxruntime.so \
                 or the environment variable {ORT_LIB_ENV} (scripts/setup.sh installs one)"
            ))),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), InferenceError> {
        let bad = |m: String| Err(InferenceError::Config(m));
        if self.dims == 0 {
            return bad("dims must be at least 1".into());
        }
        if self.max_length < 4 {
            return bad(format!(
                "max_length must be at least 4, got {}",
                self.max_length
            ));
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1".into());
        }
        if self.input_ids.is_empty() || self.output.is_empty() {
            return bad("input_ids and output must name a graph input and output".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_defaults_and_pooling() {
        let c: EmbedderConfig =
            serde_json::from_str(r#"{"model": "/m/model.onnx", "pooling": "mean", "dims": 768}"#)
                .unwrap();
        assert_eq!(c.pooling, Pooling::Mean);
        assert_eq!(c.dims, 768);
        assert_eq!(c.output, "sentence_embedding");
        assert_eq!(c.max_length, DEFAULT_MAX_LENGTH);
        assert!(c.normalize);
        assert_eq!(c.tokenizer_path(), PathBuf::from("/m/tokenizer.json"));
        let err = serde_json::from_str::<EmbedderConfig>(r#"{"model": "m", "pooling": "max"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{err}");
        let err =
            serde_json::from_str::<EmbedderConfig>(r#"{"model": "m", "modle": 1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn validation_names_the_setting() {
        let mut c = EmbedderConfig::for_model("m.onnx");
        c.batch_size = 0;
        assert!(c.validate().unwrap_err().to_string().contains("batch_size"));
        c.batch_size = 1;
        c.max_length = 1;
        assert!(c.validate().unwrap_err().to_string().contains("max_length"));
    }
}
