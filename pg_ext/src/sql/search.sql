-- Full-text search and vectors on target tables.

-- Tables where sluice.enable_search / sluice.enable_vectors ran.
CREATE TABLE sluice.search_columns (
    target      regclass PRIMARY KEY,
    text_column text NOT NULL,
    tsv_column  text NOT NULL,
    config      regconfig NOT NULL
);
CREATE TABLE sluice.vector_columns (
    target        regclass PRIMARY KEY,
    vector_column text NOT NULL,
    dims          int NOT NULL,
    metric        text NOT NULL CHECK (metric IN ('cosine', 'l2', 'inner_product'))
);
SELECT pg_catalog.pg_extension_config_dump('sluice.search_columns', '');
SELECT pg_catalog.pg_extension_config_dump('sluice.vector_columns', '');
GRANT SELECT ON sluice.search_columns, sluice.vector_columns TO PUBLIC;

-- The schema pgvector lives in, quoted (its types and operators are
-- qualified with it: the functions here run with a fixed search_path).
CREATE FUNCTION sluice._internal_vector_schema() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT quote_ident(n.nspname) FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
    WHERE e.extname = 'vector'
$fn$;

-- The row as jsonb, without the columns that are large or internal.
CREATE FUNCTION sluice._internal_hidden_columns(target regclass) RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT coalesce(array_agg(a.attname::text), '{}') FROM pg_attribute a
    WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
      AND (a.atttypid IN ('bytea'::regtype, 'tsvector'::regtype)
           OR a.attname IN (SELECT v.vector_column FROM sluice.vector_columns v WHERE v.target = $1))
$fn$;

CREATE FUNCTION sluice.enable_search(target regclass, text_column text, config regconfig DEFAULT 'english')
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    ty   text := sluice._internal_column_type($1, $2, 'sluice.enable_search');
    tsv  text := left($2, 59) || '_tsv';
    old  sluice.search_columns;
    rel  record;
BEGIN
    IF ty NOT IN ('text') AND ty NOT LIKE 'character varying%' AND ty NOT LIKE 'character(%' THEN
        RAISE EXCEPTION 'sluice.enable_search: column "%" of % has type %; it needs text', $2, $1, ty
            USING ERRCODE = '42804';
    END IF;
    SELECT * INTO old FROM sluice.search_columns s WHERE s.target = $1;
    SELECT n.nspname, c.relname INTO rel FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1;
    IF old.target IS NOT NULL THEN
        IF old.text_column = $2 AND old.config = $3 THEN
            RETURN;
        END IF;
        EXECUTE format('ALTER TABLE %s DROP COLUMN IF EXISTS %I', $1, old.tsv_column);
    END IF;
    EXECUTE format(
        'ALTER TABLE %s ADD COLUMN %I tsvector GENERATED ALWAYS AS (to_tsvector(%L::regconfig, coalesce(%I, %L))) STORED',
        $1, tsv, $3::oid::regconfig::text, $2, '');
    EXECUTE format('CREATE INDEX %I ON %s USING gin (%I)', left(rel.relname, 40) || '_' || tsv || '_gin', $1, tsv);
    INSERT INTO sluice.search_columns VALUES ($1, $2, tsv, $3)
    ON CONFLICT ON CONSTRAINT search_columns_pkey DO UPDATE
        SET text_column = EXCLUDED.text_column, tsv_column = EXCLUDED.tsv_column, config = EXCLUDED.config;
END
$fn$;

