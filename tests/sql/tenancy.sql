-- Device roles ingest only their own location's rows; nothing else.
\pset null '(null)'
\set SHOW_CONTEXT never
DROP ROLE IF EXISTS regress_box_a;
DROP ROLE IF EXISTS regress_box_b;
CREATE ROLE regress_box_a;
CREATE ROLE regress_box_b;
SELECT tenant_column FROM sluice.tables WHERE edge_table = 'division_states';
-- The corpus batches are of device 'fuzz-dev' at location 'store-042'.
SELECT sluice.grant_device('regress_box_a', 'store-042', 'fuzz-dev');
SELECT sluice.grant_device('regress_box_b', 'store-999');
SELECT role, tenant, device_id FROM sluice.device_roles ORDER BY role;
SET ROLE regress_box_a;
SELECT inserted, replay FROM sluice.ingest(:'batch_valid_raw_3');
-- A device role can do nothing else.
SELECT count(*) FROM division_states;
SELECT * FROM sluice.batches;
SELECT sluice.register_table('x', 'division_states', ARRAY['id']);
RESET ROLE;
SET ROLE regress_box_b;
SELECT * FROM sluice.ingest(:'batch_valid_raw_20');
RESET ROLE;
SELECT count(*) AS rows, count(*) FILTER (WHERE location_id = 'store-042') AS of_store_042 FROM division_states;
-- Not a superuser, not a missing role, not a quote in a tenant.
SELECT sluice.grant_device('postgres', 'store-042');
SELECT sluice.grant_device('regress_no_such_role', 'store-042');
SELECT sluice.grant_device('regress_box_b', '');
SELECT sluice.revoke_device('regress_box_a');
SELECT sluice.revoke_device('regress_box_b');
SET ROLE regress_box_a;
SELECT * FROM sluice.ingest(:'batch_valid_raw_20');
RESET ROLE;
-- revoke_device takes back all that grant_device gave.
SELECT has_schema_privilege('regress_box_a', 'sluice', 'USAGE') AS usage_left,
       has_function_privilege('regress_box_a', 'sluice.ingest(bytea)', 'EXECUTE') AS execute_left;
DROP ROLE regress_box_a;
DROP ROLE regress_box_b;
