//! `sluice.ingest`: applies one batch, exactly as `docs/sync-protocol.md`
//! ("Applying a batch in the cloud") says: decode and verify, claim the
//! batch's identity and digest in the ledger (a replay stops there; the
//! identity with another digest is a fork, ERROR 55000), read zoneless text
//! in the batch's zone, check the columns against the registered target,
//! upsert every row in one statement (and, when it skipped rows, look for a
//! fork among them), then record the counts and the device's and stream's
//! statistics. A re-send batch (its header's `resend` is not 0: the edge
//! sends again rows it sent before) has an identity of its own, replaces a
//! row of an equal `(version, device)` pair whose content differs (under
//! last and first writer wins), and is never checked for a fork row by row. Everything runs in the caller's transaction, so an error
//! anywhere leaves nothing behind.

use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use sluice_pgsql::epoch::{digests_differ, fork_message, ForkEvidence, FORK_HINT, FORK_SQLSTATE};
use sluice_pgsql::plan::{
    bad_time_message, quoted_value, BatchColumns, CatalogColumn, ColumnPlan, PlanError,
    CATALOG_COLUMNS_SQL,
};
use sluice_pgsql::sqlgen::{self, DeleteOptions, OnDelete, StreamColumn};
use sluice_pgsql::{Param, SqlState};
use sluice_wire::{decode, decode_header, Batch, BatchId};

use crate::error::{error_code, Result, SluiceError};
use crate::ledger::{self, Counts};
use crate::publish;
use crate::register::{registration, Registration};
use crate::spi::run_cached;
use crate::tenancy;
use crate::zone::set_batch_zone;

/// What one call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub inserted: i64,
    pub updated: i64,
    pub skipped: i64,
    pub replay: bool,
}

pub fn ingest(bytes: &[u8]) -> Result<Outcome> {
    // The header (with the checksum over the whole batch) is enough to claim
    // the identity, so a replay costs a ledger lookup, not a decompression.
    let header = decode_header(bytes)
        .map_err(|e| SluiceError::ingest(error_code(SqlState::of_wire_error(&e)), e))?;
    let h = &header;
    let id = h.id();
    if h.changes.is_some() {
        return Err(SluiceError::ingest(
            PgSqlErrorCode::ERRCODE_INVALID_BINARY_REPRESENTATION,
            format!("batch {id}: a batch of cloud changes (flag bit 4) cannot be ingested; sluice_apply applies it at the edge"),
        ));
    }
    // decode_header verified the CRC-32C stored in the last four bytes.
    let checksum = bytes
        .last_chunk::<4>()
        .map(|b| u32::from_le_bytes(*b))
        .unwrap_or_default();
    let row_count = i64::from(h.row_count);

    Spi::connect_mut(|client| {
        // 1a. The edge deletes rows once they are acknowledged, so the commit
        // that applies them must be durable before the caller hears of it: a
        // session with synchronous_commit = off would let a server crash take
        // back rows the edge no longer has. Raised for this transaction only;
        // a stronger setting (remote_write, remote_apply) is kept.
        client.update(
            "SELECT set_config('synchronous_commit', 'on', true) WHERE current_setting('synchronous_commit') = 'off'",
            None,
            &[],
        )?;

        // 1b. Who is calling: a device role is bound to a tenant (and maybe a
        // device id, checked before the ledger is touched).
        let caller = tenancy::caller(client)?;
        tenancy::check_device_id(&caller, &h.device_id, &id)?;

        // 2. Claim the identity; a replay stops here, unless the ledger
        // knows the identity with other content: then the edge database
        // was restored or copied and reused its sequence numbers.
        if !ledger::claim(client, h, checksum)? {
            let stored = ledger::stored_digest(client, &id)?;
            if let Some(evidence) = digests_differ(stored, h.digest) {
                return Err(fork_error(&id, &evidence));
            }
            return Ok(Outcome {
                inserted: 0,
                updated: 0,
                skipped: row_count,
                replay: true,
            });
        }

        // 3. The rows, then registration and schema check; zoneless text is
        // read in the batch's zone.
        set_batch_zone(&id, &h.origin.zone)?;
        let batch = decode(bytes)
            .map_err(|e| SluiceError::ingest(error_code(SqlState::of_wire_error(&e)), e))?;
        let reg = registration(client, &h.table)?;
        tenancy::check_rows(client, &caller, &batch, &id, &reg)?;
        let plan = plan_columns(client, &batch, &id, &reg)?;

        // 4. The deletes (tombstones), then one upsert of the other rows
        // (and, when it skipped rows, the fork check), in version order by
        // the policy: a row older than a tombstone of its key is left out.
        let (ups, dels) = split_deletes(batch);
        let mut removed = 0;
        let mut deletes = DeleteOptions::default();
        if reg.on_delete.applies(reg.policy) {
            if let Some(dels) = &dels {
                removed = apply_tombstones(client, dels, &reg, &plan, &id)?;
            }
            // Only a target that has tombstones pays for looking at them.
            let has = run_cached(
                client,
                sqlgen::HAS_TOMBSTONES_SQL,
                &[PgBuiltInOids::OIDOID],
                &[reg.target.into()],
            )?
            .first()
            .get_one::<bool>()?
            .unwrap_or(false);
            deletes = DeleteOptions {
                tombstones_of: has.then(|| reg.target.to_u32()),
                clear_mark: reg.on_delete == OnDelete::Mark,
            };
        }
        let (inserted, updated) = if ups.versions.is_empty() {
            (0, 0)
        } else {
            apply(client, &ups, &id, &reg, &plan, deletes)?
        };
        // A tombstone that deleted (or marked) a row counts as an update.
        let updated = updated + removed;
        let skipped = row_count - inserted - updated;

        // 5. Ledger counts, device and stream statistics, in one statement.
        ledger::record(
            client,
            h,
            Counts {
                inserted,
                updated,
                skipped,
            },
        )?;
        Ok(Outcome {
            inserted,
            updated,
            skipped,
            replay: false,
        })
    })
}

