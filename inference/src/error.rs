//! The one error type of the crate: every message names the file or the
//! setting to fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// The ONNX Runtime shared library is missing, not loadable, or too old.
    #[error("ONNX Runtime library {}: {reason}", path.display())]
    Runtime { path: PathBuf, reason: String },
    /// The ONNX model is missing, unreadable, or does not fit the config.
    #[error("model {}: {reason}", path.display())]
    Model { path: PathBuf, reason: String },
    /// The `tokenizer.json` is missing or unreadable.
    #[error("tokenizer {}: {reason}", path.display())]
    Tokenizer { path: PathBuf, reason: String },
    /// A config value is out of range.
    #[error("inference config: {0}")]
    Config(String),
    /// Tokenizing or running a batch failed.
    #[error("inference failed: {0}")]
    Run(String),
}
