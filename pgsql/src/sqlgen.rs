//! SQL text generation for ingest and registration: the conflict policies,
//! the one set-based upsert statement, the plain insert of the fast path and
//! its probe. Identifiers are always quoted with
//! [`sluice_wire::names::quote_ident`]; values never appear in the text (they
//! are bound as array parameters).

use std::fmt::Write;

use sluice_wire::names::quote_ident;

/// Name of the bookkeeping column that holds the device of the row's last write.
pub const DEVICE_COLUMN: &str = "sluice_device";
/// Name of the bookkeeping column that holds the row's version (its sequence
/// number at the edge).
pub const VERSION_COLUMN: &str = "sluice_version";

/// `"schema"."table"`: a relation name for the statements below.
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
    /// Every policy, in the order the docs list them.
    pub const ALL: [Policy; 3] = [
        Policy::LastWriterWins,
        Policy::FirstWriterWins,
        Policy::InsertOnly,
    ];

    /// The policy of a name as `sluice.register_table` takes it and
    /// `sluice.tables.policy` stores it (exact, lower case).
    pub fn parse(s: &str) -> Option<Policy> {
        Policy::ALL.into_iter().find(|p| p.name() == s)
    }

    /// The policy's name: `last_writer_wins`, `first_writer_wins` or
    /// `insert_only`.
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
    /// The column's name, as in the catalog (unquoted).
    pub name: String,
    /// The column's type without its modifier, as `format_type(oid, NULL)`
    /// spells it (safe to paste: PostgreSQL quotes it). The modifier (a
    /// `varchar(20)` length, a `vector(384)` dimension) is applied, and
    /// checked, by the assignment to the column.
    pub type_sql: String,
}

