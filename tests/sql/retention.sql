-- Retention: a policy, a run that deletes in chunks and keeps a summary,
-- and refusals.
\pset null '(null)'
\set SHOW_CONTEXT never
CREATE TABLE public.events (id bigint PRIMARY KEY, at timestamptz NOT NULL, camera text, people int);
INSERT INTO public.events
SELECT i, timestamptz '2026-01-01 00:00:00+00' + i * interval '1 minute', 'cam-' || (i % 2), i % 7
  FROM generate_series(1, 600) AS i;
INSERT INTO public.events
SELECT 1000 + i, now() - i * interval '1 minute', 'cam-' || (i % 2), i % 7
  FROM generate_series(1, 30) AS i;
CREATE TABLE public.events_hourly (at timestamptz, camera text, rows bigint, people bigint,
                                   PRIMARY KEY (at, camera));
SELECT sluice.set_retention('public.events', 'at', interval '30 days', 'public.events_hourly', 'hour',
                            ARRAY['camera'], '{"rows": "count(*)", "people": "sum(people)"}');
SELECT target, time_column, keep, summary, bucket, group_by FROM sluice.retention;
SET sluice.retention_chunk_rows = 100;
CALL sluice.run_retention();
SELECT count(*) AS left_rows, min(id) AS first_id FROM public.events;
SELECT camera, count(*) AS buckets, sum(rows) AS rows, sum(people) AS people
  FROM public.events_hourly GROUP BY camera ORDER BY camera;
-- Again: nothing more to do, the summary is unchanged.
CALL sluice.run_retention();
SELECT sum(rows) AS summarized FROM public.events_hourly;

-- Refusals.
SELECT sluice.set_retention('public.events', 'nope', interval '30 days');
SELECT sluice.set_retention('public.events', 'camera', interval '30 days');
SELECT sluice.set_retention('public.events', 'at', interval '-1 day');
SELECT sluice.set_retention('public.events', 'at', NULL);
SELECT sluice.set_retention('public.events', 'at', interval '30 days', 'public.events_hourly', 'fortnight');
SELECT sluice.set_retention('public.events', 'at', interval '30 days', 'public.events_hourly', 'hour',
                            ARRAY['camera'], '{"rows": "count(*); DROP TABLE public.events"}');
SELECT count(*) > 0 AS events_still_there FROM public.events;
SELECT sluice.drop_retention('public.events');
SELECT sluice.drop_retention('public.events');
