"""``preddiff bench``: PDA throughput, naive and incremental, against the plain classifier.

A PDA run evaluates the classifier on (windows × S) perturbed images, so the naive engine can
never beat the classifier's own throughput. For each network this command measures, in one
run on one machine:

- the plain classifier's throughput in images/s, at the best batch size of a small sweep
  (:class:`preddiff.classifier.OnnxClassifier`; the network alone, its input batch already on
  the device, so that no copy is counted); on CUDA the sweep doubles the batch while the
  device holds it and the rate grows (:data:`CUDA_BATCHES`);
- the PDA throughput in window-samples/s of :func:`preddiff.prediction_difference` (engine
  batches of at least 256 perturbed images, 1000 for LeNet's small input
  (:func:`preddiff.analysis.default_batch_size`), as ``preddiff explain`` runs it, classifier calls
  of the sweep's best size, images composed inside the graph on CUDA) on a fixed
  block of window positions (a regular grid of windows over the whole image, corners
  included; k = 10, S = 10, conditional sampler fitted on the bundled example images), with
  the naive classifier and with :class:`preddiff.incremental.IncrementalClassifier`, and
  checks that both give the same relevance maps;
- the ratio PDA window-samples/s ÷ plain images/s (above 1: faster than the naive limit),
  the naive engine's share of time outside the classifier, and the theoretical
  multiply-add reduction of exact incremental inference from the cost model;
- the *steady* ratio, counting only the time spent sampling and in the classifier: it leaves
  out the once-per-image work (the clean forward pass, timed separately on the same
  classifier, and computing the relevance maps), which a small block weighs far more than a
  full run of ~46,000 windows. The ratio itself counts everything: the incremental engine's
  cache of clean activations is emptied before each timed run, so that it pays for its clean
  forward pass as the naive engine does, and each run's time includes the maps of the top
  :data:`KEPT_MAPS` classes, the maps ``preddiff explain`` computes and keeps by default.

The plain throughput and the two engines are measured interleaved, ``--rounds`` times. Each
plain measurement lasts at least :data:`RUN_SECONDS`, and so do each engine's timed PDA runs:
a block that runs faster (LeNet's takes 0.2 s) is run again until they do, so that no figure
is timed within one short stretch of the machine's speed (``--quick``: plain for 1 s, one PDA
run). Each engine's runs lie between two plain measurements (plain, naive, plain,
incremental, plain): its ratio is taken against the mean of the two (:func:`plain_around`),
so that a change of the machine's speed that the plain network feels too affects both sides
of the ratio alike. It does not remove a change that only the engine feels: on this
project's 2-core VM the incremental engine and a two-thread NumPy matrix product slow down together for
stretches of several seconds while the plain network keeps its speed
(``bench/machine_phases.py``). The table gives medians over rounds of every figure and of
every round's ratios; its plain column is the median of each round's mean of three.
Networks: ``lenet`` with its real bundled weights, ``alexnet``, ``googlenet`` and ``vgg16``
with random weights at full size (throughput does not depend on the weights), and the modern
networks of :mod:`preddiff.netzoo` built in code with random weights and ``(x - mean) / std``
inside the graph: ``resnet18``, ``resnet50``, ``mobilenet_v2``, ``efficientnet_lite0`` (their
pool: the example images as RGB in [0, 1], short side resized to 224, centre crop). The table
also gives the cost model's planned multiply-add reduction averaged over all window positions
and measured ratio ÷ planned reduction.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

from ..fileio import atomic_write_text
from .explain import DEFAULT_TOP

ORDER = 60

#: Caffe zoo nets (converted) and the modern nets of :mod:`preddiff.netzoo` (built in code).
ZOO_MODELS = ("lenet", "alexnet", "googlenet", "vgg16")
NETZOO_MODELS = ("resnet18", "resnet50", "mobilenet_v2", "efficientnet_lite0")
MODELS = ZOO_MODELS + NETZOO_MODELS
WINDOW, SAMPLES, PADDING = 10, 10, 2
#: Seconds of each plain measurement, and the least time of each engine's timed PDA runs in a
#: round (the block run again as often as needed; ``--quick``: 1 s and one run).
RUN_SECONDS = 2.5
#: Targets of issue 5 for the ratio (incremental PDA window-samples/s ÷ plain images/s).
TARGETS = {"alexnet": 2.5, "googlenet": 1.8, "vgg16": 6.0,
           # issue 9
           "resnet18": 1.6, "resnet50": 1.4, "mobilenet_v2": 1.3, "efficientnet_lite0": 1.3}
#: Theoretical multiply-add reductions at k = 10 quoted in the reference notes.
REFERENCE_REDUCTION = {"alexnet": 3.2, "googlenet": 2.4, "vgg16": 9.1}
#: Stride of the grid of windows benchmarked (full run, --quick). Strides not multiples of
#: the networks' total stride (16 or 32) give windows at all alignments, as a stride-1 run.
BLOCK_STRIDE = {"lenet": (1, 3), "alexnet": (31, 43), "googlenet": (23, 53),
                "vgg16": (53, 107), "resnet18": (23, 53), "resnet50": (37, 71),
                "mobilenet_v2": (23, 53), "efficientnet_lite0": (23, 53)}
#: Batch sizes of the plain-throughput sweep.
PLAIN_BATCHES = {"lenet": (16, 64, 256), "alexnet": (1, 8, 32), "googlenet": (1, 8, 32),
                 "vgg16": (1, 4, 8), "resnet18": (1, 8, 32), "resnet50": (1, 8, 16),
                 "mobilenet_v2": (1, 8, 32), "efficientnet_lite0": (1, 8, 32)}
#: Batch sizes of the plain sweep on CUDA: doubling while the device holds them (a size that
#: fails to allocate ends the sweep, and the sweep stops once a size is slower than the best).
CUDA_BATCHES = (32, 128, 256, 512, 1024, 2048, 4096)
#: Stride of the naive engine's block on CUDA: thousands of perturbed images, several calls
#: of the best batch size (a block of a few hundred would time one partial call).
CUDA_NAIVE_STRIDE = 8
INCREMENTAL_ENGINE_BATCH = 1000  # perturbed images per evaluate_windows call (100 windows)
#: Maps computed after each run, as ``preddiff explain`` does by default (``--top``).
KEPT_MAPS = DEFAULT_TOP
DESCRIPTION = ("Throughput of prediction difference analysis, naive and with exact incremental "
               "inference, against the plain classifier's images/s; prints a table and "
               "optionally writes JSON.")


def register(subparsers) -> None:
    """Add the ``bench`` sub-command."""
    p = subparsers.add_parser(
        "bench",
        help="throughput of PDA (naive and incremental) against the plain classifier",
        description=DESCRIPTION,
    )
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p, default_json=None) -> None:
    """The options of ``preddiff bench`` (shared with ``bench/pda_throughput.py``)."""
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated networks (default: {','.join(MODELS)})")
    p.add_argument("--quick", action="store_true",
                   help="smaller window blocks and one round (a smoke test, ~2 minutes)")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved measurement rounds (default 3: the median drops one "
                        "disturbed round; --quick 1)")
    p.add_argument("--json", type=Path, default=default_json, metavar="PATH",
                   help="write every figure as JSON to PATH (and the table to PATH.txt)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="execution provider (default: CUDA when it works)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--float16", action="store_true",
                   help="with CUDA: also run the incremental engine in float16 and report its "
                   "deviation from float32")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, sampler and PDA")


def _check_json_path(path: Path) -> None:
    """``--json PATH`` (and ``PATH.txt``) can be written: not a folder, in a writable folder."""
    from ..errors import InvalidArgument
    from ..lock import check_writable

    for target in (path, path.with_suffix(".txt")):
        if target.is_dir():
            raise InvalidArgument(f"--json {str(target)!r} is a folder; give a file name, "
                                  f"e.g. {str(target / 'bench.json')!r}")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidArgument(f"--json {str(path)!r}: cannot create its folder "
                              f"({exc.strerror})") from None
    check_writable(parent, "--json folder")


def run(args) -> int:
    """Run the benchmark, print the table, write the JSON; exit code 0."""
    from ..errors import InvalidArgument

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise InvalidArgument(f"--models {args.models!r}: unknown {unknown}; "
                              f"choose from {', '.join(MODELS)}")
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if rounds < 1:
        raise InvalidArgument(f"--rounds must be at least 1, got {rounds}")
    if args.json is not None:
        _check_json_path(args.json)  # before the benchmark, not after it
    if Path(sys.argv[0]).name == "preddiff" and "bench" in sys.argv:
        command = " ".join(["preddiff", *sys.argv[1:]])
    else:
        command = " ".join(["python", *sys.argv])
    started = time.time()
    results = {
        "command": command, "machine": machine_info(),
        "settings": {"window": WINDOW, "samples": SAMPLES, "padding": PADDING,
                     "sampler": "conditional", "rounds": rounds, "quick": bool(args.quick),
                     "device": args.device, "threads": args.threads, "seed": args.seed,
                     "incremental_engine_batch": INCREMENTAL_ENGINE_BATCH},
        "models": {},
    }
    for name in models:
        results["models"][name] = bench_model(name, quick=args.quick, rounds=rounds,
                                              device=args.device, threads=args.threads,
                                              seed=args.seed, float16=args.float16)
        if args.json is not None:  # a record of the networks done so far, if stopped later
            atomic_write_text(args.json, json.dumps(results, indent=2, default=float) + "\n")
    results["seconds"] = time.time() - started
    results["machine"]["load_average_end"] = _loadavg()
    table = format_table(results)
    print(table)
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(results, indent=2, default=float) + "\n")
        atomic_write_text(args.json.with_suffix(".txt"), table + "\n")
        print(f"wrote {args.json} and {args.json.with_suffix('.txt')}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------
# measurements


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _git_commit():
    """Commit of the git checkout this package runs from (``-dirty`` with local changes), or
    None outside a checkout."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def machine_info() -> dict:
    """CPU model, cores, memory, load and library versions of this machine."""
    import numpy
    import onnx
    import onnxruntime
    import scipy

    from .. import __version__

    from ..devices import available_cores, cpu_name

    return {
        "cpu": cpu_name(), "cores": available_cores(), "platform": platform.platform(),
        "python": platform.python_version(), "numpy": numpy.__version__,
        "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
        "scipy": scipy.__version__, "preddiff": __version__, "git_commit": _git_commit(),
        "providers": onnxruntime.get_available_providers(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_average_start": _loadavg(),
    }


def _model(name: str, seed: int):
    """The ONNX model (output ``prob``): LeNet's real weights, random zoo weights otherwise."""
    if name == "lenet":
        from .. import zoo
        from ..caffe import caffe_to_onnx

        return caffe_to_onnx(zoo.manifest(name).prototxt, zoo.weights_path(name),
                             outputs=["prob"]), "real (bundled)"
    if name in NETZOO_MODELS:
        from .. import netzoo

        return netzoo.build(name, seed=seed), f"random (seed {seed}), preddiff.netzoo"
    from ..caffe.writer import random_onnx

    return random_onnx(name, seed=seed, outputs=["prob"]), f"random (seed {seed})"


def bench_inputs(name: str, seed: int = 0) -> tuple:
    """The benchmark's network, its weights' description, the explained image (the pool's
    first) and the conditional sampler fitted on the rest of the pool (k = 10, l = 2).

    Returns
    -------
    model : onnx.ModelProto
    weights : str
    x : ndarray of float32, shape (C, H, W)
    sampler : ConditionalGaussianSampler
    """
    from ..images import default_pool
    from ..samplers import ConditionalGaussianSampler

    model, weights = _model(name, seed)
    if name in NETZOO_MODELS:
        from .. import netzoo

        pool = netzoo.example_pool(224)
    else:
        pool = default_pool(name)
    sampler = ConditionalGaussianSampler.fit(pool[1:], WINDOW, PADDING, num_patches=2000,
                                             rng=seed)
    return model, weights, pool[0], sampler


def _plain(classifier, x, min_seconds: float) -> float:
    """Images/s of the network alone on batches of ``classifier``'s batch size, the batch
    already on the device (bound once through IOBinding, so that no host-to-device copy is
    counted: the speed PDA is measured against), after one warm-up call."""
    import numpy as np

    from ..binding import BoundSession

    images = np.repeat(x[None], classifier.batch_size, axis=0)
    device = "cuda" if classifier.provider == "CUDAExecutionProvider" else "cpu"
    bound = BoundSession(classifier._session, device)
    bound.set_constant(classifier.input_name, images)
    wanted = [o for o in classifier.outputs if o != classifier.input_name]
    bound.run({}, wanted, len(images))
    done, start = 0, time.perf_counter()
    while True:
        bound.run({}, wanted, len(images))
        done += len(images)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def _sweep(model, x, batches, device, threads, min_seconds, cuda) -> tuple:
    """Plain images/s at each batch size: ``({batch: images/s}, {batch: classifier}, note)``.

    On CUDA the sweep goes on while the device holds the batch and the rate still grows: a
    batch that fails (out of device memory) or is slower than the best so far ends it; the
    note says which."""
    import gc

    from ..classifier import OnnxClassifier

    sweep, classifiers, note = {}, {}, None
    for b in batches:
        clf = None
        try:
            clf = OnnxClassifier(model, outputs=["prob"], batch_size=b, device=device,
                                 threads=threads)
            rate = _plain(clf, x, min_seconds)
        except Exception as exc:  # noqa: BLE001 - out of device memory ends the sweep
            if not cuda or not sweep:
                raise
            note = f"batch {b} failed: {' '.join(str(exc).split())[:160]}"
            break
        finally:
            gc.collect()
        sweep[b] = rate
        if rate >= max(sweep.values()):  # keep only the best session: the device memory
            classifiers = {b: clf}       # of the others goes back before the next size
        del clf
        gc.collect()
        if cuda and rate < max(sweep.values()):
            note = f"batch {b} slower than batch {max(sweep, key=sweep.get)}"
            break
    return sweep, classifiers, note


def plain_around(plains) -> tuple:
    """The plain images/s each engine's ratio is taken against, from a round's three plain
    measurements (before the naive run, between the runs, after the incremental run): the
    mean of the two around the naive run and the mean of the two around the incremental run."""
    before, between, after = plains
    return (before + between) / 2, (between + after) / 2


def _pda(x, classifier, sampler, stride, batch_size, seed):
    """One PDA run on the block, and the maps ``preddiff explain`` keeps by default (the top
    :data:`KEPT_MAPS` classes), timed into ``timings["maps"]``; :func:`_seconds` adds both.
    Returns the explanation and the number of window-samples evaluated."""
    from .. import prediction_difference
    from ..windows import window_positions

    e = prediction_difference(x, classifier, sampler, window=WINDOW, stride=stride,
                              num_samples=SAMPLES, blobs=("prob",), batch_size=batch_size,
                              rng=seed, progress=False)
    tic = time.perf_counter()
    for unit, _ in e.top_classes("prob", KEPT_MAPS):
        e.relevance_of("prob", unit)
    e.timings["maps"] = time.perf_counter() - tic
    # the windows the run evaluated: the regular grid and, where the stride does not divide
    # H − k, the row and column aligned to the image's edge (edges="cover", the default)
    n = len(window_positions(x.shape[1:], WINDOW, stride, edges=e.edges))
    return e, n * SAMPLES


def _warm_sampler(sampler, x, stride: int, seed: int) -> None:
    """Draw one sample at every window of the block, so that a conditional sampler's
    per-position Gaussians (computed once per sampler and cached, then shared by every image
    it explains) are not counted as per-window work."""
    from ..streams import WindowStreams
    from ..windows import window_positions

    positions = window_positions(x.shape[1:], WINDOW, stride, edges="cover")
    sampler.sample(x, positions, WINDOW, 1, WindowStreams(seed, 0, len(positions)))


#: Idle seconds before an engine's timed run: onnxruntime's worker threads keep spinning for a
#: while after a call before they sleep, so the other engine's session, run just before, would
#: share the cores with the timed run (LeNet's incremental row: 0.66-0.71 of plain without
#: this pause, 0.81-0.83 with it, two runs each).
SETTLE_SECONDS = 0.1


def _settle() -> None:
    """Let the previous session's onnxruntime threads stop spinning (:data:`SETTLE_SECONDS`)."""
    time.sleep(SETTLE_SECONDS)


def _seconds(explanation) -> float:
    """Seconds of a run of :func:`_pda`: the engine and the kept maps."""
    return explanation.timings["total"] + explanation.timings["maps"]


def _clean_pass(classifier, x) -> float:
    """Seconds of the classifier's forward pass of the clean image alone (an incremental
    classifier's cache of clean activations is emptied before and after)."""
    clear = getattr(classifier, "clear_cache", None)
    if clear is not None:
        clear()
    tic = time.perf_counter()
    classifier(x[None])
    seconds = time.perf_counter() - tic
    if clear is not None:
        clear()
    return seconds


def _timed_pda(x, classifier, sampler, stride, batch_size, seed, min_seconds: float,
               clean_seconds: float, forget=None) -> tuple:
    """PDA runs of the block (:func:`_pda`), repeated until together they last
    ``min_seconds``, as each plain measurement does: a block shorter than that (LeNet's,
    0.2 s) would be timed within one stretch of the machine's speed. ``forget`` is called
    before every run (the incremental engine's cache of clean activations: every run pays
    for its clean forward pass).

    Returns
    -------
    explanation : Explanation
        The last run's.
    timing : dict
        ``runs``, ``block`` (window-samples of one run), ``window_samples`` (all runs),
        ``seconds`` (:func:`_seconds`, summed),
        ``steady_seconds`` (:func:`_steady_seconds`, summed) and ``outside_fraction`` (the
        engine's time outside classifier calls over its whole time, all runs).
    """
    runs = count = 0
    seconds = steady = outside = engine = 0.0
    while True:
        if forget is not None:
            forget()
        e, n = _pda(x, classifier, sampler, stride, batch_size, seed)
        runs, count = runs + 1, count + n
        seconds += _seconds(e)
        steady += _steady_seconds(e, clean_seconds)
        outside += e.timings["outside"]
        engine += e.timings["total"]
        if seconds >= min_seconds:
            break
    return e, {"runs": runs, "block": n, "window_samples": count, "seconds": seconds,
               "steady_seconds": steady,
               "outside_fraction": outside / max(engine, 1e-12)}


def _steady_seconds(explanation, clean_seconds: float) -> float:
    """Sampler and classifier time of a run, less its clean forward pass (once per image)."""
    t = explanation.timings
    return max(t["classifier"] - clean_seconds, 0.0) + t["sampler"]


def bench_model(name, *, quick, rounds, device, threads, seed, float16=False) -> dict:
    """All figures of one network (see the module docstring)."""
    import numpy as np

    from ..analysis import default_batch_size
    from ..incremental import IncrementalClassifier, resolve_device

    _say(f"{name}: building the model")
    model, weights, x, sampler = bench_inputs(name, seed)
    stride = BLOCK_STRIDE[name][1 if quick else 0]
    min_seconds = 1.0 if quick else RUN_SECONDS
    # each engine's timed PDA runs last at least as long as a plain measurement (--quick: one)
    run_seconds = 0.0 if quick else RUN_SECONDS
    out = {"weights": weights, "input": list(x.shape), "stride": stride}

    _say(f"{name}: plain throughput sweep")
    cuda = resolve_device(device) == "cuda"
    sweep, plain, note = _sweep(model, x, CUDA_BATCHES if cuda else PLAIN_BATCHES[name],
                                device, threads, min_seconds, cuda)
    best = max(sweep, key=sweep.get)
    out["plain_sweep"] = {str(b): v for b, v in sweep.items()}
    out["plain_sweep_end"] = note
    out["plain_batch"] = best
    out["provider"] = plain[best].provider
    # the naive engine as preddiff explain runs it: batches of at least default_batch_size
    # perturbed images, classifier calls of the best size (composed on the device on CUDA)
    naive = plain[best]
    naive_batch = max(default_batch_size(x.shape), best) // SAMPLES * SAMPLES
    out["naive_engine_batch"] = naive_batch
    out["naive_composes_on_device"] = naive.composes_on_device
    incremental = IncrementalClassifier(model, outputs=["prob"], device=device, threads=threads,
                                        float16=False)
    out["incremental_supported"] = incremental.incremental
    if incremental.incremental:
        report = incremental.report(x.shape, (WINDOW, WINDOW))
        out["macs"] = {k: report[k] for k in ("macs_full", "macs_planned", "macs_theoretical",
                                              "reduction", "cut")}
        out["macs"]["steps"] = len(report["steps"])
        out["macs"]["planned_reduction"] = report["macs_full"] / max(report["macs_planned"], 1)
        out["macs"]["stop_reason"] = incremental.analysis.stop_reason
        out["plan"] = report["plan"]
        if report["cut"] == 0:
            # nothing to do incrementally: the engine runs whole images, batch_size at a
            # time (composed on the host on the CPU, in the graph on CUDA), as the naive
            # engine does; it gets the naive engine's call size (on the CPU what
            # --incremental's measurement picks among its batch sizes, too)
            incremental.batch_size = best
        out["incremental_batch"] = incremental.batch_size

    # warm-up on the same image and window size: sessions, clean maps, plans; the naive
    # engine's classifier already ran its call size in the sweep (on CUDA it runs a larger
    # block, warmed up on that very block: cuDNN picks its algorithms per input shape); the
    # incremental engine runs the block once, untimed, as its calls have the block's shapes
    # (a first run at new shapes was up to 30 % slower: LeNet 20.3k against 24.7k w-s/s)
    warm = max(x.shape[1], x.shape[2])
    naive_stride = CUDA_NAIVE_STRIDE if cuda else stride
    out["naive_stride"] = naive_stride
    _pda(x, naive, sampler, naive_stride if cuda else warm, naive_batch, seed)
    _pda(x, incremental, sampler, stride, INCREMENTAL_ENGINE_BATCH, seed)
    _warm_sampler(sampler, x, min(stride, naive_stride), seed)

    per_round = []
    for r in range(rounds):
        _say(f"{name}: round {r + 1}/{rounds}: plain, naive PDA, incremental PDA")
        # each engine's run between two plain measurements, so that its ratio is taken
        # against the plain speed of the same stretch of time (see the module docstring)
        plains = [_plain(naive, x, min_seconds)]
        clean_naive = _clean_pass(naive, x)
        e_naive, t_naive = _timed_pda(x, naive, sampler, naive_stride, naive_batch, seed,
                                      run_seconds, clean_naive)
        n_naive = t_naive["block"]
        plains.append(_plain(naive, x, min_seconds))
        clean_incremental = _clean_pass(incremental, x)
        _settle()
        # the clean image's forward pass counts for both engines: forget the cached one
        e_inc, t_inc = _timed_pda(x, incremental, sampler, stride, INCREMENTAL_ENGINE_BATCH,
                                  seed, run_seconds, clean_incremental,
                                  forget=incremental.clear_cache)
        n = t_inc["block"]
        _settle()
        plains.append(_plain(naive, x, min_seconds))
        row = {"plain": float(np.mean(plains)), "plain_before_naive": plains[0],
               "plain_between": plains[1], "plain_after_incremental": plains[2]}
        plain_naive, plain_incremental = plain_around(plains)
        if naive_stride != stride:  # the maps compared on the incremental engine's block
            e_naive_block, _ = _pda(x, naive, sampler, stride, naive_batch, seed)
        else:
            e_naive_block = e_naive
        want, got = e_naive_block.relevance["prob"], e_inc.relevance["prob"]
        row.update({
            "window_samples": n, "naive_window_samples": n_naive,
            "naive_runs": t_naive["runs"], "incremental_runs": t_inc["runs"],
            "naive": t_naive["window_samples"] / t_naive["seconds"],
            "naive_clean_pass_seconds": clean_naive,
            "incremental_clean_pass_seconds": clean_incremental,
            "naive_steady": t_naive["window_samples"] / t_naive["steady_seconds"],
            "incremental_steady": t_inc["window_samples"] / t_inc["steady_seconds"],
            "naive_outside_fraction": t_naive["outside_fraction"],
            "naive_seconds": t_naive["seconds"],
            "incremental": t_inc["window_samples"] / t_inc["seconds"],
            "incremental_outside_fraction": t_inc["outside_fraction"],
            "incremental_seconds": t_inc["seconds"],
            "max_relative_difference": float(np.abs(got - want).max() / np.abs(want).max()),
        })
        row["ratio_naive"] = row["naive"] / plain_naive
        row["ratio_incremental"] = row["incremental"] / plain_incremental
        row["ratio_incremental_steady"] = row["incremental_steady"] / plain_incremental
        per_round.append(row)
    out["rounds"] = per_round
    for key in per_round[0]:
        out[key] = float(np.median([row[key] for row in per_round]))
    out["max_relative_difference"] = max(row["max_relative_difference"] for row in per_round)
    if "macs" in out:
        out["measured_over_planned"] = out["ratio_incremental"] / out["macs"]["planned_reduction"]
    out["window_samples"] = per_round[0]["window_samples"]
    if name in TARGETS:
        out["target"] = TARGETS[name]
        out["target_met"] = bool(out["ratio_incremental"] >= TARGETS[name])
        out["target_met_steady"] = bool(out["ratio_incremental_steady"] >= TARGETS[name])
    if float16 and incremental.device == "cuda":
        out["float16"] = _float16(model, x, sampler, stride, seed, device, threads,
                                  per_round[-1], e_inc)
    return out


def _float16(model, x, sampler, stride, seed, device, threads, row, e32) -> dict:
    """Speed of the float16 incremental engine and its deviation from float32."""
    import numpy as np

    from ..incremental import IncrementalClassifier

    half = IncrementalClassifier(model, outputs=["prob"], device=device, threads=threads,
                                 float16=True)
    _pda(x, half, sampler, max(x.shape[1:]), INCREMENTAL_ENGINE_BATCH, seed)
    half.clear_cache()
    e16, n = _pda(x, half, sampler, stride, INCREMENTAL_ENGINE_BATCH, seed)
    want, got = e32.relevance["prob"], e16.relevance["prob"]
    return {"incremental": n / _seconds(e16),
            "ratio_incremental": n / _seconds(e16) / row["plain"],
            "max_relative_difference": float(np.abs(got - want).max() / np.abs(want).max())}


# --------------------------------------------------------------------------------------------
# output


def _repeated(results: dict) -> bool:
    """Whether the record's PDA runs were repeated to :data:`RUN_SECONDS` (records from
    before that have no run counts; ``--quick`` runs once)."""
    return any(r.get("naive_runs") is not None and not results["settings"].get("quick")
               for m in results["models"].values() for r in m.get("rounds", []))


def format_table(results: dict) -> str:
    """The results as a plain-text table with the machine, the command and the targets."""
    m = results["machine"]
    s = results["settings"]
    lines = [
        f"PDA throughput, k={s['window']}, S={s['samples']}, conditional sampler "
        f"(l={s['padding']}); medians of {s['rounds']} interleaved round(s)",
        f"machine: {m['cpu']}, {m['cores']} cores; load average {m['load_average_start']} at "
        f"start, {m.get('load_average_end')} at end; numpy {m['numpy']}, onnxruntime "
        f"{m['onnxruntime']}" + (f", preddiff {m['preddiff']} (commit {m.get('git_commit')})"
                                 if "preddiff" in m else ""),
        f"command: {results['command']}",
        "",
        f"{'model':18s} {'block':>10s} {'plain':>13s} {'naive PDA':>10s} {'ratio':>6s} "
        f"{'outside':>8s} {'incr. PDA':>10s} {'ratio':>6s} {'steady':>7s} {'speedup':>8s} "
        f"{'MAC red.':>9s} {'planned':>8s} {'meas/':>6s} {'target':>7s} {'met':>4s} "
        f"{'max diff':>9s}",
        f"{'':18s} {'win x S':>10s} {'img/s (b)':>13s} {'w-s/s':>10s} {'':>6s} "
        f"{'classif.':>8s} {'w-s/s':>10s} {'':>6s} {'ratio':>7s} {'':>8s} {'(ref)':>9s} "
        f"{'mean':>8s} {'plan':>6s} {'':>7s} {'':>4s} {'of maps':>9s}",
    ]
    for name, r in results["models"].items():
        red = r.get("macs", {}).get("reduction")
        ref = REFERENCE_REDUCTION.get(name)
        red_text = "-" if red is None else f"{red:.1f}" + (f" ({ref})" if ref else "")
        target = r.get("target")
        planned = r.get("macs", {}).get("planned_reduction")
        over = r.get("measured_over_planned")
        lines.append(
            f"{name:18s} {r['window_samples'] // s['samples']:>6d} x {s['samples']:<2d}"
            f"{r['plain']:>8.1f} ({r['plain_batch']:>3d}) {r['naive']:>10.1f} "
            f"{r['ratio_naive']:>6.2f} {100 * r['naive_outside_fraction']:>7.1f}% "
            f"{r['incremental']:>10.1f} {r['ratio_incremental']:>6.2f} "
            f"{r['ratio_incremental_steady']:>7.2f} "
            f"{r['incremental'] / r['naive']:>7.2f}x {red_text:>9s} "
            f"{'-' if planned is None else f'{planned:.2f}':>8s} "
            f"{'-' if over is None else f'{over:.2f}':>6s} "
            f"{'-' if target is None else f'{target:.1f}':>7s} "
            f"{'-' if target is None else ('yes' if r['target_met'] else 'NO'):>4s} "
            f"{r['max_relative_difference']:>9.1e}")
    lines += [
        "",
        "plain: the network's images/s at the best batch size b of the sweep, its input "
        "already on the device (three times a round); PDA: window-samples/s"
        " of prediction_difference on the block (a grid of windows over the whole image), with"
        f" the maps of the top {KEPT_MAPS} classes (what preddiff explain keeps by default),"
        + (f" the block run again until an engine's runs of a round last {RUN_SECONDS} s, as"
           " a plain measurement does;" if _repeated(results) else
           " one run of the block per engine and round;"),
        "ratio: PDA window-samples/s / plain images/s measured just before and after the "
        "engine's runs, median over rounds (above 1 beats the naive limit); steady "
        "ratio: the same counting only sampler and classifier time (no once-per-image work);",
        "outside classif.: naive engine time outside classifier calls; MAC red.: multiply-add",
        "reduction of exact incremental inference for the centre window (reference notes in "
        "brackets); planned mean: the same averaged over all window positions at the cost "
        "model's switch point; meas/plan: ratio / planned mean;",
        "max diff: max |incremental - naive| / max |naive| of the relevance maps;",
        "warm-up before timing: sessions, plans, one untimed incremental run of the block, and "
        "the sampler's conditional Gaussians of every window position of the block (once per "
        "sampler, shared by all its images).",
    ]
    for name, r in results["models"].items():
        if r.get("naive_stride", r.get("stride")) != r.get("stride"):
            lines.append(f"{name} naive PDA: a block of {r['naive_window_samples'] // s['samples']}"
                         f" windows (stride {r['naive_stride']}), warmed up on it")
        if r.get("plain_sweep_end"):
            lines.append(f"{name} sweep: {', '.join(f'{b}: {v:.0f}' for b, v in r['plain_sweep'].items())}"
                         f" images/s; ended: {r['plain_sweep_end']}")
        if "float16" in r:
            f = r["float16"]
            lines.append(f"{name} float16: {f['incremental']:.1f} w-s/s, ratio "
                         f"{f['ratio_incremental']:.2f}, max deviation from float32 "
                         f"{f['max_relative_difference']:.2e}")
    return "\n".join(lines)


def main(argv=None, default_json=None) -> int:
    """Stand-alone entry point (``bench/pda_throughput.py``)."""
    import argparse
    import logging

    from ..errors import PredDiffError

    parser = argparse.ArgumentParser(prog="pda_throughput", description=DESCRIPTION)
    add_arguments(parser, default_json)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        return run(args)
    except PredDiffError as exc:
        print(f"pda_throughput: error: {exc}", file=sys.stderr)
        return 2
