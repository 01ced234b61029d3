#!/usr/bin/python3
"""Benchmark of the end-to-end sync (issue 5), run by scripts/bench-sync.sh
against a throwaway PostgreSQL (PG* variables set):

1. 1,000,000 pending division_states rows synced by `sluice sync --mode full`
   beside COPY of the same rows into the same (emptied) table with the same
   indexes, in the same run: rows/s and the ratio;
2. bytes on the wire per row (the batches the agent sent);
3. the field's outage case: 24,000 rows after 8 hours offline, oldest
   first and newest first;
4. the agent's idle memory (RSS) while `sluice run` waits for its next job.
"""
import json
import os
import pathlib
import random
import sqlite3
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
AGENT = ROOT / "target/release/sluice"
EXT = ROOT / "target/release/sluice0"
ROWS = int(os.environ.get("BENCH_ROWS", "1000000"))


def psql(sql, db, capture=True):
    r = subprocess.run(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", db], input=sql,
                       capture_output=capture, text=True)
    if r.returncode != 0:
        sys.exit(f"psql failed: {r.stderr}")
    return r.stdout


def cloud_db(name):
    psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE); CREATE DATABASE {name};", "postgres")
    for f in sorted((ROOT / "migrations").glob("*.sql")):
        psql(f.read_text(), name)


def edge_db(path, rows, start_ms):
    con = sqlite3.connect(path, isolation_level=None)
    con.enable_load_extension(True)
    con.load_extension(str(EXT))
    con.executescript((ROOT / "sql/edge_schema.sql").read_text())
    rnd = random.Random(1)
    states = ["RED", "YELLOW", "GREEN"]
    batch = []
    t = start_ms
    for i in range(rows):
        t += rnd.randrange(100, 2000)  # a state change every ~1 s across 12 cameras
        cam = rnd.randrange(12)
        ms = t
        iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"
        batch.append({"session_id": f"store-042-cam-{cam:02d}-202611220000", "camera_id": f"cam-{cam:02d}",
                      "location_id": "store-042", "frame_number": i * 25, "video_ts": round(i * 0.96 + rnd.random(), 3),
                      "recorded_at": iso, "state": rnd.choice(states), "walking_waiters": rnd.randrange(4),
                      "service_waiters": rnd.randrange(3), "total_staff": 3 + rnd.randrange(4),
                      "screenshot_path": f"/var/lib/pipeline/shots/{cam}/{i}.jpg"})
        if len(batch) == 1000:
            con.execute("BEGIN IMMEDIATE")
            con.execute("SELECT sluice_insert('division_states', ?)", (json.dumps(batch),))
            con.execute("COMMIT")
            batch = []
    if batch:
        con.execute("BEGIN IMMEDIATE")
        con.execute("SELECT sluice_insert('division_states', ?)", (json.dumps(batch),))
        con.execute("COMMIT")
    con.close()


def config(dirpath, db, device="bench-box", order="oldest"):
    p = pathlib.Path(dirpath) / "sluice.toml"
    p.write_text(f"""[device]
id = "{device}"
[edge]
database = "edge.db"
extension = "{EXT}.so"
[cloud]
url = "postgres://{os.environ['PGUSER']}@127.0.0.1:{os.environ['PGPORT']}/{db}"
[sync]
order = "{order}"
[schedule]
sync = "0 0 0 1 1 * 2099"
full_sync = "off"
rollup = "off"
embed = "off"
cleanup = "off"
budget = "off"
""")
    return p


def sync(cfg):
    t = time.perf_counter()
    r = subprocess.run([str(AGENT), "sync", "--mode", "full", "--quiet", "--config", str(cfg), "--table", "division_states"],
                       capture_output=True, text=True, env=dict(os.environ, SLUICE_LOG="warn"))
    dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"sluice sync failed: {r.stdout}{r.stderr}")
    line = next(l for l in r.stdout.splitlines() if l.startswith("division_states"))
    words = line.split()
    rows = int(words[words.index("rows,") - 1])
    nbytes = int(words[words.index("bytes:") - 1])
    return dt, rows, nbytes


