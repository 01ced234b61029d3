//! The fuzzing corpus (`tests/corpus/`, written by `tests/fuzz/decoders.rs`)
//! fed to the real PostgreSQL extension: every batch is an ERROR (with the
//! same verdict as the Rust decoder) or a correct apply, every sketch an
//! ERROR or a value, and the backend keeps serving on the same connection.

use sluice_tests::*;

fn corpus(prefix: &str) -> Vec<(String, Vec<u8>)> {
    let dir = repo_root().join("tests/corpus");
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(n, _)| n.starts_with(prefix))
        .map(|(n, p)| (n, std::fs::read(p).unwrap()))
        .collect();
    files.sort();
    files
}

fn still_serving(c: &mut postgres::Client, after: &str) {
    let one: i32 = c
        .query_one("SELECT 1", &[])
        .unwrap_or_else(|e| panic!("the backend stopped serving after {after}: {e}"))
        .get(0);
    assert_eq!(one, 1);
}

#[test]
fn every_corpus_batch_is_an_error_or_a_correct_apply_and_the_backend_keeps_serving() {
    let cloud = CloudDb::create("corpus");
    let mut c = cloud.client();
    let batches = corpus("batch-");
    assert!(
        batches.len() >= 20,
        "tests/corpus holds {} batches",
        batches.len()
    );
    let (mut applied, mut refused) = (0, 0);
    for (name, bytes) in &batches {
        let decoded = sluice_wire::decode(bytes);
        let r = c.query_one(
            "SELECT inserted, updated, skipped, replay FROM sluice.ingest($1)",
            &[bytes],
        );
        match (r, &decoded) {
            (Ok(row), Ok(b)) => {
                applied += 1;
                let (ins, upd, skip, replay): (i64, i64, i64, bool) =
                    (row.get(0), row.get(1), row.get(2), row.get(3));
                assert_eq!(ins + upd + skip, i64::from(b.header.row_count), "{name}");
                if !replay && skip == 0 {
                    // Every row is in the cloud as the batch says.
                    let state_col = b
                        .header
                        .columns
                        .iter()
                        .position(|col| col.name == "state")
                        .unwrap();
                    for (r, v) in b.versions.iter().enumerate() {
                        let got: String = c
                            .query_one(
                                "SELECT state FROM division_states WHERE sluice_device = $1 AND sluice_stream = $2 AND id = $3",
                                &[&b.header.device_id, &(b.header.stream_id as i64), v],
                            )
                            .unwrap()
                            .get(0);
                        assert_eq!(
                            sluice_wire::Value::Text(got),
                            b.columns[state_col][r],
                            "{name}, row {r}"
                        );
                    }
                }
            }
            (Ok(_), Err(e)) => {
                panic!("{name}: PostgreSQL applied a batch the decoder refuses ({e})")
            }
            (Err(e), _) => {
                refused += 1;
                let db = e
                    .as_db_error()
                    .unwrap_or_else(|| panic!("{name}: not an ERROR but {e}"));
                assert!(
                    db.message().starts_with("sluice.ingest:"),
                    "{name}: {}",
                    db.message()
                );
                if decoded.is_ok() {
                    // A batch that decodes may still be refused for its mapping (table, columns).
                    assert!(
                        db.message().contains("not registered") || db.message().contains("column"),
                        "{name}: {}",
                        db.message()
                    );
                }
            }
        }
        still_serving(&mut c, name);
    }
    println!("{applied} batches applied, {refused} refused");
    assert!(
        applied >= 8 && refused >= 20,
        "{applied} applied, {refused} refused"
    );

    let sketches = corpus("sketch-");
    assert!(sketches.len() >= 5);
    for (name, bytes) in &sketches {
        let ok = sluice_wire::Sketch::decode(bytes).is_ok();
        let r = c.query_one("SELECT sluice.sketch_count($1)", &[bytes]);
        match r {
            Ok(row) => {
                assert!(ok, "{name}: PostgreSQL read a sketch the decoder refuses");
                let n: Option<i64> = row.get(0);
                assert_eq!(
                    n,
                    Some(sluice_wire::Sketch::decode(bytes).unwrap().count() as i64),
                    "{name}"
                );
            }
            Err(e) => {
                assert!(e.as_db_error().is_some(), "{name}: not an ERROR but {e}");
                assert!(!ok, "{name}: PostgreSQL refused a valid sketch: {e}");
            }
        }
        still_serving(&mut c, name);
    }
}
