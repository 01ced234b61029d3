#!/usr/bin/python3
"""Python side of the edge benchmarks (issue 3), run by scripts/bench-edge.sh
with Debian's /usr/bin/python3 (its sqlite3 can load extensions).

    bench_edge.py EXT WORK_DIR [ROWS]

- insert: ROWS ten-column rows into a file database (WAL, synchronous=NORMAL)
  at 10, 100 and 1,000 rows a call: executemany of tuples with a commit per
  call (what the field does today; tuples built beforehand) beside
  sluice_insert from the same interpreter, a commit per call, with the JSON
  built from the same tuples inside the timing (an array of objects, and the
  compact form), and with compact JSON built beforehand; BENCH_ONLY=insert
  stops after these;
- storage: one camera-day of the field's workload in the default schema
  (sql/edge_schema.sql): a metrics sample every 3 s, about 45,000 state
  changes, a 4 KB key frame a minute with a description, detections and a
  384-float embedding, box health a minute; the database size after the
  rollup, and after every table was synced (acknowledged) and cleaned up.
Prints markdown table rows.
"""
import datetime as dt
import json
import os
import random
import sqlite3
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
SCHEMA = os.path.join(ROOT, "sql", "edge_schema.sql")
COLS = ["camera_id", "location_id", "recorded_at", "frame", "people", "staff", "processing_ms", "confidence",
        "state", "temp_c"]
T0 = dt.datetime(2026, 11, 21)


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def fresh(path, ext=None):
    for s in ("", "-wal", "-shm"):
        if os.path.exists(path + s):
            os.remove(path + s)
    con = sqlite3.connect(path, isolation_level=None)
    if ext:
        con.enable_load_extension(True)
        con.load_extension(ext)
    return con


