"""The SQLite extension sluice0.so, tested from outside the way users load it.

Every function's results and error messages; the sync cycle of
docs/sync-protocol.md (batch, ack, pending, cleanup) including its failure
cases; hostile input (injection, NULLs, wrong types).
"""

import json
import os
import sqlite3
import subprocess
import time

import pytest

from conftest import connect, parse_batch

DETERMINISTIC = 0x800
DIRECTONLY = 0x80000
INNOCUOUS = 0x200000
# Pure: deterministic, and innocuous (views may call it under trusted_schema=OFF).
PURE = DETERMINISTIC | INNOCUOUS

EXPECTED_FUNCTIONS = {
    # (name, narg): flags we promise
    ("sluice_ack", 1): DIRECTONLY,
    ("sluice_batch", 1): INNOCUOUS,
    ("sluice_batch", 2): INNOCUOUS,
    ("sluice_batch", 3): INNOCUOUS,
    ("sluice_cleanup", 2): DIRECTONLY,
    ("sluice_debug", 0): INNOCUOUS,
    ("sluice_device", 0): INNOCUOUS,
    ("sluice_device", 1): DIRECTONLY,
    ("sluice_insert", 2): DIRECTONLY,
    ("sluice_pending", 1): INNOCUOUS,
    ("sluice_track", 1): DIRECTONLY,
    ("sluice_track", 2): DIRECTONLY,
    ("sluice_tracked", 0): INNOCUOUS,
    ("sluice_tracked", 1): INNOCUOUS,
    ("sluice_version", 0): PURE,
    # window aggregation (test_sqlite_window.py)
    ("sluice_bucket", 2): PURE,
    ("sluice_compress", 1): PURE,
    ("sluice_compress", 2): PURE,
    ("sluice_decompress", 1): PURE,
    ("sluice_pack", -1): PURE,
    ("sluice_percentile", 2): PURE,
    ("sluice_sketch", 1): PURE,
    ("sluice_sketch_merge", 1): PURE,
    ("sluice_sketch_quantile", 2): PURE,
    ("sluice_unpack", 1): PURE,
    # rollups (test_sqlite_rollup.py)
    ("sluice_rollup", 2): DIRECTONLY,
    ("sluice_rollup_run", 0): DIRECTONLY,
    ("sluice_rollup_run", 1): DIRECTONLY,
    # bounded buffer and status (test_sqlite_buffer.py)
    ("sluice_enforce_budget", 1): DIRECTONLY,
    ("sluice_enforce_budget", 2): DIRECTONLY,
    ("sluice_reserve", 0): DIRECTONLY,
    ("sluice_pending_age", 1): INNOCUOUS,
    # epochs and origin (sqlite_ext/src/epoch.rs)
    ("sluice_identity", 0): INNOCUOUS,
    ("sluice_machine", 0): INNOCUOUS,
    ("sluice_machine", 1): DIRECTONLY,
    ("sluice_new_epoch", 1): DIRECTONLY,
    ("sluice_zone", 0): INNOCUOUS,
    ("sluice_zone", 1): DIRECTONLY,
    # re-sends and the quarantine (test_sqlite_quarantine.py)
    ("sluice_resend", 1): DIRECTONLY,
    ("sluice_resend", 2): DIRECTONLY,
    ("sluice_quarantine", 3): DIRECTONLY,
    ("sluice_quarantine", 4): DIRECTONLY,
    ("sluice_release", 1): DIRECTONLY,
    ("sluice_release", 2): DIRECTONLY,
    # cloud to edge (sqlite_ext/src/apply_tests.rs, docs/sqlite.md "Cloud to edge")
    ("sluice_subscribe", 1): DIRECTONLY,
    ("sluice_subscribe", 2): DIRECTONLY,
    ("sluice_unsubscribe", 1): DIRECTONLY,
    ("sluice_apply", 1): DIRECTONLY,
}


def test_registers_exactly_these_functions(db):
    rows = db.execute(
        "SELECT name, narg, flags FROM pragma_function_list "
        "WHERE name LIKE 'sluice%' ORDER BY name, narg"
    ).fetchall()
    assert {(n, a) for n, a, _ in rows} == set(EXPECTED_FUNCTIONS)
    assert len(rows) == len(EXPECTED_FUNCTIONS)
    for name, narg, flags in rows:
        want = EXPECTED_FUNCTIONS[(name, narg)]
        got = flags & (DETERMINISTIC | DIRECTONLY | INNOCUOUS)
        assert got == want, f"{name}/{narg}: flags {flags:#x}"


def err(db, sql, *params):
    """The error message of a statement that must fail."""
    with pytest.raises(sqlite3.Error) as e:
        db.execute(sql, params).fetchall()
    return str(e.value)


def make_readings(db, n=0):
    db.execute(
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, ts REAL NOT NULL, "
        "camera TEXT NOT NULL, people INTEGER, screenshot_path TEXT)"
    )
    if n:
        rows = [
            {"ts": 1000.0 + i, "camera": f"cam{i % 3}", "people": i, "screenshot_path": f"/s/{i}.jpg"}
            for i in range(n)
        ]
        db.execute("SELECT sluice_insert('readings', ?)", (json.dumps(rows),))


def tracked_readings(db, n=0, options=None):
    make_readings(db, n)
    db.execute("SELECT sluice_device('box-1')")
    if options is None:
        db.execute("SELECT sluice_track('readings')")
    else:
        db.execute("SELECT sluice_track('readings', ?)", (json.dumps(options),))


def count(db, table="readings"):
    return db.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]


# --------------------------------------------------------------------------
# version, debug


def test_version(one):
    assert one("SELECT sluice_version()") == "v0.2.0"


def test_debug(one):
    d = json.loads(one("SELECT sluice_debug()"))
    assert d["version"] == "v0.2.0"
    assert d["sqlite"] == sqlite3.sqlite_version
    assert d["profile"] in ("debug", "release", "fuzz")
    assert d["commit"] == "unknown" or len(d["commit"]) >= 7


# --------------------------------------------------------------------------
# device


def test_device_unset_then_set(db, one):
    assert one("SELECT sluice_device()") is None
    # Reading does not create the bookkeeping tables.
    assert one("SELECT count(*) FROM sqlite_master WHERE name LIKE 'sluice%'") == 0
    assert one("SELECT sluice_device('box-1')") == "box-1"
    assert one("SELECT sluice_device()") == "box-1"
    assert one("SELECT sluice_device('box-2')") == "box-2"
    assert one("SELECT value FROM sluice_meta WHERE key = 'device_id'") == "box-2"


