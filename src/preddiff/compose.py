"""Perturbed images of PDA, composed on the host (NumPy) or inside the ONNX graph (the device).

Algorithm 1 evaluates the classifier on ``x`` with one window ``x_w`` replaced by a sample.
A batch of ``N`` such images differs from ``x`` only in ``N`` windows of ``C × kh × kw``
values, so there are two ways to hand it to the classifier:

*host*
    :func:`compose_batch` writes ``x`` ``N`` times into a buffer and pastes each sample at its
    window (``N · C · H · W`` floats built and sent to the device every call);
*device*
    :func:`composing_model` wraps the network in an ONNX graph whose inputs are the clean
    image (bound once per image and left on the device), the samples ``(N, C, kh, kw)`` and the
    windows' top-left corners ``(N, 2)``; the graph broadcasts the image (``Expand``) and pastes
    the samples (``ScatterND``) before the network's first layer. A call then sends
    ``N · C · kh · kw`` floats instead of ``N · C · H · W`` (1/500 of it for a 10×10 window at
    224²), and the same graph runs on every execution provider, CPU included.

Both give the same images value for value; :func:`composing_model` can also reduce a blob
with spatial dimensions to its per-feature-map mean on the device (what the activation
difference of eq. 9 averages), so that only ``(N, C)`` values come back instead of
``(N, C, h, w)``.
"""
from __future__ import annotations

import numpy as np

from .errors import InvalidArgument
from .windows import window_views

__all__ = ["compose_batch", "composing_model", "CLEAN", "PATCHES", "TOP_LEFT", "MEAN_SUFFIX"]

#: Input names of a composing model: the clean image (1, C, H, W), the samples (N, C, kh, kw)
#: and the windows' top-left corners (N, 2) as int64 (row, column).
CLEAN, PATCHES, TOP_LEFT = "preddiff_clean", "preddiff_patches", "preddiff_top_left"
#: Output name suffix of a blob reduced on the device to its per-feature-map mean.
MEAN_SUFFIX = "/preddiff_spatial_mean"
_PREFIX = "preddiff_compose/"


def compose_batch(x: np.ndarray, top_left: np.ndarray, patches: np.ndarray,
                  out: np.ndarray | None = None) -> np.ndarray:
    """``x`` repeated, with ``patches[n]`` written at ``top_left[n]`` in image ``n`` (host).

    Parameters
    ----------
    x : ndarray of float32, shape (C, H, W)
    top_left : ndarray of int, shape (N, 2)
        Row and column of each window's top-left corner.
    patches : ndarray of float32, shape (N, C, kh, kw)
    out : ndarray of float32, shape (>= N, C, H, W), optional
        A buffer to reuse; its first ``N`` images are overwritten and returned.

    Returns
    -------
    ndarray of float32, shape (N, C, H, W)
    """
    n = len(patches)
    batch = np.empty((n,) + x.shape, np.float32) if out is None else out[:n]
    np.copyto(batch, x[None])
    kh, kw = patches.shape[2:]
    views = window_views(batch, (kh, kw), writeable=True)
    # (N,) × (N,) × (N,) advanced indices around a slice → target shape (N, C, kh, kw); each
    # image gets exactly one window, so the strided writes never overlap.
    views[np.arange(n), :, top_left[:, 0], top_left[:, 1]] = patches
    return batch


def _window_offsets(channels: int, kh: int, kw: int) -> np.ndarray:
    """int64 (1, C, kh, kw, 4): the ScatterND index ``(0, c, dy, dx)`` of every window value."""
    c, dy, dx = np.meshgrid(np.arange(channels), np.arange(kh), np.arange(kw), indexing="ij")
    index = np.stack([np.zeros_like(c), c, dy, dx], axis=-1)
    return index[None].astype(np.int64)


