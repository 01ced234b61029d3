-- sluice cloud schema, version 2: location_id is the tenant column of every
-- default table, so that device roles (sluice.grant_device) may ingest into
-- them, each only the rows of its own location. Registering again only
-- updates the registrations; no data changes.
SELECT sluice.register_table('cameras', 'cameras', ARRAY['location_id', 'camera_id'], tenant_column => 'location_id');
SELECT sluice.register_table('sessions', 'sessions', ARRAY['location_id', 'session_id'], tenant_column => 'location_id');
SELECT sluice.register_table('division_states', 'division_states', ARRAY['location_id', 'sluice_device', 'id'], tenant_column => 'location_id');
SELECT sluice.register_table('table_states', 'table_states', ARRAY['location_id', 'sluice_device', 'id'], tenant_column => 'location_id');
SELECT sluice.register_table('metrics', 'metrics', ARRAY['location_id', 'sluice_device', 'id'], tenant_column => 'location_id');
SELECT sluice.register_table('key_frames', 'key_frames', ARRAY['location_id', 'sluice_device', 'id'], tenant_column => 'location_id');
SELECT sluice.register_table('health_metrics', 'health_metrics', ARRAY['location_id', 'sluice_device', 'id'], tenant_column => 'location_id');
