"""Shared machinery of the figure scripts ``reproduce/fig1.py`` … ``fig6.py``.

Each figure script is thin: it declares its parameters for the two scales (``CONFIG``), asks
this module for models, images and explanations, and plots. This module supplies

* the command line every script shares (``--scale paper|smoke``, ``--set KEY=VALUE``,
  ``--force``, ``--out-dir``, ``--cache-dir``) and the resulting :class:`Run`;
* a cache of computed arrays keyed on the parameters that produced them (:meth:`Run.cached`):
  an ``.npz`` is reused when it exists and its stored parameters equal the requested ones,
  and recomputed otherwise;
* the models at both scales (:func:`load_model`): at paper scale the Caffe-zoo weights through
  :func:`preddiff.zoo.ensure_onnx`; at smoke scale the bundled, real LeNet and narrow
  random-weight versions of the zoo architectures (:func:`preddiff.caffe.writer.random_onnx`);
* the images and sampler pools at both scales (:func:`load_inputs`, :func:`pool_for`);
* Prediction Difference Analysis and the sensitivity map with their results as plain arrays
  (:func:`explain`, :func:`sensitivity`);
* the figure's result file (the numbers compared with the stored references by
  :mod:`reproduce.check`) and the configuration JSON written next to each figure;
* the comparison with a reference (:func:`compare`) and its tolerance (:data:`TOLERANCE`).

Seeds: every explanation is seeded with ``config["seed"]`` and every conditional-sampler fit
with ``config["seed"] + 1``; there is no global seeding anywhere.

Configuration keys shared by the figures (each script's ``CONFIG`` has the values per scale;
``--set KEY=VALUE`` overrides one): ``window`` (k), ``padding`` (l), ``num_samples`` (S),
``stride``, ``seed``, ``num_patches`` (patches the conditional Gaussian is fitted on),
``colour`` (``per-channel`` as the released code, or ``joint`` as the paper text),
``marginal_order`` (``random`` or the released code's ``first``), ``preprocess`` (``crop`` as
the released code, or ``resize``), ``laplace_n``, ``pool_dir`` (a folder of images for the
samplers instead of the bundled examples), ``batch_size``, ``incremental`` (use
:class:`preddiff.incremental.IncrementalClassifier` when available: exact, faster; on at paper
scale), and ``weights`` (``zoo``, or ``random`` with ``random_factor``/``random_seed`` for a
dry run of the paper-scale code on random-weight networks). ``compat`` (``released``: the
released code's numbers — first-S marginal, its patch drawing, shared colour conditionals,
float16 relevance — see :mod:`preddiff.compat`) is accepted by every figure.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from preddiff.errors import interrupted
from preddiff.fileio import atomic_path, atomic_write_bytes, atomic_write_text

from . import paths

SCALES = ("paper", "smoke")
ZOO_MODELS = ("alexnet", "googlenet", "vgg16")

TOLERANCE = 1e-3
"""Largest allowed deviation from a reference, relative to the reference array's max |value|.

Why 1e-3: with the same seeds the computation is deterministic, so on one machine a rerun
reproduces the numbers up to floating-point reassociation (in practice bit for bit). Across
machines the float32 forward passes differ by roughly 1e-6–1e-5 relative (other CPU
instruction sets and BLAS/oneDNN kernels, another onnxruntime build, GPU instead of CPU),
the conditional sampler's Cholesky factors and solves by about as much, and the weight of
evidence turns a probability change ``dp`` into ``dp / (p (1-p) ln 2)`` bits, which the
Laplace correction bounds. 1e-3 of the map's largest magnitude leaves a margin of about 100
over that noise, while any real change (another sample, a shifted window, a different seed,
sampler or preprocessing) moves a map by 1e-2–1 of its magnitude. Predicted classes must be
identical: a change of class is never floating-point noise at these margins.
"""

VERDICT_PASS = "PASS"
VERDICT_FAIL = "FAIL"
VERDICT_UNVERIFIED = "UNVERIFIED"
NO_REFERENCE = "no reference recorded"

_PARAMS_KEY = "__params__"
_META_KEY = "__meta__"


# --------------------------------------------------------------------------- command line
def build_parser(figure: str, description: str, config: Mapping[str, Mapping]) -> argparse.ArgumentParser:
    """The argument parser every figure script shares."""
    keys = sorted(set().union(*(c.keys() for c in config.values())))
    parser = argparse.ArgumentParser(
        prog=f"python -m reproduce.{figure}",
        description=description,
        epilog="Configurable keys for --set: " + ", ".join(keys),
    )
    parser.add_argument("--scale", choices=SCALES, default="paper",
                        help="paper: the Caffe-zoo weights at full resolution (default); "
                        "smoke: LeNet and narrow random-weight nets, offline on a CPU in seconds")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override one configuration value (VALUE is JSON, else a string), "
                        "e.g. --set windows=[1,4,7,10]; may be repeated")
    parser.add_argument("--force", action="store_true",
                        help="recompute even when a cached result with the same parameters exists")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help=f"root of the figure folders (default {paths.FIGURES})")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"root of the cache folders (default {paths.CACHE})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    cluster = parser.add_mutually_exclusive_group()
    cluster.add_argument("--workers", type=int, default=None, metavar="N",
                         help="compute the explanations on a local Dask cluster of N worker "
                         "processes (needs preddiff[cluster]); the results are those of a run "
                         "in one process")
    cluster.add_argument("--scheduler", default=None, metavar="ADDRESS",
                         help="the same on a running Dask cluster, e.g. tcp://HOST:8786")
    return parser


def parse_overrides(items: list[str], allowed: set[str]) -> dict[str, Any]:
    """``["k=v", ...]`` → ``{k: json-or-str(v)}``; unknown keys raise ``ValueError``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in allowed:
            raise ValueError(
                f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(allowed))}"
            )
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def apply_compat(overrides: dict[str, Any]) -> dict[str, Any]:
    """``--set compat=released``: add the released code's sampler settings
    (:data:`preddiff.compat.RELEASED`: first-S marginal, released patch drawing with 20000,
    shared colour conditionals, the regular window grid; the float16 rounding is applied in
    :func:`explain`); keys
    given explicitly with ``--set`` win. ``compat=intended`` changes nothing."""
    from preddiff.compat import settings
    from preddiff.errors import InvalidArgument

    if "compat" not in overrides:
        return overrides
    try:
        released = settings(overrides["compat"])
    except InvalidArgument as exc:
        raise ValueError(f"--set compat: {exc}") from None
    released.pop("relevance_dtype", None)
    return {**released, **overrides}


