"""How far two valid float32 evaluations of the same network disagree: the floor under the
incremental engine's deviation from the naive one (issue 9's "maps equal to ≤ 1e-5").

For each network, one block of windows (k = 10, S = 10, conditional sampler, the bench's seed)
is explained three times and the per-window values (weight of evidence, the numbers the maps
average) are compared with the first:

- ``naive``: :class:`preddiff.classifier.OnnxClassifier`, full images (the reference);
- ``naive, ORT unoptimised``: the same graph and inputs with onnxruntime's graph optimisations
  off (batch norm not folded into the convolutions, other kernels) -- an equally valid float32
  evaluation;
- ``incremental``: :class:`preddiff.incremental.IncrementalClassifier`.

If the unoptimised naive run disagrees with the optimised one as much as the incremental engine
does, the incremental engine's deviation is float32 rounding, not an error::

    python bench/float32_floor.py                      # the four netzoo networks, ~3 minutes
    python bench/float32_floor.py --models resnet18 --stride 53

Writes ``bench/results/float32_floor.txt`` (``--out`` to change).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

from preddiff.commands.bench import machine_info
from preddiff.fileio import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results" / "float32_floor.txt"
MODELS = ("resnet18", "resnet50", "mobilenet_v2", "efficientnet_lite0")


class UnoptimisedClassifier:
    """Full images through onnxruntime with every graph optimisation turned off."""

    def __init__(self, model, output="prob"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(model.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = output

    def __call__(self, batch):
        batch = np.asarray(batch, np.float32)
        return {self.output: self.session.run([self.output], {self.input: batch})[0]}


def compare(name: str, stride: int, seed: int = 0) -> dict:
    """Per-window deviations of the three evaluations of netzoo network ``name``."""
    from preddiff import netzoo, prediction_difference
    from preddiff.classifier import OnnxClassifier
    from preddiff.incremental import IncrementalClassifier
    from preddiff.samplers import ConditionalGaussianSampler

    model = netzoo.build(name, seed=seed)
    pool = netzoo.example_pool(224)
    x = pool[0]
    sampler = ConditionalGaussianSampler.fit(pool[1:], 10, 2, num_patches=2000, rng=seed)
    engines = {
        "naive": (OnnxClassifier(model, outputs=["prob"], batch_size=10, device="cpu"), 10),
        "naive, ORT unoptimised": (UnoptimisedClassifier(model), 10),
        "incremental": (IncrementalClassifier(model, outputs=["prob"], device="cpu"), 1000),
    }
    values, seconds = {}, {}
    for label, (classifier, batch) in engines.items():
        tic = time.perf_counter()
        e = prediction_difference(x, classifier, sampler, window=10, stride=stride,
                                  num_samples=10, batch_size=batch, rng=seed, progress=False)
        seconds[label] = time.perf_counter() - tic
        values[label] = e.relevance.window_values["prob"]
    ref = values["naive"]
    scale = float(np.abs(ref).max())
    return {"windows": len(ref), "max_abs": scale, "seconds": seconds,
            "deviation": {k: float(np.abs(v - ref).max() / scale) for k, v in values.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--stride", type=int, default=53, help="stride of the block of windows")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    info = machine_info()
    lines = [
        "float32 floor: per-window weight of evidence, max |engine - naive| / max |naive| "
        f"(k=10, S=10, conditional sampler, stride {args.stride}, random weights, seed 0)",
        f"machine: {info['cpu']}, {info['cores']} cores; load average "
        f"{info['load_average_start']} at start; onnxruntime {info['onnxruntime']}, numpy "
        f"{info['numpy']}, commit {info['git_commit']}",
        "command: python bench/float32_floor.py " + " ".join(sys.argv[1:] if argv is None
                                                             else argv),
        "",
        f"{'model':20s} {'windows':>7s} {'max |WoE|':>10s} {'naive, ORT unoptimised':>23s} "
        f"{'incremental':>12s}",
    ]
    for name in args.models.split(","):
        r = compare(name, args.stride)
        d = r["deviation"]
        lines.append(f"{name:20s} {r['windows']:>7d} {r['max_abs']:>10.3e} "
                     f"{d['naive, ORT unoptimised']:>23.1e} {d['incremental']:>12.1e}")
        print(lines[-1], flush=True)
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
