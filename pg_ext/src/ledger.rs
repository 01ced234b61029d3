//! The ledger and the statistics of devices and streams, and their one
//! owner: `sluice.batches` (one row per applied batch identity, with its
//! content digest), `sluice.devices` (per device id) and `sluice.streams`
//! (per edge database, that is per device id and stream: which epochs, from
//! which machine, when seen), and `sluice.device_streams(device_id)`, which
//! reads the last one.

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use sluice_pgsql::epoch::{digest_to_sql, machine_to_sql};
use sluice_pgsql::ledger::{self, sent_at_ms};
use sluice_wire::{BatchHeader, BatchId};

use crate::error::{Result, SluiceError};
use crate::spi::run_cached;
use crate::tenancy;

/// Claims the batch's identity in `sluice.batches` (device, stream, table,
/// range and re-send number: a re-send of rows is never taken for a replay
/// of the batch that first sent them), with its checksum (the CRC-32C of the
/// encoded batch) and content digest; `false` when the identity is already
/// there (a replay, or a fork: [`stored_digest`]).
pub fn claim(client: &mut SpiClient<'_>, h: &BatchHeader, checksum: u32) -> Result<bool> {
    use pg_sys::BuiltinOid::*;
    let claimed = run_cached(
        client,
        "INSERT INTO sluice.batches
           (device_id, stream_id, edge_table, base_seq, last_seq, row_count, checksum, sent_at, digest, resend)
         VALUES ($1, $2, $3, $4, $5, $6, $7, to_timestamp($8::float8 / 1000), $9, $10)
         ON CONFLICT (device_id, stream_id, edge_table, base_seq, last_seq, resend) DO NOTHING
         RETURNING 1",
        &[
            TEXTOID, INT8OID, TEXTOID, INT8OID, INT8OID, INT4OID, INT8OID, INT8OID, INT8OID,
            INT4OID,
        ],
        &[
            h.device_id.as_str().into(),
            (h.stream_id as i64).into(),
            h.table.as_str().into(),
            h.base_seq.into(),
            h.last_seq.into(),
            (h.row_count as i32).into(),
            i64::from(checksum).into(),
            sent_at_ms(h.sent_at_ms).into(),
            digest_to_sql(h.digest).into(),
            resend_to_sql(&h.id())?.into(),
        ],
    )?
    .len();
    Ok(claimed > 0)
}

/// The digest the ledger stored for a known identity (NULL for a batch of
/// format version 1 and for rows of sluice 0.1).
pub fn stored_digest(client: &mut SpiClient<'_>, id: &BatchId) -> Result<Option<i64>> {
    use pg_sys::BuiltinOid::*;
    let rows = run_cached(
        client,
        "SELECT digest FROM sluice.batches
         WHERE device_id = $1 AND stream_id = $2 AND edge_table = $3 AND base_seq = $4 AND last_seq = $5
           AND resend = $6",
        &[TEXTOID, INT8OID, TEXTOID, INT8OID, INT8OID, INT4OID],
        &[
            id.device_id.as_str().into(),
            (id.stream_id as i64).into(),
            id.table.as_str().into(),
            id.base_seq.into(),
            id.last_seq.into(),
            resend_to_sql(id)?.into(),
        ],
    )?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(rows.first().get_one::<i64>()?)
}

/// The re-send number of the batch `id` as the ledger stores it
/// ([`sluice_pgsql::ledger::resend_to_sql`]), refused (22003) when out of
/// range.
fn resend_to_sql(id: &BatchId) -> Result<i32> {
    ledger::resend_to_sql(id.resend).map_err(|e| {
        SluiceError::ingest(
            PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            format!("batch {id}: {e}"),
        )
    })
}

/// What an applied batch did.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    pub inserted: i64,
    pub updated: i64,
    pub skipped: i64,
}

/// The ledger row's counts, the device's statistics and the stream's, in one
/// statement (the per-batch cost of bookkeeping stays one round trip).
pub fn record(client: &mut SpiClient<'_>, h: &BatchHeader, c: Counts) -> Result<()> {
    use pg_sys::BuiltinOid::*;
    let parent = h.origin.fork.map(|f| f.parent_stream as i64);
    run_cached(
        client,
        "WITH ledger AS (
           UPDATE sluice.batches SET inserted = $6, updated = $7, skipped = $8
           WHERE device_id = $1 AND stream_id = $2 AND edge_table = $3
             AND base_seq = $4 AND last_seq = $5 AND resend = $13),
         stream AS (
           INSERT INTO sluice.streams AS s
             (device_id, stream_id, parent_stream, machine, first_seen, last_seen, batches, rows)
           VALUES ($1, $2, $11, $12, now(), now(), 1, $9)
           ON CONFLICT (device_id, stream_id) DO UPDATE SET
             parent_stream = COALESCE(EXCLUDED.parent_stream, s.parent_stream),
             machine = COALESCE(EXCLUDED.machine, s.machine),
             last_seen = EXCLUDED.last_seen,
             batches = s.batches + 1,
             rows = s.rows + EXCLUDED.rows)
         INSERT INTO sluice.devices AS d
           (device_id, first_seen, last_batch_at, batches, rows, clock_skew_ms)
         VALUES ($1, now(), now(), 1, $9,
                 (extract(epoch FROM clock_timestamp()) * 1000)::bigint - $10)
         ON CONFLICT (device_id) DO UPDATE SET
           last_batch_at = EXCLUDED.last_batch_at,
           batches = d.batches + 1,
           rows = d.rows + EXCLUDED.rows,
           clock_skew_ms = EXCLUDED.clock_skew_ms",
        &[
            TEXTOID, INT8OID, TEXTOID, INT8OID, INT8OID, INT4OID, INT4OID, INT4OID, INT8OID,
            INT8OID, INT8OID, INT8OID, INT4OID,
        ],
        &[
            h.device_id.as_str().into(),
            (h.stream_id as i64).into(),
            h.table.as_str().into(),
            h.base_seq.into(),
            h.last_seq.into(),
            (c.inserted as i32).into(),
            (c.updated as i32).into(),
            (c.skipped as i32).into(),
            i64::from(h.row_count).into(),
            sent_at_ms(h.sent_at_ms).into(),
            parent.into(),
            machine_to_sql(h.origin.machine).into(),
            resend_to_sql(&h.id())?.into(),
        ],
    )?;
    Ok(())
}

