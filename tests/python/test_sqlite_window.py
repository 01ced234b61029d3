"""Window aggregation in sluice0.so: sluice_bucket, sluice_percentile (aggregate
and moving-frame window function), sketches, compression and packing. Results
are checked against Python's own computation; errors name the function."""

import json
import math
import random
import sqlite3

import pytest


def err(db, sql, *params):
    with pytest.raises(sqlite3.Error) as e:
        db.execute(sql, params).fetchall()
    return str(e.value)


def exact_cont(values, p):
    v = sorted(values)
    pos = p * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


@pytest.mark.parametrize(
    "ts,width,want",
    [
        (1714566896, 300, 1714566600),
        (-1, 300, -300),
        (1714566896.5, "1 hour", 1714564800.0),
        ("2024-05-01T12:34:56.789Z", "5 minutes", "2024-05-01T12:30:00.000Z"),
        ("2024-05-01 12:34:56+02:00", 900, "2024-05-01 12:30:00+02:00"),
        ("2024-05-01 12:34", "1 day", "2024-05-01 00:00"),
        ("2024-05-01", "1 day", "2024-05-01"),
        ("2024-12-31 23:59:59", 86400, "2024-12-31 00:00:00"),
        (None, 300, None),
    ],
)
def test_bucket(one, ts, width, want):
    assert one("SELECT sluice_bucket(?, ?)", ts, width) == want


def test_bucket_agrees_with_sqlite_datetime(db):
    rnd = random.Random(3)
    for _ in range(300):
        t = rnd.randrange(0, 4_000_000_000)
        w = rnd.choice([60, 300, 3600, 86400, 7 * 86400])
        got, want = db.execute(
            "SELECT sluice_bucket(datetime(?, 'unixepoch'), ?), datetime(sluice_bucket(?, ?), 'unixepoch')",
            (t, w, t, w),
        ).fetchone()
        assert got == want, (t, w)


@pytest.mark.parametrize(
    "sql,msg",
    [
        ("SELECT sluice_bucket('2024-02-30 00:00', 60)", "sluice_bucket: ts '2024-02-30 00:00' is not an ISO-8601 time"),
        ("SELECT sluice_bucket(x'00', 60)", "sluice_bucket: ts must be unix seconds or ISO-8601 text, got a blob of 1 bytes"),
        ("SELECT sluice_bucket(1, NULL)", "sluice_bucket: width must be seconds or a duration like '5 minutes', got NULL"),
        ("SELECT sluice_bucket(1, -5)", "sluice_bucket: width must be between 1 second and 100 years, got -5 seconds"),
        ("SELECT sluice_bucket(1, '5 fortnights')", "sluice_bucket: width '5 fortnights' is not a duration"),
        ("SELECT sluice_bucket(1, 9223372036854775807)", "sluice_bucket: width must be between 1 second and 100 years"),
        ("SELECT sluice_bucket(1e999, 60)", "sluice_bucket: ts must be finite"),
    ],
)
def test_bucket_errors(db, sql, msg):
    assert err(db, sql).startswith(msg)


@pytest.fixture
def series(db):
    rnd = random.Random(7)
    values = [rnd.lognormvariate(3, 1) for _ in range(2000)]
    db.execute("CREATE TABLE s (id INTEGER PRIMARY KEY, g INTEGER, x REAL)")
    db.executemany("INSERT INTO s (g, x) VALUES (?, ?)", [(i % 4, v) for i, v in enumerate(values)])
    db.execute("INSERT INTO s (g, x) VALUES (0, NULL)")
    return values


def test_percentile_aggregate(db, series):
    for p in [0, 0.01, 0.5, 0.95, 0.99, 1]:
        got = db.execute("SELECT sluice_percentile(x, ?) FROM s", (p,)).fetchone()[0]
        assert got == pytest.approx(exact_cont(series, p), rel=1e-12)
    groups = db.execute("SELECT g, sluice_percentile(x, 0.95) FROM s GROUP BY g ORDER BY g").fetchall()
    for g, got in groups:
        assert got == pytest.approx(exact_cont(series[g::4], 0.95), rel=1e-12)
    assert db.execute("SELECT sluice_percentile(x, 0.5) FROM s WHERE 0").fetchone()[0] is None


