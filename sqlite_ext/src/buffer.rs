//! The bounded local buffer: `sluice_enforce_budget` keeps the database under
//! a byte budget during a long outage, and the status view `sluice_status`
//! (with `sluice_pending_age`) says per tracked table what is waiting.
//!
//! The budget drops, first, raw rows of rollup sources that every rollup of
//! the source has already processed, in windows that ended more than a
//! late-data horizon ago, oldest window first; then (unless told
//! `rolled_up_only`) the oldest rows of the other tracked tables that have
//! a time column, oldest hour first. Never a rollup target (the
//! aggregates), never a row a rollup has not processed, never a table
//! without a time column. Every drop is a row of `sluice_drops`, and the
//! rollup never recomputes a window that starts before the newest dropped
//! row of its source (it would compute it from partial data). The same
//! condition guards `sluice_cleanup` of a rollup source ([`cleanup_guard`],
//! [`seal`]).

use rusqlite::functions::Context;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value as Json;

use crate::options::{parse_duration, quote_ident};
use crate::rollup::{parse_rollup, Rollup, WINDOW_COLUMN};
use crate::schema::{
    atomic, ensure_bookkeeping, meta_get, seq_column, table_info, tracked, TableInfo,
};
use crate::window::IsoTime;
use crate::{arg_int, arg_opt_text, arg_text, connection, finish, now_ms, Fail, Res};

/// Default late-data horizon of `sluice_enforce_budget`: raw rows of a
/// window are kept at least this long after the window ends, so that a late
/// row still finds its window's rows (one hour, in seconds).
pub const DEFAULT_HORIZON_SECS: i64 = 3600;

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

/// The sizes on disk of the main file and the WAL file of `main` (0 for
/// a database that is not a file, and for a WAL file when not in WAL mode).
pub fn disk_bytes(conn: &Connection) -> Res<(i64, i64)> {
    let file: Option<String> = conn
        .query_row(
            "SELECT file FROM pragma_database_list WHERE name = 'main'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let Some(file) = file.filter(|f| !f.is_empty()) else {
        return Ok((0, 0));
    };
    let size = |p: &str| std::fs::metadata(p).map_or(0, |m| m.len() as i64);
    let mode: String = conn.query_row("PRAGMA main.journal_mode", [], |r| r.get(0))?;
    let wal = if mode.eq_ignore_ascii_case("wal") {
        size(&format!("{file}-wal"))
    } else {
        0
    };
    Ok((size(&file), wal))
}

/// What the budget compares with `max_bytes`: the data pages of `main`
/// plus its WAL file. SQLite reuses the WAL from its start after a
/// checkpoint but does not shrink it (unless `journal_size_limit` says so),
/// so it takes that much disk whatever it holds.
fn budget_bytes(conn: &Connection) -> Res<i64> {
    Ok(used_bytes(conn)?.0 + disk_bytes(conn)?.1)
}

/// Key prefix in `sluice_meta` of the seal that `sluice_cleanup` leaves on
/// a rollup source (`sealed_until:<table>`, unix seconds).
pub const SEALED_KEY: &str = "sealed_until:";

/// Windows of `source` that start before this (unix seconds) had raw rows
/// dropped by the budget or deleted by cleanup: rollups must not recompute
/// them (they would compute them from partial data).
pub fn sealed_until(conn: &Connection, source: &str) -> Res<Option<i64>> {
    let has: bool = conn.query_row(
        "SELECT count(*) > 0 FROM main.sqlite_master WHERE type = 'table' AND name = 'sluice_drops'",
        [],
        |r| r.get(0),
    )?;
    let dropped: Option<i64> = if has {
        conn.query_row(
            "SELECT max(sealed_until) FROM main.sluice_drops WHERE tbl = ?1",
            [source],
            |r| r.get(0),
        )?
    } else {
        None
    };
    let cleaned = match meta_get(conn, &format!("{SEALED_KEY}{source}"))? {
        Some(Value::Integer(i)) => Some(i),
        _ => None,
    };
    Ok(dropped.max(cleaned))
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
    /// Only raw rows that are rolled up may go (no second tier).
    rolled_up_only: bool,
}

const BUDGET_OPTIONS: &str = "horizon, now, rolled_up_only";

