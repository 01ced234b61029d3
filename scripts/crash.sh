#!/usr/bin/env bash
# Writer crash (tests/e2e/writer_crash.rs): a python3 process running big
# sluice_insert, sluice_rollup_run, sluice_ack and sluice_cleanup calls on a
# file database is SIGKILLed at random moments, N times per call kind (default
# 100); after each kill the database must pass PRAGMA integrity_check and the
# call must have taken effect whole or not at all. No PostgreSQL needed.
# Prints every kill (seed, journal mode, inside or between calls) and a tally.
#   scripts/crash.sh 100
#   SLUICE_SEED=1234 scripts/crash.sh 1     # reproduce (kill i uses seed + i)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
n=${1:-100}
[ -f target/release/sluice0.so ] || scripts/build.sh
export SLUICE_SQLITE_EXT="$SLUICE_ROOT/target/release/sluice0.so"
SLUICE_CRASH_KILLS=$n cargo test --release -p sluice-tests --test writer_crash -- --nocapture
