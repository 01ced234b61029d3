//! The column plan of one batch: which batch column goes to which target
//! column, what conversion its values need, which columns are the key, and the
//! shape of the batch's keys (which decides between the plain `INSERT` and the
//! upsert of [`crate::sqlgen`]).
//!
//! The plan is made in two steps around one catalog query, which the caller
//! runs (through SPI in the extension, through a client elsewhere):
//!
//! 1. [`BatchColumns::new`] takes the batch's header columns, leaves out the
//!    bookkeeping columns and refuses a column named twice;
//! 2. [`CATALOG_COLUMNS_SQL`] with the target's OID and
//!    [`BatchColumns::names`] returns one row per name, read into
//!    [`CatalogColumn`]s by [`CatalogColumn::from_row`];
//! 3. [`ColumnPlan::new`] checks them against the registration's keys.
//!
//! Then [`ColumnPlan::params`] converts the batch's values
//! ([`crate::convert`]) and [`ColumnPlan::key_shape`] looks at its keys.

use std::collections::HashSet;
use std::hash::Hasher;

use fnv::FnvHasher;

use sluice_wire::{Batch, BatchId, Column};

use crate::convert::{column_to_param, ColumnKind, ConvertError, Native, Param};
use crate::sqlgen::{
    Bookkeeping, StreamColumn, TargetColumn, DEVICE_COLUMN, STREAM_COLUMN, VERSION_COLUMN,
};
use crate::sqlstate::SqlState;

/// Why a batch cannot be applied to its target as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// The batch names a column twice.
    DuplicateColumn {
        /// The column's name.
        column: String,
    },
    /// The target has no column of this name.
    MissingColumn {
        /// The column's name.
        column: String,
    },
    /// The target's column is `GENERATED` and cannot be written.
    GeneratedColumn {
        /// The column's name.
        column: String,
    },
    /// A key column of the registration is not among the batch's columns.
    MissingKey {
        /// The column's name.
        column: String,
    },
    /// The catalog query returned another number of rows than it was given
    /// names: a broken invariant.
    CatalogMismatch {
        /// How many names it was given.
        names: usize,
        /// How many rows it returned.
        rows: usize,
    },
    /// A value of `column` cannot be given to PostgreSQL.
    Convert {
        /// The column's name.
        column: String,
        /// What is wrong with the value.
        error: ConvertError,
    },
}

impl PlanError {
    /// The SQLSTATE this error is raised with.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            PlanError::DuplicateColumn { .. } => SqlState::DataCorrupted,
            PlanError::MissingColumn { .. } | PlanError::MissingKey { .. } => {
                SqlState::UndefinedColumn
            }
            PlanError::GeneratedColumn { .. } => SqlState::GeneratedAlways,
            PlanError::CatalogMismatch { .. } => SqlState::InternalError,
            PlanError::Convert { error, .. } => match error {
                ConvertError::NulInText { .. } => SqlState::UntranslatableCharacter,
                ConvertError::NullKey { .. } => SqlState::NotNullViolation,
                ConvertError::BadVector { .. } => SqlState::DataException,
                ConvertError::BadEpoch { .. } => SqlState::DatetimeFieldOverflow,
            },
        }
    }

    /// The error's message, naming the batch and, where it matters, the
    /// target table (`schema.table`); without the `sluice.ingest: ` prefix.
    pub fn message(&self, id: &BatchId, target_name: &str) -> String {
        match self {
            PlanError::DuplicateColumn { column } => {
                format!("batch {id}: column '{column}' appears twice")
            }
            PlanError::MissingColumn { column } => format!(
                "batch {id}: column '{column}' does not exist in target table {target_name}; add it to the table or exclude it at the edge"
            ),
            PlanError::GeneratedColumn { column } => format!(
                "batch {id}: column '{column}' of target table {target_name} is generated and cannot be written"
            ),
            PlanError::MissingKey { column } => format!(
                "batch {id}: key column '{column}' of target table {target_name} is not in the batch"
            ),
            PlanError::CatalogMismatch { names, rows } => format!(
                "internal error: catalog lookup returned {rows} columns for {names} names"
            ),
            PlanError::Convert { column, error } => match error {
                ConvertError::NulInText { row } => format!(
                    "batch {id}, row {}, column '{column}': text contains a NUL character, which PostgreSQL cannot store",
                    row + 1
                ),
                ConvertError::BadVector { row, reason } => format!(
                    "batch {id}, row {}, column '{column}' of {target_name}: the blob is not a vector for this column: {reason}",
                    row + 1
                ),
                ConvertError::BadEpoch { row, value } => format!(
                    "batch {id}, row {}, column '{column}': {value} is not a Unix time between years 1 and 9999",
                    row + 1
                ),
                ConvertError::NullKey { row } => {
                    format!("batch {id}, row {}: key column '{column}' is NULL", row + 1)
                }
            },
        }
    }
}

