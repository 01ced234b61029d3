//! The bounded local buffer: `sluice_enforce_budget` keeps the database under
//! a byte budget during a long outage, and the status view `sluice_status`
//! (with `sluice_pending_age`) says per tracked table what is waiting.
//!
//! The budget drops only raw rows of rollup sources that every rollup of
//! the source has already processed, in windows that ended more than a
//! late-data horizon ago, oldest window first; never a rollup target (the
//! aggregates), never another table. Every drop is a row of `sluice_drops`,
//! and the rollup never recomputes a window that starts before the newest
//! dropped row of its source (it would compute it from partial data).

use rusqlite::functions::Context;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value as Json;

use crate::options::{parse_duration, quote_ident};
use crate::rollup::{parse_rollup, Rollup, WINDOW_COLUMN};
use crate::schema::{atomic, ensure_bookkeeping, seq_column, table_info, tracked};
use crate::window::IsoTime;
use crate::{arg_int, arg_opt_text, arg_text, connection, finish, now_ms, Fail, Res};

/// Default late-data horizon of `sluice_enforce_budget`: raw rows of a
/// window are kept at least this long after the window ends, so that a late
/// row still finds its window's rows (one hour, in seconds).
pub const DEFAULT_HORIZON_SECS: i64 = 3600;

/// Created with the bookkeeping tables: the drop log and the two views.
pub const BUFFER_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS main.sluice_drops (
    id INTEGER PRIMARY KEY,
    tbl TEXT NOT NULL,
    rows INTEGER NOT NULL,
    unsynced_rows INTEGER,
    from_time TEXT,
    to_time TEXT,
    sealed_until INTEGER NOT NULL,
    dropped_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS main.sluice_drops_tbl ON sluice_drops (tbl);
CREATE VIEW IF NOT EXISTS main.sluice_status AS
SELECT t.tbl AS \"table\",
       sluice_pending(t.tbl) AS pending_rows,
       sluice_pending_age(t.tbl) AS oldest_pending_age_secs,
       strftime('%Y-%m-%dT%H:%M:%fZ', t.acked_at / 1000.0, 'unixepoch') AS last_ack_at,
       t.acked_rows AS acked_rows,
       coalesce((SELECT sum(d.rows) FROM sluice_drops d WHERE d.tbl = t.tbl), 0) AS rows_dropped
  FROM sluice_tables t;
CREATE VIEW IF NOT EXISTS main.sluice_budget AS
SELECT json_extract(value, '$.max_bytes') AS max_bytes,
       json_extract(value, '$.used_bytes') AS used_bytes,
       json_extract(value, '$.file_bytes') AS file_bytes,
       json_extract(value, '$.within_budget') AS within_budget,
       json_extract(value, '$.dropped_rows') AS dropped_rows,
       json_extract(value, '$.checked_at') AS checked_at,
       json_extract(value, '$.note') AS note
  FROM sluice_meta WHERE key = 'budget';
";

/// SQL: a time value (ISO-8601 text or unix seconds) as whole unix seconds;
/// NULL for anything else.
pub fn epoch_sql(x: &str) -> String {
    format!(
        "(CASE typeof({x}) WHEN 'text' THEN unixepoch({x}) WHEN 'integer' THEN {x} \
         WHEN 'real' THEN CAST({x} AS INTEGER) END)"
    )
}

/// A time value as unix seconds: integers and reals are seconds, text is
/// ISO-8601 (a `±HH:MM` offset is applied; no suffix means UTC).
pub fn epoch_of(v: ValueRef<'_>) -> Option<i64> {
    match v {
        ValueRef::Integer(i) => Some(i),
        ValueRef::Real(r) if r.is_finite() && r.abs() < 9.0e15 => Some(r.floor() as i64),
        ValueRef::Text(t) => {
            let s = std::str::from_utf8(t).ok()?;
            let it = IsoTime::parse(s).ok()?;
            let suffix = it.suffix.as_bytes();
            let offset = if suffix.len() == 6 {
                let n =
                    |a: usize| i64::from(suffix[a] - b'0') * 10 + i64::from(suffix[a + 1] - b'0');
                let o = n(1) * 3600 + n(4) * 60;
                if suffix[0] == b'-' {
                    -o
                } else {
                    o
                }
            } else {
                0
            };
            Some(it.secs - offset)
        }
        _ => None,
    }
}

/// The bytes the database needs: `(page_count − freelist_count) × page_size`
/// of `main`, and the whole file (`page_count × page_size`).
pub fn used_bytes(conn: &Connection) -> Res<(i64, i64)> {
    let (pages, free, size): (i64, i64, i64) = conn.query_row(
        "SELECT (SELECT page_count FROM pragma_page_count), \
                (SELECT freelist_count FROM pragma_freelist_count), \
                (SELECT page_size FROM pragma_page_size)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok(((pages - free) * size, pages * size))
}

/// Windows of `source` that start before this (unix seconds) had raw rows
/// dropped by the budget: rollups must not recompute them.
pub fn sealed_until(conn: &Connection, source: &str) -> Res<Option<i64>> {
    let has: bool = conn.query_row(
        "SELECT count(*) > 0 FROM main.sqlite_master WHERE type = 'table' AND name = 'sluice_drops'",
        [],
        |r| r.get(0),
    )?;
    if !has {
        return Ok(None);
    }
    Ok(conn.query_row(
        "SELECT max(sealed_until) FROM main.sluice_drops WHERE tbl = ?1",
        [source],
        |r| r.get(0),
    )?)
}

/// SQL condition: the window (of `bucket_expr`) starts at or after `sealed`.
pub fn unsealed_condition(bucket_expr: &str, sealed: i64) -> String {
    format!("{} >= {sealed}", epoch_sql(bucket_expr))
}

// ---------------------------------------------------------------------------
// sluice_enforce_budget

struct BudgetOptions {
    horizon: i64,
    now: i64,
}

fn parse_budget_options(text: Option<&str>) -> Res<BudgetOptions> {
    let mut o = BudgetOptions {
        horizon: DEFAULT_HORIZON_SECS,
        now: now_ms() / 1000,
    };
    let Some(text) = text else { return Ok(o) };
    let v: Json =
        serde_json::from_str(text).map_err(|e| Fail(format!("options are not valid JSON: {e}")))?;
    let Json::Object(map) = v else {
        return Err(Fail(
            "options must be a JSON object like {\"horizon\": \"1 hour\"}".into(),
        ));
    };
    for (k, v) in &map {
        match (k.as_str(), v) {
            ("horizon", Json::String(s)) => o.horizon = parse_duration(s).map_err(Fail)?,
            ("horizon", Json::Number(n)) => {
                o.horizon = n
                    .as_i64()
                    .filter(|h| *h >= 0)
                    .ok_or_else(|| Fail("option 'horizon' must be whole seconds >= 0".into()))?
            }
            ("now", Json::Number(n)) => {
                o.now = n
                    .as_i64()
                    .ok_or_else(|| Fail("option 'now' must be whole unix seconds".into()))?
            }
            ("now", Json::String(s)) => {
                o.now = epoch_of(ValueRef::Text(s.as_bytes()))
                    .ok_or_else(|| Fail(format!("option 'now': '{s}' is not an ISO-8601 time")))?
            }
            ("horizon", _) => {
                return Err(Fail(
                    "option 'horizon' must be seconds or text like '1 hour'".into(),
                ))
            }
            ("now", _) => {
                return Err(Fail(
                    "option 'now' must be unix seconds or ISO-8601 text".into(),
                ))
            }
            (other, _) => {
                return Err(Fail(format!(
                    "unknown option '{other}' (known options: horizon, now)"
                )))
            }
        }
    }
    Ok(o)
}

/// `sluice_enforce_budget(max_bytes [, options])` → raw rows dropped.
pub fn sluice_enforce_budget(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_enforce_budget", enforce(ctx))
}

fn enforce(ctx: &Context<'_>) -> Res<Value> {
    let max = arg_int(ctx, 0, "max_bytes")?;
    if max < 1 {
        return Err(Fail(format!("max_bytes must be positive, got {max}")));
    }
    let opts = parse_budget_options(arg_opt_text(ctx, 1, "options")?)?;
    let conn = connection(ctx)?;
    let n = atomic(&conn, "sluice_enforce_budget", || {
        ensure_bookkeeping(&conn)?;
        enforce_in(&conn, max, &opts)
    })?;
    Ok(Value::Integer(n))
}

/// One rollup source and the rollups that read it.
struct Source {
    name: String,
    rollups: Vec<(Rollup, i64)>,
}

fn sources(conn: &Connection) -> Res<Vec<Source>> {
    let has: bool = conn.query_row(
        "SELECT count(*) > 0 FROM main.sqlite_master WHERE type = 'table' AND name = 'sluice_rollups'",
        [],
        |r| r.get(0),
    )?;
    if !has {
        return Ok(Vec::new());
    }
    let mut stmt =
        conn.prepare("SELECT name, options, watermark FROM main.sluice_rollups ORDER BY name")?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut out: Vec<Source> = Vec::new();
    for (name, options, wm) in rows {
        let (r, _) = parse_rollup(conn, &name, &options)
            .map_err(|Fail(m)| Fail(format!("rollup '{name}': {m}")))?;
        match out.iter_mut().find(|s| s.name == r.source) {
            Some(s) => s.rollups.push((r, wm)),
            None => out.push(Source {
                name: r.source.clone(),
                rollups: vec![(r, wm)],
            }),
        }
    }
    Ok(out)
}

fn enforce_in(conn: &Connection, max: i64, o: &BudgetOptions) -> Res<i64> {
    let (before, _) = used_bytes(conn)?;
    let mut dropped = 0i64;
    let mut note = String::new();
    if before > max {
        let srcs = sources(conn)?;
        if srcs.is_empty() {
            note = "no rollup is registered, so no raw row may be dropped".into();
        }
        dropped = drop_rows(conn, max, o, &srcs)?;
        if dropped > 0 && auto_vacuum_incremental(conn)? {
            // Each step frees pages; run it to the end.
            let mut stmt = conn.prepare("PRAGMA main.incremental_vacuum")?;
            let mut rows = stmt.query([])?;
            while rows.next()?.is_some() {}
        }
    }
    let (after, file) = used_bytes(conn)?;
    let within = after <= max;
    if !within && note.is_empty() {
        note = "over budget: no more raw rows that are rolled up and older than the horizon; \
                nothing else is ever dropped"
            .into();
    }
    let status = serde_json::json!({
        "max_bytes": max,
        "used_bytes": after,
        "file_bytes": file,
        "within_budget": within,
        "dropped_rows": dropped,
        "checked_at": iso_now(conn)?,
        "note": if note.is_empty() { Json::Null } else { Json::String(note) },
    });
    conn.execute(
        "INSERT INTO main.sluice_meta (key, value) VALUES ('budget', ?1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [status.to_string()],
    )?;
    Ok(dropped)
}

fn auto_vacuum_incremental(conn: &Connection) -> Res<bool> {
    let mode: i64 = conn.query_row("PRAGMA main.auto_vacuum", [], |r| r.get(0))?;
    Ok(mode == 2)
}

fn iso_now(conn: &Connection) -> Res<String> {
    Ok(
        conn.query_row("SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now')", [], |r| {
            r.get(0)
        })?,
    )
}

/// Drops candidate rows, oldest window first, until the database fits.
fn drop_rows(conn: &Connection, max: i64, o: &BudgetOptions, srcs: &[Source]) -> Res<i64> {
    conn.execute_batch(
        "DROP TABLE IF EXISTS temp.sluice_budget_rows;
         CREATE TEMP TABLE sluice_budget_rows (src INTEGER, ws INTEGER, ep INTEGER, rid INTEGER);",
    )?;
    for (i, s) in srcs.iter().enumerate() {
        collect_candidates(conn, i, s, o)?;
    }
    conn.execute_batch("CREATE INDEX temp.sluice_budget_rows_ws ON sluice_budget_rows (ws, src)")?;
    let chunks: Vec<(i64, i64)> = {
        let mut stmt =
            conn.prepare("SELECT DISTINCT ws, src FROM temp.sluice_budget_rows ORDER BY ws, src")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        rows
    };
    // Per source: rows, unsynced rows, first and last time dropped.
    let mut totals: Vec<(i64, i64, i64, i64)> = vec![(0, 0, i64::MAX, i64::MIN); srcs.len()];
    let mut total = 0i64;
    for (ws, src) in chunks {
        let Ok(idx) = usize::try_from(src) else {
            continue;
        };
        let Some(s) = srcs.get(idx) else { continue };
        let acked = tracked(conn, &s.name)?.map(|t| (t.acked_seq, t.mutable));
        let acked_seq = match acked {
            Some((a, false)) => Some(a),
            // A mutable source (unusual) numbers its rows by version: every
            // dropped row is counted as unsynced unless proven otherwise.
            Some((_, true)) => Some(i64::MAX),
            None => None,
        };
        let (n, unsynced, lo, hi): (i64, i64, Option<i64>, Option<i64>) = conn.query_row(
            "SELECT count(*), sum(rid > ?3), min(ep), max(ep) FROM temp.sluice_budget_rows \
             WHERE ws = ?1 AND src = ?2",
            params![ws, src, acked_seq.unwrap_or(i64::MAX)],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get::<_, Option<i64>>(1)?.unwrap_or(0),
                    r.get(2)?,
                    r.get(3)?,
                ))
            },
        )?;
        let unsynced = if acked_seq == Some(i64::MAX) {
            n
        } else {
            unsynced
        };
        conn.execute(
            &format!(
                "DELETE FROM main.{} WHERE rowid IN \
                 (SELECT rid FROM temp.sluice_budget_rows WHERE ws = ?1 AND src = ?2)",
                quote_ident(&s.name)
            ),
            params![ws, src],
        )?;
        let t = &mut totals[idx];
        t.0 += n;
        t.1 += unsynced;
        t.2 = t.2.min(lo.unwrap_or(i64::MAX));
        t.3 = t.3.max(hi.unwrap_or(i64::MIN));
        total += n;
        if used_bytes(conn)?.0 <= max {
            break;
        }
    }
    let now = iso_now(conn)?;
    for (s, (n, unsynced, lo, hi)) in srcs.iter().zip(totals) {
        if n == 0 {
            continue;
        }
        let tracked_src = tracked(conn, &s.name)?.is_some();
        conn.execute(
            "INSERT INTO main.sluice_drops \
             (tbl, rows, unsynced_rows, from_time, to_time, sealed_until, dropped_at) \
             VALUES (?1, ?2, ?3, strftime('%Y-%m-%dT%H:%M:%SZ', ?4, 'unixepoch'), \
                     strftime('%Y-%m-%dT%H:%M:%SZ', ?5, 'unixepoch'), ?6, ?7)",
            params![
                s.name,
                n,
                tracked_src.then_some(unsynced),
                lo,
                hi,
                hi.saturating_add(1),
                now
            ],
        )?;
    }
    conn.execute_batch("DROP TABLE IF EXISTS temp.sluice_budget_rows")?;
    Ok(total)
}