@dataclasses.dataclass
class Run:
    """One invocation of a figure script: its parameters and where it writes.

    Attributes
    ----------
    figure : str
        ``"fig1"`` … ``"fig6"``.
    scale : str
        ``"paper"`` or ``"smoke"``.
    config : dict
        The figure's parameters (the scale's defaults plus ``--set`` overrides).
    argv : list of str
        The command line (for the configuration JSON).
    force : bool
        Recompute even when a matching cache exists.
    progress : bool
        Show progress bars.
    out_root, cache_root : Path or None
        Roots replacing ``figures/`` and ``figures/cache/``.
    """

    figure: str
    scale: str
    config: dict
    argv: list[str]
    force: bool = False
    progress: bool = True
    out_root: Path | None = None
    cache_root: Path | None = None
    models: dict = dataclasses.field(default_factory=dict)
    loaded: dict = dataclasses.field(default_factory=dict)
    timings: dict = dataclasses.field(default_factory=dict)
    computed: list = dataclasses.field(default_factory=list)
    reused: list = dataclasses.field(default_factory=list)
    workers: int | None = None
    scheduler: str | None = None
    _client: Any = None

    @property
    def on_cluster(self) -> bool:
        return self.workers is not None or self.scheduler is not None

    def client(self):
        """The Dask client of ``--workers``/``--scheduler`` (started on first use, closed at
        exit), or None for a run in this process."""
        if not self.on_cluster:
            return None
        if self._client is None:
            import atexit
            import contextlib

            from preddiff.cluster import connect

            stack = contextlib.ExitStack()
            self._client = stack.enter_context(connect(workers=self.workers,
                                                       scheduler=self.scheduler))
            atexit.register(stack.close)
        return self._client

    @property
    def out_dir(self) -> Path:
        return paths.figure_dir(self.scale, self.out_root)

    @property
    def cache_dir(self) -> Path:
        return paths.cache_dir(self.scale, self.cache_root)

    @property
    def figure_stem(self) -> Path:
        return paths.figure_stem(self.figure, self.scale, self.out_root)

    @property
    def result_path(self) -> Path:
        return paths.result_path(self.figure, self.scale, self.cache_root)

    def cached(self, name: str, params: Mapping, compute: Callable[[], Mapping[str, np.ndarray]]):
        """Arrays of ``compute()``, cached in ``<cache_dir>/<name>-<hash>.npz`` (see :func:`cached`)."""
        start = time.perf_counter()
        arrays, hit = cached(self.cache_dir, name, params, compute, force=self.force)
        (self.reused if hit else self.computed).append(name)
        self.timings[name] = round(time.perf_counter() - start, 3)
        return arrays


def parse_args(figure: str, description: str, config: Mapping[str, Mapping],
               argv: list[str] | None = None) -> Run:
    """Parse a figure script's command line into a :class:`Run`."""
    parser = build_parser(figure, description, config)
    args = parser.parse_args(argv)
    cfg = json.loads(json.dumps(config[args.scale]))  # a deep copy of plain JSON values
    try:
        overrides = parse_overrides(args.overrides, set(cfg) | {"compat"})
        cfg.update(apply_compat(overrides))
    except ValueError as exc:
        parser.error(str(exc))
    command = ["python", "-m", f"reproduce.{figure}"] + list(sys.argv[1:] if argv is None else argv)
    return Run(figure=figure, scale=args.scale, config=cfg, argv=command, force=args.force,
               progress=not args.no_progress, out_root=args.out_dir, cache_root=args.cache_dir,
               workers=args.workers, scheduler=args.scheduler)


# --------------------------------------------------------------------------- files and cache
def canonical(params: Any) -> str:
    """Canonical JSON of ``params`` (sorted keys, tuples as lists, NumPy scalars as numbers)."""
    def default(obj):
        if isinstance(obj, (np.integer,)):
            return int(obj)
        if isinstance(obj, (np.floating,)):
            return float(obj)
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        if isinstance(obj, Path):
            return str(obj)
        raise TypeError(f"cannot put {type(obj).__name__} into cache parameters")

    return json.dumps(params, sort_keys=True, default=default, separators=(",", ":"))


def params_hash(params: Any) -> str:
    """Short sha256 of :func:`canonical` ``(params)`` (names the cache file)."""
    return hashlib.sha256(canonical(params).encode()).hexdigest()[:16]


def save_npz(path: Path, arrays: Mapping[str, np.ndarray], params: Any = None,
             meta: Any = None) -> None:
    """Write ``arrays`` (plus ``params`` and ``meta`` as JSON strings) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    if params is not None:
        payload[_PARAMS_KEY] = np.array(canonical(params))
    if meta is not None:
        payload[_META_KEY] = np.array(canonical(meta))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **payload)


def load_npz(path: Path) -> tuple[dict[str, np.ndarray], Any, Any]:
    """``(arrays, params, meta)`` of a file written by :func:`save_npz`."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k not in (_PARAMS_KEY, _META_KEY)}
        params = json.loads(str(data[_PARAMS_KEY])) if _PARAMS_KEY in data.files else None
        meta = json.loads(str(data[_META_KEY])) if _META_KEY in data.files else None
    return arrays, params, meta


