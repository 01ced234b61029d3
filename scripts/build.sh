#!/usr/bin/env bash
# Builds what the tests and the demo run, in release mode:
#   target/release/sluice0.so   the SQLite extension
#   target/release/sluice       the agent
#   the PostgreSQL extension, installed into .cache/pg17 (cargo pgrx install)
# Cargo's own incremental builds make a second run fast.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$SLUICE_ROOT"
log() { printf '[build] %s\n' "$*" >&2; }

log "sqlite_ext -> target/release/sluice0.so"
# Built alone: its rusqlite (loadable_extension) must not unify with the agent's.
cargo build --release --quiet -p sluice-sqlite
# Copy then rename: rewriting the file in place would crash any process
# that has it loaded (a running agent, a test).
cp -f target/release/libsluice0.so target/release/sluice0.so.tmp
mv -f target/release/sluice0.so.tmp target/release/sluice0.so

log "agent -> target/release/sluice"
cargo build --release --quiet -p sluice-agent

log "pg_ext -> installed into $SLUICE_PG"
mkdir -p "$SLUICE_CACHE/logs"
if ! (cd pg_ext && cargo pgrx install --release --pg-config "$SLUICE_PG/bin/pg_config") >"$SLUICE_CACHE/logs/pgrx-install.log" 2>&1; then
  cat "$SLUICE_CACHE/logs/pgrx-install.log" >&2
  echo "[build] cargo pgrx install failed" >&2
  exit 1
fi
# pgrx installs the generated script of this version and the upgrade
# scripts; the install script of 0.1.0 (kept in pg_ext/sql) is installed
# too, so that an upgrade from 0.1.0 can be tested (tests/sql/upgrade.sql)
# and a 0.1.0 database restored from a dump can be brought up to date.
cp -f pg_ext/sql/sluice--0.1.0.sql "$("$SLUICE_PG/bin/pg_config" --sharedir)/extension/"
