"""Two networks the incremental engine was not tuned on (issue 17's check of generality).

- :func:`vgg_like`: a VGG-style stack at 120×120 (3×3 convolutions with bias and ReLU in
  blocks of two or three, 2×2 max pooling, two fully connected layers);
- :func:`resnet_like`: a ResNet-style network at 160×160 (5×5/2 stem, 3×3/2 max pool, basic
  blocks with batch norm, residual ``Add`` and 1×1 *projection* shortcuts at each change of
  stride or width, global average pooling).

Random weights from an explicit seed (``preddiff.netzoo``'s builder: He initialisation, small
last batch-norm scale in each residual branch). Used by ``tests/test_incremental.py``
(exactness) and by ``bench/untuned_nets.py`` (speed against the planned reduction).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from preddiff.netzoo import _Builder

CLASSES = 100


def _finish(b: _Builder, x: str, size: int, fc=()) -> onnx.ModelProto:
    """Flatten (VGG) or global pooling (ResNet), fully connected layers, softmax."""
    if fc:
        x = b.node("Flatten", [x], None, axis=1)
        width = b.channels[x] if b.channels[x] else None
    else:
        x = b.node("GlobalAveragePool", [x], b.channels[x])
        x = b.node("Flatten", [x], b.channels[x], axis=1)
        width = b.channels[x]
    for i, (n_in, n_out) in enumerate(fc):
        w = b.rng.normal(0, np.sqrt(2.0 / n_in), (n_out, n_in))
        x = b.node("Gemm", [x, b.const(w, f"/fc{i}.weight"), b.const(np.zeros(n_out),
                                                                      f"/fc{i}.bias")],
                   n_out, transB=1)
        x = b.relu(x)
        width = n_out
    w = b.rng.normal(0, 1.0 / np.sqrt(width), (CLASSES, width))
    x = b.node("Gemm", [x, b.const(w, "/out.weight"), b.const(np.zeros(CLASSES), "/out.bias")],
               CLASSES, transB=1)
    b.nodes.append(helper.make_node("Softmax", [x], ["prob"], name="prob", axis=1))
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])
    out = helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", CLASSES])
    graph = helper.make_graph(b.nodes, "untuned", [inp], [out], initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def vgg_like(seed: int = 0) -> onnx.ModelProto:
    """VGG-style network, input (N, 3, 120, 120), output ``prob`` (N, 100)."""
    b = _Builder(np.random.default_rng(seed), fold_bn=True)
    x = b.normalise()
    size = 120
    for width, repeats in ((32, 2), (64, 2), (128, 3), (256, 3)):
        for _ in range(repeats):
            x = b.relu(b.conv(x, width, 3, bn=False))
        x = b.node("MaxPool", [x], width, kernel_shape=[2, 2], strides=[2, 2])
        size //= 2
    flat = 256 * size * size
    return _finish(b, x, 120, fc=((flat, 512), (512, 512)))


def resnet_like(seed: int = 0) -> onnx.ModelProto:
    """ResNet-style network with projection shortcuts, input (N, 3, 160, 160)."""
    b = _Builder(np.random.default_rng(seed), fold_bn=False)
    x = b.relu(b.conv(b.normalise(), 32, 5, stride=2, pad=2))
    x = b.node("MaxPool", [x], 32, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    for stage, width in enumerate((32, 64, 128)):
        for i in range(2):
            stride = 2 if stage > 0 and i == 0 else 1
            y = b.relu(b.conv(x, width, 3, stride=stride))
            y = b.conv(y, width, 3, gamma=0.2)
            short = x
            if stride != 1 or b.channels[x] != width:
                short = b.conv(x, width, 1, stride=stride, pad=0)
            x = b.relu(b.add(y, short))
    return _finish(b, x, 160)


NETS = {"vgg_like_120": (vgg_like, 120), "resnet_like_160": (resnet_like, 160)}