CREATE FUNCTION sluice.search(target regclass, query text, k int DEFAULT 10)
RETURNS TABLE (row_data jsonb, rank real, snippet text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    s sluice.search_columns;
BEGIN
    SELECT * INTO s FROM sluice.search_columns c WHERE c.target = $1;
    IF s.target IS NULL THEN
        RAISE EXCEPTION 'sluice.search: search is not enabled on %', $1
            USING ERRCODE = '55000', HINT = 'run sluice.enable_search(table, text_column) first';
    END IF;
    -- The k best first, by rank alone; the row as jsonb and its snippet
    -- only for them (to_jsonb of every matching row would turn each one's
    -- vector into text: 4x slower at 100,000 rows, docs/BENCHMARKS.md).
    RETURN QUERY EXECUTE format(
        'SELECT to_jsonb(t) - $4, b.rank, ts_headline($3, t.%2$I, b.q, %3$L)
         FROM (SELECT t.ctid AS id, ts_rank_cd(t.%1$I, q) AS rank, q
               FROM %4$s t, websearch_to_tsquery($3, $1) AS q
               WHERE t.%1$I @@ q
               ORDER BY 2 DESC, t.ctid
               LIMIT $2) b
         JOIN %4$s t ON t.ctid = b.id
         ORDER BY b.rank DESC, b.id',
        s.tsv_column, s.text_column, 'StartSel=<b>, StopSel=</b>, MaxFragments=2, MinWords=5, MaxWords=20', $1)
    USING $2, $3, s.config, sluice._internal_hidden_columns($1);
END
$fn$;

-- float32 little-endian bytes as pgvector text ('[1,2,3]'); used to convert
-- a bytea column of embeddings in place. Defined in Rust:
-- sluice.float32_to_vector_text(bytes bytea, dims int DEFAULT NULL) -> text.

CREATE FUNCTION sluice.enable_vectors(target regclass, "column" text, dims int, metric text DEFAULT 'cosine')
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    vs     text := sluice._internal_vector_schema();
    ty     text;
    want   text := format('vector(%s)', $3);
    opc    text;
    idx    text;
    rel    record;
    old    sluice.vector_columns;
BEGIN
    opc := CASE $4 WHEN 'cosine' THEN 'vector_cosine_ops' WHEN 'l2' THEN 'vector_l2_ops'
                   WHEN 'inner_product' THEN 'vector_ip_ops' END;
    IF opc IS NULL THEN
        RAISE EXCEPTION 'sluice.enable_vectors: unknown metric ''%''; expected ''cosine'', ''l2'' or ''inner_product''', $4
            USING ERRCODE = '22023';
    END IF;
    IF $3 IS NULL OR $3 < 1 OR $3 > 2000 THEN
        RAISE EXCEPTION 'sluice.enable_vectors: dims must be between 1 and 2000 (an HNSW index limit), not %', $3
            USING ERRCODE = '22023';
    END IF;
    SELECT n.nspname, c.relname INTO rel FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1;
    SELECT format_type(a.atttypid, a.atttypmod) INTO ty FROM pg_attribute a
    WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped;
    IF ty IS NULL THEN
        EXECUTE format('ALTER TABLE %s ADD COLUMN %I %s.vector(%s)', $1, $2, vs, $3);
    ELSIF ty = 'bytea' THEN
        -- Embeddings stored as float32 blobs become vectors, in place.
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I TYPE %s.vector(%s) USING sluice.float32_to_vector_text(%I, %s)::%s.vector(%s)',
                       $1, $2, vs, $3, $2, $3, vs, $3);
    ELSIF ty NOT IN (want, vs || '.' || want) THEN
        RAISE EXCEPTION 'sluice.enable_vectors: column "%" of % has type %, not vector(%)', $2, $1, ty, $3
            USING ERRCODE = '42804';
    END IF;
    idx := left(rel.relname, 40) || '_' || left($2, 16) || '_hnsw';
    SELECT * INTO old FROM sluice.vector_columns v WHERE v.target = $1;
    IF old.target IS NOT NULL AND (old.metric <> $4 OR old.vector_column <> $2) THEN
        EXECUTE format('DROP INDEX IF EXISTS %I.%I', rel.nspname, left(rel.relname, 40) || '_' || left(old.vector_column, 16) || '_hnsw');
    END IF;
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %s USING hnsw (%I %s.%s)', idx, $1, $2, vs, opc);
    INSERT INTO sluice.vector_columns VALUES ($1, $2, $3, $4)
    ON CONFLICT ON CONSTRAINT vector_columns_pkey DO UPDATE
        SET vector_column = EXCLUDED.vector_column, dims = EXCLUDED.dims, metric = EXCLUDED.metric;
END
$fn$;

