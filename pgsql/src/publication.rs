//! The cloud-to-edge direction without PostgreSQL: the checks of
//! `sluice.publish` against the target's catalog, the capture trigger it
//! creates, the statements of `sluice.pull` (incremental changes and
//! snapshot pages, always in the device's scope), the wire type of a cloud
//! column, and the snapshot cursor. Identifiers are quoted with
//! [`quote_ident`]; values are bound (`$n`), except the edge table's name
//! in `CREATE TRIGGER`, a trigger argument, written with [`quote_literal`].
//!
//! A change's position is the id of the transaction that wrote it
//! (`pg_current_xact_id()`); `sluice.pull` serves only positions below the
//! xmin of its snapshot (`docs/sync-protocol.md`, "Cloud to edge").

use std::fmt::Write as _;

use sluice_wire::names::quote_ident;
use sluice_wire::ColumnType;

use crate::sqlgen::{DELETED_AT_COLUMN, DEVICE_COLUMN, STREAM_COLUMN, VERSION_COLUMN};
use crate::sqlstate::SqlState;

/// The channel the capture triggers notify, with the edge table as payload.
pub const NOTIFY_CHANNEL: &str = "sluice_changes";

/// The default number of rows of one `sluice.pull` batch.
pub const DEFAULT_MAX_ROWS: i32 = 10_000;

/// How a cloud column travels in a batch of changes: chosen by its
/// PostgreSQL type, the same for every reader (issue 14 reuses it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireKind {
    /// `smallint`, `integer`, `bigint`: integer.
    Integer,
    /// `boolean`: integer 0 or 1.
    Boolean,
    /// `real`, `double precision`: real.
    Real,
    /// `bytea`: blob.
    Blob,
    /// `timestamp with time zone`: text, ISO-8601 in UTC with milliseconds
    /// (`2026-11-22T10:15:03.250Z`); `infinity` as PostgreSQL writes it.
    Timestamptz,
    /// Everything else (`text`, `numeric`, `uuid`, `date`, `json`, `jsonb`,
    /// `vector`, arrays, domains ...): the type's text output.
    Text,
}

impl WireKind {
    /// The kind of a column whose type `format_type(atttypid, NULL)` spells
    /// `type_sql`.
    pub fn of(type_sql: &str) -> WireKind {
        match type_sql {
            "smallint" | "integer" | "bigint" => WireKind::Integer,
            "boolean" => WireKind::Boolean,
            "real" | "double precision" => WireKind::Real,
            "bytea" => WireKind::Blob,
            "timestamp with time zone" => WireKind::Timestamptz,
            _ => WireKind::Text,
        }
    }

    /// The column's declared type in the batch header.
    pub fn column_type(self) -> ColumnType {
        match self {
            WireKind::Integer | WireKind::Boolean => ColumnType::Integer,
            WireKind::Real => ColumnType::Real,
            WireKind::Blob => ColumnType::Blob,
            WireKind::Timestamptz | WireKind::Text => ColumnType::Text,
        }
    }

    /// The SQL that turns `expr` (a value of the column's type) into what
    /// the reader reads: `bigint`, `float8`, `bytea` or `text`.
    pub fn select_sql(self, expr: &str) -> String {
        match self {
            WireKind::Integer => format!("({expr})::bigint"),
            WireKind::Boolean => format!("({expr})::integer::bigint"),
            WireKind::Real => format!("({expr})::float8"),
            WireKind::Blob => format!("({expr})::bytea"),
            WireKind::Timestamptz => format!(
                "CASE WHEN pg_catalog.isfinite({expr}) THEN pg_catalog.to_char(({expr}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') ELSE ({expr})::text END"
            ),
            WireKind::Text => format!("({expr})::text"),
        }
    }
}

/// A string as an SQL literal, valid whatever `standard_conforming_strings`
/// says (PostgreSQL's `quote_literal`: `E'...'` when it has a backslash).
pub fn quote_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 3);
    if s.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for ch in s.chars() {
        if ch == '\'' || ch == '\\' {
            out.push(ch);
        }
        out.push(ch);
    }
    out.push('\'');
    out
}

