#!/usr/bin/env bash
# Fleet load (issue 7): DEVICES simulated devices (threads, one connection each)
# send BATCHES batches of ROWS division_states rows each through sluice.ingest,
# all at once, into one PostgreSQL: directly, then through a transaction-mode
# pgbouncer. Prints rows/s, p50/p99 batch latency, errors, and checks every row
# is in the cloud exactly once (and that a replay of each device's first batch
# is recognised).
#   scripts/bench-fleet.sh [DEVICES] [BATCHES] [ROWS]     (default 100 10 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
pg_name="fleet-$$"
eval "$(scripts/pg.sh start "$pg_name")"
trap 'scripts/pg.sh stop "$pg_name"' EXIT
export SLUICE_SQLITE_EXT="$SLUICE_ROOT/target/release/sluice0.so"
export SLUICE_AGENT_BIN="$SLUICE_ROOT/target/release/sluice"
SLUICE_FLEET_DEVICES=${1:-100} SLUICE_FLEET_BATCHES=${2:-10} SLUICE_FLEET_ROWS=${3:-1000} \
  cargo test --release -p sluice-tests --test fleet 2>&1 | grep -E '^fleet|panicked|error'
