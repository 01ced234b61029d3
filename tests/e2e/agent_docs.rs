//! The examples of docs/agent.md, run as written: each ``` block of the
//! named command sections is a story of `$ ` lines (commands) followed by
//! the output they print. `sluice ...` runs the real agent (`sluice.toml`
//! is the test's configuration), `sqlite3 edge.db "SQL"` runs SQL on the
//! test's edge database, `psql cloud -c "SQL"` on its cloud database. The
//! expected output is compared line by line with what the command printed
//! on standard output: a line `...` stands for any number of lines, and
//! `...` inside a line for any text (times, byte counts). The tests run the
//! steps in the order of the document and check that none was left out.

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use sluice_tests::*;

/// One `$ ` line of an example and the output it shows.
#[derive(Debug, Clone)]
pub struct Step {
    pub command: String,
    pub expected: Vec<String>,
    /// Where it is in docs/agent.md (1-based line of the command).
    pub line: usize,
}

/// The steps of the examples of the sections whose heading starts with one
/// of `sections` (`### \`sluice quarantine `), in the order of the file.
pub fn steps(sections: &[&str]) -> Vec<Step> {
    let text = std::fs::read_to_string(repo_root().join("docs/agent.md")).unwrap();
    let mut out: Vec<Step> = Vec::new();
    let mut in_section = false;
    let mut in_block = false;
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("## ") || line.starts_with("### ") {
            in_section = sections.iter().any(|s| line.starts_with(s));
            continue;
        }
        if !in_section {
            continue;
        }
        if line.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            continue;
        }
        if let Some(command) = line.strip_prefix("$ ") {
            out.push(Step {
                command: command.to_owned(),
                expected: Vec::new(),
                line: i + 1,
            });
        } else if let Some(step) = out.last_mut() {
            step.expected.push(line.to_owned());
        } else {
            panic!(
                "docs/agent.md:{}: output before any command in an example",
                i + 1
            );
        }
    }
    assert!(!out.is_empty(), "no examples in sections {sections:?}");
    out
}

/// Whether `actual` is what `expected` shows (`...` lines and `...` inside
/// lines as the module says).
pub fn matches(expected: &[String], actual: &[&str]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((first, rest)) if first == "..." => {
            (0..=actual.len()).any(|skip| matches(rest, &actual[skip..]))
        }
        Some((first, rest)) => match actual.split_first() {
            Some((line, more)) => line_matches(first, line) && matches(rest, more),
            None => false,
        },
    }
}

fn line_matches(expected: &str, actual: &str) -> bool {
    let parts: Vec<&str> = expected.split("...").collect();
    if parts.len() == 1 {
        return expected == actual;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !actual.starts_with(first) || actual.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &actual[first.len()..];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// What a step printed, and whether it succeeded.
pub struct Ran {
    pub stdout: String,
    pub stderr: String,
    pub success: bool,
}

/// Runs the steps of a story in order against one edge and one cloud.
pub struct Story<'a> {
    steps: Vec<Step>,
    next: usize,
    pub config: PathBuf,
    pub edge: &'a Connection,
    pub cloud: &'a CloudDb,
    /// Environment for the `sluice` commands (a failpoint, ...), for the next step only.
    pub env: Vec<(String, String)>,
}

impl<'a> Story<'a> {
    pub fn new(
        sections: &[&str],
        config: &Path,
        edge: &'a Connection,
        cloud: &'a CloudDb,
    ) -> Story<'a> {
        Story {
            steps: steps(sections),
            next: 0,
            config: config.to_owned(),
            edge,
            cloud,
            env: Vec::new(),
        }
    }

    /// Runs the next step of the document, which must begin with `command`
    /// (so that the test and the document tell the same story), and checks
    /// its output against the document's.
    pub fn step(&mut self, command: &str) -> Ran {
        let step = self
            .steps
            .get(self.next)
            .unwrap_or_else(|| panic!("the examples have no step left for `{command}`"))
            .clone();
        self.next += 1;
        assert!(
            step.command.starts_with(command),
            "docs/agent.md:{}: the next example is `{}`, the test expected `{command}`",
            step.line,
            step.command
        );
        let ran = self.run(&step.command);
        let lines: Vec<&str> = ran.stdout.lines().collect();
        assert!(
            matches(&step.expected, &lines),
            "docs/agent.md:{}: `{}` printed\n{}\n(stderr: {})\nthe document shows\n{}",
            step.line,
            step.command,
            ran.stdout,
            ran.stderr,
            step.expected.join("\n")
        );
        ran
    }

    /// Every example step was run.
    pub fn finish(&self) {
        assert_eq!(
            self.next,
            self.steps.len(),
            "examples of docs/agent.md not run: {:?}",
            &self.steps[self.next..]
                .iter()
                .map(|s| format!("{}: {}", s.line, s.command))
                .collect::<Vec<_>>()
        );
    }

    fn run(&mut self, command: &str) -> Ran {
        if let Some(sql) = quoted_after(command, "sqlite3 edge.db ") {
            self.edge.execute_batch(&sql).unwrap();
            return Ran {
                stdout: String::new(),
                stderr: String::new(),
                success: true,
            };
        }
        if let Some(sql) = quoted_after(command, "psql cloud -c ") {
            self.cloud.client().batch_execute(&sql).unwrap();
            return Ran {
                stdout: String::new(),
                stderr: String::new(),
                success: true,
            };
        }
        let args = command.strip_prefix("sluice ").unwrap_or_else(|| {
            panic!("an example runs sluice, sqlite3 edge.db or psql cloud: {command}")
        });
        let config = self.config.to_str().unwrap().to_owned();
        let args: Vec<String> = args
            .split_whitespace()
            .map(|a| {
                if a == "sluice.toml" {
                    config.clone()
                } else {
                    a.to_owned()
                }
            })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = agent(&args);
        for (k, v) in self.env.drain(..) {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        Ran {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            success: out.status.success(),
        }
    }
}

/// The text between the double quotes after `prefix`.
fn quoted_after(command: &str, prefix: &str) -> Option<String> {
    let rest = command.strip_prefix(prefix)?;
    let inner = rest.strip_prefix('"')?.strip_suffix('"')?;
    Some(inner.to_owned())
}

#[test]
fn the_matcher_takes_ellipses_for_lines_and_for_text() {
    let e = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(matches(&e(&["a ... c"]), &["a b c"]));
    assert!(matches(&e(&["a ...", "..."]), &["a b", "x", "y"]));
    assert!(matches(&e(&["...", "z"]), &["z"]));
    assert!(!matches(&e(&["a ... c"]), &["a b d"]));
    assert!(!matches(&e(&["a"]), &["a", "b"]));
    assert!(matches(&e(&["x ... y ... z"]), &["x 1 y 2 z"]));
    assert!(!matches(&e(&["ab...ba"]), &["aba"]));
}
