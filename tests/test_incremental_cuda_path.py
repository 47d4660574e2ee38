"""The compiled incremental engine on its CUDA code path, simulated on the CPU provider.

No GPU here. As issue 13's tests do for the naive engine (``tests/test_compose.py``), the
engine takes every branch it takes on CUDA: the device resolved as "cuda", the CUDA provider
list asked for, "merge" grouping, a batch size from the free device memory, the compiled graph
even when no step is incremental (on the CPU such windows are composed on the host), the clean
pass through I/O binding, and its bound session created for the device. Underneath,
onnxruntime's CPU provider runs the graphs and I/O binding binds host memory in place of the
device's. What only a GPU can show (kernels, transfers, speed) is ``bench/gpu_check.sh``'s.
"""
import types

import numpy as np
import pytest

from preddiff import classifier as classifier_module
from preddiff import incremental as incremental_module
from preddiff import incremental_decision
from preddiff.incremental import DEFAULT_BATCH_SIZE, IncrementalClassifier, auto_batch_size
from preddiff.incremental_index import Region
from preddiff.incremental_plan import analyse
from test_incremental import TOL, _assert_exact, _case_model, _literal_images, _windows

FREE_BYTES = 64 * 2 ** 20


@pytest.fixture
def cuda(monkeypatch):
    """The CUDA path with the CPU provider underneath; records what the engine asked for."""
    seen = types.SimpleNamespace(providers=0, bound=[], sessions=[])
    monkeypatch.setattr(incremental_module, "resolve_device", lambda device: "cuda")

    def providers():
        seen.providers += 1
        return ["CPUExecutionProvider"]

    monkeypatch.setattr(classifier_module, "cuda_providers", providers)
    monkeypatch.setattr(incremental_module, "gpu_free_memory", lambda: FREE_BYTES)
    real = incremental_module.BoundSession

    def bound(session, device_type="cpu", device_id=0):
        seen.bound.append(device_type)
        return real(session, "cpu", device_id)  # host memory stands in for the device's

    monkeypatch.setattr(incremental_module, "BoundSession", bound)
    run = incremental_module._Session._run

    def session_run(self, feeds, outputs):
        seen.sessions.append(self.device)
        return run(self, feeds, outputs)

    monkeypatch.setattr(incremental_module._Session, "_run", session_run)
    return seen


def _inputs(rng, k=10, height=23, width=27):
    x = rng.normal(size=(3, height, width)).astype(np.float32)
    top_left = np.repeat(_windows(height, width, k, rng, extra=6), 3, axis=0)  # S = 3
    patches = rng.normal(size=(len(top_left), 3, k, k)).astype(np.float32)
    return x, top_left, patches


