//! Argument fuzzing of every function of the PostgreSQL extension: each
//! function, aggregate and procedure of the schema `sluice` (read from
//! `pg_proc`, as `\df sluice.*` lists them) is called with random arguments
//! of its argument types (NULLs, extremes, NaN and infinities, quotes, huge
//! text, mutated JSON, the batches and sketches of `tests/corpus/` mutated,
//! existing and missing tables and roles, values that do not even cast), on a
//! PostgreSQL of the test's own with the default cloud schema.
//!
//! Properties: every call gives a result or an ERROR with a SQLSTATE and a
//! message, never an internal error (`XX000`, which is what a Rust panic
//! caught by pgrx becomes) and never a hang (`statement_timeout` 10 s); the
//! backend keeps serving (`SELECT 1` after each call on the same connection,
//! same backend pid at the end); the server never crashed (the same
//! `pg_postmaster_start_time()`, and no "terminated by signal" in its log).
//!
//! `SLUICE_PG_FUZZ_CASES` (default 2,000) cases, `SLUICE_SEED` (default: the
//! clock).

use std::collections::BTreeMap;
use std::time::Instant;

use sluice_tests::*;

/// One of a list of string literals.
trait PickStr {
    fn s(&mut self, v: &[&'static str]) -> &'static str;
}

impl PickStr for Rng {
    fn s(&mut self, v: &[&'static str]) -> &'static str {
        v[self.below(v.len())]
    }
}

/// A function of the schema `sluice`.
#[derive(Debug)]
struct Function {
    name: String,
    /// `f` function, `a` aggregate, `p` procedure.
    kind: String,
    args: Vec<String>,
    defaults: usize,
    set: bool,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\0', "").replace('\'', "''"))
}

fn bytea(b: &[u8]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("'\\x{hex}'::bytea")
}

const TEXTS: &[&str] = &[
    "division_states",
    "metrics_5m",
    "key_frames",
    "public.division_states",
    "sluice.tables",
    "nope",
    "",
    " ",
    "'",
    "\"",
    "x\"; DROP TABLE division_states; --",
    "recorded_at",
    "at",
    "body",
    "embedding",
    "window_start",
    "id",
    "location_id",
    "last_writer_wins",
    "first_writer_wins",
    "insert_only",
    "whatever_wins",
    "hour",
    "minute",
    "day",
    "week",
    "month",
    "year",
    "english",
    "cosine",
    "l2",
    "inner_product",
    "manhattan",
    "lyon",
    "box-1",
    "waiting OR wiping",
    "cleaning table -counter",
    "!!!",
    "a & | ! b",
    "é€\u{1F600}",
    "\\",
    "%s%n",
    "count(*)",
];

const JSONS: &[&str] = &[
    r#"{"rows": "count(*)"}"#,
    r#"{"samples": "count(*)", "people_avg": "avg(people)", "people_max": "max(people)"}"#,
    r#"{"n": "count(id)", "s": "sum(id)", "lo": "min(recorded_at)", "hi": "max(recorded_at)"}"#,
    r#"{"x": "pg_sleep(100)"}"#,
    r#"{"x": "count(*); DROP TABLE division_states"}"#,
    r#"{"x": 1}"#,
    r#"{"": "count(*)"}"#,
    "{}",
    "[]",
    "null",
    "1",
    r#""count(*)""#,
];

const TABLES: &[&str] = &[
    "public.division_states",
    "public.metrics",
    "public.metrics_5m",
    "public.key_frames",
    "public.cameras",
    "public.sessions",
    "public.health_metrics",
    "public.table_states",
    "public.fuzz_t",
    "sluice.tables",
    "sluice.batches",
    "sluice.devices",
    "pg_catalog.pg_class",
    "information_schema.tables",
    "public.fuzz_v",
    "public.fuzz_seq",
    "public.nope",
];

const INTERVALS: &[&str] = &[
    "1 day",
    "2 days",
    "1 microsecond",
    "0",
    "-5 years",
    "infinity",
    "-infinity",
    "178000000 years",
    "1 mon",
    "P1Y2M3DT4H5M6S",
    "-1 microsecond",
];

fn random_text(rng: &mut Rng) -> String {
    // PostgreSQL text cannot hold NUL.
    sluice_tests::random_text(rng, 48, false)
}

fn mutate(rng: &mut Rng, mut b: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + rng.below(4) {
        let len = b.len();
        match rng.below(5) {
            0 if len > 0 => {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
            1 => b.truncate(rng.below(len + 1)),
            2 if len >= 4 => {
                let i = rng.below(len - 3);
                let lie = *rng.pick(&[0u32, 1, 0x7fff_ffff, u32::MAX, 64 << 20]);
                b[i..i + 4].copy_from_slice(&lie.to_le_bytes());
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let j = (i + 1 + rng.below(16)).min(len);
                b.drain(i..j);
            }
            _ => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(i..i, bytes);
            }
        }
    }
    b
}

fn mutate_text(rng: &mut Rng, s: &str) -> String {
    String::from_utf8_lossy(&mutate(rng, s.as_bytes().to_vec())).into_owned()
}

fn text_value(rng: &mut Rng) -> String {
    match rng.below(10) {
        0..=4 => rng.s(TEXTS).to_string(),
        5 => rng.s(JSONS).to_string(),
        6 => {
            let s = rng.s(TEXTS);
            mutate_text(rng, s)
        }
        7 => "x".repeat(1 << rng.below(17)),
        _ => random_text(rng),
    }
}

/// An SQL expression for a random value of type `ty`.
fn value(rng: &mut Rng, ty: &str, corpus: &[Vec<u8>], roles: &[String]) -> String {
    if rng.chance(8) {
        return format!("NULL::{ty}");
    }
    if rng.chance(5) {
        // A value that may not even cast to the type.
        return format!("{}::{ty}", quote(&text_value(rng)));
    }
    match ty {
        "text" | "name" | "character varying" => quote(&text_value(rng)),
        "bytea" => {
            let b = match rng.below(4) {
                0 => Vec::new(),
                1 => (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
                _ => rng.pick(corpus).clone(),
            };
            bytea(&if rng.chance(50) { mutate(rng, b) } else { b })
        }
        "regclass" => format!("{}::regclass", quote(rng.s(TABLES))),
        "regrole" => format!("{}::regrole", quote(&roles[rng.below(roles.len())])),
        "regconfig" => format!(
            "{}::regconfig",
            quote(rng.s(&["english", "simple", "pg_catalog.german", "nope"]))
        ),
        "text[]" => {
            let n = rng.below(5);
            let items: Vec<String> = (0..n)
                .map(|_| {
                    if rng.chance(10) {
                        "NULL".into()
                    } else {
                        quote(&text_value(rng))
                    }
                })
                .collect();
            format!("ARRAY[{}]::text[]", items.join(", "))
        }
        "integer" | "smallint" => rng
            .s(&[
                "0",
                "1",
                "-1",
                "3",
                "2000",
                "16000",
                "16001",
                "2147483647",
                "(-2147483647 - 1)",
                "100000",
            ])
            .to_string(),
        "bigint" => rng
            .s(&[
                "0",
                "1",
                "-1",
                "9223372036854775807",
                "(-9223372036854775807 - 1)",
            ])
            .to_string(),
        "double precision" | "real" => format!(
            "{}::{ty}",
            quote(rng.s(&[
                "0",
                "-0",
                "0.5",
                "1",
                "1.5",
                "-1",
                "NaN",
                "Infinity",
                "-Infinity",
                "1e308",
                "-1e308",
                "5e-324",
                "95",
            ]))
        ),
        "boolean" => rng.s(&["true", "false"]).to_string(),
        "interval" => format!("{}::interval", quote(rng.s(INTERVALS))),
        "jsonb" | "json" => {
            let j = rng.s(JSONS).to_string();
            let j = if rng.chance(40) {
                mutate_text(rng, &j)
            } else {
                j
            };
            format!("{}::{ty}", quote(&j))
        }
        t if t.ends_with("vector") => {
            let dims = *rng.pick(&[0usize, 1, 3, 3, 3, 384, 2001, 16001]);
            let items: Vec<String> = (0..dims)
                .map(|_| rng.s(&["0", "1", "-1", "0.5", "1e38", "1e-38"]).to_string())
                .collect();
            format!("{}::{ty}", quote(&format!("[{}]", items.join(","))))
        }
        _ => format!("NULL::{ty}"),
    }
}

/// Valid calls (as in docs/postgres.md, on this test's tables): a third of
/// the cases take one and replace some arguments with random values of
/// their types, so the fuzzing reaches past the first argument check.
fn valid_calls(corpus: &[(String, Vec<u8>)]) -> Vec<(&'static str, Vec<String>)> {
    let file = |name: &str| {
        bytea(
            &corpus
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("tests/corpus/{name} is missing"))
                .1,
        )
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        (
            "register_table",
            s(&[
                "'fuzz_t'",
                "'public.fuzz_t'::regclass",
                "ARRAY['id']::text[]",
                "'last_writer_wins'",
                "NULL::text",
            ]),
        ),
        (
            "register_table",
            s(&[
                "'fuzz_t'",
                "'public.fuzz_t'::regclass",
                "ARRAY['id']::text[]",
                "'insert_only'",
                "'location_id'",
            ]),
        ),
        (
            "set_retention",
            s(&["'public.fuzz_t'::regclass", "'at'", "'2 days'::interval"]),
        ),
        (
            "set_retention",
            s(&[
                "'public.fuzz_t'::regclass",
                "'at'",
                "'1 hour'::interval",
                "'public.fuzz_sum'::regclass",
                "'hour'",
                "ARRAY['location_id']::text[]",
                "'{\"n\": \"count(*)\", \"hi\": \"max(id)\"}'::jsonb",
            ]),
        ),
        ("drop_retention", s(&["'public.fuzz_t'::regclass"])),
        (
            "enable_search",
            s(&[
                "'public.fuzz_t'::regclass",
                "'body'",
                "'english'::regconfig",
            ]),
        ),
        (
            "enable_vectors",
            s(&["'public.fuzz_t'::regclass", "'embedding'", "3", "'cosine'"]),
        ),
        (
            "enable_tenant_rls",
            s(&["'public.fuzz_t'::regclass", "'location_id'"]),
        ),
        ("search", s(&["'public.fuzz_t'::regclass", "'row'", "5"])),
        (
            "nearest",
            s(&["'public.fuzz_t'::regclass", "'[1,0,0]'", "3"]),
        ),
        (
            "hybrid_search",
            s(&["'public.fuzz_t'::regclass", "'row'", "'[1,0,0]'", "3"]),
        ),
        (
            "grant_device",
            s(&["'fuzz_device'::regrole", "'lyon'", "'box-1'"]),
        ),
        ("grant_reader", s(&["'fuzz_reader'::regrole", "'lyon'"])),
        (
            "float32_to_vector_text",
            s(&["'\\x0000803f0000000000000040'::bytea", "3"]),
        ),
        ("ingest", vec![file("batch-valid-raw-3.bin")]),
        ("ingest", vec![file("batch-valid-brotli-20.bin")]),
        (
            "sketch_quantile",
            vec![file("sketch-valid-small.bin"), "0.5".into()],
        ),
        ("sketch_count", vec![file("sketch-valid-wide.bin")]),
        (
            "publish",
            s(&[
                "'public.fuzz_t'::regclass",
                "'fuzz_t'",
                "NULL::text[]",
                "NULL::text[]",
                "NULL::text",
                "NULL::text",
                "'7 days'::interval",
            ]),
        ),
        (
            "pull",
            s(&[
                "'fuzz_t'",
                "'box-1'",
                "0::bigint",
                "0::bigint",
                "10",
                "NULL::text",
                "'lyon'",
            ]),
        ),
        ("subscription_lag", s(&["'box-1'"])),
        ("unpublish", s(&["'fuzz_t'"])),
    ]
}

fn call(rng: &mut Rng, f: &Function, corpus: &[Vec<u8>], roles: &[String]) -> String {
    let n = f.args.len() - rng.below(f.defaults + 1);
    let args: Vec<String> = f.args[..n]
        .iter()
        .map(|t| value(rng, t, corpus, roles))
        .collect();
    match f.kind.as_str() {
        "a" => {
            let rows: Vec<String> = (0..1 + rng.below(4))
                .map(|_| {
                    let v: Vec<String> = f
                        .args
                        .iter()
                        .map(|t| value(rng, t, corpus, roles))
                        .collect();
                    format!("({})", v.join(", "))
                })
                .collect();
            let cols: Vec<String> = (1..=f.args.len()).map(|i| format!("c{i}")).collect();
            format!(
                "SELECT sluice.{}({}) FROM (VALUES {}) v({})",
                f.name,
                cols.join(", "),
                rows.join(", "),
                cols.join(", ")
            )
        }
        "p" => format!("CALL sluice.{}({})", f.name, args.join(", ")),
        _ if f.set => format!("SELECT * FROM sluice.{}({})", f.name, args.join(", ")),
        _ => format!("SELECT sluice.{}({})", f.name, args.join(", ")),
    }
}

#[test]
fn every_pg_function_gives_a_result_or_an_error_and_the_backend_keeps_serving() {
    let cases: usize = env_number("SLUICE_PG_FUZZ_CASES", 2000);
    let seed: u64 = env_seed("SLUICE_SEED");
    println!("pg argument fuzzing: {cases} cases, SLUICE_SEED={seed}");
    let server = OwnServer::start("pgargs");
    let url = server.database("fuzz");
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    c.batch_execute(
        "SET statement_timeout = '10s';
         SET lock_timeout = '5s';
         CREATE TABLE public.fuzz_t (id bigint PRIMARY KEY, location_id text, at timestamptz, body text, embedding bytea);
         CREATE VIEW public.fuzz_v AS SELECT 1 AS x;
         CREATE SEQUENCE public.fuzz_seq;
         CREATE TABLE public.fuzz_sum (at timestamptz, location_id text, n bigint, hi bigint);
         INSERT INTO public.fuzz_t SELECT g, 'lyon', now() - g * interval '1 hour', 'row ' || g, NULL FROM generate_series(1, 50) g;
         DO $$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'fuzz_device') THEN CREATE ROLE fuzz_device; END IF;
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'fuzz_reader') THEN CREATE ROLE fuzz_reader; END IF;
         END $$;",
    )
    .unwrap();
    let me: String = c
        .query_one("SELECT current_user::text", &[])
        .unwrap()
        .get(0);
    let roles = vec![
        "fuzz_device".to_string(),
        "fuzz_reader".to_string(),
        me,
        "pg_monitor".into(),
        "nobody_here".into(),
        "public".into(),
    ];
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let start: String = c
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .unwrap()
        .get(0);