@pytest.mark.parametrize(
    "arg, message",
    [
        ("''", "sluice_device: the device id must not be empty"),
        ("NULL", "sluice_device: the device id must be text, got NULL"),
        ("42", "sluice_device: the device id must be text, got the integer 42"),
        ("x'00'", "sluice_device: the device id must be text, got a blob of 1 bytes"),
        ("printf('%.201c', 'x')", "sluice_device: the device id is 201 characters long, the limit is 200"),
        ("char(10)", "sluice_device: the device id must not contain control characters"),
    ],
)
def test_device_rejects(db, arg, message):
    assert err(db, f"SELECT sluice_device({arg})") == message


def test_device_200_chars_is_fine(one):
    assert one("SELECT length(sluice_device(printf('%.200c', 'x')))") == 200


# --------------------------------------------------------------------------
# insert


def test_insert_maps_json_types(db, one):
    db.execute("CREATE TABLE t (i INTEGER, r REAL, s TEXT, b INTEGER, n NUMERIC, j TEXT, a BLOB, z)")
    rows = [
        {"i": 7, "r": 1.5, "s": "héllo \"q\"", "b": True, "n": None, "j": {"k": [1, 2.5, "x"], "a": None}, "a": [1], "z": False},
        {"z": 1, "a": "x", "j": [], "n": "12", "b": False, "s": "", "r": 2, "i": -9223372036854775808},
    ]
    assert one("SELECT sluice_insert('t', ?)", json.dumps(rows)) == 2
    got = db.execute("SELECT i, typeof(i), r, typeof(r), s, b, n, typeof(n), j, a, z FROM t ORDER BY rowid").fetchall()
    assert got[0] == (7, "integer", 1.5, "real", 'héllo "q"', 1, None, "null", '{"k":[1,2.5,"x"],"a":null}', "[1]", 0)
    # NUMERIC affinity converts '12' as SQLite always does.
    assert got[1] == (-9223372036854775808, "integer", 2.0, "real", "", 0, 12, "integer", "[]", "x", 1)


def test_insert_empty_array_is_zero(db, one):
    db.execute("CREATE TABLE t (a)")
    assert one("SELECT sluice_insert('t', '[]')") == 0
    assert err(db, "SELECT sluice_insert('nope', '[]')") == "sluice_insert: no such table: nope"


def test_insert_is_atomic(db, one):
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, state TEXT NOT NULL, people INTEGER)")
    rows = [{"state": "BUSY", "people": i} for i in range(30)]
    rows[17]["state"] = None
    assert (
        err(db, "SELECT sluice_insert('t', ?)", json.dumps(rows))
        == "sluice_insert: row 17: NOT NULL constraint failed: t.state"
    )
    assert count(db, "t") == 0
    rows[17] = {"state": "BUSY", "people": "four"}
    assert (
        err(db, "SELECT sluice_insert('t', ?)", json.dumps(rows))
        == "sluice_insert: row 17, column 'people': expected a number, got text"
    )
    assert count(db, "t") == 0
    rows[17] = {"state": 5, "people": 1}
    assert (
        err(db, "SELECT sluice_insert('t', ?)", json.dumps(rows))
        == "sluice_insert: row 17, column 'state': expected text, got number"
    )
    assert count(db, "t") == 0
    rows[17] = {"state": "x", "people": 1}
    assert one("SELECT sluice_insert('t', ?)", json.dumps(rows)) == 30


def test_insert_inside_a_user_transaction(db, one):
    db.execute("CREATE TABLE t (a INTEGER NOT NULL)")
    db.execute("BEGIN")
    db.execute("INSERT INTO t VALUES (1)")
    err(db, """SELECT sluice_insert('t', '[{"a": 2}, {"a": null}]')""")
    assert one("SELECT sluice_insert('t', '[{\"a\": 3}]')") == 1
    db.execute("COMMIT")
    assert [r[0] for r in db.execute("SELECT a FROM t ORDER BY a")] == [1, 3]


def test_insert_unique_constraint_names_the_row(db):
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT UNIQUE)")
    assert (
        err(db, """SELECT sluice_insert('t', '[{"k": "a"}, {"k": "b"}, {"k": "a"}]')""")
        == "sluice_insert: row 2: UNIQUE constraint failed: t.k"
    )


@pytest.mark.parametrize(
    "rows, message",
    [
        ('[{"a": 1, "b": 2}, {"a": 1}]', "row 1: missing column 'b'"),
        ('[{"a": 1, "b": 2}, {"a": 1, "b": 2, "c": 3}]', "row 1: unexpected column 'c' (row 0 has no such key)"),
        ('[{"a": 1, "zz": 2}]', "table 't' has no column 'zz'"),
        ('[{"a": 1}, 7]', "row 1: invalid type: integer `7`, expected a JSON object at line 1 column 12"),
        ('{"a": 1}', "unexpected key 'a' (the compact form is {\"columns\": [...], \"rows\": [[...], ...]})"),
        ("5", 'invalid JSON: invalid type: integer `5`, expected a JSON array of objects or {"columns": [...], "rows": [[...], ...]} at line 1 column 1'),
        ("[{\"a\": 1}", "invalid JSON: EOF while parsing a list at line 1 column 9"),
        ('[{"a": 1}, {"a": 9223372036854775808}]', "row 1, column 'a': integer 9223372036854775808 does not fit in 64 bits at line 1 column 36"),
        ("[{}]", "row 0: the object has no keys"),
        ('[{"a": 1, "A": 2}]', "row 0: keys 'A' and 'a' name the same column"),
    ],
)
def test_insert_rejects_bad_rows(db, rows, message):
    db.execute("CREATE TABLE t (a INTEGER, b INTEGER)")
    assert err(db, "SELECT sluice_insert('t', ?)", rows) == "sluice_insert: " + message
    assert count(db, "t") == 0


def test_insert_keys_match_columns_ignoring_case(db, one):
    db.execute("CREATE TABLE t (Camera TEXT)")
    assert one("""SELECT sluice_insert('T', '[{"camera": "c1"}]')""") == 1
    assert one("SELECT Camera FROM t") == "c1"


@pytest.mark.parametrize(
    "args, message",
    [
        ("NULL, '[]'", "sluice_insert: the table name must be text, got NULL"),
        ("1, '[]'", "sluice_insert: the table name must be text, got the integer 1"),
        ("'', '[]'", "sluice_insert: the table name must not be empty"),
        ("'t', NULL", "sluice_insert: rows must be a JSON array of objects as text, got NULL"),
        ("'t', 5", "sluice_insert: rows must be a JSON array of objects as text, got the integer 5"),
        ("'t', x'5b5d'", "sluice_insert: rows must be a JSON array of objects as text, got a blob of 2 bytes"),
        ("'t', ''", "sluice_insert: invalid JSON: EOF while parsing a value at line 1 column 0"),
        ("printf('%.100000c', 'x'), '[]'", "sluice_insert: no such table: " + "x" * 100000),
    ],
)
def test_insert_bad_arguments(db, args, message):
    db.execute("CREATE TABLE t (a)")
    assert err(db, f"SELECT sluice_insert({args})") == message


