#!/usr/bin/env python3
"""Writes the models that need nodes cut into shards (random weights, opset 17, built with onnx.helper).

- vgg16_w{W}[_fc{F}].onnx: torchvision's VGG-16 (13 3x3 convs in five blocks with max pooling, then three
  fully connected layers exported as Gemm with transB=1, as torch exports Linear), the conv widths divided
  by W and the hidden fc widths by F (default W). The tests use W=8, F=2: channels 8..64, fc 3136 -> 2048
  -> 2048 -> 1000, so fc6 (24.5 MiB) is larger than a limit (20 MiB) that every conv fits. torchvision's
  AdaptiveAvgPool2d(7) is the identity at 224x224 and is left out. At W=F=1 it is full width (fc6 holds
  392 MiB).
- gpt_tied.onnx: a GPT-2-style decoder: token embedding 50257 x D (Gather) tied to the LM head (Gemm with
  transB=1 on the same initializer), learned positions, `blocks` pre-LayerNorm blocks (causal
  self-attention with `heads` heads, a 4D GELU MLP), a final LayerNorm; input `input_ids` int64 [1, T],
  output `logits` [1, T, 50257].

Usage: make_sharding_models.py OUT_DIR [--vgg-width-divisor W] [--vgg-fc-divisor F] [--gpt-width D] [--tokens T]
"""
import argparse
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
VOCAB = 50257


