//! The edge side of `sluice verify`: reads one table bucket by bucket in its
//! storage order (by rowid, or by primary key for a `WITHOUT ROWID` table,
//! which has no rowid), rendering each row canonically. Blocking: it runs
//! on the edge's own thread ([`crate::edge::Edge::run`]).

use std::collections::BTreeMap;

use anyhow::Context;
use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;
use sluice_wire::quote_ident as quote;

use super::canon::{canon_edge, Column, Kind};
use crate::edge::Tracked;

/// Edge rows per checksummed bucket.
pub const BUCKET_ROWS: i64 = 1000;

/// How the scan walks a table: the columns of its storage order, and what a
/// bucket counts.
pub struct ScanCursor {
    /// `rowid`, or the quoted primary-key columns of a WITHOUT ROWID table.
    columns: Vec<String>,
    pub unit: &'static str,
}

impl ScanCursor {
    pub fn of(conn: &Connection, table: &str) -> anyhow::Result<ScanCursor> {
        let without_rowid: bool = conn
            .query_row(
                "SELECT wr FROM pragma_table_list WHERE schema = 'main' AND name = ?1",
                [table],
                |r| r.get(0),
            )
            .with_context(|| format!("edge table '{table}' does not exist"))?;
        if !without_rowid {
            return Ok(ScanCursor {
                columns: vec!["rowid".to_owned()],
                unit: "rowids",
            });
        }
        let mut pk: Vec<(i64, String)> = conn
            .prepare("SELECT pk, name FROM pragma_table_info(?1) WHERE pk > 0")?
            .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        pk.sort();
        Ok(ScanCursor {
            columns: pk.iter().map(|(_, c)| quote(c)).collect(),
            unit: "rows by primary key",
        })
    }
}

