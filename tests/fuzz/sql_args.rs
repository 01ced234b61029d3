//! Argument fuzzing of every SQL function of `sluice0.so`, through a normal
//! SQLite (rusqlite) in this process: a seeded generator calls each function
//! listed by `pragma_function_list` (scalars as `SELECT f(...)`, aggregates
//! over a few `VALUES` rows, the window function also with a moving frame)
//! with random arguments of every SQLite type: NULL, integers (extremes
//! included), reals (NaN, ±inf, -0.0, extremes), text (quotes, control
//! characters, Unicode, up to 1 MB, deep nesting), text that is not UTF-8, and
//! blobs (valid batches, sketches, compressed and packed values, the files of
//! `tests/corpus/`, all of them mutated, random bytes). Text is often one of
//! the string literals of `docs/sqlite.md` (JSON rows and options, durations,
//! times, names), mutated.
//!
//! Properties, per case:
//! - no panic (a panic caught at the function's boundary shows up as an error
//!   mentioning a panic) and no abort: the process survives;
//! - every failure is an ordinary SQLite error whose message is not empty and
//!   starts with the name of a sluice function;
//! - no transaction or savepoint is left open behind the caller;
//! - no hang: a watchdog aborts the process (failing the test) when one case
//!   runs 20 s;
//! - the answers of the pure functions are right, not just not errors
//!   ([`oracle`]): a `sluice_bucket` window starts at or before its time and
//!   less than one width before it; a `sluice_percentile` is within min..max
//!   of its inputs.
//!
//! Run against an extension built with `--profile fuzz` (release with
//! `overflow-checks = true`, what scripts/fuzz.sh does), an integer overflow
//! panics, which the first property catches; `SLUICE_FUZZ_PROFILE=fuzz`
//! makes sure the extension loaded is that build.
//!
//! Every 2,000 cases, and at the end, `PRAGMA integrity_check` must say `ok`
//! and the database must still work (a table is tracked, filled, batched,
//! acknowledged); every 20,000 cases the database is made again, so its state
//! does not grow without bound.
//!
//! `SLUICE_FUZZ_CASES` (default 5,000) cases, `SLUICE_FUZZ_SEED` (default:
//! the clock). `scripts/fuzz.sh` runs many more.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;
use sluice_tests::*;

/// One argument. `BadText` is bound as a blob and passed as
/// `CAST(? AS TEXT)`: TEXT whose bytes are not UTF-8.
#[derive(Clone, Debug)]
enum Arg {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    BadText(Vec<u8>),
    Blob(Vec<u8>),
}

impl Arg {
    fn show(&self) -> String {
        fn cut(s: &str) -> String {
            if s.len() > 300 {
                let mut end = 300;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{}...({} bytes)", &s[..end], s.len())
            } else {
                s.to_string()
            }
        }
        match self {
            Arg::Null => "NULL".into(),
            Arg::Int(i) => i.to_string(),
            Arg::Real(r) => format!("{r:?}"),
            Arg::Text(t) => format!("{:?}", cut(t)),
            Arg::BadText(b) => format!("CAST(x'{}' AS TEXT)", cut(&hex(b))),
            Arg::Blob(b) => format!("x'{}'", cut(&hex(b))),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Inputs the generator draws from.
struct Pools {
    /// Calls of `docs/sqlite.md`'s examples whose arguments are all literals.
    doc_calls: Vec<(String, Vec<Arg>)>,
    /// String literals of `docs/sqlite.md`'s SQL examples.
    doc_text: Vec<String>,
    doc_json: Vec<String>,
    batches: Vec<Vec<u8>>,
    sketches: Vec<Vec<u8>>,
    compressed: Vec<Vec<u8>>,
    corpus: Vec<Vec<u8>>,
}

const TABLES: &[&str] = &[
    "division_states",
    "DIVISION_STATES",
    "metrics",
    "metrics_5m",
    "key_frames",
    "cameras",
    "sessions",
    "table_states",
    "health_metrics",
    "sluice_tables",
    "sluice_meta",
    "sluice_acks",
    "sluice_clock",
    "sluice_rollups",
    "sluice_drops",
    "sluice_status",
    "sluice_budget",
    "sqlite_master",
    "sqlite_sequence",
    "main.metrics",
    "temp.t",
    "nope",
    "x\"; drop table metrics; --",
    "'",
    "\"",
    "",
    " ",
    "é",
    "t\u{0}x",
    "fuzz_t",
    "fuzz_w",
    "readings",
    "counts",
    "m",
    "m_5m",
    "samples",
];

const DURATIONS: &[&str] = &[
    "0",
    "90",
    "90s",
    "30 minutes",
    "24 hours",
    "7 days",
    "2w",
    "5 minutes",
    "1 hour",
    "1d",
    "-5 s",
    "1e308 s",
    "99999999999999999999 w",
    "9223372036854775807",
    "9223372036854775807 weeks",
    "0.5 s",
    "1 fortnight",
    "s",
    " 5 m ",
    "5 m 3 s",
    "100 years",
    "101 years",
    "soon",
];

const TIMES: &[&str] = &[
    "2024-05-01T12:34:56.789Z",
    "2024-05-01 12:34:56",
    "2024-05-01",
    "2024-05-01T12:34",
    "2024-05-01T12:34:56.123456789012345+14:00",
    "9999-12-31T23:59:59.999Z",
    "0000-01-01T00:00:00Z",
    "-0001-01-01",
    "2024-13-45T99:99:99Z",
    "2024-02-30T00:00:00Z",
    "2024-05-01T12:34:56-23:59",
    "2024-05-01T12:34:56+99:99",
    "2024-05-01T12:34:56ZZ",
    "2024-05-01T",
    "yesterday",
];

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "null",
    "true",
    "false",
    "0",
    "-0",
    "1e999",
    "-1e999",
    "1.5",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    "1e-400",
    "\"x\"",
    "\"\"",
    "\\u0000",
    "\\ud800",
    "\\uDFFF",
    "\u{0}",
    "é",
    "\u{1F600}",
    " ",
    "\n",
    "[]",
    "{}",
    "\"columns\"",
    "\"rows\"",
    "\"mutable\"",
    "\"local_only\"",
    "\"key\"",
    "\"time\"",
    "\"source\"",
    "\"target\"",
    "\"measures\"",
    "\"group\"",
    "\"width\"",
    "\"horizon\"",
    "\"now\"",
    "\"count\"",
    "\"pack\"",
    "\"p99.9(people_count)\"",
    "\"p1e309(people_count)\"",
    "\"sketch(processing_ms)\"",
    "\"id\"",
    "\"rowid\"",
    "\"sluice_version\"",
    "\"recorded_at\"",
    "\"camera_id\"",
];

const INTS: &[i64] = &[
    0,
    1,
    -1,
    2,
    5,
    11,
    12,
    60,
    300,
    86_400,
    1_000_000,
    1_000_001,
    1 << 31,
    (1 << 31) - 1,
    1 << 32,
    1 << 53,
    i64::MAX,
    i64::MIN,
    i64::MIN + 1,
    i64::MAX - 1,
    1_714_566_896,
    -1_714_566_896,
];

const REALS: &[f64] = &[
    0.0,
    -0.0,
    0.5,
    0.95,
    1.0,
    1.5,
    -0.5,
    95.0,
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    f64::MAX,
    f64::MIN,
    f64::MIN_POSITIVE,
    5e-324,
    f64::EPSILON,
    1e300,
    1_714_566_896.5,
    9.223_372_036_854_776e18,
    -9.223_372_036_854_776e18,
];

fn random_text(rng: &mut Rng) -> String {
    sluice_tests::random_text(rng, 64, true)
}

fn mutate_bytes(rng: &mut Rng, mut b: Vec<u8>) -> Vec<u8> {
    for _ in 0..1 + rng.below(4) {
        let len = b.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                b[i] = *rng.pick(&[0u8, 0xff, 0x7f, 0x80, 1, b'"', b'\\', b'{']);
            }
            2 => b.truncate(rng.below(len + 1)),
            3 if len > 0 => {
                let i = rng.below(len);
                let j = (i + 1 + rng.below(16)).min(len);
                b.drain(i..j);
            }
            4 => {
                let i = rng.below(len + 1);
                let n = rng.below(8) + 1;
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(i..i, bytes);
            }
            5 if len >= 4 => {
                let i = rng.below(len - 3);
                let lie = *rng.pick(&[0u32, 1, 0x7fff_ffff, u32::MAX, 64 << 20, (64 << 20) + 1]);
                b[i..i + 4].copy_from_slice(&lie.to_le_bytes());
            }
            6 if len > 0 => {
                // Duplicate a range.
                let i = rng.below(len);
                let j = (i + 1 + rng.below(64)).min(len);
                let part = b[i..j].to_vec();
                b.splice(j..j, part);
            }
            _ => {
                let i = rng.below(len + 1);
                let t = rng.pick(TOKENS).as_bytes().to_vec();
                b.splice(i..i, t);
            }
        }
    }
    b
}

