-- sluice.ingest as a DBA sees it: counts, replays, the ledger, the device
-- statistics, and every kind of refusal (nothing of a refused batch stays).
\pset null '(null)'
\set SHOW_CONTEXT never
SELECT sluice.version() = 'v' || extversion AS version_matches FROM pg_extension WHERE extname = 'sluice';

-- A valid batch of 3 rows, raw, then the same batch again: a replay.
SELECT * FROM sluice.ingest(:'batch_valid_raw_3');
SELECT * FROM sluice.ingest(:'batch_valid_raw_3');
-- Another batch of 3 rows, compressed.
SELECT * FROM sluice.ingest(:'batch_valid_brotli_3');
SELECT count(*) AS rows, count(DISTINCT sluice_device) AS devices FROM division_states;
SELECT device_id, edge_table, base_seq, last_seq, row_count, inserted, updated, skipped
  FROM sluice.batches ORDER BY base_seq;
SELECT device_id, batches, rows FROM sluice.devices;

-- Damaged and foreign input: an ERROR naming the problem, nothing applied.
-- NULL: no row (the function is strict).
SELECT * FROM sluice.ingest(NULL);
SELECT * FROM sluice.ingest(''::bytea);
SELECT * FROM sluice.ingest('\x00'::bytea);
SELECT * FROM sluice.ingest(:'batch_err_00');
SELECT * FROM sluice.ingest(:'batch_err_05');
SELECT * FROM sluice.ingest(:'batch_err_10');
SELECT * FROM sluice.ingest(:'batch_err_20');
SELECT * FROM sluice.ingest(:'batch_err_30');
SELECT * FROM sluice.ingest(:'batch_err_40');
-- A batch for a table that is not registered.
SELECT * FROM sluice.ingest(:'batch_valid_odd_raw');
-- Inside a transaction, a refused batch rolls back with it: the good one too.
BEGIN;
-- (20 rows of another stream of the same device: rows of another edge
-- database never meet those of the first batch, so all 20 are new)
SELECT inserted, skipped FROM sluice.ingest(:'batch_valid_raw_20');
SELECT * FROM sluice.ingest(:'batch_err_01');
ROLLBACK;
SELECT count(*) AS rows_after_rollback FROM division_states;
SELECT count(*) AS ledger_entries FROM sluice.batches;
-- The backend still serves.
SELECT 1 AS still_serving;
