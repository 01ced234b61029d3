//! The storage budget: `sluice_enforce_budget` keeps the database under a
//! byte budget during a long outage.
//!
//! It drops, first, raw rows of rollup sources that every rollup of the
//! source has already processed, in windows that ended more than a
//! late-data horizon ago, oldest window first ([`crate::seal`]); then
//! (unless told `rolled_up_only`) the oldest rows of the other tracked
//! tables that have a time column, oldest hour first. Never a rollup target
//! (the aggregates), never a row a rollup has not processed, never a table
//! without a time column. Every drop is a row of `sluice_drops`, and the
//! rollup never recomputes a window that starts before the newest dropped
//! row of its source (it would compute it from partial data).
//!
//! Within each tier, rows whose time is from the future (a clock that
//! jumped forward and was corrected since, [`crate::time::future_after`])
//! are taken for the oldest and go first: their time cannot be right, they
//! were written before the clock was corrected, and waiting for their time
//! would let the disk fill. Rolled-up ones go once every rollup processed
//! them, and they seal nothing ([`crate::seal`]).

use rusqlite::functions::Context;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value as Json;
use sluice_wire::names::quote_ident;

use crate::bookkeeping::budget::BudgetState;
use crate::bookkeeping::{self, drops, rollups, tables};
use crate::glue::{arg_int, arg_opt_text, atomic, connection, finish, now_ms, Fail, Res};
use crate::options::parse_duration;
use crate::schema::{table_info, TableInfo};
use crate::seal::{rolled_up, sources, Source, DEFAULT_HORIZON_SECS};
use crate::sequence::seq_column;
use crate::time::{epoch_of, future_after, EpochSql};

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
        bookkeeping::ensure(&conn)?;
        enforce_in(&conn, max, &opts)
    })?;
    Ok(Value::Integer(n))
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
        // Dropped to make room at the edge; the cloud keeps the rows.
        dropped = bookkeeping::tombstones::quietly(conn, || drop_rows(conn, max, o, &srcs))?;
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
    bookkeeping::budget::write(
        conn,
        &BudgetState {
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
    /// The seal: the newest dropped time not from the future, + 1.
    sealed_until: i64,
    /// Its row of `sluice_drops` for this call, once it dropped a row.
    record: Option<i64>,
}

impl Droppable {
    fn new(conn: &Connection, name: &str) -> Res<Droppable> {
        let acked_seq = tables::get(conn, name)?.map(|t| t.acked_seq);
        let ranges = match acked_seq {
            Some(a) => bookkeeping::ranges::above(conn, name, a)?,
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
            sealed_until: i64::MIN,
            record: None,
        })
    }

    /// Writes what was dropped so far into `sluice_drops` (one row per table
    /// and call), so that the size measured next includes the record.
    fn record(&mut self, conn: &Connection, now: &str) -> Res<()> {
        let d = drops::Drop {
            tbl: &self.name,
            rows: self.rows,
            unsynced: self.acked_seq.map(|_| self.unsynced),
            first: self.first,
            last: self.last,
            sealed_until: self.sealed_until,
            dropped_at: now,
        };
        match self.record {
            None => self.record = Some(drops::insert(conn, &d)?),
            Some(id) => drops::update(conn, id, &d)?,
        }
        Ok(())
    }
}

/// SQL for the sequence number of a row of `name` (what the watermark
/// compares): the rowid alias or `sluice_version`; NULL when untracked.
fn seq_sql(conn: &Connection, info: &TableInfo) -> Res<String> {
    match tables::get(conn, &info.name)? {
        Some(t) => Ok(seq_column(info, &t)?.to_string()),
        None => Ok("NULL".into()),
    }
}

/// Drops candidate rows until the database fits: first the raw rows that
/// are rolled up (oldest window first), then, unless `rolled_up_only`, the
/// oldest rows of the other tracked tables that have a time column (oldest
/// hour first); in each tier, rows from the future first. Records each
/// table's drop in `sluice_drops` as it goes.
fn drop_rows(conn: &Connection, max: i64, o: &BudgetOptions, srcs: &[Source]) -> Res<i64> {
    // `fut` is 1 for a row whose time is from the future.
    conn.execute_batch(
        "DROP TABLE IF EXISTS temp.sluice_budget_rows;
         CREATE TEMP TABLE sluice_budget_rows
             (tier INTEGER, src INTEGER, fut INTEGER, ws INTEGER, ep INTEGER, rid INTEGER,
              sq INTEGER);",
    )?;
    let mut tables: Vec<Droppable> = Vec::new();
    for s in srcs {
        let idx = tables.len();
        tables.push(Droppable::new(conn, &s.name)?);
        collect_candidates(conn, idx, s, o)?;
    }
    conn.execute_batch(
        "CREATE INDEX temp.sluice_budget_rows_ws ON sluice_budget_rows (tier, fut, ws, src)",
    )?;
    let now = iso_now(conn)?;
    let mut total = drop_chunks(conn, max, 1, &mut tables, &now)?;
    if !o.rolled_up_only && budget_bytes(conn)? > max {
        for (name, time) in raw_tables(conn, srcs)? {
            let idx = tables.len();
            tables.push(Droppable::new(conn, &name)?);
            collect_raw(conn, idx, &name, &time, o.now)?;
        }
        total += drop_chunks(conn, max, 2, &mut tables, &now)?;
    }
    conn.execute_batch("DROP TABLE IF EXISTS temp.sluice_budget_rows")?;
    Ok(total)
}

