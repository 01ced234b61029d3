//! Shared by the integration tests: the real model, from the environment that
//! `scripts/env.sh` sets after `scripts/setup.sh` installed it.

use sluice_inference::EmbedderConfig;

/// The converted all-MiniLM-L6-v2 in `$SLUICE_MODEL_DIR`, with ONNX Runtime
/// from `$SLUICE_ORT_LIB`.
pub fn minilm() -> EmbedderConfig {
    EmbedderConfig::from_setup_env()
        .unwrap_or_else(|e| panic!("these tests run the real model: {e}"))
}
