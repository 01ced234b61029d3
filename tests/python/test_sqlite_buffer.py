"""The bounded local buffer (sluice_enforce_budget, sluice_drops,
sluice_budget) and the status view (sluice_status, sluice_pending_age), on
the default edge schema in a file database."""

import datetime
import json
import os
import sqlite3

import pytest

from conftest import connect

SCHEMA = os.path.join(os.path.dirname(__file__), "..", "..", "sql", "edge_schema.sql")
T0 = datetime.datetime(2026, 11, 20, 0, 0, 0)
# "now" for the budget: 16 hours after T0, so with the default horizon of an
# hour every window that ended before 15:00 may be dropped.
NOW = "2026-11-20T16:00:00Z"


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def err(db, sql, *params):
    with pytest.raises(sqlite3.Error) as e:
        db.execute(sql, params).fetchall()
    return str(e.value)


@pytest.fixture
def edge(ext_path, tmp_path):
    con = connect(ext_path, str(tmp_path / "edge.db"))
    con.executescript(open(SCHEMA, encoding="utf-8").read())
    con.execute("SELECT sluice_device('box-1')")
    yield con
    con.close()


def metrics(db, hours, start=T0, cameras=2):
    """One sample every 3 s per camera for `hours` hours from `start`."""
    rows = []
    for i in range(hours * 1200):
        t = start + datetime.timedelta(seconds=3 * i)
        for c in range(cameras):
            rows.append({"camera_id": f"cam{c}", "location_id": "loc-1", "recorded_at": iso(t),
                         "people_count": (i + c) % 11, "processing_ms": 10.0 + i % 7})
    for k in range(0, len(rows), 5000):
        db.execute("SELECT sluice_insert('metrics', ?)", (json.dumps(rows[k:k + 5000]),))
    return len(rows)


def states(db, n):
    rows = [{"session_id": "s1", "camera_id": "cam0", "location_id": "loc-1", "frame_number": i,
             "video_ts": i / 10, "recorded_at": iso(T0 + datetime.timedelta(seconds=i)), "state": "RED"}
            for i in range(n)]
    db.execute("SELECT sluice_insert('division_states', ?)", (json.dumps(rows),))


def used(db):
    return db.execute(
        "SELECT ((SELECT page_count FROM pragma_page_count) - (SELECT freelist_count FROM pragma_freelist_count))"
        " * (SELECT page_size FROM pragma_page_size)"
    ).fetchone()[0]


def wal(db):
    """The size of the WAL file on disk (the budget counts it)."""
    f = db.execute("SELECT file FROM pragma_database_list WHERE name = 'main'").fetchone()[0]
    return os.path.getsize(f + "-wal") if f and os.path.exists(f + "-wal") else 0


def size(db):
    """What the budget compares with max_bytes: data pages plus the WAL file."""
    return used(db) + wal(db)


def enforce(db, max_bytes, **opts):
    opts.setdefault("now", NOW)
    db.execute("BEGIN IMMEDIATE")
    n = db.execute("SELECT sluice_enforce_budget(?, ?)", (max_bytes, json.dumps(opts))).fetchone()[0]
    db.execute("COMMIT")
    return n


def budget(db):
    cur = db.execute("SELECT * FROM sluice_budget")
    names = [d[0] for d in cur.description]
    return dict(zip(names, cur.fetchone()))


def status(db):
    cur = db.execute("SELECT * FROM sluice_status")
    names = [d[0] for d in cur.description]
    return {r[0]: dict(zip(names, r)) for r in cur.fetchall()}


# --------------------------------------------------------------------------
# sluice_enforce_budget


def test_within_budget_drops_nothing(edge):
    metrics(edge, 2)
    edge.execute("SELECT sluice_rollup_run()")
    n = edge.execute("SELECT count(*) FROM metrics").fetchone()[0]
    wal_before = wal(edge)
    assert enforce(edge, 1 << 30) == 0
    assert edge.execute("SELECT count(*) FROM metrics").fetchone()[0] == n
    assert edge.execute("SELECT count(*) FROM sluice_drops").fetchone()[0] == 0
    b = budget(edge)
    assert b["within_budget"] == 1 and b["dropped_rows"] == 0 and b["max_bytes"] == 1 << 30
    assert wal_before > 0  # the schema sets WAL mode
    assert b["used_bytes"] == used(edge) + wal_before


