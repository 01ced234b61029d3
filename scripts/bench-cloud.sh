#!/usr/bin/env bash
# Benchmarks of the cloud extension (issue 4); each prints a markdown table
# (docs/BENCHMARKS.md, "Cloud ingest (issue 4)").
#   bash scripts/bench-cloud.sh              # ingest: BENCH_ROWS (default
#     1,000,000) rows of the default division_states shape in batches of 1,000
#     through sluice.ingest, beside COPY of the same rows and a client's
#     multi-row INSERT ... ON CONFLICT DO UPDATE, into the same table with the
#     same indexes, plus the replay cost
#   BENCH_ROWS=100000 bash scripts/bench-cloud.sh
#   BENCH_MODE=retention bash scripts/bench-cloud.sh   # BENCH_ROWS (default
#     5,000,000) expired rows removed by CALL sluice.run_retention() while
#     batches are ingested: ingest latency p50/p99 with and without retention
#   BENCH_MODE=search bash scripts/bench-cloud.sh      # BENCH_ROWS (default
#     100,000) key frames: p50/p95 of sluice.search, sluice.nearest and
#     sluice.hybrid_search (k = 10) beside hand-written SQL on the same indexes
# SLUICE_BENCH_NO_INSTALL=1 skips installing the release extension (when it
# is already installed).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
log() { printf '[bench-cloud] %s\n' "$*" >&2; }

if [ "${SLUICE_BENCH_NO_INSTALL:-0}" != 1 ]; then
  log "installing the release build of the extension"
  mkdir -p "$SLUICE_CACHE/logs"
  (cd pg_ext && cargo pgrx install --release --pg-config "$SLUICE_PG/bin/pg_config") \
    >"$SLUICE_CACHE/logs/pgrx-install-bench.log" 2>&1 \
    || { cat "$SLUICE_CACHE/logs/pgrx-install-bench.log" >&2; exit 1; }
fi
log "building the benchmark client"
cargo build --release --quiet -p sluice-bench-cloud

eval "$(scripts/pg.sh start bench-cloud)"
trap 'scripts/pg.sh stop bench-cloud' EXIT
createdb bench
for f in migrations/*.sql; do
  psql -X -q -v ON_ERROR_STOP=1 -d bench -f "$f" >/dev/null
done
log "server on port $PGPORT, database bench, migrations applied"
BENCH_DB=bench target/release/sluice-bench-cloud