class Builder:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []

    def weight(self, name, shape, scale):
        self.inits.append(numpy_helper.from_array((self.rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def const(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op, inputs, name, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def layer_norm(self, x, name, d, epsilon):
        g = self.const(f"{name}.g", (1.0 + 0.1 * self.rng.standard_normal(d)).astype(np.float32))
        beta = self.const(f"{name}.b", (0.1 * self.rng.standard_normal(d)).astype(np.float32))
        return self.node("LayerNormalization", [x, g, beta], name, axis=-1, epsilon=epsilon)

    def linear(self, x, fin, fout, name, scale):
        y = self.node("MatMul", [x, self.weight(f"{name}.w", (fin, fout), scale)], f"{name}.mm")
        return self.node("Add", [y, self.weight(f"{name}.b", (fout,), 0.01)], name)

    def gelu(self, m, name):
        """Exact GELU; needs the constants `half`, `one` and `inv_sqrt2`."""
        erf = self.node("Erf", [self.node("Mul", [m, "inv_sqrt2"], f"{name}.s")], f"{name}.erf")
        return self.node("Mul", [self.node("Mul", [m, "half"], f"{name}.h"), self.node("Add", [erf, "one"], f"{name}.e1")], name)

    def attention(self, x, p, d, linear, out, mask=None):
        """Multi-head self-attention of block `p` and its output projection `{p}.{out}`; needs the
        constants `heads_shape`, `model_shape` and `scale`."""
        q, k, v = (self.node("Transpose", [self.node("Reshape", [linear(x, d, d, f"{p}.{n}"), "heads_shape"], f"{p}.{n}.heads")],
                             f"{p}.{n}.t", perm=perm) for n, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])))
        scores = self.node("Mul", [self.node("MatMul", [q, k], f"{p}.qk"), "scale"], f"{p}.scaled")
        if mask is not None:
            scores = self.node("Add", [scores, mask], f"{p}.masked")
        probs = self.node("Softmax", [scores], f"{p}.probs", axis=-1)
        ctx = self.node("Transpose", [self.node("MatMul", [probs, v], f"{p}.ctx")], f"{p}.ctx.t", perm=[0, 2, 1, 3])
        return linear(self.node("Reshape", [ctx, "model_shape"], f"{p}.ctx.merged"), d, d, f"{p}.{out}")

    def save(self, path, graph_name, inputs, outputs):
        graph = helper.make_graph(self.nodes, graph_name, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8  # the oldest IR of opset 17, so that older runtimes (onnxruntime-web) load it
        onnx.checker.check_model(model)
        onnx.save(model, path)


def vgg16(path, divisor, fc_divisor):
    b = Builder(0)
    x, cin, conv = "input", 3, 0
    for v in VGG16:
        if v == "M":
            x = b.node("MaxPool", [x], f"pool{conv}", kernel_shape=[2, 2], strides=[2, 2])
            continue
        conv += 1
        cout = v // divisor
        w = b.weight(f"conv{conv}.w", (cout, cin, 3, 3), np.sqrt(2.0 / (cin * 9)))
        bias = b.weight(f"conv{conv}.b", (cout,), 0.01)
        x = b.node("Conv", [x, w, bias], f"conv{conv}", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        x = b.node("Relu", [x], f"conv{conv}.relu")
        cin = cout
    x = b.node("Flatten", [x], "flatten")
    width = 4096 // fc_divisor
    features = cin * 7 * 7
    for i, (fin, fout) in enumerate([(features, width), (width, width), (width, 1000)]):
        w = b.weight(f"fc{i + 6}.w", (fout, fin), np.sqrt(2.0 / fin))
        bias = b.weight(f"fc{i + 6}.b", (fout,), 0.01)
        x = b.node("Gemm", [x, w, bias], "logits" if i == 2 else f"fc{i + 6}", transB=1)
        if i < 2:
            x = b.node("Relu", [x], f"fc{i + 6}.relu")
    b.save(path, os.path.basename(path).removesuffix(".onnx"), [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
           [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])])


def gpt(path, d, tokens, blocks=2, heads=2):
    b = Builder(1)
    wte = b.weight("wte", (VOCAB, d), 0.02)
    wpe = b.weight("wpe", (tokens, d), 0.01)
    tok = b.node("Gather", [wte, "input_ids"], "tok_emb")
    pos = b.node("Gather", [wpe, b.const("positions", np.arange(tokens, dtype=np.int64))], "pos_emb")
    h = b.node("Add", [tok, pos], "embed")
    mask = np.triu(np.full((tokens, tokens), -1e9, np.float32), 1)
    b.const("causal_mask", mask)
    dh = d // heads
    b.const("heads_shape", np.array([1, tokens, heads, dh], np.int64))
    b.const("model_shape", np.array([1, tokens, d], np.int64))
    b.const("scale", np.array(1.0 / np.sqrt(dh), np.float32))
    b.const("half", np.array(0.5, np.float32))
    b.const("one", np.array(1.0, np.float32))
    b.const("inv_sqrt2", np.array(1.0 / np.sqrt(2.0), np.float32))

    def layer_norm(x, name):
        return b.layer_norm(x, name, d, 1e-5)

    def linear(x, fin, fout, name):
        return b.linear(x, fin, fout, name, 0.02 * np.sqrt(64 / fin))

    for i in range(blocks):
        p = f"h{i}"
        h = b.node("Add", [h, b.attention(layer_norm(h, f"{p}.ln1"), p, d, linear, "proj", mask="causal_mask")], f"{p}.res1")
        gelu = b.gelu(linear(layer_norm(h, f"{p}.ln2"), d, 4 * d, f"{p}.fc"), f"{p}.gelu")
        h = b.node("Add", [h, linear(gelu, 4 * d, d, f"{p}.mlp")], f"{p}.res2")
    h = layer_norm(h, "ln_f")
    flat = b.node("Reshape", [h, b.const("rows_shape", np.array([tokens, d], np.int64))], "ln_f.rows")
    logits = b.node("Gemm", [flat, wte], "lm_head", transB=1)
    b.node("Reshape", [logits, b.const("logits_shape", np.array([1, tokens, VOCAB], np.int64))], "logits")
    b.save(path, "gpt_tied", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, tokens])],
           [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, tokens, VOCAB])])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--vgg-width-divisor", type=int, default=8)
    parser.add_argument("--vgg-fc-divisor", type=int)
    parser.add_argument("--gpt-width", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=8)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    w, f = args.vgg_width_divisor, args.vgg_fc_divisor or args.vgg_width_divisor
    vgg16(os.path.join(args.out, f"vgg16_w{w}" + (f"_fc{f}" if f != w else "") + ".onnx"), w, f)
    gpt(os.path.join(args.out, "gpt_tied.onnx"), args.gpt_width, args.tokens)


if __name__ == "__main__":
    main()