def test_insert_is_direct_only(db):
    db.execute("CREATE TABLE t (a)")
    db.execute("""CREATE VIEW v AS SELECT sluice_insert('t', '[{"a": 1}]') AS n""")
    assert "unsafe use of sluice_insert()" in err(db, "SELECT * FROM v")
    assert count(db, "t") == 0


def test_insert_many_rows(db, one):
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a INTEGER, b TEXT, c REAL)")
    rows = [{"a": i, "b": f"s{i}", "c": i / 2} for i in range(20000)]
    assert one("SELECT sluice_insert('t', ?)", json.dumps(rows)) == 20000
    assert one("SELECT sum(a) FROM t") == sum(range(20000))


def test_insert_compact_form(db, one):
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, state TEXT NOT NULL, people INTEGER, d TEXT)")
    doc = {"columns": ["people", "State", "d"], "rows": [[3, "BUSY", {"k": [1]}], [None, "IDLE", None]]}
    assert one("SELECT sluice_insert('t', ?)", json.dumps(doc)) == 2
    assert db.execute("SELECT id, state, people, d FROM t ORDER BY id").fetchall() == [
        (1, "BUSY", 3, '{"k":[1]}'),
        (2, "IDLE", None, None),
    ]
    assert one("""SELECT sluice_insert('t', '{"columns": ["state"], "rows": []}')""") == 0


def test_insert_compact_form_is_atomic_and_names_row_and_column(db, one):
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, state TEXT NOT NULL, people INTEGER)")
    rows = [["BUSY", i] for i in range(30)]
    rows[17] = [5, 1]
    doc = {"columns": ["state", "people"], "rows": rows}
    assert (
        err(db, "SELECT sluice_insert('t', ?)", json.dumps(doc))
        == "sluice_insert: row 17, column 'state': expected text, got number"
    )
    assert count(db, "t") == 0
    rows[17] = [None, 1]
    assert (
        err(db, "SELECT sluice_insert('t', ?)", json.dumps(doc))
        == "sluice_insert: row 17: NOT NULL constraint failed: t.state"
    )
    assert count(db, "t") == 0
    rows[17] = ["x", 1]
    assert one("SELECT sluice_insert('t', ?)", json.dumps(doc)) == 30


@pytest.mark.parametrize(
    "doc, message",
    [
        ('{"columns": ["a", "b"], "rows": [[1, 2], [3]]}', "row 1: 1 values for 2 columns (missing column 'b')"),
        ('{"columns": ["a"], "rows": [[1], [2, 3]]}', "row 1: more values than the 1 columns"),
        ('{"columns": ["a"], "rows": [[1], [2], ["x"]]}', "row 2, column 'a': expected a number, got text"),
        ('{"rows": [[1]], "columns": ["a"]}', '"columns" must come before "rows"'),
        ('{"columns": ["a"]}', 'the compact form has no "rows"'),
        ('{"columns": [], "rows": []}', '"columns" is empty'),
        ('{"columns": ["a", "zz"], "rows": []}', "table 't' has no column 'zz'"),
        ('{"columns": ["a", "a"], "rows": []}', "column 'a' appears twice"),
        ('{"columns": ["a"], "rows": [[1], {"a": 2}]}', "row 1: invalid type: map, expected a JSON array of values at line 1 column 34"),
    ],
)
def test_insert_compact_form_rejects(db, doc, message):
    db.execute("CREATE TABLE t (a INTEGER, b INTEGER)")
    assert err(db, "SELECT sluice_insert('t', ?)", doc) == "sluice_insert: " + message
    assert count(db, "t") == 0


# --------------------------------------------------------------------------
# track


def test_track_creates_bookkeeping(db, one):
    make_readings(db)
    assert one("SELECT sluice_track('readings')") == 1
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"sluice_meta", "sluice_tables", "sluice_acks", "sluice_clock"} <= names
    stream = one("SELECT value FROM sluice_meta WHERE key = 'stream_id'")
    assert isinstance(stream, int) and 0 < stream < 2**63
    row = db.execute("SELECT tbl, mutable, local_only, key_columns, acked_seq FROM sluice_tables").fetchall()
    assert row == [("readings", 0, "[]", "[]", 0)]
    # No trigger for an append-only table: tracking costs nothing per insert.
    assert one("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'") == 0


def test_track_options_and_retrack(db, one):
    tracked_readings(db, 3, {"local_only": ["screenshot_path"], "key": ["ID"]})
    assert db.execute("SELECT local_only, key_columns FROM sluice_tables").fetchall() == [
        ('["screenshot_path"]', '["id"]')
    ]
    b = one("SELECT sluice_batch('readings')")
    assert one("SELECT sluice_ack(?)", b) == 3
    # Re-tracking keeps the watermark and the options not given.
    assert one("""SELECT sluice_track('readings', '{"key": []}')""") == 1
    assert db.execute("SELECT local_only, key_columns, acked_seq FROM sluice_tables").fetchall() == [
        ('["screenshot_path"]', "[]", 3)
    ]
    assert one("SELECT sluice_track('readings')") == 1
    assert one("SELECT acked_seq FROM sluice_tables") == 3
    assert "changing \"mutable\" of a tracked table is not supported" in err(
        db, """SELECT sluice_track('readings', '{"mutable": true}')"""
    )


@pytest.mark.parametrize(
    "options, message",
    [
        ('{"mutible": true}', "unknown option 'mutible' (known options: mutable, local_only, key, time, deletes)"),
        ('{"mutable": "yes"}', "option 'mutable' must be true or false, got a string"),
        ('{"local_only": ["nope"]}', "option 'local_only': table 'readings' has no column 'nope'"),
        ('{"key": "id"}', "option 'key' must be an array of column names, got a string"),
        ("[1]", 'options must be a JSON object like {"mutable": true}, got an array'),
        ("{", "options are not valid JSON: EOF while parsing an object at line 1 column 1"),
        ("''", "options must not be empty"),
    ],
)
def test_track_rejects_bad_options(db, options, message):
    make_readings(db)
    sql = f"SELECT sluice_track('readings', {options})" if options == "''" else "SELECT sluice_track('readings', ?)"
    params = () if options == "''" else (options,)
    assert err(db, sql, *params) == "sluice_track: " + message