/// The ERROR 55000 of a batch whose edge database was restored or copied.
fn fork_error(id: &BatchId, evidence: &ForkEvidence) -> SluiceError {
    SluiceError::ingest(error_code(FORK_SQLSTATE), fork_message(id, evidence)).with_hint(FORK_HINT)
}

/// The column plan of `batch` against the registered target: the pure
/// checks of [`sluice_pgsql::plan`] around one catalog query.
fn plan_columns(
    client: &mut SpiClient<'_>,
    batch: &Batch,
    id: &BatchId,
    reg: &Registration,
) -> Result<ColumnPlan> {
    let fail = |e: PlanError| plan_error(&e, id, reg);
    let columns = BatchColumns::new(&batch.header.columns).map_err(fail)?;
    let mut catalog = Vec::with_capacity(columns.names.len());
    for row in run_cached(
        client,
        CATALOG_COLUMNS_SQL,
        &[PgBuiltInOids::OIDOID, PgBuiltInOids::TEXTARRAYOID],
        &[reg.target.into(), columns.names.clone().into()],
    )? {
        catalog.push(CatalogColumn::from_row(
            row.get::<String>(1)?.unwrap_or_default(),
            row.get::<String>(2)?,
            row.get::<bool>(3)?,
            row.get::<String>(4)?.as_deref(),
            row.get::<i32>(5)?,
            row.get::<String>(6)?.as_deref(),
            row.get::<String>(7)?,
        ));
    }
    ColumnPlan::new(columns, catalog, &reg.key_columns)
        .and_then(|p| p.with_stream_column(reg.stream_column))
        .map_err(fail)
}

/// A [`PlanError`] as the error `sluice.ingest` raises.
fn plan_error(e: &PlanError, id: &BatchId, reg: &Registration) -> SluiceError {
    SluiceError::ingest(error_code(e.sqlstate()), e.message(id, &reg.target_name))
}

