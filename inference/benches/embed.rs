//! Embedding throughput and memory, for `scripts/bench-embed.sh`, which runs
//! Python's onnxruntime on the same model and inputs in the same run.
//!
//! cargo bench -p sluice-inference --bench embed -- SENTENCES_FILE [THREADS] [BATCH] [ROUNDS] [VECTORS_OUT]
//! cargo bench -p sluice-inference --bench embed -- job SENTENCES_FILE SQLITE_EXT
//!
//! The `job` form measures the agent's key-frame job (`sluice embed --json`,
//! built by scripts/build.sh) on a fresh edge database (the default schema):
//! a first run over every sentence as a key frame (model loading, embedding,
//! writes), then a run with nothing to do (the scan; model loading apart).
//!
//! Needs SLUICE_MODEL_DIR and SLUICE_ORT_LIB. Prints one JSON line per round
//! (tokenization included) and one with the process's memory.

use std::time::Instant;

use sluice_inference::{Embedder, EmbedderConfig};

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("job") {
        return job(&args[1], &args[2]);
    }
    let file = args
        .first()
        .expect("usage: embed SENTENCES_FILE [THREADS] [BATCH] [ROUNDS]");
    let threads: usize = args.get(1).map_or(2, |v| v.parse().unwrap());
    let batch: usize = args.get(2).map_or(32, |v| v.parse().unwrap());
    let rounds: usize = args.get(3).map_or(3, |v| v.parse().unwrap());
    let text = std::fs::read_to_string(file).expect("read sentences");
    let sentences: Vec<&str> = text.lines().collect();

    let dir =
        std::env::var_os("SLUICE_MODEL_DIR").expect("SLUICE_MODEL_DIR (source scripts/env.sh)");
    let mut cfg = EmbedderConfig::for_model_dir(dir);
    cfg.intra_threads = threads;
    cfg.batch_size = batch;
    let rss_before = status_kb("VmRSS:");
    let t = Instant::now();
    let e = Embedder::load(&cfg).expect("load the model");
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let first = e.embed(&sentences[..batch.min(sentences.len())]).unwrap(); // warm-up
    if let Some(path) = args.get(4) {
        // The first batch's vectors, float32 little-endian, for the script to
        // compare with Python's.
        let bytes: Vec<u8> = first
            .iter()
            .flatten()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        std::fs::write(path, bytes).expect("write vectors");
    }
    for _ in 0..rounds {
        let t = Instant::now();
        let v = e.embed(&sentences).unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(v.len(), sentences.len());
        println!(
            "{{\"side\": \"rust\", \"sentences\": {}, \"seconds\": {secs:.4}, \"per_second\": {:.1}}}",
            sentences.len(),
            sentences.len() as f64 / secs
        );
    }
    println!(
        "{{\"side\": \"rust\", \"rss_before_load_mb\": {:.1}, \"rss_mb\": {:.1}, \"peak_rss_mb\": {:.1}, \"load_ms\": {load_ms:.0}}}",
        rss_before as f64 / 1024.0,
        status_kb("VmRSS:") as f64 / 1024.0,
        status_kb("VmHWM:") as f64 / 1024.0
    );
}