def test_track_null_options_are_defaults(db, one):
    make_readings(db)
    assert one("SELECT sluice_track('readings', NULL)") == 1


def test_track_append_only_needs_a_rowid_alias(db):
    db.execute("CREATE TABLE t (name TEXT PRIMARY KEY, v)")
    db.execute("CREATE TABLE w (name TEXT PRIMARY KEY, v) WITHOUT ROWID")
    assert err(db, "SELECT sluice_track('t')") == (
        "sluice_track: append-only table 't' needs an INTEGER PRIMARY KEY column (a rowid alias) "
        "to number its rows; add one, or track it as mutable: "
        """SELECT sluice_track('t', '{"mutable": true}')"""
    )
    assert "this is a WITHOUT ROWID table" in err(db, "SELECT sluice_track('w')")
    # SQLite quirk: INTEGER PRIMARY KEY DESC is not a rowid alias.
    db.execute("CREATE TABLE d (id INTEGER PRIMARY KEY DESC, v)")
    assert "needs an INTEGER PRIMARY KEY column" in err(db, "SELECT sluice_track('d')")
    db.execute("CREATE TABLE ok (Id integer primary key, v)")
    db.execute("SELECT sluice_track('ok')")


@pytest.mark.parametrize(
    "arg, message",
    [
        ("NULL", "the table name must be text, got NULL"),
        ("3.5", "the table name must be text, got the real 3.5"),
        ("'nope'", "no such table: nope"),
        ("'sqlite_master'", "no such table: sqlite_master"),
        ("'sluice_meta'", "'sluice_meta' is an internal table and cannot be tracked"),
    ],
)
def test_track_bad_tables(db, arg, message):
    db.execute("SELECT sluice_device('x')")
    assert err(db, f"SELECT sluice_track({arg})") == "sluice_track: " + message


def test_track_views_are_not_tables(db):
    make_readings(db)
    db.execute("CREATE VIEW v AS SELECT * FROM readings")
    assert err(db, "SELECT sluice_track('v')") == "sluice_track: no such table: v"


# --------------------------------------------------------------------------
# batch, ack, pending


def test_batch_ack_pending_cycle(db, one):
    tracked_readings(db, 5, {"local_only": ["screenshot_path"]})
    stream = one("SELECT value FROM sluice_meta WHERE key = 'stream_id'")
    assert one("SELECT sluice_pending('readings')") == 5
    before = int(time.time() * 1000)
    b1 = one("SELECT sluice_batch('readings', 2)")
    h = parse_batch(b1)
    assert (h["device_id"], h["stream_id"], h["table"]) == ("box-1", stream, "readings")
    assert (h["base_seq"], h["last_seq"], h["row_count"]) == (0, 2, 2)
    assert abs(h["sent_at_ms"] - before) < 60_000
    assert h["columns"] == [("id", "integer"), ("ts", "real"), ("camera", "text"), ("people", "integer")]
    # Cutting a batch writes nothing.
    assert one("SELECT sluice_pending('readings')") == 5
    assert one("SELECT sluice_ack(?)", b1) == 2
    assert one("SELECT sluice_pending('readings')") == 3
    assert db.execute("SELECT acked_seq, acked_batches, acked_rows FROM sluice_tables").fetchone() == (2, 1, 2)
    b2 = one("SELECT sluice_batch('readings')")
    h2 = parse_batch(b2)
    assert (h2["base_seq"], h2["last_seq"], h2["row_count"]) == (2, 5, 3)
    assert one("SELECT sluice_ack(?)", b2) == 3
    assert one("SELECT sluice_pending('readings')") == 0
    assert one("SELECT sluice_batch('readings')") is None
    assert db.execute("SELECT tbl, acked_seq FROM sluice_acks ORDER BY acked_seq").fetchall() == [
        ("readings", 2),
        ("readings", 5),
    ]


def test_batch_is_repeatable_until_acked(db, one):
    tracked_readings(db, 4)
    a = one("SELECT sluice_batch('readings', 3)")
    time.sleep(0.01)
    b = one("SELECT sluice_batch('readings', 3)")
    ha, hb = parse_batch(a), parse_batch(b)
    for k in ("device_id", "stream_id", "table", "base_seq", "last_seq", "row_count", "columns", "fingerprint", "body"):
        assert ha[k] == hb[k], k
    off = ha["sent_at_offset"]
    assert a[:off] == b[:off] and a[off + 8 : -4] == b[off + 8 : -4]
    # New rows do not change a batch that is already full.
    db.execute("""SELECT sluice_insert('readings', '[{"ts": 1, "camera": "c", "people": 1, "screenshot_path": null}]')""")
    assert parse_batch(one("SELECT sluice_batch('readings', 3)"))["body"] == ha["body"]


def test_ack_is_idempotent(db, one):
    tracked_readings(db, 3)
    b = one("SELECT sluice_batch('readings')")
    assert one("SELECT sluice_ack(?)", b) == 3
    assert one("SELECT sluice_ack(?)", b) == 0
    assert one("SELECT sluice_ack(?)", b) == 0
    assert db.execute("SELECT acked_batches, acked_rows FROM sluice_tables").fetchone() == (1, 3)


def test_ack_of_a_stale_overlapping_batch(db, one):
    tracked_readings(db, 5)
    small = one("SELECT sluice_batch('readings', 2)")
    big = one("SELECT sluice_batch('readings', 4)")
    assert one("SELECT sluice_ack(?)", small) == 2
    # (0, 4] starts below the watermark 2: acknowledging it skips nothing.
    assert one("SELECT sluice_ack(?)", big) == 4
    assert one("SELECT acked_seq FROM sluice_tables") == 4
    assert one("SELECT sluice_ack(?)", small) == 0


def test_ack_above_the_watermark_keeps_the_rows_below_pending(ext_path, db, one):
    # A copy of the database (same stream id, watermark 0) acknowledges a
    # batch cut after the original moved on: the copy records the range and
    # keeps rows 1 and 2 pending; nothing is skipped.
    tracked_readings(db, 4)
    copy = connect(ext_path)
    db.backup(copy)
    b1 = one("SELECT sluice_batch('readings', 2)")
    one("SELECT sluice_ack(?)", b1)
    b2 = one("SELECT sluice_batch('readings', 2)")
    assert copy.execute("SELECT sluice_ack(?)", (b2,)).fetchone() == (2,)
    assert copy.execute("SELECT acked_seq FROM sluice_tables").fetchone() == (0,)
    assert copy.execute("SELECT tbl, lo, hi FROM sluice_acked_ranges").fetchall() == [("readings", 2, 4)]
    assert copy.execute("SELECT sluice_pending('readings')").fetchone() == (2,)
    h = parse_batch(copy.execute("SELECT sluice_batch('readings')").fetchone()[0])
    assert (h["base_seq"], h["last_seq"], h["row_count"]) == (0, 2, 2)