/// The columns of an edge table, in order.
pub fn edge_columns(conn: &Connection, table: &str) -> anyhow::Result<Vec<String>> {
    Ok(conn
        .prepare("SELECT name FROM pragma_table_info(?1)")?
        .query_map([table], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// The prepared shape of the scan of one table.
pub struct EdgeScan {
    first_sql: String,
    next_sql: String,
    /// `--since` / `--until`, bound after the cursor.
    params: Vec<String>,
    cursor_len: usize,
    kinds: Vec<Kind>,
    /// For each key column: its index among the compared columns, or `None`
    /// for `sluice_device` (this device).
    key_index: Vec<Option<usize>>,
    device: String,
    tracked: Tracked,
}

/// One bucket of edge rows.
#[derive(Default)]
pub struct Bucket {
    /// Rows read (0: the scan is done).
    pub read: usize,
    /// Key -> canonical row, for the acknowledged rows.
    pub rows: BTreeMap<String, String>,
    /// Key -> the row's sequence number (its version), for the same rows.
    pub versions: BTreeMap<String, i64>,
    /// Per key column, the raw edge text of each acknowledged row's key
    /// (timestamps as written), for the cloud to cast.
    pub key_params: Vec<Vec<String>>,
    /// Key -> the index of the row's values in `key_params`.
    pub param_index: BTreeMap<String, usize>,
    /// The keys of every row read, acknowledged or not.
    pub keys: Vec<String>,
    /// Rows still pending (not compared).
    pub pending: u64,
    /// Where the next bucket starts.
    pub last: Option<Vec<Value>>,
}

/// The instant of time column `tc` as SQLite compares it with `--since` and
/// `--until` (as Julian days): ISO-8601 text, whatever its precision, or
/// Unix seconds. Compared as text, `...T11:07:00.075Z` sorted before
/// `...T11:07:00Z` and a row stamped with milliseconds in the second of
/// `--since` was left out.
fn instant_of(tc: &str) -> String {
    let c = quote(tc);
    format!("(CASE typeof({c}) WHEN 'integer' THEN julianday({c}, 'unixepoch') WHEN 'real' THEN julianday({c}, 'unixepoch') ELSE julianday({c}) END)")
}

impl EdgeScan {
    /// `range` is the time column and `(since, until)` when given.
    pub fn new(
        table: &str,
        tracked: Tracked,
        cursor: &ScanCursor,
        columns: &[Column],
        key_index: Vec<Option<usize>>,
        device: &str,
        range: Option<(&str, Option<&str>, Option<&str>)>,
    ) -> EdgeScan {
        let nk = cursor.columns.len();
        let order = cursor.columns.join(", ");
        let seq = if tracked.mutable {
            "\"sluice_version\"".to_owned()
        } else {
            order.clone()
        };
        // The time range, bound after the cursor's values (none in the
        // first bucket's statement): `?{offset + 1}`, ...
        let mut params: Vec<String> = Vec::new();
        let mut conditions: Vec<(&str, String)> = Vec::new();
        if let Some((tc, since, until)) = range {
            if let Some(s) = since {
                params.push(s.to_owned());
                conditions.push((">=", instant_of(tc)));
            }
            if let Some(u) = until {
                params.push(u.to_owned());
                conditions.push(("<", instant_of(tc)));
            }
        }
        let filter = |offset: usize| -> String {
            conditions
                .iter()
                .enumerate()
                .map(|(i, (op, col))| format!(" AND {col} {op} julianday(?{})", offset + i + 1))
                .collect()
        };
        let select_cols: Vec<String> = columns.iter().map(|c| quote(&c.name)).collect();
        let after: Vec<String> = (1..=nk).map(|i| format!("?{i}")).collect();
        let sql = |start: String, offset: usize| {
            format!(
                "SELECT {order}, {seq}, {} FROM {} WHERE {start}{} ORDER BY {order} LIMIT {BUCKET_ROWS}",
                select_cols.join(", "),
                quote(table),
                filter(offset),
            )
        };
        EdgeScan {
            first_sql: sql("1".to_owned(), 0),
            next_sql: sql(format!("({order}) > ({})", after.join(", ")), nk),
            params,
            cursor_len: nk,
            kinds: columns.iter().map(|c| c.kind).collect(),
            key_index,
            device: device.to_owned(),
            tracked,
        }
    }

    /// The bucket after `last` (the first one when `None`).
    pub fn bucket(&self, conn: &Connection, last: Option<Vec<Value>>) -> anyhow::Result<Bucket> {
        let nk = self.cursor_len;
        let mut out = Bucket {
            key_params: vec![Vec::new(); self.key_index.len()],
            ..Bucket::default()
        };
        let mut bind: Vec<&dyn rusqlite::ToSql> = Vec::new();
        if let Some(p) = &last {
            bind.extend(p.iter().map(|v| v as &dyn rusqlite::ToSql));
        }
        for p in &self.params {
            bind.push(p);
        }
        let sql = if last.is_some() {
            &self.next_sql
        } else {
            &self.first_sql
        };
        let mut stmt = conn.prepare(sql)?;
        let mut rows = stmt.query(bind.as_slice())?;
        while let Some(r) = rows.next()? {
            out.read += 1;
            out.last = Some((0..nk).map(|i| r.get(i)).collect::<Result<_, _>>()?);
            let version: Option<i64> = r.get(nk)?;
            let values: Vec<String> = self
                .kinds
                .iter()
                .enumerate()
                .map(|(i, k)| r.get_ref(i + nk + 1).map(|v| canon_edge(v, *k)))
                .collect::<Result<_, _>>()?;
            let key: Vec<String> = self
                .key_index
                .iter()
                .map(|i| match i {
                    Some(i) => values[*i].clone(),
                    None => self.device.clone(),
                })
                .collect();
            let key = key.join("|");
            out.keys.push(key.clone());
            if !self.tracked.acked(version.unwrap_or(i64::MAX)) {
                out.pending += 1;
                continue;
            }
            out.param_index
                .insert(key.clone(), out.key_params.first().map_or(0, Vec::len));
            for (i, ki) in self.key_index.iter().enumerate() {
                let raw = match ki {
                    Some(ci) => match r.get_ref(ci + nk + 1)? {
                        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                        _ => values[*ci].clone(),
                    },
                    None => self.device.clone(),
                };
                out.key_params[i].push(raw);
            }
            if let Some(v) = version {
                out.versions.insert(key.clone(), v);
            }
            out.rows.insert(key, values.join("|"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of `t` whose `at` is in `[since, until)` by [`instant_of`].
    fn in_range(since: &str, until: &str) -> Vec<i64> {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, at);
             INSERT INTO t (id, at) VALUES
               (1, '2026-11-18T11:06:49.990Z'), (2, '2026-11-18T11:06:50Z'),
               (3, '2026-11-18T11:06:50.010Z'), (4, '2026-11-18T11:06:59.999Z'),
               (5, '2026-11-18T11:07:00Z'), (6, '2026-11-18T11:07:00.075Z'),
               (7, '2026-11-18 11:06:55'), (8, 1795000015), (9, 1795000020.5),
               (10, 'not a time');",
        )
        .unwrap();
        let at = instant_of("at");
        let sql = format!(
            "SELECT id FROM t WHERE {at} >= julianday(?1) AND {at} < julianday(?2) ORDER BY id"
        );
        let mut stmt = conn.prepare(&sql).unwrap();
        stmt.query_map([since, until], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn the_time_range_compares_instants_not_text() {
        // As text, rows 3 and 4 ('.' sorts before 'Z') fell out of the
        // range and row 6 fell into it.
        assert_eq!(
            in_range("2026-11-18T11:06:50Z", "2026-11-18T11:07:00Z"),
            [2, 3, 4, 7, 8]
        );
        assert_eq!(
            in_range("2026-11-18T11:06:50.010Z", "2026-11-18T11:07:00.500Z"),
            [3, 4, 5, 6, 7, 8]
        );
    }
}
