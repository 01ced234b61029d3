//! Sentence embeddings at the edge, with ONNX Runtime loaded at run time.
//!
//! The agent turns key-frame descriptions into vectors on the box, so the
//! cloud needs no model: the vectors travel with the key frame and land in
//! pgvector. This crate turns texts into vectors and holds nothing about
//! sync or the edge database (the agent's embedding job, `agent/src/embed.rs`,
//! owns the edge SQL):
//!
//! - [`config`]: [`EmbedderConfig`], which model, which tokenizer, which
//!   ONNX Runtime library, and how to read the model's inputs and outputs.
//!   Its doc comments are the user's documentation (`docs/inference.md`).
//! - [`runtime`]: loads `libonnxruntime.so` once per process from an explicit
//!   path, and turns every way that can fail into an error instead of a panic.
//! - [`embedder`]: [`Embedder`], tokenization (`tokenizers`, padding to the
//!   longest text of the batch, truncation at `max_length`), the ONNX session,
//!   pooling and normalisation.

pub mod config;
pub mod embedder;
pub mod error;
pub mod runtime;

pub use config::{EmbedderConfig, Pooling};
pub use embedder::{cosine, Embedder};
pub use error::InferenceError;
