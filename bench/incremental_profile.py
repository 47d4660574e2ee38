"""Where the time of an incremental PDA run goes, per phase (issue 9, per-step overhead).

For each network, one PDA run (k = 10, S = 10, conditional sampler, a grid of windows) with
:class:`preddiff.incremental.IncrementalClassifier` is profiled with :mod:`cProfile`, and the
time is split into: onnxruntime calls of the incremental steps (how many, and the mean per
call), NumPy gathers and pastes of crops, the remainder graph run in full after the switch
point, the sampler, the once-per-image relevance assembly, and the rest (Python)::

    python bench/incremental_profile.py                       # efficientnet_lite0, resnet18
    python bench/incremental_profile.py --models mobilenet_v2 --stride 53

Writes the table to ``bench/results/incremental_profile.txt`` (``--out`` to change).
"""
import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

from preddiff.commands.bench import machine_info
from preddiff.fileio import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results" / "incremental_profile.txt"


def _own(stats, filename_part, function):
    """(calls, total seconds including callees) of one profiled function."""
    for (path, _, name), (cc, nc, tt, ct, _) in stats.stats.items():
        if filename_part in path and name == function:
            return nc, ct
    return 0, 0.0


def _called_from(stats, filename_part, function, caller):
    """(calls, seconds) of ``function`` when called from ``caller`` (same file)."""
    for (path, _, name), (_, _, _, _, callers) in stats.stats.items():
        if filename_part in path and name == function:
            for (cpath, _, cname), (cc, nc, tt, ct) in callers.items():
                if filename_part in cpath and cname == caller:
                    return nc, ct
    return 0, 0.0


def profile(name: str, stride: int, seed: int = 0) -> dict:
    """Phase timings of one incremental PDA run of netzoo network ``name``."""
    from preddiff import netzoo, prediction_difference
    from preddiff.incremental import IncrementalClassifier
    from preddiff.samplers import ConditionalGaussianSampler

    model = netzoo.build(name, seed=seed)
    pool = netzoo.example_pool()
    x = pool[0]
    sampler = ConditionalGaussianSampler.fit(pool[1:], 10, 2, num_patches=2000, rng=seed)
    clf = IncrementalClassifier(model, outputs=["prob"], device="cpu")
    run = dict(window=10, num_samples=10, blobs=("prob",), batch_size=1000, rng=seed,
               progress=False)
    prediction_difference(x, clf, sampler, stride=224, **run)  # sessions, plan
    clf.clear_cache()
    profiler = cProfile.Profile()
    tic = time.perf_counter()
    profiler.enable()
    e = prediction_difference(x, clf, sampler, stride=stride, **run)
    profiler.disable()
    total = time.perf_counter() - tic
    stats = pstats.Stats(profiler)
    plan = clf.report(x.shape, (10, 10))
    prefix_calls, prefix = _own(stats, "incremental.py", "_prefix")
    gathers = _own(stats, "incremental.py", "_gather")[1]
    pastes = _own(stats, "incremental.py", "_paste")[1]
    remainder = _own(stats, "incremental.py", "_flush")[1]
    relevance = _own(stats, "analysis.py", "_relevance")[1]
    session_calls, steps_session = _called_from(stats, "incremental.py", "run", "_prefix")
    return {
        "name": name, "stride": stride, "total": total, "steps": plan["cut"],
        "batches": prefix_calls,
        "prefix": prefix, "prefix_sessions": steps_session,
        "prefix_session_calls": session_calls, "gather": gathers, "paste": pastes,
        "remainder": remainder, "sampler": e.timings["sampler"], "relevance": relevance,
    }


def format_rows(rows) -> str:
    lines = [f"{'model':18s} {'total s':>8s} {'steps':>6s} {'batches':>8s} {'step calls':>10s} "
             f"{'step ORT s':>10s} {'ms/call':>8s} {'gather s':>9s} {'paste s':>8s} "
             f"{'other prefix s':>14s} {'remainder s':>11s} {'sampler s':>9s} "
             f"{'relevance s':>11s}"]
    for r in rows:
        other = r["prefix"] - r["prefix_sessions"] - r["gather"] - r["paste"]
        calls = max(r["prefix_session_calls"], 1)
        lines.append(
            f"{r['name']:18s} {r['total']:8.2f} {r['steps']:6d} {r['batches']:8d} "
            f"{r['prefix_session_calls']:10d} {r['prefix_sessions']:10.2f} "
            f"{1e3 * r['prefix_sessions'] / calls:8.2f} {r['gather']:9.2f} {r['paste']:8.2f} "
            f"{other:14.2f} {r['remainder']:11.2f} {r['sampler']:9.2f} {r['relevance']:11.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="efficientnet_lite0,resnet18")
    p.add_argument("--stride", type=int, default=23)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    m = machine_info()
    rows = [profile(name.strip(), args.stride) for name in args.models.split(",")]
    text = "\n".join([
        "Incremental PDA run profiled by phase (k=10, S=10, conditional sampler, one run each)",
        f"machine: {m['cpu']}, {m['cores']} cores, load average {m['load_average_start']} at "
        f"start (shared with other jobs); onnxruntime {m['onnxruntime']}, numpy {m['numpy']}, "
        f"commit {m['git_commit']}",
        f"command: python bench/incremental_profile.py {' '.join(argv or sys.argv[1:])}".rstrip(),
        f"window grid stride {args.stride}", "",
        format_rows(rows), "",
        "steps: incremental steps before the switch point; batches: prefix passes (one per "
        "batch of windows); step calls/ORT s: onnxruntime calls of the steps (all batches) "
        "and their time, ms/call their mean;",
        "gather/paste: NumPy crops of the clean maps and pastes of changed crops; other "
        "prefix: the rest of the prefix (Python, concatenations); remainder: the graph after "
        "the switch point, in full, on the pasted maps;",
        "relevance: once-per-image assembly of the maps (all classes, every pixel), which a "
        "full run amortises over ~46,000 windows."])
    print(text)
    atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