/// Text made from a seed by 1 to 4 mutations: valid UTF-8 or not.
fn mutate_text(rng: &mut Rng, seed: &str) -> Arg {
    let b = mutate_bytes(rng, seed.as_bytes().to_vec());
    match String::from_utf8(b) {
        Ok(s) => Arg::Text(s),
        Err(e) => Arg::BadText(e.into_bytes()),
    }
}

fn huge_text(rng: &mut Rng) -> Arg {
    let n = 1 << (10 + rng.below(11)); // 1 KiB .. 1 MiB
    Arg::Text(match rng.below(7) {
        0 => "x".repeat(n),
        1 => "[".repeat(n),
        2 => "{\"a\":".repeat(n / 5),
        3 => format!("[{}{{}}]", "{},".repeat(n / 3)),
        4 => format!(
            "[{}{{\"camera_id\": \"c\"}}]",
            "{\"camera_id\": \"c\"},".repeat(n / 20)
        ),
        5 => format!("\"{}\"", "\\u0041".repeat(n / 6)),
        _ => "9".repeat(n),
    })
}

/// A random JSON value, shallow.
fn json_value(rng: &mut Rng, depth: usize) -> String {
    match rng.below(if depth > 2 { 8 } else { 10 }) {
        0 => "null".into(),
        1 => rng.pick(&["true", "false"]).to_string(),
        2 => rng.pick(INTS).to_string(),
        3 => rng
            .pick(&[
                "1.5",
                "-0.0",
                "1e308",
                "1e309",
                "-1e-400",
                "9223372036854775808",
                "-9223372036854775809",
                "18446744073709551615",
                "0.1e1",
                "123456789012345678901234567890",
            ])
            .to_string(),
        4 | 5 => serde_json::to_string(&random_text(rng)).unwrap(),
        6 => format!("\"{}\"", rng.pick(TIMES)),
        7 => format!(
            "\"{}\"",
            rng.pick(&["RED", "GREEN", "x", "", "\\u0000", "\\ud800"])
        ),
        8 => format!(
            "[{}]",
            (0..rng.below(3))
                .map(|_| json_value(rng, depth + 1))
                .collect::<Vec<_>>()
                .join(",")
        ),
        _ => format!("{{\"k\": {}}}", json_value(rng, depth + 1)),
    }
}

/// Random rows for `sluice_insert`: mostly the columns of `fuzz_t` or
/// `division_states`, as an array of objects or in the compact form.
fn rows_json(rng: &mut Rng) -> String {
    const KEYS: &[&str] = &[
        "a",
        "b",
        "c",
        "d",
        "id",
        "A",
        "x",
        "session_id",
        "camera_id",
        "location_id",
        "frame_number",
        "video_ts",
        "recorded_at",
        "state",
        "sluice_version",
        "rowid",
        "",
    ];
    let ncols = 1 + rng.below(4);
    let cols: Vec<&str> = (0..ncols).map(|_| *rng.pick(KEYS)).collect();
    let nrows = rng.below(5);
    if rng.chance(50) {
        let rows: Vec<String> = (0..nrows)
            .map(|_| {
                let n = if rng.chance(90) {
                    ncols
                } else {
                    rng.below(ncols + 2)
                };
                let v: Vec<String> = (0..n).map(|_| json_value(rng, 0)).collect();
                format!("[{}]", v.join(", "))
            })
            .collect();
        format!(
            "{{\"columns\": [{}], \"rows\": [{}]}}",
            cols.iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", "),
            rows.join(", ")
        )
    } else {
        let rows: Vec<String> = (0..nrows)
            .map(|_| {
                let mut kv = Vec::new();
                for c in &cols {
                    if rng.chance(95) {
                        kv.push(format!("\"{c}\": {}", json_value(rng, 0)));
                    }
                }
                format!("{{{}}}", kv.join(", "))
            })
            .collect();
        format!("[{}]", rows.join(", "))
    }
}

