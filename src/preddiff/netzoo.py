"""Modern ImageNet architectures built in code, with random weights, as ONNX graphs.

The benchmark networks of issue 9: graphs laid out as PyTorch's exporter writes the
torchvision and timm models people explain, so that ``preddiff bench`` measures the
incremental engine on what users bring, without downloading any weights (throughput does not
depend on them):

- ``resnet18``, ``resnet50``: torchvision layout (He et al. 2016; 7×7/2 stem, batch norm,
  3×3/2 max pool, basic or bottleneck blocks with the stride on the 3×3 convolution, residual
  ``Add``, 1×1 projection shortcuts);
- ``mobilenet_v2``: Sandler et al. 2018 (inverted residuals, depthwise 3×3, ``Clip`` as
  ReLU6, batch norm folded into the convolutions as torch's exporter folds it);
- ``efficientnet_lite0``: Tan & Le 2019, the "lite" variant (MBConv without
  squeeze-and-excitation, ReLU6); strided convolutions use TensorFlow's "same" padding, written
  as torch exports ``nn.ZeroPad2d``: a ``Pad`` whose pads are computed by a
  ``ConstantOfShape``/``Concat``/``Reshape``/``Slice``/``Transpose`` chain.

Every graph takes RGB in [0, 1], shape (N, 3, 224, 224), normalises it inside the graph with
``(x - mean) / std`` (ImageNet statistics) and ends in ``Softmax`` (output ``prob``, after the
scores ``logits``). Weights are drawn from an explicit seed, scaled (He initialisation, small
last batch-norm scale in each residual branch) so that the activations stay finite and the
class probabilities are not saturated.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import InvalidArgument

__all__ = ["NETWORKS", "build", "example_pool"]

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
OPSET = 13


class _Builder:
    """Appends nodes and random initializers; every method returns its output tensor."""

    def __init__(self, rng: np.random.Generator, fold_bn: bool):
        self.rng, self.fold_bn = rng, fold_bn
        self.nodes, self.inits, self.count = [], [], 0
        self.channels = {"input": 3}

    def _name(self, prefix: str) -> str:
        self.count += 1
        return f"/{prefix}_{self.count}"

    def const(self, value, name: str, dtype=np.float32) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(self, op, inputs, channels, **attrs) -> str:
        y = self._name(op)
        self.nodes.append(helper.make_node(op, list(inputs), [y], name=y, **attrs))
        self.channels[y] = channels
        return y

    def conv(self, x, cout, k, stride=1, pad=None, group=1, bn=True, gamma=1.0) -> str:
        """Convolution (no bias) + batch norm; ``pad`` None: symmetric ``k // 2``."""
        cin = self.channels[x]
        p = k // 2 if pad is None else pad
        y = self._name("Conv")
        w = self.rng.normal(0, np.sqrt(2.0 / (cin // group * k * k)),
                            (cout, cin // group, k, k)).astype(np.float32)
        scale = gamma * self.rng.uniform(0.8, 1.2, cout).astype(np.float32)
        shift = self.rng.normal(0, 0.05, cout).astype(np.float32)
        if not bn or self.fold_bn:  # as torch's exporter folds eval-mode batch norm
            w = w * (scale[:, None, None, None] if bn else 1.0)
            inputs = [x, self.const(w, y + ".weight"),
                      self.const(shift if bn else np.zeros(cout), y + ".bias")]
            self.nodes.append(helper.make_node(
                "Conv", inputs, [y], name=y, kernel_shape=[k, k], strides=[stride, stride],
                pads=[p, p, p, p], group=group))
            self.channels[y] = cout
            return y
        self.nodes.append(helper.make_node(
            "Conv", [x, self.const(w, y + ".weight")], [y], name=y, kernel_shape=[k, k],
            strides=[stride, stride], pads=[p, p, p, p], group=group))
        self.channels[y] = cout
        b = self._name("BatchNormalization")
        params = [self.const(scale, b + ".weight"), self.const(shift, b + ".bias"),
                  self.const(np.zeros(cout), b + ".running_mean"),
                  self.const(np.ones(cout), b + ".running_var")]
        self.nodes.append(helper.make_node("BatchNormalization", [y, *params], [b], name=b,
                                           epsilon=1e-5))
        self.channels[b] = cout
        return b

    def relu(self, x) -> str:
        return self.node("Relu", [x], self.channels[x])

    def relu6(self, x) -> str:
        lo = self.const(0.0, self._name("Clip_min"))
        hi = self.const(6.0, self._name("Clip_max"))
        return self.node("Clip", [x, lo, hi], self.channels[x])

    def add(self, a, b) -> str:
        return self.node("Add", [a, b], self.channels[a])

    def normalise(self) -> str:
        mean = self.const(np.array(MEAN).reshape(1, 3, 1, 1), "/normalise/mean")
        std = self.const(np.array(STD).reshape(1, 3, 1, 1), "/normalise/std")
        y = self.node("Sub", ["input", mean], 3)
        return self.node("Div", [y, std], 3)

    def zero_pad(self, x, left, right, top, bottom) -> str:
        """``nn.ZeroPad2d((left, right, top, bottom))`` as torch exports it (opset 13)."""
        n = self._name("Pad")
        c = {k: self.const(v, f"{n}/{k}", np.int64) for k, v in [
            ("lrtb", [left, right, top, bottom]), ("four", [4]), ("pairs", [-1, 2]),
            ("m1", [-1]), ("end", [-(2 ** 63) + 1]), ("zero", [0])]}
        value = self.const(0.0, f"{n}/value")
        self.nodes += [
            helper.make_node("ConstantOfShape", [c["four"]], [n + "/zeros"],
                             value=numpy_helper.from_array(np.array([0], np.int64))),
            helper.make_node("Concat", [c["lrtb"], n + "/zeros"], [n + "/cat"], axis=0),
            helper.make_node("Reshape", [n + "/cat", c["pairs"]], [n + "/pairs2"]),
            helper.make_node("Slice", [n + "/pairs2", c["m1"], c["end"], c["zero"], c["m1"]],
                             [n + "/reversed"]),
            helper.make_node("Transpose", [n + "/reversed"], [n + "/t"], perm=[1, 0]),
            helper.make_node("Reshape", [n + "/t", c["m1"]], [n + "/flat"]),
            helper.make_node("Cast", [n + "/flat"], [n + "/pads"], to=TensorProto.INT64),
            helper.make_node("Pad", [x, n + "/pads", value], [n], name=n, mode="constant")]
        self.channels[n] = self.channels[x]
        return n

    def head(self, x, classes: int) -> onnx.ModelProto:
        """Global average pool, flatten, fully connected, softmax; the finished model."""
        g = self.node("GlobalAveragePool", [x], self.channels[x])
        f = self.node("Flatten", [g], self.channels[x], axis=1)
        w = self.rng.normal(0, 1.0 / np.sqrt(self.channels[x]), (classes, self.channels[x]))
        fc = self.node("Gemm", [f, self.const(w, "/fc.weight"),
                                self.const(np.zeros(classes), "/fc.bias")], classes, transB=1)
        self.nodes.append(helper.make_node("Identity", [fc], ["logits"], name="logits"))
        self.nodes.append(helper.make_node("Softmax", ["logits"], ["prob"], name="prob",
                                           axis=1))
        inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])
        outs = [helper.make_tensor_value_info(t, TensorProto.FLOAT, ["N", classes])
                for t in ("prob", "logits")]
        graph = helper.make_graph(self.nodes, "netzoo", [inp], outs, initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="preddiff.netzoo")
        model.ir_version = 8
        return model


def _resnet(b: _Builder, blocks, bottleneck: bool, classes: int) -> onnx.ModelProto:
    x = b.relu(b.conv(b.normalise(), 64, 7, stride=2, pad=3))
    x = b.node("MaxPool", [x], 64, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    expansion = 4 if bottleneck else 1
    for stage, (width, repeats) in enumerate(zip((64, 128, 256, 512), blocks)):
        for i in range(repeats):
            stride = 2 if stage > 0 and i == 0 else 1
            out = width * expansion
            if bottleneck:
                y = b.relu(b.conv(x, width, 1, pad=0))
                y = b.relu(b.conv(y, width, 3, stride=stride))
                y = b.conv(y, out, 1, pad=0, gamma=0.2)
            else:
                y = b.relu(b.conv(x, width, 3, stride=stride))
                y = b.conv(y, out, 3, gamma=0.2)
            short = x
            if stride != 1 or b.channels[x] != out:
                short = b.conv(x, out, 1, stride=stride, pad=0)
            x = b.relu(b.add(y, short))
    return b.head(x, classes)


def _mobilenet_v2(b: _Builder, classes: int) -> onnx.ModelProto:
    x = b.relu6(b.conv(b.normalise(), 32, 3, stride=2))
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = b.channels[x] * t
            y = b.relu6(b.conv(x, hidden, 1, pad=0)) if t != 1 else x
            y = b.relu6(b.conv(y, hidden, 3, stride=stride, group=hidden))
            y = b.conv(y, c, 1, pad=0, gamma=0.2 if stride == 1 and b.channels[x] == c else 1)
            x = b.add(y, x) if stride == 1 and b.channels[x] == c else y
    x = b.relu6(b.conv(x, 1280, 1, pad=0))
    return b.head(x, classes)


def _same_conv(b: _Builder, x, cout, k, stride, size, group=1):
    """TensorFlow "same" padding: symmetric for stride 1, a torch ZeroPad2d before a strided
    convolution (total ``max(k - s, 0)`` for an even map, the extra row at the end)."""
    if stride == 1:
        return b.conv(x, cout, k, group=group), size
    total = max((-(-size // stride) - 1) * stride + k - size, 0)
    x = b.zero_pad(x, total // 2, total - total // 2, total // 2, total - total // 2)
    return b.conv(x, cout, k, stride=stride, pad=0, group=group), -(-size // stride)


def _efficientnet_lite0(b: _Builder, classes: int) -> onnx.ModelProto:
    x, size = _same_conv(b, b.normalise(), 32, 3, 2, 224)
    x = b.relu6(x)
    for e, k, s, c, n in ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)):
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = b.channels[x] * e
            y = b.relu6(b.conv(x, hidden, 1, pad=0)) if e != 1 else x
            y, new_size = _same_conv(b, y, hidden, k, stride, size, group=hidden)
            y = b.relu6(y)
            residual = stride == 1 and b.channels[x] == c
            y = b.conv(y, c, 1, pad=0, gamma=0.2 if residual else 1.0)
            x, size = (b.add(y, x) if residual else y), new_size
    x = b.relu6(b.conv(x, 1280, 1, pad=0))
    return b.head(x, classes)


#: Network name -> (builder, fold batch norm into the convolutions).
NETWORKS = {
    "resnet18": (lambda b, n: _resnet(b, (2, 2, 2, 2), False, n), False),
    "resnet50": (lambda b, n: _resnet(b, (3, 4, 6, 3), True, n), False),
    "mobilenet_v2": (_mobilenet_v2, True),
    "efficientnet_lite0": (_efficientnet_lite0, True),
}


def build(name: str, *, seed: int = 0, classes: int = 1000) -> onnx.ModelProto:
    """A random-weight ONNX model of a benchmark network.

    Parameters
    ----------
    name : {"resnet18", "resnet50", "mobilenet_v2", "efficientnet_lite0"}
    seed : int
        Seed of the weights (:func:`numpy.random.default_rng`).
    classes : int
        Output classes.

    Returns
    -------
    onnx.ModelProto
        Input ``input`` (N, 3, 224, 224) RGB in [0, 1]; outputs ``prob`` and ``logits``
        (N, classes).

    Raises
    ------
    InvalidArgument
        For an unknown ``name``.
    """
    if name not in NETWORKS:
        raise InvalidArgument(f"unknown network {name!r}; choose from {', '.join(NETWORKS)}")
    make, fold_bn = NETWORKS[name]
    model = make(_Builder(np.random.default_rng(seed), fold_bn), classes)
    onnx.checker.check_model(model)
    return model


def example_pool(size: int = 224) -> np.ndarray:
    """The bundled example colour images as network inputs: RGB in [0, 1], the short side
    resized to ``size`` and the centre cropped (torchvision's convention).

    Returns
    -------
    ndarray of float32, shape (M, 3, size, size)
    """
    from skimage.transform import resize

    from .images import example_images

    out = []
    for image in example_images().values():
        h, w = image.shape[:2]
        scale = size / min(h, w)
        hh, ww = max(size, round(h * scale)), max(size, round(w * scale))
        small = resize(image, (hh, ww), anti_aliasing=True, preserve_range=True) / 255.0
        top, left = (hh - size) // 2, (ww - size) // 2
        out.append(small[top:top + size, left:left + size].transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)