def test_drops_only_rolled_up_raw_rows_oldest_first_and_records_them(edge):
    metrics(edge, 12)  # 00:00 .. 12:00, rolled up
    states(edge, 2000)
    edge.execute("SELECT sluice_rollup_run()")
    # Rows the rollup has not seen yet: a new hour and a late row for 01:00.
    metrics(edge, 1, start=T0 + datetime.timedelta(hours=12))
    late = {"camera_id": "cam0", "location_id": "loc-1", "recorded_at": "2026-11-20T01:02:00.000Z",
            "people_count": 50, "processing_ms": 1.0}
    edge.execute("SELECT sluice_insert('metrics', ?)", (json.dumps([late]),))
    before = {t: edge.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
              for t in ("metrics", "metrics_5m", "division_states")}
    agg_pending = edge.execute("SELECT sluice_pending('metrics_5m')").fetchone()[0]
    assert agg_pending == before["metrics_5m"] > 0

    target = size(edge) - 60_000
    wal_before = wal(edge)
    dropped = enforce(edge, target)
    assert dropped > 0
    # Nothing but raw rolled-up metrics went.
    assert edge.execute("SELECT count(*) FROM metrics").fetchone()[0] == before["metrics"] - dropped
    assert edge.execute("SELECT count(*) FROM metrics_5m").fetchone()[0] == before["metrics_5m"]
    assert edge.execute("SELECT sluice_pending('metrics_5m')").fetchone()[0] == agg_pending
    assert edge.execute("SELECT count(*) FROM division_states").fetchone()[0] == before["division_states"]
    # Only windows before the unprocessed late row (01:00) may go: the rows
    # dropped are the oldest, whole windows, before 01:00.
    lo = edge.execute("SELECT min(recorded_at) FROM metrics").fetchone()[0]
    assert "2026-11-20T00:00:00.000Z" < lo <= "2026-11-20T01:00:00.000Z"
    assert lo.endswith(":00.000Z") and lo[14:16] in ("00", "05", "10", "15", "20", "25", "30", "35",
                                                       "40", "45", "50", "55")
    # Every drop is recorded.
    rows = edge.execute(
        "SELECT tbl, rows, unsynced_rows, from_time, to_time, dropped_at FROM sluice_drops").fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [("metrics", dropped, dropped)]
    assert rows[0][3] == "2026-11-20T00:00:00Z" and rows[0][4] < lo
    assert rows[0][5].endswith("Z")
    assert status(edge)["metrics"]["rows_dropped"] == dropped
    b = budget(edge)
    assert b["within_budget"] == 1 and b["dropped_rows"] == dropped
    # Measured inside the call; its own commit may still append to the WAL.
    assert b["used_bytes"] <= target and used(edge) + wal_before <= target


def test_over_budget_when_not_enough_can_go(edge):
    metrics(edge, 4)
    states(edge, 3000)
    edge.execute("SELECT sluice_rollup_run()")
    n5 = edge.execute("SELECT count(*) FROM metrics_5m").fetchone()[0]
    n = edge.execute("SELECT count(*) FROM metrics").fetchone()[0]
    # Now 03:30: the horizon of an hour keeps the windows from 02:30 on.
    # rolled_up_only: nothing but rolled-up raw rows may go.
    dropped = enforce(edge, 4096, now="2026-11-20T03:30:00Z", rolled_up_only=True)
    b = budget(edge)
    assert b["within_budget"] == 0
    assert "over budget" in b["note"] and "rolled_up_only" in b["note"]
    assert b["used_bytes"] > 4096
    kept = edge.execute("SELECT min(recorded_at) FROM metrics").fetchone()[0]
    assert kept == "2026-11-20T02:30:00.000Z"
    assert dropped == n - edge.execute("SELECT count(*) FROM metrics").fetchone()[0]
    assert edge.execute("SELECT count(*) FROM metrics_5m").fetchone()[0] == n5
    assert edge.execute("SELECT count(*) FROM division_states").fetchone()[0] == 3000
    # A horizon of 0 lets the rest go, except the newest row (the rowid
    # high-water mark of sync).
    enforce(edge, 4096, now="2026-11-20T05:00:00Z", horizon=0, rolled_up_only=True)
    assert edge.execute("SELECT count(*) FROM metrics").fetchone()[0] == 1
    assert edge.execute("SELECT sum(rows) FROM sluice_drops").fetchone()[0] == n - 1
    assert budget(edge)["within_budget"] == 0