fn gen_text(rng: &mut Rng, p: &Pools) -> Arg {
    match rng.below(100) {
        0..=14 => Arg::Text(rng.pick(TABLES).to_string()),
        15..=24 => Arg::Text(rng.pick(DURATIONS).to_string()),
        25..=32 => Arg::Text(rng.pick(TIMES).to_string()),
        33..=44 => Arg::Text(rng.pick(&p.doc_text).clone()),
        45..=54 => Arg::Text(rng.pick(&p.doc_json).clone()),
        55..=76 => {
            let seed = rng.pick(&p.doc_json).clone();
            mutate_text(rng, &seed)
        }
        77..=84 => {
            let seed = rng.pick(&p.doc_text).clone();
            mutate_text(rng, &seed)
        }
        85..=98 => Arg::Text(random_text(rng)),
        _ => huge_text(rng),
    }
}

fn gen_blob(rng: &mut Rng, p: &Pools) -> Arg {
    let base = match rng.below(7) {
        0 => rng.pick(&p.batches).clone(),
        1 => rng.pick(&p.sketches).clone(),
        2 => rng.pick(&p.compressed).clone(),
        3 => rng.pick(&p.corpus).clone(),
        4 => (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        5 => Vec::new(),
        _ => vec![0u8; 1 << (rng.below(21))],
    };
    Arg::Blob(if rng.chance(60) {
        mutate_bytes(rng, base)
    } else {
        base
    })
}

/// Any argument.
fn gen_any(rng: &mut Rng, p: &Pools) -> Arg {
    match rng.below(100) {
        0..=9 => Arg::Null,
        10..=24 => Arg::Int(if rng.chance(70) {
            *rng.pick(INTS)
        } else {
            rng.next() as i64 >> rng.below(64)
        }),
        25..=34 => Arg::Real(if rng.chance(70) {
            *rng.pick(REALS)
        } else {
            f64::from_bits(rng.next())
        }),
        35..=79 => gen_text(rng, p),
        80..=84 => {
            let b: Vec<u8> = (0..1 + rng.below(32))
                .map(|_| *rng.pick(&[0xff, 0xfe, 0xc3, 0x80, 0xed, 0xa0, b'a', b'"', 0]))
                .collect();
            Arg::BadText(b)
        }
        _ => gen_blob(rng, p),
    }
}

/// What an argument of a function usually is; the generator follows the hint
/// 60 % of the time.
#[derive(Clone, Copy)]
enum Hint {
    Table,
    Json,
    Duration,
    Time,
    Int,
    Real,
    Batch,
    Sketch,
    Compressed,
    Any,
}

fn hints(name: &str) -> &'static [Hint] {
    use Hint::*;
    match name {
        "sluice_insert" => &[Table, Json],
        "sluice_track" => &[Table, Json],
        "sluice_batch" => &[Table, Int],
        "sluice_ack" => &[Batch],
        "sluice_pending" | "sluice_pending_age" | "sluice_tracked" => &[Table],
        "sluice_cleanup" => &[Table, Duration],
        "sluice_bucket" => &[Time, Duration],
        "sluice_sketch_quantile" => &[Sketch, Real],
        "sluice_sketch_merge" => &[Sketch],
        "sluice_sketch" => &[Real],
        "sluice_percentile" => &[Real, Real],
        "sluice_compress" => &[Any, Int],
        "sluice_decompress" | "sluice_unpack" => &[Compressed],
        "sluice_rollup" => &[Table, Json],
        "sluice_rollup_run" => &[Table],
        "sluice_enforce_budget" => &[Int, Json],
        _ => &[],
    }
}

fn gen_arg(rng: &mut Rng, p: &Pools, hint: Hint) -> Arg {
    if !rng.chance(60) {
        return gen_any(rng, p);
    }
    match hint {
        Hint::Table => Arg::Text(rng.pick(TABLES).to_string()),
        Hint::Json if rng.chance(40) => {
            let t = rows_json(rng);
            if rng.chance(20) {
                mutate_text(rng, &t)
            } else {
                Arg::Text(t)
            }
        }
        Hint::Json => {
            let seed = rng.pick(&p.doc_json).clone();
            if rng.chance(50) {
                mutate_text(rng, &seed)
            } else {
                Arg::Text(seed)
            }
        }
        Hint::Duration => {
            if rng.chance(50) {
                Arg::Text(rng.pick(DURATIONS).to_string())
            } else {
                Arg::Int(*rng.pick(INTS))
            }
        }
        Hint::Time => match rng.below(3) {
            0 => Arg::Text(rng.pick(TIMES).to_string()),
            1 => Arg::Int(*rng.pick(INTS)),
            _ => Arg::Real(*rng.pick(REALS)),
        },
        Hint::Int => Arg::Int(*rng.pick(INTS)),
        Hint::Real => Arg::Real(*rng.pick(REALS)),
        Hint::Batch => {
            let b = rng.pick(&p.batches).clone();
            Arg::Blob(if rng.chance(50) {
                mutate_bytes(rng, b)
            } else {
                b
            })
        }
        Hint::Sketch => {
            let b = rng.pick(&p.sketches).clone();
            Arg::Blob(if rng.chance(50) {
                mutate_bytes(rng, b)
            } else {
                b
            })
        }
        Hint::Compressed => {
            let b = rng.pick(&p.compressed).clone();
            Arg::Blob(if rng.chance(50) {
                mutate_bytes(rng, b)
            } else {
                b
            })
        }
        Hint::Any => gen_any(rng, p),
    }
}

