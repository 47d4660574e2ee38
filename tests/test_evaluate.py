"""Tests of the faithfulness metrics (preddiff.evaluate) and the occlusion baseline.

Hand-made cases with known answers: linear softmax models whose exact per-pixel contributions
are known, a model where every pixel counts equally, brute force over all pixel subsets of a
tiny image, analytic Gaussian conditionals, and a slow literal occlusion loop.
"""
import itertools

import numpy as np
import pytest

from preddiff import evaluate as ev
from preddiff.errors import InvalidArgument


# ------------------------------------------------------------------------------- helpers
def softmax_classifier(weights, bias=None):
    """softmax(W · vec(x) + b) as a classifier callable; weights (K, C*H*W)."""
    weights = np.asarray(weights, dtype=np.float64)
    bias = np.zeros(len(weights)) if bias is None else np.asarray(bias, dtype=np.float64)

    def classify(batch):
        z = np.asarray(batch, np.float64).reshape(len(batch), -1) @ weights.T + bias
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return {"prob": p / p.sum(axis=1, keepdims=True)}

    return classify


def mean_pixel_classifier(batch):
    """p = mean of the pixels: every pixel contributes equally (its value / number)."""
    return {"prob": np.asarray(batch, np.float64).reshape(len(batch), -1).mean(axis=1)[:, None]}


