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
/// Name of the optional bookkeeping column that holds the stream (the edge
/// database's epoch) of the row's last write; in the key of append-only
/// tables, so that rows of a new epoch never meet rows of an earlier one.
pub const STREAM_COLUMN: &str = "sluice_stream";

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

    /// The `WHERE` of `ON CONFLICT ... DO UPDATE` for the rows of a re-send
    /// batch ([`sluice_wire::BatchHeader::resend`]): the policy's
    /// [`update_condition`](Self::update_condition), or an equal `(version,
    /// device)` pair with other content in a column outside the key (the
    /// edge sends a row it sent before, as it holds it now: after an `ADD
    /// COLUMN ... DEFAULT`, or a fix). The content compares each column's
    /// text form, the stored row's with the incoming one's (`EXCLUDED` has
    /// been assigned to the column's type). `None` under insert only, which
    /// never updates; the policy's condition alone when every column is a
    /// key column (the content cannot differ).
    pub fn resend_update_condition(
        self,
        columns: &[TargetColumn],
        keys: &[usize],
    ) -> Option<String> {
        let cond = self.update_condition()?;
        let content: Vec<String> = columns
            .iter()
            .enumerate()
            .filter(|(i, _)| !keys.contains(i))
            .map(|(_, c)| quote_ident(&c.name))
            .collect();
        if content.is_empty() {
            return Some(cond);
        }
        let v = quote_ident(VERSION_COLUMN);
        let d = quote_ident(DEVICE_COLUMN);
        let stored: Vec<String> = content.iter().map(|q| format!("t.{q}::text")).collect();
        let incoming: Vec<String> = content
            .iter()
            .map(|q| format!("EXCLUDED.{q}::text"))
            .collect();
        Some(format!(
            "{cond}\n     OR ((EXCLUDED.{v}, EXCLUDED.{d}) = (t.{v}, t.{d})\n         AND ROW({}) IS DISTINCT FROM ROW({}))",
            stored.join(", "),
            incoming.join(", ")
        ))
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
/// Name of the column a registration with `on_delete => 'mark'` sets when
/// the edge deletes a row (`timestamptz`; NULL while the row exists).
pub const DELETED_AT_COLUMN: &str = "sluice_deleted_at";

/// What a delete at the edge (a tombstone in a batch) does in the cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OnDelete {
    /// The row is deleted, and the tombstone remembered in
    /// `sluice.tombstones`, so that an older write arriving later does not
    /// bring the row back.
    #[default]
    Delete,
    /// The row is kept with `sluice_deleted_at` set to the time of ingest
    /// (and the tombstone's version); a later write that wins clears it.
    Mark,
    /// Tombstones are skipped: the cloud keeps every row.
    Ignore,
}

impl OnDelete {
    /// Every mode, in the order the docs list them.
    pub const ALL: [OnDelete; 3] = [OnDelete::Delete, OnDelete::Mark, OnDelete::Ignore];

    /// The mode of a name as `sluice.register_table` takes it.
    pub fn parse(s: &str) -> Option<OnDelete> {
        OnDelete::ALL.into_iter().find(|m| m.name() == s)
    }

    /// The mode's name: `delete`, `mark` or `ignore`.
    pub fn name(self) -> &'static str {
        match self {
            OnDelete::Delete => "delete",
            OnDelete::Mark => "mark",
            OnDelete::Ignore => "ignore",
        }
    }

    /// Whether tombstones are applied under `policy`: only last writer wins
    /// orders a delete against the cloud's row (under first writer wins and
    /// insert only, the row that is there stays, as for any later write).
    pub fn applies(self, policy: Policy) -> bool {
        self != OnDelete::Ignore && policy == Policy::LastWriterWins
    }
}

/// How an upsert meets the deletes of its target ([`upsert_sql_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DeleteOptions {
    /// The OID of the target when `sluice.tombstones` holds tombstones of
    /// it: rows older than a tombstone of their key are left out.
    pub tombstones_of: Option<u32>,
    /// The target has `sluice_deleted_at` (`on_delete => 'mark'`): an
    /// update that wins clears it.
    pub clear_mark: bool,
}

/// Rows of a batch the edge cut before it had applied a cloud delete of
/// their key: the target is published (cloud to edge) and the edge table
/// subscribed, so the batch says how far the edge had pulled
/// (`BatchHeader::pulled`). A row whose key the target no longer has and
/// whose key has a change entry after that checkpoint was deleted (or
/// re-keyed away) by the cloud while the edge still held it: the edge's copy
/// (a status report of a row the cloud has removed) is left out, and the
/// edge removes the row when it pulls the tombstone. A row whose key came
/// back at the edge after it had applied the delete is inserted as usual.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnseenDeletes {
    /// Indexes into the batch's columns of the publication's key columns,
    /// in key order.
    pub key: Vec<usize>,
    /// Where `sluice.changes` keeps the rows' tenant.
    pub tenant: ChangeTenant,
    /// The number of the first of two parameters: `$m` the publication's
    /// edge table (`text`), `$m+1` the checkpoint the edge had applied
    /// (`bigint`; 0 when it had none of the publication's current stream).
    pub first_param: usize,
}

/// How [`UnseenDeletes`] finds the change entries of a row's tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeTenant {
    /// The publication has no tenant column: entries have `tenant IS NULL`.
    Unscoped,
    /// The publication's tenant column is the batch's column at this index.
    Column(usize),
    /// The publication has a tenant column the batch lacks: any tenant.
    Any,
}

impl UnseenDeletes {
    /// The condition on a typed row `s` (columns `cN`) of `target` (quoted):
    /// true unless the row is one to leave out.
    fn condition_sql(&self, target: &str, columns: &[TargetColumn]) -> String {
        let live: Vec<String> = self
            .key
            .iter()
            .map(|&k| format!("live.{} = s.c{}", quote_ident(&columns[k].name), k + 1))
            .collect();
        let key: Vec<String> = self
            .key
            .iter()
            .map(|&k| format!("CAST(s.c{} AS {})::text", k + 1, columns[k].stored_sql))
            .collect();
        let tenant = match self.tenant {
            ChangeTenant::Unscoped => " AND ch.tenant IS NULL".to_owned(),
            ChangeTenant::Column(i) => format!(
                " AND ch.tenant = CAST(s.c{} AS {})::text",
                i + 1,
                columns[i].stored_sql
            ),
            ChangeTenant::Any => String::new(),
        };
        // CASE: the cheap probe of the target first, the change entries
        // only for a key the target lacks.
        format!(
            "CASE WHEN EXISTS (SELECT 1 FROM {target} AS live WHERE {live}) THEN true \
             ELSE NOT EXISTS (SELECT 1 FROM sluice.changes AS ch WHERE ch.edge_table = ${m}::text{tenant} \
             AND ch.position > ${p}::bigint AND ch.key = ARRAY[{key}]::text[]) END",
            live = live.join(" AND "),
            key = key.join(", "),
            m = self.first_param,
            p = self.first_param + 1,
        )
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
    /// The column's type with its modifier (`format_type(oid, typmod)`):
    /// what a value becomes when it is stored, which is what the content
    /// comparisons of [`fork_check_sql`] and the fork filter of
    /// [`upsert_sql`] compare with the stored row.
    pub stored_sql: String,
}

/// Whether the target has the bookkeeping column `sluice_stream` (the
/// stream of the row's last write, filled from the batch header like
/// `sluice_device`), and whether it is part of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StreamColumn {
    /// The target has no `sluice_stream` column.
    #[default]
    None,
    /// A column outside the key: updated with the row, like `sluice_device`.
    Column,
    /// Part of the key: rows of different streams never meet in `ON
    /// CONFLICT` (the append-only tables of the default schema).
    Key,
}