/// The batch's columns that map to target columns: all but the bookkeeping
/// columns, which come from the batch's versions, device and stream (an edge
/// table tracked as mutable has its own `sluice_version` column, equal to the
/// row's version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchColumns {
    /// Their names, in the batch's order: the `$2` of [`CATALOG_COLUMNS_SQL`].
    pub names: Vec<String>,
    /// For each of `names`, its index among the batch's columns.
    pub batch_index: Vec<usize>,
}

impl BatchColumns {
    /// The mapped columns of a batch header's `columns`; a column named twice
    /// is an error.
    pub fn new(columns: &[Column]) -> Result<BatchColumns, PlanError> {
        let mut names: Vec<String> = Vec::with_capacity(columns.len());
        let mut batch_index = Vec::with_capacity(columns.len());
        for (i, c) in columns.iter().enumerate() {
            if c.name == DEVICE_COLUMN || c.name == VERSION_COLUMN || c.name == STREAM_COLUMN {
                continue;
            }
            if names.contains(&c.name) {
                return Err(PlanError::DuplicateColumn {
                    column: c.name.clone(),
                });
            }
            names.push(c.name.clone());
            batch_index.push(i);
        }
        Ok(BatchColumns { names, batch_index })
    }
}

/// The catalog query of a plan. Parameters: `$1` the target's OID (`oid`),
/// `$2` the column names (`text[]`). One row per name, in order: the name
/// (`text`), the type without modifier as `format_type` spells it (`text`,
/// NULL when the target has no such column), whether it is generated
/// (`bool`), its class (`'vector'`, `'timestamp'` or `'plain'`), its type
/// modifier (`int4`), its native array (`'int'`, `'float8'`,
/// `'timestamptz'` or `''`), its type with the modifier (`text`). Read each
/// row with [`CatalogColumn::from_row`].
pub const CATALOG_COLUMNS_SQL: &str = "SELECT b.name, format_type(a.atttypid, NULL), a.attgenerated <> '',
                CASE WHEN ty.typname = 'vector' THEN 'vector'
                     WHEN a.atttypid IN ('timestamptz'::regtype, 'timestamp'::regtype) THEN 'timestamp'
                     ELSE 'plain' END,
                a.atttypmod,
                CASE WHEN a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype) THEN 'int'
                     WHEN a.atttypid = 'float8'::regtype THEN 'float8'
                     WHEN a.atttypid = 'timestamptz'::regtype THEN 'timestamptz'
                     ELSE '' END,
                format_type(a.atttypid, a.atttypmod)
         FROM unnest($2::text[]) WITH ORDINALITY AS b(name, ord)
         LEFT JOIN pg_attribute a
           ON a.attrelid = $1 AND a.attname = b.name AND a.attnum > 0 AND NOT a.attisdropped
         LEFT JOIN pg_type ty ON ty.oid = a.atttypid
         ORDER BY b.ord";

