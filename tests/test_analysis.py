"""The engine: hand-computed weights of evidence and activation differences, localisation,
batch-size independence, the incremental-classifier hook, the result object, and errors."""
import json
import math

import numpy as np
import pytest

from preddiff import Explanation, prediction_difference
from preddiff.analysis import NonFiniteOutput, weight_of_evidence
from preddiff.errors import InvalidArgument, PredDiffError
from preddiff.samplers import MarginalSampler, Sampler


class Fill(Sampler):
    """Deterministic: sample s fills the window with ``values[s]``."""

    def __init__(self, *values):
        self.values = values

    def sample_window(self, x, top_left, window, num_samples, rng):
        return np.stack([np.full((x.shape[0],) + tuple(window), v) for v in
                         self.values[:num_samples]])


W_LOGISTIC = np.array([1.0, -1.0, 3.0])
X_LINE = np.array([[[1.0, 2.0, 0.0]]], dtype=np.float32)  # (1, 1, 3); logit(x) = -1


def logistic(batch):
    """Two classes, p(1|x) = σ(w·x); also the logit ("score") and x as one feature map."""
    flat = np.asarray(batch, np.float64).reshape(len(batch), -1)
    logit = flat @ W_LOGISTIC
    p1 = 1 / (1 + np.exp(-logit))
    return {"prob": np.stack([1 - p1, p1], axis=1), "score": logit[:, None],
            "maps": flat.reshape(len(batch), 1, 1, 3)}


def sigmoid(z):
    return 1 / (1 + math.exp(-z))


def run(sampler, window=1, num_samples=1, **kw):
    kw.setdefault("blobs", ("prob", "score", "maps"))
    return prediction_difference(X_LINE, logistic, sampler, window=window,
                                 num_samples=num_samples, rng=0, progress=False, **kw)


# ----------------------------------------------------------------------------------------------
# hand-computed values


def test_weight_of_evidence_by_hand_1x1():
    """Filling a pixel with 0 changes the logit from -1 to -2, 1 and -1: with N → ∞ the odds are
    e^logit, so WE(class 1) = (-1 - logit') / ln 2 bits, and WE(class 0) = -WE(class 1)."""
    e = run(Fill(0.0), laplace_n=1e12)
    expected = np.array([1, -2, 0]) / math.log(2)
    np.testing.assert_allclose(e.relevance["prob"][1, 0], expected, atol=1e-6)
    np.testing.assert_allclose(e.relevance["prob"][0, 0], -expected, atol=1e-6)
    assert e.relevance["prob"][1, 0, 2] == 0.0  # pixel already 0: nothing changes


def test_laplace_correction_by_hand():
    """With N = 10, K = 2: odds of the corrected p = (pN + 1) / ((1 − p)N + 1)."""
    e = run(Fill(0.0), laplace_n=10)

    def log2_odds(p):
        return math.log2((p * 10 + 1) / ((1 - p) * 10 + 1))

    for col, logit in enumerate([-2.0, 1.0, -1.0]):
        we = log2_odds(sigmoid(-1)) - log2_odds(sigmoid(logit))
        assert e.relevance["prob"][1, 0, col] == pytest.approx(we, abs=1e-12)


def test_laplace_n_zero_gives_no_evidence():
    """N = 0: every corrected probability is 1/K, so every weight of evidence is 0."""
    e = run(Fill(0.0), laplace_n=0)
    assert np.all(e.relevance["prob"] == 0)


def test_mean_of_probabilities_not_of_log_odds():
    """p(c|x\\w) is the mean of the S probabilities (Algorithm 1), then corrected."""
    e = run(Fill(0.0, 3.0), num_samples=2, laplace_n=1e12)
    p_removed = (sigmoid(-2) + sigmoid(1)) / 2  # pixel 0 set to 0 or 3: logits -2, 1
    we = math.log2(sigmoid(-1) / (1 - sigmoid(-1))) - math.log2(p_removed / (1 - p_removed))
    assert e.relevance["prob"][1, 0, 0] == pytest.approx(we, abs=1e-6)
    assert we == pytest.approx(-1.007368, abs=1e-6)  # worked out on paper