/// Writes the batch's rows: the upsert, or, when the keys are one tenant and
/// device and distinct integers of which the target holds none, a plain
/// `INSERT` (no speculative insertion, no reduction, no counting: about
/// 1.5× faster). "Holds none" is one index probe over the key range, under a
/// transaction-scoped advisory lock on (target, constant key values) that
/// every ingest of such a batch takes, so that two concurrent ingests of
/// overlapping ranges never both take the plain path. (A writer outside
/// sluice that inserts a row of the range between the probe and the insert
/// makes the ingest fail with a unique violation, and its retry upserts.)
///
/// A batch of a new epoch (`origin.fork`) into a target with a
/// `sluice_stream` column always upserts, leaving out the rows up to the
/// fork that a stream of the parent's lineage already sent (its ancestors,
/// or another epoch of the same parent: [`sqlgen::upsert_sql`]). When the upsert skipped rows, the fork check looks
/// for a skipped row of this device with other content (ERROR 55000),
/// unless the batch is a re-send: its rows were sent before, and a stored
/// row of an equal `(version, device)` pair with other content is what it
/// comes to replace ([`sqlgen::upsert_sql_with`]).
fn apply(
    client: &mut SpiClient<'_>,
    batch: &Batch,
    id: &BatchId,
    reg: &Registration,
    plan: &ColumnPlan,
    deletes: DeleteOptions,
) -> Result<(i64, i64)> {
    let params = plan.params(batch).map_err(|e| plan_error(&e, id, reg))?;
    let device = batch.header.device_id.as_str();
    let stream = batch.header.stream_id as i64;
    let bk = plan.bookkeeping();
    let has_stream = bk.stream != StreamColumn::None;
    let stream_key = (bk.stream == StreamColumn::Key).then_some(stream);
    let fork = batch.header.origin.fork.filter(|_| has_stream);
    let rows = batch.versions.len() as i64;
    let resend = batch.header.resend != 0;

    // A published target: the cloud owns the published columns but the key,
    // and a row whose cloud delete the edge had not pulled is left out. The
    // publication is read here for a batch that says what its edge pulled
    // (the plain path must not be taken then), else on the upsert path only.
    let mut published = match batch.header.pulled {
        Some(_) => Some(publish::of_target(client, reg.target)?),
        None => None,
    };
    let unseen_param =
        plan.columns.len() + 3 + usize::from(has_stream) + 2 * usize::from(fork.is_some());
    let unseen = published
        .as_ref()
        .and_then(Option::as_ref)
        .zip(batch.header.pulled)
        .and_then(|(p, pulled)| {
            p.unseen_deletes(&plan.columns, pulled, unseen_param)
                .map(|(u, checkpoint)| (u, p.edge_table.clone(), checkpoint))
        });

    let shape = plan.key_shape(batch, &params);
    let mut plain = false;
    if let Some(shape) = &shape {
        run_cached(
            client,
            "SELECT pg_catalog.pg_advisory_xact_lock($1)",
            &[PgBuiltInOids::INT8OID],
            &[shape
                .lock_key(
                    reg.target.to_u32(),
                    plan.device_key.then_some(device),
                    stream_key,
                )
                .into()],
        )?;
        if shape.distinct && fork.is_none() && deletes.tombstones_of.is_none() && unseen.is_none() {
            let sql = sqlgen::probe_sql(
                &reg.target_sql,
                &plan.columns,
                &shape.const_columns(),
                shape.range.map(|(k, _, _)| k),
                bk,
            );
            let mut args: Vec<pgrx::datum::DatumWithOid<'_>> = shape
                .consts
                .iter()
                .map(|(_, v)| v.as_str().into())
                .collect();
            if let Some((_, lo, hi)) = shape.range {
                args.extend([lo.into(), hi.into()]);
            }
            if plan.device_key {
                args.push(device.into());
            }
            if let Some(s) = stream_key {
                args.push(s.into());
            }
            // Planned at every call, not kept: a plan made while the
            // target was small (a new deployment, a truncated table) would
            // stay a sequential scan as the table grows.
            let exists = client
                .select(&sql, Some(1), &args)?
                .first()
                .get_one::<bool>()?
                .unwrap_or(true);
            plain = !exists;
        }
    }

    let arrays: Vec<&str> = params.iter().map(Param::array_type).collect();
    let (mut types, mut args) = row_args(params)?;
    types.push(PgBuiltInOids::INT8ARRAYOID);
    types.push(PgBuiltInOids::TEXTOID);
    args.push(batch.versions.clone().into());
    args.push(device.into());
    if has_stream {
        types.push(PgBuiltInOids::INT8OID);
        args.push(stream.into());
    }

    if plain {
        let sql = sqlgen::insert_sql(&reg.target_sql, &plan.columns, &arrays, bk);
        write_rows(batch, id, reg, plan, || {
            run_cached(client, &sql, &types, &args)?;
            Ok(())
        })?;
        return Ok((rows, 0));
    }
    let dedup = !shape.as_ref().is_some_and(|s| s.distinct);
    let published = match published.take() {
        Some(p) => p,
        None => publish::of_target(client, reg.target)?,
    };
    let cloud_owned = published.map(|p| p.cloud_owned).unwrap_or_default();
    let sql = sqlgen::upsert_sql_keeping(
        &reg.target_sql,
        &plan.columns,
        &arrays,
        &plan.keys,
        bk,
        reg.policy,
        dedup,
        fork.is_some(),
        deletes,
        resend,
        &cloud_owned,
        unseen.as_ref().map(|(u, _, _)| u),
    );
    // The fork check takes the upsert's parameters, without the fork's.
    let check_len = args.len();
    if let Some(f) = fork {
        types.extend([PgBuiltInOids::INT8OID, PgBuiltInOids::INT8OID]);
        args.extend([(f.parent_stream as i64).into(), f.fork_seq.into()]);
    }
    if let Some((_, edge_table, checkpoint)) = &unseen {
        debug_assert_eq!(args.len() + 1, unseen_param);
        types.extend([PgBuiltInOids::TEXTOID, PgBuiltInOids::INT8OID]);
        args.extend([edge_table.as_str().into(), (*checkpoint).into()]);
    }
    let counts = write_rows(batch, id, reg, plan, || {
        Ok(run_cached(client, &sql, &types, &args)?
            .first()
            .get_two::<i64, i64>()?)
    })?;
    let (inserted, updated) = (counts.0.unwrap_or(0), counts.1.unwrap_or(0));

    if inserted + updated < rows && !resend {
        // In a new epoch's batch, the rows up to the fork existed when the
        // epoch began: an earlier copy of the database may have sent them and
        // updated them since; the policy decides, they are no fork.
        args.truncate(check_len);
        types.truncate(check_len);
        let after_fork = batch.header.origin.fork.map(|f| {
            types.push(PgBuiltInOids::INT8OID);
            args.push(f.fork_seq.into());
            args.len()
        });
        let check = sqlgen::fork_check_sql_keeping(
            &reg.target_sql,
            &plan.columns,
            &arrays,
            &plan.keys,
            bk,
            reg.policy,
            dedup,
            after_fork,
            &cloud_owned,
        );
        if let Some(check) = check {
            let found = run_cached(client, &check, &types, &args)?;
            if !found.is_empty() {
                if let Some(version) = found.first().get_one::<i64>()? {
                    return Err(fork_error(
                        id,
                        &ForkEvidence::Row {
                            target: reg.target_name.clone(),
                            version,
                        },
                    ));
                }
            }
        }
    }
    Ok((inserted, updated))
}