/// The upsert of one batch into `target` (already quoted), in one statement.
///
/// Parameters: `$1..$n` one array per column, of the SQL type `arrays[i]`
/// (`text[]`, or a native array such as `bigint[]`; values are cast to the
/// column's type in SQL), `$n+1` the row versions (`bigint[]`), `$n+2` the
/// device (`text`). With `dedup`, rows with the same key inside the batch are
/// reduced to the one the policy keeps, so that `ON CONFLICT` never meets a
/// row twice (the caller leaves it out only when it checked that the keys are
/// distinct). `device_key`: the registration's key includes `sluice_device`,
/// which the batch does not carry as a column (it is the batch's device, the
/// same for every row): it joins the conflict target but not the reduction.
/// Returns one row: `(inserted bigint, updated bigint)`.
pub fn upsert_sql(
    target: &str,
    columns: &[TargetColumn],
    arrays: &[&str],
    keys: &[usize],
    device_key: bool,
    policy: Policy,
    dedup: bool,
) -> String {
    let n = columns.len();
    let mut sql = String::with_capacity(256 + 64 * n);
    // Typed rows.
    sql.push_str("WITH src AS (\n  SELECT ");
    if dedup {
        sql.push_str("DISTINCT ON (");
        push_list(&mut sql, keys.iter().map(|k| format!("s.c{}", k + 1)));
        sql.push_str(") ");
    }
    sql.push_str("s.* FROM (\n    ");
    push_typed_unnest(&mut sql, columns, arrays);
    sql.push_str("\n  ) AS s");
    if dedup {
        sql.push_str("\n  ORDER BY ");
        for k in keys {
            let _ = write!(sql, "s.c{}, ", k + 1);
        }
        let _ = write!(sql, "s.v {}", policy.version_order());
    }
    sql.push_str("\n),\n");
    // The upsert.
    sql.push_str("up AS (\n  ");
    push_insert_select(&mut sql, target, " AS t", columns, "\n  ");
    sql.push_str("src\n  ON CONFLICT (");
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

/// The plain `INSERT` of a batch whose keys are distinct and absent from
/// `target` (the caller checked both under a lock): no conflict handling, no
/// reduction, no counting. Parameters as in [`upsert_sql`].
pub fn insert_sql(target: &str, columns: &[TargetColumn], arrays: &[&str]) -> String {
    let n = columns.len();
    let mut sql = String::with_capacity(256 + 64 * n);
    push_insert_select(&mut sql, target, "", columns, "\n");
    sql.push_str("(\n  ");
    push_typed_unnest(&mut sql, columns, arrays);
    sql.push_str("\n) AS s");
    sql
}

/// Whether `target` holds a row whose key is in a batch's key range: the
/// key columns `consts` equal `$1..$k` (text, cast to the column's type),
/// the column `range` (an integer) lies between `$k+1` and `$k+2` (`bigint`),
/// and, with `device_key`, `sluice_device` equals `$k+3` (or `$k+1` without a
/// range). One index probe when the unique index covers the key. Returns one
/// `boolean`.
pub fn probe_sql(
    target: &str,
    columns: &[TargetColumn],
    consts: &[usize],
    range: Option<usize>,
    device_key: bool,
) -> String {
    let mut conds = Vec::new();
    let mut p = 0;
    for &k in consts {
        p += 1;
        let c = &columns[k];
        conds.push(format!(
            "{} = CAST(${p}::text AS {})",
            quote_ident(&c.name),
            c.type_sql
        ));
    }
    if let Some(r) = range {
        conds.push(format!(
            "{} BETWEEN ${}::bigint AND ${}::bigint",
            quote_ident(&columns[r].name),
            p + 1,
            p + 2
        ));
        p += 2;
    }
    if device_key {
        p += 1;
        conds.push(format!("{} = ${p}::text", quote_ident(DEVICE_COLUMN)));
    }
    let mut sql = format!("SELECT EXISTS (SELECT 1 FROM {target} WHERE ");
    sql.push_str(&conds.join(" AND "));
    sql.push(')');
    sql
}

/// `SELECT unnest($1::array1)::type1 AS c1, ..., unnest($n+1::bigint[]) AS v`:
/// the arrays side by side (set-returning functions in the select list run
/// in lockstep), without materialising them as `unnest(a, b, ...)` in `FROM`
/// would.
fn push_typed_unnest(sql: &mut String, columns: &[TargetColumn], arrays: &[&str]) {
    let n = columns.len();
    sql.push_str("SELECT ");
    for (i, (c, a)) in columns.iter().zip(arrays).enumerate() {
        let _ = write!(sql, "unnest(${0}::{a})::{1} AS c{0}, ", i + 1, c.type_sql);
    }
    let _ = write!(sql, "unnest(${}::bigint[]) AS v", n + 1);
}

/// `INSERT INTO target[alias] (columns, sluice_device, sluice_version)`,
/// `newline`, `SELECT c1, ..., $n+2::text, v FROM ` (the source follows).
fn push_insert_select(
    sql: &mut String,
    target: &str,
    alias: &str,
    columns: &[TargetColumn],
    newline: &str,
) {
    let _ = write!(sql, "INSERT INTO {target}{alias} (");
    push_list(
        sql,
        columns
            .iter()
            .map(|c| c.name.as_str())
            .chain([DEVICE_COLUMN, VERSION_COLUMN])
            .map(quote_ident),
    );
    let _ = write!(sql, "){newline}SELECT ");
    for i in 0..columns.len() {
        let _ = write!(sql, "c{}, ", i + 1);
    }
    let _ = write!(sql, "${}::text, v FROM ", columns.len() + 2);
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

    const TEXT: [&str; 3] = ["text[]"; 3];

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
            &TEXT,
            &[0],
            false,
            Policy::LastWriterWins,
            true,
        );
        let expected = r#"WITH src AS (
  SELECT DISTINCT ON (s.c1) s.* FROM (
    SELECT unnest($1::text[])::bigint AS c1, unnest($2::text[])::text AS c2, unnest($3::bigint[]) AS v
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
        let sql = upsert_sql(
            "t",
            &cols,
            &TEXT,
            &[1, 0],
            false,
            Policy::FirstWriterWins,
            true,
        );
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
        let sql = upsert_sql("t", &cols, &TEXT, &[0], false, Policy::InsertOnly, true);
        assert!(sql.contains(r#"ON CONFLICT ("k") DO NOTHING"#), "{sql}");
        assert!(!sql.contains("DO UPDATE"), "{sql}");
    }

    #[test]
    fn device_in_the_key_joins_the_conflict_target_only() {
        let cols = [col("id", "bigint"), col("x", "text")];
        let sql = upsert_sql("t", &cols, &TEXT, &[0], true, Policy::LastWriterWins, true);
        assert!(
            sql.contains(r#"ON CONFLICT ("id", "sluice_device")"#),
            "{sql}"
        );
        assert!(sql.contains("SELECT DISTINCT ON (s.c1)"), "{sql}");
    }

    #[test]
    fn key_only_table_still_updates_bookkeeping() {
        let cols = [col("k", "text")];
        let sql = upsert_sql("t", &cols, &TEXT, &[0], false, Policy::LastWriterWins, true);
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
            &TEXT,
            &[0],
            false,
            Policy::LastWriterWins,
            true,
        );
        assert!(
            sql.contains(r#"INSERT INTO "s"."t""" AS t ("k""); DROP TABLE x; --", "Mixed Case""#)
        );
        assert!(sql.contains(r#"ON CONFLICT ("k""); DROP TABLE x; --")"#));
    }

    #[test]
    fn distinct_native_batches_skip_the_reduction() {
        let cols = [col("id", "integer"), col("at", "timestamp with time zone")];
        let sql = upsert_sql(
            "t",
            &cols,
            &["bigint[]", "timestamptz[]"],
            &[0],
            false,
            Policy::LastWriterWins,
            false,
        );
        assert!(!sql.contains("DISTINCT ON"), "{sql}");
        assert!(!sql.contains("ORDER BY"), "{sql}");
        assert!(
            sql.contains(
                "SELECT unnest($1::bigint[])::integer AS c1, \
                 unnest($2::timestamptz[])::timestamp with time zone AS c2, \
                 unnest($3::bigint[]) AS v"
            ),
            "{sql}"
        );
    }

    #[test]
    fn plain_insert_and_probe() {
        let cols = [col("loc", "text"), col("id", "bigint"), col("x", "text")];
        let expected = r#"INSERT INTO "s"."t" ("loc", "id", "x", "sluice_device", "sluice_version")
SELECT c1, c2, c3, $5::text, v FROM (
  SELECT unnest($1::text[])::text AS c1, unnest($2::bigint[])::bigint AS c2, unnest($3::text[])::text AS c3, unnest($4::bigint[]) AS v
) AS s"#;
        assert_eq!(
            insert_sql(r#""s"."t""#, &cols, &["text[]", "bigint[]", "text[]"]),
            expected
        );
        assert_eq!(
            probe_sql("t", &cols, &[0], Some(1), true),
            r#"SELECT EXISTS (SELECT 1 FROM t WHERE "loc" = CAST($1::text AS text) AND "id" BETWEEN $2::bigint AND $3::bigint AND "sluice_device" = $4::text)"#
        );
    }

    #[test]
    fn hint_quotes_the_keys() {
        assert_eq!(
            unique_index_hint("public.t", &["a".into(), "B".into()]),
            r#"CREATE UNIQUE INDEX ON public.t ("a", "B");"#
        );
    }
}
