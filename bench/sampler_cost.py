"""What the conditional sampler costs per image, against the plain classifier (LeNet).

LeNet's incremental plan has no incremental step (k = 10 on 28²), so its row of the benchmark
(:mod:`preddiff.commands.bench`) measures the naive engine, and what separates it from the
plain classifier's speed is the work around the classifier. This script times that work on
the benchmark's block (all 361 windows, S = 10, the benchmark's conditional sampler, the
engine's batches of 100 windows), each piece alone, best of ``--repeats``:

- seeding: creating the 361 windows' random streams (:class:`preddiff.streams.WindowStreams`);
- normals: the streams' standard normals, float64, as the sampler draws them;
- sampling: one :meth:`~preddiff.samplers.ConditionalGaussianSampler.sample` call per batch,
  all of it (seeding, normals, the conditional means and the Cholesky product, the float32
  cast);
- composing: writing the 3,610 samples into copies of the image in a reused buffer
  (:func:`preddiff.compose.compose_batch`, 1,000 images per call);
- classifier: the plain network on the 3,610 images, already composed, at the best of the
  benchmark's batch sizes.

::

    python bench/sampler_cost.py             # writes bench/results/sampler_cost.txt

The shares are of the sum (classifier plus the work around it, the naive engine's time
without its reductions); the pieces overlap (sampling contains seeding and normals).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

from preddiff.commands.bench import PLAIN_BATCHES, SAMPLES, WINDOW, bench_inputs, machine_info
from preddiff.fileio import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results" / "sampler_cost.txt"
BATCH_WINDOWS = 100


def _best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return min(times)


def measure(repeats: int = 7, seed: int = 0) -> dict:
    """Seconds per image of each piece (see the module docstring)."""
    from preddiff.classifier import OnnxClassifier
    from preddiff.compose import compose_batch
    from preddiff.streams import WindowStreams
    from preddiff.windows import window_positions

    model, _, x, sampler = bench_inputs("lenet", seed)
    x = np.ascontiguousarray(x, np.float32)
    positions = np.asarray(window_positions(x.shape[1:], (WINDOW, WINDOW), 1, edges="cover"))
    n = len(positions)
    for start in range(0, n, BATCH_WINDOWS):  # the conditionals of every offset, once
        sampler.sample(x, positions[start:start + BATCH_WINDOWS], WINDOW, SAMPLES,
                       WindowStreams(seed, start, start + BATCH_WINDOWS))
    d1 = sampler.channels * WINDOW * WINDOW

    def seeding():
        streams = WindowStreams(seed, 0, n)
        for i in range(n):
            streams[i]

    noise = np.empty((n, SAMPLES, 1, d1))
    streams = WindowStreams(seed, 0, n)
    seeding_s = _best(seeding, repeats)

    def normals():
        for i in range(n):
            streams[i].standard_normal(out=noise[i])

    def sampling():
        s = WindowStreams(seed, 0, n)
        return [sampler.sample(x, positions[a:a + BATCH_WINDOWS], WINDOW, SAMPLES,
                               s[a:a + BATCH_WINDOWS]) for a in range(0, n, BATCH_WINDOWS)]

    patches = np.concatenate(sampling()).reshape(n * SAMPLES, *x.shape[:1], WINDOW, WINDOW)
    top_left = np.repeat(positions, SAMPLES, axis=0)
    per_call = BATCH_WINDOWS * SAMPLES
    buffer = np.empty((per_call,) + x.shape, np.float32)

    def composing():
        for a in range(0, len(patches), per_call):
            compose_batch(x, top_left[a:a + per_call], patches[a:a + per_call], out=buffer)

    images = np.repeat(x[None], len(patches), axis=0)
    rates = {}
    for b in PLAIN_BATCHES["lenet"]:
        clf = OnnxClassifier(model, outputs=["prob"], batch_size=b)
        rates[b] = _best(lambda: clf(images), repeats)
    best = min(rates, key=rates.get)
    return {"windows": n, "samples": SAMPLES, "seeding": seeding_s,
            "normals": _best(normals, repeats), "sampling": _best(sampling, repeats),
            "composing": _best(composing, repeats), "classifier": rates[best],
            "classifier_batch": best}


def format_result(r: dict) -> str:
    around = r["sampling"] + r["composing"]
    total = around + r["classifier"]
    lines = [f"{'piece':12s} {'ms/image':>9s} {'share':>7s}"]
    for key in ("seeding", "normals", "sampling", "composing", "classifier"):
        lines.append(f"{key:12s} {1e3 * r[key]:9.2f} {100 * r[key] / total:6.1f}%")
    lines.append(f"classifier batch {r['classifier_batch']}; plain classifier ÷ (classifier + "
                 f"sampling + composing) = {r['classifier'] / total:.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    m = machine_info()
    r = measure(args.repeats)
    text = "\n".join([
        f"LeNet, {r['windows']} windows x {r['samples']} samples per image (the benchmark's "
        f"block), best of {args.repeats}",
        f"machine: {m['cpu']}, {m['cores']} cores, load average {m['load_average_start']}; "
        f"onnxruntime {m['onnxruntime']}, numpy {m['numpy']}, commit {m['git_commit']}",
        f"command: python bench/sampler_cost.py {' '.join(argv or sys.argv[1:])}".rstrip(),
        "", format_result(r)])
    print(text)
    atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
