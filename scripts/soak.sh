#!/usr/bin/env bash
# Soak: N fault-injection trials (tests/e2e/faults.rs) against a PostgreSQL of
# their own, then the tally: "N trials, 0 lost, 0 duplicated, 0 reverted".
#   scripts/soak.sh 500            # random first seed
#   SLUICE_SEED=42 scripts/soak.sh 1   # reproduce one trial
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
n=${1:-100}
[ -x target/release/sluice ] && [ -f target/release/sluice0.so ] || scripts/build.sh
pg_name="soak-$$"
eval "$(scripts/pg.sh start "$pg_name")"
trap 'scripts/pg.sh stop "$pg_name"' EXIT
export SLUICE_SQLITE_EXT="$SLUICE_ROOT/target/release/sluice0.so"
export SLUICE_AGENT_BIN="$SLUICE_ROOT/target/release/sluice"
out=$(mktemp /tmp/sluice-soak.XXXXXX)
status=0
SLUICE_TRIALS=$n cargo test --release -p sluice-tests --test faults -- --nocapture 2>&1 | tee "$out" || status=$?
echo
grep -E '^[0-9]+ trials, ' "$out" || echo "no tally: the run failed before the end (see above)"
rm -f "$out"
exit $status
