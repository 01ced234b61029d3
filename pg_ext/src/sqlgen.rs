//! SQL text generation for ingest and registration: identifier quoting, the
//! conflict policies, and the one set-based upsert statement. Pure Rust, no
//! PostgreSQL: tested with ordinary `#[test]`s.

use std::fmt::Write;

/// Name of the bookkeeping column that holds the device of the row's last write.
pub const DEVICE_COLUMN: &str = "sluice_device";
/// Name of the bookkeeping column that holds the row's version (its sequence
/// number at the edge).
pub const VERSION_COLUMN: &str = "sluice_version";

/// Quotes an identifier for SQL, always (so that its case and any character
/// survive exactly as in the catalog): `a"b` becomes `"a""b"`.
pub fn quote_ident(ident: &str) -> String {
    let mut out = String::with_capacity(ident.len() + 2);
    out.push('"');
    for ch in ident.chars() {
        if ch == '"' {
            out.push('"');
        }
        out.push(ch);
    }
    out.push('"');
    out
}

/// `"schema"."table"`.
pub fn quote_qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// How a row of a batch is applied when a row with the same key exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// The higher `(version, device)` wins; an existing row without a version
    /// is older than any batch row.
    LastWriterWins,
    /// The lower `(version, device)` wins; an existing row without a version
    /// is kept.
    FirstWriterWins,
    /// An existing row is never changed.
    InsertOnly,
}

impl Policy {
    pub const ALL: [Policy; 3] = [
        Policy::LastWriterWins,
        Policy::FirstWriterWins,
        Policy::InsertOnly,
    ];

    pub fn parse(s: &str) -> Option<Policy> {
        Policy::ALL.into_iter().find(|p| p.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            Policy::LastWriterWins => "last_writer_wins",
            Policy::FirstWriterWins => "first_writer_wins",
            Policy::InsertOnly => "insert_only",
        }
    }

    /// The `WHERE` of `ON CONFLICT ... DO UPDATE` (target aliased `t`), or
    /// `None` for a policy that never updates.
    pub fn update_condition(self) -> Option<String> {
        let v = quote_ident(VERSION_COLUMN);
        let d = quote_ident(DEVICE_COLUMN);
        match self {
            Policy::LastWriterWins => Some(format!(
                "t.{v} IS NULL OR (EXCLUDED.{v}, EXCLUDED.{d}) > (t.{v}, COALESCE(t.{d}, ''))"
            )),
            Policy::FirstWriterWins => Some(format!(
                "(EXCLUDED.{v}, EXCLUDED.{d}) < (t.{v}, COALESCE(t.{d}, ''))"
            )),
            Policy::InsertOnly => None,
        }
    }

    /// Among rows of one batch with the same key, the one this policy keeps
    /// comes first in this order of versions.
    fn version_order(self) -> &'static str {
        match self {
            Policy::LastWriterWins => "DESC",
            Policy::FirstWriterWins | Policy::InsertOnly => "ASC",
        }
    }
}

/// A column of the target table that a batch column maps to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TargetColumn {
    pub name: String,
    /// The column's type without its modifier, as `format_type(oid, NULL)`
    /// spells it (safe to paste: PostgreSQL quotes it). The modifier (a
    /// `varchar(20)` length, a `vector(384)` dimension) is applied, and
    /// checked, by the assignment to the column.
    pub type_sql: String,
}

