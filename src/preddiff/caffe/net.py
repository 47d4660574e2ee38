"""A Caffe deploy net as plain Python objects: layers, inputs, blob and parameter shapes.

Scope
-----
:func:`load_net` reads a ``.prototxt`` in either of Caffe's text styles — the current
``layer { type: "Convolution" }`` and the old ``layers { type: CONVOLUTION }``
(``V1LayerParameter``) — into a :class:`NetSpec`. Layer types are normalised to the current
CamelCase names (the table is Caffe's own ``UpgradeV1LayerType``, ``upgrade_proto.cpp``), and
layers excluded from the TEST phase by ``include``/``exclude`` rules are dropped, as Caffe's
``Net::FilterNet`` does for a deploy net.

:func:`blob_shapes` and :func:`param_shapes` follow each supported layer's ``Reshape`` in
BVLC/caffe to give the shape of every blob and of every learned parameter blob; the
caffemodel reader checks the weights against them and the ONNX converter uses them.
Supported layer types: :data:`SUPPORTED_TYPES`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from pathlib import Path

from ..errors import CaffeFormatError, PredDiffError, UnsupportedLayer
from .prototxt import parse, plain

__all__ = [
    "LayerSpec", "NetSpec", "load_net", "V1_LAYER_TYPES", "SUPPORTED_TYPES", "ConvGeometry",
    "PoolGeometry", "conv_geometry", "pool_geometry", "pooled_size", "blob_shapes",
    "layer_output_shapes", "param_shapes", "top_shapes",
]

# V1LayerParameter.LayerType: enum name, number, current type string (UpgradeV1LayerType).
_V1_TABLE = [
    ("NONE", 0, ""), ("ABSVAL", 35, "AbsVal"), ("ACCURACY", 1, "Accuracy"),
    ("ARGMAX", 30, "ArgMax"), ("BNLL", 2, "BNLL"), ("CONCAT", 3, "Concat"),
    ("CONTRASTIVE_LOSS", 37, "ContrastiveLoss"), ("CONVOLUTION", 4, "Convolution"),
    ("DECONVOLUTION", 39, "Deconvolution"), ("DATA", 5, "Data"), ("DROPOUT", 6, "Dropout"),
    ("DUMMY_DATA", 32, "DummyData"), ("EUCLIDEAN_LOSS", 7, "EuclideanLoss"),
    ("ELTWISE", 25, "Eltwise"), ("EXP", 38, "Exp"), ("FLATTEN", 8, "Flatten"),
    ("HDF5_DATA", 9, "HDF5Data"), ("HDF5_OUTPUT", 10, "HDF5Output"),
    ("HINGE_LOSS", 28, "HingeLoss"), ("IM2COL", 11, "Im2col"), ("IMAGE_DATA", 12, "ImageData"),
    ("INFOGAIN_LOSS", 13, "InfogainLoss"), ("INNER_PRODUCT", 14, "InnerProduct"),
    ("LRN", 15, "LRN"), ("MEMORY_DATA", 29, "MemoryData"),
    ("MULTINOMIAL_LOGISTIC_LOSS", 16, "MultinomialLogisticLoss"), ("MVN", 34, "MVN"),
    ("POOLING", 17, "Pooling"), ("POWER", 26, "Power"), ("RELU", 18, "ReLU"),
    ("SIGMOID", 19, "Sigmoid"), ("SIGMOID_CROSS_ENTROPY_LOSS", 27, "SigmoidCrossEntropyLoss"),
    ("SILENCE", 36, "Silence"), ("SOFTMAX", 20, "Softmax"),
    ("SOFTMAX_LOSS", 21, "SoftmaxWithLoss"),
    ("SPLIT", 22, "Split"), ("SLICE", 33, "Slice"), ("TANH", 23, "TanH"),
    ("WINDOW_DATA", 24, "WindowData"), ("THRESHOLD", 31, "Threshold"),
]
V1_LAYER_TYPES = {enum: camel for enum, _, camel in _V1_TABLE}
"""Old enum layer type (``CONVOLUTION``) → current type string (``"Convolution"``)."""
V1_TYPE_NUMBERS = {camel: number for _, number, camel in _V1_TABLE if camel}
"""Current type string → ``V1LayerParameter.LayerType`` number (for the binary writer)."""
V1_TYPES_BY_NUMBER = {number: camel for _, number, camel in _V1_TABLE}

# The type-specific parameter sub-message of each layer type (LayerParameter field names).
_PARAM_FIELD = {
    "Convolution": "convolution_param", "Deconvolution": "convolution_param",
    "Pooling": "pooling_param", "LRN": "lrn_param", "InnerProduct": "inner_product_param",
    "ReLU": "relu_param", "Dropout": "dropout_param", "Softmax": "softmax_param",
    "SoftmaxWithLoss": "softmax_param", "Concat": "concat_param", "Input": "input_param",
    "Data": "data_param", "Accuracy": "accuracy_param", "Eltwise": "eltwise_param",
    "Flatten": "flatten_param", "Slice": "slice_param", "Power": "power_param",
    "Threshold": "threshold_param", "MVN": "mvn_param", "ImageData": "image_data_param",
    "MemoryData": "memory_data_param", "WindowData": "window_data_param",
    "HDF5Data": "hdf5_data_param", "DummyData": "dummy_data_param", "ArgMax": "argmax_param",
    "BatchNorm": "batch_norm_param", "Scale": "scale_param", "Bias": "bias_param",
    "Reshape": "reshape_param", "ELU": "elu_param", "PReLU": "prelu_param",
    "Sigmoid": "sigmoid_param", "TanH": "tanh_param", "Exp": "exp_param", "Log": "log_param",
    "Crop": "crop_param",
}

SUPPORTED_TYPES = ("Input", "Convolution", "Deconvolution", "Pooling", "LRN", "InnerProduct",
                   "ReLU", "Dropout", "Softmax", "Concat", "BatchNorm", "Scale", "Eltwise",
                   "Flatten", "Reshape", "Sigmoid", "TanH", "AbsVal", "Power", "ELU", "PReLU",
                   "Slice", "Crop")
"""Layer types whose shapes (and ONNX conversion) preddiff implements."""


@dataclasses.dataclass
class LayerSpec:
    """One layer of a deploy net.

    Attributes
    ----------
    name : str
        Layer name (weights in the caffemodel are matched by it).
    type : str
        Current Caffe type string (``"Convolution"``), also for the old enum style.
    bottoms, tops : list of str
        Input and output blob names (equal for an in-place layer such as ReLU).
    params : dict
        The layer's type-specific parameter message (``convolution_param`` for a
        Convolution, ``pooling_param`` for a Pooling, …) as returned by
        :func:`preddiff.caffe.prototxt.plain`: a field given once maps to its value, a
        repeated field to a list. Empty when the layer has none.
    message : dict
        The whole parsed layer message (field name → list of values).
    """

    name: str
    type: str
    bottoms: list
    tops: list
    params: dict
    message: dict = dataclasses.field(repr=False, default_factory=dict)


@dataclasses.dataclass
class NetSpec:
    """A Caffe deploy net.

    Attributes
    ----------
    name : str
        The net's ``name`` (may be empty).
    inputs : dict of str to tuple of int
        Input blob name → shape as the prototxt declares it (batch first), whether given by
        ``input``/``input_dim``, ``input_shape`` or an ``Input`` layer.
    layers : list of LayerSpec
        The layers of the TEST phase, in order (``Input`` layers included).
    """

    name: str
    inputs: dict
    layers: list

    def layer(self, name: str) -> LayerSpec:
        """The layer called ``name`` (KeyError if there is none)."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @property
    def blob_names(self) -> list:
        """Names of the blobs the layers produce (tops, inputs excluded), in order of first
        appearance."""
        names = []
        for layer in self.layers:
            if layer.type == "Input":
                continue
            for top in layer.tops:
                if top not in names and top not in self.inputs:
                    names.append(top)
        return names