    let functions: Vec<Function> = c
        .query(
            "SELECT p.proname::text, p.prokind::text, \
               ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY u(t, o) ORDER BY o), \
               p.pronargdefaults::int, p.proretset \
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = 'sluice' ORDER BY 1, 3",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| Function {
            name: r.get(0),
            kind: r.get(1),
            args: r.get(2),
            defaults: r.get::<_, i32>(3) as usize,
            set: r.get(4),
        })
        .filter(|f| !f.args.iter().any(|a| a == "internal"))
        .collect();
    for want in [
        "version",
        "register_table",
        "ingest",
        "grant_device",
        "revoke_device",
        "grant_reader",
        "revoke_reader",
        "enable_tenant_rls",
        "set_retention",
        "run_retention",
        "drop_retention",
        "retention_chunk_rows",
        "enable_vectors",
        "float32_to_vector_text",
        "nearest",
        "enable_search",
        "search",
        "hybrid_search",
        "sketch_merge",
        "sketch_quantile",
        "sketch_count",
        "publish",
        "unpublish",
        "pull",
        "subscription_lag",
        "purge_changes",
    ] {
        assert!(
            functions.iter().any(|f| f.name == want),
            "sluice.{want} is not in pg_proc"
        );
    }
    println!(
        "{} functions: {}",
        functions.len(),
        functions
            .iter()
            .map(|f| format!("{}({})", f.name, f.args.join(", ")))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut named = Vec::new();
    for e in std::fs::read_dir(repo_root().join("tests/corpus")).unwrap() {
        let e = e.unwrap();
        named.push((
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read(e.path()).unwrap(),
        ));
    }
    let valid = valid_calls(&named);
    let corpus: Vec<Vec<u8>> = named.into_iter().map(|(_, b)| b).collect();

    // Regressions: register_table is not STRICT (tenant_column may be NULL);
    // a NULL in another argument, or in key_columns, was a Rust panic
    // (XX000 "argument 0 must not be null", "array contains NULL",
    // "called `Option::unwrap()` on a `None` value").
    for (sql, what) in [
        (
            "SELECT sluice.register_table(NULL, 'public.fuzz_t', ARRAY['id'])",
            "edge_table",
        ),
        (
            "SELECT sluice.register_table('t', NULL, ARRAY['id'])",
            "target",
        ),
        (
            "SELECT sluice.register_table('t', 'public.fuzz_t', NULL)",
            "key_columns",
        ),
        (
            "SELECT sluice.register_table('t', 'public.fuzz_t', ARRAY['id', NULL])",
            "an element of key_columns",
        ),
        (
            "SELECT sluice.register_table('t', 'public.fuzz_t', ARRAY['id'], NULL)",
            "policy",
        ),
    ] {
        let e = c.simple_query(sql).expect_err(sql);
        let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
        assert_eq!(db.code().code(), "22004", "{sql}: {}", db.message());
        assert_eq!(
            db.message(),
            format!("sluice.register_table: {what} must not be NULL"),
            "{sql}"
        );
    }
    c.simple_query("SELECT sluice.register_table('fuzz_t', 'public.fuzz_t', ARRAY['id'], 'last_writer_wins', NULL)")
        .expect("register_table with a NULL tenant_column");

    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut per_fn: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    let mut failures = Vec::new();
    for i in 0..cases {
        // Every function in turn, then at random.
        let f = if i < functions.len() {
            &functions[i]
        } else {
            rng.pick(&functions)
        };
        let (f, sql) = if i >= functions.len() && rng.chance(33) {
            let (name, args) = rng.pick(&valid);
            let f = functions
                .iter()
                .find(|f| f.name == *name && f.args.len() >= args.len())
                .unwrap_or_else(|| panic!("sluice.{name} with {} arguments", args.len()));
            let args: Vec<String> = args
                .iter()
                .enumerate()
                .map(|(k, a)| {
                    if rng.chance(25) {
                        value(&mut rng, &f.args[k], &corpus, &roles)
                    } else {
                        a.clone()
                    }
                })
                .collect();
            (
                f,
                format!("SELECT * FROM sluice.{name}({})", args.join(", ")),
            )
        } else {
            (f, call(&mut rng, f, &corpus, &roles))
        };
        let e = per_fn.entry(f.name.clone()).or_default();
        match c.simple_query(&sql) {
            Ok(_) => e.0 += 1,
            Err(err) => {
                e.1 += 1;
                let shown: String = sql.chars().take(400).collect();
                match err.as_db_error() {
                    Some(db) => {
                        let code = db.code().code().to_string();
                        *codes.entry(code.clone()).or_default() += 1;
                        if code == "XX000" || code == "57014" || db.message().is_empty() {
                            failures
                                .push(format!("case {i}: {code} {:?} from {shown}", db.message()));
                        }
                    }
                    None => {
                        failures.push(format!("case {i}: not a server ERROR ({err}) from {shown}"));
                        panic!(
                            "the connection broke: {err}\nafter {shown}\nfailures so far: {failures:#?}"
                        );
                    }
                }
            }
        }
        let one: i32 = c
            .query_one("SELECT 1", &[])
            .unwrap_or_else(|e| panic!("the backend stopped serving after case {i}: {e}"))
            .get(0);
        assert_eq!(one, 1);
    }
    let secs = started.elapsed().as_secs_f64();
    let pid2: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let start2: String = c
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(pid, pid2, "the backend changed");
    assert_eq!(start, start2, "the server restarted");
    let log = std::fs::read_to_string(
        repo_root()
            .join(".cache/run")
            .join(&server.name)
            .join("data/server.log"),
    )
    .unwrap_or_default();
    for bad in ["terminated by signal", "was terminated", "PANIC"] {
        assert!(!log.contains(bad), "the server log says {bad:?}:\n{log}");
    }
    println!(
        "{cases} calls in {secs:.1} s ({:.0}/s), {} failures; SQLSTATEs: {codes:?}",
        cases as f64 / secs,
        failures.len()
    );
    for (f, (ok, err)) in &per_fn {
        println!("  sluice.{f}: {ok} ok / {err} errors");
    }
    assert!(
        failures.is_empty(),
        "{} calls failed the properties (SLUICE_SEED={seed}):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
