//! `BENCH_MODE=search`: latency of the search functions of issue 4 on `n`
//! key-frame rows (default 100,000), each beside the hand-written SQL a
//! client would run on the same indexes, in the same run.
//!
//! The rows have the shape of `key_frames` (in a table of their own,
//! `bench_frames`): a description made from a vocabulary of restaurant
//! scenes ("a waiter wiping table 4 after the guests left"), and a
//! 384-dimension embedding. The embeddings are synthetic, not a model's: the
//! sum of a random unit vector per action and per place, plus noise,
//! normalised, so that rows describing the same scene are neighbours (as a
//! sentence model's would be) and the HNSW index has clusters to work with.
//! For latency that is what matters; the relevance of real embeddings is
//! tested in `tests/e2e/search.rs`.
//!
//! `sluice.enable_search` and `sluice.enable_vectors` build the GIN and HNSW
//! (cosine) indexes after the COPY. Then 200 queries (after 20 of warm-up),
//! each run by the six methods in rotating order: two or three words in
//! `websearch_to_tsquery` syntax (a quarter with `or`, a fifth with a
//! `-word`), and a query vector made like a row's for the same scene.

use std::io::Write as _;
use std::time::{Duration, Instant};

use postgres::Client;

use crate::common::{iso_ms, pct};

const TABLE: &str = "bench_frames";
const DIMS: usize = 384;
const QUERIES: usize = 200;
const WARMUP: usize = 20;
const K: i32 = 10;

const SUBJECTS: [&str; 12] = [
    "a waiter",
    "two customers",
    "a cook",
    "a delivery driver",
    "a staff member",
    "a family of four",
    "a queue of six people",
    "the manager",
    "a cleaner",
    "a child",
    "an elderly couple",
    "a barista",
];
/// (phrase, the word a query uses for it)
const ACTIONS: [(&str, &str); 12] = [
    ("cleaning", "cleaning"),
    ("waiting at", "waiting"),
    ("wiping", "wiping"),
    ("carrying plates to", "plates"),
    ("reading the menu at", "menu"),
    ("paying at", "paying"),
    ("plating food near", "food"),
    ("restocking", "restocking"),
    ("setting cutlery on", "cutlery"),
    ("mopping the floor by", "mopping"),
    ("arguing loudly at", "arguing"),
    ("dropping boxes at", "boxes"),
];
const PLACES: [(&str, &str); 16] = [
    ("table 4", "table"),
    ("the counter", "counter"),
    ("the kitchen", "kitchen"),
    ("the entrance", "entrance"),
    ("the bar", "bar"),
    ("the back door", "door"),
    ("the window", "window"),
    ("the drinks fridge", "fridge"),
    ("the terrace", "terrace"),
    ("the cash desk", "desk"),
    ("the coffee machine", "coffee"),
    ("the dining room", "dining"),
    ("the stairs", "stairs"),
    ("the toilets", "toilets"),
    ("the pass", "pass"),
    ("the high chairs", "chairs"),
];
const EXTRAS: [&str; 12] = [
    "after the guests left",
    "during the lunch rush",
    "with a tray",
    "in the evening",
    "while music plays",
    "before opening",
    "near closing time",
    "with a bucket",
    "in a hurry",
    "on a busy saturday",
    "during a quiet hour",
    "with a smile",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    fn gauss(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    fn unit_vector(&mut self) -> Vec<f64> {
        normalise((0..DIMS).map(|_| self.gauss()).collect())
    }
}

fn normalise(mut v: Vec<f64>) -> Vec<f64> {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// The random unit vectors of the actions and places.
struct Centres {
    actions: Vec<Vec<f64>>,
    places: Vec<Vec<f64>>,
}

impl Centres {
    fn new() -> Centres {
        let mut rng = Rng(0x51ce_0000_c0ff_ee01);
        Centres {
            actions: (0..ACTIONS.len()).map(|_| rng.unit_vector()).collect(),
            places: (0..PLACES.len()).map(|_| rng.unit_vector()).collect(),
        }
    }

    /// A scene's vector: its action's and place's centres plus noise.
    fn vector(&self, rng: &mut Rng, action: usize, place: usize) -> String {
        let noise = 0.8 / (DIMS as f64).sqrt();
        let v: Vec<f64> = (0..DIMS)
            .map(|d| self.actions[action][d] + self.places[place][d] + noise * rng.gauss())
            .collect();
        let mut s = String::with_capacity(DIMS * 8);
        s.push('[');
        for (i, x) in normalise(v).iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&format!("{x:.4}"));
        }
        s.push(']');
        s
    }
}