def ids_of(db, batch):
    """The ids (sequence numbers) a batch of `readings` carries."""
    h = parse_batch(batch)
    return h["base_seq"], h["last_seq"], h["row_count"]


def test_newest_first_drains_from_the_top_and_folds_into_the_watermark(db, one):
    tracked_readings(db, 10)
    newest = '{"order": "newest"}'
    b = one("SELECT sluice_batch('readings', 3, ?)", newest)
    assert ids_of(db, b) == (7, 10, 3)
    # Cutting reads only: the same batch again.
    assert ids_of(db, one("SELECT sluice_batch('readings', 3, ?)", newest)) == (7, 10, 3)
    assert one("SELECT sluice_ack(?)", b) == 3
    assert one("SELECT sluice_ack(?)", b) == 0
    assert one("SELECT sluice_pending('readings')") == 7
    assert db.execute("SELECT acked_seq, acked_batches, acked_rows FROM sluice_tables").fetchone() == (0, 1, 3)
    b = one("SELECT sluice_batch('readings', 3, ?)", newest)
    assert ids_of(db, b) == (4, 7, 3)
    one("SELECT sluice_ack(?)", b)
    # Adjacent ranges merge into one.
    assert db.execute("SELECT lo, hi FROM sluice_acked_ranges").fetchall() == [(4, 10)]
    b = one("SELECT sluice_batch('readings', 3, ?)", newest)
    assert ids_of(db, b) == (1, 4, 3)
    one("SELECT sluice_ack(?)", b)
    # The last row: the batch reaches down to the watermark and moves it
    # past every range.
    b = one("SELECT sluice_batch('readings', 3, ?)", newest)
    assert ids_of(db, b) == (0, 1, 1)
    assert one("SELECT sluice_ack(?)", b) == 1
    assert db.execute("SELECT acked_seq FROM sluice_tables").fetchone() == (10,)
    assert db.execute("SELECT count(*) FROM sluice_acked_ranges").fetchone() == (0,)
    assert one("SELECT sluice_pending('readings')") == 0
    assert one("SELECT sluice_batch('readings', 3, ?)", newest) is None
    # The batch's rows are in sequence order whatever the drain order.
    db.execute("SELECT sluice_insert('readings', ?)", (json.dumps(
        [{"ts": 2000.0 + i, "camera": "c", "people": i, "screenshot_path": None} for i in range(3)]),)).fetchone()
    b = one("SELECT sluice_batch('readings', 2, ?)", newest)
    assert ids_of(db, b) == (11, 13, 2)


def test_oldest_first_after_newest_first_skips_the_acknowledged_ranges(db, one):
    tracked_readings(db, 10)
    one("SELECT sluice_ack(sluice_batch('readings', 3, '{\"order\": \"newest\"}'))")
    one("SELECT sluice_ack(sluice_batch('readings', 2, '{\"order\": \"oldest\"}'))")
    assert db.execute("SELECT acked_seq FROM sluice_tables").fetchone() == (2,)
    b = one("SELECT sluice_batch('readings')")
    assert ids_of(db, b) == (2, 7, 5)
    assert one("SELECT sluice_ack(?)", b) == 5
    assert db.execute("SELECT acked_seq FROM sluice_tables").fetchone() == (10,)
    assert one("SELECT sluice_pending('readings')") == 0


def test_since_takes_the_rows_above_the_newest_older_row(db, one):
    db.execute("CREATE TABLE ev (id INTEGER PRIMARY KEY, at TEXT, v INTEGER)")
    db.execute("SELECT sluice_device('box-1')")
    db.execute("SELECT sluice_track('ev', '{\"time\": \"at\"}')")
    now = int(time.time())
    rows = [(now - 5 * 3600, 1), (now - 3 * 3600, 2), (now - 600, 3), (now - 60, 4)]
    for t, v in rows:
        db.execute("INSERT INTO ev (at, v) VALUES (strftime('%Y-%m-%dT%H:%M:%SZ', ?, 'unixepoch'), ?)", (t, v))
    b = one("SELECT sluice_batch('ev', NULL, '{\"since\": \"2 hours\"}')")
    assert ids_of(db, b) == (2, 4, 2)
    assert one("SELECT sluice_ack(?)", b) == 2
    # The older rows stay pending for a full sync.
    assert one("SELECT sluice_pending('ev')") == 2
    assert one("SELECT sluice_batch('ev', NULL, '{\"since\": 7200}')") is None
    b = one("SELECT sluice_batch('ev')")
    assert ids_of(db, b) == (0, 2, 2)
    one("SELECT sluice_ack(?)", b)
    assert db.execute("SELECT acked_seq FROM sluice_tables WHERE tbl = 'ev'").fetchone() == (4,)


def test_batch_options_errors(db, one):
    tracked_readings(db, 2)
    assert err(db, "SELECT sluice_batch('readings', 10, '{\"order\": \"sideways\"}')") == (
        'sluice_batch: option \'order\' must be "oldest" or "newest", got "sideways"'
    )
    assert err(db, "SELECT sluice_batch('readings', 10, '{\"colour\": 1}')") == (
        "sluice_batch: unknown option 'colour' (known options: order, since)"
    )
    assert err(db, "SELECT sluice_batch('readings', 10, '[1]')") == (
        'sluice_batch: options must be a JSON object like {"order": "newest"}, got an array'
    )
    assert err(db, "SELECT sluice_batch('readings', 10, '{\"since\": -1}')") == (
        "sluice_batch: option 'since' must be between 0 and 3162240000 seconds, got -1"
    )
    assert err(db, "SELECT sluice_batch('readings', 10, '{\"since\": \"2 hours\"}')") == (
        "sluice_batch: option 'since' needs the time column of 'readings'; declare it with "
        "SELECT sluice_track('readings', '{\"time\": \"column\"}')"
    )


def test_ack_refuses_a_foreign_batch(ext_path, db, one):
    tracked_readings(db, 2)
    other = connect(ext_path)
    tracked_readings(other, 2)
    b = one("SELECT sluice_batch('readings')")
    msg = err(other, "SELECT sluice_ack(?)", b)
    assert msg.startswith("sluice_ack: batch box-1/readings/") and "belongs to another database (stream id" in msg
    fresh = connect(ext_path)
    assert "belongs to another database: no table is tracked in this one" in err(fresh, "SELECT sluice_ack(?)", b)


