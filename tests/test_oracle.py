"""The engine against a slow, literal transcription of Algorithm 1 (Zintgraf et al. 2016).

The oracle below is written from the paper, not from the engine: a Python loop over windows
and over samples, ``x' = copy(x)``, ``sum_w += p(c|x')``, ``p(c|x\\x_w) := sum_w / S``, the weight
of evidence eq. (4)–(5) with the Laplace correction (§2.2), the activation difference eq. (9)
averaged over each feature map (§3.3, released code), ``counts`` and the pointwise division.
Its samplers are literal too: the marginal takes the window from pool images (§4); the
conditional builds the patch around the window (shifted inside the image at borders, §4 note)
and conditions the Gaussian with the block formulas and explicit inverses. Only the random
stream convention is shared with the engine: window ``i`` (row-major) draws from
``default_rng(SeedSequence(seed, spawn_key=(i,)))``, the marginal with
``rng.choice(M, S, replace=False)``, the conditional one ``standard_normal((S, G, d1))``.
Classifiers compute in float64; agreement is required to 1e-10.
"""
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import gaussian_filter

from preddiff import prediction_difference
from preddiff.samplers import ConditionalGaussianSampler, MarginalSampler

SEED = 20161129
LAPLACE_N = 1000  # small N, so that the correction matters in the comparison
C, H, W = 3, 9, 8


# ----------------------------------------------------------------------------------------------
# data and classifiers (float64 inside)


