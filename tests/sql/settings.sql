-- The settings of the extension: defined when the library loads (any sluice
-- function loads it), and the prefix sluice. reserved, so that a misspelt
-- name is refused instead of becoming a placeholder that does nothing.
\set SHOW_CONTEXT never
SELECT sluice.retention_chunk_rows();
SHOW sluice.retention_interval;
SHOW sluice.retention_database;
SET sluice.retention_chunk_rows = 500;
SELECT sluice.retention_chunk_rows();
RESET sluice.retention_chunk_rows;
-- Refusals: a name that does not exist, a value out of range, and settings
-- that a session cannot change.
SET sluice.no_such_setting = 1;
SET sluice.retention_chunk = 10;
SET sluice.retention_chunk_rows = 0;
SET sluice.retention_interval = '1min';
SET sluice.retention_database = 'cloud';
SELECT sluice.retention_chunk_rows();
