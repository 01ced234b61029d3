"""Under PRAGMA trusted_schema=OFF (SQLite's recommended hardening) views
and triggers may call only functions flagged SQLITE_INNOCUOUS: the
extension's own views and a user's views over its pure and read-only
functions must work, in Python's sqlite3 and in the sqlite3 shell; the
functions that write stay direct-only."""

import json
import os
import shutil
import sqlite3
import subprocess

import pytest

from conftest import connect

INNOCUOUS = 0x200000
DIRECTONLY = 0x80000

VIEWS = {
    "sluice_status": "SELECT * FROM sluice_status ORDER BY 1",
    "sluice_budget": "SELECT * FROM sluice_budget",
    "user_buckets": "SELECT * FROM user_buckets ORDER BY 1",
    "user_stats": "SELECT * FROM user_stats",
    "user_tracked": "SELECT * FROM user_tracked",
}


def make_edge(con):
    con.executescript(
        """
        CREATE TABLE m (id INTEGER PRIMARY KEY, cam TEXT, ts TEXT, people INTEGER);
        INSERT INTO m (cam, ts, people) VALUES
          ('c1', '2026-11-22T10:00:03.000Z', 2), ('c1', '2026-11-22T10:01:03.000Z', 4),
          ('c1', '2026-11-22T10:05:03.000Z', 9), ('c2', '2026-11-22T10:02:00.000Z', 1);
        SELECT sluice_device('box-1');
        SELECT sluice_track('m', '{"time": "ts"}');
        SELECT sluice_rollup('m_5m', '{"source": "m", "time": "ts", "group": ["cam"],
          "width": "5 minutes", "target": "m_5m", "measures": {"n": "count"}}');
        SELECT sluice_rollup_run();
        SELECT sluice_enforce_budget(1000000000);
        CREATE VIEW user_buckets AS
          SELECT sluice_bucket(ts, 300) AS w, count(*) AS n FROM m GROUP BY 1;
        CREATE VIEW user_stats AS
          SELECT sluice_sketch_quantile(sluice_sketch(people), 0.5) AS median,
                 length(sluice_pack(cam, people)) > 0 AS packed,
                 sluice_decompress(sluice_compress('abc')) AS round_trip,
                 sluice_version() AS v, sluice_device() AS device,
                 sluice_pending('m') AS pending, sluice_pending_age('m') IS NOT NULL AS aged,
                 sluice_debug() IS NOT NULL AS debug,
                 length(sluice_batch('m')) > 0 AS batch,
                 (SELECT max(p) FROM (SELECT sluice_percentile(people, 0.5) OVER () AS p FROM m)) AS p50
            FROM m;
        CREATE VIEW user_tracked AS
          SELECT sluice_tracked() AS t, sluice_tracked('m') IS NOT NULL AS m;
        CREATE VIEW user_writes AS SELECT sluice_track('m') AS r;
        """
    )


def expected(con):
    con.execute("PRAGMA trusted_schema = ON")
    got = {name: con.execute(sql).fetchall() for name, sql in VIEWS.items()}
    assert all(got.values()), got
    return got


def test_views_work_with_trusted_schema_off(ext_path, tmp_path):
    path = str(tmp_path / "edge.db")
    con = connect(ext_path, path)
    make_edge(con)
    want = expected(con)
    con.execute("PRAGMA trusted_schema = OFF")
    for name, sql in VIEWS.items():
        try:
            rows = con.execute(sql).fetchall()
        except sqlite3.Error as e:
            pytest.fail(f"{name} under trusted_schema=OFF: {e}")
        if name != "sluice_status":  # its ages move with the clock
            assert rows == want[name], name
    # A trigger may call them too.
    con.execute("CREATE TABLE log (w TEXT)")
    con.execute(
        "CREATE TRIGGER m_log AFTER INSERT ON m BEGIN "
        "INSERT INTO log (w) VALUES (sluice_bucket(NEW.ts, 3600)); END"
    )
    con.execute("INSERT INTO m (cam, ts, people) VALUES ('c3', '2026-11-22T11:30:00.000Z', 1)")
    assert con.execute("SELECT w FROM log").fetchall() == [("2026-11-22T11:00:00.000Z",)]
    # Writers stay direct-only, trusted schema or not.
    for trusted in ("OFF", "ON"):
        con.execute(f"PRAGMA trusted_schema = {trusted}")
        with pytest.raises(sqlite3.Error, match="unsafe use of sluice_track"):
            con.execute("SELECT * FROM user_writes").fetchall()
    con.close()


def test_views_work_in_the_sqlite3_shell(ext_path, tmp_path):
    path = str(tmp_path / "edge.db")
    con = connect(ext_path, path)
    make_edge(con)
    want = expected(con)
    con.close()
    for name, sql in VIEWS.items():
        r = subprocess.run(
            ["sqlite3", "-bail", "-cmd", f".load {ext_path}", "-cmd", "PRAGMA trusted_schema=OFF",
             path, sql],
            capture_output=True, text=True,
        )
        assert r.returncode == 0 and not r.stderr, f"{name}: {r.stderr}"
        assert len(r.stdout.splitlines()) == len(want[name]), (name, r.stdout)


def test_every_reader_is_innocuous_and_every_writer_direct_only(db):
    rows = db.execute(
        "SELECT name, narg, flags FROM pragma_function_list WHERE name LIKE 'sluice%'"
    ).fetchall()
    assert rows
    for name, narg, flags in rows:
        direct = bool(flags & DIRECTONLY)
        innocuous = bool(flags & INNOCUOUS)
        assert direct != innocuous, f"{name}/{narg}: flags {flags:#x}"


FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "edge-v0.1.0.db")


def test_a_v010_database_gets_a_budget_view_that_works_at_its_first_write(ext_path, tmp_path):
    """v0.1.0's sluice_budget used json_extract, which SQLite before 3.41
    does not flag innocuous; the first writing call replaces the view."""
    path = str(tmp_path / "edge.db")
    shutil.copy(FIXTURE, path)
    con = connect(ext_path, path)
    # The columns of v0.1.0's view; version 5 adds the filesystem's figures.
    budget = "SELECT max_bytes, used_bytes, file_bytes, within_budget, dropped_rows, checked_at, note FROM sluice_budget"
    before = con.execute(budget).fetchall()
    assert before and before[0][4] == 199  # dropped_rows
    con.execute("SELECT sluice_device('fixture-box')")
    con.execute("PRAGMA trusted_schema = OFF")
    assert con.execute(budget).fetchall() == before
    assert con.execute("SELECT free_bytes, min_free_bytes, reserve_bytes FROM sluice_budget").fetchall() == [
        (None, None, None)
    ]
    assert con.execute("SELECT count(*) FROM sluice_status").fetchone() == (3,)
    con.close()