def test_then_the_oldest_rows_of_the_other_tables_oldest_hour_first(edge):
    metrics(edge, 4)  # 00:00 .. 04:00
    states(edge, 3000)  # division_states 00:00:00 .. 00:49:59
    health = [{"location_id": "loc-1", "recorded_at": iso(T0 + datetime.timedelta(minutes=m)), "cpu_pct": 1.0}
              for m in range(240)]  # 00:00 .. 03:59
    edge.execute("SELECT sluice_insert('health_metrics', ?)", (json.dumps(health),))
    frames = [{"camera_id": "cam0", "location_id": "loc-1",
               "captured_at": iso(T0 + datetime.timedelta(minutes=30 * i))} for i in range(8)]
    edge.execute("SELECT sluice_insert('key_frames', ?)", (json.dumps(frames),))
    edge.execute("UPDATE key_frames SET image = randomblob(4096)")
    edge.execute("INSERT INTO cameras (camera_id, location_id) VALUES ('cam0', 'loc-1')")
    edge.execute("SELECT sluice_rollup_run()")
    edge.execute("SELECT sluice_ack(sluice_batch('health_metrics', 100))")
    n5 = edge.execute("SELECT count(*) FROM metrics_5m").fetchone()[0]
    now = "2026-11-20T03:30:00Z"
    enforce(edge, 4096, now=now, rolled_up_only=True)  # every rolled-up raw row older than the horizon
    assert edge.execute("SELECT min(recorded_at) FROM metrics").fetchone()[0] == "2026-11-20T02:30:00.000Z"
    # Just over what is left: after the rolled-up rows (none left), the
    # oldest hour of the other tables goes, one table's hour at a time.
    # The first is 00:00 of division_states (tables in name order).
    dropped = enforce(edge, size(edge) - 1, now=now)
    assert dropped == 2999
    assert edge.execute("SELECT id, recorded_at FROM division_states").fetchall() == \
        [(3000, "2026-11-20T00:49:59.000Z")]  # the newest row stays (rowid high-water mark)
    assert edge.execute("SELECT count(*) FROM health_metrics").fetchone()[0] == 240
    assert budget(edge)["within_budget"] == 1
    rows = edge.execute("SELECT tbl, rows, unsynced_rows, from_time, to_time FROM sluice_drops "
                        "WHERE tbl <> 'metrics'").fetchall()
    assert rows == [("division_states", 2999, 2999, "2026-11-20T00:00:00Z", "2026-11-20T00:49:58Z")]
    # Nothing fits in 4 KB: everything that may go goes, oldest hour first,
    # and what never goes stays: the aggregates, the raw metrics within the
    # horizon, the table without a time column (cameras), each append-only
    # table's newest row.
    enforce(edge, 4096, now=now)
    assert edge.execute("SELECT count(*) FROM metrics_5m").fetchone()[0] == n5
    assert edge.execute("SELECT sluice_pending('metrics_5m')").fetchone()[0] == n5
    assert edge.execute("SELECT min(recorded_at) FROM metrics").fetchone()[0] == "2026-11-20T02:30:00.000Z"
    assert edge.execute("SELECT count(*) FROM cameras").fetchone()[0] == 1
    assert edge.execute("SELECT recorded_at FROM health_metrics").fetchall() == [("2026-11-20T03:59:00.000Z",)]
    assert edge.execute("SELECT count(*) FROM key_frames").fetchone()[0] == 0  # mutable: no high-water row
    rows = edge.execute("SELECT tbl, rows, unsynced_rows, from_time, to_time FROM sluice_drops "
                        "WHERE tbl NOT IN ('metrics', 'division_states') ORDER BY tbl").fetchall()
    assert rows == [("health_metrics", 239, 139, "2026-11-20T00:00:00Z", "2026-11-20T03:58:00Z"),
                    ("key_frames", 8, 8, "2026-11-20T00:00:00Z", "2026-11-20T03:30:00Z")]
    b = budget(edge)
    assert b["within_budget"] == 0 and "may not be dropped" in b["note"]
    s = status(edge)
    assert (s["health_metrics"]["rows_dropped"], s["key_frames"]["rows_dropped"]) == (239, 8)
    assert s["metrics_5m"]["rows_dropped"] == 0


