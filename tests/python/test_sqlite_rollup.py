"""Registered rollups (sluice_rollup, sluice_rollup_run) on the default edge
schema: results equal a plain GROUP BY, late rows re-aggregate their window,
runs are idempotent, the target syncs as a mutable table, and the field's
workload reduces rows at least 100:1."""

import datetime
import json
import os
import random
import sqlite3

import pytest

from conftest import connect

SCHEMA = os.path.join(os.path.dirname(__file__), "..", "..", "sql", "edge_schema.sql")
T0 = datetime.datetime(2026, 11, 22, 10, 0, 0)


def err(db, sql, *params):
    with pytest.raises(sqlite3.Error) as e:
        db.execute(sql, params).fetchall()
    return str(e.value)


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def samples(n_per_camera, cameras=4, start=0, rnd=None):
    rnd = rnd or random.Random(1)
    rows = []
    for i in range(start, start + n_per_camera):
        for c in range(cameras):
            t = T0 + datetime.timedelta(seconds=3 * i, milliseconds=rnd.randrange(1000))
            rows.append({"camera_id": f"cam{c}", "location_id": "loc-1", "recorded_at": iso(t),
                         "people_count": rnd.randrange(12), "processing_ms": round(rnd.lognormvariate(3, 0.5), 2)})
    return rows


@pytest.fixture
def edge(ext_path):
    con = connect(ext_path)
    con.executescript(open(SCHEMA, encoding="utf-8").read())
    yield con
    con.close()


def insert(db, rows):
    db.execute("SELECT sluice_insert('metrics', ?)", (json.dumps(rows),))


def expected(db):
    out = {}
    for loc, cam, w, n, avg, mx in db.execute(
        "SELECT location_id, camera_id, sluice_bucket(recorded_at, 300) AS w, count(*), avg(people_count), "
        "max(people_count) FROM metrics GROUP BY 1, 2, 3"
    ):
        out[(loc, cam, w)] = (n, avg, mx)
    return out


def actual(db):
    return {
        (loc, cam, w): (n, avg, mx)
        for loc, cam, w, n, avg, mx in db.execute(
            "SELECT location_id, camera_id, window_start, samples, people_avg, people_max FROM metrics_5m"
        )
    }


