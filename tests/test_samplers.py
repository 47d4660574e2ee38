"""Samplers: marginal sampling, and conditional sampling against the analytic Gaussian
conditional computed independently (block formulas with explicit inverses)."""
import numpy as np
import pytest

import preddiff.samplers as samplers
from preddiff.errors import InvalidArgument
from preddiff.samplers import ConditionalGaussianSampler, MarginalSampler, Sampler
from preddiff.streams import WindowStreams, resolve_seed, window_rng


def streams(n, seed=0, start=0):
    return WindowStreams(seed, start, start + n)


# ----------------------------------------------------------------------------------------------
# random streams


def test_resolve_seed():
    assert resolve_seed(42) == 42
    assert resolve_seed(np.int32(3)) == 3
    gen = np.random.default_rng(1)
    expected = int(np.random.default_rng(1).integers(0, 2**63))
    assert resolve_seed(gen) == expected


@pytest.mark.parametrize("bad", [-1, 1.5, True, None, "0"])
def test_resolve_seed_rejects(bad):
    with pytest.raises(InvalidArgument, match="rng"):
        resolve_seed(bad)


def test_window_streams_depend_only_on_seed_and_index():
    a = WindowStreams(9, 5, 9)[1].normal(size=4)
    b = window_rng(9, 6).normal(size=4)
    c = WindowStreams(9, 0, 100)[6].normal(size=4)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, window_rng(9, 7).normal(size=4))
    assert not np.array_equal(a, window_rng(10, 6).normal(size=4))
    s = WindowStreams(9, 5, 9)
    assert s[0] is s[0] and len(s) == 4 and s[-1] is s[3]
    with pytest.raises(IndexError):
        s[4]


# ----------------------------------------------------------------------------------------------
# marginal


@pytest.fixture
def pool(rng):
    return rng.normal(size=(6, 2, 5, 7)).astype(np.float32)


def test_marginal_first_takes_first_images_at_same_place(pool):
    sampler = MarginalSampler(pool, order="first")
    top_left = np.array([[0, 0], [3, 4], [1, 2]])
    out = sampler.sample(pool[0], top_left, (2, 3), 4, streams(3))
    assert out.shape == (3, 4, 2, 2, 3) and out.dtype == np.float32
    for n, (r, c) in enumerate(top_left):
        np.testing.assert_array_equal(out[n], pool[:4, :, r:r + 2, c:c + 3])


def test_marginal_random_distinct_images_from_own_stream(pool):
    sampler = MarginalSampler(pool)
    top_left = np.array([[0, 0], [1, 1], [3, 4]])
    out = sampler.sample(pool[0], top_left, 2, 6, streams(3, seed=4))
    for n, (r, c) in enumerate(top_left):
        chosen = window_rng(4, n).choice(6, size=6, replace=False)
        np.testing.assert_array_equal(out[n], pool[chosen][:, :, r:r + 2, c:c + 2])
        # all 6 images, each once
        window = pool[:, :, r:r + 2, c:c + 2].reshape(6, -1)
        found = sorted(int(np.flatnonzero((window == s.ravel()).all(1))[0])
                       for s in out[n].reshape(6, -1))
        assert found == list(range(6))


def test_marginal_per_window_reproducible(pool):
    """A window's samples do not depend on the other windows of the call."""
    sampler = MarginalSampler(pool)
    top_left = np.array([[0, 0], [1, 1], [3, 4], [2, 2]])
    together = sampler.sample(pool[0], top_left, 2, 3, streams(4, seed=8))
    for n in range(4):
        alone = sampler.sample(pool[0], top_left[n:n + 1], 2, 3, streams(1, seed=8, start=n))
        np.testing.assert_array_equal(alone[0], together[n])


def test_marginal_too_few_images(pool):
    with pytest.raises(InvalidArgument, match=r"num_samples=7 .* pool has only 6"):
        MarginalSampler(pool, order="first").sample(pool[0], [[0, 0]], 2, 7, streams(1))


