//! Embedding throughput and memory, for `scripts/bench-embed.sh`, which runs
//! Python's onnxruntime on the same model and inputs in the same run.
//!
//! cargo bench -p sluice-inference --bench embed -- SENTENCES_FILE [THREADS] [BATCH] [ROUNDS]
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
    e.embed(&sentences[..batch.min(sentences.len())]).unwrap(); // warm-up
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