/// The bookkeeping columns of a statement: which ones the key includes, and
/// which parameters follow the `n` column arrays: `$n+1` the row versions
/// (`bigint[]`), `$n+2` the device (`text`), and with a stream column `$n+3`
/// the stream (`bigint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Bookkeeping {
    /// The registration's key includes `sluice_device`.
    pub device_key: bool,
    /// The target's `sluice_stream` column.
    pub stream: StreamColumn,
}

impl Bookkeeping {
    /// The bookkeeping columns written with every row, in the statements'
    /// order, and the expression of each (`n` column arrays before them).
    fn written(&self, n: usize) -> Vec<(&'static str, String)> {
        let mut w = vec![(DEVICE_COLUMN, format!("${}::text", n + 2))];
        if self.stream != StreamColumn::None {
            w.push((STREAM_COLUMN, format!("${}::bigint", n + 3)));
        }
        w.push((VERSION_COLUMN, "v".to_owned()));
        w
    }

    /// The key columns beside the batch's: `sluice_device` and
    /// `sluice_stream` where the key includes them, with their parameters.
    fn key_params(&self, n: usize) -> Vec<(&'static str, String)> {
        let mut k = Vec::new();
        if self.device_key {
            k.push((DEVICE_COLUMN, format!("${}::text", n + 2)));
        }
        if self.stream == StreamColumn::Key {
            k.push((STREAM_COLUMN, format!("${}::bigint", n + 3)));
        }
        k
    }
}

/// The upsert of one batch into `target` (already quoted), in one statement.
///
/// Parameters: `$1..$n` one array per column, of the SQL type `arrays[i]`
/// (`text[]`, or a native array such as `bigint[]`; values are cast to the
/// column's type in SQL), then the bookkeeping parameters of [`Bookkeeping`]
/// (`$n+1` the row versions, `$n+2` the device, `$n+3` the stream when the
/// target has a `sluice_stream` column). With `dedup`, rows with the same key
/// inside the batch are reduced to the one the policy keeps, so that `ON
/// CONFLICT` never meets a row twice (the caller leaves it out only when it
/// checked that the keys are distinct). `sluice_device` and `sluice_stream`
/// in the key are the batch's, the same for every row: they join the
/// conflict target but not the reduction.
///
/// With `fork` (a batch of a new epoch, [`sluice_wire::Fork`], into a target
/// with a `sluice_stream` column), `$n+4` is the parent stream (`bigint`) and
/// `$n+5` the fork's sequence number (`bigint`): a row with a version up to
/// it is left out when the target holds a row with the same key but for
/// `sluice_stream`, under a stream of the parent's lineage (the parent, its
/// ancestors and every stream descending from one of them but the batch's
/// own and its descendants, followed through `sluice.streams`: see
/// [`push_lineage`]), and the same content. Such a row was sent before the
/// database was restored or copied, by the database itself or by another
/// restore or copy of it (a sibling epoch).
///
/// Returns one row: `(inserted bigint, updated bigint)`.
#[allow(clippy::too_many_arguments)]
pub fn upsert_sql(
    target: &str,
    columns: &[TargetColumn],
    arrays: &[&str],
    keys: &[usize],
    bk: Bookkeeping,
    policy: Policy,
    dedup: bool,
    fork: bool,
) -> String {
    upsert_sql_with(
        target,
        columns,
        arrays,
        keys,
        bk,
        policy,
        dedup,
        fork,
        DeleteOptions::default(),
        false,
    )
}

/// [`upsert_sql`] into a target that may have tombstones, of an ordinary
/// batch or of a re-send: with `deletes.tombstones_of`, a row is left out
/// when `sluice.tombstones` holds a tombstone of its key with a higher
/// `(version, device)` (a delete newer than the row: an older write arriving
/// after the delete does not bring the row back); with `deletes.clear_mark`,
/// an update that wins clears `sluice_deleted_at`. With `resend` (a batch
/// whose header's `resend` is not 0), a row whose key the target holds with
/// an equal `(version, device)` pair and other content replaces it under
/// last and first writer wins ([`Policy::resend_update_condition`]); it
/// counts as updated.
#[allow(clippy::too_many_arguments)]
pub fn upsert_sql_with(
    target: &str,
    columns: &[TargetColumn],
    arrays: &[&str],
    keys: &[usize],
    bk: Bookkeeping,
    policy: Policy,
    dedup: bool,
    fork: bool,
    deletes: DeleteOptions,
    resend: bool,
) -> String {
    upsert_sql_keeping(
        target,
        columns,
        arrays,
        keys,
        bk,
        policy,
        dedup,
        fork,
        deletes,
        resend,
        &[],
        None,
    )
}

/// [`upsert_sql_with`] into a target that is also published (cloud to
/// edge): the columns named in `cloud_owned` are the cloud's, so an update
/// of an existing row leaves them as they are (a new row is inserted with
/// every column of the batch), and with `unseen` the rows the edge cut
/// before it had applied a cloud delete of their key are left out
/// ([`UnseenDeletes`]).
#[allow(clippy::too_many_arguments)]
pub fn upsert_sql_keeping(
    target: &str,
    columns: &[TargetColumn],
    arrays: &[&str],
    keys: &[usize],
    bk: Bookkeeping,
    policy: Policy,
    dedup: bool,
    fork: bool,
    deletes: DeleteOptions,
    resend: bool,
    cloud_owned: &[String],
    unseen: Option<&UnseenDeletes>,
) -> String {
    let n = columns.len();
    let fork = fork && bk.stream != StreamColumn::None;
    let mut sql = String::with_capacity(256 + 64 * n);
    let filters: Vec<String> = deletes
        .tombstones_of
        .map(|oid| not_buried_sql(oid, columns, keys, bk))
        .into_iter()
        .chain(unseen.map(|u| u.condition_sql(target, columns)))
        .collect();
    let buried = (!filters.is_empty()).then(|| filters.join("\n  AND "));
    // Typed rows.
    if fork {
        push_lineage(&mut sql, n);
        sql.push_str(",\n");
        push_src_filtered(
            &mut sql,
            target,
            columns,
            arrays,
            keys,
            bk,
            policy,
            dedup,
            buried.as_deref(),
        );
    } else {
        sql.push_str("WITH ");
        push_src_where(
            &mut sql,
            columns,
            arrays,
            keys,
            policy,
            dedup,
            buried.as_deref(),
        );
    }
    sql.push_str(",\n");
    // The upsert.
    sql.push_str("up AS (\n  ");
    push_insert_select(&mut sql, target, " AS t", columns, bk, "\n  ");
    sql.push_str("src\n  ON CONFLICT (");
    push_list(
        &mut sql,
        keys.iter()
            .map(|&k| quote_ident(&columns[k].name))
            .chain(bk.key_params(n).into_iter().map(|(c, _)| quote_ident(c))),
    );
    sql.push_str(") ");
    let condition = if resend {
        policy.resend_update_condition(columns, keys)
    } else {
        policy.update_condition()
    };
    match condition {
        None => sql.push_str("DO NOTHING"),
        Some(cond) => {
            sql.push_str("DO UPDATE SET ");
            let stream_updated = (bk.stream == StreamColumn::Column).then_some(STREAM_COLUMN);
            push_list(
                &mut sql,
                columns
                    .iter()
                    .enumerate()
                    .filter(|(i, c)| !keys.contains(i) && !cloud_owned.contains(&c.name))
                    .map(|(_, c)| c.name.as_str())
                    .chain([DEVICE_COLUMN])
                    .chain(stream_updated)
                    .chain([VERSION_COLUMN])
                    .map(|name| {
                        let q = quote_ident(name);
                        format!("{q} = EXCLUDED.{q}")
                    })
                    .chain(
                        deletes
                            .clear_mark
                            .then(|| format!("{} = NULL", quote_ident(DELETED_AT_COLUMN))),
                    ),
            );
            let _ = write!(sql, "\n  WHERE {cond}");
        }
    }
    sql.push_str("\n  RETURNING (t.xmax = 0) AS ins\n)\n");
    sql.push_str("SELECT count(*) FILTER (WHERE ins), count(*) FILTER (WHERE NOT ins) FROM up");
    sql
}