def test_marginal_errors(pool):
    with pytest.raises(InvalidArgument, match="order"):
        MarginalSampler(pool, order="last")
    with pytest.raises(InvalidArgument, match=r"\(M, C, H, W\)"):
        MarginalSampler(pool[0])
    with pytest.raises(InvalidArgument, match="empty"):
        MarginalSampler(pool[:0])
    with pytest.raises(InvalidArgument, match=r"image shape \(2, 5, 6\) differs"):
        MarginalSampler(pool).sample(pool[0, :, :, :6], [[0, 0]], 2, 2, streams(1))


def test_marginal_describe_identifies_pool(pool):
    a = MarginalSampler(pool).describe()
    b = MarginalSampler(pool + 1).describe()
    assert a["name"] == "MarginalSampler" and a["order"] == "random"
    assert a["pool_sha1"] != b["pool_sha1"]


# ----------------------------------------------------------------------------------------------
# conditional: analytic Gaussian


def random_spd(rng, dim):
    a = rng.normal(size=(dim, dim))
    return a @ a.T / dim + 0.3 * np.eye(dim)


def analytic_conditional(mean, cov, inside, x2):
    """Block formulas with explicit inverses: N(μ1 + Σ12 Σ22⁻¹ (x2 − μ2), Σ11 − Σ12 Σ22⁻¹ Σ21)."""
    outside = [i for i in range(len(mean)) if i not in inside]
    s22_inv = np.linalg.inv(cov[np.ix_(outside, outside)])
    s12 = cov[np.ix_(inside, outside)]
    cond_mean = mean[inside] + s12 @ s22_inv @ (x2 - mean[outside])
    cond_cov = cov[np.ix_(inside, inside)] - s12 @ s22_inv @ s12.T
    return cond_mean, cond_cov


def window_indices(channels, ph, pw, oy, ox, kh, kw):
    """Flattened (channel, row, col) indices of the window at offset (oy, ox) in the patch."""
    return [ch * ph * pw + y * pw + x for ch in range(channels)
            for y in range(oy, oy + kh) for x in range(ox, ox + kw)]


@pytest.mark.parametrize("top_left,offset", [((2, 2), (1, 1)),   # centred
                                              ((0, 0), (0, 0)),   # top-left corner
                                              ((4, 4), (2, 2)),   # bottom-right corner
                                              ((0, 3), (0, 1)),   # top border
                                              ((4, 1), (2, 1))])  # bottom border
