"""Fixtures for the tests of the SQLite extension sluice0.so.

Run with Debian's Python (its sqlite3 module can load extensions):

    cargo build -p sluice-sqlite --release
    cp target/release/libsluice0.so target/release/sluice0.so
    SLUICE_SQLITE_EXT=$PWD/target/release/sluice0 /usr/bin/python3 -m pytest tests/python

A missing or unloadable extension is an error, never a skip.
"""

import os
import sqlite3
import struct

import pytest


def _ext_path():
    path = os.environ.get("SLUICE_SQLITE_EXT")
    if not path:
        pytest.fail(
            "SLUICE_SQLITE_EXT is not set; point it at the built extension, e.g. "
            "SLUICE_SQLITE_EXT=$PWD/target/release/sluice0 (after "
            "`cargo build -p sluice-sqlite --release` and copying libsluice0.so to sluice0.so)",
            pytrace=False,
        )
    candidates = [path, path + ".so"]
    if not any(os.path.isfile(p) for p in candidates):
        pytest.fail(f"SLUICE_SQLITE_EXT={path}: no such file (tried {candidates})", pytrace=False)
    if not hasattr(sqlite3.Connection, "enable_load_extension"):
        pytest.fail(
            "this Python's sqlite3 cannot load extensions; run the tests with /usr/bin/python3",
            pytrace=False,
        )
    return path[:-3] if path.endswith(".so") else path


@pytest.fixture(scope="session")
def ext_path():
    return _ext_path()


def connect(ext_path, target=":memory:"):
    """A connection in autocommit mode (like the sqlite3 shell) with sluice0 loaded."""
    con = sqlite3.connect(target, isolation_level=None)
    con.enable_load_extension(True)
    con.load_extension(ext_path)
    con.enable_load_extension(False)
    return con


@pytest.fixture
def db(ext_path):
    con = connect(ext_path)
    yield con
    con.close()


@pytest.fixture
def one(db):
    """one(sql, *params) -> the single value of the single row."""

    def run(sql, *params):
        rows = db.execute(sql, params).fetchall()
        assert len(rows) == 1 and len(rows[0]) == 1, rows
        return rows[0][0]

    return run


def parse_batch(blob):
    """The header of a sluice batch (docs/wire-format.md), plus the offsets of
    the send time and of the body, in pure Python."""
    b = bytes(blob)
    assert b[:3] == b"SLB", b[:3]
    version, flags, header_len = struct.unpack_from("<BBI", b, 3)
    pos = 9

    def str16():
        nonlocal pos
        (n,) = struct.unpack_from("<H", b, pos)
        s = b[pos + 2 : pos + 2 + n].decode()
        pos += 2 + n
        return s

    def unpack(fmt):
        nonlocal pos
        vals = struct.unpack_from(fmt, b, pos)
        pos += struct.calcsize(fmt)
        return vals[0]

    h = {"version": version, "flags": flags}
    h["device_id"] = str16()
    h["stream_id"] = unpack("<Q")
    h["table"] = str16()
    h["base_seq"] = unpack("<q")
    h["last_seq"] = unpack("<q")
    h["row_count"] = unpack("<I")
    h["sent_at_offset"] = pos
    h["sent_at_ms"] = unpack("<q")
    ncols = unpack("<H")
    cols = []
    for _ in range(ncols):
        name = str16()
        ty = unpack("<B")
        cols.append((name, {1: "integer", 2: "real", 3: "text", 4: "blob", 5: "numeric"}[ty]))
    h["columns"] = cols
    h["fingerprint"] = unpack("<Q")
    if version >= 2:
        h["digest"] = unpack("<Q")
        h["machine"] = unpack("<Q")
        h["zone"] = str16()
        parent, fork_seq = unpack("<Q"), unpack("<q")
        h["fork"] = (parent, fork_seq) if parent else None
    assert pos == 9 + header_len
    h["body"] = b[pos:-4]  # body lengths + body, without the checksum
    return h