fn parse_budget_options(text: Option<&str>) -> Res<BudgetOptions> {
    let mut o = BudgetOptions {
        horizon: DEFAULT_HORIZON_SECS,
        now: now_ms() / 1000,
        rolled_up_only: false,
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
            ("rolled_up_only", Json::Bool(b)) => o.rolled_up_only = *b,
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
            ("rolled_up_only", _) => {
                return Err(Fail("option 'rolled_up_only' must be true or false".into()))
            }
            (other, _) => {
                return Err(Fail(format!(
                    "unknown option '{other}' (known options: {BUDGET_OPTIONS})"
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
    let before = budget_bytes(conn)?;
    let mut dropped = 0i64;
    let mut note = String::new();
    if before > max {
        let srcs = sources(conn)?;
        if srcs.is_empty() && o.rolled_up_only {
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
    let (data, file) = used_bytes(conn)?;
    let wal = disk_bytes(conn)?.1;
    let after = data + wal;
    let within = after <= max;
    if !within && note.is_empty() {
        note = if o.rolled_up_only {
            "over budget: no more raw rows that are rolled up and older than the horizon; \
             with rolled_up_only nothing else is dropped"
                .into()
        } else {
            "over budget: what is left may not be dropped (rollup targets, raw rows not yet \
             rolled up or within the horizon, tables without a time column, each table's \
             newest row)"
                .into()
        };
    }
    crate::bookkeeping::budget::write(
        conn,
        &crate::bookkeeping::budget::BudgetState {
            max_bytes: max,
            used_bytes: after,
            file_bytes: file + wal,
            wal_bytes: wal,
            within_budget: within,
            dropped_rows: dropped,
            checked_at: iso_now(conn)?,
            note: (!note.is_empty()).then_some(note),
        },
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

/// The rows of the other tracked tables go an hour (of their time column)
/// at a time, oldest hour first across the tables.
pub const RAW_CHUNK_SECS: i64 = 3600;

/// A table the budget may drop rows of, and what it dropped.
struct Droppable {
    name: String,
    /// The watermark when tracked: rows above it are counted as unsynced.
    acked_seq: Option<i64>,
    /// SQL over `sq`: the row is in an acknowledged range above the
    /// watermark (newest-first draining), so it is synced after all.
    in_acked_range: String,
    rows: i64,
    unsynced: i64,
    first: i64,
    last: i64,
    /// Its row of `sluice_drops` for this call, once it dropped a row.
    record: Option<i64>,
}

impl Droppable {
    fn new(conn: &Connection, name: &str) -> Res<Droppable> {
        let acked_seq = tracked(conn, name)?.map(|t| t.acked_seq);
        let ranges = match acked_seq {
            Some(a) => crate::acked::ranges_above(conn, name, a)?,
            None => Vec::new(),
        };
        let in_acked_range = if ranges.is_empty() {
            "0".to_string()
        } else {
            ranges
                .iter()
                .map(|(lo, hi)| format!("(sq > {lo} AND sq <= {hi})"))
                .collect::<Vec<_>>()
                .join(" OR ")
        };
        Ok(Droppable {
            name: name.to_string(),
            acked_seq,
            in_acked_range,
            rows: 0,
            unsynced: 0,
            first: i64::MAX,
            last: i64::MIN,
            record: None,
        })
    }

    /// Writes what was dropped so far into `sluice_drops` (one row per table
    /// and call), so that the size measured next includes the record.
    fn record(&mut self, conn: &Connection, now: &str) -> Res<()> {
        let unsynced = self.acked_seq.map(|_| self.unsynced);
        match self.record {
            None => {
                conn.execute(
                    "INSERT INTO main.sluice_drops \
                     (tbl, rows, unsynced_rows, from_time, to_time, sealed_until, dropped_at) \
                     VALUES (?1, ?2, ?3, strftime('%Y-%m-%dT%H:%M:%SZ', ?4, 'unixepoch'), \
                             strftime('%Y-%m-%dT%H:%M:%SZ', ?5, 'unixepoch'), ?6, ?7)",
                    params![
                        self.name,
                        self.rows,
                        unsynced,
                        self.first,
                        self.last,
                        self.last.saturating_add(1),
                        now
                    ],
                )?;
                self.record = Some(conn.last_insert_rowid());
            }
            Some(id) => {
                conn.execute(
                    "UPDATE main.sluice_drops SET rows = ?2, unsynced_rows = ?3, \
                     from_time = strftime('%Y-%m-%dT%H:%M:%SZ', ?4, 'unixepoch'), \
                     to_time = strftime('%Y-%m-%dT%H:%M:%SZ', ?5, 'unixepoch'), \
                     sealed_until = ?6 WHERE id = ?1",
                    params![
                        id,
                        self.rows,
                        unsynced,
                        self.first,
                        self.last,
                        self.last.saturating_add(1)
                    ],
                )?;
            }
        }
        Ok(())
    }
}

/// SQL for the sequence number of a row of `name` (what the watermark
/// compares): the rowid alias or `sluice_version`; NULL when untracked.
fn seq_sql(conn: &Connection, info: &TableInfo) -> Res<String> {
    match tracked(conn, &info.name)? {
        Some(t) => seq_column(info, &t),
        None => Ok("NULL".into()),
    }
}

/// Drops candidate rows until the database fits: first the raw rows that
/// are rolled up (oldest window first), then, unless `rolled_up_only`, the
/// oldest rows of the other tracked tables that have a time column (oldest
/// hour first). Records each table's drop in `sluice_drops` as it goes.
fn drop_rows(conn: &Connection, max: i64, o: &BudgetOptions, srcs: &[Source]) -> Res<i64> {
    conn.execute_batch(
        "DROP TABLE IF EXISTS temp.sluice_budget_rows;
         CREATE TEMP TABLE sluice_budget_rows
             (tier INTEGER, src INTEGER, ws INTEGER, ep INTEGER, rid INTEGER, sq INTEGER);",
    )?;
    let mut tables: Vec<Droppable> = Vec::new();
    for s in srcs {
        let idx = tables.len();
        tables.push(Droppable::new(conn, &s.name)?);
        collect_candidates(conn, idx, s, o)?;
    }
    conn.execute_batch(
        "CREATE INDEX temp.sluice_budget_rows_ws ON sluice_budget_rows (tier, ws, src)",
    )?;
    let now = iso_now(conn)?;
    let mut total = drop_chunks(conn, max, 1, &mut tables, &now)?;
    if !o.rolled_up_only && budget_bytes(conn)? > max {
        for (name, time) in raw_tables(conn, srcs)? {
            let idx = tables.len();
            tables.push(Droppable::new(conn, &name)?);
            collect_raw(conn, idx, &name, &time)?;
        }
        total += drop_chunks(conn, max, 2, &mut tables, &now)?;
    }
    conn.execute_batch("DROP TABLE IF EXISTS temp.sluice_budget_rows")?;
    Ok(total)
}

/// Drops the collected rows of one tier a chunk at a time, oldest chunk
/// first, measuring the size after each; stops as soon as it fits.
fn drop_chunks(
    conn: &Connection,
    max: i64,
    tier: i64,
    tables: &mut [Droppable],
    now: &str,
) -> Res<i64> {
    if budget_bytes(conn)? <= max {
        return Ok(0);
    }
    let chunks: Vec<(i64, i64)> = {
        let mut stmt = conn.prepare(
            "SELECT DISTINCT ws, src FROM temp.sluice_budget_rows WHERE tier = ?1 ORDER BY ws, src",
        )?;
        let rows = stmt
            .query_map([tier], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        rows
    };
    let mut total = 0i64;
    for (ws, src) in chunks {
        let Some(d) = usize::try_from(src).ok().and_then(|i| tables.get_mut(i)) else {
            continue;
        };
        let (n, unsynced, lo, hi): (i64, i64, Option<i64>, Option<i64>) = conn.query_row(
            &format!(
                "SELECT count(*), coalesce(sum(sq > ?4 AND NOT ({})), 0), min(ep), max(ep) \
                 FROM temp.sluice_budget_rows WHERE tier = ?1 AND ws = ?2 AND src = ?3",
                d.in_acked_range
            ),
            params![tier, ws, src, d.acked_seq.unwrap_or(i64::MAX)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        conn.execute(
            &format!(
                "DELETE FROM main.{} WHERE rowid IN (SELECT rid FROM temp.sluice_budget_rows \
                 WHERE tier = ?1 AND ws = ?2 AND src = ?3)",
                quote_ident(&d.name)
            ),
            params![tier, ws, src],
        )?;
        d.rows += n;
        d.unsynced += unsynced;
        d.first = d.first.min(lo.unwrap_or(i64::MAX));
        d.last = d.last.max(hi.unwrap_or(i64::MIN));
        d.record(conn, now)?;
        total += n;
        if budget_bytes(conn)? <= max {
            break;
        }
    }
    Ok(total)
}

/// SQL condition over the rows of a rollup source: true for a row that may
/// leave the source without changing an aggregate. For every rollup of the
/// source, the row's window ended at least `horizon` before `now`, and the
/// rollup has processed the row and every row of its window and of older
/// windows (the condition stops at the oldest window that still has a row
/// above the rollup's watermark). `"0"` when a rollup never ran. Also
/// returns the widest rollup (whose windows are the unit of dropping).
fn rolled_up_condition<'a>(
    conn: &Connection,
    source_quoted: &str,
    rollups: &'a [(Rollup, i64)],
    horizon: i64,
    now: i64,
) -> Res<(String, Option<&'a Rollup>)> {
    let mut conds: Vec<String> = Vec::new();
    let mut widest: Option<&Rollup> = None;
    for (r, wm) in rollups {
        if *wm <= 0 {
            // Never run: nothing of this source is rolled up yet.
            return Ok(("0".into(), None));
        }
        let t = quote_ident(&r.time);
        let bucket = format!("sluice_bucket({t}, {})", r.width);
        let ws = epoch_sql(&bucket);
        // The oldest window that still has unprocessed (late or new) rows.
        let first_unprocessed: Option<i64> = conn.query_row(
            &format!("SELECT min({ws}) FROM main.{source_quoted} WHERE rowid > ?1"),
            [wm],
            |row| row.get(0),
        )?;
        let by_horizon = now
            .saturating_sub(horizon)
            .saturating_sub(r.width)
            .saturating_add(1);
        let limit = first_unprocessed.map_or(by_horizon, |f| f.min(by_horizon));
        conds.push(format!("rowid <= {wm} AND {ws} < {limit}"));
        if widest.is_none_or(|w| r.width > w.width) {
            widest = Some(r);
        }
    }
    if conds.is_empty() {
        return Ok(("0".into(), None));
    }
    Ok((conds.join(" AND "), widest))
}

/// Puts the droppable rows of one source into `temp.sluice_budget_rows`
/// (tier 1): the rows of [`rolled_up_condition`], except the source's
/// newest row (the rowid high-water mark of sync, see sluice_cleanup).
fn collect_candidates(conn: &Connection, idx: usize, s: &Source, o: &BudgetOptions) -> Res<()> {
    let info = table_info(conn, &s.name)?;
    let src = info.quoted();
    let (cond, widest) = rolled_up_condition(conn, &src, &s.rollups, o.horizon, o.now)?;
    let Some(w) = widest else { return Ok(()) };
    let t = quote_ident(&w.time);
    let chunk = epoch_sql(&format!("sluice_bucket({t}, {})", w.width));
    conn.execute(
        &format!(
            "INSERT INTO temp.sluice_budget_rows (tier, src, ws, ep, rid, sq) \
             SELECT 1, ?1, {chunk}, {ep}, rowid, {sq} FROM main.{src} \
             WHERE {cond} AND rowid < (SELECT max(rowid) FROM main.{src})",
            ep = epoch_sql(&t),
            sq = seq_sql(conn, &info)?,
        ),
        [idx as i64],
    )?;
    Ok(())
}

/// The tables of the second tier: tracked tables with a time column
/// (`sluice_track`'s `"time"` option) that are neither a rollup's source nor
/// its target, with that column.
fn raw_tables(conn: &Connection, srcs: &[Source]) -> Res<Vec<(String, String)>> {
    let targets: Vec<String> = {
        let has: bool = conn.query_row(
            "SELECT count(*) > 0 FROM main.sqlite_master WHERE type = 'table' \
             AND name = 'sluice_rollups'",
            [],
            |r| r.get(0),
        )?;
        if has {
            let mut stmt = conn.prepare("SELECT target FROM main.sluice_rollups")?;
            let rows = stmt
                .query_map([], |r| r.get(0))?
                .collect::<Result<Vec<_>, _>>()?;
            rows
        } else {
            Vec::new()
        }
    };
    let listed: Vec<(String, Option<String>)> = {
        let mut stmt =
            conn.prepare("SELECT tbl, time_column FROM main.sluice_tables ORDER BY tbl")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        rows
    };
    let mut out = Vec::new();
    for (tbl, time) in listed {
        let Some(time) = time else { continue };
        let is = |n: &String| n.eq_ignore_ascii_case(&tbl);
        if targets.iter().any(is) || srcs.iter().any(|s| is(&s.name)) {
            continue;
        }
        // A table dropped or changed since it was tracked is left alone.
        let Ok(info) = table_info(conn, &tbl) else {
            continue;
        };
        if info.without_rowid {
            continue;
        }
        if let Some((_, c)) = info.column(&time) {
            out.push((info.name.clone(), c.name.clone()));
        }
    }
    Ok(out)
}

/// Puts every row of a second-tier table into `temp.sluice_budget_rows`
/// (tier 2), chunked by the hour of its time, except rows without a time
/// and, for an append-only table, its newest row (the rowid high-water
/// mark, as in sluice_cleanup).
fn collect_raw(conn: &Connection, idx: usize, name: &str, time: &str) -> Res<()> {
    let info = table_info(conn, name)?;
    let table = info.quoted();
    let append_only = tracked(conn, &info.name)?.is_some_and(|t| !t.mutable);
    let keep_newest = if append_only {
        format!("WHERE rowid < (SELECT max(rowid) FROM main.{table})")
    } else {
        String::new()
    };
    let c = RAW_CHUNK_SECS;
    conn.execute(
        &format!(
            "INSERT INTO temp.sluice_budget_rows (tier, src, ws, ep, rid, sq) \
             SELECT 2, ?1, ep - ((ep % {c}) + {c}) % {c}, ep, rid, sq FROM \
             (SELECT {ep} AS ep, rowid AS rid, {sq} AS sq FROM main.{table} {keep_newest}) \
             WHERE ep IS NOT NULL",
            ep = epoch_sql(&quote_ident(time)),
            sq = seq_sql(conn, &info)?,
        ),
        [idx as i64],
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------
// sluice_cleanup of a rollup source

/// For `sluice_cleanup` of a table that rollups read: the SQL condition a
/// row must meet to be deleted ([`rolled_up_condition`] with the default
/// horizon: its windows are processed and ended an hour ago), and the
/// epoch expression of the time column of the widest rollup. `None` when
/// no rollup reads the table.
pub fn cleanup_guard(conn: &Connection, info: &TableInfo) -> Res<Option<(String, String)>> {
    let Some(s) = sources(conn)?
        .into_iter()
        .find(|s| s.name.eq_ignore_ascii_case(&info.name))
    else {
        return Ok(None);
    };
    let (cond, widest) = rolled_up_condition(
        conn,
        &info.quoted(),
        &s.rollups,
        DEFAULT_HORIZON_SECS,
        now_ms() / 1000,
    )?;
    let ep = widest.map_or("NULL".to_string(), |w| epoch_sql(&quote_ident(&w.time)));
    Ok(Some((cond, ep)))
}

/// Records that the raw rows of `source` before `until` (unix seconds) were
/// deleted by cleanup: rollups no longer recompute the windows that start
/// before it (see [`sealed_until`]).
pub fn seal(conn: &Connection, source: &str, until: i64) -> Res<()> {
    conn.execute(
        "INSERT INTO main.sluice_meta (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
        params![format!("{SEALED_KEY}{source}"), until],
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
    // A time far in the past (-2^63 seconds) is older than any age an
    // integer holds: the age saturates at i64::MAX instead of wrapping to a
    // negative number.
    Ok(ep.map_or(Value::Null, |e| {
        Value::Integer((now_ms() / 1000).saturating_sub(e))
    }))
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
        assert_eq!((o.horizon, o.now, o.rolled_up_only), (7200, 100, false));
        let o = parse_budget_options(Some(r#"{"rolled_up_only": true}"#)).unwrap();
        assert!(o.rolled_up_only);
        assert!(parse_budget_options(Some(r#"{"rolled_up_only": 1}"#)).is_err());
        let o = parse_budget_options(Some(r#"{"now": "1970-01-01T00:01:00Z"}"#)).unwrap();
        assert_eq!((o.horizon, o.now), (DEFAULT_HORIZON_SECS, 60));
        assert!(parse_budget_options(Some(r#"{"horizn": 1}"#))
            .err()
            .unwrap()
            .0
            .contains("known options: horizon, now, rolled_up_only"));
        assert!(parse_budget_options(Some("[]")).is_err());
        assert!(parse_budget_options(Some(r#"{"horizon": -1}"#)).is_err());
    }
}
