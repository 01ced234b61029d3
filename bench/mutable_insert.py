"""Issue 12's cost goal for deletes: a tracked insert into a mutable table
with delete tracking (the default since 0.2) within 1.1x of one without it
(the 0.1 behaviour: "deletes": false), in the same run and the same build.
Also updates of a non-key column and a delete of every row, for the record.

Run: bash scripts/bench-mutable.sh  (ROWS=50000 ROUNDS=5)
"""
import os
import sqlite3
import time

EXT = os.environ.get("SLUICE_SQLITE_EXT", "target/release/sluice0.so")
ROWS = int(os.environ.get("ROWS", "50000"))
ROUNDS = int(os.environ.get("ROUNDS", "5"))


def run(deletes: bool):
    db = sqlite3.connect(":memory:")
    db.enable_load_extension(True)
    db.load_extension(EXT)
    db.execute(
        "CREATE TABLE cameras (id INTEGER PRIMARY KEY, camera_id TEXT, location_id TEXT, name TEXT)"
    )
    opts = '{"mutable": true, "key": ["location_id", "camera_id"], "deletes": %s}' % (
        "true" if deletes else "false"
    )
    db.execute("SELECT sluice_track('cameras', ?)", (opts,))
    rows = [(f"cam-{i}", "loc-1", "n") for i in range(ROWS)]
    t = time.perf_counter()
    with db:
        db.executemany(
            "INSERT INTO cameras (camera_id, location_id, name) VALUES (?, ?, ?)", rows
        )
    insert = time.perf_counter() - t
    t = time.perf_counter()
    with db:
        db.execute("UPDATE cameras SET name = 'm'")
    update = time.perf_counter() - t
    t = time.perf_counter()
    with db:
        db.execute("DELETE FROM cameras")
    delete = time.perf_counter() - t
    return insert, update, delete


def main():
    best = {}
    for _ in range(ROUNDS):
        for d in (False, True):
            r = run(d)
            best[d] = [min(a, b) for a, b in zip(best.get(d, r), r)]
    print(f"| {ROWS} rows, best of {ROUNDS} rounds, alternating | without delete tracking (ms) | with it (ms) | with ÷ without |")
    print("| --- | ---: | ---: | ---: |")
    for i, what in enumerate(["tracked insert (one transaction)", "update of a non-key column", "delete of every row"]):
        a, b = best[False][i] * 1000, best[True][i] * 1000
        goal = " (goal ≤ 1.1)" if i == 0 else ""
        print(f"| {what} | {a:.0f} | {b:.0f} | {b / a:.2f}{goal} |")


main()
