"""Samplers: how a removed window is filled in (paper §2.2 eq. 3, §3.1 eq. 6, §4).

Prediction difference analysis estimates ``p(c | x \\ x_w)`` by replacing the window ``x_w``
with samples and averaging the classifier's output (Algorithm 1). A *sampler* decides where
the samples come from. Two are provided:

- :class:`MarginalSampler` — the window's values from other images at the same location
  (the empirical marginal, eq. 3);
- :class:`ConditionalGaussianSampler` — a Gaussian over the ``(kh+2l) × (kw+2l)`` patch around
  the window, conditioned on the patch's ``l``-pixel frame (eq. 6, §4).

The sampler protocol
--------------------
The engine (:func:`preddiff.prediction_difference`) accepts any object with a method ::

    sample(x, top_left, window, num_samples, rngs) -> ndarray, shape (N, S, C, kh, kw)

- ``x``: the image being explained, float32, shape ``(C, H, W)``;
- ``top_left``: int64 array, shape ``(N, 2)``, the ``(row, col)`` of ``N`` windows;
- ``window``: ``(kh, kw)``;
- ``num_samples``: ``S``;
- ``rngs``: a sequence of ``N`` :class:`numpy.random.Generator`, one per window. **Window ``n``
  must draw its random numbers from ``rngs[n]`` only**, and its samples must depend only on
  ``x``, its position and ``rngs[n]`` — never on the other windows of the call. The engine
  gives window ``i`` of the image a stream that depends only on the run's seed and ``i``
  (:func:`preddiff.streams.window_rng`), so results do not depend on the batch size and a
  resumed run is identical to an uninterrupted one.

It returns the values that replace each window, float32 (anything else is converted). An
optional ``describe() -> dict`` (JSON-serialisable) identifies the sampler's configuration; it
is stored with the result and in checkpoints, so a checkpoint made with another sampler is
refused. To write a new sampler (e.g. an inpainting model), subclass :class:`Sampler` and
implement :meth:`Sampler.sample_window` for one window, or ``sample`` for many at once.

Random streams
--------------
``rng`` arguments accept a :class:`numpy.random.Generator` or a non-negative integer seed.
The engine turns a Generator into one integer seed by drawing ``rng.integers(2**63)`` once at
the start (:func:`preddiff.streams.resolve_seed`), then derives the per-window streams from that
seed (:mod:`preddiff.streams`).
"""
from __future__ import annotations

import hashlib
import numbers
import zipfile

import numpy as np
import scipy.linalg

from .checkpoint import atomic_savez
from .errors import InvalidArgument, PredDiffError
from .streams import resolve_seed
from .windows import window_shape, window_views

__all__ = ["Sampler", "MarginalSampler", "ConditionalGaussianSampler"]

