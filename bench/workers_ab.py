"""The incremental engine one batch at a time against two batches side by side (issue 17).

``IncrementalClassifier(workers=1)`` runs each compiled graph call on all cores, one call after
the other; ``workers=2`` (the default on a 2-core CPU) runs two calls at once from two host
threads, each on half the cores (one each on two cores), the costliest calls first. Both engines run
incremental PDA on ``preddiff bench``'s block of each network (k = 10, S = 10, conditional
sampler, maps of the top 3 classes) in turn in one process, the order alternating by round;
the table gives each round's window-samples/s and the median over rounds of the per-round
ratio, and checks that the two engines' maps are identical::

    python bench/workers_ab.py               # writes bench/results/workers_ab.{json,txt}
    python bench/workers_ab.py --models resnet50 --rounds 6 --out /tmp/w.txt
"""
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import bench_args  # noqa: E402
from preddiff.commands.bench import (  # noqa: E402
    BLOCK_STRIDE, INCREMENTAL_ENGINE_BATCH, KEPT_MAPS, _pda, _seconds, _settle, _warm_sampler,
    bench_inputs, machine_info,
)
from preddiff.incremental import IncrementalClassifier  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "workers_ab.txt"
MODELS = ("alexnet", "googlenet", "vgg16", "resnet18", "resnet50", "mobilenet_v2",
          "efficientnet_lite0")
ROUNDS = 4
WORKERS = (1, 2)


def _maps(explanation) -> np.ndarray:
    return np.stack([explanation.relevance_of("prob", unit)
                     for unit, _ in explanation.top_classes("prob", KEPT_MAPS)])


def measure(name: str, rounds: int = ROUNDS, stride=None, seed: int = 0) -> dict:
    """Both engines on the network's block: per-round rates, the median ratio, the maps'
    identity."""
    model, weights, x, sampler = bench_inputs(name, seed)
    stride = stride or BLOCK_STRIDE[name][0]
    engines = {w: IncrementalClassifier(model, outputs=["prob"], device="cpu", workers=w)
               for w in WORKERS}
    # warm-up: sessions, plans and the block's call shapes; the maps of both engines
    maps = {w: _maps(_pda(x, e, sampler, stride, INCREMENTAL_ENGINE_BATCH, seed)[0])
            for w, e in engines.items()}
    _warm_sampler(sampler, x, stride, seed)
    rates = {w: [] for w in WORKERS}
    for r in range(rounds):
        for w in (WORKERS if r % 2 == 0 else WORKERS[::-1]):
            _settle()
            e, n = _pda(x, engines[w], sampler, stride, INCREMENTAL_ENGINE_BATCH, seed)
            rates[w].append(n / _seconds(e))
    ratios = [b / a for a, b in zip(rates[1], rates[2])]
    plan = engines[1].report(x.shape, (10, 10)) if engines[1].incremental else None
    return {"weights": weights, "stride": stride, "window_samples": n,
            "cut": plan["cut"] if plan else None,
            "rates": {str(w): v for w, v in rates.items()}, "ratios": ratios,
            "median_ratio": statistics.median(ratios),
            "maps_identical": bool(np.array_equal(maps[1], maps[2]))}


def main(argv=None) -> int:
    args, names, command = bench_args.parse(argv, __doc__, "workers_ab.py", MODELS, ROUNDS,
                                            RESULTS)
    tic = time.perf_counter()
    machine = machine_info()
    results = {"command": command, "machine": machine, "rounds": args.rounds, "models": {}}
    lines = ["Incremental PDA, one compiled graph call at a time (workers=1) against two side "
             "by side (workers=2), preddiff bench's blocks, k=10, S=10, conditional sampler",
             f"machine: {machine.get('cpu')}, {machine.get('cores')} cores; onnxruntime "
             f"{machine.get('onnxruntime')}; commit {machine.get('git_commit')}",
             f"command: {command}", "",
             f"{'model':20s} {'workers=1 w-s/s by round':>32s} {'workers=2 w-s/s by round':>32s}"
             f" {'2 / 1 (median)':>15s} {'maps':>10s}"]
    for name in names:
        print(f"{name}: measuring", file=sys.stderr, flush=True)
        r = results["models"][name] = measure(name, args.rounds)
        one, two = (" ".join(f"{v:.1f}" for v in r["rates"][str(w)]) for w in WORKERS)
        lines.append(f"{name:20s} {one:>32s} {two:>32s} {r['median_ratio']:>15.3f} "
                     f"{'identical' if r['maps_identical'] else 'DIFFER':>10s}")
    results["seconds"] = time.perf_counter() - tic
    lines += ["", "w-s/s: window-samples/s of one incremental PDA run of the block (sampler, "
              "engine and the top-3 maps), the two engines in turn, order alternating by "
              "round; 2 / 1: median over rounds of each round's ratio."]
    text = "\n".join(lines) + "\n"
    bench_args.write(args.out, results, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
