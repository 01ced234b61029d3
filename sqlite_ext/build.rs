//! Records the git commit and the build profile for `sluice_debug()`.

use std::path::Path;
use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=SLUICE_GIT_COMMIT={commit}");
    // The profile's own name (`fuzz` for the overflow-checked build of the
    // fuzzers): cargo's PROFILE says only "debug" or "release", but OUT_DIR
    // is <target>/<profile>/build/<pkg>/out.
    let profile = std::env::var("OUT_DIR")
        .ok()
        .and_then(|d| {
            Path::new(&d)
                .ancestors()
                .nth(3)
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .filter(|n| ["debug", "release", "fuzz"].contains(&n.as_str()))
        .or_else(|| std::env::var("PROFILE").ok())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=SLUICE_BUILD_PROFILE={profile}");

    // Rebuild when HEAD moves (a checkout, or a commit on the current branch).
    let git = Path::new("../.git");
    println!("cargo:rerun-if-changed=build.rs");
    if git.join("HEAD").exists() {
        println!("cargo:rerun-if-changed=../.git/HEAD");
        if let Ok(head) = std::fs::read_to_string(git.join("HEAD")) {
            if let Some(r) = head.strip_prefix("ref: ") {
                let r = r.trim();
                if git.join(r).exists() {
                    println!("cargo:rerun-if-changed=../.git/{r}");
                }
            }
        }
    }
}
