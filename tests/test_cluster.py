"""Explanations on a Dask cluster (:mod:`preddiff.cluster`): bit for bit the single-process
result, also when a worker is killed mid-run, when the client is interrupted and started again,
and one-line errors naming the image. Local clusters on the loopback interface only."""
import os
import signal
import sys

import numpy as np
import pytest

from preddiff import Explanation, prediction_difference, zoo
from preddiff.analysis import assemble, clean_outputs, prepare, window_values
from preddiff.cli import main
from preddiff.digits import load_digits
from preddiff.errors import PredDiffError
from preddiff.samplers import MarginalSampler

distributed = pytest.importorskip("distributed")
cluster = pytest.importorskip("preddiff.cluster")


@pytest.fixture(scope="module", autouse=True)
def home(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("PREDDIFF_HOME", str(tmp_path_factory.mktemp("home")))
    mp.setenv("MPLBACKEND", "Agg")
    yield
    mp.undo()


@pytest.fixture(scope="module")
def digits():
    images, _ = load_digits()
    return images[:4], images[200:400]


def local_cluster(workers=2):
    import logging

    return distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                    host="127.0.0.1", dashboard_address=None,
                                    scheduler_kwargs={"dashboard_address": ":0"},
                                    silence_logs=logging.ERROR)


@pytest.fixture(scope="module")
def client():
    with local_cluster() as lc, distributed.Client(lc) as c:
        yield c


def lenet_recipe(batch_size=64):
    return cluster.ClassifierRecipe.for_file(zoo.ensure_onnx("lenet"), ["prob"], batch_size,
                                             device="cpu", threads=1)


KW = dict(window=4, stride=1, num_samples=4, blobs=("prob",), batch_size=64, rng=7)


def single(x, pool, **kw):
    clf = lenet_recipe().build()
    return prediction_difference(x, clf, MarginalSampler(pool), progress=False, **{**KW, **kw})


def same(a: Explanation, b: Explanation) -> bool:
    return (a.relevance.keys() == b.relevance.keys()
            and all(np.array_equal(a.relevance[k], b.relevance[k]) for k in a.relevance)
            and all(np.array_equal(a.clean[k], b.clean[k]) for k in a.clean)
            and np.array_equal(a.counts, b.counts))


# ------------------------------------------------------------------------- the pure block function

def linear_softmax(batch):
    """A NumPy classifier computed image by image (its output never depends on the batch)."""
    weights = np.linspace(-1, 1, 10 * 28 * 28).reshape(10, -1)
    logits = np.stack([weights @ image.reshape(-1) for image in batch.astype(np.float64)])
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return {"prob": e / e.sum(axis=1, keepdims=True)}


def test_blocks_in_any_order_assemble_to_the_single_pass(digits):
    images, pool = digits
    sampler = MarginalSampler(pool)
    kw = dict(window=5, stride=2, num_samples=3, blobs=("prob",), batch_size=12, rng=3)
    reference = prediction_difference(images[0], linear_softmax, sampler, progress=False, **kw)
    setup = prepare(images[0], sampler, **kw)
    clean, _ = clean_outputs(setup, linear_softmax)
    n, wpb = setup.n_windows, setup.windows_per_batch
    bounds = [0, wpb, 5 * wpb, 6 * wpb, n]  # uneven blocks on the batch grid
    values = {"prob": np.full((n, 10), np.nan)}
    for a, b in reversed(list(zip(bounds, bounds[1:]))):  # last block first
        values["prob"][a:b] = window_values(setup, linear_softmax, sampler, clean, a, b)["prob"]
    timings = {"total": 1.0, "classifier": 0.5, "sampler": 0.1}
    assert same(assemble(setup, clean, values, timings), reference)
    # a different seed changes the values: the comparison above can fail
    other = prediction_difference(images[0], linear_softmax, sampler, progress=False,
                                  **{**kw, "rng": 4})
    assert not same(other, reference)


def test_window_range_is_checked(digits):
    images, pool = digits
    setup = prepare(images[0], MarginalSampler(pool), **KW)
    clean, _ = clean_outputs(setup, linear_softmax)
    with pytest.raises(PredDiffError, match="window range"):
        window_values(setup, linear_softmax, MarginalSampler(pool), clean, 0,
                      setup.n_windows + 1)


@pytest.mark.parametrize("done, block_windows, workers", [(0, None, 2), (0, 40, 2),
                                                           (37, None, 3), (37, 1, 1)])