def cached(folder: Path, name: str, params: Mapping,
           compute: Callable[[], Mapping[str, np.ndarray]], *, force: bool = False):
    """Return ``(arrays, hit)``: cached arrays when the parameters match, else computed ones.

    The file is ``folder/<name>-<params_hash>.npz`` and also stores the parameters; it is
    reused only when they are equal to ``params`` (so a hash collision cannot return the wrong
    numbers) and ``force`` is false. Otherwise ``compute()`` runs and its arrays are written
    atomically.
    """
    path = Path(folder) / f"{name}-{params_hash(params)}.npz"
    wanted = json.loads(canonical(params))
    if path.is_file() and not force:
        try:
            arrays, stored, _ = load_npz(path)
        except (OSError, ValueError, KeyError):
            stored = None
        if stored == wanted:
            return arrays, True
    arrays = {k: np.asarray(v) for k, v in compute().items()}
    save_npz(path, arrays, params)
    return arrays, False


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _preddiff_version() -> str:
    import preddiff

    return preddiff.__version__


@functools.lru_cache(maxsize=None)
def _versions() -> tuple:
    return tuple(versions_uncached().items())


def versions() -> dict[str, str]:
    """Versions of Python, the platform and every library that shapes the numbers (cached)."""
    return dict(_versions())


