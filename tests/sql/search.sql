-- Full-text and vector search helpers on a small table of key frames.
\pset null '(null)'
\set SHOW_CONTEXT never
CREATE TABLE public.frames (id bigint PRIMARY KEY, description text, embedding_raw real[]);
INSERT INTO public.frames VALUES
  (1, 'a waiter carries two plates to table four', '{1,0,0}'),
  (2, 'the table near the window is empty and clean', '{0,1,0}'),
  (3, 'customers wave at the waiter for the bill', '{0.9,0.1,0}'),
  (4, 'staff cleaning the bar counter after closing', '{0,0,1}');
SELECT sluice.enable_search('public.frames', 'description');
SELECT row_data->>'id' AS id, snippet FROM sluice.search('public.frames', 'waiter', 10) ORDER BY rank DESC, (row_data->>'id')::int;
SELECT row_data->>'id' AS id FROM sluice.search('public.frames', '"table four" OR clean -bar', 10) ORDER BY rank DESC, (row_data->>'id')::int;
SELECT count(*) AS no_match FROM sluice.search('public.frames', 'helicopter', 10);
SELECT sluice.enable_vectors('public.frames', 'embedding', 3, 'cosine');
UPDATE public.frames SET embedding = embedding_raw::vector;
SELECT row_data->>'id' AS id, round(distance::numeric, 4) AS distance
  FROM sluice.nearest('public.frames', '[1,0,0]'::vector, 2);
SELECT row_data->>'id' AS id, text_rank, vector_rank
  FROM sluice.hybrid_search('public.frames', 'waiter', '[1,0,0]'::vector, 3) ORDER BY score DESC, (row_data->>'id')::int;

-- Refusals.
SELECT * FROM sluice.search('public.frames', 'waiter', 0);
SELECT * FROM sluice.search('public.frames', 'waiter', 100000000);
SELECT * FROM sluice.search('public.no_such', 'waiter', 3);
SELECT sluice.enable_search('public.frames', 'nope');
SELECT sluice.enable_vectors('public.frames', 'embedding2', 0, 'cosine');
SELECT sluice.enable_vectors('public.frames', 'embedding2', 3, 'manhattan');
SELECT * FROM sluice.nearest('public.frames', '[1,0]'::vector, 2);
SELECT * FROM sluice.nearest('public.frames', '[1,0,0]'::vector, -1);
-- A quoted name is a name: a second vector column called that (it becomes
-- the table's vector column for nearest and hybrid_search).
SELECT sluice.enable_vectors('public.frames', 'emb"; DROP TABLE public.frames; --', 3, 'cosine');
SELECT attname FROM pg_attribute WHERE attrelid = 'public.frames'::regclass AND attname LIKE 'emb%' ORDER BY attname;
SELECT count(*) AS frames_still_there FROM public.frames;
