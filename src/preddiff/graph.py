"""A NumPy interpreter of the converted ONNX graphs: forward pass and vector-Jacobian products.

Scope
-----
The Caffe→ONNX converter (:mod:`preddiff.caffe`) emits a small, fixed operator set: Conv,
MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, LRN, Flatten, Gemm, Relu, LeakyRelu,
Concat, Softmax, Identity, Pad (constant), and for the zoo's other layers ConvTranspose, Add,
Sub, Mul, Div, Pow, Max, Sigmoid, Tanh, Abs, Elu, PRelu, Reshape, MatMul, Slice; Dropout
(inference: identity) and Constant are accepted too. :class:`Graph` runs such a graph forward in NumPy and back-propagates a
cotangent from any blob to the input, which is all the sensitivity map of Simonyan et al.
(2013) needs (eq. (1) of Zintgraf et al.: ``s_i = ∂S_c/∂x_i``).

Why NumPy vector-Jacobian products rather than an ONNX gradient graph
---------------------------------------------------------------------
* No deep-learning framework: onnxruntime's training/gradient builders are a separate,
  platform-dependent package (``onnxruntime-training``), and a hand-built ONNX gradient graph
  would need ops (``MaxPoolGrad``, ``LRNGrad``, col2im) that are not standard ONNX operators.
  NumPy is already required.
* Exact control over each operator's semantics, in particular Caffe's ceil-rounded pooling as
  the converter encodes it (``ceil_mode`` with onnxruntime's rule that drops a last window
  starting in the end padding; AveragePool's divisor clipped to the padded input), and the
  routing of a MaxPool gradient on ties (see below), which an opaque engine leaves undefined.
* The graph is small in operator types (about fifteen), each backward pass is a few lines,
  and each is tested against central finite differences in float64 and its forward against
  onnxruntime — so the code stays auditable, which matters for a reference implementation.
* The backward consumes the forward's own cache of blobs; a separate gradient model would
  be a second copy of the converted network and its weights to build, store and keep in
  sync with the converter.

Conventions
-----------
Blobs keep their ONNX (= Caffe) names; the graph input is a 4-D array ``(N, C, H, W)``.
Convolutions use im2col (a strided view copied once per sample) and one BLAS matrix product
per group; their backward is the transposed product and a col2im scatter, one vectorised add
per kernel tap. Pooling runs tap by tap over strided planes of the padded input. A full-size
VGG16 forward plus backward takes a few seconds on two CPU cores.
MaxPool ties: the gradient of a window goes entirely to the *first* maximal element in
row-major order within the window (as ``numpy.argmax`` picks), which is Caffe's rule (strict ``>``
while scanning rows then columns); GlobalMaxPool does the same over the whole map.
ReLU's derivative at 0 is 0 and LeakyReLU's is its slope, also as in Caffe.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Callable

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from .errors import InvalidArgument

__all__ = ["Graph", "SUPPORTED_OPS"]


# --------------------------------------------------------------------------------------------
# Nodes and attribute handling
# --------------------------------------------------------------------------------------------
class _Node:
    """One ONNX node with its attributes decoded and the ONNX opset it follows."""

    def __init__(self, proto: onnx.NodeProto, index: int, opset: int):
        self.name = proto.name or f"{proto.op_type}_{index}"
        self.op_type = proto.op_type
        self.inputs = list(proto.input)
        self.outputs = list(proto.output)
        self.opset = opset
        self.attrs = {a.name: onnx.helper.get_attribute_value(a) for a in proto.attribute}

    def attr(self, name, default=None):
        value = self.attrs.get(name, default)
        if isinstance(value, bytes):
            value = value.decode()
        return value

    def bad(self, message: str) -> InvalidArgument:
        return InvalidArgument(f"node {self.name!r} ({self.op_type}): {message}")


def _spatial(node: _Node, x: np.ndarray, kernel: tuple[int, ...]):
    """Strides, dilations and (begin, end) pads of a Conv or pooling node for input ``x``."""
    nd = len(kernel)
    strides = tuple(node.attr("strides", [1] * nd))
    dilations = tuple(node.attr("dilations", [1] * nd))
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad == "VALID":
        pads = [0] * (2 * nd)
    elif auto_pad in ("NOTSET", ""):
        pads = list(node.attr("pads", [0] * (2 * nd)))
    else:
        raise node.bad(f"auto_pad={auto_pad!r} is not supported (only NOTSET and VALID)")
    if len(pads) != 2 * nd or len(strides) != nd or len(dilations) != nd:
        raise node.bad(f"pads/strides/dilations do not match the {nd}-D kernel")
    if x.ndim != nd + 2:
        raise node.bad(f"expects a {nd + 2}-D input, got shape {x.shape}")
    return strides, dilations, pads[:nd], pads[nd:]


def _out_size(size, k, s, d, pb, pe, ceil_mode=False):
    """Output length of a convolution/pooling axis, with onnxruntime's ceil_mode rule.

    With ``ceil_mode`` the division is rounded up, and a last window that would start at or
    beyond ``size + pb`` (inside the end padding) is dropped — the rule onnxruntime applies and
    Caffe's pooling shares.
    """
    span = size + pb + pe - (d * (k - 1) + 1)
    if span < 0:
        return 0
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    if (out - 1) * s >= size + pb:
        out -= 1
    return out


def _pad_widths(shape, begin, end, out, k, s, d):
    """Spatial (begin, end) pads so every window of the ``out`` outputs fits: the declared pads
    plus, in ceil_mode, the overhang of the last window beyond the end padding."""
    widths = []
    for n, b, e, o, kk, ss, dd in zip(shape[2:], begin, end, out, k, s, d):
        reach = (o - 1) * ss + dd * (kk - 1) + 1  # padded length the windows reach
        widths.append((b, e + max(0, reach - (n + b + e))))
    return widths


def _padded_shape(shape, begin, end, out, k, s, d):
    widths = _pad_widths(shape, begin, end, out, k, s, d)
    return tuple(shape[:2]) + tuple(n + b + e for n, (b, e) in zip(shape[2:], widths))


def _pad_to(x: np.ndarray, begin, end, out, k, s, d, value):
    """``x`` padded with ``value`` so every window of the ``out`` outputs fits."""
    widths = _pad_widths(x.shape, begin, end, out, k, s, d)
    if not any(b or e for b, e in widths):
        return x
    return np.pad(x, [(0, 0), (0, 0)] + widths, mode="constant", constant_values=value)


def _windows(xp: np.ndarray, k, s, d, out) -> np.ndarray:
    """Strided view of the windows: ``(N, C, *out, *k)`` (no copy)."""
    nd = len(k)
    span = tuple(dd * (kk - 1) + 1 for kk, dd in zip(k, d))
    v = sliding_window_view(xp, span, axis=tuple(range(2, 2 + nd)))
    index = (slice(None), slice(None))
    index += tuple(slice(0, (o - 1) * ss + 1, ss) for o, ss in zip(out, s))
    index += tuple(slice(None, None, dd) for dd in d)
    return v[index]


def _tap_slice(offsets, s, d, out):
    """Index into the padded input of kernel tap ``offsets`` for all outputs."""
    return (slice(None), slice(None)) + tuple(
        slice(o * dd, o * dd + (n - 1) * ss + 1, ss) for o, ss, dd, n in zip(offsets, s, d, out)
    )


def _crop(xp: np.ndarray, begin, shape) -> np.ndarray:
    return xp[(slice(None), slice(None)) + tuple(slice(b, b + n) for b, n in zip(begin, shape))]


def _unbroadcast(g: np.ndarray, shape) -> np.ndarray:
    """Sum ``g`` down to ``shape`` (the inverse of NumPy broadcasting)."""
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    for ax, n in enumerate(shape):
        if n == 1 and g.shape[ax] != 1:
            g = g.sum(axis=ax, keepdims=True)
    return g


# --------------------------------------------------------------------------------------------
# Operators: forward(node, *inputs) -> output;  backward(node, inputs, output, dy, needs) ->
# list of input cotangents (None where not needed).
# --------------------------------------------------------------------------------------------
_FORWARD: dict[str, Callable] = {}
_BACKWARD: dict[str, Callable] = {}


def _register(op_type: str, forward: Callable, backward: Callable) -> None:
    _FORWARD[op_type] = forward
    _BACKWARD[op_type] = backward


# Identity, Dropout (inference), Flatten --------------------------------------------------------
def _identity(node, x, *rest):
    return x


def _identity_bwd(node, xs, y, dy, needs):
    return [dy] + [None] * (len(xs) - 1)


_register("Identity", _identity, _identity_bwd)
_register("Dropout", _identity, _identity_bwd)


def _flatten(node, x):
    axis = node.attr("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)


def _flatten_bwd(node, xs, y, dy, needs):
    return [dy.reshape(xs[0].shape)]


_register("Flatten", _flatten, _flatten_bwd)


# Relu, LeakyRelu ----------------------------------------------------------------------------
def _relu(node, x):
    return np.maximum(x, 0)


def _relu_bwd(node, xs, y, dy, needs):
    return [np.where(xs[0] > 0, dy, 0).astype(dy.dtype, copy=False)]


def _leaky(node, x):
    alpha = x.dtype.type(node.attr("alpha", 0.01))
    return np.where(x > 0, x, alpha * x)


def _leaky_bwd(node, xs, y, dy, needs):
    alpha = dy.dtype.type(node.attr("alpha", 0.01))
    return [np.where(xs[0] > 0, dy, alpha * dy)]


_register("Relu", _relu, _relu_bwd)
_register("LeakyRelu", _leaky, _leaky_bwd)


# Softmax ------------------------------------------------------------------------------------
def _softmax_2d(node, x):
    """Softmax's view of ``x``: opset < 13 coerces to 2-D at ``axis`` (default 1)."""
    if node.opset >= 13:
        return x, node.attr("axis", -1)
    axis = node.attr("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1), 1


def _softmax(node, x):
    v, axis = _softmax_2d(node, x)
    e = np.exp(v - v.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).reshape(x.shape)


def _softmax_bwd(node, xs, y, dy, needs):
    yv, axis = _softmax_2d(node, y)
    dv = dy.reshape(yv.shape)
    return [(yv * (dv - (dv * yv).sum(axis=axis, keepdims=True))).reshape(y.shape)]


_register("Softmax", _softmax, _softmax_bwd)


# Concat -------------------------------------------------------------------------------------
def _concat(node, *xs):
    return np.concatenate(xs, axis=node.attr("axis"))


def _concat_bwd(node, xs, y, dy, needs):
    axis = node.attr("axis")
    bounds = np.cumsum([x.shape[axis] for x in xs])[:-1]
    return np.split(dy, bounds, axis=axis)


_register("Concat", _concat, _concat_bwd)


# Gemm ---------------------------------------------------------------------------------------
def _gemm_operands(node, a, b):
    a2 = a.T if node.attr("transA", 0) else a
    b2 = b.T if node.attr("transB", 0) else b
    return a2, b2


def _gemm(node, a, b, c=None):
    a2, b2 = _gemm_operands(node, a, b)
    y = a2 @ b2
    alpha = node.attr("alpha", 1.0)
    if alpha != 1.0:
        y *= y.dtype.type(alpha)
    if c is not None:
        y += y.dtype.type(node.attr("beta", 1.0)) * c
    return y


def _gemm_bwd(node, xs, y, dy, needs):
    a, b = xs[0], xs[1]
    a2, b2 = _gemm_operands(node, a, b)
    alpha = dy.dtype.type(node.attr("alpha", 1.0))
    grads = [None] * len(xs)
    if needs[0]:
        da2 = alpha * (dy @ b2.T)
        grads[0] = da2.T if node.attr("transA", 0) else da2
    if needs[1]:
        db2 = alpha * (a2.T @ dy)
        grads[1] = db2.T if node.attr("transB", 0) else db2
    if len(xs) > 2 and needs[2]:
        grads[2] = dy.dtype.type(node.attr("beta", 1.0)) * _unbroadcast(dy, xs[2].shape)
    return grads


_register("Gemm", _gemm, _gemm_bwd)


# Pad ----------------------------------------------------------------------------------------
def _pad_spec(node, x, pads=None, value=None, axes=None):
    """Per-axis (begin, end) pads (negative = crop) and the constant value."""
    if node.opset < 11:
        pads = node.attr("pads")
        value = node.attr("value", 0.0)
    mode = node.attr("mode", "constant")
    if mode != "constant":
        raise node.bad(f"mode={mode!r} is not supported (only 'constant')")
    pads = [int(p) for p in np.asarray(pads).ravel()]
    value = float(np.asarray(value).ravel()[0]) if value is not None and np.size(value) else 0.0
    if axes is None:
        axes = list(range(x.ndim))
    else:
        axes = [int(a) + x.ndim if int(a) < 0 else int(a) for a in np.asarray(axes).ravel()]
    if len(pads) != 2 * len(axes):
        raise node.bad(f"{len(pads)} pads for {len(axes)} axes")
    widths = [(0, 0)] * x.ndim
    for i, ax in enumerate(axes):
        widths[ax] = (pads[i], pads[i + len(axes)])
    return widths, value


def _pad(node, x, pads=None, value=None, axes=None):
    widths, value = _pad_spec(node, x, pads, value, axes)
    grow = [(max(b, 0), max(e, 0)) for b, e in widths]
    y = np.pad(x, grow, mode="constant", constant_values=value) if any(map(any, grow)) else x
    cut = tuple(slice(max(-b, 0), y.shape[i] - max(-e, 0)) for i, (b, e) in enumerate(widths))
    return y[cut]


def _pad_bwd(node, xs, y, dy, needs):
    widths, _ = _pad_spec(node, *xs)
    # Undo the crop (cropped values get zero gradient), then undo the padding.
    crop = [(max(-b, 0), max(-e, 0)) for b, e in widths]
    g = np.pad(dy, crop, mode="constant") if any(map(any, crop)) else dy
    cut = tuple(slice(max(b, 0), g.shape[i] - max(e, 0)) for i, (b, e) in enumerate(widths))
    return [g[cut]] + [None] * (len(xs) - 1)


_register("Pad", _pad, _pad_bwd)


# Conv ---------------------------------------------------------------------------------------
def _conv_geometry(node, x, w):
    k = tuple(w.shape[2:])
    s, d, pb, pe = _spatial(node, x, k)
    group = node.attr("group", 1)
    n, c = x.shape[:2]
    if c != w.shape[1] * group or w.shape[0] % group:
        raise node.bad(f"input channels {c} and weight {w.shape} do not fit group={group}")
    out = tuple(_out_size(x.shape[2 + i], k[i], s[i], d[i], pb[i], pe[i]) for i in range(len(k)))
    if min(out) <= 0:
        raise node.bad(f"input {x.shape} is smaller than the kernel {k}")
    return k, s, d, pb, pe, group, out


def _is_pointwise(k, s, pb, pe):
    return all(v == 1 for v in k + s) and not any(pb) and not any(pe)


def _conv(node, x, w, b=None):
    k, s, d, pb, pe, group, out = _conv_geometry(node, x, w)
    n, c = x.shape[:2]
    m = w.shape[0]
    kk = int(np.prod(k))
    wg = w.reshape(group, m // group, -1)  # (g, M/g, C/g·k)
    y = np.empty((n, m) + out, dtype=x.dtype)
    if _is_pointwise(k, s, pb, pe):
        for i in range(n):
            y[i] = np.matmul(wg, x[i].reshape(group, c // group, -1)).reshape((m,) + out)
    else:
        xp = _pad_to(x, pb, pe, out, k, s, d, 0)
        view = _windows(xp, k, s, d, out)  # (N, C, *out, *k)
        nd = len(k)
        order = (0,) + tuple(range(1 + nd, 1 + 2 * nd)) + tuple(range(1, 1 + nd))
        for i in range(n):
            # im2col: (C, *k, *out) copied contiguously, one BLAS product per group.
            cols = np.ascontiguousarray(view[i].transpose(order))
            cols = cols.reshape(group, c // group * kk, -1)
            y[i] = np.matmul(wg, cols).reshape((m,) + out)
    if b is not None:
        y += b.reshape((1, m) + (1,) * len(k))
    return y


def _conv_bwd(node, xs, y, dy, needs):
    x, w = xs[0], xs[1]
    k, s, d, pb, pe, group, out = _conv_geometry(node, x, w)
    n, c = x.shape[:2]
    m = w.shape[0]
    wt = w.reshape(group, m // group, -1).transpose(0, 2, 1)  # (g, C/g·k, M/g)
    dx = np.empty_like(x)
    pointwise = _is_pointwise(k, s, pb, pe)
    padded = _padded_shape((1,) + x.shape[1:], pb, pe, out, k, s, d)
    for i in range(n):
        dcols = np.matmul(wt, dy[i].reshape(group, m // group, -1))  # (g, C/g·k, prod(out))
        if pointwise:
            dx[i] = dcols.reshape(x.shape[1:])
            continue
        dcols = dcols.reshape((c,) + k + out)
        dxp = np.zeros(padded, dtype=x.dtype)
        for tap in np.ndindex(*k):  # col2im: scatter-add each kernel tap's plane
            dxp[_tap_slice(tap, s, d, out)] += dcols[(slice(None),) + tap]
        dx[i] = _crop(dxp, pb, x.shape[2:])[0]
    return [dx] + [None] * (len(xs) - 1)


_register("Conv", _conv, _conv_bwd)


# MaxPool / AveragePool ----------------------------------------------------------------------
def _pool_geometry(node, x):
    k = tuple(node.attr("kernel_shape"))
    s, d, pb, pe = _spatial(node, x, k)
    ceil = bool(node.attr("ceil_mode", 0))
    out = tuple(_out_size(x.shape[2 + i], k[i], s[i], d[i], pb[i], pe[i], ceil)
                for i in range(len(k)))
    if min(out) <= 0:
        raise node.bad(f"input {x.shape} is smaller than the kernel {k}")
    return k, s, d, pb, pe, out


def _maxpool_scan(node, x):
    """Maximum over each window, taken tap by tap over strided planes of the padded input
    (one vectorised ``maximum`` per kernel tap). Returns it, the padded input and geometry."""
    k, s, d, pb, pe, out = _pool_geometry(node, x)
    xp = _pad_to(x, pb, pe, out, k, s, d, -np.inf)
    taps = np.ndindex(*k)
    best = xp[_tap_slice(next(taps), s, d, out)].copy()
    for tap in taps:
        np.maximum(best, xp[_tap_slice(tap, s, d, out)], out=best)
    return best, xp, (k, s, d, pb, pe, out)


def _maxpool(node, x):
    if len(node.outputs) > 1 and node.outputs[1]:
        raise node.bad("the Indices output is not supported")
    return _maxpool_scan(node, x)[0]


def _maxpool_bwd(node, xs, y, dy, needs):
    x = xs[0]
    best, xp, (k, s, d, pb, pe, out) = _maxpool_scan(node, x)
    dxp = np.zeros(xp.shape, dtype=dy.dtype)
    taken = np.zeros(best.shape, dtype=bool)
    for tap in np.ndindex(*k):  # row-major: the first tap equal to the maximum takes it all
        hit = xp[_tap_slice(tap, s, d, out)] == best
        hit &= ~taken
        taken |= hit
        dxp[_tap_slice(tap, s, d, out)] += dy * hit
    return [_crop(dxp, pb, x.shape[2:])]


def _avg_divisor(node, x, k, s, d, pb, pe, out, dtype):
    """Per-output divisor, ``(*out,)``: the taps inside the padded input (count_include_pad)
    or inside the input; taps in the ceil_mode overhang never count (onnxruntime)."""
    include = bool(node.attr("count_include_pad", 0))
    div = np.ones((), dtype=dtype)
    for i in range(len(k)):
        n = x.shape[2 + i]
        start = np.arange(out[i])[:, None] * s[i] + np.arange(k[i])[None, :] * d[i]
        lo, hi = (0, n + pb[i] + pe[i]) if include else (pb[i], pb[i] + n)
        cnt = ((start >= lo) & (start < hi)).sum(axis=1).astype(dtype)
        div = np.multiply.outer(div, cnt)
    return div


def _avgpool(node, x):
    k, s, d, pb, pe, out = _pool_geometry(node, x)
    xp = _pad_to(x, pb, pe, out, k, s, d, 0)
    total = np.zeros(x.shape[:2] + out, dtype=x.dtype)
    for tap in np.ndindex(*k):
        total += xp[_tap_slice(tap, s, d, out)]
    return total / _avg_divisor(node, x, k, s, d, pb, pe, out, x.dtype)


def _avgpool_bwd(node, xs, y, dy, needs):
    x = xs[0]
    k, s, d, pb, pe, out = _pool_geometry(node, x)
    share = dy / _avg_divisor(node, x, k, s, d, pb, pe, out, dy.dtype)
    dxp = np.zeros(_padded_shape(x.shape, pb, pe, out, k, s, d), dtype=dy.dtype)
    for tap in np.ndindex(*k):  # taps in padding or overhang land outside the crop
        dxp[_tap_slice(tap, s, d, out)] += share
    return [_crop(dxp, pb, x.shape[2:])]


_register("MaxPool", _maxpool, _maxpool_bwd)
_register("AveragePool", _avgpool, _avgpool_bwd)


# Global pooling -----------------------------------------------------------------------------
def _gap(node, x):
    return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)


def _gap_bwd(node, xs, y, dy, needs):
    x = xs[0]
    count = int(np.prod(x.shape[2:]))
    return [np.broadcast_to(dy / dy.dtype.type(count), x.shape).copy()]


def _gmp(node, x):
    return x.max(axis=tuple(range(2, x.ndim)), keepdims=True)


def _gmp_bwd(node, xs, y, dy, needs):
    x = xs[0]
    flat = x.reshape(x.shape[:2] + (-1,))
    arg = flat.argmax(axis=-1)  # first maximum (row-major), as MaxPool
    dx = np.zeros(flat.shape, dtype=dy.dtype)
    np.put_along_axis(dx, arg[..., None], dy.reshape(dy.shape[:2] + (1,)), axis=-1)
    return [dx.reshape(x.shape)]


_register("GlobalAveragePool", _gap, _gap_bwd)
_register("GlobalMaxPool", _gmp, _gmp_bwd)


# LRN ----------------------------------------------------------------------------------------
def _channel_window_sum(v: np.ndarray, before: int, after: int) -> np.ndarray:
    """``out[:, c] = Σ v[:, c-before .. c+after]`` (clipped to the channels), summed directly."""
    c = v.shape[1]
    vp = np.pad(v, [(0, 0), (before, after)] + [(0, 0)] * (v.ndim - 2))
    out = vp[:, 0:c].copy()
    for t in range(1, before + after + 1):
        out += vp[:, t:t + c]
    return out


def _lrn_scale(node, x):
    """``s = bias + alpha/size · Σ_window x²`` over the ONNX channel window
    ``[c - floor((size-1)/2), c + ceil((size-1)/2)]``."""
    size = int(node.attr("size"))
    lo = (size - 1) // 2
    hi = size - 1 - lo
    alpha = node.attr("alpha", 1e-4)
    bias = node.attr("bias", 1.0)
    t = x.dtype.type
    return t(bias) + t(alpha / size) * _channel_window_sum(x * x, lo, hi), lo, hi


def _lrn(node, x):
    scale, _, _ = _lrn_scale(node, x)
    return x * scale ** x.dtype.type(-node.attr("beta", 0.75))


def _lrn_bwd(node, xs, y, dy, needs):
    # y_c = x_c s_c^-β,  s_c = bias + α/n Σ_{j∈win(c)} x_j²  ⇒
    # dx_j = dy_j s_j^-β − (2αβ/n) x_j Σ_{c: j∈win(c)} dy_c y_c / s_c
    x = xs[0]
    t = dy.dtype.type
    size = int(node.attr("size"))
    alpha, beta = node.attr("alpha", 1e-4), node.attr("beta", 0.75)
    scale, lo, hi = _lrn_scale(node, x)
    back = _channel_window_sum(dy * y / scale, hi, lo)  # transposed window
    return [dy * scale ** t(-beta) - t(2 * alpha * beta / size) * x * back]


_register("LRN", _lrn, _lrn_bwd)


# Elementwise arithmetic with broadcasting: Add, Sub, Mul, Div, Pow (constant exponent) ------
def _add(node, a, b):
    return a + b


def _add_bwd(node, xs, y, dy, needs):
    return [_unbroadcast(dy, x.shape) if need else None for x, need in zip(xs, needs)]


def _sub(node, a, b):
    return a - b


def _sub_bwd(node, xs, y, dy, needs):
    a, b = xs
    return [_unbroadcast(dy, a.shape) if needs[0] else None,
            _unbroadcast(-dy, b.shape) if needs[1] else None]


def _mul(node, a, b):
    return a * b


def _mul_bwd(node, xs, y, dy, needs):
    a, b = xs
    return [_unbroadcast(dy * b, a.shape) if needs[0] else None,
            _unbroadcast(dy * a, b.shape) if needs[1] else None]


def _div(node, a, b):
    return a / b


def _div_bwd(node, xs, y, dy, needs):
    a, b = xs
    return [_unbroadcast(dy / b, a.shape) if needs[0] else None,
            _unbroadcast(-dy * a / (b * b), b.shape) if needs[1] else None]


def _pow(node, a, b):
    return np.power(a, b.astype(a.dtype, copy=False))


def _pow_bwd(node, xs, y, dy, needs):
    a, b = xs
    if needs[1]:
        raise node.bad("the gradient with respect to the exponent is not supported")
    b = b.astype(dy.dtype, copy=False)
    return [_unbroadcast(dy * b * np.power(a, b - 1), a.shape), None]


_register("Add", _add, _add_bwd)
_register("Sub", _sub, _sub_bwd)
_register("Mul", _mul, _mul_bwd)
_register("Div", _div, _div_bwd)
_register("Pow", _pow, _pow_bwd)


# Max (variadic), with Caffe's Eltwise MAX routing of the gradient ---------------------------
def _max(node, *xs):
    y = xs[0]
    for x in xs[1:]:
        y = np.maximum(y, x)
    return y


def _max_owner(xs, shape) -> np.ndarray:
    """Index of the input that Caffe's EltwiseLayer (MAX) records as the maximum: ``a > b ?
    0 : 1`` for the first two inputs (a tie goes to input 1), then input ``i`` only where it
    is strictly greater than the running maximum."""
    a, b = (np.broadcast_to(x, shape) for x in xs[:2])
    owner = np.where(a > b, 0, 1)
    best = np.where(a > b, a, b)
    for i, x in enumerate(xs[2:], start=2):
        x = np.broadcast_to(x, shape)
        owner = np.where(x > best, i, owner)
        best = np.where(x > best, x, best)
    return owner


def _max_bwd(node, xs, y, dy, needs):
    if len(xs) == 1:
        return [dy]
    owner = _max_owner(xs, y.shape)
    return [_unbroadcast(np.where(owner == i, dy, 0).astype(dy.dtype), x.shape) if need
            else None for i, (x, need) in enumerate(zip(xs, needs))]


_register("Max", _max, _max_bwd)


# Unary activations: Sigmoid, Tanh, Abs, Elu, PRelu --------------------------------------------
def _sigmoid(node, x):
    return 1 / (1 + np.exp(-x))


def _sigmoid_bwd(node, xs, y, dy, needs):
    return [dy * y * (1 - y)]


def _tanh(node, x):
    return np.tanh(x)


def _tanh_bwd(node, xs, y, dy, needs):
    return [dy * (1 - y * y)]


def _abs(node, x):
    return np.abs(x)


def _abs_bwd(node, xs, y, dy, needs):
    return [dy * np.sign(xs[0]).astype(dy.dtype)]  # 0 at 0, as Caffe's AbsVal


def _elu(node, x):
    alpha = x.dtype.type(node.attr("alpha", 1.0))
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


def _elu_bwd(node, xs, y, dy, needs):
    alpha = dy.dtype.type(node.attr("alpha", 1.0))
    return [np.where(xs[0] > 0, dy, dy * alpha * np.exp(np.minimum(xs[0], 0)))]


def _prelu(node, x, slope):
    return np.where(x > 0, x, slope * x)


def _prelu_bwd(node, xs, y, dy, needs):
    x, slope = xs
    dx = np.where(x > 0, dy, slope * dy) if needs[0] else None
    dslope = _unbroadcast(np.where(x > 0, 0, dy * x), slope.shape) if needs[1] else None
    return [dx, dslope]


_register("Sigmoid", _sigmoid, _sigmoid_bwd)
_register("Tanh", _tanh, _tanh_bwd)
_register("Abs", _abs, _abs_bwd)
_register("Elu", _elu, _elu_bwd)
_register("PRelu", _prelu, _prelu_bwd)


# Reshape, MatMul, Slice ---------------------------------------------------------------------
def _reshape(node, x, shape):
    shape = [int(v) for v in np.asarray(shape).ravel()]
    if node.attr("allowzero", 0):
        raise node.bad("allowzero=1 is not supported")
    shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
    return x.reshape(shape)


def _reshape_bwd(node, xs, y, dy, needs):
    return [dy.reshape(xs[0].shape), None]


def _matmul(node, a, b):
    return np.matmul(a, b)


def _matmul_bwd(node, xs, y, dy, needs):
    a, b = xs
    if a.ndim < 2 or b.ndim != 2:
        raise node.bad("only an (..., K) x (K, N) product is supported")
    return [dy @ b.T if needs[0] else None,
            _unbroadcast(np.swapaxes(a, -1, -2) @ dy, b.shape) if needs[1] else None]


def _slice_index(node, x, starts, ends, axes=None, steps=None):
    starts, ends = np.asarray(starts).ravel(), np.asarray(ends).ravel()
    axes = range(len(starts)) if axes is None else np.asarray(axes).ravel()
    steps = [1] * len(starts) if steps is None else np.asarray(steps).ravel()
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if int(step) != 1:
            raise node.bad("only steps of 1 are supported")
        axis = int(axis) + x.ndim if int(axis) < 0 else int(axis)
        index[axis] = slice(*slice(int(start), int(end)).indices(x.shape[axis])[:2])
    return tuple(index)


def _slice(node, x, *args):
    return x[_slice_index(node, x, *args)]


def _slice_bwd(node, xs, y, dy, needs):
    dx = np.zeros(xs[0].shape, dtype=dy.dtype)
    dx[_slice_index(node, *xs)] = dy
    return [dx] + [None] * (len(xs) - 1)


_register("Reshape", _reshape, _reshape_bwd)
_register("MatMul", _matmul, _matmul_bwd)
_register("Slice", _slice, _slice_bwd)


# ConvTranspose: the transpose of Conv, i.e. Conv's input VJP --------------------------------
def _conv_transpose_setup(node, x, w):
    """The Conv node whose input gradient is this ConvTranspose, and that Conv's input shape."""
    k = tuple(w.shape[2:])
    s, d, pb, pe = _spatial(node, x, k)
    if any(node.attr("output_padding", [0] * len(k))) or node.attr("output_shape"):
        raise node.bad("output_padding and output_shape are not supported")
    group = node.attr("group", 1)
    out = tuple((n - 1) * ss + dd * (kk - 1) + 1 - b - e
                for n, kk, ss, dd, b, e in zip(x.shape[2:], k, s, d, pb, pe))
    conv = _Node(onnx.helper.make_node("Conv", ["y", "w"], ["x"], name=node.name,
                                       kernel_shape=list(k), strides=list(s),
                                       dilations=list(d), pads=list(pb) + list(pe),
                                       group=group), 0, node.opset)
    return conv, (x.shape[0], w.shape[1] * group) + out


def _conv_transpose(node, x, w, b=None):
    conv, shape = _conv_transpose_setup(node, x, w)
    y = _conv_bwd(conv, [np.empty(shape, dtype=x.dtype), w], x, x, [True, False])[0]
    if b is not None:
        y += b.reshape((1, -1) + (1,) * (y.ndim - 2))
    return y


def _conv_transpose_bwd(node, xs, y, dy, needs):
    conv, _ = _conv_transpose_setup(node, xs[0], xs[1])
    return [_conv(conv, dy, xs[1])] + [None] * (len(xs) - 1)


_register("ConvTranspose", _conv_transpose, _conv_transpose_bwd)


SUPPORTED_OPS = tuple(sorted(_FORWARD)) + ("Constant",)


# --------------------------------------------------------------------------------------------
# The graph
# --------------------------------------------------------------------------------------------
def _constant_value(node: _Node) -> np.ndarray:
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in node.attrs:
            value = node.attrs[key]
            return numpy_helper.to_array(value) if key == "value" else np.asarray(value)
    raise node.bad("only the value/value_float(s)/value_int(s) attributes are supported")


class Graph:
    """NumPy forward pass and vector-Jacobian products of a converted ONNX graph.

    Parameters
    ----------
    model : onnx.ModelProto or str or os.PathLike
        The model or the path of an ``.onnx`` file. Its single non-initializer input is the
        image batch ``(N, C, H, W)``; every weight is an initializer.
    dtype : numpy dtype, default float32
        Precision of all computations (float64 for finite-difference tests).

    Attributes
    ----------
    input_name : str
        Name of the graph input (``"data"`` for converted Caffe nets).
    input_shape : tuple of (int or None)
        Its declared shape; None where symbolic.
    output_names : list of str
        The graph outputs.
    blobs : list of str
        Every blob the nodes produce, in topological order.

    Raises
    ------
    InvalidArgument
        A node uses an operator outside :data:`SUPPORTED_OPS` (the message names the operator
        and the node), or the graph has no or several data inputs.

    Examples
    --------
    >>> g = Graph("alexnet.onnx")                                   # doctest: +SKIP
    >>> cache = g.forward(x, keep="fc8", trace=True)                # doctest: +SKIP
    >>> seed = np.zeros_like(cache["fc8"]); seed[0, 281] = 1.0      # doctest: +SKIP
    >>> grad = g.vjp(cache, {"fc8": seed})          # ∂fc8[281]/∂x  # doctest: +SKIP
    """

    def __init__(self, model, dtype=np.float32):
        if isinstance(model, (str, os.PathLike)):
            try:
                model = onnx.load(os.fspath(model))
            except (OSError, ValueError, DecodeError) as exc:
                raise InvalidArgument(
                    f"cannot read ONNX model {os.fspath(model)!r}: {exc}") from exc
        if not isinstance(model, onnx.ModelProto):
            raise InvalidArgument(
                f"model must be an onnx.ModelProto or a path, got {type(model).__name__}")
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise InvalidArgument(f"dtype must be a floating-point type, got {self.dtype}")
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        graph = model.graph
        self.consts: dict[str, np.ndarray] = {}
        for init in graph.initializer:
            self.consts[init.name] = self._cast(numpy_helper.to_array(init))
        data_inputs = [v for v in graph.input if v.name not in self.consts]
        if len(data_inputs) != 1:
            raise InvalidArgument(
                f"the graph must have exactly one data input, got {[v.name for v in data_inputs]}")
        self.input_name = data_inputs[0].name
        dims = data_inputs[0].type.tensor_type.shape.dim
        self.input_shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
        self.output_names = [v.name for v in graph.output]

        nodes = []
        for i, proto in enumerate(graph.node):
            node = _Node(proto, i, opset)
            if proto.domain not in ("", "ai.onnx") or (
                    node.op_type not in _FORWARD and node.op_type != "Constant"):
                raise InvalidArgument(
                    f"operator {node.op_type!r} (domain {proto.domain or 'ai.onnx'!r}) of node "
                    f"{node.name!r} is not supported; supported: {', '.join(SUPPORTED_OPS)}")
            if node.op_type == "Constant":
                self.consts[node.outputs[0]] = self._cast(_constant_value(node))
            else:
                nodes.append(node)
        self.nodes = self._toposort(nodes)
        self.producer = {out: node for node in self.nodes for out in node.outputs if out}
        self.blobs = [node.outputs[0] for node in self.nodes]
        # Blobs whose value depends on the input: the only ones a cotangent flows through.
        self._on_input_path = {self.input_name}
        for node in self.nodes:
            if any(i in self._on_input_path for i in node.inputs):
                self._on_input_path.update(o for o in node.outputs if o)

    # ---- construction helpers ------------------------------------------------------------
    def _cast(self, a: np.ndarray) -> np.ndarray:
        return a.astype(self.dtype) if a.dtype.kind == "f" else a

    def _toposort(self, nodes: list[_Node]) -> list[_Node]:
        """Order the nodes so each runs after the producers of its inputs (stable)."""
        available = set(self.consts) | {self.input_name, ""}
        pending, ordered = list(nodes), []
        while pending:
            ready = [n for n in pending if all(i in available for i in n.inputs)]
            if not ready:
                missing = sorted({i for n in pending for i in n.inputs if i not in available})
                raise InvalidArgument(f"the graph has a cycle or undefined blobs: {missing[:5]}")
            for n in ready:
                ordered.append(n)
                available.update(n.outputs)
            pending = [n for n in pending if n not in ready]
        return ordered

    def _needed_nodes(self, blobs: Iterable[str]) -> list[_Node]:
        """The nodes needed to compute ``blobs``, in topological order."""
        needed, stack = set(), list(blobs)
        while stack:
            blob = stack.pop()
            node = self.producer.get(blob)
            if node is not None and id(node) not in needed:
                needed.add(id(node))
                stack.extend(node.inputs)
        return [n for n in self.nodes if id(n) in needed]

    def _check_blob(self, blob: str) -> str:
        if blob != self.input_name and blob not in self.producer:
            raise InvalidArgument(
                f"unknown blob {blob!r}; the graph's blobs are {self.input_name!r}, "
                f"{', '.join(map(repr, self.blobs))}")
        return blob

    def softmax_input(self) -> str | None:
        """Name of the blob fed to the last Softmax (a classifier's pre-softmax scores), or
        None when the graph has no Softmax."""
        for node in reversed(self.nodes):
            if node.op_type == "Softmax":
                return node.inputs[0]
        return None

    # ---- forward ---------------------------------------------------------------------------
    def forward(self, x, keep=None, *, trace: bool = False) -> dict[str, np.ndarray]:
        """Run the graph up to the requested blobs.

        Parameters
        ----------
        x : array_like, shape (N, C, H, W)
            Input batch, cast to the graph's dtype.
        keep : str or iterable of str, optional
            Blobs to return; default the graph outputs. Only the nodes these blobs depend on
            are run (the forward stops at the last of them).
        trace : bool, default False
            Also return every intermediate blob computed (plus the input): the cache
            :meth:`vjp` needs. Without it, intermediates are freed as soon as their last
            consumer has run.

        Returns
        -------
        dict of str to ndarray
            The kept blobs (all computed blobs when ``trace``), each ``(N, ...)``.
        """
        if keep is None:
            keep = self.output_names
        keep = [keep] if isinstance(keep, str) else list(keep)
        for blob in keep:
            self._check_blob(blob)
        x = np.asarray(x)
        if x.ndim != len(self.input_shape) and self.input_shape:
            raise InvalidArgument(
                f"input must have {len(self.input_shape)} dimensions {self.input_shape}, "
                f"got {x.shape}")
        for got, want in zip(x.shape[1:], self.input_shape[1:]):
            if want is not None and got != want:
                raise InvalidArgument(
                    f"input shape {x.shape} does not match the model's {self.input_shape}")
        values = {self.input_name: np.ascontiguousarray(x, dtype=self.dtype)}
        nodes = self._needed_nodes(keep)
        remaining: dict[str, int] = {}
        for node in nodes:
            for i in node.inputs:
                remaining[i] = remaining.get(i, 0) + 1
        for node in nodes:
            args = [self.consts[i] if i in self.consts else values[i] if i else None
                    for i in node.inputs]
            while args and args[-1] is None:
                args.pop()
            y = _FORWARD[node.op_type](node, *args)
            values[node.outputs[0]] = y
            for extra in node.outputs[1:]:  # Dropout's mask
                if extra:
                    values[extra] = np.ones(y.shape, dtype=bool)
            if not trace:
                for i in node.inputs:
                    if i in values and i not in keep:
                        remaining[i] -= 1
                        if remaining[i] == 0:
                            del values[i]
        return values if trace else {blob: values[blob] for blob in keep}

    # ---- backward --------------------------------------------------------------------------
    def vjp(self, cache: Mapping[str, np.ndarray], seeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Vector-Jacobian product: back-propagate cotangents of blobs to the input.

        Parameters
        ----------
        cache : mapping of str to ndarray
            The result of ``forward(x, keep=<seed blobs>, trace=True)``.
        seeds : mapping of str to array_like
            For each blob, its cotangent (same shape as the blob). Several seeds add up.

        Returns
        -------
        ndarray, shape (N, C, H, W)
            ``Σ_b seeds[b] · ∂b/∂x``, the gradient of ``Σ_b <seeds[b], b>`` with respect to
            the input, in the graph's dtype.
        """
        if self.input_name not in cache:
            raise InvalidArgument("cache lacks the input; run forward(x, keep=..., trace=True)")
        grads: dict[str, np.ndarray] = {}
        for blob, seed in seeds.items():
            self._check_blob(blob)
            if blob not in cache:
                raise InvalidArgument(
                    f"blob {blob!r} is not in the cache; run forward(x, keep={blob!r}, trace=True)")
            seed = np.asarray(seed, dtype=self.dtype)
            if seed.shape != cache[blob].shape:
                raise InvalidArgument(
                    f"seed for {blob!r} has shape {seed.shape}, the blob has {cache[blob].shape}")
            if blob in self._on_input_path:
                grads[blob] = grads[blob] + seed if blob in grads else seed
        for node in reversed(self._needed_nodes(list(seeds))):
            dy = grads.pop(node.outputs[0], None)
            if dy is None:
                continue
            missing = [i for i in node.inputs + node.outputs[:1]
                       if i and i not in self.consts and i not in cache]
            if missing:
                raise InvalidArgument(
                    f"blob {missing[0]!r} is not in the cache; run forward(..., trace=True)")
            xs = [self.consts[i] if i in self.consts else cache[i] if i else None
                  for i in node.inputs]
            while xs and xs[-1] is None:
                xs.pop()
            needs = [i in self._on_input_path for i in node.inputs[:len(xs)]]
            dxs = _BACKWARD[node.op_type](node, xs, cache[node.outputs[0]], dy, needs)
            for name, need, dx in zip(node.inputs, needs, dxs):
                if need and dx is not None:
                    grads[name] = grads[name] + dx if name in grads else dx
        dx = grads.get(self.input_name)
        if dx is None:
            return np.zeros_like(cache[self.input_name])
        return np.ascontiguousarray(dx, dtype=self.dtype)
