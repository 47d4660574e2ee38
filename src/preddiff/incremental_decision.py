"""Whether to run exact incremental inference, and at which batch size, decided by measurement.

The multiply-add model of :mod:`preddiff.incremental_plan` predicts the *arithmetic* saved by
incremental inference, not the time: on networks with many cheap layers (MobileNet,
EfficientNet) the per-layer session calls, gathers and pastes cost more than the model
charges, and on others the plain classifier is slower than its multiply-adds suggest (a
depthwise convolution over a full map). :func:`decide_incremental` therefore times a few
batches both ways on this machine -- full perturbed images through
:class:`preddiff.classifier.OnnxClassifier`, and windows through
:meth:`preddiff.incremental.IncrementalClassifier.evaluate_windows` -- at a few batch sizes
each (the faster of two timings), and keeps the faster engine at its fastest batch size. The
result is cached in the preddiff cache folder (``incremental-decisions.json``), keyed by the
model's SHA-1, the input shape, window, outputs, samples per window, stride, the call sizes
tried, execution provider, threads, CPU, onnxruntime version and engine revision, so a model
is measured once per machine.

The batch size matters as much: on the real EfficientNet-Lite0 a fixed batch of 256 was slower
than 16 and needed 4.4 GB. Candidates whose modelled memory exceeds a quarter of the
available memory are not tried.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time

import numpy as np

from .devices import cpu_name, gpu_free_memory
from .errors import InvalidArgument
from .incremental import ENGINE_REVISION, IncrementalClassifier, resolve_device, supported
from .incremental_plan import load_model
from .windows import window_positions

log = logging.getLogger(__name__)

__all__ = ["Decision", "decide_incremental", "MODES"]

MODES = ("auto", "on", "off")
#: Batch sizes tried: images per session run (full) and windows per session run (incremental).
FULL_BATCHES = (1, 8, 32)
#: Full-image batch sizes tried on CUDA, where a GPU needs large batches to be busy; a size
#: the device cannot hold ends the list (measured, not guessed).
CUDA_FULL_BATCHES = (32, 128, 512, 1024)
INCREMENTAL_BATCHES = (16, 64, 256)
#: Window-samples per call tried on CUDA (a GPU is busy only with large calls); sizes whose
#: modelled memory exceeds a quarter of the free device memory are skipped, and a size the
#: device cannot hold ends the list.
CUDA_INCREMENTAL_BATCHES = (64, 256, 1024, 4096)
#: Rounds of timings, the two engines interleaved; per batch size the fastest counts (a shared
#: machine's load only slows runs down, and changes of load affect both engines alike).
REPEATS = 2
#: Incremental inference is used in mode "auto" when measured at least this much faster.
MIN_RATIO = 1.0
CACHE_FILE = "incremental-decisions.json"
CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Decision:
    """The outcome of :func:`decide_incremental`.

    Attributes
    ----------
    use : bool
        Run windows through the incremental engine.
    ratio : float or None
        Measured speed of the incremental engine over full images, in window-samples per
        second ÷ images per second, each at its best batch size (None when not measured).
    planned : float or None
        The cost model's multiply-add reduction, mean over window positions.
    batch_size : int
        Batch size of the chosen engine: windows per session run (incremental) or images per
        session run (full images).
    message : str
        One line for the user, e.g. ``"incremental inference on: measured 1.8x faster than
        full images (planned 2.3x)"``.
    timings : dict
        ``{"full": {batch: images/s}, "incremental": {batch: window-samples/s}}``.
    cached : bool
        Whether the measurement came from the cache.
    seconds : float or None
        How long this call spent measuring both engines (None: nothing measured, e.g. a
        cached result or mode "off").
    classifier : object or None
        The classifier for the chosen engine, built with ``batch_size`` (an
        :class:`~preddiff.incremental.IncrementalClassifier` when ``use``, else an
        :class:`~preddiff.classifier.OnnxClassifier`); None when it was not built.
    """

    use: bool
    ratio: float | None
    planned: float | None
    batch_size: int
    message: str
    timings: dict = dataclasses.field(default_factory=dict)
    cached: bool = False
    classifier: object = dataclasses.field(default=None, compare=False, repr=False)
    seconds: float | None = None


def _machine_key(device: str, threads) -> str:
    import onnxruntime

    return (f"{cpu_name()}|{os.cpu_count()}|onnxruntime {onnxruntime.__version__}|{device}|"
            f"{threads}|engine {ENGINE_REVISION}")


def _available_memory() -> float | None:
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _windows(x: np.ndarray, window, count: int, samples: int, rng, stride: int = 1) -> tuple:
    """``count`` perturbations as PDA passes them: ``count / samples`` consecutive positions
    of the run's window grid (raster order, from a random one), each repeated ``samples``
    times, with noisy copies of the window's own values.

    Consecutive, not scattered: a batch of the incremental engine computes every window on
    the batch's largest box, and neighbouring windows have similar boxes; timed on random
    positions, batches of several windows measured slower than PDA runs them (AlexNet at
    the paper's settings: 64 window-samples per call ran 1.35x faster in PDA than 16, while
    random positions made 16 look best)."""
    kh, kw = window
    positions = max(1, -(-count // samples))
    grid = np.asarray(window_positions(x.shape[1:], (kh, kw), stride), np.int64)  # as PDA's
    first = int(rng.integers(0, max(1, len(grid) - positions + 1)))
    index = (first + np.arange(positions)) % len(grid)
    top_left = np.repeat(grid[index], samples, axis=0)[:count]
    scale = float(x.std()) or 1.0
    patches = np.stack([x[:, r:r + kh, c:c + kw] for r, c in top_left])
    patches = patches + rng.normal(0, scale, patches.shape).astype(np.float32)
    return top_left.astype(np.int64), patches.astype(np.float32)


def _timed(fn) -> float:
    tic = time.perf_counter()
    fn()
    return time.perf_counter() - tic


def _measure_full(model, outputs, x, window, device, threads, batches, budget, rng) -> tuple:
    """Images/s of full perturbed images at each batch size within ``budget`` seconds, as the
    engine sends them (:meth:`~preddiff.classifier.OnnxClassifier.evaluate_windows`: composed
    inside the graph on CUDA). On CUDA a batch the device cannot hold ends the list."""
    from .classifier import OnnxClassifier

    rates, classifiers, spent = {}, {}, 0.0
    for b in batches:
        if rates and spent + 2 * b / max(rates.values()) > budget:
            break
        top_left, patches = _windows(x, window, b, 1, rng)
        try:
            clf = OnnxClassifier(model, outputs=list(outputs), batch_size=b, device=device,
                                 threads=threads)
            # warm-up: sessions, allocations, first-run kernels
            spent += _timed(lambda: clf.evaluate_windows(x, top_left, patches))
            seconds = _timed(lambda: clf.evaluate_windows(x, top_left, patches))
        except Exception as exc:  # noqa: BLE001 - out of device memory: the sizes so far
            if device != "cuda" or not rates:
                raise
            log.warning("full images: %d per call failed on the device, taken as its limit "
                        "(%s)", b, exc)
            break
        spent += seconds
        rates[b] = b / seconds
        if rates[b] >= max(rates.values()):  # keep only the fastest session (device memory)
            classifiers = {b: clf}
        del clf
    return rates, classifiers


#: Window-samples PDA hands the incremental engine at a time (``preddiff explain``'s engine
#: batch, or one call when that is larger): a call size is timed on such a batch, which the
#: engine splits into calls as in a run (a call size that splits a window's samples, or leaves
#: a short last call, pays for it as a run does).
RUN_BATCH = 1000


def _measure_incremental(clf, x, window, batches, budget, samples, rng, stride=1) -> dict:
    """Window-samples/s of ``clf.evaluate_windows`` at each call size ``b`` within
    ``budget``, timed on what a run passes it: a batch of max(:data:`RUN_BATCH`, b) samples,
    whole windows of S samples each on consecutive positions of the run's grid, which the
    engine splits into calls of at most ``b``."""
    top_left, patches = _windows(x, window, 1, 1, rng)
    spent = _timed(lambda: clf.evaluate_windows(x, top_left, patches))  # sessions, plan, clean
    rates = {}
    for b in batches:
        count = samples * max(1, max(RUN_BATCH, b) // samples)
        if rates and spent + count / max(rates.values()) > budget:
            break
        clf.batch_size = b
        top_left, patches = _windows(x, window, count, samples, rng, stride)
        try:
            seconds = _timed(lambda: clf.evaluate_windows(x, top_left, patches))
        except Exception as exc:  # noqa: BLE001 - out of device memory: the sizes so far
            if getattr(clf, "device", "cpu") != "cuda" or not rates:
                raise
            log.warning("incremental: %d window-samples per call failed on the device, "
                        "taken as its limit (%s)", b, exc)
            break
        spent += seconds
        rates[b] = count / seconds
    return rates


def _cache_path(cache_dir):
    from pathlib import Path

    if cache_dir is None:
        from .resources import cache_dir as default

        cache_dir = default()
    return Path(cache_dir) / CACHE_FILE


def _cache_read(path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("version") == CACHE_VERSION else {}


def _cache_write(path, key: str, record: dict) -> None:
    from .fileio import atomic_write_text

    data = _cache_read(path) or {"version": CACHE_VERSION, "entries": {}}
    data.setdefault("entries", {})[key] = record
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
    except OSError as exc:  # a read-only cache only costs a new measurement next time
        log.warning("could not cache the incremental decision in %s: %s", path, exc)


#: Measured speed ratios within this factor of 1 are reported as "about the speed of".
SAME_SPEED = 1.05


def ratio_text(ratio: float) -> str:
    """The measured speed of incremental inference over full images, in words that are true
    at the precision printed: ``"measured 1.8x faster than full images"``, ``"measured about
    the speed of full images (1.02x)"``, ``"measured 0.6x the speed of full images"``."""
    if 1 / SAME_SPEED < ratio < SAME_SPEED:
        return f"measured about the speed of full images ({ratio:.2f}x)"
    if ratio >= SAME_SPEED:
        return f"measured {ratio:.1f}x faster than full images"
    if ratio < 0.01:
        return "measured under 0.01x the speed of full images"
    return f"measured {ratio:.2g}x the speed of full images"