@pytest.mark.parametrize(
    "arg, message",
    [
        ("NULL", "sluice_ack: the batch must be a blob, got NULL"),
        ("'abc'", "sluice_ack: the batch must be a blob, got text"),
        ("x'00'", "sluice_ack: not a sluice batch: it is 1 bytes, shorter than the smallest possible batch (21 bytes)"),
        ("zeroblob(100)", 'sluice_ack: not a sluice batch: it does not start with the magic bytes "SLB"'),
    ],
)
def test_ack_bad_arguments(db, arg, message):
    assert err(db, f"SELECT sluice_ack({arg})") == message


def test_ack_corrupt_batch(db, one):
    tracked_readings(db, 2)
    b = bytearray(one("SELECT sluice_batch('readings')"))
    b[20] ^= 0xFF
    assert err(db, "SELECT sluice_ack(?)", bytes(b)).startswith("sluice_ack: corrupt sluice batch: checksum mismatch")
    assert one("SELECT acked_seq FROM sluice_tables") == 0


def test_batch_errors(db, one):
    make_readings(db, 2)
    assert (
        err(db, "SELECT sluice_batch('readings')")
        == "sluice_batch: table 'readings' is not tracked; register it with SELECT sluice_track('readings')"
    )
    db.execute("SELECT sluice_track('readings')")
    assert err(db, "SELECT sluice_batch('readings')") == (
        "sluice_batch: no device id; set one with SELECT sluice_device('name')"
    )
    db.execute("SELECT sluice_device('box-1')")
    for bad in ("0", "-1", "1000001"):
        assert err(db, f"SELECT sluice_batch('readings', {bad})") == (
            f"sluice_batch: max_rows must be between 1 and 1000000, got {bad}"
        )
    assert err(db, "SELECT sluice_batch('readings', 'ten')") == (
        "sluice_batch: max_rows must be an integer, got text"
    )
    # NULL max_rows is the default (so that options can come alone).
    assert parse_batch(one("SELECT sluice_batch('readings', NULL)"))["row_count"] == 2
    assert err(db, "SELECT sluice_batch(NULL)") == "sluice_batch: the table name must be text, got NULL"
    assert parse_batch(one("SELECT sluice_batch('readings', 1000000)"))["row_count"] == 2


def test_batch_stops_before_16_mib(db, one):
    db.execute("CREATE TABLE big (id INTEGER PRIMARY KEY, payload TEXT)")
    db.execute("SELECT sluice_device('box-1')")
    db.execute("SELECT sluice_track('big')")
    db.execute("INSERT INTO big (payload) SELECT printf('%.7000000c', 'x') FROM (SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3)")
    h = parse_batch(one("SELECT sluice_batch('big')"))
    assert (h["row_count"], h["last_seq"]) == (2, 2)


def test_pending_errors(db):
    make_readings(db)
    assert err(db, "SELECT sluice_pending('readings')").startswith("sluice_pending: table 'readings' is not tracked")
    assert err(db, "SELECT sluice_pending(NULL)") == "sluice_pending: the table name must be text, got NULL"
    assert err(db, "SELECT sluice_pending(x'01')") == "sluice_pending: the table name must be text, got a blob of 1 bytes"


# --------------------------------------------------------------------------
# mutable tables


def test_mutable_update_makes_a_row_pending_again(db, one):
    db.execute("CREATE TABLE key_frames (id TEXT PRIMARY KEY, camera TEXT, description TEXT)")
    db.execute("INSERT INTO key_frames (id, camera) VALUES ('f1', 'c1'), ('f2', 'c1')")
    db.execute("SELECT sluice_device('box-1')")
    assert one("""SELECT sluice_track('key_frames', '{"mutable": true, "key": ["id"]}')""") == 1
    # Existing rows were given versions.
    assert db.execute("SELECT id, sluice_version FROM key_frames ORDER BY id").fetchall() == [("f1", 1), ("f2", 2)]
    assert one("SELECT sluice_pending('key_frames')") == 2
    b = one("SELECT sluice_batch('key_frames')")
    h = parse_batch(b)
    assert (h["base_seq"], h["last_seq"], h["row_count"]) == (0, 2, 2)
    assert h["columns"] == [("id", "text"), ("camera", "text"), ("description", "text")]
    assert one("SELECT sluice_ack(?)", b) == 2
    assert one("SELECT sluice_pending('key_frames')") == 0
    db.execute("UPDATE key_frames SET description = 'a person at the counter' WHERE id = 'f1'")
    assert one("SELECT sluice_version FROM key_frames WHERE id = 'f1'") == 3
    db.execute("INSERT INTO key_frames (id, camera) VALUES ('f3', 'c2')")
    assert one("SELECT sluice_version FROM key_frames WHERE id = 'f3'") == 4
    # An update that tries to clear the version gets a new one instead.
    db.execute("UPDATE key_frames SET sluice_version = NULL WHERE id = 'f2'")
    assert one("SELECT sluice_version FROM key_frames WHERE id = 'f2'") == 5
    assert one("SELECT sluice_pending('key_frames')") == 3
    h = parse_batch(one("SELECT sluice_batch('key_frames')"))
    assert (h["base_seq"], h["last_seq"], h["row_count"]) == (2, 5, 3)
    # Re-tracking does not add a second column, index or trigger.
    assert one("SELECT sluice_track('key_frames')") == 1
    assert one("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'") == 4
    assert one("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name LIKE '%sluice_version'") == 1


def test_mutable_row_updated_while_batch_in_flight(db, one):
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    db.execute("SELECT sluice_device('box-1')")
    db.execute("""SELECT sluice_track('t', '{"mutable": true}')""")
    db.execute("""SELECT sluice_insert('t', '[{"v": "a"}, {"v": "b"}]')""")
    b = one("SELECT sluice_batch('t')")
    db.execute("UPDATE t SET v = 'a2' WHERE id = 1")
    assert one("SELECT sluice_ack(?)", b) == 2
    assert one("SELECT sluice_pending('t')") == 1


def test_mutable_without_rowid_and_clock_is_shared(db, one):
    db.execute("CREATE TABLE a (k TEXT PRIMARY KEY, v) WITHOUT ROWID")
    db.execute("CREATE TABLE b (id INTEGER PRIMARY KEY, v)")
    db.execute("""SELECT sluice_track('a', '{"mutable": true}')""")
    db.execute("""SELECT sluice_track('b', '{"mutable": true}')""")
    db.execute("INSERT INTO a (k, v) VALUES ('x', 1)")
    db.execute("INSERT INTO b (v) VALUES (1)")
    db.execute("UPDATE a SET v = 2")
    assert one("SELECT sluice_version FROM a") == 3
    assert one("SELECT sluice_version FROM b") == 2
    assert one("SELECT value FROM sluice_clock") == 3


