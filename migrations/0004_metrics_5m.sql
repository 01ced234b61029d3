-- sluice cloud schema, version 4: the five-minute rollup of the raw metrics,
-- computed at the edge by the rollup 'metrics_5m' of sql/edge_schema.sql
-- (sluice_rollup / sluice_rollup_run) and synced like any mutable table: a
-- window that late rows changed at the edge arrives again with a higher
-- version and replaces the older row (last writer wins).
-- The key is the rollup's group columns plus the window start, location
-- first (the tenant column, as in every sluice table). The edge's local id
-- is not uploaded.
-- processing_ms_sketch is a sluice sketch (docs/wire-format.md): windows
-- merge into hours and days with 1 % relative error; raw holds the window's
-- raw rows, brotli-compressed JSON (sluice_unpack at the edge).
CREATE TABLE IF NOT EXISTS metrics_5m (
  location_id          text NOT NULL,
  camera_id            text NOT NULL,
  window_start         timestamptz NOT NULL,
  samples              bigint NOT NULL,
  people_avg           double precision,
  people_max           integer,
  people_p95           double precision,
  processing_ms_avg    double precision,
  processing_ms_max    double precision,
  processing_ms_p95    double precision,
  processing_ms_sketch bytea,
  raw                  bytea,
  sluice_device        text NOT NULL,
  sluice_version       bigint NOT NULL,
  PRIMARY KEY (location_id, camera_id, window_start)
);

SELECT sluice.register_table('metrics_5m', 'metrics_5m', ARRAY['location_id', 'camera_id', 'window_start'], tenant_column => 'location_id');
