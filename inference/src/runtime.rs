//! ONNX Runtime, loaded once per process from an explicit library path.
//!
//! `ort` (feature `load-dynamic`) panics when a session is created before a
//! library was loaded, and keeps the first library it loads for the life of
//! the process. So: check the file first, call `ort::init_from` under
//! `catch_unwind`, build one environment, and keep it; a later request for a
//! different file is an error, not a silent reuse.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::InferenceError;

struct Loaded {
    path: PathBuf,
    env: ort::environment::Environment,
}

static LOADED: Mutex<Option<Loaded>> = Mutex::new(None);

/// The process's ONNX Runtime environment, loading `library` on first use.
pub fn environment(library: &Path) -> Result<ort::environment::Environment, InferenceError> {
    let err = |reason: String| InferenceError::Runtime {
        path: library.to_path_buf(),
        reason,
    };
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    let canonical = std::fs::canonicalize(library).map_err(|e| {
        err(format!(
            "{e}; install ONNX Runtime (scripts/setup.sh) or point `onnxruntime` / SLUICE_ORT_LIB at libonnxruntime.so"
        ))
    })?;
    if let Some(l) = loaded.as_ref() {
        if l.path != canonical {
            return Err(err(format!(
                "this process already loaded ONNX Runtime from {}; one library per process",
                l.path.display()
            )));
        }
        return Ok(l.env.clone());
    }
    if !canonical.is_file() {
        return Err(err("not a file".into()));
    }
    let built = catch_unwind(AssertUnwindSafe(|| {
        ort::init_from(&canonical)
            .map_err(|e| e.to_string())?
            .with_name("sluice")
            .build()
            .map_err(|e| e.to_string())
    }))
    .map_err(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        err(format!("loading panicked: {msg}"))
    })?
    .map_err(err)?;
    *loaded = Some(Loaded {
        path: canonical,
        env: built.clone(),
    });
    Ok(built)
}

/// The library this process loaded, if any.
pub fn loaded_library() -> Option<PathBuf> {
    LOADED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|l| l.path.clone())
}
