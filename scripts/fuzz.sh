#!/usr/bin/env bash
# Property-based fuzzing, no PostgreSQL needed unless asked:
# 1. the wire and sketch decoders (tests/fuzz/decoders.rs): N mutated inputs
#    (default 5,000,000) from the seed corpus and tests/corpus/. Prints
#    executions, panics, distinct outcomes, the largest allocation one input
#    caused and the peak RSS.
# 2. the arguments of every SQL function of sluice0.so (tests/fuzz/sql_args.rs):
#    CASES random calls (default 1,000,000; 0 skips), against the extension
#    built with overflow checks (cargo profile `fuzz`, target/fuzz/sluice0.so),
#    with oracles for the pure functions. Prints executions, failures,
#    ok/error per function and the most frequent error shapes.
# 3. with SLUICE_PG_FUZZ_CASES set, the arguments of every function of the
#    PostgreSQL extension (tests/e2e/pg_args.rs, on a server of its own).
#   scripts/fuzz.sh 5000000
#   scripts/fuzz.sh 0 5000000                       # only the SQL arguments
#   SLUICE_FUZZ_SEED=1 scripts/fuzz.sh 100000 100000   # reproducible
#   SLUICE_PG_FUZZ_CASES=100000 scripts/fuzz.sh 0 0    # only PostgreSQL
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
execs=${1:-5000000}
cases=${2:-${SLUICE_FUZZ_CASES:-1000000}}
if [ "$execs" != 0 ]; then
  SLUICE_FUZZ_EXECS=$execs cargo test --release -p sluice-tests --test fuzz_decoders 2>&1 | grep -v '^  [a-z]*:'
fi
if [ "$cases" != 0 ] || [ -n "${SLUICE_PG_FUZZ_CASES:-}" ]; then
  [ -f target/release/sluice0.so ] || scripts/build.sh
  export SLUICE_SQLITE_EXT="$SLUICE_ROOT/target/release/sluice0.so"
fi
if [ "$cases" != 0 ]; then
  # Against the build with overflow checks (profile fuzz in Cargo.toml): an
  # overflow panics there, and the fuzzer reports the panic.
  cargo build --profile fuzz --quiet -p sluice-sqlite
  cp -f target/fuzz/libsluice0.so target/fuzz/sluice0.so.tmp
  mv -f target/fuzz/sluice0.so.tmp target/fuzz/sluice0.so
  SLUICE_SQLITE_EXT="$SLUICE_ROOT/target/fuzz/sluice0.so" SLUICE_FUZZ_PROFILE=fuzz \
    SLUICE_FUZZ_CASES=$cases cargo test --release -p sluice-tests --test fuzz_sql_args
fi
if [ -n "${SLUICE_PG_FUZZ_CASES:-}" ]; then
  SLUICE_SEED=${SLUICE_FUZZ_SEED:-${SLUICE_SEED:-}} cargo test --release -p sluice-tests --test pg_args -- --nocapture
fi