/// Drops the collected rows of one tier a chunk at a time, rows from the
/// future first, then oldest chunk first, measuring the size after each;
/// stops as soon as it fits.
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
    let chunks: Vec<(i64, i64, i64)> = {
        let mut stmt = conn.prepare(
            "SELECT DISTINCT fut, ws, src FROM temp.sluice_budget_rows WHERE tier = ?1 \
             ORDER BY fut DESC, ws, src",
        )?;
        let rows = stmt
            .query_map([tier], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        rows
    };
    let mut total = 0i64;
    for (fut, ws, src) in chunks {
        let Some(d) = usize::try_from(src).ok().and_then(|i| tables.get_mut(i)) else {
            continue;
        };
        let (n, unsynced, lo, hi): (i64, i64, Option<i64>, Option<i64>) = conn.query_row(
            &format!(
                "SELECT count(*), coalesce(sum(sq > ?5 AND NOT ({})), 0), min(ep), max(ep) \
                 FROM temp.sluice_budget_rows \
                 WHERE tier = ?1 AND fut = ?2 AND ws = ?3 AND src = ?4",
                d.in_acked_range
            ),
            params![tier, fut, ws, src, d.acked_seq.unwrap_or(i64::MAX)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        conn.execute(
            &format!(
                "DELETE FROM main.{} WHERE rowid IN (SELECT rid FROM temp.sluice_budget_rows \
                 WHERE tier = ?1 AND fut = ?2 AND ws = ?3 AND src = ?4)",
                quote_ident(&d.name)
            ),
            params![tier, fut, ws, src],
        )?;
        d.rows += n;
        d.unsynced += unsynced;
        d.first = d.first.min(lo.unwrap_or(i64::MAX));
        d.last = d.last.max(hi.unwrap_or(i64::MIN));
        if fut == 0 {
            // Rows from the future seal nothing (crate::seal).
            if let Some(hi) = hi {
                d.sealed_until = d.sealed_until.max(hi.saturating_add(1));
            }
        }
        d.record(conn, now)?;
        total += n;
        if budget_bytes(conn)? <= max {
            break;
        }
    }
    Ok(total)
}

/// Puts the droppable rows of one source into `temp.sluice_budget_rows`
/// (tier 1): the rows of [`crate::seal::RolledUp`] (rows from the future
/// among them), except the source's newest row (the rowid high-water mark
/// of sync, see sluice_cleanup).
fn collect_candidates(conn: &Connection, idx: usize, s: &Source, o: &BudgetOptions) -> Res<()> {
    let info = table_info(conn, &s.name)?;
    let src = info.quoted();
    let rolled = rolled_up(conn, &info, &s.rollups, o.horizon, o.now)?;
    let Some(w) = rolled.widest() else {
        return Ok(());
    };
    conn.execute(
        &format!(
            "INSERT INTO temp.sluice_budget_rows (tier, src, fut, ws, ep, rid, sq) \
             SELECT 1, ?1, ({fut}), {chunk}, {ep}, rowid, {sq} FROM main.{src} \
             WHERE {cond} AND rowid < (SELECT max(rowid) FROM main.{src})",
            fut = rolled.future(),
            chunk = w.start_sql(),
            ep = w.time_sql(),
            cond = rolled.may_leave(),
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
    let targets = rollups::targets(conn)?;
    let listed = tables::with_time_column(conn)?;
    let mut out = Vec::new();
    for (tbl, time) in listed {
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
/// mark, as in sluice_cleanup). Rows whose time is from the future when the
/// clock reads `now` are marked so (`fut`).
fn collect_raw(conn: &Connection, idx: usize, name: &str, time: &str, now: i64) -> Res<()> {
    let info = table_info(conn, name)?;
    let table = info.quoted();
    let append_only = tables::get(conn, &info.name)?.is_some_and(|t| !t.mutable);
    let keep_newest = if append_only {
        format!("WHERE rowid < (SELECT max(rowid) FROM main.{table})")
    } else {
        String::new()
    };
    let c = RAW_CHUNK_SECS;
    conn.execute(
        &format!(
            "INSERT INTO temp.sluice_budget_rows (tier, src, fut, ws, ep, rid, sq) \
             SELECT 2, ?1, ep > {fa}, ep - ((ep % {c}) + {c}) % {c}, ep, rid, sq FROM \
             (SELECT {ep} AS ep, rowid AS rid, {sq} AS sq FROM main.{table} {keep_newest}) \
             WHERE ep IS NOT NULL",
            ep = EpochSql(&quote_ident(time)),
            sq = seq_sql(conn, &info)?,
            fa = future_after(now),
        ),
        [idx as i64],
    )?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

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
