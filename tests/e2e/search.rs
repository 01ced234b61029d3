//! Key frames end to end: descriptions written at the edge, embedded by the
//! agent with the real all-MiniLM-L6-v2 model on ONNX Runtime, synced into a
//! pgvector column, then found in PostgreSQL by meaning (`sluice.nearest`),
//! by words (`sluice.search`) and by both (`sluice.hybrid_search`).

use sluice_tests::*;

const FRAMES: [&str; 8] = [
    "a waiter cleaning table 4 after the guests left",
    "two customers waiting at the counter to pay",
    "a delivery driver dropping boxes at the back door",
    "a family of four reading the menu at table 2",
    "empty dining room with chairs stacked near the window",
    "a cook plating food in the kitchen",
    "a queue of six people at the entrance",
    "staff member restocking the drinks fridge",
];

fn model_config() -> String {
    let dir = std::env::var("SLUICE_MODEL_DIR")
        .expect("SLUICE_MODEL_DIR is not set: run the tests through scripts/test.sh (scripts/setup.sh installs the model)");
    let ort = std::env::var("SLUICE_ORT_LIB")
        .expect("SLUICE_ORT_LIB is not set: run the tests through scripts/test.sh");
    format!("\n[embed]\n[embed.model]\nmodel = \"{dir}/model.onnx\"\nonnxruntime = \"{ort}\"\n")
}

#[test]
fn a_key_frame_is_found_by_meaning_by_words_and_by_both() {
    let cloud = CloudDb::create("search");
    let dir = tempfile::tempdir().unwrap();
    let edge_path = dir.path().join("edge.db");
    let edge = edge_db(&edge_path, true);
    let rows: Vec<serde_json::Value> = FRAMES
        .iter()
        .enumerate()
        .map(|(i, d)| {
            serde_json::json!({"camera_id": "cam-01", "location_id": "store-042",
                "captured_at": iso_ms(1_795_000_000_000 + i as i64 * 60_000), "description": d})
        })
        .collect();
    insert_rows(&edge, "key_frames", &rows, 100);
    let config = write_config_with(
        dir.path(),
        &edge_path,
        &cloud.url,
        "box-1",
        1000,
        &model_config(),
    );
    let c = config.to_str().unwrap();

    let out = run_ok(&["embed", "--config", c]);
    assert!(out.contains("embed: 8 rows"), "{out}");
    let dims: Vec<i64> = edge
        .prepare("SELECT length(embedding) FROM key_frames ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(dims, vec![384 * 4; 8], "every frame has a 384-float vector");
    // A second run finds nothing stale.
    let out = run_ok(&["embed", "--config", c]);
    assert!(out.contains("embed: 0 rows"), "{out}");

    run_ok(&["sync", "--config", c, "--table", "key_frames"]);
    // `sluice verify` compares the vectors too (float32 bytes at the edge,
    // pgvector in the cloud), and finds them equal.
    let out = run_ok(&["verify", "--config", c, "--table", "key_frames"]);
    assert!(
        out.contains("different: 0") && out.contains("missing in the cloud: 0"),
        "{out}"
    );
    let mut pg = cloud.client();
    let n: i64 = pg
        .query_one(
            "SELECT count(*) FROM key_frames WHERE vector_dims(embedding) = 384",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 8, "the vectors arrived as vector(384)");

    // By meaning: no word in common with the right description.
    let query = "courier unloading parcels by rear entrance";
    let right = FRAMES[2];
    let words = |s: &str| {
        s.split_whitespace()
            .map(str::to_owned)
            .collect::<std::collections::HashSet<_>>()
    };
    assert!(words(query).is_disjoint(&words(right)));
    let vector = run_ok(&["embed", "--config", c, "--query", query]);
    let vector = vector.trim();
    let top: String = pg
        .query_one("SELECT row_data->>'description' FROM sluice.nearest('key_frames', $1::text::vector, 1)", &[&vector])
        .unwrap()
        .get(0);
    assert_eq!(top, right, "nearest by meaning");

    // By words.
    let top: String = pg
        .query_one(
            "SELECT row_data->>'description' FROM sluice.search('key_frames', 'menu family', 1)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(top, FRAMES[3], "search by words");

    // By both: words that point at one frame, a meaning that points at it too.
    let vector = run_ok(&[
        "embed",
        "--config",
        c,
        "--query",
        "someone wiping a table clean",
    ]);
    let top: String = pg
        .query_one(
            "SELECT row_data->>'description' FROM sluice.hybrid_search('key_frames', 'table', $1::text::vector, 1)",
            &[&vector.trim()],
        )
        .unwrap()
        .get(0);
    assert_eq!(top, FRAMES[0], "hybrid search");
}