/// `WITH RECURSIVE anc(stream) AS (...), lin(stream) AS (...)`: the lineage
/// of the parent stream `$n+4` as `sluice.streams` records it for the
/// device `$n+2`: `anc` is the parent and its ancestors, `lin` every stream
/// that descends from one of them, with `anc` itself: the other epochs that
/// restores or copies of the same database started (siblings of the new
/// epoch, the parent's siblings, their descendants). A row up to the fork may have
/// reached the cloud under any of them. A stream of the device that never
/// forked from this lineage (another database under the same device id) is
/// not in it, and neither are the batch's own stream `$n+3` and the streams
/// descending from it: copies of this database made since its epoch began
/// (a clone of a box that was restored) skip what this database sent, not
/// the other way round, or the original's rows would be in the cloud only
/// under the copy's stream. `UNION` ends a cycle. Streams of one device are
/// few, and this runs only for fork batches.
fn push_lineage(sql: &mut String, n: usize) {
    let _ = write!(
        sql,
        "WITH RECURSIVE anc(stream) AS (\n  SELECT ${p}::bigint\n  UNION\n  \
         SELECT st.parent_stream FROM sluice.streams AS st JOIN anc ON st.stream_id = anc.stream\n  \
         WHERE st.device_id = ${d}::text AND st.parent_stream IS NOT NULL\n),\n\
         lin(stream) AS (\n  SELECT stream FROM anc\n  UNION\n  \
         SELECT st.stream_id FROM sluice.streams AS st JOIN lin ON st.parent_stream = lin.stream\n  \
         WHERE st.device_id = ${d}::text AND st.stream_id <> ${s}::bigint\n)",
        p = n + 4,
        d = n + 2,
        s = n + 3
    );
}

/// `src AS (...)`: the batch's typed rows, reduced to the policy's winner per
/// key with `dedup`.
fn push_src(
    sql: &mut String,
    columns: &[TargetColumn],
    arrays: &[&str],
    keys: &[usize],
    policy: Policy,
    dedup: bool,
) {
    push_src_where(sql, columns, arrays, keys, policy, dedup, None);
}

/// [`push_src`] without the rows a fork batch leaves out (see [`upsert_sql`]).
#[allow(clippy::too_many_arguments)]
fn push_src_filtered(
    sql: &mut String,
    target: &str,
    columns: &[TargetColumn],
    arrays: &[&str],
    keys: &[usize],
    bk: Bookkeeping,
    policy: Policy,
    dedup: bool,
    extra: Option<&str>,
) {
    let n = columns.len();
    let mut cond = format!(
        "NOT (s.v <= ${}::bigint AND EXISTS (\n    SELECT 1 FROM {target} AS a WHERE ",
        n + 5
    );
    let mut conds: Vec<String> = keys
        .iter()
        .map(|&k| format!("a.{} = s.c{}", quote_ident(&columns[k].name), k + 1))
        .collect();
    if bk.device_key {
        conds.push(format!(
            "a.{} = ${}::text",
            quote_ident(DEVICE_COLUMN),
            n + 2
        ));
    }
    conds.push(format!(
        "a.{} IN (SELECT stream FROM lin)",
        quote_ident(STREAM_COLUMN)
    ));
    if let Some((stored, incoming)) = content_rows("a", columns, keys) {
        conds.push(format!("{stored} IS NOT DISTINCT FROM {incoming}"));
    }
    cond.push_str(&conds.join(" AND "));
    cond.push_str("))");
    if let Some(e) = extra {
        cond = format!("{cond}\n  AND {e}");
    }
    push_src_where(sql, columns, arrays, keys, policy, dedup, Some(&cond));
}

fn push_src_where(
    sql: &mut String,
    columns: &[TargetColumn],
    arrays: &[&str],
    keys: &[usize],
    policy: Policy,
    dedup: bool,
    filter: Option<&str>,
) {
    sql.push_str("src AS (\n  SELECT ");
    if dedup {
        sql.push_str("DISTINCT ON (");
        push_list(sql, keys.iter().map(|k| format!("s.c{}", k + 1)));
        sql.push_str(") ");
    }
    sql.push_str("s.* FROM (\n    ");
    push_typed_unnest(sql, columns, arrays);
    sql.push_str("\n  ) AS s");
    if let Some(f) = filter {
        let _ = write!(sql, "\n  WHERE {f}");
    }
    if dedup {
        sql.push_str("\n  ORDER BY ");
        for k in keys {
            let _ = write!(sql, "s.c{}, ", k + 1);
        }
        let _ = write!(sql, "s.v {}", policy.version_order());
    }
    sql.push_str("\n)");
}

/// The content of a row as two row values, the stored row's (`alias.col`)
/// and the incoming one's (`s.cN`, cast to the stored type), each column as
/// its text form (so that every type compares, `json` too, and a value
/// compares as the column stores it: `numeric(6,2)`, `varchar(n)`). Key
/// columns are left out (they are equal where this is used). `None` when
/// every column is a key column.
fn content_rows(alias: &str, columns: &[TargetColumn], keys: &[usize]) -> Option<(String, String)> {
    content_rows_without(alias, columns, keys, &[])
}

/// [`content_rows`] without the columns named in `skip` (a published
/// target's cloud-owned columns: the cloud changes them, the edge's copy may
/// be older, and neither is evidence of a fork).
fn content_rows_without(
    alias: &str,
    columns: &[TargetColumn],
    keys: &[usize],
    skip: &[String],
) -> Option<(String, String)> {
    let (stored, incoming): (Vec<String>, Vec<String>) = columns
        .iter()
        .enumerate()
        .filter(|(i, c)| !keys.contains(i) && !skip.contains(&c.name))
        .map(|(i, c)| {
            (
                format!("{alias}.{}::text", quote_ident(&c.name)),
                format!("CAST(s.c{} AS {})::text", i + 1, c.stored_sql),
            )
        })
        .unzip();
    if stored.is_empty() {
        return None;
    }
    Some((
        format!("ROW({})", stored.join(", ")),
        format!("ROW({})", incoming.join(", ")),
    ))
}

