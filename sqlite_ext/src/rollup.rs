//! Registered rollups: `sluice_rollup(name, options)` declares how a raw
//! table is summarised into fixed time windows, `sluice_rollup_run([name])`
//! brings the summary up to date.
//!
//! A run reads the raw rows above the rollup's watermark (the source's
//! rowid), finds the windows they touch (late rows included), recomputes each
//! touched window from all its raw rows, and upserts it into the target
//! table; an upsert that would change nothing is skipped, so running twice
//! writes nothing. The target has a unique key (group columns, window start)
//! and is tracked as a mutable table, so a window updated by late rows is sent
//! again.

use rusqlite::functions::Context;
use rusqlite::types::Value;
use rusqlite::{params, Connection, ToSql};
use sluice_wire::names::quote_ident;

use crate::bookkeeping::{self, rollups};
use crate::glue::{arg_opt_text, arg_text, atomic, connection, finish, now_ms, Fail, Res};
use crate::rollup_spec::{col, parse_rollup, Rollup, WINDOW_COLUMN};
use crate::schema::{find_table, table_info};
use crate::seal;
use crate::time::{bucket_of, EpochSql, IsoTime};

/// `sluice_rollup(name, options)` → 1: declares (or re-declares) a rollup
/// and creates its target table if absent.
pub fn sluice_rollup(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_rollup", rollup_fn(ctx))
}

fn rollup_fn(ctx: &Context<'_>) -> Res<Value> {
    let name = arg_text(ctx, 0, "the rollup name")?;
    let options = arg_text(ctx, 1, "options")?;
    let conn = connection(ctx)?;
    let (r, track) = parse_rollup(&conn, name, options)?;
    let src = table_info(&conn, &r.source)?;
    atomic(&conn, "sluice_rollup", || {
        bookkeeping::ensure(&conn)?;
        if find_table(&conn, &r.target)?.is_none() {
            let mut cols = vec!["id INTEGER PRIMARY KEY".to_string()];
            for g in &r.group {
                let decl = col(&src, g, "group")?.decl.clone();
                cols.push(format!("{} {}", quote_ident(g), decl));
            }
            let tdecl = col(&src, &r.time, "time")?.decl.clone();
            cols.push(format!("{} {} NOT NULL", quote_ident(WINDOW_COLUMN), tdecl));
            for m in &r.measures {
                cols.push(format!("{} {}", quote_ident(&m.column), m.decl));
            }
            let mut key: Vec<String> = r.group.iter().map(|g| quote_ident(g)).collect();
            key.push(quote_ident(WINDOW_COLUMN));
            cols.push(format!("UNIQUE ({})", key.join(", ")));
            conn.execute_batch(&format!(
                "CREATE TABLE main.{} ({})",
                quote_ident(&r.target),
                cols.join(", ")
            ))?;
        } else {
            let t = table_info(&conn, &r.target)?;
            for c in r
                .group
                .iter()
                .chain(std::iter::once(&WINDOW_COLUMN.to_string()))
                .chain(r.measures.iter().map(|m| &m.column))
            {
                col(&t, c, "target")?;
            }
        }
        rollups::upsert(&conn, &r.name, options, &r.source, &r.target)?;
        if track {
            let mut key = r.group.clone();
            key.push(WINDOW_COLUMN.to_string());
            let opts = serde_json::json!({"mutable": true, "local_only": ["id"], "key": key,
                "time": WINDOW_COLUMN});
            conn.query_row(
                "SELECT sluice_track(?1, ?2)",
                params![r.target, opts.to_string()],
                |_| Ok(()),
            )?;
        }
        Ok(())
    })?;
    Ok(Value::Integer(1))
}

/// `sluice_rollup_run([name])` → rows written (inserted or changed) in the
/// target(s): one rollup, or every registered rollup.
pub fn sluice_rollup_run(ctx: &Context<'_>) -> rusqlite::Result<Value> {
    finish("sluice_rollup_run", rollup_run(ctx))
}

