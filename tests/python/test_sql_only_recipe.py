"""The SQL-only sync recipe of docs/sql-only-sync.md, run as written against
a real PostgreSQL started by scripts/test.sh (PGHOST/PGPORT/PGUSER are set)."""
import json
import os
import pathlib
import re
import sqlite3
import subprocess
import sys
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def require_env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run the tests through scripts/test.sh, which builds the extension and starts PostgreSQL")
    return value


def psql(sql, db, check=True):
    return subprocess.run(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", db],
                          input=sql, capture_output=True, text=True, check=check)


def recipe_script():
    text = (ROOT / "docs" / "sql-only-sync.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "docs/sql-only-sync.md must hold exactly one python block"
    return blocks[0]


def test_sql_only_recipe_syncs_every_row_once(tmp_path):
    ext = require_env("SLUICE_SQLITE_EXT")
    require_env("PGPORT")
    db = f"recipe_{uuid.uuid4().hex[:8]}"
    psql(f"CREATE DATABASE {db};", "postgres")
    try:
        for f in sorted((ROOT / "migrations").glob("*.sql")):
            psql(f.read_text(), db)

        edge_path = tmp_path / "edge.db"
        edge = sqlite3.connect(edge_path)
        edge.enable_load_extension(True)
        edge.load_extension(ext)
        edge.executescript((ROOT / "sql" / "edge_schema.sql").read_text())
        edge.execute("SELECT sluice_device('recipe-box')")
        rows = [{"camera_id": f"cam-{i % 3}", "location_id": "store-7",
                 "recorded_at": f"2026-11-22T10:{i // 60 % 60:02d}:{i % 60:02d}.000Z",
                 "people_count": i % 11, "processing_ms": i / 8} for i in range(2500)]
        edge.execute("SELECT sluice_insert('metrics', ?)", (json.dumps(rows),))
        edge.commit()

        script = tmp_path / "sync.py"
        script.write_text(recipe_script())
        env = dict(os.environ, EDGE_DB=str(edge_path), SLUICE_EXT=ext, TABLES="metrics", PGDATABASE=db)
        run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert "metrics: 3 batches sent, 0 replays" in run.stdout

        # Exactly once, same content.
        cloud = psql("SELECT id, camera_id, people_count, processing_ms, "
                     "to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') "
                     "FROM metrics ORDER BY id;", db).stdout.split()
        local = [f"{i}|{c}|{p}|{m:g}|{t}" for i, c, p, m, t in
                 edge.execute("SELECT id, camera_id, people_count, processing_ms, recorded_at FROM metrics ORDER BY id")]
        assert len(cloud) == 2500
        assert cloud == local
        assert edge.execute("SELECT sluice_pending('metrics')").fetchone()[0] == 0

        # Running the recipe again sends nothing.
        run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True)
        assert "metrics: 0 batches sent" in run.stdout, run.stdout + run.stderr
    finally:
        psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE);", "postgres", check=False)
