"""Read the learned parameters of a binary Caffe ``.caffemodel``.

Scope
-----
A ``.caffemodel`` is a serialised ``caffe.NetParameter`` (BVLC/caffe ``src/caffe/proto/
caffe.proto``). Every format the model zoo ships is read:

* current: ``NetParameter.layer`` (field 100) of ``LayerParameter`` — name 1, type 2 (string),
  blobs 7 — whose ``BlobProto`` gives its shape as ``BlobShape`` (field 7, ``dim`` = 1);
* old: ``NetParameter.layers`` (field 2) of ``V1LayerParameter`` — name 4, type 5 (enum),
  blobs 6 — whose blobs give the legacy ``num``/``channels``/``height``/``width`` (fields 1–4),
  a 4-D shape right-aligned to the true one (an InnerProduct weight ``(N, K)`` is stored as
  1×1×N×K, a bias as 1×1×1×N);
* older still: a ``V1LayerParameter`` that embeds a ``V0LayerParameter`` in field 1 (name 1,
  type 2, blobs 50), which Caffe's ``UpgradeV0Net`` turns into a layer of that name.

``BlobProto`` values are ``data`` (field 5, float) or ``double_data`` (field 8), packed or not.
The AlexNet, GoogLeNet and VGG16 files of the zoo use the old ``layers`` format.

As Caffe's ``Net::CopyTrainedLayersFrom`` does, layers are matched to the deploy net by name:
layers of the file that the net lacks (data, loss and accuracy layers, GoogLeNet's auxiliary
classifiers) are ignored; each matched layer must have as many blobs as the net expects, each
of the expected shape (Caffe's ``Blob::ShapeEquals`` accepts the right-aligned legacy form).

Speed and memory
----------------
The file is read into memory once; only the fields that frame layers and blobs are walked in
Python, and each float array is a single :func:`numpy.frombuffer` view of the file's bytes,
copied once into an aligned float32 array of the final shape. Peak memory is about twice the
file size (VGG16: 553 MB file); ``bench/read_caffemodel.py`` measures it.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np

from ..errors import CaffeFormatError
from .net import NetSpec, param_shapes
from .wire import FIXED32, FIXED64, LENGTH, VARINT, FieldReader, WireError, packed_varints, \
    to_int64

__all__ = ["read_caffemodel", "RawBlob", "RawLayer", "scan_caffemodel"]

# Field numbers, from caffe.proto.
_NET_NAME, _NET_LAYERS_V1, _NET_LAYER = 1, 2, 100
_LAYER_NAME, _LAYER_TYPE, _LAYER_BLOBS = 1, 2, 7
_V1_V0LAYER, _V1_NAME, _V1_TYPE, _V1_BLOBS = 1, 4, 5, 6
_V0_NAME, _V0_TYPE, _V0_BLOBS = 1, 2, 50
_BLOB_LEGACY = {1: "num", 2: "channels", 3: "height", 4: "width"}
_BLOB_DATA, _BLOB_SHAPE, _BLOB_DOUBLE = 5, 7, 8
_SHAPE_DIM = 1


@dataclasses.dataclass
class RawBlob:
    """Where one ``BlobProto``'s values lie in the file, and its declared shape.

    Attributes
    ----------
    shape : tuple of int or None
        From ``BlobShape`` (None when absent).
    legacy : tuple of int or None
        ``(num, channels, height, width)`` when any legacy field is present (missing ones 0,
        the protobuf default); Caffe then ignores ``shape``.
    chunks : list of (offset, count, stride, dtype)
        The value runs (one for a packed field; several if the field was split).
    """

    shape: tuple | None = None
    legacy: tuple | None = None
    chunks: list = dataclasses.field(default_factory=list)
    double_chunks: list = dataclasses.field(default_factory=list)

    @property
    def declared_shape(self) -> tuple:
        """The shape the file declares (legacy 4-D form when present)."""
        if self.legacy is not None:
            return self.legacy
        return self.shape if self.shape is not None else ()

    def count(self) -> int:
        chunks = self.chunks or self.double_chunks
        return sum(c[1] for c in chunks)

    def values(self, buf: memoryview) -> np.ndarray:
        """The values as a new float32 array, shape ``(count,)``."""
        chunks = self.chunks or self.double_chunks  # Caffe: double_data only without data
        out = np.empty(self.count(), dtype=np.float32)
        pos = 0
        for offset, count, stride, dtype in chunks:
            view = np.ndarray((count,), dtype=dtype, buffer=buf, offset=offset,
                              strides=(stride,))
            out[pos:pos + count] = view  # the only copy (and the double -> float cast)
            pos += count
        return out


@dataclasses.dataclass
class RawLayer:
    """One layer record of the file: its name, type (as written) and blobs."""

    name: str
    type: str
    blobs: list


def read_caffemodel(path, net: NetSpec | None = None) -> dict:
    """Read the parameter blobs of a ``.caffemodel``.

    Parameters
    ----------
    path : str or os.PathLike
        The binary file (any format listed in the module docstring).
    net : NetSpec, optional
        The deploy net (:func:`preddiff.caffe.load_net`). When given, only its layers are
        returned, each blob is checked against and reshaped to the shape the net expects
        (a legacy 1×1×N×K InnerProduct weight becomes (N, K)), and a layer with parameters
        that the file lacks is an error. Without it every layer with blobs is returned, in
        the shape the file declares (legacy shapes with their leading 1s dropped).

    Returns
    -------
    dict of str to list of ndarray
        Layer name → its blobs as float32 arrays (weights first, then bias), in file order.

    Raises
    ------
    CaffeFormatError
        The file is missing, empty, truncated or corrupt (the message names the path); a
        blob's value count disagrees with its shape; or, with ``net``, a layer has the wrong
        number of blobs or a blob the wrong shape (the message names the layer, the expected
        and the found shape), or a layer of the net has no weights in the file.
    """
    path = Path(os.fspath(path))
    data = _read_bytes(path)
    buf = memoryview(data)
    layers = scan_caffemodel(buf, path)
    if net is None:
        return {layer.name: [_blob_array(b, buf, None, path, layer.name, i)
                             for i, b in enumerate(layer.blobs)]
                for layer in layers if layer.blobs}
    return _match_net(layers, buf, net, path)


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CaffeFormatError(f"caffemodel not found: {path}") from None
    except IsADirectoryError:
        raise CaffeFormatError(f"caffemodel {path} is a directory, not a file") from None
    except OSError as exc:
        raise CaffeFormatError(f"cannot read caffemodel {path}: {exc}") from None
    if not data:
        raise CaffeFormatError(f"caffemodel {path} is empty (0 bytes)")
    return data


def _match_net(layers: list, buf: memoryview, net: NetSpec, path: Path) -> dict:
    expected = param_shapes(net)
    wanted = {layer.name for layer in net.layers}
    found = {}
    for layer in layers:  # a later record of the same name wins, as in Caffe
        if layer.name in wanted:
            found[layer.name] = layer
    result = {}
    for name in [layer.name for layer in net.layers if layer.name in found]:
        shapes = expected.get(name, [])
        blobs = found[name].blobs
        if len(blobs) != len(shapes):
            raise CaffeFormatError(
                f"{path}: layer {name!r} has {len(blobs)} blob(s) in the caffemodel "
                f"({_shapes_text(b.declared_shape for b in blobs)}) but the net expects "
                f"{len(shapes)} ({_shapes_text(shapes)})"
            )
        if blobs:
            result[name] = [_blob_array(b, buf, s, path, name, i)
                            for i, (b, s) in enumerate(zip(blobs, shapes))]
    missing = [name for name in expected if name not in result]
    if missing:
        raise CaffeFormatError(
            f"{path}: layer {missing[0]!r} ({net.layer(missing[0]).type}) has no weights in "
            f"the caffemodel ({len(missing)} layer(s) missing: {', '.join(missing[:5])}"
            f"{', …' if len(missing) > 5 else ''}); is it the caffemodel of this net?"
        )
    return result


def _shapes_text(shapes) -> str:
    return ", ".join("x".join(map(str, s)) or "scalar" for s in shapes) or "none"


def _legacy_matches(legacy: tuple, shape: tuple) -> bool:
    """Caffe's ``Blob::ShapeEquals`` for a legacy blob: the target, padded on the left with
    1s to four axes, equals (num, channels, height, width)."""
    return len(shape) <= 4 and (1,) * (4 - len(shape)) + tuple(shape) == tuple(legacy)


def _blob_array(blob: RawBlob, buf, expected, path, layer_name, index) -> np.ndarray:
    what = ("weights", "bias")[index] if index < 2 else f"blob {index}"
    declared = blob.declared_shape
    if expected is not None:
        ok = (_legacy_matches(blob.legacy, expected) if blob.legacy is not None
              else tuple(declared) == tuple(expected))
        if not ok:
            raise CaffeFormatError(
                f"{path}: layer {layer_name!r} {what}: the net expects shape "
                f"{_shapes_text([expected])}, the caffemodel has {_shapes_text([declared])}"
            )
        shape = tuple(expected)
    elif blob.legacy is not None:
        shape = tuple(blob.legacy)
        while len(shape) > 1 and shape[0] == 1:  # undo the right-aligned 4-D padding
            shape = shape[1:]
    else:
        shape = tuple(declared)
    count = blob.count()
    if count != math.prod(shape):
        raise CaffeFormatError(
            f"{path}: layer {layer_name!r} {what} declares shape {_shapes_text([declared])} "
            f"({math.prod(declared)} values) but holds {count} values: truncated or corrupt"
        )
    return blob.values(buf).reshape(shape)


# --------------------------------------------------------------------------------------------
# Walking the file
# --------------------------------------------------------------------------------------------
def scan_caffemodel(buf: memoryview, path="<caffemodel>") -> list:
    """Locate every layer and blob of a caffemodel without copying any values.

    Parameters
    ----------
    buf : memoryview
        The whole file.
    path : str or Path
        For error messages.

    Returns
    -------
    list of RawLayer
        In file order (``layers`` and ``layer`` records alike).

    Raises
    ------
    CaffeFormatError
        The bytes are not a NetParameter with at least one layer.
    """
    try:
        layers = []
        for field in FieldReader(buf):
            if field.number == _NET_LAYER:
                _expect(field, LENGTH, "NetParameter.layer")
                layers.append(_scan_layer(buf, field))
            elif field.number == _NET_LAYERS_V1:
                _expect(field, LENGTH, "NetParameter.layers")
                layers.append(_scan_v1_layer(buf, field))
            elif field.number == _NET_NAME:
                _expect(field, LENGTH, "NetParameter.name")
    except (WireError, UnicodeDecodeError) as exc:
        raise CaffeFormatError(
            f"caffemodel {path} is truncated or corrupt (not a Caffe NetParameter): {exc}"
        ) from None
    if not layers:
        raise CaffeFormatError(f"caffemodel {path} contains no layers: truncated, corrupt or "
                               "not a caffemodel")
    return layers


def _expect(field, wire_type: int, what: str) -> None:
    if field.wire_type != wire_type:
        raise WireError(f"{what} (field {field.number}) has wire type {field.wire_type}, "
                        f"expected {wire_type}, at byte {field.key_start}")


def _text(buf, field) -> str:
    return bytes(buf[field.start:field.end]).decode("utf-8")


def _scan_string_typed_layer(buf, outer, message: str, numbers) -> RawLayer:
    """Name, string type and blobs of a LayerParameter or V0LayerParameter (same layout,
    other field numbers: ``numbers`` = (name, type, blobs))."""
    name_no, type_no, blobs_no = numbers
    name, type_, blobs = "", "", []
    for field in FieldReader(buf, outer.start, outer.end):
        if field.number == name_no:
            _expect(field, LENGTH, f"{message}.name")
            name = _text(buf, field)
        elif field.number == type_no:
            _expect(field, LENGTH, f"{message}.type")
            type_ = _text(buf, field)
        elif field.number == blobs_no:
            _expect(field, LENGTH, f"{message}.blobs")
            blobs.append(_scan_blob(buf, field))
    return RawLayer(name, type_, blobs)


def _scan_layer(buf, outer) -> RawLayer:
    return _scan_string_typed_layer(buf, outer, "LayerParameter",
                                    (_LAYER_NAME, _LAYER_TYPE, _LAYER_BLOBS))


def _scan_v1_layer(buf, outer) -> RawLayer:
    name, type_, blobs, v0 = "", "", [], None
    for field in FieldReader(buf, outer.start, outer.end):
        if field.number == _V1_NAME:
            _expect(field, LENGTH, "V1LayerParameter.name")
            name = _text(buf, field)
        elif field.number == _V1_TYPE:
            _expect(field, VARINT, "V1LayerParameter.type")
            type_ = str(field.value)
        elif field.number == _V1_BLOBS:
            _expect(field, LENGTH, "V1LayerParameter.blobs")
            blobs.append(_scan_blob(buf, field))
        elif field.number == _V1_V0LAYER:
            _expect(field, LENGTH, "V1LayerParameter.layer")
            v0 = _scan_v0_layer(buf, field)
    if v0 is not None:
        # Caffe's UpgradeV0LayerParameter takes name, type and blobs from the V0 layer; we
        # fall back on the V1 fields where the V0 layer lacks them.
        return RawLayer(v0.name or name, v0.type or type_, v0.blobs or blobs)
    return RawLayer(name, type_, blobs)


def _scan_v0_layer(buf, outer) -> RawLayer:
    return _scan_string_typed_layer(buf, outer, "V0LayerParameter",
                                    (_V0_NAME, _V0_TYPE, _V0_BLOBS))


def _scan_blob(buf, outer) -> RawBlob:
    blob = RawBlob()
    legacy = {}
    reader = FieldReader(buf, outer.start, outer.end)
    for field in reader:
        if field.number in (_BLOB_DATA, _BLOB_DOUBLE):
            width, wire_fixed = (4, FIXED32) if field.number == _BLOB_DATA else (8, FIXED64)
            dtype = "<f4" if width == 4 else "<f8"
            chunks = blob.chunks if field.number == _BLOB_DATA else blob.double_chunks
            if field.wire_type == LENGTH:  # packed: one view of the payload
                nbytes = field.end - field.start
                if nbytes % width:
                    raise WireError(f"packed {dtype} payload of {nbytes} bytes at byte "
                                    f"{field.start} is not a multiple of {width}")
                chunks.append((field.start, nbytes // width, width, dtype))
            elif field.wire_type == wire_fixed:  # unpacked: a run of equal keys
                offset, count, stride = reader.take_run(field)
                chunks.append((offset, count, stride, dtype))
            else:
                _expect(field, LENGTH, "BlobProto.data")
        elif field.number in _BLOB_LEGACY:
            _expect(field, VARINT, f"BlobProto.{_BLOB_LEGACY[field.number]}")
            legacy[field.number] = to_int64(field.value)
        elif field.number == _BLOB_SHAPE:
            _expect(field, LENGTH, "BlobProto.shape")
            blob.shape = _scan_shape(buf, field)
    if legacy:
        blob.legacy = tuple(legacy.get(i, 0) for i in (1, 2, 3, 4))
    return blob


def _scan_shape(buf, outer) -> tuple:
    dims = []
    for field in FieldReader(buf, outer.start, outer.end):
        if field.number != _SHAPE_DIM:
            continue
        if field.wire_type == LENGTH:
            dims.extend(to_int64(v) for v in packed_varints(buf, field.start, field.end))
        elif field.wire_type == VARINT:
            dims.append(to_int64(field.value))
        else:
            _expect(field, LENGTH, "BlobShape.dim")
    return tuple(dims)