fn rollup_run(ctx: &Context<'_>) -> Res<Value> {
    let name = arg_opt_text(ctx, 0, "the rollup name")?;
    if !ctx.is_empty() && name.is_none() {
        return Err(Fail("the rollup name must be text, got NULL".into()));
    }
    let conn = connection(ctx)?;
    let stored = rollups::list(&conn, name)?;
    if let (Some(n), true) = (name, stored.is_empty()) {
        return Err(Fail(format!(
            "no rollup named '{n}'; declare it with sluice_rollup"
        )));
    }
    let mut total = 0i64;
    for s in stored {
        let n = &s.name;
        let (r, _) = parse_rollup(&conn, n, &s.options)
            .map_err(|Fail(m)| Fail(format!("rollup '{n}': {m}")))?;
        total += atomic(&conn, "sluice_rollup_run", || {
            bookkeeping::ensure(&conn)?;
            run_one(&conn, &r)
        })
        .map_err(|Fail(m)| Fail(format!("rollup '{n}': {m}")))?;
    }
    Ok(Value::Integer(total))
}

/// The exclusive end of the window starting at `ws`, in the same form.
fn window_end(ws: &Value, width: i64) -> Res<Value> {
    Ok(match ws {
        Value::Integer(i) => Value::Integer(i.saturating_add(width)),
        Value::Real(r) => Value::Real(r + width as f64),
        Value::Text(t) => {
            let mut it = IsoTime::parse(t)?;
            it.secs += width;
            Value::Text(it.bucket(width)?)
        }
        other => other.clone(),
    })
}

// Rows whose time is not a time (text that is not ISO-8601, a blob) would
// stop a rollup for good: `sluice_bucket` refuses them. They are left out
// of it instead, each recorded in `sluice_rollup_skipped` once (the raw row
// stays and syncs).

/// At most this many rows of one run are skipped; more is not a stray bad
/// row but a wrong time column, and the run fails with the first error.
const MAX_SKIPPED_PER_RUN: usize = 10_000;

fn run_one(conn: &Connection, r: &Rollup) -> Res<i64> {
    match aggregate(conn, r) {
        Err(Fail(m)) if m.contains("sluice_bucket:") => {
            let skipped = skip_bad_times(conn, r)?;
            if skipped == 0 {
                return Err(Fail(m));
            }
            aggregate(conn, r)
        }
        other => other,
    }
}

/// Records the rows above the watermark whose time is not a time; returns
/// how many.
fn skip_bad_times(conn: &Connection, r: &Rollup) -> Res<usize> {
    let wm = rollups::watermark(conn, &r.name)?;
    let mut bad: Vec<(i64, String)> = Vec::new();
    {
        let mut stmt = conn.prepare(&format!(
            "SELECT rowid, {t} FROM main.{src} WHERE rowid > ?1 AND {t} IS NOT NULL",
            t = quote_ident(&r.time),
            src = quote_ident(&r.source)
        ))?;
        let mut rows = stmt.query([wm])?;
        while let Some(row) = rows.next()? {
            if let Err(Fail(why)) = bucket_of(row.get_ref(1)?, r.width) {
                if bad.len() == MAX_SKIPPED_PER_RUN {
                    return Err(Fail(format!(
                        "more than {MAX_SKIPPED_PER_RUN} rows of '{}' have a time that is not a \
                         time (first: rowid {}: {}); is '{}' the right time column?",
                        r.source, bad[0].0, bad[0].1, r.time
                    )));
                }
                bad.push((row.get(0)?, why));
            }
        }
    }
    rollups::skip(conn, &r.name, &bad, now_ms())?;
    Ok(bad.len())
}

