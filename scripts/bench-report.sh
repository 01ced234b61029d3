#!/usr/bin/env bash
# Regenerates the benchmark report: runs every benchmark command of the
# project, keeps each one's full output in docs/bench-output/NAME.txt, and
# rebuilds the generated summary at the top of docs/BENCHMARKS.md with its
# charts (docs/img/bench-*.png) from those outputs.
#
#   bash scripts/bench-report.sh                 # every benchmark (about 20 minutes on 2 idle cores)
#   ONLY=edge,sync bash scripts/bench-report.sh  # some; the others' saved outputs are reused
#   SAVED=1 bash scripts/bench-report.sh         # no benchmark: the report from the saved outputs
#
# Benchmarks and their commands (each prints its figure beside its baseline,
# measured in the same run):
#   edge    scripts/bench-edge.sh       insert, tracking, ack, rollup, storage
#   cloud   scripts/bench-cloud.sh      ingest vs COPY and INSERT, replay
#   cloud-retention  BENCH_MODE=retention scripts/bench-cloud.sh   5M expired rows under ingest
#   cloud-search     BENCH_MODE=search scripts/bench-cloud.sh      hybrid search on 100k rows
#   sync    scripts/bench-sync.sh       end-to-end sync vs COPY, bytes per row, outage, idle RSS
#   embed   scripts/bench-embed.sh      embeddings vs Python onnxruntime
#   fleet   scripts/bench-fleet.sh      100 devices, direct and through pgbouncer
#   outage  scripts/bench-outage.sh     seven days offline under a storage budget
#   crash   scripts/crash.sh 10         SIGKILL mid-call, 10 kills per function
#   fuzz    scripts/fuzz.sh 1000000     decoder fuzzing executions
#   soak    scripts/soak.sh 20          fault-injection trials
# The charts need matplotlib: it is installed on first use into .cache/py.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

all="edge cloud cloud-retention cloud-search sync embed fleet outage crash fuzz soak"
declare -A cmd=(
  [edge]="bash scripts/bench-edge.sh"
  [cloud]="bash scripts/bench-cloud.sh"
  [cloud-retention]="env BENCH_MODE=retention bash scripts/bench-cloud.sh"
  [cloud-search]="env BENCH_MODE=search bash scripts/bench-cloud.sh"
  [sync]="bash scripts/bench-sync.sh"
  [embed]="bash scripts/bench-embed.sh"
  [fleet]="bash scripts/bench-fleet.sh"
  [outage]="bash scripts/bench-outage.sh"
  [crash]="bash scripts/crash.sh 10"
  [fuzz]="bash scripts/fuzz.sh 1000000"
  [soak]="bash scripts/soak.sh 20"
)
out=docs/bench-output
mkdir -p "$out" docs/img

if [ -z "${SAVED:-}" ]; then
  wanted=${ONLY:-$all}
  for name in ${wanted//,/ }; do
    [ -n "${cmd[$name]:-}" ] || { echo "bench-report: unknown benchmark '$name' (known: $all)" >&2; exit 2; }
    echo "[bench-report] $name: ${cmd[$name]}" >&2
    tmp=$(mktemp)
    {
      echo "# command: ${cmd[$name]}"
      echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  commit: $(git rev-parse --short HEAD)  cores: $(nproc)  load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    } >"$tmp"
    t0=$SECONDS
    status=0
    ${cmd[$name]} >>"$tmp" 2>&1 || status=$?
    echo "# exit status: $status  seconds: $((SECONDS - t0))  load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$tmp"
    mv "$tmp" "$out/$name.txt"
    [ "$status" -eq 0 ] || echo "[bench-report] $name failed (exit $status); its output is in $out/$name.txt" >&2
  done
fi

py="$SLUICE_CACHE/py/bin/python"
if [ ! -x "$py" ]; then
  python3 -m venv "$SLUICE_CACHE/py"
fi
if ! "$py" -c 'import matplotlib' 2>/dev/null; then
  echo "[bench-report] installing matplotlib into $SLUICE_CACHE/py" >&2
  "$py" -m pip install --quiet matplotlib
fi
"$py" scripts/bench_report.py "$out" docs/BENCHMARKS.md docs/img
