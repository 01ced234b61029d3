//! Property-based fuzzing of the wire decoders (`sluice_wire::decode`,
//! `decode_header`) and the sketch decoder (`Sketch::decode`): N inputs
//! mutated from a seed corpus of valid batches and sketches (bit flips,
//! byte writes, truncations, insertions, splices, length-field lies, edits
//! of the decompressed body re-compressed), most of them re-signed with a
//! valid CRC-32C so that the parsers behind the checksum run. Properties:
//! no panic, no hang (a watchdog aborts when one input takes over 10 s),
//! bounded allocation (a counting allocator: no input may make a decoder
//! allocate more than the format's 64 MiB body cap plus 16 times its own
//! size; the process's VmHWM is reported), and a decoded batch re-encodes
//! and decodes to itself.
//!
//! Run by `cargo test` with a small N (`SLUICE_FUZZ_EXECS`, default 20,000)
//! and by `scripts/fuzz.sh N`. `SLUICE_FUZZ_SEED` fixes the seed;
//! `SLUICE_FUZZ_WRITE_CORPUS=DIR` writes the seeds and one input per distinct
//! decoder error into DIR (how `tests/corpus/` was made).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sluice_tests::{env_number, env_seed, Rng};
use sluice_wire::{
    decode, decode_header, encode, BatchHeader, Column, ColumnType, EncodeOptions, Sketch, Value,
};

/// Counts live and peak heap bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new > l.size() {
                let now = LIVE.fetch_add(new - l.size(), Ordering::Relaxed) + new - l.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static A: Counting = Counting;

const DIVISION_COLUMNS: [(&str, ColumnType); 11] = [
    ("id", ColumnType::Integer),
    ("session_id", ColumnType::Text),
    ("camera_id", ColumnType::Text),
    ("location_id", ColumnType::Text),
    ("frame_number", ColumnType::Integer),
    ("video_ts", ColumnType::Real),
    ("recorded_at", ColumnType::Text),
    ("state", ColumnType::Text),
    ("walking_waiters", ColumnType::Integer),
    ("service_waiters", ColumnType::Integer),
    ("total_staff", ColumnType::Integer),
];

/// A valid `division_states` batch of `rows` rows (applies in the default cloud schema).
pub fn division_batch(
    device: &str,
    base: i64,
    rows: usize,
    seed: u64,
    compressed: bool,
) -> Vec<u8> {
    let mut rng = Rng(seed);
    let columns: Vec<Column> = DIVISION_COLUMNS
        .iter()
        .map(|(n, t)| Column::new(*n, *t))
        .collect();
    let versions: Vec<i64> = (1..=rows as i64).map(|i| base + i).collect();
    let mut data: Vec<Vec<Value>> = vec![Vec::new(); columns.len()];
    for (r, v) in versions.iter().enumerate() {
        let cam = rng.below(12);
        let vals = [
            Value::Integer(*v),
            Value::Text(format!("s-{cam}-{}", r / 7)),
            Value::Text(format!("cam-{cam:02}")),
            Value::Text("store-042".into()),
            Value::Integer(*v * 5),
            Value::Real(*v as f64 * 0.2 + rng.below(1000) as f64 / 7.0),
            Value::Text(format!(
                "2026-11-18T11:{:02}:{:02}.{:03}Z",
                r / 60 % 60,
                r % 60,
                rng.below(1000)
            )),
            Value::Text(["RED", "YELLOW", "GREEN"][rng.below(3)].into()),
            Value::Integer(rng.below(4) as i64),
            Value::Integer(rng.below(3) as i64),
            Value::Integer(3 + rng.below(5) as i64),
        ];
        for (c, val) in vals.into_iter().enumerate() {
            data[c].push(val);
        }
    }
    let header = BatchHeader {
        pulled: None,
        device_id: device.into(),
        stream_id: 0x1234_5678_9abc_def0 ^ seed,
        table: "division_states".into(),
        base_seq: base,
        last_seq: base + rows as i64,
        row_count: rows as u32,
        sent_at_ms: 1_795_000_000_000,
        columns,
        fingerprint: 0,
        digest: None,
        origin: sluice_wire::Origin::default(),
        resend: 0,
        changes: None,
    };
    let opts = EncodeOptions {
        brotli_quality: if compressed { Some(5) } else { None },
    };
    encode(&header, &versions, &data, opts).expect("a valid batch encodes")
}

