-- The default edge schema of sluice (camera analytics), for SQLite with
-- sluice0.so loaded. Idempotent: safe to run at every start of the pipeline.
-- Times are ISO-8601 UTC text with milliseconds ('2026-11-22T10:15:03.250Z'),
-- which SQLite's date functions read and PostgreSQL casts to timestamptz.
-- Freed pages go back to the file system when sluice_enforce_budget drops
-- rows (it runs PRAGMA incremental_vacuum). Takes effect only on a new, empty
-- database; an existing one keeps its mode until a full VACUUM.
PRAGMA auto_vacuum = INCREMENTAL;
PRAGMA journal_mode = WAL;

-- Cameras of this box. Mutable: a camera is renamed or disabled later.
CREATE TABLE IF NOT EXISTS cameras (
  id          INTEGER PRIMARY KEY,
  camera_id   TEXT NOT NULL UNIQUE,
  location_id TEXT NOT NULL,
  name        TEXT,
  stream_url  TEXT,                      -- local only: may hold credentials
  enabled     INTEGER NOT NULL DEFAULT 1
);

-- Analysis sessions. Mutable: ended_at is set when the session closes.
CREATE TABLE IF NOT EXISTS sessions (
  id          INTEGER PRIMARY KEY,
  session_id  TEXT NOT NULL UNIQUE,
  location_id TEXT NOT NULL,
  camera_id   TEXT NOT NULL,
  started_at  TEXT NOT NULL,
  ended_at    TEXT
);

-- State changes of a division (a zone of the floor): RED/YELLOW/GREEN.
CREATE TABLE IF NOT EXISTS division_states (
  id              INTEGER PRIMARY KEY,
  session_id      TEXT NOT NULL,
  camera_id       TEXT NOT NULL,
  location_id     TEXT NOT NULL,
  frame_number    INTEGER NOT NULL,
  video_ts        REAL NOT NULL,          -- seconds into the video
  recorded_at     TEXT NOT NULL,
  state           TEXT NOT NULL CHECK (state IN ('RED', 'YELLOW', 'GREEN')),
  walking_waiters INTEGER NOT NULL DEFAULT 0,
  service_waiters INTEGER NOT NULL DEFAULT 0,
  total_staff     INTEGER NOT NULL DEFAULT 0,
  screenshot_path TEXT                    -- local only
);

-- State changes of a table in the room.
CREATE TABLE IF NOT EXISTS table_states (
  id          INTEGER PRIMARY KEY,
  session_id  TEXT NOT NULL,
  camera_id   TEXT NOT NULL,
  location_id TEXT NOT NULL,
  table_id    TEXT NOT NULL,
  recorded_at TEXT NOT NULL,
  state       TEXT NOT NULL CHECK (state IN ('IDLE', 'BUSY', 'CLEANING')),
  customers   INTEGER NOT NULL DEFAULT 0,
  waiters     INTEGER NOT NULL DEFAULT 0
);

-- Raw per-camera samples, one every few seconds.
CREATE TABLE IF NOT EXISTS metrics (
  id            INTEGER PRIMARY KEY,
  camera_id     TEXT NOT NULL,
  location_id   TEXT NOT NULL,
  recorded_at   TEXT NOT NULL,
  people_count  INTEGER NOT NULL,
  processing_ms REAL NOT NULL
);

-- Key frames. Mutable: the description, detections and embedding arrive
-- after the frame itself.
CREATE TABLE IF NOT EXISTS key_frames (
  id          INTEGER PRIMARY KEY,
  camera_id   TEXT NOT NULL,
  location_id TEXT NOT NULL,
  captured_at TEXT NOT NULL,
  image       BLOB,                       -- compressed image
  description TEXT,
  detections  TEXT,                       -- JSON
  embedding   BLOB                        -- float32 little-endian, set by `sluice embed`
);

-- Health of the box itself.
CREATE TABLE IF NOT EXISTS health_metrics (
  id           INTEGER PRIMARY KEY,
  location_id  TEXT NOT NULL,
  recorded_at  TEXT NOT NULL,
  cpu_pct      REAL,
  mem_used_mb  REAL,
  disk_free_mb REAL,
  temp_c       REAL
);

SELECT sluice_track('cameras', '{"mutable": true, "local_only": ["stream_url"], "key": ["location_id", "camera_id"]}');
SELECT sluice_track('sessions', '{"mutable": true, "time": "started_at", "key": ["location_id", "session_id"]}');
SELECT sluice_track('division_states', '{"local_only": ["screenshot_path"], "time": "recorded_at"}');
SELECT sluice_track('table_states', '{"time": "recorded_at"}');
SELECT sluice_track('metrics', '{"time": "recorded_at"}');
SELECT sluice_track('key_frames', '{"mutable": true, "time": "captured_at", "key": ["location_id", "id"]}');
SELECT sluice_track('health_metrics', '{"time": "recorded_at"}');

-- Configurations from the cloud (published by the cloud's migration 0006)
-- and what this box did with them. The cloud owns the desired settings
-- (location_id .. created_at): sluice_apply writes only those. The box owns
-- status, received_at, applied_at and error_message: the pipeline writes
-- them (sql/edge_configs.sql says how), and the sync takes them up. Rows
-- that sluice_apply writes are not sent back up; the pipeline's writes are.
CREATE TABLE IF NOT EXISTS applied_configs (
  location_id   TEXT NOT NULL,
  config_id     TEXT NOT NULL,
  camera_id     TEXT NOT NULL,
  device_id     TEXT,
  version       INTEGER NOT NULL,
  settings      TEXT NOT NULL,             -- JSON
  deadline      TEXT,
  created_at    TEXT NOT NULL,
  status        TEXT NOT NULL DEFAULT 'pending',
  received_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  applied_at    TEXT,
  error_message TEXT,
  PRIMARY KEY (location_id, config_id)
);
SELECT sluice_subscribe('applied_configs', '{"key": ["location_id", "config_id"]}');
SELECT sluice_track('applied_configs', '{"mutable": true, "key": ["location_id", "config_id"]}');

-- Five-minute rollup of the raw metrics (about 100 samples per camera and
-- window become one row): count, avg, max and p95 of both measurements, a
-- mergeable sketch of the processing time, and the raw rows packed. Run by
-- the agent every 5 minutes (`sluice_rollup_run()`); metrics_5m is created
-- and tracked as a mutable table keyed by (location_id, camera_id,
-- window_start), so a window updated by late rows is synced again.
SELECT sluice_rollup('metrics_5m', '{
  "source": "metrics", "time": "recorded_at", "width": "5 minutes",
  "group": ["location_id", "camera_id"], "target": "metrics_5m",
  "measures": {
    "samples": "count",
    "people_avg": "avg(people_count)", "people_max": "max(people_count)", "people_p95": "p95(people_count)",
    "processing_ms_avg": "avg(processing_ms)", "processing_ms_max": "max(processing_ms)",
    "processing_ms_p95": "p95(processing_ms)", "processing_ms_sketch": "sketch(processing_ms)",
    "raw": "pack"
  }
}');