fn load(c: &mut Client, n: usize, centres: &Centres) {
    c.batch_execute(&format!(
        "DELETE FROM sluice.search_columns WHERE target = to_regclass('{TABLE}');
         DELETE FROM sluice.vector_columns WHERE target = to_regclass('{TABLE}');
         DROP TABLE IF EXISTS {TABLE};
         CREATE TABLE {TABLE} (
             location_id text NOT NULL, sluice_device text NOT NULL, id bigint NOT NULL,
             camera_id text NOT NULL, captured_at timestamptz NOT NULL, description text,
             embedding vector({DIMS}), sluice_version bigint NOT NULL,
             PRIMARY KEY (location_id, sluice_device, id))"
    ))
    .expect("create bench_frames");
    let t = Instant::now();
    let mut rng = Rng(0x5eed_f00d_0000_0001);
    let mut w = c
        .copy_in(&format!(
            "COPY {TABLE} (location_id, sluice_device, id, camera_id, captured_at, description, embedding, sluice_version) FROM STDIN"
        ))
        .expect("copy");
    let mut buf = String::with_capacity(4 << 20);
    for i in 0..n {
        let (s, a, p, e) = (
            rng.below(SUBJECTS.len()),
            rng.below(ACTIONS.len()),
            rng.below(PLACES.len()),
            rng.below(EXTRAS.len()),
        );
        let mut description = format!(
            "{} {} {} {}",
            SUBJECTS[s], ACTIONS[a].0, PLACES[p].0, EXTRAS[e]
        );
        if rng.below(10) < 3 {
            let (s2, a2, p2) = (
                rng.below(SUBJECTS.len()),
                rng.below(ACTIONS.len()),
                rng.below(PLACES.len()),
            );
            description.push_str(&format!(
                " while {} is {} {}",
                SUBJECTS[s2], ACTIONS[a2].0, PLACES[p2].0
            ));
        }
        let ms = 1_714_550_400_000i64 + i as i64 * 2_000;
        buf.push_str(&format!(
            "loc-bench\tedge-bench-1\t{}\tcam-{:02}\t{}\t{description}\t{}\t{}\n",
            i + 1,
            i % 8,
            iso_ms(ms),
            centres.vector(&mut rng, a, p),
            i + 1
        ));
        if buf.len() > 4 << 20 {
            w.write_all(buf.as_bytes()).expect("copy write");
            buf.clear();
        }
    }
    w.write_all(buf.as_bytes()).expect("copy write");
    w.finish().expect("copy finish");
    eprintln!("{n} rows loaded in {:.1} s", t.elapsed().as_secs_f64());

    c.batch_execute("SET maintenance_work_mem = '1GB'")
        .expect("maintenance_work_mem");
    for (what, sql) in [
        (
            "sluice.enable_search (generated tsvector column, GIN index)",
            format!("SELECT sluice.enable_search('{TABLE}', 'description')"),
        ),
        (
            "sluice.enable_vectors (HNSW index, cosine)",
            format!("SELECT sluice.enable_vectors('{TABLE}', 'embedding', {DIMS}, 'cosine')"),
        ),
        ("VACUUM ANALYZE", format!("VACUUM ANALYZE {TABLE}")),
    ] {
        let t = Instant::now();
        c.batch_execute(&sql).expect(what);
        eprintln!("{what}: {:.1} s", t.elapsed().as_secs_f64());
    }
}

struct Query {
    text: String,
    vector: String,
}

fn queries(centres: &Centres) -> Vec<Query> {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    (0..WARMUP + QUERIES)
        .map(|i| {
            let (a, p) = (rng.below(ACTIONS.len()), rng.below(PLACES.len()));
            let mut text = if i % 4 == 3 {
                format!("{} or {}", ACTIONS[a].1, PLACES[p].1)
            } else {
                format!("{} {}", ACTIONS[a].1, PLACES[p].1)
            };
            if i % 5 == 4 {
                let other = (p + 1 + rng.below(PLACES.len() - 1)) % PLACES.len();
                text.push_str(&format!(" -{}", PLACES[other].1));
            }
            Query {
                text,
                vector: centres.vector(&mut rng, a, p),
            }
        })
        .collect()
}

/// One method: its statement, its latencies and answers (ids).
struct Method {
    name: &'static str,
    stmt: postgres::Statement,
    lat: Vec<Duration>,
    answers: Vec<Vec<i64>>,
}