def test_nothing_dropped_before_the_rollup_ran(edge):
    metrics(edge, 2)
    assert enforce(edge, 4096) == 0
    assert budget(edge)["within_budget"] == 0


def test_acknowledged_rows_are_counted_as_synced(edge):
    metrics(edge, 3)
    edge.execute("SELECT sluice_rollup_run()")
    edge.execute("SELECT sluice_ack(sluice_batch('metrics', 1000))")
    dropped = enforce(edge, 4096)
    assert dropped > 1000
    assert edge.execute("SELECT unsynced_rows FROM sluice_drops").fetchone()[0] == dropped - 1000
    # The pending scan still sees every remaining row above the watermark.
    assert edge.execute("SELECT sluice_pending('metrics')").fetchone()[0] == \
        edge.execute("SELECT count(*) FROM metrics WHERE id > 1000").fetchone()[0]


def test_file_shrinks_with_incremental_auto_vacuum(edge, tmp_path):
    assert edge.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # from edge_schema.sql
    metrics(edge, 6)
    edge.execute("SELECT sluice_rollup_run()")
    pages = edge.execute("PRAGMA page_count").fetchone()[0]
    enforce(edge, 4096)
    assert edge.execute("PRAGMA freelist_count").fetchone()[0] == 0
    assert edge.execute("PRAGMA page_count").fetchone()[0] < pages * 0.7
    assert budget(edge)["file_bytes"] == budget(edge)["used_bytes"]


def test_dropped_windows_are_not_recomputed(edge):
    metrics(edge, 3)
    edge.execute("SELECT sluice_rollup_run()")
    w = "2026-11-20T00:05:00.000Z"
    before = edge.execute("SELECT samples, people_max FROM metrics_5m WHERE camera_id = 'cam0' AND window_start = ?",
                          (w,)).fetchone()
    enforce(edge, 4096, now="2026-11-20T03:00:00Z")  # drops the windows before 02:00
    assert edge.execute("SELECT min(recorded_at) FROM metrics").fetchone()[0] == "2026-11-20T02:00:00.000Z"
    late = {"camera_id": "cam0", "location_id": "loc-1", "recorded_at": "2026-11-20T00:06:00.000Z",
            "people_count": 99, "processing_ms": 1.0}
    edge.execute("SELECT sluice_insert('metrics', ?)", (json.dumps([late]),))
    assert edge.execute("SELECT sluice_rollup_run()").fetchone()[0] == 0
    after = edge.execute("SELECT samples, people_max FROM metrics_5m WHERE camera_id = 'cam0' AND window_start = ?",
                         (w,)).fetchone()
    assert after == before
    # A late row for a window that was not dropped is still rolled up.
    late["recorded_at"] = "2026-11-20T02:58:00.000Z"
    edge.execute("SELECT sluice_insert('metrics', ?)", (json.dumps([late]),))
    assert edge.execute("SELECT sluice_rollup_run()").fetchone()[0] == 1


