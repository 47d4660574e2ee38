"""Checkpoints: a run killed at any point and started again equals an uninterrupted run bit for
bit; a checkpoint made with other arguments is refused, naming the argument."""
import numpy as np
import pytest

from preddiff import prediction_difference
from preddiff.checkpoint import atomic_savez
from preddiff.errors import CheckpointMismatch
from preddiff.samplers import ConditionalGaussianSampler, MarginalSampler


class Crash(Exception):
    pass


class Net:
    """Row-wise softmax-linear with a hidden feature-map blob; can crash after K calls."""

    def __init__(self, shape, crash_after=None):
        rng = np.random.default_rng(0)
        self.weights = rng.normal(size=(4, int(np.prod(shape)))) * 0.3
        self.crash_after, self.calls = crash_after, 0

    def __call__(self, batch):
        self.calls += 1
        if self.crash_after is not None and self.calls > self.crash_after:
            raise Crash(f"simulated crash in call {self.calls}")
        batch = np.asarray(batch, np.float64)
        logits = (batch.reshape(len(batch), 1, -1) * self.weights[None]).sum(-1)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return {"prob": e / e.sum(1, keepdims=True), "maps": np.tanh(batch)}


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(1)
    pool = rng.normal(size=(10, 2, 8, 7)).astype(np.float32)
    x = rng.normal(size=(2, 8, 7)).astype(np.float32)
    sampler = ConditionalGaussianSampler.fit(pool, 2, 1, num_patches=600, rng=2)
    return x, pool, sampler


def explain(problem, classifier, **kw):
    x, pool, sampler = problem
    args = dict(window=2, num_samples=3, blobs=("prob", "maps"), rng=7, batch_size=6,
                progress=False)
    args.update(kw)
    return prediction_difference(args.pop("x", x), classifier, args.pop("sampler", sampler),
                                 **args)


def assert_same(a, b):
    for blob in a.blobs:
        np.testing.assert_array_equal(a.relevance[blob], b.relevance[blob])
    np.testing.assert_array_equal(a.counts, b.counts)


@pytest.fixture(scope="module")
def uninterrupted(problem):
    return explain(problem, Net(problem[0].shape))


@pytest.mark.parametrize("crash_after", [1, 2, 9, 20])
@pytest.mark.parametrize("interval", [0.0, 1e9])
def test_kill_and_resume_is_identical(problem, uninterrupted, tmp_path, crash_after,
                                      interval):
    """Crash in classifier call K (call 1 is the clean image; 42 windows, 2 per batch)."""
    path = tmp_path / "run.ckpt"
    with pytest.raises(Crash):
        explain(problem, Net(problem[0].shape, crash_after), checkpoint=path,
                checkpoint_interval=interval)
    assert path.exists()
    resumed_net = Net(problem[0].shape)
    resumed = explain(problem, resumed_net, checkpoint=path, checkpoint_interval=interval)
    assert_same(resumed, uninterrupted)
    # it really resumed: 21 batches in all, K − 1 of them done before the crash
    assert resumed_net.calls == 1 + 21 - (crash_after - 1)
    assert not path.exists()  # deleted after success by default


def test_repeated_crashes(problem, uninterrupted, tmp_path):
    path = tmp_path / "run.ckpt"
    for _ in range(4):
        with pytest.raises(Crash):
            explain(problem, Net(problem[0].shape, 4), checkpoint=path, checkpoint_interval=0)
    assert_same(explain(problem, Net(problem[0].shape), checkpoint=path), uninterrupted)


def test_kill_between_saves_loses_only_unsaved_work(problem, uninterrupted, tmp_path,
                                                    monkeypatch):
    """A hard kill (no save on the way out) resumes from the last periodic save."""
    import preddiff.checkpoint as ckpt

    path = tmp_path / "run.ckpt"
    saves = []
    real_save = ckpt.Checkpoint.save

    def save_then_die(self, done, values, timings):
        real_save(self, done, values, timings)
        saves.append(done)
        if len(saves) == 3:
            raise SystemExit("killed")  # no further save happens after this one

    monkeypatch.setattr(ckpt.Checkpoint, "save", save_then_die)
    with pytest.raises(SystemExit):
        explain(problem, Net(problem[0].shape), checkpoint=path, checkpoint_interval=0)
    monkeypatch.setattr(ckpt.Checkpoint, "save", real_save)
    net = Net(problem[0].shape)
    assert_same(explain(problem, net, checkpoint=path), uninterrupted)
    assert net.calls == 1 + 21 - saves[-1] // 2


def test_resume_with_another_batch_size(problem, uninterrupted, tmp_path):
    path = tmp_path / "run.ckpt"
    with pytest.raises(Crash):
        explain(problem, Net(problem[0].shape, 5), checkpoint=path, checkpoint_interval=0)
    assert_same(explain(problem, Net(problem[0].shape), checkpoint=path, batch_size=9),
                uninterrupted)


