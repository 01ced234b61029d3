-- ALTER EXTENSION sluice UPDATE from 0.1.0, as a cloud made with that
-- release has it: a database with 0.1.0 installed from its own install
-- script (pg_ext/sql/sluice--0.1.0.sql) and a ledger row, updated, must have
-- the catalog of a fresh install of the current version, object for object,
-- and keep its rows (a ledger row of 0.1.0 has no digest, and is an
-- ordinary batch: re-send 0).
\pset null '(null)'
\set SHOW_CONTEXT never
SELECT current_database() AS regress_db,
       current_database() || '_v010' AS old_db,
       current_database() || '_fresh' AS fresh_db \gset
CREATE DATABASE :"old_db";
CREATE DATABASE :"fresh_db";
-- Every object of the extension, described: functions (arguments, result,
-- flags, settings, privileges, C symbol), tables (columns, constraints,
-- indexes, privileges), the tables pg_dump keeps. (The schema `tests` of a
-- `cargo pgrx test` build, which only a fresh install has, is left out.)
\set catalog 'SELECT string_agg(d, E''\n'' ORDER BY d) AS catalog FROM (SELECT pg_describe_object(dep.classid, dep.objid, dep.objsubid) AS d FROM pg_depend dep JOIN pg_extension e ON e.oid = dep.refobjid WHERE e.extname = ''sluice'' AND dep.deptype = ''e'' UNION ALL SELECT format(''function %s(%s) returns %s volatility=%s strict=%s secdef=%s parallel=%s config=%s acl=%s src=%s'', p.oid::regproc, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid), p.provolatile, p.proisstrict, p.prosecdef, p.proparallel, p.proconfig, p.proacl, p.prosrc) FROM pg_proc p WHERE p.pronamespace = ''sluice''::regnamespace UNION ALL SELECT format(''column %s.%s #%s %s notnull=%s default=%s'', a.attrelid::regclass, a.attname, a.attnum, format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(ad.adbin, ad.adrelid)) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum WHERE c.relnamespace = ''sluice''::regnamespace AND c.relkind = ''r'' AND a.attnum > 0 AND NOT a.attisdropped UNION ALL SELECT format(''constraint %s on %s: %s'', conname, conrelid::regclass, pg_get_constraintdef(oid)) FROM pg_constraint WHERE connamespace = ''sluice''::regnamespace UNION ALL SELECT format(''index %s'', pg_get_indexdef(i.indexrelid)) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = ''sluice''::regnamespace UNION ALL SELECT format(''table %s acl=%s rls=%s'', c.oid::regclass, c.relacl, c.relrowsecurity) FROM pg_class c WHERE c.relnamespace = ''sluice''::regnamespace AND c.relkind = ''r'' UNION ALL SELECT format(''policy %s on %s: %s'', polname, polrelid::regclass, pg_get_expr(polqual, polrelid)) FROM pg_policy WHERE polrelid IN (SELECT oid FROM pg_class WHERE relnamespace = ''sluice''::regnamespace) UNION ALL SELECT format(''dumped %s'', t) FROM pg_extension e, unnest(e.extconfig::regclass[]) AS t WHERE e.extname = ''sluice'') AS objects WHERE d <> ''schema tests'' AND d NOT LIKE ''function tests.%'''

\c :"fresh_db"
CREATE EXTENSION sluice CASCADE;
SELECT extversion FROM pg_extension WHERE extname = 'sluice';
:catalog \gset fresh_

\c :"old_db"
CREATE EXTENSION sluice VERSION '0.1.0' CASCADE;
SELECT extversion FROM pg_extension WHERE extname = 'sluice';
-- The ledger row of tests/corpus/batch-valid-raw-3.bin.
INSERT INTO sluice.batches (device_id, stream_id, edge_table, base_seq, last_seq, row_count, inserted)
VALUES ('fuzz-dev', 1311768467463790321, 'division_states', 0, 3, 3, 3);
ALTER EXTENSION sluice UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'sluice';
:catalog \gset updated_
SELECT :'fresh_catalog' = :'updated_catalog' AS same_catalog,
       array_length(string_to_array(:'fresh_catalog', E'\n'), 1) > 100 AS many_objects;
-- Differences, if any (empty when the catalogs are the same).
SELECT 'only in a fresh install: ' || l AS difference
  FROM unnest(string_to_array(:'fresh_catalog', E'\n')) AS l
EXCEPT SELECT 'only in a fresh install: ' || l FROM unnest(string_to_array(:'updated_catalog', E'\n')) AS l
UNION ALL
(SELECT 'only after the update: ' || l FROM unnest(string_to_array(:'updated_catalog', E'\n')) AS l
 EXCEPT SELECT 'only after the update: ' || l FROM unnest(string_to_array(:'fresh_catalog', E'\n')) AS l)
ORDER BY 1;
-- The ledger row of 0.1.0 is kept, without a digest, as an ordinary batch
-- (re-send 0): its batch, sent again, is a replay.
SELECT device_id, stream_id, base_seq, last_seq, digest, resend FROM sluice.batches;
SELECT * FROM sluice.ingest(:'batch_valid_raw_3');
-- The re-send number is part of the identity: a re-send of the same range
-- is a ledger row of its own, the same re-send twice is refused.
INSERT INTO sluice.batches (device_id, stream_id, edge_table, base_seq, last_seq, row_count, resend)
VALUES ('fuzz-dev', 1311768467463790321, 'division_states', 0, 3, 3, 1);
INSERT INTO sluice.batches (device_id, stream_id, edge_table, base_seq, last_seq, row_count, resend)
VALUES ('fuzz-dev', 1311768467463790321, 'division_states', 0, 3, 3, 1);
SELECT base_seq, last_seq, resend FROM sluice.batches ORDER BY resend;
SELECT count(*) AS streams FROM sluice.streams;

\c :"regress_db"
DROP DATABASE :"old_db" WITH (FORCE);
DROP DATABASE :"fresh_db" WITH (FORCE);
