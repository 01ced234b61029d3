//! A rollup's declaration, parsed and checked against its source table
//! ([`parse_rollup`]): what `sluice_rollup` stores, what a run computes, and
//! what the budget and cleanup read to know which raw rows are rolled up.

use rusqlite::types::ValueRef;
use rusqlite::Connection;
use serde_json::Value as Json;
use sluice_wire::names::quote_ident;

pub use crate::bookkeeping::rollups::WINDOW_COLUMN;
use crate::glue::{Fail, Res};
use crate::schema::{table_info, ColumnInfo, TableInfo};
use crate::time::parse_width;

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

pub fn col<'a>(info: &'a TableInfo, name: &str, what: &str) -> Res<&'a ColumnInfo> {
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
