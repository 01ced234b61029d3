//! `sluice_version()` and `sluice_debug()`: which extension is loaded.

use rusqlite::functions::Context;
use rusqlite::types::Value;

/// `sluice_version()`: `v` + the crate version.
pub fn sluice_version(_ctx: &Context<'_>) -> rusqlite::Result<Value> {
    Ok(Value::Text(version_string()))
}

pub fn version_string() -> String {
    format!("v{}", env!("CARGO_PKG_VERSION"))
}

/// `sluice_debug()`: version, git commit, SQLite runtime version and build
/// profile, as a JSON object.
pub fn sluice_debug(_ctx: &Context<'_>) -> rusqlite::Result<Value> {
    let v = serde_json::json!({
        "version": version_string(),
        "commit": env!("SLUICE_GIT_COMMIT"),
        "sqlite": rusqlite::version(),
        "profile": env!("SLUICE_BUILD_PROFILE"),
    });
    Ok(Value::Text(v.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn version_has_a_v() {
        assert_eq!(version_string(), format!("v{}", env!("CARGO_PKG_VERSION")));
    }
}