def test_mutable_keeps_existing_versions_and_clock_above_them(db, one):
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v, sluice_version INTEGER)")
    db.execute("INSERT INTO t (v, sluice_version) VALUES ('old', 100), ('new', NULL)")
    db.execute("""SELECT sluice_track('t', '{"mutable": true}')""")
    assert db.execute("SELECT v, sluice_version FROM t ORDER BY id").fetchall() == [("old", 100), ("new", 101)]


# --------------------------------------------------------------------------
# cleanup


def ack_all(db, one, table="readings"):
    while True:
        b = one(f"SELECT sluice_batch('{table}', 2)")
        if b is None:
            return
        one("SELECT sluice_ack(?)", b)


def test_cleanup_never_deletes_pending_rows(db, one):
    tracked_readings(db, 10)
    assert one("SELECT sluice_cleanup('readings', 0)") == 0
    b = one("SELECT sluice_batch('readings', 4)")
    one("SELECT sluice_ack(?)", b)
    assert one("SELECT sluice_cleanup('readings', 0)") == 4
    assert [r[0] for r in db.execute("SELECT id FROM readings")] == list(range(5, 11))
    assert one("SELECT sluice_pending('readings')") == 6


def test_cleanup_waits_for_keep(db, one):
    tracked_readings(db, 6)
    ack_all(db, one)  # acks at seq 2, 4, 6
    assert one("SELECT count(*) FROM sluice_acks") == 3
    assert one("SELECT sluice_cleanup('readings', '1 hour')") == 0
    # Pretend the ack of seq 2 happened 2 hours ago and the one of 4 90 minutes ago.
    db.execute("UPDATE sluice_acks SET acked_at = acked_at - 7200000 WHERE acked_seq = 2")
    db.execute("UPDATE sluice_acks SET acked_at = acked_at - 5400000 WHERE acked_seq = 4")
    assert one("SELECT sluice_cleanup('readings', '100 minutes')") == 2
    assert one("SELECT sluice_cleanup('readings', 3600)") == 2
    assert [r[0] for r in db.execute("SELECT id FROM readings")] == [5, 6]
    # The ack at seq 2 is pruned; the newest one before the cutoff stays.
    assert [r[0] for r in db.execute("SELECT acked_seq FROM sluice_acks ORDER BY 1")] == [4, 6]


def test_cleanup_keeps_the_rowid_high_water_mark(db, one):
    tracked_readings(db, 3)
    ack_all(db, one)
    assert one("SELECT sluice_cleanup('readings', '0')") == 2
    assert [r[0] for r in db.execute("SELECT id FROM readings")] == [3]
    assert one("SELECT sluice_pending('readings')") == 0
    db.execute("""SELECT sluice_insert('readings', '[{"ts": 1, "camera": "c", "people": 1, "screenshot_path": null}]')""")
    assert one("SELECT sluice_pending('readings')") == 1
    assert parse_batch(one("SELECT sluice_batch('readings')"))["last_seq"] == 4


def test_cleanup_autoincrement_table_can_be_emptied(db, one):
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, v)")
    db.execute("SELECT sluice_device('box-1')")
    db.execute("SELECT sluice_track('t')")
    db.execute("""SELECT sluice_insert('t', '[{"v": 1}, {"v": 2}]')""")
    ack_all(db, one, "t")
    assert one("SELECT sluice_cleanup('t', 0)") == 2
    db.execute("""SELECT sluice_insert('t', '[{"v": 3}]')""")
    assert one("SELECT sluice_pending('t')") == 1


def test_rows_deleted_outside_cleanup_are_detected(db, one):
    tracked_readings(db, 3)
    ack_all(db, one)
    db.execute("DELETE FROM readings")
    msg = err(db, "SELECT sluice_batch('readings')")
    assert msg.startswith(
        "sluice_batch: the newest rows of 'readings' were deleted outside sluice_cleanup "
        "(largest rowid none, acknowledged up to 3)"
    )
    assert err(db, "SELECT sluice_pending('readings')").startswith("sluice_pending: the newest rows")
    # The documented remedy restores the high-water mark.
    db.execute("INSERT INTO readings (id, ts, camera) VALUES (3, 0, 'placeholder')")
    db.execute("""SELECT sluice_insert('readings', '[{"ts": 1, "camera": "c", "people": 1, "screenshot_path": null}]')""")
    assert one("SELECT sluice_pending('readings')") == 1


def test_cleanup_mutable_table(db, one):
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
    db.execute("SELECT sluice_device('box-1')")
    db.execute("""SELECT sluice_track('t', '{"mutable": true}')""")
    db.execute("""SELECT sluice_insert('t', '[{"v": 1}, {"v": 2}, {"v": 3}]')""")
    b = one("SELECT sluice_batch('t')")
    db.execute("UPDATE t SET v = 20 WHERE id = 2")  # pending again
    one("SELECT sluice_ack(?)", b)
    assert one("SELECT sluice_cleanup('t', 0)") == 2
    assert db.execute("SELECT id, v FROM t").fetchall() == [(2, 20)]


@pytest.mark.parametrize(
    "keep, message",
    [
        ("NULL", "keep must be seconds (an integer) or text like '24 hours', got NULL"),
        ("1.5", "keep must be seconds (an integer) or text like '24 hours', got the real 1.5"),
        ("-1", "keep must not be negative, got -1"),
        ("'soon'", "'soon' is not a duration; write seconds as a number, or a number and a unit (s, m, h, d, w or seconds, minutes, hours, days, weeks), e.g. '24 hours'"),
        ("''", "keep must not be empty"),
        ("9223372036854775807", "keep is too long (9223372036854775807 seconds; the limit is 3162240000, 100 years)"),
    ],
)
def test_cleanup_bad_keep(db, keep, message):
    tracked_readings(db, 1)
    assert err(db, f"SELECT sluice_cleanup('readings', {keep})") == "sluice_cleanup: " + message


@pytest.mark.parametrize("keep, ok", [("'90s'", True), ("'30 minutes'", True), ("'24 hours'", True), ("'7 days'", True), ("'0'", True), ("86400", True)])
def test_cleanup_keep_forms(db, one, keep, ok):
    tracked_readings(db, 1)
    assert one(f"SELECT sluice_cleanup('readings', {keep})") == 0


# --------------------------------------------------------------------------
# hostile input