@pytest.mark.parametrize("colour", ["joint", "per-channel"])
def test_conditional_moments_match_analytic(rng, top_left, offset, colour):
    """Empirical mean and covariance of many draws = the analytic conditional (2 channels)."""
    channels, k, pad = 2, 2, 1
    ph = k + 2 * pad
    groups = 1 if colour == "joint" else channels
    dim = (channels // groups) * ph * ph
    mean = rng.normal(size=(groups, dim))
    cov = np.stack([random_spd(rng, dim) for _ in range(groups)])
    sampler = ConditionalGaussianSampler(mean, cov, k, pad, colour=colour, channels=channels)
    x = rng.normal(size=(channels, 6, 6)).astype(np.float32)
    r, c = top_left
    pr, pc = r - offset[0], c - offset[1]
    np.testing.assert_array_equal(sampler.patch_top_left([top_left], (6, 6)), [[pr, pc]])
    num = 40000
    draws = sampler.sample(x, np.array([top_left]), k, num, streams(1, seed=3))[0]
    assert draws.shape == (num, channels, k, k)
    patch = x[:, pr:pr + ph, pc:pc + ph].astype(np.float64)
    for g in range(groups):
        chans = list(range(channels)) if groups == 1 else [g]
        inside = window_indices(len(chans), ph, ph, *offset, k, k)
        values = patch[chans].ravel()
        x2 = np.delete(values, inside)
        cond_mean, cond_cov = analytic_conditional(mean[g], cov[g], inside, x2)
        emp = draws[:, chans].reshape(num, -1).astype(np.float64)
        std = np.sqrt(np.diag(cond_cov))
        assert np.all(np.abs(emp.mean(0) - cond_mean) < 5 * std / np.sqrt(num))
        np.testing.assert_allclose(np.cov(emp, rowvar=False), cond_cov,
                                   atol=0.04 * std.max() ** 2)
        # and the cached parameters are the analytic ones to rounding error
        idx1, idx2, mu1, mu2, a, lower = sampler.conditional(offset)[g]
        np.testing.assert_allclose(mu1 + a @ (x2 - mu2), cond_mean, atol=1e-10)
        np.testing.assert_allclose(lower @ lower.T, cond_cov, atol=1e-10)


def test_per_channel_samples_channels_independently(rng):
    """Per-channel: channel 1's values do not influence channel 0's conditional."""
    mean = rng.normal(size=(2, 16))
    cov = np.stack([random_spd(rng, 16) for _ in range(2)])
    sampler = ConditionalGaussianSampler(mean, cov, 2, 1, colour="per-channel", channels=2)
    x = rng.normal(size=(2, 4, 4)).astype(np.float32)
    y = x.copy()
    y[1] += 5
    a = sampler.sample(x, [[1, 1]], 2, 3, streams(1))
    b = sampler.sample(y, [[1, 1]], 2, 3, streams(1))
    np.testing.assert_array_equal(a[:, :, 0], b[:, :, 0])
    assert not np.allclose(a[:, :, 1], b[:, :, 1])


def test_padding_zero_is_the_unconditional_gaussian(rng):
    mean = rng.normal(size=(1, 4))
    cov = random_spd(rng, 4)[None]
    sampler = ConditionalGaussianSampler(mean, cov, 2, 0, channels=1)
    draws = sampler.sample(np.zeros((1, 3, 3), np.float32), [[1, 0]], 2, 30000, streams(1))
    emp = draws[0].reshape(30000, 4)
    np.testing.assert_allclose(emp.mean(0), mean[0], atol=0.05)
    np.testing.assert_allclose(np.cov(emp, rowvar=False), cov[0], atol=0.06)


# ----------------------------------------------------------------------------------------------
# conditional: fitting, offsets, cache, jitter, clip, persistence


def smooth_pool(rng, n=30, channels=3, size=(12, 11)):
    from scipy.ndimage import gaussian_filter

    noise = rng.normal(size=(n, channels) + size)
    return gaussian_filter(noise, sigma=(0, 0, 1, 1)).astype(np.float32) * 4


@pytest.mark.parametrize("colour", ["per-channel", "joint"])
def test_fit_estimates_patch_statistics(rng, colour):
    """With many patches, the fitted mean and covariance approach those of all patches."""
    pool = smooth_pool(rng, n=20, channels=2)
    sampler = ConditionalGaussianSampler.fit(pool, 2, 1, colour=colour, num_patches=60000,
                                             rng=1)
    views = np.lib.stride_tricks.sliding_window_view(pool, (4, 4), axis=(2, 3))
    every = views.transpose(0, 2, 3, 1, 4, 5).reshape(-1, 2, 16).astype(np.float64)
    if colour == "joint":
        groups = [every.reshape(len(every), 32)]
    else:
        groups = [every[:, 0], every[:, 1]]
    for g, data in enumerate(groups):
        np.testing.assert_allclose(sampler.mean[g], data.mean(0), atol=0.03)
        np.testing.assert_allclose(sampler.cov[g], np.cov(data, rowvar=False), atol=0.08)
    assert sampler.num_patches == 60000 and sampler.cov.shape[1:] == groups[0].shape[1:] * 2


def test_distinct_offsets_and_cache(rng, monkeypatch):
    """All windows of an image use at most (2l+1)² offsets, each conditioned once."""
    pool = smooth_pool(rng)
    sampler = ConditionalGaussianSampler.fit(pool, 3, 2, num_patches=3000, rng=0)
    calls = []
    solve = samplers.scipy.linalg.cho_solve
    monkeypatch.setattr(samplers.scipy.linalg, "cho_solve",
                        lambda *a, **k: calls.append(1) or solve(*a, **k))
    from preddiff.windows import window_positions

    positions = window_positions((12, 11), 3)
    for start in range(0, len(positions), 7):  # many calls, as the engine makes
        chunk = positions[start:start + 7]
        sampler.sample(pool[0], chunk, 3, 2, streams(len(chunk), start=start))
    offsets = {(int(r - min(max(r - 2, 0), 12 - 7)), int(c - min(max(c - 2, 0), 11 - 7)))
               for r, c in positions}
    assert set(sampler._cache) == offsets
    assert len(offsets) == 25  # (2l+1)² with l = 2
    assert len(calls) == 25 * 3  # once per offset and colour channel, never per window


@pytest.mark.parametrize("colour", ["per-channel", "joint"])
def test_conditional_window_values_do_not_depend_on_the_batch(rng, colour):
    """A window's samples are the same alone, in a batch of all windows (every offset, the
    windows of one offset scattered through it) and in a shuffled batch, bit for bit."""
    from preddiff.windows import window_positions

    pool = smooth_pool(rng)
    sampler = ConditionalGaussianSampler.fit(pool, 3, 2, colour=colour, num_patches=3000,
                                             rng=0)
    positions = np.asarray(window_positions((12, 11), 3))
    n = len(positions)
    together = sampler.sample(pool[1], positions, 3, 4, streams(n, seed=5))
    perm = np.random.default_rng(1).permutation(n)
    shuffled = sampler.sample(pool[1], positions[perm], 3, 4,
                              [window_rng(5, int(i)) for i in perm])
    np.testing.assert_array_equal(shuffled, together[perm])
    for i in (0, 1, 13, n // 2, n - 1):
        alone = sampler.sample(pool[1], positions[i:i + 1], 3, 4, [window_rng(5, i)])
        np.testing.assert_array_equal(alone[0], together[i])
    none = sampler.sample(pool[1], positions[:0], 3, 4, [])
    assert none.shape == (0, 4, pool.shape[1], 3, 3) and none.dtype == np.float32


def test_singular_covariance_gets_jitter(rng):
    """Images constant along each row make Σ singular: jitter, not an exception."""
    rows = rng.normal(size=(20, 1, 10, 1))
    pool = np.repeat(rows, 10, axis=3).astype(np.float32)
    sampler = ConditionalGaussianSampler.fit(pool, 2, 2, num_patches=2000, rng=0)
    assert sampler.jitter[0] > 0
    assert sampler.jitter[0] <= 1e-6 * np.mean(np.diag(sampler.cov[0])) * 1.0001
    out = sampler.sample(pool[0], [[0, 0], [4, 4], [8, 8]], 2, 5, streams(3))
    assert np.isfinite(out).all()
    # the conditional is (numerically) the row's value, known from the frame
    for n, r in enumerate([0, 4, 8]):
        np.testing.assert_allclose(out[n, :, 0], np.broadcast_to(pool[0, 0, r:r + 2, :2],
                                                                 (5, 2, 2)), atol=0.02)


def test_cholesky_jitter_escalates():
    singular = np.ones((3, 3))  # rank 1
    lower, jitter = samplers._cholesky_jittered(singular)
    assert jitter == pytest.approx(1e-6)
    np.testing.assert_allclose(lower @ lower.T, singular + jitter * np.eye(3))
    indefinite = np.diag([1.0, 1.0, -1e-4])
    _, jitter = samplers._cholesky_jittered(indefinite)
    assert jitter == pytest.approx(1e-3 * np.mean([1, 1, -1e-4]))


def test_clip_to_pool_range(rng):
    pool = smooth_pool(rng, channels=1, size=(8, 8))
    mean = np.zeros((1, 16))
    cov = np.eye(16)[None] * 100.0  # far wider than the pool
    lo, hi = pool.min(0), pool.max(0)
    clipped = ConditionalGaussianSampler(mean, cov, 2, 1, channels=1, pool_min=lo, pool_max=hi)
    free = ConditionalGaussianSampler(mean, cov, 2, 1, channels=1)
    top_left = np.array([[0, 0], [3, 5], [6, 6]])
    a = clipped.sample(pool[0], top_left, 2, 200, streams(3))
    b = free.sample(pool[0], top_left, 2, 200, streams(3))
    for n, (r, c) in enumerate(top_left):
        assert np.all(a[n] >= lo[:, r:r + 2, c:c + 2]) and np.all(a[n] <= hi[:, r:r + 2, c:c + 2])
        assert np.any(b[n] > hi[:, r:r + 2, c:c + 2])
        np.testing.assert_array_equal(a[n], np.clip(b[n], lo[:, r:r + 2, c:c + 2],
                                                     hi[:, r:r + 2, c:c + 2]))


def test_fit_clip_records_pool_bounds(rng):
    pool = smooth_pool(rng, n=5, channels=2)
    sampler = ConditionalGaussianSampler.fit(pool, 2, 1, num_patches=500, rng=0)
    np.testing.assert_array_equal(sampler.pool_min, pool.min(0))
    np.testing.assert_array_equal(sampler.pool_max, pool.max(0))
    assert not ConditionalGaussianSampler.fit(pool, 2, 1, num_patches=500, clip=False,
                                              rng=0).clip


def test_save_load_round_trip(rng, tmp_path):
    pool = smooth_pool(rng, n=10)
    sampler = ConditionalGaussianSampler.fit(pool, (2, 3), 1, colour="joint", num_patches=800,
                                             rng=0)
    path = tmp_path / "gauss.npz"
    sampler.save(path)
    loaded = ConditionalGaussianSampler.load(path)
    assert loaded.describe() == sampler.describe()
    top_left = np.array([[0, 0], [5, 4], [10, 8]])
    np.testing.assert_array_equal(loaded.sample(pool[1], top_left, (2, 3), 4, streams(3)),
                                  sampler.sample(pool[1], top_left, (2, 3), 4, streams(3)))
    assert [p.name for p in tmp_path.iterdir()] == ["gauss.npz"]  # no temporary left


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, a=np.zeros(2))
    with pytest.raises(InvalidArgument, match="not a saved ConditionalGaussianSampler"):
        ConditionalGaussianSampler.load(path)


def test_conditional_errors(rng):
    pool = smooth_pool(rng, n=4, channels=1, size=(6, 7))
    with pytest.raises(InvalidArgument, match="padding must be a non-negative integer, got -1"):
        ConditionalGaussianSampler.fit(pool, 2, -1, rng=0)
    with pytest.raises(InvalidArgument, match=r"pool images are 6x7, smaller than the 8x8 "
                                              r"patch of a 4x4 window with padding 2"):
        ConditionalGaussianSampler.fit(pool, 4, 2, rng=0)
    with pytest.raises(InvalidArgument, match="num_patches"):
        ConditionalGaussianSampler.fit(pool, 2, 1, num_patches=1, rng=0)
    with pytest.raises(InvalidArgument, match="colour"):
        ConditionalGaussianSampler.fit(pool, 2, 1, colour="rgb", rng=0)
    sampler = ConditionalGaussianSampler.fit(pool, 2, 1, num_patches=200, rng=0)
    with pytest.raises(InvalidArgument, match="fitted for 2x2 windows"):
        sampler.sample(pool[0], [[0, 0]], 3, 2, streams(1))
    with pytest.raises(InvalidArgument, match="channels"):
        sampler.sample(np.zeros((3, 6, 7), np.float32), [[0, 0]], 2, 2, streams(1))
    with pytest.raises(InvalidArgument, match="per-pixel clipping"):
        sampler.sample(np.zeros((1, 8, 8), np.float32), [[0, 0]], 2, 2, streams(1))


# ----------------------------------------------------------------------------------------------
# the base class for user samplers


def test_user_sampler_via_sample_window():
    class Fill(Sampler):
        def sample_window(self, x, top_left, window, num_samples, rng):
            return np.full((num_samples, x.shape[0]) + tuple(window), rng.integers(10))

    out = Fill().sample(np.zeros((2, 4, 4)), np.array([[0, 0], [1, 1]]), (2, 2), 3,
                        streams(2, seed=5))
    assert out.shape == (2, 3, 2, 2, 2) and out.dtype == np.float32
    assert out[1, 0, 0, 0, 0] == window_rng(5, 1).integers(10)
    assert Fill().describe() == {"name": "test_user_sampler_via_sample_window.<locals>.Fill"}


def test_constructor_checks_parameter_shapes():
    with pytest.raises(InvalidArgument, match=r"expected \(1, 16\) and \(1, 16, 16\)"):
        ConditionalGaussianSampler(np.zeros((1, 15)), np.eye(15)[None], 2, 1, channels=1)
    with pytest.raises(InvalidArgument, match="finite"):
        ConditionalGaussianSampler(np.full((1, 16), np.nan), np.eye(16)[None], 2, 1,
                                   channels=1)


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_load_rejects_damaged_files(rng, tmp_path, damage):
    """A truncated or empty file raised zipfile.BadZipFile / EOFError, not InvalidArgument."""
    path = tmp_path / "gauss.npz"
    ConditionalGaussianSampler.fit(smooth_pool(rng, n=4, channels=1), 2, 1, num_patches=200,
                                   rng=0).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    with pytest.raises(InvalidArgument, match="not a saved ConditionalGaussianSampler"):
        ConditionalGaussianSampler.load(path)


# ----------------------------------------------------------------------------------------------
# The released code's sampler, exactly (issue 12)


class ReleasedConditionals:
    """A literal transcription of the released code's conditional-parameter cache.

    ``cond_sampler_imagenet._get_cond_params`` (lmzintgraf/DeepVis-PredDiff,
    ``utils_sampling.py``) loops over channels 0, 1, 2; for each it looks up the regression
    matrix ``dotProdForMean = Σ12 Σ22⁻¹`` and the conditional covariance in a cache whose key
    is the window's first and last index inside the patch — without the channel — computing
    and storing them from the current channel's covariance on a miss. The conditional mean is
    ``μ1 + dotProdForMean (x2 − μ2)`` with the channel's own means.
    """

    def __init__(self, means, covs):
        self.means, self.covs, self.cache = means, covs, {}

    def __call__(self, patch_c, in_patch_idx, channel):
        x2 = np.delete(patch_c, in_patch_idx)
        mu1 = np.take(self.means[channel], in_patch_idx)
        mu2 = np.delete(self.means[channel], in_patch_idx)
        key = (in_patch_idx[0], in_patch_idx[-1])
        if key not in self.cache:
            cov = self.covs[channel]
            cov11 = cov[in_patch_idx][:, in_patch_idx]
            cov12 = np.delete(cov[in_patch_idx, :], in_patch_idx, axis=1)
            cov21 = np.delete(cov[:, in_patch_idx], in_patch_idx, axis=0)
            cov22 = np.delete(np.delete(cov, in_patch_idx, axis=0), in_patch_idx, axis=1)
            dot = cov12 @ np.linalg.inv(cov22)
            self.cache[key] = (dot, cov11 - dot @ cov21)
        dot, cond_cov = self.cache[key]
        return mu1 + dot @ (x2 - mu2), cond_cov


@pytest.mark.parametrize("offset", [(2, 2), (0, 3), (4, 1)])
def test_per_channel_released_matches_the_transcribed_cache(rng, offset):
    k, pad, channels = 2, 2, 3
    p = k + 2 * pad
    means = rng.normal(size=(channels, p * p))
    covs = np.stack([random_spd(rng, p * p) for _ in range(channels)])
    released = ConditionalGaussianSampler(means, covs, k, pad, colour="per-channel-released",
                                          channels=channels)
    intended = ConditionalGaussianSampler(means, covs, k, pad, colour="per-channel",
                                          channels=channels)
    patch = rng.normal(size=(channels, p * p))
    idx = np.array(window_indices(1, p, p, *offset, k, k))
    oracle = ReleasedConditionals(means, covs)
    for c, (ours, theirs) in enumerate(zip(released.conditional(offset),
                                           intended.conditional(offset))):
        idx1, idx2, mu1, mu2, a, lower = ours
        np.testing.assert_array_equal(idx1, idx)
        cond_mean, cond_cov = oracle(patch[c], idx, c)
        np.testing.assert_allclose(mu1 + a @ (patch[c, idx2] - mu2), cond_mean, atol=1e-10)
        np.testing.assert_allclose(lower @ lower.T, cond_cov, atol=1e-10)
        if c:  # channels 1, 2: channel 0's regression and covariance, not their own
            assert not np.allclose(a, theirs[4])
            np.testing.assert_array_equal(a, released.conditional(offset)[0][4])
        else:
            np.testing.assert_allclose(a, theirs[4], atol=1e-12)


def test_per_channel_released_samples_use_the_shared_conditionals(rng):
    k, pad = 2, 1
    pool = smooth_pool(rng, n=40, size=(9, 9))
    sampler = ConditionalGaussianSampler.fit(pool, k, pad, colour="per-channel-released",
                                             num_patches=3000, clip=False, rng=1)
    x = pool[0]
    top_left = np.array([[3, 4]])
    got = sampler.sample(x, top_left, k, 5, streams(1, seed=9))
    oracle = ReleasedConditionals(sampler.mean, sampler.cov)
    noise = streams(1, seed=9)[0].standard_normal((5, 3, k * k))
    patch = x[:, 2:6, 3:7].reshape(3, -1).astype(np.float64)
    idx = np.array(window_indices(1, 4, 4, 1, 1, k, k))
    for c in range(3):
        cond_mean, cond_cov = oracle(patch[c], idx, c)
        want = cond_mean + noise[:, c] @ np.linalg.cholesky(cond_cov).T
        np.testing.assert_allclose(got[0, :, c].reshape(5, -1), want, rtol=1e-4, atol=1e-4)


def test_per_channel_released_round_trips_and_is_described(rng, tmp_path):
    pool = smooth_pool(rng, n=10, size=(8, 8))
    sampler = ConditionalGaussianSampler.fit(pool, 2, 1, colour="per-channel-released",
                                             num_patches=500, rng=0)
    sampler.save(tmp_path / "s.npz")
    loaded = ConditionalGaussianSampler.load(tmp_path / "s.npz")
    assert loaded.colour == "per-channel-released" == sampler.describe()["colour"]


def test_released_patches_count(rng):
    pool = smooth_pool(rng, n=7, size=(8, 9))
    sampler = ConditionalGaussianSampler.fit(pool, 2, 1, num_patches=20, rng=0,
                                             patches="released")
    assert sampler.num_patches == (int(20 / 7) + 1) * 7  # 3 positions from all 7 images


def test_released_patches_one_position_per_channel_from_all_images(rng):
    """Fewer patches than images: one position per channel, taken from every image; the
    positions differ between channels and never touch the last patch row or column."""
    m, (h, w), k, pad = 50, (9, 10), 2, 1
    p = k + 2 * pad
    pool = smooth_pool(rng, n=m, size=(h, w))
    pool[:, :] = pool[:, :1]  # identical channels: only the positions can tell them apart
    found = []
    for seed in range(6):
        sampler = ConditionalGaussianSampler.fit(pool, k, pad, num_patches=20, rng=seed,
                                                 patches="released", clip=False)
        assert sampler.num_patches == m
        for c in range(3):
            matches = [(r, q) for r in range(h - p + 1) for q in range(w - p + 1)
                       if np.allclose(sampler.mean[c],
                                      pool[:, c, r:r + p, q:q + p].reshape(m, -1).mean(0))]
            assert len(matches) == 1
            r, q = matches[0]
            assert r < h - p and q < w - p  # the last patch row/column is never drawn
            patches = pool[:, c, r:r + p, q:q + p].reshape(m, -1).astype(np.float64)
            np.testing.assert_allclose(sampler.cov[c], np.cov(patches, rowvar=False),
                                       rtol=1e-10, atol=1e-10)
            found.append(matches[0])
    assert len(set(found)) > 3


def test_released_patches_never_draw_the_last_row_or_column(rng):
    pool = np.zeros((20, 1, 6, 6), np.float32)
    pool[:, :, -1, :] = pool[:, :, :, -1] = 100.0  # seen only by the last patch row/column
    released = ConditionalGaussianSampler.fit(pool, 2, 1, num_patches=4000, rng=0,
                                              patches="released")
    assert released.mean.max() == 0.0
    drawn = ConditionalGaussianSampler.fit(pool, 2, 1, num_patches=4000, rng=0)
    assert drawn.mean.max() > 0.0


def test_released_patches_errors(rng):
    pool = smooth_pool(rng, n=5, size=(6, 6))
    with pytest.raises(InvalidArgument, match="patches must be one of"):
        ConditionalGaussianSampler.fit(pool, 2, 1, rng=0, patches="all")
    with pytest.raises(InvalidArgument, match="one pixel larger than the 6x6 patch"):
        ConditionalGaussianSampler.fit(pool, 2, 2, rng=0, patches="released")
