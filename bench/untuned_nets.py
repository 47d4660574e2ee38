"""Incremental PDA on two networks the engine was not tuned on (issue 17).

A VGG-like network at 120×120 and a ResNet-like network with projection shortcuts at
160×160 (``tests/untuned_nets.py``, random weights): plain images/s at the best of batch 1, 8
and 32, then naive and incremental PDA on a block of windows (k = 10, S = 10, conditional
sampler, maps of the top 3 classes), as ``preddiff bench`` measures its networks; the
incremental ratio against the planned reduction (mean over window positions)::

    python bench/untuned_nets.py            # writes bench/results/untuned_nets.{json,txt}
"""
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from untuned_nets import NETS  # noqa: E402

from preddiff.commands.bench import (  # noqa: E402
    INCREMENTAL_ENGINE_BATCH, PADDING, SAMPLES, WINDOW, _pda, _seconds, _settle, _sweep,
    _warm_sampler, machine_info,
)
from preddiff.fileio import atomic_write_text  # noqa: E402
from preddiff.incremental import IncrementalClassifier  # noqa: E402
from preddiff.netzoo import example_pool  # noqa: E402
from preddiff.samplers import ConditionalGaussianSampler  # noqa: E402

STRIDE = 11
ROUNDS = 2


def measure(name: str, seed: int = 0) -> dict:
    build, size = NETS[name]
    model = build(seed)
    pool = example_pool(size)
    x = pool[0]
    sampler = ConditionalGaussianSampler.fit(pool[1:], WINDOW, PADDING, num_patches=2000,
                                             rng=seed)
    sweep, plain, _ = _sweep(model, x, (1, 8, 32), "cpu", None, 2.0, False)
    best = max(sweep, key=sweep.get)
    naive = plain[best]
    incremental = IncrementalClassifier(model, outputs=["prob"], device="cpu")
    report = incremental.report(x.shape, (WINDOW, WINDOW))
    planned = report["macs_full"] / max(report["macs_planned"], 1.0)
    # warm-up as preddiff bench's: the naive classifier ran its call size in the sweep; the
    # incremental engine runs the block once, untimed (its calls have the block's shapes)
    warm = max(x.shape[1:])
    _pda(x, naive, sampler, warm, 256, seed)
    _pda(x, incremental, sampler, STRIDE, INCREMENTAL_ENGINE_BATCH, seed)
    _warm_sampler(sampler, x, STRIDE, seed)
    rounds = []
    for _ in range(ROUNDS):
        e_naive, n = _pda(x, naive, sampler, STRIDE, 256, seed)
        incremental.clear_cache()
        _settle()  # the naive session's threads stop spinning first
        e_inc, _ = _pda(x, incremental, sampler, STRIDE, INCREMENTAL_ENGINE_BATCH, seed)
        want, got = e_naive.relevance["prob"], e_inc.relevance["prob"]
        rounds.append({"naive": n / _seconds(e_naive), "incremental": n / _seconds(e_inc),
                       "max_relative_difference":
                           float(np.abs(got - want).max() / np.abs(want).max())})
    row = {k: float(np.median([r[k] for r in rounds])) for k in rounds[0]}
    row.update({"input": list(x.shape), "plain": sweep[best], "plain_batch": best,
                "plain_sweep": {str(b): v for b, v in sweep.items()},
                "window_samples": n, "planned_reduction": planned, "cut": report["cut"],
                "steps": len(report["steps"]), "rounds": rounds})
    row["ratio_naive"] = row["naive"] / row["plain"]
    row["ratio_incremental"] = row["incremental"] / row["plain"]
    row["measured_over_planned"] = row["ratio_incremental"] / planned
    return row


def main() -> int:
    tic = time.perf_counter()
    results = {"command": "python bench/untuned_nets.py", "machine": machine_info(),
               "settings": {"window": WINDOW, "samples": SAMPLES, "stride": STRIDE,
                            "rounds": ROUNDS}, "models": {}}
    lines = ["Incremental PDA on networks the engine was not tuned on (k=10, S=10, "
             f"conditional sampler, stride {STRIDE}, medians of {ROUNDS} rounds)",
             f"machine: {results['machine'].get('cpu')}, {results['machine'].get('cores')} "
             f"cores; commit {results['machine'].get('git_commit')}",
             f"{'model':18s} {'plain img/s (b)':>16s} {'naive w-s/s':>12s} {'incr. w-s/s':>12s}"
             f" {'ratio':>6s} {'planned':>8s} {'meas/plan':>10s} {'max diff':>9s}"]
    for name in NETS:
        print(f"{name}: measuring", file=sys.stderr, flush=True)
        r = results["models"][name] = measure(name)
        lines.append(f"{name:18s} {r['plain']:>10.1f} ({r['plain_batch']:>3d}) "
                     f"{r['naive']:>12.1f} {r['incremental']:>12.1f} "
                     f"{r['ratio_incremental']:>6.2f} {r['planned_reduction']:>8.2f} "
                     f"{r['measured_over_planned']:>10.2f} {r['max_relative_difference']:>9.1e}")
    results["seconds"] = time.perf_counter() - tic
    out = ROOT / "bench" / "results" / "untuned_nets.json"
    atomic_write_text(out, json.dumps(results, indent=1) + "\n")
    text = "\n".join(lines) + "\n"
    atomic_write_text(out.with_suffix(".txt"), text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
