//! The embedding job's tests. The first ones are pure; the others run the
//! job against a real edge database (the default schema,
//! `sql/edge_schema.sql`, with `sluice0.so` loaded) and the real model: they
//! need the model (scripts/setup.sh, then `source scripts/env.sh`) and the
//! built extension (scripts/build.sh; `SLUICE_SQLITE_EXT`, else
//! target/release/sluice0.so). Moved here from sluice-inference, which no
//! longer knows the edge.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};
use sluice_inference::{cosine, Embedder, EmbedderConfig};

use super::*;
use crate::test_support::extension;

#[test]
fn blob_round_trip_and_layout() {
    let v = vec![1.0f32, -0.5, 0.25];
    let b = to_blob(&v);
    assert_eq!(b.len(), 12);
    assert_eq!(&b[..4], &1.0f32.to_le_bytes());
    assert_eq!(from_blob(&b).unwrap(), v);
    assert!(from_blob(&b[..5]).is_none());
}

#[test]
fn hash_depends_on_model_and_text() {
    assert_eq!(text_hash("m", "a"), text_hash("m", "a"));
    assert_ne!(text_hash("m", "a"), text_hash("m", "b"));
    assert_ne!(text_hash("m", "a"), text_hash("n", "a"));
    assert_ne!(text_hash("ma", ""), text_hash("m", "a"));
}

#[test]
fn identifiers_are_quoted() {
    assert_eq!(quote("key_frames"), "\"key_frames\"");
    assert_eq!(quote("a\"b"), "\"a\"\"b\"");
}

#[test]
fn the_hash_is_the_fnv_1a_of_earlier_releases() {
    // The hashes stored in sluice_embeddings by earlier runs must stay valid.
    assert_eq!(text_hash("m", "a"), 686_020_596_729_569_964);
}

/// The converted all-MiniLM-L6-v2 in `$SLUICE_MODEL_DIR`, with ONNX Runtime
/// from `$SLUICE_ORT_LIB`.
fn minilm() -> EmbedderConfig {
    EmbedderConfig::from_setup_env()
        .unwrap_or_else(|e| panic!("these tests run the real model: {e}"))
}

fn edge_db(dir: &Path) -> (PathBuf, Connection) {
    let path = dir.join("edge.db");
    Connection::open(&path).unwrap();
    let conn = crate::edge::open_connection(&path, &extension(), 5_000).unwrap();
    conn.execute_batch(include_str!("../../../sql/edge_schema.sql"))
        .unwrap();
    conn.query_row("SELECT sluice_device('test-box')", [], |_| Ok(()))
        .unwrap();
    (path, conn)
}

fn add_frame(conn: &Connection, id: i64, description: Option<&str>) {
    conn.execute(
        "INSERT INTO key_frames (id, camera_id, location_id, captured_at, description)
         VALUES (?1, 'cam-1', 'store-7', '2025-01-01T12:00:00Z', ?2)",
        params![id, description],
    )
    .unwrap();
}

fn vector(conn: &Connection, id: i64) -> Option<Vec<f32>> {
    let b: Option<Vec<u8>> = conn
        .query_row(
            "SELECT embedding FROM key_frames WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    b.map(|b| {
        assert_eq!(b.len(), 384 * 4, "a vector is 384 float32 = 1536 bytes");
        from_blob(&b).unwrap()
    })
}

fn pending(conn: &Connection) -> i64 {
    conn.query_row("SELECT sluice_pending('key_frames')", [], |r| r.get(0))
        .unwrap()
}

/// Acknowledges everything pending, as if the cloud had applied it.
fn sync_all(conn: &Connection) {
    while let Some(b) = conn
        .query_row("SELECT sluice_batch('key_frames', 1000)", [], |r| {
            r.get::<_, Option<Vec<u8>>>(0)
        })
        .unwrap()
    {
        conn.query_row("SELECT sluice_ack(?1)", [b], |_| Ok(()))
            .unwrap();
    }
    assert_eq!(pending(conn), 0);
}

