#!/usr/bin/env bash
# The demo: sluice's main job end to end, on a local SQLite file and a local
# PostgreSQL 17 that this script starts (and stops at the end).
#   1. the cloud schema (migrations/) in a fresh PostgreSQL database, by `sluice migrate`
#   2. the default edge schema (sql/edge_schema.sql) in a fresh SQLite file
#   3. 30 minutes of 4 cameras' data written through sluice_insert
#   4. the agent's jobs: 5-minute rollups, key-frame embeddings (ONNX), sync
#   5. updates at the edge and more data, synced again
#   6. what arrived, queried in PostgreSQL: rollups, sketches merged into
#      hourly percentiles, key frames found by meaning
#   7. cloud to edge: camera configurations published by the cloud, received
#      by the box, applied by its pipeline, their statuses back in the cloud
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

cat >"$work/sluice.toml" <<TOML
[device]
id = "store-042-box-1"

[edge]
database = "edge.db"
extension = "$SLUICE_ROOT/target/release/sluice0.so"

[cloud]
url = "postgres://postgres@127.0.0.1:$PGPORT/cloud"
migrations = "$SLUICE_ROOT/migrations"

[pull]
tenant = "store-042"

[embed]
[embed.model]
model = "$SLUICE_MODEL_DIR/model.onnx"
onnxruntime = "$SLUICE_ORT_LIB"
TOML
export SLUICE_LOG=warn
agent=(target/release/sluice)
cfg=(--config "$work/sluice.toml")

echo
echo "== 1. cloud: database 'cloud', schema applied by sluice migrate"
"${PSQL[@]}" -d postgres -c "CREATE DATABASE cloud"
"${agent[@]}" migrate "${cfg[@]}" 2>&1 | grep -v NOTICE | sed 's/^/   /'
echo "== 2. edge: $work/edge.db with sql/edge_schema.sql"
sqlite3 "$work/edge.db" ".load target/release/sluice0" ".read sql/edge_schema.sql" >/dev/null

echo "== 3. pipeline: 30 minutes of 4 cameras through sluice_insert"
/usr/bin/python3 scripts/simulate.py --db "$work/edge.db" --ext target/release/sluice0 --cameras 4 --minutes 30 --ago 40
sqlite3 "$work/edge.db" ".load target/release/sluice0" \
  "SELECT '   pending: ' || group_concat(tbl || ' ' || sluice_pending(tbl), ', ') FROM sluice_tables;"

echo "== 4. the agent's jobs, as 'sluice run' schedules them: rollup, embed, sync"
"${agent[@]}" rollup "${cfg[@]}" | sed 's/^/   /'
"${agent[@]}" embed "${cfg[@]}" | sed 's/^/   /'
"${agent[@]}" sync "${cfg[@]}" --quiet
echo
echo "== 5. the pipeline closes its sessions and renames a camera (updates of mutable"
echo "      tables make those rows pending again); 10 more minutes of data; sync again"
sqlite3 "$work/edge.db" ".load target/release/sluice0" \
  "UPDATE sessions SET ended_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE ended_at IS NULL;" \
  "UPDATE cameras SET name = 'Entrance' WHERE camera_id = 'cam-01';"
/usr/bin/python3 scripts/simulate.py --db "$work/edge.db" --ext target/release/sluice0 --cameras 4 --minutes 10 --ago 10 --seed 7
"${agent[@]}" rollup "${cfg[@]}" | sed 's/^/   /'
"${agent[@]}" embed "${cfg[@]}" | sed 's/^/   /'
"${agent[@]}" sync "${cfg[@]}" --quiet
echo
"${agent[@]}" status "${cfg[@]}"

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
\echo raw metrics vs their 5-minute rollup (computed at the edge)
SELECT (SELECT count(*) FROM metrics) AS raw_samples, (SELECT count(*) FROM metrics_5m) AS windows,
       round((SELECT count(*) FROM metrics)::numeric / (SELECT count(*) FROM metrics_5m), 1) AS reduction;
