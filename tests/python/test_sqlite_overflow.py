"""Checked arithmetic on user-supplied numbers: extreme integers and reals
give the right answer or an error, never a wrapped one."""

import sqlite3

import pytest

I64_MIN = -(2**63)
I64_MAX = 2**63 - 1


@pytest.mark.parametrize("ts", [I64_MIN, I64_MIN + 1, -1, 0, I64_MAX])
@pytest.mark.parametrize("width", [1, 7, 300, 86400, "2 weeks", 100 * 366 * 86400])
def test_a_bucket_never_lies_after_its_time(db, ts, width):
    w = 14 * 86400 if width == "2 weeks" else width
    try:
        (b,) = db.execute("SELECT sluice_bucket(?, ?)", (ts, width)).fetchone()
    except sqlite3.Error as e:
        assert str(e).startswith("sluice_bucket: ts ") and "too far" in str(e)
        return
    assert b <= ts and ts - b < w, (ts, width, b)


def test_the_bucket_of_the_smallest_integer_is_an_error(db):
    with pytest.raises(sqlite3.Error, match="sluice_bucket: ts -9223372036854775808 is too far"):
        db.execute("SELECT sluice_bucket(-9223372036854775808, 300)").fetchall()


def test_pending_age_of_the_oldest_time_is_not_negative(db):
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, ts INTEGER)")
    db.execute("SELECT sluice_device('box-1')")
    db.execute("SELECT sluice_track('t', '{\"time\": \"ts\"}')")
    db.execute("INSERT INTO t (ts) VALUES (?)", (I64_MIN,))
    (age,) = db.execute("SELECT sluice_pending_age('t')").fetchone()
    assert age == I64_MAX
    db.execute("UPDATE t SET ts = ?", (I64_MAX,))
    (age,) = db.execute("SELECT sluice_pending_age('t')").fetchone()
    assert age < 0  # a time in the future: a negative age, not a wrapped one
    assert age > -I64_MAX


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_a_percentile_stays_within_its_inputs(db, p):
    big = 1.7976931348623157e308
    (r,) = db.execute(
        "SELECT sluice_percentile(column1, ?) FROM (VALUES (?), (?))", (p, -big, big)
    ).fetchone()
    assert -big <= r <= big, r