def test_injection_in_table_names_is_inert(db, one):
    evil = 'x"; drop table t; --'
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
    assert err(db, "SELECT sluice_insert(?, '[]')", evil) == f"sluice_insert: no such table: {evil}"
    assert err(db, "SELECT sluice_track(?)", evil) == f"sluice_track: no such table: {evil}"
    assert err(db, "SELECT sluice_pending(?)", evil) == f"sluice_pending: no such table: {evil}"
    db.execute('CREATE TABLE "x""; drop table t; --" (id INTEGER PRIMARY KEY, "we""ird" TEXT)')
    db.execute("SELECT sluice_device('box-1')")
    assert one("SELECT sluice_insert(?, ?)", evil, json.dumps([{'we"ird': "v"}])) == 1
    assert one("SELECT sluice_track(?, ?)", evil, json.dumps({"local_only": ['we"ird']})) == 1
    assert one("SELECT sluice_pending(?)", evil) == 1
    h = parse_batch(one("SELECT sluice_batch(?)", evil))
    assert h["table"] == evil and h["columns"] == [("id", "integer")]
    assert one("SELECT count(*) FROM sqlite_master WHERE name = 't'") == 1
    # A mutable table with a hostile name gets working triggers.
    db.execute('CREATE TABLE "m\'; --" (id INTEGER PRIMARY KEY, v)')
    assert one("""SELECT sluice_track('m''; --', '{"mutable": true}')""") == 1
    db.execute("""INSERT INTO "m'; --" (v) VALUES (1)""")
    assert one("""SELECT sluice_pending('m''; --')""") == 1


def test_injection_in_column_keys_is_inert(db):
    db.execute("CREATE TABLE t (a)")
    key = 'a") VALUES (1); DROP TABLE t; --'
    assert err(db, "SELECT sluice_insert('t', ?)", json.dumps([{key: 1}])) == f"sluice_insert: table 't' has no column '{key}'"
    assert count(db, "t") == 0


def test_garbage_never_crashes(db):
    """Odd arguments to every function: an error or a result, never a crash."""
    tracked_readings(db, 2)
    values = ["NULL", "0", "-1", "1e308", "''", "'readings'", "x''", "x'534c42'", "zeroblob(64)", "'[]'", "'{}'", "char(0)"]
    for name, narg in EXPECTED_FUNCTIONS:
        # Beyond two arguments the rest are NULL (test_sqlite_quarantine.py
        # varies them for sluice_quarantine).
        rest = ["NULL"] * max(narg - 2, 0)
        args_list = [[]] if narg == 0 else [[v] for v in values] if narg == 1 else [[a, b] + rest for a in values for b in values]
        for args in args_list:
            try:
                db.execute(f"SELECT {name}({', '.join(args)})").fetchall()
            except sqlite3.Error as e:
                assert str(e).startswith(name + ":"), (name, args, str(e))
    assert db.execute("SELECT 1").fetchone() == (1,)


# --------------------------------------------------------------------------
# the sqlite3 shell


def test_sqlite3_shell_session(ext_path, tmp_path):
    script = (
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);\n"
        "SELECT sluice_version();\n"
        """SELECT sluice_insert('t', '[{"v": "a"}, {"v": "b"}]');\n"""
        "SELECT sluice_device('box-1'), sluice_track('t'), sluice_pending('t');\n"
        "SELECT sluice_ack(sluice_batch('t'));\n"
        "SELECT sluice_pending('t');\n"
        "SELECT sluice_insert('nope', '[]');\n"
    )
    r = subprocess.run(
        ["sqlite3", "-cmd", f".load {ext_path}", str(tmp_path / "edge.db")],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.stdout.splitlines() == ["v0.2.0", "2", "box-1|1|2", "2", "0"], r
    assert "sluice_insert: no such table: nope" in r.stderr
    r = subprocess.run(
        ["sqlite3", ":memory:", f".load {ext_path}", "select sluice_version()"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (r.returncode, r.stdout.strip()) == (0, "v0.2.0"), r


def test_file_database_closes_cleanly(ext_path, tmp_path):
    path = tmp_path / "edge.db"
    con = connect(ext_path, str(path))
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
    con.execute("""SELECT sluice_insert('t', '[{"v": 1}]')""")
    con.close()
    con = connect(ext_path, str(path))
    assert con.execute("SELECT count(*) FROM t").fetchone() == (1,)
    con.close()


# --------------------------------------------------------------------------
# docs/sqlite.md: every example runs and shows its real result


DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "sqlite.md")


def render(value):
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return "<blob>"
    return str(value)


def doc_examples():
    """(line number, statement, expected rows or None, expected error or None)
    for every statement of every ```sql block of docs/sqlite.md."""
    import re

    text = open(DOCS, encoding="utf-8").read()
    examples = []
    for m in re.finditer(r"^```sql\n(.*?)^```", text, re.S | re.M):
        first_line = text[: m.start(1)].count("\n") + 1
        stmt, stmt_line = [], None
        for i, line in enumerate(m.group(1).splitlines()):
            lineno = first_line + i
            if line.startswith("-- result:"):
                assert examples, f"docs/sqlite.md:{lineno}: result before any statement"
                examples[-1][2].append(line[len("-- result:"):].strip())
            elif line.startswith("-- error:"):
                assert examples, f"docs/sqlite.md:{lineno}: error before any statement"
                examples[-1][3] = line[len("-- error:"):].strip()
            elif line.startswith("--") or (not line.strip() and not stmt):
                continue
            else:
                stmt_line = stmt_line or lineno
                stmt.append(line)
                if line.rstrip().endswith(";"):
                    examples.append([stmt_line, "\n".join(stmt), [], None])
                    stmt, stmt_line = [], None
        assert not stmt, f"docs/sqlite.md:{stmt_line}: statement without a final ';'"
    return examples


def test_docs_examples(ext_path):
    examples = doc_examples()
    assert len(examples) > 30
    documented = {name for name, _ in EXPECTED_FUNCTIONS}
    text = open(DOCS, encoding="utf-8").read()
    for name in documented:
        assert f"\n## {name}(" in text, f"docs/sqlite.md has no heading for {name}"
    con = connect(ext_path)
    for line, sql, rows, error in examples:
        where = f"docs/sqlite.md:{line}: {sql}"
        try:
            got = ["|".join(render(v) for v in row) for row in con.execute(sql).fetchall()]
        except sqlite3.Error as e:
            assert error is not None, f"{where}\nfailed: {e}"
            assert str(e) == error, where
            continue
        assert error is None, f"{where}\ndid not fail; expected: {error}"
        if rows:
            assert got == rows, where
