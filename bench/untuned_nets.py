"""Incremental PDA on two networks the engine was not tuned on (issue 17).

A VGG-like network at 120×120 and a ResNet-like network with projection shortcuts at
160×160 (``tests/untuned_nets.py``, random weights): plain images/s at the best of batch 1, 8
and 32, then naive and incremental PDA on a block of windows (k = 10, S = 10, conditional
sampler, maps of the top 3 classes), as ``preddiff bench`` measures its networks; the
incremental ratio against the planned reduction (mean over window positions). Each engine's
run lies between two plain measurements and its ratio is taken against their mean; the
figures are medians over rounds::

    python bench/untuned_nets.py            # writes bench/results/untuned_nets.{json,txt}
    python bench/untuned_nets.py --models resnet_like_160 --rounds 3 --out /tmp/u.txt
"""
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # before bench/: this script is untuned_nets too
sys.path.append(str(ROOT / "bench"))

import bench_args  # noqa: E402
from untuned_nets import NETS  # noqa: E402

from preddiff.commands.bench import (  # noqa: E402
    INCREMENTAL_ENGINE_BATCH, PADDING, SAMPLES, WINDOW, _pda, _plain, _seconds, _settle, _sweep,
    _warm_sampler, machine_info, plain_around,
)
from preddiff.incremental import IncrementalClassifier  # noqa: E402
from preddiff.netzoo import example_pool  # noqa: E402
from preddiff.samplers import ConditionalGaussianSampler  # noqa: E402

STRIDE = 11
ROUNDS = 3
#: Seconds of each plain measurement (three a round).
PLAIN_SECONDS = 2.0
RESULTS = ROOT / "bench" / "results" / "untuned_nets.txt"


def measure(name: str, seed: int = 0, num_rounds: int = ROUNDS) -> dict:
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
    for _ in range(num_rounds):
        # each engine's run between two plain measurements, its ratio against their mean
        # (as preddiff bench: the machine's speed changes for seconds at a time)
        plains = [_plain(naive, x, PLAIN_SECONDS)]
        e_naive, n = _pda(x, naive, sampler, STRIDE, 256, seed)
        plains.append(_plain(naive, x, PLAIN_SECONDS))
        incremental.clear_cache()
        _settle()  # the naive session's threads stop spinning first
        e_inc, _ = _pda(x, incremental, sampler, STRIDE, INCREMENTAL_ENGINE_BATCH, seed)
        _settle()
        plains.append(_plain(naive, x, PLAIN_SECONDS))
        want, got = e_naive.relevance["prob"], e_inc.relevance["prob"]
        naive_rate, inc_rate = n / _seconds(e_naive), n / _seconds(e_inc)
        plain_naive, plain_incremental = plain_around(plains)
        rounds.append({"plain": float(np.mean(plains)), "plains": plains,
                       "naive": naive_rate, "incremental": inc_rate,
                       "ratio_naive": naive_rate / plain_naive,
                       "ratio_incremental": inc_rate / plain_incremental,
                       "max_relative_difference":
                           float(np.abs(got - want).max() / np.abs(want).max())})
    row = {k: float(np.median([r[k] for r in rounds])) for k in rounds[0] if k != "plains"}
    row.update({"input": list(x.shape), "plain_batch": best,
                "plain_sweep": {str(b): v for b, v in sweep.items()},
                "window_samples": n, "planned_reduction": planned, "cut": report["cut"],
                "steps": len(report["steps"]), "rounds": rounds})
    row["max_relative_difference"] = max(r["max_relative_difference"] for r in rounds)
    row["measured_over_planned"] = row["ratio_incremental"] / planned
    return row


def main(argv=None) -> int:
    args, names, command = bench_args.parse(argv, __doc__, "untuned_nets.py", tuple(NETS),
                                            ROUNDS, RESULTS)
    tic = time.perf_counter()
    results = {"command": command, "machine": machine_info(),
               "settings": {"window": WINDOW, "samples": SAMPLES, "stride": STRIDE,
                            "rounds": args.rounds}, "models": {}}
    lines = ["Incremental PDA on networks the engine was not tuned on (k=10, S=10, "
             f"conditional sampler, stride {STRIDE}, medians of {args.rounds} rounds)",
             f"machine: {results['machine'].get('cpu')}, {results['machine'].get('cores')} "
             f"cores; commit {results['machine'].get('git_commit')}",
             f"{'model':18s} {'plain img/s (b)':>16s} {'naive w-s/s':>12s} {'incr. w-s/s':>12s}"
             f" {'ratio':>6s} {'planned':>8s} {'meas/plan':>10s} {'max diff':>9s}"]
    for name in names:
        print(f"{name}: measuring", file=sys.stderr, flush=True)
        r = results["models"][name] = measure(name, num_rounds=args.rounds)
        lines.append(f"{name:18s} {r['plain']:>10.1f} ({r['plain_batch']:>3d}) "
                     f"{r['naive']:>12.1f} {r['incremental']:>12.1f} "
                     f"{r['ratio_incremental']:>6.2f} {r['planned_reduction']:>8.2f} "
                     f"{r['measured_over_planned']:>10.2f} {r['max_relative_difference']:>9.1e}")
    results["seconds"] = time.perf_counter() - tic
    text = "\n".join(lines) + "\n"
    bench_args.write(args.out, results, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