def linear_onnx(weights, bias):
    """An ONNX model data -> Flatten -> Gemm (fc) -> Softmax (prob)."""
    from onnx import TensorProto, helper, numpy_helper

    k, d = weights.shape
    nodes = [helper.make_node("Flatten", ["data"], ["flat"], name="flatten", axis=1),
             helper.make_node("Gemm", ["flat", "W", "b"], ["fc"], name="fc", transB=1),
             helper.make_node("Softmax", ["fc"], ["prob"], name="prob", axis=1)]
    graph = helper.make_graph(
        nodes, "linear", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [None, d])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [None, k])],
        [numpy_helper.from_array(weights.astype(np.float32), "W"),
         numpy_helper.from_array(bias.astype(np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def two_layer_onnx(rng):
    """data (1, 4, 4) -> fc1 (Gemm 16->8) -> Relu -> fc2 (Gemm 8->3) -> Softmax."""
    from onnx import TensorProto, helper, numpy_helper

    w1, b1 = rng.normal(size=(8, 16)), rng.normal(size=8)
    w2, b2 = rng.normal(size=(3, 8)), np.full(3, 0.5)
    nodes = [helper.make_node("Flatten", ["data"], ["flat"], name="flatten", axis=1),
             helper.make_node("Gemm", ["flat", "w1", "b1"], ["fc1"], name="fc1", transB=1),
             helper.make_node("Relu", ["fc1"], ["relu1"], name="relu1"),
             helper.make_node("Gemm", ["relu1", "w2", "b2"], ["fc2"], name="fc2", transB=1),
             helper.make_node("Softmax", ["fc2"], ["prob"], name="prob", axis=1)]
    inits = [numpy_helper.from_array(a.astype(np.float32), n)
             for n, a in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [None, 1, 4, 4])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [None, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def initializer(model, name):
    from onnx import numpy_helper

    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


# ------------------------------------------------------------------------------- AUC
def test_area_under_a_known_curve():
    # A trapezoid-shaped curve: 1 until 0.25, then linearly down to 0 at 1: 0.25 + 0.75/2.
    assert ev.area_under_curve([0.0, 0.25, 1.0], [1.0, 1.0, 0.0]) == pytest.approx(0.625)


def test_area_under_curve_rejects_decreasing_fractions():
    with pytest.raises(InvalidArgument, match="non-decreasing"):
        ev.area_under_curve([0.0, 0.5, 0.25], [1.0, 1.0, 1.0])


def test_step_fractions_run_from_none_to_all_pixels():
    counts, fractions = ev.step_fractions(784, 0.05)
    assert counts[0] == 0 and counts[-1] == 784 and len(counts) == 21
    assert np.all(np.diff(counts) > 0)
    np.testing.assert_allclose(fractions, counts / 784)


# ------------------------------------------------------------------------------- orderings
def test_pixel_order_positive_puts_largest_first_and_negative_smallest_first():
    relevance = np.array([[0.1, -2.0], [3.0, 0.5]])
    assert ev.pixel_order(relevance, order="positive").tolist() == [2, 3, 0, 1]
    assert ev.pixel_order(relevance, order="negative").tolist() == [1, 0, 3, 2]


def test_pixel_order_breaks_ties_at_random_with_the_rng():
    flat = np.zeros((4, 4))
    orders = {tuple(ev.pixel_order(flat, rng=seed)) for seed in range(5)}
    assert len(orders) > 1


# ------------------------------------------------------------------------------- fills
def test_mean_fill_replaces_exactly_the_removed_pixels_by_the_constant():
    x = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3) + 1
    keep = np.ones((1, 3, 3), bool)
    keep[0, 1, 2] = False
    out = ev.MeanFill([-1.0, -2.0])(x, keep)
    expected = x.copy()
    expected[:, 1, 2] = [-1.0, -2.0]
    np.testing.assert_array_equal(out[0], expected)


def test_mean_fill_from_pool_is_the_per_channel_mean():
    pool = np.stack([np.zeros((2, 4, 4)), np.ones((2, 4, 4))]) + np.array([0, 10])[:, None, None]
    np.testing.assert_allclose(ev.MeanFill.from_pool(pool).value, [0.5, 10.5])


def test_marginal_fill_takes_the_removed_pixels_from_one_pool_image(rng):
    pool = rng.normal(size=(5, 1, 4, 4))
    x = np.full((1, 4, 4), 7.0)
    keep = rng.random((3, 4, 4)) < 0.5
    out = ev.MarginalFill(pool)(x, keep, rng)
    donors = [i for i in range(5) if np.allclose(out[~np.broadcast_to(keep[:, None], out.shape)],
                                                 np.broadcast_to(pool[i], out.shape)[
                                                     ~np.broadcast_to(keep[:, None], out.shape)])]
    assert len(donors) == 1  # one donor image for all steps of the draw
    assert np.all(out[np.broadcast_to(keep[:, None], out.shape)] == 7.0)


def test_gaussian_conditional_matches_the_bivariate_formula():
    mean = np.array([1.0, -1.0, 0.0])
    cov = np.array([[2.0, 0.8, 0.0], [0.8, 1.0, 0.3], [0.0, 0.3, 1.5]])
    values = np.array([np.nan, 0.5, np.nan])
    cmean, ccov = ev.gaussian_conditional(mean, cov, values, np.array([False, True, False]))
    # By hand: condition (x0, x2) on x1 = 0.5 (μ1 = −1, σ11 = 1): gain = (0.8, 0.3).
    np.testing.assert_allclose(cmean, [1.0 + 0.8 * 1.5, 0.0 + 0.3 * 1.5])
    np.testing.assert_allclose(ccov, [[2.0 - 0.64, -0.24], [-0.24, 1.5 - 0.09]])


def test_conditional_fill_copies_the_observed_value_when_a_tile_is_perfectly_correlated(rng):
    # All pixels of a 2x2 patch are one variable: the fill must repeat the kept pixel of
    # each tile, whatever its position, and leave the kept pixels alone (up to the jitter
    # that makes the singular conditional covariance factorisable: std 1e-5).
    fill = ev.ConditionalFill(np.zeros((1, 4)), np.ones((1, 4, 4)), 2, channels=1)
    x = rng.normal(size=(1, 4, 4))
    keep = np.zeros((1, 4, 4), bool)
    keep[0, 0, 1] = keep[0, 3, 0] = keep[0, 1, 3] = keep[0, 2, 2] = True  # one per tile
    out = fill(x, keep, rng)[0, 0]
    for r, c in [(0, 0), (0, 2), (2, 0), (2, 2)]:
        tile_keep = keep[0, r:r + 2, c:c + 2]
        np.testing.assert_allclose(out[r:r + 2, c:c + 2], x[0, r:r + 2, c:c + 2][tile_keep][0],
                                   atol=1e-4)


def test_conditional_fill_draws_have_the_conditional_mean(rng):
    # Equicorrelated 2x2 patch, rho = 0.5, unit variance; one kept pixel with value 2:
    # each missing pixel has conditional mean 0.5 * 2 = 1.
    cov = 0.5 * np.ones((4, 4)) + 0.5 * np.eye(4)
    fill = ev.ConditionalFill(np.zeros((1, 4)), cov[None], 2, channels=1)
    x = np.full((1, 2, 2), 2.0)
    keep = np.zeros((4000, 2, 2), bool)
    keep[:, 0, 0] = True
    out = fill(x, keep, rng)
    np.testing.assert_allclose(out[:, 0, 1:, :].mean(), 1.0, atol=0.03)
    np.testing.assert_allclose(out[:, 0, 0, 1].mean(), 1.0, atol=0.05)


def test_conditional_fill_samples_match_the_analytic_conditional(rng):
    # The fill samples in precision form; the covariance-form formula is the oracle.
    a = rng.normal(size=(4, 4))
    cov = a @ a.T + 0.5 * np.eye(4)
    mean = rng.normal(size=4)
    fill = ev.ConditionalFill(mean[None], cov[None], 2, channels=1)
    x = rng.normal(size=(1, 2, 2))
    keep = np.zeros((20000, 2, 2), bool)
    keep[:, 1, 0] = True  # observe pixel (1, 0) = flat index 2
    observed = np.array([False, False, True, False])
    want_mean, want_cov = ev.gaussian_conditional(mean, cov, x.ravel(), observed)
    draws = fill(x, keep, rng)[:, 0].reshape(len(keep), 4)[:, ~observed]
    np.testing.assert_allclose(draws.mean(axis=0), want_mean, atol=4 * np.sqrt(
        np.diag(want_cov).max() / len(keep)))
    np.testing.assert_allclose(np.cov(draws, rowvar=False), want_cov, atol=0.05 * np.abs(
        want_cov).max())


def test_conditional_fill_tiles_cover_an_image_that_is_not_a_multiple_of_the_patch():
    np.testing.assert_array_equal(ev.tile_origins(28, 8), [0, 8, 16, 20])
    np.testing.assert_array_equal(ev.tile_origins(16, 8), [0, 8])


# ------------------------------------------------------------------------------- curves
def test_deletion_curve_runs_from_the_image_to_the_fully_filled_image(rng):
    w = rng.normal(size=(3, 16))
    classify = softmax_classifier(w)
    x = rng.normal(size=(1, 4, 4))
    curve = ev.deletion_curve(x, rng.normal(size=(4, 4)), classify, 1, ev.MeanFill(0.0),
                              step=0.25, rng=rng)
    p_x = classify(x[None].astype(np.float32))["prob"][0, 1]
    p_0 = classify(np.zeros((1, 1, 4, 4)))["prob"][0, 1]
    assert curve.probabilities.shape == (1, 5)  # a deterministic fill draws once
    assert curve.mean[0] == pytest.approx(p_x) and curve.mean[-1] == pytest.approx(p_0)


def test_insertion_curve_reveals_the_most_relevant_pixel_first(rng):
    x = np.zeros((1, 2, 2))
    x[0, 1, 0] = 1.0
    relevance = np.array([[0.0, 0.1], [5.0, 0.2]])  # pixel (1, 0) first
    curve = ev.insertion_curve(x, relevance, mean_pixel_classifier, 0, ev.MeanFill(0.0),
                               step=0.25, rng=rng)
    np.testing.assert_allclose(curve.mean, [0.0, 0.25, 0.25, 0.25, 0.25])


def brute_force_best_deletion(x, classify, unit):
    """Lowest class probability over all sets of n deleted pixels (mean fill 0), n = 0..N."""
    n_pix = x[0].size
    best = []
    for n in range(n_pix + 1):
        images = []
        for subset in itertools.combinations(range(n_pix), n):
            img = x.copy().reshape(x.shape[0], -1)
            img[:, list(subset)] = 0.0
            images.append(img.reshape(x.shape))
        best.append(ev.class_scores(classify, np.stack(images), unit).min())
    return np.array(best)


def test_exact_contribution_map_of_a_linear_model_gives_the_best_deletion_curve(rng):
    # Two classes: p(c|x) = sigmoid(Σ a_i x_i + b), a = w_c − w_other. Deleting (zeroing) the
    # n pixels with the largest a_i x_i minimises the logit for every n, so this map's curve
    # is the pointwise minimum over all 2^9 deletion sets: the best achievable ordering.
    w = rng.normal(size=(2, 9))
    classify = softmax_classifier(w)
    x = rng.normal(size=(1, 3, 3))
    contribution = ((w[1] - w[0]) * x.ravel()).reshape(3, 3)
    curve = ev.deletion_curve(x, contribution, classify, 1, ev.MeanFill(0.0), step=1 / 9,
                              rng=rng)
    best = brute_force_best_deletion(x, classify, 1)
    np.testing.assert_allclose(curve.mean, best, rtol=1e-6)


def test_weight_map_beats_random_maps_on_a_linear_model(rng):
    # Ten classes, 8x8 image: the map W_c * x (the class logit's exact contributions) must
    # have a lower deletion AUC than each of 10 random maps.
    w = rng.normal(size=(10, 64))
    x = np.abs(rng.normal(size=(1, 8, 8)))
    classify = softmax_classifier(w)
    unit = int(np.argmax(classify(x[None])["prob"][0]))
    fill = ev.MeanFill(0.0)
    auc_map = ev.deletion_curve(x, (w[unit] * x.ravel()).reshape(8, 8), classify, unit, fill,
                                rng=rng).auc
    auc_random = [ev.deletion_curve(x, ev.random_map((8, 8), rng), classify, unit, fill,
                                    rng=rng).auc for _ in range(10)]
    assert auc_map < min(auc_random)


def test_random_map_curve_lies_near_the_diagonal_when_every_pixel_counts_equally(rng):
    # p = mean pixel value, fill 0: deleting a random fraction f leaves p0 (1 − f) on average,
    # the straight line from p0 to 0, with area p0 / 2.
    x = rng.random((1, 32, 32))
    p0 = x.mean()
    curves = [ev.deletion_curve(x, ev.random_map((32, 32), rng), mean_pixel_classifier, 0,
                                ev.MeanFill(0.0), step=0.1, rng=rng) for _ in range(5)]
    mean_curve = np.mean([c.mean for c in curves], axis=0)
    np.testing.assert_allclose(mean_curve, p0 * (1 - curves[0].fractions), atol=0.02)


def test_deleting_negative_evidence_raises_the_probability_on_a_linear_model(rng):
    w = rng.normal(size=(2, 64))
    x = rng.normal(size=(1, 8, 8))
    contribution = ((w[1] - w[0]) * x.ravel()).reshape(8, 8)  # signed evidence for class 1
    classify = softmax_classifier(w, [0.0, -contribution.sum()])  # p(1|x) = 0.5: not saturated
    curve = ev.deletion_curve(x, contribution, classify, 1, ev.MeanFill(0.0),
                              order="negative", rng=rng)
    assert curve.mean[0] == pytest.approx(0.5, abs=1e-6)
    assert ev.probability_change(curve, 0.1) > 0.1


def test_evaluate_map_reports_no_negative_evidence_for_an_unsigned_map(rng):
    w = rng.normal(size=(2, 16))
    x = rng.normal(size=(1, 4, 4))
    scores = ev.evaluate_map(x, np.abs(rng.normal(size=(4, 4))), softmax_classifier(w), 0,
                             ev.MeanFill(0.0), signed=False, rng=rng)
    assert scores.negative is None and np.isnan(scores.negative_change)


def test_random_fill_curves_average_the_requested_number_of_draws(rng):
    pool = rng.normal(size=(6, 1, 4, 4))
    curve = ev.deletion_curve(rng.normal(size=(1, 4, 4)), rng.normal(size=(4, 4)),
                              softmax_classifier(rng.normal(size=(2, 16))), 0,
                              ev.MarginalFill(pool), num_draws=4, rng=rng)
    assert curve.probabilities.shape[0] == 4
    assert "marginal" in curve.fill


def test_curves_are_reproducible_from_the_seed(rng):
    pool = rng.normal(size=(6, 1, 4, 4))
    args = (rng.normal(size=(1, 4, 4)), rng.normal(size=(4, 4)),
            softmax_classifier(rng.normal(size=(2, 16))), 0, ev.MarginalFill(pool))
    a = ev.deletion_curve(*args, num_draws=3, rng=7).probabilities
    b = ev.deletion_curve(*args, num_draws=3, rng=7).probabilities
    np.testing.assert_array_equal(a, b)


def test_relevance_of_the_wrong_shape_is_refused(rng):
    with pytest.raises(InvalidArgument, match="spatial shape"):
        ev.deletion_curve(np.zeros((1, 4, 4)), np.zeros((3, 3)), mean_pixel_classifier, 0,
                          ev.MeanFill(0.0), rng=0)


# ------------------------------------------------------------------------------- sanity check
def test_cascading_randomisation_goes_from_the_output_layer_down(rng):
    model = two_layer_onnx(rng)
    stages = ev.cascading_randomisation(model, rng)
    assert [name for name, _ in stages] == ["fc2", "fc1"]
    top, both = stages[0][1], stages[1][1]
    assert not np.allclose(initializer(top, "w2"), initializer(model, "w2"))
    np.testing.assert_array_equal(initializer(top, "w1"), initializer(model, "w1"))
    # cascade: stage 2 keeps stage 1's random values and randomises fc1 as well
    np.testing.assert_array_equal(initializer(both, "w2"), initializer(top, "w2"))
    assert not np.allclose(initializer(both, "w1"), initializer(model, "w1"))
    # a constant bias stays constant
    np.testing.assert_array_equal(initializer(top, "b2"), initializer(model, "b2"))


def test_cascading_randomisation_leaves_the_original_model_alone(rng):
    model = two_layer_onnx(rng)
    before = model.SerializeToString()
    ev.cascading_randomisation(model, rng)
    assert model.SerializeToString() == before


def test_map_similarity_of_a_map_with_itself_is_one(rng):
    a = rng.normal(size=(12, 12))
    rho, ssim = ev.map_similarity(a, 3.0 * a)
    assert rho == pytest.approx(1.0) and ssim == pytest.approx(1.0)


def test_map_similarity_of_independent_maps_is_low(rng):
    rho, ssim = ev.map_similarity(rng.normal(size=(28, 28)), rng.normal(size=(28, 28)))
    assert abs(rho) < 0.2 and ssim < 0.2


def edge_detector(x):
    from skimage.filters import sobel

    return sobel(x[0])


def test_sanity_check_flags_a_map_that_ignores_the_weights(rng):
    x = rng.random((1, 6, 6))
    model = linear_onnx(rng.normal(size=(4, 36)), rng.normal(size=4))
    check = ev.sanity_check(lambda m: edge_detector(x), model, rng)
    assert check.insensitive()
    assert check.spearman_abs[-1] == pytest.approx(1.0)


def test_sanity_check_passes_a_map_that_depends_on_the_weights(rng):
    x = rng.random((1, 6, 6))
    model = linear_onnx(rng.normal(size=(4, 36)), rng.normal(size=4))

    def weight_times_input(m):
        return (initializer(m, "W")[2] * x.ravel()).reshape(6, 6)

    check = ev.sanity_check(weight_times_input, model, rng)
    assert not check.insensitive()


# ------------------------------------------------------------------------------- summaries
def test_mean_and_sem_ignore_nan_and_use_ddof_one():
    mean, sem, n = ev.mean_and_sem([1.0, 2.0, 3.0, np.nan])
    assert (mean, n) == (2.0, 3)
    assert sem == pytest.approx(1.0 / np.sqrt(3))


# ------------------------------------------------------------------------------- occlusion
def literal_occlusion(x, classify, window, stride, value, laplace_n=100000):
    """Zeiler & Fergus occlusion scored as PDA, written as loops: for each window, the weight
    of evidence of replacing it by ``value``; each pixel averages the windows covering it."""
    c, h, w = x.shape
    p_clean = classify(x[None])["prob"][0]
    k = len(p_clean)

    def log2_odds(p):
        p = (p * laplace_n + 1) / (laplace_n + k)
        return np.log2(p / (1 - p))

    def starts(length):  # every stride-th position, and the one aligned to the last pixel
        out = list(range(0, length - window + 1, stride))
        return out if out[-1] == length - window else out + [length - window]

    total, count = np.zeros((k, h, w)), np.zeros((h, w))
    for r in starts(h):
        for s in starts(w):
            occluded = x.copy()
            occluded[:, r:r + window, s:s + window] = value
            p = classify(occluded[None].astype(np.float32))["prob"][0]
            we = log2_odds(p_clean) - log2_odds(p)
            total[:, r:r + window, s:s + window] += we[:, None, None]
            count[r:r + window, s:s + window] += 1
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


@pytest.mark.parametrize("window,stride", [(2, 1), (3, 2)])
def test_occlusion_equals_a_literal_loop_over_grey_windows(rng, window, stride):
    from preddiff.occlusion import occlusion

    w = rng.normal(size=(3, 2 * 6 * 6))
    classify = softmax_classifier(w)
    x = rng.normal(size=(2, 6, 6)).astype(np.float32)
    value = np.array([0.25, -0.5])
    got = occlusion(x, classify, window=window, stride=stride, value=value).relevance["prob"]
    want = literal_occlusion(x, classify, window, stride, value[:, None, None])
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_constant_sampler_refuses_a_value_per_channel_of_the_wrong_length():
    from preddiff.occlusion import ConstantSampler

    with pytest.raises(InvalidArgument, match="channel"):
        ConstantSampler([0.0, 1.0]).sample(np.zeros((3, 4, 4)), [[0, 0]], (2, 2), 1, [None])


def test_evidence_change_is_the_log2_odds_ratio():
    curve = ev.Curve(np.array([0.0, 0.1, 1.0]), np.array([[0.5, 0.8, 0.1]]), "deletion",
                     "negative", "test")
    # K = 2: the Laplace correction keeps 0.5 at 0.5; odds 1 -> 4 is 2 bits (up to 1e-4).
    assert ev.evidence_change(curve, 0.1, num_classes=2) == pytest.approx(2.0, abs=1e-4)


def test_cascading_randomisation_keeps_the_requested_stages_and_the_last(rng):
    model = two_layer_onnx(rng)
    full = ev.cascading_randomisation(model, 3)
    some = ev.cascading_randomisation(model, 3, keep=[])
    assert [n for n, _ in some] == ["fc1"]
    assert some[0][1].SerializeToString() == full[-1][1].SerializeToString()


# ------------------------------------------------------------------------------- edges
def small_cnn(rng, size=8, classes=3):
    """data (1, size, size) -> Conv 3x3 (4) -> Relu -> Flatten -> Gemm -> Softmax."""
    from onnx import TensorProto, helper, numpy_helper

    w1, b1 = rng.normal(size=(4, 1, 3, 3)) * 0.5, rng.normal(size=4) * 0.1
    w2 = rng.normal(size=(classes, 4 * (size - 2) ** 2)) * 0.3
    b2 = rng.normal(size=classes) * 0.1
    nodes = [helper.make_node("Conv", ["data", "w1", "b1"], ["conv1"], name="conv1",
                              kernel_shape=[3, 3]),
             helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
             helper.make_node("Flatten", ["relu1"], ["flat"], name="flatten", axis=1),
             helper.make_node("Gemm", ["flat", "w2", "b2"], ["fc"], name="fc", transB=1),
             helper.make_node("Softmax", ["fc"], ["prob"], name="prob", axis=1)]
    inits = [numpy_helper.from_array(a.astype(np.float32), n)
             for n, a in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("data", TensorProto.FLOAT,
                                                     [None, 1, size, size])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [None, classes])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_compare_reports_every_method_fill_and_randomisation_stage(rng):
    images = rng.random((12, 1, 8, 8)).astype(np.float32)
    result = ev.compare(images[:2], [0, 1], small_cnn(rng), images[2:], window=2,
                        num_samples=3, stride=2, step=0.25, num_draws=1, num_patches=200,
                        progress=False, device="cpu")
    assert result.stage_names == ["fc", "conv1"]
    assert result.providers == ["CPUExecutionProvider"]  # what ran, not what is installed
    keys = {(r["method"], r["fill"], r["metric"]) for r in result.rows}
    for m in ("pda-marginal", "pda-conditional", "occlusion", "sensitivity", "random"):
        for f in ev.FILLS:
            assert (m, f, "deletion_auc") in keys and (m, f, "insertion_auc") in keys
        assert (m, "-", "spearman_abs@conv1") in keys
    sensitivity = [r for r in result.rows if r["method"] == "sensitivity"
                   and r["metric"] == "negative_dp"]
    assert all(r["n"] == 0 for r in sensitivity)  # unsigned: n/a
    text = result.markdown()
    assert "random map" in text and "n/a" in text


def test_cli_evaluate_writes_the_table(tmp_path, capsys):
    from preddiff.cli import main

    status = main(["evaluate", "--digits", "1", "--stride", "6", "--samples", "2",
                   "--draws", "1", "--step", "0.25", "--fill", "mean", "--no-randomisation",
                   "--no-progress", "--out", str(tmp_path)])
    assert status == 0
    for suffix in ("md", "csv", "json", "npz"):
        assert (tmp_path / f"evaluation.{suffix}").is_file()
    table = (tmp_path / "evaluation.md").read_text()
    assert "PDA conditional" in table and "sensitivity map" in table
    assert "mean (constant" in table  # the fill is reported with the numbers
    import json

    import onnxruntime

    used = json.loads((tmp_path / "evaluation.json").read_text())["onnxruntime_providers_used"]
    assert len(used) == 1 and used[0] in onnxruntime.get_available_providers()
    time_line = next(line for line in table.splitlines() if line.startswith("Time:"))
    assert used[0] in time_line
    assert not any(p in time_line for p in onnxruntime.get_available_providers() if p not in used)


def test_cli_evaluate_rejects_a_bad_digit_count_in_one_line(tmp_path, capsys):
    from preddiff.cli import main

    status = main(["evaluate", "--digits", "0", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert status != 0 and "--digits" in err and len(err.strip().splitlines()) == 1


def test_reproduce_evaluation_writes_table_and_plots_and_reuses_its_cache(tmp_path):
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if str(root) not in sys.path:  # reproduce/ lives in the repository, not the package
        sys.path.insert(0, str(root))
    from reproduce import evaluation

    argv = ["--scale", "smoke", "--set", "digits=1", "--set", "stride=6", "--set",
            "num_samples=2", "--set", "num_draws=1", "--set", "step=0.25", "--set",
            'fills=["mean", "marginal"]', "--set", "randomise=false", "--no-progress",
            "--out-dir", str(tmp_path / "fig"), "--cache-dir", str(tmp_path / "cache")]
    assert evaluation.main(argv) == 0
    out = tmp_path / "fig" / "smoke"
    for name in ("evaluation.md", "evaluation.csv", "evaluation.json", "evaluation_curves.png"):
        assert (out / name).is_file()
    assert "python -m reproduce.evaluation" in (out / "evaluation.md").read_text()
    cached = sorted((tmp_path / "cache" / "smoke").glob("evaluation-lenet-*.npz"))
    stamp = [p.stat().st_mtime_ns for p in cached]
    assert evaluation.main(argv) == 0  # a rerun reuses the per-digit cache
    assert [p.stat().st_mtime_ns for p in cached] == stamp


# ------------------------------------------------------------------------------- review additions
def test_joint_conditional_fill_conditions_on_all_channels_and_on_earlier_overlapping_tiles(rng):
    # A (nearly) rank-1 Gaussian over 2x2 patches of 2 channels, joint, values ordered
    # (channel, row, column): every patch is a * u[channel, row] whatever its column. Keep
    # one pixel (both channels) of a 2x3 image: the first tile (columns 0-1) must be filled
    # with a * u from it, and the second, overlapping tile (columns 1-2) has no kept pixel
    # and must condition on the values the first tile filled into column 1.
    u = rng.normal(size=(2, 2))
    v = np.repeat(u[:, :, None], 2, axis=2).ravel()
    cov = np.outer(v, v) + 1e-6 * np.eye(8)
    fill = ev.ConditionalFill(np.zeros((1, 8)), cov[None], 2, channels=2)
    x = 1.7 * np.repeat(u[:, :, None], 3, axis=2)
    keep = np.zeros((1, 2, 3), bool)
    keep[0, 0, 0] = True
    np.testing.assert_array_equal(ev.tile_origins(3, 2), [0, 1])
    removed = np.where(keep[0], x, 50.0)  # a removed pixel's value must not be read
    out = fill(removed, keep, rng)[0]
    np.testing.assert_allclose(out, x, atol=0.02)


def test_map_similarity_compares_magnitudes_or_signed_maps_as_asked(rng):
    a = rng.normal(size=(12, 12))
    rho_abs, ssim_abs = ev.map_similarity(a, -a, absolute=True)
    rho_signed, ssim_signed = ev.map_similarity(a, -a, absolute=False)
    assert rho_abs == pytest.approx(1.0) and ssim_abs == pytest.approx(1.0)
    assert rho_signed == pytest.approx(-1.0) and ssim_signed < 0.9


def test_cascading_randomisation_changes_the_outputs_onnxruntime_computes(rng):
    # Not only the initializers: the re-randomised models must run and predict differently.
    model = two_layer_onnx(rng)
    x = rng.normal(size=(5, 1, 4, 4)).astype(np.float32)
    p0 = ev.ModelView(model, device="cpu").classifier(x)["prob"]
    for name, stage in ev.cascading_randomisation(model, 0):
        p = ev.ModelView(stage, device="cpu").classifier(x)["prob"]
        assert np.abs(p - p0).max() > 1e-2, name


def linear_image_onnx(weights, bias, shape):
    """As :func:`linear_onnx`, taking images of ``shape`` (C, H, W)."""
    from onnx import TensorProto, helper

    model = linear_onnx(weights, bias)
    del model.graph.input[:]
    model.graph.input.append(helper.make_tensor_value_info("data", TensorProto.FLOAT,
                                                           [None, *shape]))
    return model


def test_standard_methods_explain_the_given_unit_with_the_same_windows_and_a_seeded_random_map(
        rng):
    from preddiff.occlusion import occlusion
    from preddiff.samplers import ConditionalGaussianSampler

    w = rng.normal(size=(4, 36))
    model = ev.ModelView(linear_image_onnx(w, np.zeros(4), (1, 6, 6)), device="cpu")
    pool = rng.random((30, 1, 6, 6)).astype(np.float32)
    sampler = ConditionalGaussianSampler.fit(pool, 2, 1, num_patches=200, rng=0)
    methods = {m.key: m for m in ev.standard_methods(pool=pool, sampler=sampler, window=2,
                                                     stride=2, num_samples=2, grey=0.25)}
    x = rng.random((1, 6, 6)).astype(np.float32)
    # sensitivity of a linear model: |S_u| |W_u|, so the map is |W_u| up to scale
    for unit in (1, 3):
        s = methods["sensitivity"].explain(model, x, unit, 0)
        np.testing.assert_allclose(s / s.max(), np.abs(w[unit]).reshape(6, 6)
                                   / np.abs(w[unit]).max(), rtol=1e-4, atol=1e-6)
    # occlusion: the grey patch with PDA's window and stride
    want = literal_occlusion(x, model.classifier, 2, 2, 0.25)[3]
    np.testing.assert_allclose(methods["occlusion"].explain(model, x, 3, 0), want, atol=1e-4)
    np.testing.assert_allclose(
        methods["occlusion"].explain(model, x, 3, 0),
        occlusion(x, model.classifier, window=2, stride=2, value=0.25).relevance["prob"][3])
    # random map: a function of the seed only (so the sanity check must flag it)
    other = ev.ModelView(linear_image_onnx(-w, np.ones(4), (1, 6, 6)), device="cpu")
    r = methods["random"].explain(model, x, 3, 7)
    np.testing.assert_array_equal(r, methods["random"].explain(other, x, 0, 7))
    assert not np.array_equal(r, methods["random"].explain(model, x, 3, 8))


def _import_reproduce_evaluation():
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if str(root) not in sys.path:  # reproduce/ lives in the repository, not the package
        sys.path.insert(0, str(root))
    from reproduce import evaluation

    return evaluation


def test_reproduce_evaluation_time_line_names_the_provider_that_ran(monkeypatch):
    # The report's timing must name the execution provider that ran the networks, not the
    # list onnxruntime offers (onnxruntime-gpu offers CUDA on a machine without a GPU).
    evaluation = _import_reproduce_evaluation()
    monkeypatch.setattr(evaluation.common, "versions", lambda: {
        "processor": "Test CPU", "cpu_count": "2", "onnxruntime": "9.9",
        "onnxruntime_providers": "FakeGPUExecutionProvider,CPUExecutionProvider"})
    result = ev.Comparison([], [0, 1], [], {}, [], [], {"seed": 0}, 1.0,
                           ["CPUExecutionProvider"])
    line = next(t for t in evaluation.section("LeNet", result, 3.0).splitlines()
                if t.startswith("- time:"))
    assert line == "- time: 3 s on Test CPU, 2 CPU cores, onnxruntime 9.9 (CPUExecutionProvider)"
    cached = ev.Comparison([], [0], [], {}, [], [], {}, 0.0, [])
    line = next(t for t in evaluation.section("LeNet", cached, 0.0, reused=1).splitlines()
                if t.startswith("- time:"))
    assert "FakeGPU" not in line and "no network run" in line


def test_reproduce_evaluation_evaluates_a_zoo_net_when_its_weights_are_present(tmp_path,
                                                                                monkeypatch):
    # The real zoo weights cannot be downloaded here: a narrow random-weight AlexNet (the
    # exact architecture, channels / 16, through the real Caffe -> ONNX converter) stands in
    # for them, with tiny settings, so that the "weights present" branch runs end to end.
    import json

    import onnx

    from preddiff import zoo
    from preddiff.caffe.writer import random_onnx

    evaluation = _import_reproduce_evaluation()
    path = tmp_path / "alexnet-narrow.onnx"
    onnx.save(random_onnx("alexnet", factor=16, seed=0), str(path))
    real_ensure_onnx = zoo.ensure_onnx
    monkeypatch.setattr(zoo, "is_present", lambda name, **kwargs: True)
    monkeypatch.setattr(zoo, "ensure_onnx", lambda name, outputs=None:
                        path if name == "alexnet" else real_ensure_onnx(name, outputs))
    argv = ["--scale", "smoke", "--set", 'zoo=["alexnet"]', "--set", "digits=1",
            "--set", "stride=6", "--set", "num_samples=2", "--set", "num_draws=1",
            "--set", "step=0.5", "--set", 'fills=["mean"]', "--set", 'zoo_images=["chelsea"]',
            "--set", "zoo_window=4", "--set", "zoo_stride=56", "--set", "zoo_num_samples=2",
            "--set", "zoo_num_patches=200", "--set", "zoo_stages=[]", "--no-progress",
            "--out-dir", str(tmp_path / "fig"), "--cache-dir", str(tmp_path / "cache")]
    assert evaluation.main(argv) == 0
    out = tmp_path / "fig" / "smoke"
    text = (out / "evaluation.md").read_text()
    zoo_part = text.split("## alexnet", 1)[1]
    assert "weights absent" not in zoo_part
    assert "mean (constant 0 per channel)" in zoo_part  # the training mean, 0 after subtraction
    assert "| mean | PDA conditional |" in zoo_part
    assert "down to conv1" in zoo_part  # the cascade reached the first layer
    rows = (out / "evaluation_alexnet.csv").read_text()
    assert "deletion_auc" in rows and "spearman_abs@conv1" in rows
    record = json.loads((out / "evaluation.json").read_text())
    assert set(record["onnxruntime_providers_used"]) == {"lenet", "alexnet"}
    assert (out / "evaluation_alexnet_curves.png").is_file()


def test_a_fills_curves_do_not_depend_on_the_other_fills_evaluated(rng):
    # `preddiff evaluate --fill conditional` must give the conditional numbers of a run with
    # every fill: the fill's random stream is keyed by its name, not by its list position.
    from preddiff.samplers import ConditionalGaussianSampler

    pool = rng.random((40, 1, 8, 8)).astype(np.float32)
    view = ev.ModelView(small_cnn(rng), device="cpu")
    sampler = ConditionalGaussianSampler.fit(pool, 2, 1, num_patches=200, rng=0)
    fills = {"marginal": ev.MarginalFill(pool),
             "conditional": ev.ConditionalFill.from_sampler(sampler)}
    methods = [ev.Method("random", "random map", True,
                         lambda model, x, unit, seed: ev.random_map(np.shape(x)[1:], seed))]
    x = rng.random((1, 8, 8)).astype(np.float32)
    kw = {"seed": 0, "step": 0.25, "num_draws": 2}
    both = ev.evaluate_image(x, 3, view, methods, fills, **kw)
    alone = ev.evaluate_image(x, 3, view, methods, {"conditional": fills["conditional"]}, **kw)
    for kind in ("deletion", "insertion", "negative"):
        key = f"curve/conditional/random/{kind}"
        np.testing.assert_array_equal(alone[key], both[key])


def test_cli_evaluate_resumes_an_interrupted_run_identically(tmp_path, monkeypatch, capsys):
    """A run interrupted after the first digit resumes from OUT/evaluation-progress/: the
    finished digit is not recomputed, and the table equals an uninterrupted run's."""
    import preddiff.evaluate as ev
    from preddiff.cli import main

    argv = ["evaluate", "--digits", "2", "--stride", "6", "--samples", "2", "--draws", "1",
            "--step", "0.25", "--fill", "mean", "--no-randomisation", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "fresh")]) == 0
    fresh = (tmp_path / "fresh" / "evaluation.csv").read_text()

    real = ev.evaluate_image
    calls = []

    def crash_on_second(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "evaluate_image", crash_on_second)
    assert main([*argv, "--out", str(tmp_path / "run")]) == 130
    assert (tmp_path / "run" / "evaluation-progress" / "digit0.npz").is_file()
    calls.clear()
    monkeypatch.setattr(ev, "evaluate_image", lambda *a, **k: (calls.append(a[1]), real(*a, **k))[1])
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    assert calls == [1]  # digit 0 came from the progress folder
    assert (tmp_path / "run" / "evaluation.csv").read_text() == fresh
    assert not (tmp_path / "run" / "evaluation-progress").exists()
    # a digit saved with other settings is recomputed, not reused
    calls.clear()
    monkeypatch.setattr(ev, "evaluate_image", crash_on_second)
    assert main([*argv, "--out", str(tmp_path / "other")]) == 130
    assert (tmp_path / "other" / "evaluation-progress" / "digit0.npz").is_file()
    calls.clear()
    monkeypatch.setattr(ev, "evaluate_image", lambda *a, **k: (calls.append(a[1]), real(*a, **k))[1])
    assert main([*argv, "--seed", "1", "--out", str(tmp_path / "other")]) == 0
    assert calls == [0, 1]
