-- sluice cloud schema, version 1: the default data model (camera analytics).
-- Every table carries the location (tenant) first in its key, so that keys
-- and conflict targets work unchanged when tables are distributed by
-- location_id (Citus). sluice_device and sluice_version are filled by
-- sluice.ingest from the batch: the device that sent the row and the row's
-- version at that device (what last-writer-wins compares).
CREATE EXTENSION IF NOT EXISTS sluice CASCADE;

CREATE TABLE IF NOT EXISTS cameras (
  location_id    text NOT NULL,
  camera_id      text NOT NULL,
  id             bigint NOT NULL,
  name           text,
  enabled        boolean NOT NULL DEFAULT true,
  sluice_device  text NOT NULL,
  sluice_version bigint NOT NULL,
  PRIMARY KEY (location_id, camera_id)
);

CREATE TABLE IF NOT EXISTS sessions (
  location_id    text NOT NULL,
  session_id     text NOT NULL,
  id             bigint NOT NULL,
  camera_id      text NOT NULL,
  started_at     timestamptz NOT NULL,
  ended_at       timestamptz,
  sluice_device  text NOT NULL,
  sluice_version bigint NOT NULL,
  PRIMARY KEY (location_id, session_id)
);

CREATE TABLE IF NOT EXISTS division_states (
  location_id     text NOT NULL,
  sluice_device   text NOT NULL,
  id              bigint NOT NULL,
  session_id      text NOT NULL,
  camera_id       text NOT NULL,
  frame_number    bigint NOT NULL,
  video_ts        double precision NOT NULL,
  recorded_at     timestamptz NOT NULL,
  state           text NOT NULL,
  walking_waiters integer NOT NULL,
  service_waiters integer NOT NULL,
  total_staff     integer NOT NULL,
  sluice_version  bigint NOT NULL,
  PRIMARY KEY (location_id, sluice_device, id)
);
CREATE INDEX IF NOT EXISTS division_states_time ON division_states (location_id, recorded_at);

CREATE TABLE IF NOT EXISTS table_states (
  location_id    text NOT NULL,
  sluice_device  text NOT NULL,
  id             bigint NOT NULL,
  session_id     text NOT NULL,
  camera_id      text NOT NULL,
  table_id       text NOT NULL,
  recorded_at    timestamptz NOT NULL,
  state          text NOT NULL,
  customers      integer NOT NULL,
  waiters        integer NOT NULL,
  sluice_version bigint NOT NULL,
  PRIMARY KEY (location_id, sluice_device, id)
);
CREATE INDEX IF NOT EXISTS table_states_time ON table_states (location_id, recorded_at);

CREATE TABLE IF NOT EXISTS metrics (
  location_id    text NOT NULL,
  sluice_device  text NOT NULL,
  id             bigint NOT NULL,
  camera_id      text NOT NULL,
  recorded_at    timestamptz NOT NULL,
  people_count   integer NOT NULL,
  processing_ms  double precision NOT NULL,
  sluice_version bigint NOT NULL,
  PRIMARY KEY (location_id, sluice_device, id)
);

CREATE TABLE IF NOT EXISTS key_frames (
  location_id    text NOT NULL,
  sluice_device  text NOT NULL,
  id             bigint NOT NULL,
  camera_id      text NOT NULL,
  captured_at    timestamptz NOT NULL,
  image          bytea,
  description    text,
  detections     jsonb,
  embedding      bytea,
  sluice_version bigint NOT NULL,
  PRIMARY KEY (location_id, sluice_device, id)
);

CREATE TABLE IF NOT EXISTS health_metrics (
  location_id    text NOT NULL,
  sluice_device  text NOT NULL,
  id             bigint NOT NULL,
  recorded_at    timestamptz NOT NULL,
  cpu_pct        double precision,
  mem_used_mb    double precision,
  disk_free_mb   double precision,
  temp_c         double precision,
  sluice_version bigint NOT NULL,
  PRIMARY KEY (location_id, sluice_device, id)
);

SELECT sluice.register_table('cameras', 'cameras', ARRAY['location_id', 'camera_id']);
SELECT sluice.register_table('sessions', 'sessions', ARRAY['location_id', 'session_id']);
SELECT sluice.register_table('division_states', 'division_states', ARRAY['location_id', 'sluice_device', 'id']);
SELECT sluice.register_table('table_states', 'table_states', ARRAY['location_id', 'sluice_device', 'id']);
SELECT sluice.register_table('metrics', 'metrics', ARRAY['location_id', 'sluice_device', 'id']);
SELECT sluice.register_table('key_frames', 'key_frames', ARRAY['location_id', 'sluice_device', 'id']);
SELECT sluice.register_table('health_metrics', 'health_metrics', ARRAY['location_id', 'sluice_device', 'id']);
