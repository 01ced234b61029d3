#!/usr/bin/env bash
# Builds the PostgreSQL extension for PostgreSQL 15 (Debian 12's own server),
# to check that sluice still compiles against it. Installs Debian's
# postgresql-server-dev-15 on first use and registers its pg_config with pgrx
# beside the project's PostgreSQL 17.
#
#   bash scripts/build-pg15.sh            # compile check (cargo build, pg15 feature)
#   bash scripts/build-pg15.sh package    # also `cargo pgrx package` into target/pg15-package
#
# Running the extension on 15 needs pgvector built for 15 (`CREATE EXTENSION
# sluice CASCADE` requires it); Debian 12 has no postgresql-15-pgvector
# package, so this script stops at the build.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
log() { printf '[build-pg15] %s\n' "$*" >&2; }

pg15=/usr/lib/postgresql/15/bin/pg_config
if [ ! -x "$pg15" ] || [ ! -f /usr/include/postgresql/15/server/postgres.h ]; then
  log "installing Debian's postgresql-server-dev-15"
  sudo_=(); [ "$(id -u)" -eq 0 ] || sudo_=(sudo)
  "${sudo_[@]}" apt-get install -y -q postgresql-server-dev-15 >/dev/null
fi
if ! grep -q "$pg15" "$PGRX_HOME/config.toml" 2>/dev/null; then
  log "cargo pgrx init --pg15 $pg15 (keeping pg17)"
  cargo pgrx init --pg15 "$pg15" --pg17 "$SLUICE_PG/bin/pg_config" >/dev/null
fi
log "cargo build -p sluice-pg --features pg15"
cargo build --quiet -p sluice-pg --no-default-features --features pg15
log "built for PostgreSQL $("$pg15" --version | awk '{print $2}')"
if [ "${1:-}" = package ]; then
  (cd pg_ext && cargo pgrx package --pg-config "$pg15" --no-default-features --features pg15 --out-dir ../target/pg15-package)
  log "package in target/pg15-package"
fi
