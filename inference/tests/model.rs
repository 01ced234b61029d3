//! The real all-MiniLM-L6-v2 through ONNX Runtime: known similarities,
//! batching, padding, truncation, pooling, and errors that name the problem.
//! Needs `SLUICE_MODEL_DIR` and `SLUICE_ORT_LIB` (scripts/env.sh); fails, never
//! skips, without them.

mod common;

use std::sync::OnceLock;

use sluice_inference::{cosine, Embedder, InferenceError, Pooling};

fn embedder() -> &'static Embedder {
    static E: OnceLock<Embedder> = OnceLock::new();
    E.get_or_init(|| Embedder::load(&common::minilm()).expect("load all-MiniLM-L6-v2"))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const FOOD: &str = "A man is eating food.";
const BREAD: &str = "A man is eating a piece of bread.";
const BABY: &str = "The girl is carrying a baby.";

#[test]
fn known_similarities_of_all_minilm() {
    let v = embedder().embed(&[FOOD, BREAD, BABY]).unwrap();
    assert_eq!(v.len(), 3);
    assert!(v.iter().all(|x| x.len() == 384));
    let bread = cosine(&v[0], &v[1]);
    let baby = cosine(&v[0], &v[2]);
    assert!((bread - 0.74).abs() < 0.03, "cos(food, bread) = {bread}");
    assert!((baby + 0.11).abs() < 0.03, "cos(food, baby) = {baby}");
    for x in &v {
        let norm: f32 = x.iter().map(|a| a * a).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
}

#[test]
fn a_batch_gives_what_single_texts_give() {
    let texts = [
        FOOD,
        BREAD,
        BABY,
        "Table T4 is busy: four customers and one waiter at the counter.",
        "Empty parking lot at night",
    ];
    let batch = embedder().embed(&texts).unwrap();
    for (t, b) in texts.iter().zip(&batch) {
        let single = embedder().embed(&[t]).unwrap().remove(0);
        let d = max_abs_diff(&single, b);
        assert!(d <= 1e-5, "{t:?}: batch vs single differ by {d}");
    }
}

#[test]
fn padding_does_not_change_a_vector() {
    // Alone, the short text has no padding; beside a long one, most of its
    // row is padding.
    let short = "A cat.";
    let long = "A delivery driver carries three large boxes through the back door of the \
                restaurant while two waiters clean the tables near the window.";
    let alone = embedder().embed(&[short]).unwrap().remove(0);
    let padded = embedder().embed(&[long, short]).unwrap().remove(1);
    let d = max_abs_diff(&alone, &padded);
    assert!(d <= 1e-5, "padding changed the vector by {d}");
}

#[test]
fn empty_input_and_empty_text() {
    assert!(embedder().embed(&[]).unwrap().is_empty());
    let v = embedder().embed(&[""]).unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].len(), 384);
    assert!(v[0].iter().all(|x| x.is_finite()));
}

#[test]
fn a_very_long_text_is_truncated_at_max_length() {
    let long: String = (0..3000)
        .map(|i| format!("camera {i} sees a customer "))
        .collect();
    let longer = format!("{long} and then something completely different happens at the end");
    let v = embedder().embed(&[&long, &longer]).unwrap();
    assert_eq!(v[0].len(), 384);
    // Both are cut at 256 tokens, long before their tails differ.
    let d = max_abs_diff(&v[0], &v[1]);
    assert!(d <= 1e-6, "truncated texts differ by {d}");
    // More texts than one batch, in order.
    let many: Vec<&str> = std::iter::repeat_n([FOOD, BABY], 40).flatten().collect();
    let out = embedder().embed(&many).unwrap();
    assert_eq!(out.len(), 80);
    assert!(max_abs_diff(&out[79], &out[1]) <= 1e-5);
}

#[test]
fn mean_pooling_of_token_vectors_matches_the_pooled_graph() {
    let mut cfg = common::minilm();
    cfg.output = "token_embeddings".into();
    cfg.pooling = Pooling::Mean;
    cfg.batch_size = 4;
    let mean = Embedder::load(&cfg).unwrap();
    let texts = [FOOD, BREAD, "A cat."];
    let ours = mean.embed(&texts).unwrap();
    let graph = embedder().embed(&texts).unwrap();
    for (a, b) in ours.iter().zip(&graph) {
        let d = max_abs_diff(a, b);
        assert!(d <= 1e-5, "mean pooling in Rust vs in the graph: {d}");
    }
    cfg.pooling = Pooling::Cls;
    let cls = Embedder::load(&cfg).unwrap().embed(&[FOOD]).unwrap();
    assert_eq!(cls[0].len(), 384);
    assert!(cosine(&cls[0], &graph[0]) < 0.999);
}

#[test]
fn config_mistakes_are_errors_that_name_them() {
    let base = common::minilm();

    let mut c = base.clone();
    c.model = c.model.with_file_name("nope.onnx");
    let e = Embedder::load(&c).unwrap_err();
    assert!(matches!(e, InferenceError::Model { .. }), "{e}");
    assert!(e.to_string().contains("nope.onnx"), "{e}");

    let mut c = base.clone();
    c.output = "pooled".into();
    let e = Embedder::load(&c).unwrap_err().to_string();
    assert!(
        e.contains("no graph output 'pooled'") && e.contains("sentence_embedding"),
        "{e}"
    );

    let mut c = base.clone();
    c.dims = 768;
    let e = Embedder::load(&c).unwrap_err().to_string();
    assert!(e.contains("expected [1, 768]"), "{e}");

    let mut c = base.clone();
    c.pooling = Pooling::Mean; // the default output is already pooled: rank 2
    let e = Embedder::load(&c).unwrap_err().to_string();
    assert!(e.contains("pooling = Mean"), "{e}");

    let mut c = base.clone();
    c.input_ids = "ids".into();
    let e = Embedder::load(&c).unwrap_err().to_string();
    assert!(e.contains("graph input 'input_ids'"), "{e}");

    let mut c = base.clone();
    c.tokenizer = Some(c.model.with_file_name("missing-tokenizer.json"));
    let e = Embedder::load(&c).unwrap_err();
    assert!(matches!(e, InferenceError::Tokenizer { .. }), "{e}");

    // Not an ONNX file at all.
    let mut c = base.clone();
    c.model = c.model.with_file_name("tokenizer.json");
    let e = Embedder::load(&c).unwrap_err();
    assert!(e.to_string().contains("cannot load"), "{e}");
}
