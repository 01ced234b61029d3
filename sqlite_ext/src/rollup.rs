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
use rusqlite::types::{Value, ValueRef};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value as Json;

use crate::bookkeeping::Table;
use crate::options::quote_ident;
use crate::schema::{atomic, ensure_bookkeeping, table_info, TableInfo};
use crate::window::{parse_width, IsoTime};
use crate::{arg_opt_text, arg_text, connection, finish, Fail, Res};

/// The name of the window-start column of every rollup target.
pub const WINDOW_COLUMN: &str = "window_start";

/// One measure: a target column and the SQL that computes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Measure {
    pub column: String,
    /// SQL expression over the source (columns quoted).
    pub expr: String,
    /// Declared type of the target column.
    pub decl: String,
}

/// A parsed rollup declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollup {
    pub name: String,
    pub source: String,
    pub time: String,
    pub group: Vec<String>,
    pub width: i64,
    pub target: String,
    pub measures: Vec<Measure>,
}

const OPTIONS: &str = "source, time, group, width, target, measures, track";

fn col<'a>(info: &'a TableInfo, name: &str, what: &str) -> Res<&'a crate::schema::ColumnInfo> {
    info.column(name).map(|(_, c)| c).ok_or_else(|| {
        Fail(format!(
            "{what}: table '{}' has no column '{name}'",
            info.name
        ))
    })
}

/// Parses one measure spec: `count`, `count(c)`, `avg(c)`, `min(c)`,
/// `max(c)`, `sum(c)`, `pNN(c)` (any percentile, e.g. `p95`, `p99.9`),
/// `sketch(c)`, `pack` (all columns) or `pack(c1, c2, ...)`.
pub fn parse_measure(column: &str, spec: &str, src: &TableInfo) -> Res<Measure> {
    let s = spec.trim();
    let bad = || {
        Fail(format!(
            "measure '{column}': '{spec}' is not a measure; write count, count(col), avg(col), \
             min(col), max(col), sum(col), p95(col) (any percentile), sketch(col), pack or \
             pack(col, ...)"
        ))
    };
    let (func, args): (&str, Vec<&str>) = match s.find('(') {
        None => (s, Vec::new()),
        Some(i) => {
            let inner = s[i + 1..].strip_suffix(')').ok_or_else(bad)?;
            (
                s[..i].trim(),
                inner.split(',').map(str::trim).collect::<Vec<_>>(),
            )
        }
    };
    let func = func.to_ascii_lowercase();
    let one = |what: &str| -> Res<(String, String)> {
        if args.len() != 1 {
            return Err(bad());
        }
        let c = col(src, args[0], &format!("measure '{column}'"))?;
        let _ = what;
        Ok((quote_ident(&c.name), c.decl.clone()))
    };
    let m = |expr: String, decl: &str| Measure {
        column: column.to_string(),
        expr,
        decl: decl.to_string(),
    };
    Ok(match func.as_str() {
        "count" if args.is_empty() => m("count(*)".into(), "INTEGER"),
        "count" => m(format!("count({})", one("")?.0), "INTEGER"),
        "avg" => m(format!("avg({})", one("")?.0), "REAL"),
        "sum" => m(format!("sum({})", one("")?.0), "REAL"),
        "min" | "max" => {
            let (c, decl) = one("")?;
            m(format!("{func}({c})"), &decl)
        }
        "sketch" => m(format!("sluice_sketch({})", one("")?.0), "BLOB"),
        "pack" => {
            let cols: Vec<String> = if args.is_empty() {
                src.columns.iter().map(|c| c.name.clone()).collect()
            } else {
                args.iter()
                    .map(|a| col(src, a, &format!("measure '{column}'")).map(|c| c.name.clone()))
                    .collect::<Res<_>>()?
            };
            let pairs: Vec<String> = cols
                .iter()
                .map(|c| format!("'{}', {}", c.replace('\'', "''"), quote_ident(c)))
                .collect();
            m(
                format!("sluice_pack(json_object({}))", pairs.join(", ")),
                "BLOB",
            )
        }
        f if f.starts_with('p') && f.len() > 1 => {
            let pct: f64 = f[1..].parse().map_err(|_| bad())?;
            if !(0.0..=100.0).contains(&pct) {
                return Err(bad());
            }
            m(
                format!("sluice_percentile({}, {})", one("")?.0, pct / 100.0),
                "REAL",
            )
        }
        _ => return Err(bad()),
    })
}

