"""OnnxClassifier on small ONNX graphs built here with onnx.helper (independent of the converter)."""
import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from preddiff.classifier import OnnxClassifier
from preddiff.errors import InvalidArgument


def small_net(rng, batch="N", channels=2, size=6, classes=4):
    """data (N, C, 6, 6) → conv1 (3×3, 3 maps) → relu1 → flat → fc (Gemm) → prob (Softmax).

    Returns the model and a NumPy function computing every blob, as an oracle.
    """
    w = rng.standard_normal((3, channels, 3, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    fc_w = rng.standard_normal((classes, 3 * (size - 2) ** 2)).astype(np.float32) * 0.3
    fc_b = rng.standard_normal(classes).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["data", "w", "b"], ["conv1"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node("Flatten", ["relu1"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["fc"], transB=1),
        helper.make_node("Softmax", ["fc"], ["prob"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, channels, size, size])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [batch, classes])],
        initializer=[numpy_helper.from_array(a, n) for a, n in
                     [(w, "w"), (b, "b"), (fc_w, "fc_w"), (fc_b, "fc_b")]],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)

    def oracle(x):
        x = x.astype(np.float64)
        conv = np.zeros((len(x), 3, size - 2, size - 2))
        for i in range(size - 2):
            for j in range(size - 2):
                conv[:, :, i, j] = np.einsum("nchw,kchw->nk", x[:, :, i:i + 3, j:j + 3], w) + b
        relu = np.maximum(conv, 0)
        fc = relu.reshape(len(x), -1) @ fc_w.T.astype(np.float64) + fc_b
        e = np.exp(fc - fc.max(1, keepdims=True))
        return {"conv1": conv, "relu1": relu, "fc": fc, "prob": e / e.sum(1, keepdims=True)}

    return model, oracle


def test_default_output_matches_numpy_oracle(rng):
    model, oracle = small_net(rng)
    clf = OnnxClassifier(model, device="cpu")
    x = rng.standard_normal((5, 2, 6, 6)).astype(np.float32)
    out = clf(x)
    assert list(out) == ["prob"] and clf.outputs == ("prob",)
    np.testing.assert_allclose(out["prob"], oracle(x)["prob"], rtol=1e-4, atol=1e-6)
    assert clf.provider == "CPUExecutionProvider"
    assert clf.input_shape == (2, 6, 6)


@pytest.mark.parametrize("n", [1, 6, 7, 13, 20])
def test_batching_equals_one_big_batch(rng, n):
    model, _ = small_net(rng)
    x = rng.standard_normal((n, 2, 6, 6)).astype(np.float32)
    big = OnnxClassifier(model, outputs=["conv1", "prob"], batch_size=64, device="cpu")(x)
    small = OnnxClassifier(model, outputs=["conv1", "prob"], batch_size=3, device="cpu")(x)
    for name in ("conv1", "prob"):
        assert small[name].shape == big[name].shape == (n,) + big[name].shape[1:]
        np.testing.assert_allclose(small[name], big[name], rtol=1e-6, atol=1e-7)
    # each input evaluated on its own gives the same, too (no leakage across a batch)
    single = OnnxClassifier(model, batch_size=1, device="cpu")(x)["prob"]
    np.testing.assert_allclose(single, big["prob"], rtol=1e-6, atol=1e-7)


def test_empty_batch(rng):
    model, _ = small_net(rng)
    clf = OnnxClassifier(model, outputs=["conv1", "prob"], device="cpu")
    out = clf(np.zeros((0, 2, 6, 6), np.float32))
    assert out["conv1"].shape == (0, 3, 4, 4) and out["prob"].shape == (0, 4)
    assert out["prob"].dtype == np.float32


def test_intermediate_blobs_exposed_only_on_a_copy(rng):
    model, oracle = small_net(rng)
    before = model.SerializeToString()
    clf = OnnxClassifier(model, outputs=["relu1", "fc", "prob"], device="cpu")
    assert model.SerializeToString() == before  # the caller's model is not modified
    x = rng.standard_normal((4, 2, 6, 6)).astype(np.float32)
    out = clf(x)
    assert list(out) == ["relu1", "fc", "prob"]
    expect = oracle(x)
    for name in out:
        np.testing.assert_allclose(out[name], expect[name], rtol=1e-4, atol=1e-5)
    # the session exposes exactly what was asked for, nothing more
    assert [o.name for o in clf._session.get_outputs()] == ["relu1", "fc", "prob"]


def test_only_a_hidden_blob_drops_the_original_output(rng):
    model, oracle = small_net(rng)
    clf = OnnxClassifier(model, outputs=["conv1"], device="cpu")
    assert [o.name for o in clf._session.get_outputs()] == ["conv1"]
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(clf(x)["conv1"], oracle(x)["conv1"], rtol=1e-4, atol=1e-5)


def test_input_blob_can_be_requested(rng):
    model, _ = small_net(rng)
    x = rng.standard_normal((3, 2, 6, 6)).astype(np.float32)
    out = OnnxClassifier(model, outputs=["data", "prob"], batch_size=2, device="cpu")(x)
    np.testing.assert_array_equal(out["data"], x)


def test_with_outputs_and_blob_names(rng):
    model, _ = small_net(rng)
    clf = OnnxClassifier(model, batch_size=5, device="cpu")
    assert clf.blob_names == ("data", "conv1", "relu1", "flat", "fc", "prob")
    other = clf.with_outputs(["fc"])
    assert other.outputs == ("fc",) and other.batch_size == 5 and clf.outputs == ("prob",)


def test_unknown_blob_lists_available_names(rng):
    model, _ = small_net(rng)
    with pytest.raises(InvalidArgument, match=r"'fc9'.*available: data, conv1, relu1, flat, fc, prob"):
        OnnxClassifier(model, outputs=["prob", "fc9"], device="cpu")
    with pytest.raises(InvalidArgument, match="w"):  # weights are not blobs
        OnnxClassifier(model, outputs=["w"], device="cpu")


@pytest.mark.parametrize("shape", [(2, 3, 6, 6), (2, 2, 5, 6), (2, 6, 6), (2, 2, 6, 6, 1)])
def test_wrong_input_shape(rng, shape):
    model, _ = small_net(rng)
    clf = OnnxClassifier(model, device="cpu")
    with pytest.raises(InvalidArgument, match=r"expected \(N, 2, 6, 6\)"):
        clf(np.zeros(shape, np.float32))


def test_fixed_batch_model_is_chunked_and_padded(rng):
    model, oracle = small_net(rng, batch=4)
    x = rng.standard_normal((10, 2, 6, 6)).astype(np.float32)
    out = OnnxClassifier(model, batch_size=64, device="cpu")(x)["prob"]
    np.testing.assert_allclose(out, oracle(x)["prob"], rtol=1e-4, atol=1e-6)


def test_model_from_file_and_newer_ir_version(rng, tmp_path):
    model, oracle = small_net(rng)
    model.ir_version = 99  # newer than any onnxruntime reads: lowered on a copy
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    clf = OnnxClassifier(path, device="cpu")
    np.testing.assert_allclose(clf(x)["prob"], oracle(x)["prob"], rtol=1e-4, atol=1e-6)
    fc = clf.with_outputs(["fc"])(x)["fc"]  # reloads the file
    np.testing.assert_allclose(fc, oracle(x)["fc"], rtol=1e-4, atol=1e-5)


def test_bad_arguments(rng, tmp_path):
    model, _ = small_net(rng)
    with pytest.raises(InvalidArgument, match="device"):
        OnnxClassifier(model, device="tpu")
    with pytest.raises(InvalidArgument, match="batch_size"):
        OnnxClassifier(model, batch_size=0)
    with pytest.raises(InvalidArgument, match="does not exist"):
        OnnxClassifier(tmp_path / "missing.onnx")


def test_auto_device_without_gpu_is_quiet(rng, capfd, caplog):
    """On a machine without a usable GPU, ``auto`` falls back to the CPU without onnxruntime's
    provider-loading errors on stderr; ``cuda`` says (one warning) that it fell back."""
    model, _ = small_net(rng)
    from preddiff import classifier

    if classifier._cuda_device_count() > 0:
        pytest.skip("a CUDA device is present")
    with caplog.at_level(logging.INFO, logger="preddiff.classifier"):
        clf = OnnxClassifier(model, device="auto")
    assert clf.provider == "CPUExecutionProvider"
    assert capfd.readouterr().err == ""
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="preddiff.classifier"):
        clf = OnnxClassifier(model, device="cuda")
    assert clf.provider == "CPUExecutionProvider"
    assert [r for r in caplog.records if r.levelno == logging.WARNING]


def test_cuda_sessions_ask_for_full_float32(rng, monkeypatch):
    """Every CUDA session turns TensorFloat-32 off (onnxruntime's CUDA default on Ampere and
    newer): on an H100 it moved the maps by 1.7 % of their maximum between batch sizes. The
    CUDA provider is simulated here; the sessions themselves are created on the CPU."""
    import onnxruntime as ort

    from preddiff import classifier, incremental

    model, _ = small_net(rng)
    seen = []
    real_session = ort.InferenceSession

    def spy(data, options=None, providers=None):
        seen.append(providers)
        return real_session(data, options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", spy)
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(classifier, "_cuda_device_count", lambda: 1)
    monkeypatch.setattr(classifier, "preload_cuda_libraries", lambda: "")
    OnnxClassifier(model, device="cuda")  # falls back: the session runs on the CPU
    incremental._Session(model, "cuda")
    want = [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    assert seen[0] == want and seen[-1] == want