/// The fork check of a batch whose upsert skipped rows: the first row (by
/// version) whose key exists in `target` with the batch's device, a version
/// at least the incoming one and other content. Such a row is not a replay:
/// the edge database was restored or copied and reused versions the cloud
/// already holds for other rows. Run only when the upsert skipped rows, so
/// the common batch pays nothing.
///
/// Parameters as in [`upsert_sql`] (without the fork's); `dedup` as the
/// upsert had it (the rows of a batch that the reduction left out are not
/// compared: the batch's own winner is in the table). `after_fork`: in a
/// batch of a new epoch, the number of a `bigint` parameter holding the
/// fork's sequence number; rows up to it are not checked (they existed when
/// the epoch began and may have been sent, and since updated, by an earlier
/// copy of the database: the policy decides, no fork). Returns the version
/// (`bigint`) of the first such row, or no row. `None` when the batch has no
/// column outside the key (its content cannot differ).
#[allow(clippy::too_many_arguments)]
pub fn fork_check_sql(
    target: &str,
    columns: &[TargetColumn],
    arrays: &[&str],
    keys: &[usize],
    bk: Bookkeeping,
    policy: Policy,
    dedup: bool,
    after_fork: Option<usize>,
) -> Option<String> {
    fork_check_sql_keeping(
        target,
        columns,
        arrays,
        keys,
        bk,
        policy,
        dedup,
        after_fork,
        &[],
    )
}

/// [`fork_check_sql`] into a published target: its cloud-owned columns
/// (`cloud_owned`) are left out of the comparison, since the cloud changes
/// them and the edge's copy of a row may be older ([`upsert_sql_keeping`]
/// never writes them either). `None` also when no other column is left.
#[allow(clippy::too_many_arguments)]
pub fn fork_check_sql_keeping(
    target: &str,
    columns: &[TargetColumn],
    arrays: &[&str],
    keys: &[usize],
    bk: Bookkeeping,
    policy: Policy,
    dedup: bool,
    after_fork: Option<usize>,
    cloud_owned: &[String],
) -> Option<String> {
    let n = columns.len();
    let (stored, incoming) = content_rows_without("t", columns, keys, cloud_owned)?;
    let mut sql = String::with_capacity(256 + 64 * n);
    sql.push_str("WITH ");
    push_src(&mut sql, columns, arrays, keys, policy, dedup);
    let _ = write!(sql, "\nSELECT s.v FROM src AS s JOIN {target} AS t ON ");
    let mut on: Vec<String> = keys
        .iter()
        .map(|&k| format!("t.{} = s.c{}", quote_ident(&columns[k].name), k + 1))
        .collect();
    on.extend(
        bk.key_params(n)
            .into_iter()
            .map(|(c, p)| format!("t.{} = {p}", quote_ident(c))),
    );
    sql.push_str(&on.join(" AND "));
    sql.push_str("\nWHERE ");
    if !bk.device_key {
        let _ = write!(
            sql,
            "t.{} = ${}::text AND ",
            quote_ident(DEVICE_COLUMN),
            n + 2
        );
    }
    if let Some(p) = after_fork {
        let _ = write!(sql, "s.v > ${p}::bigint AND ");
    }
    let _ = write!(
        sql,
        "t.{} >= s.v\n  AND {stored} IS DISTINCT FROM {incoming}\nORDER BY s.v LIMIT 1",
        quote_ident(VERSION_COLUMN),
    );
    Some(sql)
}

/// The plain `INSERT` of a batch whose keys are distinct and absent from
/// `target` (the caller checked both under a lock): no conflict handling, no
/// reduction, no counting. Parameters as in [`upsert_sql`].
pub fn insert_sql(
    target: &str,
    columns: &[TargetColumn],
    arrays: &[&str],
    bk: Bookkeeping,
) -> String {
    let n = columns.len();
    let mut sql = String::with_capacity(256 + 64 * n);
    push_insert_select(&mut sql, target, "", columns, bk, "\n");
    sql.push_str("(\n  ");
    push_typed_unnest(&mut sql, columns, arrays);
    sql.push_str("\n) AS s");
    sql
}

/// Whether `target` holds a row whose key is in a batch's key range: the
/// key columns `consts` equal `$1..$k` (text, cast to the column's type),
/// the column `range` (an integer) lies between `$k+1` and `$k+2` (`bigint`),
/// and `sluice_device` and `sluice_stream`, where the key includes them,
/// equal the next parameters (`text`, then `bigint`). One index probe when
/// the unique index covers the key. Returns one `boolean`.
pub fn probe_sql(
    target: &str,
    columns: &[TargetColumn],
    consts: &[usize],
    range: Option<usize>,
    bk: Bookkeeping,
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
    if bk.device_key {
        p += 1;
        conds.push(format!("{} = ${p}::text", quote_ident(DEVICE_COLUMN)));
    }
    if bk.stream == StreamColumn::Key {
        p += 1;
        conds.push(format!("{} = ${p}::bigint", quote_ident(STREAM_COLUMN)));
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

/// `INSERT INTO target[alias] (columns, sluice_device[, sluice_stream],
/// sluice_version)`, `newline`, `SELECT c1, ..., $n+2::text[, $n+3::bigint],
/// v FROM ` (the source follows).
fn push_insert_select(
    sql: &mut String,
    target: &str,
    alias: &str,
    columns: &[TargetColumn],
    bk: Bookkeeping,
    newline: &str,
) {
    let written = bk.written(columns.len());
    let _ = write!(sql, "INSERT INTO {target}{alias} (");
    push_list(
        sql,
        columns
            .iter()
            .map(|c| c.name.as_str())
            .chain(written.iter().map(|(c, _)| *c))
            .map(quote_ident),
    );
    let _ = write!(sql, "){newline}SELECT ");
    for i in 0..columns.len() {
        let _ = write!(sql, "c{}, ", i + 1);
    }
    push_list(sql, written.iter().map(|(_, e)| e.as_str()));
    sql.push_str(" FROM ");
}

/// The key of a row as `sluice.tombstones` stores it: a `text[]` of the key
/// columns' values as the target stores them (`row` is the alias of the
/// typed rows, columns `cN`), then `sluice_device` and `sluice_stream` where
/// the key includes them (the batch's, `$n+2` and `$n+3`).
fn tombstone_key_sql(
    row: &str,
    columns: &[TargetColumn],
    keys: &[usize],
    bk: Bookkeeping,
) -> String {
    let n = columns.len();
    let mut parts: Vec<String> = keys
        .iter()
        .map(|&k| format!("CAST({row}.c{} AS {})::text", k + 1, columns[k].stored_sql))
        .collect();
    if bk.device_key {
        parts.push(format!("${}::text", n + 2));
    }
    if bk.stream == StreamColumn::Key {
        parts.push(format!("${}::bigint::text", n + 3));
    }
    format!("ARRAY[{}]::text[]", parts.join(", "))
}

/// The condition on a typed row `s` that no tombstone of its key in the
/// target `oid` is newer (higher `(version, device)`).
fn not_buried_sql(oid: u32, columns: &[TargetColumn], keys: &[usize], bk: Bookkeeping) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM sluice.tombstones AS tb WHERE tb.target = {oid}::oid::regclass \
         AND tb.key = {} AND (tb.version, tb.device_id) > (s.v, ${}::text))",
        tombstone_key_sql("s", columns, keys, bk),
        columns.len() + 2
    )
}

/// Whether `sluice.tombstones` holds a tombstone of the target `$1` (an
/// `oid`): only then does an upsert look for them.
pub const HAS_TOMBSTONES_SQL: &str =
    "SELECT EXISTS (SELECT 1 FROM sluice.tombstones WHERE target = $1::oid::regclass)";

