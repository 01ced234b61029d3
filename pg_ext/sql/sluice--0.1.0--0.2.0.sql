-- sluice 0.1.0 -> 0.2.0: restored and copied edge databases, shared device
-- ids, zones, deletes, re-sends (issue 12); cloud to edge (issue 13). Run by ALTER EXTENSION sluice UPDATE. The library
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

-- Cloud to edge (issue 13): published tables, change capture, pulls.

-- A cloud table published to devices. stream_id: random, new when the
-- target, key, scope or columns change (every device then takes a
-- snapshot). purged_through: the entries up to this position are purged; a
-- device behind it takes a snapshot.
CREATE TABLE sluice.publications (
    edge_table     text PRIMARY KEY,
    target         regclass NOT NULL,
    stream_id      bigint NOT NULL,
    key_columns    text[] NOT NULL,
    columns        text[] NOT NULL,
    tenant_column  text,
    device_column  text,
    horizon        interval NOT NULL DEFAULT '7 days',
    purged_through bigint NOT NULL DEFAULT 0,
    created_at     timestamptz DEFAULT now()
);

-- One entry per row image touched (key and scope), written by the capture
-- triggers: position = the writing transaction's id. Append-only; purged by
-- sluice.purge_changes.
CREATE TABLE sluice.changes (
    edge_table text NOT NULL,
    position   bigint NOT NULL,
    tenant     text,
    device     text,
    key        text[] NOT NULL,
    changed_at timestamptz DEFAULT now()
);
-- One index serves the pulls (a tenant's entries after a checkpoint; NULL
-- for a publication without a tenant column) and the purge.
CREATE INDEX changes_scope ON sluice.changes (edge_table, tenant, position);

-- Per device and published table: what the device acknowledged (the
-- checkpoint it pulled from), its stream, its pulls.
CREATE TABLE sluice.subscriptions (
    device_id    text,
    edge_table   text,
    tenant       text,
    checkpoint   bigint NOT NULL,
    stream_id    bigint NOT NULL,
    first_pulled timestamptz,
    last_pulled  timestamptz,
    snapshots    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (device_id, edge_table)
);

SELECT pg_catalog.pg_extension_config_dump('sluice.publications', '');
SELECT pg_catalog.pg_extension_config_dump('sluice.changes', '');
SELECT pg_catalog.pg_extension_config_dump('sluice.subscriptions', '');

-- TRUNCATE would remove rows without change entries: refused on a
-- published table (DELETE, or unpublish first).
CREATE FUNCTION sluice._internal_refuse_truncate()
RETURNS trigger LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RAISE EXCEPTION 'sluice: % is published as edge table ''%''; TRUNCATE is not captured', TG_TABLE_NAME, TG_ARGV[0]
        USING ERRCODE = '0A000', HINT = 'DELETE the rows, or call sluice.unpublish first';
END
$fn$;

-- Per publication: deletes the entries up to the least checkpoint of the
-- subscriptions on its stream that pulled within its horizon (none: up to
-- the current xmin - 1), and raises purged_through. A device behind it
-- takes a snapshot at its next pull. A delete (the newest entry of a key
-- the table no longer has) stays until every subscription of the stream,
-- those past the horizon too, has pulled past it, and for the horizon
-- after it was made: sluice.ingest reads it to leave out a device's report
-- of the row cut before the device knew of the delete (a device back after
-- the horizon, or one restored from a backup younger than the horizon,
-- must not bring the row back). Returns the entries deleted.
CREATE FUNCTION sluice.purge_changes()
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    p record;
    upto bigint;
    everyone bigint;
    live text;
    snap pg_snapshot := pg_current_snapshot();
    xmax bigint := pg_snapshot_xmax(snap)::text::bigint;
    served bigint;
    n bigint;
    total bigint := 0;