def versions_uncached() -> dict[str, str]:
    """Versions of Python, the platform and every library that shapes the numbers."""
    out = {"python": platform.python_version(), "platform": platform.platform(),
           "machine": platform.machine(), "processor": _cpu_name(),
           "cpu_count": str(os.cpu_count())}
    for module in ("preddiff", "numpy", "scipy", "onnx", "onnxruntime", "matplotlib", "skimage"):
        try:
            out[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - a missing library is recorded, not fatal
            out[module] = "not installed"
    try:
        import onnxruntime

        out["onnxruntime_providers"] = ",".join(onnxruntime.get_available_providers())
    except Exception:  # noqa: BLE001
        pass
    out["git_commit"] = _git_commit()
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.ROOT, capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=paths.ROOT, capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def write_config(run: Run, *, images: list[str], extra: Mapping | None = None) -> Path:
    """Write ``<figure>.json`` next to the figure: command, configuration, seeds, models,
    images, versions, what was computed or reused from the cache, and timings."""
    record = {
        "figure": run.figure,
        "scale": run.scale,
        "command": shlex.join(run.argv),
        "config": run.config,
        "seeds": seeds(run.config),
        "models": run.models,
        "images": images,
        "cache": {"computed": run.computed, "reused": run.reused},
        "seconds": run.timings,
        "versions": versions(),
    }
    if extra:
        record.update(extra)
    path = run.figure_stem.with_suffix(".json")
    return atomic_write_text(path, json.dumps(record, indent=1, sort_keys=False, default=str)
                             + "\n")


def seeds(config: Mapping) -> dict[str, int]:
    """The seeds a configuration implies (see the module docstring)."""
    seed = int(config["seed"])
    return {"explanation": seed, "sampler_fit": seed + 1}


def save_result(run: Run, relevance: Mapping[str, np.ndarray], classes: Mapping[str, Any]) -> Path:
    """Write the numbers of a figure (compared with the references by :mod:`reproduce.check`).

    Parameters
    ----------
    relevance : dict of str to ndarray
        Every map the figure shows (relevance and sensitivity maps), stored as float32.
    classes : dict of str to int or sequence of int
        The predicted (top) classes per model and image; compared exactly.
    """
    arrays = {f"map/{k}": np.asarray(v, dtype=np.float32) for k, v in relevance.items()}
    arrays.update({f"class/{k}": np.atleast_1d(np.asarray(v, dtype=np.int64))
                   for k, v in classes.items()})
    params = {"figure": run.figure, "scale": run.scale, "config": run.config,
              "seeds": seeds(run.config)}
    meta = {"models": run.models, "versions": versions(), "seconds": run.timings,
            "cache": {"computed": run.computed, "reused": run.reused}}
    save_npz(run.result_path, arrays, params, meta)
    return run.result_path


# --------------------------------------------------------------------------- comparison
@dataclasses.dataclass
class Comparison:
    """Outcome of comparing a figure's result with its stored reference.

    ``verdict`` is ``"PASS"``, ``"FAIL"`` or ``"UNVERIFIED"`` (no reference recorded: never a
    pass); ``max_deviation`` is the largest ``max|Δ| / max|ref|`` over all maps (None when
    nothing was compared); ``messages`` say what differs.
    """

    verdict: str
    max_deviation: float | None
    messages: list[str]

    @property
    def passed(self) -> bool:
        return self.verdict == VERDICT_PASS


def relative_deviation(result: np.ndarray, reference: np.ndarray) -> float:
    """``max|result - reference| / max|reference|`` (0 when both are zero, inf when only
    the reference is)."""
    result = np.asarray(result, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if not (np.isfinite(result).all() and np.isfinite(reference).all()):
        return float("inf")
    diff = float(np.max(np.abs(result - reference), initial=0.0))
    scale = float(np.max(np.abs(reference), initial=0.0))
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


def compare(result_path: Path, reference_path: Path, tolerance: float = TOLERANCE) -> Comparison:
    """Compare a figure's result file with a reference file (both from :func:`save_result`).

    PASS needs: the same parameters and seeds; the same set of maps with the same shapes,
    each within ``tolerance`` (relative to the reference's largest magnitude, see
    :data:`TOLERANCE`); identical predicted classes. A missing reference gives UNVERIFIED with
    the message "no reference recorded".
    """
    reference_path, result_path = Path(reference_path), Path(result_path)
    if not reference_path.is_file():
        return Comparison(VERDICT_UNVERIFIED, None, [f"{NO_REFERENCE} ({reference_path.name})"])
    if not result_path.is_file():
        return Comparison(VERDICT_FAIL, None, [f"no result file {result_path}"])
    try:
        ref, ref_params, _ = load_npz(reference_path)
    except Exception as exc:  # noqa: BLE001 - a damaged reference is a failure, not a crash
        return Comparison(VERDICT_FAIL, None, [f"cannot read the reference {reference_path}: "
                                               f"{type(exc).__name__}: {exc}"])
    try:
        got, got_params, _ = load_npz(result_path)
    except Exception as exc:  # noqa: BLE001
        return Comparison(VERDICT_FAIL, None, [f"cannot read the result {result_path}: "
                                               f"{type(exc).__name__}: {exc}"])
    messages = []
    if got_params != ref_params:
        messages.append("parameters differ from the reference's: " + _diff_keys(got_params, ref_params))
    missing = sorted(set(ref) - set(got))
    extra = sorted(set(got) - set(ref))
    if missing:
        messages.append(f"missing from the result: {', '.join(missing)}")
    if extra:
        messages.append(f"not in the reference: {', '.join(extra)}")
    worst = None
    for key in sorted(set(ref) & set(got)):
        a, b = got[key], ref[key]
        if a.shape != b.shape:
            messages.append(f"{key}: shape {a.shape}, reference {b.shape}")
            continue
        if key.startswith("class/"):
            if not np.array_equal(a, b):
                messages.append(f"{key}: predicted classes {a.tolist()}, reference {b.tolist()}")
            continue
        dev = relative_deviation(a, b)
        worst = dev if worst is None else max(worst, dev)
        if not dev <= tolerance:
            messages.append(f"{key}: max deviation {dev:.3g} of max |ref| > tolerance {tolerance:g}")
    return Comparison(VERDICT_FAIL if messages else VERDICT_PASS, worst, messages)


def _diff_keys(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        parts = [_diff_keys(a.get(k), b.get(k), f"{prefix}{k}.") for k in sorted(set(a) | set(b))
                 if a.get(k) != b.get(k)]
        return "; ".join(parts)
    return f"{prefix.rstrip('.')} = {json.dumps(a)} (reference {json.dumps(b)})"


# --------------------------------------------------------------------------- models
@dataclasses.dataclass
class Model:
    """A network ready for the figures.

    Attributes
    ----------
    name : str
        Zoo name (``alexnet``, ``googlenet``, ``vgg16``, ``lenet``).
    path : Path
        The ONNX file.
    manifest : preddiff.zoo.Manifest
        Input size, mean, labels, penultimate and output blob names.
    source : str
        Where the weights come from (for titles and the configuration JSON).
    """

    name: str
    path: Path
    manifest: Any
    source: str
    sha256: str

    @property
    def labels(self) -> tuple[str, ...]:
        return self.manifest.labels

    @property
    def penultimate(self) -> str:
        return self.manifest.penultimate

    @property
    def output(self) -> str:
        return self.manifest.output

    @property
    def label(self) -> str:
        """The name, plus the weights' origin when they are not the real ones."""
        real = self.source in ("Caffe model zoo weights", "bundled Caffe LeNet")
        return self.name if real else f"{self.name} ({self.source})"

    def describe(self) -> dict:
        return {"source": self.source, "onnx_sha256": self.sha256,
                "file": _relative(self.path)}

    def recipe(self, blobs, batch_size: int, incremental: bool = False):
        """The :class:`preddiff.cluster.ClassifierRecipe` of :meth:`classifier` (what a Dask
        worker builds)."""
        from preddiff.cluster import ClassifierRecipe

        return ClassifierRecipe.for_file(self.path, list(blobs), batch_size,
                                         incremental=incremental)

    def classifier(self, blobs, batch_size: int, incremental: bool = False):
        """A callable (N, C, H, W) float32 → {blob: array} returning ``blobs``.

        With ``incremental`` and :mod:`preddiff.incremental` available, the exact incremental
        classifier (issue on speed); else :class:`preddiff.classifier.OnnxClassifier`.
        """
        if incremental:
            try:
                from preddiff.incremental import IncrementalClassifier
            except ImportError:
                pass
            else:
                return IncrementalClassifier(self.path, outputs=list(blobs), batch_size=batch_size)
        from preddiff.classifier import OnnxClassifier

        return OnnxClassifier(self.path, outputs=list(blobs), batch_size=batch_size)


def _relative(path: Path) -> str:
    """``path`` relative to the repository, or to the zoo's cache (``$PREDDIFF_HOME`` or the
    platform cache folder), else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(paths.ROOT))
    except ValueError:
        pass
    try:
        from preddiff.resources import cache_dir as zoo_cache

        return "<preddiff cache>/" + str(path.relative_to(Path(zoo_cache()).resolve()))
    except (ValueError, ImportError):
        return str(path)


def prepare_zoo(names=ZOO_MODELS, progress: bool = True) -> list[Path]:
    """Fetch (when missing) and convert the zoo networks.

    Every network is tried; when any fails, one ``PredDiffError`` carries the zoo's message
    for each (URL, sha1 and where to place the file by hand), one per line.
    """
    from preddiff import zoo
    from preddiff.errors import PredDiffError

    out, errors = [], []
    for name in names:
        try:
            if not zoo.is_present(name):
                zoo.fetch(name, progress=progress)
            out.append(zoo.ensure_onnx(name))
        except PredDiffError as exc:
            errors.append(" ".join(str(exc).split()))
    if errors:
        raise PredDiffError("\n".join(errors))
    return out


def load_model(run: Run, name: str) -> Model:
    """The network ``name`` as the configuration asks for it.

    ``config["weights"]`` decides: ``"zoo"`` uses the real weights (fetched and converted by
    :func:`preddiff.zoo.ensure_onnx`; LeNet's are bundled); ``"random"`` builds the zoo
    architecture with random weights and channels narrowed by ``config["random_factor"]``
    (seed ``config["random_seed"]``), written once into the cache folder. LeNet always uses
    its real, bundled weights.
    """
    from preddiff import zoo

    if name in run.loaded:
        return run.loaded[name]
    manifest = zoo.manifest(name)
    if name == "lenet" or run.config.get("weights", "zoo") == "zoo":
        if name != "lenet" and not zoo.is_present(name):
            zoo.fetch(name, progress=run.progress)
        path = zoo.ensure_onnx(name)
        source = "bundled Caffe LeNet" if name == "lenet" else "Caffe model zoo weights"
    elif run.config["weights"] == "random":
        from preddiff.caffe.writer import random_onnx

        factor, seed = int(run.config["random_factor"]), int(run.config["random_seed"])
        proto = random_onnx(name, factor=factor, seed=seed)
        data = proto.SerializeToString()
        path = run.cache_dir / "models" / f"{name}-random-f{factor}-s{seed}.onnx"
        if not path.is_file() or path.read_bytes() != data:
            atomic_write_bytes(path, data)
        source = f"random weights, channels / {factor}, seed {seed}"
    else:
        raise ValueError(f"config weights={run.config['weights']!r}; expected 'zoo' or 'random'")
    model = Model(name=name, path=Path(path), manifest=manifest, source=source,
                  sha256=sha256_file(path))
    run.models[name] = model.describe()
    run.loaded[name] = model
    return model


# --------------------------------------------------------------------------- images and pools
@dataclasses.dataclass
class Input:
    """One image prepared for one network.

    ``x`` is the preprocessed network input (C, H, W) float32, ``display`` the image shown in
    the figures (H, W, 3) in [0, 1], ``name`` its identifier (``chelsea``, ``digits:17``...).
    """

    name: str
    x: np.ndarray
    display: np.ndarray
    title: str = ""

    def __post_init__(self):
        self.title = self.title or self.name


def _digits():
    from preddiff.digits import load_digits

    images, labels = load_digits()
    return np.asarray(images, dtype=np.float32), np.asarray(labels)


def _natural_images() -> dict[str, Any]:
    from preddiff.images import example_images

    found = example_images()
    if isinstance(found, Mapping):
        return dict(found)
    return {Path(str(p)).stem: p for p in found}


def _preprocessor(run: Run, model: Model):
    from preddiff.preprocess import Preprocessor

    return Preprocessor(model.manifest, policy=run.config.get("preprocess", "crop"))


def load_inputs(run: Run, model: Model, names: list[str]) -> list[Input]:
    """The images ``names`` prepared for ``model``.

    LeNet takes bundled digits named ``digits:<index>``; the zoo nets take the example images
    (``chelsea``, the three ImageNet images by file stem, ``coffee``, ``astronaut``, ``rocket``)
    through :class:`preddiff.preprocess.Preprocessor` (``config["preprocess"]``: ``crop`` as the
    released code, or ``resize``).
    """
    if model.name == "lenet":
        images, labels = _digits()
        out = []
        for name in names:
            index = _digit_index(name)
            x = images[index]
            gray = np.clip(x[0], 0.0, 1.0)
            out.append(Input(name, x, np.repeat(gray[..., None], 3, axis=2),
                             title=f"{name} (true {int(labels[index])})"))
        return out
    from preddiff.preprocess import load_image

    available = _natural_images()
    prep = _preprocessor(run, model)
    out = []
    for name in names:
        if name not in available:
            raise ValueError(f"unknown image {name!r}; available: {', '.join(sorted(available))}")
        source = available[name]
        rgb = source if isinstance(source, np.ndarray) else load_image(source)
        x = np.asarray(prep(rgb), dtype=np.float32)
        out.append(Input(name, x, np.clip(np.asarray(prep.deprocess(x)), 0.0, 1.0)))
    return out


def _digit_index(name: str) -> int:
    prefix, _, index = name.partition(":")
    if prefix != "digits" or not index.isdigit():
        raise ValueError(f"LeNet images are named digits:<index>, got {name!r}")
    return int(index)


_POOL_SUFFIXES = (".jpg", ".jpeg", ".png")


def _pool_files(folder, exclude) -> list[Path]:
    """The image files of a ``pool_dir`` folder, sorted, without the explained images."""
    return sorted(p for p in Path(folder).expanduser().iterdir()
                  if p.suffix.lower() in _POOL_SUFFIXES and p.stem not in exclude)


def pool_fingerprint(folder, exclude) -> list:
    """``[[name, bytes, mtime_ns], ...]`` of the images of a ``pool_dir`` folder.

    Part of the cache key of every explanation that samples from the folder: its path alone
    would let a cached explanation be reused after images were added, removed or replaced.
    Cheap (no file is read), and conservative (touching a file invalidates the cache).
    """
    if not Path(folder).expanduser().is_dir():
        raise ValueError(f"pool_dir {folder}: not a folder (give a folder of jpg/png images)")
    out = []
    for path in _pool_files(folder, exclude):
        stat = path.stat()
        out.append([path.name, int(stat.st_size), int(stat.st_mtime_ns)])
    return out


def pool_for(run: Run, model: Model, exclude: list[str]) -> tuple[np.ndarray, list[str]]:
    """The images the samplers learn from, preprocessed: ``(pool (M, C, H, W) float32, names)``.

    LeNet: the bundled digits except ``exclude``. Zoo nets: the images of
    ``config["pool_dir"]`` when set (any ``.jpg``/``.jpeg``/``.png``, e.g. ImageNet validation
    images, as the paper sampled from ImageNet; images smaller than the input under ``crop``
    are skipped), else :func:`preddiff.images.default_pool` (the seven example images); the
    explained images in ``exclude`` are left out either way.
    """
    if model.name == "lenet":
        images, _ = _digits()
        keep = np.ones(len(images), dtype=bool)
        keep[[_digit_index(n) for n in exclude]] = False
        return images[keep], [f"digits (all but {', '.join(sorted(exclude))})"]
    policy = run.config.get("preprocess", "crop")
    folder = run.config.get("pool_dir")
    if folder:
        from preddiff.preprocess import load_image

        prep = _preprocessor(run, model)
        _, h, w = model.manifest.input_shape
        files = _pool_files(folder, exclude)
        arrays, names = [], []
        for path in files:
            rgb = load_image(path)
            if policy == "crop" and (rgb.shape[0] < h or rgb.shape[1] < w):
                continue
            arrays.append(prep(rgb, what=str(path)))
            names.append(path.name)
        if not arrays:
            raise ValueError(f"pool_dir {folder}: no usable image (jpg/png of at least {h}x{w})")
        return np.stack(arrays).astype(np.float32), names
    from preddiff.images import default_pool

    available = list(_natural_images())
    pool = np.asarray(default_pool(model.name, policy=policy), dtype=np.float32)
    keep = [i for i, name in enumerate(available) if name not in exclude]
    if len(pool) != len(available):
        raise ValueError(f"default_pool gave {len(pool)} images for {len(available)} example "
                         "images (one was too small for the network input)")
    return pool[keep], [available[i] for i in keep]


# --------------------------------------------------------------------------- analyses
def make_sampler(run: Run, kind: str, pool: np.ndarray, window: int):
    """A marginal or conditional sampler with the configuration's options."""
    from preddiff import samplers

    cfg = run.config
    if kind == "marginal":
        return samplers.MarginalSampler(pool, order=cfg.get("marginal_order", "random"))
    if kind == "conditional":
        return samplers.ConditionalGaussianSampler.fit(
            pool, window, int(cfg["padding"]), colour=cfg.get("colour", "per-channel"),
            num_patches=int(cfg["num_patches"]), rng=seeds(cfg)["sampler_fit"],
            patches=cfg.get("patches", "random"))
    raise ValueError(f"sampler {kind!r}; expected 'marginal' or 'conditional'")


def _input_hash(image: "Input") -> str:
    return hashlib.sha256(np.ascontiguousarray(image.x).tobytes()).hexdigest()


def explain(run: Run, model: Model, image: Input, *, sampler: str, window: int,
            units: Mapping[str, Any], exclude: list[str] | None = None) -> dict[str, np.ndarray]:
    """Prediction Difference Analysis of ``image`` for the blobs of ``units`` (cached).

    Parameters
    ----------
    units : dict of str to (list of int, int or None)
        For each blob, which maps to keep: a list of unit indices (e.g. the top classes),
        an integer ``n`` (the ``n`` maps with the largest max |relevance|, largest first), or
        None (all). Only the kept maps are cached: 1000 class maps of 227×227 would take
        200 MB per explanation.
    exclude : list of str, optional
        Images left out of the sampler's pool (default: the explained image).

    Returns
    -------
    dict
        ``relevance/<blob>`` (len(kept), H, W) float32 and ``units/<blob>`` the kept indices;
        ``absmax/<blob>`` the max |relevance| of every unit; ``clean/<blob>`` the clean
        image's blob, flattened; ``counts`` (H, W); ``num_samples`` (the S used: marginal
        sampling cannot use more samples than pool images); ``seconds``.
    """
    exclude = [image.name] if exclude is None else list(exclude)
    cfg = run.config
    # ``incremental`` too: the engine's checkpoint records which classifier made it and refuses
    # another, so runs with and without it must not share a cache entry or a checkpoint file.
    keys = ("padding", "num_samples", "stride", "seed", "num_patches", "colour",
            "marginal_order", "preprocess", "laplace_n", "pool_dir", "incremental", "compat",
            "patches", "edges")
    params = {
        "kind": "prediction_difference", "model": model.name, "onnx_sha256": model.sha256,
        "image": image.name, "input_sha256": _input_hash(image), "sampler": sampler,
        "window": int(window), "units": dict(units), "exclude": sorted(exclude),
        **{k: cfg[k] for k in keys if k in cfg}, "preddiff": _preddiff_version(),
    }
    if cfg.get("pool_dir") and model.name != "lenet":  # LeNet always samples from the digits
        params["pool_files"] = pool_fingerprint(cfg["pool_dir"], exclude)

    tag = f"pda-{model.name}-{_safe(image.name)}-{sampler}-k{window}"
    checkpoint = run.cache_dir / f"{tag}-{params_hash(params)}.ckpt.npz"

    def compute():
        from preddiff import prediction_difference

        pool, _ = pool_for(run, model, exclude)
        smp = make_sampler(run, sampler, pool, window)
        num_samples = int(cfg["num_samples"])
        if sampler == "marginal":
            num_samples = min(num_samples, len(pool))
        blobs = tuple(units)
        clf = model.classifier(blobs, batch_size=int(cfg["batch_size"]),
                               incremental=bool(cfg.get("incremental", True)))
        run.cache_dir.mkdir(parents=True, exist_ok=True)
        if run.force:  # recompute means from scratch, not from an interrupted run's windows
            checkpoint.unlink(missing_ok=True)
        start = time.perf_counter()
        engine = dict(window=int(window), stride=int(cfg["stride"]), num_samples=num_samples,
                      blobs=blobs, batch_size=int(cfg["batch_size"]),
                      rng=seeds(cfg)["explanation"],
                      laplace_n=int(cfg.get("laplace_n", 100000)),
                      edges=cfg.get("edges", "cover"))
        if run.on_cluster:  # blocks of windows on the cluster, same numbers
            from preddiff import cluster

            recipe = model.recipe(blobs, int(cfg["batch_size"]),
                                  incremental=type(clf).__name__ == "IncrementalClassifier")
            result = cluster.prediction_difference(
                image.x, recipe, smp, client=run.client(), name=f"{model.name}/{image.name}",
                checkpoint=checkpoint, progress=run.progress, classifier=clf, **engine)
        else:
            # hours per image at paper scale: a crash resumes where it stopped
            result = prediction_difference(image.x, clf, smp, checkpoint=checkpoint,
                                           progress=run.progress, **engine)
        out = {"seconds": np.float64(time.perf_counter() - start),
               "num_samples": np.int64(num_samples)}
        from preddiff.compat import round_relevance

        relevance = round_relevance(result.relevance, cfg.get("compat", "intended"))
        for blob, which in units.items():
            rel = np.asarray(relevance[blob])
            absmax = np.abs(rel).reshape(len(rel), -1).max(axis=1)
            if which is None:
                keep = np.arange(len(rel))
            elif isinstance(which, (int, np.integer)):
                keep = np.argsort(-absmax, kind="stable")[: int(which)]
            else:
                keep = np.asarray(which, dtype=np.int64)
            out[f"relevance/{blob}"] = rel[keep].astype(np.float32)
            out[f"units/{blob}"] = keep.astype(np.int64)
            out[f"absmax/{blob}"] = absmax.astype(np.float32)
            out[f"clean/{blob}"] = np.asarray(result.clean[blob]).reshape(-1)
        counts = getattr(result, "counts", None)
        if counts is not None:
            out["counts"] = np.asarray(counts)
        return out

    return run.cached(tag, params, compute)


def unit_map(explanation: Mapping[str, np.ndarray], blob: str, unit: int) -> np.ndarray:
    """The (H, W) map of ``unit`` of ``blob`` from an :func:`explain` result."""
    kept = list(explanation[f"units/{blob}"])
    if int(unit) not in kept:
        raise KeyError(f"unit {unit} of {blob} was not kept (kept: {kept})")
    return explanation[f"relevance/{blob}"][kept.index(int(unit))]


def sensitivity(run: Run, model: Model, image: Input, unit: int, blob: str | None = None) -> np.ndarray:
    """Simonyan et al.'s sensitivity map (H, W) of ``unit`` in ``blob`` (default: the
    penultimate layer, as the paper reports), cached."""
    blob = blob or model.penultimate
    params = {"kind": "sensitivity", "model": model.name, "onnx_sha256": model.sha256,
              "image": image.name, "input_sha256": _input_hash(image),
              "unit": int(unit), "blob": blob, "preddiff": _preddiff_version()}

    def compute():
        from preddiff.sensitivity import sensitivity_map

        values = sensitivity_map(image.x, model.path, int(unit), blob, manifest=model.manifest)
        return {"map": np.asarray(values, dtype=np.float32)}

    tag = f"sens-{model.name}-{_safe(image.name)}-{_safe(blob)}-u{unit}"
    return run.cached(tag, params, compute)["map"]


def forward(model: Model, x: np.ndarray, blobs, batch_size: int = 8) -> dict[str, np.ndarray]:
    """The clean forward pass of one input: {blob: values of that single image}."""
    clf = model.classifier(blobs, batch_size=batch_size, incremental=False)
    out = clf(np.asarray(x, dtype=np.float32)[None])
    return {b: np.asarray(out[b])[0] for b in blobs}


def top_classes(model: Model, x: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, probabilities)`` of the ``k`` most probable classes, best first."""
    prob = forward(model, x, [model.output])[model.output].reshape(-1)
    order = np.argsort(-prob, kind="stable")[:k]
    return order, prob[order]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def short_label(label: str, width: int = 22) -> str:
    """A class name short enough for a subplot title (first synonym, truncated)."""
    text = label.split(",")[0].strip()
    if text.isdigit():  # LeNet's classes are the digits themselves
        return f"class {text}"
    if len(text) > 4 and text[:1] == "n" and text[1:9].isdigit():  # "n01440764 tench"
        text = text.split(" ", 1)[-1]
    return text if len(text) <= width else text[: width - 1] + "…"


def finish(run: Run, fig, *, images: list[str], relevance: Mapping, classes: Mapping,
           extra: Mapping | None = None) -> None:
    """Save the figure (PNG and PDF), the result numbers and the configuration JSON."""
    from preddiff.plot import save_figure

    run.out_dir.mkdir(parents=True, exist_ok=True)
    save_figure(fig, run.figure_stem)
    save_result(run, relevance, classes)
    write_config(run, images=images, extra=extra)
    print(f"{run.figure}: wrote {_relative(run.figure_stem)}.png/.pdf/.json "
          f"(computed {len(run.computed)}, reused {len(run.reused)} cached)")


# --------------------------------------------------------------------------- plotting
# Thin wrappers over :mod:`preddiff.plot` that fix the look shared by the six figures: no
# ticks, signed maps scaled symmetrically by their own largest magnitude (red = evidence for,
# blue = against, white = 0, as in the paper), and labels in small type.
def subplots(rows: int, cols: int, size: float = 1.8, *, extra_height: float = 0.6):
    """A figure (not registered with pyplot) with a (rows, cols) array of axes without ticks."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(cols * size, rows * size + extra_height), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def text_width(text: str, fontsize: float) -> float:
    """Width in inches of one line of ``text`` at ``fontsize`` points, as Agg renders it."""
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    width, _, _ = RendererAgg(1, 1, 72).get_text_width_height_descent(
        text, FontProperties(size=fontsize), ismath=False)
    return width / 72.0


def wrap_to_width(text: str, width_inches: float, fontsize: float) -> str:
    """``text`` with each line broken between words so that it fits ``width_inches`` at
    ``fontsize`` points (measured, not estimated); existing line breaks are kept."""
    out = []
    for line in text.split("\n"):
        current = ""
        for word in line.split(" "):
            trial = f"{current} {word}" if current else word
            if current and text_width(trial, fontsize) > width_inches:
                out.append(current)
                current = word
            else:
                current = trial
        out.append(current)
    return "\n".join(out)


def suptitle(fig, text: str, fontsize: float = 10) -> None:
    """The figure's title, wrapped to the figure's width so that it is never cut off (long
    model labels such as ``vgg16 (random weights, channels / 16, seed 0)``, few columns)."""
    fig.suptitle(wrap_to_width(text, 0.97 * fig.get_figwidth(), fontsize), fontsize=fontsize)


def show_image(ax, image, *, title: str | None = None, ylabel: str | None = None) -> None:
    """The input image (H, W, 3) in [0, 1]."""
    ax.imshow(np.clip(image, 0, 1), interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=8)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=8)


def show_signed(ax, relevance, *, title: str | None = None, vmax: float | None = None) -> None:
    """A signed map in the diverging colour map, symmetric about 0 (white), scaled by its own
    largest magnitude or by ``vmax``."""
    from preddiff import plot

    plot.show_signed(ax, np.asarray(relevance, dtype=np.float64), vmax=vmax)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def show_unsigned(ax, values, *, title: str | None = None) -> None:
    """A non-negative map (the sensitivity map: max over channels of |gradient|)."""
    from preddiff import plot

    plot.show_unsigned(ax, np.asarray(values, dtype=np.float64), title=title)


def show_overlay(ax, image, relevance, *, title: str | None = None) -> None:
    """The released code's overlay: the image in grey, hue and saturation from the heatmap."""
    from preddiff import plot

    image = np.clip(np.asarray(image, dtype=np.float64), 0, 1)
    if image.ndim == 3 and np.array_equal(image[..., 0], image[..., 1]) \
            and np.array_equal(image[..., 0], image[..., 2]):
        image = image[..., 0]  # grey (digits): the released code's MNIST background, 1 - 0.3 x
    ax.imshow(plot.overlay(image, np.asarray(relevance, dtype=np.float64)),
              interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=8)


def show_mask(ax, values, percent: float, *, title: str | None = None) -> np.ndarray:
    """The top ``percent`` % of |values| as a boolean mask (white = selected); returns it."""
    from preddiff import plot

    mask = np.asarray(plot.top_mask(np.asarray(values, dtype=np.float64), percent=percent),
                      dtype=bool)
    ax.imshow(mask, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=8)
    return mask


def signed_colorbar(fig, axes, relative_to: str = "max |map|", *, cax=None) -> None:
    """One colour bar explaining the signed maps: −max (against) … 0 … +max (for); below
    ``axes``, or in the axes ``cax`` (then short labels)."""
    import matplotlib as mpl

    from preddiff import plot

    mappable = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(vmin=-1.0, vmax=1.0),
                                     cmap=plot.signed_cmap())
    if cax is not None:
        bar = fig.colorbar(mappable, cax=cax, orientation="horizontal")
        bar.set_ticks([-1, 0, 1], labels=["against", "0", "for"])
        bar.set_label(f"relevance / {relative_to}", fontsize=7)
        bar.ax.tick_params(labelsize=7)
        return
    axes = np.asarray(axes).ravel().tolist()
    bar = fig.colorbar(mappable, ax=axes, location="bottom", shrink=0.5, aspect=40, pad=0.01)
    left = min(ax.get_position().x0 for ax in axes)
    right = max(ax.get_position().x1 for ax in axes)
    if 0.5 * (right - left) * fig.get_figwidth() < 2.0:
        # a bar under one or two columns: the long tick labels would run into each other
        bar.set_ticks([-1, 0, 1], labels=["against", "0", "for"])
        bar.set_label(f"relevance / {relative_to}", fontsize=8)
    else:
        bar.set_ticks([-1, 0, 1], labels=[f"−{relative_to}: evidence against", "0",
                                          f"+{relative_to}: evidence for"])
    bar.ax.tick_params(labelsize=8)


INTERRUPT_QUIET = "PREDDIFF_REPRODUCE_CHILD"
"""Environment variable set by ``run_all.sh`` and ``reproduce.check`` for the scripts they run:
the parent prints the one "interrupted" line of a Ctrl-C, the children none."""


def run_main(main: Callable[[], int], prog: str) -> None:
    """Exit with ``main()``'s status; Ctrl-C exits with status 130 and one line, no traceback.

    After the first Ctrl-C further ones are ignored (the script is already stopping). The
    line is left out when :data:`INTERRUPT_QUIET` is set: the parent says it.
    """
    import signal

    try:
        code = main()
    except BaseException as exc:  # noqa: BLE001 - only a Ctrl-C, however it surfaces
        if not interrupted(exc):
            raise
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if not os.environ.get(INTERRUPT_QUIET):
            print(f"{prog}: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
