-- Retention: expired rows are deleted in short transactions, whole
-- partitions dropped, and, where configured, rolled up into a summary table
-- first. sluice.set_retention registers a policy; CALL sluice.run_retention()
-- applies every policy (from cron, pg_cron or by hand).

CREATE TABLE sluice.retention (
    target       regclass PRIMARY KEY,
    time_column  text NOT NULL,
    keep         interval NOT NULL,
    summary      regclass,
    bucket       text CHECK (bucket IN ('minute', 'hour', 'day', 'week', 'month')),
    group_by     text[] NOT NULL DEFAULT '{}',
    measures     jsonb NOT NULL DEFAULT '{}',
    -- Buckets before this are in the summary; rows before it may be deleted.
    rolled_up_to timestamptz,
    last_run_at  timestamptz,
    last_deleted bigint,
    last_dropped int,
    set_at       timestamptz DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('sluice.retention', '');

-- "avg(x)" -> 'avg("x")' after checking the function and the column.
CREATE FUNCTION sluice.retention_measure(target regclass, spec text)
RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    m text[] := regexp_match(spec, '^\s*(count|sum|avg|min|max)\s*\(\s*(.*?)\s*\)\s*$', 'i');
    fn text;
BEGIN
    IF m IS NULL THEN
        RAISE EXCEPTION 'sluice.set_retention: measure "%" is not one of count(*), count(col), sum(col), avg(col), min(col), max(col)', spec
            USING ERRCODE = '22023';
    END IF;
    fn := lower(m[1]);
    IF m[2] = '*' THEN
        IF fn <> 'count' THEN
            RAISE EXCEPTION 'sluice.set_retention: measure "%": only count takes *', spec USING ERRCODE = '22023';
        END IF;
        RETURN 'count(*)';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = target AND attname = m[2]
                   AND attnum > 0 AND NOT attisdropped) THEN
        RAISE EXCEPTION 'sluice.set_retention: column "%" of measure "%" does not exist in %', m[2], spec, target
            USING ERRCODE = '42703';
    END IF;
    RETURN format('%s(%I)', fn, m[2]);
END $fn$;

CREATE FUNCTION sluice.set_retention(
    target regclass,
    time_column text,
    keep interval,
    summary regclass DEFAULT NULL,
    bucket text DEFAULT 'hour',
    group_by text[] DEFAULT '{}',
    measures jsonb DEFAULT '{"rows": "count(*)"}'
) RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    ty text;
    col text;
    m record;
BEGIN
    SELECT format_type(atttypid, NULL) INTO ty FROM pg_attribute
    WHERE attrelid = target AND attname = time_column AND attnum > 0 AND NOT attisdropped;
    IF ty IS NULL THEN
        RAISE EXCEPTION 'sluice.set_retention: column "%" does not exist in %', time_column, target
            USING ERRCODE = '42703';
    END IF;
    IF ty NOT IN ('timestamp with time zone', 'timestamp without time zone', 'date') THEN
        RAISE EXCEPTION 'sluice.set_retention: column "%" of % has type %; the time column must be timestamptz, timestamp or date', time_column, target, ty
            USING ERRCODE = '42804';
    END IF;
    IF keep IS NULL OR keep <= interval '0' THEN
        RAISE EXCEPTION 'sluice.set_retention: keep must be a positive interval, not %', coalesce(keep::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF summary IS NOT NULL THEN
        IF bucket IS NULL OR bucket NOT IN ('minute', 'hour', 'day', 'week', 'month') THEN
            RAISE EXCEPTION 'sluice.set_retention: bucket must be minute, hour, day, week or month, not %', coalesce(bucket, 'NULL')
                USING ERRCODE = '22023';
        END IF;
        IF summary = target THEN
            RAISE EXCEPTION 'sluice.set_retention: the summary cannot be the table itself' USING ERRCODE = '22023';
        END IF;
        IF jsonb_typeof(measures) IS DISTINCT FROM 'object' THEN
            RAISE EXCEPTION 'sluice.set_retention: measures must be a JSON object {"summary column": "avg(column)", ...}'
                USING ERRCODE = '22023';
        END IF;
        -- Every name is checked against the catalogs (and quoted when used).
        FOREACH col IN ARRAY array_prepend(time_column, coalesce(group_by, '{}')) LOOP
            IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = target AND attname = col
                           AND attnum > 0 AND NOT attisdropped) THEN
                RAISE EXCEPTION 'sluice.set_retention: group column "%" does not exist in %', col, target
                    USING ERRCODE = '42703';
            END IF;
            IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = summary AND attname = col
                           AND attnum > 0 AND NOT attisdropped) THEN
                RAISE EXCEPTION 'sluice.set_retention: summary table % has no column "%"', summary, col
                    USING ERRCODE = '42703';
            END IF;
        END LOOP;
        FOR m IN SELECT key, value FROM jsonb_each_text(measures) LOOP
            PERFORM sluice.retention_measure(target, m.value);
            IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = summary AND attname = m.key
                           AND attnum > 0 AND NOT attisdropped) THEN
                RAISE EXCEPTION 'sluice.set_retention: summary table % has no column "%"', summary, m.key
                    USING ERRCODE = '42703';
            END IF;
        END LOOP;
    END IF;
    INSERT INTO sluice.retention AS r (target, time_column, keep, summary, bucket, group_by, measures)
    VALUES (target, time_column, keep, summary,
            CASE WHEN summary IS NULL THEN NULL ELSE bucket END,
            coalesce(group_by, '{}'), coalesce(measures, '{}'))
    ON CONFLICT ON CONSTRAINT retention_pkey DO UPDATE SET
        time_column = EXCLUDED.time_column, keep = EXCLUDED.keep, summary = EXCLUDED.summary,
        bucket = EXCLUDED.bucket, group_by = EXCLUDED.group_by, measures = EXCLUDED.measures,
        -- Another summary or bucket starts over; the same one keeps its watermark.
        rolled_up_to = CASE WHEN r.summary IS NOT DISTINCT FROM EXCLUDED.summary
                             AND r.bucket IS NOT DISTINCT FROM EXCLUDED.bucket
                            THEN r.rolled_up_to END,
        set_at = now();
