#!/usr/bin/env bash
# Embedding throughput: sluice-inference (Rust, ort) beside Python's
# onnxruntime, same ONNX file, same tokenizer.json, same sentences, same
# settings (2 intra-op threads, batch 32, padding to the longest text of each
# batch, truncation at 256 tokens), tokenization included on both sides, in the
# same run, rounds interleaved. Also the resident memory with the model loaded.
#
# Usage: scripts/bench-embed.sh [SENTENCES=1024] [ROUNDS=5] [THREADS=2] [BATCH=32]
# Needs scripts/setup.sh (model, ONNX Runtime, .cache/py with onnxruntime).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$SLUICE_ROOT"
n=${1:-1024} rounds=${2:-5} threads=${3:-2} batch=${4:-32}
py="$SLUICE_CACHE/py/bin/python"
[ -f "$SLUICE_MODEL_DIR/model.onnx" ] && [ -x "$py" ] || { echo "run scripts/setup.sh first" >&2; exit 1; }
work=$(mktemp -d /tmp/sluice-bench-embed.XXXXXX)
trap 'rm -rf "$work"' EXIT

# Key-frame-like descriptions, 6 to 40 words, deterministic.
"$py" - "$n" >"$work/sentences.txt" <<'EOF'
import random, sys
r = random.Random(6)
who = ["a waiter", "two customers", "a cook", "a delivery driver", "a child", "the manager", "a cleaner", "a group of four people"]
verb = ["is carrying", "is cleaning", "walks past", "is waiting at", "sits down at", "points at", "is setting", "leaves"]
what = ["table T4", "the counter", "a tray of drinks", "the front door", "the window seats", "a stack of plates", "the cash register", "the terrace"]
extra = ["while the room is almost empty", "during the lunch rush", "near the kitchen", "as the lights are dimmed", "with a phone in hand",
         "and another waiter follows", "in front of camera two", "while music is playing", "after the last order", "before closing time"]
for _ in range(int(sys.argv[1])):
    s = f"{r.choice(who).capitalize()} {r.choice(verb)} {r.choice(what)}"
    for _ in range(r.randrange(0, 4)):
        s += " " + r.choice(extra)
    print(s + ".")
EOF

cat >"$work/bench.py" <<'EOF'
import json, os, sys, time
import numpy as np, onnxruntime as ort
from tokenizers import Tokenizer

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
file, threads, batch, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dump = sys.argv[5] if len(sys.argv) > 5 else None
sentences = open(file).read().splitlines()
model_dir = os.environ["SLUICE_MODEL_DIR"]
rss_before = rss("VmRSS:")
t = time.perf_counter()
tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
tok.enable_padding(pad_id=0, pad_token="[PAD]")  # batch-longest
tok.enable_truncation(256)
so = ort.SessionOptions()
so.intra_op_num_threads = threads
so.inter_op_num_threads = 1
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
sess = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), so, providers=["CPUExecutionProvider"])
load_ms = (time.perf_counter() - t) * 1e3

def embed(texts):
    out = []
    for i in range(0, len(texts), batch):
        enc = tok.encode_batch(texts[i:i + batch])
        feeds = {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
        }
        out.append(sess.run(["sentence_embedding"], feeds)[0])
    return np.concatenate(out)

first = embed(sentences[:batch])  # warm-up
if dump:
    first.astype("<f4").tofile(dump)
for _ in range(rounds):
    t = time.perf_counter()
    v = embed(sentences)
    secs = time.perf_counter() - t
    assert v.shape == (len(sentences), 384)
    print(json.dumps({"side": "python", "sentences": len(sentences), "seconds": round(secs, 4), "per_second": round(len(sentences) / secs, 1)}))
print(json.dumps({"side": "python", "rss_before_load_mb": round(rss_before, 1), "rss_mb": round(rss("VmRSS:"), 1), "peak_rss_mb": round(rss("VmHWM:"), 1), "load_ms": round(load_ms)}))
EOF