def test_blocks_cover_the_rest_on_the_batch_grid(digits, done, block_windows, workers):
    """Blocks start where a (possibly off-grid) checkpoint stopped, cover every remaining
    window once, and never split one of the engine's batches."""
    images, pool = digits
    setup = prepare(images[0], MarginalSampler(pool), **KW)  # 625 windows, 16 per batch
    state = cluster._State(None, setup, {}, {}, {}, None, done)
    cluster._block_batches([state], workers, block_windows)
    starts, stops = zip(*state.blocks)
    assert starts[0] == done and stops[-1] == setup.n_windows
    assert list(starts[1:]) == list(stops[:-1])
    assert all(stop % 16 == 0 for stop in stops[:-1])
    if block_windows is None:
        assert len(state.blocks) >= min(8 * workers, 38) // 2  # about 8 per worker
        assert max(b - a for a, b in state.blocks) <= 8 * 16


# ------------------------------------------------------------------------- on a local cluster

def test_cluster_equals_single_process_and_builds_each_classifier_once(client, digits):
    images, pool = digits
    recipe = lenet_recipe()
    analyses = [cluster.Analysis(f"digit{i}", images[i], recipe, MarginalSampler(pool), KW)
                for i in range(3)]
    results = cluster.explain_all(client, analyses, progress=False, block_windows=96)
    for i, result in enumerate(results):
        assert same(result, single(images[i], pool)), f"digit{i}"
    builds = client.run(lambda: {r.sha1: n for r, n in
                                 __import__("preddiff.cluster").cluster.BUILDS.items()})
    per_worker = [counts.get(recipe.sha1, 0) for counts in builds.values()]
    # 3 images x 625 windows / 96 = 21 blocks, yet each worker built LeNet at most once
    assert max(per_worker) == 1 and sum(per_worker) >= 1


def test_bad_input_in_a_block_is_one_error_naming_the_image(client, digits, monkeypatch):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests
    images, pool = digits
    analyses = [cluster.Analysis("digit0", images[0], lenet_recipe(), MarginalSampler(pool), KW),
                cluster.Analysis("badimage", images[1], lenet_recipe(),
                                 NanFromWindow(pool, 300), KW)]
    with pytest.raises(PredDiffError) as info:
        cluster.explain_all(client, analyses, progress=False, block_windows=64)
    message = str(info.value)
    assert message.startswith("badimage: ") and "NaN" in message and "\n" not in message
    assert type(info.value).__name__ == "NonFiniteOutput"


class NanFromWindow(MarginalSampler):
    """Marginal samples, NaN from window ``bad`` on (a bad input that only a late block sees)."""

    def __init__(self, pool, bad):
        super().__init__(pool)
        self.bad = bad

    def sample(self, x, top_left, window, num_samples, rngs):
        patches = super().sample(x, top_left, window, num_samples, rngs)
        if rngs.start + len(rngs) > self.bad:
            patches = np.array(patches, dtype=np.float32)
            patches[:] = np.nan
        return patches