def __getattr__(name):
    """``window_rng`` and ``WindowStreams`` moved to :mod:`preddiff.streams`; importing them
    from here still works."""
    if name in ("window_rng", "WindowStreams"):
        from . import streams

        return getattr(streams, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Relative jitter steps tried when a covariance is not positive definite: ``ε · mean(diag)``
#: is added to the diagonal, ε running through these values until Cholesky succeeds.
JITTER_STEPS = tuple(10.0 ** e for e in range(-6, 1))


def _generator(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(resolve_seed(rng))


# ----------------------------------------------------------------------------------------------
# protocol


class Sampler:
    """Base class of samplers (see the module docstring for the protocol).

    Subclasses implement :meth:`sample_window` (one window) or override :meth:`sample`
    (many windows at once, vectorised).
    """

    def sample(self, x, top_left, window, num_samples, rngs) -> np.ndarray:
        """Samples for ``N`` windows.

        Parameters
        ----------
        x : ndarray, shape (C, H, W)
        top_left : ndarray of int, shape (N, 2)
        window : (int, int)
        num_samples : int
        rngs : sequence of N numpy.random.Generator

        Returns
        -------
        ndarray of float32, shape (N, S, C, kh, kw)
        """
        top_left = np.asarray(top_left, dtype=np.int64).reshape(-1, 2)
        return np.stack([
            np.asarray(self.sample_window(x, tuple(tl), window, num_samples, rngs[n]),
                       dtype=np.float32)
            for n, tl in enumerate(top_left)
        ])

    def sample_window(self, x, top_left, window, num_samples, rng) -> np.ndarray:
        """Samples for one window: ndarray, shape (S, C, kh, kw)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """A JSON-serialisable description of the configuration (class name by default)."""
        return {"name": type(self).__qualname__}


def _check_pool(pool) -> np.ndarray:
    pool = np.asarray(pool)
    if pool.ndim != 4:
        raise InvalidArgument(f"pool must have shape (M, C, H, W), got shape {pool.shape}")
    if pool.shape[0] < 1:
        raise InvalidArgument("pool is empty: it needs at least one image (M >= 1)")
    pool = np.ascontiguousarray(pool, dtype=np.float32)
    if not np.isfinite(pool).all():
        raise InvalidArgument("pool contains NaN or infinite values")
    return pool


def _sha1(*arrays) -> str:
    digest = hashlib.sha1()
    for a in arrays:
        if a is None:
            digest.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# marginal sampling


class MarginalSampler(Sampler):
    """Marginal sampling (eq. 3, §4): the window's values from other images at the same place.

    Parameters
    ----------
    pool : array_like, shape (M, C, H, W)
        Preprocessed images, in the same space and size as the explained image. It should not
        contain the explained image itself.
    order : {"random", "first"}, optional
        ``"random"`` (default): each window takes ``S`` distinct images drawn without
        replacement from its own stream (``rngs[n].choice(M, S, replace=False)``).
        ``"first"``: the first ``S`` images of the pool for every window, as the released code
        did.

    Raises
    ------
    InvalidArgument
        On a pool that is not 4-D or is empty, an unknown ``order``, and (when sampling) more
        samples than pool images or an image whose shape differs from the pool's.
    """

    ORDERS = ("random", "first")

    def __init__(self, pool, order: str = "random"):
        if order not in self.ORDERS:
            raise InvalidArgument(f"order must be one of {self.ORDERS}, got {order!r}")
        self.pool = _check_pool(pool)
        self.order = order
        self._sha1 = None

    def describe(self) -> dict:
        if self._sha1 is None:
            self._sha1 = _sha1(self.pool)
        return {"name": "MarginalSampler", "order": self.order,
                "pool_shape": list(self.pool.shape), "pool_sha1": self._sha1}

    def sample(self, x, top_left, window, num_samples, rngs) -> np.ndarray:
        kh, kw = window_shape(window)
        m = self.pool.shape[0]
        if tuple(np.shape(x)) != self.pool.shape[1:]:
            raise InvalidArgument(
                f"image shape {tuple(np.shape(x))} differs from the pool's images "
                f"{self.pool.shape[1:]}; marginal sampling takes values at the same location")
        if num_samples > m:
            raise InvalidArgument(
                f"marginal sampling needs num_samples={num_samples} distinct pool images, "
                f"but the pool has only {m}")
        top_left = np.asarray(top_left, dtype=np.int64).reshape(-1, 2)
        n = top_left.shape[0]
        if self.order == "first":
            images = np.broadcast_to(np.arange(num_samples), (n, num_samples))
        else:
            images = np.stack([rngs[i].choice(m, size=num_samples, replace=False)
                               for i in range(n)]) if n else np.zeros((0, num_samples), int)
        views = window_views(self.pool, (kh, kw))  # (M, C, H', W', kh, kw)
        # Advanced indices (N, S) × (N, 1) × (N, 1) around a slice: result (N, S, C, kh, kw).
        return views[images, :, top_left[:, 0, None], top_left[:, 1, None]]


# ----------------------------------------------------------------------------------------------
# conditional sampling


def _cholesky_jittered(matrix: np.ndarray) -> tuple[np.ndarray, float]:
    """Lower Cholesky factor of a symmetric matrix, regularised if it is not positive definite.

    Tries the matrix as is, then adds ``ε · mean(diag) · I`` for ε in :data:`JITTER_STEPS`.
    Returns the factor and the jitter added (0.0 when none was needed).
    """
    try:
        return np.linalg.cholesky(matrix), 0.0
    except np.linalg.LinAlgError:
        pass
    scale = float(np.mean(np.diag(matrix))) if matrix.size else 1.0
    if not np.isfinite(scale) or scale <= 0:
        scale = 1.0
    eye = np.eye(matrix.shape[0])
    for eps in JITTER_STEPS:
        jitter = eps * scale
        try:
            return np.linalg.cholesky(matrix + jitter * eye), jitter
        except np.linalg.LinAlgError:
            continue
    raise PredDiffError(  # only reachable with non-finite covariances
        "covariance is not positive definite even with jitter "
        f"{JITTER_STEPS[-1] * scale:g}; check the pool for constant or non-finite values")


class ConditionalGaussianSampler(Sampler):
    """Conditional sampling (eq. 6, §4): a Gaussian over the patch, conditioned on its frame.

    The window ``x_w`` (``kh × kw``) lies in a patch of ``(kh + 2l) × (kw + 2l)`` pixels (``l``
    = ``padding``). A multivariate Gaussian ``N(μ, Σ)`` over the patch's values is fitted on
    patches of a pool of images; the window is sampled from the Gaussian conditional on the
    patch's other values ``x2``::

        μ_1|2 = μ1 + Σ12 Σ22⁻¹ (x2 − μ2),     Σ_1|2 = Σ11 − Σ12 Σ22⁻¹ Σ21,

    via the Cholesky factor of ``Σ_1|2``. Near the border the patch is shifted to lie inside the
    image, so the window is off-centre in it (paper §4); there are at most ``(2l+1)²`` distinct
    window offsets and the conditional parameters are computed once per offset and cached.

    Use :meth:`fit` to estimate the Gaussian from images, :meth:`load` to read a saved one.

    Parameters
    ----------
    mean : ndarray, shape (G, D)
    cov : ndarray, shape (G, D, D)
        ``G = C`` groups of ``D = Ph·Pw`` values for ``colour="per-channel"``; one group of
        ``D = C·Ph·Pw`` values for ``colour="joint"``; values ordered (channel, row, column).
    window : int or (int, int)
    padding : int
    colour : {"per-channel", "joint", "per-channel-released"}
    channels : int
    pool_min, pool_max : ndarray, shape (C, H, W), optional
        Per-pixel bounds to clip samples to (``clip=True`` in :meth:`fit`); ``None``: no clip.
    num_patches : int, optional
        Number of patches the parameters were fitted on (for the record).

    Notes
    -----
    *Colour.* ``"per-channel"`` (default) fits one Gaussian per colour channel over its
    ``Ph·Pw`` values and samples the channels independently, as the released code did (its
    ``..._indep`` files). ``"joint"`` fits one Gaussian over all ``C·Ph·Pw`` values, as the
    paper's text describes. For one-channel images the two are the same.
    ``"per-channel-released"`` reproduces what the released code computes with its
    per-channel Gaussians: it caches the conditional parameters per window offset without the
    channel in the key, so channels 1, 2, … reuse channel 0's regression matrix
    ``Σ12 Σ22⁻¹`` and conditional covariance ``Σ_1|2`` (each channel keeps its own ``μ1`` and
    ``μ2``). The published colour figures were made this way; it is offered for
    reproduction, not as the intended method.

    *Jitter.* A covariance that is not positive definite (images constant over regions,
    fewer patches than dimensions) is regularised rather than refused: ``ε · mean(diag)``
    is added to the diagonal, ε = 1e-6, 1e-5, … 1, the first value for which Cholesky succeeds.
    The same rule is applied to ``Σ22`` and to ``Σ_1|2`` for each offset. :attr:`jitter` holds
    the value added to each group's full covariance, :attr:`conditional_jitter` those per
    offset.

    *Clipping.* With bounds, samples are clipped to the pool's per-pixel minimum and maximum
    (released code), so the sampler only applies to images of the pool's size.

    *Random stream.* Window ``n`` draws one array ``rngs[n].standard_normal((S, G, d1))``
    (``d1`` = the window's values in a group).
    """

    COLOURS = ("per-channel", "joint", "per-channel-released")
    PATCHES = ("random", "released")

    def __init__(self, mean, cov, window, padding, *, colour="per-channel", channels,
                 pool_min=None, pool_max=None, num_patches=None):
        self.window = window_shape(window)
        self.padding = _check_padding(padding)
        if colour not in self.COLOURS:
            raise InvalidArgument(f"colour must be one of {self.COLOURS}, got {colour!r}")
        self.colour = colour
        self.channels = int(channels)
        ph, pw = self.patch_shape
        groups, per_group = ((1, self.channels) if colour == "joint"
                             else (self.channels, 1))
        dim = per_group * ph * pw
        mean, cov = np.asarray(mean, dtype=np.float64), np.asarray(cov, dtype=np.float64)
        if mean.size != groups * dim or cov.size != groups * dim * dim:
            raise InvalidArgument(
                f"mean {mean.shape} and cov {cov.shape} do not fit {colour} Gaussians over "
                f"{ph}x{pw} patches of {self.channels} channels: expected ({groups}, {dim}) "
                f"and ({groups}, {dim}, {dim})")
        if not (np.isfinite(mean).all() and np.isfinite(cov).all()):
            raise InvalidArgument("mean and cov must be finite")
        self.mean = mean.reshape(groups, dim)
        self.cov = cov.reshape(groups, dim, dim)
        self._groups, self._per_group = groups, per_group
        if (pool_min is None) != (pool_max is None):
            raise InvalidArgument("give both pool_min and pool_max, or neither")
        self.pool_min = None if pool_min is None else np.asarray(pool_min, np.float32)
        self.pool_max = None if pool_max is None else np.asarray(pool_max, np.float32)
        self.num_patches = None if num_patches is None else int(num_patches)
        # Regularise the full covariance once; every conditional uses the regularised one.
        self.jitter = np.zeros(groups)
        self._cov_reg = self.cov.copy()
        for g in range(groups):
            _, self.jitter[g] = _cholesky_jittered(self.cov[g])
            self._cov_reg[g][np.diag_indices(dim)] += self.jitter[g]
        self._cache: dict[tuple[int, int], list] = {}
        self.conditional_jitter: dict[tuple[int, int], list[float]] = {}
        self._sha1 = None

    # -- construction ---------------------------------------------------------------------

    @property
    def patch_shape(self) -> tuple[int, int]:
        """``(kh + 2l, kw + 2l)``."""
        return (self.window[0] + 2 * self.padding, self.window[1] + 2 * self.padding)

    @property
    def clip(self) -> bool:
        return self.pool_min is not None

    @classmethod
    def fit(cls, pool, window, padding, *, colour="per-channel", num_patches=25000, clip=True,
            rng, patches="random"):
        """Fit the patch Gaussian on random patches of a pool of images.

        Parameters
        ----------
        pool : array_like, shape (M, C, H, W)
            Preprocessed images (the released code used the preprocessed, mean-subtracted BGR
            space).
        window : int or (int, int)
            ``k`` or ``(kh, kw)``; the sampler serves only this window size.
        padding : int
            ``l ≥ 0``; patches are ``(kh + 2l) × (kw + 2l)``. The paper used ``l = 2``.
        colour : {"per-channel", "joint", "per-channel-released"}, optional
            Released code's intent (default), paper text, or the released code's actual
            computation; see the class notes.
        num_patches : int, optional
            With ``patches="random"``: patches drawn at uniformly random images and locations
            (with replacement); the paper used about 25,000. With ``patches="released"``: the
            released code's ``num_samples_fit`` (20,000 there), see below.
        patches : {"random", "released"}, optional
            ``"random"`` (default): ``num_patches`` independent (image, position) draws.
            ``"released"``: the released code's drawing scheme: ``int(num_patches / M) + 1``
            random positions, each taken from all ``M`` pool images, drawn separately for
            each colour channel (per-channel colours; one set for ``"joint"``), with the top
            left corner uniform on ``[0, H − Ph) × [0, W − Pw)`` — the last patch row and
            column are never drawn. With a pool of M ≥ num_patches images this is one or two
            positions; the estimate is then far from the all-patch one.
        clip : bool, optional
            Clip samples to the pool's per-pixel minimum and maximum (released code).
        rng : numpy.random.Generator or int

        Returns
        -------
        ConditionalGaussianSampler
            Mean of the patches and ``np.cov`` (ddof 1) of their values.

        Raises
        ------
        InvalidArgument
            Negative padding, fewer than 2 patches, pool images smaller than the patch (not
            larger than it for ``patches="released"``), or an unknown ``colour``/``patches``.
        """
        pool = _check_pool(pool)
        kh, kw = window_shape(window)
        padding = _check_padding(padding)
        if colour not in cls.COLOURS:
            raise InvalidArgument(f"colour must be one of {cls.COLOURS}, got {colour!r}")
        if (isinstance(num_patches, (bool, np.bool_))
                or not isinstance(num_patches, numbers.Integral) or num_patches < 2):
            raise InvalidArgument(f"num_patches must be an integer >= 2, got {num_patches!r}")
        m, channels, height, width = pool.shape
        ph, pw = kh + 2 * padding, kw + 2 * padding
        if ph > height or pw > width:
            raise InvalidArgument(
                f"pool images are {height}x{width}, smaller than the {ph}x{pw} patch of a "
                f"{kh}x{kw} window with padding {padding}")
        if patches not in cls.PATCHES:
            raise InvalidArgument(f"patches must be one of {cls.PATCHES}, got {patches!r}")
        gen = _generator(rng)
        views = window_views(pool, (ph, pw))  # (M, C, H', W', ph, pw)
        if patches == "random":
            images = gen.integers(0, m, size=num_patches)
            rows = gen.integers(0, height - ph + 1, size=num_patches)
            cols = gen.integers(0, width - pw + 1, size=num_patches)
            found = views[images, :, rows, cols].astype(np.float64)  # (n, C, ph, pw)
            if colour == "joint":
                data = found.reshape(1, num_patches, channels * ph * pw)
            else:
                data = found.reshape(num_patches, channels, ph * pw).transpose(1, 0, 2)
        else:
            data = _released_patches(views, colour, num_patches, gen)
        mean = data.mean(axis=1)
        cov = np.stack([np.atleast_2d(np.cov(group, rowvar=False)) for group in data])
        bounds = (pool.min(axis=0), pool.max(axis=0)) if clip else (None, None)
        return cls(mean, cov, (kh, kw), padding, colour=colour, channels=channels,
                   pool_min=bounds[0], pool_max=bounds[1], num_patches=data.shape[1])

    # -- persistence ----------------------------------------------------------------------

    def save(self, path) -> None:
        """Write the fitted parameters to ``path`` (``.npz``, atomically)."""
        arrays = {
            "mean": self.mean, "cov": self.cov,
            "window": np.array(self.window), "padding": np.array(self.padding),
            "colour": np.array(self.colour), "channels": np.array(self.channels),
            "num_patches": np.array(-1 if self.num_patches is None else self.num_patches),
        }
        if self.clip:
            arrays.update(pool_min=self.pool_min, pool_max=self.pool_max)
        atomic_savez(path, **arrays)

    @classmethod
    def load(cls, path) -> "ConditionalGaussianSampler":
        """Read parameters written by :meth:`save`.

        Raises
        ------
        InvalidArgument
            ``path`` is missing, a folder, or not a complete saved sampler.
        """
        from .fileio import saved_file

        path = saved_file(path, "ConditionalGaussianSampler")
        try:
            with np.load(path, allow_pickle=False) as data:
                fields = {k: data[k] for k in data.files}
            num_patches = int(fields["num_patches"])
            return cls(fields["mean"], fields["cov"], tuple(int(v) for v in fields["window"]),
                       int(fields["padding"]), colour=str(fields["colour"]),
                       channels=int(fields["channels"]), pool_min=fields.get("pool_min"),
                       pool_max=fields.get("pool_max"),
                       num_patches=None if num_patches < 0 else num_patches)
        except InvalidArgument:
            raise
        except (KeyError, ValueError, TypeError, IndexError, EOFError, OSError,
                zipfile.BadZipFile) as exc:
            # a truncated, empty or foreign file
            raise InvalidArgument(
                f"{path} is not a saved ConditionalGaussianSampler "
                f"({type(exc).__name__}: {exc})") from None

    def describe(self) -> dict:
        if self._sha1 is None:
            self._sha1 = _sha1(self.mean, self.cov, self.pool_min, self.pool_max)
        return {"name": "ConditionalGaussianSampler", "window": list(self.window),
                "padding": self.padding, "colour": self.colour, "clip": self.clip,
                "num_patches": self.num_patches, "params_sha1": self._sha1}

    # -- conditionals ---------------------------------------------------------------------

    def _window_index(self, offset) -> np.ndarray:
        """Indices (into a group's flattened patch) of the window at ``offset`` in the patch."""
        (kh, kw), (ph, pw) = self.window, self.patch_shape
        oy, ox = offset
        c, y, x = np.meshgrid(np.arange(self._per_group), np.arange(oy, oy + kh),
                              np.arange(ox, ox + kw), indexing="ij")
        return ((c * ph + y) * pw + x).ravel()

    def conditional(self, offset) -> list[tuple]:
        """Conditional parameters for the window at ``offset = (oy, ox)`` inside its patch.

        Returns, per group, ``(idx1, idx2, mu1, mu2, A, L)``: window and frame indices, their
        means, ``A = Σ12 Σ22⁻¹`` and the Cholesky factor ``L`` of ``Σ11 − A Σ21``. Computed once
        per offset and cached.
        """
        offset = (int(offset[0]), int(offset[1]))
        if offset in self._cache:
            return self._cache[offset]
        dim = self.mean.shape[1]
        idx1 = self._window_index(offset)
        idx2 = np.setdiff1d(np.arange(dim), idx1)
        params, jitters = [], []
        for g in range(self._groups):
            if g and self.colour == "per-channel-released":
                # The released cache key (the window's first and last index in the patch)
                # has no channel: channel 0's A and Σ_1|2 serve every channel, with the
                # channel's own means.
                _, _, _, _, a, lower = params[0]
                params.append((idx1, idx2, self.mean[g, idx1], self.mean[g, idx2], a, lower))
                jitters.append(jitters[0])
                continue
            cov = self._cov_reg[g]
            s11 = cov[np.ix_(idx1, idx1)]
            if idx2.size:
                s22 = cov[np.ix_(idx2, idx2)]
                s21 = cov[np.ix_(idx2, idx1)]
                l22, j22 = _cholesky_jittered(s22)
                a = scipy.linalg.cho_solve((l22, True), s21).T  # Σ12 Σ22⁻¹, (d1, d2)
                cond = s11 - a @ s21
            else:  # padding 0: nothing to condition on
                a, j22 = np.zeros((idx1.size, 0)), 0.0
                cond = s11
            lower, j11 = _cholesky_jittered((cond + cond.T) / 2)
            params.append((idx1, idx2, self.mean[g, idx1], self.mean[g, idx2], a, lower))
            jitters.append(max(j22, j11))
        self._cache[offset] = params
        self.conditional_jitter[offset] = jitters
        return params

    def patch_top_left(self, top_left, image_shape) -> np.ndarray:
        """Top-left corners of the patches of windows at ``top_left`` (shape (N, 2)).

        The patch is centred on the window where it fits and shifted inside the image at the
        borders: ``clip(r − l, 0, H − Ph)``.
        """
        ph, pw = self.patch_shape
        height, width = image_shape
        top_left = np.asarray(top_left, dtype=np.int64).reshape(-1, 2)
        limit = np.array([height - ph, width - pw])
        return np.minimum(np.maximum(top_left - self.padding, 0), limit)

    def _check_image(self, x, window):
        if window_shape(window) != self.window:
            raise InvalidArgument(
                f"this sampler was fitted for {self.window[0]}x{self.window[1]} windows, "
                f"got window {window_shape(window)}; fit one for this window size")
        x = np.asarray(x)
        if x.ndim != 3 or x.shape[0] != self.channels:
            raise InvalidArgument(
                f"image shape {x.shape} does not match the sampler's {self.channels} channels")
        ph, pw = self.patch_shape
        if x.shape[1] < ph or x.shape[2] < pw:
            raise InvalidArgument(
                f"image {x.shape[1]}x{x.shape[2]} is smaller than the sampler's {ph}x{pw} patch")
        if self.clip and self.pool_min.shape != x.shape:
            raise InvalidArgument(
                f"image shape {x.shape} differs from the pool's {self.pool_min.shape}; the "
                f"per-pixel clipping bounds apply only to images of the pool's size "
                f"(fit with clip=False for other sizes)")
        return x

    def sample(self, x, top_left, window, num_samples, rngs) -> np.ndarray:
        x = self._check_image(x, window)
        (kh, kw), (ph, pw) = self.window, self.patch_shape
        groups, s = self._groups, num_samples
        top_left = np.asarray(top_left, dtype=np.int64).reshape(-1, 2)
        n = top_left.shape[0]
        if n == 0:
            return np.empty((0, s, self.channels, kh, kw), np.float32)
        d1 = self._per_group * kh * kw
        patch_tl = self.patch_top_left(top_left, x.shape[1:])
        offsets = top_left - patch_tl
        views = window_views(np.ascontiguousarray(x, np.float64), (ph, pw))
        keys = offsets[:, 0] * (2 * self.padding + 1) + offsets[:, 1]
        # the windows sorted by their offset in the patch (one conditional each), so that
        # the windows of one offset are one run: their draws are computed in place, in runs
        # (a window's values do not depend on its position in the batch)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        # every window's noise, each from its own stream (whatever the batch), in one array
        noise = np.empty((n, s, groups, d1))
        for j, i in enumerate(order.tolist()):
            rngs[i].standard_normal(out=noise[j])
        out = np.empty((n, s, groups, d1))
        # every window's patch, (n, groups, values per group), in the sorted order
        patches = views[:, patch_tl[order, 0], patch_tl[order, 1]].transpose(1, 0, 2, 3)
        patches = patches.reshape(n, groups, -1)
        runs = [0] + (np.flatnonzero(np.diff(keys)) + 1).tolist() + [n]
        for begin, end in zip(runs[:-1], runs[1:]):
            m, patch = end - begin, patches[begin:end]
            conditionals = self.conditional(offsets[order[begin]])
            for g, (_, idx2, mu1, mu2, a, lower) in enumerate(conditionals):
                mean = mu1 + (patch[:, g, idx2] - mu2) @ a.T  # (m, d1)
                # one (m·S, d1) product instead of m small ones: the same values (each row
                # is its own dot products), fewer BLAS calls; written in place when it can be
                z = noise[begin:end, :, g].reshape(m * s, d1)
                target = out[begin:end, :, g]  # a view
                if target.flags.c_contiguous:
                    np.matmul(z, lower.T, out=target.reshape(m * s, d1))
                    target += mean[:, None, :]
                else:
                    draws = (z @ lower.T).reshape(m, s, d1)
                    draws += mean[:, None, :]
                    target[...] = draws
        # back to the caller's order, cast to float32 on the way
        values = np.empty((n, s, self.channels, kh, kw), np.float32)
        values[order] = out.reshape(n, s, self.channels, kh, kw)
        out = values
        if self.clip:
            # clipping after the cast to float32 gives the same values as before it: the
            # bounds are float32 and rounding to nearest is monotonic
            bounds = window_views(np.stack([self.pool_min, self.pool_max]),
                                  (kh, kw))[:, :, top_left[:, 0], top_left[:, 1]]
            bounds = bounds.transpose(0, 2, 1, 3, 4)[:, :, None]  # (2, N, 1, C, kh, kw)
            np.maximum(out, bounds[0], out=out)
            np.minimum(out, bounds[1], out=out)
        return out


def _released_patches(views, colour, num_fit, gen) -> np.ndarray:
    """Patch values drawn as the released code drew them (``cond_sampler_imagenet``).

    ``int(num_fit / M) + 1`` positions per channel, each a top-left corner uniform on
    ``[0, H − Ph) × [0, W − Pw)`` (the released ``random.sample(range((H−P)·(W−P)), 1)``),
    each taken from all ``M`` images. Returns ``(G, n, D)`` as :meth:`fit` needs.
    """
    m, channels, rows, cols = views.shape[:4]
    if rows < 2 or cols < 2:
        raise InvalidArgument(
            "patches='released' never draws the last patch row and column, so it needs images "
            f"at least one pixel larger than the {views.shape[4]}x{views.shape[5]} patch")
    positions = int(num_fit / m) + 1
    groups = 1 if colour == "joint" else channels
    data = []
    for c in range(groups):
        r = gen.integers(0, rows - 1, size=positions)
        q = gen.integers(0, cols - 1, size=positions)
        found = views[:, :, r, q]  # (M, C, positions, ph, pw)
        found = found if colour == "joint" else found[:, c:c + 1]
        found = found.transpose(2, 0, 1, 3, 4).reshape(positions * m, -1)
        data.append(found.astype(np.float64))
    return np.stack(data)


def _check_padding(padding) -> int:
    if isinstance(padding, (bool, np.bool_)) or not isinstance(padding, numbers.Integral):
        raise InvalidArgument(f"padding must be a non-negative integer, got {padding!r}")
    if padding < 0:
        raise InvalidArgument(f"padding must be a non-negative integer, got {padding!r}")
    return int(padding)
