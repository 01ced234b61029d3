//! Shared by the integration tests: the real model, from the environment that
//! `scripts/env.sh` sets after `scripts/setup.sh` installed it.

use std::path::PathBuf;

use sluice_inference::EmbedderConfig;

pub fn required_env(name: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => panic!(
            "{name} is not set: these tests run the real model. Run `bash scripts/setup.sh` once, \
             then `source scripts/env.sh` (scripts/test.sh does both)"
        ),
    }
}

/// The converted all-MiniLM-L6-v2 in `$SLUICE_MODEL_DIR`, with ONNX Runtime
/// from `$SLUICE_ORT_LIB`.
pub fn minilm() -> EmbedderConfig {
    let dir = required_env("SLUICE_MODEL_DIR");
    let lib = required_env("SLUICE_ORT_LIB");
    assert!(
        dir.join("model.onnx").is_file(),
        "{} has no model.onnx: run `bash scripts/setup.sh`",
        dir.display()
    );
    let mut cfg = EmbedderConfig::for_model_dir(&dir);
    cfg.onnxruntime = Some(lib);
    cfg
}