fn aggregate(conn: &Connection, r: &Rollup) -> Res<i64> {
    // Values are bound, never written into the SQL: the bounds of the
    // touched windows, the seal, the rollup's name.
    let mut binds: Vec<(&str, Box<dyn ToSql>)> = Vec::new();
    let skip = if rollups::any_skipped(conn, &r.name)? {
        binds.push((":rollup_name", Box::new(r.name.clone())));
        format!(" AND {}", rollups::NOT_SKIPPED)
    } else {
        String::new()
    };
    let src = quote_ident(&r.source);
    let wm = rollups::watermark(conn, &r.name)?;
    let max: Option<i64> =
        conn.query_row(&format!("SELECT max(rowid) FROM main.{src}"), [], |row| {
            row.get(0)
        })?;
    let Some(max) = max.filter(|m| *m > wm) else {
        return Ok(0);
    };
    let t = quote_ident(&r.time);
    let bucket = format!("sluice_bucket({t}, {})", r.width);
    let gcols: Vec<String> = r.group.iter().map(|g| quote_ident(g)).collect();
    let mut key = gcols.clone();
    key.push(quote_ident(WINDOW_COLUMN));
    let mut sel = gcols.clone();
    sel.push(format!("{bucket} AS {}", quote_ident(WINDOW_COLUMN)));
    for m in &r.measures {
        sel.push(format!("{} AS {}", m.expr, quote_ident(&m.column)));
    }
    let mut target_cols = key.clone();
    target_cols.extend(r.measures.iter().map(|m| quote_ident(&m.column)));
    let sets: Vec<String> = r
        .measures
        .iter()
        .map(|m| format!("{0} = excluded.{0}", quote_ident(&m.column)))
        .collect();
    let changed: Vec<String> = r
        .measures
        .iter()
        .map(|m| format!("{0} IS NOT excluded.{0}", quote_ident(&m.column)))
        .collect();
    let group_by = {
        let mut g = gcols.clone();
        g.push(quote_ident(WINDOW_COLUMN));
        g.join(", ")
    };
    // Which rows to aggregate: all of them on a first run; otherwise the
    // windows touched by the new rows, within their time range.
    let filter = if wm == 0 {
        format!("WHERE {t} IS NOT NULL{skip}")
    } else {
        let mut touched_cols = gcols.clone();
        touched_cols.push(format!("{bucket} AS sluice_ws"));
        conn.execute_batch("DROP TABLE IF EXISTS temp.sluice_rollup_touched")?;
        let mut stmt = conn.prepare(&format!(
            "CREATE TEMP TABLE sluice_rollup_touched AS SELECT DISTINCT {} FROM main.{src} \
             WHERE rowid > :wm AND rowid <= :max AND {t} IS NOT NULL{skip}",
            touched_cols.join(", ")
        ))?;
        let mut touched: Vec<(&str, &dyn ToSql)> = vec![(":wm", &wm), (":max", &max)];
        touched.extend(binds.iter().map(|(n, v)| (*n, v.as_ref())));
        stmt.execute(touched.as_slice())?;
        let (lo, hi): (Value, Value) = conn.query_row(
            "SELECT min(sluice_ws), max(sluice_ws) FROM temp.sluice_rollup_touched",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        let hi = window_end(&hi, r.width)?;
        binds.push((":lo", Box::new(lo)));
        binds.push((":hi", Box::new(hi)));
        let mut probe = gcols.clone();
        probe.push(bucket.clone());
        let mut tcols: Vec<String> = gcols.clone();
        tcols.push("sluice_ws".into());
        format!(
            "WHERE {t} >= :lo AND {t} < :hi AND ({}) IN (SELECT {} FROM temp.sluice_rollup_touched){skip}",
            probe.join(", "),
            tcols.join(", ")
        )
    };
    // Windows whose raw rows the storage budget dropped or cleanup deleted
    // are never recomputed: they would be computed from what is left.
    let filter = match seal::sealed_until(conn, &r.source)? {
        Some(sealed) => {
            binds.push((":sealed", Box::new(sealed)));
            format!("{filter} AND {} >= :sealed", EpochSql(&bucket))
        }
        None => filter,
    };
    let sql = format!(
        "INSERT INTO main.{target} ({cols}) SELECT {sel} FROM main.{src} {filter} \
         GROUP BY {group_by} \
         ON CONFLICT ({key}) DO UPDATE SET {sets} WHERE {changed}",
        target = quote_ident(&r.target),
        cols = target_cols.join(", "),
        sel = sel.join(", "),
        key = key.join(", "),
        sets = sets.join(", "),
        changed = changed.join(" OR "),
    );
    let params: Vec<(&str, &dyn ToSql)> = binds.iter().map(|(n, v)| (*n, v.as_ref())).collect();
    let n = conn.execute(&sql, params.as_slice())? as i64;
    if wm != 0 {
        conn.execute_batch("DROP TABLE IF EXISTS temp.sluice_rollup_touched")?;
    }
    rollups::record_run(conn, &r.name, max, now_ms(), n)?;
    Ok(n)
}