/// The key-frame job, as the agent runs it (`sluice embed --json`, the
/// binary of `SLUICE_AGENT_BIN` or target/release/sluice): this crate only
/// embeds; the job and its edge SQL are the agent's.
fn job(file: &str, ext: &str) {
    let agent = std::env::var_os("SLUICE_AGENT_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/sluice")
        });
    assert!(
        agent.is_file(),
        "the agent {} is missing: run scripts/build.sh (or set SLUICE_AGENT_BIN)",
        agent.display()
    );
    let text = std::fs::read_to_string(file).expect("read sentences");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("edge.db");
    let ext = std::path::Path::new(ext);
    let conn = rusqlite::Connection::open(&db).unwrap();
    // SAFETY: loads the extension under measurement.
    unsafe {
        let _guard = rusqlite::LoadExtensionGuard::new(&conn).unwrap();
        conn.load_extension(ext, None::<&str>).unwrap();
    }
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/../sql/edge_schema.sql");
    conn.execute_batch(&std::fs::read_to_string(schema).unwrap())
        .unwrap();
    conn.execute_batch("BEGIN").unwrap();
    for (i, s) in text.lines().enumerate() {
        conn.execute(
            "INSERT INTO key_frames (id, camera_id, location_id, captured_at, description)
             VALUES (?1, 'cam-1', 'store-7', '2025-01-01T12:00:00Z', ?2)",
            rusqlite::params![i as i64 + 1, s],
        )
        .unwrap();
    }
    conn.execute_batch("COMMIT").unwrap();
    let size = |c: &rusqlite::Connection| -> i64 {
        c.query_row(
            "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    let model_dir = std::env::var("SLUICE_MODEL_DIR").expect("SLUICE_MODEL_DIR");
    let ort = std::env::var("SLUICE_ORT_LIB").expect("SLUICE_ORT_LIB");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[device]\nid = \"bench\"\n[edge]\ndatabase = \"{}\"\nextension = \"{}\"\n\
             [cloud]\nurl = \"postgres://bench@127.0.0.1/none\"\n\
             [embed]\nmax_rows_per_run = 1000000000\n[embed.model]\nmodel = \"{model_dir}/model.onnx\"\nonnxruntime = \"{ort}\"\n",
            db.display(),
            ext.display()
        ),
    )
    .unwrap();
    // One run of the agent's job: its JSON (load_ms, report.elapsed_ms, ...).
    let run = || -> serde_json::Value {
        let out = std::process::Command::new(&agent)
            .args(["embed", "--json", "--config"])
            .arg(&config)
            .env("SLUICE_LOG", "warn")
            .output()
            .expect("run the agent");
        assert!(
            out.status.success(),
            "sluice embed failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("sluice embed --json")
    };
    let before = size(&conn);
    let first = run();
    let growth = size(&conn) - before;
    let embedded = first["report"]["embedded"].as_i64().unwrap();
    // As before the job moved: model loading included in the first run.
    let first_ms =
        first["load_ms"].as_i64().unwrap() + first["report"]["elapsed_ms"].as_i64().unwrap();
    // A day of key frames on a busy box: copy the embedded rows (with their
    // vectors and hashes) up to 50,000, then time a run with nothing to do.
    let n = embedded;
    let copies = 50_000 / n.max(1);
    conn.execute_batch("BEGIN").unwrap();
    for k in 1..copies {
        conn.execute(
            "INSERT INTO key_frames (id, camera_id, location_id, captured_at, description, embedding)
             SELECT id + ?1, camera_id, location_id, captured_at, description, embedding
               FROM key_frames WHERE id <= ?2",
            [k * n, n],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO sluice_embeddings SELECT tbl, row_id + ?1, text_hash
               FROM sluice_embeddings WHERE row_id <= ?2",
            [k * n, n],
        )
        .unwrap();
    }
    conn.execute_batch("COMMIT").unwrap();
    // The run alone, with the model already loaded (its loading is apart).
    let second = run();
    let r = &second["report"];
    assert_eq!(
        r["embedded"].as_i64().unwrap() + r["refreshed"].as_i64().unwrap(),
        0
    );
    println!(
        "{{\"side\": \"job\", \"rows\": {}, \"first_run_ms\": {}, \"rows_per_second\": {:.1}, \"noop_rows\": {}, \"noop_run_ms\": {}, \"db_growth_bytes_per_row\": {:.0}}}",
        embedded,
        first_ms,
        embedded as f64 / (first_ms as f64 / 1e3),
        copies * n,
        r["elapsed_ms"],
        growth as f64 / embedded as f64
    );
}
