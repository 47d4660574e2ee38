"""Reading Caffe nets and weights, and converting them faithfully to ONNX.

* :func:`load_net` — a ``.prototxt`` (``layer {}`` or old ``layers {}`` style) → :class:`NetSpec`
  (:mod:`.prototxt` parses the text format, :mod:`.net` models the net and its shapes);
* :func:`read_caffemodel` — a binary ``.caffemodel`` (current, V1 or V0 layers) → layer name →
  float32 blobs (:mod:`.caffemodel`, over the wire-format codec :mod:`.wire`);
* :func:`caffe_to_onnx`, :func:`save_onnx` — the ONNX model whose every value named after a
  Caffe blob holds what Caffe holds there (:mod:`.to_onnx`);
* :mod:`.writer` — random-weight caffemodels in the real binary formats, for tests and
  benchmarks.

The reference for faithfulness is real BVLC Caffe: every blob of small nets probing its layer
semantics, and of ResNet-50, computed by Caffe itself (``tests/test_caffe_golden.py``);
OpenCV's Caffe importer (``cv2.dnn.readNetFromCaffe``) is a second opinion
(``tests/test_caffe_to_onnx.py``).
"""
from .caffemodel import read_caffemodel
from .net import LayerSpec, NetSpec, blob_shapes, load_net, param_shapes
from .to_onnx import ONNX_OPS, caffe_to_onnx, net_to_onnx, save_onnx

__all__ = [
    "load_net", "NetSpec", "LayerSpec", "read_caffemodel", "caffe_to_onnx", "net_to_onnx",
    "save_onnx", "ONNX_OPS", "blob_shapes", "param_shapes",
]
