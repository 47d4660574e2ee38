"""Prediction difference analysis: Algorithm 1 of Zintgraf, Cohen & Welling (2016), vectorised.

For every ``kh × kw`` window ``x_w`` of the image (all channels; positions from
:mod:`preddiff.windows`), the window is replaced by ``S`` samples from a sampler
(:mod:`preddiff.samplers`), the classifier is evaluated on the ``S`` perturbed images, and the
prediction difference of each requested blob is computed:

- a *probability* blob (by default the one named ``prob``) gives the **weight of evidence**,
  eq. (4)–(5)::

      WE_w(c) = log2 odds(p(c|x)) − log2 odds(p(c|x \\ x_w)),   odds(p) = p / (1 − p),

  where ``p(c|x \\ x_w)`` is the *mean over the S samples* of the classifier's probability
  (Algorithm 1), and both probabilities get the Laplace correction ``p ← (p·N + 1)/(N + K)``
  (§2.2; ``N = laplace_n``, 100000 in the released code; ``K`` = number of classes);
- every other blob gives the **activation difference**, eq. (9), ``g(h) − mean_s g(h'_s)``;
  for a blob with spatial dimensions ``(N, C, h, w)`` it is averaged over the units of each
  feature map, one number per map (released code).

A pixel's relevance is the average over the windows that contain it (§3.2); pixels no window
covers get 0 and count 0 (with the default ``edges="cover"`` there are none unless the stride
exceeds the window). Accumulation is in float64.

How it is fast
--------------
Windows are processed in batches of ``batch_size // S`` windows (``S`` images each): the
sampler fills all windows of a batch at once, the perturbed images are built with array
operations (the image broadcast into a reused buffer, the windows written through a strided
window view with fancy indexing), the classifier is called once per batch, and the per-window
reductions are array operations. The per-pixel average is a box filter of the per-window values
(:func:`preddiff.windows.window_sum`).

Fast path: windows instead of images
------------------------------------
If the classifier has a method ``evaluate_windows(x, top_left, patches)`` — ``x`` float32
``(C, H, W)``, ``top_left`` int64 ``(N, 2)``, ``patches`` float32 ``(N, C, kh, kw)`` — the
engine calls it instead of building full images. It must return exactly what
``classifier(batch)`` would, where ``batch[n]`` is ``x`` with the window at ``top_left[n]``
replaced by ``patches[n]``: a dict ``{blob: (N, ...)}``. :class:`preddiff.classifier.
OnnxClassifier` composes the images there, inside the graph on CUDA so that only the samples
travel (:mod:`preddiff.compose`); an exact incremental-inference classifier (recomputing only
what a window changes) plugs in here too. A classifier whose ``supports_spatial_means`` is
true is asked, through ``evaluate_windows(..., spatial_means=blobs)``, for the blobs with
spatial dimensions whose activation difference is computed as their per-feature-map means
``(N, C)`` (eq. 9 averages each map), so that only those come back from the device.

Host and device overlap
-----------------------
While the classifier evaluates one batch, the samples of the next are drawn in a background
thread (``prefetch``). The sampler is called one batch at a time, in order; each window's
samples come from its own random stream, so the values do not depend on it. By default the
overlap is on unless the classifier computes on the CPU with onnxruntime
(:func:`prefetch_default`): its threads already use every core, and a sampler thread beside
them only slows them down (LeNet on this project's 2-core machine, three interleaved rounds:
0.78, 0.82 and 0.83 of the plain classifier's speed with the overlap, 0.81, 0.83 and 0.84
without).

Reproducibility
---------------
Window ``i`` draws its samples from a random stream that depends only on the run's seed and
``i`` (:func:`preddiff.streams.window_rng`); batches are aligned to a fixed grid of window
indices and the mean over samples is summed in a fixed order. Hence the same seed gives the
same result whatever ``batch_size`` — bit for bit when the classifier's output for an image
does not depend on the other images of its batch (true of NumPy code written row by row; an
optimised library may differ in the last bits between batch sizes) — and a resumed run gives
bit for bit the result of an uninterrupted one with the same batch size.

Pieces for other schedulers
---------------------------
:func:`prediction_difference` is :func:`prepare` (checks, seed), :func:`clean_outputs` (the
unperturbed image), :func:`window_values` / :class:`WindowEvaluator` (the per-window values of
any range of windows, evaluated in batches on the fixed grid: a pure function of its
arguments), and :func:`assemble` (the per-pixel average, once, in the window order).
:mod:`preddiff.cluster` runs blocks of windows on a Dask cluster with them and gets the
single-process result bit for bit.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import numbers
import signal
import sys
import threading
import time
import types
import zipfile
from dataclasses import dataclass, field

import numpy as np

from .checkpoint import Checkpoint, atomic_savez, json_array
from .compose import compose_batch
from .errors import InvalidArgument, PredDiffError
from .maps import RelevanceMaps
from .streams import WindowStreams, resolve_seed
from .windows import check_edges, coverage_counts, window_positions, window_shape

__all__ = ["prediction_difference", "Explanation", "NonFiniteOutput", "weight_of_evidence",
           "AnalysisSetup", "prepare", "clean_outputs", "window_values", "WindowEvaluator",
           "assemble", "prefetch_default"]

#: Perturbed images per engine batch by default (:func:`default_batch_size`).
DEFAULT_BATCH_SIZE = 256
#: ... and for an image of at most :data:`SMALL_IMAGE` values.
SMALL_IMAGE_BATCH_SIZE = 1000
SMALL_IMAGE = 4096
#: Classes whose maps :meth:`Explanation.save` keeps by default (``preddiff explain --top``).
KEPT_BY_DEFAULT = 3


class NonFiniteOutput(PredDiffError):
    """The classifier returned NaN or infinite values."""


# ----------------------------------------------------------------------------------------------
# the result


@dataclass
class Explanation:
    """The result of :func:`prediction_difference`.

    Attributes
    ----------
    relevance : mapping of str to ndarray of float64, shape (units, H, W)
        Per blob: one map per class (probability blob), per unit (vector blob) or per feature
        map (convolutional blob). Weight of evidence (eq. 4–5) in bits for probability blobs,
        activation difference (eq. 9) otherwise, averaged over the windows covering each pixel.
        After :func:`prediction_difference` it is a :class:`preddiff.maps.RelevanceMaps`,
        which computes a blob's maps on first access (``relevance[blob]``, 400 MB for 1000
        classes at 224²); :meth:`relevance_of` computes one unit's map only. A loaded
        explanation holds a dict of the saved arrays.
    clean : dict of str to ndarray of float64
        Each blob's value on the unperturbed image (one row, batch dimension dropped).
    counts : ndarray of int64, shape (H, W)
        Number of windows that covered each pixel (0: relevance 0).
    x : ndarray of float32, shape (C, H, W)
        The explained (preprocessed) image.
    window, stride, num_samples, blobs, probability_blobs, laplace_n, seed, batch_size, edges
        The run's parameters (``seed`` is the integer seed used, also when a Generator was
        given; ``edges`` as in :func:`preddiff.windows.window_grid`).
    sampler : dict
        The sampler's description (``describe()``).
    timings : dict of str to float
        Seconds: ``total``, ``classifier`` (inside classifier calls), ``sampler``,
        ``outside`` (= total − classifier), and ``outside_fraction``. A resumed run adds the
        times saved in its checkpoint.
    metadata : dict
        Free-form JSON-serialisable information (the CLI stores the model and version).
    units : dict of str to ndarray of int64, shape (kept,)
        Per blob, the unit indices ``relevance[blob]`` holds, in order. Complete after
        :func:`prediction_difference`; an explanation saved with ``units=`` and loaded again
        holds only the saved maps (:meth:`relevance_of` finds a unit's map by its index).
    """

    relevance: dict
    clean: dict
    counts: np.ndarray
    x: np.ndarray
    window: tuple
    stride: int
    num_samples: int
    blobs: tuple
    probability_blobs: tuple
    laplace_n: float
    seed: int
    sampler: dict
    batch_size: int
    timings: dict
    metadata: dict = field(default_factory=dict)
    edges: str = "cover"
    units: dict = field(default_factory=dict)

    def __post_init__(self):
        for blob in self.relevance:
            self.units.setdefault(blob, np.arange(self._num_maps(blob), dtype=np.int64))

    def _num_maps(self, blob: str) -> int:
        """Number of maps ``relevance[blob]`` holds (without computing lazy maps)."""
        if isinstance(self.relevance, RelevanceMaps):
            return self.relevance.num_units(blob)
        return len(self.relevance[blob])

    def relevance_of(self, blob: str, unit: int) -> np.ndarray:
        """The map of one unit (class) of ``blob``, shape (H, W).

        Raises
        ------
        InvalidArgument
            When the blob is unknown, or the unit's map was not saved (the message lists the
            saved units).
        """
        if blob not in self.relevance:
            raise InvalidArgument(f"unknown blob {blob!r}; this explanation has "
                                  f"{', '.join(self.relevance)}")
        where = np.flatnonzero(self.units[blob] == int(unit))
        if where.size == 0:
            kept = self.units[blob].tolist()
            raise InvalidArgument(
                f"the map of unit {unit} of blob {blob!r} was not saved; this file holds units "
                f"{kept[:20]}{' …' if len(kept) > 20 else ''} (explain with --classes "
                f"{unit} or --save-all)")
        if isinstance(self.relevance, RelevanceMaps):
            return self.relevance.unit(blob, int(where[0]))
        return self.relevance[blob][int(where[0])]

    def clean_values(self, blob: str = "prob") -> np.ndarray:
        """One clean value per unit of ``blob``: the unit's value, or for a blob with spatial
        dimensions the feature map's mean.

        Returns
        -------
        ndarray of float64, shape (units,)
        """
        if blob not in self.clean:
            raise InvalidArgument(f"unknown blob {blob!r}; this explanation has "
                                  f"{', '.join(self.clean)}")
        values = self.clean[blob]
        return values.reshape(values.shape[0], -1).mean(axis=1) if values.ndim > 1 else values

    def top_classes(self, blob: str | None = None, n: int = 3, *,
                    names: bool | None = None) -> list[tuple]:
        """The ``n`` units with the largest clean value of ``blob`` (:meth:`clean_values`).

        Parameters
        ----------
        blob : str, optional
            Default: the explained blob (``metadata["blob"]``), else ``"prob"`` when
            explained, else the first blob.
        n : int, default 3
        names : bool, optional
            Give class names instead of indices: by default when the explanation knows the
            labels (``metadata["labels"]``, one per unit, as :func:`preddiff.explain` and
            the command line record them).

        Returns
        -------
        list of (unit index or class name, clean value), largest first. For a blob with
        spatial dimensions the value is the feature map's mean.
        """
        blob = self._default_blob(blob)
        values = self.clean_values(blob)
        order = np.argsort(-values, kind="stable")[:n]
        labels = self.labels(blob)
        if names and labels is None:
            raise InvalidArgument(f"this explanation has no labels for blob {blob!r}; "
                                  "call top_classes with names=False")
        if names is None:
            names = labels is not None
        return [(labels[int(i)] if names else int(i), float(values[i])) for i in order]

    def _default_blob(self, blob):
        if blob is not None:
            return blob
        chosen = self.metadata.get("blob") if isinstance(self.metadata, dict) else None
        if chosen in self.clean:
            return chosen
        return "prob" if "prob" in self.clean or not self.blobs else self.blobs[0]

    def labels(self, blob: str | None = None) -> list[str] | None:
        """The class names of ``blob``'s units, when known (``metadata["labels"]`` of the
        explained blob, one per unit), else None."""
        blob = self._default_blob(blob)
        labels = self.metadata.get("labels") if isinstance(self.metadata, dict) else None
        if not labels or self.metadata.get("blob", blob) != blob or blob not in self.clean \
                or len(labels) != len(self.clean_values(blob)):
            return None
        return list(labels)

    def plot(self, blob: str | None = None, units=None, *, path=None, shared_scale=False,
             title: str | None = None):
        """The command line's figure: the input, the signed map of each kept class with a
        colour bar in bits of weight of evidence (or units of activation difference), a
        red/blue legend, and the overlays (:func:`preddiff.plot.explanation_figure`).

        Parameters
        ----------
        blob : str, optional
            Default: the explained blob.
        units : sequence of int, optional
            The classes to draw; default the kept ones (``units[blob]``), at most
            :data:`preddiff.plot.MAX_PANELS`.
        path : str or Path, optional
            Also write the figure there (the suffix picks the format; atomically).
        shared_scale : bool, default False
            One colour scale across the panels (compare magnitudes between classes) instead
            of one per panel.
        title : str, optional
            Default: model, blob, window, stride, samples and sampler in words.

        Returns
        -------
        matplotlib.figure.Figure
        """
        from .plot import figure_of

        return figure_of(self, self._default_blob(blob), units, path=path,
                         shared_scale=shared_scale, title=title)

    def _default_units(self, blob: str):
        """What :meth:`save` keeps of ``blob`` by default (None: every map it holds)."""
        from .maps import RelevanceMaps as _Lazy

        if not isinstance(self.relevance, _Lazy):
            return None  # already a selection (explain(), load()) or the caller's dict
        saved = self.metadata.get("saved_units") if isinstance(self.metadata, dict) else None
        if saved == "all":
            return None
        if isinstance(saved, list) and self.metadata.get("blob") == blob:
            return [int(u) for u in saved]
        return [u for u, _ in self.top_classes(blob, KEPT_BY_DEFAULT, names=False)]

    def _meta(self) -> dict:
        return {
            "blobs": list(self.blobs), "probability_blobs": list(self.probability_blobs),
            "window": list(self.window), "stride": self.stride, "num_samples": self.num_samples,
            "laplace_n": self.laplace_n, "seed": self.seed, "sampler": self.sampler,
            "batch_size": self.batch_size, "timings": self.timings, "metadata": self.metadata,
            "edges": self.edges,
        }

    def save(self, path, *, dtype=np.float32, units=None, compress=True) -> None:
        """Write the explanation to ``path`` (``.npz``, atomically; the name is used as given).

        By default it keeps what ``preddiff explain`` keeps, compressed: the maps the
        explanation holds when they are already a selection (from :func:`preddiff.explain`
        or :meth:`load`), else the classes recorded in ``metadata["saved_units"]``, else the
        top :data:`KEPT_BY_DEFAULT` classes of each blob, in float32 — a few MB for an
        ImageNet image where every map in float64 is 400 MB.

        Parameters
        ----------
        dtype : numpy dtype, default float32
            Storage type of the relevance maps (``np.float64`` keeps every bit).
        units : "all", or dict of str to (sequence of int or "all"), optional
            The units (classes) whose maps to keep: ``"all"`` for every map of every blob,
            or per blob, e.g. ``{"prob": [281, 285]}``; blobs not named keep the default.
            The clean outputs of all units are always kept. One 224×224 map is 200 kB in
            float32, so a 1000-class blob is 200 MB in full.
        compress : bool, default True
            Write a compressed ``.npz`` (``np.savez_compressed``).

        Raises
        ------
        InvalidArgument
            A unit index outside the blob, or a unit whose map this explanation lacks.
        """
        import os

        if os.path.isdir(path):
            raise InvalidArgument(f"cannot save the explanation to {path}: it is a folder; "
                                  "give a file name")
        if isinstance(units, str):
            if units != "all":
                raise InvalidArgument(f"units={units!r}: give 'all' or a dict "
                                      "{blob: [unit, ...]}")
            units = {b: "all" for b in self.blobs}
        units = {} if units is None else dict(units)
        for blob in self.blobs:
            if blob not in units:
                default = self._default_units(blob)
                if default is not None:
                    units[blob] = default
        units = {b: u for b, u in units.items() if not (isinstance(u, str) and u == "all")}
        unknown = [b for b in units if b not in self.relevance]
        if unknown:
            raise InvalidArgument(f"units names unknown blob(s) {unknown}; this explanation "
                                  f"has {', '.join(self.relevance)}")
        for blob, chosen in units.items():
            indices = None
            if not isinstance(chosen, (str, bytes)):
                try:
                    indices = list(chosen)
                except TypeError:
                    pass
            if indices is None or not all(isinstance(u, numbers.Integral) and
                                          not isinstance(u, bool) for u in indices):
                raise InvalidArgument(f"units[{blob!r}] must be a sequence of unit indices "
                                      f"(integers), got {chosen!r}")
        arrays = {"meta": json_array(self._meta()), "x": self.x, "counts": self.counts}
        for i, blob in enumerate(self.blobs):
            keep = self.units[blob]
            if blob in units:  # only these maps are computed
                keep = np.unique(np.asarray(list(units[blob]), dtype=np.int64))
                maps = (np.stack([self.relevance_of(blob, int(u)) for u in keep]) if keep.size
                        else np.empty((0, *self.counts.shape)))
            else:
                maps = self.relevance[blob]
            arrays[f"relevance_{i}"] = maps.astype(dtype, copy=False)
            arrays[f"units_{i}"] = np.asarray(keep, dtype=np.int64)
            arrays[f"clean_{i}"] = self.clean[blob]
        atomic_savez(path, compress=compress, **arrays)

    @classmethod
    def load(cls, path) -> "Explanation":
        """Read an explanation written by :meth:`save`.

        Raises
        ------
        InvalidArgument
            ``path`` is missing, a folder, or not a complete saved Explanation.
        """
        from .fileio import saved_file

        path = saved_file(path, "Explanation")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                blobs = tuple(meta["blobs"])
                relevance = {b: data[f"relevance_{i}"] for i, b in enumerate(blobs)}
                units = {b: data[f"units_{i}"] for i, b in enumerate(blobs)
                         if f"units_{i}" in data.files}
                clean = {b: data[f"clean_{i}"] for i, b in enumerate(blobs)}
                x, counts = data["x"], data["counts"]
            return cls(relevance=relevance, clean=clean, counts=counts, x=x,
                       window=tuple(meta["window"]), stride=meta["stride"],
                       num_samples=meta["num_samples"], blobs=blobs,
                       probability_blobs=tuple(meta["probability_blobs"]),
                       laplace_n=meta["laplace_n"], seed=meta["seed"], sampler=meta["sampler"],
                       batch_size=meta["batch_size"], timings=meta["timings"],
                       metadata=meta.get("metadata", {}),
                       # files written before edge coverage existed used the regular grid
                       edges=meta.get("edges", "drop"), units=units)
        except (KeyError, ValueError, TypeError, IndexError, EOFError, OSError,
                zipfile.BadZipFile) as exc:
            # a truncated, empty or foreign file, or one with incomplete metadata
            raise InvalidArgument(f"{path} is not a saved Explanation "
                                  f"({type(exc).__name__}: {exc})") from None


# ----------------------------------------------------------------------------------------------
# prediction differences of one batch


def laplace_correction(p, laplace_n, num_classes):
    """``(p·N + 1) / (N + K)`` (§2.2), elementwise, float64."""
    return (np.asarray(p, dtype=np.float64) * laplace_n + 1.0) / (laplace_n + num_classes)


def log2_odds(p):
    """``log2(p / (1 − p))``, elementwise."""
    return np.log2(p) - np.log2(1.0 - p)


def weight_of_evidence(p_clean, p_removed, laplace_n=100000):
    """Weight of evidence, eq. (4)–(5), with the Laplace correction on both probabilities.

    Parameters
    ----------
    p_clean : array_like, shape (..., K)
        ``p(c|x)``.
    p_removed : array_like, shape (..., K)
        ``p(c|x \\ x_w)`` — already averaged over the samples.
    laplace_n : float
        ``N`` of the correction (training-set size; the released code used 100000).

    Returns
    -------
    ndarray of float64, shape broadcast (..., K)
        In bits; positive = evidence for the class.
    """
    k = np.shape(p_clean)[-1]
    return (log2_odds(laplace_correction(p_clean, laplace_n, k))
            - log2_odds(laplace_correction(p_removed, laplace_n, k)))


def _sample_mean(values: np.ndarray) -> np.ndarray:
    """Mean over axis 1 (the samples), summed in sample order (independent of batch layout)."""
    total = values[:, 0].copy()
    for s in range(1, values.shape[1]):
        total += values[:, s]
    return total / values.shape[1]


class _BlobReducer:
    """Per-window prediction difference of one blob (weight of evidence or activation diff.)."""

    def __init__(self, name: str, clean: np.ndarray, probability: bool, laplace_n: float):
        self.name, self.probability, self.laplace_n = name, probability, laplace_n
        self.units = clean.shape[0] if clean.ndim else 1
        self.clean = clean.reshape(self.units, -1)  # (U, P): P units per feature map
        if probability:
            if self.clean.shape[1] != 1:
                raise InvalidArgument(
                    f"probability blob {name!r} has shape {clean.shape} per image; a "
                    "probability blob must be a vector of class probabilities")
            if self.units < 2:
                raise InvalidArgument(
                    f"probability blob {name!r} has {self.units} class; the weight of "
                    "evidence needs at least 2")
            if np.any(self.clean < -1e-6) or np.any(self.clean > 1 + 1e-6):
                raise InvalidArgument(
                    f"blob {name!r} has values outside [0, 1] "
                    f"({self.clean.min():g} … {self.clean.max():g}), so it is not a "
                    "probability; leave it out of probability_blobs")
            self.clean_log_odds = log2_odds(
                laplace_correction(self.clean[:, 0], laplace_n, self.units))

    def __call__(self, output: np.ndarray, num_windows: int, num_samples: int) -> np.ndarray:
        """``(n·S, ...)`` outputs → ``(n, units)`` per-window prediction differences."""
        output = np.asarray(output)
        if self.clean.shape[1] > 1 and output.ndim == 2 and not self.probability:
            # the classifier averaged each feature map on the device: (n·S, U) means
            means = _sample_mean(output.astype(np.float64).reshape(
                num_windows, num_samples, self.units))
            return self.clean.mean(axis=1) - means
        out = np.asarray(output, dtype=np.float64).reshape(
            num_windows, num_samples, self.units, self.clean.shape[1])
        mean = _sample_mean(out)  # (n, U, P)
        if self.probability:
            p = laplace_correction(mean[:, :, 0], self.laplace_n, self.units)
            return self.clean_log_odds - log2_odds(p)
        return (self.clean - mean).mean(axis=2)


# ----------------------------------------------------------------------------------------------
# argument checks


def _check_image(x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raw = " (raw 0–255 pixels?)" if x.dtype.kind in "biu" else ""
        raise InvalidArgument(
            f"x has dtype {x.dtype}{raw}; expected the preprocessed floating-point image the "
            "classifier takes, e.g. preddiff.preprocess.Preprocessor(model)(image)")
    if x.ndim != 3:
        raise InvalidArgument(f"x must be one preprocessed image of shape (C, H, W), got shape "
                              f"{x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise InvalidArgument("x contains NaN or infinite values")
    return x


def _check_positive(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
            or int(value) < 1:
        raise InvalidArgument(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _check_blobs(blobs, probability_blobs) -> tuple[tuple, tuple]:
    blobs = (blobs,) if isinstance(blobs, str) else tuple(blobs)
    if not blobs or not all(isinstance(b, str) for b in blobs):
        raise InvalidArgument(f"blobs must be a non-empty sequence of blob names, got {blobs!r}")
    blobs = tuple(dict.fromkeys(blobs))
    if probability_blobs is None:
        probability = tuple(b for b in blobs if b == "prob")
    else:
        probability = ((probability_blobs,) if isinstance(probability_blobs, str)
                       else tuple(probability_blobs))
        extra = [b for b in probability if b not in blobs]
        if extra:
            raise InvalidArgument(
                f"probability_blobs {extra} are not among blobs {list(blobs)}")
    return blobs, tuple(dict.fromkeys(probability))


def _probability_default(classifier, blobs, probability_blobs):
    """``probability_blobs`` or, when None, the requested blobs a ``Softmax`` node produces in
    the classifier's ONNX graph (``classifier.probability_outputs``, or its ``model``), else
    the blob named ``prob``; and the rule used, in words (for the metadata)."""
    if probability_blobs is not None:
        return probability_blobs, "given (probability_blobs)"
    names = getattr(classifier, "probability_outputs", None)
    model = getattr(classifier, "model", None)
    if names is None and hasattr(model, "graph"):
        names = [o for n in model.graph.node if n.op_type == "Softmax" for o in n.output]
    requested = (blobs,) if isinstance(blobs, str) else tuple(blobs)
    if names is not None:
        return (tuple(b for b in requested if b in set(names)),
                "the blobs a Softmax node of the classifier's graph produces")
    return tuple(b for b in requested if b == "prob"), "the blob named 'prob' (the " \
        "classifier shows no graph)"


def _classifier_type(classifier) -> str:
    """``module.qualname`` of a classifier function, or of the classifier object's class."""
    target = classifier if isinstance(classifier, (types.FunctionType, types.MethodType)) \
        else type(classifier)
    return f"{target.__module__}.{target.__qualname__}"