-- The distance operator of a table's vector column, qualified.
CREATE FUNCTION sluice._internal_distance_op(target regclass, fn text) RETURNS text[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    v sluice.vector_columns;
BEGIN
    SELECT * INTO v FROM sluice.vector_columns c WHERE c.target = $1;
    IF v.target IS NULL THEN
        RAISE EXCEPTION '%: vectors are not enabled on %', $2, $1
            USING ERRCODE = '55000', HINT = 'run sluice.enable_vectors(table, column, dims) first';
    END IF;
    RETURN ARRAY[v.vector_column,
                 format('OPERATOR(%s.%s)', sluice._internal_vector_schema(),
                        CASE v.metric WHEN 'cosine' THEN '<=>' WHEN 'l2' THEN '<->' ELSE '<#>' END)];
END
$fn$;

CREATE FUNCTION sluice.nearest(target regclass, query vector, k int DEFAULT 10)
RETURNS TABLE (row_data jsonb, distance float8)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    d text[] := sluice._internal_distance_op($1, 'sluice.nearest');
BEGIN
    RETURN QUERY EXECUTE format(
        'SELECT to_jsonb(t) - $3, (t.%1$I %2$s $1)::float8
         FROM %3$s t WHERE t.%1$I IS NOT NULL
         ORDER BY t.%1$I %2$s $1, t.ctid LIMIT $2',
        d[1], d[2], $1)
    USING $2, $3, sluice._internal_hidden_columns($1);
END
$fn$;

CREATE FUNCTION sluice.hybrid_search(target regclass, query_text text, query_vector vector, k int DEFAULT 10,
                                     text_weight float8 DEFAULT 1, vector_weight float8 DEFAULT 1,
                                     rrf_k int DEFAULT 60)
RETURNS TABLE (row_data jsonb, score float8, text_rank bigint, vector_rank bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    s sluice.search_columns;
    d text[] := sluice._internal_distance_op($1, 'sluice.hybrid_search');
BEGIN
    SELECT * INTO s FROM sluice.search_columns c WHERE c.target = $1;
    IF s.target IS NULL THEN
        RAISE EXCEPTION 'sluice.hybrid_search: search is not enabled on %', $1
            USING ERRCODE = '55000', HINT = 'run sluice.enable_search(table, text_column) first';
    END IF;
    IF $7 < 1 THEN
        RAISE EXCEPTION 'sluice.hybrid_search: rrf_k must be at least 1, not %', $7 USING ERRCODE = '22023';
    END IF;
    -- Each ranking contributes its best max(4k, 40) rows; a row's score is
    -- the weighted sum of 1 / (rrf_k + rank) over the rankings it is in.
    RETURN QUERY EXECUTE format(
        'WITH q AS (SELECT websearch_to_tsquery($5, $1) AS q),
         tr AS (SELECT t.ctid AS id, row_number() OVER (ORDER BY ts_rank_cd(t.%1$I, q.q) DESC, t.ctid) AS r
                FROM %3$s t, q WHERE t.%1$I @@ q.q
                ORDER BY ts_rank_cd(t.%1$I, q.q) DESC, t.ctid LIMIT $4),
         vr AS (SELECT v.id, row_number() OVER (ORDER BY v.dist, v.id) AS r
                FROM (SELECT t.ctid AS id, t.%2$I %4$s $2 AS dist FROM %3$s t WHERE t.%2$I IS NOT NULL
                      ORDER BY t.%2$I %4$s $2 LIMIT $4) v),
         fused AS (SELECT coalesce(tr.id, vr.id) AS id, tr.r AS tr_r, vr.r AS vr_r,
                          coalesce($6 / ($8 + tr.r), 0) + coalesce($7 / ($8 + vr.r), 0) AS score
                   FROM tr FULL JOIN vr ON tr.id = vr.id),
         -- The row as jsonb only for the k best.
         best AS (SELECT * FROM fused ORDER BY score DESC, tr_r NULLS LAST, vr_r NULLS LAST LIMIT $3)
         SELECT to_jsonb(t) - $9, f.score::float8, f.tr_r, f.vr_r
         FROM best f JOIN %3$s t ON t.ctid = f.id
         ORDER BY f.score DESC, f.tr_r NULLS LAST, f.vr_r NULLS LAST',
        s.tsv_column, d[1], $1, d[2])
    USING $2, $3, $4, greatest(4 * $4, 40), s.config, $5, $6, $7::float8, sluice._internal_hidden_columns($1);
END
$fn$;