def test_keep_checkpoint_then_rerun_needs_no_classifier_calls(problem, uninterrupted,
                                                              tmp_path):
    path = tmp_path / "run.ckpt"
    first = explain(problem, Net(problem[0].shape), checkpoint=path, keep_checkpoint=True)
    assert path.exists()
    net = Net(problem[0].shape)
    again = explain(problem, net, checkpoint=path, keep_checkpoint=True)
    assert net.calls == 1  # only the clean image, to check the classifier
    assert_same(again, first)
    assert_same(again, uninterrupted)


@pytest.mark.parametrize("change,argument", [
    (dict(stride=2), "stride"),
    (dict(window=3), "window"),
    (dict(num_samples=4), "num_samples"),
    (dict(rng=8), "seed"),
    (dict(blobs=("prob",)), "blobs"),
    (dict(laplace_n=1000), "laplace_n"),
    (dict(probability_blobs=()), "probability_blobs"),
])
def test_mismatch_names_the_argument(problem, tmp_path, change, argument):
    path = tmp_path / "run.ckpt"
    with pytest.raises(Crash):
        explain(problem, Net(problem[0].shape, 3), checkpoint=path, checkpoint_interval=0)
    x, pool, sampler = problem
    if "window" in change:
        change["sampler"] = ConditionalGaussianSampler.fit(pool, 3, 1, num_patches=600, rng=2)
    with pytest.raises(CheckpointMismatch, match=rf"other arguments: {argument}="):
        explain(problem, Net(problem[0].shape), checkpoint=path, **change)


def test_mismatch_image_sampler_classifier(problem, tmp_path):
    x, pool, sampler = problem
    path = tmp_path / "run.ckpt"
    with pytest.raises(Crash):
        explain(problem, Net(x.shape, 3), checkpoint=path, checkpoint_interval=0)
    with pytest.raises(CheckpointMismatch, match="the input image x differs"):
        explain(problem, Net(x.shape), checkpoint=path, x=x + 1)
    with pytest.raises(CheckpointMismatch, match="other arguments: sampler="):
        explain(problem, Net(x.shape), checkpoint=path, sampler=MarginalSampler(pool))
    other = ConditionalGaussianSampler.fit(pool, 2, 1, num_patches=600, rng=3)
    with pytest.raises(CheckpointMismatch, match="other arguments: sampler="):
        explain(problem, Net(x.shape), checkpoint=path, sampler=other)
    changed = Net(x.shape)
    changed.weights = changed.weights * 1.01
    with pytest.raises(CheckpointMismatch, match="another classifier: its output 'prob'"):
        explain(problem, changed, checkpoint=path)

    def function_classifier(batch):
        return Net(x.shape)(batch)

    with pytest.raises(CheckpointMismatch, match="other arguments: classifier="):
        explain(problem, function_classifier, checkpoint=path)


def test_unreadable_checkpoint(problem, tmp_path):
    path = tmp_path / "run.ckpt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatch, match="cannot read checkpoint .* delete it"):
        explain(problem, Net(problem[0].shape), checkpoint=path)


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "file.npz"
    atomic_savez(path, a=np.arange(3))

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", broken_replace)
    with pytest.raises(OSError):
        atomic_savez(path, a=np.arange(5))
    with np.load(path) as data:
        np.testing.assert_array_equal(data["a"], np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["file.npz"]


def test_timings_accumulate_over_resume(problem, tmp_path):
    path = tmp_path / "run.ckpt"
    with pytest.raises(Crash):
        explain(problem, Net(problem[0].shape, 10), checkpoint=path, checkpoint_interval=0)
    e = explain(problem, Net(problem[0].shape), checkpoint=path)
    assert e.timings["total"] >= e.timings["classifier"] > 0


def test_checkpoint_without_finished_windows_does_not_block_other_arguments(problem,
                                                                             tmp_path):
    """A run that fails in its first batch (here: a user error raised by the sampler) leaves a
    checkpoint with no finished window. It holds nothing to resume, so the corrected run with
    other arguments must not be refused (it was: "made with other arguments")."""
    from preddiff.errors import InvalidArgument

    x, pool, sampler = problem
    path = tmp_path / "run.ckpt"
    with pytest.raises(InvalidArgument, match="pool has only 10"):
        explain(problem, Net(x.shape), checkpoint=path, num_samples=50,
                sampler=MarginalSampler(pool))
    assert path.exists()
    fixed = explain(problem, Net(x.shape), checkpoint=path, num_samples=5,
                    sampler=MarginalSampler(pool))
    assert_same(fixed, explain(problem, Net(x.shape), num_samples=5,
                               sampler=MarginalSampler(pool)))
    assert not path.exists()
    # a checkpoint with finished windows is still refused
    with pytest.raises(Crash):
        explain(problem, Net(x.shape, 3), checkpoint=path, checkpoint_interval=0)
    with pytest.raises(CheckpointMismatch, match="other arguments: seed="):
        explain(problem, Net(x.shape), checkpoint=path, rng=8)
