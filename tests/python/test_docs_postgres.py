"""Every ```sql example of docs/postgres.md, run in order in a fresh database
through psql, must print exactly its `-- result:` lines."""
import os
import pathlib
import re
import subprocess
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def psql(sql, db):
    return subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db],
                          input=sql, capture_output=True, text=True)


def test_every_postgres_doc_example_runs_and_prints_its_result():
    if not os.environ.get("PGPORT"):
        pytest.fail("PGPORT is not set: run the tests through scripts/test.sh, which starts PostgreSQL")
    text = (ROOT / "docs" / "postgres.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", text, re.S)
    assert blocks, "docs/postgres.md has no sql examples"
    db = f"docs_{uuid.uuid4().hex[:8]}"
    assert psql(f"CREATE DATABASE {db};", "postgres").returncode == 0
    failures = []
    try:
        for i, block in enumerate(blocks):
            lines = block.rstrip("\n").split("\n")
            if "-- result:" in lines:
                k = lines.index("-- result:")
                sql = "\n".join(lines[:k])
                expected = [l[3:] if l.startswith("-- ") else l[2:] for l in lines[k + 1:]]
            else:
                sql, expected = block, None
            r = psql(sql, db)
            got = r.stdout.rstrip("\n").split("\n") if r.stdout else []
            if r.returncode != 0 or (expected is not None and got != expected):
                failures.append(f"block {i}:\n{sql}\nexpected {expected}\ngot {got}\nstderr {r.stderr}")
    finally:
        psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE);", "postgres")
    assert not failures, "\n\n".join(failures)
