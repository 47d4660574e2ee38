"""The measured on/off decision and batch size of incremental inference, and the benchmark
networks of :mod:`preddiff.netzoo` (graph analysis and exactness on them)."""
import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import preddiff.incremental_decision as decision
from preddiff.errors import InvalidArgument
from preddiff.incremental_decision import decide_incremental


def _small_net(rng, height=20, width=22):
    """Normalisation, two convolutions, a residual Add, global pool, Gemm, Softmax."""
    def init(name, shape, scale=0.3):
        return numpy_helper.from_array((rng.normal(size=shape) * scale).astype(np.float32), name)

    inits = [init("w1", (6, 3, 3, 3)), init("w2", (6, 6, 3, 3)), init("fc", (4, 6)),
             numpy_helper.from_array(np.array([0.4, 0.5, 0.6], np.float32).reshape(1, 3, 1, 1),
                                     "mean")]
    nodes = [helper.make_node("Sub", ["data", "mean"], ["n"]),
             helper.make_node("Conv", ["n", "w1"], ["c1"], kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "r1"], ["a"]),
             helper.make_node("GlobalAveragePool", ["a"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["scores"], transB=1),
             helper.make_node("Softmax", ["scores"], ["prob"], axis=1)]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("data", TensorProto.FLOAT,
                                                       ["N", 3, height, width])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.fixture
def fake_rates(monkeypatch):
    """Replace both measurements by given rates (images/s and window-samples/s)."""
    calls, strides = [], []

    def install(full, incremental):
        def measure_full(model, outputs, x, window, device, threads, batches, budget, rng):
            calls.append("full")
            from preddiff.classifier import OnnxClassifier

            rates = {b: full[b] for b in batches if b in full}
            return rates, {b: OnnxClassifier(model, outputs=list(outputs), batch_size=b,
                                             device="cpu") for b in rates}

        def measure_incremental(clf, x, window, batches, budget, samples, rng, stride):
            calls.append("incremental")
            strides.append(stride)
            return {b: incremental[b] for b in batches if b in incremental}

        monkeypatch.setattr(decision, "_measure_full", measure_full)
        monkeypatch.setattr(decision, "_measure_incremental", measure_incremental)
        return calls
    install.strides = strides
    return install


def test_faster_engine_and_batch_size_are_chosen_and_cached(tmp_path, rng, fake_rates):
    calls = fake_rates({1: 10.0, 8: 40.0, 32: 30.0}, {16: 50.0, 64: 90.0, 256: 70.0})
    model = _small_net(rng)
    x = rng.normal(size=(3, 20, 22)).astype(np.float32)
    d = decide_incremental(model, x, 5, outputs=["prob"], device="cpu", cache_dir=tmp_path)
    assert d.use and d.batch_size == 64 and d.ratio == pytest.approx(90.0 / 40.0)
    assert d.classifier.incremental and d.classifier.batch_size == 64
    assert d.message.startswith("incremental inference on: measured 2.2x faster than full "
                                "images (planned ")
    assert not d.cached and calls == ["full", "incremental"] * decision.REPEATS
    entries = json.loads((tmp_path / decision.CACHE_FILE).read_text())["entries"]
    assert len(entries) == 1
    again = decide_incremental(model, x, 5, outputs=["prob"], device="cpu", cache_dir=tmp_path)
    assert again.cached and again.ratio == d.ratio
    assert calls == ["full", "incremental"] * decision.REPEATS
    assert again.message.endswith(", cached")
    # another window size is another measurement
    decide_incremental(model, x, 3, outputs=["prob"], device="cpu", cache_dir=tmp_path)
    assert calls[2 * decision.REPEATS:] == ["full", "incremental"] * decision.REPEATS
    # and so is another stride: the timed windows are neighbours on the run's grid
    assert set(fake_rates.strides) == {1}
    decide_incremental(model, x, 5, outputs=["prob"], device="cpu", cache_dir=tmp_path,
                       stride=3)
    assert calls[4 * decision.REPEATS:] == ["full", "incremental"] * decision.REPEATS
    assert fake_rates.strides[-1] == 3
    assert len(json.loads((tmp_path / decision.CACHE_FILE).read_text())["entries"]) == 3