def test_windows_average_over_covering_windows():
    """1×2 windows at columns 0 and 1: logits 0 and 1; the middle pixel gets their mean."""
    e = run(Fill(0.0), window=(1, 2), laplace_n=1e12)
    w0, w1 = -1 / math.log(2), -2 / math.log(2)
    np.testing.assert_allclose(e.relevance["prob"][1, 0], [w0, (w0 + w1) / 2, w1], atol=1e-6)
    np.testing.assert_array_equal(e.counts, [[1, 2, 1]])


def test_activation_difference_by_hand():
    """Eq. (9) for the logit: −1 − logit'; for a feature map: the mean over its units."""
    e = run(Fill(0.0))
    np.testing.assert_allclose(e.relevance["score"][0, 0], [-1 + 2, -1 - 1, 0], atol=1e-12)
    np.testing.assert_allclose(e.relevance["maps"][0, 0], [1 / 3, 2 / 3, 0], atol=1e-12)
    assert e.relevance["score"].shape == (1, 1, 3) and e.relevance["maps"].shape == (1, 1, 3)


def test_weight_of_evidence_function():
    assert weight_of_evidence([0.5, 0.5], [0.5, 0.5]).tolist() == [0.0, 0.0]
    we = weight_of_evidence(np.array([0.2, 0.8]), np.array([0.5, 0.5]), laplace_n=1e15)
    np.testing.assert_allclose(we, [-2, 2], atol=1e-9)


# ----------------------------------------------------------------------------------------------
# localisation


def region_classifier(batch):
    """Three classes decided only by the pixels in rows 2–4, columns 6–8."""
    region = np.asarray(batch, np.float64)[:, 0, 2:5, 6:9].reshape(len(batch), -1)
    logits = np.stack([region.sum(1), -region.sum(1), region[:, 4] * 2], axis=1)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return {"prob": e / e.sum(1, keepdims=True)}


def test_relevance_lies_in_the_region_the_classifier_looks_at(rng):
    pool = rng.normal(size=(12, 1, 12, 12)).astype(np.float32)
    x = rng.normal(size=(1, 12, 12)).astype(np.float32) + 1
    e = prediction_difference(x, region_classifier, MarginalSampler(pool), window=2,
                              num_samples=5, rng=1, progress=False)
    rel = np.abs(e.relevance["prob"])
    reach = np.zeros((12, 12), bool)
    reach[1:6, 5:10] = True  # pixels sharing a 2x2 window with the region
    assert rel[:, ~reach].max() == 0.0  # windows that miss the region change nothing
    inside = np.zeros((12, 12), bool)
    inside[2:5, 6:9] = True
    for c in range(3):
        assert rel[c, inside].sum() / rel[c].sum() > 0.6
    assert rel[2, 3, 7] == rel[2].max()  # class 2 looks mostly at the centre pixel


# ----------------------------------------------------------------------------------------------
# reproducibility


class RowWise:
    """Softmax-linear whose result for an image does not depend on the rest of the batch."""

    def __init__(self, rng, shape):
        self.weights = rng.normal(size=(5, int(np.prod(shape)))) * 0.3

    def __call__(self, batch):
        flat = np.asarray(batch, np.float64).reshape(len(batch), 1, -1)
        logits = (flat * self.weights[None]).sum(-1)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return {"prob": e / e.sum(1, keepdims=True), "logits": logits}


@pytest.fixture
def setup(rng):
    pool = rng.normal(size=(9, 2, 7, 6)).astype(np.float32)
    x = rng.normal(size=(2, 7, 6)).astype(np.float32)
    return x, pool, RowWise(rng, x.shape)


