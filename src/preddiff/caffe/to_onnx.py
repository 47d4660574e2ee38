"""Convert a Caffe deploy net and its weights to an ONNX model that computes what Caffe does.

Scope
-----
Layer types (one small emitter each, in :data:`_EMITTERS`): Input, Convolution and
Deconvolution (group, pad, stride, kernel incl. ``_h``/``_w``, dilation, bias_term), Pooling
(MAX, AVE, global; Caffe's ceil rounding and padding clip rule, and its −FLT_MAX / NaN for a
window that starts beyond the input), LRN (ACROSS_CHANNELS, and WITHIN_CHANNEL built from
Caffe's own sub-layers), InnerProduct (``axis`` ≥ 1, ``transpose``), ReLU
(``negative_slope``), Dropout (identity at test time), Softmax, Concat, BatchNorm (stored
statistics), Scale (a learned scale, or a second bottom with ``axis: 0``), Eltwise (SUM
with coefficients, PROD, MAX), Flatten, Reshape, Sigmoid, TanH, AbsVal, Power (Caffe's
constant fill when ``power · scale`` is 0), ELU, PReLU, Slice, Crop. Any other type raises
:class:`~preddiff.errors.UnsupportedLayer` naming the layer and type; a net Caffe itself
refuses (an in-place AbsVal, Flatten or Reshape, a PReLU on a blob of more than 4 axes, ...)
raises :class:`~preddiff.errors.CaffeFormatError` with Caffe's reason.

Emitted ONNX operators (:data:`ONNX_OPS`), opset ≥ 13, every weight an initializer:
Conv, ConvTranspose, MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, LRN, Flatten,
Gemm, MatMul, Relu, LeakyRelu, PRelu, Elu, Sigmoid, Tanh, Abs, Add, Sub, Mul, Div, Pow, Max,
Concat, Softmax, Identity, Pad (constant), Reshape, Slice. Keeping to this set lets
:mod:`preddiff.graph` interpret and differentiate the graphs in NumPy.

The oracle is real BVLC Caffe: ``tests/test_caffe_golden.py`` compares every blob with what
Caffe computed (``tests/data/caffe-golden``).

The graph
---------
* Inputs: the net's input blobs (``data``), float32 ``(N, C, H, W)`` with a dynamic batch
  dimension ``"N"``.
* Every Caffe top blob keeps its Caffe name as the ONNX value that holds what Caffe holds in
  that blob after the forward pass. An in-place layer (``top == bottom``, e.g. ReLU) overwrites
  its blob, so the *final* write gets the Caffe name and an earlier value gets a derived name,
  ``"<blob>/before_<layer>"`` (``conv1/before_relu1`` is conv1's output before relu1). An
  in-place Dropout is the identity at test time and emits nothing.
* Caffe's views: Flatten, Reshape, a one-bottom Concat and a one-top Slice make their top
  share memory with their bottom (``ShareData``), so an in-place layer on the top (or on
  the bottom) rewrites both; the converter then also gives the other blob its new value
  (Reshape or Identity of the in-place result), for the layers that read it afterwards and
  as its final value. Where that cannot be expressed (the view reaches a network input, or
  the in-place layer also reads another view of its own top) it refuses with the reason.
* Outputs: only those asked for (exposing many blobs slows onnxruntime down).

Pooling: Caffe versus ONNX
--------------------------
Caffe (``pooling_layer.cpp``) makes ``ceil((H + 2p − k)/s) + 1`` windows, one fewer when the
layer has any padding and the last window would start at or beyond ``H + p``; an AVE window
is divided by its size clipped to ``[−p, H + p)`` (padding counts, the ceil overhang beyond
it does not). Rather than rely on ``ceil_mode`` — whose treatment of that last window and of
the AVE divisor has changed between onnxruntime releases and differs between runtimes — the
converter always emits ``ceil_mode=0`` with explicit asymmetric pads chosen so that the floor
rule gives exactly Caffe's windows:

* MaxPool: ``pads = (p, p + e)`` with ``e`` the overhang of Caffe's last window (padding never
  wins a max, in Caffe or ONNX).
* AveragePool whose windows all lie in ``[−p, H + p)``: ``pads = (p, e ≤ p)``,
  ``count_include_pad=1`` (divisor k·k, as Caffe's).
* AveragePool with an overhang beyond ``H + p``: an explicit zero ``Pad`` by ``p``, then
  ``count_include_pad=0`` with end pads for the overhang, so the divisor is the window clipped
  to the zero-padded input, i.e. to ``[−p, H + p)`` — Caffe's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import __version__
from ..errors import CaffeFormatError, InvalidArgument, UnsupportedLayer
from ..fileio import atomic_write_bytes
from .caffemodel import read_caffemodel
from .net import NetSpec, conv_geometry, crop_offsets, layer_output_shapes, load_net, \
    malformed_parameters, pool_geometry, pooled_size, scale_axes, slice_points, top_shapes, \
    unsupported

__all__ = ["caffe_to_onnx", "net_to_onnx", "save_onnx", "ONNX_OPS", "MIN_OPSET"]

ONNX_OPS = frozenset({
    "Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LRN", "Flatten",
    "Gemm", "Relu", "LeakyRelu", "Concat", "Softmax", "Identity", "Pad",
    # the zoo's other layers
    "ConvTranspose", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Sigmoid", "Tanh", "Abs", "Elu",
    "PRelu", "Reshape", "MatMul", "Slice",
})
"""Every ONNX operator the converter may emit."""

MIN_OPSET = 13  # Softmax over one axis (not a flattened tail) and Pad's pads as an input


def caffe_to_onnx(prototxt, caffemodel, *, outputs=None, opset: int = MIN_OPSET
                  ) -> onnx.ModelProto:
    """Convert a Caffe deploy net with its trained weights to ONNX.

    Parameters
    ----------
    prototxt : str, os.PathLike or NetSpec
        The deploy net (a path, its text, or an already loaded :class:`NetSpec`).
    caffemodel : str or os.PathLike
        The weights, in any format :func:`preddiff.caffe.read_caffemodel` reads.
    outputs : None, "all", str or list of str
        Graph outputs: None → the last blob only; ``"all"`` → every top blob; otherwise blob
        names (a list, or one comma-separated string).
    opset : int
        ONNX opset to declare, at least 13.

    Returns
    -------
    onnx.ModelProto
        Input ``data`` of shape ``(N, C, H, W)``; see the module docstring.

    Raises
    ------
    UnsupportedLayer
        A layer type or option the converter does not handle (the message names the layer).
    CaffeFormatError
        The files cannot be read or do not match each other.
    InvalidArgument
        An unknown output blob (the message lists the available ones) or a bad ``opset``.
    """
    net = prototxt if isinstance(prototxt, NetSpec) else load_net(prototxt)
    layer_output_shapes(net)  # report an unsupported layer before reading a large file
    _writes(net)  # and an in-place write through Caffe's shared memory that is refused
    weights = read_caffemodel(caffemodel, net)
    return net_to_onnx(net, weights, outputs=outputs, opset=opset)


def save_onnx(model: onnx.ModelProto, path) -> Path:
    """Write ``model`` to ``path`` atomically (a temporary file in the same folder, renamed);
    missing parent folders are created. Returns the path."""
    return atomic_write_bytes(path, model.SerializeToString())


class _GraphBuilder:
    """Nodes, initializers and unique value names of the graph under construction."""

    def __init__(self):
        self.nodes, self.initializers, self.used = [], [], set()

    def reserve(self, name: str) -> None:
        self.used.add(name)

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name

    def node(self, op: str, inputs, outputs, name: str, **attrs) -> None:
        if op not in ONNX_OPS:  # the operator set is a promise to preddiff.graph
            raise RuntimeError(f"converter bug: {op} is outside the declared operator set")
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name, **attrs))

    @staticmethod
    def check(layer, base: str, array: np.ndarray, shape: tuple) -> np.ndarray:
        """A Caffe parameter blob, after checking its shape."""
        if tuple(np.shape(array)) != tuple(shape):
            raise CaffeFormatError(f"layer {layer.name!r}: {base} has shape "
                                   f"{np.shape(array)}, expected {tuple(shape)}")
        return np.asarray(array)

    def weight(self, layer, base: str, array: np.ndarray, shape: tuple,
               store_as: tuple | None = None) -> str:
        """Add a Caffe parameter blob as a float32 initializer after checking its shape
        (stored reshaped to ``store_as`` when given, e.g. to broadcast over a blob)."""
        array = self.check(layer, base, array, shape)
        if store_as is not None:
            array = array.reshape(store_as)
        name = self.fresh(f"{layer.name}/{base}")
        self.initializers.append(
            numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def const(self, base: str, values) -> str:
        """A float32 constant (computed by the converter, not read from the caffemodel)."""
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.asarray(values, np.float32), name))
        return name

    def ints(self, base: str, values) -> str:
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name


# --------------------------------------------------------------------------------------------
# One emitter per Caffe layer type: (graph, layer, input names, output names, input shapes,
# parameter blobs) -> None
# --------------------------------------------------------------------------------------------
def _params(layer, blobs, count: int) -> list:
    if blobs is None or len(blobs) != count:
        found = "none" if blobs is None else len(blobs)
        raise CaffeFormatError(f"layer {layer.name!r} ({layer.type}) needs {count} parameter "
                               f"blob(s), the weights have {found}")
    return blobs


def _convolution(g, layer, ins, outs, shapes, blobs):
    geo = conv_geometry(layer)
    c = shapes[0][1]
    blobs = _params(layer, blobs, 2 if geo.bias_term else 1)
    inputs = [ins[0], g.weight(layer, "weight", blobs[0],
                               (geo.num_output, c // geo.group, *geo.kernel))]
    if geo.bias_term:
        inputs.append(g.weight(layer, "bias", blobs[1], (geo.num_output,)))
    g.node("Conv", inputs, outs, layer.name, kernel_shape=list(geo.kernel),
           pads=[*geo.pad, *geo.pad], strides=list(geo.stride), dilations=list(geo.dilation),
           group=geo.group)


def _pooling(g, layer, ins, outs, shapes, blobs):
    _params(layer, blobs or [], 0)
    geo = pool_geometry(layer)
    if geo.kernel is None:
        op = "GlobalMaxPool" if geo.method == "MAX" else "GlobalAveragePool"
        g.node(op, ins, outs, layer.name)
        return
    size = shapes[0][2:]
    clip = geo.pad != (0, 0)
    out = [pooled_size(x, k, p, s, ceil=geo.ceil, clip=clip)
           for x, k, p, s in zip(size, geo.kernel, geo.pad, geo.stride)]
    # How far Caffe's last window reaches beyond the padded input [-p, H + p).
    over = [(o - 1) * s + k - (x + p)
            for o, s, k, x, p in zip(out, geo.stride, geo.kernel, size, geo.pad)]
    attrs = dict(kernel_shape=list(geo.kernel), strides=list(geo.stride), ceil_mode=0)
    x, begins = ins[0], list(geo.pad)
    # Windows that start at or beyond the input (only without padding, stride > kernel):
    # Caffe's loops see no element there and give -FLT_MAX (MAX) or 0/0 = NaN (AVE).
    beyond = [np.arange(o) * s - p >= n for o, s, p, n in zip(out, geo.stride, geo.pad, size)]
    if any(b.any() for b in beyond):
        _pool_beyond(g, layer, ins, outs, geo, out, beyond, dict(attrs, input_size=size))
        return
    if geo.method == "MAX" or all(e <= p for e, p in zip(over, geo.pad)):
        ends = [max(0, e) for e in over]
        if geo.method == "MAX":  # padding never wins a max, in Caffe or ONNX
            g.node("MaxPool", ins, outs, layer.name, pads=[*begins, *ends], **attrs)
        else:  # every window inside [-p, H + p): Caffe divides by k_h * k_w
            g.node("AveragePool", ins, outs, layer.name, pads=[*begins, *ends],
                   count_include_pad=1, **attrs)
    else:
        if clip:  # real zeros, which count in the divisor as Caffe's padding does
            x = g.fresh(f"{layer.name}/padded")
            pads = g.ints(f"{layer.name}/pads", [0, 0, *geo.pad, 0, 0, *geo.pad])
            g.node("Pad", [ins[0], pads], [x], f"{layer.name}/pad", mode="constant")
            size = [n + 2 * p for n, p in zip(size, geo.pad)]
        begins = [0, 0]
        # The overhang lies outside the (padded) input: count_include_pad=0 leaves it out
        # of the divisor.
        ends = [max(0, e - p) for e, p in zip(over, geo.pad)]
        g.node("AveragePool", [x], outs, layer.name, pads=[*begins, *ends],
               count_include_pad=0, **attrs)
    got = [(n + b + e - k) // s + 1
           for n, b, e, k, s in zip(size, begins, ends, geo.kernel, geo.stride)]
    if got != out:  # ONNX's floor rule with these pads must give Caffe's window count
        raise RuntimeError(f"converter bug: pooling {layer.name!r} gives {got}, Caffe {out}")


def _pool_beyond(g, layer, ins, outs, geo, out, beyond, attrs):
    """Caffe's pooling when some windows start beyond the (unpadded) input.

    Caffe's loops find no input element in such a window and give −FLT_MAX (MAX: the
    running maximum's start value) or 0/0 = NaN (AVE: zero sum over a zero pool size). The
    windows that start inside the input are pooled as usual (the overhang of the last one
    is clipped, ``count_include_pad=0``), then the output is padded at the end with that
    value, one row or column per empty window.
    """
    valid = [o - int(b.sum()) for o, b in zip(out, beyond)]
    size = attrs.pop("input_size")
    ends = [max(0, (v - 1) * s + k - n)
            for v, s, k, n in zip(valid, geo.stride, geo.kernel, size)]
    pooled = g.fresh(f"{layer.name}/inside")
    if geo.method == "MAX":
        g.node("MaxPool", ins, [pooled], layer.name, pads=[0, 0, *ends], **attrs)
        value = -np.finfo(np.float32).max
    else:
        g.node("AveragePool", ins, [pooled], layer.name, pads=[0, 0, *ends],
               count_include_pad=0, **attrs)
        value = np.nan
    empty = [o - v for o, v in zip(out, valid)]
    pads = g.ints(f"{layer.name}/pads", [0, 0, 0, 0, 0, 0, *empty])
    g.node("Pad", [pooled, pads, g.const(f"{layer.name}/empty_value", value)], outs,
           f"{layer.name}/empty_windows", mode="constant")


def _lrn(g, layer, ins, outs, shapes, blobs):
    _params(layer, blobs or [], 0)
    p = layer.params
    if str(p.get("norm_region", "ACROSS_CHANNELS")) in ("WITHIN_CHANNEL", "1"):
        _lrn_within_channel(g, layer, ins, outs)
        return
    # Caffe: x / (k + alpha/n * sum_window x^2)^beta; ONNX LRN has the same alpha/size form.
    g.node("LRN", ins, outs, layer.name, size=int(p.get("local_size", 5)),
           alpha=float(p.get("alpha", 1.0)), beta=float(p.get("beta", 0.75)),
           bias=float(p.get("k", 1.0)))


def _lrn_within_channel(g, layer, ins, outs):
    """Caffe's WITHIN_CHANNEL LRN, built from its own sub-layers (``lrn_layer.cpp``):
    ``x · (1 + alpha · AVE-pool_{n×n, pad (n−1)/2}(x²))^(−beta)``; Caffe's power layer has
    shift 1, so ``k`` is not used; the pooling divisor is always n² (stride 1)."""
    p = layer.params
    size = int(p.get("local_size", 5))
    pad = (size - 1) // 2
    name = layer.name
    square, mean, scaled = (g.fresh(f"{name}/{v}") for v in ("square", "mean", "scaled"))
    shifted, factor = g.fresh(f"{name}/shifted"), g.fresh(f"{name}/factor")
    g.node("Mul", [ins[0], ins[0]], [square], f"{name}/square")
    g.node("AveragePool", [square], [mean], f"{name}/pool", kernel_shape=[size, size],
           pads=[pad] * 4, strides=[1, 1], count_include_pad=1, ceil_mode=0)
    g.node("Mul", [mean, g.const(f"{name}/alpha", p.get("alpha", 1.0))], [scaled],
           f"{name}/scale")
    g.node("Add", [scaled, g.const(f"{name}/one", 1.0)], [shifted], f"{name}/shift")
    g.node("Pow", [shifted, g.const(f"{name}/minus_beta", -float(p.get("beta", 0.75)))],
           [factor], f"{name}/power")
    g.node("Mul", [ins[0], factor], outs, name)


def _inner_product(g, layer, ins, outs, shapes, blobs):
    p = layer.params
    n = int(p["num_output"])
    axis = int(p.get("axis", 1)) % len(shapes[0])
    k = int(np.prod(shapes[0][axis:]))
    bias = str(p.get("bias_term", "true")).lower() in ("true", "1")
    transpose = str(p.get("transpose", "false")).lower() in ("true", "1")
    blobs = _params(layer, blobs, 2 if bias else 1)
    if axis != 1:
        _inner_product_on_axis(g, layer, ins, outs, shapes[0], axis, (n, k), transpose, blobs)
        return
    x = ins[0]
    if len(shapes[0]) != 2:  # Caffe flattens C, H, W row-major, as Flatten(axis=1) does
        x = g.fresh(f"{layer.name}/flatten")
        g.node("Flatten", ins, [x], f"{layer.name}/flatten", axis=1)
    # Caffe stores the weight as (N, K) (or (K, N) with transpose): y = x W^T + b.
    inputs = [x, g.weight(layer, "weight", blobs[0], (k, n) if transpose else (n, k))]
    if bias:
        inputs.append(g.weight(layer, "bias", blobs[1], (n,)))
    g.node("Gemm", inputs, outs, layer.name, transB=0 if transpose else 1)


def _inner_product_on_axis(g, layer, ins, outs, shape, axis, nk, transpose, blobs):
    """InnerProduct with ``axis`` > 1: the axes from ``axis`` on are flattened to K and
    multiplied, the leading axes kept (Caffe: M = prod(shape[:axis]) rows)."""
    n, k = nk
    x = ins[0]
    if axis != len(shape) - 1:
        x = g.fresh(f"{layer.name}/flatten")
        g.node("Reshape", [ins[0], g.ints(f"{layer.name}/shape", [0] * axis + [k])], [x],
               f"{layer.name}/flatten")
    w = blobs[0] if transpose else np.asarray(blobs[0]).reshape(n, k).T
    weight = g.weight(layer, "weight", np.ascontiguousarray(w), (k, n))
    if len(blobs) == 1:
        g.node("MatMul", [x, weight], outs, layer.name)
        return
    product = g.fresh(f"{layer.name}/product")
    g.node("MatMul", [x, weight], [product], layer.name)
    g.node("Add", [product, g.weight(layer, "bias", blobs[1], (n,))], outs,
           f"{layer.name}/bias")


def _deconvolution(g, layer, ins, outs, shapes, blobs):
    geo = conv_geometry(layer)
    c = shapes[0][1]
    blobs = _params(layer, blobs, 2 if geo.bias_term else 1)
    inputs = [ins[0], g.weight(layer, "weight", blobs[0],
                               (c, geo.num_output // geo.group, *geo.kernel))]
    if geo.bias_term:
        inputs.append(g.weight(layer, "bias", blobs[1], (geo.num_output,)))
    g.node("ConvTranspose", inputs, outs, layer.name, kernel_shape=list(geo.kernel),
           pads=[*geo.pad, *geo.pad], strides=list(geo.stride), dilations=list(geo.dilation),
           group=geo.group)


def _channel_shape(shape, values) -> np.ndarray:
    """Per-channel values shaped to broadcast over an (N, C, ...) blob: (C, 1, ..., 1)."""
    return np.asarray(values, np.float32).reshape((-1,) + (1,) * (len(shape) - 2))


def _batch_norm(g, layer, ins, outs, shapes, blobs):
    """Caffe's BatchNorm with stored statistics, in Caffe's float32 order of operations:
    mean and variance are the stored sums times 1/factor (0 when the factor is 0), then
    ``(x − mean) / sqrt(variance + eps)``."""
    c = shapes[0][1]
    mean, var, factor = _params(layer, blobs, 3)
    for blob, expected in zip((mean, var, factor), ((c,), (c,), (1,))):
        if tuple(np.shape(blob)) != expected:
            raise CaffeFormatError(f"layer {layer.name!r} (BatchNorm): blob shapes "
                                   f"{[np.shape(b) for b in blobs]}, expected (C,), (C,), (1,)")
    f32 = np.float32
    scale = f32(0) if factor[0] == 0 else f32(1) / f32(factor[0])
    eps = f32(layer.params.get("eps", 1e-5))
    std = np.sqrt(scale * var.astype(f32) + eps)
    centred = g.fresh(f"{layer.name}/centred")
    g.node("Sub", [ins[0], g.const(f"{layer.name}/mean", _channel_shape(shapes[0],
                                                                         scale * mean))],
           [centred], f"{layer.name}/subtract_mean")
    g.node("Div", [centred, g.const(f"{layer.name}/std", _channel_shape(shapes[0], std))],
           outs, layer.name)


def _scale(g, layer, ins, outs, shapes, blobs):
    if len(ins) == 2:
        _scale_by_blob(g, layer, ins, outs, shapes, blobs)
        return
    axis, num_axes = scale_axes(layer, shapes[0])
    shape = tuple(shapes[0][axis:axis + num_axes])
    bias = str(layer.params.get("bias_term", "false")).lower() in ("true", "1")
    blobs = _params(layer, blobs, 2 if bias else 1)
    trailing = (1,) * (len(shapes[0]) - axis - num_axes)  # broadcast over the later axes
    gamma = g.weight(layer, "scale", blobs[0], shape, store_as=shape + trailing)
    if not bias:
        g.node("Mul", [ins[0], gamma], outs, layer.name)
        return
    scaled = g.fresh(f"{layer.name}/scaled")
    g.node("Mul", [ins[0], gamma], [scaled], layer.name)
    beta = g.weight(layer, "bias", blobs[1], shape, store_as=shape + trailing)
    g.node("Add", [scaled, beta], outs, f"{layer.name}/bias")


def _scale_by_blob(g, layer, ins, outs, shapes, blobs):
    """Two-bottom Scale with ``axis: 0`` (net.py refuses the rest): bottom 1, of shape
    ``(N, d1, …, dk)`` = bottom 0's first axes, reshaped to ``(N, d1, …, dk, 1, …, 1)`` to
    broadcast over bottom 0's later axes, times bottom 0 (Caffe: ``caffe_cpu_scale`` by each
    scale value over the inner dimension)."""
    _params(layer, blobs or [], 0)
    axis, num_axes = scale_axes(layer, shapes[0], shapes[1])
    trailing = len(shapes[0]) - axis - num_axes
    scale = ins[1]
    if trailing and num_axes:
        scale = g.fresh(f"{layer.name}/broadcast")
        target = [0, *shapes[1][1:]] + [1] * trailing  # 0: keep the (dynamic) batch size
        g.node("Reshape", [ins[1], g.ints(f"{layer.name}/shape", target)], [scale],
               f"{layer.name}/broadcast")
    g.node("Mul", [ins[0], scale], outs, layer.name)


def _eltwise(g, layer, ins, outs, shapes, blobs):
    _params(layer, blobs or [], 0)
    op = str(layer.params.get("operation", "SUM"))
    op = {"0": "PROD", "1": "SUM", "2": "MAX"}.get(op, op)
    coeffs = layer.params.get("coeff", [1.0] * len(ins))
    coeffs = coeffs if isinstance(coeffs, list) else [coeffs]
    terms = list(ins)
    if layer.tops[0] in layer.bottoms[1:]:
        raise UnsupportedLayer(f"layer {layer.name!r} (Eltwise) writes its top over a bottom "
                               "other than the first; not supported")
    in_place = layer.tops[0] == layer.bottoms[0]
    # In place, Caffe's Forward_cpu first initialises the top, i.e. bottom 0: SUM sets it
    # to 0 and MAX to -FLT_MAX before reading the bottoms; PROD reads before it writes.
    if op == "MAX":  # Caffe: a > b ? a : b for bottoms 0, 1, then strict > (graph.py's VJP)
        if in_place:
            terms[0] = g.const(f"{layer.name}/initial", -np.finfo(np.float32).max)
        g.node("Max", terms, outs, layer.name)
        return
    if op == "SUM":
        _eltwise_sum(g, layer, list(zip(ins, coeffs))[1 if in_place else 0:], outs)
        return
    acc = terms[0]  # PROD: Caffe multiplies bottom 0 by bottom 1, then by the others in order
    for i, term in enumerate(terms[1:], start=1):
        out = outs[0] if i == len(terms) - 1 else g.fresh(f"{layer.name}/partial{i}")
        g.node("Mul", [acc, term], [out], layer.name if out == outs[0] else out)
        acc = out


def _eltwise_sum(g, layer, pairs, outs):
    """Caffe's Eltwise SUM, ``top = 0; top += coeff_i · bottom_i`` in bottom order, over the
    ``(input, coeff)`` pairs that count (in place, bottom 0 is the top that Caffe zeroes
    first, so the caller leaves it out)."""
    acc = None
    for k, (x, coeff) in enumerate(pairs):
        last = k == len(pairs) - 1
        if float(coeff) != 1.0:
            scaled = outs[0] if last and acc is None else g.fresh(f"{layer.name}/term{k}")
            g.node("Mul", [x, g.const(f"{layer.name}/coeff{k}", float(coeff))], [scaled],
                   layer.name if scaled == outs[0] else scaled)
            x = scaled
        if acc is None:
            acc = x
            continue
        out = outs[0] if last else g.fresh(f"{layer.name}/partial{k}")
        g.node("Add", [acc, x], [out], layer.name if out == outs[0] else out)
        acc = out
    if acc != outs[0]:
        g.node("Identity", [acc], outs, layer.name)


def _reshape_to(g, layer, ins, outs, shape, out_shape):
    """A Reshape keeping the batch axis dynamic (target ``[0, ...]``)."""
    g.node("Reshape", [ins[0], g.ints(f"{layer.name}/shape", [0, *out_shape[1:]])], outs,
           layer.name)


def _flatten(g, layer, ins, outs, shapes, blobs):
    _params(layer, blobs or [], 0)
    out_shape = top_shapes(layer, shapes)[0]
    _reshape_to(g, layer, ins, outs, shapes[0], out_shape)


def _reshape(g, layer, ins, outs, shapes, blobs):
    _params(layer, blobs or [], 0)
    one = top_shapes(layer, [(1, *shapes[0][1:])])[0]
    two = top_shapes(layer, [(2, *shapes[0][1:])])[0]
    if one[0] != 1 or two[0] != 2 or one[1:] != two[1:]:
        raise UnsupportedLayer(f"layer {layer.name!r} (Reshape) moves values across the batch "
                               f"axis (batch 1 gives {one}, batch 2 gives {two}); not supported")
    _reshape_to(g, layer, ins, outs, shapes[0], one)


def _unary(op):
    def emit(g, layer, ins, outs, shapes, blobs):
        _params(layer, blobs or [], 0)
        g.node(op, ins, outs, layer.name)
    return emit


def _elu(g, layer, ins, outs, shapes, blobs):
    _params(layer, blobs or [], 0)
    g.node("Elu", ins, outs, layer.name, alpha=float(layer.params.get("alpha", 1.0)))


def _power(g, layer, ins, outs, shapes, blobs):
    """Caffe's Power layer, ``(shift + scale · x)^power``, skipping the identity steps.

    Caffe's PowerLayer::Forward_cpu ignores the input when ``power · scale`` is 0 in float32
    and fills the top with ``1`` (power 0) or ``pow(shift, power)``: so ``power: -1 scale: 0``
    gives +inf everywhere, where computing ``(0 · x)^-1`` would give −inf for ``x < 0``."""
    _params(layer, blobs or [], 0)
    p = layer.params
    power, scale, shift = (float(p.get(k, d)) for k, d in
                           (("power", 1.0), ("scale", 1.0), ("shift", 0.0)))
    if np.float32(power) * np.float32(scale) == 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            value = np.float32(1) if np.float32(power) == 0 else np.float32(
                np.power(np.float64(np.float32(shift)), np.float64(np.float32(power))))
        _fill(g, layer, ins[0], shapes[0], value, outs[0])
        return
    steps = [("Mul", scale, 1.0), ("Add", shift, 0.0), ("Pow", power, 1.0)]
    steps = [(op, v) for op, v, identity in steps if v != identity]
    if not steps:
        g.node("Identity", ins, outs, layer.name)
        return
    x = ins[0]
    for i, (op, value) in enumerate(steps):
        out = outs[0] if i == len(steps) - 1 else g.fresh(f"{layer.name}/{op.lower()}")
        g.node(op, [x, g.const(f"{layer.name}/{op.lower()}_by", value)], [out],
               layer.name if out == outs[0] else out)
        x = out


def _fill(g, layer, x, shape, value, out):
    """A blob of ``x``'s shape filled with ``value`` whatever ``x`` holds (inf and NaN
    included, which ``0 · x`` would not ignore): ``x`` sliced to nothing along its last axis,
    padded back with ``value``. A 1-D ``(N,)`` blob goes through ``(N, 1)``."""
    name, flat = layer.name, len(shape) == 1
    if flat:
        column = g.fresh(f"{name}/column")
        g.node("Reshape", [x, g.ints(f"{name}/column_shape", [0, 1])], [column],
               f"{name}/column")
        x, shape = column, (*shape, 1)
    last = len(shape) - 1
    empty = g.fresh(f"{name}/empty")
    g.node("Slice", [x, g.ints(f"{name}/starts", [0]), g.ints(f"{name}/ends", [0]),
                     g.ints(f"{name}/axes", [last])], [empty], f"{name}/empty")
    pads = g.ints(f"{name}/pads", [0] * len(shape) + [0] * last + [shape[last]])
    filled = g.fresh(f"{name}/filled") if flat else out
    g.node("Pad", [empty, pads, g.const(f"{name}/value", value)], [filled],
           name if filled == out else filled, mode="constant")
    if filled != out:
        g.node("Reshape", [filled, g.ints(f"{name}/shape", [0])], [out], name)


def _prelu(g, layer, ins, outs, shapes, blobs):
    (slope,) = _params(layer, blobs, 1)
    shared = str(layer.params.get("channel_shared", "false")).lower() in ("true", "1")
    shape = () if shared else (shapes[0][1],)
    stored = (1 if shared else shapes[0][1],) + (1,) * (len(shapes[0]) - 2)  # over (N, C, …)
    g.node("PRelu", [ins[0], g.weight(layer, "slope", slope, shape, store_as=stored)], outs,
           layer.name)


def _slice(g, layer, ins, outs, shapes, blobs):
    _params(layer, blobs or [], 0)
    axis, bounds = slice_points(layer, shapes[0], len(outs))
    for out, start, end in zip(outs, bounds, bounds[1:]):
        g.node("Slice", [ins[0], g.ints(f"{layer.name}/starts", [start]),
                         g.ints(f"{layer.name}/ends", [end]),
                         g.ints(f"{layer.name}/axes", [axis])], [out], g.fresh(layer.name))


def _crop(g, layer, ins, outs, shapes, blobs):
    _params(layer, blobs or [], 0)
    axis, offsets = crop_offsets(layer, shapes)
    axes = list(range(axis, len(shapes[0])))
    ends = [o + shapes[1][a] for o, a in zip(offsets, axes)]
    g.node("Slice", [ins[0], g.ints(f"{layer.name}/starts", offsets),
                     g.ints(f"{layer.name}/ends", ends), g.ints(f"{layer.name}/axes", axes)],
           outs, layer.name)


def _relu(g, layer, ins, outs, shapes, blobs):
    _params(layer, blobs or [], 0)
    slope = float(layer.params.get("negative_slope", 0.0))
    if slope:
        g.node("LeakyRelu", ins, outs, layer.name, alpha=slope)
    else:
        g.node("Relu", ins, outs, layer.name)


def _dropout(g, layer, ins, outs, shapes, blobs):
    _params(layer, blobs or [], 0)
    g.node("Identity", ins, outs, layer.name)  # Caffe's Dropout copies at test time


def _softmax(g, layer, ins, outs, shapes, blobs):
    _params(layer, blobs or [], 0)
    axis = int(layer.params.get("axis", 1)) % len(shapes[0])
    g.node("Softmax", ins, outs, layer.name, axis=axis)


def _concat(g, layer, ins, outs, shapes, blobs):
    _params(layer, blobs or [], 0)
    p = layer.params
    axis = int(p.get("axis", p.get("concat_dim", 1))) % len(shapes[0])
    g.node("Concat", ins, outs, layer.name, axis=axis)


_EMITTERS = {
    "Convolution": _convolution,
    "Pooling": _pooling,
    "LRN": _lrn,
    "InnerProduct": _inner_product,
    "ReLU": _relu,
    "Dropout": _dropout,
    "Softmax": _softmax,
    "Concat": _concat,
    "Deconvolution": _deconvolution,
    "BatchNorm": _batch_norm,
    "Scale": _scale,
    "Eltwise": _eltwise,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Sigmoid": _unary("Sigmoid"),
    "TanH": _unary("Tanh"),
    "AbsVal": _unary("Abs"),
    "Power": _power,
    "ELU": _elu,
    "PReLU": _prelu,
    "Slice": _slice,
    "Crop": _crop,
}


# --------------------------------------------------------------------------------------------
# The whole net
# --------------------------------------------------------------------------------------------
def _is_alias(layer) -> bool:
    """An in-place Dropout: the identity at test time, so the blob keeps its value."""
    return layer.type == "Dropout" and layer.tops == layer.bottoms


def _shares_memory(layer) -> bool:
    """Caffe layers whose top is a view of their bottom's memory (``top->ShareData(*bottom)``):
    Flatten, Reshape, a Concat of one bottom and a Slice into one top (as Caffe's own Split
    copies are)."""
    return (layer.type in ("Flatten", "Reshape")
            or (layer.type == "Concat" and len(layer.bottoms) == 1)
            or (layer.type == "Slice" and len(layer.tops) == 1))


def _writes(net: NetSpec) -> list:
    """Every write to a blob in forward order, as ``(layer index, key, blob)``.

    ``key`` is ``j`` when layer ``i`` writes its top ``j``, and ``(j, blob)`` when an in-place
    write of top ``j`` also rewrites ``blob`` because the two share memory in Caffe: a layer
    that works in place on a Flatten's top also changes the Flatten's bottom, which later
    readers then see (and so on through chains of such views).

    Raises
    ------
    UnsupportedLayer
        An in-place write that reaches a network input through a view, or an in-place layer
        that also reads a view of the blob it overwrites (Caffe then reads values it has
        already overwritten).
    """
    memory = {name: [name] for name in net.inputs}  # blob -> the blobs sharing its memory
    made_by = {}  # view blob -> the layer that made it a view
    writes = []
    for i, layer in enumerate(net.layers):
        if layer.type == "Input" or _is_alias(layer):
            continue
        for j, top in enumerate(layer.tops):
            writes.append((i, j, top))
            if not (j < len(layer.bottoms) and layer.bottoms[j] == top):  # not in place
                if _shares_memory(layer):
                    memory[top] = memory[layer.bottoms[0]]
                    memory[top].append(top)
                    made_by[top] = layer
                else:
                    memory[top] = [top]
                continue
            group = memory.get(top, [top])
            views = [b for b in group if b != top]
            how = ", ".join(f"{made_by[v].type} {made_by[v].name!r}" for v in group
                            if v in made_by)
            others = [b for k, b in enumerate(layer.bottoms) if k != j and b in views]
            if others:
                raise UnsupportedLayer(
                    f"layer {layer.name!r} ({layer.type}) works in place on {top!r} and also "
                    f"reads {others[0]!r}, which shares memory with {top!r} in Caffe (views made "
                    f"by {how}), so Caffe reads values it has already overwritten; not "
                    "supported")
            for view in views:
                if view in net.inputs:
                    raise UnsupportedLayer(
                        f"layer {layer.name!r} ({layer.type}) works in place on {top!r}, which "
                        f"shares memory with the network input {view!r} in Caffe (views made by "
                        f"{how}), so it overwrites the network input in place; not supported")
                writes.append((i, (j, view), view))
    return writes


def _plan_names(net: NetSpec, writes: list, g: _GraphBuilder) -> dict:
    """ONNX value name of each write of :func:`_writes`, keyed by ``(layer index, key)``: the
    Caffe blob name for the last write of a blob, a derived name for the writes a later
    in-place layer (or an in-place layer on a view of the blob) overwrites."""
    for name in list(net.inputs) + [w[2] for w in writes]:
        g.reserve(name)
    names = {}
    for pos, (i, key, blob) in enumerate(writes):
        if blob in net.inputs:
            raise UnsupportedLayer(f"layer {net.layers[i].name!r} overwrites the network input "
                                   f"{blob!r} in place; not supported")
        later = [w for w in writes[pos + 1:] if w[2] == blob]
        if later:
            names[(i, key)] = g.fresh(f"{blob}/before_{net.layers[later[0][0]].name}")
        else:
            names[(i, key)] = blob
    return names


def _select_outputs(net: NetSpec, outputs) -> list:
    available = net.blob_names
    if not available:
        raise CaffeFormatError("the net has no layers that produce blobs")
    if outputs is None:
        last = [layer for layer in net.layers if layer.type != "Input"][-1]
        return [last.tops[-1]]
    if isinstance(outputs, str):
        if outputs == "all":
            return available
        outputs = [o.strip() for o in outputs.split(",") if o.strip()]
    selected = []
    for name in outputs:
        if name not in available:
            raise InvalidArgument(f"unknown output blob {name!r}; available blobs: "
                                  f"{', '.join(available)}")
        if name not in selected:
            selected.append(name)
    if not selected:
        raise InvalidArgument("no output blobs selected; give 'all' or blob names")
    return selected


def _tensor_info(name: str, shape: tuple):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *shape[1:]])


def net_to_onnx(net: NetSpec, weights: dict, *, outputs=None, opset: int = MIN_OPSET
                ) -> onnx.ModelProto:
    """Build the ONNX model of ``net`` with parameter blobs ``weights`` (layer name → list of
    arrays, as :func:`preddiff.caffe.read_caffemodel` returns). See :func:`caffe_to_onnx`."""
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise InvalidArgument(f"opset must be an integer from {MIN_OPSET} to "
                              f"{onnx.defs.onnx_opset_version()}, got {opset!r}")
    shapes = layer_output_shapes(net, batch=1)
    selected = _select_outputs(net, outputs)
    g = _GraphBuilder()
    writes = _writes(net)
    names = _plan_names(net, writes, g)
    views = {}  # layer index -> [(top index, view blob)] it rewrites through shared memory
    for i, key, blob in writes:
        if isinstance(key, tuple):
            views.setdefault(i, []).append(key)
    current = {name: name for name in net.inputs}
    current_shape = {name: (1, *shape[1:]) for name, shape in net.inputs.items()}
    value_info = []
    for i, layer in enumerate(net.layers):
        if layer.type == "Input" or _is_alias(layer):
            continue
        emit = _EMITTERS.get(layer.type)
        if emit is None:
            raise unsupported(layer)
        outs = [names[(i, j)] for j in range(len(layer.tops))]
        with malformed_parameters(layer):
            emit(g, layer, [current[b] for b in layer.bottoms], outs,
                 [current_shape[b] for b in layer.bottoms], weights.get(layer.name))
        for top, out, shape in zip(layer.tops, outs, shapes[i]):
            current[top], current_shape[top] = out, shape
            if out not in selected:
                value_info.append(_tensor_info(out, shape))
        for j, view in views.get(i, []):  # Caffe's views of the rewritten memory
            out, shape = names[(i, (j, view))], current_shape[view]
            if shape == current_shape[layer.tops[j]]:
                g.node("Identity", [outs[j]], [out], f"{layer.name}/view_{view}")
            else:
                g.node("Reshape", [outs[j], g.ints(f"{view}/shape", [0, *shape[1:]])], [out],
                       f"{layer.name}/view_{view}")
            current[view] = out
            if out not in selected:
                value_info.append(_tensor_info(out, shape))
    graph = helper.make_graph(
        g.nodes,
        net.name or "caffe_net",
        [_tensor_info(name, shape) for name, shape in net.inputs.items()],
        [_tensor_info(name, current_shape[name]) for name in selected],
        initializer=g.initializers,
        value_info=value_info,
    )
    opset_id = helper.make_opsetid("", opset)
    model = helper.make_model(graph, opset_imports=[opset_id], producer_name="preddiff",
                              producer_version=__version__,
                              doc_string=f"Caffe net {net.name!r} converted by preddiff")
    model.ir_version = helper.find_min_ir_version_for([opset_id])
    return model
