#!/usr/bin/env bash
# Runs every test of sluice, as CI does (.ci/run calls exactly this):
#   1. setup (idempotent installs into .cache/) and release builds, and a
#      build check of the PostgreSQL extension against PostgreSQL 15
#   2. unit and property tests of the plain crates (wire, agent)
#   3. the PostgreSQL extension's #[pg_test]s (cargo pgrx test, PostgreSQL 17)
#   4. against one throwaway PostgreSQL 17 + pgvector + sluice:
#      the end-to-end tests in tests/ (Rust), the argument fuzzer again on a
#      build with overflow checks, and tests/python (pytest, Debian's
#      python3 loading the built sluice0.so)
# The server is stopped on exit, also when a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
t0=$SECONDS
results=$(mktemp /tmp/sluice-test-results.XXXXXX)
step() { printf '\n==> %s  [%ds]\n' "$*" $((SECONDS - t0)); }

step "setup"
scripts/setup.sh

# cargo pgrx test installs its own debug build (with test functions) into
# .cache/pg17, so it runs before build.sh installs the release build.
step "PostgreSQL extension: cargo pgrx test pg17"
pgrx_data=/tmp/sluice-pgrx-test
mkdir -p "$pgrx_data"
runas=()
if [ "$(id -u)" -eq 0 ]; then chown "$SLUICE_PG_USER:" "$pgrx_data"; runas=(--runas "$SLUICE_PG_USER"); fi
(cd pg_ext && cargo pgrx test pg17 "${runas[@]}" --pgdata "$pgrx_data") 2>&1 | tee -a "$results"

step "build"
scripts/build.sh

step "PostgreSQL extension: build check against PostgreSQL 15"
scripts/build-pg15.sh

step "unit and property tests: wire, agent, sqlite_ext"
cargo test --release --quiet 2>&1 | tee -a "$results"
cargo test --release --quiet -p sluice-sqlite 2>&1 | tee -a "$results"

step "start PostgreSQL 17 for the end-to-end tests"
# A name of its own, so that two test runs on one machine never share a server.
pg_name="test-$$"
eval "$(scripts/pg.sh start "$pg_name")"
trap 'scripts/pg.sh stop "$pg_name"; rm -f "$results"' EXIT
export SLUICE_SQLITE_EXT="$SLUICE_ROOT/target/release/sluice0.so"
export SLUICE_AGENT_BIN="$SLUICE_ROOT/target/release/sluice"

step "end-to-end tests (tests/)"
cargo test --release -p sluice-tests 2>&1 | tee -a "$results"

step "argument fuzzing of sluice0.so built with overflow checks (profile fuzz)"
# An integer overflow on a user's value panics in this build (and the fuzzer
# reports it) where the release build would wrap silently.
cargo build --profile fuzz --quiet -p sluice-sqlite
cp -f target/fuzz/libsluice0.so target/fuzz/sluice0.so.tmp
mv -f target/fuzz/sluice0.so.tmp target/fuzz/sluice0.so
SLUICE_SQLITE_EXT="$SLUICE_ROOT/target/fuzz/sluice0.so" SLUICE_FUZZ_PROFILE=fuzz \
  cargo test --release -p sluice-tests --test fuzz_sql_args 2>&1 | tee -a "$results"

step "SQLite extension and SQL-only recipe (pytest, /usr/bin/python3)"
/usr/bin/python3 -m pytest -q tests/python 2>&1 | tee -a "$results"

# One closing line over every runner: cargo's "N passed; M failed" and
# pytest's "N passed".
awk '/^test result:/ { p += $4; f += $6 }
     /^[0-9]+ passed/ { p += $1 }
     / [0-9]+ failed/ { for (i = 1; i < NF; i++) if ($(i+1) ~ /^failed/ && $0 !~ /^test result/) f += $i }
     END { printf "total: %d passed, %d failed\n", p, f }' "$results"
