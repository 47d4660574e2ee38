"""Outputs of two versions of the incremental engine on the Caffe nets, compared bit for bit.

Runs ``IncrementalClassifier.evaluate_windows`` on the benchmark's quick block of each Caffe
network (LeNet, AlexNet, GoogLeNet, VGG16 with random weights, ``preddiff bench``'s inputs),
two random samples per window, and saves the probabilities; with ``--naive`` also the naive
engine's. Run it once per engine version and compare the two files::

    git worktree add /tmp/perlayer 1719b75          # the per-layer engine (before issue 17)
    PYTHONPATH=/tmp/perlayer/src python bench/compare_engines.py save /tmp/old.npz
    python bench/compare_engines.py save /tmp/new.npz --naive
    python bench/compare_engines.py compare /tmp/old.npz /tmp/new.npz

The comparison is written to ``bench/results/engine_identity.txt``.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

NETS = ("lenet", "alexnet", "googlenet", "vgg16")
RESULT = Path(__file__).resolve().parent / "results" / "engine_identity.txt"


def save(path: str, naive: bool) -> None:
    from preddiff.classifier import OnnxClassifier
    from preddiff.commands.bench import BLOCK_STRIDE, bench_inputs
    from preddiff.incremental import IncrementalClassifier
    from preddiff.windows import window_positions

    arrays = {}
    for name in NETS:
        model, _, x, _ = bench_inputs(name, 0)
        corners = np.asarray(window_positions(x.shape[1:], 10, BLOCK_STRIDE[name][1],
                                              edges="cover"))
        top_left = np.repeat(corners, 2, axis=0)
        patches = np.random.default_rng(1).standard_normal(
            (len(top_left), x.shape[0], 10, 10)).astype(np.float32)
        engine = IncrementalClassifier(model, outputs=["prob"], device="cpu", batch_size=64)
        arrays[name] = engine.evaluate_windows(x, top_left, patches)["prob"]
        if naive:
            arrays[name + "_naive"] = OnnxClassifier(model, outputs=["prob"], batch_size=16
                                                     ).evaluate_windows(x, top_left, patches)["prob"]
        print(f"{name}: {len(top_left)} windows", flush=True)
    np.savez(path, **arrays)


def compare(old: str, new: str) -> str:
    a, b = np.load(old), np.load(new)
    lines = [f"command: python bench/compare_engines.py compare {old} {new} (old: the per-layer engine of commit 1719b75; see the docstring)",
             f"{'net':10s} {'outputs':>12s} {'new == old':>11s} {'max |new-old|':>14s} "
             f"{'max |new-naive|':>16s}"]
    for name in NETS:
        same = np.array_equal(a[name], b[name])
        naive = (f"{np.abs(b[name] - b[name + '_naive']).max():.1e}"
                 if name + "_naive" in b.files else "-")
        lines.append(f"{name:10s} {str(a[name].shape):>12s} {str(same):>11s} "
                     f"{np.abs(a[name] - b[name]).max():14.1e} {naive:>16s}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("save")
    p.add_argument("path")
    p.add_argument("--naive", action="store_true")
    p = sub.add_parser("compare")
    p.add_argument("old")
    p.add_argument("new")
    args = parser.parse_args()
    if args.what == "save":
        save(args.path, args.naive)
    else:
        text = compare(args.old, args.new)
        print(text)
        RESULT.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