/// A function as `pragma_function_list` lists it.
#[derive(Clone, Debug)]
struct Function {
    name: String,
    narg: i32,
    kind: String,
}

/// One generated call: SQL and the values bound to it.
struct Case {
    function: usize,
    sql: String,
    args: Vec<Arg>,
}

impl Case {
    fn show(&self) -> String {
        format!(
            "{}   -- with {}",
            self.sql,
            self.args
                .iter()
                .enumerate()
                .map(|(i, a)| format!("?{}={}", i + 1, a.show()))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

fn gen_case(rng: &mut Rng, p: &Pools, functions: &[Function]) -> Case {
    // A quarter of the cases: a call of the docs, one or more arguments
    // mutated or replaced.
    if rng.chance(25) {
        let (name, args) = rng.pick(&p.doc_calls).clone();
        if let Some(fi) = functions
            .iter()
            .position(|f| f.name == name && f.kind == "s" && f.narg as usize == args.len())
        {
            let h = hints(&name);
            let args: Vec<Arg> = args
                .into_iter()
                .enumerate()
                .map(|(i, a)| match (rng.below(10), a) {
                    (0..=2, Arg::Text(t)) => mutate_text(rng, &t),
                    (3, _) => gen_arg(rng, p, h.get(i).copied().unwrap_or(Hint::Any)),
                    (4, _) => gen_any(rng, p),
                    (_, a) => a,
                })
                .collect();
            let list: Vec<String> = args
                .iter()
                .enumerate()
                .map(|(i, a)| match a {
                    Arg::BadText(_) => format!("CAST(?{} AS TEXT)", i + 1),
                    _ => format!("?{}", i + 1),
                })
                .collect();
            return Case {
                function: fi,
                sql: format!("SELECT {name}({})", list.join(", ")),
                args,
            };
        }
    }
    let fi = rng.below(functions.len());
    let f = &functions[fi];
    let narg = if f.narg < 0 {
        rng.below(6)
    } else {
        f.narg as usize
    };
    let h = hints(&f.name);
    let mut args = Vec::new();
    let placeholder = |a: Arg, args: &mut Vec<Arg>| -> String {
        let bad = matches!(a, Arg::BadText(_));
        args.push(a);
        if bad {
            format!("CAST(?{} AS TEXT)", args.len())
        } else {
            format!("?{}", args.len())
        }
    };
    let sql = if f.kind == "s" {
        let list: Vec<String> = (0..narg)
            .map(|i| {
                let a = gen_arg(rng, p, h.get(i).copied().unwrap_or(Hint::Any));
                placeholder(a, &mut args)
            })
            .collect();
        format!("SELECT {}({})", f.name, list.join(", "))
    } else {
        // An aggregate (or the window function) over 1 to 4 rows.
        let rows = 1 + rng.below(4);
        let width = narg.max(1);
        let values: Vec<String> = (0..rows)
            .map(|_| {
                let row: Vec<String> = (0..width)
                    .map(|i| {
                        let a = gen_arg(rng, p, h.get(i).copied().unwrap_or(Hint::Any));
                        placeholder(a, &mut args)
                    })
                    .collect();
                format!("({})", row.join(", "))
            })
            .collect();
        let cols: Vec<String> = (1..=narg).map(|i| format!("column{i}")).collect();
        let over = if f.kind == "w" && rng.chance(50) {
            " OVER (ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)"
        } else {
            ""
        };
        format!(
            "SELECT {}({}){over} FROM (VALUES {})",
            f.name,
            cols.join(", "),
            values.join(", ")
        )
    };
    Case {
        function: fi,
        sql,
        args,
    }
}

fn bind(args: &[Arg]) -> Vec<Value> {
    args.iter()
        .map(|a| match a {
            Arg::Null => Value::Null,
            Arg::Int(i) => Value::Integer(*i),
            Arg::Real(r) => Value::Real(*r),
            Arg::Text(t) => Value::Text(t.clone()),
            Arg::BadText(b) | Arg::Blob(b) => Value::Blob(b.clone()),
        })
        .collect()
}

/// Runs a case to the end; Ok(the value of each row) or the error.
fn run(conn: &Connection, case: &Case) -> Result<Vec<Value>, rusqlite::Error> {
    let mut stmt = conn.prepare(&case.sql)?;
    let values = bind(&case.args);
    let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        // Read the value whatever it is (text need not be UTF-8).
        out.push(match r.get_ref(0)? {
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(r) => Value::Real(r),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        });
    }
    Ok(out)
}

/// A width in seconds as `sluice_bucket` reads an argument, when it is a
/// number (text durations are left to the extension).
fn width_secs(a: &Arg) -> Option<i64> {
    match a {
        Arg::Int(w) => Some(*w),
        Arg::Real(r) if r.fract() == 0.0 && r.abs() < 9.0e15 => Some(*r as i64),
        _ => None,
    }
}

/// The oracle of the pure functions: what an answer that is not an error
/// must satisfy. `None` when it holds (or the case is not one it judges).
/// - `sluice_bucket(ts, width)`: the window starts at or before `ts` and
///   `ts` is less than one width after its start;
/// - `sluice_percentile(x, p)`: every result is within min..max of the x.
fn oracle(conn: &Connection, name: &str, case: &Case, out: &[Value]) -> Option<String> {
    match name {
        "sluice_bucket"
            if case.args.len() == 2 && case.sql.starts_with("SELECT sluice_bucket(?1, ?2)") =>
        {
            let w = width_secs(&case.args[1]);
            let (ts, got) = (&case.args[0], out.first()?);
            let ok = match (ts, got) {
                (Arg::Int(t), Value::Integer(b)) => {
                    b <= t && w.is_none_or(|w| i128::from(*t) - i128::from(*b) < i128::from(w))
                }
                (Arg::Real(t), Value::Real(b)) => {
                    // b + w > t, not t - b < w: the difference of a tiny
                    // negative time and its window rounds to w.
                    b <= t && w.is_none_or(|w| b + w as f64 > *t)
                }
                (Arg::Text(t), Value::Text(b)) => {
                    // SQLite's own calendar: whole seconds between the two.
                    let d: Option<i64> = conn
                        .query_row("SELECT unixepoch(?1) - unixepoch(?2)", [t, b], |r| r.get(0))
                        .ok()
                        .flatten();
                    d.is_none_or(|d| d >= 0 && w.is_none_or(|w| d < w))
                }
                // SQLite binds a NaN as NULL.
                (Arg::Real(t), Value::Null) => t.is_nan(),
                (_, Value::Null) => matches!(ts, Arg::Null),
                _ => false,
            };
            (!ok).then(|| {
                format!(
                    "sluice_bucket returned {got:?} for ts {} and width {}",
                    ts.show(),
                    case.args[1].show()
                )
            })
        }
        "sluice_percentile" if !case.sql.starts_with("SELECT sluice_percentile(?") => {
            // Rows of (x, p): the x are the odd-numbered parameters.
            let xs: Vec<f64> = case
                .args
                .iter()
                .step_by(2)
                .filter_map(|a| match a {
                    Arg::Int(i) => Some(*i as f64),
                    Arg::Real(r) => Some(*r),
                    _ => None,
                })
                .collect();
            let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            for v in out {
                match v {
                    Value::Null => {}
                    Value::Real(r) if (lo..=hi).contains(r) => {}
                    other => {
                        return Some(format!(
                            "sluice_percentile returned {other:?}, outside the inputs' range {lo}..{hi}"
                        ))
                    }
                }
            }
            None
        }
        _ => None,
    }
}

/// The message with its numbers and quoted parts blurred: a rough picture of
/// which checks fired.
fn shape(msg: &str) -> String {
    let mut out = String::new();
    let mut quote = false;
    let mut last_digit = false;
    for ch in msg.chars() {
        if ch == '\'' {
            if !quote {
                out.push_str("'…'");
            }
            quote = !quote;
            continue;
        }
        if quote {
            continue;
        }
        if ch.is_ascii_digit() {
            if !last_digit {
                out.push('N');
            }
            last_digit = true;
            continue;
        }
        last_digit = false;
        if ch.is_control() {
            out.extend(ch.escape_default());
        } else {
            out.push(ch);
        }
    }
    out.chars().take(90).collect()
}

/// The calls `sluice_x(literal, ...)` of the ```sql blocks of docs/sqlite.md.
fn doc_calls() -> Vec<(String, Vec<Arg>)> {
    let sql = doc_sql();
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = sql[from..].find("sluice_") {
        let start = from + at;
        from = start + 7;
        let Some(open) = sql[start..].find('(').map(|o| start + o) else {
            break;
        };
        let name = &sql[start..open];
        if !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
            continue;
        }
        let mut i = open + 1;
        let mut args = Vec::new();
        let ok = loop {
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if i >= b.len() {
                break false;
            }
            match b[i] {
                b')' => break true,
                b',' if !args.is_empty() => i += 1,
                b'\'' => {
                    let mut v = Vec::new();
                    i += 1;
                    while i < b.len() {
                        if b[i] == b'\'' {
                            if b.get(i + 1) == Some(&b'\'') {
                                v.push(b'\'');
                                i += 2;
                                continue;
                            }
                            break;
                        }
                        v.push(b[i]);
                        i += 1;
                    }
                    i += 1;
                    args.push(Arg::Text(String::from_utf8(v).unwrap()));
                }
                c if c.is_ascii_digit() || c == b'-' => {
                    let st = i;
                    i += 1;
                    while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                        i += 1;
                    }
                    let t = &sql[st..i];
                    args.push(match t.parse::<i64>() {
                        Ok(n) => Arg::Int(n),
                        Err(_) => Arg::Real(t.parse().unwrap_or(0.0)),
                    });
                }
                b'N' if sql[i..].starts_with("NULL") => {
                    i += 4;
                    args.push(Arg::Null);
                }
                b'x' if b.get(i + 1) == Some(&b'\'') => {
                    let end = sql[i + 2..]
                        .find('\'')
                        .map(|e| i + 2 + e)
                        .unwrap_or(b.len());
                    let h = &sql[i + 2..end];
                    let bytes = (0..h.len() / 2)
                        .filter_map(|k| u8::from_str_radix(&h[2 * k..2 * k + 2], 16).ok())
                        .collect();
                    args.push(Arg::Blob(bytes));
                    i = end + 1;
                }
                _ => break false,
            }
        };
        if ok {
            out.push((name.to_string(), args));
        }
    }
    out
}