def main():
    work = pathlib.Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    start_ms = 1_795_000_000_000
    print(f"building an edge database with {ROWS} pending division_states rows ...", flush=True)
    edge_db(work / "edge.db", ROWS, start_ms)
    cloud_db("bench_sync")
    cfg = config(work, "bench_sync")

    sync_s, rows, nbytes = sync(cfg)
    assert rows == ROWS, rows
    n = int(psql("SELECT count(*) FROM division_states;", "bench_sync"))
    assert n == ROWS, n

    # COPY of the same rows into the same table with the same indexes.
    csv = work / "rows.csv"
    with open(csv, "w") as out:
        subprocess.run(["sqlite3", "-csv", str(work / "edge.db"),
                        "SELECT location_id, 'bench-box', id, session_id, camera_id, frame_number, video_ts, recorded_at, "
                        "state, walking_waiters, service_waiters, total_staff, id FROM division_states ORDER BY id"],
                       stdout=out, check=True)
    psql("TRUNCATE division_states; CHECKPOINT;", "bench_sync")
    cols = ("location_id, sluice_device, id, session_id, camera_id, frame_number, video_ts, recorded_at, state, "
            "walking_waiters, service_waiters, total_staff, sluice_version")
    t = time.perf_counter()
    psql(f"\\copy division_states ({cols}) FROM '{csv}' CSV", "bench_sync")
    copy_s = time.perf_counter() - t
    assert int(psql("SELECT count(*) FROM division_states;", "bench_sync")) == ROWS

    # The field's outage case: 24,000 rows after 8 hours offline.
    out_dir = work / "outage"
    out_dir.mkdir()
    edge_db(out_dir / "edge.db", 24_000, start_ms)
    cloud_db("bench_outage")
    outage_s, outage_rows, outage_bytes = sync(config(out_dir, "bench_outage"))
    # The same catch-up, newest rows first (acknowledged ranges above the
    # watermark until the last batch reaches it).
    newest_dir = work / "newest"
    newest_dir.mkdir()
    edge_db(newest_dir / "edge.db", 24_000, start_ms)
    cloud_db("bench_newest")
    newest_s, newest_rows, _ = sync(config(newest_dir, "bench_newest", order="newest"))
    assert newest_rows == 24_000, newest_rows
    assert int(psql("SELECT count(*) FROM division_states;", "bench_newest")) == 24_000

    # Idle RSS of the daemon (no model loaded), 3 s after start.
    idle = subprocess.Popen([str(AGENT), "run", "--config", str(config(out_dir, "bench_outage"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, SLUICE_LOG="warn"))
    time.sleep(3)
    rss_kb = next(int(l.split()[1]) for l in open(f"/proc/{idle.pid}/status") if l.startswith("VmRSS:"))
    idle.terminate()
    idle.wait()

    sync_rate, copy_rate = ROWS / sync_s, ROWS / copy_s
    print()
    print(f"| measure | sluice | baseline | ratio | goal |")
    print(f"| --- | --- | --- | --- | --- |")
    print(f"| {ROWS:,} division_states rows, SQLite to PostgreSQL | {sync_rate:,.0f} rows/s ({sync_s:.2f} s) | COPY {copy_rate:,.0f} rows/s ({copy_s:.2f} s) | {sync_rate / copy_rate:.2f}x | >= 0.35x |")
    print(f"| bytes on the wire per row | {nbytes / rows:.1f} B | field JSON uploads ~200 B | {200 / (nbytes / rows):.0f}x less | <= 12 B |")
    print(f"| outage catch-up: 24,000 rows | {outage_s:.2f} s ({outage_bytes / 1024:.0f} KiB) | | | < 1 s |")
    print(f"| the same, newest first (`sync.order = \"newest\"`) | {newest_s:.2f} s | oldest first {outage_s:.2f} s | {outage_s / newest_s:.2f}x | < 1 s |")
    print(f"| agent idle RSS (sluice run, no model) | {rss_kb / 1024:.1f} MB | | | < 30 MB |")
    psql("DROP DATABASE bench_sync WITH (FORCE); DROP DATABASE bench_outage WITH (FORCE); DROP DATABASE bench_newest WITH (FORCE);", "postgres")


if __name__ == "__main__":
    main()