/// One row of [`CATALOG_COLUMNS_SQL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogColumn {
    /// The name asked for.
    pub name: String,
    /// The column's type (`format_type(oid, NULL)`), `None` when the target
    /// has no column of this name.
    pub type_sql: Option<String>,
    /// The column is `GENERATED`.
    pub generated: bool,
    /// The conversion its values need.
    pub kind: ColumnKind,
    /// The native array its type takes.
    pub native: Native,
    /// The column's type with its modifier (`format_type(oid, typmod)`),
    /// `None` when the target has no such column.
    pub stored_sql: Option<String>,
}

impl CatalogColumn {
    /// A row of [`CATALOG_COLUMNS_SQL`], column by column (NULLs as `None`).
    pub fn from_row(
        name: String,
        type_sql: Option<String>,
        generated: Option<bool>,
        class: Option<&str>,
        typmod: Option<i32>,
        native: Option<&str>,
        stored_sql: Option<String>,
    ) -> CatalogColumn {
        let kind = match class {
            Some("vector") => ColumnKind::Vector {
                dims: typmod
                    .and_then(|m| usize::try_from(m).ok())
                    .filter(|&d| d > 0),
            },
            Some("timestamp") => ColumnKind::Timestamp,
            _ => ColumnKind::Plain,
        };
        let native = match native {
            Some("int") => Native::Int,
            Some("float8") => Native::Float8,
            Some("timestamptz") => Native::Timestamptz,
            _ => Native::None,
        };
        CatalogColumn {
            name,
            type_sql,
            generated: generated.unwrap_or(false),
            kind,
            native,
            stored_sql,
        }
    }
}

/// Which batch columns go where, checked against the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPlan {
    /// Target columns, in the statement's order.
    pub columns: Vec<TargetColumn>,
    /// For each of `columns`, its index among the batch's columns.
    pub batch_index: Vec<usize>,
    /// For each of `columns`, the conversion its values need.
    pub kinds: Vec<ColumnKind>,
    /// For each of `columns`, the native array its type takes, if any.
    pub natives: Vec<Native>,
    /// Indexes into `columns` of the key columns, in registration order
    /// (without `sluice_device`).
    pub keys: Vec<usize>,
    /// The key also includes `sluice_device` (filled from the batch header).
    pub device_key: bool,
    /// The target's `sluice_stream` column (filled from the batch header),
    /// in the key or not: [`ColumnPlan::new`] sees the key,
    /// [`ColumnPlan::with_stream_column`] the column.
    pub stream: StreamColumn,
}

impl ColumnPlan {
    /// The plan of `batch` columns whose catalog rows are `catalog` (in the
    /// same order), for a registration keyed by `key_columns`: every column
    /// exists in the target and is writable, and every key column is in the
    /// batch (`sluice_device` and `sluice_stream` are, always: they come from
    /// the header).
    pub fn new(
        batch: BatchColumns,
        catalog: Vec<CatalogColumn>,
        key_columns: &[String],
    ) -> Result<ColumnPlan, PlanError> {
        if catalog.len() != batch.names.len() {
            return Err(PlanError::CatalogMismatch {
                names: batch.names.len(),
                rows: catalog.len(),
            });
        }
        let n = catalog.len();
        let mut columns = Vec::with_capacity(n);
        let mut kinds = Vec::with_capacity(n);
        let mut natives = Vec::with_capacity(n);
        for c in catalog {
            let Some(type_sql) = c.type_sql else {
                return Err(PlanError::MissingColumn { column: c.name });
            };
            if c.generated {
                return Err(PlanError::GeneratedColumn { column: c.name });
            }
            kinds.push(c.kind);
            natives.push(c.native);
            let stored_sql = c.stored_sql.unwrap_or_else(|| type_sql.clone());
            columns.push(TargetColumn {
                name: c.name,
                type_sql,
                stored_sql,
            });
        }
        let mut keys = Vec::with_capacity(key_columns.len());
        let mut device_key = false;
        let mut stream = StreamColumn::None;
        for k in key_columns {
            if k == DEVICE_COLUMN {
                device_key = true;
                continue;
            }
            if k == STREAM_COLUMN {
                stream = StreamColumn::Key;
                continue;
            }
            let Some(i) = columns.iter().position(|c| &c.name == k) else {
                return Err(PlanError::MissingKey { column: k.clone() });
            };
            keys.push(i);
        }
        Ok(ColumnPlan {
            columns,
            batch_index: batch.batch_index,
            kinds,
            natives,
            keys,
            device_key,
            stream,
        })
    }