@pytest.mark.parametrize("case", ["inception", "residual", "avgpool"])
def test_cuda_path_equals_the_full_forward_pass_at_every_switch_point(case, cuda, rng):
    model, outputs = _case_model(case, rng)
    x, top_left, patches = _inputs(rng)
    want = IncrementalClassifier(model, outputs=outputs, device="cpu", incremental=False)(
        _literal_images(x, top_left, patches))
    steps = len(analyse(model, outputs).steps)
    cuda.sessions.clear()  # the reference's
    for cut in [None, 0, steps // 2, steps]:
        clf = IncrementalClassifier(model, outputs=outputs, cut=cut)
        assert clf.device == "cuda" and clf.grouping == "merge"  # a GPU wants large batches
        got = clf.evaluate_windows(x, top_left, patches)
        _assert_exact(got, want)
        plan = clf._plan(x.shape, (10, 10))
        # the batch size follows the free device memory and the plan's modelled bytes
        assert clf.batch_size == auto_batch_size(FREE_BYTES, clf._bytes_per_window(plan))
        assert plan.runners  # windows ran through the compiled graph (also cut 0)
    assert cuda.providers > 0
    assert cuda.bound and set(cuda.bound) == {"cuda"}
    # the clean passes, through I/O binding (the prefix's shapes are inferred on the CPU)
    assert cuda.sessions.count("cuda") >= 4


def test_cuda_path_runs_windows_of_a_full_plan_in_the_graph(cuda, rng, monkeypatch):
    """With no incremental step (cut 0) CUDA still runs the compiled graph, which writes the
    samples into the image on the device; the CPU composes on the host instead."""
    model, outputs = _case_model("inception", rng)
    x, top_left, patches = _inputs(rng)
    clf = IncrementalClassifier(model, outputs=outputs, cut=0)
    host = []
    monkeypatch.setattr(clf, "_full_images", lambda *a: host.append(1))
    clf.evaluate_windows(x, top_left, patches)
    assert not host
    assert clf._plan(x.shape, (10, 10)).runners


def test_cuda_path_user_batch_size_is_kept(cuda, rng):
    model, outputs = _case_model("residual", rng)
    x, top_left, patches = _inputs(rng)
    clf = IncrementalClassifier(model, outputs=outputs, batch_size=5)
    clf.evaluate_windows(x, top_left, patches)
    assert clf.batch_size == 5


def test_cuda_path_unknown_free_memory_gives_the_default_batch_size(cuda, rng, monkeypatch):
    monkeypatch.setattr(incremental_module, "gpu_free_memory", lambda: None)
    model, outputs = _case_model("residual", rng)
    x, top_left, patches = _inputs(rng)
    clf = IncrementalClassifier(model, outputs=outputs)
    clf.evaluate_windows(x, top_left, patches)
    assert clf.batch_size == auto_batch_size(None, 1.0) == min(DEFAULT_BATCH_SIZE, 1024)


def test_cuda_path_decision_measures_on_the_device_and_keys_its_cache(cuda, rng, tmp_path,
                                                                      monkeypatch):
    """`--incremental auto` on CUDA: the full side tries the GPU's batch sizes, the
    incremental side is the CUDA engine, and the cached measurement is the device's own."""
    monkeypatch.setattr(incremental_decision, "resolve_device", lambda device: "cuda")
    tried = []
    measure = incremental_decision._measure_full

    def measure_full(model, outputs, x, window, device, *args):
        tried.append((device, args[1]))
        return measure(model, outputs, x, window, "cpu", *args)  # no CUDA build here

    monkeypatch.setattr(incremental_decision, "_measure_full", measure_full)
    monkeypatch.setattr(incremental_decision, "gpu_free_memory", lambda: 2 ** 30)
    # the host's memory must not be what filters the call sizes: make it plentiful
    monkeypatch.setattr(incremental_decision, "_available_memory", lambda: 2.0 ** 50)
    sizes = []
    measure_incremental = incremental_decision._measure_incremental

    def spy(clf, x, window, batches, *args):
        sizes.append(batches)
        return measure_incremental(clf, x, window, batches, *args)

    monkeypatch.setattr(incremental_decision, "_measure_incremental", spy)
    model, outputs = _case_model("inception", rng)
    x = rng.normal(size=(3, 23, 27)).astype(np.float32)
    decision = incremental_decision.decide_incremental(
        model, x, 10, "on", outputs=outputs, budget_s=0.5, cache_dir=tmp_path)
    assert decision.use and decision.classifier.device == "cuda"
    assert tried[0] == ("cuda", incremental_decision.CUDA_FULL_BATCHES)
    # the GPU's call sizes, those whose modelled memory fits a quarter of the device's
    per_window = decision.classifier._bytes_per_window(decision.classifier._plan(x.shape,
                                                                                 (10, 10)))
    fitting = tuple(b for b in incremental_decision.CUDA_INCREMENTAL_BATCHES
                    if b * per_window <= 2 ** 30 / 4)
    assert len(fitting) >= 2 and sizes[0] == fitting
    entries = incremental_decision._cache_read(
        tmp_path / incremental_decision.CACHE_FILE)["entries"]
    (key,) = entries
    assert f"|cuda|None|engine {incremental_module.ENGINE_REVISION}" in key
    top_left = np.array([[3, 4]] * 3, np.int64)
    patches = rng.normal(size=(3, 3, 10, 10)).astype(np.float32)
    want = IncrementalClassifier(model, outputs=outputs, device="cpu", incremental=False)(
        _literal_images(x, top_left, patches))
    _assert_exact(decision.classifier.evaluate_windows(x, top_left, patches), want)


@pytest.mark.parametrize("case", ["inception", "residual", "avgpool"])
def test_cuda_path_float16_graph_runs_and_stays_near_float32(case, cuda, rng):
    """``float16=True`` (CUDA only): the compiled graph converted to float16, its index inputs
    still int64 and its interfaces float32; onnxruntime's CPU provider has the float16 kernels
    these graphs use, so the conversion runs here. Float16 keeps about 3 significant digits."""
    model, outputs = _case_model(case, rng)
    x, top_left, patches = _inputs(rng)
    want = IncrementalClassifier(model, outputs=outputs, device="cpu", incremental=False)(
        _literal_images(x, top_left, patches))
    steps = len(analyse(model, outputs).steps)
    clf = IncrementalClassifier(model, outputs=outputs, float16=True, cut=steps)
    assert clf.float16
    got = clf.evaluate_windows(x, top_left, patches)
    plan = clf._plan(x.shape, (10, 10))
    inputs = {i.name: i.type for i in plan.session.session.get_inputs()}
    assert {t for n, t in inputs.items() if "preddiff_index" in n} == {"tensor(int64)"}
    assert {t for n, t in inputs.items() if "preddiff_index" not in n} == {"tensor(float)"}
    assert any(isinstance(e, Region) for e in plan.compiled.index.entries)  # regions gathered
    for name in outputs:
        assert got[name].dtype == np.float32
        err = np.abs(got[name] - want[name]).max() / np.abs(want[name]).max()
        assert 0 < err < 5e-3, (name, err)  # float16 rounding, and no more


def test_cuda_path_maps_equal_the_cpu_engines(cuda, rng):
    """PDA end to end: the relevance maps of the CUDA path equal those of the CPU engine."""
    from preddiff import prediction_difference
    from preddiff.samplers import ConditionalGaussianSampler

    model, outputs = _case_model("residual", rng, height=16, width=18)
    pool = rng.normal(size=(6, 3, 16, 18)).astype(np.float32)
    sampler = ConditionalGaussianSampler.fit(pool, 4, 1, num_patches=400, rng=1)
    steps = len(analyse(model, outputs).steps)
    engines = {"cpu": _cpu_engine(model, outputs, steps),
               "cuda": IncrementalClassifier(model, outputs=outputs, cut=steps)}
    maps = {}
    for device, clf in engines.items():
        assert clf.device == device
        e = prediction_difference(pool[0], clf, sampler, window=4, stride=2, num_samples=3,
                                  blobs=outputs, probability_blobs=[outputs[0]], rng=7,
                                  progress=False)
        maps[device] = e.relevance
    for blob in outputs:
        want, got = maps["cpu"][blob], maps["cuda"][blob]
        assert np.abs(got - want).max() <= TOL * np.abs(want).max(), blob


def _cpu_engine(model, outputs, cut):
    """An engine on the CPU path while the ``cuda`` fixture resolves every device to CUDA."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(incremental_module, "resolve_device", lambda device: "cpu")
        return IncrementalClassifier(model, outputs=outputs, cut=cut)


def test_cuda_path_runs_one_batch_at_a_time(cuda, rng, caplog):
    """Two calls side by side are a CPU's: on the device the default is one, and asking for
    more says so and runs one; the graph's calls then get the caller's threads."""
    model, outputs = _case_model("residual", rng)
    assert IncrementalClassifier(model, outputs=outputs).workers == 1
    with caplog.at_level("WARNING", logger="preddiff"):
        clf = IncrementalClassifier(model, outputs=outputs, workers=2, threads=4)
    assert clf.workers == 1 and clf._call_threads() == 4
    assert "workers=2 needs the CPU provider" in caplog.text
