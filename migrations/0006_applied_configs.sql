-- sluice cloud schema, version 6: configurations pushed to the boxes, and
-- what each box did with them (issue 13, "the configuration loop").
--
-- The cloud inserts a row per configuration change for a camera: status
-- 'pending'. The row is published to the boxes of its location (device_id
-- NULL: every box of the location; else only that box). The box receives it
-- (sluice.pull, sluice_apply), its pipeline applies it and writes status,
-- applied_at and error_message, and that comes back by the ordinary sync
-- (sluice.ingest). The columns are split by owner: the cloud owns what it
-- publishes (the desired settings), the edge owns status, received_at,
-- applied_at and error_message; an edge batch never overwrites a published
-- column of an existing row, and an edge update of its own columns is not
-- sent back down. Statuses: pending -> in_progress -> success | failed, or
-- superseded (a newer version for the same camera arrived before this one
-- was applied) or timed_out (its deadline had passed when the box received
-- it; never applied).
CREATE TABLE IF NOT EXISTS applied_configs (
  location_id    text NOT NULL,
  config_id      text NOT NULL,
  camera_id      text NOT NULL,
  device_id      text,
  version        integer NOT NULL,
  settings       jsonb NOT NULL,
  deadline       timestamptz,
  created_at     timestamptz NOT NULL DEFAULT now(),
  status         text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'in_progress', 'success', 'failed', 'superseded', 'timed_out')),
  received_at    timestamptz,
  applied_at     timestamptz,
  error_message  text,
  sluice_device  text,
  sluice_version bigint,
  PRIMARY KEY (location_id, config_id)
);
CREATE INDEX IF NOT EXISTS applied_configs_camera ON applied_configs (location_id, camera_id, version);

-- Up: the boxes' status (edge-owned columns).
SELECT sluice.register_table('applied_configs', 'applied_configs', ARRAY['location_id', 'config_id'],
                             tenant_column => 'location_id');
-- Down: the desired settings (cloud-owned columns).
SELECT sluice.publish('applied_configs',
                      columns => ARRAY['location_id', 'config_id', 'camera_id', 'device_id',
                                       'version', 'settings', 'deadline', 'created_at'],
                      tenant_column => 'location_id', device_column => 'device_id');

-- Which boxes run which version of each camera's configuration: the newest
-- success per (location, camera, box).
CREATE OR REPLACE VIEW config_versions AS
SELECT DISTINCT ON (location_id, camera_id, sluice_device)
       location_id, camera_id, sluice_device AS device_id, version, config_id, applied_at
  FROM applied_configs
 WHERE status = 'success'
 ORDER BY location_id, camera_id, sluice_device, version DESC;
