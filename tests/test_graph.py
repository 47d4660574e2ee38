"""Tests of the NumPy ONNX interpreter (:mod:`preddiff.graph`).

Two independent references: every operator's vector-Jacobian product against central finite
differences in float64, and every forward pass against onnxruntime on the same graph.
"""
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from preddiff.errors import InvalidArgument
from preddiff.graph import Graph


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def make_model(nodes, x_shape, inits=(), outputs=("y",), opset=17):
    """A model with input ``data`` of ``x_shape``, the given nodes and float initializers."""
    tensors = [numpy_helper.from_array(np.asarray(v), name=k) for k, v in dict(inits).items()]
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        initializer=tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def ort_blobs(model, x, blobs):
    """onnxruntime's values of ``blobs`` (exposed as extra graph outputs)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_tensor_value_info(b, TensorProto.FLOAT, None)
                          for b in blobs if b not in present)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(blobs, sess.run(list(blobs), {"data": x.astype(np.float32)})))


def normalised_error(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def finite_difference_gradient(graph, x, blob, cotangent, h=1e-6):
    """Central differences of ``<cotangent, blob(x)>`` with respect to every element of x."""
    grad = np.zeros_like(x)
    for i in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        fp = np.sum(cotangent * graph.forward(xp, keep=blob)[blob])
        fm = np.sum(cotangent * graph.forward(xm, keep=blob)[blob])
        grad[i] = (fp - fm) / (2 * h)
    return grad


def conv(name, x, w, b=None, out=None, **attrs):
    inputs = [x, w] + ([b] if b else [])
    return helper.make_node("Conv", inputs, [out or name], name=name, **attrs)


# --------------------------------------------------------------------------------------------
# Cases: (nodes, input shape, initializers, opset). Output blob "y".
# --------------------------------------------------------------------------------------------
def _cases():
    r = np.random.default_rng(7)

    def w(*shape, scale=0.5):
        return (r.standard_normal(shape) * scale).astype(np.float32)

    node = helper.make_node
    cases = {
        "conv": ([conv("c", "data", "W", "B", "y", kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
                 (2, 3, 6, 6), {"W": w(4, 3, 3, 3), "B": w(4)}, 17),
        "conv_strided_asym_pads_dilated": (
            [conv("c", "data", "W", None, "y", kernel_shape=[3, 2], strides=[2, 1],
                  pads=[1, 0, 2, 1], dilations=[1, 2])],
            (1, 2, 7, 8), {"W": w(3, 2, 3, 2)}, 17),
        "conv_grouped": ([conv("c", "data", "W", "B", "y", kernel_shape=[3, 3], strides=[2, 2],
                               pads=[1, 1, 1, 1], group=2)],
                         (1, 4, 7, 7), {"W": w(6, 2, 3, 3), "B": w(6)}, 17),
        "conv_depthwise": ([conv("c", "data", "W", None, "y", kernel_shape=[2, 2], group=3)],
                           (1, 3, 5, 5), {"W": w(3, 1, 2, 2)}, 17),
        "conv_pointwise": ([conv("c", "data", "W", "B", "y", kernel_shape=[1, 1])],
                           (2, 3, 4, 5), {"W": w(5, 3, 1, 1), "B": w(5)}, 17),
        "maxpool": ([node("MaxPool", ["data"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
                    (1, 2, 6, 6), {}, 17),
        "maxpool_ceil": ([node("MaxPool", ["data"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                               ceil_mode=1)], (1, 2, 8, 8), {}, 17),
        "maxpool_ceil_asym_pads": ([node("MaxPool", ["data"], ["y"], kernel_shape=[3, 2],
                                         strides=[2, 2], pads=[1, 0, 0, 1], ceil_mode=1)],
                                   (1, 2, 7, 6), {}, 17),
        "maxpool_ceil_drop_last": ([node("MaxPool", ["data"], ["y"], kernel_shape=[2, 2],
                                         strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)],
                                   (1, 2, 5, 7), {}, 17),
        "avgpool_ceil_include_pad": ([node("AveragePool", ["data"], ["y"], kernel_shape=[3, 3],
                                           strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1,
                                           count_include_pad=1)], (1, 2, 6, 6), {}, 17),
        "avgpool_ceil_asym_exclude_pad": ([node("AveragePool", ["data"], ["y"],
                                                kernel_shape=[3, 3], strides=[2, 2],
                                                pads=[0, 1, 2, 0], ceil_mode=1)],
                                          (1, 2, 7, 6), {}, 17),
        "avgpool_asym_include_pad": ([node("AveragePool", ["data"], ["y"], kernel_shape=[2, 3],
                                           strides=[1, 2], pads=[1, 0, 0, 2],
                                           count_include_pad=1)], (1, 1, 5, 6), {}, 17),
        "global_avgpool": ([node("GlobalAveragePool", ["data"], ["y"])], (2, 3, 4, 3), {}, 17),
        "global_maxpool": ([node("GlobalMaxPool", ["data"], ["y"])], (2, 3, 4, 3), {}, 17),
        "lrn": ([node("LRN", ["data"], ["y"], size=5, alpha=0.5, beta=0.75, bias=2.0)],
                (1, 7, 3, 3), {}, 17),
        "lrn_even_size": ([node("LRN", ["data"], ["y"], size=4, alpha=0.3, beta=0.6, bias=1.0)],
                          (1, 6, 2, 3), {}, 17),
        "flatten_gemm": ([node("Flatten", ["data"], ["f"], axis=1),
                          node("Gemm", ["f", "W", "B"], ["y"], transB=1)],
                         (2, 3, 2, 2), {"W": w(5, 12), "B": w(5)}, 17),
        "gemm_transA_alpha_beta": ([node("Gemm", ["data", "W", "B"], ["y"], transA=1,
                                         alpha=0.7, beta=1.3)],
                                   (4, 3), {"W": w(4, 5), "B": w(1, 5)}, 17),
        "relu": ([node("Relu", ["data"], ["y"])], (1, 3, 4, 4), {}, 17),
        "leaky_relu": ([node("LeakyRelu", ["data"], ["y"], alpha=0.2)], (1, 3, 4, 4), {}, 17),
        "softmax": ([node("Flatten", ["data"], ["f"]), node("Softmax", ["f"], ["y"], axis=1)],
                    (2, 6, 1, 1), {}, 13),
        "softmax_opset11_coerced": ([node("Softmax", ["data"], ["y"], axis=1)],
                                    (2, 3, 2, 2), {}, 11),
        "concat_two_branches": (
            [conv("a", "data", "W", None, kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("MaxPool", ["data"], ["b"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Concat", ["a", "b"], ["c"], axis=1),
             node("Relu", ["c"], ["y"])],
            (1, 2, 5, 5), {"W": w(3, 2, 3, 3)}, 17),
        "pad_constant_with_crop": ([node("Pad", ["data", "pads", "v"], ["y"], mode="constant")],
                                   (1, 2, 4, 5),
                                   {"pads": np.array([0, 0, 1, -1, 0, 0, 2, 1], np.int64),
                                    "v": np.array(0.5, np.float32)}, 13),
        "pad_opset2_attribute": ([node("Pad", ["data"], ["y"], pads=[0, 0, 1, 2, 0, 0, 0, 1],
                                       value=-1.0)], (1, 2, 3, 3), {}, 2),
        "identity_dropout": ([node("Identity", ["data"], ["i"]),
                              node("Dropout", ["i"], ["y"])], (1, 2, 3, 3), {}, 17),
        "small_net": (
            [conv("conv1", "data", "W1", "B1", kernel_shape=[3, 3], strides=[2, 2]),
             node("Relu", ["conv1"], ["relu1"]),
             node("LRN", ["relu1"], ["norm1"], size=3, alpha=0.1, beta=0.75),
             node("MaxPool", ["norm1"], ["pool1"], kernel_shape=[3, 3], strides=[2, 2],
                  ceil_mode=1),
             conv("conv2", "pool1", "W2", "B2", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                  group=2),
             node("AveragePool", ["conv2"], ["pool2"], kernel_shape=[2, 2], strides=[2, 2],
                  ceil_mode=1, count_include_pad=1),
             node("Flatten", ["pool2"], ["flat"]),
             node("Gemm", ["flat", "W3", "B3"], ["fc"], transB=1),
             node("Softmax", ["fc"], ["y"], axis=1)],
            (1, 3, 13, 13),
            {"W1": w(4, 3, 3, 3), "B1": w(4), "W2": w(6, 2, 3, 3), "B2": w(6),
             "W3": w(5, 24), "B3": w(5)}, 17),
        # the ops of the zoo's other layers (Deconvolution, BatchNorm, Scale, Eltwise, ...)
        "conv_transpose": ([node("ConvTranspose", ["data", "W", "B"], ["y"],
                                 kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
                           (2, 3, 4, 5), {"W": w(3, 2, 3, 3), "B": w(2)}, 17),
        "conv_transpose_grouped_dilated": (
            [node("ConvTranspose", ["data", "W"], ["y"], kernel_shape=[2, 3], strides=[1, 2],
                  dilations=[2, 1], group=2)],
            (1, 4, 3, 4), {"W": w(4, 3, 2, 3)}, 17),
        "arithmetic_broadcast": ([node("Sub", ["data", "M"], ["a"]),
                                  node("Div", ["a", "S"], ["b"]),
                                  node("Mul", ["b", "G"], ["c"]),
                                  node("Add", ["c", "B"], ["d"]),
                                  node("Mul", ["d", "data"], ["y"])],
                                 (2, 3, 2, 3), {"M": w(3, 1, 1), "S": 1.5 + w(3, 1, 1) ** 2,
                                                "G": w(2, 3), "B": w(3, 1, 1)}, 17),
        "pow_constant_exponent": ([node("Mul", ["data", "data"], ["sq"]),
                                   node("Add", ["sq", "one"], ["s"]),
                                   node("Pow", ["s", "e"], ["y"])],
                                  (1, 2, 3, 3), {"one": np.float32(1.0),
                                                 "e": np.float32(-0.75)}, 17),
        "max_three_inputs": ([node("Mul", ["data", "k"], ["a"]),
                              node("Max", ["data", "a", "c"], ["y"])],
                             (1, 2, 3, 3), {"k": np.float32(-0.5), "c": w(3, 1)}, 17),
        "sigmoid_tanh_abs": ([node("Sigmoid", ["data"], ["s"]), node("Tanh", ["data"], ["t"]),
                              node("Abs", ["data"], ["a"]), node("Add", ["s", "t"], ["st"]),
                              node("Add", ["st", "a"], ["y"])], (1, 2, 3, 3), {}, 17),
        "elu": ([node("Elu", ["data"], ["y"], alpha=0.4)], (1, 3, 3, 3), {}, 17),
        "prelu": ([node("PRelu", ["data", "P"], ["y"])], (1, 3, 3, 3),
                  {"P": w(3, 1, 1)}, 17),
        "reshape_matmul": ([node("Reshape", ["data", "shape"], ["r"]),
                            node("MatMul", ["r", "W"], ["y"])],
                           (2, 3, 4, 2), {"shape": np.array([0, 0, 8], np.int64),
                                          "W": w(8, 5)}, 17),
        "slice_crop": ([node("Slice", ["data", "st", "en", "ax"], ["y"])], (2, 4, 5, 6),
                       {"st": np.array([1, 2], np.int64), "en": np.array([3, 5], np.int64),
                        "ax": np.array([1, 3], np.int64)}, 17),
    }
    return cases


CASES = _cases()


# --------------------------------------------------------------------------------------------
# forward against onnxruntime
# --------------------------------------------------------------------------------------------
ORT_CASES = sorted(set(CASES) - {"lrn_even_size"})  # onnxruntime rejects even LRN sizes


@pytest.mark.parametrize("case", ORT_CASES)
def test_forward_matches_onnxruntime(case, rng):
    nodes, shape, inits, opset = CASES[case]
    model = make_model(nodes, shape, inits, opset=opset)
    x = rng.standard_normal(shape).astype(np.float32)
    blobs = [o for n in nodes for o in n.output]
    ours = Graph(model).forward(x, keep=blobs)
    theirs = ort_blobs(model, x, blobs)
    for blob in blobs:
        assert ours[blob].shape == theirs[blob].shape, blob
        assert ours[blob].dtype == np.float32
        np.testing.assert_allclose(ours[blob], theirs[blob], rtol=1e-5, atol=1e-6, err_msg=blob)


# --------------------------------------------------------------------------------------------
# vector-Jacobian products against central finite differences (float64)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(CASES))
def test_vjp_matches_finite_differences(case, rng):
    nodes, shape, inits, opset = CASES[case]
    graph = Graph(make_model(nodes, shape, inits, opset=opset), dtype=np.float64)
    x = rng.standard_normal(shape)
    cache = graph.forward(x, keep="y", trace=True)
    cotangent = rng.standard_normal(cache["y"].shape)
    grad = graph.vjp(cache, {"y": cotangent})
    assert grad.shape == x.shape and grad.dtype == np.float64
    numeric = finite_difference_gradient(graph, x, "y", cotangent)
    assert np.max(np.abs(grad)) > 0
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-7 * np.max(np.abs(numeric)))


def test_lrn_even_size_follows_the_onnx_window(rng):
    """ONNX sums x² over channels ``[c − floor((n−1)/2), c + ceil((n−1)/2)]``: a literal
    loop."""
    nodes, shape, inits, opset = CASES["lrn_even_size"]
    x = rng.standard_normal(shape)
    y = Graph(make_model(nodes, shape, inits, opset=opset), dtype=np.float64).forward(x)["y"]
    # ONNX stores the attributes as float32.
    size, alpha, beta, bias = 4, float(np.float32(0.3)), float(np.float32(0.6)), 1.0
    expected = np.empty_like(x)
    for c in range(shape[1]):
        lo, hi = max(0, c - (size - 1) // 2), min(shape[1] - 1, c + math.ceil((size - 1) / 2))
        square_sum = (x[:, lo:hi + 1] ** 2).sum(axis=1)
        expected[:, c] = x[:, c] / (bias + alpha / size * square_sum) ** beta
    np.testing.assert_allclose(y, expected, rtol=1e-12)


def test_vjp_of_intermediate_blob_and_summed_seeds(rng):
    nodes, shape, inits, opset = CASES["small_net"]
    graph = Graph(make_model(nodes, shape, inits, opset=opset), dtype=np.float64)
    x = rng.standard_normal(shape)
    cache = graph.forward(x, keep=["pool1", "fc"], trace=True)
    s1 = rng.standard_normal(cache["pool1"].shape)
    s2 = rng.standard_normal(cache["fc"].shape)
    both = graph.vjp(cache, {"pool1": s1, "fc": s2})
    np.testing.assert_allclose(both, graph.vjp(cache, {"pool1": s1}) + graph.vjp(cache, {"fc": s2}))
    np.testing.assert_allclose(graph.vjp(cache, {"pool1": s1}),
                               finite_difference_gradient(graph, x, "pool1", s1), rtol=1e-6,
                               atol=1e-9)


# --------------------------------------------------------------------------------------------
# Caffe's pooling arithmetic as the converter encodes it
# --------------------------------------------------------------------------------------------
def caffe_pool_size(h, k, s, p):
    out = math.ceil((h + 2 * p - k) / s) + 1
    if p > 0 and (out - 1) * s >= h + p:
        out -= 1
    return out


@pytest.mark.parametrize("h,k,s,p", [(112, 3, 2, 0), (56, 3, 2, 0), (14, 3, 2, 0), (55, 3, 2, 0),
                                     (5, 2, 2, 1), (7, 2, 2, 1), (6, 3, 2, 1), (9, 3, 3, 1),
                                     (10, 4, 3, 2), (28, 3, 1, 1)])
def test_pool_ceil_mode_follows_caffe(h, k, s, p):
    """Output size ``ceil((H+2p−k)/s)+1`` minus one if the last window starts in the padding;
    AVE divides by the window clipped to ``H + p`` (padding counted, overhang not)."""
    x = np.ones((1, 1, h, h), np.float32)
    attrs = dict(kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, ceil_mode=1)
    mx = Graph(make_model([helper.make_node("MaxPool", ["data"], ["y"], **attrs)], x.shape))
    av = Graph(make_model([helper.make_node("AveragePool", ["data"], ["y"], count_include_pad=1,
                                            **attrs)], x.shape))
    out = caffe_pool_size(h, k, s, p)
    assert mx.forward(x)["y"].shape == (1, 1, out, out)
    y = av.forward(x)["y"][0, 0]
    for i in range(out):
        start = i * s - p
        inside = min(start + k, h) - max(start, 0)
        counted = min(start + k, h + p) - start
        assert y[i, i] == pytest.approx((inside / counted) ** 2)


def test_maxpool_gradient_goes_to_first_maximum_on_ties():
    x = np.zeros((1, 1, 2, 2))
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = 3.0
    graph = Graph(make_model([helper.make_node("MaxPool", ["data"], ["y"], kernel_shape=[2, 2])],
                             x.shape), dtype=np.float64)
    cache = graph.forward(x, trace=True)
    grad = graph.vjp(cache, {"y": np.ones((1, 1, 1, 1))})
    np.testing.assert_array_equal(grad[0, 0], [[0, 1], [0, 0]])


# --------------------------------------------------------------------------------------------
# Graph mechanics and errors
# --------------------------------------------------------------------------------------------
def test_forward_stops_at_the_requested_blob(rng):
    # The Gemm after "r" has mismatched shapes: running it would fail.
    nodes = [helper.make_node("Relu", ["data"], ["r"]),
             helper.make_node("Gemm", ["r", "W"], ["y"])]
    graph = Graph(make_model(nodes, (2, 3), {"W": np.ones((5, 4), np.float32)}))
    x = rng.standard_normal((2, 3)).astype(np.float32)
    out = graph.forward(x, keep="r")
    assert list(out) == ["r"]
    np.testing.assert_array_equal(out["r"], np.maximum(x, 0))
    with pytest.raises(ValueError):
        graph.forward(x)


def test_forward_frees_intermediates_unless_traced(rng):
    nodes, shape, inits, opset = CASES["small_net"]
    graph = Graph(make_model(nodes, shape, inits, opset=opset))
    x = rng.standard_normal(shape)
    assert set(graph.forward(x, keep=["conv2", "y"])) == {"conv2", "y"}
    traced = graph.forward(x, keep="pool1", trace=True)
    assert set(traced) == {"data", "conv1", "relu1", "norm1", "pool1"}
    assert graph.blobs[:4] == ["conv1", "relu1", "norm1", "pool1"]
    assert graph.softmax_input() == "fc"


def test_default_dtype_is_float32(rng):
    nodes, shape, inits, opset = CASES["conv"]
    graph = Graph(make_model(nodes, shape, inits, opset=opset))
    cache = graph.forward(rng.standard_normal(shape), trace=True)
    assert cache["y"].dtype == np.float32
    assert graph.vjp(cache, {"y": np.ones(cache["y"].shape)}).dtype == np.float32


def test_max_routes_the_gradient_as_caffe_eltwise():
    """Caffe: ``a > b ? a : b`` for the first two bottoms (a tie goes to the second), then a
    later bottom only where strictly greater."""
    nodes = [helper.make_node("Max", ["data", "b", "c"], ["y"])]
    inits = {"b": np.array([1.0, 2.0, 0.0], np.float32),
             "c": np.array([1.0, 2.0, 5.0], np.float32)}
    graph = Graph(make_model(nodes, (1, 3), inits))
    x = np.array([[1.0, 3.0, 5.0]], np.float32)  # tie with b; max; tie with c (first wins)
    cache = graph.forward(x, keep="y", trace=True)
    np.testing.assert_array_equal(graph.vjp(cache, {"y": np.ones((1, 3))}), [[0.0, 1.0, 1.0]])


def test_unsupported_operator_names_op_and_node():
    model = make_model([helper.make_node("Erf", ["data"], ["y"], name="squash")], (1, 2))
    with pytest.raises(InvalidArgument, match=r"'Erf'.*'squash'"):
        Graph(model)


def test_unknown_blob_and_untraced_cache_are_rejected(rng):
    nodes, shape, inits, opset = CASES["small_net"]
    graph = Graph(make_model(nodes, shape, inits, opset=opset))
    x = rng.standard_normal(shape)
    with pytest.raises(InvalidArgument, match="'fc9'"):
        graph.forward(x, keep="fc9")
    plain = graph.forward(x, keep="fc")
    with pytest.raises(InvalidArgument, match="trace=True"):
        graph.vjp(plain, {"fc": np.ones(plain["fc"].shape)})
    traced = graph.forward(x, keep="fc", trace=True)
    with pytest.raises(InvalidArgument, match="shape"):
        graph.vjp(traced, {"fc": np.ones(3)})


def test_input_shape_mismatch_is_rejected(rng):
    nodes, shape, inits, opset = CASES["conv"]
    graph = Graph(make_model(nodes, shape, inits, opset=opset))
    with pytest.raises(InvalidArgument, match="shape"):
        graph.forward(np.zeros((2, 3, 7, 6), np.float32))


def test_model_from_path(tmp_path, rng):
    nodes, shape, inits, opset = CASES["conv"]
    model = make_model(nodes, shape, inits, opset=opset)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    x = rng.standard_normal(shape)
    np.testing.assert_array_equal(Graph(path).forward(x)["y"], Graph(model).forward(x)["y"])
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(InvalidArgument, match="bad.onnx"):
        Graph(tmp_path / "bad.onnx")


# --------------------------------------------------------------------------------------------
# Narrow random-weight zoo architectures from the converter, blob by blob
# --------------------------------------------------------------------------------------------
def random_zoo_model(name, factor, seed=0):
    writer = pytest.importorskip("preddiff.caffe.writer")
    model = writer.random_onnx(name, factor=factor, seed=seed)
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def zoo_input(graph, rng):
    shape = tuple(1 if d is None else d for d in graph.input_shape)
    return (rng.standard_normal(shape) * 50).astype(np.float32)


@pytest.mark.parametrize("name,factor", [("alexnet", 16), ("googlenet", 8)])
def test_random_zoo_net_forward_matches_onnxruntime_blob_by_blob(name, factor, rng):
    model = random_zoo_model(name, factor)
    graph = Graph(model)
    x = zoo_input(graph, rng)
    ours = graph.forward(x, keep=graph.blobs)
    theirs = ort_blobs(model, x, graph.blobs)
    for blob in graph.blobs:
        assert ours[blob].shape == theirs[blob].shape, blob
        assert normalised_error(ours[blob], theirs[blob]) <= 1e-4, blob


@pytest.mark.parametrize("name,factor", [("alexnet", 16), ("googlenet", 8)])
def test_random_zoo_net_vjp_matches_directional_difference(name, factor, rng):
    """``<∂S/∂x, v>`` against ``(S(x+hv) − S(x−hv)) / 2h`` in float64 for the full net.

    ``h`` is small (1e-6) because random nets have many ReLU/MaxPool kinks: at h = 1e-4 one
    falls inside the step and the difference is off by ~1e-3, at h <= 1e-5 it agrees to 1e-8."""
    graph = Graph(random_zoo_model(name, factor), dtype=np.float64)
    blob = graph.softmax_input()
    x = zoo_input(graph, rng).astype(np.float64)
    cache = graph.forward(x, keep=blob, trace=True)
    seed = rng.standard_normal(cache[blob].shape)
    grad = graph.vjp(cache, {blob: seed})
    for _ in range(3):
        v = rng.standard_normal(x.shape)
        h = 1e-6
        numeric = (np.sum(seed * graph.forward(x + h * v, keep=blob)[blob])
                   - np.sum(seed * graph.forward(x - h * v, keep=blob)[blob])) / (2 * h)
        assert np.sum(grad * v) == pytest.approx(numeric, rel=1e-5)


@pytest.mark.slow
def test_full_size_vgg16_forward_and_vjp(rng):
    """Full-size VGG16 (138 M random weights): fc8 against onnxruntime, and the vjp in float64
    against a directional difference (the CPU path of the sensitivity maps at paper scale)."""
    model = random_zoo_model("vgg16", 1)
    x = zoo_input(Graph(model), rng)
    fc8 = Graph(model).forward(x, keep="fc8")["fc8"]
    assert normalised_error(fc8, ort_blobs(model, x, ["fc8"])["fc8"]) <= 1e-4
    graph = Graph(model, dtype=np.float64)
    x = x.astype(np.float64)
    cache = graph.forward(x, keep="fc8", trace=True)
    seed = np.zeros(cache["fc8"].shape)
    seed[0, 281] = cache["fc8"][0, 281]
    grad = graph.vjp(cache, {"fc8": seed})
    v = rng.standard_normal(x.shape)
    h = 1e-6
    numeric = (np.sum(seed * graph.forward(x + h * v, keep="fc8")["fc8"])
               - np.sum(seed * graph.forward(x - h * v, keep="fc8")["fc8"])) / (2 * h)
    assert np.sum(grad * v) == pytest.approx(numeric, rel=1e-5)