def decide_incremental(model, x, window, mode: str = "auto", *, outputs=("prob",),
                       device: str = "auto", threads=None, batch_size=None, samples: int = 10,
                       budget_s: float = 30.0, cache: bool = True, cache_dir=None,
                       seed: int = 0, remeasure: bool = False, on_measure=None,
                       stride: int = 1) -> Decision:
    """Decide by measurement whether to run PDA windows incrementally, and the batch size.

    Parameters
    ----------
    model : onnx.ModelProto, path or bytes
        The classifier graph, input (N, C, H, W).
    x : ndarray, shape (C, H, W)
        An input of the size the run will use (its values hardly matter for the timing).
    window : int or (int, int)
        Window size k (or (kh, kw)).
    mode : {"auto", "on", "off"}
        "auto": incremental when measured faster; "on": incremental whenever the graph allows
        it; "off": full images (only their batch size is measured).
    outputs : sequence of str
        Tensors the run requests.
    device : {"auto", "cpu", "cuda"}
    threads : int, optional
        onnxruntime intra-op threads.
    batch_size : int, optional
        The user's batch size: measured alone instead of the candidate list.
    samples : int
        Samples per window S (windows are timed repeated S times, as PDA sends them).
    budget_s : float
        Rough limit of the measuring time per engine, in seconds (the largest batch sizes are
        skipped when they would exceed it).
    cache : bool
        Read and write the measurement in ``cache_dir``.
    cache_dir : path, optional
        Default: :func:`preddiff.resources.cache_dir`.
    seed : int
        Seed of the timed windows' positions and values.
    remeasure : bool
        Measure again even when the cache holds a result, and replace it (a measurement
        taken while the machine was busy is otherwise kept for good).
    on_measure : callable, optional
        Called with no argument just before a measurement of both engines starts (not for a
        cached result), e.g. to tell the user why the run pauses.
    stride : int
        The run's window stride: the incremental engine is timed on consecutive positions of
        that grid, as PDA batches them (neighbours share most of their boxes).

    Returns
    -------
    Decision

    Raises
    ------
    InvalidArgument
        For a bad ``mode``, ``window``, ``batch_size``, ``stride`` or ``x``.
    """
    if mode not in MODES:
        raise InvalidArgument(f"incremental mode must be one of {', '.join(MODES)}, got {mode!r}")
    kh, kw = (window, window) if np.isscalar(window) else tuple(window)
    x = np.ascontiguousarray(x, np.float32)
    if x.ndim != 3:
        raise InvalidArgument(f"x must be (C, H, W), got shape {x.shape}")
    if not (1 <= kh <= x.shape[1] and 1 <= kw <= x.shape[2]):
        raise InvalidArgument(f"window {kh}x{kw} does not fit the input {x.shape[1:]}")
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise InvalidArgument(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise InvalidArgument(f"stride must be an integer >= 1, got {stride!r}")
    model = load_model(model)
    outputs = tuple(outputs)
    device = resolve_device(device)
    rng = np.random.default_rng(seed)
    full_batches = ((int(batch_size),) if batch_size else
                    CUDA_FULL_BATCHES if device == "cuda" else FULL_BATCHES)
    incr_batches = ((int(batch_size),) if batch_size else
                    CUDA_INCREMENTAL_BATCHES if device == "cuda" else INCREMENTAL_BATCHES)

    ok, reason = supported(model, outputs) if mode != "off" else (False, "")
    if mode == "off" or not ok:
        rates, classifiers = _measure_full(model, outputs, x, (kh, kw), device, threads,
                                           full_batches, budget_s, rng)
        best = max(rates, key=rates.get)
        why = " (mode off)" if mode == "off" else f": {reason}"
        return Decision(False, None, None, best, f"incremental inference off{why}",
                        {"full": rates, "incremental": {}}, False, classifiers[best])

    sha1 = hashlib.sha1(model.SerializeToString()).hexdigest()
    key = "|".join([sha1, "x".join(map(str, x.shape)), f"{kh}x{kw}", ",".join(outputs),
                    f"S{samples}", f"stride {stride}", str(batch_size),
                    "calls " + ",".join(map(str, incr_batches)), _machine_key(device, threads)])
    path = _cache_path(cache_dir) if cache else None
    record = _cache_read(path).get("entries", {}).get(key) if cache and not remeasure \
        else None
    incremental = IncrementalClassifier(model, outputs=outputs, device=device, threads=threads)
    planned = incremental.report(x.shape, (kh, kw))
    planned = planned["macs_full"] / max(planned["macs_planned"], 1.0)
    cached = record is not None
    seconds = None
    if cached:
        full_rates = {int(k): v for k, v in record["full"].items()}
        incr_rates = {int(k): v for k, v in record["incremental"].items()}
    else:
        if on_measure is not None:
            on_measure()
        tic = time.perf_counter()
        memory = gpu_free_memory() if device == "cuda" else _available_memory()
        plan = incremental._plan(x.shape, (kh, kw))
        per_window = incremental._bytes_per_window(plan)
        if memory is not None and not batch_size:
            fitting = tuple(b for b in incr_batches if b * per_window <= memory / 4)
            incr_batches = fitting or incr_batches[:1]
        full_rates, incr_rates = {}, {}
        for _ in range(REPEATS):  # the first round picks the batch sizes within the budget
            full, _ = _measure_full(model, outputs, x, (kh, kw), device, threads,
                                    tuple(full_rates) or full_batches, budget_s, rng)
            incr = _measure_incremental(incremental, x, (kh, kw),
                                        tuple(incr_rates) or incr_batches, budget_s, samples,
                                        rng, int(stride))
            full_rates = {b: max(v, full_rates.get(b, 0.0)) for b, v in full.items()}
            incr_rates = {b: max(v, incr_rates.get(b, 0.0)) for b, v in incr.items()}
        seconds = time.perf_counter() - tic
        if cache:
            _cache_write(path, key, {"full": full_rates, "incremental": incr_rates,
                                     "planned": planned, "date": time.strftime("%Y-%m-%d")})
    best_full = max(full_rates, key=full_rates.get)
    best_incr = max(incr_rates, key=incr_rates.get)
    ratio = incr_rates[best_incr] / full_rates[best_full]
    use = mode == "on" or ratio >= MIN_RATIO
    timings = {"full": full_rates, "incremental": incr_rates}
    detail = f"{ratio_text(ratio)} (planned {planned:.1f}x)" + (", cached" if cached else "")
    if use:
        incremental.batch_size = best_incr
        forced = " (forced)" if mode == "on" and ratio < MIN_RATIO else ""
        return Decision(True, ratio, planned, best_incr,
                        f"incremental inference on{forced}: {detail}", timings, cached,
                        incremental, seconds)
    from .classifier import OnnxClassifier

    plain = OnnxClassifier(model, outputs=list(outputs), batch_size=best_full, device=device,
                           threads=threads)
    return Decision(False, ratio, planned, best_full, f"incremental inference off: {detail}",
                    timings, cached, plain, seconds)