def test_timed_windows_are_neighbours_on_the_run_grid(rng):
    """The incremental engine widens a batch's boxes to the largest: it is timed on windows
    as PDA batches them, consecutive positions of the grid (raster order), S times each."""
    x = rng.normal(size=(3, 20, 22)).astype(np.float32)
    for stride, count, samples in ((1, 12, 3), (2, 40, 4), (3, 7, 7), (5, 200, 2)):
        top_left, patches = decision._windows(x, (4, 5), count, samples, rng, stride)
        assert top_left.shape == (count, 2) and patches.shape == (count, 3, 4, 5)
        # PDA's grid: the stride's positions, plus the last row and column where the stride
        # does not reach the edge (edges="cover")
        rows = sorted(set(range(0, 20 - 4 + 1, stride)) | {20 - 4})
        cols = sorted(set(range(0, 22 - 5 + 1, stride)) | {22 - 5})
        grid = [(r, c) for r in rows for c in cols]
        positions = [tuple(p) for p in top_left[::samples]]
        assert all(np.array_equal(top_left[i], top_left[i - i % samples])
                   for i in range(count))  # each position S times in a row
        first = grid.index(positions[0])
        want = [grid[(first + i) % len(grid)] for i in range(len(positions))]
        assert positions == want


def test_slower_incremental_engine_is_off_in_auto_and_forced_in_on(tmp_path, rng, fake_rates):
    fake_rates({1: 10.0, 8: 40.0, 32: 60.0}, {16: 30.0, 64: 20.0, 256: 10.0})
    model = _small_net(rng)
    x = rng.normal(size=(3, 20, 22)).astype(np.float32)
    d = decide_incremental(model, x, 5, outputs=["prob"], device="cpu", cache=False)
    assert not d.use and d.batch_size == 32 and d.ratio == pytest.approx(0.5)
    assert d.classifier.batch_size == 32 and type(d.classifier).__name__ == "OnnxClassifier"
    assert d.message.startswith("incremental inference off: measured 0.5x the speed of full")
    on = decide_incremental(model, x, 5, "on", outputs=["prob"], device="cpu", cache=False)
    assert on.use and on.batch_size == 16 and "on (forced)" in on.message


def test_user_batch_size_is_the_only_candidate(tmp_path, rng, fake_rates):
    fake_rates({1: 10.0, 8: 40.0, 12: 45.0}, {12: 80.0, 64: 900.0})
    model = _small_net(rng)
    x = rng.normal(size=(3, 20, 22)).astype(np.float32)
    d = decide_incremental(model, x, 5, outputs=["prob"], device="cpu", batch_size=12,
                           cache=False)
    assert d.use and d.batch_size == 12 and set(d.timings["incremental"]) == {12}


def test_real_measurement_off_mode_and_unsupported_graph(rng, tmp_path):
    """Unpatched: the timings are positive and the maps' engine is usable; mode off and a
    graph without a local layer measure only full images."""
    model = _small_net(rng)
    x = rng.normal(size=(3, 20, 22)).astype(np.float32)
    d = decide_incremental(model, x, 4, outputs=["prob"], device="cpu", cache_dir=tmp_path,
                           budget_s=5)
    assert d.ratio > 0 and d.planned >= 1 and all(v > 0 for v in d.timings["full"].values())
    assert d.batch_size in (d.timings["incremental"] if d.use else d.timings["full"])
    off = decide_incremental(model, x, 4, "off", outputs=["prob"], device="cpu", budget_s=2)
    assert not off.use and off.ratio is None and off.message == "incremental inference off " \
        "(mode off)" and off.timings["incremental"] == {}
    flat = helper.make_model(helper.make_graph(
        [helper.make_node("Flatten", ["data"], ["f"]),
         helper.make_node("Softmax", ["f"], ["prob"], axis=1)], "flat",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 48])]),
        opset_imports=[helper.make_opsetid("", 13)])
    flat.ir_version = 8
    d = decide_incremental(flat, np.zeros((3, 4, 4), np.float32), 2, outputs=["prob"],
                           device="cpu", budget_s=2)
    assert not d.use and "Flatten" in d.message