/// The batch's rows that are written and, when it has any, those that are
/// deletes (tombstones), as two batches with the header of the first.
fn split_deletes(batch: Batch) -> (Batch, Option<Batch>) {
    if !batch.deleted.contains(&true) {
        return (batch, None);
    }
    let pick = |want: bool| Batch {
        header: batch.header.clone(),
        versions: batch
            .versions
            .iter()
            .zip(&batch.deleted)
            .filter(|(_, d)| **d == want)
            .map(|(v, _)| *v)
            .collect(),
        deleted: Vec::new(),
        columns: batch
            .columns
            .iter()
            .map(|col| {
                col.iter()
                    .zip(&batch.deleted)
                    .filter(|(_, d)| **d == want)
                    .map(|(v, _)| v.clone())
                    .collect()
            })
            .collect(),
        checksum: batch.checksum,
    };
    let (ups, dels) = (pick(false), pick(true));
    (ups, Some(dels))
}

/// Applies the tombstones `dels` (a batch of only deletes) to the target as
/// its registration says ([`sqlgen::tombstones_sql`]); returns the number
/// of rows deleted or marked.
fn apply_tombstones(
    client: &mut SpiClient<'_>,
    dels: &Batch,
    reg: &Registration,
    plan: &ColumnPlan,
    id: &BatchId,
) -> Result<i64> {
    let params = plan.params(dels).map_err(|e| plan_error(&e, id, reg))?;
    let bk = plan.bookkeeping();
    let arrays: Vec<&str> = params.iter().map(Param::array_type).collect();
    let (mut types, mut args) = row_args(params)?;
    types.push(PgBuiltInOids::INT8ARRAYOID);
    args.push(dels.versions.clone().into());
    types.push(PgBuiltInOids::TEXTOID);
    args.push(dels.header.device_id.as_str().into());
    if bk.stream != StreamColumn::None {
        types.push(PgBuiltInOids::INT8OID);
        args.push((dels.header.stream_id as i64).into());
    }
    let sql = sqlgen::tombstones_sql(
        &reg.target_sql,
        reg.target.to_u32(),
        &plan.columns,
        &arrays,
        &plan.keys,
        bk,
        reg.on_delete,
    );
    Ok(run_cached(client, &sql, &types, &args)?
        .first()
        .get_one::<i64>()?
        .unwrap_or(0))
}

