-- Merging the edge's quantile sketches (the byte format of sluice-wire).
\pset null '(null)'
\set SHOW_CONTEXT never
SELECT sluice.sketch_count(:'sketch_valid_empty') AS empty_count,
       sluice.sketch_quantile(:'sketch_valid_empty', 0.5) AS empty_p50;
SELECT sluice.sketch_count(:'sketch_valid_wide') AS n,
       round(sluice.sketch_quantile(:'sketch_valid_wide', 0.5)::numeric, 2) AS p50,
       round(sluice.sketch_quantile(:'sketch_valid_wide', 0.95)::numeric, 2) AS p95;
-- Merged with itself: twice the count, the same quantiles.
SELECT sluice.sketch_count(m) AS n, round(sluice.sketch_quantile(m, 0.95)::numeric, 2) AS p95
  FROM (SELECT sluice.sketch_merge(s) AS m
          FROM (VALUES (:'sketch_valid_wide'::bytea), (:'sketch_valid_wide'::bytea), (NULL::bytea)) AS t(s)) AS x;
SELECT sluice.sketch_merge(s) IS NULL AS merge_of_nothing FROM (SELECT NULL::bytea AS s WHERE false) AS t;
-- Refusals.
SELECT sluice.sketch_quantile(:'sketch_valid_wide', 1.5);
SELECT sluice.sketch_quantile(:'sketch_valid_wide', 'NaN');
SELECT sluice.sketch_count(:'sketch_err_45');
SELECT sluice.sketch_count(:'sketch_err_50');
SELECT sluice.sketch_count('\xdeadbeef'::bytea);
SELECT sluice.sketch_merge(s) FROM (VALUES (:'sketch_valid_wide'::bytea), (:'sketch_err_55'::bytea)) AS t(s);
SELECT 1 AS still_serving;