END $fn$;

-- Removes a policy (the table's rows stay).
CREATE FUNCTION sluice.drop_retention(target regclass) RETURNS boolean
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $fn$
    WITH d AS (DELETE FROM sluice.retention r WHERE r.target = $1 RETURNING 1)
    SELECT count(*) > 0 FROM d;
$fn$;

-- Applies the policies: for each table, roll complete expired buckets up
-- into the summary (one transaction), drop partitions whose upper bound is
-- expired (one transaction each), delete the other expired rows by ranges of
-- pages (a TID range scan; about sluice.retention_chunk_rows rows each, one
-- transaction each). With in_chunks => false nothing is committed: all of it
-- runs in the caller's transaction (for tests, or CALL inside BEGIN ...).
-- No SET clause: a procedure with one cannot COMMIT. Names are qualified.
CREATE PROCEDURE sluice.run_retention(only_target regclass DEFAULT NULL, in_chunks boolean DEFAULT true)
LANGUAGE plpgsql AS $proc$
DECLARE
    r record;
    leaf record;
    chunk int := sluice.retention_chunk_rows();
    ty text;
    cutoff timestamptz;
    del_cut timestamptz;
    hi timestamptz;
    cols text;
    exprs text;
    groups text;
    m record;
    n bigint;
    deleted bigint;
    dropped int;
    nblocks bigint;
    per_block float8;
    step bigint;
    blk bigint;
    bound text;
    upper_text text;
    expired boolean;
BEGIN
    FOR r IN SELECT * FROM sluice.retention p
             WHERE only_target IS NULL OR p.target = only_target
             ORDER BY p.target::text LOOP
        deleted := 0;
        dropped := 0;
        SELECT pg_catalog.format_type(a.atttypid, NULL) INTO ty FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = r.target AND a.attname = r.time_column AND NOT a.attisdropped;
        IF ty IS NULL THEN
            RAISE EXCEPTION 'sluice.run_retention: column "%" no longer exists in %', r.time_column, r.target
                USING ERRCODE = '42703';
        END IF;
        cutoff := pg_catalog.clock_timestamp() - r.keep;
        del_cut := cutoff;

        -- 1. Roll up the complete buckets that expired since the last run.
        IF r.summary IS NOT NULL THEN
            hi := pg_catalog.date_trunc(r.bucket, cutoff);
            IF r.rolled_up_to IS NULL OR r.rolled_up_to < hi THEN
                cols := pg_catalog.format('%I', r.time_column);
                exprs := pg_catalog.format('pg_catalog.date_trunc(%L, %I)', r.bucket, r.time_column);
                groups := '1';
                FOR n IN 1 .. coalesce(pg_catalog.array_length(r.group_by, 1), 0) LOOP
                    cols := cols || pg_catalog.format(', %I', r.group_by[n]);
                    exprs := exprs || pg_catalog.format(', %I', r.group_by[n]);
                    groups := groups || ', ' || (n + 1);
                END LOOP;
                FOR m IN SELECT key, value FROM pg_catalog.jsonb_each_text(r.measures) ORDER BY key LOOP
                    cols := cols || pg_catalog.format(', %I', m.key);
                    exprs := exprs || ', ' || sluice.retention_measure(r.target, m.value);
                END LOOP;
                EXECUTE pg_catalog.format(
                    'INSERT INTO %s (%s) SELECT %s FROM %s WHERE %I < $1::%s AND ($2::timestamptz IS NULL OR %I >= $2::%s) GROUP BY %s',
                    r.summary, cols, exprs, r.target, r.time_column, ty, r.time_column, ty, groups)
                USING hi, r.rolled_up_to;
                UPDATE sluice.retention p SET rolled_up_to = hi WHERE p.target = r.target;
                r.rolled_up_to := hi;
                IF in_chunks THEN COMMIT; END IF;
            END IF;
            -- Rows of a bucket not rolled up yet wait for the next run.
            del_cut := coalesce(r.rolled_up_to, '-infinity');
        END IF;

        -- 2. Each leaf table (the table itself when it is not partitioned).
        FOR leaf IN
            SELECT t.relid, c.relkind, c.relpages, c.reltuples,
                   (pt.partstrat = 'r' AND pt.partnatts = 1 AND a.attname = r.time_column) AS by_time,
                   pg_catalog.pg_get_expr(c.relpartbound, c.oid) AS bound
            FROM (SELECT p.relid, p.parentrelid, p.isleaf
                  FROM pg_catalog.pg_partition_tree(r.target) p
                  UNION ALL  -- a table outside any partition tree has no rows there
                  SELECT r.target, NULL, true
                  WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_partition_tree(r.target))) t
            JOIN pg_catalog.pg_class c ON c.oid = t.relid
            LEFT JOIN pg_catalog.pg_partitioned_table pt ON pt.partrelid = t.parentrelid
            LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
            WHERE t.isleaf AND c.relkind = 'r'
            ORDER BY t.relid::regclass::text
        LOOP
            expired := false;
            IF leaf.by_time THEN
                upper_text := (pg_catalog.regexp_match(leaf.bound, $re$TO \('((?:[^']|'')*)'\)$re$))[1];
                IF upper_text IS NOT NULL THEN
                    EXECUTE pg_catalog.format('SELECT $1::%s <= $2::%s', ty, ty)
                    INTO expired USING pg_catalog.replace(upper_text, '''''', ''''), del_cut;
                END IF;
            END IF;
            IF expired THEN
                EXECUTE pg_catalog.format('DROP TABLE %s', leaf.relid::regclass);
                dropped := dropped + 1;
                IF in_chunks THEN COMMIT; END IF;
                CONTINUE;
            END IF;
            -- Ranges of pages holding about `chunk` rows each.
            nblocks := pg_catalog.pg_relation_size(leaf.relid)
                       / pg_catalog.current_setting('block_size')::int;
            per_block := CASE WHEN leaf.relpages > 0 AND leaf.reltuples > 0
                              THEN leaf.reltuples / leaf.relpages ELSE 100 END;
            step := greatest(1, (chunk / per_block)::bigint);
            blk := 0;
            WHILE blk < nblocks LOOP
                EXECUTE pg_catalog.format(
                    'DELETE FROM %s WHERE ctid >= $1 AND ctid < $2 AND %I < $3::%s',
                    leaf.relid::regclass, r.time_column, ty)
                USING pg_catalog.format('(%s,0)', blk)::tid,
                      pg_catalog.format('(%s,0)', least(blk + step, 4294967295))::tid,
                      del_cut;
                GET DIAGNOSTICS n = ROW_COUNT;
                deleted := deleted + n;
                blk := blk + step;
                IF in_chunks THEN COMMIT; END IF;
            END LOOP;
        END LOOP;

        UPDATE sluice.retention p SET last_run_at = pg_catalog.now(), last_deleted = deleted,
               last_dropped = dropped
        WHERE p.target = r.target;
        IF in_chunks THEN COMMIT; END IF;
    END LOOP;
END $proc$;
