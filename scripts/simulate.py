#!/usr/bin/python3
"""Simulated camera-analytics pipeline: writes the field's workload into an
edge database through sluice_insert, the way a real pipeline would.

Per camera: a metrics sample every 3 s, division state changes every few
seconds, table state changes, one key frame (about 4 KB) a minute with a text
description; per box: health every minute. Run with Debian's /usr/bin/python3
(its sqlite3 module can load extensions).

    simulate.py --db edge.db --ext target/release/sluice0.so --cameras 4 --minutes 30 [--ago 40]

Each run opens a new session per camera; cameras are added once.
"""
import argparse
import datetime as dt
import json
import random
import sqlite3

DESCRIPTIONS = [
    "two customers waiting at the counter while a waiter carries plates",
    "a waiter cleaning table {t} after guests left",
    "a family of four seated at table {t} reading the menu",
    "empty dining room, chairs stacked near the window",
    "a delivery driver dropping boxes at the back door",
    "a queue of {n} people at the entrance",
    "staff member restocking the drinks fridge",
    "guests at table {t} raising a hand to call a waiter",
]


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--ext", required=True, help="path of sluice0.so")
    ap.add_argument("--location", default="store-042")
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--minutes", type=int, default=30)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--ago", type=int, default=None, help="start this many minutes ago (default: --minutes)")
    args = ap.parse_args()

    rnd = random.Random(args.seed)
    con = sqlite3.connect(args.db, timeout=10)
    con.enable_load_extension(True)
    con.load_extension(args.ext)
    con.enable_load_extension(False)

    now = dt.datetime.now(dt.timezone.utc)
    start = now - dt.timedelta(minutes=args.ago if args.ago is not None else args.minutes)
    seconds = args.minutes * 60
    loc = args.location

    con.isolation_level = None  # explicit transactions below

    def insert(table, rows):
        # BEGIN IMMEDIATE takes the write lock first (waiting for the agent if
        # it writes); a bare SELECT sluice_insert(...) would start as a read and
        # fail at once with "database is locked" under a concurrent writer.
        for i in range(0, len(rows), 1000):
            con.execute("BEGIN IMMEDIATE")
            con.execute("SELECT sluice_insert(?, ?)", (table, json.dumps(rows[i:i + 1000])))
            con.execute("COMMIT")

    cams = [f"cam-{c:02d}" for c in range(1, args.cameras + 1)]
    known = {r[0] for r in con.execute("SELECT camera_id FROM cameras")}
    insert("cameras", [{"camera_id": c, "location_id": loc, "name": f"Camera {c[-2:]}",
                        "stream_url": f"rtsp://admin:secret@10.0.0.{i + 10}/stream", "enabled": 1}
                       for i, c in enumerate(cams) if c not in known])
    sessions = {c: f"{loc}-{c}-{start:%Y%m%d%H%M}" for c in cams}
    insert("sessions", [{"session_id": s, "location_id": loc, "camera_id": c, "started_at": iso(start), "ended_at": None}
                        for c, s in sessions.items()])

    counts = {}
    for cam in cams:
        metrics, divisions, tables, frames = [], [], [], []
        state, frame = "GREEN", 0
        table_state = {f"T{t}": "IDLE" for t in range(1, 9)}
        for s in range(0, seconds, 3):
            t = start + dt.timedelta(seconds=s, milliseconds=rnd.randrange(1000))
            frame += 75
            people = max(0, int(rnd.gauss(6, 3)))
            metrics.append({"camera_id": cam, "location_id": loc, "recorded_at": iso(t),
                            "people_count": people, "processing_ms": round(rnd.lognormvariate(3.3, 0.35), 2)})
            if rnd.random() < 0.35:
                state = rnd.choice(["RED", "YELLOW", "GREEN"])
                divisions.append({"session_id": sessions[cam], "camera_id": cam, "location_id": loc,
                                  "frame_number": frame, "video_ts": round(s + rnd.random(), 3), "recorded_at": iso(t),
                                  "state": state, "walking_waiters": rnd.randrange(4), "service_waiters": rnd.randrange(3),
                                  "total_staff": 3 + rnd.randrange(4),
                                  "screenshot_path": f"/var/lib/pipeline/shots/{cam}/{frame}.jpg"})
            if rnd.random() < 0.2:
                tid = rnd.choice(list(table_state))
                table_state[tid] = rnd.choice(["IDLE", "BUSY", "CLEANING"])
                tables.append({"session_id": sessions[cam], "camera_id": cam, "location_id": loc, "table_id": tid,
                               "recorded_at": iso(t), "state": table_state[tid],
                               "customers": rnd.randrange(6) if table_state[tid] == "BUSY" else 0,
                               "waiters": rnd.randrange(2)})
            if s % 60 == 0:
                desc = rnd.choice(DESCRIPTIONS).format(t=rnd.randrange(1, 9), n=rnd.randrange(2, 9))
                frames.append({"camera_id": cam, "location_id": loc, "captured_at": iso(t),
                               "description": desc,
                               "detections": json.dumps([{"label": "person", "score": round(rnd.random(), 3)}
                                                         for _ in range(people % 5)])})
        insert("metrics", metrics)
        insert("division_states", divisions)
        insert("table_states", tables)
        insert("key_frames", frames)
        for k, v in (("metrics", metrics), ("division_states", divisions), ("table_states", tables), ("key_frames", frames)):
            counts[k] = counts.get(k, 0) + len(v)
    # Key-frame images arrive after the frame row (a mutable table): ~4 KB each.
    con.execute("UPDATE key_frames SET image = randomblob(4096) WHERE image IS NULL")
    insert("health_metrics", [{"location_id": loc, "recorded_at": iso(start + dt.timedelta(minutes=m)),
                               "cpu_pct": round(rnd.uniform(20, 90), 1), "mem_used_mb": round(rnd.uniform(900, 3000), 1),
                               "disk_free_mb": round(rnd.uniform(20000, 40000), 1), "temp_c": round(rnd.uniform(45, 80), 1)}
                              for m in range(args.minutes)])
    con.commit()
    counts["health_metrics"] = args.minutes
    print("simulated " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main()
