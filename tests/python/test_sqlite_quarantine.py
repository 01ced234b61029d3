"""Re-sends and the quarantine through the built sluice0.so (issue 12,
cases 7 and 8): the functions are registered direct-only, a row over the
batch limit is moved aside in a file database and the rows behind it flow,
a re-send after ADD COLUMN ... DEFAULT carries the column, and odd arguments
to every arity are errors, never a crash."""

import json
import sqlite3

import pytest

from conftest import connect

DIRECTONLY = 0x80000
INNOCUOUS = 0x200000

FUNCTIONS = {
    ("sluice_resend", 1): DIRECTONLY,
    ("sluice_resend", 2): DIRECTONLY,
    ("sluice_quarantine", 3): DIRECTONLY,
    ("sluice_quarantine", 4): DIRECTONLY,
    ("sluice_release", 1): DIRECTONLY,
    ("sluice_release", 2): DIRECTONLY,
}


def test_registered_direct_only(db):
    rows = db.execute(
        "SELECT name, narg, flags FROM pragma_function_list "
        "WHERE name IN ('sluice_resend', 'sluice_quarantine', 'sluice_release')"
    ).fetchall()
    assert {(n, a): f & (DIRECTONLY | INNOCUOUS) for n, a, f in rows} == FUNCTIONS


def scalar(con, sql, *params):
    return con.execute(sql, params).fetchone()[0]


def test_a_giant_row_is_moved_aside_and_the_rows_behind_it_flow(ext_path, tmp_path):
    con = connect(ext_path, str(tmp_path / "edge.db"))
    con.executescript(
        """
        PRAGMA journal_mode = WAL;
        SELECT sluice_device('box-1');
        CREATE TABLE frames (id INTEGER PRIMARY KEY, camera TEXT, image BLOB);
        SELECT sluice_track('frames');
        INSERT INTO frames (camera, image) VALUES ('c1', x'00');
        INSERT INTO frames (camera, image) VALUES ('c2', zeroblob(70 * 1024 * 1024));
        INSERT INTO frames (camera, image) VALUES ('c3', x'01');
        """
    )
    seen = []
    while (b := scalar(con, "SELECT sluice_batch('frames')")) is not None:
        assert scalar(con, "SELECT sluice_ack(?)", b) > 0
        seen.append(len(b))
        assert len(seen) < 10
    assert len(seen) == 1 and seen[0] < 1000
    assert scalar(con, "SELECT sluice_pending('frames')") == 0
    (seq, bytes_, reason) = con.execute("SELECT seq, bytes, reason FROM sluice_quarantine").fetchone()
    assert seq == 2 and bytes_ > 70 * 1024 * 1024
    assert reason == f"row of {bytes_} bytes is over the batch limit of 67108864 bytes"
    assert json.loads(scalar(con, "SELECT sluice_tracked('frames')"))["quarantined_rows"] == 1
    # Cleanup keeps it; after the fix, a release re-sends it.
    assert scalar(con, "SELECT sluice_cleanup('frames', 0)") == 1
    con.execute("UPDATE frames SET image = x'02' WHERE id = 2")
    assert scalar(con, "SELECT sluice_release('frames')") == 1
    assert scalar(con, "SELECT sluice_pending('frames')") == 1
    assert scalar(con, "SELECT sluice_ack(sluice_batch('frames'))") == 1
    assert scalar(con, "SELECT sluice_pending('frames')") == 0
    con.close()


def test_a_resend_after_add_column_default(db):
    db.executescript(
        """
        SELECT sluice_device('box-1');
        CREATE TABLE readings (id INTEGER PRIMARY KEY, camera TEXT);
        SELECT sluice_track('readings');
        INSERT INTO readings (camera) VALUES ('c1'), ('c2');
        SELECT sluice_ack(sluice_batch('readings'));
        ALTER TABLE readings ADD COLUMN people INTEGER DEFAULT 7;
        """
    )
    assert scalar(db, "SELECT sluice_resend('readings')") == 2
    assert scalar(db, "SELECT sluice_pending('readings')") == 2
    assert scalar(db, "SELECT sluice_ack(sluice_batch('readings'))") == 2
    assert scalar(db, "SELECT sluice_pending('readings')") == 0
    t = json.loads(scalar(db, "SELECT sluice_tracked('readings')"))
    assert (t["acked_seq"], t["acked_batches"], t["resend_rows"]) == (2, 1, 0)


def test_garbage_never_crashes(db):
    db.executescript(
        """
        SELECT sluice_device('box-1');
        CREATE TABLE readings (id INTEGER PRIMARY KEY, camera TEXT, ts TEXT);
        SELECT sluice_track('readings', '{"time": "ts"}');
        INSERT INTO readings (camera, ts) VALUES ('c1', '2026-12-01T10:00:00Z');
        """
    )
    values = ["NULL", "0", "-1", "1", "9223372036854775807", "1e308", "''", "'readings'",
              "x''", "zeroblob(64)", "'[]'", "'{}'", "'{\"from\": 1e400}'", "char(0)"]
    for (name, narg) in FUNCTIONS:
        if narg <= 2:
            args_list = [[v] for v in values] if narg == 1 else [[a, b] for a in values for b in values]
        else:
            args_list = [["'readings'", a, b] + (["'22001'"] if narg == 4 else []) for a in values for b in values]
        for args in args_list:
            try:
                db.execute(f"SELECT {name}({', '.join(args)})").fetchall()
            except sqlite3.Error as e:
                assert str(e).startswith(name + ":"), (name, args, str(e))
    assert db.execute("SELECT 1").fetchone() == (1,)


def test_not_from_a_view(db):
    db.executescript(
        """
        SELECT sluice_device('box-1');
        CREATE TABLE readings (id INTEGER PRIMARY KEY, camera TEXT);
        SELECT sluice_track('readings');
        CREATE VIEW v AS SELECT sluice_resend('readings') AS r;
        """
    )
    with pytest.raises(sqlite3.Error, match="unsafe use of sluice_resend"):
        db.execute("SELECT * FROM v").fetchall()
