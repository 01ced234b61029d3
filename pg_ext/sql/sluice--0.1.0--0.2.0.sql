-- sluice 0.1.0 -> 0.2.0: restored and copied edge databases, shared device
-- ids, zones, deletes, re-sends (issue 12). Run by ALTER EXTENSION sluice UPDATE. The library
-- (sluice.so) is replaced by the installation; every function of 0.1.0 keeps
-- its SQL definition, so only what is new is created here. The result is the
-- catalog of a fresh 0.2.0 install (tested by tests/sql/upgrade.sql).

-- The ledger keeps each batch's content digest: a known identity with
-- another digest is a fork (ERROR 55000), not a replay. NULL for the rows
-- of 0.1.0, which are taken for replays as before.
ALTER TABLE sluice.batches ADD COLUMN digest bigint;

-- A re-send of rows (sluice_resend at the edge) is a batch identity of its
-- own: the re-send number joins the primary key. 0 for every row of 0.1.0
-- (ordinary batches).
ALTER TABLE sluice.batches ADD COLUMN resend integer NOT NULL DEFAULT 0;
ALTER TABLE sluice.batches DROP CONSTRAINT batches_pkey,
    ADD PRIMARY KEY (device_id, stream_id, edge_table, base_seq, last_seq, resend);

-- Per-stream statistics (one row per edge database sending under a device
-- id: its epochs and clones), updated by every applied batch.
CREATE TABLE sluice.streams (
    device_id     text,
    stream_id     bigint,
    parent_stream bigint,
    machine       bigint,
    first_seen    timestamptz,
    last_seen     timestamptz,
    batches       bigint,
    rows          bigint,
    PRIMARY KEY (device_id, stream_id)
);
SELECT pg_catalog.pg_extension_config_dump('sluice.streams', '');

CREATE FUNCTION sluice."device_streams"(
	"device_id" TEXT
) RETURNS TABLE (
	"stream_id" bigint,
	"parent_stream" bigint,
	"machine" bigint,
	"first_seen" timestamp with time zone,
	"last_seen" timestamp with time zone,
	"batches" bigint,
	"rows" bigint,
	"live" bool
)
STRICT STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'device_streams_wrapper';

CREATE FUNCTION sluice."stream_high_water"(
	"device_id" TEXT,
	"stream_id" bigint
) RETURNS TABLE (
	"edge_table" TEXT,
	"last_seq" bigint
)
STRICT STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'stream_high_water_wrapper';

-- Zoneless timestamp text is read in the batch's zone (UTC when it has
-- none); the caller's TimeZone is put back when the call ends.
ALTER FUNCTION sluice.ingest(bytea) SET "TimeZone" TO 'UTC';

-- Deletes at the edge travel as tombstones: the registration says what they
-- do here (on_delete), and sluice.tombstones remembers those applied.
ALTER TABLE sluice.tables ADD COLUMN on_delete text NOT NULL DEFAULT 'delete'
    CHECK (on_delete IN ('delete', 'mark', 'ignore'));

CREATE TABLE sluice.tombstones (
    target     regclass,
    key        text[],
    version    bigint NOT NULL,
    device_id  text NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target, key)
);
SELECT pg_catalog.pg_extension_config_dump('sluice.tombstones', '');

DROP FUNCTION sluice.register_table(text, regclass, text[], text, text);
CREATE FUNCTION sluice."register_table"(
	"edge_table" TEXT,
	"target" regclass,
	"key_columns" TEXT[],
	"policy" TEXT DEFAULT 'last_writer_wins',
	"tenant_column" TEXT DEFAULT NULL,
	"on_delete" TEXT DEFAULT 'delete'
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'register_table_wrapper';
REVOKE EXECUTE ON FUNCTION sluice.register_table(text, regclass, text[], text, text, text) FROM PUBLIC;
