-- sluice.register_table: policies, checks, and identifiers that try to
-- escape their quotes.
\pset null '(null)'
\set SHOW_CONTEXT never
CREATE TABLE public.readings (camera text, ts timestamptz, people int, PRIMARY KEY (camera, ts));
SELECT sluice.register_table('readings', 'public.readings', ARRAY['camera', 'ts']);
SELECT edge_table, target, key_columns, policy, tenant_column FROM sluice.tables WHERE edge_table = 'readings';
-- Again, with another policy: the registration changes.
SELECT sluice.register_table('readings', 'public.readings', ARRAY['camera', 'ts'], 'first_writer_wins');
SELECT policy FROM sluice.tables WHERE edge_table = 'readings';
-- The columns it added.
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
 WHERE attrelid = 'public.readings'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum;

-- Refusals.
SELECT sluice.register_table('readings', 'public.readings', ARRAY['camera', 'ts'], 'newest_wins');
SELECT sluice.register_table('readings', 'public.readings', ARRAY['camera', 'nope']);
SELECT sluice.register_table('readings', 'public.readings', ARRAY['camera']);
SELECT sluice.register_table('readings', 'public.readings', ARRAY[]::text[]);
SELECT sluice.register_table('readings', 'public.readings', NULL);
SELECT sluice.register_table('readings', 'public.no_such_table', ARRAY['camera']);
-- A regclass of no relation (a dropped table's OID): named, not an internal error.
SELECT sluice.register_table('readings', 1::regclass, ARRAY['camera']);
SELECT sluice.register_table('readings', 'public.readings', ARRAY['camera', 'ts'], tenant_column => 'people');
SELECT sluice.register_table('', 'public.readings', ARRAY['camera', 'ts']);

-- Identifiers with quotes: they are names, never SQL.
CREATE TABLE public."we""ird; DROP TABLE readings; --" ("k""ey" text PRIMARY KEY, v int);
SELECT sluice.register_table('weird', 'public."we""ird; DROP TABLE readings; --"', ARRAY['k"ey']);
SELECT sluice.register_table('weird', 'public."we""ird; DROP TABLE readings; --"', ARRAY['k"ey"); DROP TABLE readings; --']);
SELECT edge_table, target, key_columns FROM sluice.tables WHERE edge_table = 'weird';
SELECT count(*) AS readings_still_there FROM public.readings;