def load_net(prototxt) -> NetSpec:
    """Read a Caffe net definition.

    Parameters
    ----------
    prototxt : str or os.PathLike
        A path to a ``.prototxt`` file, or the text itself (a ``str`` containing a newline
        or a ``{`` is taken as text).

    Returns
    -------
    NetSpec

    Raises
    ------
    CaffeFormatError
        The file is missing or unreadable, has a syntax error (the message names the line),
        or does not describe a valid net (no layers, both ``layer`` and ``layers``, bad
        inputs).

    Examples
    --------
    >>> net = load_net('input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\\n'
    ...                'layers { name: "r" type: RELU bottom: "data" top: "data" }')
    >>> net.inputs, net.layers[0].type
    ({'data': (1, 3, 8, 8)}, 'ReLU')
    """
    text, source = _read_text(prototxt)
    message = parse(text, source)
    try:
        return _net_spec(message, source)
    except PredDiffError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
        # a field holding a value of the wrong kind (a number where a message belongs, ...)
        raise CaffeFormatError(f"{source}: malformed net definition "
                               f"({type(exc).__name__}: {exc})") from None


def _net_spec(message: dict, source: str) -> NetSpec:
    if message.get("layer") and message.get("layers"):
        raise CaffeFormatError(f"{source}: the net uses both 'layer' and 'layers'; Caffe "
                               "accepts one style per file")
    raw_layers = message.get("layer") or message.get("layers") or []
    for raw in raw_layers:
        if not isinstance(raw, dict):
            raise CaffeFormatError(f"{source}: each layer must be a message {{...}}, found "
                                   f"{raw!r}")
    layers = [_layer_spec(m, source) for m in raw_layers if _in_test_phase(m)]
    if not layers:
        raise CaffeFormatError(f"{source}: no layers found (expected 'layer {{...}}' or "
                               "'layers {...}' blocks)")
    inputs = _net_inputs(message, layers, source)
    _check_single_producers(inputs, layers, source)
    name = _scalars(message, "name", "the net", source) or [""]
    return NetSpec(name=str(name[0]), inputs=inputs, layers=layers)


def _check_single_producers(inputs: dict, layers: list, source: str) -> None:
    """Refuse a blob written by two layers, as Caffe does when it builds the net.

    Caffe first inserts Split layers (``insert_splits.cpp``): a top read by more than one
    layer is copied once per reader and each reader's bottom is renamed to its copy. Then
    ``Net::AppendTop`` accepts a top whose name already exists only when it is in place (the
    layer's bottom at the same index has that name). So an in-place layer on a blob that
    another layer also reads (``conv → pool, conv → relu(in place)``) no longer works in
    place after the renaming, and Caffe aborts with "Top blob 'c1' produced by multiple
    sources". This reproduces both steps on the names alone.
    """
    layer_tops = {top for layer in layers if layer.type == "Input" for top in layer.tops}
    last_top = {name: (-1, k) for k, name in enumerate(inputs) if name not in layer_tops}
    readers, source_of = {}, {}
    for i, layer in enumerate(layers):
        for j, bottom in enumerate(layer.bottoms):
            if bottom in last_top:  # an unknown bottom is reported by the shape pass
                source_of[i, j] = last_top[bottom]
                readers[last_top[bottom]] = readers.get(last_top[bottom], 0) + 1
        for j, top in enumerate(layer.tops):
            last_top[top] = (i, j)
    produced = {name for name in inputs if name not in layer_tops}
    for i, layer in enumerate(layers):
        for j, top in enumerate(layer.tops):
            in_place = (j < len(layer.bottoms) and layer.bottoms[j] == top
                        and readers.get(source_of.get((i, j)), 0) <= 1)
            if top in produced and not in_place:
                shared = (j < len(layer.bottoms) and layer.bottoms[j] == top)
                why = (f"blob {top!r} is also read by another layer, so Caffe's split makes "
                       f"layer {layer.name!r} write it a second time instead of in place"
                       if shared else f"layer {layer.name!r} writes {top!r} again")
                raise CaffeFormatError(
                    f"{source}: Top blob {top!r} produced by multiple sources (Caffe refuses "
                    f"this net: {why}; give the layer its own top name)")
            produced.add(top)