def smooth_images(rng, n):
    noise = rng.normal(size=(n, C, H + 4, W + 4))
    images = gaussian_filter(noise, sigma=(0, 0, 1.2, 1.2))[:, :, 2:-2, 2:-2] * 3
    return (images + rng.normal(size=(n, C, 1, 1)) * 0.5
            + rng.normal(scale=0.05, size=images.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    images = smooth_images(rng, 61)
    return images[0], images[1:]


class SoftmaxLinear:
    """prob = softmax(W·x + b) over 4 classes; also returns the logits."""

    def __init__(self, rng):
        self.weights = rng.normal(size=(4, C * H * W)) * 0.3
        self.bias = rng.normal(size=4)

    def __call__(self, batch):
        flat = np.asarray(batch, dtype=np.float64).reshape(len(batch), -1)
        logits = flat @ self.weights.T + self.bias
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return {"logits": logits, "prob": e / e.sum(axis=1, keepdims=True)}


class TinyConvNet:
    """conv 3x3 (4 maps, ReLU) → "conv1" (N, 4, 7, 6); linear → "fc" (N, 5); softmax → "prob"."""

    def __init__(self, rng):
        self.kernels = rng.normal(size=(4, C, 3, 3)) * 0.5
        self.conv_bias = rng.normal(size=4) * 0.1
        self.weights = rng.normal(size=(5, 4 * (H - 2) * (W - 2))) * 0.2
        self.bias = rng.normal(size=5)

    def __call__(self, batch):
        batch = np.asarray(batch, dtype=np.float64)
        patches = sliding_window_view(batch, (3, 3), axis=(2, 3))  # (N, C, 7, 6, 3, 3)
        conv = np.einsum("ncyxij,kcij->nkyx", patches, self.kernels)
        conv1 = np.maximum(conv + self.conv_bias[:, None, None], 0.0)
        fc = conv1.reshape(len(batch), -1) @ self.weights.T + self.bias
        e = np.exp(fc - fc.max(axis=1, keepdims=True))
        return {"conv1": conv1, "fc": fc, "prob": e / e.sum(axis=1, keepdims=True)}


# ----------------------------------------------------------------------------------------------
# literal samplers


def marginal_literal(pool, order):
    def sample(x, r, c, kh, kw, num_samples, rng):
        if order == "first":
            chosen = list(range(num_samples))
        else:
            chosen = rng.choice(len(pool), size=num_samples, replace=False)
        return np.array([pool[j][:, r:r + kh, c:c + kw] for j in chosen])
    return sample


def conditional_literal(sampler):
    """Conditional Gaussian sampling of one window, from the sampler's fitted mean and cov."""
    pad = sampler.padding
    colour = sampler.colour
    groups = [[ch] for ch in range(C)] if colour == "per-channel" else [list(range(C))]

    def sample(x, r, c, kh, kw, num_samples, rng):
        ph, pw = kh + 2 * pad, kw + 2 * pad
        # the patch containing the window: centred, shifted inside the image at the borders
        pr, pc = r - pad, c - pad
        pr = min(max(pr, 0), H - ph)
        pc = min(max(pc, 0), W - pw)
        # variables of a group, in (channel, row, col) order, inside the window or not
        inside, outside = [], []
        position = 0
        for ch_index in range(len(groups[0])):
            for y in range(pr, pr + ph):
                for xx in range(pc, pc + pw):
                    in_window = r <= y < r + kh and c <= xx < c + kw
                    (inside if in_window else outside).append((ch_index, y, xx, position))
                    position += 1
        noise = rng.standard_normal((num_samples, len(groups), len(inside)))
        out = np.zeros((num_samples, C, kh, kw))
        for g, channels in enumerate(groups):
            mu = sampler.mean[g]
            sigma = sampler.cov[g] + sampler.jitter[g] * np.eye(len(mu))
            i1 = [v[3] for v in inside]
            i2 = [v[3] for v in outside]
            x2 = np.array([x[channels[v[0]], v[1], v[2]] for v in outside], dtype=np.float64)
            s11 = sigma[np.ix_(i1, i1)]
            s12 = sigma[np.ix_(i1, i2)]
            s22_inv = np.linalg.inv(sigma[np.ix_(i2, i2)])
            cond_mean = mu[i1] + s12 @ s22_inv @ (x2 - mu[i2])
            cond_cov = s11 - s12 @ s22_inv @ s12.T
            chol = np.linalg.cholesky((cond_cov + cond_cov.T) / 2)
            for s in range(num_samples):
                values = cond_mean + chol @ noise[s, g]
                for value, (ch_index, y, xx, _) in zip(values, inside):
                    out[s, channels[ch_index], y - r, xx - c] = value
        if sampler.clip:
            out = np.clip(out, sampler.pool_min[:, r:r + kh, c:c + kw],
                          sampler.pool_max[:, r:r + kh, c:c + kw])
        return out.astype(np.float32)
    return sample


# ----------------------------------------------------------------------------------------------
# Algorithm 1, literally


def literal_starts(length, k, stride, edges):
    """Window starts along one axis: every stride-th position; with edges="cover" also the
    one aligned to the last pixel when the stride does not reach it."""
    starts = list(range(0, length - k + 1, stride))
    if edges == "cover" and starts[-1] != length - k:
        starts.append(length - k)
    return starts


def algorithm1(x, classifier, sample_window, window, stride, num_samples, blobs, probability,
               seed, laplace_n, edges="cover"):
    kh, kw = window
    clean = {b: v[0] for b, v in classifier(x[None]).items()}
    relevance = {}
    for b in blobs:
        units = clean[b].shape[0]
        relevance[b] = np.zeros((units, H, W))
    counts = np.zeros((H, W))
    index = 0
    for r in literal_starts(H, kh, stride, edges):
        for c in literal_starts(W, kw, stride, edges):
            rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(index,)))
            index += 1
            samples = sample_window(x, r, c, kh, kw, num_samples, rng)
            sum_w = {b: 0.0 for b in blobs}
            for s in range(num_samples):
                x_prime = x.copy()
                x_prime[:, r:r + kh, c:c + kw] = samples[s]
                out = classifier(x_prime[None])
                for b in blobs:
                    sum_w[b] = sum_w[b] + out[b][0]
            for b in blobs:
                removed = sum_w[b] / num_samples
                if b in probability:
                    k = len(clean[b])
                    p = (clean[b] * laplace_n + 1) / (laplace_n + k)
                    q = (removed * laplace_n + 1) / (laplace_n + k)
                    diff = np.log2(p / (1 - p)) - np.log2(q / (1 - q))
                else:
                    diff = clean[b] - removed
                    if diff.ndim > 1:  # feature maps: average over each map's units
                        diff = diff.reshape(diff.shape[0], -1).mean(axis=1)
                for y in range(r, r + kh):
                    for xx in range(c, c + kw):
                        relevance[b][:, y, xx] += diff
            for y in range(r, r + kh):
                for xx in range(c, c + kw):
                    counts[y, xx] += 1
    for b in blobs:
        for y in range(H):
            for xx in range(W):
                if counts[y, xx] > 0:
                    relevance[b][:, y, xx] /= counts[y, xx]
    return relevance, counts


# ----------------------------------------------------------------------------------------------
# the comparison

GEOMETRIES = [  # (window, stride): strides 1, 2, 3 and window = stride; square and not
    (1, 1), (2, 1), (3, 1), (2, 2), (3, 2), (3, 3), (1, 3), ((2, 3), 1), ((2, 3), 2),
    ((3, 2), 3),
]
SAMPLERS = ["marginal-random", "marginal-first", "conditional-per-channel", "conditional-joint"]

_fitted = {}


def make_sampler(kind, pool, window):
    if kind.startswith("marginal"):
        order = kind.split("-", 1)[1]
        return MarginalSampler(pool, order=order), marginal_literal(pool, order)
    colour = kind.split("-", 1)[1]
    key = (colour, window)
    if key not in _fitted:
        padding = 1 if max(window) == 3 else 2
        _fitted[key] = ConditionalGaussianSampler.fit(
            pool, window, padding, colour=colour, num_patches=3000, rng=3)
    sampler = _fitted[key]
    assert not sampler.jitter.any(), "the test pool must give a positive definite covariance"
    return sampler, conditional_literal(sampler)