def test_default_rollup_matches_group_by_and_reduces_100_to_1(edge):
    # The field: one sample every 3 s per camera; two hours of four cameras.
    insert(edge, samples(2400))
    written = edge.execute("SELECT sluice_rollup_run()").fetchone()[0]
    raw = edge.execute("SELECT count(*) FROM metrics").fetchone()[0]
    rolled = edge.execute("SELECT count(*) FROM metrics_5m").fetchone()[0]
    assert written == rolled == 4 * 24
    assert raw / rolled >= 100
    assert actual(edge) == expected(edge)
    # p95 and the sketch agree with the raw rows of a window.
    w = edge.execute(
        "SELECT window_start, processing_ms_p95, processing_ms_sketch, raw FROM metrics_5m "
        "WHERE camera_id = 'cam2' ORDER BY window_start LIMIT 1 OFFSET 5"
    ).fetchone()
    ms = sorted(r[0] for r in edge.execute(
        "SELECT processing_ms FROM metrics WHERE camera_id = 'cam2' AND sluice_bucket(recorded_at, 300) = ?", (w[0],)))
    assert w[1] == pytest.approx(edge.execute("SELECT sluice_percentile(value, 0.95) FROM json_each(?)", (json.dumps(ms),)).fetchone()[0])
    q = edge.execute("SELECT sluice_sketch_quantile(?, 0.5)", (w[2],)).fetchone()[0]
    assert abs(q - ms[(len(ms) - 1) // 2]) <= 0.01 * ms[(len(ms) - 1) // 2]
    unpacked = json.loads(edge.execute("SELECT sluice_unpack(?)", (w[3],)).fetchone()[0])
    assert sorted(r["processing_ms"] for r in unpacked) == ms
    assert set(unpacked[0]) == {"id", "camera_id", "location_id", "recorded_at", "people_count", "processing_ms"}


def test_runs_are_incremental_idempotent_and_handle_late_rows(edge):
    insert(edge, samples(400))
    first = edge.execute("SELECT sluice_rollup_run('metrics_5m')").fetchone()[0]
    assert first == 16
    versions = dict(edge.execute("SELECT id, sluice_version FROM metrics_5m"))
    assert edge.execute("SELECT sluice_rollup_run()").fetchone()[0] == 0
    assert dict(edge.execute("SELECT id, sluice_version FROM metrics_5m")) == versions
    # New rows for the next windows plus late rows for an old window.
    insert(edge, samples(100, start=400))
    late = [{"camera_id": "cam1", "location_id": "loc-1", "recorded_at": iso(T0 + datetime.timedelta(seconds=7)),
             "people_count": 99, "processing_ms": 1.0}]
    insert(edge, late)
    n = edge.execute("SELECT sluice_rollup_run()").fetchone()[0]
    assert n == 4 + 1  # the 5 new minutes fill one new window per camera, plus the late one
    assert actual(edge) == expected(edge)
    changed = {i for i, v in edge.execute("SELECT id, sluice_version FROM metrics_5m") if versions.get(i) != v}
    assert len(changed) == n
    assert edge.execute("SELECT sluice_rollup_run()").fetchone()[0] == 0


def test_rollup_target_syncs_as_a_mutable_table(edge):
    edge.execute("SELECT sluice_device('box-1')")
    insert(edge, samples(200))
    edge.execute("SELECT sluice_rollup_run()")
    tracked = edge.execute("SELECT mutable, local_only, key_columns FROM sluice_tables WHERE tbl = 'metrics_5m'").fetchone()
    assert tracked == (1, '["id"]', '["location_id","camera_id","window_start"]')
    assert edge.execute("SELECT sluice_pending('metrics_5m')").fetchone()[0] == 8
    edge.execute("SELECT sluice_ack(sluice_batch('metrics_5m'))")
    assert edge.execute("SELECT sluice_pending('metrics_5m')").fetchone()[0] == 0
    insert(edge, samples(1, start=10))  # a late sample for each camera's first window
    edge.execute("SELECT sluice_rollup_run()")
    assert edge.execute("SELECT sluice_pending('metrics_5m')").fetchone()[0] == 4


def test_rollup_with_numbers_and_quoted_names(db):
    db.execute('CREATE TABLE "we""ird" (id INTEGER PRIMARY KEY, "t s" INTEGER, "g""1" TEXT, v REAL)')
    db.executemany('INSERT INTO "we""ird" ("t s", "g""1", v) VALUES (?, ?, ?)',
                   [(1000 + 7 * i, "a'b" if i % 2 else 'x"y', i) for i in range(100)])
    opts = {"source": 'we"ird', "time": "t s", "group": ['g"1'], "width": 60, "target": 'out"put',
            "measures": {"n": "count", "s": "sum(v)", "lo": "min(v)", "p": "p99.9(v)", "k": "sketch(v)"}}
    assert db.execute("SELECT sluice_rollup('r''1', ?)", (json.dumps(opts),)).fetchone()[0] == 1
    assert db.execute("SELECT sluice_rollup_run('r''1')").fetchone()[0] == 26  # 13 minutes x 2 groups
    got = db.execute('SELECT sum(n), sum(s), min(lo) FROM "out""put"').fetchone()
    assert got == (100, sum(range(100)), 0)
    assert db.execute('SELECT window_start FROM "out""put" ORDER BY window_start LIMIT 1').fetchone()[0] == 960


@pytest.mark.parametrize(
    "name,opts,msg",
    [
        ("r", "[]", "sluice_rollup: options must be a JSON object"),
        ("r", "{", "sluice_rollup: options are not valid JSON"),
        ("r", '{"source": "nope"}', "sluice_rollup: no such table: nope"),
        ("r", '{"source": "metrics", "time": "recorded_at", "width": 300, "target": "x", "measures": {}, "extra": 1}',
         "sluice_rollup: unknown option 'extra'"),
        ("r", '{"source": "metrics", "time": "recorded_at", "width": 0, "target": "x", "measures": {"n": "count"}}',
         "sluice_rollup: width must be between 1 second and 100 years"),
        ("r", '{"source": "metrics", "time": "recorded_at", "width": 300, "target": "x", "measures": {"n": "avg(nope)"}}',
         "sluice_rollup: measure 'n': table 'metrics' has no column 'nope'"),
        ("r", '{"source": "metrics", "time": "recorded_at", "width": 300, "target": "x", "measures": {"id": "count"}}',
         "sluice_rollup: measure column 'id' is empty or clashes"),
        ("r", '{"source": "metrics", "time": "recorded_at", "width": 300, "target": "x", "measures": {"n": "p101(people_count)"}}',
         "sluice_rollup: measure 'n': 'p101(people_count)' is not a measure"),
        ("r", '{"source": "metrics", "time": "recorded_at", "group": "camera_id", "width": 300, "target": "x", "measures": {"n": "count"}}',
         "sluice_rollup: option 'group' must be an array of column names"),
        ("r", '{"source": "metrics", "time": "recorded_at", "width": 300, "target": "metrics", "measures": {"n": "count"}}',
         "sluice_rollup: the target must not be the source table"),
        ("", "{}", "sluice_rollup: the rollup name must not be empty"),
        (None, "{}", "sluice_rollup: the rollup name must be text, got NULL"),
    ],
)
def test_rollup_errors(edge, name, opts, msg):
    assert err(edge, "SELECT sluice_rollup(?, ?)", name, opts).startswith(msg)


def test_rollup_run_errors_and_direct_only(edge):
    assert err(edge, "SELECT sluice_rollup_run('nope')") == \
        "sluice_rollup_run: no rollup named 'nope'; declare it with sluice_rollup"
    assert err(edge, "SELECT sluice_rollup_run(NULL)") == "sluice_rollup_run: the rollup name must be text, got NULL"
    edge.execute("CREATE VIEW v AS SELECT sluice_rollup_run() AS n")
    assert "unsafe use of sluice_rollup_run" in err(edge, "SELECT * FROM v")
    # A source column dropped later is a clear error at run time, and nothing changes.
    edge.execute("CREATE TABLE s (id INTEGER PRIMARY KEY, ts INTEGER, v REAL)")
    edge.execute("INSERT INTO s (ts, v) VALUES (1, 1)")
    edge.execute("""SELECT sluice_rollup('s1', '{"source": "s", "time": "ts", "width": 60, "target": "s1", "measures": {"m": "max(v)"}, "track": false}')""")
    edge.execute("ALTER TABLE s DROP COLUMN v")
    assert err(edge, "SELECT sluice_rollup_run('s1')") == \
        "sluice_rollup_run: rollup 's1': measure 'm': table 's' has no column 'v'"


def test_a_row_whose_time_is_not_a_time_is_skipped_and_recorded_not_blocking(edge):
    insert(edge, samples(10, cameras=1))
    # A stray row: its time is text but not ISO-8601.
    edge.execute("INSERT INTO metrics (camera_id, location_id, recorded_at, people_count, processing_ms) "
                 "VALUES ('cam0', 'loc-1', 'yesterday-ish', 3, 1.0)")
    bad = edge.execute("SELECT max(rowid) FROM metrics").fetchone()[0]
    assert edge.execute("SELECT sluice_rollup_run()").fetchone()[0] >= 1
    got = {(r[0], r[1]): r[2] for r in edge.execute("SELECT camera_id, window_start, samples FROM metrics_5m")}
    assert sum(got.values()) == 10, got
    skipped = edge.execute("SELECT name, row_id, reason FROM sluice_rollup_skipped").fetchall()
    assert len(skipped) == 1 and skipped[0][0] == "metrics_5m" and skipped[0][1] == bad, skipped
    assert "sluice_bucket" not in skipped[0][2] and "yesterday-ish" in skipped[0][2], skipped
    # Idempotent; a late valid row in the same window re-aggregates it, the
    # stray row stays out.
    assert edge.execute("SELECT sluice_rollup_run()").fetchone()[0] == 0
    insert(edge, samples(1, cameras=1, start=2, rnd=random.Random(9)))
    edge.execute("SELECT sluice_rollup_run()")
    assert edge.execute("SELECT sum(samples) FROM metrics_5m").fetchone()[0] == 11
    assert edge.execute("SELECT count(*) FROM sluice_rollup_skipped").fetchone()[0] == 1
    # The raw row itself is still there (it syncs as it is).
    assert edge.execute("SELECT recorded_at FROM metrics WHERE rowid = ?", (bad,)).fetchone() == ("yesterday-ish",)


def test_a_wrong_time_column_fails_instead_of_skipping_everything(edge):
    edge.executemany("INSERT INTO metrics (camera_id, location_id, recorded_at, people_count, processing_ms) "
                     "VALUES ('cam0', 'loc-1', ?, 1, 1.0)", [(f"row {i}",) for i in range(10_001)])
    msg = err(edge, "SELECT sluice_rollup_run()")
    assert "more than 10000 rows of 'metrics' have a time that is not a time" in msg, msg
    assert "is 'recorded_at' the right time column?" in msg, msg
    assert edge.execute("SELECT count(*) FROM metrics_5m").fetchone()[0] == 0


def test_a_width_written_as_a_real_is_read_as_it_is(db):
    """{"width": 300.0} is 300 seconds; 300.5 and 1e30 are refused with what
    they are (both used to be reported as "got 0 seconds")."""
    db.execute("CREATE TABLE s (id INTEGER PRIMARY KEY, ts INTEGER, v REAL)")
    db.executemany("INSERT INTO s (ts, v) VALUES (?, ?)", [(t, 1.0) for t in (0, 299, 300, 901)])
    opts = {"source": "s", "time": "ts", "width": 300.0, "target": "s_5m", "measures": {"n": "count"}}
    assert db.execute("SELECT sluice_rollup('r', ?)", (json.dumps(opts),)).fetchone()[0] == 1
    db.execute("SELECT sluice_rollup_run('r')")
    assert db.execute("SELECT window_start, n FROM s_5m ORDER BY 1").fetchall() == [(0, 2), (300, 1), (900, 1)]
    for width, shown in [(300.5, "the real 300.5"), (1e30, "the real 1000000000000000000000000000000")]:
        opts["width"] = width
        msg = err(db, "SELECT sluice_rollup('r', ?)", json.dumps(opts))
        assert msg.startswith("sluice_rollup: width must be seconds") and shown in msg, msg
        assert "0 seconds" not in msg
