"""Tests of the sensitivity maps of Simonyan et al. (2013), eq. (1)."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from preddiff.errors import InvalidArgument
from preddiff.graph import Graph
from preddiff.sensitivity import penultimate_blob, sensitivity_gradient, sensitivity_map

SHAPE = (3, 4, 5)  # C, H, W
CLASSES = 6


def linear_model(weight, bias):
    """``data (1,C,H,W) → Flatten → Gemm(transB) = fc → Softmax = prob``."""
    nodes = [helper.make_node("Flatten", ["data"], ["flat"]),
             helper.make_node("Gemm", ["flat", "W", "B"], ["fc"], transB=1),
             helper.make_node("Softmax", ["fc"], ["prob"], axis=1)]
    graph = helper.make_graph(
        nodes, "linear",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, *SHAPE])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def conv_model(rng):
    """A small nonlinear net: conv → relu → maxpool → flatten → gemm (score) → softmax."""
    def w(*shape):
        return rng.standard_normal(shape).astype(np.float32) * 0.5
    nodes = [helper.make_node("Conv", ["data", "W1", "B1"], ["conv"], kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("MaxPool", ["relu"], ["pool"], kernel_shape=[2, 2],
                              strides=[2, 2], ceil_mode=1),
             helper.make_node("Flatten", ["pool"], ["flat"]),
             helper.make_node("Gemm", ["flat", "W2", "B2"], ["score"], transB=1),
             helper.make_node("Softmax", ["score"], ["prob"], axis=1)]
    inits = {"W1": w(4, 3, 3, 3), "B1": w(4), "W2": w(CLASSES, 4 * 2 * 3), "B2": w(CLASSES)}
    graph = helper.make_graph(
        nodes, "conv",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, *SHAPE])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.fixture
def linear(rng):
    weight = rng.standard_normal((CLASSES, int(np.prod(SHAPE)))).astype(np.float32)
    bias = rng.standard_normal(CLASSES).astype(np.float32)
    return weight, bias, linear_model(weight, bias)


def test_linear_model_gradient_is_weight_times_unit_value(linear, rng):
    weight, bias, model = linear
    x = rng.standard_normal(SHAPE)
    graph = Graph(model, dtype=np.float64)
    for unit in range(CLASSES):
        score = weight[unit].astype(np.float64) @ x.ravel() + bias[unit]
        w = weight[unit].reshape(SHAPE)
        grad = sensitivity_gradient(x, graph, unit)
        np.testing.assert_allclose(grad, score * w, rtol=1e-12)
        np.testing.assert_allclose(sensitivity_map(x, graph, unit),
                                   abs(score) * np.abs(w).max(axis=0), rtol=1e-12)
        np.testing.assert_allclose(sensitivity_gradient(x, graph, unit, seed="one"), w,
                                   rtol=1e-12)


def test_negative_unit_value_flips_the_signed_gradient_not_the_map(linear, rng):
    weight, bias, model = linear
    graph = Graph(model, dtype=np.float64)
    x = rng.standard_normal(SHAPE)
    # Choose the input so the unit's score is negative: x = -w (bias small vs |w|²).
    x = -weight[2].reshape(SHAPE).astype(np.float64)
    score = graph.forward(x[None], keep="fc")["fc"][0, 2]
    assert score < 0
    grad = sensitivity_gradient(x, graph, 2)
    assert np.all(np.sign(grad) == -np.sign(weight[2].reshape(SHAPE)))
    assert np.all(sensitivity_map(x, graph, 2) >= 0)


def test_float32_default_matches_float64(linear, rng):
    _, _, model = linear
    x = rng.standard_normal(SHAPE)
    m32 = sensitivity_map(x, model, 1)
    assert m32.dtype == np.float32 and m32.shape == SHAPE[1:]
    np.testing.assert_allclose(m32, sensitivity_map(x, model, 1, dtype=np.float64), rtol=1e-4)


def test_nonlinear_gradient_matches_finite_differences(rng):
    """With the value seed, the gradient is ∂(½ S_c²)/∂x: check by central differences."""
    graph = Graph(conv_model(rng), dtype=np.float64)
    x = rng.standard_normal(SHAPE)
    unit = 3
    grad = sensitivity_gradient(x, graph, unit)

    def half_square(v):
        return 0.5 * graph.forward(v[None], keep="score")["score"][0, unit] ** 2

    numeric = np.zeros_like(x)
    h = 1e-6
    for i in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        numeric[i] = (half_square(xp) - half_square(xm)) / (2 * h)
    assert np.max(np.abs(grad)) > 0
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8 * np.max(np.abs(numeric)))


def test_default_blob_is_the_softmax_input_and_blob_can_be_named(rng):
    model = conv_model(rng)
    graph = Graph(model, dtype=np.float64)
    assert penultimate_blob(graph) == "score"
    x = rng.standard_normal(SHAPE)
    np.testing.assert_array_equal(sensitivity_gradient(x, graph, 1),
                                  sensitivity_gradient(x, graph, 1, "score"))
    # A hidden blob and a tuple unit (channel, row, column) of it.
    grad = sensitivity_gradient(x, graph, (2, 1, 1), blob="pool")
    assert grad.shape == SHAPE
    assert np.count_nonzero(np.abs(grad).max(axis=0)) <= 4 * 9  # receptive field of one unit


def test_penultimate_from_manifests(tmp_path, rng):
    graph = Graph(conv_model(rng))

    class ZooManifest:
        penultimate = "score"

    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"blobs": {"penultimate": "score", "output": "prob"}}))
    assert penultimate_blob(graph, ZooManifest()) == "score"
    assert penultimate_blob(graph, {"blobs": {"penultimate": "score"}}) == "score"
    assert penultimate_blob(graph, path) == "score"
    assert penultimate_blob(graph, "lenet") == "ip2"
    assert penultimate_blob(graph, "googlenet") == "loss3/classifier"
    x = rng.standard_normal(SHAPE)
    np.testing.assert_array_equal(sensitivity_map(x, graph, 0, manifest=ZooManifest()),
                                  sensitivity_map(x, graph, 0))
    with pytest.raises(InvalidArgument, match="no-such-net"):
        penultimate_blob(graph, "no-such-net")


def test_model_as_path_or_proto(tmp_path, linear, rng):
    _, _, model = linear
    path = tmp_path / "linear.onnx"
    onnx.save(model, str(path))
    x = rng.standard_normal(SHAPE)
    np.testing.assert_array_equal(sensitivity_map(x, path, 4), sensitivity_map(x, model, 4))


@pytest.mark.parametrize("unit", [-1, CLASSES, 2.0, True, (CLASSES,), (0, 0)])
def test_unit_out_of_range_is_rejected(linear, rng, unit):
    _, _, model = linear
    with pytest.raises(InvalidArgument, match="unit"):
        sensitivity_map(rng.standard_normal(SHAPE), model, unit)


def test_bad_blob_image_and_seed_are_rejected(linear, rng):
    _, _, model = linear
    x = rng.standard_normal(SHAPE)
    with pytest.raises(InvalidArgument, match="'fc9'"):
        sensitivity_map(x, model, 0, blob="fc9")
    with pytest.raises(InvalidArgument, match=r"\(C, H, W\)"):
        sensitivity_map(x[None], model, 0)
    with pytest.raises(InvalidArgument, match="shape"):
        sensitivity_map(rng.standard_normal((3, 5, 5)), model, 0)
    with pytest.raises(InvalidArgument, match="seed"):
        sensitivity_map(x, model, 0, seed="ones")


@pytest.mark.parametrize("name", ["alexnet", "googlenet", "lenet"])
def test_random_zoo_net_penultimate_and_map(name, rng):
    """On the converter's graphs the Softmax input is the manifest's penultimate blob, and the
    map has the input's spatial size."""
    writer = pytest.importorskip("preddiff.caffe.writer")
    graph = Graph(writer.random_onnx(name, factor=1 if name == "lenet" else 16, seed=1))
    assert penultimate_blob(graph) == penultimate_blob(graph, name)
    x = rng.standard_normal(graph.input_shape[1:]).astype(np.float32)
    smap = sensitivity_map(x, graph, 3, manifest=name)
    assert smap.shape == graph.input_shape[2:] and np.all(smap >= 0) and smap.max() > 0