BEGIN
    -- What sluice.pull may serve: below the least transaction in progress
    -- in this database (serve_below in the pgsql crate says why).
    SELECT min(x::text::bigint) INTO served FROM pg_snapshot_xip(snap) AS x
    WHERE (x::text::bigint & 4294967295) NOT IN (
        SELECT a.backend_xid::text::bigint FROM pg_stat_activity a
        WHERE a.backend_xid IS NOT NULL AND a.datid IS NOT NULL
          AND a.datid <> (SELECT d.oid FROM pg_database d WHERE d.datname = current_database()));
    served := least(coalesce(served, xmax), coalesce(pg_current_xact_id_if_assigned()::text::bigint, xmax)) - 1;
    FOR p IN SELECT edge_table, stream_id, horizon, purged_through, target, key_columns
             FROM sluice.publications ORDER BY edge_table LOOP
        SELECT least(min(s.checkpoint), served) INTO upto FROM sluice.subscriptions s
        WHERE s.edge_table = p.edge_table AND s.stream_id = p.stream_id
          AND s.last_pulled > now() - p.horizon;
        upto := coalesce(upto, served);
        SELECT least(min(s.checkpoint), upto) INTO everyone FROM sluice.subscriptions s
        WHERE s.edge_table = p.edge_table AND s.stream_id = p.stream_id;
        everyone := coalesce(everyone, upto);
        -- The entry's key cast back to the key columns' types (as the
        -- pulls read it), so that the probe of the table uses its key.
        SELECT string_agg(format('t.%I = e.key[%s]::%s', u.k, u.i, format_type(a.atttypid, a.atttypmod)),
                          ' AND ' ORDER BY u.i)
        INTO live
        FROM unnest(p.key_columns) WITH ORDINALITY AS u(k, i)
        JOIN pg_attribute a ON a.attrelid = p.target AND a.attname = u.k AND a.attnum > 0 AND NOT a.attisdropped;
        IF live IS NULL THEN
            DELETE FROM sluice.changes c WHERE c.edge_table = p.edge_table AND c.position <= upto;
        ELSE
            EXECUTE format(
                'DELETE FROM sluice.changes c USING (
                     SELECT e.ctid AS id FROM (
                         SELECT ch.ctid, ch.key, ch.position, ch.changed_at,
                                row_number() OVER (PARTITION BY ch.key ORDER BY ch.position DESC) AS newest
                         FROM sluice.changes ch WHERE ch.edge_table = $1 AND ch.position <= $2) AS e
                     WHERE (e.position <= $3 AND coalesce(e.changed_at, ''-infinity'') <= now() - $4) OR e.newest > 1
                        OR EXISTS (SELECT 1 FROM %s AS t WHERE %s)) AS d
                 WHERE c.ctid = d.id', p.target, live)
            USING p.edge_table, upto, everyone, p.horizon;
        END IF;
        GET DIAGNOSTICS n = ROW_COUNT;
        total := total + n;
        IF upto > p.purged_through THEN
            UPDATE sluice.publications SET purged_through = upto WHERE edge_table = p.edge_table;
        END IF;
    END LOOP;
    RETURN total;
END
$fn$;

-- Per subscription: the changes in its scope after its checkpoint.
CREATE VIEW sluice.subscription_status AS
SELECT s.device_id, s.edge_table, s.tenant, s.checkpoint,
       coalesce(w.pending, 0) AS pending, w.oldest_pending,
       now() - w.oldest_pending AS waiting, s.last_pulled,
       s.stream_id IS DISTINCT FROM p.stream_id AS snapshot_needed
FROM sluice.subscriptions s
JOIN sluice.publications p ON p.edge_table = s.edge_table
LEFT JOIN LATERAL (
    SELECT count(*) AS pending, min(c.changed_at) AS oldest_pending
    FROM sluice.changes c
    WHERE c.edge_table = s.edge_table AND c.position > s.checkpoint
      AND (c.tenant = s.tenant OR (s.tenant IS NULL AND c.tenant IS NULL))
      AND (p.device_column IS NULL OR c.device = s.device_id OR c.device IS NULL)
) w ON true;

CREATE FUNCTION sluice."publish"(
	"target" regclass,
	"edge_table" TEXT DEFAULT NULL,
	"columns" TEXT[] DEFAULT NULL,
	"key_columns" TEXT[] DEFAULT NULL,
	"tenant_column" TEXT DEFAULT NULL,
	"device_column" TEXT DEFAULT NULL,
	"horizon" interval DEFAULT '7 days'
) RETURNS void
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'publish_wrapper';

CREATE FUNCTION sluice."unpublish"(
	"edge_table" TEXT
) RETURNS bool
STRICT VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'unpublish_wrapper';

