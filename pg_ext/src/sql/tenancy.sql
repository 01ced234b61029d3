-- Tenancy: device roles bound to a location, readers limited to theirs.

-- A device role may ingest rows of its tenant only (checked inside
-- sluice.ingest); with device_id set, only batches of that device.
CREATE TABLE sluice.device_roles (
    role       name PRIMARY KEY,
    tenant     text NOT NULL CHECK (tenant <> ''),
    device_id  text,
    granted_at timestamptz DEFAULT now()
);

-- A reader role sees the rows of these tenants in tables where
-- sluice.enable_tenant_rls was run. Each role sees only its own rows here.
CREATE TABLE sluice.reader_roles (
    role   name NOT NULL,
    tenant text NOT NULL,
    PRIMARY KEY (role, tenant)
);
ALTER TABLE sluice.reader_roles ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON sluice.reader_roles FOR SELECT USING (role = current_user);
GRANT SELECT ON sluice.reader_roles TO PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('sluice.device_roles', '');
SELECT pg_catalog.pg_extension_config_dump('sluice.reader_roles', '');

CREATE FUNCTION sluice.grant_device(role regrole, tenant text, device_id text DEFAULT NULL)
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

CREATE FUNCTION sluice.revoke_device(role regrole)
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

CREATE FUNCTION sluice.grant_reader(role regrole, tenant text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    r name := (SELECT rolname FROM pg_roles WHERE oid = $1);
BEGIN
    IF $2 IS NULL OR $2 = '' THEN
        RAISE EXCEPTION 'sluice.grant_reader: the tenant is empty' USING ERRCODE = '22023';
    END IF;
    INSERT INTO sluice.reader_roles (role, tenant) VALUES (r, $2) ON CONFLICT DO NOTHING;
    EXECUTE format('GRANT USAGE ON SCHEMA sluice TO %I', r);
END
$fn$;

CREATE FUNCTION sluice.revoke_reader(role regrole, tenant text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    r name := (SELECT rolname FROM pg_roles WHERE oid = $1);
BEGIN
    DELETE FROM sluice.reader_roles rr WHERE rr.role = r AND rr.tenant = $2;
    -- USAGE on the schema came with the grant; kept while the role is still
    -- a reader of another tenant or a device role.
    IF NOT EXISTS (SELECT FROM sluice.reader_roles rr WHERE rr.role = r)
       AND NOT EXISTS (SELECT FROM sluice.device_roles d WHERE d.role = r) THEN
        EXECUTE format('REVOKE USAGE ON SCHEMA sluice FROM %I', r);
    END IF;
END
$fn$;

-- Row-level security on a target table: readers see the rows whose tenant
-- column is one of their tenants (sluice.reader_roles). The table's owner and
-- superusers (so sluice.ingest) are not affected.
CREATE FUNCTION sluice.enable_tenant_rls(target regclass, tenant_column text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    col text := $2;
BEGIN
    IF col IS NULL THEN
        SELECT t.tenant_column INTO col FROM sluice.tables t
        WHERE t.target = $1 AND t.tenant_column IS NOT NULL
        ORDER BY t.edge_table LIMIT 1;
        IF col IS NULL THEN
            RAISE EXCEPTION 'sluice.enable_tenant_rls: % is not registered with a tenant column', $1
                USING ERRCODE = '22023', HINT = 'pass the column: sluice.enable_tenant_rls(''<table>'', ''<tenant column>'')';
        END IF;
    END IF;
    PERFORM sluice._internal_column_type($1, col, 'sluice.enable_tenant_rls');
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', $1);
    EXECUTE format('DROP POLICY IF EXISTS sluice_tenant_read ON %s', $1);
    EXECUTE format(
        'CREATE POLICY sluice_tenant_read ON %s FOR SELECT USING (%I::text IN (SELECT r.tenant FROM sluice.reader_roles r))',
        $1, col);
END
$fn$;

-- The type of a column, or an ERROR 42703 naming it: every function taking a
-- column name checks it here before pasting it, quoted, into SQL.
CREATE FUNCTION sluice._internal_column_type(target regclass, col text, fn text)
RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    t text;
BEGIN
    SELECT format_type(a.atttypid, a.atttypmod) INTO t FROM pg_attribute a
    WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped;
    IF t IS NULL THEN
        RAISE EXCEPTION '%: column "%" does not exist in %', $3, $2, $1 USING ERRCODE = '42703';
    END IF;
    RETURN t;
END
$fn$;
