#!/usr/bin/env bash
# Benchmark of the end-to-end sync (issue 5): 1M rows via the agent vs COPY,
# bytes per row, the 24,000-row outage case, idle RSS. Prints a markdown table
# (docs/BENCHMARKS.md records it). BENCH_ROWS=100000 for a quick run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/setup.sh >/dev/null
scripts/build.sh
eval "$(scripts/pg.sh start bench-sync)"
trap 'scripts/pg.sh stop bench-sync' EXIT
/usr/bin/python3 bench/sync_bench.py
