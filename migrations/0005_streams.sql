-- sluice cloud schema, version 5: rows of the append-only tables carry the
-- stream (the edge database's epoch) they were written under, in their key:
-- (location_id, sluice_device, sluice_stream, id). A box restored from a
-- backup or cloned from an image continues under a new stream, and its rows
-- can never collide with those of an earlier epoch or of the other clone
-- (docs/sync-protocol.md, "Epochs"). sluice.ingest fills sluice_stream from
-- the batch, as it fills sluice_device. The mutable tables (cameras,
-- sessions, key_frames, metrics_5m) keep their keys: a new epoch re-stamps
-- their rows at the edge instead, so the box's current state is sent again
-- and wins. (key_frames is keyed by the edge's row id but mutable: with the
-- stream in its key, every re-stamped row would arrive a second time under
-- the new stream.)
--
-- Rows already in the cloud get the stream of the ledger's batch whose
-- range (base_seq, last_seq] covers their id, for their device and table
-- (the first applied, if two streams sent it); 0 when the ledger has none,
-- which is also the default of a row written by hand.
-- Needs the extension at 0.2.0 or later (ALTER EXTENSION below), and may run
-- again on what it made.
ALTER EXTENSION sluice UPDATE;

DO $migration$
DECLARE
    t text;
    pk text;
BEGIN
    FOREACH t IN ARRAY ARRAY['division_states', 'table_states', 'metrics', 'health_metrics'] LOOP
        EXECUTE format('ALTER TABLE %I ADD COLUMN IF NOT EXISTS sluice_stream bigint', t);
        EXECUTE format(
            'UPDATE %I AS r SET sluice_stream = coalesce((
                 SELECT b.stream_id FROM sluice.batches AS b
                 WHERE b.device_id = r.sluice_device AND b.edge_table = %L
                   AND r.id > b.base_seq AND r.id <= b.last_seq
                 ORDER BY b.applied_at, b.stream_id LIMIT 1), 0)
             WHERE r.sluice_stream IS NULL', t, t);
        EXECUTE format('ALTER TABLE %I ALTER COLUMN sluice_stream SET NOT NULL, ALTER COLUMN sluice_stream SET DEFAULT 0', t);
        -- The primary key gains the stream, unless it has it already.
        SELECT c.conname INTO pk FROM pg_constraint AS c
        WHERE c.conrelid = t::regclass AND c.contype = 'p'
          AND NOT EXISTS (
              SELECT 1 FROM unnest(c.conkey) AS k(attnum)
              JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
              WHERE a.attname = 'sluice_stream');
        IF pk IS NOT NULL THEN
            EXECUTE format(
                'ALTER TABLE %I DROP CONSTRAINT %I, ADD PRIMARY KEY (location_id, sluice_device, sluice_stream, id)',
                t, pk);
        END IF;
        PERFORM sluice.register_table(t, t::regclass,
            ARRAY['location_id', 'sluice_device', 'sluice_stream', 'id'],
            tenant_column => 'location_id');
    END LOOP;
END
$migration$;