/// The upsert of one batch into `target` (already quoted), in one statement.
///
/// Parameters: `$1..$n` one `text[]` per column (values as text, cast to the
/// column's type in SQL), `$n+1` the row versions (`bigint[]`), `$n+2` the
/// device (`text`). Rows with the same key inside the batch are reduced to the
/// one the policy keeps, so that `ON CONFLICT` never meets a row twice.
/// `device_key`: the registration's key includes `sluice_device`, which
/// the batch does not carry as a column (it is the batch's device, the same
/// for every row): it joins the conflict target but not the reduction.
/// Returns one row: `(inserted bigint, updated bigint)`.
pub fn upsert_sql(
    target: &str,
    columns: &[TargetColumn],
    keys: &[usize],
    device_key: bool,
    policy: Policy,
) -> String {
    let n = columns.len();
    let mut sql = String::with_capacity(256 + 64 * n);
    // Typed rows.
    sql.push_str("WITH src AS (\n  SELECT DISTINCT ON (");
    push_list(&mut sql, keys.iter().map(|k| format!("s.c{}", k + 1)));
    sql.push_str(") s.* FROM (\n    SELECT ");
    for (i, c) in columns.iter().enumerate() {
        let _ = write!(sql, "u.c{0}::{1} AS c{0}, ", i + 1, c.type_sql);
    }
    sql.push_str("u.v AS v\n    FROM unnest(");
    for i in 0..n {
        let _ = write!(sql, "${}::text[], ", i + 1);
    }
    let _ = write!(sql, "${}::bigint[]) AS u(", n + 1);
    for i in 0..n {
        let _ = write!(sql, "c{}, ", i + 1);
    }
    sql.push_str("v)\n  ) AS s\n  ORDER BY ");
    for k in keys {
        let _ = write!(sql, "s.c{}, ", k + 1);
    }
    let _ = writeln!(sql, "s.v {}\n),", policy.version_order());
    // The upsert.
    let _ = write!(sql, "up AS (\n  INSERT INTO {target} AS t (");
    push_list(
        &mut sql,
        columns
            .iter()
            .map(|c| c.name.as_str())
            .chain([DEVICE_COLUMN, VERSION_COLUMN])
            .map(quote_ident),
    );
    sql.push_str(")\n  SELECT ");
    for i in 0..n {
        let _ = write!(sql, "c{}, ", i + 1);
    }
    let _ = write!(sql, "${}::text, v FROM src\n  ON CONFLICT (", n + 2);
    push_list(
        &mut sql,
        keys.iter()
            .map(|&k| quote_ident(&columns[k].name))
            .chain(device_key.then(|| quote_ident(DEVICE_COLUMN))),
    );
    sql.push_str(") ");
    match policy.update_condition() {
        None => sql.push_str("DO NOTHING"),
        Some(cond) => {
            sql.push_str("DO UPDATE SET ");
            push_list(
                &mut sql,
                columns
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !keys.contains(i))
                    .map(|(_, c)| c.name.as_str())
                    .chain([DEVICE_COLUMN, VERSION_COLUMN])
                    .map(|name| {
                        let q = quote_ident(name);
                        format!("{q} = EXCLUDED.{q}")
                    }),
            );
            let _ = write!(sql, "\n  WHERE {cond}");
        }
    }
    sql.push_str("\n  RETURNING (t.xmax = 0) AS ins\n)\n");
    sql.push_str("SELECT count(*) FILTER (WHERE ins), count(*) FILTER (WHERE NOT ins) FROM up");
    sql
}

/// The statement a DBA runs to give `target` the unique index that
/// `register_table` requires.
pub fn unique_index_hint(target: &str, keys: &[String]) -> String {
    let mut s = format!("CREATE UNIQUE INDEX ON {target} (");
    push_list(&mut s, keys.iter().map(|k| quote_ident(k)));
    s.push_str(");");
    s
}