CREATE FUNCTION sluice."pull"(
	"edge_table" TEXT,
	"device_id" TEXT,
	"checkpoint" bigint,
	"stream_id" bigint,
	"max_rows" INT DEFAULT 10000,
	"cursor" TEXT DEFAULT NULL,
	"tenant" TEXT DEFAULT NULL
) RETURNS TABLE (
	"batch" bytea,
	"checkpoint" bigint,
	"cursor" TEXT,
	"more" bool,
	"rows" INT
)
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'pull_wrapper';

CREATE FUNCTION sluice."subscription_lag"(
	"device_id" TEXT
) RETURNS TABLE (
	"edge_table" TEXT,
	"checkpoint" bigint,
	"pending" bigint,
	"oldest_pending" timestamp with time zone,
	"last_pulled" timestamp with time zone
)
STRICT STABLE SECURITY DEFINER PARALLEL RESTRICTED
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'subscription_lag_wrapper';

REVOKE EXECUTE ON FUNCTION sluice.publish(regclass, text, text[], text[], text, text, interval) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sluice.unpublish(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sluice.pull(text, text, bigint, bigint, integer, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sluice.subscription_lag(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sluice.purge_changes() FROM PUBLIC;

-- A device role may pull: grant_device grants sluice.pull and
-- sluice.subscription_lag too (revoke_device takes them back); the device
-- roles of 0.1.0 get them here.
CREATE OR REPLACE FUNCTION sluice.grant_device(role regrole, tenant text, device_id text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    r name := (SELECT rolname FROM pg_roles WHERE oid = $1);
BEGIN
    IF $2 IS NULL OR $2 = '' THEN
        RAISE EXCEPTION 'sluice.grant_device: the tenant is empty' USING ERRCODE = '22023';
    END IF;
    IF (SELECT rolsuper FROM pg_roles WHERE oid = $1) THEN
        RAISE EXCEPTION 'sluice.grant_device: role "%" is a superuser; a device role must be an ordinary role', r
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO sluice.device_roles AS d (role, tenant, device_id) VALUES (r, $2, $3)
    ON CONFLICT ON CONSTRAINT device_roles_pkey DO UPDATE
        SET tenant = EXCLUDED.tenant, device_id = EXCLUDED.device_id, granted_at = now();
    EXECUTE format('GRANT USAGE ON SCHEMA sluice TO %I', r);
    EXECUTE format('GRANT EXECUTE ON FUNCTION sluice.ingest(bytea) TO %I', r);
    EXECUTE format('GRANT EXECUTE ON FUNCTION sluice.pull(text, text, bigint, bigint, integer, text, text) TO %I', r);
    EXECUTE format('GRANT EXECUTE ON FUNCTION sluice.subscription_lag(text) TO %I', r);
END
$fn$;

CREATE OR REPLACE FUNCTION sluice.revoke_device(role regrole)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    r name := (SELECT rolname FROM pg_roles WHERE oid = $1);
BEGIN
    DELETE FROM sluice.device_roles d WHERE d.role = r;
    EXECUTE format('REVOKE EXECUTE ON FUNCTION sluice.ingest(bytea) FROM %I', r);
    EXECUTE format('REVOKE EXECUTE ON FUNCTION sluice.pull(text, text, bigint, bigint, integer, text, text) FROM %I', r);
    EXECUTE format('REVOKE EXECUTE ON FUNCTION sluice.subscription_lag(text) FROM %I', r);
    -- USAGE on the schema came with the grant; a reader keeps it.
    IF NOT EXISTS (SELECT FROM sluice.reader_roles rr WHERE rr.role = r) THEN
        EXECUTE format('REVOKE USAGE ON SCHEMA sluice FROM %I', r);
    END IF;
END
$fn$;
DO $do$
DECLARE
    r name;
BEGIN
    FOR r IN SELECT d.role FROM sluice.device_roles d JOIN pg_roles pr ON pr.rolname = d.role LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION sluice.pull(text, text, bigint, bigint, integer, text, text) TO %I', r);
        EXECUTE format('GRANT EXECUTE ON FUNCTION sluice.subscription_lag(text) TO %I', r);
    END LOOP;
END
$do$;
