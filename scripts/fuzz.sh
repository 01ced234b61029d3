#!/usr/bin/env bash
# Property-based fuzzing of the wire and sketch decoders (tests/fuzz/decoders.rs):
# N mutated inputs (default 5,000,000) from the seed corpus and tests/corpus/.
# No PostgreSQL needed. Prints executions, panics, distinct outcomes, the
# largest allocation one input caused and the peak RSS.
#   scripts/fuzz.sh 5000000
#   SLUICE_FUZZ_SEED=1 scripts/fuzz.sh 100000   # reproducible
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
SLUICE_FUZZ_EXECS=${1:-5000000} cargo test --release -p sluice-tests --test fuzz_decoders 2>&1 | grep -v '^  [a-z]*:'
