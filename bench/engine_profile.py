"""Where the time of a naive PDA run goes: sampling, composing images, host-device copies,
session calls, reductions and the rest (Python), one run per network.

Each part is timed by wrapping the function that does it (a profile, so the wrappers add a
little time of their own):

sampling
    the sampler (drawn in a background thread while the classifier runs: ``waiting`` is the
    time the engine waited for it);
composing
    building the perturbed images on the host (:func:`preddiff.compose.compose_batch`); on
    the device they are composed inside the session call;
copies
    inputs copied into the bound device buffers and outputs copied back
    (:class:`preddiff.binding.BoundSession`);
session
    onnxruntime's ``run`` / ``run_with_iobinding``;
reductions
    the weight of evidence / activation difference of each window (eq. 4-5, 9);
other
    the rest of the engine's wall time (Python, checks, the progress bar, the maps).

    python bench/engine_profile.py [--device cuda] [--models lenet,alexnet,...]

Runs on the package it imports, so the same script profiles an older checkout (parts that
checkout does not have are reported as n/a). Writes ``--json PATH`` and ``PATH.txt``.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import threading
import time
from pathlib import Path

PARTS = ("sampling", "waiting", "composing", "copies", "session", "reductions", "other")


class Timers:
    """Seconds per part, summed over calls made in the engine's (main) thread, except the
    sampler, timed in whatever thread runs it. Installed once (:func:`install`), reset per
    run."""

    def __init__(self):
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self.present = set()
        self.depth = threading.local()

    def reset(self) -> "Timers":
        self.seconds = dict.fromkeys(PARTS, 0.0)
        return self

    def wrap(self, owner, name: str, part: str, any_thread: bool = False) -> None:
        original = getattr(owner, name, None)
        if original is None:
            return
        self.present.add(part)
        timers = self

        @functools.wraps(original)
        def timed(*args, **kwargs):
            main = threading.current_thread() is threading.main_thread()
            nested = getattr(timers.depth, "value", 0)
            if (not main and not any_thread) or nested:
                return original(*args, **kwargs)
            timers.depth.value = 1
            tic = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timers.seconds[part] += time.perf_counter() - tic
                timers.depth.value = 0

        setattr(owner, name, timed)


TIMERS = Timers()


def install(timers: Timers) -> None:
    import onnxruntime as ort

    from preddiff import analysis, classifier, samplers

    timers.wrap(samplers.ConditionalGaussianSampler, "sample", "sampling", any_thread=True)
    prefetch = getattr(analysis, "_Done", None) and getattr(analysis, "_Prefetch", None)
    if prefetch is not None:
        import concurrent.futures as cf

        timers.wrap(cf.Future, "result", "waiting")
    timers.wrap(analysis._BatchRunner, "_build", "composing")
    if hasattr(classifier, "compose_batch"):
        timers.wrap(classifier, "compose_batch", "composing")
    try:
        from preddiff import binding
    except ImportError:
        binding = None
    if binding is not None:
        timers.wrap(binding.BoundSession, "_input", "copies")
        timers.wrap(binding.BoundSession, "set_constant", "copies")
        timers.wrap(binding.BoundSession, "_fetch", "copies")
    timers.wrap(ort.InferenceSession, "run", "session")
    timers.wrap(ort.InferenceSession, "run_with_iobinding", "session")
    timers.wrap(analysis._BlobReducer, "__call__", "reductions")


def profile(name: str, device: str, quick: bool) -> dict:
    """One naive run of ``preddiff bench``'s block of ``name``, parts timed."""

    from preddiff import prediction_difference
    from preddiff.classifier import OnnxClassifier
    from preddiff.commands import bench

    if hasattr(bench, "bench_inputs"):
        model, _, x, sampler = bench.bench_inputs(name)
    else:  # a checkout from before bench_inputs (the "before" profile)
        from preddiff.samplers import ConditionalGaussianSampler

        model, _ = bench._model(name, 0)
        if name in bench.NETZOO_MODELS:
            from preddiff import netzoo

            pool = netzoo.example_pool(224)
        else:
            pool = __import__("preddiff.images").images.default_pool(name)
        x = pool[0]
        sampler = ConditionalGaussianSampler.fit(pool[1:], bench.WINDOW, bench.PADDING,
                                                 num_patches=2000, rng=0)
    stride = bench.BLOCK_STRIDE[name][1 if quick else 0]
    call = {"lenet": 64, "vgg16": 8}.get(name, 32) if device != "cuda" else 512
    clf = OnnxClassifier(model, outputs=["prob"], batch_size=call, device=device)
    engine_batch = max(256, call) // bench.SAMPLES * bench.SAMPLES
    kwargs = dict(window=bench.WINDOW, num_samples=bench.SAMPLES, rng=0, progress=False,
                  batch_size=engine_batch)
    prediction_difference(x, clf, sampler, stride=max(x.shape), **kwargs)  # warm-up
    timers = TIMERS.reset()
    tic = time.perf_counter()
    e = prediction_difference(x, clf, sampler, stride=stride, **kwargs)
    for unit, _ in e.top_classes("prob", 3):
        e.relevance_of("prob", unit)
    total = time.perf_counter() - tic
    main_parts = sum(v for k, v in timers.seconds.items() if k not in ("sampling", "other"))
    if "waiting" not in timers.present:  # no prefetch: the sampler runs in the engine's thread
        main_parts += timers.seconds["sampling"]
    timers.seconds["other"] = total - main_parts
    windows = int(round(e.counts.sum() / (bench.WINDOW * bench.WINDOW)))
    return {"provider": clf.provider, "call_size": call, "engine_batch": engine_batch,
            "windows": windows, "images": windows * bench.SAMPLES, "seconds": total,
            "parts": {k: (v if k in timers.present or k == "other" else None)
                      for k, v in timers.seconds.items()},
            "composes_on_device": getattr(clf, "composes_on_device", False)}