/// The SQL of the ```sql blocks of docs/sqlite.md, without comment lines.
fn doc_sql() -> String {
    let text = std::fs::read_to_string(repo_root().join("docs/sqlite.md")).unwrap();
    let mut in_sql = false;
    let mut sql = String::new();
    for line in text.lines() {
        if line.starts_with("```sql") {
            in_sql = true;
        } else if line.starts_with("```") {
            in_sql = false;
        } else if in_sql && !line.starts_with("--") {
            sql.push_str(line);
            sql.push('\n');
        }
    }
    sql
}

/// The string literals of the ```sql blocks of docs/sqlite.md.
fn doc_literals() -> Vec<String> {
    let sql = doc_sql();
    let mut out = Vec::new();
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\'' {
            let mut s = Vec::new();
            i += 1;
            while i < b.len() {
                if b[i] == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        s.push(b'\'');
                        i += 2;
                        continue;
                    }
                    break;
                }
                s.push(b[i]);
                i += 1;
            }
            out.push(String::from_utf8(s).unwrap());
        }
        i += 1;
    }
    out.sort();
    out.dedup();
    out
}

/// A fresh database with the default schema, some data of every kind, a
/// device id; and the pools of valid blobs made from it.
fn fresh_db(path: &std::path::Path) -> (Connection, Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<Vec<u8>>) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let conn = edge_db(path, true);
    conn.execute_batch(
        "PRAGMA synchronous = OFF;
         SELECT sluice_device('box-fuzz');
         CREATE TABLE fuzz_t (id INTEGER PRIMARY KEY, a TEXT, b INTEGER, c REAL, d BLOB);
         CREATE TABLE fuzz_w (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
         SELECT sluice_track('fuzz_t');
         SELECT sluice_track('fuzz_w', '{\"mutable\": true}');
         INSERT INTO fuzz_w (k, v) VALUES ('a', 1), ('b', x'00ff');
         -- The tables of docs/sqlite.md's examples, whose JSON the generator mutates.
         CREATE TABLE readings (id INTEGER PRIMARY KEY, camera TEXT NOT NULL, people INTEGER, detections TEXT, screenshot_path TEXT);
         CREATE TABLE counts (id INTEGER PRIMARY KEY, camera TEXT NOT NULL, people INTEGER, detections TEXT);
         CREATE TABLE m (id INTEGER PRIMARY KEY, cam TEXT, ts TEXT, people INTEGER);
         INSERT INTO m (cam, ts, people) VALUES ('c1', '2026-11-22T10:00:03.000Z', 2), ('c1', '2026-11-22T10:01:03.000Z', 4), ('c2', '2026-11-22T10:02:00.000Z', 1), ('c1', NULL, 3);
         CREATE TABLE samples (id INTEGER PRIMARY KEY, ts INTEGER, camera TEXT, ms REAL);
         INSERT INTO samples (ts, camera, ms) VALUES (1714566600, 'cam-1', 10), (1714566603, 'cam-1', 20), (1714566900, 'cam-2', 7);",
    )
    .unwrap();
    insert_rows(&conn, "division_states", &division_states(0, 50, 3), 25);
    let mut metrics = Vec::new();
    for i in 0..200i64 {
        metrics.push(serde_json::json!({
            "camera_id": format!("cam-{}", i % 3),
            "location_id": "store-042",
            "recorded_at": iso_ms(1_795_000_000_000 + i * 7_000),
            "people_count": i % 9,
            "processing_ms": i as f64 / 3.0,
        }));
    }
    insert_rows(&conn, "metrics", &metrics, 100);
    conn.execute_batch(
        "SELECT sluice_rollup_run();
         INSERT INTO key_frames (camera_id, location_id, captured_at, description) VALUES ('cam-1', 'store-042', '2026-11-22T10:00:00.000Z', 'a frame');",
    )
    .unwrap();
    let mut batches = Vec::new();
    for (t, n) in [
        ("division_states", 1),
        ("division_states", 10),
        ("metrics_5m", 5),
        ("key_frames", 1),
        ("fuzz_w", 2),
    ] {
        let b: Option<Vec<u8>> = conn
            .query_row(
                "SELECT sluice_batch(?1, ?2)",
                rusqlite::params![t, n],
                |r| r.get(0),
            )
            .unwrap();
        batches.extend(b);
    }
    let mut sketches: Vec<Vec<u8>> = conn
        .prepare("SELECT processing_ms_sketch FROM metrics_5m LIMIT 5")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    sketches.push(
        conn.query_row(
            "SELECT sluice_sketch(processing_ms) FROM metrics",
            [],
            |r| r.get(0),
        )
        .unwrap(),
    );
    let mut compressed: Vec<Vec<u8>> = Vec::new();
    for sql in [
        "SELECT sluice_compress('BUSY, 4 customers')",
        "SELECT sluice_compress(x'00010203', 11)",
        "SELECT sluice_compress('', 0)",
        "SELECT sluice_pack(id, recorded_at, processing_ms) FROM metrics",
        "SELECT sluice_pack(json_object('a', id)) FROM metrics WHERE id < 5",
        "SELECT raw FROM metrics_5m LIMIT 1",
    ] {
        compressed.push(conn.query_row(sql, [], |r| r.get(0)).unwrap());
    }
    (conn, batches, sketches, compressed)
}