@pytest.mark.parametrize("kind", SAMPLERS)
@pytest.mark.parametrize("window,stride", GEOMETRIES)
def test_engine_equals_algorithm1_convnet(data, kind, window, stride):
    x, pool = data
    window = window if isinstance(window, tuple) else (window, window)
    classifier = TinyConvNet(np.random.default_rng(11))
    sampler, literal = make_sampler(kind, pool, window)
    blobs = ("prob", "fc", "conv1")
    expected, counts = algorithm1(x, classifier, literal, window, stride, 3, blobs, {"prob"},
                                  SEED, LAPLACE_N)
    got = prediction_difference(x, classifier, sampler, window=window, stride=stride,
                                num_samples=3, blobs=blobs, rng=SEED, laplace_n=LAPLACE_N,
                                batch_size=7, progress=False)
    np.testing.assert_array_equal(got.counts, counts)
    for b in blobs:
        assert got.relevance[b].shape == expected[b].shape
        np.testing.assert_allclose(got.relevance[b], expected[b], rtol=0, atol=1e-10,
                                   err_msg=f"blob {b}")
    if kind.startswith("conditional"):
        assert not any(any(j) for j in sampler.conditional_jitter.values())
    assert np.abs(got.relevance["prob"]).max() > 1e-3  # the comparison is not vacuous


@pytest.mark.parametrize("window,stride", [(2, 2), (3, 2), ((2, 3), 2), ((3, 2), 3)])
def test_engine_equals_algorithm1_regular_grid_only(data, window, stride):
    """edges="drop" (released code): no edge-aligned windows, the last band uncovered."""
    x, pool = data
    window = window if isinstance(window, tuple) else (window, window)
    classifier = TinyConvNet(np.random.default_rng(11))
    sampler, literal = make_sampler("marginal-random", pool, window)
    blobs = ("prob", "conv1")
    expected, counts = algorithm1(x, classifier, literal, window, stride, 3, blobs, {"prob"},
                                  SEED, LAPLACE_N, edges="drop")
    got = prediction_difference(x, classifier, sampler, window=window, stride=stride,
                                num_samples=3, blobs=blobs, rng=SEED, laplace_n=LAPLACE_N,
                                batch_size=7, progress=False, edges="drop")
    np.testing.assert_array_equal(got.counts, counts)
    for b in blobs:
        np.testing.assert_allclose(got.relevance[b], expected[b], rtol=0, atol=1e-10)
    assert got.edges == "drop"


def test_cover_reaches_every_pixel_where_drop_does_not(data):
    """With a stride that does not divide H - k, only edges="cover" covers the last rows."""
    x, pool = data
    classifier = TinyConvNet(np.random.default_rng(11))
    sampler, _ = make_sampler("marginal-random", pool, (3, 3))
    kwargs = dict(window=3, stride=2, num_samples=2, blobs=("prob",), rng=SEED,
                  progress=False)
    assert (H - 3) % 2 or (W - 3) % 2, "the test needs a stride that does not divide H - k"
    cover = prediction_difference(x, classifier, sampler, **kwargs)
    drop = prediction_difference(x, classifier, sampler, edges="drop", **kwargs)
    assert (cover.counts > 0).all()
    assert (drop.counts == 0).any()


@pytest.mark.parametrize("kind", SAMPLERS)
def test_engine_equals_algorithm1_softmax_linear(data, kind):
    x, pool = data
    classifier = SoftmaxLinear(np.random.default_rng(5))
    sampler, literal = make_sampler(kind, pool, (2, 2))
    expected, _ = algorithm1(x, classifier, literal, (2, 2), 1, 4, ("prob", "logits"),
                             {"prob"}, SEED + 1, 100000)
    got = prediction_difference(x, classifier, sampler, window=2, num_samples=4,
                                blobs=("prob", "logits"), rng=SEED + 1, progress=False)
    for b in ("prob", "logits"):
        np.testing.assert_allclose(got.relevance[b], expected[b], rtol=0, atol=1e-10)


def test_probability_blob_named_by_caller(data):
    """``probability_blobs`` moves the weight of evidence to a blob with another name."""
    x, pool = data
    net = SoftmaxLinear(np.random.default_rng(5))

    def classifier(batch):
        out = net(batch)
        return {"softmax": out["prob"], "prob": out["prob"]}

    sampler, literal = make_sampler("marginal-random", pool, (2, 2))
    expected, _ = algorithm1(x, classifier, literal, (2, 2), 2, 3, ("softmax", "prob"),
                             {"softmax"}, SEED, 100000)
    got = prediction_difference(x, classifier, sampler, window=2, stride=2, num_samples=3,
                                blobs=("softmax", "prob"), probability_blobs=["softmax"],
                                rng=SEED, progress=False)
    for b in ("softmax", "prob"):  # "prob" is not a probability blob here: activation diff.
        np.testing.assert_allclose(got.relevance[b], expected[b], rtol=0, atol=1e-10)