def _describe_sampler(sampler) -> dict:
    if not hasattr(sampler, "sample"):
        raise InvalidArgument(
            f"sampler {sampler!r} has no sample(x, top_left, window, num_samples, rngs) method")
    describe = getattr(sampler, "describe", None)
    if callable(describe):
        return json.loads(json.dumps(describe(), sort_keys=True, default=str))
    cls = type(sampler)
    return {"name": f"{cls.__module__}.{cls.__qualname__}"}


def _check_classifier(classifier) -> None:
    if not callable(classifier):
        raise InvalidArgument(
            f"classifier must be a callable mapping a batch (N, C, H, W) to a dict {{blob name: "
            f"array (N, ...)}}, e.g. preddiff.classifier.OnnxClassifier; got {classifier!r}")


def _evaluate(classifier, batch) -> dict:
    outputs = classifier(batch)
    if not isinstance(outputs, dict):
        raise InvalidArgument(
            f"the classifier must return a dict {{blob name: array}}, got {type(outputs)}")
    return outputs


def _check_blob_arrays(outputs: dict, blobs, count: int, units: dict | None, where: str):
    """Each requested blob is a numeric array of ``count`` rows (and, after the first call,
    of the per-image shape ``units[blob]`` it had on the unperturbed image)."""
    for blob in blobs:
        value = outputs[blob]
        text = isinstance(value, (str, bytes))
        dtype = None if text else np.asarray(value).dtype
        if text or dtype.kind not in "biuf":
            what = type(value).__name__ + ("" if text else f" of dtype {dtype}")
            raise InvalidArgument(
                f"the classifier returned blob {blob!r} as {what} {where}; expected a numeric "
                "array with one row per image")
        shape = np.shape(value)
        if len(shape) == 0 or shape[0] != count:
            raise InvalidArgument(
                f"the classifier returned blob {blob!r} with shape {shape} for a batch of "
                f"{count} image(s) {where}; expected ({count}, ...): one row per image")
        if units is not None and shape[1:] != units[blob]:
            raise PredDiffError(
                f"the classifier returned blob {blob!r} with shape {shape[1:]} per image "
                f"{where}, but {units[blob]} on the unperturbed image; its number of units "
                "must not change between calls")