/// `PRAGMA integrity_check` is `ok` and the database still works.
fn healthy(conn: &Connection, when: &str) {
    let rows: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows, ["ok"], "integrity_check {when}");
    assert!(conn.is_autocommit(), "a transaction is open {when}");
    let t = format!("after_{}", rand_suffix());
    conn.execute_batch(&format!(
        "CREATE TABLE {t} (id INTEGER PRIMARY KEY, v TEXT);
         SELECT sluice_device('box-fuzz-check');
         SELECT sluice_track('{t}');"
    ))
    .unwrap_or_else(|e| panic!("the database is not usable {when}: {e}"));
    let n: i64 = conn
        .query_row(
            &format!("SELECT sluice_insert('{t}', '[{{\"v\": \"a\"}}, {{\"v\": \"b\"}}]')"),
            [],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("sluice_insert {when}: {e}"));
    assert_eq!(n, 2);
    assert_eq!(pending(conn, &t), 2, "pending {when}");
    let acked: i64 = conn
        .query_row(
            &format!("SELECT sluice_ack(sluice_batch('{t}'))"),
            [],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("batch and ack {when}: {e}"));
    assert_eq!(acked, 2, "ack {when}");
    assert_eq!(pending(conn, &t), 0, "pending after the ack {when}");
}

fn rand_suffix() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

static CURRENT: Mutex<String> = Mutex::new(String::new());
static STARTED_MS: AtomicU64 = AtomicU64::new(0);
const HANG: Duration = Duration::from_secs(20);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Aborts the process when one case runs longer than [`HANG`].
fn watchdog() {
    std::thread::spawn(|| loop {
        std::thread::sleep(Duration::from_millis(500));
        let s = STARTED_MS.load(Ordering::Relaxed);
        if s != 0 && now_ms().saturating_sub(s) > HANG.as_millis() as u64 {
            let case = CURRENT.lock().map(|c| c.clone()).unwrap_or_default();
            eprintln!("HANG: one case ran over {HANG:?}: {case}");
            std::process::abort();
        }
    });
}

