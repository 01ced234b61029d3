"""Benchmark of the pull, cloud to edge (issue 13), with the real agent:

1. convergence latency from a cloud commit to the row at the edge, for a
   fleet of BENCH_BOXES boxes (default 100) each running `sluice run`, with
   LISTEN and with polling (`pull.poll_interval = 1s`): p50 / p99 / max over
   BENCH_ROUNDS commits (default 10), each row seen at every box;
2. the initial download of BENCH_ROWS rows (default 200000) into an empty
   edge table by `sluice sync` (a snapshot), beside psql's `COPY ... TO
   STDOUT` piped into SQLite (python3's sqlite3, `executemany` in one
   transaction), best of three interleaved rounds;
3. the fraction of the fleet that has applied a change, over time after
   the cloud's commit (every box and round of 1., LISTEN and polling): a
   table, and with BENCH_CHART=<file.svg> a chart of it.

Needs a running PostgreSQL with the sluice extension (PGHOST/PGPORT, as
`scripts/pg.sh start` exports), the built agent and sluice0.so
(SLUICE_AGENT_BIN, SLUICE_SQLITE_EXT; default target/release). Prints a
markdown table. Run it through scripts/bench-pull.sh.
"""
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENT = os.environ.get("SLUICE_AGENT_BIN", os.path.join(ROOT, "target/release/sluice"))
EXT = os.environ.get("SLUICE_SQLITE_EXT", os.path.join(ROOT, "target/release/sluice0.so"))
PSQL = os.path.join(os.environ.get("SLUICE_PG", os.path.join(ROOT, ".cache/pg17")), "bin/psql")
PORT = os.environ["PGPORT"]
BOXES = int(os.environ.get("BENCH_BOXES", "100"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "10"))
ROWS = int(os.environ.get("BENCH_ROWS", "200000"))
JOBS_OFF = '[schedule]\nrollup = "off"\nembed = "off"\nsync = "off"\nfull_sync = "off"\ncleanup = "off"\nbudget = "off"\n'


def sql(q, db):
    subprocess.run([PSQL, "-q", "-d", db, "-c", q], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def fresh_db(db, columns):
    sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", "postgres")
    sql(f"CREATE DATABASE {db}", "postgres")
    sql("CREATE EXTENSION sluice CASCADE", db)
    sql(f"CREATE TABLE camera_config ({columns})", db)
    sql("SELECT sluice.publish('camera_config'::regclass, tenant_column => 'tenant')", db)


def edge(path, columns):
    for f in (path, path + "-wal", path + "-shm"):
        if os.path.exists(f):
            os.remove(f)
    c = sqlite3.connect(path)
    c.execute("PRAGMA journal_mode=WAL")
    c.enable_load_extension(True)
    c.load_extension(EXT)
    c.execute(f"CREATE TABLE camera_config ({columns})")
    c.execute("SELECT sluice_subscribe('camera_config')")
    c.commit()
    return c


def config(d, path, db, pull):
    p = os.path.join(d, "sluice.toml")
    with open(p, "w") as f:
        f.write(f'[device]\nid = "{os.path.basename(d)}"\n[edge]\ndatabase = "{path}"\n'
                f'extension = "{EXT}"\n[cloud]\nurl = "postgres://postgres@127.0.0.1:{PORT}/{db}"\n'
                f'[pull]\ntenant = "acme"\n{pull}\n{JOBS_OFF}')
    return p


def latency(mode, work):
    db = "bench_pull_fleet"
    fresh_db(db, "camera_id text PRIMARY KEY, tenant text NOT NULL, setting text")
    sql("INSERT INTO camera_config VALUES ('cam-0', 'acme', 'x')", db)
    listen = "true" if mode == "listen" else "false"
    pull = f'schedule = "off"\nlisten = {listen}\npoll_interval = "1s"'
    conns, procs = [], []
    for i in range(BOXES):
        d = os.path.join(work, f"box-{i}")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "edge.db")
        conns.append(edge(path, "camera_id TEXT PRIMARY KEY, tenant TEXT, setting TEXT"))
        procs.append(subprocess.Popen([AGENT, "run", "--config", config(d, path, db, pull)],
                                      stderr=subprocess.DEVNULL, env=dict(os.environ, SLUICE_LOG="warn")))

    def has(c, k):
        return c.execute("SELECT count(*) FROM camera_config WHERE camera_id = ?", (k,)).fetchone()[0] == 1

    t0 = time.time()
    while not all(has(c, "cam-0") for c in conns):
        if time.time() - t0 > 300:
            raise SystemExit("the fleet's first snapshots did not finish in 300 s")
        time.sleep(0.05)
    time.sleep(2)
    lat, missing = [], 0
    for r in range(1, ROUNDS + 1):
        k = f"cam-{r}"
        sql(f"INSERT INTO camera_config VALUES ('{k}', 'acme', 'y')", db)
        committed = time.time()
        left = set(range(BOXES))
        while left and time.time() - committed < 30:
            for i in list(left):
                if has(conns[i], k):
                    lat.append(time.time() - committed)
                    left.discard(i)
            time.sleep(0.005)
        missing += len(left)
        time.sleep(0.5)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait()
    lat.sort()
    q = lambda x: lat[min(len(lat) - 1, int(x * len(lat)))] * 1000
    return q(0.5), q(0.99), lat[-1] * 1000, missing, lat, BOXES * ROUNDS


def fraction_at(lat, total, t):
    """Share of (box, change) pairs applied within t seconds of the commit."""
    return sum(1 for x in lat if x <= t) / total