pub fn bench_search(c: &mut Client, n: usize) {
    let centres = Centres::new();
    load(c, n, &centres);
    let qs = queries(&centres);

    let prepare = |c: &mut Client, name, sql: &str| Method {
        name,
        stmt: c
            .prepare(sql)
            .unwrap_or_else(|e| panic!("prepare {name}: {e}")),
        lat: Vec::new(),
        answers: Vec::new(),
    };
    let mut methods = vec![
        prepare(
            c,
            "`sluice.search`",
            &format!("SELECT (row_data->>'id')::int8 FROM sluice.search('{TABLE}', $1, $2)"),
        ),
        prepare(
            c,
            "SQL: `@@ websearch_to_tsquery`, `ORDER BY ts_rank_cd`, GIN index",
            &format!(
                "SELECT t.id FROM {TABLE} t, websearch_to_tsquery('english', $1) q
                 WHERE t.description_tsv @@ q
                 ORDER BY ts_rank_cd(t.description_tsv, q) DESC, t.ctid LIMIT $2::int"
            ),
        ),
        prepare(
            c,
            "`sluice.nearest`",
            &format!(
                "SELECT (row_data->>'id')::int8 FROM sluice.nearest('{TABLE}', $1::text::vector, $2)"
            ),
        ),
        prepare(
            c,
            "SQL: `ORDER BY embedding <=> q LIMIT 10`, HNSW index",
            &format!(
                "SELECT id FROM {TABLE} ORDER BY embedding <=> $1::text::vector LIMIT $2::int"
            ),
        ),
        prepare(
            c,
            "`sluice.hybrid_search`",
            &format!(
                "SELECT (row_data->>'id')::int8 FROM sluice.hybrid_search('{TABLE}', $1, $2::text::vector, $3)"
            ),
        ),
        prepare(
            c,
            "SQL: reciprocal rank fusion of both (top 40 each, k = 60)",
            &format!(
                "WITH q AS (SELECT websearch_to_tsquery('english', $1) AS q),
                 tr AS (SELECT t.id, row_number() OVER (ORDER BY ts_rank_cd(t.description_tsv, q.q) DESC, t.ctid) AS r
                        FROM {TABLE} t, q WHERE t.description_tsv @@ q.q
                        ORDER BY ts_rank_cd(t.description_tsv, q.q) DESC, t.ctid LIMIT 40),
                 vr AS (SELECT v.id, row_number() OVER (ORDER BY v.d, v.id) AS r
                        FROM (SELECT t.id, t.embedding <=> $2::text::vector AS d FROM {TABLE} t
                              ORDER BY t.embedding <=> $2::text::vector LIMIT 40) v)
                 SELECT coalesce(tr.id, vr.id)
                 FROM tr FULL JOIN vr ON tr.id = vr.id
                 ORDER BY coalesce(1.0 / (60 + tr.r), 0) + coalesce(1.0 / (60 + vr.r), 0) DESC,
                          tr.r NULLS LAST, vr.r NULLS LAST
                 LIMIT $3::int"
            ),
        ),
    ];

    for (i, q) in qs.iter().enumerate() {
        for j in 0..methods.len() {
            let m = &mut methods[(i + j) % 6];
            let text: &(dyn postgres::types::ToSql + Sync) = &q.text;
            let vector: &(dyn postgres::types::ToSql + Sync) = &q.vector;
            let k: &(dyn postgres::types::ToSql + Sync) = &K;
            let params: Vec<&(dyn postgres::types::ToSql + Sync)> = match (i + j) % 6 / 2 {
                0 => vec![text, k],
                1 => vec![vector, k],
                _ => vec![text, vector, k],
            };
            let t = Instant::now();
            let rows = c
                .query(&m.stmt, &params)
                .unwrap_or_else(|e| panic!("{}: {e}", m.name));
            let took = t.elapsed();
            if i >= WARMUP {
                m.lat.push(took);
                m.answers.push(rows.iter().map(|r| r.get(0)).collect());
            }
        }
    }

    let mut matched = Vec::with_capacity(QUERIES);
    for q in &qs[WARMUP..] {
        let m: i64 = c
            .query_one(
                &format!(
                    "SELECT count(*) FROM {TABLE} WHERE description_tsv @@ websearch_to_tsquery('english', $1)"
                ),
                &[&q.text],
            )
            .expect("count matches")
            .get(0);
        matched.push(m);
    }
    matched.sort_unstable();

    println!("| k = {K}, {n} rows, {QUERIES} queries | p50 ms | p95 ms | same top {K} as sluice |");
    println!("| --- | ---: | ---: | ---: |");
    for pair in methods.chunks_mut(2) {
        let (ours, theirs) = pair.split_at_mut(1);
        let (ours, base) = (&mut ours[0], &mut theirs[0]);
        let same = ours
            .answers
            .iter()
            .zip(&base.answers)
            .filter(|(a, b)| {
                let (mut a, mut b) = ((*a).clone(), (*b).clone());
                a.sort_unstable();
                b.sort_unstable();
                a == b
            })
            .count();
        println!(
            "| {} | {:.2} | {:.2} | |",
            ours.name,
            pct(&mut ours.lat, 0.5),
            pct(&mut ours.lat, 0.95)
        );
        println!(
            "| {} | {:.2} | {:.2} | {same}/{QUERIES} |",
            base.name,
            pct(&mut base.lat, 0.5),
            pct(&mut base.lat, 0.95)
        );
    }
    println!();
    println!(
        "rows matching a text query: median {}, max {}",
        matched[matched.len() / 2],
        matched[matched.len() - 1]
    );
}
