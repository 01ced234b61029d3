#!/usr/bin/env bash
# Seven-day outage (issue 7): the field's workload for one camera (a metrics
# sample every 3 s, 30,000 division and 15,000 table state changes a day, a
# 4 KB key frame and a health row a minute) written hour by hour for DAYS
# simulated days into a real edge database (sluice0.so, sql/edge_schema.sql)
# with the cloud unreachable and a storage budget; every simulated hour the
# agent's jobs run (sluice rollup, sluice sync against a refused port,
# sluice cleanup, sluice_enforce_budget). Then the cloud comes up and
# `sluice sync --mode full` catches up. Prints per day the size on disk vs
# the budget (and vs the same days with no budget, and with the budget's
# rolled_up_only, same run), rows dropped, aggregates kept, and the catch-up
# time. The checks of tests/e2e/outage.rs
# run at this size too (within budget after every hour, no aggregate
# dropped, every drop counted, the cloud holds every surviving row once).
#   scripts/bench-outage.sh [DAYS] [BUDGET_BYTES] [CAMERAS]   (default 7 50000000 1)
# Needs scripts/build.sh to have run (sluice0.so, the agent, the PostgreSQL
# extension).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
for f in target/release/sluice0.so target/release/sluice; do
  [ -x "$f" ] || [ -f "$f" ] || { echo "bench-outage: $f is missing; run scripts/build.sh" >&2; exit 1; }
done
pg_name="outage-$$"
eval "$(scripts/pg.sh start "$pg_name")"
trap 'scripts/pg.sh stop "$pg_name" >/dev/null' EXIT
export SLUICE_SQLITE_EXT="$SLUICE_ROOT/target/release/sluice0.so"
export SLUICE_AGENT_BIN="$SLUICE_ROOT/target/release/sluice"
SLUICE_OUTAGE_DAYS=${1:-7} SLUICE_OUTAGE_BUDGET=${2:-50000000} SLUICE_OUTAGE_CAMERAS=${3:-1} \
SLUICE_OUTAGE_SLOWDOWN=1 SLUICE_OUTAGE_BASELINE=1 \
  cargo test --release -q -p sluice-tests --test outage -- --nocapture 2>&1 \
  | grep -E '^outage|panicked|error|FAILED|test result'
