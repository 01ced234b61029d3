//! SQL regression tests of the PostgreSQL extension, as a DBA sees it: each
//! `tests/sql/NAME.sql` runs through `psql -a` (statements echoed, then their
//! output or error) in a fresh database with the default schema, and its
//! whole output must equal `tests/sql/expected/NAME.out`.
//!
//! The batch and sketch files of `tests/corpus/` are psql variables:
//! `:'batch_valid_raw_3'` is the bytea of `batch-valid-raw-3.bin`.
//!
//! After an intended change of behaviour, rewrite the expected files with
//! `SLUICE_REGRESS_UPDATE=1` and read the diff before committing it.

use std::path::{Path, PathBuf};
use std::process::Command;

use sluice_tests::*;

fn corpus_variables() -> Vec<String> {
    let mut vars = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("tests/corpus"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        let name = f.file_stem().unwrap().to_string_lossy().replace('-', "_");
        let hex: String = std::fs::read(&f)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        vars.push("-v".into());
        vars.push(format!("{name}=\\x{hex}"));
    }
    vars
}

fn psql() -> PathBuf {
    let pg = std::env::var("SLUICE_PG")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".cache/pg17"));
    pg.join("bin/psql")
}

fn run_file(sql: &Path, url: &str) -> String {
    // psql writes errors to stderr: both into one stream, in order.
    let merged = Command::new("sh")
        .arg("-c")
        .arg("exec \"$0\" \"$@\" 2>&1")
        .arg(psql())
        .args(["-X", "-a", "-q", "-v", "ON_ERROR_STOP=0"])
        .args(corpus_variables())
        .args(["-d", url, "-f", "-"])
        .stdin(std::fs::File::open(sql).unwrap())
        .env(
            "PGOPTIONS",
            "-c client_min_messages=warning -c TimeZone=UTC -c DateStyle=ISO",
        )
        .output()
        .unwrap();
    String::from_utf8_lossy(&merged.stdout).into_owned()
}

#[test]
fn sql_regression_files_give_their_expected_output() {
    let dir = repo_root().join("tests/sql");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no regression files in {}",
        dir.display()
    );
    let update = std::env::var_os("SLUICE_REGRESS_UPDATE").is_some();
    let results = repo_root().join("target/sql-regress");
    std::fs::create_dir_all(&results).unwrap();
    let mut failed = Vec::new();
    for f in &files {
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        let db = CloudDb::create(&format!("regress_{name}"));
        let got = run_file(f, &db.url);
        let expected_path = dir.join("expected").join(format!("{name}.out"));
        if update {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected {
            let got_path = results.join(format!("{name}.out"));
            std::fs::write(&got_path, &got).unwrap();
            let diff = Command::new("diff")
                .arg("-u")
                .arg(&expected_path)
                .arg(&got_path)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            eprintln!(
                "{name}: output differs from {}:\n{diff}",
                expected_path.display()
            );
            failed.push(name);
        }
    }
    assert!(
        failed.is_empty(),
        "regression files with different output: {failed:?} (results in {})",
        results.display()
    );
}