def make_rows(n):
    rnd = random.Random(7)
    out = []
    for i in range(n):
        t = T0 + dt.timedelta(seconds=(i // 12) * 3, milliseconds=rnd.randrange(1000))
        out.append((f"cam-{i % 12:02d}", "store-042", iso(t), (i // 12) * 75, rnd.randrange(14), 3 + rnd.randrange(4),
                    round(5 + rnd.random() * 80, 2), round(rnd.random(), 3), rnd.choice(("RED", "YELLOW", "GREEN")),
                    round(45 + rnd.random() * 35, 1)))
    return out


CREATE_T = ("CREATE TABLE t (id INTEGER PRIMARY KEY, camera_id TEXT NOT NULL, location_id TEXT NOT NULL, "
            "recorded_at TEXT NOT NULL, frame INTEGER NOT NULL, people INTEGER NOT NULL, staff INTEGER NOT NULL, "
            "processing_ms REAL NOT NULL, confidence REAL NOT NULL, state TEXT NOT NULL, temp_c REAL NOT NULL)")
INSERT_T = f"INSERT INTO t ({', '.join(COLS)}) VALUES ({', '.join('?' * 10)})"


def run_executemany(con, rows, k):
    for i in range(0, len(rows), k):
        con.execute("BEGIN")
        con.executemany(INSERT_T, rows[i:i + k])
        con.execute("COMMIT")


def run_objects(con, rows, k):
    for i in range(0, len(rows), k):
        js = json.dumps([dict(zip(COLS, r)) for r in rows[i:i + k]])
        con.execute("SELECT sluice_insert('t', ?)", (js,)).fetchone()


def run_compact(con, rows, k):
    for i in range(0, len(rows), k):
        js = json.dumps({"columns": COLS, "rows": rows[i:i + k]})
        con.execute("SELECT sluice_insert('t', ?)", (js,)).fetchone()


def run_prebuilt(con, batches, k):
    for js in batches:
        con.execute("SELECT sluice_insert('t', ?)", (js,)).fetchone()


# Rows a call, and the goals beside executemany at that size: of the compact
# form with json.dumps in the timing (issue 11: ahead at 100 rows a call),
# and of JSON built beforehand (issue 3: ahead at 1,000).
INSERT_SIZES = ((10, "(reported)", "(reported)"), (100, "ahead", "(reported)"), (1000, "(reported)", "ahead"))


def bench_insert(ext, work, n):
    """At 10, 100 and 1,000 rows a call: executemany of tuples with a commit
    per call, beside sluice_insert (autocommit: a commit per call) with the
    JSON built from the same tuples inside the timing, as an array of
    objects and in the compact form, and with compact JSON built beforehand
    (rows that arrive as JSON); and json.dumps alone. Each way runs into a
    fresh database, all in turn, three times; the best of the three is
    kept."""
    rows = make_rows(n)
    db = os.path.join(work, "bench-py.db")
    for k, goal, goal_prebuilt in INSERT_SIZES:
        prebuilt = [json.dumps({"columns": COLS, "rows": rows[i:i + k]}) for i in range(0, n, k)]
        ways = {"executemany": (run_executemany, rows), "objects": (run_objects, rows),
                "compact": (run_compact, rows), "prebuilt": (run_prebuilt, prebuilt)}
        best = {w: 1e9 for w in ways}
        best["json.dumps"] = 1e9
        for _ in range(3):
            t = time.perf_counter()
            for i in range(0, n, k):
                json.dumps({"columns": COLS, "rows": rows[i:i + k]})
            best["json.dumps"] = min(best["json.dumps"], time.perf_counter() - t)
            for way, (run, data) in ways.items():
                con = fresh(db, ext)
                con.executescript("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
                con.execute(CREATE_T)
                t = time.perf_counter()
                run(con, data, k)
                best[way] = min(best[way], time.perf_counter() - t)
                assert con.execute("SELECT count(*) FROM t").fetchone()[0] == n
                con.close()
        em = n / best["executemany"]
        for way, what, g in (("objects", "array of objects, json.dumps in the timing", "(reported)"),
                             ("compact", "compact form {columns, rows}, json.dumps in the timing", goal),
                             ("prebuilt", "compact form, JSON built beforehand", goal_prebuilt)):
            sl = n / best[way]
            print(f"| insert rows/s from Python, {k:,} rows a call, a commit each: sluice_insert ({what}) "
                  f"vs executemany | {sl:.0f} | {em:.0f} | {sl / em:.2f}× | {g} |", flush=True)
        js = n / best["json.dumps"]
        print(f"| rows/s of json.dumps alone (compact form, {k:,} rows a call; no insert) vs executemany "
              f"| {js:.0f} | {em:.0f} | {js / em:.2f}× | (reported) |", flush=True)


def used_bytes(con):
    pages, free, size = (con.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count", "page_size"))
    return (pages - free) * size


def bench_storage(ext, work):
    db = os.path.join(work, "camera-day.db")
    con = fresh(db, ext)
    con.executescript(open(SCHEMA, encoding="utf-8").read())
    con.execute("SELECT sluice_device('bench-box')")
    rnd = random.Random(42)
    cam, loc, sess = "cam-01", "store-042", "store-042-cam-01-20261121"

    def insert(table, rows):
        for i in range(0, len(rows), 1000):
            con.execute("BEGIN IMMEDIATE")
            con.execute("SELECT sluice_insert(?, ?)", (table, json.dumps(rows[i:i + 1000])))
            con.execute("COMMIT")

    insert("cameras", [{"camera_id": cam, "location_id": loc, "name": "Camera 01",
                        "stream_url": "rtsp://admin:secret@10.0.0.10/stream", "enabled": 1}])
    insert("sessions", [{"session_id": sess, "location_id": loc, "camera_id": cam, "started_at": iso(T0),
                         "ended_at": None}])
    metrics, divisions, tables, frames, health = [], [], [], [], []
    tstate = {f"T{t}": "IDLE" for t in range(1, 9)}
    state, frame = "GREEN", 0
    # 28,800 ticks of 3 s; 30,000 division and 15,000 table state changes.
    for s in range(0, 86400, 3):
        t = T0 + dt.timedelta(seconds=s, milliseconds=rnd.randrange(1000))
        frame += 75
        people = max(0, int(rnd.gauss(6, 3)))
        metrics.append({"camera_id": cam, "location_id": loc, "recorded_at": iso(t), "people_count": people,
                        "processing_ms": round(rnd.lognormvariate(3.3, 0.35), 2)})
        for _ in range(int(30000 / 28800 + rnd.random())):
            state = rnd.choice(["RED", "YELLOW", "GREEN"])
            divisions.append({"session_id": sess, "camera_id": cam, "location_id": loc, "frame_number": frame,
                              "video_ts": round(s + rnd.random(), 3), "recorded_at": iso(t), "state": state,
                              "walking_waiters": rnd.randrange(4), "service_waiters": rnd.randrange(3),
                              "total_staff": 3 + rnd.randrange(4),
                              "screenshot_path": f"/var/lib/pipeline/shots/{cam}/{frame}.jpg"})
        if rnd.random() < 15000 / 28800:
            tid = rnd.choice(list(tstate))
            tstate[tid] = rnd.choice(["IDLE", "BUSY", "CLEANING"])
            tables.append({"session_id": sess, "camera_id": cam, "location_id": loc, "table_id": tid,
                           "recorded_at": iso(t), "state": tstate[tid],
                           "customers": rnd.randrange(6) if tstate[tid] == "BUSY" else 0, "waiters": rnd.randrange(2)})
        if s % 60 == 0:
            frames.append({"camera_id": cam, "location_id": loc, "captured_at": iso(t),
                           "description": "a waiter cleaning table %d after guests left" % rnd.randrange(1, 9),
                           "detections": json.dumps([{"label": "person", "score": round(rnd.random(), 3)}
                                                     for _ in range(people % 5)])})
            health.append({"location_id": loc, "recorded_at": iso(t), "cpu_pct": round(rnd.uniform(20, 90), 1),
                           "mem_used_mb": round(rnd.uniform(900, 3000), 1),
                           "disk_free_mb": round(rnd.uniform(20000, 40000), 1), "temp_c": round(rnd.uniform(45, 80), 1)})
    for table, rows in (("metrics", metrics), ("division_states", divisions), ("table_states", tables),
                        ("key_frames", frames), ("health_metrics", health)):
        insert(table, rows)
    # Images (4 KB, incompressible like a JPEG) and embeddings (384 float32)
    # arrive after the frame row.
    con.execute("UPDATE key_frames SET image = randomblob(4096), embedding = randomblob(1536)")
    con.execute("SELECT sluice_rollup_run()")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
              for t in ("metrics", "metrics_5m", "division_states", "table_states", "key_frames", "health_metrics")}
    before = used_bytes(con)
    file_before = os.path.getsize(db)
    # Steady state: everything synced, then cleaned up (what the agent's
    # hourly cleanup does once the cloud has acknowledged).
    tracked = [r[0] for r in con.execute("SELECT tbl FROM sluice_tables")]
    for t in tracked:
        while True:
            b = con.execute("SELECT sluice_batch(?, 1000)", (t,)).fetchone()[0]
            if b is None:
                break
            con.execute("SELECT sluice_ack(?)", (b,))
    for t in tracked:
        con.execute("SELECT sluice_cleanup(?, 0)", (t,))
    # sqlite3_exec steps it to the end (a single execute() frees one page).
    con.executescript("PRAGMA incremental_vacuum;")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    after = used_bytes(con)
    file_after = os.path.getsize(db)
    desc = ", ".join(f"{v} {k}" for k, v in counts.items())
    print(f"| local storage, one camera-day ({desc}): after rollup, nothing synced | {before / 1e6:.1f} MB "
          f"(file {file_before / 1e6:.1f} MB) | 50 MB | {before / 50e6:.2f}× | < 50 MB |")
    print(f"| the same after sync and sluice_cleanup(table, 0) (steady state: only the newest row per "
          f"append-only table stays) | {after / 1e6:.2f} MB (file {file_after / 1e6:.2f} MB) | 50 MB | "
          f"{after / 50e6:.3f}× | < 50 MB |")


def main():
    ext, work = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 1_000_000
    os.makedirs(work, exist_ok=True)
    bench_insert(ext, work, n)
    if os.environ.get("BENCH_ONLY") != "insert":
        bench_storage(ext, work)


if __name__ == "__main__":
    main()