def test_percentile_moving_window(db, series):
    rows = db.execute(
        "SELECT id, sluice_percentile(x, 0.9) OVER (ORDER BY id ROWS BETWEEN 9 PRECEDING AND CURRENT ROW) "
        "FROM s WHERE x IS NOT NULL ORDER BY id"
    ).fetchall()
    assert len(rows) == len(series)
    for i, (_, got) in enumerate(rows):
        assert got == pytest.approx(exact_cont(series[max(0, i - 9): i + 1], 0.9), rel=1e-12)
    # A frame that starts and ends ahead of the current row.
    rows = db.execute(
        "SELECT sluice_percentile(x, 0.5) OVER (ORDER BY id ROWS BETWEEN 1 FOLLOWING AND 3 FOLLOWING) "
        "FROM s WHERE x IS NOT NULL ORDER BY id"
    ).fetchall()
    for i, (got,) in enumerate(rows[:-3]):
        assert got == pytest.approx(exact_cont(series[i + 1: i + 4], 0.5), rel=1e-12)
    assert rows[-1][0] is None


@pytest.mark.parametrize(
    "sql,msg",
    [
        ("SELECT sluice_percentile('a', 0.5)", "sluice_percentile: x must be a number, got text"),
        ("SELECT sluice_percentile(1, NULL)", "sluice_percentile: p must be a number between 0 and 1, got NULL"),
        ("SELECT sluice_percentile(1, -0.1)", "sluice_percentile: p must be between 0 and 1"),
        ("SELECT sluice_percentile(x, id) FROM s", "sluice_percentile: p must be"),
        ("SELECT sluice_percentile(x, CASE WHEN id < 3 THEN 0.5 ELSE 0.6 END) FROM s", "sluice_percentile: p must be the same for every row of a group, got 0.5 and 0.6"),
    ],
)
def test_percentile_errors(db, series, sql, msg):
    assert err(db, sql).startswith(msg)


def test_sketch_quantiles_within_one_percent(db, series):
    s = sorted(series)
    for p in [0.01, 0.5, 0.95, 0.99]:
        got = db.execute("SELECT sluice_sketch_quantile(sluice_sketch(x), ?) FROM s", (p,)).fetchone()[0]
        want = s[math.floor(p * (len(s) - 1))]
        assert abs(got - want) <= 0.01 * want * (1 + 1e-9), (p, got, want)
    # Merged per-group sketches answer like the sketch of everything.
    merged, whole = db.execute(
        "SELECT (SELECT sluice_sketch_quantile(sluice_sketch_merge(sk), 0.95) FROM "
        "(SELECT sluice_sketch(x) AS sk FROM s GROUP BY g)), "
        "(SELECT sluice_sketch_quantile(sluice_sketch(x), 0.95) FROM s)"
    ).fetchone()
    assert merged == whole
    assert db.execute("SELECT sluice_sketch(x) FROM s WHERE x IS NULL").fetchone()[0] is None
    assert db.execute("SELECT sluice_sketch_merge(NULL)").fetchone()[0] is None


def test_sketch_handles_negative_and_zero(one):
    assert one("SELECT sluice_sketch_quantile(sluice_sketch(column1), 0) FROM (VALUES (-5), (0), (3))") == -5
    assert one("SELECT sluice_sketch_quantile(sluice_sketch(column1), 0.5) FROM (VALUES (-5), (0), (3))") == 0
    got = one("SELECT sluice_sketch_quantile(sluice_sketch(column1), 0.4) FROM (VALUES (-5), (-4), (3))")
    assert abs(got + 5) <= 0.05


@pytest.mark.parametrize(
    "sql,msg",
    [
        ("SELECT sluice_sketch(x'01')", "sluice_sketch: x must be a number, got a blob of 1 bytes"),
        ("SELECT sluice_sketch(1e999)", "sluice_sketch: x must be finite, got inf"),
        ("SELECT sluice_sketch_merge('abc')", "sluice_sketch_merge: the sketch must be a blob made by sluice_sketch, got text"),
        ("SELECT sluice_sketch_quantile(randomblob(100), 0.5)", "sluice_sketch_quantile: not a sluice sketch"),
        ("SELECT sluice_sketch_quantile(sluice_sketch(1), 'p')", "sluice_sketch_quantile: p must be a number between 0 and 1, got text"),
    ],
)
def test_sketch_errors(db, sql, msg):
    assert err(db, sql).startswith(msg)