def test_each_call_size_is_timed_on_whole_windows_as_pda_sends_them(rng):
    """A call size is timed on the batch a run hands the engine (whole windows of S samples,
    max(RUN_BATCH, b) samples), in one evaluate_windows call that the engine splits into
    calls of that size: with S = 20, a call size of 16 splits every window's samples in two,
    and 256 leaves a short last call, as in a run."""
    class Engine:
        batch_size = None
        seen = []

        def evaluate_windows(self, x, top_left, patches):
            self.seen.append((self.batch_size, len(top_left)))

    engine = Engine()
    x = rng.normal(size=(3, 20, 22)).astype(np.float32)
    rates = decision._measure_incremental(engine, x, (4, 4), (16, 64, 256, 4096), 1e9, 20,
                                          rng, 1)
    assert set(rates) == {16, 64, 256, 4096}
    warm_up, *timed = engine.seen
    assert warm_up[1] == 1
    assert decision.RUN_BATCH == 1000
    assert timed == [(16, 1000), (64, 1000), (256, 1000), (4096, 4080)]  # 204 windows of 20


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_call_size_the_device_cannot_hold_ends_the_list_on_cuda(device, rng):
    class Engine:
        batch_size = None

        def __init__(self):
            self.device = device

        def evaluate_windows(self, x, top_left, patches):
            if self.batch_size and self.batch_size >= 1024:
                raise RuntimeError("CUDA failure 2: out of memory")

    x = rng.normal(size=(3, 20, 22)).astype(np.float32)
    sizes = decision.CUDA_INCREMENTAL_BATCHES
    if device == "cpu":  # a failure on the CPU is an error, not a limit
        with pytest.raises(RuntimeError, match="out of memory"):
            decision._measure_incremental(Engine(), x, (4, 4), sizes, 1e9, 10, rng, 1)
    else:
        rates = decision._measure_incremental(Engine(), x, (4, 4), sizes, 1e9, 10, rng, 1)
        assert set(rates) == {64, 256}


@pytest.mark.parametrize("kwargs, word", [({"mode": "fast"}, "'fast'"),
                                          ({"window": 40}, "40x40"),
                                          ({"batch_size": 0}, "0"),
                                          ({"stride": 0}, "stride must be an integer >= 1, "
                                                          "got 0"),
                                          ({"x": np.zeros((20, 22), np.float32)}, "(20, 22)")])
def test_bad_arguments_name_the_value(kwargs, word, rng):
    args = {"model": _small_net(rng), "x": np.zeros((3, 20, 22), np.float32), "window": 4}
    args.update(kwargs)
    with pytest.raises(InvalidArgument, match=word.replace("(", r"\(").replace(")", r"\)")):
        decide_incremental(outputs=["prob"], device="cpu", cache=False, **args)


# ---------------------------------------------------------------------------------------------
# the benchmark networks


@pytest.mark.parametrize("name, steps", [("resnet18", 22), ("mobilenet_v2", 53),
                                         ("efficientnet_lite0", 55), ("resnet50", 55)])
def test_benchmark_networks_are_incremental_up_to_the_global_pool(name, steps):
    """Normalisation, residual Adds, ReLU6, depthwise convolutions and torch's ZeroPad2d
    chain are all in the prefix: it ends at the global average pool."""
    from preddiff import netzoo
    from preddiff.incremental_plan import analyse

    analysis = analyse(netzoo.build(name), ["prob"])
    assert analysis.stop_reason.startswith("GlobalAveragePool"), analysis.stop_reason
    assert len(analysis.steps) == steps
    ops = {n.op_type for s in analysis.steps for n in s.nodes}
    assert {"Sub", "Div", "Conv", "Add"} <= ops
    # every residual Add is fused into the step of the convolution in front of it
    assert not [s for s in analysis.steps if s.kind == "merge"]
    if name == "efficientnet_lite0":
        assert "Pad" in ops