def test_interrupted_client_resumes_from_finished_blocks(client, digits, tmp_path):
    images, pool = digits
    ckpt = tmp_path / "digit1.ckpt.npz"
    finished = []

    def interrupt(name, start, stop):
        finished.append(start)
        if len(finished) >= 3 and 0 in finished:  # blocks may finish in any order
            raise KeyboardInterrupt

    analysis = cluster.Analysis("digit1", images[1], lenet_recipe(), MarginalSampler(pool), KW,
                                checkpoint=ckpt)
    with pytest.raises(KeyboardInterrupt):
        # 40 blocks of one batch each, so that the interrupt lands long before the last
        # (with 10 blocks a quiet machine sometimes finished them all first)
        cluster.explain_all(client, [analysis], progress=False, block_windows=16,
                            on_block=interrupt)
    with np.load(ckpt) as saved:
        done = len(saved["values_0"])
    assert 0 < done < 625 and done % 16 == 0  # a prefix of whole batches (64 // 4 windows)
    (resumed,) = cluster.explain_all(client, [analysis], progress=False)
    assert same(resumed, single(images[1], pool))
    assert not ckpt.exists()  # removed after success (keep_checkpoint=False)
    # the single-process engine resumes a cluster checkpoint too (same format)
    with pytest.raises(KeyboardInterrupt):
        cluster.explain_all(client, [analysis], progress=False, block_windows=64,
                            on_block=lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    assert ckpt.exists()
    clf = lenet_recipe().build()
    again = prediction_difference(images[1], clf, MarginalSampler(pool), checkpoint=ckpt,
                                  progress=False, **KW)
    assert same(again, single(images[1], pool))


def test_worker_killed_mid_run_gives_the_same_result(digits):
    images, pool = digits
    killed = []

    with local_cluster() as lc, distributed.Client(lc) as c:
        pids = c.run(os.getpid)

        def kill_a_busy_worker(name, start, stop):
            if killed:
                return
            busy = [addr for addr, keys in c.processing().items() if keys and addr in pids]
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append((busy[0], len(c.processing()[busy[0]])))

        analyses = [cluster.Analysis(f"digit{i}", images[i], lenet_recipe(),
                                     MarginalSampler(pool), KW) for i in range(3)]
        results = cluster.explain_all(c, analyses, progress=False, block_windows=32,
                                      on_block=kill_a_busy_worker)
    assert killed, "no worker was busy when a block finished: nothing was killed mid-task"
    for i, result in enumerate(results):
        assert same(result, single(images[i], pool)), f"digit{i}"


# ------------------------------------------------------------------------- the command line

def test_explain_workers_is_bit_identical_to_one_process(tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    images = ["digits:1", "digits:2", "digits:3"]
    assert main(["explain", *images, "--no-progress", "--out", str(one)]) == 0
    assert main(["explain", *images, "--no-progress", "--workers", "2", "--out", str(two)]) == 0
    for d in (1, 2, 3):
        a = Explanation.load(one / f"digit{d}_lenet.npz")
        b = Explanation.load(two / f"digit{d}_lenet.npz")
        assert same(a, b), f"digit{d}"
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


def test_workers_without_dask_is_one_line_saying_what_to_install(tmp_path, capsys,
                                                                 monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    assert main(["explain", "digits:1", "--workers", "2", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("preddiff: error:") and "pip install 'preddiff[cluster]'" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("argv, message", [
    (["--workers", "0"], "--workers must be a positive integer, got 0"),
    (["--scheduler", "tcp://127.0.0.1:9"], "cannot reach the Dask scheduler"),
])
def test_bad_cluster_options(tmp_path, capsys, argv, message):
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "3s"}):
        assert main(["explain", "digits:1", *argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------- figures and evaluate

def test_figure_explanations_on_the_cluster_equal_one_process(client, tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))  # reproduce/
    from reproduce import common, fig1

    def explain(tag, *cluster_args):
        run = common.parse_args("fig1", "test", fig1.CONFIG,
                                ["--scale", "smoke", "--no-progress", "--cache-dir",
                                 str(tmp_path / tag), "--out-dir", str(tmp_path / tag),
                                 *cluster_args])
        model = common.load_model(run, "lenet")
        (image,) = common.load_inputs(run, model, ["digits:3"])
        result = common.explain(run, model, image, sampler="marginal", window=4,
                                units={model.output: [3]})
        if run.client() is not None:
            run.client().close()  # before the module's cluster goes (else noise at exit)
        return result

    one = explain("one")
    two = explain("two", "--scheduler", client.scheduler.address)
    assert np.array_equal(one["relevance/prob"], two["relevance/prob"])
    assert np.array_equal(one["clean/prob"], two["clean/prob"])


def test_evaluate_on_the_cluster_equals_one_process(client, digits):
    import onnx

    from preddiff.evaluate import compare

    images, pool = digits
    model = onnx.load(str(zoo.ensure_onnx("lenet")))
    kw = dict(window=4, stride=4, num_samples=3, fills=("mean",), randomise=False,
              num_patches=1000, progress=False)
    one = compare(images[:2], [0, 1], model, pool, **kw)
    two = compare(images[:2], [0, 1], model, pool, client=client, **kw)
    assert two.providers == one.providers == ["CPUExecutionProvider"]
    a, b = one.arrays(), two.arrays()
    assert a.keys() == b.keys()
    for key in a:
        if "sensitivity" in key:  # NumPy BLAS gradients: Dask workers run BLAS on one thread
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)
        else:
            assert np.array_equal(a[key], b[key], equal_nan=True), key


def test_local_workers_are_pinned_one_gpu_each(monkeypatch):
    """Several GPUs: worker i of a local cluster sees only GPU i (round robin), set before
    any session is created in it. Simulated with two device names on this machine."""
    import os

    from preddiff import cluster

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    with cluster.connect(workers=3) as client:
        seen = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        names = client.run(lambda dask_worker: dask_worker.name)
    by_name = {names[addr]: seen[addr] for addr in seen}
    assert by_name == {0: "3", 1: "5", 2: "3"}


def test_one_gpu_or_none_is_not_pinned(monkeypatch):
    from preddiff import cluster

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    registered = []
    fake = type("Client", (), {"register_plugin": lambda self, p: registered.append(p)})()
    assert cluster._pin_gpus(fake) == 0 and not registered
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert cluster._pin_gpus(fake) == 0  # this machine: no CUDA device
