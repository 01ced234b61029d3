"""sluice_tracked(): the public view of the tracked tables and their
acknowledged state (what the agent reads instead of sluice_tables)."""

import json

from conftest import connect


def tracked(db, *args):
    (v,) = db.execute(f"SELECT sluice_tracked({', '.join('?' * len(args))})", args).fetchone()
    return None if v is None else json.loads(v)


def test_empty_before_anything_is_tracked(db):
    assert tracked(db) == []
    assert tracked(db, "readings") is None
    # A device id creates some bookkeeping, still nothing tracked.
    db.execute("SELECT sluice_device('box-1')")
    assert tracked(db) == []


def test_one_object_per_table_sorted_by_name(db):
    db.execute("SELECT sluice_device('box-1')")
    db.execute("CREATE TABLE zeta (id INTEGER PRIMARY KEY, ts TEXT, path TEXT)")
    db.execute("CREATE TABLE Alpha (k TEXT PRIMARY KEY, v INTEGER) WITHOUT ROWID")
    db.execute(
        "SELECT sluice_track('zeta', ?)",
        (json.dumps({"time": "ts", "local_only": ["path"]}),),
    )
    db.execute("SELECT sluice_track('alpha', ?)", (json.dumps({"mutable": True, "key": ["k"]}),))
    db.execute("INSERT INTO zeta (ts, path) VALUES ('2026-12-01T00:00:00Z', '/a'), ('2026-12-01T00:00:01Z', '/b')")
    db.execute("INSERT INTO Alpha (k, v) VALUES ('x', 1)")
    all_ = tracked(db)
    assert [t["table"] for t in all_] == ["Alpha", "zeta"]
    alpha, zeta = all_
    assert alpha == {
        "table": "Alpha",
        "mutable": True,
        "local_only": False,
        "local_only_columns": [],
        "key_columns": ["k"],
        "time_column": None,
        "acked_seq": 0,
        "acked_batches": 0,
        "acked_rows": 0,
        "acked_at": None,
        "acked_ranges": [],
        "high_water": 1,
        "quarantined_rows": 0,
        "resend_rows": 0,
    }
    assert zeta["mutable"] is False
    assert zeta["local_only"] is True and zeta["local_only_columns"] == ["path"]
    assert zeta["key_columns"] is None
    assert zeta["time_column"] == "ts"
    assert zeta["high_water"] == 2

    # Acknowledging shows in the object.
    (batch,) = db.execute("SELECT sluice_batch('zeta', 1)").fetchone()
    assert db.execute("SELECT sluice_ack(?)", (batch,)).fetchone() == (1,)
    z = tracked(db, "zeta")
    assert (z["acked_seq"], z["acked_batches"], z["acked_rows"]) == (1, 1, 1)
    assert isinstance(z["acked_at"], int) and z["acked_at"] > 1_700_000_000_000
    # Newest first leaves a range above the watermark.
    db.execute("INSERT INTO zeta (ts) VALUES ('2026-12-01T00:00:02Z')")
    (batch,) = db.execute("SELECT sluice_batch('zeta', 1, '{\"order\": \"newest\"}')").fetchone()
    db.execute("SELECT sluice_ack(?)", (batch,))
    assert tracked(db, "zeta")["acked_ranges"] == [[2, 3]]
    # Names are looked up ignoring case; the object spells them as the schema.
    assert tracked(db, "ALPHA")["table"] == "Alpha"
    assert tracked(db, "readings") is None
    assert tracked(db, None) is None


def test_read_only_and_callable_from_a_view(db):
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    db.execute("SELECT sluice_device('box-1')")
    db.execute("SELECT sluice_track('t')")
    db.execute(
        "CREATE VIEW tracked_tables AS "
        "SELECT json_extract(value, '$.table') AS name FROM json_each(sluice_tracked())"
    )
    assert db.execute("SELECT name FROM tracked_tables").fetchall() == [("t",)]
    # It works on a read-only connection (it never writes).
    db.execute("PRAGMA query_only = ON")
    assert [o["table"] for o in tracked(db)] == ["t"]


def test_a_database_without_time_column_yet(ext_path, tmp_path):
    """A database tracked by the first release has no time_column."""
    path = str(tmp_path / "old.db")
    con = connect(ext_path, path)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    con.execute("SELECT sluice_device('box-1')")
    con.execute("SELECT sluice_track('t')")
    con.execute("ALTER TABLE sluice_tables DROP COLUMN time_column")
    con.execute("PRAGMA query_only = ON")
    assert [(o["table"], o["time_column"]) for o in tracked(con)] == [("t", None)]
    con.close()