def _check_finite(outputs: dict, blobs, where: str) -> None:
    for blob in blobs:
        if not np.isfinite(outputs[blob]).all():
            raise NonFiniteOutput(
                f"the classifier returned NaN or infinite values in blob {blob!r} {where}")


# ----------------------------------------------------------------------------------------------
# the engine


@dataclass(frozen=True)
class AnalysisSetup:
    """The checked arguments of one analysis: everything a window's value depends on besides
    the classifier and the sampler objects (see :func:`prepare`).

    Attributes
    ----------
    x : ndarray of float32, shape (C, H, W)
    window : (int, int)
    stride : int
    positions : ndarray of int64, shape (n_windows, 2)
        Top-left corners of the windows, in the fixed order of the window indices.
    num_samples, batch_size : int
    blobs, probability_blobs : tuple of str
    laplace_n : float
    seed : int
    sampler : dict
        The sampler's description.
    edges : {"cover", "drop"}
        Whether windows aligned to the last row/column were added
        (:func:`preddiff.windows.window_grid`).
    """

    x: np.ndarray
    window: tuple
    stride: int
    positions: np.ndarray
    num_samples: int
    batch_size: int
    blobs: tuple
    probability_blobs: tuple
    laplace_n: float
    seed: int
    sampler: dict
    edges: str = "cover"

    @property
    def n_windows(self) -> int:
        return len(self.positions)

    @property
    def windows_per_batch(self) -> int:
        """Windows per classifier call; batches lie on a fixed grid of window indices."""
        return max(1, self.batch_size // self.num_samples)


def default_batch_size(image_shape) -> int:
    """Perturbed images per engine batch when none is given: :data:`DEFAULT_BATCH_SIZE`
    (256), or :data:`SMALL_IMAGE_BATCH_SIZE` (1000) for an image of at most
    :data:`SMALL_IMAGE` values (MNIST's 28², CIFAR's 3 × 32²).

    A batch carries fixed host work (one sampler call, with a matrix product per window
    offset in the patch; the reductions; the checks), which a small network's few
    milliseconds per batch expose: LeNet's naive PDA ran at 0.83 of the plain classifier's
    speed with 250 images per batch and at 0.86 with 1000 (medians of 4 interleaved rounds on
    this project's 2-core machine). The batch size never changes the values.

    Parameters
    ----------
    image_shape : tuple of int
        ``(C, H, W)``.
    """
    small = int(np.prod(image_shape)) <= SMALL_IMAGE
    return SMALL_IMAGE_BATCH_SIZE if small else DEFAULT_BATCH_SIZE


def prepare(x, sampler, *, window, stride=1, num_samples, blobs=("prob",),
            probability_blobs=None, batch_size=None, rng,
            laplace_n=100000, edges="cover") -> AnalysisSetup:
    """Check the arguments of :func:`prediction_difference` (same meaning) and resolve the seed.

    Returns
    -------
    AnalysisSetup
    """
    x = _check_image(x)
    kh, kw = window_shape(window)
    edges = check_edges(edges)
    positions = window_positions(x.shape[1:], (kh, kw), stride, edges=edges)
    num_samples = _check_positive(num_samples, "num_samples")
    batch_size = _check_positive(default_batch_size(x.shape) if batch_size is None
                                 else batch_size, "batch_size")
    blobs, probability = _check_blobs(blobs, probability_blobs)
    if not isinstance(laplace_n, numbers.Real) or isinstance(laplace_n, bool) or laplace_n < 0:
        raise InvalidArgument(f"laplace_n must be a number >= 0, got {laplace_n!r}")
    return AnalysisSetup(x=x, window=(kh, kw), stride=int(stride), positions=positions,
                         num_samples=num_samples, batch_size=batch_size, blobs=blobs,
                         probability_blobs=probability, laplace_n=laplace_n,
                         seed=resolve_seed(rng), sampler=_describe_sampler(sampler),
                         edges=edges)


def clean_outputs(setup: AnalysisSetup, classifier) -> tuple[dict, float]:
    """The requested blobs on the unperturbed image, and the seconds the call took.

    Returns
    -------
    clean : dict of str to ndarray of float64
        One row per blob (batch dimension dropped).
    seconds : float
    """
    tic = time.perf_counter()
    outputs = _evaluate(classifier, setup.x[None])
    seconds = time.perf_counter() - tic
    missing = [b for b in setup.blobs if b not in outputs]
    if missing:
        raise InvalidArgument(
            f"unknown blob {', '.join(map(repr, missing))}; the classifier returns "
            f"{', '.join(map(repr, outputs)) or 'nothing'}")
    _check_blob_arrays(outputs, setup.blobs, 1, None, "on the unperturbed image")
    _check_finite(outputs, setup.blobs, "on the unperturbed image")
    return {b: np.asarray(outputs[b], dtype=np.float64)[0] for b in setup.blobs}, seconds


def reducers(setup: AnalysisSetup, clean: dict) -> dict:
    """The per-window reduction of each blob (weight of evidence or activation difference);
    raises :class:`InvalidArgument` for a probability blob that is not a probability."""
    return {b: _BlobReducer(b, clean[b], b in setup.probability_blobs, setup.laplace_n)
            for b in setup.blobs}


def checkpoint_fingerprint(setup: AnalysisSetup, classifier) -> dict:
    """What a checkpoint of this analysis must match to be resumed (see
    :mod:`preddiff.checkpoint`)."""
    return {
        "x_sha1": hashlib.sha1(setup.x.tobytes()).hexdigest(), "x_shape": list(setup.x.shape),
        "window": list(setup.window), "stride": setup.stride,
        "num_samples": setup.num_samples, "blobs": list(setup.blobs),
        "probability_blobs": list(setup.probability_blobs), "laplace_n": setup.laplace_n,
        "seed": setup.seed, "sampler": setup.sampler,
        "classifier": _classifier_type(classifier), "n_windows": setup.n_windows,
        # only when edge windows were added: regular-grid runs keep their fingerprint
        **({"edges": setup.edges} if setup.n_windows != len(window_positions(
            setup.x.shape[1:], setup.window, setup.stride, edges="drop")) else {}),
    }


def prefetch_default(classifier) -> bool:
    """Whether the engine draws the next batch's samples while the classifier evaluates the
    current one, by default: yes, unless the classifier computes on the CPU with onnxruntime
    (``classifier.provider == "CPUExecutionProvider"``, as
    :class:`~preddiff.classifier.OnnxClassifier` and
    :class:`~preddiff.incremental.IncrementalClassifier` report it). onnxruntime's threads
    already use every core there, so a sampler thread beside them takes its time from the
    classifier; on a GPU (or for a classifier of unknown kind) the host is free while the
    device computes."""
    return getattr(classifier, "provider", None) != "CPUExecutionProvider"


class WindowEvaluator:
    """Per-window prediction differences of any range of windows of one analysis.

    A window's value depends only on the setup, the classifier's outputs for the batch it is
    evaluated in and its own random stream, and :meth:`__call__` evaluates windows in batches
    on the fixed grid of window indices (multiples of ``setup.windows_per_batch``). So any
    split of the windows into ranges, evaluated anywhere and in any order, gives bit for bit
    the values of one pass over all windows (with the same classifier, when its output for an
    image does not depend on the process it runs in).

    Parameters
    ----------
    setup : AnalysisSetup
    classifier, sampler
        As in :func:`prediction_difference`.
    clean : dict of str to ndarray
        :func:`clean_outputs` of the setup.
    prefetch : bool, optional
        Draw the next batch's samples in a background thread while the current batch is
        evaluated (same values; off: everything in the calling thread). Default:
        :func:`prefetch_default` of the classifier.
    """

    def __init__(self, setup: AnalysisSetup, classifier, sampler, clean: dict, *,
                 prefetch: bool | None = None):
        self.setup, self.sampler = setup, sampler
        self.prefetch = prefetch_default(classifier) if prefetch is None else bool(prefetch)
        self.reducers = reducers(setup, clean)
        self.per_image = {b: np.shape(clean[b]) for b in setup.blobs}
        # activation differences of feature maps need only each map's mean (eq. 9, averaged
        # per map): a classifier that can take it on the device sends back (N, C) values
        spatial = tuple(b for b in setup.blobs if b not in setup.probability_blobs
                        and len(self.per_image[b]) == 3)
        self.runner = _BatchRunner(setup.x, classifier, sampler, setup.window,
                                   setup.num_samples, setup.windows_per_batch, setup.seed,
                                   spatial_means=spatial)

    def batches(self, start: int, stop: int):
        """The grid-aligned batches ``(a, b)`` that cover windows ``start … stop − 1``."""
        wpb = self.setup.windows_per_batch
        while start < stop:
            end = min(stop, (start // wpb + 1) * wpb)
            yield start, end
            start = end

    def stream(self, start: int, stop: int, timings: dict | None = None):
        """Values of windows ``start … stop − 1``, one grid batch at a time.

        The samples of the next batch are drawn in the background while the current one is
        evaluated (``prefetch``); the values are the same either way.

        Yields
        ------
        a, b : int
            The batch's windows ``a … b − 1``.
        values : dict of str to ndarray of float64, shape (b − a, units)
            Weight of evidence (eq. 4–5) or activation difference (eq. 9) per window and unit.
        """
        setup = self.setup
        timings = {"classifier": 0.0, "sampler": 0.0} if timings is None else timings
        prefetch = _Prefetch(self.runner, setup.positions, self.batches(start, stop),
                             self.prefetch)
        with _one_blas_thread():
            yield from self._evaluated(prefetch, timings)

    def _evaluated(self, prefetch, timings):
        setup = self.setup
        wpb, positions = setup.windows_per_batch, setup.positions
        for (a, b), drawn in prefetch:
            outputs = self.runner.evaluate(drawn, timings)
            missing = [blob for blob in setup.blobs if blob not in outputs]
            if missing:
                raise InvalidArgument(f"the classifier did not return blob(s) {missing}")
            where = (f"in batch {a // wpb} (windows {a}–{b - 1}, top-left "
                     f"{tuple(positions[a].tolist())} to {tuple(positions[b - 1].tolist())})")
            _check_blob_arrays(outputs, setup.blobs, (b - a) * setup.num_samples,
                               self._per_image_of(outputs), where)
            _check_finite(outputs, setup.blobs, where)
            yield a, b, {blob: reduce(outputs[blob], b - a, setup.num_samples)
                         for blob, reduce in self.reducers.items()}

    def _per_image_of(self, outputs) -> dict:
        """The per-image shape each blob must have: a blob the classifier reduced to its
        per-map means (``spatial_means``) has one value per map."""
        shapes = dict(self.per_image)
        for blob in self.runner.spatial_means:
            if np.ndim(outputs[blob]) == 2:
                shapes[blob] = shapes[blob][:1]
        return shapes

    def __call__(self, start: int, stop: int, timings: dict | None = None) -> dict:
        """Values of windows ``start … stop − 1``.

        Returns
        -------
        dict of str to ndarray of float64, shape (stop − start, units)
            Weight of evidence (eq. 4–5) or activation difference (eq. 9) per window and unit.
        """
        values = {b: np.empty((stop - start, r.units)) for b, r in self.reducers.items()}
        for a, b, block in self.stream(start, stop, timings):
            for blob, array in block.items():
                values[blob][a - start:b - start] = array
        return values


def window_values(setup: AnalysisSetup, classifier, sampler, clean: dict, start: int,
                  stop: int, timings: dict | None = None) -> dict:
    """Per-window prediction differences of windows ``start … stop − 1`` (a pure function of
    its arguments; see :class:`WindowEvaluator`).

    Returns
    -------
    dict of str to ndarray of float64, shape (stop − start, units)
    """
    if not 0 <= start <= stop <= setup.n_windows:
        raise InvalidArgument(f"window range {start}–{stop} outside 0–{setup.n_windows}")
    return WindowEvaluator(setup, classifier, sampler, clean)(start, stop, timings)


def assemble(setup: AnalysisSetup, clean: dict, values: dict, timings: dict) -> Explanation:
    """The :class:`Explanation` from every window's value: the per-pixel average over the
    covering windows (§3.2), in the fixed window order, computed per blob or per unit when
    first asked for (:class:`preddiff.maps.RelevanceMaps`).

    Parameters
    ----------
    values : dict of str to ndarray, shape (n_windows, units)
    timings : dict
        ``total``, ``classifier`` and ``sampler`` seconds; ``outside`` and
        ``outside_fraction`` are added.
    """
    image_shape = setup.x.shape[1:]
    counts = coverage_counts(image_shape, setup.window, setup.stride, edges=setup.edges)
    # the maps are computed when asked for: a 1000-class blob at 224² is 400 MB
    relevance = RelevanceMaps({b: values[b] for b in setup.blobs}, counts, setup.window,
                              setup.stride, setup.edges)
    timings["outside"] = timings["total"] - timings["classifier"]
    timings["outside_fraction"] = timings["outside"] / max(timings["total"], 1e-12)
    return Explanation(
        relevance=relevance, clean=clean, counts=counts, x=setup.x, window=setup.window,
        stride=setup.stride, num_samples=setup.num_samples, blobs=setup.blobs,
        probability_blobs=setup.probability_blobs, laplace_n=setup.laplace_n,
        seed=setup.seed, sampler=setup.sampler, batch_size=setup.batch_size, timings=timings,
        edges=setup.edges)


def prediction_difference(x, classifier, sampler, *, window, stride=1, num_samples,
                          blobs=("prob",), probability_blobs=None,
                          batch_size=None, rng, laplace_n=100000,
                          checkpoint=None, checkpoint_interval=10.0, keep_checkpoint=False,
                          progress=True, edges="cover", prefetch=None) -> Explanation:
    """Prediction difference analysis of one image (Algorithm 1, §3.3 for hidden blobs).

    Parameters
    ----------
    x : array_like, shape (C, H, W)
        The preprocessed image, cast to float32.
    classifier : callable
        Maps a float32 batch ``(N, C, H, W)`` to a dict ``{blob name: array (N, ...)}``, e.g.
        :class:`preddiff.classifier.OnnxClassifier`. See the module docstring for the optional
        ``evaluate_windows`` fast path.
    sampler : object
        Fills the removed windows; see the protocol in :mod:`preddiff.samplers`.
    window : int or (int, int)
        ``k`` (square) or ``(kh, kw)``; all channels are removed together.
    stride : int, optional
        Step between window positions. 1 (default) covers every position from the top-left
        to the bottom-right corner, as in the paper; ``stride = k`` is the released code's
        non-overlapping mode. Larger strides need fewer windows but give coarser maps.
        When ``H − kh`` (or ``W − kw``) is not a multiple of the stride, see ``edges``.
    num_samples : int
        ``S`` samples per window (paper: 20; released code: 10).
    blobs : sequence of str, optional
        Blobs to explain.
    probability_blobs : sequence of str, optional
        Which of ``blobs`` are probability (softmax) outputs and get the weight of evidence;
        default: those a ``Softmax`` node produces in the classifier's ONNX graph
        (:class:`~preddiff.classifier.OnnxClassifier`, whatever their names), and for a
        classifier without a graph the blob named ``prob`` if requested. The others get the
        activation difference. The choice and its rule are in
        ``explanation.metadata["probability"]``.
    batch_size : int, optional
        Perturbed images per engine batch (rounded down to whole windows, at least one
        window of ``S`` images): sampled, evaluated and reduced together; a classifier may
        split them into smaller calls. Memory: about ``batch_size · C · H · W · 4`` bytes.
        Default: :func:`default_batch_size` (256; 1000 for images of at most 4,096 values).
    rng : numpy.random.Generator or int
        Seed of the run; a Generator gives one integer seed (``rng.integers(2**63)``, drawn
        once at the start).
    laplace_n : float, optional
        ``N`` of the Laplace correction ``p ← (p·N + 1)/(N + K)``; the released code used
        100000 (the paper: the number of training instances).
    checkpoint : str or Path, optional
        File to save progress to (see :mod:`preddiff.checkpoint`); an existing checkpoint
        made with the same arguments is resumed, one made with other arguments is refused
        (:class:`~preddiff.errors.CheckpointMismatch`) — except one that records no finished
        window, which holds nothing to resume and is overwritten. Progress is also saved when
        the run is interrupted by an exception (including Ctrl-C).
    checkpoint_interval : float, optional
        Seconds between saves (at least; large results are saved less often so that saving
        stays under ~5 % of the time). 0: after every batch.
    keep_checkpoint : bool, optional
        Keep the checkpoint file after success (a rerun then returns at once). By default it
        is deleted once the result is computed.
    progress : bool, optional
        Show a tqdm progress bar (windows done, windows/s, ETA) on stderr.
    edges : {"cover", "drop"}, optional
        ``"cover"`` (default): when the stride does not reach the last rows (columns), add a
        row (column) of windows aligned to the image's last row (column), so that every pixel
        is covered (for ``stride <= k``). ``"drop"``: the regular grid only, as the released
        code; the uncovered band gets relevance 0 and count 0. Identical for ``stride = 1``
        and whenever the stride divides ``H − kh`` and ``W − kw``.
    prefetch : bool, optional
        Draw the next batch's samples in a background thread while the classifier evaluates
        the current one (the same values either way; off: all in the calling thread).
        Default: on, unless the classifier computes on the CPU with onnxruntime
        (:func:`prefetch_default`).

    Returns
    -------
    Explanation

    Raises
    ------
    InvalidArgument
        A window larger than the image, ``num_samples < 1``, an unknown blob (the message lists
        the classifier's blobs), a bad seed or stride.
    NonFiniteOutput
        The classifier returned NaN or infinity (the message names the batch and windows).
    CheckpointMismatch
        ``checkpoint`` was written by a run with other arguments.

    Examples
    --------
    >>> from preddiff import prediction_difference, samplers            # doctest: +SKIP
    >>> sampler = samplers.MarginalSampler(pool)                         # doctest: +SKIP
    >>> e = prediction_difference(x, clf, sampler, window=4, num_samples=10,
    ...                           rng=0)                                 # doctest: +SKIP
    >>> e.relevance["prob"].shape                                        # doctest: +SKIP
    (10, 28, 28)
    """
    started = time.perf_counter()
    probability_blobs, probability_rule = _probability_default(classifier, blobs,
                                                               probability_blobs)
    setup = prepare(x, sampler, window=window, stride=stride, num_samples=num_samples,
                    blobs=blobs, probability_blobs=probability_blobs, batch_size=batch_size,
                    rng=rng, laplace_n=laplace_n, edges=edges)
    _check_classifier(classifier)
    n_windows = setup.n_windows
    clean, clean_seconds = clean_outputs(setup, classifier)
    evaluate = WindowEvaluator(setup, classifier, sampler, clean, prefetch=prefetch)

    values = {b: np.zeros((n_windows, r.units)) for b, r in evaluate.reducers.items()}
    timings = {"classifier": 0.0, "sampler": 0.0, "total": 0.0}
    done, store = 0, None
    if checkpoint is not None:
        store = Checkpoint(checkpoint, checkpoint_fingerprint(setup, classifier), clean,
                           checkpoint_interval)
        done = _resume(store, values, timings)
    previous_total = timings["total"]
    timings["classifier"] += clean_seconds

    bar = _progress_bar(n_windows, done, progress)
    try:
        # batches on a fixed grid of window indices: a resumed run sees the same batches
        for start, stop, block in evaluate.stream(done, n_windows, timings):
            for b in setup.blobs:
                values[b][start:stop] = block[b]
            done = stop
            bar.update(stop - bar.n)
            if store is not None and store.due():
                timings["total"] = previous_total + time.perf_counter() - started
                store.save(done, values, timings)
    except BaseException:
        if store is not None:
            timings["total"] = previous_total + time.perf_counter() - started
            try:
                with _sigint_deferred():  # a second Ctrl-C must not lose the finished work
                    store.save(done, values, timings)
            except Exception:  # keep the previous checkpoint; report the original error
                pass
        raise
    finally:
        bar.close()

    timings["total"] = previous_total + time.perf_counter() - started
    explanation = assemble(setup, clean, values, timings)
    explanation.metadata["probability"] = {"blobs": list(setup.probability_blobs),
                                           "rule": probability_rule}
    if store is not None:
        if keep_checkpoint:
            store.save(done, values, timings)
        else:
            store.remove()
    return explanation


@contextlib.contextmanager
def _sigint_deferred():
    """Ignore Ctrl-C (SIGINT) inside the block, in the main thread; restore after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _resume(store: Checkpoint, values: dict, timings: dict) -> int:
    """Load a checkpoint's per-window values and timings (if any); the windows done."""
    saved = store.load()
    if saved is None:
        return 0
    done, saved_values, saved_timings = saved
    for blob, array in values.items():
        array[:done] = saved_values[blob]
    timings.update({k: float(v) for k, v in saved_timings.items() if k in timings})
    return done


class _BatchRunner:
    """Samples the windows of a batch (:meth:`sample`) and evaluates their perturbed images
    (:meth:`evaluate`): through the classifier's ``evaluate_windows`` when it has one (only the
    samples and positions are handed over), else as full images built here."""

    def __init__(self, x, classifier, sampler, window, num_samples, windows_per_batch, seed,
                 spatial_means=()):
        self.x, self.classifier, self.sampler = x, classifier, sampler
        self.window, self.num_samples, self.seed = window, num_samples, seed
        self.fast = callable(getattr(classifier, "evaluate_windows", None))
        self.spatial_means = (tuple(spatial_means) if self.fast and getattr(
            classifier, "supports_spatial_means", False) else ())
        self.capacity = windows_per_batch * num_samples
        self.buffer = None

    def sample(self, positions, start, stop) -> tuple:
        """Samples of windows ``start … stop − 1``: ``(top_left (n·S, 2), patches (n·S, C,
        kh, kw), seconds)``; a pure function of the arguments (each window its own stream)."""
        (kh, kw), s = self.window, self.num_samples
        c = self.x.shape[0]
        top_left = positions[start:stop]
        n = stop - start
        tic = time.perf_counter()
        patches = self.sampler.sample(self.x, top_left, (kh, kw), s,
                                      WindowStreams(self.seed, start, stop))
        patches = np.asarray(patches, dtype=np.float32)
        if patches.shape != (n, s, c, kh, kw):
            raise PredDiffError(
                f"the sampler returned shape {patches.shape}, expected {(n, s, c, kh, kw)} "
                "(windows, samples, channels, kh, kw)")
        patches = patches.reshape(n * s, c, kh, kw)
        repeated = np.repeat(top_left, s, axis=0)
        return repeated, patches, time.perf_counter() - tic

    def evaluate(self, drawn, timings) -> dict:
        """The classifier's blobs for the perturbed images of ``drawn`` (:meth:`sample`)."""
        repeated, patches, seconds = drawn
        timings["sampler"] += seconds
        if self.fast:
            tic = time.perf_counter()
            if self.spatial_means:
                outputs = self.classifier.evaluate_windows(self.x, repeated, patches,
                                                           spatial_means=self.spatial_means)
            else:
                outputs = self.classifier.evaluate_windows(self.x, repeated, patches)
        else:
            batch = self._build(repeated, patches)
            tic = time.perf_counter()
            outputs = self.classifier(batch)
        timings["classifier"] += time.perf_counter() - tic
        if not isinstance(outputs, dict):
            raise InvalidArgument(
                f"the classifier must return a dict {{blob name: array}}, got {type(outputs)}")
        for blob, value in outputs.items():
            if np.shape(value)[:1] != (len(patches),):
                raise PredDiffError(
                    f"the classifier returned blob {blob!r} with shape {np.shape(value)} for "
                    f"a batch of {len(patches)} images")
        return outputs

    def __call__(self, positions, start, stop, timings) -> dict:
        """Sample and evaluate windows ``start … stop − 1``."""
        return self.evaluate(self.sample(positions, start, stop), timings)

    def _build(self, top_left, patches) -> np.ndarray:
        """``x`` repeated, with ``patches[n]`` written at ``top_left[n]`` in image ``n``."""
        if self.buffer is None:
            self.buffer = np.empty((self.capacity,) + self.x.shape, dtype=np.float32)
        return compose_batch(self.x, top_left, patches, out=self.buffer)


@contextlib.contextmanager
def _one_blas_thread():
    """BLAS (OpenBLAS, MKL) on one thread while windows are evaluated.

    The samplers' matrix products are small (a conditional Gaussian's ``(S, 100) @ (100, 100)``
    per window, its conditionals' ``(100, 96) @ (96, 100)`` per window offset), and the
    classifier does not use BLAS. Measured on this project's 2-core machine, OpenBLAS's
    threads made the 25 conditionals of a LeNet run 20x slower (243 ms against 12 ms on one
    thread) and slowed every batch's sampling. The limit is process-wide while it holds (it is
    how BLAS libraries are configured), counted: analyses running at once in several threads
    (Dask workers) share it, and the last one to finish restores BLAS's own setting. The
    products are the same on one thread (each output element is computed by one thread either
    way)."""
    global _BLAS_CONTROLLER, _BLAS_USERS, _BLAS_LIMITER
    with _BLAS_LOCK:
        if _BLAS_CONTROLLER is None:
            try:
                from threadpoolctl import ThreadpoolController
            except ImportError:  # pragma: no cover - a dependency
                _BLAS_CONTROLLER = False
            else:
                # found once per process: scanning the loaded libraries took ~1.5 ms per run
                _BLAS_CONTROLLER = ThreadpoolController()
        if _BLAS_CONTROLLER and _BLAS_USERS == 0:
            _BLAS_LIMITER = _BLAS_CONTROLLER.limit(limits=1, user_api="blas")
        _BLAS_USERS += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            _BLAS_USERS -= 1
            if _BLAS_USERS == 0 and _BLAS_LIMITER is not None:
                _BLAS_LIMITER.restore_original_limits()
                _BLAS_LIMITER = None


_BLAS_CONTROLLER = None
_BLAS_LOCK = threading.Lock()
_BLAS_USERS = 0
_BLAS_LIMITER = None


class _Prefetch:
    """Draws the samples of the next batch in a background thread while the current batch is
    evaluated (the classifier releases the GIL; so do NumPy's large operations). The sampler is
    called one batch at a time and in order, so a sampler needs no locking; its values do not
    depend on the thread (each window has its own random stream)."""

    def __init__(self, runner: "_BatchRunner", positions, batches, enabled: bool):
        self.runner, self.positions = runner, positions
        self.batches = list(batches)
        self.pool = None
        if enabled and len(self.batches) > 1:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(1, thread_name_prefix="preddiff-sampler")

    def _draw(self, i: int):
        a, b = self.batches[i]
        if self.pool is None:
            return _Done(self.runner.sample(self.positions, a, b))
        return self.pool.submit(self.runner.sample, self.positions, a, b)

    def __iter__(self):
        """``((a, b), drawn)`` per batch, in order."""
        if not self.batches:
            return
        try:
            pending = self._draw(0)
            for i, batch in enumerate(self.batches):
                drawn = pending.result()
                if i + 1 < len(self.batches):
                    pending = self._draw(i + 1)
                yield batch, drawn
        finally:
            if self.pool is not None:
                # wait for a sampler call still running (at most one batch's sampling), so
                # that no call outlives the run and overlaps the next run's
                self.pool.shutdown(wait=True, cancel_futures=True)


class _Done:
    """A finished result with the ``result()`` of a future."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="win", desc="prediction difference",
                file=sys.stderr, disable=not enabled, dynamic_ncols=True, smoothing=0.1)
