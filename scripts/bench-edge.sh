#!/usr/bin/env bash
# Benchmarks of the SQLite extension (issue 3), each beside its baseline
# measured in the same run; prints a markdown table (docs/BENCHMARKS.md,
# "Edge extension (issue 3)", records it). BENCH_ROWS=100000 for a quick run;
# BENCH_ONLY=insert stops both parts after the insert measurements.
#   - bench/edge (Rust, built on its own so its rusqlite is not unified with
#     the extension's): insert vs a prepared statement and json_each,
#     tracked vs untracked, ack cost, rollup vs GROUP BY, sluice_apply of a
#     snapshot vs a prepared INSERT (issue 13; BENCH_ONLY=apply: only that);
#   - bench/edge/bench_edge.py (Debian's python3): insert vs executemany at
#     10, 100 and 1,000 rows a call (a commit each; the JSON built in the
#     timing, and beforehand), local storage of one camera-day (skipped with
#     BENCH_ONLY=insert).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
rows=${BENCH_ROWS:-1000000}
work=${BENCH_DIR:-/tmp/sluice-bench-edge}
bash scripts/build.sh
cargo build --release --quiet -p sluice-bench-edge
mkdir -p "$work"
echo "rows: $rows, work dir: $work, SQLite $(/usr/bin/python3 -c 'import sqlite3; print(sqlite3.sqlite_version)'), $(nproc) cores" >&2
target/release/sluice-bench-edge target/release/sluice0.so "$work" "$rows"
/usr/bin/python3 bench/edge/bench_edge.py target/release/sluice0 "$work" "$rows" 
rm -f "$work"/*.db "$work"/*.db-wal "$work"/*.db-shm