def test_enforce_budget_errors(edge, db):
    assert err(edge, "SELECT sluice_enforce_budget(0)") == \
        "sluice_enforce_budget: max_bytes must be positive, got 0"
    assert err(edge, "SELECT sluice_enforce_budget('big')") == \
        "sluice_enforce_budget: max_bytes must be an integer, got text"
    assert err(edge, "SELECT sluice_enforce_budget(NULL)") == \
        "sluice_enforce_budget: max_bytes must be an integer, got NULL"
    assert err(edge, "SELECT sluice_enforce_budget(1, '{\"horizn\": 1}')") == \
        "sluice_enforce_budget: unknown option 'horizn' (known options: horizon, now, rolled_up_only, " \
        "min_free_bytes, reserve_bytes)"
    assert err(edge, "SELECT sluice_enforce_budget(1, '{\"rolled_up_only\": 1}')") == \
        "sluice_enforce_budget: option 'rolled_up_only' must be true or false"
    assert "not a duration" in err(edge, "SELECT sluice_enforce_budget(1, '{\"horizon\": \"soon\"}')")
    assert "not valid JSON" in err(edge, "SELECT sluice_enforce_budget(1, '{')")
    # On a database without rollups or tracked tables it drops nothing and
    # says why.
    assert db.execute("SELECT sluice_enforce_budget(1)").fetchone()[0] == 0
    assert "may not be dropped" in db.execute("SELECT note FROM sluice_budget").fetchone()[0]
    assert db.execute("SELECT sluice_enforce_budget(1, '{\"rolled_up_only\": true}')").fetchone()[0] == 0
    assert "no rollup" in db.execute("SELECT note FROM sluice_budget").fetchone()[0]
    # Direct-only: not from a trigger.
    db.execute("CREATE TABLE t (x)")
    db.execute("CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT sluice_enforce_budget(1); END")
    assert "unsafe use of sluice_enforce_budget()" in err(db, "INSERT INTO t VALUES (1)")


# --------------------------------------------------------------------------
# sluice_status


