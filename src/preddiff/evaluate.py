"""Quantitative evaluation of explanations: how faithful is each relevance map?

The paper compares explanations by eye. This module gives numbers, as pure functions over
NumPy arrays and a ``classifier(batch) -> {blob: array}`` callable (the same protocol as
:func:`preddiff.prediction_difference`):

* **Deletion and insertion curves** (Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling
  for Explanation of Black-box Models", BMVC 2018, §4.1). Deletion removes the pixels in order
  of decreasing relevance, a few percent per step, starting from the image, and tracks the
  class probability; insertion starts from the fully removed image and reveals the pixels in
  the same order. The area under each curve (trapezoid rule over the fraction of pixels,
  :func:`area_under_curve`) summarises it: low deletion AUC and high insertion AUC are good.
* **Negative evidence.** A signed map (PDA's weight of evidence) also claims which pixels speak
  *against* the class. Deleting the most negative pixels first (``order="negative"``) must then
  raise the class probability; :func:`probability_change` reads the change off that curve.
  Unsigned maps (the sensitivity map) make no such claim: report n/a for them.
* **Model-randomisation sanity check** (Adebayo et al., "Sanity Checks for Saliency Maps",
  NeurIPS 2018, §3): the weights of the parameterised layers are re-randomised in a cascade from
  the output layer downwards (:func:`cascading_randomisation`); a faithful explanation must
  change, measured by the Spearman rank correlation and the SSIM between the original and the
  randomised maps (:func:`map_similarity`); high similarity flags a map that ignores the model.

Removed pixels are *filled*; the fill changes the scores, so every number must name its fill:

``mean``
    A constant: by default the pool's per-channel mean (:meth:`MeanFill.from_pool`); for the
    zoo nets 0, the training-set mean their preprocessing subtracts (the grey of an occluding
    patch).
``marginal``
    Pixels of another image of the pool at the same place (one pool image per fill draw, the
    same for every step of a curve), as PDA's marginal sampler does for a window.
``conditional``
    A Gaussian over (k+2l)×(k+2l) patches (the fitted
    :class:`~preddiff.samplers.ConditionalGaussianSampler`'s mean and covariance), conditioned
    on the patch's *kept* pixels, whatever their arrangement. See :class:`ConditionalFill`
    for exactly how an image is tiled into patches.

Random fills are averaged over ``num_draws`` seeded draws. A pixel means all colour channels
at one place, as PDA's windows do.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np

from .errors import InvalidArgument

FILLS = ("marginal", "conditional", "mean")
ORDERS = ("positive", "negative")

Classifier = Callable[[np.ndarray], Mapping[str, np.ndarray]]


def _generator(rng) -> np.random.Generator:
    """``rng`` as a Generator (a Generator or an int seed; never unseeded)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise InvalidArgument(f"rng must be a numpy.random.Generator or an int seed, got {rng!r}")