\echo hourly processing-time percentiles per camera, merged from the 5-minute sketches (no raw data)
SELECT camera_id, date_trunc('hour', window_start) AS hour, sum(samples) AS samples,
       round(sluice.sketch_quantile(sluice.sketch_merge(processing_ms_sketch), 0.5)::numeric, 1) AS p50_ms,
       round(sluice.sketch_quantile(sluice.sketch_merge(processing_ms_sketch), 0.95)::numeric, 1) AS p95_ms
FROM metrics_5m GROUP BY 1, 2 ORDER BY 1, 2 LIMIT 6;
\echo sessions (the first ones were closed after they had synced: the update synced too)
SELECT camera_id, started_at, ended_at FROM sessions ORDER BY camera_id, started_at;
\echo cameras
SELECT camera_id, name FROM cameras ORDER BY camera_id;
\echo devices as the cloud sees them
SELECT device_id, batches, rows, clock_skew_ms, last_batch_at FROM sluice.devices;
SQL
q="a courier bringing parcels"
echo "key frames nearest in meaning to \"$q\" (embedded by the same model at the edge):"
"${PSQL[@]}" -d cloud -c "SELECT description, count(*) AS frames, round(min(distance)::numeric, 3) AS distance FROM (SELECT row_data->>'description' AS description, distance FROM sluice.nearest('key_frames', '$("${agent[@]}" embed "${cfg[@]}" --query "$q")', 40)) s GROUP BY 1 ORDER BY 3 LIMIT 3"
echo
echo "== 7. cloud to edge: the cloud publishes camera configurations (applied_configs);"
echo "      the box receives them on its next sync, its pipeline applies what is due"
echo "      (sql/edge_configs.sql), and the statuses come back with the sync after"
"${PSQL[@]}" -d cloud <<'SQL'
INSERT INTO applied_configs (location_id, config_id, camera_id, device_id, version, settings, deadline) VALUES
  ('store-042', 'cfg-1', 'cam-01', NULL, 1, '{"fps": 10}', NULL),
  ('store-042', 'cfg-2', 'cam-01', NULL, 2, '{"fps": 15}', NULL),
  ('store-042', 'cfg-3', 'cam-02', 'store-042-box-1', 1, '{"fps": 5}', now() - interval '1 minute'),
  ('store-042', 'cfg-4', 'cam-03', 'store-042-box-1', 1, '{"zones": [1, 2, 3]}', now() + interval '1 hour'),
  ('store-042', 'cfg-5', 'cam-01', 'store-042-box-2', 1, '{"fps": 30}', NULL);
SQL
"${agent[@]}" sync "${cfg[@]}" --quiet | grep -E '^(pull |applied_configs )' | sed 's/^/   /'
sqlite3 -header -column "$work/edge.db" ".load target/release/sluice0" \
  "SELECT config_id, camera_id, version, settings, status FROM applied_configs ORDER BY config_id;" | sed 's/^/   received: /'
sqlite3 "$work/edge.db" ".load target/release/sluice0" ".read sql/edge_configs.sql" \
  "UPDATE applied_configs SET status = 'success', applied_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE status = 'pending';" >/dev/null
"${agent[@]}" sync "${cfg[@]}" --quiet | grep -E '^(pull |applied_configs )' | sed 's/^/   /'
"${PSQL[@]}" -d cloud <<'SQL'
\echo configurations as the cloud sees them (cfg-1 superseded by cfg-2, cfg-3 too late, cfg-5 for another box)
SELECT config_id, camera_id, device_id, version, status, applied_at IS NOT NULL AS applied FROM applied_configs ORDER BY config_id;
\echo which box runs which version
SELECT camera_id, device_id, version FROM config_versions ORDER BY camera_id;
\echo subscriptions as the cloud sees them
SELECT device_id, edge_table, checkpoint > 0 AS synced, pending FROM sluice.subscription_status;
SQL
if [ "$keep" = 1 ]; then
  echo; echo "PostgreSQL keeps running: psql -h 127.0.0.1 -p $PGPORT -U postgres cloud   (stop: scripts/pg.sh stop demo)"
fi