def test_damaged_sketch_is_refused(db):
    blob = bytearray(db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) "
            "SELECT sluice_sketch(i) FROM n").fetchone()[0])
    assert blob[:3] == b"SLS"
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x40
        msg = err(db, "SELECT sluice_sketch_quantile(?, 0.5)", bytes(bad))
        assert msg.startswith("sluice_sketch_quantile: ")
    for n in range(len(blob)):
        assert err(db, "SELECT sluice_sketch_quantile(?, 0.5)", bytes(blob[:n])).startswith("sluice_sketch_quantile: ")


def test_compress_round_trip(one):
    text = "état BUSY " * 500
    assert one("SELECT sluice_decompress(sluice_compress(?))", text) == text
    blob = bytes(range(256)) * 10
    assert one("SELECT sluice_decompress(sluice_compress(?, 0))", blob) == blob
    assert one("SELECT sluice_decompress(sluice_compress(x''))") == b""
    assert one("SELECT sluice_compress(NULL)") is None
    assert one("SELECT length(sluice_compress(?, 11))", text) < 60


def test_compress_errors_and_hostile_input(db):
    assert err(db, "SELECT sluice_compress('x', 12)") == "sluice_compress: quality must be between 0 and 11, got 12"
    assert err(db, "SELECT sluice_compress('x', 'best')") == "sluice_compress: quality must be an integer, got text"
    assert err(db, "SELECT sluice_decompress('x')").startswith("sluice_decompress: the value must be a blob")
    good = bytes(db.execute("SELECT sluice_compress(?)", ("hello " * 100,)).fetchone()[0])
    # A length that lies (4 GiB) is refused before any allocation.
    liar = good[:5] + b"\xff\xff\xff\xff" + good[9:]
    assert "the limit is" in err(db, "SELECT sluice_decompress(?)", liar)
    # A brotli bomb cannot produce more than the length it declares.
    bomb = bytes(db.execute("SELECT sluice_compress(zeroblob(10000000))").fetchone()[0])
    small = bomb[:5] + (100).to_bytes(4, "little") + bomb[9:]
    assert "10000000" not in err(db, "SELECT sluice_decompress(?)", small)
    for n in range(len(good)):
        try:
            db.execute("SELECT sluice_decompress(?)", (good[:n],)).fetchall()
        except sqlite3.Error as e:
            assert str(e).startswith("sluice_decompress: ")


def test_pack_and_unpack(db, series):
    rows = db.execute(
        "SELECT g, sluice_pack(id, x), sluice_pack(json_object('id', id, 'x', x)) FROM s GROUP BY g ORDER BY g"
    ).fetchall()
    for g, packed, packed_obj in rows:
        arrays = json.loads(db.execute("SELECT sluice_unpack(?)", (packed,)).fetchone()[0])
        want = db.execute("SELECT id, x FROM s WHERE g = ? ORDER BY id", (g,)).fetchall()
        assert sorted((a[0], a[1]) for a in arrays) == sorted(want)
        back = db.execute(
            "SELECT j.value ->> '$.id', j.value ->> '$.x' FROM json_each(sluice_unpack(?)) AS j", (packed_obj,)
        ).fetchall()
        # SQLite 3.40's json_object writes reals with 15 significant digits.
        assert [b[0] for b in sorted(back)] == [w[0] for w in sorted(want)]
        assert [b[1] for b in sorted(back)] == pytest.approx([w[1] for w in sorted(want)], rel=1e-14)
    # Text with quotes, unicode and control characters survives.
    tricky = 'a"b\\c\n\u00e9\u2603\x01'
    got = db.execute("SELECT sluice_unpack(sluice_pack(?, NULL, 1.5))", (tricky,)).fetchone()[0]
    assert json.loads(got) == [[tricky, None, 1.5]]
    # Packing compresses telemetry well.
    size = db.execute("SELECT length(sluice_pack(id, g, round(x, 1))) FROM s").fetchone()[0]
    raw = len(json.dumps(db.execute("SELECT id, g, round(x, 1) FROM s").fetchall()))
    assert size < raw / 2
    assert db.execute("SELECT sluice_pack(1) WHERE 0").fetchone()[0] is None
    assert err(db, "SELECT sluice_unpack(x'00')").startswith("sluice_unpack: not a value made by")
    assert err(db, "SELECT sluice_unpack(42)") == "sluice_unpack: the pack must be a blob made by sluice_pack, got the integer 42"
