"""Exact incremental inference (preddiff.incremental) against full forward passes.

The oracle is the full network run by onnxruntime on images built with a literal loop (one
image per window, the patch written with a slice). Every test compares to 1e-5 of the largest
absolute value of the reference output, the issue's exactness criterion.
"""
import logging

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from preddiff.errors import InvalidArgument
from preddiff.incremental import (
    IncrementalClassifier, auto_batch_size, supported, theoretical_macs, to_float16,
)
from preddiff.incremental_index import Region
from preddiff.incremental_plan import analyse

TOL = 1e-5
#: Relevance maps (differences of log2 odds, averaged) also carry the float32 rounding of the
#: log-odds themselves, ~1e-7 per unit of |log2 odds|: an absolute floor for tiny maps.
MAP_ATOL = 1e-6


# ---------------------------------------------------------------------------------------------
# small graphs made with onnx.helper


class _Graph:
    """A tiny graph builder: each method appends one node and returns its output name."""

    def __init__(self, channels, rng):
        self.nodes, self.inits, self.rng, self.count = [], [], rng, 0
        self.channels = {"data": channels}
        self.opset = 13

    def const(self, value, dtype=np.float32):
        """An initializer holding ``value``; returns its name."""
        y = self._name("const")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), y))
        return y

    def binary(self, op_type, a, b):
        """An element-wise node of two tensors (or a tensor and a constant)."""
        y = self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, [a, b], [y], name=y))
        self.channels[y] = max(self.channels.get(a, 0), self.channels.get(b, 0))
        return y

    def _name(self, prefix):
        self.count += 1
        return f"{prefix}{self.count}"

    def conv(self, x, cout, k, *, stride=1, pads=(0, 0, 0, 0), group=1, dilation=1):
        y = self._name("conv")
        cin = self.channels[x]
        w = self.rng.normal(0, 1 / np.sqrt(cin // group * k * k), (cout, cin // group, k, k))
        b = self.rng.normal(0, 0.1, cout)
        self.inits += [numpy_helper.from_array(w.astype(np.float32), y + "_w"),
                       numpy_helper.from_array(b.astype(np.float32), y + "_b")]
        self.nodes.append(helper.make_node(
            "Conv", [x, y + "_w", y + "_b"], [y], name=y, kernel_shape=[k, k],
            strides=[stride, stride], pads=list(pads), group=group, dilations=[dilation] * 2))
        self.channels[y] = cout
        return y

    def op(self, op_type, x, **attrs):
        y = self._name(op_type.lower())
        inputs = [x] if isinstance(x, str) else list(x)
        self.nodes.append(helper.make_node(op_type, inputs, [y], name=y, **attrs))
        self.channels[y] = sum(self.channels.get(t, 0) for t in inputs)
        return y

    def pad(self, x, pads, value=0.0, mode="constant"):
        y = self._name("pad")
        t, l, b, r = pads
        self.inits += [
            numpy_helper.from_array(np.array([0, 0, t, l, 0, 0, b, r], np.int64), y + "_p"),
            numpy_helper.from_array(np.array(value, np.float32), y + "_v")]
        self.nodes.append(helper.make_node("Pad", [x, y + "_p", y + "_v"], [y], name=y,
                                           mode=mode))
        self.channels[y] = self.channels[x]
        return y

    def head(self, x, classes=5, pool="GlobalAveragePool"):
        """Global pooling, Gemm and Softmax; returns (scores, prob)."""
        g = self.op(pool, x)
        f = self.op("Flatten", g, axis=1)
        y = self._name("fc")
        w = self.rng.normal(0, 1, (classes, self.channels[x])).astype(np.float32)
        self.inits.append(numpy_helper.from_array(w, y + "_w"))
        self.nodes.append(helper.make_node("Gemm", [f, y + "_w"], [y], name=y, transB=1))
        return y, self.op("Softmax", y, axis=1)

    def model(self, height, width, outputs):
        inp = helper.make_tensor_value_info("data", TensorProto.FLOAT,
                                            ["N", self.channels["data"], height, width])
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
        graph = helper.make_graph(self.nodes, "test", [inp], outs, initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        return model


def _conv_stride_pad(g):
    y = g.op("Relu", g.conv("data", 6, 5, stride=2, pads=(2, 2, 2, 2)))
    return g.conv(y, 6, 3, pads=(1, 1, 1, 1))


def _conv_grouped_dilated(g):
    y = g.conv("data", 6, 3, pads=(1, 1, 1, 1))
    y = g.op("LeakyRelu", g.conv(y, 6, 3, group=2, dilation=2, pads=(2, 2, 2, 2)), alpha=0.1)
    return g.conv(y, 4, 3, stride=3, pads=(0, 1, 2, 0))


def _maxpool(g):
    y = g.op("Relu", g.conv("data", 6, 3, pads=(1, 1, 1, 1)))
    # the converter's encoding of Caffe's ceil rounding: asymmetric end padding
    y = g.op("MaxPool", y, kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])
    y = g.op("MaxPool", y, kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    return g.op("MaxPool", y, kernel_shape=[2, 2], strides=[2, 2], dilations=[2, 2])


def _avgpool(g):
    y = g.conv("data", 6, 3, pads=(1, 1, 1, 1))
    y = g.op("AveragePool", y, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 2, 2],
             count_include_pad=1)
    return g.op("AveragePool", y, kernel_shape=[3, 3], strides=[1, 1], pads=[1, 0, 1, 2],
                count_include_pad=0)


def _pad_then_pool(g):
    # the converter's encoding of Caffe AVE pooling with an overhang: zero Pad, then
    # count_include_pad=0 with end pads; and a Pad with another constant before a Conv
    y = g.pad(g.conv("data", 6, 3), (1, 1, 1, 1))
    y = g.op("AveragePool", y, kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1],
             count_include_pad=0)
    return g.conv(g.pad(y, (2, 0, 1, 3), value=0.5), 4, 3)


def _lrn(g):
    y = g.op("Relu", g.conv("data", 8, 5, stride=2, pads=(2, 2, 2, 2)))
    y = g.op("LRN", y, size=5, alpha=1e-2, beta=0.75, bias=1.0)
    return g.op("Identity", g.op("MaxPool", y, kernel_shape=[3, 3], strides=[2, 2]))


def _inception(g):
    x = g.op("Relu", g.conv("data", 8, 3, stride=2, pads=(1, 1, 1, 1)))
    for _ in range(2):
        b1 = g.op("Relu", g.conv(x, 4, 1))
        b2 = g.op("Relu", g.conv(g.op("Relu", g.conv(x, 4, 1)), 6, 3, pads=(1, 1, 1, 1)))
        b3 = g.op("Relu", g.conv(g.op("Relu", g.conv(x, 2, 1)), 3, 5, pads=(2, 2, 2, 2)))
        p = g.op("MaxPool", x, kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
        b4 = g.op("Relu", g.conv(p, 3, 1))
        x = g.op("Concat", [b1, b2, b3, b4], axis=1)
    return x


def _pointwise(g):
    # point-wise operators with f(0) != 0 before the first convolution (whose zero padding must
    # not go through them) and fused behind convolutions
    g.inits += [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in [
        ("bn_scale", [1.5, 0.5, 2.0]), ("bn_bias", [0.3, -0.2, 0.1]), ("bn_mean", [0.1, 0, -0.4]),
        ("bn_var", [1.0, 2.0, 0.5]), ("clip_min", -0.4), ("clip_max", 0.6)]]
    g.nodes.append(helper.make_node("BatchNormalization",
                                    ["data", "bn_scale", "bn_bias", "bn_mean", "bn_var"],
                                    ["bn"], name="bn"))
    g.channels["bn"] = g.channels["data"]
    y = g.op("Sigmoid", "bn")
    y = g.op("Tanh", g.conv(y, 6, 3, stride=2, pads=(1, 1, 1, 1)))
    g.nodes.append(helper.make_node("Clip", [y, "clip_min", "clip_max"], ["clip"], name="clip"))
    g.channels["clip"] = g.channels[y]
    y = g.op("Elu", "clip", alpha=0.5)
    return g.op("Dropout", g.conv(y, 5, 3, pads=(1, 1, 1, 1)))


def _normalise(g):
    # the usual (x - mean) / std in front of a padded convolution: the padding must act on the
    # normalised map; scalar and per-channel constants in both operand orders
    y = g.binary("Sub", "data", g.const(np.array([0.4, 0.5, 0.6]).reshape(1, 3, 1, 1)))
    y = g.binary("Div", y, g.const(np.array([0.2, 0.3, 0.25]).reshape(3, 1, 1)))
    y = g.binary("Mul", g.const(1.5), y)
    y = g.binary("Add", y, g.const(0.25))
    y = g.conv(y, 6, 3, stride=2, pads=(1, 1, 1, 1))
    y = g.binary("Sub", g.const(np.linspace(-1, 1, 6).reshape(6, 1, 1)), y)
    return g.conv(g.op("Relu", y), 5, 3, pads=(1, 1, 1, 1))


def _residual(g):
    # basic blocks with identity and projection shortcuts, and the other binary operators on
    # two maps, one of them broadcast over the channels
    x = g.op("Relu", g.conv("data", 6, 3, pads=(1, 1, 1, 1)))
    y = g.conv(g.op("Relu", g.conv(x, 6, 3, pads=(1, 1, 1, 1))), 6, 3, pads=(1, 1, 1, 1))
    x = g.op("Relu", g.binary("Add", y, x))
    y = g.conv(g.op("Relu", g.conv(x, 8, 3, stride=2, pads=(1, 1, 1, 1))), 8, 3,
               pads=(1, 1, 1, 1))
    x = g.op("Relu", g.binary("Add", g.conv(x, 8, 1, stride=2), y))
    a, b = g.conv(x, 8, 3, pads=(1, 1, 1, 1)), g.conv(x, 8, 1)
    one = g.conv(x, 1, 3, pads=(0, 0, 2, 2))
    y = g.binary("Max", g.binary("Mul", a, b), g.binary("Min", a, one))
    s = g.op("Sum", [y, a, x])
    g.channels[s] = 8
    return g.conv(s, 5, 3, pads=(1, 1, 1, 1))


def _activations(g):
    # every point-wise activation of the issue, fused behind convolutions or standing alone
    g.opset = 14
    y = g.conv("data", 6, 3, pads=(1, 1, 1, 1))
    y = g.op("Clip", [y, g.const(0.0), g.const(6.0)])  # ReLU6
    g.channels[y] = 6
    y = g.op("HardSigmoid", g.conv(y, 6, 3, pads=(1, 1, 1, 1)), alpha=0.2, beta=0.5)
    y = g.op("HardSwish", g.conv(y, 6, 3, pads=(1, 1, 1, 1)))
    s = g.conv(y, 6, 3, stride=2, pads=(1, 1, 1, 1))
    y = g.binary("Mul", s, g.op("Sigmoid", s))  # SiLU
    y = g.op("Tanh", g.conv(y, 6, 3, pads=(1, 1, 1, 1)))
    y = g.op("PRelu", [g.conv(y, 6, 3, pads=(1, 1, 1, 1)),
                       g.const(np.linspace(0.05, 0.3, 6).reshape(6, 1, 1))])
    g.channels[y] = 6
    y = g.op("Softplus", g.conv(y, 6, 3, pads=(1, 1, 1, 1)))
    y = g.op("Elu", g.conv(y, 6, 3, pads=(1, 1, 1, 1)), alpha=0.7)
    y = g.op("Selu", g.conv(y, 6, 3, pads=(1, 1, 1, 1)))
    x = g.conv(y, 6, 3, pads=(1, 1, 1, 1))  # GELU as torch exports it: the Erf chain
    e = g.binary("Add", g.op("Erf", g.binary("Div", x, g.const(np.sqrt(2.0)))), g.const(1.0))
    return g.conv(g.binary("Mul", g.binary("Mul", x, e), g.const(0.5)), 5, 3, pads=(1, 1, 1, 1))


def _torch_zero_pad(g, x, left, right, top, bottom):
    """``nn.ZeroPad2d`` as torch exports it: the pads computed by a ConstantOfShape, Concat,
    Reshape, Slice, Transpose, Reshape, Cast chain of constants."""
    n = g._name("zpad")
    lrtb = np.array([left, right, top, bottom], np.int64)
    g.inits += [numpy_helper.from_array(lrtb, n + "_lrtb"),
                numpy_helper.from_array(np.array([4], np.int64), n + "_four"),
                numpy_helper.from_array(np.array([-1, 2], np.int64), n + "_pairs"),
                numpy_helper.from_array(np.array([-1], np.int64), n + "_m1"),
                numpy_helper.from_array(np.array([-(2 ** 63) + 1], np.int64), n + "_end"),
                numpy_helper.from_array(np.array([0], np.int64), n + "_zero"),
                numpy_helper.from_array(np.array(0.0, np.float32), n + "_value")]
    g.nodes += [
        helper.make_node("ConstantOfShape", [n + "_four"], [n + "_zeros"],
                         value=numpy_helper.from_array(np.array([0], np.int64))),
        helper.make_node("Concat", [n + "_lrtb", n + "_zeros"], [n + "_cat"], axis=0),
        helper.make_node("Reshape", [n + "_cat", n + "_pairs"], [n + "_r"]),
        helper.make_node("Slice", [n + "_r", n + "_m1", n + "_end", n + "_zero", n + "_m1"],
                         [n + "_rev"]),
        helper.make_node("Transpose", [n + "_rev"], [n + "_t"], perm=[1, 0]),
        helper.make_node("Reshape", [n + "_t", n + "_m1"], [n + "_flat"]),
        helper.make_node("Cast", [n + "_flat"], [n + "_pads"], to=TensorProto.INT64),
        helper.make_node("Pad", [x, n + "_pads", n + "_value"], [n], name=n, mode="constant")]
    g.channels[n] = g.channels[x]
    return n


def _mobile(g):
    # inverted residuals: depthwise (group = channels), dilated, asymmetric explicit and
    # torch ZeroPad2d padding ("same" padding of EfficientNet), a grouped conv, ReLU6
    def relu6(t):
        y = g.op("Clip", [t, g.const(0.0), g.const(6.0)])
        g.channels[y] = g.channels[t]
        return y
    x = relu6(g.conv(_torch_zero_pad(g, "data", 0, 1, 0, 1), 8, 3, stride=2))
    y = relu6(g.conv(x, 16, 1))
    y = relu6(g.conv(y, 16, 3, group=16, dilation=2, pads=(2, 1, 2, 3)))
    x = g.binary("Add", g.conv(y, 8, 1), x)
    y = relu6(g.conv(_torch_zero_pad(g, x, 1, 2, 1, 2), 8, 5, stride=2, group=8))
    return g.conv(y, 6, 3, group=2, pads=(1, 0, 0, 1))


def _bottleneck(g):
    # 1×1 convolutions right behind another step (run fused in its session, as in ResNet-50's
    # bottlenecks and MobileNetV2's projections), a chain of two, one behind a residual merge
    x = g.op("Relu", g.conv("data", 8, 3, stride=2, pads=(1, 1, 1, 1)))
    y = g.op("Relu", g.conv(x, 4, 1))
    y = g.op("Relu", g.conv(y, 4, 3, pads=(1, 1, 1, 1)))
    y = g.conv(g.op("Relu", g.conv(g.conv(y, 6, 1), 6, 1)), 8, 1)
    x = g.op("Relu", g.binary("Add", y, x))
    y = g.op("Relu", g.conv(x, 6, 1))
    return g.op("Relu", g.conv(y, 5, 3, pads=(1, 1, 1, 1)))


def _layouts(g):
    # merges run channels-last where they mean the same there, channels-first where not: a
    # residual Add fused behind a convolution followed by a per-channel Mul (stays
    # channels-first), one followed by Relu (channels-last), a channel Concat at axis -3 of a
    # channels-last and a channels-first crop, point-wise steps of their own on a
    # channels-last crop (a scalar Mul: stays; a per-channel Add and LRN: converted), an
    # element-wise merge of two such maps, then a 1×1 and a padded 3×3 convolution
    x = g.op("Relu", g.conv("data", 8, 3, pads=(1, 1, 1, 1)))
    y = g.conv(g.op("Relu", g.conv(x, 8, 3, pads=(1, 1, 1, 1))), 8, 3, pads=(1, 1, 1, 1))
    z = g.binary("Mul", g.binary("Add", y, x), g.const(np.linspace(0.5, 1.5, 8).reshape(8, 1, 1)))
    y = g.conv(g.op("Relu", g.conv(z, 8, 1)), 8, 3, pads=(1, 1, 1, 1))
    u = g.op("Relu", g.binary("Add", y, z))
    c = g.op("Concat", [u, g.conv(u, 4, 1)], axis=-3)
    s = g.binary("Mul", c, g.const(0.5))
    t = g.binary("Add", c, g.const(np.linspace(-0.2, 0.2, 12).reshape(12, 1, 1)))
    m = g.binary("Max", s, g.op("LRN", t, size=3))
    g.channels[m] = 12
    return g.conv(g.op("Relu", g.conv(m, 8, 1)), 5, 3, pads=(1, 1, 1, 1))


CASES = {
    "layouts": _layouts,
    "bottleneck": _bottleneck,
    "normalise": _normalise,
    "residual": _residual,
    "activations": _activations,
    "mobile": _mobile,
    "pointwise": _pointwise,
    "conv-stride-pad": _conv_stride_pad,
    "conv-grouped-dilated": _conv_grouped_dilated,
    "maxpool": _maxpool,
    "avgpool": _avgpool,
    "pad-then-pool": _pad_then_pool,
    "lrn": _lrn,
    "inception": _inception,
}


def _case_model(case, rng, height=23, width=27, pool="GlobalAveragePool"):
    g = _Graph(3, rng)
    hidden = CASES[case](g)
    scores, prob = g.head(hidden, pool=pool)
    outputs = [prob, scores, hidden]
    return g.model(height, width, outputs), outputs


def _literal_images(x, top_left, patches):
    """One full image per window, the patch written with a slice (the oracle's input)."""
    images = np.repeat(x[None], len(patches), axis=0)
    kh, kw = patches.shape[2:]
    for n, (r, c) in enumerate(top_left):
        images[n, :, r:r + kh, c:c + kw] = patches[n]
    return images


def _windows(height, width, k, rng, stride=1, extra=12):
    """Corners, border midpoints and random interior windows (top-left corners, (N, 2))."""
    rows = np.arange(0, height - k + 1, stride)
    cols = np.arange(0, width - k + 1, stride)
    r_last, c_last = rows[-1], cols[-1]
    fixed = [(0, 0), (0, c_last), (r_last, 0), (r_last, c_last), (0, cols[len(cols) // 2]),
             (rows[len(rows) // 2], 0), (r_last, cols[len(cols) // 2]),
             (rows[len(rows) // 2], c_last)]
    interior = [(rng.choice(rows), rng.choice(cols)) for _ in range(extra)]
    return np.array(fixed + interior, np.int64)


def _assert_exact(got: dict, want: dict):
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
        scale = np.abs(want[name]).max()
        err = np.abs(got[name] - want[name]).max()
        assert err <= TOL * scale, f"{name}: max error {err:.3g} > {TOL} x {scale:.3g}"


def _check_all_cuts(model, outputs, x, top_left, patches, **kwargs):
    """Compare evaluate_windows with the full forward pass for every switch point."""
    reference = IncrementalClassifier(model, outputs=outputs, device="cpu", incremental=False)
    want = reference(_literal_images(x, top_left, patches))
    steps = len(analyse(model, outputs).steps)
    assert steps > 0
    for cut in [None, *range(steps + 1)]:
        clf = IncrementalClassifier(model, outputs=outputs, device="cpu", cut=cut, **kwargs)
        _assert_exact(clf.evaluate_windows(x, top_left, patches), want)


# ---------------------------------------------------------------------------------------------
# exactness, layer by layer


@pytest.mark.parametrize("k", [1, 10])
@pytest.mark.parametrize("case", sorted(CASES))
def test_evaluate_windows_equals_full_forward_for_every_switch_point(case, k, rng):
    model, outputs = _case_model(case, rng)
    x = rng.normal(size=(3, 23, 27)).astype(np.float32)
    top_left = _windows(23, 27, k, rng)
    patches = rng.normal(size=(len(top_left), 3, k, k)).astype(np.float32)
    _check_all_cuts(model, outputs, x, top_left, patches, batch_size=7)


@pytest.mark.parametrize("stride", [1, 3])
def test_every_window_position_of_a_grid(stride, rng):
    """All positions of a stride-1 (or stride-3) grid, windows repeated S times as the
    engine passes them, with non-square windows and both batch groupings."""
    model, outputs = _case_model("inception", rng, height=17, width=19)
    x = rng.normal(size=(3, 17, 19)).astype(np.float32)
    rows, cols = np.meshgrid(np.arange(0, 17 - 4 + 1, stride), np.arange(0, 19 - 3 + 1, stride),
                             indexing="ij")
    top_left = np.repeat(np.stack([rows.ravel(), cols.ravel()], axis=1), 2, axis=0)
    patches = rng.normal(size=(len(top_left), 3, 4, 3)).astype(np.float32)
    want = IncrementalClassifier(model, outputs=outputs, device="cpu", incremental=False)(
        _literal_images(x, top_left, patches))
    steps = len(analyse(model, outputs).steps)
    # the cost model runs this small net in full (cut 0): force incremental steps too
    for cut in (None, steps // 2, steps):
        for grouping in ("exact", "merge"):
            clf = IncrementalClassifier(model, outputs=outputs, device="cpu", grouping=grouping,
                                        batch_size=32, cut=cut)
            _assert_exact(clf.evaluate_windows(x, top_left, patches), want)


def test_global_max_pool_head_and_hidden_outputs_only(rng):
    """A head with GlobalMaxPool, and a classifier asked only for prefix blobs (no remainder)."""
    model, outputs = _case_model("lrn", rng, pool="GlobalMaxPool")
    x = rng.normal(size=(3, 23, 27)).astype(np.float32)
    top_left = _windows(23, 27, 10, rng, extra=4)
    patches = rng.normal(size=(len(top_left), 3, 10, 10)).astype(np.float32)
    _check_all_cuts(model, outputs, x, top_left, patches)
    hidden = [outputs[2], "data"]
    _check_all_cuts(model, hidden, x, top_left, patches)


def _workers_case(name, rng):
    """A case network, an image, 6 extra windows' samples and the number of steps."""
    model, outputs = _case_model(name, rng)
    x = rng.normal(size=(3, 23, 27)).astype(np.float32)
    top_left = _windows(23, 27, 10, rng, extra=6)
    patches = rng.normal(size=(len(top_left), 3, 10, 10)).astype(np.float32)
    return model, outputs, x, top_left, patches, len(analyse(model, outputs).steps)


def test_workers_side_by_side_are_identical(rng, monkeypatch):
    """Batches evaluated side by side on several host threads (one call's intra-op threads
    each) give exactly the outputs of one batch at a time, calls longest first."""
    import threading

    from preddiff.binding import BoundSession

    model, outputs, x, top_left, patches, steps = _workers_case("inception", rng)
    one = IncrementalClassifier(model, outputs=outputs, device="cpu", workers=1, batch_size=5,
                                cut=steps)
    two = IncrementalClassifier(model, outputs=outputs, device="cpu", workers=2, threads=2,
                                batch_size=5, cut=steps)
    assert two._call_threads() == 1 and one._call_threads() is None
    threads = []
    run = BoundSession.run
    monkeypatch.setattr(BoundSession, "run", lambda self, *a, **k: threads.append(
        (threading.current_thread().name, id(self), a[2])) or run(self, *a, **k))
    want = one.evaluate_windows(x, top_left, patches)
    assert {t for t, _, _ in threads} == {threading.current_thread().name}
    threads.clear()
    got = two.evaluate_windows(x, top_left, patches)
    for o in outputs:
        np.testing.assert_array_equal(got[o], want[o])
    plan = two._plan(x.shape, (10, 10))
    calls = two._calls(plan, top_left)
    assert len(calls) > 2 and len(plan.runners) == 2
    # every call ran on the pool's threads, through the two bound sessions
    assert all(t.startswith("preddiff-incremental") for t, _, _ in threads)
    assert {r for _, r, _ in threads} == {id(r) for r in plan.runners}
    assert len(plan.sessions) == 1  # one thread per call: one session, no intra-op pool
    assert sorted(n for _, _, n in threads) == sorted(len(fed) for _, fed in calls)
    per_pos, heights, widths = two._batch_model(plan)
    cost = [len(fed) * (per_pos @ (heights[:, top_left[fed, 0]].max(1)
                                   * widths[:, top_left[fed, 1]].max(1))) for _, fed in calls]
    assert cost == sorted(cost, reverse=True)
    stored = np.sort(np.concatenate([s for s, _ in calls]))
    np.testing.assert_array_equal(stored, np.arange(len(top_left)))


def test_workers_with_several_threads_each_have_a_session(rng):
    """onnxruntime's intra-op pool belongs to a session and overlapping runs share it: with
    more than one thread per call, each worker runs its own session."""
    model, outputs, x, top_left, patches, steps = _workers_case("residual", rng)
    one = IncrementalClassifier(model, outputs=outputs, device="cpu", workers=1, threads=2,
                                batch_size=5, cut=steps)
    two = IncrementalClassifier(model, outputs=outputs, device="cpu", workers=2, threads=4,
                                batch_size=5, cut=steps)
    assert two._call_threads() == 2
    want, got = (c.evaluate_windows(x, top_left, patches) for c in (one, two))
    for o in outputs:
        np.testing.assert_array_equal(got[o], want[o])
    plan = two._plan(x.shape, (10, 10))
    assert len(plan.sessions) == 2 and len(plan.runners) == 2
    assert {id(r.session) for r in plan.runners} == {id(s.session) for s in plan.sessions}


def test_a_failing_call_leaves_no_call_running(rng, monkeypatch):
    """When one call of a batch fails, the evaluation raises only after every call it
    started has ended (none may use a runner the next evaluation rebinds), and the next
    evaluation runs normally."""
    import threading

    from preddiff.binding import BoundSession
    from preddiff.incremental_graph import PATCHES

    model, outputs, x, top_left, patches, steps = _workers_case("inception", rng)
    clf = IncrementalClassifier(model, outputs=outputs, device="cpu", workers=2, threads=2,
                                batch_size=5, cut=steps)
    want = clf.evaluate_windows(x, top_left, patches)
    calls = clf._calls(clf._plan(x.shape, (10, 10)), top_left)
    assert len(calls) > 2
    first_patches = patches[calls[0][1]]  # the call whose result the caller reads first
    run = BoundSession.run
    lock, state = threading.Lock(), {"running": 0}
    other_started, released = threading.Event(), threading.Event()

    def flaky(self, feeds, *args, **kwargs):
        with lock:
            state["running"] += 1
        try:
            if np.array_equal(feeds[PATCHES], first_patches):
                # fails once the other worker is inside a call
                assert other_started.wait(timeout=600), "no other call started"
                raise RuntimeError("call failed")
            other_started.set()
            # still busy when the failure reaches the caller (released by the test, or
            # after 2 s: the engine waits for it to end before raising)
            released.wait(timeout=2.0)
            return run(self, feeds, *args, **kwargs)
        finally:
            with lock:
                state["running"] -= 1

    monkeypatch.setattr(BoundSession, "run", flaky)
    with pytest.raises(RuntimeError, match="call failed"):
        clf.evaluate_windows(x, top_left, patches)
    running = state["running"]
    released.set()
    assert running == 0
    monkeypatch.setattr(BoundSession, "run", run)
    got = clf.evaluate_windows(x, top_left, patches)
    for o in outputs:
        np.testing.assert_array_equal(got[o], want[o])


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_workers_refused(workers, rng):
    model, outputs = _case_model("inception", rng)
    with pytest.raises(InvalidArgument, match="workers must be a positive integer"):
        IncrementalClassifier(model, outputs=outputs, device="cpu", workers=workers)
    with pytest.raises(InvalidArgument, match=r"workers \(3\) must not exceed threads \(2\)"):
        IncrementalClassifier(model, outputs=outputs, device="cpu", workers=3, threads=2)


@pytest.mark.parametrize("grouping", ["exact", "merge"])
def test_one_compiled_graph_call_per_batch(grouping, rng, monkeypatch):
    """Every batch of windows is one call of one compiled graph (gathers, crop computations,
    pastes and the rest of the network inside it), whichever way windows are grouped, and
    the outputs are the full forward pass's for every switch point."""
    from preddiff.binding import BoundSession

    model, outputs = _case_model("inception", rng)
    x = rng.normal(size=(3, 23, 27)).astype(np.float32)
    top_left = _windows(23, 27, 10, rng)
    patches = rng.normal(size=(len(top_left), 3, 10, 10)).astype(np.float32)
    _check_all_cuts(model, outputs, x, top_left, patches, grouping=grouping)
    steps = len(analyse(model, outputs).steps)
    clf = IncrementalClassifier(model, outputs=outputs, device="cpu", grouping=grouping,
                                batch_size=7, cut=steps)
    calls = []
    run = BoundSession.run
    monkeypatch.setattr(BoundSession, "run",
                        lambda self, *a, **k: calls.append(a[2]) or run(self, *a, **k))
    clf.evaluate_windows(x, top_left, patches)
    plan = clf._plan(x.shape, (10, 10))
    batches = clf._batches(plan, top_left[:, 0], top_left[:, 1])
    # with two workers (the default on two cores) the costliest calls start first
    assert sorted(calls) == sorted(len(b) for b in batches)
    ops = {n.op_type for n in plan.compiled.model.graph.node}
    assert {"Gather", "Conv"} <= ops  # full maps of >= 8 channels: gathered too
    # boxes and index terms are computed on the host: the graph only combines each region's
    # row and column terms (two Adds, Less, Where; this network has no Less or Where of its own)
    assert not ops & {"Range", "ArgMax", "And", "Not"}
    regions = sum(isinstance(e, Region) for e in plan.compiled.index.entries)
    kinds = [n.op_type for n in plan.compiled.model.graph.node]
    assert regions and kinds.count("Less") == kinds.count("Where") == regions
    composed = IncrementalClassifier(model, outputs=outputs, device="cpu", cut=0)
    ops = {n.op_type for n in composed._plan(x.shape, (10, 10)).compiled.model.graph.node}
    assert "ScatterElements" in ops  # the 3-channel image: samples written into it
    names = [i.name for i in plan.session.session.get_inputs()]
    assert names[0] == "preddiff_patches"
    assert set(plan.compiled.index.names) <= set(names)
    assert all(n.startswith("preddiff_clean/") for n in names
               if n not in plan.compiled.index.names and n != "preddiff_patches")


def test_auto_grouping_merges_classes_only_when_the_call_saved_pays(rng, monkeypatch):
    """grouping="auto" puts consecutive classes in one batch when widening their boxes costs
    less than the session call saved: free calls give the exact classes, costly calls full
    batches; every window is in exactly one batch, and the outputs stay exact."""
    from preddiff import incremental

    model, outputs = _case_model("inception", rng)
    x = rng.normal(size=(3, 23, 27)).astype(np.float32)
    top_left = _windows(23, 27, 10, rng)
    patches = rng.normal(size=(len(top_left), 3, 10, 10)).astype(np.float32)
    steps = len(analyse(model, outputs).steps)
    want = IncrementalClassifier(model, outputs=outputs, device="cpu", incremental=False)(
        _literal_images(x, top_left, patches))
    found = {}
    for cost in (0.0, 1e15):
        monkeypatch.setattr(incremental, "CALL_COST_PER_NODE", cost)
        monkeypatch.setattr(incremental, "CALL_COST_PER_INDEX", cost)
        auto = IncrementalClassifier(model, outputs=outputs, device="cpu", grouping="auto",
                                     batch_size=7, cut=steps)
        exact = IncrementalClassifier(model, outputs=outputs, device="cpu", grouping="exact",
                                      batch_size=7, cut=steps)
        plan = auto._plan(x.shape, (10, 10))
        batches = auto._batches(plan, top_left[:, 0], top_left[:, 1])
        assert sorted(np.concatenate(batches).tolist()) == list(range(len(top_left)))
        assert max(len(b) for b in batches) <= 7
        found[cost] = [b.tolist() for b in batches]
        exact_batches = exact._batches(exact._plan(x.shape, (10, 10)), top_left[:, 0],
                                       top_left[:, 1])
        if cost == 0.0:
            assert found[cost] == [b.tolist() for b in exact_batches]
        _assert_exact(auto.evaluate_windows(x, top_left, patches), want)
    assert len(found[1e15]) == -(-len(top_left) // 7) < len(found[0.0])


def test_one_by_one_steps_read_their_input_crop(rng, monkeypatch):
    """A 1×1, stride-1, unpadded step whose output box is its input's (the bottleneck's 1×1
    convolutions) takes the input's crop as it is: no region is gathered for it, and the
    outputs are the same as with the region gathered, exactly the full forward pass's."""
    from preddiff import incremental_graph

    model, outputs = _case_model("bottleneck", rng)
    x = rng.normal(size=(3, 23, 27)).astype(np.float32)
    top_left = _windows(23, 27, 10, rng)
    patches = rng.normal(size=(len(top_left), 3, 10, 10)).astype(np.float32)
    want = IncrementalClassifier(model, outputs=outputs, device="cpu", incremental=False)(
        _literal_images(x, top_left, patches))
    steps = len(analyse(model, outputs).steps)
    results, nodes = [], []
    for skip in (True, False):
        if not skip:
            monkeypatch.setattr(incremental_graph, "pointwise_geometry", lambda step, pads: False)
        clf = IncrementalClassifier(model, outputs=outputs, device="cpu", cut=steps)
        results.append(clf.evaluate_windows(x, top_left, patches))
        nodes.append(clf._plan(x.shape, (10, 10)).compiled.nodes)
        _assert_exact(results[-1], want)
    assert nodes[0] < nodes[1]
    for name in outputs:
        np.testing.assert_array_equal(results[0][name], results[1][name])


def test_residual_merges_read_their_regions_channels_last(rng):
    """A residual Add (+ Relu) behind a convolution runs on channels-last values: the region of
    the shortcut is gathered channels-last and added as it is (no Transpose in front of the
    Add), the convolution's output is converted once; a per-channel Mul behind the Add keeps
    the merge channels-first. Both give the full forward pass's outputs."""
    import onnx

    model, outputs = _case_model("layouts", rng)
    x = rng.normal(size=(3, 23, 27)).astype(np.float32)
    top_left = _windows(23, 27, 10, rng)
    patches = rng.normal(size=(len(top_left), 3, 10, 10)).astype(np.float32)
    steps = len(analyse(model, outputs).steps)
    clf = IncrementalClassifier(model, outputs=outputs, device="cpu", cut=steps)
    graph = clf._plan(x.shape, (10, 10)).compiled.model.graph
    producer = {o: n for n in graph.node for o in n.output}
    adds = [n for n in graph.node if n.op_type == "Add"
            and any(t in producer and producer[t].op_type == "Gather" for t in n.input)]
    assert adds  # the second block's shortcut: its region added as gathered
    mul = [n for n in graph.node if n.op_type == "Mul" and any(
        t in {i.name for i in graph.initializer
              if onnx.numpy_helper.to_array(i).shape == (8, 1, 1)} for t in n.input)]
    assert len(mul) == 1 and producer[mul[0].input[0]].op_type == "Add"
    add_in = producer[mul[0].input[0]].input
    assert any(producer[t].op_type == "Transpose" for t in add_in if t in producer)
    want = IncrementalClassifier(model, outputs=outputs, device="cpu", incremental=False)(
        _literal_images(x, top_left, patches))
    _assert_exact(clf.evaluate_windows(x, top_left, patches), want)


def test_switch_point_zero_on_the_cpu_builds_the_images_on_the_host(rng):
    """With nothing to compute incrementally (switch point 0) the CPU engine pastes the
    windows on the host and runs the network on full images, as the naive engine does: the
    same outputs, and the compiled graph is never run."""
    model, outputs = _case_model("conv-stride-pad", rng)
    x = rng.normal(size=(3, 23, 27)).astype(np.float32)
    top_left = _windows(23, 27, 4, rng, extra=2)
    patches = rng.normal(size=(len(top_left), 3, 4, 4)).astype(np.float32)
    # a last call of one image: still a perturbed image, not the clean one
    clf = IncrementalClassifier(model, outputs=outputs, device="cpu", cut=0,
                                batch_size=len(top_left) - 1)
    got = clf.evaluate_windows(x, top_left, patches)
    clean_key = clf._clean_key
    want = IncrementalClassifier(model, outputs=outputs, device="cpu", incremental=False)(
        _literal_images(x, top_left, patches))
    for name in outputs:
        np.testing.assert_array_equal(got[name], want[name])
    plan = clf._plan(x.shape, (4, 4))
    assert plan.cut == 0 and not plan.runners
    clf(x[None])  # the clean image: its cached activations are still x's
    assert clf._clean_key == clean_key


def test_clean_cache_follows_the_image(rng):
    """A second image gets its own clean activations (the cache is keyed on the pixels)."""
    model, outputs = _case_model("conv-stride-pad", rng)
    clf = IncrementalClassifier(model, outputs=outputs, device="cpu",
                                cut=len(analyse(model, outputs).steps))
    top_left = _windows(23, 27, 4, rng, extra=2)
    for _ in range(2):
        x = rng.normal(size=(3, 23, 27)).astype(np.float32)
        patches = rng.normal(size=(len(top_left), 3, 4, 4)).astype(np.float32)
        _assert_exact(clf.evaluate_windows(x, top_left, patches),
                      clf(_literal_images(x, top_left, patches)))


# ---------------------------------------------------------------------------------------------
# zoo architectures (random weights, narrowed channels, real input sizes)


@pytest.mark.parametrize("name", ["alexnet", "googlenet", "vgg16"])
def test_zoo_architectures(name, rng):
    from preddiff.caffe.writer import random_onnx

    outputs = {"googlenet": ["prob", "loss3/classifier", "inception_3a/output"],
               "alexnet": ["prob", "fc8", "conv2"], "vgg16": ["prob", "fc8", "pool3"]}[name]
    model = random_onnx(name, factor=16, seed=3, outputs=outputs)
    c, h, w = (d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:])
    x = rng.normal(0, 50, (c, h, w)).astype(np.float32)
    steps = len(analyse(model, outputs).steps)
    for k in (1, 10):
        top_left = _windows(h, w, k, rng, extra=3)
        patches = rng.normal(0, 50, (len(top_left), c, k, k)).astype(np.float32)
        clf = IncrementalClassifier(model, outputs=outputs, device="cpu")
        assert clf.incremental, clf.reason
        want = clf(_literal_images(x, top_left, patches))
        _assert_exact(clf.evaluate_windows(x, top_left, patches), want)
        assert np.abs(want["prob"] - want["prob"][0]).max() > 0  # the windows matter
        # deeper switch points than the cost model's (GoogLeNet's stops before inception_3a):
        # every concat of branches with different boxes, at the real geometry
        for cut in (steps // 2, steps):
            clf = IncrementalClassifier(model, outputs=outputs, device="cpu", cut=cut)
            _assert_exact(clf.evaluate_windows(x, top_left, patches), want)


def test_lenet_with_its_real_weights(rng):
    from preddiff import zoo
    from preddiff.caffe import caffe_to_onnx

    m = zoo.manifest("lenet")
    model = caffe_to_onnx(m.prototxt, zoo.weights_path("lenet"), outputs=["prob", "ip2"])
    x = rng.uniform(0, 1, (1, 28, 28)).astype(np.float32)
    top_left = _windows(28, 28, 10, rng)
    patches = rng.uniform(0, 1, (len(top_left), 1, 10, 10)).astype(np.float32)
    _check_all_cuts(model, ["prob", "ip2"], x, top_left, patches)


@pytest.mark.parametrize("name, size, full, reduction", [("alexnet", 227, 0.72e9, 3.2),
                                                         ("googlenet", 224, 1.58e9, 2.4)])
def test_theoretical_multiply_adds_match_the_reference_notes(name, size, full, reduction):
    """Our cost model reproduces the counts in ../shared/REFERENCE_NOTES.md (k = 10)."""
    from preddiff.caffe.writer import random_onnx

    report = theoretical_macs(random_onnx(name, outputs=["prob"]), (3, size, size))
    assert report["macs_full"] == pytest.approx(full, rel=0.01)
    assert report["reduction"] == pytest.approx(reduction, abs=0.05)


@pytest.mark.slow
def test_theoretical_multiply_adds_vgg16():
    from preddiff.caffe.writer import random_onnx

    report = theoretical_macs(random_onnx("vgg16", outputs=["prob"]), (3, 224, 224))
    assert report["macs_full"] == pytest.approx(15.5e9, rel=0.01)
    assert report["reduction"] == pytest.approx(9.1, abs=0.05)


# ---------------------------------------------------------------------------------------------
# the PDA engine end to end


@pytest.mark.parametrize("stride", [1, 3])
def test_prediction_difference_maps_equal_the_naive_engine(stride, rng):
    from preddiff import prediction_difference
    from preddiff.classifier import OnnxClassifier
    from preddiff.samplers import ConditionalGaussianSampler

    model, outputs = _case_model("inception", rng, height=16, width=18)
    pool = rng.normal(size=(6, 3, 16, 18)).astype(np.float32)
    x = pool[0]
    sampler = ConditionalGaussianSampler.fit(pool, 4, 1, num_patches=400, rng=1)
    steps = len(analyse(model, outputs).steps)
    maps = {}
    # the cost model runs this small net in full (cut 0): force incremental steps too
    for name, clf in [("naive", OnnxClassifier(model, outputs=outputs, device="cpu")),
                      ("incremental", IncrementalClassifier(model, outputs=outputs,
                                                            device="cpu")),
                      ("half", IncrementalClassifier(model, outputs=outputs, device="cpu",
                                                     cut=steps // 2)),
                      ("all", IncrementalClassifier(model, outputs=outputs, device="cpu",
                                                    cut=steps))]:
        e = prediction_difference(x, clf, sampler, window=4, stride=stride, num_samples=3,
                                  blobs=outputs, probability_blobs=[outputs[0]], batch_size=30,
                                  rng=7, progress=False)
        maps[name] = e.relevance
    for blob in outputs:
        want = maps["naive"][blob]
        for name in ("incremental", "half", "all"):
            got = maps[name][blob]
            assert np.abs(got - want).max() <= TOL * np.abs(want).max(), (blob, name)


# ---------------------------------------------------------------------------------------------
# fallback and argument checks


def test_unsupported_first_operator_falls_back_with_the_reason_logged(rng, caplog):
    g = _Graph(3, rng)
    y = g.conv(g.op("Neg", "data"), 4, 3, pads=(1, 1, 1, 1))
    scores, prob = g.head(y)
    model = g.model(12, 12, [prob])
    ok, reason = supported(model)
    assert not ok and "Neg" in reason
    with caplog.at_level(logging.WARNING, logger="preddiff.incremental"):
        clf = IncrementalClassifier(model, outputs=[prob], device="cpu")
    assert not clf.incremental and "Neg" in clf.reason
    assert any("Neg" in r.getMessage() for r in caplog.records)
    x = rng.normal(size=(3, 12, 12)).astype(np.float32)
    top_left = _windows(12, 12, 3, rng, extra=2)
    patches = rng.normal(size=(len(top_left), 3, 3, 3)).astype(np.float32)
    _assert_exact(clf.evaluate_windows(x, top_left, patches),
                  clf(_literal_images(x, top_left, patches)))


def test_user_normalisation_before_the_first_conv_runs_incrementally(rng):
    """A Mul by per-channel constants before the first convolution (a common user ONNX
    preprocessing) is a point-wise step: incremental, exact."""
    g = _Graph(3, rng)
    scaled = g.binary("Mul", "data", g.const(np.array([2.0, 0.5, 1.5]).reshape(1, 3, 1, 1)))
    y = g.op("Relu", g.conv(scaled, 4, 3, stride=2, pads=(1, 1, 1, 1)))
    scores, prob = g.head(y)
    model = g.model(16, 18, [prob, scores])
    clf = IncrementalClassifier(model, outputs=[prob, scores], device="cpu")
    assert clf.incremental
    assert [s.op for s in clf.analysis.steps] == ["Mul", "Conv"]
    x = rng.normal(size=(3, 16, 18)).astype(np.float32)
    top_left = _windows(16, 18, 4, rng, extra=3)
    patches = rng.normal(size=(len(top_left), 3, 4, 4)).astype(np.float32)
    _check_all_cuts(model, [prob, scores], x, top_left, patches)


def test_constant_that_broadcasts_along_the_columns_falls_back_with_the_reason(rng, caplog):
    """A (C,)-shaped constant broadcasts along W, not per channel: not point-wise."""
    g = _Graph(3, rng)
    scaled = g.binary("Mul", "data", g.const(np.linspace(0.5, 2.0, 18)))
    g.nodes[-1].name = "scale"
    y = g.op("Relu", g.conv(scaled, 4, 3, stride=2, pads=(1, 1, 1, 1)))
    scores, prob = g.head(y)
    model = g.model(16, 18, [prob, scores])
    with caplog.at_level(logging.WARNING, logger="preddiff.incremental"):
        clf = IncrementalClassifier(model, outputs=[prob, scores], device="cpu")
    assert not clf.incremental and "Mul 'scale'" in clf.reason and "broadcast" in clf.reason
    assert any("Mul 'scale'" in r.getMessage() for r in caplog.records)
    x = rng.normal(size=(3, 16, 18)).astype(np.float32)
    top_left = _windows(16, 18, 4, rng, extra=3)
    patches = rng.normal(size=(len(top_left), 3, 4, 4)).astype(np.float32)
    from preddiff.classifier import OnnxClassifier

    want = OnnxClassifier(model, outputs=[prob, scores], device="cpu")(
        _literal_images(x, top_left, patches))
    _assert_exact(clf.evaluate_windows(x, top_left, patches), want)


def test_torch_shape_subgraph_is_not_on_the_data_path(rng):
    """torch's ``x.view(x.size(0), -1)``: Shape, Gather, Unsqueeze and a Concat of integers
    placed first in the node list, feeding a Reshape at the end, do not stop the prefix."""
    g = _Graph(3, rng)
    g.inits += [numpy_helper.from_array(np.array(0, np.int64), "zero"),
                numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
                numpy_helper.from_array(np.array([0], np.int64), "axes0")]
    g.nodes += [helper.make_node("Shape", ["data"], ["shape"], name="shape"),
                helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
                helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
                helper.make_node("Concat", ["n1", "minus_one"], ["flat_shape"], axis=0)]
    y = g.op("Relu", g.conv("data", 4, 3, stride=2, pads=(1, 1, 1, 1)))
    y = g.conv(y, 4, 3, pads=(1, 1, 1, 1))
    pooled = g.op("GlobalAveragePool", y)
    g.nodes.append(helper.make_node("Reshape", [pooled, "flat_shape"], ["flat"], name="view"))
    g.inits.append(numpy_helper.from_array(rng.normal(size=(5, 4)).astype(np.float32), "fc_w"))
    g.nodes.append(helper.make_node("Gemm", ["flat", "fc_w"], ["scores"], transB=1))
    g.nodes.append(helper.make_node("Softmax", ["scores"], ["prob"], axis=1))
    model = g.model(13, 15, ["prob", "scores"])
    analysis = analyse(model, ["prob", "scores"])
    assert [s.op for s in analysis.steps] == ["Conv", "Conv"]
    assert analysis.stop_reason.startswith("GlobalAveragePool")
    x = rng.normal(size=(3, 13, 15)).astype(np.float32)
    top_left = _windows(13, 15, 4, rng, extra=3)
    patches = rng.normal(size=(len(top_left), 3, 4, 4)).astype(np.float32)
    _check_all_cuts(model, ["prob", "scores"], x, top_left, patches)


def test_torch_zero_pad_is_folded_into_a_local_step(rng):
    """The pads of torch's ZeroPad2d export are constants once folded: the Pad is a step,
    and its geometry is the padding torch wrote (left 0, right 1, top 2, bottom 3)."""
    from preddiff.incremental_plan import fold_constants

    g = _Graph(3, rng)
    y = g.conv(_torch_zero_pad(g, "data", 0, 1, 2, 3), 4, 3, stride=2)
    scores, prob = g.head(y)
    model = g.model(12, 13, [prob])
    folded = fold_constants(model)
    assert [n.op_type for n in folded.graph.node][:2] == ["Pad", "Conv"]
    step = analyse(model, [prob]).steps[0]
    assert step.op == "Pad"
    assert [(a.pad_begin, a.pad_end) for a in step.axes] == [(2, 3), (0, 1)]


@pytest.mark.parametrize("block", ["squeeze-excitation", "instance-norm"])
def test_global_operators_end_the_prefix_with_the_reason(block, rng):
    """ReduceMean over H and W (squeeze-and-excitation) and InstanceNormalization are switch
    points to full inference; the prefix ends there, named, and the result stays exact."""
    g = _Graph(3, rng)
    x = g.op("Relu", g.conv("data", 4, 3, pads=(1, 1, 1, 1)))
    if block == "squeeze-excitation":
        s = g.op("ReduceMean", x, axes=[2, 3], keepdims=1)
        g.channels[s] = 4
        s = g.op("Sigmoid", g.conv(g.op("Relu", g.conv(s, 2, 1)), 4, 1))
        y = g.binary("Mul", x, s)
        name = "ReduceMean"
    else:
        y = g.op("InstanceNormalization", [x, g.const(np.ones(4)), g.const(np.zeros(4))])
        g.channels[y] = 4
        name = "InstanceNormalization"
    y = g.conv(y, 4, 3, pads=(1, 1, 1, 1))
    scores, prob = g.head(y)
    model = g.model(12, 14, [prob, scores])
    analysis = analyse(model, [prob, scores])
    assert analysis.stop_reason.startswith(name), analysis.stop_reason
    assert [s.op for s in analysis.steps] == ["Conv"]
    x = rng.normal(size=(3, 12, 14)).astype(np.float32)
    top_left = _windows(12, 14, 3, rng, extra=3)
    patches = rng.normal(size=(len(top_left), 3, 3, 3)).astype(np.float32)
    _check_all_cuts(model, [prob, scores], x, top_left, patches)


def test_unsupported_operator_midway_ends_the_prefix(rng):
    """Reflect padding and an unknown operator stop the incremental prefix; the rest runs
    in full, still exactly."""
    g = _Graph(3, rng)
    y = g.op("Relu", g.conv("data", 4, 3, pads=(1, 1, 1, 1)))
    y = g.conv(g.pad(y, (1, 1, 1, 1), mode="reflect"), 4, 3)
    y = g.conv(g.op("Sin", y), 4, 3)
    scores, prob = g.head(y)
    model = g.model(14, 15, [prob, scores])
    analysis = analyse(model)
    assert "reflect" in analysis.stop_reason and len(analysis.steps) == 1
    x = rng.normal(size=(3, 14, 15)).astype(np.float32)
    top_left = _windows(14, 15, 5, rng, extra=3)
    patches = rng.normal(size=(len(top_left), 3, 5, 5)).astype(np.float32)
    _check_all_cuts(model, [prob, scores], x, top_left, patches)


def test_graph_that_is_not_an_image_classifier_is_not_supported():
    x = helper.make_tensor_value_info("v", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["v"], ["y"])], "g",
                                                [x], [y]))
    ok, reason = supported(model)
    assert not ok and "4-D" in reason


def test_bad_arguments_raise_invalid_argument(rng):
    model, outputs = _case_model("lrn", rng)
    clf = IncrementalClassifier(model, outputs=outputs, device="cpu")
    x = rng.normal(size=(3, 23, 27)).astype(np.float32)
    patch = np.zeros((1, 3, 4, 4), np.float32)
    with pytest.raises(InvalidArgument, match="leaves the image"):
        clf.evaluate_windows(x, np.array([[20, 0]]), patch)
    with pytest.raises(InvalidArgument, match="patches"):
        clf.evaluate_windows(x, np.array([[0, 0]]), patch[:, :2])
    with pytest.raises(InvalidArgument, match="top_left"):
        clf.evaluate_windows(x, np.array([[0.5, 0]]), patch)
    with pytest.raises(InvalidArgument, match="outputs"):
        IncrementalClassifier(model, outputs=["nope"], device="cpu")
    with pytest.raises(InvalidArgument, match="device"):
        IncrementalClassifier(model, outputs=outputs, device="tpu")


# ---------------------------------------------------------------------------------------------
# GPU helpers that can be checked without a GPU


def test_auto_batch_size_fits_the_free_memory():
    gib, mib = 2**30, 2**20
    assert auto_batch_size(8 * gib, 20 * mib) == 240  # 0.6 * 8 GiB / 20 MiB = 245.76 -> 240
    assert auto_batch_size(8 * gib, 20 * mib, fixed_bytes=4 * gib) == 40
    assert auto_batch_size(1 * gib, 2 * gib) == 1  # never below the minimum
    assert auto_batch_size(80 * gib, 1 * mib, maximum=512) == 512
    assert auto_batch_size(None, 1 * mib) == 64  # unknown free memory: the default
    with pytest.raises(InvalidArgument):
        auto_batch_size(gib, 0)


def test_to_float16_keeps_float32_interfaces(rng):
    model, outputs = _case_model("conv-stride-pad", rng)
    half = to_float16(model)
    assert all(i.data_type == TensorProto.FLOAT16 for i in half.graph.initializer
               if i.name.endswith("_w"))
    assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    casts = [n for n in half.graph.node if n.op_type == "Cast"]
    assert len(casts) == 1 + len(outputs)
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(half.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - CPU builds lack most float16 kernels
        pytest.skip(f"onnxruntime's CPU provider cannot run float16 here: {exc}")
    x = rng.normal(size=(2, 3, 23, 27)).astype(np.float32)
    full = IncrementalClassifier(model, outputs=outputs, device="cpu")(x)
    got = dict(zip(outputs, session.run(outputs, {"data": x})))
    for name in outputs:
        assert got[name].dtype == np.float32
        assert np.abs(got[name] - full[name]).max() <= 2e-2 * np.abs(full[name]).max()


def test_bench_table_and_model_check():
    """The benchmark's table formatting and its refusal of unknown networks (the benchmark
    itself is run by hand: its output is in bench/results/)."""
    import argparse

    from preddiff.commands.bench import format_table, run

    row = {"plain": 10.0, "naive": 9.0, "incremental": 30.0, "ratio_naive": 0.9,
           "ratio_incremental": 3.0, "ratio_incremental_steady": 3.5,
           "naive_outside_fraction": 0.05, "max_relative_difference": 0.0,
           "window_samples": 640, "plain_batch": 8, "target": 2.5, "target_met": True,
           "macs": {"reduction": 3.22}}
    results = {"command": "preddiff bench", "settings": {"window": 10, "samples": 10,
                                                         "padding": 2, "rounds": 2},
               "machine": {"cpu": "x", "cores": 2, "load_average_start": [1, 1, 1],
                           "load_average_end": [1, 1, 1], "numpy": "1", "onnxruntime": "1"},
               "models": {"alexnet": row}}
    table = format_table(results)
    line = next(t for t in table.splitlines() if t.startswith("alexnet"))
    assert "64 x 10" in line and "3.00" in line and "3.2 (3.2)" in line and "yes" in line
    args = argparse.Namespace(models="alexnet,resnet", rounds=None, quick=True)
    with pytest.raises(InvalidArgument, match="resnet"):
        run(args)


# ---------------------------------------------------------------------------------------------
# review of issue 5: fixed batch sizes, shared state, empty calls


def _fixed_batch_model(rng, batch):
    """A conv net whose input declares batch size ``batch`` and whose head reshapes to
    (batch, -1), as files exported with a static batch do."""
    g = _Graph(3, rng)
    y = g.op("Relu", g.conv("data", 6, 5, stride=2, pads=(2, 2, 2, 2)))
    y = g.op("MaxPool", y, kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1])
    y = g.op("Relu", g.conv(y, 6, 3, pads=(1, 1, 1, 1)))
    g.inits += [numpy_helper.from_array(np.array([batch, -1], np.int64), "flat_shape"),
                numpy_helper.from_array(
                    rng.normal(0, 0.1, (5, 6 * 6 * 7)).astype(np.float32), "fc_w")]
    g.nodes += [helper.make_node("Reshape", [y, "flat_shape"], ["flat"]),
                helper.make_node("Gemm", ["flat", "fc_w"], ["scores"], transB=1),
                helper.make_node("Softmax", ["scores"], ["prob"], axis=1)]
    model = g.model(22, 27, ["prob", "scores", y])
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    return model, ["prob", "scores", y]


@pytest.mark.parametrize("batch", [1, 3])
def test_model_with_a_fixed_batch_size(batch, rng):
    """A graph whose input declares a batch size (and a Reshape that depends on it) is run in
    chunks of that size, padded, on every path; the oracle is OnnxClassifier, which does so."""
    from preddiff.classifier import OnnxClassifier

    model, outputs = _fixed_batch_model(rng, batch)
    x = rng.normal(size=(3, 22, 27)).astype(np.float32)
    top_left = _windows(22, 27, 5, rng, extra=5)
    patches = rng.normal(size=(len(top_left), 3, 5, 5)).astype(np.float32)
    images = _literal_images(x, top_left, patches)
    want = OnnxClassifier(model, outputs=outputs, device="cpu")(images)
    steps = len(analyse(model, outputs).steps)
    for kwargs in [{}, {"cut": 0}, {"cut": 1}, {"cut": steps},
                   {"cut": steps, "grouping": "merge"}, {"incremental": False}]:
        clf = IncrementalClassifier(model, outputs=outputs, device="cpu", batch_size=4,
                                    **kwargs)
        assert clf.incremental == kwargs.get("incremental", True)
        _assert_exact(clf.evaluate_windows(x, top_left, patches), want)
        _assert_exact(clf(images), want)
        _assert_exact(clf(images[:1]), {o: v[:1] for o, v in want.items()})
    assert theoretical_macs(model, (3, 22, 27), (5, 5))["macs_full"] > 0


def test_threads_sharing_a_classifier_do_not_mix_their_images(rng):
    """Two threads on one classifier with different images: the second one's clean image
    must not replace the first one's while the first is evaluating its windows."""
    import threading

    model, outputs = _case_model("conv-stride-pad", rng)
    clf = IncrementalClassifier(model, outputs=outputs, device="cpu",
                                cut=len(analyse(model, outputs).steps))
    xs = [rng.normal(size=(3, 23, 27)).astype(np.float32) for _ in range(2)]
    top_left = _windows(23, 27, 5, rng, extra=4)
    patches = rng.normal(size=(len(top_left), 3, 5, 5)).astype(np.float32)
    want = [clf(_literal_images(x, top_left, patches)) for x in xs]
    # The first thread pauses inside its evaluation until the second has either set its clean
    # image (no lock: the first would then evaluate the wrong image) or is waiting for the
    # classifier's lock (correct): events, not a timeout, so a slow machine changes nothing.
    first_waits, second_arrived = threading.Event(), threading.Event()
    runners, set_clean = clf._runners, clf._set_clean

    class SpyLock:
        """The classifier's lock; says when the second thread asks for it."""

        def __init__(self, lock):
            self.lock = lock

        def __enter__(self):
            if threading.current_thread().name == "second":
                second_arrived.set()
            return self.lock.__enter__()

        def __exit__(self, *exc):
            return self.lock.__exit__(*exc)

    def slow_runners(*args, **kwargs):
        if threading.current_thread().name == "first":
            first_waits.set()
            assert second_arrived.wait(timeout=600), "the second thread never arrived"
        return runners(*args, **kwargs)

    def spying_set_clean(x):
        out = set_clean(x)
        if threading.current_thread().name == "second":
            second_arrived.set()
        return out

    clf._runners, clf._set_clean, clf._lock = slow_runners, spying_set_clean, SpyLock(clf._lock)
    got = {}

    def work(i, name):
        if name == "second":
            assert first_waits.wait(timeout=600), "the first thread never paused"
        got[name] = clf.evaluate_windows(xs[i], top_left, patches)

    threads = [threading.Thread(target=work, args=(i, n), name=n)
               for i, n in enumerate(["first", "second"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _assert_exact(got["first"], want[0])
    _assert_exact(got["second"], want[1])


def test_the_callers_image_buffer_is_not_cached(rng):
    """The clean image is copied: a caller reusing its buffer for another image, then coming
    back to the first image, gets the first image's outputs."""
    model, outputs = _case_model("lrn", rng)
    clf = IncrementalClassifier(model, outputs=outputs, device="cpu", cut=0)
    x = rng.normal(size=(3, 23, 27)).astype(np.float32)
    top_left = _windows(23, 27, 4, rng, extra=3)
    patches = rng.normal(size=(len(top_left), 3, 4, 4)).astype(np.float32)
    want = clf(_literal_images(x, top_left, patches))
    buffer = x.copy()
    clf.evaluate_windows(buffer, top_left, patches)
    buffer[:] = 0.0  # the caller reuses its buffer ...
    _assert_exact(clf.evaluate_windows(x.copy(), top_left, patches), want)  # ... same pixels


def test_no_windows_give_empty_outputs_of_the_right_shape(rng):
    from preddiff.classifier import OnnxClassifier

    model, outputs = _case_model("inception", rng)
    x = rng.normal(size=(3, 23, 27)).astype(np.float32)
    want = OnnxClassifier(model, outputs=outputs, device="cpu")(np.empty((0, 3, 23, 27)))
    for incremental in (True, False):
        clf = IncrementalClassifier(model, outputs=outputs, device="cpu", incremental=incremental)
        for got in (clf.evaluate_windows(x, np.zeros((0, 2), np.int64), np.zeros((0, 3, 4, 4))),
                    clf(np.empty((0, 3, 23, 27), np.float32))):
            assert {o: v.shape for o, v in got.items()} == {o: v.shape for o, v in want.items()}


def test_clear_cache_recomputes_the_clean_pass(rng):
    model, outputs = _case_model("lrn", rng)
    clf = IncrementalClassifier(model, outputs=outputs, device="cpu")
    x = rng.normal(size=(3, 23, 27)).astype(np.float32)
    runs = []
    run = clf._clean_session.run
    clf._clean_session.run = lambda *a, **k: runs.append(1) or run(*a, **k)
    top_left = _windows(23, 27, 4, rng, extra=2)
    patches = rng.normal(size=(len(top_left), 3, 4, 4)).astype(np.float32)
    first = clf.evaluate_windows(x, top_left, patches)
    clf.evaluate_windows(x, top_left, patches)
    assert len(runs) == 1  # cached
    clf.clear_cache()
    _assert_exact(clf.evaluate_windows(x, top_left, patches), first)
    assert len(runs) == 2


def test_bench_repeats_a_short_block_until_it_lasts_as_long_as_a_plain_measurement(
        monkeypatch):
    """An engine's timed PDA runs of a round last at least the plain measurement's time (a
    0.2 s block is run again), each run forgetting the clean activations first; the figures
    add up over the runs."""
    import types

    import preddiff.commands.bench as bench

    events = []

    def fake_pda(x, classifier, sampler, stride, batch_size, seed):
        events.append("run")
        timings = {"total": 0.3, "maps": 0.05, "outside": 0.03, "classifier": 0.25,
                   "sampler": 0.02}
        return types.SimpleNamespace(timings=timings, run=len(events)), 100

    monkeypatch.setattr(bench, "_pda", fake_pda)
    e, t = bench._timed_pda(None, None, None, 1, 10, 0, 1.0, 0.1,
                            forget=lambda: events.append("forget"))
    assert events == ["forget", "run"] * 3  # 3 x 0.35 s >= 1 s
    assert e.run == 6  # the last run's explanation
    assert t["runs"] == 3 and t["block"] == 100 and t["window_samples"] == 300
    assert t["seconds"] == pytest.approx(1.05)
    assert t["steady_seconds"] == pytest.approx(3 * (0.25 - 0.1 + 0.02))
    assert t["outside_fraction"] == pytest.approx(0.1)
    events.clear()
    _, t = bench._timed_pda(None, None, None, 1, 10, 0, 0.0, 0.1)
    assert events == ["run"] and t["runs"] == 1  # --quick: one run


def test_bench_times_the_clean_pass_of_both_engines_and_writes_every_figure(tmp_path,
                                                                            monkeypatch):
    """``preddiff bench`` on LeNet (--quick, 2 rounds, the plain-throughput loop stubbed):
    each timed incremental run pays for its clean forward pass, as the naive one does (the
    warm-up used to leave the clean activations cached), and the JSON names the machine, the
    versions, the command and every figure."""
    import argparse
    import json

    import preddiff.commands.bench as bench
    from preddiff.incremental import IncrementalClassifier

    events = []  # plain measurements (a different rate each) and engine runs, in order

    def plain(classifier, x, seconds):
        events.append("plain")
        return 1000.0 + 100 * events.count("plain")

    monkeypatch.setattr(bench, "_plain", plain)
    monkeypatch.setattr(bench, "PLAIN_BATCHES", {"lenet": (16,)})
    computed, per_run = [], []
    set_clean = IncrementalClassifier._set_clean

    def spy(self, x):
        before = self._clean_key
        out = set_clean(self, x)
        computed.append(before != self._clean_key)
        return out

    pda = bench._pda

    def counting_pda(x, classifier, *args):
        start = len(computed)
        out = pda(x, classifier, *args)
        if isinstance(classifier, IncrementalClassifier):
            per_run.append(sum(computed[start:]))
        events.append("incremental" if isinstance(classifier, IncrementalClassifier)
                      else "naive")
        return out

    monkeypatch.setattr(IncrementalClassifier, "_set_clean", spy)
    monkeypatch.setattr(bench, "_pda", counting_pda)
    path = tmp_path / "bench.json"
    args = argparse.Namespace(models="lenet", quick=True, rounds=2, json=path, device="cpu",
                              threads=1, float16=False, seed=0)
    assert bench.run(args) == 0
    assert per_run == [1, 1, 1]  # warm-up and both timed rounds computed the clean pass
    results = json.loads(path.read_text())
    assert results["command"]
    for key in ("cpu", "cores", "python", "numpy", "onnxruntime", "onnx", "scipy", "preddiff",
                "git_commit", "date", "load_average_start", "load_average_end"):
        assert key in results["machine"], key
    row = results["models"]["lenet"]
    for key in ("plain", "plain_sweep", "plain_batch", "naive_engine_batch", "naive",
                "incremental", "ratio_naive", "ratio_incremental", "ratio_incremental_steady",
                "naive_outside_fraction", "max_relative_difference", "window_samples",
                "naive_clean_pass_seconds", "incremental_clean_pass_seconds", "macs", "rounds"):
        assert key in row, key
    assert len(row["rounds"]) == 2
    # every timed round: each engine's run between two plain measurements, and its ratios
    # against their mean
    timed = events[events.index("incremental") + 1:]
    assert timed == ["plain", "naive", "plain", "incremental", "plain"] * 2
    for r in row["rounds"]:
        before, between, after = (r["plain_before_naive"], r["plain_between"],
                                  r["plain_after_incremental"])
        assert len({before, between, after}) == 3
        assert r["naive_runs"] == r["incremental_runs"] == 1  # --quick: one run each
        assert r["plain"] == pytest.approx((before + between + after) / 3)
        assert r["ratio_naive"] == pytest.approx(r["naive"] / ((before + between) / 2))
        assert r["ratio_incremental"] == pytest.approx(r["incremental"] / ((between + after) / 2))
        assert r["ratio_incremental_steady"] == pytest.approx(
            r["incremental_steady"] / ((between + after) / 2))
    assert row["ratio_incremental"] == pytest.approx(
        np.median([r["ratio_incremental"] for r in row["rounds"]]))
    assert row["max_relative_difference"] <= 1e-4
    assert path.with_suffix(".txt").read_text().startswith("PDA throughput")


@pytest.mark.parametrize("stride", [1, 3])
@pytest.mark.parametrize("k", [1, 10])
@pytest.mark.parametrize("case", sorted(CASES))
def test_relevance_maps_of_every_layer_type_equal_the_naive_engine(case, k, stride, rng):
    """The issue's criterion on the maps themselves: every layer type, k = 1 and 10, window
    strides 1 and 3 (windows at the borders and corners included), weight of evidence for
    the probabilities and activation difference for the hidden blob, marginal samples."""
    from preddiff import prediction_difference
    from preddiff.classifier import OnnxClassifier
    from preddiff.samplers import MarginalSampler

    height, width = 15, 17
    model, outputs = _case_model(case, rng, height=height, width=width)
    pool = rng.normal(size=(5, 3, height, width)).astype(np.float32)
    steps = len(analyse(model, outputs).steps)
    maps = {}
    # the cost model runs these small nets in full (cut 0): force incremental steps
    for name, clf in [("naive", OnnxClassifier(model, outputs=outputs, device="cpu")),
                      ("half", IncrementalClassifier(model, outputs=outputs, device="cpu",
                                                     batch_size=9, cut=steps // 2)),
                      ("all", IncrementalClassifier(model, outputs=outputs, device="cpu",
                                                    batch_size=9, cut=steps))]:
        e = prediction_difference(pool[0], clf, MarginalSampler(pool[1:]), window=k,
                                  stride=stride, num_samples=2, blobs=outputs,
                                  probability_blobs=[outputs[0]], batch_size=22, rng=3,
                                  progress=False)
        maps[name] = e.relevance
    for blob in outputs:
        want = maps["naive"][blob]
        assert np.abs(want).max() > 0, blob
        for name in ("half", "all"):
            got = maps[name][blob]
            assert np.abs(got - want).max() <= TOL * np.abs(want).max() + MAP_ATOL, (blob, name)


def test_newest_ir_version_is_lowered_for_onnxruntime(rng):
    """A file stamped with the newest IR version of the onnx package (newer than some
    onnxruntime builds read) runs, as OnnxClassifier runs it, on every path."""
    import onnx

    from preddiff.classifier import OnnxClassifier

    model, outputs = _case_model("maxpool", rng)
    model.ir_version = onnx.IR_VERSION
    x = rng.normal(size=(3, 23, 27)).astype(np.float32)
    top_left = _windows(23, 27, 10, rng, extra=3)
    patches = rng.normal(size=(len(top_left), 3, 10, 10)).astype(np.float32)
    want = OnnxClassifier(model, outputs=outputs, device="cpu")(
        _literal_images(x, top_left, patches))
    steps = len(analyse(model, outputs).steps)
    for cut in (0, steps):
        clf = IncrementalClassifier(model, outputs=outputs, device="cpu", cut=cut)
        _assert_exact(clf.evaluate_windows(x, top_left, patches), want)
    assert theoretical_macs(model, (3, 23, 27), (10, 10))["macs_full"] > 0


def test_cuda_probe_graph_is_readable_by_this_onnxruntime():
    """The graph that decides whether CUDA is usable must load in this onnxruntime, or a GPU
    machine would silently run the incremental engine on its CPU. Checked on the CPU
    provider (the probe itself needs a GPU)."""
    import onnxruntime as ort

    from preddiff.devices import _probe_model

    session = ort.InferenceSession(_probe_model().SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": np.array([-2.0], np.float32)})[0]
    np.testing.assert_array_equal(out, [0.0])


@pytest.mark.parametrize("name", ["vgg_like_120", "resnet_like_160"])
def test_networks_the_engine_was_not_tuned_on(name, rng):
    """A VGG-like net at 120² and a ResNet-like net with projection shortcuts at 160² (the
    speed of both against their plan: ``bench/untuned_nets.py``) run incrementally to their
    last spatial layer and give the full forward pass's outputs, windows at the borders and
    corners included."""
    from untuned_nets import NETS

    build, size = NETS[name]
    model = build(0)
    x = rng.uniform(0, 1, size=(3, size, size)).astype(np.float32)
    top_left = np.array([[0, 0], [size - 10, size - 10], [0, size - 10], [size // 2, 37],
                         [3, size // 3], [size - 10, 5]])
    top_left = np.repeat(top_left, 2, axis=0)
    patches = rng.uniform(0, 1, size=(len(top_left), 3, 10, 10)).astype(np.float32)
    clf = IncrementalClassifier(model, outputs=["prob"], device="cpu")
    report = clf.report(x.shape, (10, 10))
    assert report["cut"] == len(report["steps"]) and report["cut"] >= 12
    want = IncrementalClassifier(model, outputs=["prob"], device="cpu", incremental=False)(
        _literal_images(x, top_left, patches))
    _assert_exact(clf.evaluate_windows(x, top_left, patches), want)
