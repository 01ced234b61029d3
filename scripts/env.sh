# Sourced by the scripts: where things live. Everything is inside the project.
SLUICE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export SLUICE_ROOT
export SLUICE_CACHE="${SLUICE_CACHE:-$SLUICE_ROOT/.cache}"
export SLUICE_PG="$SLUICE_CACHE/pg17"
export SLUICE_PG_USER="${SLUICE_PG_USER:-sluicepg}"
export PGRX_HOME="$SLUICE_CACHE/pgrx"
export SLUICE_ORT_LIB="$SLUICE_CACHE/onnxruntime/libonnxruntime.so.1.31.1"
export SLUICE_MODEL_DIR="$SLUICE_CACHE/models/all-MiniLM-L6-v2"
export PATH="$SLUICE_CACHE/cargo-pgrx/bin:$SLUICE_PG/bin:$PATH"