def test_status_view(edge):
    metrics(edge, 1)
    states(edge, 10)
    edge.execute("SELECT sluice_rollup_run()")
    s = status(edge)
    assert set(s) == {"cameras", "sessions", "division_states", "table_states", "metrics", "key_frames",
                      "health_metrics", "metrics_5m", "applied_configs"}
    assert list(s["metrics"]) == ["table", "pending_rows", "oldest_pending_age_secs", "last_ack_at",
                                  "acked_rows", "rows_dropped", "quarantined_rows"]
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    age = (now - T0).total_seconds()
    m = s["metrics"]
    assert m["pending_rows"] == 2400 and m["acked_rows"] == 0 and m["rows_dropped"] == 0
    assert m["quarantined_rows"] == 0
    assert m["last_ack_at"] is None
    assert abs(m["oldest_pending_age_secs"] - age) < 5
    assert abs(s["division_states"]["oldest_pending_age_secs"] - age) < 5
    # The rollup target's time is its window_start.
    assert s["metrics_5m"]["pending_rows"] == 24
    assert abs(s["metrics_5m"]["oldest_pending_age_secs"] - age) < 5
    assert s["cameras"]["pending_rows"] == 0 and s["cameras"]["oldest_pending_age_secs"] is None

    edge.execute("SELECT sluice_ack(sluice_batch('metrics', 2000))")
    m = status(edge)["metrics"]
    assert m["pending_rows"] == 400 and m["acked_rows"] == 2000
    t = datetime.datetime.strptime(m["last_ack_at"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert abs((now - t).total_seconds()) < 5
    assert abs(m["oldest_pending_age_secs"] - (age - 1000 * 3)) < 5


def test_status_time_column_inferred_or_unknown(db):
    db.execute("CREATE TABLE raw (id INTEGER PRIMARY KEY, ts INTEGER, v REAL)")
    db.execute("CREATE TABLE other (id INTEGER PRIMARY KEY, at TEXT)")
    db.execute("SELECT sluice_track('raw')")
    db.execute("SELECT sluice_track('other')")
    now = int(datetime.datetime.now(datetime.timezone.utc).timestamp())
    db.execute("INSERT INTO raw (ts, v) VALUES (?, 1), (?, 2)", (now - 600, now - 60))
    db.execute("INSERT INTO other (at) VALUES ('2026-01-01T00:00:00+02:00')")
    assert db.execute("SELECT sluice_pending_age('raw')").fetchone()[0] is None
    db.execute("""SELECT sluice_rollup('raw_1m', '{"source": "raw", "time": "ts", "width": 60,
                  "target": "raw_1m", "measures": {"n": "count"}}')""")
    assert abs(db.execute("SELECT sluice_pending_age('raw')").fetchone()[0] - 600) <= 2
    # Unknown time column: NULL; then told with the "time" option.
    assert db.execute("SELECT sluice_pending_age('other')").fetchone()[0] is None
    db.execute("""SELECT sluice_track('other', '{"time": "at"}')""")
    want = now - int(datetime.datetime(2025, 12, 31, 22, 0, tzinfo=datetime.timezone.utc).timestamp())
    assert abs(db.execute("SELECT sluice_pending_age('other')").fetchone()[0] - want) <= 2
    assert err(db, """SELECT sluice_track('other', '{"time": "when"}')""") == \
        "sluice_track: option 'time': table 'other' has no column 'when'"
    assert err(db, "SELECT sluice_pending_age('nope')") == "sluice_pending_age: no such table: nope"
    db.execute("CREATE TABLE untracked (id INTEGER PRIMARY KEY)")
    assert "is not tracked" in err(db, "SELECT sluice_pending_age('untracked')")
    assert err(db, "SELECT sluice_pending_age(NULL)") == \
        "sluice_pending_age: the table name must be text, got NULL"


# --------------------------------------------------------------------------
# sluice_cleanup of a rollup source


def test_cleanup_of_a_rollup_source_keeps_windows_not_yet_sealed(edge):
    # Three hours of samples up to now (cleanup measures the late-data
    # horizon, an hour, from the clock).
    now = int(datetime.datetime.now(datetime.timezone.utc).timestamp())
    end = now - now % 300
    start = datetime.datetime.fromtimestamp(end - 3 * 3600, datetime.timezone.utc).replace(tzinfo=None)
    metrics(edge, 3, start=start, cameras=1)  # 3,600 rows, 100 per window
    edge.execute("SELECT sluice_ack(sluice_batch('metrics', 100000))")
    assert edge.execute("SELECT sluice_pending('metrics')").fetchone()[0] == 0
    # Acknowledged, but no rollup has seen them: nothing goes.
    assert edge.execute("SELECT sluice_cleanup('metrics', 0)").fetchone()[0] == 0
    edge.execute("SELECT sluice_rollup_run()")
    # The windows that ended an hour ago or more go; the last hour stays, so
    # that a late row still finds the rows of its window.
    assert edge.execute("SELECT sluice_cleanup('metrics', 0)").fetchone()[0] == 2400
    first_kept = datetime.datetime.fromtimestamp(end - 3600, datetime.timezone.utc).replace(tzinfo=None)
    assert edge.execute("SELECT min(recorded_at), count(*) FROM metrics").fetchone() == (iso(first_kept), 1200)

    def window(secs_before_end):
        w = datetime.datetime.fromtimestamp(end - secs_before_end, datetime.timezone.utc).replace(tzinfo=None)
        return iso(w)

    def samples(w):
        return edge.execute("SELECT samples FROM metrics_5m WHERE camera_id = 'cam0' AND window_start = ?",
                            (w,)).fetchone()[0]

    def late(w):
        row = {"camera_id": "cam0", "location_id": "loc-1", "recorded_at": w.replace(":00.000Z", ":01.000Z"),
               "people_count": 99, "processing_ms": 1.0}
        edge.execute("SELECT sluice_insert('metrics', ?)", (json.dumps([row]),))

    # A late row for a window whose rows were kept: re-aggregated from all
    # of them.
    kept = window(1800)
    assert samples(kept) == 100
    late(kept)
    assert edge.execute("SELECT sluice_rollup_run()").fetchone()[0] == 1
    assert samples(kept) == 101
    # A late row for a window whose rows were cleaned up: the window is
    # sealed, its aggregate stays as it was (not 1 sample); the row stays a
    # raw row and is synced as one.
    cleaned = window(2 * 3600)
    assert samples(cleaned) == 100
    late(cleaned)
    assert edge.execute("SELECT sluice_rollup_run()").fetchone()[0] == 0
    assert samples(cleaned) == 100
    assert edge.execute("SELECT sluice_pending('metrics')").fetchone()[0] == 2
