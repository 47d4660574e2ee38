"""Paper-scale PDA, measured: one image per network at the paper's settings, and the projected
time of every figure (Figs. 1-6) at paper scale on this machine.

Paper settings (§4): k = 10, S = 20, stride 1, conditional sampler (l = 2, 25,000 patches),
the full-size Caffe-zoo networks (random weights here: the time does not depend on them). One
image of AlexNet is 47,524 windows, 950,480 forward passes; the paper needed 1 h (AlexNet),
2 h (GoogLeNet) and 12 h (VGG16) per image on its GPU.

For each network the script

1. fits the conditional sampler on the bundled example images (timed: once per image in the
   figures);
2. decides the engine and its call size as ``preddiff explain`` does
   (:func:`preddiff.incremental_decision.decide_incremental`, not cached here; timed);
3. runs PDA on the first example image: to completion for the networks named in
   ``--complete`` (the whole :func:`preddiff.prediction_difference`, with its progress bar),
   else on about ``--fraction`` of the windows, whole batches spread evenly over the image
   (:func:`timed_batches`, :func:`preddiff.analysis.window_values`), and records
   window-samples/s;
4. projects every PDA run of the figure scripts' paper configuration (``reproduce/figN.py``,
   ``CONFIG["paper"]``) from those rates: windows × S ÷ rate, plus one sampler fit per run.
   Window sizes other than 10 (Fig. 3: 1, 4, 7; Fig. 4: 1) are projected at the k = 10 rate
   (exact for full images; incremental inference gains more with smaller windows).

    python bench/paper_scale.py --device cuda                      # bench/gpu_check.sh
    python bench/paper_scale.py --models alexnet --fraction 0.002  # a CPU smoke run

Writes ``--json PATH`` and ``PATH.txt`` (default ``bench/results/paper_scale_<provider>``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the reproduce package (figure configurations)

WINDOW, SAMPLES, PADDING, PATCHES = 10, 20, 2, 25000
PAPER_HOURS = {"alexnet": 1.0, "googlenet": 2.0, "vgg16": 12.0}


def figure_runs() -> list[dict]:
    """Every PDA run of Figs. 1-6 at paper scale: figure, model, window, samples, count."""
    from reproduce import fig1, fig2, fig3, fig4, fig5, fig6

    runs = []
    c = fig1.CONFIG["paper"]
    for model in c["models"]:
        runs.append({"figure": "fig1", "model": model, "window": c["window"],
                     "samples": c["num_samples"], "count": 2 * len(c["images"]),
                     "what": "marginal and conditional, per image"})
    c = fig2.CONFIG["paper"]
    runs.append({"figure": "fig2", "model": c["model"], "window": c["window"],
                 "samples": c["num_samples"], "count": len(c["images"]),
                 "what": "conditional, two layers, per image"})
    c = fig3.CONFIG["paper"]
    for window in c["windows"]:
        runs.append({"figure": "fig3", "model": c["model"], "window": int(window),
                     "samples": c["num_samples"], "count": 1, "what": f"k = {window}"})
    c = fig4.CONFIG["paper"]
    runs.append({"figure": "fig4", "model": c["model"], "window": c["window"],
                 "samples": c["num_samples"], "count": len(c["images"]),
                 "what": "conditional, per image"})
    c = fig5.CONFIG["paper"]
    runs.append({"figure": "fig5", "model": c["model"], "window": c["window"],
                 "samples": c["num_samples"], "count": 1, "what": "three hidden layers"})
    c = fig6.CONFIG["paper"]
    runs.append({"figure": "fig6", "model": c["model"], "window": c["window"],
                 "samples": c["num_samples"], "count": len(c["images"]) - 1,
                 "what": "hidden layers, per image (the first shared with fig5)"})
    return runs


def measure(name: str, args) -> dict:
    """Sampler fit, engine decision and PDA rate of one network on its first example image."""
    from preddiff import prediction_difference
    from preddiff.analysis import clean_outputs, default_batch_size, prepare, window_values
    from preddiff.caffe.writer import random_onnx
    from preddiff.images import default_pool
    from preddiff.incremental_decision import decide_incremental
    from preddiff.samplers import ConditionalGaussianSampler

    say(f"{name}: model and pool")
    model = random_onnx(name, seed=0, outputs=["prob"])
    pool = default_pool(name)
    x = pool[0]
    tic = time.perf_counter()
    sampler = ConditionalGaussianSampler.fit(pool[1:], WINDOW, PADDING,
                                             num_patches=args.patches, rng=1)
    fit = time.perf_counter() - tic
    say(f"{name}: deciding the engine ({args.incremental})")
    tic = time.perf_counter()
    decision = decide_incremental(model, x, WINDOW, args.incremental, outputs=["prob"],
                                  device=args.device, samples=SAMPLES, cache=False)
    decide = time.perf_counter() - tic
    clf = decision.classifier
    engine = "incremental" if decision.use else "full images"
    # the engine's batch as preddiff explain sizes it: at least one call of the measured size
    base = 1000 if decision.use else default_batch_size(x.shape)
    batch = max(base, decision.batch_size) // SAMPLES * SAMPLES
    provider = getattr(clf, "provider", None) or getattr(clf, "device", "?")
    say(f"{name}: {decision.message}; engine batch {batch}")
    setup = prepare(x, sampler, window=WINDOW, num_samples=SAMPLES, rng=0, batch_size=batch)
    n_windows = setup.n_windows
    tic = time.perf_counter()
    if name in args.complete:
        say(f"{name}: the whole image, {n_windows} windows x {SAMPLES} samples")
        e = prediction_difference(x, clf, sampler, window=WINDOW, num_samples=SAMPLES, rng=0,
                                  batch_size=batch, progress=not args.no_progress)
        for unit, _ in e.top_classes("prob", 3):
            e.relevance_of("prob", unit)
        done = n_windows
        timings = e.timings
    else:
        batches = timed_batches(n_windows, setup.windows_per_batch, args.fraction)
        done = sum(stop - start for start, stop in batches)
        clean, _ = clean_outputs(setup, clf)
        # one untimed batch first (the last one: its own shape), so that the once-per-run
        # costs (sessions, algorithm searches per input shape) are not projected
        window_values(setup, clf, sampler, clean,
                      max(0, n_windows - setup.windows_per_batch), n_windows)
        say(f"{name}: {done} of {n_windows} windows x {SAMPLES} samples, in {len(batches)} "
            f"batches spread over the image")
        tic = time.perf_counter()
        timings = {"classifier": 0.0, "sampler": 0.0}
        for start, stop in batches:
            window_values(setup, clf, sampler, clean, start, stop, timings)
    seconds = time.perf_counter() - tic
    rate = done * SAMPLES / seconds
    image = n_windows * SAMPLES / rate
    row = {"input": list(x.shape), "windows": n_windows, "windows_timed": done,
           "complete": done == n_windows, "seconds_timed": seconds, "rate": rate,
           "image_seconds": image if done < n_windows else seconds,
           "sampler_fit_seconds": fit, "decision_seconds": decide, "engine": engine,
           "decision": decision.message, "call_size": decision.batch_size,
           "engine_batch": batch, "provider": provider,
           "classifier_seconds": timings.get("classifier"),
           "sampler_seconds": timings.get("sampler"),
           "paper_hours": PAPER_HOURS.get(name)}
    say(f"{name}: {rate:.0f} window-samples/s; one image "
        f"{'took' if row['complete'] else 'projected'} {row['image_seconds'] / 60:.1f} min")
    return row


def timed_batches(n_windows: int, per_batch: int, fraction: float) -> list[tuple]:
    """The (start, stop) window ranges a partial run times: whole batches of the full run
    (starting at multiples of ``per_batch``), about ``fraction`` of the windows, one at the
    middle of each of equal stretches of the image. Windows near the border have clipped,
    cheaper boxes in an incremental run, so the first rows alone would project too short a
    time.

    >>> timed_batches(1000, 50, 0.15)
    [(150, 200), (450, 500), (750, 800)]
    """
    batches = -(-n_windows // per_batch)
    if batches == 1:
        return [(0, n_windows)]
    # the last batch may be short, and runs untimed first: leave it out
    count = max(1, min(batches - 1, round(fraction * n_windows / per_batch)))
    picks = ((np.arange(count) + 0.5) * (batches - 1) / count).astype(int)
    return [(int(b) * per_batch, (int(b) + 1) * per_batch) for b in picks]


def project(measured: dict) -> list[dict]:
    """The figures' runs with their projected seconds (None where the network is not
    measured)."""
    rows = []
    for run in figure_runs():
        m = measured.get(run["model"])
        seconds = None
        if m is not None:
            c, h, w = m["input"]
            k = run["window"]
            windows = (h - k + 1) * (w - k + 1)
            seconds = run["count"] * (windows * run["samples"] / m["rate"]
                                      + m["sampler_fit_seconds"])
        rows.append({**run, "seconds": seconds})
    return rows


def table(result: dict) -> str:
    m = result["machine"]
    lines = [f"Paper-scale PDA: k={WINDOW}, S={SAMPLES}, stride 1, conditional sampler "
             f"(l={PADDING}, {result['settings']['patches']} patches), random weights",
             f"machine: {m['cpu']}, {m['cores']} cores; {m.get('gpu') or 'no GPU'}; "
             f"onnxruntime {m['onnxruntime']}; preddiff {m['preddiff']} (commit "
             f"{m.get('git_commit')})",
             f"command: {result['command']}", "",
             f"{'model':10s} {'provider':22s} {'engine':12s} {'call':>5s} {'windows':>8s} "
             f"{'timed':>7s} {'w-s/s':>9s} {'image':>9s} {'paper':>6s} {'fit':>6s}"]
    for name, r in result["models"].items():
        paper = "-" if r["paper_hours"] is None else f"{r['paper_hours']:.0f}h"
        lines.append(
            f"{name:10s} {r['provider']:22s} {r['engine']:12s} {r['call_size']:>5d} "
            f"{r['windows']:>8d} {r['windows_timed']:>7d} {r['rate']:>9.0f} "
            f"{r['image_seconds'] / 60:>7.1f}{'m ' if r['complete'] else 'm*'} "
            f"{paper:>6s} {r['sampler_fit_seconds']:>5.1f}s")
    lines += ["", "image: minutes for one image (* projected from the timed windows); paper: "
              "hours per image in the paper; fit: conditional sampler fit", "",
              "Figures at paper scale, projected:"]
    total, missing = 0.0, set()
    for run in result["figures"]:
        if run["seconds"] is None:
            missing.add(run["model"])
            text = "not measured"
        else:
            total += run["seconds"]
            text = f"{run['seconds'] / 60:8.1f} min"
        lines.append(f"  {run['figure']} {run['model']:10s} k={run['window']:<3d} "
                     f"S={run['samples']:<3d} x{run['count']:<2d} {text}  ({run['what']})")
    lines.append(f"  all measured runs: {total / 3600:.2f} h"
                 + (f"; not measured: {', '.join(sorted(missing))}" if missing else ""))
    return "\n".join(lines)


def say(message: str) -> None:
    print(f"[paper_scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    from preddiff.commands.bench import machine_info
    from preddiff.fileio import atomic_write_text

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="alexnet,googlenet,vgg16")
    p.add_argument("--complete", default="",
                   help="comma-separated networks run to completion (the rest: --fraction)")
    p.add_argument("--fraction", type=float, default=0.05,
                   help="share of the windows timed for the other networks (default 0.05)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--incremental", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--patches", type=int, default=PATCHES, help="sampler fit patches")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--from", dest="previous", type=Path, nargs="*", default=[],
                   metavar="JSON", help="measured networks of earlier runs (their JSON) to "
                   "project with; --models '' measures nothing new")
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    args.complete = {m for m in args.complete.split(",") if m}
    if not 0 < args.fraction <= 1:
        p.error(f"--fraction must be in (0, 1], got {args.fraction}")
    machine = machine_info()
    machine["gpu"] = _gpu_name()
    result = {"command": " ".join(["python", *sys.argv]), "machine": machine,
              "settings": {"window": WINDOW, "samples": SAMPLES, "padding": PADDING,
                           "patches": args.patches, "fraction": args.fraction,
                           "device": args.device, "incremental": args.incremental},
              "models": {}}
    for path in args.previous:
        earlier = json.loads(path.read_text(encoding="utf-8"))
        result["models"].update(earlier["models"])
        result.setdefault("from", []).append({"path": str(path),
                                              "command": earlier["command"]})
    if args.json is None:
        provider = (next(iter(result["models"].values()))["provider"] if result["models"]
                    else "none")
        tag = "cuda" if "CUDA" in str(provider) or provider == "cuda" else "cpu"
        args.json = ROOT / "bench" / "results" / f"paper_scale_{tag}.json"
    for name in models:
        result["models"][name] = measure(name, args)
        # a record of the networks done so far, if the run is stopped later
        atomic_write_text(args.json, json.dumps(result, indent=2, default=float) + "\n")
    result["figures"] = project(result["models"])
    text = table(result)
    print(text)
    atomic_write_text(args.json, json.dumps(result, indent=2, default=float) + "\n")
    atomic_write_text(args.json.with_suffix(".txt"), text + "\n")
    say(f"wrote {args.json} and {args.json.with_suffix('.txt')}")
    return 0


def _gpu_name():
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


if __name__ == "__main__":
    sys.exit(main())
