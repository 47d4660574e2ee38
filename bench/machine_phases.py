"""Does the machine's speed move, and which work does it move? A diagnostic for noisy VMs.

On the ResNet-like network of ``tests/untuned_nets.py`` (160², random weights) it repeats, in
turn: the plain network's images/s at batch 32 for 1 s, one incremental PDA run over the
benchmark block of ``bench/untuned_nets.py`` (k = 10, S = 10, stride 11), and a NumPy
256×256 float32 matrix product timed for 0.3 s. Each row is one turn; at the end, the
correlation of the incremental rate and of the plain rate with the matrix-product rate::

    python bench/machine_phases.py              # 25 turns, ~2 minutes
    python bench/machine_phases.py --turns 10 --out /tmp/phases.txt

If the incremental engine's rate drops with the matrix product's while the plain network's
keeps, a benchmark's plain figure taken a few seconds away from an engine run can miss the
slow stretch: ``preddiff bench`` therefore measures the plain network just before and just
after each engine run.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.append(str(ROOT / "bench"))

import bench_args  # noqa: E402
from untuned_nets import NETS  # noqa: E402

from preddiff.classifier import OnnxClassifier  # noqa: E402
from preddiff.commands.bench import (  # noqa: E402
    INCREMENTAL_ENGINE_BATCH, PADDING, WINDOW, _pda, _plain, _seconds, _settle, _warm_sampler,
    machine_info,
)
from preddiff.fileio import atomic_write_text  # noqa: E402
from preddiff.incremental import IncrementalClassifier  # noqa: E402
from preddiff.netzoo import example_pool  # noqa: E402
from preddiff.samplers import ConditionalGaussianSampler  # noqa: E402

NET, STRIDE, PLAIN_BATCH = "resnet_like_160", 11, 32
RESULTS = ROOT / "bench" / "results" / "machine_phases.txt"


def matmul_rate(seconds: float, a: np.ndarray) -> float:
    """256×256 float32 matrix products per second, timed for ``seconds``."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ a
        done += 1
    return done / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--turns", type=int, default=25)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.turns < 3:
        p.error(f"--turns {args.turns}: at least 3 (a correlation needs them)")
    build, size = NETS[NET]
    model = build(0)
    pool = example_pool(size)
    x = pool[0]
    sampler = ConditionalGaussianSampler.fit(pool[1:], WINDOW, PADDING, num_patches=2000,
                                             rng=0)
    plain = OnnxClassifier(model, outputs=["prob"], batch_size=PLAIN_BATCH, device="cpu")
    incremental = IncrementalClassifier(model, outputs=["prob"], device="cpu")
    _pda(x, incremental, sampler, STRIDE, INCREMENTAL_ENGINE_BATCH, 0)  # warm-up
    _warm_sampler(sampler, x, STRIDE, 0)
    a = np.random.default_rng(0).random((256, 256), dtype=np.float32)
    rows = []
    for turn in range(args.turns):
        rate_plain = _plain(plain, x, 1.0)
        incremental.clear_cache()
        _settle()
        e, n = _pda(x, incremental, sampler, STRIDE, INCREMENTAL_ENGINE_BATCH, 0)
        _settle()
        rows.append((rate_plain, n / _seconds(e), matmul_rate(0.3, a)))
        print(f"turn {turn + 1}/{args.turns}", file=sys.stderr, flush=True)
    plains, incs, mats = (np.array(c) for c in zip(*rows))
    m = machine_info()
    lines = [f"Machine phases: {NET} plain (batch {PLAIN_BATCH}, 1 s), incremental PDA (block of "
             f"stride {STRIDE}), 256x256 float32 matmul (0.3 s), in turn",
             f"machine: {m.get('cpu')}, {m.get('cores')} cores; commit {m.get('git_commit')}",
             f"command: {bench_args.command('machine_phases.py', argv)}",
             f"{'turn':>4s} {'plain img/s':>12s} {'incr. w-s/s':>12s} {'ratio':>6s} "
             f"{'matmul/s':>9s}"]
    lines += [f"{i + 1:>4d} {pl:>12.1f} {inc:>12.1f} {inc / pl:>6.2f} {mm:>9.0f}"
              for i, (pl, inc, mm) in enumerate(rows)]
    lines += ["", "correlation with the matmul rate: incremental "
              f"{np.corrcoef(incs, mats)[0, 1]:.2f}, plain {np.corrcoef(plains, mats)[0, 1]:.2f}; "
              f"max/min over turns: incremental {incs.max() / incs.min():.2f}, plain "
              f"{plains.max() / plains.min():.2f}, matmul {mats.max() / mats.min():.2f}"]
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.out, text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
