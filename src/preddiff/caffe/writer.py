"""Random-weight Caffe models in the real binary formats, for tests, smoke runs and benchmarks.

The zoo weights cannot be downloaded on every machine, so the converter is tested on
caffemodels of the exact zoo architectures with random weights, written here through
:mod:`preddiff.caffe.wire` in the formats Caffe itself wrote:

* ``style="layer"``: current ``NetParameter.layer`` (field 100), string types, ``BlobShape``;
* ``style="layers"``: old ``NetParameter.layers`` (field 2, ``V1LayerParameter``) with enum
  types and legacy 4-D ``num/channels/height/width`` dims, right-aligned (an InnerProduct
  weight (N, K) is 1×1×N×K), as the zoo's AlexNet, GoogLeNet and VGG16 files are; optionally
  with layers wrapped in an embedded ``V0LayerParameter`` (the pre-2014 format);
* ``extra_layers``: layers the deploy net lacks, which a reader must ignore, as in real
  training snapshots: a Data layer, GoogLeNet-like auxiliary classifier weights
  (``loss1/conv``, ``loss1/fc``), and loss/accuracy layers.

Also :func:`narrow_prototxt` (the same topology with fewer channels, so tests run fast) and
:func:`random_onnx` (all of it, converted).
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import InvalidArgument
from ..resources import MODELS_DIR
from .net import V1_TYPE_NUMBERS, NetSpec, load_net, param_shapes
from .prototxt import format_message, parse
from .wire import Builder

__all__ = ["random_weights", "write_caffemodel", "narrow_prototxt", "random_onnx"]

# V0LayerParameter.type strings (Caffe's UpgradeV0LayerType, reversed).
_V0_TYPES = {
    "Accuracy": "accuracy", "BNLL": "bnll", "Concat": "concat", "Convolution": "conv",
    "Data": "data", "Dropout": "dropout", "EuclideanLoss": "euclidean_loss",
    "Flatten": "flatten", "InnerProduct": "innerproduct", "LRN": "lrn", "Pooling": "pool",
    "ReLU": "relu", "Sigmoid": "sigmoid", "Softmax": "softmax",
    "SoftmaxWithLoss": "softmax_loss", "Split": "split", "TanH": "tanh",
}


def random_weights(net: NetSpec, rng: np.random.Generator, *, input_std: float = 50.0
                   ) -> dict:
    """Random parameters for every layer of ``net`` that has any.

    Weights are He-normal, ``N(0, 2 / fan_in)`` (He et al. 2015), which keeps the mean
    square of ReLU activations roughly constant from layer to layer, so nothing vanishes or
    explodes even through VGG16's 16 layers. The first layer's weights are further divided by
    ``input_std`` so that an input of that standard deviation gives unit-scale activations,
    and the last InnerProduct (the class scores) has standard deviation ``1 / sqrt(fan_in)``
    so that softmax outputs are spread, not one-hot. Biases are ``N(0, 0.1²)``. (Deconvolution
    weights are drawn the same way.) BatchNorm gets running sums of a mean ``N(0, 0.5²)`` and a
    variance ``U(0.5, 2)`` with a scale factor ``U(0.5, 5)``; Scale ``1 + N(0, 0.1²)`` (bias
    ``N(0, 0.1²)``); PReLU slopes ``U(0, 0.3)``.

    Parameters
    ----------
    net : NetSpec
    rng : numpy.random.Generator
        The only source of randomness.
    input_std : float
        Typical standard deviation of the network input: about 50 for mean-subtracted
        0–255 images (the zoo nets), about 0.3 for LeNet's [0, 1] digits.

    Returns
    -------
    dict of str to list of ndarray
        Layer name → [weight, bias] (float32, the shapes of
        :func:`preddiff.caffe.net.param_shapes`).
    """
    shapes = param_shapes(net)
    names = [layer.name for layer in net.layers if layer.name in shapes]
    last_ip = [n for n in names if net.layer(n).type == "InnerProduct"][-1:]
    first = set(_first_layers(net, shapes))
    weights = {}
    for name in names:
        kind = net.layer(name).type
        if kind in _NORMALISATION_WEIGHTS:
            weights[name] = _NORMALISATION_WEIGHTS[kind](shapes[name], rng)
            continue
        wshape, *rest = shapes[name]
        transpose = str(net.layer(name).params.get("transpose", "false")).lower() == "true"
        fan_in = wshape[0] if transpose else math.prod(wshape[1:])
        std = math.sqrt(1.0 / fan_in) if name in last_ip else math.sqrt(2.0 / fan_in)
        if name in first:
            std /= input_std
        blobs = [(rng.standard_normal(wshape, dtype=np.float32) * np.float32(std))]
        blobs += [rng.normal(0.0, 0.1, size=s).astype(np.float32) for s in rest]
        weights[name] = blobs
    return weights


def _batch_norm_weights(shapes, rng) -> list:
    """Running sums as Caffe stores them: mean·f, variance·f and the factor f."""
    (c,), _, _ = shapes
    factor = np.float32(rng.uniform(0.5, 5.0))
    mean = rng.normal(0.0, 0.5, size=c).astype(np.float32)
    var = rng.uniform(0.5, 2.0, size=c).astype(np.float32)
    return [mean * factor, var * factor, np.array([factor], np.float32)]


def _scale_weights(shapes, rng) -> list:
    return [(1.0 + rng.normal(0.0, 0.1, size=s)).astype(np.float32) if i == 0
            else rng.normal(0.0, 0.1, size=s).astype(np.float32) for i, s in enumerate(shapes)]


def _prelu_weights(shapes, rng) -> list:
    return [rng.uniform(0.0, 0.3, size=shapes[0]).astype(np.float32)]


_NORMALISATION_WEIGHTS = {"BatchNorm": _batch_norm_weights, "Scale": _scale_weights,
                          "PReLU": _prelu_weights}


def _first_layers(net: NetSpec, shapes: dict) -> list:
    """Parametric layers that read a net input directly."""
    return [layer.name for layer in net.layers
            if layer.name in shapes and any(b in net.inputs for b in layer.bottoms)]


def _blob(array: np.ndarray, legacy: bool) -> Builder:
    blob = Builder()
    if legacy:
        if array.ndim > 4:
            raise InvalidArgument(f"a legacy blob has at most 4 axes, got shape {array.shape}")
        for number, dim in zip((1, 2, 3, 4), (1,) * (4 - array.ndim) + array.shape):
            blob.varint(number, dim)
    else:
        blob.message(7, Builder().packed_varints(1, array.shape))
    return blob.packed(5, array, "<f4")


def _layer_record(style: str, name: str, type_: str, bottoms, tops, blobs, v0: bool
                  ) -> tuple[int, Builder]:
    """(NetParameter field number, encoded layer) in the requested style."""
    msg = Builder()
    if style == "layer":
        msg.string(1, name).string(2, type_)
        for b in bottoms:
            msg.string(3, b)
        for t in tops:
            msg.string(4, t)
        for array in blobs:
            msg.message(7, _blob(array, legacy=False))
        return 100, msg
    # V1LayerParameter: bottom 2, top 3, name 4, type 5, blobs 6; V0 layer 1.
    for b in bottoms:
        msg.string(2, b)
    for t in tops:
        msg.string(3, t)
    if v0:
        if type_ not in _V0_TYPES:
            raise InvalidArgument(f"layer {name!r}: type {type_} has no V0 equivalent")
        inner = Builder().string(1, name).string(2, _V0_TYPES[type_])
        for array in blobs:
            inner.message(50, _blob(array, legacy=True))
        msg.message(1, inner)
        return 2, msg
    if type_ not in V1_TYPE_NUMBERS:
        raise InvalidArgument(f"layer {name!r}: type {type_} has no V1 enum value")
    msg.string(4, name).varint(5, V1_TYPE_NUMBERS[type_])
    for array in blobs:
        msg.message(6, _blob(array, legacy=True))
    return 2, msg


def _extra_layers(net: NetSpec, rng: np.random.Generator) -> tuple[list, list]:
    """Unused layers (before, after the net's own): a Data layer, GoogLeNet-like auxiliary
    classifier weights and loss/accuracy layers, with names the deploy net does not use."""
    taken = {layer.name for layer in net.layers}

    def unique(name):
        while name in taken:
            name += "_extra"
        taken.add(name)
        return name

    input_names = list(net.inputs)
    tap = net.blob_names[0]
    label = "label"
    before = [(unique("train_data"), "Data", [], input_names + [label], [])]
    after = [
        (unique("loss1/conv"), "Convolution", [tap], ["loss1/conv"],
         [rng.standard_normal((16, 8, 1, 1), dtype=np.float32),
          rng.standard_normal(16, dtype=np.float32)]),
        (unique("loss1/fc"), "InnerProduct", ["loss1/conv"], ["loss1/fc"],
         [rng.standard_normal((10, 32), dtype=np.float32),
          rng.standard_normal(10, dtype=np.float32)]),
        (unique("loss1/loss"), "SoftmaxWithLoss", ["loss1/fc", label], ["loss1/loss"], []),
        (unique("accuracy"), "Accuracy", [net.blob_names[-1], label], ["accuracy"], []),
    ]
    return before, after


def write_caffemodel(net: NetSpec, weights: dict, path, *, style: str = "layer",
                     extra_layers: bool = True, v0_layers=(), seed: int = 0) -> Path:
    """Write ``weights`` as a binary ``.caffemodel`` of ``net``.

    Parameters
    ----------
    net : NetSpec
        Supplies the layer names, types, bottoms and tops (every layer is written, those
        without weights with no blobs, as Caffe does).
    weights : dict of str to list of ndarray
        Layer name → blobs, written as given (no check against the net, so tests can write
        mismatching files).
    path : str or os.PathLike
        Destination; written atomically.
    style : {"layer", "layers"}
        The current format or the old V1 format (see the module docstring).
    extra_layers : bool
        Also write layers the deploy net lacks (a reader must ignore them).
    v0_layers : iterable of str, or True
        In the ``"layers"`` style, layers to wrap in an embedded ``V0LayerParameter``
        (name, type string and blobs in the V0 layer); True wraps every layer, which is the
        genuine V0 file that Caffe's (and OpenCV's) ``UpgradeV0Net`` expects.
    seed : int
        Seed of the extra layers' random weights.

    Returns
    -------
    Path
    """
    if style not in ("layer", "layers"):
        raise InvalidArgument(f"style must be 'layer' or 'layers', got {style!r}")
    all_v0 = v0_layers is True
    v0_names = set() if all_v0 else set(v0_layers)
    if (all_v0 or v0_names) and style != "layers":
        raise InvalidArgument("v0_layers needs style='layers' (V0 layers exist only there)")
    before, after = _extra_layers(net, np.random.default_rng(seed)) if extra_layers else ([], [])
    records = list(before)
    for layer in net.layers:
        if layer.type == "Input" and style == "layers":
            continue  # no V1 enum: the inputs go into NetParameter.input instead
        records.append((layer.name, layer.type, layer.bottoms, layer.tops,
                        list(weights.get(layer.name, []))))
    records += after
    top = Builder().string(1, net.name or "net")
    if not extra_layers:
        for name, shape in net.inputs.items():  # as Caffe's Net::ToProto writes them
            top.string(3, name)
        if style == "layers":
            for shape in net.inputs.values():
                for dim in shape:
                    top.varint(4, dim)
    for name, type_, bottoms, tops, blobs in records:
        number, msg = _layer_record(style, name, type_, bottoms, tops, blobs,
                                    all_v0 or name in v0_names)
        top.message(number, msg)
    return _write_atomic(top, Path(os.fspath(path)))


def _write_atomic(message: Builder, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            message.write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def narrow_prototxt(text: str, factor: int) -> str:
    """The same net with ``num_output`` of every Convolution and InnerProduct divided by
    ``factor``, except the last InnerProduct (the class count is kept).

    Narrowed counts are at least 1 and rounded up to a multiple of the largest ``group`` in
    the net (of all groups' least common multiple), so grouped convolutions stay valid.

    Parameters
    ----------
    text : str
        A prototxt (either style).
    factor : int
        At least 1 (1 returns an equivalent net).

    Returns
    -------
    str
        The narrowed prototxt (reformatted; comments are dropped).
    """
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise InvalidArgument(f"factor must be an integer >= 1, got {factor!r}")
    message = parse(text)
    key = "layer" if message.get("layer") else "layers"
    layers = message.get(key, [])
    kinds = [str(m.get("type", [""])[0]) for m in layers]
    param = {"Convolution": "convolution_param", "CONVOLUTION": "convolution_param",
             "InnerProduct": "inner_product_param", "INNER_PRODUCT": "inner_product_param"}
    groups = [int(m["convolution_param"][0].get("group", [1])[0])
              for m in layers if "convolution_param" in m]
    multiple = math.lcm(*groups) if groups else 1
    ip_indices = [i for i, k in enumerate(kinds) if k in ("InnerProduct", "INNER_PRODUCT")]
    keep = ip_indices[-1] if ip_indices else None
    for i, (layer, kind) in enumerate(zip(layers, kinds)):
        if kind not in param or i == keep or param[kind] not in layer:
            continue
        sub = layer[param[kind]][0]
        n = int(sub["num_output"][0])
        narrowed = max(1, round(n / factor))
        sub["num_output"] = [-(-narrowed // multiple) * multiple]
    return format_message(message)


def random_onnx(name_or_prototxt, *, factor: int = 1, seed: int = 0, outputs=None,
                style: str = "layers", input_std: float | None = None):
    """A random-weight ONNX model of a zoo net (or of any prototxt), through the real path:
    random weights → a temporary caffemodel → :func:`preddiff.caffe.caffe_to_onnx`.

    Parameters
    ----------
    name_or_prototxt : str or os.PathLike
        A bundled model name (``"alexnet"``, ``"googlenet"``, ``"vgg16"``, ``"lenet"``), a
        prototxt path, or prototxt text.
    factor : int
        Channel narrowing (:func:`narrow_prototxt`); 1 keeps the real widths.
    seed : int
        Seed of the weights.
    outputs : None, "all" or list of str
        As for :func:`~preddiff.caffe.caffe_to_onnx`.
    style : {"layers", "layer"}
        Binary format of the intermediate caffemodel.
    input_std : float, optional
        As for :func:`random_weights`; by default 0.3 for single-channel nets (LeNet's
        [0, 1] digits) and 50 otherwise.

    Returns
    -------
    onnx.ModelProto
    """
    from .to_onnx import caffe_to_onnx

    text = _prototxt_text(name_or_prototxt)
    if factor != 1:
        text = narrow_prototxt(text, factor)
    net = load_net(text)
    if input_std is None:
        input_std = 0.3 if next(iter(net.inputs.values()))[1] == 1 else 50.0
    weights = random_weights(net, np.random.default_rng(seed), input_std=input_std)
    with tempfile.TemporaryDirectory(prefix="preddiff-") as tmp:
        path = write_caffemodel(net, weights, Path(tmp) / "random.caffemodel", style=style,
                                seed=seed)
        return caffe_to_onnx(net, path, outputs=outputs)


def _prototxt_text(name_or_prototxt) -> str:
    if isinstance(name_or_prototxt, str):
        if "\n" in name_or_prototxt or "{" in name_or_prototxt:
            return name_or_prototxt
        bundled = MODELS_DIR / name_or_prototxt / "deploy.prototxt"
        if "/" not in name_or_prototxt and bundled.is_file():
            return bundled.read_text(encoding="utf-8")
    path = Path(os.fspath(name_or_prototxt))
    if not path.is_file():
        raise InvalidArgument(f"{name_or_prototxt!r} is neither a bundled model (alexnet, "
                              "googlenet, vgg16, lenet) nor a prototxt file")
    return path.read_text(encoding="utf-8")