def chart(path, curves, horizon):
    """An SVG line chart of the fleet's applied fraction over time."""
    w, h, left, bottom = 640, 320, 60, 40
    pw, ph = w - left - 20, h - bottom - 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>']
    for i in range(0, 11, 2):
        y = 20 + ph - ph * i / 10
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{i * 10}%</text>')
    for i in range(0, 11):
        x = left + pw * i / 10
        out.append(f'<text x="{x:.1f}" y="{h - bottom + 16}" text-anchor="middle">{horizon * i / 10:.1f}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{h - 6}" text-anchor="middle">seconds after the cloud commit</text>')
    for k, (name, colour, lat, total) in enumerate(curves):
        pts = []
        for i in range(0, 201):
            t = horizon * i / 200
            pts.append(f"{left + pw * i / 200:.1f},{20 + ph - ph * fraction_at(lat, total, t):.1f}")
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(pts)}"/>')
        out.append(f'<text x="{left + pw - 150}" y="{ph - 10 - 16 * k}" fill="{colour}">{name}</text>')
    out.append(f'<text x="{left}" y="14">share of a {BOXES}-box fleet that has applied a cloud change</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def download(work):
    db = "bench_pull_download"
    cols = "camera_id text PRIMARY KEY, tenant text NOT NULL, device text, setting text, threshold float8, updated_at timestamptz DEFAULT now()"
    fresh_db(db, cols)
    sql("INSERT INTO camera_config (camera_id, tenant, device, setting, threshold) "
        f"SELECT 'cam-' || lpad(i::text, 8, '0'), 'acme', NULL, 'fps=' || (i % 30) || ';zone=' || (i % 7), i / 3.0 "
        f"FROM generate_series(1, {ROWS}) i", db)
    ecols = "camera_id TEXT PRIMARY KEY, tenant TEXT, device TEXT, setting TEXT, threshold REAL, updated_at TEXT"
    best_agent, best_base = None, None
    for _ in range(3):
        path = os.path.join(work, "download.db")
        edge(path, ecols).close()
        cfg = config(work, path, db, "")
        t = time.time()
        subprocess.run([AGENT, "sync", "--config", cfg, "--quiet"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, SLUICE_LOG="warn"))
        a = time.time() - t
        n = sqlite3.connect(path).execute("SELECT count(*) FROM camera_config").fetchone()[0]
        assert n == ROWS, n
        base = os.path.join(work, "baseline.db")
        for f in (base, base + "-wal", base + "-shm"):
            if os.path.exists(f):
                os.remove(f)
        b = sqlite3.connect(base)
        b.execute("PRAGMA journal_mode=WAL")
        b.execute(f"CREATE TABLE camera_config ({ecols})")
        b.commit()
        t = time.time()
        copy = subprocess.Popen([PSQL, "-q", "-d", db, "-A", "-t", "-F", "\x1f", "-c",
                                 "COPY (SELECT camera_id, tenant, device, setting, threshold, "
                                 "to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') "
                                 "FROM camera_config) TO STDOUT"], stdout=subprocess.PIPE, text=True)
        b.execute("BEGIN")
        rows = ((f[0], f[1], None if f[2] == "\\N" else f[2], f[3], float(f[4]), f[5])
                for f in (line.rstrip("\n").split("\t") for line in copy.stdout))
        b.executemany("INSERT INTO camera_config VALUES (?, ?, ?, ?, ?, ?)", rows)
        b.commit()
        copy.wait()
        s = time.time() - t
        assert b.execute("SELECT count(*) FROM camera_config").fetchone()[0] == ROWS
        best_agent = a if best_agent is None else min(best_agent, a)
        best_base = s if best_base is None else min(best_base, s)
    return best_agent, best_base


def main():
    with tempfile.TemporaryDirectory() as work:
        print(f"| measure | LISTEN | polling every 1 s |")
        print(f"| --- | ---: | ---: |")
        l = latency("listen", work)
        p = latency("poll", work)
        print(f"| cloud commit to the row at each of {BOXES} boxes, p50 | {l[0]:.0f} ms | {p[0]:.0f} ms |")
        print(f"| p99 | {l[1]:.0f} ms | {p[1]:.0f} ms |")
        print(f"| max | {l[2]:.0f} ms | {p[2]:.0f} ms |")
        print(f"| rows not seen within 30 s | {l[3]} | {p[3]} |")
        print()
        print(f"| share of the {BOXES}-box fleet that has applied a change, after | LISTEN | polling every 1 s |")
        print(f"| --- | ---: | ---: |")
        for t in (0.1, 0.25, 0.5, 1.0, 2.0):
            print(f"| {t * 1000:.0f} ms | {fraction_at(l[4], l[5], t):.0%} | {fraction_at(p[4], p[5], t):.0%} |")
        if os.environ.get("BENCH_CHART"):
            chart(os.environ["BENCH_CHART"], [("LISTEN", "#1f77b4", l[4], l[5]),
                                              ("polling every 1 s", "#d62728", p[4], p[5])], 1.5)
            print(f"\n(chart: {os.environ['BENCH_CHART']})")
        a, b = download(work)
        print()
        print(f"| initial download of {ROWS} rows | seconds | rows/s |")
        print(f"| --- | ---: | ---: |")
        print(f"| `sluice sync` (a snapshot, pages of 10,000 in one edge transaction) | {a:.2f} | {ROWS / a:,.0f} |")
        print(f"| psql `COPY ... TO STDOUT` into SQLite (executemany, one transaction) | {b:.2f} | {ROWS / b:,.0f} |")
        print(f"| agent ÷ baseline (rows/s) | {b / a:.2f}× | |")


if __name__ == "__main__":
    sys.exit(main())