def _check_image(x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 3:
        raise InvalidArgument(f"x must be an image of shape (C, H, W), got shape {x.shape}")
    return x


def _check_map(relevance, shape) -> np.ndarray:
    relevance = np.asarray(relevance, dtype=np.float64)
    if relevance.shape != tuple(shape):
        raise InvalidArgument(
            f"relevance must have the image's spatial shape {tuple(shape)}, got {relevance.shape}")
    if not np.all(np.isfinite(relevance)):
        raise InvalidArgument("relevance contains NaN or infinite values")
    return relevance


# --------------------------------------------------------------------------------------------
# Pixel orderings and step masks
# --------------------------------------------------------------------------------------------

def pixel_order(relevance, *, order: str = "positive", rng=None) -> np.ndarray:
    """Flat pixel indices in the order a deletion or insertion curve visits them.

    Parameters
    ----------
    relevance : ndarray, shape (H, W)
        One relevance value per pixel.
    order : {"positive", "negative"}
        ``positive``: decreasing relevance (the strongest evidence *for* the class first, as in
        RISE). ``negative``: increasing relevance (the strongest evidence *against* first);
        meaningful only for signed maps.
    rng : Generator or int, optional
        Breaks ties at random (a map with flat regions would otherwise be visited in raster
        order, which favours neither map but is not an ordering the map claims). ``None``
        breaks ties by raster order.

    Returns
    -------
    ndarray, shape (H*W,), int
    """
    if order not in ORDERS:
        raise InvalidArgument(f"order must be one of {ORDERS}, got {order!r}")
    values = np.asarray(relevance, dtype=np.float64).ravel()
    key = -values if order == "positive" else values
    if rng is None:
        return np.argsort(key, kind="stable")
    tiebreak = _generator(rng).permutation(values.size)
    return np.lexsort((tiebreak, key))


def step_fractions(num_pixels: int, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel counts and fractions of the curve's steps, 0 to all pixels.

    Parameters
    ----------
    num_pixels : int
        H·W.
    step : float
        Fraction of the pixels per step, in (0, 1]; the number of steps is ``ceil(1/step)``.

    Returns
    -------
    counts : ndarray, shape (T+1,), int
        Pixels removed (deletion) or revealed (insertion) at each step; ``counts[0] = 0``,
        ``counts[-1] = num_pixels``.
    fractions : ndarray, shape (T+1,), float
        ``counts / num_pixels``, the curve's x-axis.
    """
    if not (isinstance(step, (float, int, np.floating)) and 0 < step <= 1):
        raise InvalidArgument(f"step must be a fraction of the pixels in (0, 1], got {step!r}")
    if 4 * step * num_pixels < 1 - 1e-9:  # e.g. 1e-9: a billion steps, gigabytes of masks
        raise InvalidArgument(
            f"step {step:g} is less than a quarter of a pixel of the {num_pixels}: a curve "
            f"would have {int(np.ceil(1.0 / step - 1e-9)):,} steps; give a step of at least "
            f"1/{num_pixels} = {1.0 / num_pixels:.6g} (one pixel a step)")
    num_steps = int(np.ceil(1.0 / step - 1e-9))
    counts = np.round(np.linspace(0, num_pixels, num_steps + 1)).astype(np.int64)
    return counts, counts / num_pixels


def _kept_masks(order_idx, counts, shape, kind):
    """Boolean (T+1, H, W): True where the image's own pixel is kept at each step."""
    rank = np.empty(order_idx.size, dtype=np.int64)
    rank[order_idx] = np.arange(order_idx.size)
    rank = rank.reshape(shape)
    visited = rank[None] < counts[:, None, None]  # the first counts[t] pixels of the order
    return ~visited if kind == "deletion" else visited


# --------------------------------------------------------------------------------------------
# Fills
# --------------------------------------------------------------------------------------------

class Fill(Protocol):
    """What replaces removed pixels.

    ``fill(x, keep, rng)`` takes the image ``x`` (C, H, W) and boolean masks ``keep``
    (T, H, W) and returns (T, C, H, W): ``x`` where ``keep`` is True, the fill elsewhere. One
    call is one *draw*: a random fill draws once per call (a marginal fill takes one pool
    image for all T masks). ``name`` is the fill's short name, ``describe()`` its settings.
    """

    name: str
    random: bool

    def __call__(self, x: np.ndarray, keep: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        ...

    def describe(self) -> str:
        ...


def _compose(x, keep, filler):
    """x where keep, filler elsewhere; filler broadcasts to (T, C, H, W)."""
    return np.where(keep[:, None], x[None], filler).astype(x.dtype, copy=False)


@dataclass
class MeanFill:
    """Constant fill: ``value`` per channel (a grey patch; 0 in mean-subtracted space).

    Parameters
    ----------
    value : float or array, shape (C,)
    """

    value: np.ndarray | float = 0.0
    name: str = field(default="mean", init=False)
    random: bool = field(default=False, init=False)

    @classmethod
    def from_pool(cls, pool) -> "MeanFill":
        """The per-channel mean of ``pool`` (M, C, H, W)."""
        pool = np.asarray(pool)
        if pool.ndim != 4:
            raise InvalidArgument(f"pool must have shape (M, C, H, W), got {pool.shape}")
        return cls(pool.mean(axis=(0, 2, 3), dtype=np.float64))

    def __call__(self, x, keep, rng=None):
        x = _check_image(x)
        value = np.asarray(self.value, dtype=np.float64)
        if value.ndim:
            if value.size != x.shape[0]:
                raise InvalidArgument(f"the mean fill has {value.size} channel values, "
                                      f"the image {x.shape[0]} channels")
            value = value.reshape(-1, 1, 1)
        return _compose(x, np.asarray(keep, dtype=bool), value[None])

    def describe(self) -> str:
        v = np.atleast_1d(np.asarray(self.value, dtype=np.float64))
        return "mean (constant " + ", ".join(f"{u:.4g}" for u in v) + " per channel)"


@dataclass
class MarginalFill:
    """Marginal fill: the removed pixels of ``x`` come from one other image of ``pool``.

    Parameters
    ----------
    pool : ndarray, shape (M, C, H, W)
        Images in the classifier's input space, not containing ``x`` itself.
    """

    pool: np.ndarray
    name: str = field(default="marginal", init=False)
    random: bool = field(default=True, init=False)

    def __post_init__(self):
        self.pool = np.asarray(self.pool)
        if self.pool.ndim != 4 or len(self.pool) < 1:
            raise InvalidArgument(
                f"pool must have shape (M, C, H, W) with M >= 1, got {self.pool.shape}")

    def __call__(self, x, keep, rng):
        x = _check_image(x)
        if self.pool.shape[1:] != x.shape:
            raise InvalidArgument(
                f"pool images have shape {self.pool.shape[1:]}, the image {x.shape}")
        donor = self.pool[_generator(rng).integers(len(self.pool))]
        return _compose(x, np.asarray(keep, dtype=bool), donor[None])

    def describe(self) -> str:
        return f"marginal (pixels of one of {len(self.pool)} pool images per draw)"


def _cholesky(matrix, scale=None):
    """Lower Cholesky factor of a symmetric positive semi-definite matrix; where it is
    singular to working precision, ``ε · scale · I`` is added with ε = 1e-10, 1e-8, … 1e-2
    until the factorisation succeeds (the conditional sampler's jitter rule, starting lower
    because a conditional covariance is often nearly singular). ``scale`` defaults to the
    mean of the diagonal; pass the full covariance's, so that a conditional covariance of
    zero gets a jitter small relative to the data."""
    try:
        return np.linalg.cholesky(matrix)
    except np.linalg.LinAlgError:
        pass
    if scale is None:
        scale = float(np.mean(np.diag(matrix))) if matrix.size else 1.0
    scale = scale if np.isfinite(scale) and scale > 0 else 1.0
    eye = np.eye(len(matrix))
    for exponent in range(-10, -1, 2):
        try:
            return np.linalg.cholesky(matrix + 10.0 ** exponent * scale * eye)
        except np.linalg.LinAlgError:
            continue
    raise InvalidArgument("the fill's covariance is not positive semi-definite "
                          "(non-finite values in the Gaussian?)")


def gaussian_conditional(mean, cov, values, observed):
    """Mean and covariance of a Gaussian's unobserved entries given the observed ones.

    ``μ_m + Σ_mo Σ_oo⁻¹ (v_o − μ_o)`` and ``Σ_mm − Σ_mo Σ_oo⁻¹ Σ_om`` (the formula of the
    paper's conditional sampler, §3.1 eq. (6) and §4, for an arbitrary observed index set).
    ``Σ_oo`` is inverted through its Cholesky factor (jittered if singular, see
    :func:`_cholesky`).

    Parameters
    ----------
    mean : ndarray, shape (D,)
    cov : ndarray, shape (D, D)
    values : ndarray, shape (D,)
        Only the observed entries are read.
    observed : ndarray of bool, shape (D,)

    Returns
    -------
    cond_mean : ndarray, shape (m,)
    cond_cov : ndarray, shape (m, m)
        ``m`` = number of unobserved entries, in index order.
    """
    gain, cond_cov = _conditional_factors(mean, cov, np.asarray(observed, dtype=bool))
    observed = np.asarray(observed, dtype=bool)
    cond_mean = mean[~observed] + gain @ (values[observed] - mean[observed])
    return cond_mean, cond_cov


def _conditional_factors(mean, cov, observed):
    """``(Σ_mo Σ_oo⁻¹, Σ_mm − Σ_mo Σ_oo⁻¹ Σ_om)`` for the boolean ``observed``."""
    import scipy.linalg

    missing = ~observed
    cov_mm = cov[np.ix_(missing, missing)]
    if not observed.any():
        return np.zeros((int(missing.sum()), 0)), cov_mm
    cov_oo = cov[np.ix_(observed, observed)]
    cov_mo = cov[np.ix_(missing, observed)]
    gain = scipy.linalg.cho_solve((_cholesky(cov_oo), True), cov_mo.T).T  # (m, o)
    cond_cov = cov_mm - gain @ cov_mo.T
    return gain, 0.5 * (cond_cov + cond_cov.T)


def tile_origins(size: int, patch: int) -> np.ndarray:
    """Top (or left) corners of the patch tiling of one axis: 0, P, 2P, … and, where the
    axis is not a multiple of P, a last tile shifted to end at the border (it overlaps)."""
    if patch > size:
        raise InvalidArgument(f"the fill's patch ({patch}) is larger than the image ({size})")
    starts = list(range(0, size - patch + 1, patch))
    if starts[-1] + patch < size:
        starts.append(size - patch)
    return np.asarray(starts)


class ConditionalFill:
    """Conditional Gaussian fill of arbitrary pixel sets, patch tile by patch tile.

    The Gaussian is the conditional sampler's: ``N(μ, Σ)`` over the values of a Ph×Pw patch
    (Ph = kh + 2l), in G groups — one per channel (``per-channel``, released code) or one
    over all channels (``joint``, paper text). To fill an image whose *kept* pixels form any
    set, the image is tiled by patches: origins 0, Ph, 2Ph, … on the rows (Pw on the columns),
    plus a last tile shifted inward to end at the border when the size is not a multiple of
    the patch (:func:`tile_origins`). Tiles are processed in raster order. In each tile the
    *observed* values are the image's kept pixels and the pixels that earlier, overlapping
    tiles already filled; the tile's other pixels are drawn jointly from the Gaussian
    conditioned on the observed ones (the Gaussian conditional of §3.1 eq. (6) and §4, for an
    arbitrary observed index set; see :func:`gaussian_conditional`). A tile with no kept pixel
    is a draw from the unconditional patch Gaussian; the fill is coherent within a tile and
    linked across tiles
    only through the overlaps. Every step of a curve is conditioned anew (the kept set
    differs). With clip bounds, filled values are clipped to the pool's per-pixel range, as
    the sampler clips its samples.

    Parameters
    ----------
    mean : ndarray, shape (G, D)
    cov : ndarray, shape (G, D, D)
        ``G = C, D = Ph·Pw`` for ``per-channel``; ``G = 1, D = C·Ph·Pw`` for ``joint``; values
        ordered (channel, row, column) — the layout of
        :class:`~preddiff.samplers.ConditionalGaussianSampler`.
    patch : int or (int, int)
        (Ph, Pw).
    channels : int
        C.
    lo, hi : ndarray, shape (C, H, W), optional
        Clip bounds.
    """

    name = "conditional"
    random = True

    def __init__(self, mean, cov, patch, *, channels, lo=None, hi=None):
        self.patch = (int(patch), int(patch)) if np.ndim(patch) == 0 else tuple(map(int, patch))
        self.channels = int(channels)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.cov = np.asarray(cov, dtype=np.float64)
        ph, pw = self.patch
        if self.mean.ndim != 2 or self.cov.shape != self.mean.shape + self.mean.shape[1:] or \
                self.mean.shape[0] * self.mean.shape[1] != self.channels * ph * pw:
            raise InvalidArgument(
                f"mean {self.mean.shape} and cov {self.cov.shape} do not fit a Gaussian over "
                f"{ph}x{pw} patches of {self.channels} channels")
        self.groups = self.mean.shape[0]
        self.lo = None if lo is None else np.asarray(lo)
        self.hi = None if hi is None else np.asarray(hi)
        # Precision matrices Λ = Σ⁻¹ (Σ jittered if singular, as the sampler does), once.
        self.precision = np.empty_like(self.cov)
        for g in range(self.groups):
            lower = _cholesky(self.cov[g])
            inv_lower = np.linalg.inv(lower)
            self.precision[g] = inv_lower.T @ inv_lower
        self._factors: dict = {}
        self._cached_bytes = 0

    CACHE_BYTES = 64 * 2**20
    """Memory for the Cholesky factors of ``Λ_mm`` reused across steps, draws and maps (the
    same tile masks recur): the cache is cleared when it would exceed this."""

    def _conditional(self, g, observed):
        """Lower Cholesky factor of ``Λ_mm`` (the precision of the missing entries of group
        ``g`` given the ``observed`` ones; their conditional covariance is ``Λ_mm⁻¹``),
        cached by the mask."""
        key = (g, observed.tobytes())
        lower = self._factors.get(key)
        if lower is None:
            missing = ~observed
            lam = self.precision[g][np.ix_(missing, missing)]
            lower = _cholesky(0.5 * (lam + lam.T))
            if self._cached_bytes + lower.nbytes > self.CACHE_BYTES:
                self._factors.clear()
                self._cached_bytes = 0
            self._factors[key] = lower
            self._cached_bytes += lower.nbytes
        return lower

    def _draw(self, g, values, observed, rng):
        """The missing entries of one group drawn given the observed ones.

        In precision form (equivalent to the sampler's ``μ1 + Σ12 Σ22⁻¹ (x2 − μ2)`` and
        ``Σ11 − Σ12 Σ22⁻¹ Σ21``): mean ``μ_m − Λ_mm⁻¹ Λ_mo (x_o − μ_o)``, covariance ``Λ_mm⁻¹``.
        Only ``Λ_mm`` is factorised per mask (``L Lᵀ``); the rest are matrix-vector
        products and triangular solves, and the noise is ``L⁻ᵀ ε``.
        """
        import scipy.linalg

        lower = self._conditional(g, observed)
        missing = ~observed
        mu = self.mean[g]
        rhs = self.precision[g][np.ix_(missing, observed)] @ (values[observed] - mu[observed])
        shift = scipy.linalg.cho_solve((lower, True), rhs)
        noise = scipy.linalg.solve_triangular(lower, rng.standard_normal(len(lower)),
                                              lower=True, trans="T")
        return mu[missing] - shift + noise

    @classmethod
    def from_sampler(cls, sampler) -> "ConditionalFill":
        """The Gaussian of a fitted :class:`~preddiff.samplers.ConditionalGaussianSampler`:
        its mean, its covariance plus the diagonal jitter it added (``sampler.jitter``), its
        patch shape and, if it clips, its per-pixel clip bounds."""
        cov = np.array(sampler.cov, dtype=np.float64)
        for g, jitter in enumerate(np.atleast_1d(getattr(sampler, "jitter", 0.0))):
            cov[g][np.diag_indices(cov.shape[1])] += jitter
        return cls(sampler.mean, cov, sampler.patch_shape, channels=sampler.channels,
                   lo=sampler.pool_min, hi=sampler.pool_max)

    def fill_one(self, x, keep, rng) -> np.ndarray:
        """One filled image (C, H, W), float64, for one kept mask (H, W)."""
        out = np.array(x, dtype=np.float64)
        C, H, W = out.shape
        if C != self.channels:
            raise InvalidArgument(f"the fill's Gaussian has {self.channels} channels, "
                                  f"the image {C}")
        ph, pw = self.patch
        keep = np.asarray(keep, dtype=bool)
        known = keep.copy()
        per_group = C // self.groups
        for r in tile_origins(H, ph):
            for c in tile_origins(W, pw):
                tile_known = known[r:r + ph, c:c + pw]
                if tile_known.all():
                    continue
                observed = np.tile(tile_known.ravel(), per_group)
                tile = out[:, r:r + ph, c:c + pw].reshape(self.groups, -1)  # a copy
                for g in range(self.groups):
                    tile[g, ~observed] = self._draw(g, tile[g], observed, rng)
                out[:, r:r + ph, c:c + pw] = tile.reshape(C, ph, pw)
                known[r:r + ph, c:c + pw] = True
        if self.lo is not None and self.hi is not None:
            out = np.where(keep[None], out, np.clip(out, self.lo, self.hi))
        return out

    def __call__(self, x, keep, rng):
        x = _check_image(x)
        rng = _generator(rng)
        return np.stack([self.fill_one(x, k, rng)
                         for k in np.asarray(keep, dtype=bool)]).astype(x.dtype, copy=False)

    def describe(self) -> str:
        colour = "per-channel" if self.groups == self.channels and self.channels > 1 else \
            ("joint" if self.channels > 1 else "1 channel")
        return (f"conditional (Gaussian over {self.patch[0]}x{self.patch[1]} patches, {colour}, "
                f"conditioned on the kept pixels tile by tile"
                + (", clipped to the pool range)" if self.lo is not None else ")"))


def make_fill(name: str, *, pool=None, sampler=None, value=None) -> Fill:
    """A fill by name: ``mean`` (``value`` or the pool's per-channel mean), ``marginal``
    (needs ``pool``), ``conditional`` (needs a fitted conditional ``sampler``)."""
    if name == "mean":
        if value is not None:
            return MeanFill(value)
        if pool is None:
            raise InvalidArgument("the mean fill needs a pool or a value")
        return MeanFill.from_pool(pool)
    if name == "marginal":
        if pool is None:
            raise InvalidArgument("the marginal fill needs a pool of images")
        return MarginalFill(pool)
    if name == "conditional":
        if sampler is None:
            raise InvalidArgument("the conditional fill needs a fitted conditional sampler")
        return ConditionalFill.from_sampler(sampler)
    raise InvalidArgument(f"fill must be one of {FILLS}, got {name!r}")


# --------------------------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------------------------

def area_under_curve(fractions, values) -> float:
    """Trapezoid-rule area under ``values`` over ``fractions`` (both shape (T,)); for a
    curve over the fraction of pixels in [0, 1] the area lies in the range of ``values``."""
    f = np.asarray(fractions, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if f.shape != v.shape or f.ndim != 1 or f.size < 2:
        raise InvalidArgument(
            f"fractions and values must be 1-d of the same length >= 2, got {f.shape}, {v.shape}")
    if np.any(np.diff(f) < 0):
        raise InvalidArgument("fractions must be non-decreasing")
    return float(np.sum(np.diff(f) * (v[1:] + v[:-1]) / 2.0))


@dataclass(frozen=True)
class Curve:
    """A deletion or insertion curve.

    Attributes
    ----------
    fractions : ndarray, shape (T,)
        Fraction of pixels removed (deletion) or revealed (insertion).
    probabilities : ndarray, shape (D, T)
        The class's value in ``blob`` after each step, for each of the D fill draws.
    kind : {"deletion", "insertion"}
    order : {"positive", "negative"}
    fill : str
        The fill's description; report it with the numbers.
    """

    fractions: np.ndarray
    probabilities: np.ndarray
    kind: str
    order: str
    fill: str

    @property
    def mean(self) -> np.ndarray:
        """The curve averaged over the fill draws, shape (T,)."""
        return self.probabilities.mean(axis=0)

    @property
    def auc(self) -> float:
        """Area under the mean curve (= the mean of the draws' areas)."""
        return area_under_curve(self.fractions, self.mean)

    def at(self, fraction: float) -> float:
        """The mean curve at ``fraction`` (linear interpolation between steps)."""
        return float(np.interp(fraction, self.fractions, self.mean))


def class_scores(classifier: Classifier, images, unit: int, *, blob: str = "prob",
                 batch_size: int = 256) -> np.ndarray:
    """``classifier(images)[blob][:, unit]`` evaluated in batches; shape (N,), float64."""
    images = np.asarray(images, dtype=np.float32)
    out = []
    for start in range(0, len(images), batch_size):
        blobs = classifier(images[start:start + batch_size])
        if blob not in blobs:
            raise InvalidArgument(f"blob {blob!r} not among the classifier's outputs "
                                  f"{sorted(blobs)}")
        values = np.asarray(blobs[blob]).reshape(len(images[start:start + batch_size]), -1)
        out.append(values[:, unit].astype(np.float64))
    scores = np.concatenate(out)
    if not np.all(np.isfinite(scores)):
        raise InvalidArgument("the classifier returned NaN or infinite values")
    return scores


def _curve(kind, x, relevance, classifier, unit, fill, *, step, order, num_draws, blob,
           batch_size, rng):
    x = _check_image(x)
    relevance = _check_map(relevance, x.shape[1:])
    if int(num_draws) < 1:
        raise InvalidArgument(f"num_draws must be >= 1, got {num_draws!r}")
    rng = _generator(rng)
    idx = pixel_order(relevance, order=order, rng=rng)
    counts, fractions = step_fractions(relevance.size, step)
    keep = _kept_masks(idx, counts, relevance.shape, kind)
    draws = int(num_draws) if fill.random else 1
    probs = np.stack([
        class_scores(classifier, fill(x, keep, rng), unit, blob=blob, batch_size=batch_size)
        for _ in range(draws)])
    return Curve(fractions, probs, kind, order, fill.describe())


def deletion_curve(x, relevance, classifier: Classifier, unit: int, fill: Fill, *,
                   step: float = 0.05, order: str = "positive", num_draws: int = 3,
                   blob: str = "prob", batch_size: int = 256, rng) -> Curve:
    """Deletion curve (RISE §4.1): fill the pixels in order of relevance, track ``unit``.

    Step t removes the first ``round(t·step·H·W)`` pixels of :func:`pixel_order` (all
    channels) and replaces them by ``fill``; step 0 is the image itself, the last step the
    fully filled image.

    Parameters
    ----------
    x : ndarray, shape (C, H, W)
        The image in the classifier's input space.
    relevance : ndarray, shape (H, W)
        The map to evaluate.
    classifier : callable
        (N, C, H, W) float32 -> {blob: (N, K)}.
    unit : int
        The explained class.
    fill : Fill
        :class:`MeanFill`, :class:`MarginalFill`, :class:`ConditionalFill` or your own.
    step : float
        Fraction of pixels per step.
    order : {"positive", "negative"}
        Most relevant first (the RISE curve) or most negative first.
    num_draws : int
        Fill draws averaged (1 for a deterministic fill).
    rng : Generator or int
        Ties in the ordering and the fill draws.

    Returns
    -------
    Curve
        A lower area means the map found the pixels the class depends on.
    """
    return _curve("deletion", x, relevance, classifier, unit, fill, step=step, order=order,
                  num_draws=num_draws, blob=blob, batch_size=batch_size, rng=rng)


def insertion_curve(x, relevance, classifier: Classifier, unit: int, fill: Fill, *,
                    step: float = 0.05, order: str = "positive", num_draws: int = 3,
                    blob: str = "prob", batch_size: int = 256, rng) -> Curve:
    """Insertion curve (RISE §4.1): start from the fully filled image and reveal the
    pixels of ``x`` in order of relevance. Parameters as :func:`deletion_curve`; a higher area
    is better."""
    return _curve("insertion", x, relevance, classifier, unit, fill, step=step, order=order,
                  num_draws=num_draws, blob=blob, batch_size=batch_size, rng=rng)


def probability_change(curve: Curve, fraction: float = 0.1) -> float:
    """Change of the class probability after ``fraction`` of the pixels were deleted:
    ``curve.at(fraction) − curve.at(0)``. On a negative-first deletion curve a positive
    value confirms the map's negative evidence."""
    if not 0 <= fraction <= 1:
        raise InvalidArgument(f"fraction must lie in [0, 1], got {fraction!r}")
    return curve.at(fraction) - curve.at(0.0)


def evidence_change(curve: Curve, fraction: float = 0.1, *, num_classes: int,
                    laplace_n: float = 100000) -> float:
    """Like :func:`probability_change`, in bits: the change of ``log2 odds`` of the class,
    with PDA's Laplace correction ``p ← (p·N + 1)/(N + K)`` (eq. 4–5), between the image and
    the image with ``fraction`` of its pixels deleted. Unlike Δp it is not squashed when
    the classifier is already confident (Δp ≤ 1 − p)."""
    before, after = curve.at(0.0), curve.at(fraction)
    return float(log2_odds(after, num_classes, laplace_n) - log2_odds(before, num_classes,
                                                                      laplace_n))


def log2_odds(p, num_classes: int, laplace_n: float = 100000):
    """``log2(p' / (1 − p'))`` with ``p' = (p·N + 1)/(N + K)`` (the paper's eq. 4–5)."""
    q = (np.asarray(p, dtype=np.float64) * laplace_n + 1.0) / (laplace_n + num_classes)
    return np.log2(q) - np.log2(1.0 - q)


@dataclass(frozen=True)
class MapScores:
    """The faithfulness numbers of one map under one fill (see :func:`evaluate_map`)."""

    deletion: Curve
    insertion: Curve
    negative: Curve | None
    negative_fraction: float

    @property
    def negative_change(self) -> float:
        """Probability change after deleting the ``negative_fraction`` most negative pixels;
        NaN for unsigned maps."""
        if self.negative is None:
            return float("nan")
        return probability_change(self.negative, self.negative_fraction)

    def as_dict(self) -> dict:
        return {"deletion_auc": self.deletion.auc, "insertion_auc": self.insertion.auc,
                "negative_dp": self.negative_change}


def evaluate_map(x, relevance, classifier: Classifier, unit: int, fill: Fill, *,
                 signed: bool, step: float = 0.05, negative_fraction: float = 0.1,
                 num_draws: int = 3, blob: str = "prob", batch_size: int = 256,
                 rng) -> MapScores:
    """Deletion, insertion and (for a ``signed`` map) negative-first deletion curves of one
    map under one fill, with the same ``rng`` stream in that order."""
    rng = _generator(rng)
    kw = dict(step=step, num_draws=num_draws, blob=blob, batch_size=batch_size)
    deletion = deletion_curve(x, relevance, classifier, unit, fill, rng=rng, **kw)
    insertion = insertion_curve(x, relevance, classifier, unit, fill, rng=rng, **kw)
    negative = (deletion_curve(x, relevance, classifier, unit, fill, order="negative",
                               rng=rng, **kw) if signed else None)
    return MapScores(deletion, insertion, negative, negative_fraction)


# --------------------------------------------------------------------------------------------
# Model-randomisation sanity check
# --------------------------------------------------------------------------------------------

PARAMETERISED_OPS = ("Conv", "Gemm", "ConvTranspose", "MatMul")


def parameterised_layers(model) -> list[str]:
    """Names of the nodes with learned weights (Conv, Gemm, MatMul with an initializer),
    from the output backwards (ONNX graphs are topologically sorted)."""
    inits = {t.name for t in model.graph.initializer}
    names = []
    for i, node in enumerate(model.graph.node):
        if node.op_type in PARAMETERISED_OPS and any(n in inits for n in node.input):
            names.append(node.name or f"{node.op_type}_{i}")
    return names[::-1]


def cascading_randomisation(model, rng, *, layers: int | None = None,
                            keep: Sequence[int] | None = None) -> list[tuple[str, object]]:
    """Models with the top 1, 2, … parameterised layers re-randomised (Adebayo et al. §3.1).

    Each layer's weight and bias tensors are replaced, once, by draws from a normal
    distribution with zero mean and the standard deviation of the original tensor (a bias
    whose values are all equal stays as it is), so the scale of the activations is kept
    and only the learned structure is destroyed. Stage j holds the replacements of the
    layers of stages < j too (cascade), with identical values.

    Parameters
    ----------
    model : onnx.ModelProto
        Not modified.
    rng : Generator or int
    layers : int, optional
        Stop after this many layers (default: all).
    keep : sequence of int, optional
        Return only the stages with these numbers of randomised layers (1 = the top layer
        only), and the last stage; the others are computed but not copied (a deep net has
        dozens of stages and each copy holds all its weights).

    Returns
    -------
    list of (layer name, onnx.ModelProto)
        Stage j's name is the lowest layer randomised so far.
    """
    import onnx
    from onnx import numpy_helper

    rng = _generator(rng)
    names = parameterised_layers(model)
    if not names:
        raise InvalidArgument("the model has no Conv/Gemm/MatMul layer with weights")
    if layers is not None:
        if not 1 <= int(layers) <= len(names):
            raise InvalidArgument(f"layers must be in 1..{len(names)}, got {layers!r}")
        names = names[:int(layers)]
    inits = {t.name: t for t in model.graph.initializer}
    by_name = {(n.name or f"{n.op_type}_{i}"): n for i, n in enumerate(model.graph.node)}
    current = onnx.ModelProto()
    current.CopyFrom(model)
    wanted = None if keep is None else {int(k) for k in keep} | {len(names)}
    stages = []
    for number, name in enumerate(names, start=1):
        replaced = {}
        for tensor_name in by_name[name].input:
            if tensor_name not in inits:
                continue
            old = numpy_helper.to_array(inits[tensor_name])
            std = float(old.std())
            new = old if std == 0 else rng.normal(0.0, std, size=old.shape).astype(old.dtype)
            replaced[tensor_name] = numpy_helper.from_array(new, tensor_name)
        for tensor in current.graph.initializer:
            if tensor.name in replaced:
                tensor.CopyFrom(replaced[tensor.name])
        if wanted is not None and number not in wanted:
            continue
        stage = onnx.ModelProto()
        stage.CopyFrom(current)
        stages.append((name, stage))
    return stages


def _normalise(a, absolute):
    a = np.abs(a) if absolute else a
    scale = np.max(np.abs(a))
    return a / scale if scale > 0 else a


def map_similarity(original, randomised, *, absolute: bool = True) -> tuple[float, float]:
    """Spearman rank correlation and SSIM between two maps (Adebayo et al. §3).

    Parameters
    ----------
    original, randomised : ndarray, shape (H, W)
    absolute : bool
        Compare ``|map|`` (Adebayo et al.'s main comparison: ranks of importance regardless of
        sign) or the signed maps.

    Returns
    -------
    spearman : float
        ``scipy.stats.spearmanr`` over the pixels; NaN if a map is constant.
    ssim : float
        ``skimage.metrics.structural_similarity`` of the maps each divided by its largest
        absolute value (so that a change of scale alone is not counted as a change), with
        ``data_range`` = max − min over both normalised maps.
    """
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    a = np.asarray(original, dtype=np.float64)
    b = np.asarray(randomised, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise InvalidArgument(f"maps must be 2-d of the same shape, got {a.shape}, {b.shape}")
    a, b = _normalise(a, absolute), _normalise(b, absolute)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        rho = float("nan")
    else:
        rho = float(spearmanr(a.ravel(), b.ravel())[0])
    data_range = float(max(a.max(), b.max()) - min(a.min(), b.min())) or 1.0
    win = min(7, *a.shape)
    win -= 1 - win % 2  # odd
    ssim = float(structural_similarity(a, b, data_range=data_range, win_size=win))
    return rho, ssim


@dataclass(frozen=True)
class SanityCheck:
    """Similarity of a method's maps under cascading model randomisation.

    Attributes
    ----------
    layers : list of str
        Stage j: the layers ``layers[:j+1]`` (from the output down) are randomised.
    spearman_abs, ssim_abs, spearman_signed, ssim_signed : ndarray, shape (J,)
    """

    layers: list
    spearman_abs: np.ndarray
    ssim_abs: np.ndarray
    spearman_signed: np.ndarray
    ssim_signed: np.ndarray

    def insensitive(self, threshold: float = 0.5) -> bool:
        """True (the check flags the method) when the map of the fully randomised model
        still has a Spearman rank correlation of ``|map|`` of at least ``threshold`` with
        the original: the map does not depend on the weights."""
        return bool(self.spearman_abs[-1] >= threshold)


def sanity_check(explain: Callable[[object], np.ndarray], model, rng=None, *,
                 layers: int | None = None, stages=None) -> SanityCheck:
    """Cascading model-randomisation check of one explanation method on one input.

    Parameters
    ----------
    explain : callable
        ``explain(model) -> map (H, W)``: the method's map for the fixed input and class
        under ``model`` (an ``onnx.ModelProto``).
    model : onnx.ModelProto
    rng : Generator or int
        The random weights.
    layers : int, optional
        Randomise only the top ``layers`` layers.
    stages : list of (name, model), optional
        Randomised models made already (:func:`cascading_randomisation`); then ``rng`` and
        ``layers`` are not used.
    """
    original = np.asarray(explain(model), dtype=np.float64)
    if stages is None:
        stages = cascading_randomisation(model, rng, layers=layers)
    names, rows = [], []
    for name, randomised in stages:
        m = np.asarray(explain(randomised), dtype=np.float64)
        names.append(name)
        rows.append(map_similarity(original, m, absolute=True)
                    + map_similarity(original, m, absolute=False))
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    return SanityCheck(names, rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3])


def random_map(shape: Sequence[int], rng) -> np.ndarray:
    """The floor: a map of independent standard normal values (signed), shape ``shape``."""
    return _generator(rng).standard_normal(tuple(shape))


def mean_and_sem(values) -> tuple[float, float, int]:
    """Mean, standard error of the mean (ddof 1; NaN for one value) and count of the finite
    entries of ``values``."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), 0
    sem = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
    return float(v.mean()), sem, int(v.size)


# --------------------------------------------------------------------------------------------
# Comparing explanation methods (used by ``preddiff evaluate`` and reproduce/evaluation.py)
# --------------------------------------------------------------------------------------------

class ModelView:
    """A network under evaluation (an ``onnx.ModelProto``), with its backends built on use:
    :attr:`classifier` (onnxruntime, returning ``output``) for PDA, occlusion and the curves,
    :attr:`graph` (:class:`preddiff.graph.Graph`) for gradients."""

    def __init__(self, proto, *, output: str | None = None, batch_size: int = 256,
                 device: str = "auto"):
        self.proto = proto
        self.output = output or proto.graph.output[0].name
        self.batch_size = int(batch_size)
        self.device = device
        self._classifier = None
        self._graph = None

    def __getstate__(self):
        # sessions are rebuilt where the view is unpickled (a Dask worker), never shipped
        return dict(self.__dict__, _classifier=None, _graph=None)

    @property
    def classifier(self):
        if self._classifier is None:
            from .classifier import OnnxClassifier

            self._classifier = OnnxClassifier(self.proto, outputs=[self.output],
                                              batch_size=self.batch_size, device=self.device)
        return self._classifier

    @property
    def provider(self) -> str | None:
        """The onnxruntime execution provider that runs :attr:`classifier` (e.g.
        ``"CPUExecutionProvider"``), or None while no session was opened (nothing ran)."""
        return None if self._classifier is None else self._classifier.provider

    @property
    def graph(self):
        if self._graph is None:
            from .graph import Graph

            self._graph = Graph(self.proto)
        return self._graph


@dataclass(frozen=True)
class Method:
    """An explanation method under comparison.

    ``explain(model, x, unit, seed) -> (H, W)``: the map of class ``unit`` for image ``x``
    under ``model`` (a :class:`ModelView`); ``seed`` is the same for the original and the
    randomised models, so a method's own randomness does not count as a change in the sanity
    check. ``signed``: whether the map claims negative evidence.
    """

    key: str
    label: str
    signed: bool
    explain: Callable
    settings: str = ""


def standard_methods(*, pool, sampler, window, stride: int = 1, num_samples: int = 10,
                     grey=0.0, batch_size: int = 256) -> list[Method]:
    """The five explanations of the comparison.

    ``pda-marginal`` and ``pda-conditional``: PDA (weight of evidence of ``prob``) with
    :class:`~preddiff.samplers.MarginalSampler` (``order="random"``) on ``pool`` and the
    fitted conditional ``sampler``; ``occlusion``: the grey patch ``grey``
    (:func:`preddiff.occlusion.occlusion`), same windows; ``sensitivity``: the sensitivity map
    (:func:`preddiff.sensitivity_map`, released-code seeding, unsigned); ``random``: a
    standard-normal map from the seed (ignores the model).
    """
    from .analysis import prediction_difference
    from .occlusion import occlusion
    from .samplers import MarginalSampler
    from .sensitivity import sensitivity_map

    marginal = MarginalSampler(pool, order="random")
    pda = f"k={window}, stride={stride}, S={num_samples}"

    def pda_map(s):
        def explain(model, x, unit, seed):
            e = prediction_difference(x, model.classifier, s, window=window, stride=stride,
                                      num_samples=num_samples, blobs=(model.output,),
                                      probability_blobs=(model.output,),
                                      batch_size=batch_size, rng=seed, progress=False)
            return e.relevance_of(model.output, unit)
        return explain

    def occlusion_map(model, x, unit, seed):
        e = occlusion(x, model.classifier, window=window, stride=stride, value=grey,
                      blobs=(model.output,), probability_blobs=(model.output,),
                      batch_size=batch_size)
        return e.relevance_of(model.output, unit)

    def sensitivity(model, x, unit, seed):
        return sensitivity_map(x, model.graph, unit)

    def random(model, x, unit, seed):
        return random_map(np.shape(x)[1:], seed)

    grey_text = ", ".join(f"{v:g}" for v in np.atleast_1d(grey))
    return [
        Method("pda-marginal", "PDA marginal", True, pda_map(marginal), pda),
        Method("pda-conditional", "PDA conditional", True, pda_map(sampler),
               f"{pda}, l={sampler.padding}"),
        Method("occlusion", "occlusion (grey patch)", True, occlusion_map,
               f"k={window}, stride={stride}, value {grey_text}"),
        Method("sensitivity", "sensitivity map", False, sensitivity,
               "max_c |∂ penultimate/∂x|, seeded with the unit's value"),
        Method("random", "random map", True, random, "standard normal, seeded"),
    ]


def method_seed(seed: int, image_id: int, index: int) -> int:
    """The seed of method ``index`` on image ``image_id`` in a run with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(image_id), int(index)])
               .generate_state(1, np.uint64)[0] >> 1)


def fill_stream(name: str) -> int:
    """The key of the random stream of fill ``name`` in :func:`evaluate_image`: 1000 + its
    position in :data:`FILLS` for the built-in fills, a hash of the name for others. It
    depends on the name only, so a fill's curves do not change with the other fills run
    beside it (``--fill conditional`` alone gives the numbers of a run with every fill)."""
    if name in FILLS:
        return 1000 + FILLS.index(name)
    import zlib

    return 2000 + zlib.crc32(str(name).encode("utf-8"))


def evaluate_image(x, image_id: int, model: ModelView, methods: Sequence[Method],
                   fills: Mapping[str, Fill], *, stages: Sequence[tuple[str, ModelView]] = (),
                   seed: int = 0, step: float = 0.05, negative_fraction: float = 0.1,
                   num_draws: int = 3) -> dict[str, np.ndarray]:
    """Every number of the comparison for one image, as flat arrays (cacheable).

    The explained class is the model's top class. For each method: its map; for each fill:
    the mean deletion, insertion and (signed maps) negative-first deletion curves; for each
    randomisation stage: Spearman and SSIM on ``|map|`` and on the signed map. The fill draws
    use a stream that depends on (seed, image, fill name) only (:func:`fill_stream`), so
    every method meets the same donor images and noise (common random numbers: differences
    come from the orderings), and a fill's numbers do not depend on which other fills run.

    Returns
    -------
    dict
        ``unit``, ``probability``, ``fractions`` (T,), ``map/<method>`` (H, W),
        ``curve/<fill>/<method>/<deletion|insertion|negative>`` (T,) (NaN for unsigned maps'
        negative curve), ``similarity/<method>`` (J, 4): columns Spearman ``|map|``,
        SSIM ``|map|``, Spearman signed, SSIM signed.
    """
    x = np.asarray(_check_image(x), dtype=np.float32)
    probs = np.asarray(model.classifier(x[None])[model.output], dtype=np.float64).reshape(-1)
    unit = int(np.argmax(probs))
    out = {"unit": np.array(unit), "probability": np.array(probs[unit]),
           "num_classes": np.array(probs.size)}
    out["fractions"] = step_fractions(x.shape[1] * x.shape[2], step)[1]
    nan_curve = np.full(out["fractions"].shape, np.nan)
    for j, method in enumerate(methods):
        s = method_seed(seed, image_id, j)
        relevance = np.asarray(method.explain(model, x, unit, s), dtype=np.float64)
        out[f"map/{method.key}"] = relevance
        for fill_name, fill in fills.items():
            rng = np.random.default_rng([int(seed), int(image_id), fill_stream(fill_name)])
            scores = evaluate_map(x, relevance, model.classifier, unit, fill,
                                  signed=method.signed, step=step,
                                  negative_fraction=negative_fraction, num_draws=num_draws,
                                  blob=model.output, rng=rng)
            out[f"curve/{fill_name}/{method.key}/deletion"] = scores.deletion.mean
            out[f"curve/{fill_name}/{method.key}/insertion"] = scores.insertion.mean
            out[f"curve/{fill_name}/{method.key}/negative"] = (
                scores.negative.mean if scores.negative is not None else nan_curve)
        rows = []
        for _, randomised in stages:
            m = np.asarray(method.explain(randomised, x, unit, s), dtype=np.float64)
            rows.append(map_similarity(relevance, m, absolute=True)
                        + map_similarity(relevance, m, absolute=False))
        out[f"similarity/{method.key}"] = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    return out


SIMILARITY_COLUMNS = ("spearman_abs", "ssim_abs", "spearman_signed", "ssim_signed")


def summarise(results: Sequence[Mapping[str, np.ndarray]], methods: Sequence[Method],
              fills: Sequence[str], stage_names: Sequence[str], *,
              negative_fraction: float = 0.1) -> list[dict]:
    """Mean ± standard error over images of every metric: rows of a long table.

    Each row: ``method``, ``fill`` ("-" for the randomisation metrics, which do not depend
    on a fill), ``metric``, ``mean``, ``sem``, ``n``. Metrics: ``deletion_auc`` (lower is
    better), ``insertion_auc`` (higher), ``negative_dp`` (probability change after deleting
    the ``negative_fraction`` most negative pixels; higher confirms the negative evidence;
    NaN = n/a for unsigned maps), ``negative_dbits`` (the same change in Laplace-corrected
    log2 odds, :func:`log2_odds`, which a confident classifier does not squash), and per
    randomisation stage ``<column>@<layer>``.
    """
    rows = []
    for method in methods:
        for fill in fills:
            per = {"deletion_auc": [], "insertion_auc": [], "negative_dp": [],
                   "negative_dbits": []}
            for r in results:
                fr = r["fractions"]
                per["deletion_auc"].append(
                    area_under_curve(fr, r[f"curve/{fill}/{method.key}/deletion"]))
                per["insertion_auc"].append(
                    area_under_curve(fr, r[f"curve/{fill}/{method.key}/insertion"]))
                neg = r[f"curve/{fill}/{method.key}/negative"]
                signed = bool(np.all(np.isfinite(neg)))
                after = float(np.interp(negative_fraction, fr, neg)) if signed else np.nan
                per["negative_dp"].append(after - neg[0] if signed else np.nan)
                k = int(r["num_classes"])
                per["negative_dbits"].append(
                    float(log2_odds(after, k) - log2_odds(neg[0], k)) if signed else np.nan)
            for metric, values in per.items():
                mean, sem, n = mean_and_sem(values)
                rows.append(dict(method=method.key, fill=fill, metric=metric, mean=mean,
                                 sem=sem, n=n))
        for j, layer in enumerate(stage_names):
            for c, column in enumerate(SIMILARITY_COLUMNS):
                mean, sem, n = mean_and_sem([r[f"similarity/{method.key}"][j, c]
                                             for r in results])
                rows.append(dict(method=method.key, fill="-", metric=f"{column}@{layer}",
                                 mean=mean, sem=sem, n=n))
    return rows


def _cell(rows, method, fill, metric, digits=3):
    for r in rows:
        if (r["method"], r["fill"], r["metric"]) == (method, fill, metric):
            if r["n"] == 0 or not np.isfinite(r["mean"]):
                return "n/a"
            if not np.isfinite(r["sem"]):
                return f"{r['mean']:.{digits}f}"
            return f"{r['mean']:.{digits}f} ± {r['sem']:.{digits}f}"
    return "n/a"


def _best(rows, methods, fill, metric, lower):
    """Key of the method with the best mean (ignoring the random floor), or None."""
    cands = [(r["mean"], r["method"]) for r in rows
             if r["fill"] == fill and r["metric"] == metric and r["method"] != "random"
             and r["n"] and np.isfinite(r["mean"])]
    if not cands:
        return None
    return (min if lower else max)(cands)[1]


def markdown_tables(rows: Sequence[Mapping], methods: Sequence[Method], fills: Mapping[str, str],
                    stage_names: Sequence[str]) -> str:
    """Markdown: a faithfulness table (rows: fill × method; columns: deletion AUC, insertion
    AUC, negative-first Δp; the best method of each fill in bold, the random floor excluded
    from "best") and a randomisation table (rows: method).

    ``fills`` maps each fill's key to its description.
    """
    metrics = (("deletion_auc", True), ("insertion_auc", False), ("negative_dp", False),
               ("negative_dbits", False))
    lines = ["| fill | method | deletion AUC ↓ | insertion AUC ↑ | negative-first Δp ↑ | "
             "negative-first Δ log2-odds ↑ |", "|---|---|---|---|---|---|"]
    for f in fills:
        for m in methods:
            cells = []
            for metric, lower in metrics:
                cell = _cell(rows, m.key, f, metric)
                if _best(rows, methods, f, metric, lower) == m.key:
                    cell = f"**{cell}**"
                cells.append(cell)
            lines.append(f"| {f} | {m.label} | " + " | ".join(cells) + " |")
    lines += ["", "Fills: " + "; ".join(f"`{k}` = {v}" for k, v in fills.items()) + ".", ""]
    if stage_names:
        top, full = stage_names[0], stage_names[-1]
        lines += [f"| method | Spearman \\|map\\| ({top} randomised) | Spearman \\|map\\| "
                  f"(all, down to {full}) | SSIM \\|map\\| (all) | Spearman signed (all) | "
                  f"SSIM signed (all) |", "|---|---|---|---|---|---|"]
        for m in methods:
            cells = [_cell(rows, m.key, "-", f"spearman_abs@{top}"),
                     _cell(rows, m.key, "-", f"spearman_abs@{full}"),
                     _cell(rows, m.key, "-", f"ssim_abs@{full}"),
                     _cell(rows, m.key, "-", f"spearman_signed@{full}") if m.signed else "n/a",
                     _cell(rows, m.key, "-", f"ssim_signed@{full}") if m.signed else "n/a"]
            lines.append(f"| {m.label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def csv_text(rows: Sequence[Mapping], settings: str = "") -> str:
    """The long table as CSV (``method,fill,metric,mean,sem,n``), ``settings`` as a leading
    ``#`` comment line."""
    import csv
    import io

    buf = io.StringIO()
    if settings:
        buf.write("# " + " ".join(settings.split()) + "\n")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "fill", "metric", "mean", "sem", "n"])
    for r in rows:
        writer.writerow([r["method"], r["fill"], r["metric"], repr(float(r["mean"])),
                         repr(float(r["sem"])), r["n"]])
    return buf.getvalue()


