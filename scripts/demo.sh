#!/usr/bin/env bash
# The demo: sluice's main job end to end, on a local SQLite file and a local
# PostgreSQL 17 that this script starts (and stops at the end).
#   1. the cloud schema (migrations/) in a fresh PostgreSQL database
#   2. the default edge schema (sql/edge_schema.sql) in a fresh SQLite file
#   3. 30 minutes of 4 cameras' data written through sluice_insert
#   4. `sluice sync` moves every pending batch and acknowledges it
#   5. what arrived, queried in PostgreSQL
# Options: --keep leaves PostgreSQL running and prints how to connect.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
keep=0; [ "${1:-}" = "--keep" ] && keep=1

scripts/setup.sh
scripts/build.sh

work="$SLUICE_CACHE/demo"
rm -rf "$work"; mkdir -p "$work"
eval "$(scripts/pg.sh start demo)"
if [ "$keep" = 0 ]; then trap 'scripts/pg.sh stop demo' EXIT; fi
PSQL=("$SLUICE_PG/bin/psql" -X -q -v ON_ERROR_STOP=1)

echo
echo "== 1. cloud: database 'cloud' with CREATE EXTENSION sluice CASCADE and migrations/"
"${PSQL[@]}" -d postgres -c "CREATE DATABASE cloud"
for f in migrations/*.sql; do "${PSQL[@]}" -d cloud -f "$f" >/dev/null; echo "   applied $f"; done

echo "== 2. edge: $work/edge.db with sql/edge_schema.sql"
sqlite3 "$work/edge.db" ".load target/release/sluice0" ".read sql/edge_schema.sql" >/dev/null

echo "== 3. pipeline: 30 minutes of 4 cameras through sluice_insert"
/usr/bin/python3 scripts/simulate.py --db "$work/edge.db" --ext target/release/sluice0 --cameras 4 --minutes 30 --ago 40
sqlite3 "$work/edge.db" ".load target/release/sluice0" \
  "SELECT '   pending: ' || group_concat(tbl || ' ' || sluice_pending(tbl), ', ') FROM sluice_tables;"

cat >"$work/sluice.toml" <<TOML
[device]
id = "store-042-box-1"

[edge]
database = "edge.db"
extension = "$SLUICE_ROOT/target/release/sluice0.so"

[cloud]
url = "postgres://postgres@127.0.0.1:$PGPORT/cloud"
TOML

export SLUICE_LOG=warn
echo "== 4. sluice sync --config $work/sluice.toml"
target/release/sluice sync --config "$work/sluice.toml"

echo
echo "== 5. the pipeline closes its sessions and renames a camera (updates of mutable"
echo "      tables make those rows pending again); 10 more minutes of data; sync again"
sqlite3 "$work/edge.db" ".load target/release/sluice0" \
  "UPDATE sessions SET ended_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE ended_at IS NULL;" \
  "UPDATE cameras SET name = 'Entrance' WHERE camera_id = 'cam-01';"
/usr/bin/python3 scripts/simulate.py --db "$work/edge.db" --ext target/release/sluice0 --cameras 4 --minutes 10 --ago 10 --seed 7
target/release/sluice sync --config "$work/sluice.toml"
echo
target/release/sluice status --config "$work/sluice.toml"

echo
echo "== 6. in PostgreSQL"
"${PSQL[@]}" -d cloud <<'SQL'
\echo rows per table
SELECT 'division_states' AS "table", count(*) FROM division_states UNION ALL
SELECT 'table_states', count(*) FROM table_states UNION ALL
SELECT 'metrics', count(*) FROM metrics UNION ALL
SELECT 'key_frames', count(*) FROM key_frames UNION ALL
SELECT 'sessions', count(*) FROM sessions UNION ALL
SELECT 'cameras', count(*) FROM cameras UNION ALL
SELECT 'health_metrics', count(*) FROM health_metrics;
\echo latest division state per camera
SELECT DISTINCT ON (camera_id) camera_id, state, total_staff, recorded_at
FROM division_states ORDER BY camera_id, recorded_at DESC;
\echo busiest 5-minute windows (people per sample)
SELECT date_bin('5 minutes', recorded_at, timestamptz '2000-01-01') AS window, round(avg(people_count), 1) AS avg_people, max(people_count) AS max_people
FROM metrics GROUP BY 1 ORDER BY 2 DESC LIMIT 3;
\echo sessions (the first ones were closed after they had synced: the update synced too)
SELECT camera_id, started_at, ended_at FROM sessions ORDER BY camera_id, started_at;
\echo cameras
SELECT camera_id, name FROM cameras ORDER BY camera_id;
\echo devices as the cloud sees them
SELECT * FROM sluice.devices;
SQL
if [ "$keep" = 1 ]; then
  echo; echo "PostgreSQL keeps running: psql -h 127.0.0.1 -p $PGPORT -U postgres cloud   (stop: scripts/pg.sh stop demo)"
fi
