#!/usr/bin/env bash
# Issue 12's cost goal for deletes: a tracked insert into a mutable table
# with delete tracking beside one without it, same run, same build
# (bench/mutable_insert.py; ROWS=50000 ROUNDS=5). Prints a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
[ -f target/release/sluice0.so ] || scripts/build.sh
SLUICE_SQLITE_EXT="${SLUICE_SQLITE_EXT:-$SLUICE_ROOT/target/release/sluice0.so}" \
  /usr/bin/python3 bench/mutable_insert.py
