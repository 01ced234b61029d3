#!/usr/bin/env bash
# The cost of publishing a table (issue 13) for the cloud's writers: UPDATEs
# of a published table beside the same table unpublished, measured in the
# same run on the same server (goal: at most 1.3x).
#
#   - single-row UPDATEs in a loop, each its own transaction (a procedure
#     that commits after each), and the same loop in one transaction;
#   - one bulk UPDATE of 100,000 rows (VACUUM before each);
# every case three times, the tables taking turns; the medians are printed.
#
# Beside sluice's statement-level capture trigger (transition tables) it
# measures a row-level trigger written the same way (one entry per row),
# to show which is cheaper.
#
# Usage: PGHOST=... PGPORT=... PGUSER=... bench/cloud/publish_cost.sh [db]
# (a database with the sluice extension available; the script creates and
# drops its own database, sluice_bench_publish, unless one is given).
set -euo pipefail
ROWS=${ROWS:-100000}
LOOP=${LOOP:-10000}
own_db=""
db=${1:-}
if [ -z "$db" ]; then
  db=sluice_bench_publish
  own_db=1
  psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
fi
trap '[ -n "$own_db" ] && psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"' EXIT
run() { psql -X -q -v ON_ERROR_STOP=1 -d "$db" "$@"; }

run <<SQL
CREATE EXTENSION IF NOT EXISTS sluice CASCADE;
DROP TABLE IF EXISTS t_plain, t_pub, t_row;
CREATE TABLE t_plain (id bigint PRIMARY KEY, location_id text NOT NULL, device text,
                      settings jsonb, v int, status text);
CREATE TABLE t_pub (LIKE t_plain INCLUDING ALL);
CREATE TABLE t_row (LIKE t_plain INCLUDING ALL);
INSERT INTO t_plain SELECT i, 'loc-' || (i % 50), CASE WHEN i % 3 = 0 THEN 'box-' || (i % 7) END,
       '{"fps": 10}', 0, 'pending' FROM generate_series(1, $ROWS) i;
INSERT INTO t_pub SELECT * FROM t_plain;
INSERT INTO t_row SELECT * FROM t_plain;
SELECT sluice.publish('t_pub', columns => ARRAY['id', 'location_id', 'device', 'settings', 'v'],
                      tenant_column => 'location_id', device_column => 'device');
-- The row-level alternative: the same entries, one trigger call per row.
CREATE FUNCTION capture_row() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
    IF TG_OP <> 'INSERT' AND (TG_OP = 'DELETE' OR (OLD.id, OLD.location_id, OLD.device) IS DISTINCT FROM (NEW.id, NEW.location_id, NEW.device)) THEN
        INSERT INTO sluice.changes (edge_table, position, tenant, device, key)
        VALUES ('t_row', pg_current_xact_id()::text::bigint, OLD.location_id, OLD.device, ARRAY[OLD.id::text]);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO sluice.changes (edge_table, position, tenant, device, key)
        VALUES ('t_row', pg_current_xact_id()::text::bigint, NEW.location_id, NEW.device, ARRAY[NEW.id::text]);
        PERFORM pg_notify('sluice_changes', 't_row');
    END IF;
    RETURN NULL;
END \$\$;
CREATE TRIGGER capture_row AFTER INSERT OR DELETE OR UPDATE OF id, location_id, device, settings, v ON t_row
    FOR EACH ROW WHEN (pg_trigger_depth() = 0) EXECUTE FUNCTION capture_row();
CREATE PROCEDURE loop_commit(t regclass, n int, INOUT ms float8 DEFAULT 0) LANGUAGE plpgsql AS \$\$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
    FOR i IN 1..n LOOP
        EXECUTE format('UPDATE %s SET v = v + 1 WHERE id = \$1', t) USING (i * 7919) % $ROWS + 1;
        COMMIT;
    END LOOP;
    ms := extract(epoch FROM clock_timestamp() - t0) * 1000;
END \$\$;
CREATE FUNCTION loop_one(t regclass, n int) RETURNS float8 LANGUAGE plpgsql AS \$\$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
    FOR i IN 1..n LOOP
        EXECUTE format('UPDATE %s SET v = v + 1 WHERE id = \$1', t) USING (i * 7919) % $ROWS + 1;
    END LOOP;
    RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END \$\$;
CREATE FUNCTION bulk(t regclass) RETURNS float8 LANGUAGE plpgsql AS \$\$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
    EXECUTE format('UPDATE %s SET v = v + 1', t);
    RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END \$\$;
VACUUM ANALYZE;
SQL

val() { run -A -t -c "$1"; }
median() { printf '%s\n' "$@" | sort -g | sed -n "$(( ($# + 1) / 2 ))p"; }

# Each case three times, the tables taking turns, and the median: the
# machine is shared, so one run of a case says little.
declare -A loopc loop1 bulkm
declare -A c1 c2 c3 o1 o2 o3 b1 b2 b3
for i in 1 2 3; do
  for t in t_plain t_pub t_row; do
    run -c "TRUNCATE sluice.changes" -c "VACUUM $t"
    eval "c$i[$t]=\$(val \"CALL loop_commit('$t', $LOOP)\")"
    run -c "TRUNCATE sluice.changes" -c "VACUUM $t"
    eval "o$i[$t]=\$(val \"SELECT loop_one('$t', $LOOP)\")"
    run -c "TRUNCATE sluice.changes" -c "VACUUM $t"
    eval "b$i[$t]=\$(val \"SELECT bulk('$t')\")"
  done
done
for t in t_plain t_pub t_row; do
  loopc[$t]=$(median "${c1[$t]}" "${c2[$t]}" "${c3[$t]}")
  loop1[$t]=$(median "${o1[$t]}" "${o2[$t]}" "${o3[$t]}")
  bulkm[$t]=$(median "${b1[$t]}" "${b2[$t]}" "${b3[$t]}")
done
entries=$(val "SELECT count(*) FROM sluice.changes WHERE edge_table = 't_row'")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
printf '\nUPDATE cost of a published table (%d rows; PostgreSQL %s, fsync=%s; medians of 3)\n' "$ROWS" "$(val 'SHOW server_version')" "$(val 'SHOW fsync')"
printf '%-44s %12s %12s %12s %9s %9s\n' "case" "unpublished" "published" "row-level" "pub/unp" "row/unp"
line() { printf '%-44s %10.0f ms %9.0f ms %9.0f ms %9s %9s\n' "$1" "$2" "$3" "$4" "$(ratio "$3" "$2")" "$(ratio "$4" "$2")"; }
line "$LOOP single-row UPDATEs, one commit each" "${loopc[t_plain]}" "${loopc[t_pub]}" "${loopc[t_row]}"
line "$LOOP single-row UPDATEs, one transaction" "${loop1[t_plain]}" "${loop1[t_pub]}" "${loop1[t_row]}"
line "bulk UPDATE of $ROWS rows" "${bulkm[t_plain]}" "${bulkm[t_pub]}" "${bulkm[t_row]}"
printf '(last bulk run of the row-level trigger wrote %s change entries)\n' "$entries"
