//! Sentence embeddings at the edge, with ONNX Runtime loaded at run time.
//!
//! The agent turns key-frame descriptions into vectors on the box, so the
//! cloud needs no model: the vectors travel with the key frame and land in
//! pgvector. This crate holds everything about that and nothing about sync:
//!
//! - [`config`]: [`EmbedderConfig`], which model, which tokenizer, which
//!   ONNX Runtime library, and how to read the model's inputs and outputs.
//!   Its doc comments are the user's documentation (`docs/inference.md`).
//! - [`runtime`]: loads `libonnxruntime.so` once per process from an explicit
//!   path, and turns every way that can fail into an error instead of a panic.
//! - [`embedder`]: [`Embedder`], tokenization (`tokenizers`, padding to the
//!   longest text of the batch, truncation at `max_length`), the ONNX session,
//!   pooling and normalisation.
//! - [`edge`] (feature `edge`): the key-frame embedding job against the edge
//!   SQLite database, which the agent runs as `sluice embed` and on its
//!   schedule.

pub mod config;
#[cfg(feature = "edge")]
pub mod edge;
pub mod embedder;
pub mod error;
pub mod runtime;

pub use config::{EmbedderConfig, Pooling};
pub use embedder::{cosine, Embedder};
pub use error::InferenceError;