fn push_list<S: AsRef<str>>(out: &mut String, items: impl IntoIterator<Item = S>) {
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(item.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str) -> TargetColumn {
        TargetColumn {
            name: name.into(),
            type_sql: ty.into(),
        }
    }

    #[test]
    fn quoting_doubles_quotes_and_keeps_case() {
        assert_eq!(quote_ident("a"), r#""a""#);
        assert_eq!(quote_ident(r#"We"ird"#), r#""We""ird""#);
        assert_eq!(quote_qualified("public", "T"), r#""public"."T""#);
    }

    #[test]
    fn policies_parse_by_name() {
        for p in Policy::ALL {
            assert_eq!(Policy::parse(p.name()), Some(p));
        }
        assert_eq!(Policy::parse("LAST_WRITER_WINS"), None);
        assert_eq!(Policy::parse(""), None);
    }

    #[test]
    fn last_writer_wins_statement() {
        let cols = [col("id", "bigint"), col("state", "text")];
        let sql = upsert_sql(
            r#""public"."t""#,
            &cols,
            &[0],
            false,
            Policy::LastWriterWins,
        );
        let expected = r#"WITH src AS (
  SELECT DISTINCT ON (s.c1) s.* FROM (
    SELECT u.c1::bigint AS c1, u.c2::text AS c2, u.v AS v
    FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(c1, c2, v)
  ) AS s
  ORDER BY s.c1, s.v DESC
),
up AS (
  INSERT INTO "public"."t" AS t ("id", "state", "sluice_device", "sluice_version")
  SELECT c1, c2, $4::text, v FROM src
  ON CONFLICT ("id") DO UPDATE SET "state" = EXCLUDED."state", "sluice_device" = EXCLUDED."sluice_device", "sluice_version" = EXCLUDED."sluice_version"
  WHERE t."sluice_version" IS NULL OR (EXCLUDED."sluice_version", EXCLUDED."sluice_device") > (t."sluice_version", COALESCE(t."sluice_device", ''))
  RETURNING (t.xmax = 0) AS ins
)
SELECT count(*) FILTER (WHERE ins), count(*) FILTER (WHERE NOT ins) FROM up"#;
        assert_eq!(sql, expected);
    }

    #[test]
    fn first_writer_wins_keeps_the_lowest_version() {
        let cols = [
            col("a", "text"),
            col("b", "integer"),
            col("x", "double precision"),
        ];
        let sql = upsert_sql("t", &cols, &[1, 0], false, Policy::FirstWriterWins);
        assert!(sql.contains("DISTINCT ON (s.c2, s.c1)"), "{sql}");
        assert!(sql.contains("ORDER BY s.c2, s.c1, s.v ASC"), "{sql}");
        assert!(
            sql.contains(r#"ON CONFLICT ("b", "a") DO UPDATE SET "x" = EXCLUDED."x", "#),
            "{sql}"
        );
        assert!(sql.contains(
            r#"WHERE (EXCLUDED."sluice_version", EXCLUDED."sluice_device") < (t."sluice_version""#
        ));
        assert!(sql.contains("$4::bigint[]"), "{sql}");
        assert!(sql.contains("$5::text, v FROM src"), "{sql}");
    }

    #[test]
    fn insert_only_does_nothing_on_conflict() {
        let cols = [col("k", "text")];
        let sql = upsert_sql("t", &cols, &[0], false, Policy::InsertOnly);
        assert!(sql.contains(r#"ON CONFLICT ("k") DO NOTHING"#), "{sql}");
        assert!(!sql.contains("DO UPDATE"), "{sql}");
    }

    #[test]
    fn device_in_the_key_joins_the_conflict_target_only() {
        let cols = [col("id", "bigint"), col("x", "text")];
        let sql = upsert_sql("t", &cols, &[0], true, Policy::LastWriterWins);
        assert!(
            sql.contains(r#"ON CONFLICT ("id", "sluice_device")"#),
            "{sql}"
        );
        assert!(sql.contains("SELECT DISTINCT ON (s.c1)"), "{sql}");
    }

    #[test]
    fn key_only_table_still_updates_bookkeeping() {
        let cols = [col("k", "text")];
        let sql = upsert_sql("t", &cols, &[0], false, Policy::LastWriterWins);
        assert!(sql.contains(
            r#"DO UPDATE SET "sluice_device" = EXCLUDED."sluice_device", "sluice_version" = EXCLUDED."sluice_version""#
        ));
    }

    #[test]
    fn hostile_names_are_quoted_everywhere() {
        let cols = [
            col(r#"k"); DROP TABLE x; --"#, "text"),
            col("Mixed Case", "text"),
        ];
        let sql = upsert_sql(
            &quote_qualified("s", r#"t""#),
            &cols,
            &[0],
            false,
            Policy::LastWriterWins,
        );
        assert!(
            sql.contains(r#"INSERT INTO "s"."t""" AS t ("k""); DROP TABLE x; --", "Mixed Case""#)
        );
        assert!(sql.contains(r#"ON CONFLICT ("k""); DROP TABLE x; --")"#));
    }

    #[test]
    fn hint_quotes_the_keys() {
        assert_eq!(
            unique_index_hint("public.t", &["a".into(), "B".into()]),
            r#"CREATE UNIQUE INDEX ON public.t ("a", "B");"#
        );
    }
}
