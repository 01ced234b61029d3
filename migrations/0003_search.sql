-- sluice cloud schema, version 3: key frames are searchable by words
-- (description, English) and by meaning (embedding: all-MiniLM-L6-v2, 384
-- float32 sent by the edge as a BLOB, now a pgvector column with an HNSW
-- cosine index; blobs already stored are converted in place).
SELECT sluice.enable_vectors('key_frames', 'embedding', 384, 'cosine');
SELECT sluice.enable_search('key_frames', 'description', 'english');
