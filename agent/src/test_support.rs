//! What the agent's tests that run against a real edge database share: the
//! built `sluice0.so` (`SLUICE_SQLITE_EXT`, else target/release/sluice0.so,
//! which scripts/build.sh makes).

use std::path::{Path, PathBuf};

/// The built SQLite extension; a test that needs it fails without it.
pub fn extension() -> PathBuf {
    let p = std::env::var_os("SLUICE_SQLITE_EXT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/sluice0.so")
        });
    assert!(
        p.is_file(),
        "the SQLite extension {} is missing: run `bash scripts/build.sh` (or set SLUICE_SQLITE_EXT)",
        p.display()
    );
    p
}