/// The statement that applies the tombstones of one batch (rows whose
/// operation is a delete) to `target` (quoted, OID `oid`) under last writer
/// wins, in `mode` ([`OnDelete::Delete`] or [`OnDelete::Mark`]).
///
/// Parameters as in [`upsert_sql`]: `$1..$n` one array per column (only the
/// key columns' values are read; the others are NULL in a tombstone), `$n+1`
/// the versions, `$n+2` the device, `$n+3` the stream when the target has a
/// `sluice_stream` column. Several tombstones of one key are reduced to the
/// newest. Each is remembered in `sluice.tombstones` (a newer one replaces an
/// older one), and deletes (or marks, setting `sluice_deleted_at`, the
/// version and the device) the row of its key whose `(version, device)` is
/// below the tombstone's: a delete older than the cloud's row does not win.
///
/// Returns one row: the number of rows deleted or marked (`bigint`).
pub fn tombstones_sql(
    target: &str,
    oid: u32,
    columns: &[TargetColumn],
    arrays: &[&str],
    keys: &[usize],
    bk: Bookkeeping,
    mode: OnDelete,
) -> String {
    let n = columns.len();
    let v = quote_ident(VERSION_COLUMN);
    let d = quote_ident(DEVICE_COLUMN);
    let mut sql = String::with_capacity(512 + 64 * n);
    sql.push_str("WITH ");
    push_src_where(
        &mut sql,
        columns,
        arrays,
        keys,
        Policy::LastWriterWins,
        true,
        None,
    );
    let _ = write!(
        sql,
        ",\nrec AS (\n  INSERT INTO sluice.tombstones AS tb (target, key, version, device_id)\n  \
         SELECT {oid}::oid::regclass, {}, src.v, ${dev}::text FROM src\n  \
         ON CONFLICT (target, key) DO UPDATE SET version = EXCLUDED.version, \
         device_id = EXCLUDED.device_id, deleted_at = now()\n  \
         WHERE (EXCLUDED.version, EXCLUDED.device_id) > (tb.version, tb.device_id)\n)",
        tombstone_key_sql("src", columns, keys, bk),
        dev = n + 2
    );
    let mut conds: Vec<String> = keys
        .iter()
        .map(|&k| format!("t.{} = src.c{}", quote_ident(&columns[k].name), k + 1))
        .collect();
    for (c, p) in bk.key_params(n) {
        conds.push(format!("t.{} = {p}", quote_ident(c)));
    }
    conds.push(format!(
        "(t.{v} IS NULL OR (src.v, ${dev}::text) > (t.{v}, COALESCE(t.{d}, '')))",
        dev = n + 2
    ));
    let cond = conds.join(" AND ");
    match mode {
        OnDelete::Mark => {
            let mut sets = vec![
                format!("{} = now()", quote_ident(DELETED_AT_COLUMN)),
                format!("{v} = src.v"),
                format!("{d} = ${}::text", n + 2),
            ];
            if bk.stream == StreamColumn::Column {
                sets.push(format!(
                    "{} = ${}::bigint",
                    quote_ident(STREAM_COLUMN),
                    n + 3
                ));
            }
            let _ = write!(
                sql,
                ",\ngone AS (\n  UPDATE {target} AS t SET {}\n  FROM src WHERE {cond}\n  RETURNING 1\n)",
                sets.join(", ")
            );
        }
        OnDelete::Delete | OnDelete::Ignore => {
            let _ = write!(
                sql,
                ",\ngone AS (\n  DELETE FROM {target} AS t USING src WHERE {cond}\n  RETURNING 1\n)"
            );
        }
    }
    sql.push_str("\nSELECT count(*) FROM gone");
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

    const TEXT: [&str; 3] = ["text[]"; 3];
    const NO_BK: Bookkeeping = Bookkeeping {
        device_key: false,
        stream: StreamColumn::None,
    };
    const DEVICE_KEY: Bookkeeping = Bookkeeping {
        device_key: true,
        stream: StreamColumn::None,
    };

    fn col(name: &str, ty: &str) -> TargetColumn {
        TargetColumn {
            name: name.into(),
            type_sql: ty.into(),
            stored_sql: ty.into(),
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
            NO_BK,
            Policy::LastWriterWins,
            true,
            false,
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
            NO_BK,
            Policy::FirstWriterWins,
            true,
            false,
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
        let sql = upsert_sql(
            "t",
            &cols,
            &TEXT,
            &[0],
            NO_BK,
            Policy::InsertOnly,
            true,
            false,
        );
        assert!(sql.contains(r#"ON CONFLICT ("k") DO NOTHING"#), "{sql}");
        assert!(!sql.contains("DO UPDATE"), "{sql}");
    }

    #[test]
    fn device_in_the_key_joins_the_conflict_target_only() {
        let cols = [col("id", "bigint"), col("x", "text")];
        let sql = upsert_sql(
            "t",
            &cols,
            &TEXT,
            &[0],
            DEVICE_KEY,
            Policy::LastWriterWins,
            true,
            false,
        );
        assert!(
            sql.contains(r#"ON CONFLICT ("id", "sluice_device")"#),
            "{sql}"
        );
        assert!(sql.contains("SELECT DISTINCT ON (s.c1)"), "{sql}");
    }

    #[test]
    fn key_only_table_still_updates_bookkeeping() {
        let cols = [col("k", "text")];
        let sql = upsert_sql(
            "t",
            &cols,
            &TEXT,
            &[0],
            NO_BK,
            Policy::LastWriterWins,
            true,
            false,
        );
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
            NO_BK,
            Policy::LastWriterWins,
            true,
            false,
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
            NO_BK,
            Policy::LastWriterWins,
            false,
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
            insert_sql(
                r#""s"."t""#,
                &cols,
                &["text[]", "bigint[]", "text[]"],
                NO_BK
            ),
            expected
        );
        assert_eq!(
            probe_sql("t", &cols, &[0], Some(1), DEVICE_KEY),
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

    fn stored(name: &str, ty: &str, stored: &str) -> TargetColumn {
        TargetColumn {
            name: name.into(),
            type_sql: ty.into(),
            stored_sql: stored.into(),
        }
    }

    const STREAM_KEY: Bookkeeping = Bookkeeping {
        device_key: true,
        stream: StreamColumn::Key,
    };

    #[test]
    fn the_stream_is_written_and_probed_beside_the_device() {
        let cols = [col("loc", "text"), col("id", "bigint"), col("x", "text")];
        let arrays = ["text[]", "bigint[]", "text[]"];
        assert_eq!(
            insert_sql("t", &cols, &arrays, STREAM_KEY),
            "INSERT INTO t (\"loc\", \"id\", \"x\", \"sluice_device\", \"sluice_stream\", \"sluice_version\")
SELECT c1, c2, c3, $5::text, $6::bigint, v FROM (
  SELECT unnest($1::text[])::text AS c1, unnest($2::bigint[])::bigint AS c2, unnest($3::text[])::text AS c3, unnest($4::bigint[]) AS v
) AS s"
        );
        assert_eq!(
            probe_sql("t", &cols, &[0], Some(1), STREAM_KEY),
            r#"SELECT EXISTS (SELECT 1 FROM t WHERE "loc" = CAST($1::text AS text) AND "id" BETWEEN $2::bigint AND $3::bigint AND "sluice_device" = $4::text AND "sluice_stream" = $5::bigint)"#
        );
        let sql = upsert_sql(
            "t",
            &cols,
            &arrays,
            &[0, 1],
            STREAM_KEY,
            Policy::LastWriterWins,
            false,
            false,
        );
        assert!(
            sql.contains(r#"ON CONFLICT ("loc", "id", "sluice_device", "sluice_stream") DO UPDATE SET "x" = EXCLUDED."x", "sluice_device" = EXCLUDED."sluice_device", "sluice_version""#),
            "{sql}"
        );
        assert!(
            sql.contains("SELECT c1, c2, c3, $5::text, $6::bigint, v FROM src"),
            "{sql}"
        );
        // Outside the key, the stream is bookkeeping that follows the row.
        let column = Bookkeeping {
            device_key: false,
            stream: StreamColumn::Column,
        };
        let sql = upsert_sql(
            "t",
            &cols,
            &arrays,
            &[0, 1],
            column,
            Policy::LastWriterWins,
            false,
            false,
        );
        assert!(
            sql.contains(r#"ON CONFLICT ("loc", "id") DO UPDATE SET "x" = EXCLUDED."x", "sluice_device" = EXCLUDED."sluice_device", "sluice_stream" = EXCLUDED."sluice_stream", "sluice_version" = EXCLUDED."sluice_version""#),
            "{sql}"
        );
        assert!(
            !probe_sql("t", &cols, &[0], Some(1), column).contains("sluice_stream"),
            "not in the key, not probed"
        );
    }

    #[test]
    fn a_fork_batch_leaves_out_rows_its_lineage_sent() {
        let cols = [
            col("loc", "text"),
            col("id", "bigint"),
            stored("x", "numeric", "numeric(6,2)"),
        ];
        let arrays = ["text[]", "bigint[]", "text[]"];
        let sql = upsert_sql(
            "t",
            &cols,
            &arrays,
            &[0, 1],
            STREAM_KEY,
            Policy::LastWriterWins,
            true,
            true,
        );
        let expected = r#"WITH RECURSIVE anc(stream) AS (
  SELECT $7::bigint
  UNION
  SELECT st.parent_stream FROM sluice.streams AS st JOIN anc ON st.stream_id = anc.stream
  WHERE st.device_id = $5::text AND st.parent_stream IS NOT NULL
),
lin(stream) AS (
  SELECT stream FROM anc
  UNION
  SELECT st.stream_id FROM sluice.streams AS st JOIN lin ON st.parent_stream = lin.stream
  WHERE st.device_id = $5::text AND st.stream_id <> $6::bigint
),
src AS (
  SELECT DISTINCT ON (s.c1, s.c2) s.* FROM (
    SELECT unnest($1::text[])::text AS c1, unnest($2::bigint[])::bigint AS c2, unnest($3::text[])::numeric AS c3, unnest($4::bigint[]) AS v
  ) AS s
  WHERE NOT (s.v <= $8::bigint AND EXISTS (
    SELECT 1 FROM t AS a WHERE a."loc" = s.c1 AND a."id" = s.c2 AND a."sluice_device" = $5::text AND a."sluice_stream" IN (SELECT stream FROM lin) AND ROW(a."x"::text) IS NOT DISTINCT FROM ROW(CAST(s.c3 AS numeric(6,2))::text)))
  ORDER BY s.c1, s.c2, s.v DESC
),
up AS (
  INSERT INTO t AS t ("loc", "id", "x", "sluice_device", "sluice_stream", "sluice_version")
  SELECT c1, c2, c3, $5::text, $6::bigint, v FROM src
"#;
        assert!(sql.starts_with(expected), "{sql}");
        // Without a stream column there is nothing to compare across streams.
        let plain = upsert_sql(
            "t",
            &cols,
            &arrays,
            &[0, 1],
            DEVICE_KEY,
            Policy::LastWriterWins,
            true,
            true,
        );
        assert_eq!(
            plain,
            upsert_sql(
                "t",
                &cols,
                &arrays,
                &[0, 1],
                DEVICE_KEY,
                Policy::LastWriterWins,
                true,
                false
            )
        );
        assert!(!plain.contains("anc"), "{plain}");
    }

    #[test]
    fn the_fork_check_compares_content_as_stored() {
        let cols = [
            col("loc", "text"),
            col("id", "bigint"),
            stored("x", "numeric", "numeric(6,2)"),
            col("j", "json"),
        ];
        let arrays = ["text[]", "bigint[]", "text[]", "text[]"];
        // Mutable table: natural key, no device or stream in it.
        let sql = fork_check_sql(
            "t",
            &cols,
            &arrays,
            &[0, 1],
            NO_BK,
            Policy::LastWriterWins,
            true,
            None,
        )
        .unwrap();
        assert_eq!(
            sql,
            r#"WITH src AS (
  SELECT DISTINCT ON (s.c1, s.c2) s.* FROM (
    SELECT unnest($1::text[])::text AS c1, unnest($2::bigint[])::bigint AS c2, unnest($3::text[])::numeric AS c3, unnest($4::text[])::json AS c4, unnest($5::bigint[]) AS v
  ) AS s
  ORDER BY s.c1, s.c2, s.v DESC
)
SELECT s.v FROM src AS s JOIN t AS t ON t."loc" = s.c1 AND t."id" = s.c2
WHERE t."sluice_device" = $6::text AND t."sluice_version" >= s.v
  AND ROW(t."x"::text, t."j"::text) IS DISTINCT FROM ROW(CAST(s.c3 AS numeric(6,2))::text, CAST(s.c4 AS json)::text)
ORDER BY s.v LIMIT 1"#
        );
        // A published target: its cloud-owned columns are not compared, and
        // with none left there is no check.
        let kept = fork_check_sql_keeping(
            "t",
            &cols,
            &arrays,
            &[0, 1],
            NO_BK,
            Policy::LastWriterWins,
            true,
            None,
            &["j".to_string()],
        )
        .unwrap();
        assert!(
            kept.contains(
                "AND ROW(t.\"x\"::text) IS DISTINCT FROM ROW(CAST(s.c3 AS numeric(6,2))::text)"
            ),
            "{kept}"
        );
        assert!(fork_check_sql_keeping(
            "t",
            &cols,
            &arrays,
            &[0, 1],
            NO_BK,
            Policy::LastWriterWins,
            true,
            None,
            &["j".to_string(), "x".to_string()],
        )
        .is_none());
        // Append-only table: the device and stream are in the key.
        let sql = fork_check_sql(
            "t",
            &cols,
            &arrays,
            &[0, 1],
            STREAM_KEY,
            Policy::InsertOnly,
            false,
            None,
        )
        .unwrap();
        assert!(
            sql.contains(r#"JOIN t AS t ON t."loc" = s.c1 AND t."id" = s.c2 AND t."sluice_device" = $6::text AND t."sluice_stream" = $7::bigint
WHERE t."sluice_version" >= s.v"#),
            "{sql}"
        );
        assert!(!sql.contains("DISTINCT ON"), "{sql}");
        // Only key columns: the content cannot differ.
        assert_eq!(
            fork_check_sql(
                "t",
                &cols[..2],
                &arrays[..2],
                &[0, 1],
                NO_BK,
                Policy::LastWriterWins,
                true,
                None
            ),
            None
        );
    }

    #[test]
    fn a_new_epochs_batch_checks_only_rows_after_its_fork() {
        let cols = [col("loc", "text"), col("id", "bigint"), col("x", "text")];
        let arrays = ["text[]", "bigint[]", "text[]"];
        let sql = fork_check_sql(
            "t",
            &cols,
            &arrays,
            &[0, 1],
            NO_BK,
            Policy::LastWriterWins,
            true,
            Some(6),
        )
        .unwrap();
        assert!(
            sql.contains(r#"WHERE t."sluice_device" = $5::text AND s.v > $6::bigint AND t."sluice_version" >= s.v"#),
            "{sql}"
        );
    }

    #[test]
    fn hostile_names_are_quoted_in_the_fork_statements() {
        let cols = [
            col(r#"k"); DROP TABLE x; --"#, "text"),
            col("Mixed Case", "text"),
        ];
        let sql = fork_check_sql(
            "t",
            &cols,
            &TEXT,
            &[0],
            NO_BK,
            Policy::LastWriterWins,
            true,
            None,
        )
        .unwrap();
        assert!(
            sql.contains(r#"t."k""); DROP TABLE x; --" = s.c1"#),
            "{sql}"
        );
        assert!(sql.contains(r#"ROW(t."Mixed Case"::text)"#), "{sql}");
        let sql = upsert_sql(
            "t",
            &cols,
            &TEXT,
            &[0],
            STREAM_KEY,
            Policy::LastWriterWins,
            true,
            true,
        );
        assert!(
            sql.contains(r#"a."k""); DROP TABLE x; --" = s.c1"#),
            "{sql}"
        );
    }

    #[test]
    fn on_delete_modes_parse_and_apply_only_under_last_writer_wins() {
        assert_eq!(OnDelete::parse("delete"), Some(OnDelete::Delete));
        assert_eq!(OnDelete::parse("mark"), Some(OnDelete::Mark));
        assert_eq!(OnDelete::parse("ignore"), Some(OnDelete::Ignore));
        assert_eq!(OnDelete::parse("Delete"), None);
        assert_eq!(OnDelete::default(), OnDelete::Delete);
        assert!(OnDelete::Delete.applies(Policy::LastWriterWins));
        assert!(OnDelete::Mark.applies(Policy::LastWriterWins));
        assert!(!OnDelete::Ignore.applies(Policy::LastWriterWins));
        assert!(!OnDelete::Delete.applies(Policy::FirstWriterWins));
        assert!(!OnDelete::Delete.applies(Policy::InsertOnly));
    }

    #[test]
    fn tombstones_delete_only_older_rows_of_their_key_and_are_remembered() {
        let cols = [col("loc", "text"), col("cam", "text"), col("name", "text")];
        let sql = tombstones_sql(
            "\"public\".\"cameras\"",
            4242,
            &cols,
            &TEXT,
            &[0, 1],
            DEVICE_KEY,
            OnDelete::Delete,
        );
        // The newest tombstone of a key in the batch, remembered with the
        // key as the target stores it, replacing only an older one.
        assert!(sql.contains("SELECT DISTINCT ON (s.c1, s.c2) s.*"), "{sql}");
        assert!(sql.contains("ORDER BY s.c1, s.c2, s.v DESC"), "{sql}");
        assert!(sql.contains(
            "SELECT 4242::oid::regclass, ARRAY[CAST(src.c1 AS text)::text, CAST(src.c2 AS text)::text, $5::text]::text[], src.v, $5::text FROM src"
        ), "{sql}");
        assert!(
            sql.contains(
                "WHERE (EXCLUDED.version, EXCLUDED.device_id) > (tb.version, tb.device_id)"
            ),
            "{sql}"
        );
        // A delete older than the cloud's row does not win.
        assert!(sql.contains(
            "DELETE FROM \"public\".\"cameras\" AS t USING src WHERE t.\"loc\" = src.c1 AND t.\"cam\" = src.c2 AND t.\"sluice_device\" = $5::text AND (t.\"sluice_version\" IS NULL OR (src.v, $5::text) > (t.\"sluice_version\", COALESCE(t.\"sluice_device\", '')))"
        ), "{sql}");
        assert!(sql.ends_with("SELECT count(*) FROM gone"), "{sql}");
    }

    #[test]
    fn mark_sets_deleted_at_version_and_device() {
        let cols = [col("id", "bigint"), col("name", "text")];
        let bk = Bookkeeping {
            device_key: false,
            stream: StreamColumn::Column,
        };
        let sql = tombstones_sql(
            "t",
            7,
            &cols,
            &["bigint[]", "text[]"],
            &[0],
            bk,
            OnDelete::Mark,
        );
        assert!(sql.contains(
            "UPDATE t AS t SET \"sluice_deleted_at\" = now(), \"sluice_version\" = src.v, \"sluice_device\" = $4::text, \"sluice_stream\" = $5::bigint"
        ), "{sql}");
        assert!(!sql.contains("DELETE FROM t"), "{sql}");
        assert!(
            sql.contains("ARRAY[CAST(src.c1 AS bigint)::text]::text[]"),
            "{sql}"
        );
    }

    #[test]
    fn an_upsert_into_a_target_with_tombstones_leaves_out_buried_rows() {
        let cols = [col("id", "bigint"), col("name", "text")];
        let arrays = ["bigint[]", "text[]"];
        let plain = upsert_sql(
            "t",
            &cols,
            &arrays,
            &[0],
            NO_BK,
            Policy::LastWriterWins,
            true,
            false,
        );
        assert_eq!(
            plain,
            upsert_sql_with(
                "t",
                &cols,
                &arrays,
                &[0],
                NO_BK,
                Policy::LastWriterWins,
                true,
                false,
                DeleteOptions::default(),
                false
            )
        );
        assert!(!plain.contains("tombstones") && !plain.contains("sluice_deleted_at"));
        // A published target: the cloud's columns are never updated.
        let kept = upsert_sql_keeping(
            "t",
            &cols,
            &arrays,
            &[0],
            NO_BK,
            Policy::LastWriterWins,
            true,
            false,
            DeleteOptions::default(),
            false,
            &[cols[1].name.clone()],
            None,
        );
        let set = kept.split("DO UPDATE SET").nth(1).unwrap();
        assert!(
            !set.contains(&format!("{} =", quote_ident(&cols[1].name))),
            "{kept}"
        );
        assert!(set.contains("\"sluice_version\" = EXCLUDED"), "{kept}");
        assert!(kept
            .split("DO UPDATE SET")
            .next()
            .unwrap()
            .contains(&quote_ident(&cols[1].name)));
        let sql = upsert_sql_with(
            "t",
            &cols,
            &arrays,
            &[0],
            NO_BK,
            Policy::LastWriterWins,
            true,
            false,
            DeleteOptions {
                tombstones_of: Some(99),
                clear_mark: true,
            },
            false,
        );
        assert!(sql.contains(
            "WHERE NOT EXISTS (SELECT 1 FROM sluice.tombstones AS tb WHERE tb.target = 99::oid::regclass AND tb.key = ARRAY[CAST(s.c1 AS bigint)::text]::text[] AND (tb.version, tb.device_id) > (s.v, $4::text))"
        ), "{sql}");
        assert!(
            sql.contains(
                "\"sluice_version\" = EXCLUDED.\"sluice_version\", \"sluice_deleted_at\" = NULL"
            ),
            "{sql}"
        );
        // With a fork, both filters.
        let bk = Bookkeeping {
            device_key: true,
            stream: StreamColumn::Key,
        };
        let sql = upsert_sql_with(
            "t",
            &cols,
            &arrays,
            &[0],
            bk,
            Policy::LastWriterWins,
            true,
            true,
            DeleteOptions {
                tombstones_of: Some(99),
                clear_mark: false,
            },
            false,
        );
        assert!(sql.contains("IN (SELECT stream FROM lin)"), "{sql}");
        assert!(
            sql.contains("AND NOT EXISTS (SELECT 1 FROM sluice.tombstones"),
            "{sql}"
        );
        assert!(
            sql.contains("ARRAY[CAST(s.c1 AS bigint)::text, $4::text, $5::bigint::text]::text[]"),
            "{sql}"
        );
    }

    fn resend_upsert(
        cols: &[TargetColumn],
        keys: &[usize],
        bk: Bookkeeping,
        policy: Policy,
    ) -> String {
        let arrays = vec!["text[]"; cols.len()];
        upsert_sql_with(
            "t",
            cols,
            &arrays,
            keys,
            bk,
            policy,
            true,
            false,
            DeleteOptions::default(),
            true,
        )
    }

    #[test]
    fn a_resend_replaces_a_row_of_an_equal_pair_with_other_content() {
        let cols = [
            col("id", "bigint"),
            col("state", "text"),
            col("level", "integer"),
        ];
        let sql = resend_upsert(&cols, &[0], NO_BK, Policy::LastWriterWins);
        let expected = r#"WITH src AS (
  SELECT DISTINCT ON (s.c1) s.* FROM (
    SELECT unnest($1::text[])::bigint AS c1, unnest($2::text[])::text AS c2, unnest($3::text[])::integer AS c3, unnest($4::bigint[]) AS v
  ) AS s
  ORDER BY s.c1, s.v DESC
),
up AS (
  INSERT INTO t AS t ("id", "state", "level", "sluice_device", "sluice_version")
  SELECT c1, c2, c3, $5::text, v FROM src
  ON CONFLICT ("id") DO UPDATE SET "state" = EXCLUDED."state", "level" = EXCLUDED."level", "sluice_device" = EXCLUDED."sluice_device", "sluice_version" = EXCLUDED."sluice_version"
  WHERE t."sluice_version" IS NULL OR (EXCLUDED."sluice_version", EXCLUDED."sluice_device") > (t."sluice_version", COALESCE(t."sluice_device", ''))
     OR ((EXCLUDED."sluice_version", EXCLUDED."sluice_device") = (t."sluice_version", t."sluice_device")
         AND ROW(t."state"::text, t."level"::text) IS DISTINCT FROM ROW(EXCLUDED."state"::text, EXCLUDED."level"::text))
  RETURNING (t.xmax = 0) AS ins
)
SELECT count(*) FILTER (WHERE ins), count(*) FILTER (WHERE NOT ins) FROM up"#;
        assert_eq!(sql, expected);
        // First writer wins: the lower pair, or the equal one with other
        // content.
        let fww = resend_upsert(&cols, &[0], NO_BK, Policy::FirstWriterWins);
        assert!(
            fww.contains(r#"WHERE (EXCLUDED."sluice_version", EXCLUDED."sluice_device") < (t."sluice_version", COALESCE(t."sluice_device", ''))
     OR ((EXCLUDED."sluice_version", EXCLUDED."sluice_device") = (t."sluice_version", t."sluice_device")
         AND ROW(t."state"::text, t."level"::text) IS DISTINCT FROM"#),
            "{fww}"
        );
        // Insert only never changes a row, re-sent or not.
        let io = resend_upsert(&cols, &[0], NO_BK, Policy::InsertOnly);
        assert!(io.contains(r#"ON CONFLICT ("id") DO NOTHING"#), "{io}");
        assert_eq!(
            io,
            upsert_sql(
                "t",
                &cols,
                &TEXT,
                &[0],
                NO_BK,
                Policy::InsertOnly,
                true,
                false
            )
        );
        assert_eq!(
            Policy::InsertOnly.resend_update_condition(&cols, &[0]),
            None
        );
        // An ordinary batch keeps the policy's condition alone.
        let plain = upsert_sql(
            "t",
            &cols,
            &TEXT,
            &[0],
            NO_BK,
            Policy::LastWriterWins,
            true,
            false,
        );
        assert!(!plain.contains("IS DISTINCT FROM"), "{plain}");
    }

    #[test]
    fn a_resend_compares_only_columns_outside_the_key() {
        // The append-only shape: device and stream in the key, the stream
        // not among the compared columns.
        let cols = [
            col("loc", "text"),
            col("id", "bigint"),
            col("people", "integer"),
        ];
        let sql = resend_upsert(&cols, &[0, 1], STREAM_KEY, Policy::LastWriterWins);
        assert!(
            sql.contains(
                r#"ON CONFLICT ("loc", "id", "sluice_device", "sluice_stream") DO UPDATE"#
            ),
            "{sql}"
        );
        assert!(
            sql.contains(
                r#"AND ROW(t."people"::text) IS DISTINCT FROM ROW(EXCLUDED."people"::text))"#
            ),
            "{sql}"
        );
        // Only key columns: nothing can differ, the policy's condition.
        assert_eq!(
            Policy::LastWriterWins.resend_update_condition(&cols[..2], &[0, 1]),
            Policy::LastWriterWins.update_condition()
        );
        // Hostile names are quoted in the comparison too.
        let cols = [col("k", "text"), col(r#"x"); DROP TABLE y; --"#, "text")];
        let c = Policy::FirstWriterWins
            .resend_update_condition(&cols, &[0])
            .unwrap();
        assert!(
            c.contains(r#"ROW(t."x""); DROP TABLE y; --"::text)"#),
            "{c}"
        );
    }

    #[test]
    fn rows_cut_before_a_cloud_delete_was_pulled_are_left_out() {
        let cols = vec![
            col("site", "text"),
            col("id", "bigint"),
            col("status", "text"),
        ];
        let arrays = TEXT;
        let unseen = UnseenDeletes {
            key: vec![0, 1],
            tenant: ChangeTenant::Column(0),
            first_param: 6,
        };
        let sql = upsert_sql_keeping(
            "t",
            &cols,
            &arrays,
            &[0, 1],
            NO_BK,
            Policy::LastWriterWins,
            true,
            false,
            DeleteOptions {
                tombstones_of: Some(99),
                clear_mark: false,
            },
            false,
            &[],
            Some(&unseen),
        );
        let cond = "CASE WHEN EXISTS (SELECT 1 FROM t AS live WHERE live.\"site\" = s.c1 AND live.\"id\" = s.c2) THEN true \
             ELSE NOT EXISTS (SELECT 1 FROM sluice.changes AS ch WHERE ch.edge_table = $6::text AND ch.tenant = CAST(s.c1 AS text)::text \
             AND ch.position > $7::bigint AND ch.key = ARRAY[CAST(s.c1 AS text)::text, CAST(s.c2 AS bigint)::text]::text[]) END";
        assert!(sql.contains(cond), "{sql}");
        // Beside the tombstones' filter, in the rows' WHERE.
        assert!(sql.contains("(s.v, $5::text))\n  AND CASE WHEN"), "{sql}");
        let unscoped = UnseenDeletes {
            tenant: ChangeTenant::Unscoped,
            ..unseen.clone()
        };
        assert!(unscoped.condition_sql("t", &cols).contains(
            "ch.edge_table = $6::text AND ch.tenant IS NULL AND ch.position > $7::bigint"
        ));
        let any = UnseenDeletes {
            tenant: ChangeTenant::Any,
            ..unseen
        };
        assert!(any
            .condition_sql("t", &cols)
            .contains("ch.edge_table = $6::text AND ch.position > $7::bigint"));
    }
}