def table(result: dict) -> str:
    m = result["machine"]
    lines = ["Naive PDA time by part (k=10, S=10, conditional sampler, bench blocks)",
             f"machine: {m['cpu']}, {m['cores']} cores; load average "
             f"{m['load_average_start']}; onnxruntime {m['onnxruntime']}; preddiff "
             f"{m['preddiff']} (commit {m.get('git_commit')})",
             f"command: {result['command']}", "",
             f"{'model':14s} {'provider':21s} {'images':>7s} {'total s':>8s} "
             + " ".join(f"{p:>10s}" for p in PARTS)]
    for name, r in result["models"].items():
        cells = []
        for p in PARTS:
            v = r["parts"][p]
            cells.append(f"{'n/a':>10s}" if v is None else
                         f"{100 * v / r['seconds']:>9.1f}%")
        lines.append(f"{name:14s} {r['provider']:21s} {r['images']:>7d} {r['seconds']:>8.2f} "
                     + " ".join(cells))
    lines += ["", "shares of the run's wall time; sampling runs in a background thread while "
              "the classifier runs (when the engine prefetches), so the parts of the engine's "
              "thread are waiting, composing, copies, session, reductions and other."]
    return "\n".join(lines)


def main(argv=None) -> int:
    from preddiff.commands.bench import machine_info
    from preddiff.fileio import atomic_write_text

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="lenet,alexnet,googlenet,vgg16,resnet50")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--quick", action="store_true", help="the bench's --quick blocks")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    result = {"command": " ".join(["python", *sys.argv]), "machine": machine_info(),
              "models": {}}
    install(TIMERS)
    for name in args.models.split(","):
        print(f"[engine_profile] {name}", file=sys.stderr, flush=True)
        result["models"][name] = profile(name, args.device, args.quick)
    text = table(result)
    print(text)
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(result, indent=2, default=float) + "\n")
        atomic_write_text(args.json.with_suffix(".txt"), text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