echo "[bench-embed] building the Rust side (cargo bench --no-run)" >&2
bin=$(cargo bench --quiet -p sluice-inference --bench embed --no-run --message-format=json 2>/dev/null |
  "$py" -c 'import json, sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "embed" and m.get("executable"):
        print(m["executable"])')
[ -x "$bin" ] || { echo "bench-embed: cannot find the bench binary" >&2; exit 1; }
# Interleave the two sides, one round each at a time, so that the load of a
# shared machine hits both alike; each round is a fresh process.
for ((i = 0; i < rounds; i++)); do
  "$py" "$work/bench.py" "$work/sentences.txt" "$threads" "$batch" 1 "$work/python.f32" >>"$work/python.jsonl"
  "$bin" "$work/sentences.txt" "$threads" "$batch" 1 "$work/rust.f32" | grep '^{' >>"$work/rust.jsonl"
done

# The key-frame job on a fresh edge database: first run over the same
# sentences as key frames, then a run with nothing to do over 50,000 rows.
ext=${SLUICE_SQLITE_EXT:-$SLUICE_ROOT/target/release/sluice0.so}
if [ -f "$ext" ]; then
  "$bin" job "$work/sentences.txt" "$ext" | grep '^{' >"$work/job.jsonl"
else
  echo "[bench-embed] $ext missing (scripts/build.sh): no job figures" >&2
fi

"$py" - "$work" "$n" "$threads" "$batch" "$rounds" <<'EOF'
import json, statistics, sys
work, n, threads, batch, rounds = sys.argv[1], *sys.argv[2:]
side = {}
for name in ("python", "rust"):
    rows = [json.loads(l) for l in open(f"{work}/{name}.jsonl")]
    rates = [r["per_second"] for r in rows if "per_second" in r]
    mem = [r for r in rows if "rss_mb" in r]
    side[name] = dict(median=statistics.median(rates), best=max(rates), rates=rates,
                      rss=statistics.median(m["rss_mb"] for m in mem),
                      peak=statistics.median(m["peak_rss_mb"] for m in mem),
                      base=statistics.median(m["rss_before_load_mb"] for m in mem),
                      load=statistics.median(m["load_ms"] for m in mem))
print(f"all-MiniLM-L6-v2, {n} sentences, {threads} threads, batch {batch}, {rounds} interleaved rounds, tokenization included")
print(f"{'':28} {'median sent/s':>14} {'best sent/s':>12} {'RSS loaded MB':>14} {'peak RSS MB':>12} {'load ms':>8}")
for name, label in (("rust", "sluice-inference (Rust, ort)"), ("python", "Python onnxruntime 1.31.1")):
    s = side[name]
    print(f"{label:28} {s['median']:14.1f} {s['best']:12.1f} {s['rss']:14.1f} {s['peak']:12.1f} {s['load']:8.0f}")
ratio = side["rust"]["median"] / side["python"]["median"]
paired = statistics.median(r / p for r, p in zip(side["rust"]["rates"], side["python"]["rates"]))
print(f"Rust / Python: {ratio:.2f}x of medians, {paired:.2f}x median of paired rounds   (goal >= 0.90x)")
print(f"rounds: rust {side['rust']['rates']}, python {side['python']['rates']}")
import os
import numpy as np
a, b = np.fromfile(f"{work}/rust.f32", "<f4"), np.fromfile(f"{work}/python.f32", "<f4")
print(f"same vectors: the first batch's {a.size // 384} vectors of the two sides differ by at most {np.abs(a - b).max():.1e}")
if os.path.exists(f"{work}/job.jsonl"):
    j = json.loads(open(f"{work}/job.jsonl").read())
    print(f"key-frame job: {j['rows']} new rows in {j['first_run_ms']} ms ({j['rows_per_second']} rows/s, model loading and writes included), "
          f"{j['db_growth_bytes_per_row']} bytes of database per embedded row; a run with nothing to do over {j['noop_rows']} rows: {j['noop_run_ms']} ms")
print(f"process RSS before loading: rust {side['rust']['base']:.1f} MB, python {side['python']['base']:.1f} MB (interpreter + numpy + onnxruntime module)")
EOF
