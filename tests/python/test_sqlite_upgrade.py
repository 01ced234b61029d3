"""An edge database made by v0.1.0 (tests/fixtures/edge-v0.1.0.db, made by
tests/fixtures/make-edge-v0.1.0.sh with that release) opens with this
extension: read-only calls read it as it is, the first write upgrades its
bookkeeping in place, and everything it held keeps working."""

import json
import os
import shutil
import sqlite3

import pytest

from conftest import connect, parse_batch

# The bookkeeping version this extension writes (sqlite_ext/src/bookkeeping).
BOOKKEEPING_VERSION = 6

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "edge-v0.1.0.db")
# What v0.1.0 itself reported on the fixture (pending rows by table).
PENDING = {"cameras": 1, "readings": 11, "samples_5m": 75}


@pytest.fixture
def old(ext_path, tmp_path):
    path = str(tmp_path / "edge.db")
    shutil.copy(FIXTURE, path)
    con = connect(ext_path, path)
    yield con
    con.close()


def version(con):
    row = con.execute("SELECT value FROM sluice_meta WHERE key = 'schema_version'").fetchone()
    return row and row[0]


def state(con):
    """Everything a user or the agent sees of the sync state."""
    return {
        "pending": {t: con.execute("SELECT sluice_pending(?)", (t,)).fetchone()[0] for t in PENDING},
        "tracked": json.loads(con.execute("SELECT sluice_tracked()").fetchone()[0]),
        "status": con.execute(
            'SELECT "table", pending_rows, last_ack_at, acked_rows, rows_dropped FROM sluice_status ORDER BY 1'
        ).fetchall(),
        # The columns every version has (version 5 adds the filesystem's).
        "budget": con.execute(
            "SELECT max_bytes, used_bytes, file_bytes, within_budget, dropped_rows, checked_at, note FROM sluice_budget"
        ).fetchall(),
        "drops": con.execute("SELECT tbl, rows, sealed_until FROM sluice_drops").fetchall(),
        "device": con.execute("SELECT sluice_device()").fetchone()[0],
        "stream": con.execute("SELECT value FROM sluice_meta WHERE key = 'stream_id'").fetchone()[0],
    }


def test_read_only_calls_read_it_as_it_is(old):
    assert version(old) is None
    s = state(old)
    assert s["pending"] == PENDING
    assert [t["table"] for t in s["tracked"]] == ["cameras", "readings", "samples_5m"]
    readings = s["tracked"][1]
    assert (readings["acked_seq"], readings["acked_batches"], readings["acked_rows"]) == (5, 3, 9)
    assert readings["acked_ranges"] == [[16, 20]]
    assert readings["local_only_columns"] == ["screenshot_path"] and readings["time_column"] == "ts"
    assert s["drops"] == [("samples", 199, 1795144681)]
    assert s["budget"][0][4] == 199
    # Nothing was written.
    assert version(old) is None


def test_the_first_write_upgrades_in_place_and_keeps_everything(old):
    before = state(old)
    old.execute("SELECT sluice_device('fixture-box')")
    assert version(old) == BOOKKEEPING_VERSION
    after = state(old)
    assert after == before
    tables = {r[0] for r in old.execute("SELECT name FROM sqlite_master WHERE name LIKE 'sluice%'")}
    assert {"sluice_budget_state", "sluice_rollups", "sluice_rollup_skipped", "sluice_acked_ranges"} <= tables
    assert old.execute("SELECT count(*) FROM sluice_meta WHERE key = 'budget'").fetchone() == (0,)
    # Upgrading again changes nothing; every upgrade step may run again on
    # what it made (a schema_version deleted by hand).
    old.execute("SELECT sluice_device('fixture-box')")
    assert version(old) == BOOKKEEPING_VERSION and state(old) == before
    old.execute("DELETE FROM sluice_meta WHERE key = 'schema_version'")
    old.execute("SELECT sluice_device('fixture-box')")
    assert version(old) == BOOKKEEPING_VERSION and state(old) == before
    assert old.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_sync_rollups_and_budget_go_on_after_the_upgrade(old):
    old.execute("SELECT sluice_track('readings')")  # a write: upgrades
    assert version(old) == BOOKKEEPING_VERSION
    # The newest-first range is kept: the next batches fill the gap below it.
    b = parse_batch(old.execute("SELECT sluice_batch('readings', 100)").fetchone()[0])
    assert (b["base_seq"], b["last_seq"], b["row_count"]) == (5, 16, 11)
    assert b["device_id"] == "fixture-box"
    assert [c for c, _ in b["columns"]] == ["id", "ts", "camera", "people"]
    (blob,) = old.execute("SELECT sluice_batch('readings', 100)").fetchone()
    assert old.execute("SELECT sluice_ack(?)", (blob,)).fetchone() == (11,)
    t = json.loads(old.execute("SELECT sluice_tracked('readings')").fetchone()[0])
    assert (t["acked_seq"], t["acked_ranges"]) == (20, [])
    assert old.execute("SELECT sluice_pending('readings')").fetchone() == (0,)
    # The mutable table's update is still pending, and its triggers work.
    old.execute("UPDATE cameras SET name = 'bar 2' WHERE camera_id = 'cam1'")
    assert old.execute("SELECT sluice_pending('cameras')").fetchone() == (2,)
    # The rollup goes on from its watermark; the sealed windows stay as
    # they were (their raw rows were dropped).
    n_before = old.execute("SELECT count(*), sum(n) FROM samples_5m").fetchone()
    old.execute(
        "INSERT INTO samples (cam, ts, people) VALUES ('cam0', '2026-11-20T03:20:10.000Z', 1), "
        "('cam0', '2026-11-20T00:01:00.000Z', 5)"
    )
    assert old.execute("SELECT sluice_rollup_run()").fetchone() == (1,)
    n_after = old.execute("SELECT count(*), sum(n) FROM samples_5m").fetchone()
    assert (n_after[0], n_after[1]) == (n_before[0] + 1, n_before[1] + 1)
    # The budget writes its state where the view reads it.
    old.execute("SELECT sluice_enforce_budget(1000000000)")
    assert old.execute("SELECT within_budget, dropped_rows, note FROM sluice_budget").fetchall() == [(1, 0, None)]
    old.execute("PRAGMA trusted_schema = OFF")
    assert len(old.execute("SELECT * FROM sluice_status").fetchall()) == 3
    assert len(old.execute("SELECT * FROM sluice_budget").fetchall()) == 1