@dataclass
class Comparison:
    """Everything :func:`compare` measured.

    Attributes
    ----------
    results : list of dict
        :func:`evaluate_image`'s arrays, one per image.
    image_ids : list of int
    methods : list of Method
    fills : dict of str to str
        Fill key → description (what filled the removed pixels).
    stage_names : list of str
        Randomisation stages: stage j randomises the layers down to ``stage_names[j]``.
    rows : list of dict
        :func:`summarise` over the images.
    settings : dict
        Every parameter, for the record.
    seconds : float
    providers : list of str
        The onnxruntime execution providers that actually ran the networks in this call
        (``ModelView.provider``; e.g. ``["CPUExecutionProvider"]``), not the ones the
        installed onnxruntime merely offers; empty when no network ran (every image came
        from the ``per_image`` cache).
    """

    results: list
    image_ids: list
    methods: list
    fills: dict
    stage_names: list
    rows: list
    settings: dict
    seconds: float
    providers: list = field(default_factory=list)

    def markdown(self) -> str:
        return markdown_tables(self.rows, self.methods, self.fills, self.stage_names)

    def settings_text(self) -> str:
        s = self.settings
        return "; ".join(f"{k}={v}" for k, v in s.items())

    def arrays(self) -> dict[str, np.ndarray]:
        """Stacked per-image arrays (for an ``.npz``): ``image_ids`` and every key of
        :func:`evaluate_image` with a leading image axis."""
        out = {"image_ids": np.asarray(self.image_ids)}
        for key in self.results[0]:
            out[key] = np.stack([np.asarray(r[key]) for r in self.results])
        return out