def test_result_independent_of_batch_size(setup):
    x, pool, clf = setup
    results = [prediction_difference(x, clf, MarginalSampler(pool), window=(2, 3),
                                     num_samples=4, blobs=("prob", "logits"), rng=3,
                                     batch_size=b, progress=False) for b in (1, 5, 12, 1000)]
    for other in results[1:]:
        for blob in ("prob", "logits"):
            np.testing.assert_array_equal(other.relevance[blob], results[0].relevance[blob])


def test_generator_gives_one_seed(setup):
    x, pool, clf = setup
    a = prediction_difference(x, clf, MarginalSampler(pool), window=2, num_samples=3,
                              rng=np.random.default_rng(4), progress=False)
    assert a.seed == int(np.random.default_rng(4).integers(0, 2**63))
    b = prediction_difference(x, clf, MarginalSampler(pool), window=2, num_samples=3,
                              rng=a.seed, progress=False)
    c = prediction_difference(x, clf, MarginalSampler(pool), window=2, num_samples=3,
                              rng=a.seed + 1, progress=False)
    np.testing.assert_array_equal(a.relevance["prob"], b.relevance["prob"])
    assert not np.array_equal(a.relevance["prob"], c.relevance["prob"])


class Incremental:
    """A classifier with the ``evaluate_windows`` hook (builds the images itself)."""

    def __init__(self, inner):
        self.inner, self.full_calls, self.window_calls = inner, 0, 0

    def __call__(self, batch):
        self.full_calls += 1
        return self.inner(batch)

    def evaluate_windows(self, x, top_left, patches):
        self.window_calls += 1
        assert x.dtype == np.float32 and patches.dtype == np.float32
        assert top_left.shape == (len(patches), 2)
        kh, kw = patches.shape[2:]
        images = np.repeat(x[None], len(patches), axis=0)
        for n, (r, c) in enumerate(top_left):
            images[n, :, r:r + kh, c:c + kw] = patches[n]
        return self.inner(images)


def test_evaluate_windows_hook(setup):
    x, pool, clf = setup
    plain = prediction_difference(x, clf, MarginalSampler(pool), window=3, stride=2,
                                  num_samples=3, rng=5, batch_size=9, progress=False)
    hooked_clf = Incremental(clf)
    hooked = prediction_difference(x, hooked_clf, MarginalSampler(pool), window=3, stride=2,
                                   num_samples=3, rng=5, batch_size=9, progress=False)
    assert hooked_clf.full_calls == 1  # only the unperturbed image
    # 3x3 windows (2 regular columns and one aligned to the last column), 3 per batch
    assert hooked_clf.window_calls == 3
    np.testing.assert_array_equal(hooked.relevance["prob"], plain.relevance["prob"])


# ----------------------------------------------------------------------------------------------
# the Explanation


def test_explanation_contents(setup):
    x, pool, clf = setup
    e = prediction_difference(x, clf, MarginalSampler(pool, order="first"), window=2,
                              stride=2, num_samples=3, blobs=["prob", "logits"], rng=1,
                              progress=False)
    assert e.relevance["prob"].dtype == np.float64 and e.relevance["prob"].shape == (5, 7, 6)
    assert e.counts.min() >= 1 and e.edges == "cover"  # the edge row 5 covers row 6
    drop = prediction_difference(x, clf, MarginalSampler(pool, order="first"), window=2,
                                 stride=2, num_samples=3, rng=1, progress=False, edges="drop")
    assert drop.counts[6].sum() == 0 and np.all(drop.relevance["prob"][:, 6] == 0)
    np.testing.assert_allclose(e.clean["prob"], clf(x[None])["prob"][0])
    assert (e.window, e.stride, e.num_samples, e.seed) == ((2, 2), 2, 3, 1)
    assert e.probability_blobs == ("prob",) and e.laplace_n == 100000
    assert e.sampler["name"] == "MarginalSampler" and e.sampler["order"] == "first"
    t = e.timings
    assert t["total"] >= t["classifier"] >= 0
    assert t["outside"] == pytest.approx(t["total"] - t["classifier"])
    top = e.top_classes("prob", 2)
    order = np.argsort(-e.clean["prob"])
    assert [i for i, _ in top] == order[:2].tolist()
    assert top[0][1] == pytest.approx(e.clean["prob"][order[0]])
    with pytest.raises(InvalidArgument, match="unknown blob 'fc8'"):
        e.top_classes("fc8")


