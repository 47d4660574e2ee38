"""Perturbed images composed inside the graph (the device path of issue 16) and on the host.

The oracle of the composition is a literal loop; the oracle of the device path is today's
host path on the CPU provider, which it must equal bit for bit (the network sees the same
images in the same calls).
"""
import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from preddiff import classifier as classifier_module
from preddiff import prediction_difference
from preddiff.analysis import WindowEvaluator, clean_outputs, prefetch_default, prepare
from preddiff.binding import BoundSession
from preddiff.classifier import OnnxClassifier
from preddiff.compose import (CLEAN, MEAN_SUFFIX, PATCHES, TOP_LEFT, compose_batch,
                              composing_model)
from preddiff.errors import InvalidArgument, PredDiffError
from preddiff.samplers import ConditionalGaussianSampler, MarginalSampler


def literal_compose(x, top_left, patches):
    out = np.repeat(x[None], len(patches), axis=0)
    kh, kw = patches.shape[2:]
    for n, (r, c) in enumerate(top_left):
        out[n, :, r:r + kh, c:c + kw] = patches[n]
    return out


def conv_net(rng, channels=3, size=12, classes=5, opset=13, batch="N"):
    """conv 3x3 (4 maps, ReLU) -> global average pool -> linear -> softmax."""
    w = numpy_helper.from_array(rng.normal(size=(4, channels, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b")
    fc = numpy_helper.from_array(rng.normal(size=(4, classes)).astype(np.float32), "fc")
    nodes = [helper.make_node("Conv", ["data", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("GlobalAveragePool", ["relu"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "fc"], ["scores"]),
             helper.make_node("Softmax", ["scores"], ["prob"], axis=1)]
    graph = helper.make_graph(
        nodes, "conv_net",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, channels, size, size])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [batch, classes])],
        [w, b, fc])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def random_windows(rng, shape, window, n):
    c, h, w = shape
    kh, kw = window
    rows = rng.integers(0, h - kh + 1, n)
    cols = rng.integers(0, w - kw + 1, n)
    rows[:2], cols[:2] = (0, h - kh), (0, w - kw)  # both corners
    top_left = np.stack([rows, cols], axis=1).astype(np.int64)
    patches = rng.normal(size=(n, c, kh, kw)).astype(np.float32)
    return top_left, patches


def test_compose_batch_equals_literal_loop(rng):
    x = rng.normal(size=(3, 9, 11)).astype(np.float32)
    top_left, patches = random_windows(rng, x.shape, (4, 3), 17)
    want = literal_compose(x, top_left, patches)
    np.testing.assert_array_equal(compose_batch(x, top_left, patches), want)
    buffer = np.full((20, 3, 9, 11), np.nan, np.float32)
    np.testing.assert_array_equal(compose_batch(x, top_left, patches, out=buffer), want)


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_composing_graph_builds_the_same_images(rng, opset):
    model = conv_net(rng, opset=opset)
    x = rng.normal(size=(3, 12, 12)).astype(np.float32)
    top_left, patches = random_windows(rng, x.shape, (5, 5), 13)
    wrapped = composing_model(model, "data", x.shape, (5, 5), ["data", "prob"])
    session = ort.InferenceSession(wrapped.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    images, prob = session.run(["data", "prob"], {CLEAN: x[None], PATCHES: patches,
                                                   TOP_LEFT: top_left})
    np.testing.assert_array_equal(images, literal_compose(x, top_left, patches))
    plain = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(prob, plain.run(["prob"], {"data": images})[0])


def test_spatial_means_are_reduced_in_the_graph(rng):
    model = conv_net(rng)
    x = rng.normal(size=(3, 12, 12)).astype(np.float32)
    top_left, patches = random_windows(rng, x.shape, (3, 3), 6)
    wrapped = composing_model(model, "data", x.shape, (3, 3), ["conv", "prob"],
                              spatial_means=["conv"])
    assert [o.name for o in wrapped.graph.output] == ["conv" + MEAN_SUFFIX, "prob"]
    session = ort.InferenceSession(wrapped.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    means, = session.run(["conv" + MEAN_SUFFIX], {CLEAN: x[None], PATCHES: patches,
                                                   TOP_LEFT: top_left})
    full = OnnxClassifier(model, outputs=["conv"], device="cpu")(
        literal_compose(x, top_left, patches))
    assert means.shape == (6, 4) and means.dtype == np.float64
    np.testing.assert_allclose(means, full["conv"].astype(np.float64).mean(axis=(2, 3)),
                               rtol=1e-12, atol=1e-12)


def test_models_below_opset_11_are_composed_on_the_host(rng):
    model = conv_net(rng, opset=9)
    with pytest.raises(InvalidArgument, match="opset 11"):
        composing_model(model, "data", (3, 12, 12), (3, 3), ["prob"])
    clf = OnnxClassifier(model, device="cpu", compose="device")
    x = rng.normal(size=(3, 12, 12)).astype(np.float32)
    top_left, patches = random_windows(rng, x.shape, (3, 3), 5)
    with pytest.raises(PredDiffError, match="compose='host'"):
        clf.evaluate_windows(x, top_left, patches)


def test_bound_session_reuses_buffers_and_returns_copies(rng):
    model = conv_net(rng)
    model.graph.output.append(onnx.ValueInfoProto(name="conv"))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    bound = BoundSession(session, "cpu")
    batches = [rng.normal(size=(n, 3, 12, 12)).astype(np.float32) for n in (4, 4, 3, 4)]
    results = [bound.run({"data": b}, ["prob", "conv"], len(b)) for b in batches]
    for b, r in zip(batches, results):  # earlier results are not overwritten by later calls
        want = session.run(["prob", "conv"], {"data": b})
        np.testing.assert_array_equal(r["prob"], want[0])
        np.testing.assert_array_equal(r["conv"], want[1])
    # one input buffer and one output buffer per name and batch shape, allocated once
    assert sorted(k[1] for k in bound._inputs) == [(3, 3, 12, 12), (4, 3, 12, 12)]
    assert sorted(k for k in bound._outputs if k[0] == "prob") == [("prob", 3), ("prob", 4)]


def test_bound_session_keeps_more_buffers_for_small_inputs(rng, monkeypatch):
    """Small inputs whose shape follows each batch (the incremental graph's index terms) keep
    a buffer per shape; large ones keep MAX_SHAPES, dropping the rest when a new one comes."""
    from preddiff import binding

    model = conv_net(rng)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    bound = BoundSession(session, "cpu")
    made = []
    ortvalue = BoundSession._ortvalue
    monkeypatch.setattr(BoundSession, "_ortvalue",
                        lambda self, shape, dtype: (len(shape) == 4 and made.append(shape))
                        or ortvalue(self, shape, dtype))  # input buffers (outputs are 2-D)
    sizes = list(range(1, 9))
    for n in sizes + sizes:  # 8 shapes of at most 8 * 432 bytes, twice
        bound.run({"data": rng.normal(size=(n, 3, 12, 12)).astype(np.float32)}, ["prob"], n)
    assert len(made) == 8  # each shape allocated once
    monkeypatch.setattr(binding, "SMALL_BYTES", 0)  # every input counts as large now
    made.clear()
    bound._inputs.clear()
    for n in sizes + sizes:
        bound.run({"data": rng.normal(size=(n, 3, 12, 12)).astype(np.float32)}, ["prob"], n)
    assert len(made) == 16 and len(bound._inputs) <= binding.MAX_SHAPES


def test_bound_session_constants_stay_bound(rng):
    model = conv_net(rng)
    x = rng.normal(size=(3, 12, 12)).astype(np.float32)
    wrapped = composing_model(model, "data", x.shape, (2, 2), ["prob"])
    session = ort.InferenceSession(wrapped.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    bound = BoundSession(session, "cpu")
    bound.set_constant(CLEAN, x[None])
    plain = OnnxClassifier(model, device="cpu")
    for n in (5, 5, 2):
        top_left, patches = random_windows(rng, x.shape, (2, 2), n)
        got = bound.run({PATCHES: patches, TOP_LEFT: top_left}, ["prob"], n)["prob"]
        np.testing.assert_array_equal(got, plain(literal_compose(x, top_left, patches))["prob"])


def lenet_setup():
    from preddiff.digits import load_digits

    digits, _ = load_digits()
    sampler = ConditionalGaussianSampler.fit(digits[10:300], 4, 2, num_patches=3000, rng=3)
    return digits[7], sampler


def lenet(compose, batch_size):
    return OnnxClassifier.for_model("lenet", outputs=["prob"], batch_size=batch_size,
                                    device="cpu", compose=compose)


@pytest.fixture(scope="module")
def lenet_reference():
    x, sampler = lenet_setup()
    e = prediction_difference(x, lenet("host", 64), sampler, window=4, stride=2, num_samples=6,
                              rng=5, batch_size=60, progress=False)
    return x, sampler, e.relevance["prob"]


@pytest.mark.parametrize("call_size,engine_batch,prefetch",
                         [(64, 60, True), (16, 60, False), (64, 300, True), (7, 18, True)])
def test_device_composed_maps_equal_host_composed(lenet_reference, call_size, engine_batch,
                                                  prefetch):
    """Bit-identical maps: host vs device composition, at several batch sizes (the call
    sizes of a fixed-size network do not change its per-image outputs on the CPU)."""
    x, sampler, want = lenet_reference
    clf = lenet("device", call_size)
    e = prediction_difference(x, clf, sampler, window=4, stride=2, num_samples=6, rng=5,
                              batch_size=engine_batch, progress=False, prefetch=prefetch)
    assert clf.composes_on_device and clf._composer is not None
    np.testing.assert_array_equal(e.relevance["prob"], want)
    host = prediction_difference(x, lenet("host", call_size), sampler, window=4, stride=2,
                                 num_samples=6, rng=5, batch_size=engine_batch, progress=False)
    np.testing.assert_array_equal(host.relevance["prob"], want)


def test_device_composed_run_resumes_bit_identical(lenet_reference, tmp_path):
    x, sampler, want = lenet_reference
    clf = lenet("device", 64)
    calls = {"n": 0}
    original = clf.evaluate_windows

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    clf.evaluate_windows = interrupted
    checkpoint = tmp_path / "run.ckpt.npz"
    with pytest.raises(KeyboardInterrupt):
        prediction_difference(x, clf, sampler, window=4, stride=2, num_samples=6, rng=5,
                              batch_size=60, progress=False, checkpoint=checkpoint,
                              checkpoint_interval=0)
    assert checkpoint.exists()
    e = prediction_difference(x, lenet("device", 64), sampler, window=4, stride=2,
                              num_samples=6, rng=5, batch_size=60, progress=False,
                              checkpoint=checkpoint)
    np.testing.assert_array_equal(e.relevance["prob"], want)


def simulated_cuda(monkeypatch, model, **kwargs):
    """An OnnxClassifier that takes the CUDA provider's path (``compose="auto"`` composes on
    the device, activation differences reduced there) with the CPU provider underneath:
    IOBinding on the "cpu" device name stands in for "cuda"."""
    monkeypatch.setattr(classifier_module, "cuda_providers", lambda: ["CPUExecutionProvider"])
    clf = OnnxClassifier(model, device="cpu", **kwargs)
    clf.provider = classifier_module._CUDA
    return clf


def test_simulated_cuda_path_composes_on_device_and_reduces_feature_maps(rng, monkeypatch):
    model = conv_net(rng, size=10)
    x = rng.normal(size=(3, 10, 10)).astype(np.float32)
    pool = rng.normal(size=(12, 3, 10, 10)).astype(np.float32)
    sampler = MarginalSampler(pool)
    runs = []
    original = BoundSession.run

    def spy(self, feeds, outputs, rows):
        runs.append((sorted(feeds), list(outputs), rows))
        return original(self, feeds, outputs, rows)

    monkeypatch.setattr(BoundSession, "run", spy)
    args = dict(window=3, stride=1, num_samples=4, rng=2, batch_size=40, progress=False,
                blobs=("conv", "prob"), probability_blobs=("prob",))
    cuda = simulated_cuda(monkeypatch, model, outputs=["conv", "prob"], batch_size=16)
    assert cuda.composes_on_device
    got = prediction_difference(x, cuda, sampler, **args)
    # only the samples and positions travel; the feature maps come back as their means
    assert runs and all(feeds == [PATCHES, TOP_LEFT] for feeds, _, _ in runs)
    assert all(outs == ["conv" + MEAN_SUFFIX, "prob"] for _, outs, _ in runs)
    assert max(rows for _, _, rows in runs) == 16
    want = prediction_difference(x, OnnxClassifier(model, outputs=["conv", "prob"],
                                                   batch_size=16, compose="host",
                                                   device="cpu"),
                                 sampler, **args)
    np.testing.assert_array_equal(got.relevance["prob"], want.relevance["prob"])
    # each map's mean taken in the graph (float64) instead of by the host (float64)
    scale = np.abs(want.relevance["conv"]).max()
    np.testing.assert_allclose(got.relevance["conv"], want.relevance["conv"], rtol=0,
                               atol=1e-12 * scale)


def test_host_composition_on_cpu_by_default_and_for_fixed_batch(rng):
    assert OnnxClassifier(conv_net(rng), device="cpu").composes_on_device is False
    fixed = OnnxClassifier(conv_net(rng, batch=4), compose="device", device="cpu")
    assert fixed.composes_on_device is False  # a fixed batch is padded on the host
    x = rng.normal(size=(3, 12, 12)).astype(np.float32)
    top_left, patches = random_windows(rng, x.shape, (3, 3), 6)
    got = fixed.evaluate_windows(x, top_left, patches)["prob"]
    np.testing.assert_array_equal(got, fixed(literal_compose(x, top_left, patches))["prob"])


def test_clean_image_is_rebound_when_it_changes(rng):
    model = conv_net(rng)
    clf = OnnxClassifier(model, compose="device", batch_size=8, device="cpu")
    top_left, patches = random_windows(rng, (3, 12, 12), (3, 3), 5)
    for _ in range(2):
        x = rng.normal(size=(3, 12, 12)).astype(np.float32)
        got = clf.evaluate_windows(x, top_left, patches)["prob"]
        np.testing.assert_array_equal(got, clf(literal_compose(x, top_left, patches))["prob"])


def test_device_composition_that_cannot_load_falls_back_or_fails(rng, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise ValueError("no such operator")

    monkeypatch.setattr("preddiff.compose.composing_model", broken)
    x = rng.normal(size=(3, 12, 12)).astype(np.float32)
    top_left, patches = random_windows(rng, x.shape, (3, 3), 4)
    forced = OnnxClassifier(conv_net(rng), compose="device", device="cpu")
    with pytest.raises(PredDiffError, match="compose='host'"):
        forced.evaluate_windows(x, top_left, patches)
    auto = simulated_cuda(monkeypatch, conv_net(rng))
    with caplog.at_level("WARNING"):
        got = auto.evaluate_windows(x, top_left, patches)["prob"]
    assert "composing the images on the host" in caplog.text and auto.compose == "host"
    np.testing.assert_array_equal(got, auto(literal_compose(x, top_left, patches))["prob"])


class RecordingSampler(MarginalSampler):
    """Records which thread samples and whether two calls ever overlap."""

    def __init__(self, pool, fail_at=None):
        super().__init__(pool)
        self.lock = threading.Lock()
        self.threads, self.starts, self.overlap, self.fail_at = set(), [], False, fail_at

    def sample(self, x, top_left, window, num_samples, rngs):
        if not self.lock.acquire(blocking=False):
            self.overlap = True
            self.lock.acquire()
        try:
            self.threads.add(threading.current_thread().name)
            self.starts.append(rngs.start)
            if self.fail_at is not None and rngs.start >= self.fail_at:
                raise RuntimeError("sampler broke")
            return super().sample(x, top_left, window, num_samples, rngs)
        finally:
            self.lock.release()


def test_prefetch_samples_in_order_in_a_background_thread(rng):
    model = conv_net(rng, size=10)
    x = rng.normal(size=(3, 10, 10)).astype(np.float32)
    pool = rng.normal(size=(8, 3, 10, 10)).astype(np.float32)
    clf = OnnxClassifier(model, batch_size=8, device="cpu")
    results = {}
    for prefetch in (False, True):
        sampler = RecordingSampler(pool)
        setup = prepare(x, sampler, window=3, num_samples=4, rng=1, batch_size=12)
        clean, _ = clean_outputs(setup, clf)
        evaluator = WindowEvaluator(setup, clf, sampler, clean, prefetch=prefetch)
        results[prefetch] = evaluator(0, setup.n_windows)["prob"]
        assert sampler.starts == list(range(0, setup.n_windows, 3)) and not sampler.overlap
        background = any(t.startswith("preddiff-sampler") for t in sampler.threads)
        assert background == prefetch
    np.testing.assert_array_equal(results[True], results[False])


def test_prefetch_is_off_by_default_only_for_onnxruntime_on_the_cpu(rng):
    """onnxruntime's CPU threads use every core: the sampler runs between their calls."""
    model = conv_net(rng, size=10)
    x = rng.normal(size=(3, 10, 10)).astype(np.float32)
    pool = rng.normal(size=(8, 3, 10, 10)).astype(np.float32)
    onnx_cpu = OnnxClassifier(model, batch_size=8, device="cpu")

    class OnCuda:  # what OnnxClassifier reports on the CUDA provider
        provider = "CUDAExecutionProvider"

        def __call__(self, batch):
            return onnx_cpu(batch)

    def plain_function(batch):
        return onnx_cpu(batch)

    results = {}
    for name, clf, expected in [("onnx cpu", onnx_cpu, False), ("cuda", OnCuda(), True),
                                ("function", plain_function, True)]:
        assert prefetch_default(clf) is expected
        sampler = RecordingSampler(pool)
        setup = prepare(x, sampler, window=3, num_samples=4, rng=1, batch_size=12)
        clean, _ = clean_outputs(setup, clf)
        evaluator = WindowEvaluator(setup, clf, sampler, clean)
        assert evaluator.prefetch is expected
        results[name] = evaluator(0, setup.n_windows)["prob"]
        background = any(t.startswith("preddiff-sampler") for t in sampler.threads)
        assert background == expected, name
    np.testing.assert_array_equal(results["onnx cpu"], results["cuda"])
    np.testing.assert_array_equal(results["onnx cpu"], results["function"])
    assert WindowEvaluator(setup, onnx_cpu, sampler, clean, prefetch=True).prefetch


def test_prefetch_reports_the_sampler_error(rng):
    x = rng.normal(size=(3, 10, 10)).astype(np.float32)
    pool = rng.normal(size=(8, 3, 10, 10)).astype(np.float32)
    sampler = RecordingSampler(pool, fail_at=9)
    with pytest.raises(RuntimeError, match="sampler broke"):
        prediction_difference(x, OnnxClassifier(conv_net(rng, size=10), device="cpu"),
                              sampler, window=3,
                              num_samples=4, rng=1, batch_size=12, progress=False)


@pytest.mark.parametrize("compose", ["host", "device"])
def test_evaluate_windows_is_safe_from_several_threads(rng, compose):
    """Dask workers may run tasks in several threads on one classifier."""
    model = conv_net(rng)
    clf = OnnxClassifier(model, compose=compose, batch_size=4, device="cpu")
    images = [rng.normal(size=(3, 12, 12)).astype(np.float32) for _ in range(2)]
    top_left, patches = random_windows(rng, (3, 12, 12), (3, 3), 9)
    want = [clf(literal_compose(x, top_left, patches))["prob"] for x in images]
    wrong = []

    def work(i):
        for _ in range(15):
            got = clf.evaluate_windows(images[i], top_left, patches)["prob"]
            wrong.append(not np.array_equal(got, want[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wrong) == 30 and not any(wrong)


def test_a_clean_image_refilled_in_place_is_rebound(rng, monkeypatch):
    """On CUDA the bound clean image is a copy on the device: refilling the caller's array
    must not leave the old image bound (simulated: set_constant copies, as on CUDA)."""
    copied = BoundSession.set_constant
    monkeypatch.setattr(BoundSession, "set_constant",
                        lambda self, name, array: copied(self, name, array.copy()))
    clf = OnnxClassifier(conv_net(rng), compose="device", batch_size=8, device="cpu")
    x = rng.normal(size=(3, 12, 12)).astype(np.float32)
    top_left, patches = random_windows(rng, x.shape, (3, 3), 5)
    clf.evaluate_windows(x, top_left, patches)
    x[:] = rng.normal(size=x.shape)  # the caller's next image, same buffer
    got = clf.evaluate_windows(x, top_left, patches)["prob"]
    np.testing.assert_array_equal(got, clf(literal_compose(x, top_left, patches))["prob"])


def test_declared_batch_of_one_on_the_outputs_is_not_enforced(rng):
    """torch exports without dynamic output axes declare (1, K) outputs."""
    model = conv_net(rng)
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 5]))
    clf = OnnxClassifier(model, compose="device", batch_size=8, device="cpu")
    x = rng.normal(size=(3, 12, 12)).astype(np.float32)
    top_left, patches = random_windows(rng, x.shape, (3, 3), 6)
    got = clf.evaluate_windows(x, top_left, patches)["prob"]
    np.testing.assert_array_equal(got, clf(literal_compose(x, top_left, patches))["prob"])


def test_a_composing_graph_that_fails_on_its_first_batch_falls_back(rng, monkeypatch, caplog):
    def failing(self, feeds, outputs, rows):
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(BoundSession, "run", failing)
    auto = simulated_cuda(monkeypatch, conv_net(rng))
    x = rng.normal(size=(3, 12, 12)).astype(np.float32)
    top_left, patches = random_windows(rng, x.shape, (3, 3), 4)
    with caplog.at_level("WARNING"):
        got = auto.evaluate_windows(x, top_left, patches)["prob"]
    assert "failed on its first batch" in caplog.text and auto.compose == "host"
    np.testing.assert_array_equal(got, auto(literal_compose(x, top_left, patches))["prob"])


def test_windows_outside_the_image_are_refused(rng):
    clf = OnnxClassifier(conv_net(rng), compose="device", device="cpu")
    x = rng.normal(size=(3, 12, 12)).astype(np.float32)
    patches = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    with pytest.raises(InvalidArgument, match=r"\[0, 8\] x \[0, 8\]"):
        clf.evaluate_windows(x, np.array([[0, 0], [9, 2]]), patches)
    with pytest.raises(InvalidArgument, match="one top-left corner each"):
        clf.evaluate_windows(x, np.array([[0, 0]]), patches)


@pytest.mark.parametrize("elem,dtype", [(TensorProto.DOUBLE, np.float64),
                                        (TensorProto.FLOAT16, np.float16)])
def test_a_float64_or_float16_input_is_cast_in_the_composing_graph(rng, elem, dtype):
    """The float32 images are cast as the host path casts them before the network."""
    inp = helper.make_tensor_value_info("data", elem, ["N", 3, 8, 8])
    out = helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 3])
    nodes = [helper.make_node("Cast", ["data"], ["data32"], to=TensorProto.FLOAT),
             helper.make_node("GlobalAveragePool", ["data32"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
             helper.make_node("Softmax", ["flat"], ["prob"], axis=1)]
    model = helper.make_model(helper.make_graph(nodes, "g", [inp], [out]),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    clf = OnnxClassifier(model, compose="device", device="cpu")
    x = rng.normal(size=(3, 8, 8)).astype(np.float32)
    top_left, patches = random_windows(rng, x.shape, (3, 3), 5)
    got = clf.evaluate_windows(x, top_left, patches)["prob"]
    assert clf._composer is not None and clf._input_dtype == dtype
    np.testing.assert_array_equal(got, clf(literal_compose(x, top_left, patches))["prob"])


def test_one_blas_thread_is_shared_by_overlapping_analyses():
    """Analyses in several threads: BLAS stays on one thread while any runs, and the last to
    finish restores the setting (not the first)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from preddiff.analysis import _one_blas_thread

    def blas_threads():
        info = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
        if not info:
            pytest.skip("no BLAS library found by threadpoolctl")
        return {i["num_threads"] for i in info}

    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        if blas_threads() != {2}:
            pytest.skip("BLAS cannot run 2 threads here")
        a, b = _one_blas_thread(), _one_blas_thread()
        a.__enter__()
        b.__enter__()
        assert blas_threads() == {1}
        a.__exit__(None, None, None)  # the first to finish
        assert blas_threads() == {1}
        b.__exit__(None, None, None)
        assert blas_threads() == {2}
