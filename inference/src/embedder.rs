//! [`Embedder`]: texts in, one vector per text out.
//!
//! Per batch: tokenize (padding to the longest text of the batch, truncation
//! at `max_length`), one ONNX Runtime call, then pooling and normalisation as
//! configured. Padding to the batch's longest text rather than to a fixed
//! length matters: all-MiniLM's `tokenizer.json` pads every text to 128
//! tokens, about 20 times the work for short descriptions.

use std::path::Path;
use std::sync::Mutex;

use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::Tensor;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::config::{EmbedderConfig, Pooling};
use crate::error::InferenceError;
use crate::runtime;

pub struct Embedder {
    cfg: EmbedderConfig,
    tokenizer: Tokenizer,
    session: Mutex<Session>,
    feed_mask: bool,
    feed_types: bool,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("model", &self.cfg.model)
            .field("dims", &self.cfg.dims)
            .finish()
    }
}

impl Embedder {
    /// Loads ONNX Runtime (once per process), the tokenizer and the model, and
    /// checks that the configured inputs, output and `dims` fit the model by
    /// embedding one short text.
    pub fn load(cfg: &EmbedderConfig) -> Result<Embedder, InferenceError> {
        cfg.validate()?;
        let lib = cfg.onnxruntime_path()?;
        let env = runtime::environment(&lib)?;
        let tokenizer = load_tokenizer(&cfg.tokenizer_path(), cfg.max_length)?;

        let model_err = |reason: String| InferenceError::Model {
            path: cfg.model.clone(),
            reason,
        };
        if !cfg.model.is_file() {
            return Err(model_err(
                "no such file (scripts/setup.sh writes the default model into $SLUICE_MODEL_DIR)"
                    .into(),
            ));
        }
        let session = Session::builder(&env)
            .and_then(|b| Ok(b.with_optimization_level(GraphOptimizationLevel::Level3)?))
            .and_then(|b| Ok(b.with_intra_threads(cfg.intra_threads)?))
            .and_then(|b| Ok(b.with_inter_threads(1)?))
            .and_then(|mut b| b.commit_from_file(&cfg.model))
            .map_err(|e| model_err(format!("cannot load: {e}")))?;

        let inputs: Vec<String> = session
            .inputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let outputs: Vec<String> = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        for name in &inputs {
            if name != &cfg.input_ids && name != &cfg.attention_mask && name != &cfg.token_type_ids
            {
                return Err(model_err(format!(
                    "graph input '{name}' is none of the configured inputs \
                     (input_ids = '{}', attention_mask = '{}', token_type_ids = '{}')",
                    cfg.input_ids, cfg.attention_mask, cfg.token_type_ids
                )));
            }
        }
        if !inputs.contains(&cfg.input_ids) {
            return Err(model_err(format!(
                "no graph input '{}' (input_ids); the graph's inputs: {}",
                cfg.input_ids,
                inputs.join(", ")
            )));
        }
        if !outputs.contains(&cfg.output) {
            return Err(model_err(format!(
                "no graph output '{}' (output); the graph's outputs: {}",
                cfg.output,
                outputs.join(", ")
            )));
        }
        let feed_mask = inputs.contains(&cfg.attention_mask);
        if !feed_mask && cfg.pooling == Pooling::Mean {
            return Err(model_err(
                "pooling = \"mean\" needs the attention mask, but the graph takes none".into(),
            ));
        }
        let embedder = Embedder {
            cfg: cfg.clone(),
            tokenizer,
            session: Mutex::new(session),
            feed_mask,
            feed_types: inputs.contains(&cfg.token_type_ids),
        };
        // A first run: catches a wrong output shape or `dims` now, not at 3 am.
        embedder
            .embed_batch(&["sluice"])
            .map_err(|e| model_err(format!("test embedding failed: {e}")))?;
        Ok(embedder)
    }

    pub fn config(&self) -> &EmbedderConfig {
        &self.cfg
    }

    /// Length of every vector.
    pub fn dims(&self) -> usize {
        self.cfg.dims
    }