/// A batch with every storage class, NULLs, extremes and Unicode.
fn odd_batch(compressed: bool) -> Vec<u8> {
    let columns = vec![
        Column::new("i", ColumnType::Integer),
        Column::new("r", ColumnType::Real),
        Column::new("t", ColumnType::Text),
        Column::new("b", ColumnType::Blob),
        Column::new("n", ColumnType::Numeric),
    ];
    let versions = vec![3, 7, 8, 100];
    let data = vec![
        vec![
            Value::Integer(i64::MIN),
            Value::Integer(i64::MAX),
            Value::Null,
            Value::Integer(0),
        ],
        vec![
            Value::Real(f64::NAN),
            Value::Real(-0.0),
            Value::Real(1e308),
            Value::Real(0.1),
        ],
        vec![
            Value::Text("ünï €".into()),
            Value::Text(String::new()),
            Value::Null,
            Value::Text("x".repeat(300)),
        ],
        vec![
            Value::Blob(vec![0, 255, 7]),
            Value::Blob(Vec::new()),
            Value::Null,
            Value::Blob(vec![9; 1000]),
        ],
        vec![
            Value::Integer(5),
            Value::Real(2.5),
            Value::Text("7".into()),
            Value::Null,
        ],
    ];
    let header = BatchHeader {
        pulled: None,
        device_id: "fuzz-odd".into(),
        stream_id: 42,
        table: "odd".into(),
        base_seq: 2,
        last_seq: 100,
        row_count: 4,
        sent_at_ms: 0,
        columns,
        fingerprint: 0,
        digest: None,
        origin: sluice_wire::Origin::default(),
        resend: 0,
        changes: None,
    };
    encode(
        &header,
        &versions,
        &data,
        EncodeOptions {
            brotli_quality: if compressed { Some(5) } else { None },
        },
    )
    .unwrap()
}

fn seeds() -> (Vec<(String, Vec<u8>)>, Vec<(String, Vec<u8>)>) {
    let mut batches = Vec::new();
    for (i, rows) in [1usize, 3, 20, 200].into_iter().enumerate() {
        batches.push((
            format!("batch-valid-raw-{rows}"),
            division_batch("fuzz-dev", 0, rows, i as u64, false),
        ));
        batches.push((
            format!("batch-valid-brotli-{rows}"),
            division_batch("fuzz-dev", 1000, rows, i as u64, true),
        ));
    }
    batches.push(("batch-valid-odd-raw".into(), odd_batch(false)));
    batches.push(("batch-valid-odd-brotli".into(), odd_batch(true)));
    let mut sketches = Vec::new();
    sketches.push(("sketch-valid-empty".into(), Sketch::new().encode()));
    for (n, name) in [(10, "small"), (1000, "wide")] {
        let mut s = Sketch::new();
        for i in 0..n {
            s.add(((i * 7919) % 1000) as f64 / 3.0 - 50.0);
        }
        sketches.push((format!("sketch-valid-{name}"), s.encode()));
    }
    (batches, sketches)
}

/// Byte offsets of a batch frame's length fields: (header_len, body_raw_len, body_len).
fn frame_fields(b: &[u8]) -> Option<(usize, usize, usize)> {
    let hl = u32::from_le_bytes(b.get(5..9)?.try_into().ok()?) as usize;
    let raw = 9usize.checked_add(hl)?;
    b.get(raw..raw + 8)?;
    Some((5, raw, raw + 4))
}