#[test]
fn embeds_new_changed_and_removed_descriptions_and_the_rows_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (path, conn) = edge_db(dir.path());
    let ext = extension();
    add_frame(
        &conn,
        1,
        Some("A waiter carries plates of food to table four."),
    );
    add_frame(&conn, 2, Some("A car is parked in the loading zone."));
    add_frame(&conn, 3, None);
    add_frame(&conn, 4, Some("   "));
    sync_all(&conn);

    let cfg = EmbedJobConfig::new(minilm());
    let job = EmbedJob::load(&cfg).unwrap();
    let r = job.run(&path, &ext).unwrap();
    assert_eq!((r.embedded, r.refreshed, r.cleared, r.raced), (2, 0, 0, 0));
    assert_eq!(r.batches, 1);
    assert_eq!(r.bytes, 2 * 1536);
    assert!(!r.more_pending);
    assert!(vector(&conn, 3).is_none() && vector(&conn, 4).is_none());
    // The update made both rows pending: the vectors go to the cloud.
    assert_eq!(pending(&conn), 2);

    // The stored vectors are the model's, and mean what they should.
    let model = Embedder::load(&cfg.model).unwrap();
    let q = model
        .embed(&["someone serving a meal in the restaurant"])
        .unwrap()
        .remove(0);
    let (v1, v2) = (vector(&conn, 1).unwrap(), vector(&conn, 2).unwrap());
    assert!(cosine(&q, &v1) > cosine(&q, &v2) + 0.2);
    sync_all(&conn);

    // Nothing changed: nothing to do, nothing becomes pending.
    let r = job.run(&path, &ext).unwrap();
    assert_eq!((r.embedded, r.refreshed, r.batches), (0, 0, 0));
    assert_eq!(pending(&conn), 0);

    // A changed description is stale; a removed one loses its vector; an
    // unrelated update (detections) does not cause work.
    conn.execute_batch(
        "UPDATE key_frames SET description = 'An empty parking lot at night.' WHERE id = 1;
         UPDATE key_frames SET description = NULL WHERE id = 2;
         UPDATE key_frames SET description = 'A dog sleeps by the door.' WHERE id = 3;",
    )
    .unwrap();
    sync_all(&conn);
    conn.execute("UPDATE key_frames SET detections = '[]' WHERE id = 1", [])
        .unwrap();
    let r = job.run(&path, &ext).unwrap();
    assert_eq!((r.embedded, r.refreshed, r.cleared), (1, 1, 1));
    let v1_new = vector(&conn, 1).unwrap();
    assert!(cosine(&v1, &v1_new) < 0.5);
    assert!(vector(&conn, 2).is_none());
    assert!(vector(&conn, 3).is_some());
    let hashes: i64 = conn
        .query_row("SELECT count(*) FROM sluice_embeddings", [], |r| r.get(0))
        .unwrap();
    assert_eq!(hashes, 2, "one hash per embedded row");

    // A vector someone cleared is made again.
    conn.execute("UPDATE key_frames SET embedding = NULL WHERE id = 3", [])
        .unwrap();
    let r = job.run(&path, &ext).unwrap();
    assert_eq!(r.refreshed, 1);
    assert!(vector(&conn, 3).is_some());
}

#[test]
fn a_backlog_is_worked_off_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (path, conn) = edge_db(dir.path());
    for i in 1..=7 {
        add_frame(
            &conn,
            i,
            Some(&format!("Key frame number {i} of camera one.")),
        );
    }
    let mut cfg = EmbedJobConfig::new(minilm());
    cfg.max_rows_per_run = 5;
    cfg.model.batch_size = 2;
    let r = run_embed(&path, &extension(), &cfg).unwrap();
    assert_eq!((r.embedded, r.batches, r.more_pending), (5, 3, true));
    let r = run_embed(&path, &extension(), &cfg).unwrap();
    assert_eq!((r.embedded, r.batches, r.more_pending), (2, 1, false));
    let missing: i64 = conn
        .query_row(
            "SELECT count(*) FROM key_frames WHERE embedding IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(missing, 0);
}

#[test]
fn errors_name_the_database_and_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EmbedJobConfig::new(minilm());
    let e = run_embed(&dir.path().join("nope.db"), &extension(), &cfg).unwrap_err();
    assert!(format!("{e:#}").contains("nope.db"), "{e:#}");

    let (path, _conn) = edge_db(dir.path());
    let mut cfg = cfg;
    cfg.table = "frames".into();
    let e = run_embed(&path, &extension(), &cfg).unwrap_err();
    assert!(format!("{e:#}").contains("frames"), "{e:#}");
}