    /// One vector per text, in order, in batches of `batch_size`. An empty
    /// slice gives an empty result; an empty text gets a vector too.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, InferenceError> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.cfg.batch_size) {
            out.extend(self.embed_batch(chunk)?);
        }
        Ok(out)
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, InferenceError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let run_err = |e: String| InferenceError::Run(e);
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| run_err(format!("tokenizing: {e}")))?;
        let batch = enc.len();
        let seq = enc.iter().map(|e| e.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch * seq);
        let mut mask = Vec::with_capacity(batch * seq);
        let mut types = Vec::with_capacity(batch * seq);
        for e in &enc {
            if e.len() != seq {
                return Err(run_err("tokenizer did not pad the batch evenly".into()));
            }
            ids.extend(e.get_ids().iter().map(|&v| v as i64));
            mask.extend(e.get_attention_mask().iter().map(|&v| v as i64));
            types.extend(e.get_type_ids().iter().map(|&v| v as i64));
        }
        let shape = [batch as i64, seq as i64];
        let tensor =
            |v: Vec<i64>| Tensor::from_array((shape, v)).map_err(|e| run_err(e.to_string()));
        let mut feeds: Vec<(&str, ort::session::SessionInputValue<'_>)> =
            vec![(self.cfg.input_ids.as_str(), tensor(ids)?.into())];
        if self.feed_mask {
            feeds.push((
                self.cfg.attention_mask.as_str(),
                tensor(mask.clone())?.into(),
            ));
        }
        if self.feed_types {
            feeds.push((self.cfg.token_type_ids.as_str(), tensor(types)?.into()));
        }

        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session
            .run(feeds)
            .map_err(|e| run_err(format!("ONNX Runtime: {e}")))?;
        let value = outputs
            .get(&self.cfg.output)
            .ok_or_else(|| run_err(format!("no output '{}'", self.cfg.output)))?;
        let (out_shape, data) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| run_err(format!("output '{}': {e}", self.cfg.output)))?;
        let dims: Vec<i64> = out_shape.iter().copied().collect();
        let want = self.cfg.dims as i64;
        let mut vectors = match (self.cfg.pooling, dims.as_slice()) {
            (Pooling::None, &[b, d]) if b == batch as i64 && d == want => data
                .chunks_exact(self.cfg.dims)
                .map(<[f32]>::to_vec)
                .collect::<Vec<_>>(),
            (Pooling::Mean | Pooling::Cls, &[b, s, d])
                if b == batch as i64 && s == seq as i64 && d == want =>
            {
                let d = self.cfg.dims;
                (0..batch)
                    .map(|i| {
                        let tokens = &data[i * seq * d..(i + 1) * seq * d];
                        if self.cfg.pooling == Pooling::Cls {
                            return tokens[..d].to_vec();
                        }
                        let m = &mask[i * seq..(i + 1) * seq];
                        let mut acc = vec![0f32; d];
                        let mut n = 0f32;
                        for (t, &keep) in tokens.chunks_exact(d).zip(m) {
                            if keep != 0 {
                                n += 1.0;
                                acc.iter_mut().zip(t).for_each(|(a, x)| *a += x);
                            }
                        }
                        let n = n.max(1e-9);
                        acc.iter_mut().for_each(|a| *a /= n);
                        acc
                    })
                    .collect()
            }
            (pooling, other) => {
                let expected = match pooling {
                    Pooling::None => format!("[{batch}, {want}]"),
                    _ => format!("[{batch}, {seq}, {want}]"),
                };
                return Err(run_err(format!(
                    "output '{}' has shape {other:?}, expected {expected} for pooling = {pooling:?} and dims = {want}",
                    self.cfg.output
                )));
            }
        };
        if self.cfg.normalize {
            for v in &mut vectors {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                v.iter_mut().for_each(|x| *x /= norm);
            }
        }
        Ok(vectors)
    }
}

fn load_tokenizer(path: &Path, max_length: usize) -> Result<Tokenizer, InferenceError> {
    let err = |reason: String| InferenceError::Tokenizer {
        path: path.to_path_buf(),
        reason,
    };
    if !path.is_file() {
        return Err(err("no such file".into()));
    }
    let mut tok = Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
    // Keep the file's pad token, but pad to the longest text of the batch.
    let padding = PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        ..tok.get_padding().cloned().unwrap_or_default()
    };
    tok.with_padding(Some(padding));
    let truncation = TruncationParams {
        max_length,
        ..tok.get_truncation().cloned().unwrap_or_default()
    };
    tok.with_truncation(Some(truncation))
        .map_err(|e| err(format!("max_length {max_length}: {e}")))?;
    Ok(tok)
}

/// Cosine similarity of two vectors of the same length.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}