/// Puts the droppable rows of one source into `temp.sluice_budget_rows`:
/// for every rollup of the source, the row's window ended at least
/// `horizon` before `now`, every row of that window or an older one has been
/// processed (rowid at or below the watermark), and it is not the source's
/// newest row (the rowid high-water mark of sync, see sluice_cleanup).
fn collect_candidates(conn: &Connection, idx: usize, s: &Source, o: &BudgetOptions) -> Res<()> {
    let info = table_info(conn, &s.name)?;
    let src = info.quoted();
    let mut conds: Vec<String> = Vec::new();
    let mut widest: Option<&Rollup> = None;
    for (r, wm) in &s.rollups {
        if *wm <= 0 {
            // Never run: nothing of this source is rolled up yet.
            return Ok(());
        }
        let t = quote_ident(&r.time);
        let bucket = format!("sluice_bucket({t}, {})", r.width);
        let ws = epoch_sql(&bucket);
        // The oldest window that still has unprocessed (late or new) rows.
        let first_unprocessed: Option<i64> = conn.query_row(
            &format!("SELECT min({ws}) FROM main.{src} WHERE rowid > ?1"),
            [wm],
            |row| row.get(0),
        )?;
        let by_horizon = o
            .now
            .saturating_sub(o.horizon)
            .saturating_sub(r.width)
            .saturating_add(1);
        let limit = first_unprocessed.map_or(by_horizon, |f| f.min(by_horizon));
        conds.push(format!("rowid <= {wm} AND {ws} < {limit}"));
        if widest.is_none_or(|w| r.width > w.width) {
            widest = Some(r);
        }
    }
    let Some(w) = widest else { return Ok(()) };
    let t = quote_ident(&w.time);
    let chunk = epoch_sql(&format!("sluice_bucket({t}, {})", w.width));
    conn.execute(
        &format!(
            "INSERT INTO temp.sluice_budget_rows (src, ws, ep, rid) \
             SELECT ?1, {chunk}, {ep}, rowid FROM main.{src} \
             WHERE {conds} AND rowid < (SELECT max(rowid) FROM main.{src})",
            ep = epoch_sql(&t),
            conds = conds.join(" AND "),
        ),
        [idx as i64],
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------
// sluice_pending_age

/// `sluice_pending_age(table)` → seconds since the time of the oldest
/// pending row, or NULL (nothing pending, or no known time column).
pub fn sluice_pending_age(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_pending_age", pending_age(ctx))
}

/// The time column of a tracked table: the `time` option of `sluice_track`,
/// else the time column of a rollup that reads it, else `window_start` of a
/// rollup target.
pub fn time_column(conn: &Connection, tbl: &str) -> Res<Option<String>> {
    let own: Option<String> = conn
        .query_row(
            "SELECT time_column FROM main.sluice_tables WHERE tbl = ?1",
            [tbl],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    if own.is_some() {
        return Ok(own);
    }
    let has: bool = conn.query_row(
        "SELECT count(*) > 0 FROM main.sqlite_master WHERE type = 'table' AND name = 'sluice_rollups'",
        [],
        |r| r.get(0),
    )?;
    if !has {
        return Ok(None);
    }
    Ok(conn
        .query_row(
            "SELECT CASE WHEN source = ?1 COLLATE NOCASE THEN json_extract(options, '$.time') \
                    ELSE ?2 END \
               FROM main.sluice_rollups \
              WHERE source = ?1 COLLATE NOCASE OR target = ?1 COLLATE NOCASE \
              ORDER BY source = ?1 COLLATE NOCASE DESC, name LIMIT 1",
            params![tbl, WINDOW_COLUMN],
            |r| r.get(0),
        )
        .optional()?
        .flatten())
}

fn pending_age(ctx: &Context<'_>) -> Res<Value> {
    let table = arg_text(ctx, 0, "the table name")?;
    let conn = connection(ctx)?;
    let info = table_info(&conn, table)?;
    let t = crate::schema::require_tracked(&conn, &info)?;
    let Some(tc) = time_column(&conn, &info.name)? else {
        return Ok(Value::Null);
    };
    if info.column(&tc).is_none() {
        return Ok(Value::Null);
    }
    let seq = seq_column(&info, &t)?;
    // The oldest pending row: the first row of the first non-empty gap
    // between acknowledged ranges (newest-first draining leaves ranges).
    let ranges = crate::acked::ranges_above(&conn, &t.tbl, t.acked_seq)?;
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM main.{} WHERE {seq} > ?1 AND {seq} <= ?2 ORDER BY {seq} LIMIT 1",
        quote_ident(&tc),
        info.quoted()
    ))?;
    let mut v: Option<Value> = None;
    for (lo, hi) in crate::acked::pending_gaps(&ranges, t.acked_seq) {
        v = stmt.query_row([lo, hi], |r| r.get(0)).optional()?;
        if v.is_some() {
            break;
        }
    }
    let ep = v.as_ref().and_then(|v| match v {
        Value::Integer(i) => epoch_of(ValueRef::Integer(*i)),
        Value::Real(f) => epoch_of(ValueRef::Real(*f)),
        Value::Text(s) => epoch_of(ValueRef::Text(s.as_bytes())),
        _ => None,
    });
    Ok(ep.map_or(Value::Null, |e| Value::Integer(now_ms() / 1000 - e)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn epochs() {
        assert_eq!(epoch_of(ValueRef::Integer(5)), Some(5));
        assert_eq!(epoch_of(ValueRef::Real(5.7)), Some(5));
        assert_eq!(
            epoch_of(ValueRef::Text(b"1970-01-01T00:01:00.500Z")),
            Some(60)
        );
        assert_eq!(
            epoch_of(ValueRef::Text(b"1970-01-01T02:00:00+02:00")),
            Some(0)
        );
        assert_eq!(
            epoch_of(ValueRef::Text(b"1970-01-01T00:00:00-01:30")),
            Some(5400)
        );
        assert_eq!(epoch_of(ValueRef::Text(b"soon")), None);
        assert_eq!(epoch_of(ValueRef::Null), None);
    }

    #[test]
    fn options() {
        let o = parse_budget_options(Some(r#"{"horizon": "2 hours", "now": 100}"#)).unwrap();
        assert_eq!((o.horizon, o.now), (7200, 100));
        let o = parse_budget_options(Some(r#"{"now": "1970-01-01T00:01:00Z"}"#)).unwrap();
        assert_eq!((o.horizon, o.now), (DEFAULT_HORIZON_SECS, 60));
        assert!(parse_budget_options(Some(r#"{"horizn": 1}"#))
            .err()
            .unwrap()
            .0
            .contains("known options: horizon, now"));
        assert!(parse_budget_options(Some("[]")).is_err());
        assert!(parse_budget_options(Some(r#"{"horizon": -1}"#)).is_err());
    }
}