def test_save_load_round_trip(setup, tmp_path):
    x, pool, clf = setup
    e = prediction_difference(x, clf, MarginalSampler(pool), window=2, num_samples=2,
                              blobs=["prob", "logits"], rng=1, progress=False)
    e.metadata["model"] = "test"
    path = tmp_path / "e.npz"
    e.save(path, units="all", dtype=np.float64, compress=False)
    loaded = Explanation.load(path)
    for blob in ("prob", "logits"):
        np.testing.assert_array_equal(loaded.relevance[blob], e.relevance[blob])
        np.testing.assert_array_equal(loaded.clean[blob], e.clean[blob])
    np.testing.assert_array_equal(loaded.counts, e.counts)
    np.testing.assert_array_equal(loaded.x, e.x)
    for name in ("window", "stride", "num_samples", "blobs", "probability_blobs", "laplace_n",
                 "seed", "sampler", "batch_size", "timings", "metadata"):
        assert getattr(loaded, name) == getattr(e, name), name
    assert [p.name for p in tmp_path.iterdir()] == ["e.npz"]
    e.save(path, units="all")
    assert Explanation.load(path).relevance["prob"].dtype == np.float32


def test_progress_bar_on_stderr(setup, capsys):
    x, pool, clf = setup
    prediction_difference(x, clf, MarginalSampler(pool), window=2, num_samples=2, rng=1,
                          progress=True)
    err = capsys.readouterr().err
    assert "prediction difference" in err and "30/30" in err and "win/s" in err
    prediction_difference(x, clf, MarginalSampler(pool), window=2, num_samples=2, rng=1,
                          progress=False)
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------------------------
# errors


def call(setup, **kw):
    x, pool, clf = setup
    args = dict(window=2, num_samples=2, rng=0, progress=False)
    args.update(kw)
    return prediction_difference(args.pop("x", x), args.pop("classifier", clf),
                                 args.pop("sampler", MarginalSampler(pool)), **args)


def test_error_window_larger_than_image(setup):
    with pytest.raises(InvalidArgument, match="window 8x8 is larger than the image 7x6"):
        call(setup, window=8)


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_error_num_samples(setup, bad):
    with pytest.raises(InvalidArgument, match=f"num_samples must be an integer >= 1, got {bad}"):
        call(setup, num_samples=bad)


def test_error_unknown_blob_lists_available(setup):
    with pytest.raises(InvalidArgument, match=r"unknown blob 'fc7'; the classifier returns "
                                              r"'prob', 'logits'"):
        call(setup, blobs=["prob", "fc7"])


def test_error_non_finite_output_names_batch(setup):
    x, pool, clf = setup

    def broken(batch):
        out = clf(batch)
        bad = np.asarray(batch)[:, 0, 4, 4] == 1e6  # only images with the marked pixel
        out["prob"][bad] = np.nan
        return out

    pool = pool.copy()
    pool[:, 0, 4, 4] = 1e6
    with pytest.raises(NonFiniteOutput, match=r"NaN or infinite values in blob 'prob' in "
                                              r"batch 3 \(windows 18–23, top-left \(3, 3\) to "
                                              r"\(4, 3\)\)"):
        call(setup, classifier=broken, sampler=MarginalSampler(pool), batch_size=12)


def test_error_non_finite_on_clean_image(setup):
    x, pool, clf = setup
    with pytest.raises(NonFiniteOutput, match="unperturbed image"):
        call(setup, classifier=lambda b: {"prob": np.full((len(b), 5), np.inf)})