def _pda_maps(model, x, pool, clf, stride):
    from preddiff import prediction_difference
    from preddiff.samplers import MarginalSampler

    e = prediction_difference(x, clf, MarginalSampler(pool), window=10, stride=stride,
                              num_samples=2, blobs=("prob",), batch_size=64, rng=0,
                              progress=False)
    return e.relevance["prob"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "efficientnet_lite0"])
def test_benchmark_network_maps_equal_the_naive_engine(name):
    """Full-size benchmark networks: incremental maps equal the naive engine's on a coarse
    grid of windows (corners included)."""
    from preddiff import netzoo
    from preddiff.classifier import OnnxClassifier
    from preddiff.incremental import IncrementalClassifier

    model = netzoo.build(name)
    pool = netzoo.example_pool()
    want = _pda_maps(model, pool[0], pool[1:4], OnnxClassifier(model, outputs=["prob"],
                                                               device="cpu"), 107)
    clf = IncrementalClassifier(model, outputs=["prob"], device="cpu", cut=10 ** 6)
    got = _pda_maps(model, pool[0], pool[1:4], clf, 107)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_unknown_network_is_refused():
    from preddiff import netzoo

    with pytest.raises(InvalidArgument, match="'resnet19'"):
        netzoo.build("resnet19")


def test_ratio_wording_is_true_at_the_precision_printed(rng, fake_rates):
    """Issue 18: 1.04 measured printed "measured 1.0x faster"."""
    assert decision.ratio_text(1.04) == "measured about the speed of full images (1.04x)"
    assert decision.ratio_text(0.97) == "measured about the speed of full images (0.97x)"
    assert decision.ratio_text(1.8) == "measured 1.8x faster than full images"
    assert decision.ratio_text(0.5) == "measured 0.5x the speed of full images"
    assert decision.ratio_text(0.001) == "measured under 0.01x the speed of full images"
    fake_rates({1: 10.0, 8: 40.0, 32: 30.0}, {16: 41.6, 64: 20.0})
    model = _small_net(rng)
    x = rng.normal(size=(3, 20, 22)).astype(np.float32)
    d = decide_incremental(model, x, 5, outputs=["prob"], device="cpu", cache=False)
    assert d.use and "1.0x faster" not in d.message
    assert d.message.startswith("incremental inference on: measured about the speed of full "
                                "images (1.04x)")


def test_measurement_is_announced_timed_and_redone_on_request(tmp_path, rng, fake_rates):
    calls = fake_rates({1: 10.0, 8: 40.0, 32: 30.0}, {16: 50.0, 64: 90.0, 256: 70.0})
    model = _small_net(rng)
    x = rng.normal(size=(3, 20, 22)).astype(np.float32)
    announced = []
    kwargs = dict(outputs=["prob"], device="cpu", cache_dir=tmp_path,
                  on_measure=lambda: announced.append(len(calls)))
    first = decide_incremental(model, x, 5, **kwargs)
    assert announced == [0] and first.seconds is not None and first.seconds >= 0
    cached = decide_incremental(model, x, 5, **kwargs)
    assert cached.cached and cached.seconds is None and announced == [0]
    fake_rates({1: 10.0, 8: 40.0, 32: 30.0}, {16: 5.0, 64: 9.0, 256: 7.0})  # now slower
    again = decide_incremental(model, x, 5, remeasure=True, **kwargs)
    assert len(announced) == 2 and not again.cached and not again.use
    assert not decide_incremental(model, x, 5, **kwargs).use  # the new result is cached