/// A column of the target as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableColumn {
    /// The name, unquoted.
    pub name: String,
    /// `format_type(atttypid, NULL)`: safe to paste (PostgreSQL quotes it).
    pub type_sql: String,
    /// `attnotnull`.
    pub not_null: bool,
    /// The type (or a domain's base type) has an `=` operator of its own
    /// and the column a deterministic collation: the capture trigger
    /// compares old and new values with it (else as text).
    pub comparable: bool,
}

/// What `sluice.publish` was given, beside the target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishArgs {
    /// The edge table; `None`: the target's name.
    pub edge_table: Option<String>,
    /// `None`: every column but sluice's bookkeeping columns.
    pub columns: Option<Vec<String>>,
    /// `None`: the primary key.
    pub key_columns: Option<Vec<String>>,
    /// The column naming the tenant of a row.
    pub tenant_column: Option<String>,
    /// The column naming the device a row is addressed to (NULL: every
    /// device of the tenant).
    pub device_column: Option<String>,
}

/// Why `sluice.publish` refuses its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishError {
    /// The SQLSTATE it is raised with.
    pub sqlstate: SqlState,
    /// What is wrong, without the function's name.
    pub message: String,
}

impl PublishError {
    fn new(sqlstate: SqlState, message: impl Into<String>) -> Self {
        PublishError {
            sqlstate,
            message: message.into(),
        }
    }
}

/// One published column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubColumn {
    /// The name, unquoted.
    pub name: String,
    /// `format_type(atttypid, NULL)`.
    pub type_sql: String,
    /// How it travels.
    pub kind: WireKind,
    /// [`TableColumn::comparable`].
    pub comparable: bool,
}

/// A publication, checked: what the triggers and the pulls are made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The edge table.
    pub edge_table: String,
    /// The target, schema-qualified and quoted.
    pub target_sql: String,
    /// The published columns, in order (the key among them).
    pub columns: Vec<PubColumn>,
    /// Indexes into `columns` of the key, in key order.
    pub key: Vec<usize>,
    /// Index into `columns` of the tenant column.
    pub tenant: Option<usize>,
    /// Index into `columns` of the device column.
    pub device: Option<usize>,
}

/// Is `name` one of sluice's bookkeeping columns (never published)?
pub fn is_bookkeeping(name: &str) -> bool {
    [
        DEVICE_COLUMN,
        VERSION_COLUMN,
        STREAM_COLUMN,
        DELETED_AT_COLUMN,
    ]
    .contains(&name)
}