def test_error_probability_blob_not_probability(setup):
    with pytest.raises(InvalidArgument, match=r"blob 'logits' has values outside \[0, 1\]"):
        call(setup, blobs=["logits"], probability_blobs=["logits"])
    with pytest.raises(InvalidArgument, match="probability_blobs"):
        call(setup, blobs=["prob"], probability_blobs=["softmax"])


def test_error_other_arguments(setup):
    x, pool, clf = setup
    with pytest.raises(InvalidArgument, match=r"shape \(C, H, W\)"):
        call(setup, x=x[None])
    with pytest.raises(InvalidArgument, match="batch_size"):
        call(setup, batch_size=0)
    with pytest.raises(InvalidArgument, match="laplace_n"):
        call(setup, laplace_n=-1)
    with pytest.raises(InvalidArgument, match="rng"):
        call(setup, rng=None)
    with pytest.raises(InvalidArgument, match="stride"):
        call(setup, stride=0)
    with pytest.raises(InvalidArgument, match="no sample"):
        call(setup, sampler=object())
    with pytest.raises(InvalidArgument, match="must return a dict"):
        call(setup, classifier=lambda b: np.zeros((len(b), 5)))


def test_error_sampler_wrong_shape(setup):
    class Bad(Sampler):
        def sample(self, x, top_left, window, num_samples, rngs):
            return np.zeros((len(top_left), num_samples, 1, 2, 2))

    with pytest.raises(PredDiffError, match=r"sampler returned shape \(\d+, 2, 1, 2, 2\)"):
        call(setup, sampler=Bad())


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_load_rejects_damaged_files(setup, tmp_path, damage):
    """A truncated or empty file raised zipfile.BadZipFile / EOFError, not InvalidArgument."""
    x, pool, clf = setup
    path = tmp_path / "e.npz"
    prediction_difference(x, clf, MarginalSampler(pool), window=2, num_samples=2, rng=1,
                          progress=False).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    with pytest.raises(InvalidArgument, match="is not a saved Explanation"):
        Explanation.load(path)


def test_save_keeps_only_the_named_units_compressed(setup, tmp_path):
    x, pool, clf = setup
    e = prediction_difference(x, clf, MarginalSampler(pool), window=2, num_samples=2,
                              blobs=["prob", "logits"], rng=1, progress=False)
    full, part = tmp_path / "full.npz", tmp_path / "part.npz"
    e.save(full, units="all")
    e.save(part, units={"prob": [3, 1], "logits": "all"}, compress=True, dtype=np.float32)
    back = Explanation.load(part)
    assert back.units["prob"].tolist() == [1, 3] and back.relevance["prob"].shape == (2, 7, 6)
    np.testing.assert_array_equal(back.relevance_of("prob", 3),
                                  e.relevance["prob"][3].astype(np.float32))
    assert back.units["logits"].tolist() == list(range(5))  # "all": every map
    np.testing.assert_array_equal(back.clean["prob"], e.clean["prob"])  # all clean values
    with pytest.raises(InvalidArgument, match=r"unit 0 of blob 'prob' was not saved.*\[1, 3\]"):
        back.relevance_of("prob", 0)
    assert Explanation.load(full).units["prob"].tolist() == list(range(5))
    with pytest.raises(InvalidArgument, match="unknown blob"):
        e.save(part, units={"fc8": [0]})


def test_load_of_a_file_without_units_or_edges(setup, tmp_path):
    """Files written before units/edges existed load with all units and the regular grid."""
    x, pool, clf = setup
    e = prediction_difference(x, clf, MarginalSampler(pool), window=2, num_samples=2,
                              rng=1, progress=False)
    path = tmp_path / "old.npz"
    e.save(path, units="all")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if not k.startswith("units_")}
    meta = json.loads(str(arrays["meta"]))
    del meta["edges"]
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    back = Explanation.load(path)
    assert back.edges == "drop" and back.units["prob"].tolist() == list(range(5))
