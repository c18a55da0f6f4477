#!/usr/bin/env python3
"""Writes a ResNet-50-shaped ONNX model (opset 17, random weights, ~100 MB) for split benchmarks.

No model hub is reachable here, so the architecture is built layer by layer with onnx.helper: the stem,
four stages of bottleneck blocks (3, 4, 6, 3) with projection shortcuts, global pooling and a 1000-way Gemm.
Usage: make_resnet50.py OUT.onnx
"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(0)
nodes, inits = [], []


def conv(x, cin, cout, k, stride, name, relu=True):
    w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
    b = np.zeros(cout, np.float32)
    inits.extend([numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")])
    nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.out"], name=name,
                                  kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4))
    if not relu:
        return f"{name}.out"
    nodes.append(helper.make_node("Relu", [f"{name}.out"], [f"{name}.relu"], name=f"{name}.relu"))
    return f"{name}.relu"


def bottleneck(x, cin, width, stride, name):
    y = conv(x, cin, width, 1, 1, f"{name}.conv1")
    y = conv(y, width, width, 3, stride, f"{name}.conv2")
    y = conv(y, width, width * 4, 1, 1, f"{name}.conv3", relu=False)
    shortcut = x if (stride == 1 and cin == width * 4) else conv(x, cin, width * 4, 1, stride, f"{name}.down", relu=False)
    nodes.append(helper.make_node("Add", [y, shortcut], [f"{name}.sum"], name=f"{name}.add"))
    nodes.append(helper.make_node("Relu", [f"{name}.sum"], [f"{name}.out"], name=f"{name}.relu"))
    return f"{name}.out"


def main():
    x = conv("input", 3, 64, 7, 2, "stem")
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], name="pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    x, cin = "pool", 64
    for stage, (blocks, width) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)]):
        for b in range(blocks):
            x = bottleneck(x, cin, width, 2 if (b == 0 and stage > 0) else 1, f"layer{stage + 1}.{b}")
            cin = width * 4
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
    fc = (rng.standard_normal((1000, 2048)) * 0.02).astype(np.float32)
    inits.extend([numpy_helper.from_array(fc, "fc.w"), numpy_helper.from_array(np.zeros(1000, np.float32), "fc.b")])
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(nodes, "resnet50_rand", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, sys.argv[1])


if __name__ == "__main__":
    main()