fn resign(b: &mut Vec<u8>) {
    if b.len() >= 4 {
        let n = b.len() - 4;
        let crc = crc32c::crc32c(&b[..n]);
        b[n..].copy_from_slice(&crc.to_le_bytes());
    }
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    if at + 4 <= b.len() {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
}

const LIES: [u32; 8] = [
    0,
    1,
    0x7fff_ffff,
    0xffff_ffff,
    64 << 20,
    (64 << 20) + 1,
    0x8000_0000,
    1000,
];

/// One mutation of `input` (batch or sketch); `other` is for splices.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8], batch: bool) -> Vec<u8> {
    let mut b = input.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        match rng.below(if batch { 9 } else { 7 }) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = [0, 0xff, 0x7f, 0x80, 1][rng.below(5)];
            }
            2 => {
                let n = rng.below(b.len() + 1);
                b.truncate(n);
            }
            3 => {
                let i = rng.below(b.len() + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(i..i, bytes);
            }
            4 if !b.is_empty() => {
                let i = rng.below(b.len());
                let n = rng.below((b.len() - i).min(64) + 1);
                b.drain(i..i + n);
            }
            5 => {
                // Splice: a prefix of this input and a suffix of another.
                let i = rng.below(b.len() + 1);
                let j = rng.below(other.len() + 1);
                b.truncate(i);
                b.extend_from_slice(&other[j..]);
            }
            6 if b.len() >= 8 => {
                // A varint / count inflated anywhere.
                let i = rng.below(b.len() - 4);
                put_u32(&mut b, i, LIES[rng.below(LIES.len())]);
            }
            7 => {
                // Length-field lies in the frame.
                if let Some((hl, raw, body)) = frame_fields(&b) {
                    let at = [hl, raw, body][rng.below(3)];
                    put_u32(&mut b, at, LIES[rng.below(LIES.len())]);
                }
            }
            8 => {
                // Edit the body itself (decompressed, then re-compressed), so
                // that the body parser behind brotli runs.
                if let Some((_, raw, body)) = frame_fields(&b) {
                    let blen = u32::from_le_bytes(b[body..body + 4].try_into().unwrap()) as usize;
                    let start = body + 4;
                    if start + blen <= b.len() && b.get(4).is_some_and(|f| f & 1 != 0) {
                        let mut plain = Vec::new();
                        let ok = std::io::Read::read_to_end(
                            &mut std::io::Read::take(
                                brotli::Decompressor::new(&b[start..start + blen], 4096),
                                1 << 20,
                            ),
                            &mut plain,
                        )
                        .is_ok();
                        if ok && !plain.is_empty() {
                            let i = rng.below(plain.len());
                            plain[i] = rng.next() as u8;
                            if rng.below(3) == 0 {
                                plain.truncate(rng.below(plain.len() + 1));
                            }
                            let mut z = Vec::new();
                            let params = brotli::enc::BrotliEncoderParams {
                                quality: 1,
                                ..Default::default()
                            };
                            brotli::BrotliCompress(&mut &plain[..], &mut z, &params).unwrap();
                            let tail = b[start + blen..].to_vec();
                            b.truncate(raw);
                            b.extend_from_slice(&(plain.len() as u32).to_le_bytes());
                            b.extend_from_slice(&(z.len() as u32).to_le_bytes());
                            b.extend_from_slice(&z);
                            b.extend_from_slice(&tail);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    // Mostly re-signed: the decoder must be exercised behind the checksum.
    if rng.below(10) < 8 {
        resign(&mut b);
    }
    b
}

/// An error message with its numbers removed: a rough "which check fired".
fn shape(msg: &str) -> String {
    let mut s = String::new();
    // Up to the first parenthesis: the details (values, hex checksums) vary.
    for c in msg.split('(').next().unwrap_or(msg).chars() {
        let numeric =
            c.is_ascii_digit() || (s.ends_with('#') && matches!(c, '.' | 'e' | '-' | '+'));
        if !numeric {
            s.push(c);
        } else if !s.ends_with('#') {
            if s.ends_with('-') {
                s.pop();
            }
            s.push('#');
        }
    }
    s.split('\'')
        .step_by(2)
        .collect::<Vec<_>>()
        .join("'_'")
        .chars()
        .take(90)
        .collect()
}

fn vm_hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.to_owned())
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Runs one decoder on one input; returns the error shape (or "ok") and the peak bytes it allocated.
fn run_one<F: FnOnce(&[u8]) -> Result<(), String>>(input: &[u8], f: F) -> (String, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let r = f(input);
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    (
        r.err().map(|e| shape(&e)).unwrap_or_else(|| "ok".into()),
        peak,
    )
}

fn batch_decoders(input: &[u8]) -> Result<(), String> {
    let h = decode_header(input);
    let full = decode(input);
    match (&h, &full) {
        (Err(_), Ok(_)) => panic!("decode accepted what decode_header refused"),
        (Ok(h), Ok(b)) => {
            assert_eq!(h, &b.header, "decode_header and decode disagree");
            assert_eq!(b.versions.len(), h.row_count as usize);
            // What decodes re-encodes to an equal batch.
            let again = encode(
                &b.header,
                &b.versions,
                &b.columns,
                EncodeOptions {
                    brotli_quality: None,
                },
            )
            .map_err(|e| format!("re-encode: {e}"))?;
            let b2 = decode(&again).expect("a re-encoded batch decodes");
            assert_eq!(b2.versions, b.versions);
            assert_eq!(format!("{:?}", b2.columns), format!("{:?}", b.columns));
        }
        _ => {}
    }
    full.map(|_| ()).map_err(|e| e.to_string())
}

fn sketch_decoder(input: &[u8]) -> Result<(), String> {
    let s = Sketch::decode(input).map_err(|e| e.to_string())?;
    // A decoded sketch answers and re-encodes to itself.
    let _ = s.quantile(0.5);
    let again = Sketch::decode(&s.encode()).expect("a re-encoded sketch decodes");
    assert_eq!(again.count(), s.count());
    Ok(())
}

fn main() {
    let execs: u64 = env_number("SLUICE_FUZZ_EXECS", 20_000);
    let seed: u64 = env_seed("SLUICE_FUZZ_SEED");
    let corpus_dir = std::env::var("SLUICE_FUZZ_WRITE_CORPUS").ok();
    let (batches, sketches) = seeds();
    // Also the checked-in corpus, when present.
    let mut batch_inputs: Vec<Vec<u8>> = batches.iter().map(|(_, b)| b.clone()).collect();
    let mut sketch_inputs: Vec<Vec<u8>> = sketches.iter().map(|(_, b)| b.clone()).collect();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read(e.path()).unwrap();
            if name.starts_with("batch-") {
                batch_inputs.push(bytes);
            } else if name.starts_with("sketch-") {
                sketch_inputs.push(bytes);
            }
        }
    }
    println!(
        "fuzz: seed {seed}, {execs} executions, {} batch and {} sketch seeds",
        batch_inputs.len(),
        sketch_inputs.len()
    );

    // Watchdog: no single input may take 10 s.
    static DONE: AtomicU64 = AtomicU64::new(0);
    std::thread::spawn(|| {
        let mut last = (u64::MAX, Instant::now());
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let d = DONE.load(Ordering::Relaxed);
            if d != last.0 {
                last = (d, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(10) {
                eprintln!("fuzz: HANG: execution {d} has run for over 10 s; input in /tmp/sluice-fuzz-current.bin");
                std::process::exit(2);
            }
        }
    });

    // The named case: a header claiming a 4 GB body (and 4 G rows) allocates nothing of it.
    for lie in [0xffff_ffffu32, 64 << 20] {
        let mut b = batches[0].1.clone();
        let (_, raw, _) = frame_fields(&b).unwrap();
        put_u32(&mut b, raw, lie);
        b[4] |= 1;
        resign(&mut b);
        let (outcome, peak) = run_one(&b, batch_decoders);
        println!(
            "fuzz: body_raw_len {lie:#x} in a {}-byte batch: {outcome}, {peak} bytes allocated",
            b.len()
        );
        assert!(outcome != "ok" && peak < 8 << 20, "{outcome}, {peak} bytes");
    }

    let mut rng = Rng(seed);
    let mut shapes: BTreeMap<String, (u64, Vec<u8>, bool)> = BTreeMap::new();
    let mut max_peak = (0usize, 0usize);
    let mut panics = 0u64;
    let t0 = Instant::now();
    // Quiet panics: they are counted and their inputs saved.
    std::panic::set_hook(Box::new(|_| {}));
    for i in 0..execs {
        let batch = rng.below(4) != 0;
        let pool = if batch { &batch_inputs } else { &sketch_inputs };
        let a = &pool[rng.below(pool.len())];
        let b = &pool[rng.below(pool.len())];
        let input = mutate(&mut rng, a, b, batch);
        let res = std::panic::catch_unwind(|| {
            if batch {
                run_one(&input, batch_decoders)
            } else {
                run_one(&input, sketch_decoder)
            }
        });
        match res {
            Ok((shape, peak)) => {
                let limit = (64 << 20) + 16 * input.len() + (1 << 20);
                if peak > limit {
                    let path = format!("/tmp/sluice-fuzz-alloc-{i}.bin");
                    std::fs::write(&path, &input).unwrap();
                    panic!("an input of {} bytes made the decoder allocate {peak} bytes (saved as {path})", input.len());
                }
                if peak > max_peak.0 {
                    max_peak = (peak, input.len());
                }
                let key = format!("{}:{shape}", if batch { "batch" } else { "sketch" });
                shapes.entry(key).or_insert((i, input.clone(), batch)).0 += 0;
            }
            Err(_) => {
                panics += 1;
                let path = format!("/tmp/sluice-fuzz-panic-{i}.bin");
                std::fs::write(&path, &input).unwrap();
                eprintln!("fuzz: PANIC on execution {i}: input saved as {path}");
            }
        }
        DONE.store(i + 1, Ordering::Relaxed);
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "fuzz: {execs} executions in {secs:.1}s ({:.0}/s), {panics} panics, {} distinct outcomes, \
         largest allocation {} bytes (input of {} bytes), VmHWM {} kB",
        execs as f64 / secs,
        shapes.len(),
        max_peak.0,
        max_peak.1,
        vm_hwm_kb()
    );
    for k in shapes.keys() {
        println!("  {k}");
    }
    if let Some(dir) = corpus_dir {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in batches.iter().chain(sketches.iter()) {
            std::fs::write(format!("{dir}/{name}.bin"), bytes).unwrap();
        }
        for (n, (k, (_, bytes, batch))) in shapes.iter().enumerate() {
            if k.ends_with(":ok") {
                continue;
            }
            let kind = if *batch { "batch" } else { "sketch" };
            std::fs::write(format!("{dir}/{kind}-err-{n:02}.bin"), bytes).unwrap();
        }
    }
    // Bounded memory: a header claiming 4 GB must not have allocated it.
    let hwm = vm_hwm_kb();
    assert!(hwm < 512 * 1024, "peak RSS {hwm} kB");
    assert_eq!(panics, 0, "decoders panicked (inputs saved in /tmp)");
}