    /// The plan for a target that has (`true`) or lacks a `sluice_stream`
    /// column: outside the key it is written like `sluice_device`; in the
    /// key, the target must have it.
    pub fn with_stream_column(mut self, has_stream: bool) -> Result<ColumnPlan, PlanError> {
        self.stream = match (self.stream, has_stream) {
            (StreamColumn::Key, true) => StreamColumn::Key,
            (StreamColumn::Key, false) => {
                return Err(PlanError::MissingKey {
                    column: STREAM_COLUMN.to_owned(),
                })
            }
            (_, true) => StreamColumn::Column,
            (_, false) => StreamColumn::None,
        };
        Ok(self)
    }

    /// The bookkeeping columns of the plan's statements.
    pub fn bookkeeping(&self) -> Bookkeeping {
        Bookkeeping {
            device_key: self.device_key,
            stream: self.stream,
        }
    }

    /// The batch's values as the statement's parameters, one per column of
    /// the plan (in its order): native arrays where the column takes them
    /// and every value fits, text otherwise ([`column_to_param`]).
    pub fn params(&self, batch: &Batch) -> Result<Vec<Param>, PlanError> {
        let mut params = Vec::with_capacity(self.columns.len());
        for (i, c) in self.columns.iter().enumerate() {
            let values = batch
                .columns
                .get(self.batch_index[i])
                .map_or(&[][..], Vec::as_slice);
            let is_key = self.keys.contains(&i);
            let param = column_to_param(values, is_key, self.kinds[i], self.natives[i]).map_err(
                |error| PlanError::Convert {
                    column: c.name.clone(),
                    error,
                },
            )?;
            params.push(param);
        }
        Ok(params)
    }

    /// The keys of `batch` when all but at most one key column hold one
    /// value (one tenant, one device) and the other one is an integer: the
    /// shape of every append-only table keyed by `(location, device, rowid)`.
    /// `params` are [`ColumnPlan::params`] of the same batch. `None` for any
    /// other batch, and for an empty one.
    pub fn key_shape(&self, batch: &Batch, params: &[Param]) -> Option<KeyShape> {
        let mut consts = Vec::new();
        let mut range = None;
        for &k in &self.keys {
            let values = batch.columns.get(self.batch_index[k])?;
            let first = values.first()?;
            if values.iter().all(|v| v == first) {
                // The value as the upsert converts it (an epoch into a
                // timestamp column is a date, a blob into a vector its text
                // form).
                let text = match params.get(k)? {
                    Param::Text(v) => v.first()?.clone()?,
                    Param::Int8(v) => v.first()?.as_ref()?.to_string(),
                    _ => return None,
                };
                consts.push((k, text));
                continue;
            }
            let Param::Int8(ints) = params.get(k)? else {
                return None;
            };
            if range.is_some() {
                return None;
            }
            range = Some((k, ints));
        }
        let rows = batch.versions.len();
        Some(match range {
            None => KeyShape {
                consts,
                range: None,
                distinct: rows == 1,
            },
            Some((k, ints)) => {
                // Keys are NULL-free (checked by the conversion).
                let ints: Vec<i64> = ints.iter().map(|i| i.unwrap_or_default()).collect();
                let increasing = ints.windows(2).all(|w| w[0] < w[1]);
                let distinct = increasing || {
                    let mut seen = HashSet::with_capacity(ints.len());
                    ints.iter().all(|i| seen.insert(*i))
                };
                let (lo, hi) = ints
                    .iter()
                    .fold((i64::MAX, i64::MIN), |(lo, hi), &i| (lo.min(i), hi.max(i)));
                KeyShape {
                    consts,
                    range: Some((k, lo, hi)),
                    distinct,
                }
            }
        })
    }
}