/// Known inputs, checked by name on every run (regressions and the cases the
/// issue names).
fn named_cases(conn: &Connection) {
    let deep = format!("[{}]", "[".repeat(200_000));
    for (sql, arg) in [
        (
            "SELECT sluice_insert('fuzz_t', ?1)",
            Value::Text(deep.clone()),
        ),
        (
            "SELECT sluice_track('fuzz_t', ?1)",
            Value::Text(deep.clone()),
        ),
        ("SELECT sluice_rollup('r', ?1)", Value::Text(deep.clone())),
        (
            "SELECT sluice_enforce_budget(1000000000, ?1)",
            Value::Text(deep),
        ),
        (
            "SELECT sluice_insert('fuzz_t', ?1)",
            Value::Text("[{\"b\": 9223372036854775808}]".into()),
        ),
        ("SELECT sluice_bucket(?1, 300)", Value::Integer(i64::MIN)),
        (
            "SELECT sluice_bucket(?1, '100 years')",
            Value::Integer(i64::MAX),
        ),
        ("SELECT sluice_bucket(?1, 300)", Value::Real(f64::INFINITY)),
        (
            "SELECT sluice_cleanup('fuzz_t', ?1)",
            Value::Integer(i64::MIN),
        ),
        (
            "SELECT sluice_cleanup('fuzz_t', ?1)",
            Value::Integer(i64::MAX),
        ),
        (
            "SELECT sluice_batch('fuzz_t', ?1)",
            Value::Integer(i64::MIN),
        ),
        (
            "SELECT sluice_decompress(?1)",
            Value::Blob(b"SLZ\x01\x00\xff\xff\xff\xff".to_vec()),
        ),
        (
            "SELECT sluice_sketch_quantile(?1, 0.5)",
            Value::Blob(vec![0; 45]),
        ),
        ("SELECT sluice_compress(?1, 11)", Value::Text(String::new())),
    ] {
        match conn.query_row(sql, [&arg], |r| r.get::<_, Value>(0)) {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(_, Some(m))) => {
                assert!(
                    m.starts_with("sluice_") && !m.contains("panic"),
                    "{sql}: {m}"
                )
            }
            Err(e) => panic!("{sql}: {e}"),
        }
        assert!(conn.is_autocommit(), "{sql} left a transaction open");
    }
}

/// Extremes the oracles must judge in every run, whatever the seed.
fn oracle_cases(conn: &Connection) {
    let big = f64::MAX;
    let bucket = |ts: Arg, w: Arg| Case {
        function: 0,
        sql: "SELECT sluice_bucket(?1, ?2)".into(),
        args: vec![ts, w],
    };
    let pct = |a: f64, b: f64, p: f64| Case {
        function: 0,
        sql: "SELECT sluice_percentile(column1, column2) FROM (VALUES (?1, ?2), (?3, ?4))".into(),
        args: vec![Arg::Real(a), Arg::Real(p), Arg::Real(b), Arg::Real(p)],
    };
    let cases = [
        ("sluice_bucket", bucket(Arg::Int(i64::MIN), Arg::Int(300))),
        ("sluice_bucket", bucket(Arg::Int(i64::MIN + 1), Arg::Int(7))),
        ("sluice_bucket", bucket(Arg::Int(i64::MAX), Arg::Int(300))),
        (
            "sluice_bucket",
            bucket(Arg::Int(-1), Arg::Int(3_162_240_000)),
        ),
        ("sluice_bucket", bucket(Arg::Real(-1e300), Arg::Int(300))),
        ("sluice_bucket", bucket(Arg::Real(1e17 + 3.0), Arg::Int(7))),
        (
            "sluice_bucket",
            bucket(Arg::Real(6.237630981348969e35), Arg::Int(300)),
        ),
        (
            "sluice_bucket",
            bucket(Arg::Real(-f64::MAX), Arg::Int(1_714_566_896)),
        ),
        (
            "sluice_bucket",
            bucket(Arg::Real(9.0e15 - 0.5), Arg::Int(7)),
        ),
        (
            "sluice_bucket",
            bucket(Arg::Real(-5.319503871827006e-245), Arg::Int(300)),
        ),
        (
            "sluice_bucket",
            bucket(
                Arg::Text("0000-01-01 00:00:01".into()),
                Arg::Int(3_162_240_000),
            ),
        ),
        (
            "sluice_bucket",
            bucket(Arg::Text("9999-12-31T23:59:59Z".into()), Arg::Int(7)),
        ),
        ("sluice_percentile", pct(-big, big, 0.0)),
        ("sluice_percentile", pct(-big, big, 0.3)),
        ("sluice_percentile", pct(-big, big, 1.0)),
        ("sluice_percentile", pct(big, big, 0.5)),
    ];
    for (name, case) in cases {
        match run(conn, &case) {
            Ok(out) => {
                if let Some(wrong) = oracle(conn, name, &case, &out) {
                    panic!("wrong answer: {wrong}, from {}", case.show());
                }
            }
            Err(rusqlite::Error::SqliteFailure(_, Some(m))) => {
                assert!(
                    m.starts_with(name) && !m.contains("panic"),
                    "{}: {m}",
                    case.show()
                )
            }
            Err(e) => panic!("{}: {e}", case.show()),
        }
    }
}