impl Publication {
    /// Checks `args` against the target's columns (`table`, in column
    /// order), its primary key (`primary_key`, empty when it has none) and
    /// its unique keys (the column sets of its unique indexes without
    /// expressions or predicates, the primary key among them).
    pub fn check(
        target_name: &str,
        target_sql: &str,
        relname: &str,
        table: &[TableColumn],
        primary_key: &[String],
        unique_keys: &[Vec<String>],
        args: &PublishArgs,
    ) -> Result<Publication, PublishError> {
        let invalid = |m: String| PublishError::new(SqlState::InvalidParameterValue, m);
        let edge_table = args
            .edge_table
            .clone()
            .unwrap_or_else(|| relname.to_owned());
        if edge_table.is_empty() {
            return Err(invalid("the edge table name is empty".into()));
        }
        let find = |name: &str| table.iter().find(|c| c.name == name);
        let names: Vec<String> = match &args.columns {
            Some(cols) => {
                if cols.is_empty() {
                    return Err(invalid(
                        "columns is empty; name the published columns or pass NULL for all of them"
                            .into(),
                    ));
                }
                cols.clone()
            }
            None => table
                .iter()
                .filter(|c| !is_bookkeeping(&c.name))
                .map(|c| c.name.clone())
                .collect(),
        };
        let mut columns: Vec<PubColumn> = Vec::with_capacity(names.len());
        for name in &names {
            let Some(c) = find(name) else {
                return Err(PublishError::new(
                    SqlState::UndefinedColumn,
                    format!(
                        "column {} does not exist in {target_name}",
                        quote_ident(name)
                    ),
                ));
            };
            if is_bookkeeping(name) {
                return Err(invalid(format!(
                    "column {} is sluice's bookkeeping and cannot be published",
                    quote_ident(name)
                )));
            }
            if columns.iter().any(|p| &p.name == name) {
                return Err(PublishError::new(
                    SqlState::DuplicateColumn,
                    format!("column {} is named twice in columns", quote_ident(name)),
                ));
            }
            columns.push(PubColumn {
                name: c.name.clone(),
                type_sql: c.type_sql.clone(),
                kind: WireKind::of(&c.type_sql),
                comparable: c.comparable,
            });
        }
        let key_names: Vec<String> = match &args.key_columns {
            Some(k) if k.is_empty() => {
                return Err(invalid("key_columns is empty; name the columns of a unique key or pass NULL for the primary key".into()))
            }
            Some(k) => k.clone(),
            None if primary_key.is_empty() => {
                return Err(PublishError::new(
                    SqlState::InvalidColumnReference,
                    format!("{target_name} has no primary key; name its unique key in key_columns"),
                ))
            }
            None => primary_key.to_vec(),
        };
        let mut key = Vec::with_capacity(key_names.len());
        for k in &key_names {
            let Some(c) = find(k) else {
                return Err(PublishError::new(
                    SqlState::UndefinedColumn,
                    format!(
                        "key column {} does not exist in {target_name}",
                        quote_ident(k)
                    ),
                ));
            };
            let Some(i) = columns.iter().position(|p| &p.name == k) else {
                return Err(invalid(format!(
                    "key column {} is not among the published columns",
                    quote_ident(k)
                )));
            };
            if key.contains(&i) {
                return Err(PublishError::new(
                    SqlState::DuplicateColumn,
                    format!("key column {} is named twice", quote_ident(k)),
                ));
            }
            if !c.not_null {
                return Err(invalid(format!(
                    "key column {} may be NULL; a published key must be NOT NULL",
                    quote_ident(k)
                )));
            }
            key.push(i);
        }
        let mut sorted = key_names.clone();
        sorted.sort();
        let unique = unique_keys.iter().any(|u| {
            let mut u = u.clone();
            u.sort();
            u == sorted
        });
        if !unique {
            return Err(PublishError::new(
                SqlState::InvalidColumnReference,
                format!(
                    "({}) is not a unique key of {target_name}: no unique index covers exactly these columns",
                    key_names.iter().map(|k| quote_ident(k)).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let scope = |what: &str, col: &Option<String>| -> Result<Option<usize>, PublishError> {
            let Some(name) = col else { return Ok(None) };
            if find(name).is_none() {
                return Err(PublishError::new(
                    SqlState::UndefinedColumn,
                    format!(
                        "{what} column {} does not exist in {target_name}",
                        quote_ident(name)
                    ),
                ));
            }
            match columns.iter().position(|p| &p.name == name) {
                Some(i) => Ok(Some(i)),
                None => Err(invalid(format!(
                    "{what} column {} is not among the published columns",
                    quote_ident(name)
                ))),
            }
        };
        let tenant = scope("tenant", &args.tenant_column)?;
        let device = scope("device", &args.device_column)?;
        if tenant.is_some() && tenant == device {
            return Err(invalid(
                "the tenant and the device column are the same column".into(),
            ));
        }
        Ok(Publication {
            edge_table,
            target_sql: target_sql.to_owned(),
            columns,
            key,
            tenant,
            device,
        })
    }

    /// The published columns' names.
    pub fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name.clone()).collect()
    }

    /// The key columns' names, in key order.
    pub fn key_names(&self) -> Vec<String> {
        self.key
            .iter()
            .map(|&k| self.columns[k].name.clone())
            .collect()
    }

    fn col(&self, i: usize) -> String {
        quote_ident(&self.columns[i].name)
    }

    /// `ARRAY[r.k1::text, ...]`: a row's key as `sluice.changes` keeps it.
    fn key_text(&self, alias: &str) -> String {
        let parts: Vec<String> = self
            .key
            .iter()
            .map(|&k| format!("{alias}.{}::text", self.col(k)))
            .collect();
        format!("ARRAY[{}]", parts.join(", "))
    }

    fn scope_text(&self, alias: &str, col: Option<usize>) -> String {
        match col {
            Some(i) => format!("{alias}.{}::text", self.col(i)),
            None => "NULL::text".to_owned(),
        }
    }

    /// The change entry of a row image: `position, tenant, device, key`.
    fn entry(&self, alias: &str) -> String {
        format!(
            "pg_catalog.pg_current_xact_id()::text::bigint, {}, {}, {}",
            self.scope_text(alias, self.tenant),
            self.scope_text(alias, self.device),
            self.key_text(alias)
        )
    }

    /// `CREATE OR REPLACE FUNCTION` of the capture trigger function
    /// `function_sql` (qualified, quoted): statement level, reading the
    /// transition tables `sluice_new` and `sluice_old`; the edge table comes
    /// as the trigger's argument. An INSERT writes one entry per new row, a
    /// DELETE one per old row; an UPDATE one per new row whose published
    /// columns changed, and one for the old image of each row whose key or
    /// scope changed (its old scope gets a tombstone). Every statement that
    /// wrote entries notifies [`NOTIFY_CHANNEL`]. SECURITY DEFINER: the
    /// table's writers need no right on `sluice.changes`.
    pub fn capture_function_sql(&self, function_sql: &str) -> String {
        let insert = "INSERT INTO sluice.changes (edge_table, position, tenant, device, key)";
        let same_key = |a: &str, b: &str| -> String {
            self.key
                .iter()
                .map(|&k| format!("{a}.{c} = {b}.{c}", c = self.col(k)))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let same_scope = |a: &str, b: &str| -> String {
            [self.tenant, self.device]
                .into_iter()
                .flatten()
                .map(|i| format!(" AND {a}.{c} IS NOT DISTINCT FROM {b}.{c}", c = self.col(i)))
                .collect()
        };
        // The published values of `o` and `n` are the same: `=` (through
        // IS NOT DISTINCT FROM) where the type has one, else their text.
        let same_values = || -> String {
            self.columns
                .iter()
                .enumerate()
                .filter(|(i, _)| !self.key.contains(i))
                .map(|(i, c)| {
                    let q = self.col(i);
                    if c.comparable {
                        format!(" AND o.{q} IS NOT DISTINCT FROM n.{q}")
                    } else {
                        format!(" AND o.{q}::text IS NOT DISTINCT FROM n.{q}::text")
                    }
                })
                .collect()
        };
        let mut sql = String::with_capacity(2048);
        let _ = write!(
            sql,
            "DECLARE
    written bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        {insert}
        SELECT TG_ARGV[0], {new_entry} FROM sluice_new n;
    ELSIF TG_OP = 'DELETE' THEN
        {insert}
        SELECT TG_ARGV[0], {old_entry} FROM sluice_old o;
    ELSE
        {insert}
        SELECT TG_ARGV[0], {new_entry} FROM sluice_new n
        WHERE NOT EXISTS (SELECT FROM sluice_old o WHERE {key_no}{values_no})
        UNION ALL
        SELECT TG_ARGV[0], {old_entry} FROM sluice_old o
        WHERE NOT EXISTS (SELECT FROM sluice_new n WHERE {key_no}{scope_no});
    END IF;
    GET DIAGNOSTICS written = ROW_COUNT;
    IF written > 0 THEN
        PERFORM pg_catalog.pg_notify({channel}, TG_ARGV[0]);
    END IF;
    RETURN NULL;
END
",
            new_entry = self.entry("n"),
            old_entry = self.entry("o"),
            key_no = same_key("o", "n"),
            scope_no = same_scope("o", "n"),
            values_no = same_values(),
            channel = quote_literal(NOTIFY_CHANNEL),
        );
        // A dollar quote that no column name in the body contains.
        let tag = (0..)
            .map(|n| {
                if n == 0 {
                    "$sluice$".to_owned()
                } else {
                    format!("$sluice{n}$")
                }
            })
            .find(|t| !sql.contains(t.as_str()))
            .unwrap_or_default();
        format!(
            "CREATE OR REPLACE FUNCTION {function_sql}() RETURNS trigger\n\
             LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {tag}\n{sql}{tag}"
        )
    }

    /// The statements that create the capture triggers on the target
    /// (after dropping those it has: [`Publication::drop_trigger_sql`]): statement-level INSERT,
    /// UPDATE and DELETE triggers with transition tables, and one that
    /// refuses TRUNCATE (it would remove rows without a change entry).
    pub fn create_triggers_sql(&self, function_sql: &str) -> Vec<String> {
        let arg = quote_literal(&self.edge_table);
        let t = &self.target_sql;
        vec![
            format!("CREATE TRIGGER sluice_capture_insert AFTER INSERT ON {t} REFERENCING NEW TABLE AS sluice_new FOR EACH STATEMENT EXECUTE FUNCTION {function_sql}({arg})"),
            format!("CREATE TRIGGER sluice_capture_update AFTER UPDATE ON {t} REFERENCING OLD TABLE AS sluice_old NEW TABLE AS sluice_new FOR EACH STATEMENT EXECUTE FUNCTION {function_sql}({arg})"),
            format!("CREATE TRIGGER sluice_capture_delete AFTER DELETE ON {t} REFERENCING OLD TABLE AS sluice_old FOR EACH STATEMENT EXECUTE FUNCTION {function_sql}({arg})"),
            format!("CREATE TRIGGER sluice_capture_truncate BEFORE TRUNCATE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION sluice._internal_refuse_truncate({arg})"),
        ]
    }

    /// The names of the capture triggers.
    pub const TRIGGERS: [&'static str; 4] = [
        "sluice_capture_insert",
        "sluice_capture_update",
        "sluice_capture_delete",
        "sluice_capture_truncate",
    ];

    /// The statement that drops capture trigger `name` (one of
    /// [`Publication::TRIGGERS`]) of `target_sql`.
    pub fn drop_trigger_sql(target_sql: &str, name: &str) -> String {
        format!("DROP TRIGGER {} ON {target_sql}", quote_ident(name))
    }

    /// The scope condition on change entries `c`; tenant `$t`, device `$d`.
    fn change_scope(&self, t: usize, d: usize) -> String {
        let mut s = if self.tenant.is_some() {
            format!("c.tenant = ${t}")
        } else {
            "c.tenant IS NULL".to_owned()
        };
        if self.device.is_some() {
            let _ = write!(s, " AND (c.device = ${d} OR c.device IS NULL)");
        }
        s
    }

    /// The scope condition on rows `t` of the target.
    fn row_scope(&self, t: usize, d: usize) -> String {
        let mut s = String::new();
        if let Some(i) = self.tenant {
            let _ = write!(s, " AND t.{}::text = ${t}", self.col(i));
        }
        if let Some(i) = self.device {
            let _ = write!(
                s,
                " AND (t.{c}::text = ${d} OR t.{c} IS NULL)",
                c = self.col(i)
            );
        }
        s
    }

    /// The position of the `$4 + 1`-th change in scope after position `$2`
    /// and below `$3` (`$1` edge table, `$5` tenant, `$6` device, all
    /// text but the positions and offset, bigint), with `$4` = `max_rows`:
    /// the first position that does not fit in a batch. No row: every
    /// change fits.
    pub fn cut_sql(&self) -> String {
        format!(
            "SELECT c.position FROM sluice.changes c \
             WHERE c.edge_table = $1 AND c.position > $2 AND c.position < $3 AND {} \
             ORDER BY c.position OFFSET $4 LIMIT 1",
            self.change_scope(5, 6)
        )
    }

    /// The last position in scope after `$2` and below `$3` (same
    /// parameters as [`Publication::more_sql`]): with `$3` the first
    /// position that does not fit, the last one of the batch (NULL when not
    /// even the first transaction fits: it goes whole).
    pub fn last_before_sql(&self) -> String {
        format!(
            "SELECT max(c.position) FROM sluice.changes c \
             WHERE c.edge_table = $1 AND c.position > $2 AND c.position < $3 AND {}",
            self.change_scope(4, 5)
        )
    }

    /// Whether a change in scope lies after `$2` and below `$3` (same
    /// parameters as [`Publication::cut_sql`] without `$4`).
    pub fn more_sql(&self) -> String {
        format!(
            "SELECT EXISTS (SELECT FROM sluice.changes c \
             WHERE c.edge_table = $1 AND c.position > $2 AND c.position < $3 AND {})",
            self.change_scope(4, 5)
        )
    }

    /// The changes in scope with positions in (`$2`, `$3`] (`$1` edge
    /// table, `$4` tenant, `$5` device), one row per key: its last
    /// position, whether it is a tombstone (no current row in scope), then
    /// every published column as [`WireKind::select_sql`] gives it (the key
    /// columns from the entry, the others from the current row), in
    /// position order.
    pub fn changes_sql(&self) -> String {
        let mut sql = format!(
            "WITH k AS (SELECT c.key, max(c.position) AS position FROM sluice.changes c \
             WHERE c.edge_table = $1 AND c.position > $2 AND c.position <= $3 AND {} GROUP BY c.key)\n\
             SELECT k.position, t.ctid IS NULL AS gone",
            self.change_scope(4, 5)
        );
        for (i, c) in self.columns.iter().enumerate() {
            let expr = match self.key.iter().position(|&k| k == i) {
                Some(n) => format!("(k.key[{}])::{}", n + 1, c.type_sql),
                None => format!("t.{}", self.col(i)),
            };
            let _ = write!(sql, ", {}", c.kind.select_sql(&expr));
        }
        let _ = write!(sql, "\nFROM k LEFT JOIN {} t ON ", self.target_sql);
        let on: Vec<String> = self
            .key
            .iter()
            .enumerate()
            .map(|(n, &k)| {
                format!(
                    "t.{} = (k.key[{}])::{}",
                    self.col(k),
                    n + 1,
                    self.columns[k].type_sql
                )
            })
            .collect();
        sql.push_str(&on.join(" AND "));
        sql.push_str(&self.row_scope(4, 5));
        sql.push_str("\nORDER BY k.position, k.key");
        sql
    }

    /// One snapshot page: the rows in scope (`$1` tenant, `$2` device)
    /// in key order, after the key `$3, $4, ...` (text, cast to the key
    /// columns' types) when `after`, at most `$n` rows (`n` the last
    /// parameter, bigint). Every published column as
    /// [`WireKind::select_sql`] gives it, then the key columns as text (for
    /// the cursor).
    pub fn snapshot_sql(&self, after: bool) -> String {
        let cols: Vec<String> = (0..self.columns.len())
            .map(|i| {
                self.columns[i]
                    .kind
                    .select_sql(&format!("t.{}", self.col(i)))
            })
            .chain(self.key.iter().map(|&k| format!("t.{}::text", self.col(k))))
            .collect();
        let mut sql = format!(
            "SELECT {} FROM {} t WHERE true",
            cols.join(", "),
            self.target_sql
        );
        sql.push_str(&self.row_scope(1, 2));
        let mut next = 3;
        if after {
            let left: Vec<String> = self
                .key
                .iter()
                .map(|&k| format!("t.{}", self.col(k)))
                .collect();
            let right: Vec<String> = self
                .key
                .iter()
                .map(|&k| {
                    let p = format!("(${next})::{}", self.columns[k].type_sql);
                    next += 1;
                    p
                })
                .collect();
            let _ = write!(sql, " AND ({}) > ({})", left.join(", "), right.join(", "));
        }
        let order: Vec<String> = self
            .key
            .iter()
            .map(|&k| format!("t.{}", self.col(k)))
            .collect();
        let _ = write!(sql, " ORDER BY {} LIMIT ${next}", order.join(", "));
        sql
    }
}

/// What `sluice.pull` reads to know how far it may serve: its snapshot's
/// xmax and in-progress transaction ids (`pg_snapshot_xip`), the ids of the
/// transactions running in *other* databases (`pg_stat_activity`'s
/// `backend_xid`, 32 bits), and the caller's own transaction id if it has
/// one. One row; [`serve_below`] makes the bound of them.
pub const HORIZON_SQL: &str = "SELECT pg_catalog.pg_snapshot_xmax(snap.s)::text::bigint, \
     ARRAY(SELECT x::text::bigint FROM pg_catalog.pg_snapshot_xip(snap.s) AS x), \
     ARRAY(SELECT a.backend_xid::text::bigint FROM pg_catalog.pg_stat_activity a \
           WHERE a.backend_xid IS NOT NULL AND a.datid IS NOT NULL \
             AND a.datid <> (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database())), \
     pg_catalog.pg_current_xact_id_if_assigned()::text::bigint \
     FROM (SELECT pg_catalog.pg_current_snapshot() AS s) AS snap";

/// The position below which every change of this database is committed or
/// gone for good: the least transaction id still in progress here, else the
/// snapshot's `xmax`. A transaction in progress is another database's when
/// the 32-bit `backend_xid` of a backend of another database equals its low
/// 32 bits (a backend never changes database, and no two running
/// transactions share those bits); one found nowhere (it ended meanwhile, a
/// prepared transaction) is taken for this database's: the bound is only
/// ever too low, never too high. The caller's own transaction, when it has
/// an id, is in progress too.
pub fn serve_below(xmax: i64, in_progress: &[i64], elsewhere: &[i64], own: Option<i64>) -> i64 {
    in_progress
        .iter()
        .copied()
        .filter(|x| !elsewhere.contains(&(x & 0xffff_ffff)))
        .chain(own)
        .fold(xmax, i64::min)
}

/// Where a snapshot stands between two calls of `sluice.pull`: opaque text
/// for the agent, which passes it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The publication's stream when the snapshot began.
    pub stream_id: i64,
    /// The checkpoint the snapshot leads to.
    pub checkpoint: i64,
    /// The page last returned (1 for the first).
    pub page: u32,
    /// The key of the last row returned, as text, in key order.
    pub after: Vec<String>,
}

impl Cursor {
    /// `s1:<stream>:<checkpoint>:<page>:<hex of each key value>...`.
    pub fn encode(&self) -> String {
        let mut s = format!("s1:{}:{}:{}", self.stream_id, self.checkpoint, self.page);
        for k in &self.after {
            s.push(':');
            for b in k.as_bytes() {
                let _ = write!(s, "{b:02x}");
            }
        }
        s
    }

    /// Reads a cursor [`Cursor::encode`] wrote; `key_len` key values.
    pub fn decode(text: &str, key_len: usize) -> Result<Cursor, String> {
        let bad = || {
            format!(
                "cursor '{}' is not one sluice.pull returned for this publication",
                text.chars().take(80).collect::<String>()
            )
        };
        let mut parts = text.split(':');
        if parts.next() != Some("s1") {
            return Err(bad());
        }
        let mut num = || {
            parts
                .next()
                .and_then(|p| p.parse::<i64>().ok())
                .ok_or_else(bad)
        };
        let stream_id = num()?;
        let checkpoint = num()?;
        let page = u32::try_from(num()?).map_err(|_| bad())?;
        if page == 0 || checkpoint < 1 {
            return Err(bad());
        }
        let after: Vec<String> = parts
            .map(|h| {
                if h.len() % 2 != 0 {
                    return Err(bad());
                }
                let bytes = (0..h.len())
                    .step_by(2)
                    .map(|i| {
                        u8::from_str_radix(h.get(i..i + 2).unwrap_or("zz"), 16).map_err(|_| bad())
                    })
                    .collect::<Result<Vec<u8>, String>>()?;
                String::from_utf8(bytes).map_err(|_| bad())
            })
            .collect::<Result<_, _>>()?;
        if after.len() != key_len {
            return Err(bad());
        }
        Ok(Cursor {
            stream_id,
            checkpoint,
            page,
            after,
        })
    }
}

/// What one call of `sluice.pull` serves, decided from the device's
/// arguments and the publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullMode {
    /// The changes after the checkpoint.
    Incremental,
    /// A new snapshot, and why.
    Snapshot(SnapshotReason),
}

/// Why a device gets a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotReason {
    /// Checkpoint 0: the device has nothing yet.
    First,
    /// The device follows another stream (the publication's key, scope or
    /// columns changed, or it was published again).
    Stream,
    /// The changes after its checkpoint were purged (offline past the
    /// horizon).
    Purged,
    /// Its checkpoint lies at or above every transaction id the cloud has
    /// handed out (a cloud restored from a backup).
    Ahead,
}

/// The mode of a pull without a cursor: `checkpoint` and `stream_id` as the
/// device sent them, the publication's `pub_stream` and `purged_through`,
/// and `next_xid`, the snapshot's `xmax` (no transaction id at or above it
/// was ever handed out). A checkpoint at or above `next_xid` is one this
/// cloud never served: a cloud restored from a backup. (A checkpoint above
/// what this call may serve but below `next_xid` is not: the bound can move
/// down a little, when a transaction of another database is no longer
/// found there, [`serve_below`]; such a pull serves nothing.)
pub fn pull_mode(
    checkpoint: i64,
    stream_id: i64,
    pub_stream: i64,
    purged_through: i64,
    next_xid: i64,
) -> PullMode {
    if checkpoint <= 0 {
        PullMode::Snapshot(SnapshotReason::First)
    } else if stream_id != pub_stream {
        PullMode::Snapshot(SnapshotReason::Stream)
    } else if checkpoint < purged_through {
        PullMode::Snapshot(SnapshotReason::Purged)
    } else if checkpoint >= next_xid {
        PullMode::Snapshot(SnapshotReason::Ahead)
    } else {
        PullMode::Incremental
    }
}

#[cfg(test)]
mod tests;