/// The value PostgreSQL quotes at the end of an input error's message
/// (`invalid input syntax for type timestamp with time zone: "yesterday"`,
/// `date/time field value out of range: "2025-13-01"`), unquoted.
pub fn quoted_value(message: &str) -> Option<String> {
    let (_, quoted) = message.rsplit_once(": \"")?;
    let value = quoted.strip_suffix('"')?;
    // PostgreSQL doubles nothing here: the value is as the input had it.
    Some(value.to_owned())
}

impl ColumnPlan {
    /// The first value of a timestamp column, sent as text, that equals
    /// `value`: its column's name and its row (from 0). `params` are
    /// [`ColumnPlan::params`] of the batch. For an error of PostgreSQL's
    /// input function, which names the value but not where it is.
    pub fn find_time_text(&self, params: &[Param], value: &str) -> Option<(&str, usize)> {
        self.columns
            .iter()
            .zip(&self.kinds)
            .zip(params)
            .filter(|((_, kind), _)| **kind == ColumnKind::Timestamp)
            .find_map(|((c, _), p)| match p {
                Param::Text(v) => v
                    .iter()
                    .position(|t| t.as_deref() == Some(value))
                    .map(|row| (c.name.as_str(), row)),
                _ => None,
            })
    }
}

/// The message of a value PostgreSQL could not read as a time, with where
/// it is (`row` from 0): `batch <id>, row <n>, column '<c>' of <target>:
/// <PostgreSQL's message>`.
pub fn bad_time_message(
    id: &BatchId,
    target_name: &str,
    column: &str,
    row: usize,
    pg_message: &str,
) -> String {
    format!(
        "batch {id}, row {}, column '{column}' of {target_name}: {pg_message}",
        row + 1
    )
}

/// The keys of a batch whose key columns are constant but for at most one
/// integer column ([`ColumnPlan::key_shape`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyShape {
    /// Indexes into the plan's columns of the constant key columns, and the
    /// value of each as text.
    pub consts: Vec<(usize, String)>,
    /// The varying integer key column, with its smallest and largest value.
    pub range: Option<(usize, i64, i64)>,
    /// No two rows of the batch have the same key.
    pub distinct: bool,
}

impl KeyShape {
    /// The advisory lock key that makes "no row in the key range" stay true
    /// until the batch is written: FNV-1a over the target's OID, the constant
    /// key values and, when the key includes them, the device and the stream.
    /// Two batches with the same target and constant keys take the same lock.
    pub fn lock_key(&self, target_oid: u32, device: Option<&str>, stream: Option<i64>) -> i64 {
        let mut h = FnvHasher::default();
        let mut eat = |bytes: &[u8]| {
            h.write(bytes);
            h.write_u8(0);
        };
        eat(b"sluice.ingest");
        eat(&target_oid.to_le_bytes());
        for (_, v) in &self.consts {
            eat(v.as_bytes());
        }
        if let Some(d) = device {
            eat(d.as_bytes());
        }
        if let Some(s) = stream {
            eat(&s.to_le_bytes());
        }
        // The bits as they are: any i64 is a lock key.
        h.finish() as i64
    }

    /// Indexes into the plan's columns of the constant key columns: the
    /// `consts` of [`crate::sqlgen::probe_sql`].
    pub fn const_columns(&self) -> Vec<usize> {
        self.consts.iter().map(|(k, _)| *k).collect()
    }
}

#[cfg(test)]
mod tests;