@dataclass
class _ImageContext:
    """Everything :func:`evaluate_image` needs besides the image's index (shipped once to
    each Dask worker, where its models' sessions are then built once)."""

    images: np.ndarray
    image_ids: list
    view: ModelView
    methods: list
    fills: dict
    stages: list
    kwargs: dict


def _evaluate_indexed(context: _ImageContext, i: int) -> dict:
    return evaluate_image(context.images[i], context.image_ids[i], context.view,
                          context.methods, context.fills, stages=context.stages,
                          **context.kwargs)


def _evaluate_remote(context: _ImageContext, i: int) -> tuple[dict, list]:
    """:func:`_evaluate_indexed` on a worker, with the providers its networks ran on."""
    arrays = _evaluate_indexed(context, i)
    views = [context.view] + [v for _, v in context.stages]
    return arrays, [v.provider for v in views if v.provider is not None]


def compare(images, image_ids: Sequence[int], model, pool, *, window: int = 4,
            padding: int = 2, num_samples: int = 10, stride: int = 1,
            fills: Sequence[str] = FILLS, step: float = 0.05, num_draws: int = 3,
            negative_fraction: float = 0.1, randomise: bool = True, stages=None,
            num_patches: int = 5000, colour: str = "per-channel", grey=0.0,
            mean_value=None, seed: int = 0,
            batch_size: int = 256, device: str = "auto", progress: bool = True,
            per_image: Callable | None = None, describe_model: str = "",
            client=None, output: str | None = None) -> Comparison:
    """Compare the five explanations (:func:`standard_methods`) on ``images``.

    Parameters
    ----------
    images : ndarray, shape (N, C, H, W)
        Preprocessed images; each is explained for the model's top class.
    image_ids : sequence of int
        Identifiers (seed the methods and the fill draws per image).
    model : onnx.ModelProto
        The network; its first graph output must be the probabilities.
    pool : ndarray, shape (M, C, H, W)
        Images the samplers and fills learn from (not containing ``images``).
    window, padding, num_samples, stride
        PDA's k, l, S and stride (occlusion uses the same windows).
    fills : sequence of {"marginal", "conditional", "mean"}
    step, num_draws, negative_fraction
        Curves: fraction per step, fill draws, the fraction for the negative-evidence Δp.
    randomise : bool
        Run the cascading model-randomisation check.
    stages : sequence of int, optional
        Evaluate only the cascade stages with these numbers of randomised layers (and the
        last); default all.
    num_patches, colour
        Conditional Gaussian fit (seed ``seed + 1``).
    grey : float or array, shape (C,)
        Occlusion value (0 = the mean colour in mean-subtracted space; the digits' background).
    mean_value : float or array, shape (C,), optional
        The ``mean`` fill's constant; default the pool's per-channel mean. Pass 0 for a
        network whose preprocessing subtracts the training-set mean (the zoo nets): 0 is then
        the data mean, which a small pool only approximates.
    seed : int
        Methods and fills are seeded per image from it; weights re-randomised with
        ``seed + 2``.
    per_image : callable, optional
        ``per_image(image_id, compute) -> arrays``: wraps each image's computation (e.g. a
        cache, so that an interrupted run resumes); default calls ``compute()``.
    client : distributed.Client, optional
        Evaluate the images on this Dask cluster (:func:`preddiff.cluster.map_images`), one
        task per image; the numbers are those of a run in one process.
    output : str, optional
        The probability blob (default the model's first graph output).
    """
    import time

    from .samplers import ConditionalGaussianSampler

    started = time.perf_counter()
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or len(images) != len(image_ids) or len(images) == 0:
        raise InvalidArgument(f"images must have shape (N, C, H, W) with one id each, got "
                              f"{images.shape} and {len(image_ids)} ids")
    unknown = [f for f in fills if f not in FILLS]
    if unknown or not fills:
        raise InvalidArgument(f"fills must be among {FILLS}, got {list(fills)}")
    pool = np.asarray(pool, dtype=np.float32)
    sampler = ConditionalGaussianSampler.fit(pool, window, padding, colour=colour,
                                             num_patches=num_patches, rng=seed + 1)
    fill_objects = {f: make_fill(f, pool=pool, sampler=sampler,
                                 value=mean_value if f == "mean" else None) for f in fills}
    methods = standard_methods(pool=pool, sampler=sampler, window=window, stride=stride,
                               num_samples=num_samples, grey=grey, batch_size=batch_size)
    view = ModelView(model, output=output, batch_size=batch_size, device=device)
    chosen = []
    if randomise:
        chosen = cascading_randomisation(model, seed + 2, keep=stages)
    stage_views = [(name, ModelView(m, output=view.output, batch_size=batch_size,
                                    device=device)) for name, m in chosen]

    context = _ImageContext(images, list(image_ids), view, methods, fill_objects,
                            stage_views, dict(seed=seed, step=step,
                                              negative_fraction=negative_fraction,
                                              num_draws=num_draws))
    remote_providers = set()
    if client is not None:
        from .cluster import map_images

        def per_remote(image_id, compute):
            def unpack():
                arrays, used = compute()
                remote_providers.update(used)
                return arrays
            return per_image(image_id, unpack) if per_image else unpack()

        results = map_images(client, _evaluate_remote, context, list(range(len(images))),
                             [int(i) for i in image_ids], per_image=per_remote,
                             progress=progress, desc="evaluate")
    else:
        from tqdm.auto import tqdm

        results = []
        for i in tqdm(range(len(images)), desc="evaluate", unit="image", disable=not progress):
            def compute(i=i):
                return _evaluate_indexed(context, i)
            results.append(dict(per_image(int(image_ids[i]), compute) if per_image
                                else compute()))
    stage_names = [name for name, _ in chosen]
    rows = summarise(results, methods, list(fills), stage_names,
                     negative_fraction=negative_fraction)
    settings = {
        "model": describe_model or "ONNX model", "images": f"{len(images)} (ids "
        f"{_ranges(image_ids)})", "pool": f"{len(pool)} images",
        "explained class": "the model's top class",
        "PDA": f"k={window}, l={padding}, S={num_samples}, stride={stride}, weight of evidence "
               f"of {view.output!r}, marginal order=random, conditional {colour} fitted on "
               f"{num_patches} patches (seed {seed + 1})",
        "occlusion": f"grey value {np.atleast_1d(grey).tolist()}, same windows",
        "curves": f"step {step:g} of the pixels, {num_draws} draws per random fill, ties broken "
                  f"at random, negative-first Δp after {negative_fraction:g} of the pixels",
        "fills": "; ".join(f"{k}: {v.describe()}" for k, v in fill_objects.items()),
        "randomisation": (f"cascade from the output down, layers {stage_names}, weights ~ "
                          f"N(0, std of the original tensor) (seed {seed + 2}); Spearman and "
                          f"SSIM of maps normalised by max|map|" if randomise else "not run"),
        "seed": seed,
    }
    providers = sorted({v.provider for v in [view] + [sv for _, sv in stage_views]
                        if v.provider is not None} | remote_providers)
    return Comparison(results, [int(i) for i in image_ids], methods,
                      {k: v.describe() for k, v in fill_objects.items()}, stage_names, rows,
                      settings, time.perf_counter() - started, providers)


def _ranges(ids) -> str:
    """``[0,1,2,5]`` → ``"0–2, 5"``."""
    ids = sorted(int(i) for i in ids)
    parts, start = [], ids[0]
    for a, b in zip(ids, ids[1:] + [None]):
        if b != a + 1:
            parts.append(f"{start}" if start == a else f"{start}–{a}")
            start = b
    return ", ".join(parts)