def identity(con):
    return json.loads(con.execute("SELECT sluice_identity()").fetchone()[0])


def test_the_existing_stream_becomes_the_first_epoch(old):
    """Version 3 (sluice 0.2) keeps a history of the database's streams:
    the stream v0.1.0 made is recorded as the first epoch, "existing before
    sluice 0.2", started when its first table was tracked."""
    stream = old.execute("SELECT value FROM sluice_meta WHERE key = 'stream_id'").fetchone()[0]
    first_tracked = old.execute(
        "SELECT strftime('%Y-%m-%dT%H:%M:%fZ', min(created_at) / 1000.0, 'unixepoch') FROM sluice_tables"
    ).fetchone()[0]
    # Read as it is, before any write: shown as the upgrade will record it.
    before = identity(old)
    assert version(old) is None
    assert before == {
        "device_id": "fixture-box",
        "stream_id": stream,
        "machine": None,
        "zone": "UTC",
        "epochs": [
            {
                "stream_id": stream,
                "parent_stream": None,
                "started_at": first_tracked,
                "reason": "existing before sluice 0.2",
                "machine": None,
            }
        ],
    }
    old.execute("SELECT sluice_device('fixture-box')")
    assert version(old) == BOOKKEEPING_VERSION
    assert identity(old) == before
    cols = {r[1] for r in old.execute("PRAGMA table_info(sluice_tables)")}
    assert {"fork_parent", "fork_seq"} <= cols
    assert old.execute("SELECT count(*) FROM sluice_tables WHERE fork_parent IS NOT NULL").fetchone() == (0,)
    # Run again on what it made: the same history.
    old.execute("DELETE FROM sluice_meta WHERE key = 'schema_version'")
    old.execute("SELECT sluice_device('fixture-box')")
    assert identity(old) == before
    # A copy to another machine goes on under a new epoch whose parent is it.
    assert old.execute("SELECT sluice_machine('m-1')").fetchone() == (0,)
    assert old.execute("SELECT sluice_machine('m-2')").fetchone() == (1,)
    epochs = identity(old)["epochs"]
    assert [e["parent_stream"] for e in epochs] == [None, stream]
    assert epochs[0]["machine"] == "m-1" and epochs[1]["machine"] == "m-2"
    b = parse_batch(old.execute("SELECT sluice_batch('readings', 100)").fetchone()[0])
    assert b["stream_id"] == epochs[1]["stream_id"]
    assert b["fork"] == (stream, 20) and b["base_seq"] == 5
    assert b["zone"] == "" and b["machine"] != 0


def test_bookkeeping_newer_than_the_extension_is_refused_by_writers(old):
    old.execute("SELECT sluice_device('fixture-box')")
    old.execute("UPDATE sluice_meta SET value = 99 WHERE key = 'schema_version'")
    with pytest.raises(sqlite3.Error, match="bookkeeping is version 99, made by a newer sluice0"):
        old.execute("SELECT sluice_device('other')").fetchall()
    assert old.execute("SELECT sluice_device()").fetchone() == ("fixture-box",)
    # Reading still works.
    assert old.execute("SELECT sluice_pending('readings')").fetchone() == (11,)
