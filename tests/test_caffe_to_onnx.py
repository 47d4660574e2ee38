"""Caffe → ONNX faithfulness.

The reference is independent of our code: OpenCV 4.x's Caffe importer
(``cv2.dnn.readNetFromCaffe``) for whole nets, blob by blob, and a literal transcription of
Caffe's pooling loops (``pooling_layer.cpp``) for the rounding edge cases. Every comparison
uses the normalised max error ``max|a − b| / max|b|`` ≤ 1e-4.
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from preddiff.caffe import ONNX_OPS, caffe_to_onnx, load_net, save_onnx
from preddiff.caffe.net import param_shapes, pooled_size
from preddiff.caffe.writer import narrow_prototxt, random_onnx, random_weights, \
    write_caffemodel
from preddiff.errors import CaffeFormatError, InvalidArgument, UnsupportedLayer
from preddiff.graph import Graph
from preddiff.resources import MODELS_DIR

cv2 = pytest.importorskip("cv2")
TOL = 1e-4


def _input(shape) -> str:
    return 'input: "data"\n' + "".join(f"input_dim: {d}\n" for d in shape)


def _files(tmp_path, text, rng, *, style="layer", input_std=50.0):
    """Write ``text`` and a random-weight caffemodel for it; return (net, prototxt, model)."""
    proto = tmp_path / "deploy.prototxt"
    proto.write_text(text)
    net = load_net(proto)
    weights = random_weights(net, rng, input_std=input_std)
    model = write_caffemodel(net, weights, tmp_path / f"{style}.caffemodel", style=style)
    return net, proto, model


def _run_onnx(model, x) -> dict:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"data": x})))


def _run_opencv(proto, caffemodel, net, x) -> dict:
    """Every blob after OpenCV's forward pass: a blob is the output of the last layer that
    writes it (for an in-place ReLU, the ReLU layer)."""
    cvnet = cv2.dnn.readNetFromCaffe(str(proto), str(caffemodel))
    cvnet.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cvnet.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    cvnet.enableFusion(False)
    writer = {}
    for layer in net.layers:
        if layer.type != "Input":
            writer.update((top, layer.name) for top in layer.tops)
    names = net.blob_names
    cvnet.setInput(x)
    return dict(zip(names, cvnet.forward([writer[b] for b in names])))


def _error(ours, ref) -> float:
    assert ours.shape == ref.shape
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


def _assert_parity(proto, caffemodel, rng, scale=50.0, batch=2):
    net = load_net(proto)
    model = caffe_to_onnx(proto, caffemodel, outputs="all")
    shape = next(iter(net.inputs.values()))
    x = rng.normal(0.0, scale, size=(batch, *shape[1:])).astype(np.float32)
    ours, ref = _run_onnx(model, x), _run_opencv(proto, caffemodel, net, x)
    assert set(ours) == set(ref) == set(net.blob_names)
    errors = {name: _error(ours[name], ref[name]) for name in ref}
    worst = max(errors, key=errors.get)
    print(f"{net.name}: worst blob {worst}, normalised error {errors[worst]:.2e}")  # with -s
    assert errors[worst] <= TOL, f"blob {worst}: normalised error {errors[worst]:.2e}"
    return ours


# --------------------------------------------------------------------------------------------
# Pooling: Caffe's rounding and AVE divisor, against a literal transcription and OpenCV
# --------------------------------------------------------------------------------------------
def caffe_pooling(x, method, kernel, pad, stride):
    """Caffe's PoolingLayer::Forward_cpu, loop by loop (float64)."""
    (kh, kw), (ph, pw), (sh, sw) = kernel, pad, stride
    height, width = x.shape[2:]
    clip = ph > 0 or pw > 0
    oh = pooled_size(height, kh, ph, sh, clip=clip)
    ow = pooled_size(width, kw, pw, sw, clip=clip)
    y = np.empty(x.shape[:2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            hstart, wstart = i * sh - ph, j * sw - pw
            hend, wend = min(hstart + kh, height + ph), min(wstart + kw, width + pw)
            pool_size = (hend - hstart) * (wend - wstart)
            hstart, wstart = max(hstart, 0), max(wstart, 0)
            hend, wend = min(hend, height), min(wend, width)
            window = x[:, :, hstart:hend, wstart:wend].astype(np.float64)
            if method == "MAX":
                y[:, :, i, j] = window.max(axis=(2, 3))
            else:
                y[:, :, i, j] = window.sum(axis=(2, 3)) / pool_size
    return y


POOL_CASES = {
    # name: (method, H, W, pooling_param text, expected output H, W)
    "max_ceil_no_pad": ("MAX", 112, 112, "kernel_size: 3 stride: 2", (56, 56)),
    "max_pad_clip": ("MAX", 5, 5, "kernel_size: 2 stride: 2 pad: 1", (3, 3)),
    "max_pad1_stride1": ("MAX", 7, 7, "kernel_size: 3 stride: 1 pad: 1", (7, 7)),
    "ave_no_pad_overhang": ("AVE", 6, 6, "kernel_size: 3 stride: 2", (3, 3)),
    "ave_pad_inside": ("AVE", 7, 7, "kernel_size: 3 stride: 2 pad: 1", (4, 4)),
    "ave_pad_overhang": ("AVE", 6, 6, "kernel_size: 3 stride: 2 pad: 1", (4, 4)),
    "ave_pad_clip": ("AVE", 5, 5, "kernel_size: 2 stride: 2 pad: 1", (3, 3)),
    "ave_7x7_global_size": ("AVE", 7, 7, "kernel_size: 7 stride: 1", (1, 1)),
    "ave_rectangular": ("AVE", 9, 7, "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 "
                        "pad_h: 1 pad_w: 1", (5, 3)),
    "max_rectangular": ("MAX", 9, 7, "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 "
                        "pad_h: 1 pad_w: 1", (5, 3)),
    # Caffe clips *both* axes when either has padding (`if (pad_h_ || pad_w_)`): W 6 -> 2
    # windows, not ceil's 3. OpenCV 4.14 clips per axis and makes a third, empty window
    # (NaN), so these cases are checked against Caffe's loops only.
    "ave_mixed_pad": ("AVE", 9, 6, "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 "
                      "pad_h: 1 pad_w: 0", (5, 2)),
    "max_mixed_pad": ("MAX", 9, 6, "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 "
                      "pad_h: 1 pad_w: 0", (5, 2)),
}
OPENCV_DIFFERS = {"ave_mixed_pad", "max_mixed_pad"}


@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_pooling_matches_caffe_loops_and_opencv(case, tmp_path, rng):
    method, h, w, param, expected = POOL_CASES[case]
    text = _input((2, 3, h, w)) + (
        'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" '
        f"pooling_param {{ pool: {method} {param} }} }}")
    net, proto, caffemodel = _files(tmp_path, text, rng)
    x = rng.normal(size=(2, 3, h, w)).astype(np.float32)
    ours = _run_onnx(caffe_to_onnx(proto, caffemodel), x)["pool"]
    assert ours.shape[2:] == expected
    p = net.layer("pool").params
    kernel = (p.get("kernel_h", p.get("kernel_size")), p.get("kernel_w", p.get("kernel_size")))
    pad = (p.get("pad_h", p.get("pad", 0)), p.get("pad_w", p.get("pad", 0)))
    stride = (p.get("stride_h", p.get("stride", 1)), p.get("stride_w", p.get("stride", 1)))
    assert _error(ours, caffe_pooling(x, method, kernel, pad, stride)) <= 1e-6
    if case not in OPENCV_DIFFERS:
        assert _error(ours, _run_opencv(proto, caffemodel, net, x)["pool"]) <= TOL


@pytest.mark.parametrize("method, op", [("MAX", "GlobalMaxPool"), ("AVE", "GlobalAveragePool")])
def test_global_pooling(method, op, tmp_path, rng):
    text = _input((2, 3, 5, 4)) + (
        'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" '
        f"pooling_param {{ pool: {method} global_pooling: true }} }}")
    net, proto, caffemodel = _files(tmp_path, text, rng)
    model = caffe_to_onnx(proto, caffemodel)
    assert [n.op_type for n in model.graph.node] == [op]
    x = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
    assert _error(_run_onnx(model, x)["pool"], _run_opencv(proto, caffemodel, net, x)["pool"]) \
        <= TOL


@pytest.mark.parametrize("method, empty", [("MAX", -np.finfo(np.float32).max),
                                           ("AVE", np.nan)])
def test_pooling_window_beyond_the_input_gives_what_caffe_gives(method, empty, tmp_path, rng):
    # No padding, stride 3 > kernel 1 on 5 pixels: ceil gives a third window starting at 6,
    # which holds no input element: Caffe's loop gives -FLT_MAX (MAX) or 0/0 (AVE).
    text = _input((1, 2, 5, 5)) + (
        'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" '
        f"pooling_param {{ pool: {method} kernel_size: 1 stride: 3 }} }}")
    _, proto, caffemodel = _files(tmp_path, text, rng)
    x = rng.normal(size=(1, 2, 5, 5)).astype(np.float32)
    ours = _run_onnx(caffe_to_onnx(proto, caffemodel), x)["pool"]
    assert ours.shape == (1, 2, 3, 3)
    np.testing.assert_array_equal(ours[:, :, :2, :2], x[:, :, ::3, ::3])
    last = np.concatenate([ours[:, :, 2, :].ravel(), ours[:, :, :, 2].ravel()])
    np.testing.assert_array_equal(last, np.full_like(last, empty))


def test_pooling_uses_explicit_pads_not_ceil_mode(tmp_path, rng):
    """ceil_mode is avoided: runtimes (and ONNX shape inference) disagree on its last window."""
    text = _input((1, 1, 6, 6)) + (
        'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" '
        "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }")
    _, proto, caffemodel = _files(tmp_path, text, rng)
    nodes = caffe_to_onnx(proto, caffemodel).graph.node
    assert [n.op_type for n in nodes] == ["Pad", "AveragePool"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[1].attribute}
    assert attrs["ceil_mode"] == 0 and attrs["count_include_pad"] == 0
    assert list(attrs["pads"]) == [0, 0, 1, 1]


# --------------------------------------------------------------------------------------------
# Other layers, each against OpenCV
# --------------------------------------------------------------------------------------------
def test_grouped_dilated_rectangular_convolution(tmp_path, rng):
    text = _input((2, 4, 11, 9)) + """
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
      convolution_param { num_output: 6 group: 2 kernel_h: 3 kernel_w: 2 stride_h: 2
                          stride_w: 1 pad_h: 2 pad_w: 1 dilation: 2 } }
    layer { name: "conv_nobias" type: "Convolution" bottom: "conv" top: "conv_nobias"
      convolution_param { num_output: 4 kernel_size: 1 bias_term: false } }
    """
    net, proto, caffemodel = _files(tmp_path, text, rng, input_std=1.0)
    model = caffe_to_onnx(proto, caffemodel, outputs="all")
    conv = model.graph.node[0]
    assert {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}["group"] == 2
    assert len(model.graph.node[1].input) == 2  # no bias input
    _assert_parity(proto, caffemodel, rng, scale=1.0)


@pytest.mark.parametrize("k", [1, 2])
def test_lrn_across_channels(k, tmp_path, rng):
    text = _input((2, 7, 5, 5)) + f"""
    layer {{ name: "norm" type: "LRN" bottom: "data" top: "norm"
      lrn_param {{ local_size: 5 alpha: 0.5 beta: 0.75 k: {k} }} }}
    """
    net, proto, caffemodel = _files(tmp_path, text, rng)
    x = rng.normal(size=(2, 7, 5, 5)).astype(np.float32)
    ours = _run_onnx(caffe_to_onnx(proto, caffemodel), x)["norm"]
    # Caffe: x / (k + alpha/n * sum over the n channels centred on c of x^2)^beta
    sq = np.pad(x.astype(np.float64) ** 2, ((0, 0), (2, 2), (0, 0), (0, 0)))
    window = sum(sq[:, i:i + 7] for i in range(5))
    assert _error(ours, x / (k + 0.5 / 5 * window) ** 0.75) <= 1e-6
    if k == 1:  # OpenCV 4.14 ignores Caffe's k (always 1); the zoo nets use the default 1
        assert _error(ours, _run_opencv(proto, caffemodel, net, x)["norm"]) <= TOL


def test_leaky_relu_concat_softmax_dropout(tmp_path, rng):
    text = _input((2, 3, 6, 6)) + """
    layer { name: "a" type: "Convolution" bottom: "data" top: "a"
      convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
    layer { name: "leaky" type: "ReLU" bottom: "a" top: "a" relu_param { negative_slope: 0.1 } }
    layer { name: "b" type: "Convolution" bottom: "data" top: "b"
      convolution_param { num_output: 2 kernel_size: 1 } }
    layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "cat" }
    layer { name: "drop" type: "Dropout" bottom: "cat" top: "dropped"
      dropout_param { dropout_ratio: 0.5 } }
    layer { name: "sm" type: "Softmax" bottom: "dropped" top: "sm" }
    """
    net, proto, caffemodel = _files(tmp_path, text, rng)
    ops = [n.op_type for n in caffe_to_onnx(proto, caffemodel).graph.node]
    assert ops == ["Conv", "LeakyRelu", "Conv", "Concat", "Identity", "Softmax"]
    ours = _assert_parity(proto, caffemodel, rng)
    assert (ours["a"] < 0).any()  # the slope was applied, not a plain ReLU
    np.testing.assert_allclose(ours["sm"].sum(axis=1), 1.0, rtol=1e-5)


def test_in_place_relu_keeps_the_name_for_the_value_after_it(tmp_path, rng):
    text = _input((2, 3, 6, 6)) + """
    layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
      convolution_param { num_output: 4 kernel_size: 3 } }
    layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
    layer { name: "drop1" type: "Dropout" bottom: "conv1" top: "conv1" }
    """
    _, proto, caffemodel = _files(tmp_path, text, rng)
    model = caffe_to_onnx(proto, caffemodel, outputs="all")
    assert [o.name for o in model.graph.output] == ["conv1"]
    conv, relu = model.graph.node  # the in-place Dropout emits nothing
    assert conv.output == ["conv1/before_relu1"] and list(relu.input) == ["conv1/before_relu1"]
    assert relu.output == ["conv1"]
    model.graph.output.append(onnx.helper.make_tensor_value_info(
        "conv1/before_relu1", onnx.TensorProto.FLOAT, None))
    x = rng.normal(0, 50, size=(2, 3, 6, 6)).astype(np.float32)
    out = _run_onnx(model, x)
    assert (out["conv1/before_relu1"] < 0).any()
    np.testing.assert_array_equal(out["conv1"], np.maximum(out["conv1/before_relu1"], 0))


# --------------------------------------------------------------------------------------------
# Graph contract
# --------------------------------------------------------------------------------------------
TINY = _input((2, 3, 8, 8)) + """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
  inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@pytest.fixture
def tiny_files(tmp_path, rng):
    return _files(tmp_path, TINY, rng)


@pytest.mark.parametrize("outputs, expected", [
    (None, ["prob"]), ("all", ["conv1", "fc", "prob"]), (["prob", "fc"], ["prob", "fc"]),
    ("fc,prob", ["fc", "prob"]),
])
def test_output_selection(tiny_files, outputs, expected):
    _, proto, caffemodel = tiny_files
    model = caffe_to_onnx(proto, caffemodel, outputs=outputs)
    assert [o.name for o in model.graph.output] == expected


def test_unknown_output_lists_the_available_blobs(tiny_files):
    _, proto, caffemodel = tiny_files
    with pytest.raises(InvalidArgument,
                       match=r"unknown output blob 'fc8'; available blobs: conv1, fc, prob"):
        caffe_to_onnx(proto, caffemodel, outputs=["fc8"])


def test_input_has_a_dynamic_batch(tiny_files, rng):
    _, proto, caffemodel = tiny_files
    model = caffe_to_onnx(proto, caffemodel)
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "data" and dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] \
        == [3, 8, 8]
    for batch in (1, 5):
        x = rng.normal(size=(batch, 3, 8, 8)).astype(np.float32)
        assert _run_onnx(model, x)["prob"].shape == (batch, 5)


def test_opset_below_13_is_refused(tiny_files):
    _, proto, caffemodel = tiny_files
    with pytest.raises(InvalidArgument, match="opset must be an integer from 13"):
        caffe_to_onnx(proto, caffemodel, opset=11)


def test_unsupported_layer_names_layer_and_type(tmp_path):
    text = _input((1, 3, 4, 4)) + """
    layer { name: "spp1" type: "SPP" bottom: "data" top: "s" }"""
    with pytest.raises(UnsupportedLayer, match=r"layer 'spp1' has type 'SPP'"):
        caffe_to_onnx(text, tmp_path / "never_read.caffemodel")


def test_unsupported_old_style_layer(tmp_path):
    text = _input((1, 3, 4, 4)) + """
    layers { name: "thr" type: THRESHOLD bottom: "data" top: "e" }"""
    with pytest.raises(UnsupportedLayer, match=r"layer 'thr' has type 'Threshold'"):
        caffe_to_onnx(text, tmp_path / "never_read.caffemodel")


def test_save_onnx_is_atomic_and_round_trips(tiny_files, tmp_path):
    _, proto, caffemodel = tiny_files
    model = caffe_to_onnx(proto, caffemodel)
    out = save_onnx(model, tmp_path / "sub" / "tiny.onnx")
    assert onnx.load(out) == model
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny.onnx"]


def test_save_onnx_leaves_nothing_on_failure(tmp_path):
    class Broken:
        def SerializeToString(self):
            raise MemoryError("simulated")

    with pytest.raises(MemoryError):
        save_onnx(Broken(), tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["alexnet", "googlenet", "vgg16", "lenet"])
def test_zoo_graphs_use_only_the_declared_ops(name):
    model = random_onnx(name, factor=16, outputs="all")
    onnx.checker.check_model(model)
    assert {n.op_type for n in model.graph.node} <= ONNX_OPS
    produced = {o for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    for node in model.graph.node:  # every other input is a weight stored as an initializer
        assert set(node.input) <= produced | inits | {"data"}
    names = {o.name for o in model.graph.output}
    assert set(load_net(MODELS_DIR / name / "deploy.prototxt").blob_names) == names


# --------------------------------------------------------------------------------------------
# The zoo nets, blob by blob against OpenCV
# --------------------------------------------------------------------------------------------
NARROW = {"alexnet": 4, "googlenet": 4, "vgg16": 8}


def _zoo_files(tmp_path, name, factor, style, rng):
    text = (MODELS_DIR / name / "deploy.prototxt").read_text()
    if factor > 1:
        text = narrow_prototxt(text, factor)
    return _files(tmp_path, text, rng, style=style)


@pytest.mark.parametrize("style", ["layer", "layers"])
@pytest.mark.parametrize("name", sorted(NARROW))
def test_narrow_zoo_net_matches_opencv(name, style, tmp_path, rng):
    _, proto, caffemodel = _zoo_files(tmp_path, name, NARROW[name], style, rng)
    _assert_parity(proto, caffemodel, rng)


def test_real_lenet_matches_opencv(rng):
    lenet = MODELS_DIR / "lenet"
    ours = _assert_parity(lenet / "deploy.prototxt", lenet / "lenet.caffemodel", rng,
                          scale=0.3, batch=4)
    assert ours["prob"].shape == (4, 10)


@pytest.mark.slow
@pytest.mark.parametrize("style", ["layer", "layers"])
@pytest.mark.parametrize("name", sorted(NARROW))
def test_full_size_zoo_net_matches_opencv(name, style, tmp_path, rng):
    _, proto, caffemodel = _zoo_files(tmp_path, name, 1, style, rng)
    ours = _assert_parity(proto, caffemodel, rng)
    assert ours["prob"].max() < 0.99  # random weights at a sensible scale: not one-hot


# --------------------------------------------------------------------------------------------
# What Caffe refuses, and options outside the supported set
# --------------------------------------------------------------------------------------------
CONV = ('layer {{ name: "{0}" type: "Convolution" bottom: "{1}" top: "{0}" '
        "convolution_param {{ num_output: 2 kernel_size: 1 }} }}\n")


@pytest.mark.parametrize("layers, ok", [
    # in place on a blob read by nobody else, then read twice: fine
    (CONV.format("c1", "data") + 'layer { name: "r" type: "ReLU" bottom: "c1" top: "c1" }\n'
     + CONV.format("a", "c1") + CONV.format("b", "c1"), True),
    # c1 read by 'a' and by the in-place 'r': Caffe's split makes r a second producer of c1
    (CONV.format("c1", "data") + CONV.format("a", "c1")
     + 'layer { name: "r" type: "ReLU" bottom: "c1" top: "c1" }\n', False),
    # two layers writing the same top
    (CONV.format("c1", "data") + 'layer { name: "c2" type: "Convolution" bottom: "data" '
     'top: "c1" convolution_param { num_output: 2 kernel_size: 1 } }\n', False),
    # in place on the input that another layer also reads
    (CONV.format("c1", "data") + 'layer { name: "r" type: "ReLU" bottom: "data" top: "data" }\n',
     False),
])
def test_blob_produced_by_multiple_sources(layers, ok):
    text = _input((1, 2, 3, 3)) + layers
    if ok:
        load_net(text)
    else:
        with pytest.raises(CaffeFormatError, match="produced by multiple sources"):
            load_net(text)


@pytest.mark.parametrize("layer, message", [
    ('layer { name: "bn" type: "BatchNorm" bottom: "data" top: "y" '
     "batch_norm_param { use_global_stats: false } }", "statistics of the batch"),
    ('layer { name: "s" type: "Scale" bottom: "data" bottom: "data" top: "y" }',
     r"scale bottom 'data' of shape \(2, 2, 3, 3\) does not match .* from axis 1"),
    ('layer { name: "sl" type: "Slice" bottom: "data" top: "y" top: "z" '
     "slice_param { axis: 0 } }", "batch axis"),
    ('layer { name: "f" type: "Flatten" bottom: "data" top: "y" flatten_param { axis: 0 } }',
     "batch axis"),
    ('layer { name: "ip" type: "InnerProduct" bottom: "data" top: "y" '
     "inner_product_param { num_output: 2 axis: 0 } }", "axis 0"),
    ('layer { name: "e" type: "Eltwise" bottom: "data" bottom: "data" top: "y" '
     "eltwise_param { operation: MAX coeff: 1 coeff: 2 } }", "coeff needs operation SUM"),
])
def test_unsupported_or_invalid_options_name_the_layer(layer, message, tmp_path):
    with pytest.raises(CaffeFormatError, match=message):
        caffe_to_onnx(_input((2, 2, 3, 3)) + layer, tmp_path / "never_read.caffemodel")


def test_reshape_across_the_batch_is_refused(tmp_path, rng):
    text = _input((2, 2, 3, 3)) + (
        'layer { name: "r" type: "Reshape" bottom: "data" top: "y" '
        "reshape_param { shape { dim: -1 dim: 9 } } }")
    _, proto, caffemodel = _files(tmp_path, text, rng)
    with pytest.raises(UnsupportedLayer, match="'r' .*across the batch axis"):
        caffe_to_onnx(proto, caffemodel)


# --------------------------------------------------------------------------------------------
# Issue 19: Caffe's shared memory, two-bottom Scale and constant Power, beyond the goldens
# (tests/data/caffe-golden: eltwise_in_place, shared_views, shared_concat_slice,
# power_degenerate, scale_two_bottoms)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layers, message", [
    # Flatten makes 'f' a view of the input: the in-place ReLU would rewrite 'data'
    ('layer { name: "f" type: "Flatten" bottom: "data" top: "f" }\n'
     'layer { name: "r" type: "ReLU" bottom: "f" top: "f" }',
     r"'r' \(ReLU\) works in place on 'f', which shares memory with the network input 'data' "
     r"in Caffe \(views made by Flatten 'f'\)"),
    # 'v' and 'c1' are one memory: zeroing the top (SUM) also zeroes the bottom it reads
    (CONV.format("c1", "data")
     + 'layer { name: "v" type: "Concat" bottom: "c1" top: "v" }\n'
       'layer { name: "e" type: "Eltwise" bottom: "v" bottom: "c1" top: "v" }',
     r"'e' \(Eltwise\) works in place on 'v' and also reads 'c1', which shares memory with "
     r"'v' in Caffe \(views made by Concat 'v'\)"),
])
def test_an_in_place_write_through_a_view_that_cannot_be_expressed_is_refused(
        layers, message, tmp_path):
    with pytest.raises(UnsupportedLayer, match=message):
        caffe_to_onnx(_input((1, 2, 3, 3)) + layers, tmp_path / "never_read.caffemodel")


@pytest.mark.parametrize("scale, message", [
    # real Caffe: runs at batch 1, "dimension mismatch between bottom[0]->shape(1) and
    # scale->shape(0)" at batch 2
    ("axis: 1", r"'sc' \(Scale\) multiplies by its second bottom 's' from axis 1, which lines "
                "that blob's batch axis up with axis 1"),
    # real Caffe: the bias blob is (1, 4) for the declared batch 1, and at batch 2 "dimension
    # mismatch between bottom[0]->shape(0) and bias->shape(0)"
    ("axis: 0 bias_term: true", r"'sc' \(Scale\) has two bottoms and bias_term: true"),
])
def test_a_two_bottom_scale_that_depends_on_the_batch_size_is_refused(scale, message,
                                                                        tmp_path):
    text = _input((1, 1, 5, 5)) + (
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "s" '
        "inner_product_param { num_output: 5 } }\n"
        'layer { name: "sc" type: "Scale" bottom: "data" bottom: "s" top: "y" '
        f"scale_param {{ {scale} }} }}")
    if "bias" in scale:
        text = text.replace("num_output: 5", "num_output: 1")
    with pytest.raises(UnsupportedLayer, match=message):
        caffe_to_onnx(text, tmp_path / "never_read.caffemodel")


def test_a_two_bottom_scale_has_no_learned_blobs():
    net = load_net(_input((1, 4, 5, 5)) + (
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "s" '
        "inner_product_param { num_output: 4 } }\n"
        'layer { name: "sc" type: "Scale" bottom: "data" bottom: "s" top: "y" '
        "scale_param { axis: 0 } }"))
    assert "sc" not in param_shapes(net) and param_shapes(net)["ip"] == [(4, 100), (4,)]


@pytest.mark.parametrize("shape, reshape", [
    ((2, 3, 4, 4), ""),
    # a 1-D (N,) blob: InnerProduct to (N, 1), Reshape to (N,)
    ((2, 3, 4, 4), 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "v" '
                   "inner_product_param { num_output: 1 } }\n"
                   'layer { name: "rs" type: "Reshape" bottom: "v" top: "w" '
                   "reshape_param { shape { dim: 0 } } }\n"),
])
def test_power_with_zero_scale_ignores_the_input_as_caffe_does(shape, reshape, tmp_path, rng):
    # Caffe's PowerLayer::Forward_cpu: power · scale == 0 -> caffe_set(pow(shift, power)),
    # whatever the input holds: +inf everywhere here, also for -x, x = ±inf and NaN
    bottom = "w" if reshape else "data"
    text = _input(shape) + reshape + (
        f'layer {{ name: "p" type: "Power" bottom: "{bottom}" top: "p" '
        "power_param { power: -1 scale: 0 } }")
    _, proto, caffemodel = _files(tmp_path, text, rng)
    model = caffe_to_onnx(proto, caffemodel, outputs="p")
    x = rng.normal(size=shape).astype(np.float32)
    x.flat[:4] = [-np.inf, np.inf, np.nan, -0.0]
    if reshape:
        x[:] = np.where(np.isfinite(x), -np.abs(x), x)  # make 'v' negative in places
    out = _run_onnx(model, x)["p"]
    assert out.shape == ((shape[0],) if reshape else shape)
    assert np.all(out == np.inf)
    with np.errstate(all="ignore"):
        assert np.all(Graph(model).forward(x, keep=["p"])["p"] == np.inf)


# Real Caffe runs these nets without complaint but computes something else than the layer's
# function (measured with BVLC Caffe 9b89154 against the same layer with its own top: errors
# of 0.13 to 140 times the blob's maximum, or inf); in_place_layers (tests/data/caffe-golden)
# holds the in-place layers Caffe gets right, which stay accepted.
IN_PLACE_C1 = CONV.format("c1", "data").replace("kernel_size: 1", "kernel_size: 3 pad: 1")


@pytest.mark.parametrize("layer, message", [
    ('layer { name: "x" type: "Pooling" bottom: "c1" top: "c1" '
     "pooling_param { pool: MAX kernel_size: 3 pad: 1 stride: 1 } }",
     r"'x' \(Pooling\) works in place on 'c1': Caffe's pooling fills its top"),
    ('layer { name: "x" type: "LRN" bottom: "c1" top: "c1" lrn_param { local_size: 3 } }',
     r"'x' \(LRN\) works in place on 'c1': Caffe's cross-channel LRN writes its top"),
    ('layer { name: "x" type: "Convolution" bottom: "c1" top: "c1" '
     "convolution_param { num_output: 2 kernel_size: 1 } }",
     r"'x' \(Convolution\) works in place on 'c1': a 1x1 convolution skips Caffe's im2col"),
    ('layer { name: "x" type: "Deconvolution" bottom: "c1" top: "c1" '
     "convolution_param { num_output: 2 kernel_size: 1 } }",
     r"'x' \(Deconvolution\) works in place on 'c1': a 1x1 convolution skips"),
    ('layer { name: "f" type: "Flatten" bottom: "c1" top: "f" }\n'
     'layer { name: "x" type: "InnerProduct" bottom: "f" top: "f" '
     "inner_product_param { num_output: 18 } }",
     r"'x' \(InnerProduct\) works in place on 'f': Caffe's matrix product reads the bottom"),
    ('layer { name: "x" type: "Convolution" bottom: "c1" top: "c1" '
     "convolution_param { num_output: 2 kernel_size: 3 } }",
     r"'x' \(Convolution\) works in place on 'c1' but changes its shape from \(1, 2, 3, 3\) "
     r"to \(1, 2, 1, 1\)"),
    ('layer { name: "x" type: "Concat" bottom: "c1" bottom: "data" top: "c1" }',
     r"'x' \(Concat\) works in place on 'c1' but changes its shape"),
])
def test_an_in_place_layer_that_caffe_computes_over_its_own_output_is_refused(
        layer, message, tmp_path):
    with pytest.raises(UnsupportedLayer, match=message):
        caffe_to_onnx(_input((1, 2, 3, 3)) + IN_PLACE_C1 + layer,
                      tmp_path / "never_read.caffemodel")
