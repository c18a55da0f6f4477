#!/usr/bin/env python3
"""Writes minilm_l6_f32.onnx: a MiniLM-class sentence encoder in f32 (the architecture of
all-MiniLM-L6-v2: BERT post-LayerNorm blocks, 6 layers, hidden 384, 12 heads, FFN 1536, word embedding
30522 x 384, learned positions and token types) with random weights, opset 17, built with onnx.helper.
Input `input_ids` int64 [1, T] (T = 128 by default), output `last_hidden_state` [1, T, 384]. It is the
MatMul-heavy transformer of the wasm-kernel benchmarks (docs/benchmarks.md; 87 MiB, so not in the tests).

Usage: make_minilm.py OUT_DIR [--tokens T] [--layers L]
"""
import argparse
import os

import numpy as np
from onnx import TensorProto, helper

from make_sharding_models import Builder

VOCAB, D, HEADS, FFN = 30522, 384, 12, 1536


def minilm(path, tokens, layers):
    b = Builder(2)
    dh = D // HEADS
    b.const("heads_shape", np.array([1, tokens, HEADS, dh], np.int64))
    b.const("model_shape", np.array([1, tokens, D], np.int64))
    b.const("scale", np.array(1.0 / np.sqrt(dh), np.float32))
    b.const("half", np.array(0.5, np.float32))
    b.const("one", np.array(1.0, np.float32))
    b.const("inv_sqrt2", np.array(1.0 / np.sqrt(2.0), np.float32))
    words = b.node("Gather", [b.weight("word_embeddings", (VOCAB, D), 0.02), "input_ids"], "words")
    positions = b.weight("position_embeddings", (1, tokens, D), 0.02)
    types = b.weight("token_type_embedding", (1, 1, D), 0.02)
    h = b.node("Add", [b.node("Add", [words, positions], "embed.pos"), types], "embed")

    def linear(x, fin, fout, name):
        return b.linear(x, fin, fout, name, 1.0 / np.sqrt(fin))

    h = b.layer_norm(h, "embed.ln", D, 1e-12)
    for i in range(layers):
        p = f"layer{i}"
        h = b.layer_norm(b.node("Add", [h, b.attention(h, p, D, linear, "out")], f"{p}.res1"), f"{p}.ln1", D, 1e-12)
        gelu = b.gelu(linear(h, D, FFN, f"{p}.ffn1"), f"{p}.gelu")
        h = b.layer_norm(b.node("Add", [h, linear(gelu, FFN, D, f"{p}.ffn2")], f"{p}.res2"), f"{p}.ln2", D, 1e-12)
    b.node("Identity", [h], "last_hidden_state")
    b.save(path, "minilm_l6_f32", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, tokens])],
           [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [1, tokens, D])])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--layers", type=int, default=6)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "minilm_l6_f32.onnx")
    minilm(path, args.tokens, args.layers)
    print(f"make_minilm: {path} ({os.path.getsize(path) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
