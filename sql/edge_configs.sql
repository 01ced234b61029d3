-- The configuration loop at the edge: what the pipeline runs each time it
-- looks for configuration work (after a pull, or every few seconds), with
-- sluice0.so loaded. Idempotent.
--
-- 1. A configuration whose deadline had passed when the box received it is
--    never applied.
UPDATE applied_configs SET status = 'timed_out'
 WHERE status = 'pending' AND deadline IS NOT NULL
   AND julianday(received_at) > julianday(deadline);
-- 2. A newer version for the same camera supersedes one not yet applied.
UPDATE applied_configs SET status = 'superseded'
 WHERE status = 'pending'
   AND EXISTS (SELECT 1 FROM applied_configs AS newer
                WHERE newer.location_id = applied_configs.location_id
                  AND newer.camera_id = applied_configs.camera_id
                  AND newer.version > applied_configs.version
                  AND newer.status IN ('pending', 'in_progress', 'success'));
-- 3. What is left to apply, oldest first. The pipeline sets each to
--    'in_progress', applies it, then to 'success' with applied_at or to
--    'failed' with applied_at and error_message:
--      UPDATE applied_configs SET status = 'success',
--             applied_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
--       WHERE location_id = ? AND config_id = ?;
SELECT location_id, config_id, camera_id, version, settings
  FROM applied_configs WHERE status = 'pending' ORDER BY created_at, config_id;