/// Parses the options of `sluice_rollup` against the source table.
pub fn parse_rollup(conn: &Connection, name: &str, text: &str) -> Res<(Rollup, bool)> {
    let v: Json =
        serde_json::from_str(text).map_err(|e| Fail(format!("options are not valid JSON: {e}")))?;
    let Json::Object(map) = v else {
        return Err(Fail(
            "options must be a JSON object like {\"source\": \"metrics\", ...}".into(),
        ));
    };
    for k in map.keys() {
        if !OPTIONS.split(", ").any(|o| o == k) {
            return Err(Fail(format!(
                "unknown option '{k}' (known options: {OPTIONS})"
            )));
        }
    }
    let text_opt = |k: &str| -> Res<String> {
        match map.get(k) {
            Some(Json::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(_) => Err(Fail(format!("option '{k}' must be a non-empty string"))),
            None => Err(Fail(format!("option '{k}' is required"))),
        }
    };
    let source = table_info(conn, &text_opt("source")?)?;
    if source.without_rowid {
        return Err(Fail(format!(
            "source table '{}' is WITHOUT ROWID; rollups follow the rowid",
            source.name
        )));
    }
    let time = col(&source, &text_opt("time")?, "option 'time'")?
        .name
        .clone();
    let group: Vec<String> = match map.get("group") {
        None => Vec::new(),
        Some(Json::Array(a)) => a
            .iter()
            .map(|g| match g {
                Json::String(s) => col(&source, s, "option 'group'").map(|c| c.name.clone()),
                _ => Err(Fail(
                    "option 'group' must be an array of column names".into(),
                )),
            })
            .collect::<Res<_>>()?,
        Some(_) => {
            return Err(Fail(
                "option 'group' must be an array of column names".into(),
            ))
        }
    };
    let width = match map.get("width") {
        // 300.0 is 300 seconds; 300.5 or 1e30 is refused by parse_width with
        // what it was (not as "0 seconds").
        Some(Json::Number(n)) => match n.as_i64() {
            Some(i) => parse_width(ValueRef::Integer(i))?,
            None => parse_width(ValueRef::Real(n.as_f64().unwrap_or(f64::NAN)))?,
        },
        Some(Json::String(s)) => parse_width(ValueRef::Text(s.as_bytes()))?,
        _ => {
            return Err(Fail(
                "option 'width' is required: seconds or like '5 minutes'".into(),
            ))
        }
    };
    let target = text_opt("target")?;
    if target.eq_ignore_ascii_case(&source.name) {
        return Err(Fail("the target must not be the source table".into()));
    }
    let Some(Json::Object(ms)) = map.get("measures") else {
        return Err(Fail(
            "option 'measures' is required: an object like {\"n\": \"count\", \"p95_ms\": \"p95(ms)\"}"
                .into(),
        ));
    };
    if ms.is_empty() {
        return Err(Fail(
            "option 'measures' must name at least one measure".into(),
        ));
    }
    let mut measures = Vec::new();
    for (column, spec) in ms {
        let reserved = ["id", WINDOW_COLUMN, "sluice_version"];
        if column.is_empty()
            || reserved.iter().any(|r| r.eq_ignore_ascii_case(column))
            || group.iter().any(|g| g.eq_ignore_ascii_case(column))
        {
            return Err(Fail(format!(
                "measure column '{column}' is empty or clashes with id, window_start, \
                 sluice_version or a group column"
            )));
        }
        let Json::String(spec) = spec else {
            return Err(Fail(format!(
                "measure '{column}' must be a string like \"avg(col)\""
            )));
        };
        measures.push(parse_measure(column, spec, &source)?);
    }
    let track = match map.get("track") {
        None => true,
        Some(Json::Bool(b)) => *b,
        Some(_) => return Err(Fail("option 'track' must be true or false".into())),
    };
    Ok((
        Rollup {
            name: name.to_string(),
            source: source.name.clone(),
            time,
            group,
            width,
            target,
            measures,
        },
        track,
    ))
}

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
        ensure_bookkeeping(&conn)?;
        let exists: bool = conn.query_row(
            "SELECT count(*) > 0 FROM main.sqlite_master WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
            [&r.target],
            |row| row.get(0),
        )?;
        if !exists {
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
        conn.execute(
            "INSERT INTO main.sluice_rollups (name, options, source, target) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (name) DO UPDATE SET options = excluded.options, source = excluded.source, \
             target = excluded.target, \
             watermark = CASE WHEN sluice_rollups.options = excluded.options THEN watermark ELSE 0 END",
            params![r.name, options, r.source, r.target],
        )?;
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
    let names: Vec<(String, String)> = if !Table::Rollups.exists(&conn)? {
        Vec::new()
    } else {
        let mut stmt = conn.prepare(
            "SELECT name, options FROM main.sluice_rollups WHERE ?1 IS NULL OR name = ?1 ORDER BY name",
        )?;
        let rows = stmt
            .query_map([name], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        rows
    };
    if let (Some(n), true) = (name, names.is_empty()) {
        return Err(Fail(format!(
            "no rollup named '{n}'; declare it with sluice_rollup"
        )));
    }
    let mut total = 0i64;
    for (n, options) in names {
        let (r, _) = parse_rollup(&conn, &n, &options)
            .map_err(|Fail(m)| Fail(format!("rollup '{n}': {m}")))?;
        total += atomic(&conn, "sluice_rollup_run", || run_one(&conn, &r))
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

/// The largest source rowid the rollup has processed (0 before its first run).
fn watermark(conn: &Connection, r: &Rollup) -> Res<i64> {
    Ok(conn
        .query_row(
            "SELECT watermark FROM main.sluice_rollups WHERE name = ?1",
            [&r.name],
            |row| row.get(0),
        )
        .optional()?
        .unwrap_or(0))
}

/// Records the rows above the watermark whose time is not a time; returns
/// how many.
fn skip_bad_times(conn: &Connection, r: &Rollup) -> Res<usize> {
    let wm = watermark(conn, r)?;
    let mut bad: Vec<(i64, String)> = Vec::new();
    {
        let mut stmt = conn.prepare(&format!(
            "SELECT rowid, {t} FROM main.{src} WHERE rowid > ?1 AND {t} IS NOT NULL",
            t = quote_ident(&r.time),
            src = quote_ident(&r.source)
        ))?;
        let mut rows = stmt.query([wm])?;
        while let Some(row) = rows.next()? {
            if let Err(Fail(why)) = crate::window::bucket_of(row.get_ref(1)?, r.width) {
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
    ensure_bookkeeping(conn)?;
    let mut ins = conn.prepare(
        "INSERT OR IGNORE INTO main.sluice_rollup_skipped (name, row_id, reason, skipped_at) \
         VALUES (?1, ?2, ?3, ?4)",
    )?;
    let now = crate::now_ms();
    for (id, why) in &bad {
        ins.execute(params![r.name, id, why, now])?;
    }
    Ok(bad.len())
}

/// `AND rowid NOT IN (the skipped rows)`, or nothing when none was skipped
/// (or the table of skipped rows was never needed).
fn skip_clause(conn: &Connection, r: &Rollup) -> Res<String> {
    let any = Table::RollupSkipped.exists(conn)?
        && conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM main.sluice_rollup_skipped WHERE name = ?1)",
            [&r.name],
            |row| row.get::<_, bool>(0),
        )?;
    Ok(if any {
        format!(
            " AND rowid NOT IN (SELECT row_id FROM main.sluice_rollup_skipped WHERE name = '{}')",
            r.name.replace('\'', "''")
        )
    } else {
        String::new()
    })
}

fn aggregate(conn: &Connection, r: &Rollup) -> Res<i64> {
    let skip = skip_clause(conn, r)?;
    let src = quote_ident(&r.source);
    let wm = watermark(conn, r)?;
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
        conn.execute_batch(&format!(
            "DROP TABLE IF EXISTS temp.sluice_rollup_touched; \
             CREATE TEMP TABLE sluice_rollup_touched AS SELECT DISTINCT {} FROM main.{src} \
             WHERE rowid > {wm} AND rowid <= {max} AND {t} IS NOT NULL{skip}",
            touched_cols.join(", ")
        ))?;
        let (lo, hi): (Value, Value) = conn.query_row(
            "SELECT min(sluice_ws), max(sluice_ws) FROM temp.sluice_rollup_touched",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        let hi = window_end(&hi, r.width)?;
        let lit = |v: &Value| match v {
            Value::Integer(i) => i.to_string(),
            Value::Real(f) => format!("{f:?}"),
            Value::Text(s) => format!("'{}'", s.replace('\'', "''")),
            _ => "NULL".to_string(),
        };
        let mut probe = gcols.clone();
        probe.push(bucket.clone());
        let mut tcols: Vec<String> = gcols.clone();
        tcols.push("sluice_ws".into());
        format!(
            "WHERE {t} >= {} AND {t} < {} AND ({}) IN (SELECT {} FROM temp.sluice_rollup_touched){skip}",
            lit(&lo),
            lit(&hi),
            probe.join(", "),
            tcols.join(", ")
        )
    };
    // Windows whose raw rows the storage budget dropped are never
    // recomputed: they would be computed from what is left.
    let filter = match crate::buffer::sealed_until(conn, &r.source)? {
        Some(sealed) => format!(
            "{filter} AND {}",
            crate::buffer::unsealed_condition(&bucket, sealed)
        ),
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
    let n = conn.execute(&sql, [])? as i64;
    if wm != 0 {
        conn.execute_batch("DROP TABLE IF EXISTS temp.sluice_rollup_touched")?;
    }
    conn.execute(
        "UPDATE main.sluice_rollups SET watermark = ?2, last_run_at = ?3, runs = runs + 1, \
         rows_written = rows_written + ?4 WHERE name = ?1",
        params![r.name, max, crate::now_ms(), n],
    )?;
    Ok(n)
}