/// The column arrays of a batch as SPI arguments, with their types.
fn row_args(
    params: Vec<Param>,
) -> Result<(Vec<PgBuiltInOids>, Vec<pgrx::datum::DatumWithOid<'static>>)> {
    let types: Vec<PgBuiltInOids> = params
        .iter()
        .map(|p| match p {
            Param::Text(_) => PgBuiltInOids::TEXTARRAYOID,
            Param::Int8(_) => PgBuiltInOids::INT8ARRAYOID,
            Param::Float8(_) => PgBuiltInOids::FLOAT8ARRAYOID,
            Param::Timestamptz(_) => PgBuiltInOids::TIMESTAMPTZARRAYOID,
        })
        .collect();
    let mut args = Vec::with_capacity(params.len() + 3);
    for p in params {
        args.push(match p {
            Param::Text(v) => v.into(),
            Param::Int8(v) => v.into(),
            Param::Float8(v) => v.into(),
            Param::Timestamptz(v) => v
                .into_iter()
                .map(|t| t.map(timestamptz).transpose())
                .collect::<Result<Vec<_>>>()?
                .into(),
        });
    }
    Ok((types, args))
}

/// Runs the statement that writes the rows. PostgreSQL's time input names a
/// value it cannot read (22007, 22008) but neither its row nor its column:
/// when the value is one the batch sent as text for a timestamp column, the
/// ERROR is raised again with them. Any other ERROR goes on unchanged.
/// (pgrx has already copied and flushed PostgreSQL's error state when the
/// ERROR reaches Rust as a panic; nothing runs in the backend between
/// catching it and raising the new one.)
fn write_rows<T>(
    batch: &Batch,
    id: &BatchId,
    reg: &Registration,
    plan: &ColumnPlan,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let payload = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => return r,
        Err(payload) => payload,
    };
    if let Some(CaughtError::PostgresError(report)) = payload.downcast_ref::<CaughtError>() {
        let code = report.sql_error_code();
        if matches!(
            code,
            PgSqlErrorCode::ERRCODE_INVALID_DATETIME_FORMAT
                | PgSqlErrorCode::ERRCODE_DATETIME_FIELD_OVERFLOW
        ) {
            let found = quoted_value(report.message()).and_then(|value| {
                let params = plan.params(batch).ok()?;
                let (column, row) = plan.find_time_text(&params, &value)?;
                Some(bad_time_message(
                    id,
                    &reg.target_name,
                    column,
                    row,
                    report.message(),
                ))
            });
            if let Some(message) = found {
                return Err(SluiceError::ingest(code, message));
            }
        }
    }
    std::panic::resume_unwind(payload)
}

fn timestamptz(micros: i64) -> Result<TimestampWithTimeZone> {
    TimestampWithTimeZone::try_from(micros).map_err(|e| {
        SluiceError::new(
            PgSqlErrorCode::ERRCODE_DATETIME_FIELD_OVERFLOW,
            format!("sluice.ingest: timestamp out of range: {e:?}"),
        )
    })
}