/// A row of `sluice.device_streams`.
pub type StreamRow = (
    i64,
    Option<i64>,
    Option<i64>,
    Option<TimestampWithTimeZone>,
    Option<TimestampWithTimeZone>,
    Option<i64>,
    Option<i64>,
    bool,
);

/// How long a stream counts as live after its last batch.
pub const LIVE_WINDOW: &str = "15 minutes";

/// Refuses (42501) a caller that may not read what `table` holds of
/// `device_id`: a device role may read its own device's only; a role that
/// may read `table` (its owner, a superuser) any device's.
fn check_device_reader(
    client: &mut SpiClient<'_>,
    function: &str,
    table: &str,
    device_id: &str,
) -> Result<()> {
    let caller = tenancy::caller(client)?;
    let readable = run_cached(
        client,
        "SELECT pg_catalog.has_table_privilege($1, $2, 'SELECT')",
        &[PgBuiltInOids::OIDOID, PgBuiltInOids::TEXTOID],
        &[caller.role_oid.into(), table.into()],
    )?
    .first()
    .get_one::<bool>()?
    .unwrap_or(false);
    let own = caller.device.as_ref().and_then(|d| d.device_id.as_deref());
    if !readable && own != Some(device_id) {
        let why = match own {
            Some(own) => format!("may read the streams of device '{own}' only"),
            None => format!("is not bound to a device id (sluice.grant_device with device_id) and may not read {table}"),
        };
        return Err(SluiceError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "{function}: role \"{}\" {why}, not those of '{device_id}'",
                caller.role
            ),
        ));
    }
    Ok(())
}

/// `sluice.stream_high_water(device_id, stream_id)`: per edge table, the
/// largest sequence number the ledger holds of the stream (the last batch
/// applied). An edge database whose own high water is below it went back in
/// time: it was restored from a backup. One index probe per registered
/// table. Re-send batches are left out: they send again rows at or below
/// what was acknowledged. The same reading rule as [`device_streams`].
pub fn stream_high_water(device_id: &str, stream_id: i64) -> Result<Vec<(String, i64)>> {
    Spi::connect_mut(|client| {
        check_device_reader(
            client,
            "sluice.stream_high_water",
            "sluice.batches",
            device_id,
        )?;
        let mut out = Vec::new();
        for row in run_cached(
            client,
            "SELECT t.edge_table, b.last_seq FROM sluice.tables AS t
             CROSS JOIN LATERAL (
                 SELECT b.last_seq FROM sluice.batches AS b
                 WHERE b.device_id = $1 AND b.stream_id = $2 AND b.edge_table = t.edge_table
                   AND b.resend = 0
                 ORDER BY b.base_seq DESC, b.last_seq DESC LIMIT 1) AS b
             ORDER BY t.edge_table",
            &[PgBuiltInOids::TEXTOID, PgBuiltInOids::INT8OID],
            &[device_id.into(), stream_id.into()],
        )? {
            out.push((
                row.get::<String>(1)?.unwrap_or_default(),
                row.get::<i64>(2)?.unwrap_or_default(),
            ));
        }
        Ok(out)
    })
}

/// `sluice.device_streams(device_id)`: the streams of a device, oldest first.
/// A device role may read its own device's only; a role that may read
/// `sluice.streams` (its owner, a superuser) any device's.
pub fn device_streams(device_id: &str) -> Result<Vec<StreamRow>> {
    Spi::connect_mut(|client| {
        check_device_reader(client, "sluice.device_streams", "sluice.streams", device_id)?;
        let mut out = Vec::new();
        for row in run_cached(
            client,
            "SELECT stream_id, parent_stream, machine, first_seen, last_seen, batches, rows,
                    coalesce(last_seen > now() - $2::interval, false)
             FROM sluice.streams WHERE device_id = $1
             ORDER BY first_seen, stream_id",
            &[PgBuiltInOids::TEXTOID, PgBuiltInOids::TEXTOID],
            &[device_id.into(), LIVE_WINDOW.into()],
        )? {
            out.push((
                row.get::<i64>(1)?.unwrap_or_default(),
                row.get::<i64>(2)?,
                row.get::<i64>(3)?,
                row.get::<TimestampWithTimeZone>(4)?,
                row.get::<TimestampWithTimeZone>(5)?,
                row.get::<i64>(6)?,
                row.get::<i64>(7)?,
                row.get::<bool>(8)?.unwrap_or(false),
            ));
        }
        Ok(out)
    })
}
