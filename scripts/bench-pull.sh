#!/usr/bin/env bash
# Benchmark of the pull, cloud to edge (issue 13): convergence latency from a
# cloud commit to the row at each box of a fleet (BENCH_BOXES, default 100)
# with LISTEN and with polling, and the initial download of BENCH_ROWS rows
# (default 200000) beside psql COPY into SQLite. Prints markdown tables
# (docs/BENCHMARKS.md records them).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
scripts/setup.sh >/dev/null
scripts/build.sh
eval "$(scripts/pg.sh start bench-pull)"
trap 'scripts/pg.sh stop bench-pull' EXIT
/usr/bin/python3 bench/pull_bench.py