def composing_model(model, input_name: str, shape, window, outputs, *, spatial_means=()):
    """``model`` with the perturbed images composed inside the graph.

    Parameters
    ----------
    model : onnx.ModelProto
        The network; its input ``input_name`` takes images (N, C, H, W).
    input_name : str
    shape : (int, int, int)
        ``(C, H, W)`` of the images.
    window : (int, int)
        ``(kh, kw)``.
    outputs : sequence of str
        Blobs (values of the graph) the composing model returns, in this order.
    spatial_means : sequence of str, optional
        Blobs among ``outputs`` with spatial dimensions (N, C, h, w) to return as their
        per-feature-map mean (N, C), named ``blob + MEAN_SUFFIX`` (``ReduceMean`` in float64).

    Raises
    ------
    InvalidArgument
        A model below opset 11 (its images are composed on the host instead), a window larger
        than the input, or input names that clash.

    Returns
    -------
    onnx.ModelProto
        Inputs :data:`CLEAN` float32 (1, C, H, W), :data:`PATCHES` float32 (N, C, kh, kw) and
        :data:`TOP_LEFT` int64 (N, 2); outputs ``outputs`` (``spatial_means`` renamed, float64),
        each (N, ...). Image ``n`` is the clean image with ``PATCHES[n]`` at ``TOP_LEFT[n]`` -
        the windows must lie inside the image (the engine's windows always do).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    channels, height, width = (int(v) for v in shape)
    kh, kw = (int(v) for v in window)
    if not (1 <= kh <= height and 1 <= kw <= width):
        raise InvalidArgument(f"window {kh}x{kw} does not fit the {height}x{width} input")
    names = {input_name, *(i.name for i in model.graph.input)}
    clash = {CLEAN, PATCHES, TOP_LEFT} & names
    if clash:
        raise InvalidArgument(f"the model already has input(s) {sorted(clash)}")
    if model_opset(model) < 11:
        # Range and ScatterND need opset 11; converting the network's own operators could
        # change what it computes, so such a model is composed on the host
        raise InvalidArgument(f"composing the images in the graph needs opset 11 or newer; "
                              f"the model declares opset {model_opset(model)}")
    p = _PREFIX
    consts = {
        "offsets": _window_offsets(channels, kh, kw),
        "axis0_start": np.array([0], np.int64), "axis0_end": np.array([1], np.int64),
        "image_dims": np.array([channels, height, width], np.int64),
        "zero": np.array(0, np.int64), "one": np.array(1, np.int64),
        "index_shape": np.array([-1, 1, 1, 1, 4], np.int64),
        "column_shape": np.array([-1, 1], np.int64),
    }
    nodes = [
        # N from the samples; the batch shape (N, C, H, W)
        helper.make_node("Shape", [PATCHES], [p + "patch_shape"]),
        helper.make_node("Slice", [p + "patch_shape", p + "axis0_start", p + "axis0_end"],
                         [p + "n"]),
        helper.make_node("Concat", [p + "n", p + "image_dims"], [p + "batch_shape"], axis=0),
        helper.make_node("Expand", [CLEAN, p + "batch_shape"], [p + "images"]),
        # ScatterND indices (N, C, kh, kw, 4): (n, c, row + dy, column + dx)
        helper.make_node("Squeeze", [p + "n"], [p + "n_scalar"]),
        helper.make_node("Range", [p + "zero", p + "n_scalar", p + "one"], [p + "image_index"]),
        helper.make_node("Reshape", [p + "image_index", p + "column_shape"], [p + "n_col"]),
        helper.make_node("Mul", [p + "n_col", p + "zero"], [p + "zeros_col"]),
        helper.make_node("Concat", [p + "n_col", p + "zeros_col", TOP_LEFT], [p + "base"],
                         axis=1),
        helper.make_node("Reshape", [p + "base", p + "index_shape"], [p + "base5"]),
        helper.make_node("Add", [p + "base5", p + "offsets"], [p + "indices"]),
    ]
    elem = next((i.type.tensor_type.elem_type for i in model.graph.input
                 if i.name == input_name), TensorProto.FLOAT)
    if elem in (TensorProto.FLOAT, TensorProto.UNDEFINED):
        nodes.append(helper.make_node("ScatterND", [p + "images", p + "indices", PATCHES],
                                      [input_name]))
    else:  # a float64 / float16 input: the float32 images cast as the host would cast them
        nodes += [helper.make_node("ScatterND", [p + "images", p + "indices", PATCHES],
                                   [p + "images_float32"]),
                  helper.make_node("Cast", [p + "images_float32"], [input_name], to=elem)]
    wrapped = onnx.ModelProto()
    wrapped.CopyFrom(model)
    graph = wrapped.graph
    kept_inputs = [i for i in graph.input if i.name != input_name]
    del graph.input[:]
    graph.input.extend([
        helper.make_tensor_value_info(CLEAN, TensorProto.FLOAT, [1, channels, height, width]),
        helper.make_tensor_value_info(PATCHES, TensorProto.FLOAT, ["N", channels, kh, kw]),
        helper.make_tensor_value_info(TOP_LEFT, TensorProto.INT64, ["N", 2]),
        *kept_inputs,
    ])
    graph.initializer.extend(numpy_helper.from_array(v, p + k) for k, v in consts.items())
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + body)
    del graph.output[:]
    means = set(spatial_means)
    for name in outputs:
        # untyped outputs: a declared batch dimension (torch exports often say 1) would be
        # enforced on the bound outputs
        if name in means:
            # the mean in float64: a 10x10 window moves a 224x224 map's mean by ~1e-3 of it,
            # which float32 sums would not resolve
            double, reduced = p + name + "/double", name + MEAN_SUFFIX
            graph.node.append(helper.make_node("Cast", [name], [double],
                                               to=TensorProto.DOUBLE))
            graph.node.append(helper.make_node("ReduceMean", [double], [reduced], axes=[2, 3],
                                               keepdims=0) if model_opset(model) < 18 else
                              helper.make_node("ReduceMean", [double, p + "spatial_axes"],
                                               [reduced], keepdims=0))
            graph.output.append(onnx.ValueInfoProto(name=reduced))
        else:
            graph.output.append(onnx.ValueInfoProto(name=name))
    if means and model_opset(model) >= 18:
        graph.initializer.append(numpy_helper.from_array(np.array([2, 3], np.int64),
                                                         p + "spatial_axes"))
    return wrapped


def model_opset(model) -> int:
    """The model's default-domain opset version."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1
