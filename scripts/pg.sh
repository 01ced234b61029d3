#!/usr/bin/env bash
# Starts and stops a throwaway PostgreSQL 17 (with pgvector, and the sluice
# extension once scripts/build.sh installed it) on 127.0.0.1, for the tests,
# the demo and the benchmarks. PostgreSQL refuses to run as root, so under root
# it runs as the OS user sluicepg (created by scripts/setup.sh).
#
#   eval "$(scripts/pg.sh start NAME)"   # prints export PGHOST=... lines
#   scripts/pg.sh stop NAME
#   scripts/pg.sh url NAME               # postgres://... of a running server
#
# Data lives in .cache/run/NAME (recreated at every start: throwaway).
# SLUICE_PG_DURABLE=1 keeps fsync on (default off: faster tests).
set -euo pipefail
source "$(dirname "$0")/env.sh"

cmd=${1:-}; name=${2:-default}
run_dir="$SLUICE_CACHE/run/$name"
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u "$SLUICE_PG_USER" -- "$@"; else "$@"; fi
}

case "$cmd" in
start)
  [ -x "$SLUICE_PG/bin/pg_ctl" ] || { echo "pg.sh: PostgreSQL is not installed; run scripts/setup.sh" >&2; exit 1; }
  if [ -f "$run_dir/env" ] && [ -f "$run_dir/data/postmaster.pid" ]; then
    "$0" stop "$name" >/dev/null 2>&1 || true
  fi
  rm -rf "$run_dir"
  mkdir -p "$run_dir"
  # The socket path must stay short (about 107 bytes): keep it in /tmp.
  sock=$(mktemp -d "/tmp/sluice-pg.XXXXXX")
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  if [ "$(id -u)" -eq 0 ]; then chown "$SLUICE_PG_USER:" "$run_dir" "$sock"; fi
  as_pg "$SLUICE_PG/bin/initdb" -D "$run_dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$run_dir/initdb.log" 2>&1 \
    || { cat "$run_dir/initdb.log" >&2; echo "pg.sh: initdb failed" >&2; exit 1; }
  {
    echo "listen_addresses = '127.0.0.1'"
    echo "port = $port"
    echo "unix_socket_directories = '$sock'"
    echo "max_connections = 300"
    echo "shared_buffers = 256MB"
    echo "log_min_messages = warning"
    if [ "${SLUICE_PG_DURABLE:-0}" != 1 ]; then
      echo "fsync = off"; echo "synchronous_commit = off"; echo "full_page_writes = off"
    fi
  } | as_pg tee -a "$run_dir/data/postgresql.conf" >/dev/null
  as_pg "$SLUICE_PG/bin/pg_ctl" -D "$run_dir/data" -l "$run_dir/data/server.log" -w -t 60 start >/dev/null \
    || { cat "$run_dir/data/server.log" >&2; echo "pg.sh: PostgreSQL did not start" >&2; exit 1; }
  cat >"$run_dir/env" <<ENV
export PGHOST=127.0.0.1
export PGPORT=$port
export PGUSER=postgres
export PGDATABASE=postgres
export SLUICE_PG_SOCKET=$sock
export SLUICE_PG_DATA=$run_dir/data
export SLUICE_TEST_PG_URL=postgres://postgres@127.0.0.1:$port/postgres
ENV
  cat "$run_dir/env"
  ;;
stop)
  if [ -f "$run_dir/data/postmaster.pid" ]; then
    as_pg "$SLUICE_PG/bin/pg_ctl" -D "$run_dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  if [ -f "$run_dir/env" ]; then
    sock=$(sed -n 's/^export SLUICE_PG_SOCKET=//p' "$run_dir/env")
    [ -n "$sock" ] && rm -rf "$sock"
  fi
  rm -rf "$run_dir"   # throwaway: nothing of a stopped server is kept
  ;;
url)
  sed -n 's/^export SLUICE_TEST_PG_URL=//p' "$run_dir/env"
  ;;
*)
  echo "usage: scripts/pg.sh start|stop|url NAME" >&2; exit 2 ;;
esac
