//! A missing or wrong ONNX Runtime library is an error, never a panic. Its
//! own test binary: a process keeps the first library it loads.

mod common;

use sluice_inference::{Embedder, InferenceError};

#[test]
fn missing_or_wrong_library_then_the_right_one() {
    let mut cfg = common::minilm();
    let lib = cfg.onnxruntime.clone().unwrap();

    cfg.onnxruntime = Some("/nonexistent/libonnxruntime.so".into());
    let e = Embedder::load(&cfg).unwrap_err();
    assert!(matches!(e, InferenceError::Runtime { .. }), "{e}");
    assert!(
        e.to_string().contains("/nonexistent/libonnxruntime.so"),
        "{e}"
    );
    assert!(e.to_string().contains("scripts/setup.sh"), "{e}");

    // A file that is not a shared library.
    cfg.onnxruntime = Some(cfg.model.with_file_name("tokenizer.json"));
    let e = Embedder::load(&cfg).unwrap_err();
    assert!(matches!(e, InferenceError::Runtime { .. }), "{e}");

    // A shared library that is not ONNX Runtime.
    let not_ort = [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("libz");
    cfg.onnxruntime = Some(not_ort.into());
    let e = Embedder::load(&cfg).unwrap_err();
    assert!(e.to_string().contains("OrtGetApiBase"), "{e}");

    // Still loads the right one afterwards.
    cfg.onnxruntime = Some(lib.clone());
    let v = Embedder::load(&cfg).unwrap().embed(&["ok"]).unwrap();
    assert_eq!(v[0].len(), 384);

    // And refuses to switch libraries in the same process.
    cfg.onnxruntime = Some(not_ort.into());
    let e = Embedder::load(&cfg).unwrap_err();
    assert!(e.to_string().contains("already loaded"), "{e}");

    // No library configured and none in the environment.
    cfg.onnxruntime = None;
    std::env::remove_var("SLUICE_ORT_LIB");
    let e = Embedder::load(&cfg).unwrap_err();
    assert!(e.to_string().contains("SLUICE_ORT_LIB"), "{e}");
}