def _read_text(prototxt) -> tuple[str, str]:
    if isinstance(prototxt, str) and ("\n" in prototxt or "{" in prototxt):
        return prototxt, "<prototxt>"
    path = Path(os.fspath(prototxt))
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except FileNotFoundError:
        raise CaffeFormatError(f"prototxt not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CaffeFormatError(f"cannot read prototxt {path}: {exc}") from None


def _normalise_type(value, name: str, source: str) -> str:
    if isinstance(value, int):  # a V1 enum given by number
        if value not in V1_TYPES_BY_NUMBER:
            raise CaffeFormatError(f"{source}: layer {name!r} has unknown type number {value}")
        return V1_TYPES_BY_NUMBER[value]
    text = str(value)
    return V1_LAYER_TYPES.get(text, text)


def _scalars(message: dict, key: str, what: str, source: str) -> list:
    """The values of field ``key``, which must be plain values (strings, identifiers,
    numbers), not nested messages."""
    values = message.get(key, [])
    if any(isinstance(v, dict) for v in values):
        raise CaffeFormatError(f"{source}: {what}: field {key!r} must be a value, not a "
                               f"message {{...}}")
    return values


def _layer_spec(message: dict, source: str) -> LayerSpec:
    name = str((_scalars(message, "name", "a layer", source) or [""])[0])
    if "type" not in message:
        raise CaffeFormatError(f"{source}: layer {name!r} has no type")
    what = f"layer {name!r}"
    layer_type = _normalise_type(_scalars(message, "type", what, source)[0], name, source)
    field = _PARAM_FIELD.get(layer_type)
    params = {}
    if field and message.get(field):
        value = message[field][0]
        if not isinstance(value, dict):
            raise CaffeFormatError(f"{source}: layer {name!r}: {field} must be a message "
                                   f"{{...}}, found {value!r}")
        params = plain(value)
    return LayerSpec(
        name=name,
        type=layer_type,
        bottoms=[str(b) for b in _scalars(message, "bottom", what, source)],
        tops=[str(t) for t in _scalars(message, "top", what, source)],
        params=params,
        message=message,
    )


def _rule_matches_test(rule: dict) -> bool:
    """Caffe's ``Net::StateMeetsRule`` for the deploy state: phase TEST, level 0, no stages."""
    phase = rule.get("phase", [None])[0]
    if phase is not None and str(phase) not in ("TEST", "1"):
        return False
    if rule.get("min_level") and 0 < rule["min_level"][0]:
        return False
    if rule.get("max_level") and 0 > rule["max_level"][0]:
        return False
    return not rule.get("stage")  # a required stage is never set in a deploy state


def _in_test_phase(layer: dict) -> bool:
    """Caffe's ``Net::FilterNet``: include rules (any must match) else exclude rules (none)."""
    if layer.get("include"):
        return any(_rule_matches_test(rule) for rule in layer["include"])
    return not any(_rule_matches_test(rule) for rule in layer.get("exclude", []))


def _shape_of(message: dict, what: str, source: str) -> tuple:
    dims = message.get("dim", [])
    if not all(isinstance(d, int) and d >= 0 for d in dims) or not dims:
        raise CaffeFormatError(f"{source}: {what} has bad dims {dims!r}")
    return tuple(dims)


def _net_inputs(message: dict, layers: list, source: str) -> dict:
    names = [str(n) for n in _scalars(message, "input", "the net", source)]
    inputs = {}
    if names:
        shapes = message.get("input_shape", [])
        dims = message.get("input_dim", [])
        if not all(isinstance(shape, dict) for shape in shapes):
            raise CaffeFormatError(f"{source}: each input_shape must be a message "
                                   f"{{ dim: ... }}, found {shapes!r}")
        if not all(isinstance(d, int) and d >= 0 for d in dims):
            raise CaffeFormatError(f"{source}: input_dim values must be non-negative "
                                   f"integers, found {dims!r}")
        if shapes:
            if len(shapes) != len(names):
                raise CaffeFormatError(f"{source}: {len(names)} inputs but {len(shapes)} "
                                       "input_shape entries")
            inputs = {n: _shape_of(s, f"input_shape of {n!r}", source)
                      for n, s in zip(names, shapes)}
        elif len(dims) == 4 * len(names):
            inputs = {n: tuple(dims[4 * i:4 * i + 4]) for i, n in enumerate(names)}
        else:
            raise CaffeFormatError(f"{source}: {len(names)} inputs need {4 * len(names)} "
                                   f"input_dim values (or input_shape), found {len(dims)}")
    for layer in layers:
        if layer.type != "Input":
            continue
        shapes = layer.message.get("input_param", [{}])[0].get("shape", [])
        if not all(isinstance(shape, dict) for shape in shapes):
            raise CaffeFormatError(f"{source}: Input layer {layer.name!r}: each shape must be "
                                   f"a message {{ dim: ... }}, found {shapes!r}")
        if len(shapes) not in (1, len(layer.tops)):
            raise CaffeFormatError(f"{source}: Input layer {layer.name!r} has {len(layer.tops)} "
                                   f"tops but {len(shapes)} shapes")
        for i, top in enumerate(layer.tops):
            inputs[top] = _shape_of(shapes[min(i, len(shapes) - 1)],
                                    f"Input layer {layer.name!r}", source)
    if not inputs:
        raise CaffeFormatError(f"{source}: the net declares no input (expected input/"
                               "input_dim, input_shape or an Input layer)")
    return inputs


# --------------------------------------------------------------------------------------------
# Layer geometry (Caffe's defaults and the _h/_w, repeated-field spellings)
# --------------------------------------------------------------------------------------------
def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _spatial(params: dict, name: str, default: int | None, layer: LayerSpec) -> tuple:
    """(h, w) of a kernel/pad/stride/dilation given as ``name`` (one or two values) or as
    ``name_h`` + ``name_w``."""
    h, w = params.get(f"{name}_h"), params.get(f"{name}_w")
    values = _as_list(params.get(name))
    if h is not None or w is not None:
        if values or h is None or w is None:
            raise CaffeFormatError(f"layer {layer.name!r}: give either {name} or both "
                                   f"{name}_h and {name}_w")
        values = [h, w]
    if not values:
        if default is None:
            raise CaffeFormatError(f"layer {layer.name!r} ({layer.type}) needs {name}")
        values = [default]
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(isinstance(v, int) and v >= 0 for v in values):
        raise CaffeFormatError(f"layer {layer.name!r}: {name} must be one or two non-negative "
                               f"integers for a 2-D layer, found {values!r}")
    return tuple(values)


def _kernel(params: dict, layer: LayerSpec) -> tuple:
    """(h, w) of ``kernel_size`` (one or two values) or ``kernel_h`` + ``kernel_w``."""
    if "kernel_h" in params or "kernel_w" in params:
        if "kernel_size" in params:
            raise CaffeFormatError(f"layer {layer.name!r}: give either kernel_size or "
                                   "kernel_h and kernel_w, not both")
        return _spatial(params, "kernel", None, layer)
    return _spatial({"kernel": params.get("kernel_size")}, "kernel", None, layer)


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """Parameters of a Convolution layer (all spatial tuples are (h, w))."""

    num_output: int
    kernel: tuple
    pad: tuple
    stride: tuple
    dilation: tuple
    group: int
    bias_term: bool


def conv_geometry(layer: LayerSpec) -> ConvGeometry:
    """Read ``convolution_param`` with Caffe's defaults (pad 0, stride 1, dilation 1, group 1,
    bias_term true)."""
    p = layer.params
    if p.get("axis", 1) != 1:
        raise UnsupportedLayer(f"layer {layer.name!r} ({layer.type}) has axis "
                               f"{p['axis']}; only axis 1 (channels) is supported")
    num_output = p.get("num_output")
    if not isinstance(num_output, int) or num_output < 1:
        raise CaffeFormatError(f"layer {layer.name!r} ({layer.type}) needs a positive "
                               f"num_output, found {num_output!r}")
    geometry = ConvGeometry(
        num_output=num_output,
        kernel=_kernel(p, layer),
        pad=_spatial(p, "pad", 0, layer),
        stride=_spatial(p, "stride", 1, layer),
        dilation=_spatial(p, "dilation", 1, layer),
        group=_positive(p.get("group", 1), "group", layer),
        bias_term=_flag(p.get("bias_term", True)),
    )
    if min(geometry.kernel) < 1 or min(geometry.stride) < 1 or min(geometry.dilation) < 1:
        raise CaffeFormatError(f"layer {layer.name!r}: kernel, stride and dilation must be "
                               f"positive, found {geometry}")
    return geometry


def _positive(value, name: str, layer: LayerSpec) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CaffeFormatError(f"layer {layer.name!r} ({layer.type}): {name} must be a "
                               f"positive integer, found {value!r}")
    return value


def _flag(value) -> bool:
    return str(value).lower() in ("true", "1") if not isinstance(value, bool) else value


@dataclasses.dataclass(frozen=True)
class PoolGeometry:
    """Parameters of a Pooling layer; ``kernel`` is None for global pooling."""

    method: str  # "MAX" or "AVE"
    kernel: tuple | None
    pad: tuple
    stride: tuple
    ceil: bool


def pool_geometry(layer: LayerSpec) -> PoolGeometry:
    """Read ``pooling_param`` with Caffe's defaults (MAX, pad 0, stride 1, round_mode CEIL)."""
    p = layer.params
    method = str(p.get("pool", "MAX"))
    method = {"0": "MAX", "1": "AVE"}.get(method, method)
    if method not in ("MAX", "AVE"):
        raise UnsupportedLayer(f"layer {layer.name!r} (Pooling) uses pool: {method}; only MAX "
                               "and AVE are supported")
    pad = _spatial(p, "pad", 0, layer)
    stride = _spatial(p, "stride", 1, layer)
    if _flag(p.get("global_pooling", False)):
        if pad != (0, 0) or stride != (1, 1):
            raise CaffeFormatError(f"layer {layer.name!r}: global pooling needs pad 0 and "
                                   f"stride 1 (Caffe), found pad {pad}, stride {stride}")
        return PoolGeometry(method, None, pad, stride, True)
    kernel = _kernel(p, layer)
    if min(kernel) < 1 or min(stride) < 1:
        raise CaffeFormatError(f"layer {layer.name!r}: kernel and stride must be positive")
    if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
        raise CaffeFormatError(f"layer {layer.name!r}: pad {pad} must be smaller than the "
                               f"kernel {kernel} (Caffe)")
    ceil = str(p.get("round_mode", "CEIL")) in ("CEIL", "0")
    return PoolGeometry(method, kernel, pad, stride, ceil)


def pooled_size(size: int, kernel: int, pad: int, stride: int, *, ceil: bool = True,
                clip: bool) -> int:
    """Output length of one axis of a Caffe Pooling layer (``pooling_layer.cpp``, Reshape).

    ``ceil((size + 2·pad − kernel) / stride) + 1`` (or ``floor`` with round_mode FLOOR), minus
    one when ``clip`` (Caffe: when the layer has any non-zero pad) and the last window would
    start at or beyond ``size + pad``, i.e. entirely in the padding.

    Examples
    --------
    >>> pooled_size(112, 3, 0, 2, clip=False)   # GoogLeNet pool1: 112 -> 56
    56
    >>> pooled_size(5, 2, 1, 2, clip=True)      # ceil gives 4, but window 4 starts at 6 >= 5 + 1
    3
    """
    span = size + 2 * pad - kernel
    if span < 0:
        raise CaffeFormatError(f"pooling kernel {kernel} is larger than the padded input "
                               f"{size} + 2·{pad}")
    out = (-(-span // stride) if ceil else span // stride) + 1
    if clip and (out - 1) * stride >= size + pad:
        out -= 1
    return out


# --------------------------------------------------------------------------------------------
# Shape inference: one small function per layer type
# --------------------------------------------------------------------------------------------
def _check_bottoms(layer, shapes, count):
    if len(shapes) != count:
        raise CaffeFormatError(f"layer {layer.name!r} ({layer.type}) needs {count} bottom "
                               f"blob(s), found {len(shapes)}")


def _conv_input(layer, shapes, kind: str):
    """The checked (N, C, H, W) input and the geometry of a (de)convolution layer."""
    _check_bottoms(layer, shapes, 1)
    (shape,) = shapes
    if len(shape) != 4:
        raise UnsupportedLayer(f"layer {layer.name!r} ({kind}) gets a {len(shape)}-D "
                               f"input; only 2-D {kind.lower()} on (N, C, H, W) is supported")
    g = conv_geometry(layer)
    n, c, h, w = shape
    if c % g.group or g.num_output % g.group:
        raise CaffeFormatError(f"layer {layer.name!r}: group {g.group} must divide the input "
                               f"channels {c} and num_output {g.num_output}")
    return g, n, h, w


def _conv_shape(layer, shapes):
    g, n, h, w = _conv_input(layer, shapes, "Convolution")
    out = [(x + 2 * p - (d * (k - 1) + 1)) // s + 1
           for x, k, p, s, d in zip((h, w), g.kernel, g.pad, g.stride, g.dilation)]
    if min(out) < 1:
        raise CaffeFormatError(f"layer {layer.name!r}: kernel {g.kernel} does not fit the "
                               f"input {h}x{w} with pad {g.pad}")
    return [(n, g.num_output, *out)]


def _deconv_shape(layer, shapes):
    g, n, h, w = _conv_input(layer, shapes, "Deconvolution")
    # Caffe's DeconvolutionLayer::compute_output_shape: stride·(in − 1) + extent − 2·pad
    out = [s * (x - 1) + d * (k - 1) + 1 - 2 * p
           for x, k, p, s, d in zip((h, w), g.kernel, g.pad, g.stride, g.dilation)]
    if min(out) < 1:
        raise CaffeFormatError(f"layer {layer.name!r}: pad {g.pad} leaves no output")
    return [(n, g.num_output, *out)]


def _pool_shape(layer, shapes):
    _check_bottoms(layer, shapes, 1)
    (shape,) = shapes
    if len(shape) != 4:
        raise UnsupportedLayer(f"layer {layer.name!r} (Pooling) gets a {len(shape)}-D input; "
                               "only (N, C, H, W) is supported")
    g = pool_geometry(layer)
    n, c, h, w = shape
    if g.kernel is None:
        return [(n, c, 1, 1)]
    clip = g.pad != (0, 0)  # Caffe: `if (pad_h_ || pad_w_)` clips both axes
    out = [pooled_size(x, k, p, s, ceil=g.ceil, clip=clip)
           for x, k, p, s in zip((h, w), g.kernel, g.pad, g.stride)]
    # A last window may start beyond the input (no padding, stride > kernel): Caffe still
    # computes it, as -FLT_MAX (MAX) or NaN (AVE); the converter reproduces that.
    return [(n, c, *out)]


def _same_shape(layer, shapes):
    _check_bottoms(layer, shapes, 1)
    return [shapes[0]]


def _no_in_place(layer) -> None:
    """Caffe's AbsVal, Flatten and Reshape layers ``CHECK_NE(top[0], bottom[0])``: a net that
    runs them in place does not load."""
    if layer.tops[:1] and layer.tops[0] in layer.bottoms[:1]:
        raise CaffeFormatError(
            f"layer {layer.name!r} ({layer.type}) works in place (top {layer.tops[0]!r} is its "
            f"bottom); Caffe refuses this net: \"{layer.type} Layer does not allow in-place "
            "computation.\" Give the layer its own top name")


def _absval_shape(layer, shapes):
    _no_in_place(layer)
    return _same_shape(layer, shapes)


def _lrn_shape(layer, shapes):
    region = str(layer.params.get("norm_region", "ACROSS_CHANNELS"))
    if region not in ("ACROSS_CHANNELS", "0", "WITHIN_CHANNEL", "1"):
        raise CaffeFormatError(f"layer {layer.name!r} (LRN) has norm_region {region}; Caffe "
                               "allows ACROSS_CHANNELS and WITHIN_CHANNEL")
    size = layer.params.get("local_size", 5)
    if not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise CaffeFormatError(f"layer {layer.name!r} (LRN): local_size must be a positive odd "
                               f"integer (Caffe), found {size!r}")
    if len(shapes) == 1 and len(shapes[0]) != 4:
        raise UnsupportedLayer(f"layer {layer.name!r} (LRN) needs an (N, C, H, W) input")
    return _same_shape(layer, shapes)


def _dropout_shape(layer, shapes):
    if not _flag(layer.params.get("scale_train", True)):
        # Caffe then scales by (1 - ratio) at test time, which needs an op outside our set.
        raise UnsupportedLayer(f"layer {layer.name!r} (Dropout) has scale_train: false, which "
                               "scales at test time; not supported")
    return _same_shape(layer, shapes)


def _axis(layer, shapes, value) -> int:
    rank = len(shapes[0])
    axis = int(value)
    if not -rank <= axis < rank:
        raise CaffeFormatError(f"layer {layer.name!r}: axis {axis} out of range for a "
                               f"{rank}-D blob")
    return axis % rank


def _softmax_shape(layer, shapes):
    _check_bottoms(layer, shapes, 1)
    if _axis(layer, shapes, layer.params.get("axis", 1)) == 0:
        raise UnsupportedLayer(f"layer {layer.name!r} (Softmax) normalises over the batch "
                               "axis; not supported")
    return [shapes[0]]


def _inner_product_shape(layer, shapes):
    _check_bottoms(layer, shapes, 1)
    num_output = layer.params.get("num_output")
    if not isinstance(num_output, int) or num_output < 1:
        raise CaffeFormatError(f"layer {layer.name!r} (InnerProduct) needs a positive "
                               f"num_output, found {num_output!r}")
    axis = _axis(layer, shapes, layer.params.get("axis", 1))
    if axis == 0:
        raise UnsupportedLayer(f"layer {layer.name!r} (InnerProduct) has axis 0, which mixes "
                               "the images of a batch; only axes >= 1 are supported")
    return [(*shapes[0][:axis], num_output)]


def _concat_shape(layer, shapes):
    if not shapes:
        raise CaffeFormatError(f"layer {layer.name!r} (Concat) has no bottom blobs")
    p = layer.params
    axis = _axis(layer, shapes, p.get("axis", p.get("concat_dim", 1)))
    if axis == 0:
        raise UnsupportedLayer(f"layer {layer.name!r} (Concat) concatenates along the batch "
                               "axis; not supported")
    first = shapes[0]
    for shape in shapes[1:]:
        if len(shape) != len(first) or any(a != b for i, (a, b) in enumerate(zip(shape, first))
                                           if i != axis):
            raise CaffeFormatError(f"layer {layer.name!r} (Concat): bottom shapes {shapes} "
                                   f"differ outside axis {axis}")
    out = list(first)
    out[axis] = sum(s[axis] for s in shapes)
    return [tuple(out)]


def _check_axis_not_batch(layer, axis: int, what: str) -> None:
    if axis == 0:
        raise UnsupportedLayer(f"layer {layer.name!r} ({layer.type}) {what} the batch axis "
                               "(axis 0), which mixes the images of a batch; not supported")


def _batch_norm_shape(layer, shapes):
    _check_bottoms(layer, shapes, 1)
    if "use_global_stats" in layer.params and not _flag(layer.params["use_global_stats"]):
        raise UnsupportedLayer(f"layer {layer.name!r} (BatchNorm) has use_global_stats: false, "
                               "which normalises with the statistics of the batch; only the "
                               "stored statistics (Caffe's TEST-phase default) are supported")
    if len(shapes[0]) < 2:
        raise CaffeFormatError(f"layer {layer.name!r} (BatchNorm) needs a channel axis")
    return [shapes[0]]


def scale_axes(layer, shape, scale_shape=None) -> tuple:
    """``(axis, num_axes)`` of a Scale layer: the scale blob has the bottom's shape on axes
    ``axis .. axis + num_axes`` (Caffe's ScaleLayer, defaults 1 and 1). With two bottoms
    (``scale_shape`` given) the scale is the second bottom and ``num_axes`` its rank; Caffe
    ignores ``num_axes`` then and checks the shapes (ScaleLayer::Reshape)."""
    axis = _axis(layer, [shape], layer.params.get("axis", 1))
    if scale_shape is not None:
        if len(scale_shape) == 0:  # Caffe: a scalar scale is applied with axis 0
            return 0, 0
        if tuple(shape[axis:axis + len(scale_shape)]) != tuple(scale_shape):
            raise CaffeFormatError(
                f"layer {layer.name!r} (Scale): the scale bottom {layer.bottoms[1]!r} of shape "
                f"{tuple(scale_shape)} does not match bottom 0's shape {tuple(shape)} from axis "
                f"{axis} (Caffe requires bottom[0]->shape(axis + i) == scale->shape(i))")
        return axis, len(scale_shape)
    num_axes = int(layer.params.get("num_axes", 1))
    if num_axes == -1:
        num_axes = len(shape) - axis
    if num_axes < 0 or axis + num_axes > len(shape):
        raise CaffeFormatError(f"layer {layer.name!r} (Scale): num_axes {num_axes} from axis "
                               f"{axis} does not fit a {len(shape)}-D bottom")
    return axis, num_axes


def _scale_shape(layer, shapes):
    if len(shapes) == 2:
        return _scale_by_blob_shape(layer, shapes)
    _check_bottoms(layer, shapes, 1)
    axis, num_axes = scale_axes(layer, shapes[0])
    if num_axes:
        _check_axis_not_batch(layer, axis, "scales along")
    return [shapes[0]]


def _scale_by_blob_shape(layer, shapes):
    """Scale with two bottoms (SE-ResNet's channel attention): bottom 0 times bottom 1, which
    has bottom 0's shape on axes ``axis .. axis + rank(bottom 1)``, broadcast over the rest.

    The second bottom is a blob of the net, so its axis 0 is the batch: only ``axis: 0``
    keeps each image to itself (for example a scale of shape (N, C) on an (N, C, H, W)
    bottom). Any other axis lines the batch axis up with an axis of the image, and a learned
    bias (``bias_term``) would have the batch size in its shape; both are refused."""
    axis, num_axes = scale_axes(layer, shapes[0], shapes[1])
    if num_axes and axis != 0:
        raise UnsupportedLayer(
            f"layer {layer.name!r} (Scale) multiplies by its second bottom "
            f"{layer.bottoms[1]!r} from axis {axis}, which lines that blob's batch axis up "
            f"with axis {axis} of {layer.bottoms[0]!r} (it mixes the images of a batch and "
            "works for one batch size only); only axis: 0 is supported with two bottoms")
    if _flag(layer.params.get("bias_term", False)):
        raise UnsupportedLayer(
            f"layer {layer.name!r} (Scale) has two bottoms and bias_term: true; Caffe's "
            "learned bias then has the shape of the second bottom, batch axis included, "
            "so it fits one batch size only; not supported")
    return [shapes[0]]


def _eltwise_shape(layer, shapes):
    if len(shapes) < 2:
        raise CaffeFormatError(f"layer {layer.name!r} (Eltwise) needs at least 2 bottoms, "
                               f"found {len(shapes)}")
    op = str(layer.params.get("operation", "SUM"))
    op = {"0": "PROD", "1": "SUM", "2": "MAX"}.get(op, op)
    if op not in ("PROD", "SUM", "MAX"):
        raise CaffeFormatError(f"layer {layer.name!r} (Eltwise) has operation {op}; Caffe "
                               "allows PROD, SUM and MAX")
    coeffs = _as_list(layer.params.get("coeff"))
    if coeffs and (op != "SUM" or len(coeffs) != len(shapes)):
        raise CaffeFormatError(f"layer {layer.name!r} (Eltwise): coeff needs operation SUM "
                               f"and one value per bottom ({len(shapes)}), found {coeffs!r}")
    if any(shape != shapes[0] for shape in shapes):
        raise CaffeFormatError(f"layer {layer.name!r} (Eltwise): bottom shapes {shapes} "
                               "differ (Caffe requires equal shapes)")
    return [shapes[0]]


def _flatten_shape(layer, shapes):
    _check_bottoms(layer, shapes, 1)
    _no_in_place(layer)
    shape = shapes[0]
    start = _axis(layer, shapes, layer.params.get("axis", 1))
    end = _axis(layer, shapes, layer.params.get("end_axis", -1))
    _check_axis_not_batch(layer, start, "flattens")
    if end < start:
        raise CaffeFormatError(f"layer {layer.name!r} (Flatten): end_axis {end} before axis "
                               f"{start}")
    return [(*shape[:start], math.prod(shape[start:end + 1]), *shape[end + 1:])]


def _reshape_shape(layer, shapes):
    """Caffe's ReshapeLayer::Reshape: ``dim: 0`` copies the bottom's axis, one ``-1`` is
    inferred, the new dims replace the bottom's axes ``axis .. axis + num_axes``."""
    _check_bottoms(layer, shapes, 1)
    _no_in_place(layer)
    shape = shapes[0]
    p = layer.params
    dims = [int(d) for d in _as_list((p.get("shape") or {}).get("dim"))]
    axis = int(p.get("axis", 0))
    start = axis + len(shape) + 1 if axis < 0 else axis
    num_axes = int(p.get("num_axes", -1))
    end = len(shape) if num_axes == -1 else start + num_axes
    if not 0 <= start <= end <= len(shape) or dims.count(-1) > 1 or min(dims, default=0) < -1:
        raise CaffeFormatError(f"layer {layer.name!r} (Reshape): shape {dims}, axis {axis}, "
                               f"num_axes {num_axes} do not fit a {len(shape)}-D bottom")
    new = [shape[start + i] if d == 0 else d for i, d in enumerate(dims)]
    out = list(shape[:start]) + new + list(shape[end:])
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        if known == 0 or math.prod(shape) % known:
            raise CaffeFormatError(f"layer {layer.name!r} (Reshape): cannot infer the -1 of "
                                   f"{dims} for a bottom of shape {shape}")
        out[out.index(-1)] = math.prod(shape) // known
    if math.prod(out) != math.prod(shape):
        raise CaffeFormatError(f"layer {layer.name!r} (Reshape): shape {tuple(out)} does not "
                               f"hold the {math.prod(shape)} values of {shape}")
    return [tuple(out)]


def _power_shape(layer, shapes):
    return _same_shape(layer, shapes)


def _prelu_shape(layer, shapes):
    _check_bottoms(layer, shapes, 1)
    if len(shapes[0]) < 2:
        raise CaffeFormatError(f"layer {layer.name!r} (PReLU) needs a channel axis")
    if len(shapes[0]) > 4:  # PReLULayer reads bottom[0]->channels(), a legacy accessor
        raise CaffeFormatError(
            f"layer {layer.name!r} (PReLU) gets a {len(shapes[0])}-D bottom "
            f"{tuple(shapes[0])}; Caffe refuses this net: PReLU reads the channel count with "
            "a legacy accessor (\"Cannot use legacy accessors on Blobs with > 4 axes.\")")
    return [shapes[0]]


def slice_points(layer, shape, num_tops: int) -> tuple:
    """``(axis, [start of each top ..., end])`` of a Slice layer (Caffe's SliceLayer)."""
    p = layer.params
    axis = _axis(layer, [shape], p.get("axis", p.get("slice_dim", 1)))
    points = [int(v) for v in _as_list(p.get("slice_point"))]
    size = shape[axis]
    if points:
        if len(points) != num_tops - 1 or points != sorted(points) or points[0] <= 0 \
                or points[-1] >= size:
            raise CaffeFormatError(f"layer {layer.name!r} (Slice): slice_point {points} must "
                                   f"be {num_tops - 1} increasing values inside (0, {size})")
    else:
        if num_tops < 1 or size % num_tops:
            raise CaffeFormatError(f"layer {layer.name!r} (Slice): axis {axis} of size {size} "
                                   f"does not split into {num_tops} equal tops")
        points = [size // num_tops * i for i in range(1, num_tops)]
    return axis, [0, *points, size]


def _slice_shape(layer, shapes):
    _check_bottoms(layer, shapes, 1)
    shape = shapes[0]
    axis, bounds = slice_points(layer, shape, len(layer.tops))
    _check_axis_not_batch(layer, axis, "slices along")
    return [(*shape[:axis], b - a, *shape[axis + 1:]) for a, b in zip(bounds, bounds[1:])]


def crop_offsets(layer, shapes) -> tuple:
    """``(axis, offsets)`` of a Crop layer: bottom 0 is cropped to bottom 1's shape on axes
    ``axis ..`` starting at ``offsets`` (Caffe's CropLayer: one offset for all, or one each)."""
    big, small = shapes
    axis = _axis(layer, shapes, layer.params.get("axis", 2))
    given = [int(v) for v in _as_list(layer.params.get("offset"))]
    count = len(big) - axis
    if len(given) not in (0, 1, count):
        raise CaffeFormatError(f"layer {layer.name!r} (Crop): {len(given)} offsets for "
                               f"{count} cropped axes (give 0, 1 or {count})")
    offsets = given * count if len(given) == 1 else given or [0] * count
    for i, off in enumerate(offsets):
        if off < 0 or big[axis + i] < small[axis + i] + off:
            raise CaffeFormatError(f"layer {layer.name!r} (Crop): crop of {small[axis + i]} at "
                                   f"offset {off} does not fit axis {axis + i} of size "
                                   f"{big[axis + i]}")
    return axis, offsets


def _crop_shape(layer, shapes):
    _check_bottoms(layer, shapes, 2)
    if len(shapes[0]) != len(shapes[1]):
        raise CaffeFormatError(f"layer {layer.name!r} (Crop): bottoms {shapes} differ in rank")
    axis, _ = crop_offsets(layer, shapes)
    _check_axis_not_batch(layer, axis, "crops")
    return [(*shapes[0][:axis], *shapes[1][axis:])]


_SHAPE_FUNCS = {
    "Convolution": _conv_shape,
    "Pooling": _pool_shape,
    "LRN": _lrn_shape,
    "InnerProduct": _inner_product_shape,
    "ReLU": _same_shape,
    "Dropout": _dropout_shape,
    "Softmax": _softmax_shape,
    "Concat": _concat_shape,
    "Deconvolution": _deconv_shape,
    "BatchNorm": _batch_norm_shape,
    "Scale": _scale_shape,
    "Eltwise": _eltwise_shape,
    "Flatten": _flatten_shape,
    "Reshape": _reshape_shape,
    "Sigmoid": _same_shape,
    "TanH": _same_shape,
    "AbsVal": _absval_shape,
    "Power": _power_shape,
    "ELU": _same_shape,
    "PReLU": _prelu_shape,
    "Slice": _slice_shape,
    "Crop": _crop_shape,
}


def _over_its_own_output(layer) -> str | None:
    """Why Caffe's forward pass of ``layer`` computes something else when it works in place
    on a blob of unchanged shape (measured with real Caffe), or None where it is right."""
    if layer.type == "Pooling":
        return "Caffe's pooling fills its top (-FLT_MAX or 0) before it reads the bottom"
    if layer.type == "LRN" and str(layer.params.get("norm_region", "ACROSS_CHANNELS")) in (
            "ACROSS_CHANNELS", "0"):
        return "Caffe's cross-channel LRN writes its top before it has read all the bottom"
    if layer.type == "InnerProduct":
        return "Caffe's matrix product reads the bottom while it writes the top"
    if layer.type in ("Convolution", "Deconvolution"):
        g = conv_geometry(layer)
        if g.kernel == (1, 1) and g.stride == (1, 1) and g.pad == (0, 0):
            return ("a 1x1 convolution skips Caffe's im2col buffer, so its matrix product "
                    "reads the bottom while it writes the top")
    return None


def _check_in_place(layer, bottoms: list, tops: list) -> None:
    """Refuse an in-place layer whose Caffe result is not the layer's function: one that
    changes the blob's shape (Caffe reshapes the one blob, so the layer then reads its
    bottom with its top's shape) or whose implementation overwrites values it still reads
    (:func:`_over_its_own_output`). Caffe runs such nets without complaint."""
    for j, (top, shape) in enumerate(zip(layer.tops, tops)):
        if j >= len(layer.bottoms) or layer.bottoms[j] != top:
            continue
        if tuple(shape) != tuple(bottoms[j]):
            raise UnsupportedLayer(
                f"layer {layer.name!r} ({layer.type}) works in place on {top!r} but changes "
                f"its shape from {tuple(bottoms[j])} to {tuple(shape)}: Caffe reshapes the one "
                "blob, so the layer reads its bottom in its top's shape and computes something "
                "else; give the layer its own top name")
        why = _over_its_own_output(layer)
        if why:
            raise UnsupportedLayer(
                f"layer {layer.name!r} ({layer.type}) works in place on {top!r}: {why}, so "
                "Caffe's result is not the layer's; give the layer its own top name")


def top_shapes(layer: LayerSpec, bottoms: list) -> list:
    """Shapes of ``layer``'s tops for bottoms of the given shapes (one supported layer)."""
    func = _SHAPE_FUNCS.get(layer.type)
    if func is None:
        raise unsupported(layer)
    with malformed_parameters(layer):
        return func(layer, [tuple(b) for b in bottoms])


@contextlib.contextmanager
def malformed_parameters(layer: LayerSpec):
    """Turn a Python error raised while reading ``layer``'s parameters (a value of the wrong
    kind in the prototxt, such as ``axis: "x"``) into a :class:`CaffeFormatError` naming the
    layer, so that a malformed prototxt is reported in one line, not as a traceback."""
    try:
        yield
    except PredDiffError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError,
            ZeroDivisionError) as exc:
        raise CaffeFormatError(
            f"layer {layer.name!r} ({layer.type}) has a malformed parameter: "
            f"{type(exc).__name__}: {exc}") from None


def unsupported(layer: LayerSpec) -> UnsupportedLayer:
    """The error for a layer whose type preddiff does not handle."""
    return UnsupportedLayer(
        f"layer {layer.name!r} has type {layer.type!r}, which preddiff cannot convert; "
        f"supported types: {', '.join(SUPPORTED_TYPES)}"
    )


def layer_output_shapes(net: NetSpec, batch: int | None = None) -> list:
    """Shape of each top of each layer, in layer order.

    Parameters
    ----------
    net : NetSpec
    batch : int, optional
        Batch size to use instead of the one the prototxt declares.

    Returns
    -------
    list of list of tuple of int
        ``result[i][j]`` is the shape of ``net.layers[i].tops[j]`` as written by that layer.

    Raises
    ------
    UnsupportedLayer
        A layer type outside :data:`SUPPORTED_TYPES`, or an unsupported option.
    CaffeFormatError
        A bottom blob that no earlier layer produces, or inconsistent shapes.
    """
    current = {name: tuple(shape) if batch is None else (batch, *shape[1:])
               for name, shape in net.inputs.items()}
    result = []
    for layer in net.layers:
        if layer.type == "Input":
            result.append([current[top] for top in layer.tops])
            continue
        func = _SHAPE_FUNCS.get(layer.type)
        if func is None:
            raise unsupported(layer)
        missing = [b for b in layer.bottoms if b not in current]
        if missing:
            raise CaffeFormatError(f"layer {layer.name!r} reads blob {missing[0]!r}, which no "
                                   "earlier layer produces and which is not an input")
        with malformed_parameters(layer):
            tops = func(layer, [current[b] for b in layer.bottoms])
            if len(layer.tops) != len(tops):
                raise CaffeFormatError(f"layer {layer.name!r} ({layer.type}) must have "
                                       f"{len(tops)} top blob(s), found {len(layer.tops)}")
            _check_in_place(layer, [current[b] for b in layer.bottoms], tops)
        for name, shape in zip(layer.tops, tops):
            current[name] = shape
        result.append(tops)
    return result


def blob_shapes(net: NetSpec, batch: int | None = None) -> dict:
    """Shape of every blob after the forward pass (inputs included), name → tuple."""
    shapes = {name: tuple(shape) if batch is None else (batch, *shape[1:])
              for name, shape in net.inputs.items()}
    for layer, tops in zip(net.layers, layer_output_shapes(net, batch)):
        shapes.update(zip(layer.tops, tops))
    return shapes


def param_shapes(net: NetSpec) -> dict:
    """Shapes of the learned parameter blobs of each layer that has any.

    Returns
    -------
    dict of str to list of tuple
        Layer name → ``[weight shape, bias shape]`` (bias only with ``bias_term``):
        Convolution ``(num_output, C / group, kh, kw)``, ``(num_output,)``;
        Deconvolution ``(C, num_output / group, kh, kw)``, ``(num_output,)``;
        InnerProduct ``(num_output, K)`` (``(K, num_output)`` with ``transpose``),
        ``(num_output,)``, where K is the product of the bottom's dims from ``axis`` on;
        BatchNorm ``(C,)`` mean, ``(C,)`` variance, ``(1,)`` scale factor (Caffe stores
        running sums; it divides both by the factor); a one-bottom Scale the bottom's
        shape on axes ``axis .. axis + num_axes`` (twice with ``bias_term``; a two-bottom
        Scale has none); PReLU ``(C,)``, or ``()`` (a scalar) with ``channel_shared``.
    """
    shapes = blob_shapes_before(net)
    result = {}
    for layer, bottoms in shapes:
        if layer.type == "Convolution":
            g = conv_geometry(layer)
            c = bottoms[0][1]
            result[layer.name] = [(g.num_output, c // g.group, *g.kernel)]
            if g.bias_term:
                result[layer.name].append((g.num_output,))
        elif layer.type == "Deconvolution":
            g = conv_geometry(layer)
            c = bottoms[0][1]
            result[layer.name] = [(c, g.num_output // g.group, *g.kernel)]
            if g.bias_term:
                result[layer.name].append((g.num_output,))
        elif layer.type == "BatchNorm":
            c = bottoms[0][1]
            result[layer.name] = [(c,), (c,), (1,)]
        elif layer.type == "Scale" and len(bottoms) == 1:  # two bottoms: no learned scale
            axis, num_axes = scale_axes(layer, bottoms[0])
            shape = tuple(bottoms[0][axis:axis + num_axes])
            result[layer.name] = [shape]
            if _flag(layer.params.get("bias_term", False)):
                result[layer.name].append(shape)
        elif layer.type == "PReLU":
            shared = _flag(layer.params.get("channel_shared", False))
            result[layer.name] = [() if shared else (bottoms[0][1],)]  # Caffe: a 0-D blob
        elif layer.type == "InnerProduct":
            n = layer.params["num_output"]
            axis = _axis(layer, bottoms, layer.params.get("axis", 1))
            k = math.prod(bottoms[0][axis:])
            transpose = _flag(layer.params.get("transpose", False))
            result[layer.name] = [(k, n) if transpose else (n, k)]
            if _flag(layer.params.get("bias_term", True)):
                result[layer.name].append((n,))
    return result


def blob_shapes_before(net: NetSpec) -> list:
    """``(layer, [shape of each bottom])`` for every layer, in order (batch as declared)."""
    current = {name: tuple(shape) for name, shape in net.inputs.items()}
    pairs = []
    for layer, tops in zip(net.layers, layer_output_shapes(net)):
        pairs.append((layer, [current[b] for b in layer.bottoms if b in current]))
        current.update(zip(layer.tops, tops))
    return pairs