fn main() {
    let cases: u64 = env_number("SLUICE_FUZZ_CASES", 5_000);
    let seed: u64 = env_seed("SLUICE_FUZZ_SEED");
    println!("sql argument fuzzing: {cases} cases, SLUICE_FUZZ_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzz.db");
    let (mut conn, batches, sketches, compressed) = fresh_db(&path);
    // Which build is under test: scripts/fuzz.sh asks for the one with
    // overflow checks (profile `fuzz`), where an overflow panics instead of
    // wrapping, and so is seen.
    let debug: String = conn
        .query_row(
            "SELECT json_extract(sluice_debug(), '$.profile')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    println!("extension build profile: {debug}");
    if let Ok(want) = std::env::var("SLUICE_FUZZ_PROFILE") {
        assert_eq!(
            debug, want,
            "SLUICE_SQLITE_EXT is not the build SLUICE_FUZZ_PROFILE asks for"
        );
    }

    let literals = doc_literals();
    let (doc_json, doc_text): (Vec<String>, Vec<String>) = literals
        .into_iter()
        .partition(|s| s.trim_start().starts_with('[') || s.trim_start().starts_with('{'));
    assert!(
        doc_json.len() >= 10 && doc_text.len() >= 10,
        "docs/sqlite.md literals: {} JSON, {} other",
        doc_json.len(),
        doc_text.len()
    );
    let mut corpus = Vec::new();
    for e in std::fs::read_dir(repo_root().join("tests/corpus")).unwrap() {
        corpus.push(std::fs::read(e.unwrap().path()).unwrap());
    }
    let calls = doc_calls();
    assert!(
        calls.len() >= 30,
        "only {} calls found in docs/sqlite.md",
        calls.len()
    );
    let mut pools = Pools {
        doc_calls: calls,
        doc_text,
        doc_json,
        batches,
        sketches,
        compressed,
        corpus,
    };

    let functions: Vec<Function> = conn
        .prepare(
            "SELECT DISTINCT name, narg, type FROM pragma_function_list \
             WHERE name LIKE 'sluice%' ORDER BY name, narg",
        )
        .unwrap()
        .query_map([], |r| {
            Ok(Function {
                name: r.get(0)?,
                narg: r.get(1)?,
                kind: r.get(2)?,
            })
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let names: std::collections::BTreeSet<&str> =
        functions.iter().map(|f| f.name.as_str()).collect();
    for want in [
        "sluice_version",
        "sluice_debug",
        "sluice_device",
        "sluice_insert",
        "sluice_track",
        "sluice_batch",
        "sluice_ack",
        "sluice_pending",
        "sluice_cleanup",
        "sluice_bucket",
        "sluice_sketch_quantile",
        "sluice_compress",
        "sluice_decompress",
        "sluice_unpack",
        "sluice_rollup",
        "sluice_rollup_run",
        "sluice_enforce_budget",
        "sluice_pending_age",
        "sluice_sketch",
        "sluice_sketch_merge",
        "sluice_pack",
        "sluice_percentile",
        "sluice_tracked",
        "sluice_machine",
        "sluice_zone",
        "sluice_new_epoch",
        "sluice_identity",
    ] {
        assert!(names.contains(want), "{want} is not registered");
    }
    println!(
        "{} functions ({} name/arity pairs): {}",
        names.len(),
        functions.len(),
        functions
            .iter()
            .map(|f| format!("{}/{}", f.name, f.narg))
            .collect::<Vec<_>>()
            .join(" ")
    );

    named_cases(&conn);
    oracle_cases(&conn);
    watchdog();
    let started = Instant::now();
    let mut per_fn: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut shapes: BTreeMap<String, u64> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut slowest = (Duration::ZERO, String::new());
    let mut oracle_failures = 0u64;
    for i in 0..cases {
        if i > 0 && i % 100_000 == 0 {
            println!(
                "  ... {i} cases, {:.0}/s, {} failures",
                i as f64 / started.elapsed().as_secs_f64(),
                failures.len()
            );
        }
        if i > 0 && i % 20_000 == 0 {
            healthy(&conn, &format!("after case {i}"));
            drop(conn);
            // A fresh database has a new stream id: its own batches.
            let (c, b, sk, co) = fresh_db(&path);
            conn = c;
            pools.batches = b;
            pools.sketches = sk;
            pools.compressed = co;
        } else if i > 0 && i % 2_000 == 0 {
            healthy(&conn, &format!("after case {i}"));
        }
        let case = gen_case(&mut rng, &pools, &functions);
        let fname = functions[case.function].name.clone();
        *CURRENT.lock().unwrap() = case.show();
        let t0 = Instant::now();
        STARTED_MS.store(now_ms(), Ordering::Relaxed);
        let result = run(&conn, &case);
        STARTED_MS.store(0, Ordering::Relaxed);
        let took = t0.elapsed();
        if took > slowest.0 {
            slowest = (took, case.show());
        }
        let e = per_fn.entry(fname.clone()).or_default();
        match result {
            Ok(out) => {
                e.0 += 1;
                if let Some(wrong) = oracle(&conn, &fname, &case, &out) {
                    oracle_failures += 1;
                    if failures.len() < 50 {
                        failures.push(format!(
                            "case {i}: wrong answer: {wrong}, from {}",
                            case.show()
                        ));
                    }
                }
            }
            Err(err) => {
                e.1 += 1;
                let msg = match &err {
                    rusqlite::Error::SqliteFailure(_, Some(m)) => m.clone(),
                    other => format!("<not an SQLite error message: {other}>"),
                };
                let bad = msg.is_empty()
                    || msg.to_lowercase().contains("panic")
                    || !msg.starts_with("sluice_");
                if bad && failures.len() < 50 {
                    failures.push(format!("case {i}: error {msg:?} from {}", case.show()));
                }
                *shapes.entry(shape(&msg)).or_default() += 1;
            }
        }
        if !conn.is_autocommit() {
            failures.push(format!(
                "case {i}: left a transaction open: {}",
                case.show()
            ));
            let _ = conn.execute_batch("ROLLBACK");
        }
    }
    healthy(&conn, "at the end");
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{cases} executions in {secs:.1} s ({:.0}/s), {} failures; slowest case {:?}: {}",
        cases as f64 / secs,
        failures.len(),
        slowest.0,
        slowest.1.chars().take(300).collect::<String>()
    );
    println!(
        "answers the oracles of sluice_bucket and sluice_percentile refused: {oracle_failures}"
    );
    println!("per function (ok / error):");
    for (f, (ok, err)) in &per_fn {
        println!("  {f}: {ok} / {err}");
    }
    let mut by_count: Vec<(&String, &u64)> = shapes.iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    println!(
        "{} distinct error shapes (numbers and quoted names blurred); the 40 most frequent:",
        shapes.len()
    );
    for (s, n) in by_count.into_iter().take(40) {
        println!("  {n:>7}  {s}");
    }
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("FAILURE {f}");
        }
        eprintln!("reproduce with SLUICE_FUZZ_SEED={seed} SLUICE_FUZZ_CASES={cases}");
        std::process::exit(1);
    }
}
