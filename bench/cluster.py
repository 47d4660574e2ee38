"""Benchmark: explanations on a local Dask cluster (``--workers 2``) vs one process.

Measures on this machine, interleaved (one process, then the cluster, per round; medians):

1. LeNet on the bundled digits (the CLI's defaults: conditional sampler, k = 4, l = 2,
   S = 10, stride 1, exact incremental classifier, batch 1000): N digits in one process
   (onnxruntime on every core) vs :func:`preddiff.cluster.explain_all` on a local cluster of
   2 worker processes (one core each);
2. a random-weight AlexNet at full width (the zoo architecture, 227×227) at a coarse stride
   (k = 10, stride 16, S = 10, batch 64, incremental), two example images;
3. the scheduling overhead per block: the round trip of an empty Dask task (one at a time, and
   200 at once), beside the computation per block (worker-seconds);
4. the machine's parallel capacity during the run: one sequential job on one worker, then
   the same job on both workers at once (the machine is shared with other jobs).

Every cluster result is checked bit for bit against the single-process one. From the measured
AlexNet speed-up and the single-process throughputs of ``bench/results/pda_throughput.json``
it projects how many such workers Figures 1–6 at paper scale need to finish in one hour.

    python bench/cluster.py [--rounds 2] [--digits 8] [--out bench/results/cluster.txt]

The machine is shared with other jobs: the load average at start and end is printed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORKERS = 2


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _same(a, b) -> bool:
    return all(np.array_equal(a.relevance[k], b.relevance[k]) for k in a.relevance)


def _single(analyses):
    """Sequential single-process runs (the explain loop): (seconds, explanations)."""
    from preddiff import prediction_difference
    from preddiff.cluster import classifier_for

    started = time.perf_counter()
    out = []
    for a in analyses:
        out.append(prediction_difference(a.x, a.classifier or classifier_for(a.recipe),
                                         a.sampler, progress=False, **a.kwargs))
    return time.perf_counter() - started, out


def _cluster(client, analyses, block_windows=None, blocks=None):
    from preddiff.cluster import explain_all

    started = time.perf_counter()
    count = (lambda *a: blocks.append(a)) if blocks is not None else None
    out = explain_all(client, analyses, progress=False, block_windows=block_windows,
                      on_block=count)
    return time.perf_counter() - started, out


def digits_analyses(n: int):
    from preddiff import zoo
    from preddiff.cluster import Analysis, ClassifierRecipe
    from preddiff.digits import load_digits
    from preddiff.samplers import ConditionalGaussianSampler

    images, _ = load_digits()
    recipe = ClassifierRecipe.for_file(zoo.ensure_onnx("lenet"), ["prob"], None,
                                       incremental=True)
    classifier = recipe.build()  # the client's (all cores), as `preddiff explain` has it
    out = []
    for i in range(n):
        pool = np.delete(images, i, axis=0)
        sampler = ConditionalGaussianSampler.fit(pool, 4, 2, num_patches=25000, clip=True,
                                                 rng=0)
        out.append(Analysis(f"digits:{i}", images[i], recipe, sampler,
                            dict(window=4, stride=1, num_samples=10, blobs=("prob",),
                                 probability_blobs=("prob",), batch_size=1000, rng=0),
                            classifier=classifier))
    return out


def alexnet_analyses(folder: Path):
    from preddiff import zoo
    from preddiff.caffe.writer import random_onnx
    from preddiff.cluster import Analysis, ClassifierRecipe
    from preddiff.fileio import atomic_write_bytes
    from preddiff.images import default_pool, example_images
    from preddiff.preprocess import Preprocessor, load_image
    from preddiff.samplers import ConditionalGaussianSampler

    path = folder / "alexnet-random-f1-s0.onnx"
    atomic_write_bytes(path, random_onnx("alexnet", factor=1, seed=0).SerializeToString())
    recipe = ClassifierRecipe.for_file(path, ["prob"], 64, incremental=True)
    classifier = recipe.build()
    pre = Preprocessor(zoo.manifest("alexnet"))
    images = example_images()
    out = []
    for name in list(images)[:2]:
        source = images[name]
        x = pre(source if isinstance(source, np.ndarray) else load_image(source))
        sampler = ConditionalGaussianSampler.fit(default_pool("alexnet", exclude=name), 10, 2,
                                                 num_patches=5000, clip=True, rng=1)
        out.append(Analysis(name, x, recipe, sampler,
                            dict(window=10, stride=16, num_samples=10, blobs=("prob",),
                                 probability_blobs=("prob",), batch_size=64, rng=0),
                            classifier=classifier))
    return out


def _window_samples(analyses) -> int:
    from preddiff.windows import window_positions

    return sum(len(window_positions(a.x.shape[1:], (a.kwargs["window"],) * 2,
                                    a.kwargs["stride"])) * a.kwargs["num_samples"]
               for a in analyses)


def compare(name, client, analyses, rounds):
    """Interleaved rounds: one process, then the cluster. Returns a result dict."""
    singles, clusters, identical, blocks, worker_s = [], [], True, [], []
    for _ in range(rounds):
        t1, ref = _single(analyses)
        blocks.clear()
        t2, got = _cluster(client, analyses, blocks=blocks)
        singles.append(t1)
        clusters.append(t2)
        worker_s.append(sum(e.timings["classifier"] + e.timings["sampler"] for e in got))
        identical &= all(_same(a, b) for a, b in zip(ref, got))
    t1, t2 = statistics.median(singles), statistics.median(clusters)
    ws = _window_samples(analyses)
    return {"name": name, "images": len(analyses), "window_samples": ws,
            "single_s": singles, "cluster_s": clusters, "single_median_s": t1,
            "cluster_median_s": t2, "speedup": t1 / t2, "efficiency": t1 / t2 / WORKERS,
            "single_ws_per_s": ws / t1, "cluster_ws_per_s": ws / t2,
            "blocks": len(blocks), "worker_s_per_block": statistics.median(worker_s) / len(blocks),
            "bit_identical": bool(identical)}


def block_overhead(client):
    """What a block costs Dask besides its computation: the round trip of an empty task
    (submitted and waited for one at a time: the latency a block pays), and the time per task
    of 200 empty tasks submitted at once (the scheduler's throughput)."""
    from preddiff.cluster import _hold

    latencies = []
    for i in range(50):
        tic = time.perf_counter()
        client.submit(_hold, i, pure=False).result()
        latencies.append(time.perf_counter() - tic)
    started = time.perf_counter()
    client.gather([client.submit(_hold, i, pure=False) for i in range(200)])
    return {"empty_task_latency_s": statistics.median(latencies),
            "empty_task_throughput_s": (time.perf_counter() - started) / 200}


def _sequential_in_worker(analyses) -> float:
    """Seconds of a plain single-process run of ``analyses`` (inside a worker)."""
    return _single(analyses)[0]


def capacity(client, analyses):
    """Whether the machine had two free cores: the same sequential job on one worker, then on
    both workers at once (2 × one ÷ both = 2 with two free cores, 1 with one)."""
    for a in analyses:
        a.classifier = None  # built from the recipe inside the worker
    one = client.submit(_sequential_in_worker, analyses, pure=False).result()
    both = client.gather([client.submit(_sequential_in_worker, analyses, pure=False)
                          for _ in range(WORKERS)])
    return {"one_worker_s": one, "both_workers_s": both,
            "parallel_capacity": WORKERS * one / max(both)}


# Figures 1–6 at paper scale (reproduce/figN.py CONFIG["paper"]): (network, k, explanations)
# on 227×227 (AlexNet) or 224×224 (GoogLeNet, VGG16) inputs, stride 1, S = 20.
PAPER_FIGURES = [
    ("fig1", "alexnet", 10, 8), ("fig1", "googlenet", 10, 8), ("fig1", "vgg16", 10, 8),
    ("fig2", "alexnet", 10, 4), ("fig3", "alexnet", 1, 1), ("fig3", "alexnet", 4, 1),
    ("fig3", "alexnet", 7, 1), ("fig3", "alexnet", 10, 1), ("fig4", "alexnet", 1, 4),
    ("fig5+6", "googlenet", 10, 7),
]
SIZES = {"alexnet": 227, "googlenet": 224, "vgg16": 224}


def projection(alexnet: dict) -> dict:
    """Workers for Figures 1–6 in one hour, from measured throughputs (not run end to end)."""
    data = json.loads((ROOT / "bench/results/pda_throughput.json").read_text())["models"]
    per_worker_factor = alexnet["speedup"] / WORKERS  # one worker (1 core) vs one process
    rows, total_worker_s = [], 0.0
    for figure, net, k, count in PAPER_FIGURES:
        windows = (SIZES[net] - k + 1) ** 2
        single = data[net]["incremental"]  # window-samples/s, one 2-core process, k = 10
        worker = single * per_worker_factor
        seconds = count * windows * 20 / worker
        total_worker_s += seconds
        rows.append({"figure": figure, "network": net, "k": k, "explanations": count,
                     "windows": windows, "single_process_ws_per_s": single,
                     "worker_ws_per_s": worker, "worker_hours": seconds / 3600})
    return {"rows": rows, "worker_hours": total_worker_s / 3600,
            "workers_for_one_hour": math.ceil(total_worker_s / 3600),
            "per_worker_factor": per_worker_factor}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--digits", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/cluster.txt")
    args = parser.parse_args(argv)

    import onnxruntime

    import preddiff
    from preddiff.cluster import connect
    from preddiff.fileio import atomic_write_text

    load_start = _load()
    started = time.perf_counter()
    digits = digits_analyses(args.digits)
    with tempfile.TemporaryDirectory() as tmp:
        alexnet = alexnet_analyses(Path(tmp))
        tic = time.perf_counter()
        with connect(workers=WORKERS) as client:
            cluster_start = time.perf_counter() - tic
            results = [compare(f"lenet, {args.digits} digits", client, digits, args.rounds),
                       compare("alexnet (random weights), 2 images", client, alexnet,
                               args.rounds)]
            overhead = block_overhead(client)
            cap = capacity(client, digits[:2])
    proj = projection(results[1])
    record = {"command": "python bench/cluster.py " + " ".join(argv or sys.argv[1:]),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} "
                         f"cores", "load_start": load_start, "load_end": _load(),
              "versions": {"preddiff": preddiff.__version__, "numpy": np.__version__,
                           "onnxruntime": onnxruntime.__version__,
                           "distributed": __import__("distributed").__version__},
              "workers": WORKERS, "cluster_start_s": cluster_start, "results": results,
              "block_overhead": overhead, "capacity": cap, "projection": proj,
              "seconds": time.perf_counter() - started}
    text = report(record)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, text)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(record, indent=1) + "\n")
    return 0


def report(r: dict) -> str:
    lines = [f"Dask local cluster ({r['workers']} worker processes, 1 onnxruntime thread each) "
             "vs one process (onnxruntime on every core); medians of interleaved rounds",
             f"machine: {r['machine']}, shared with other jobs: load average {r['load_start']} "
             f"at start, {r['load_end']} at end; versions {r['versions']}",
             f"command: {r['command']}  ({r['seconds']:.0f} s in all; cluster start "
             f"{r['cluster_start_s']:.1f} s, not in the times below)", "",
             f"{'workload':38} {'window-samples':>14} {'1 process s':>12} "
             f"{'cluster s':>10} {'speed-up':>9} {'efficiency':>10} {'bit-identical':>13}"]
    for x in r["results"]:
        lines.append(f"{x['name']:38} {x['window_samples']:>14} {x['single_median_s']:>12.2f} "
                     f"{x['cluster_median_s']:>10.2f} {x['speedup']:>8.2f}x "
                     f"{100 * x['efficiency']:>9.0f}% {str(x['bit_identical']):>13}")
        lines.append(f"{'':38} rounds: 1 process {[round(v, 2) for v in x['single_s']]}, "
                     f"cluster {[round(v, 2) for v in x['cluster_s']]}")
    o = r["block_overhead"]
    lines += ["", f"scheduling overhead per block: {1000 * o['empty_task_latency_s']:.1f} ms "
              "(median round trip of an empty Dask task, one at a time), "
              f"{1000 * o['empty_task_throughput_s']:.1f} ms per task for 200 at once; "
              "computation per block (worker-seconds): " + ", ".join(
                  f"{x['name'].split(',')[0]} {x['worker_s_per_block']:.2f} s over "
                  f"{x['blocks']} blocks" for x in r["results"]), ""]
    c = r["capacity"]
    lines += [f"parallel capacity of the machine during the run: the same sequential job (2 "
              f"digits, one process) took {c['one_worker_s']:.2f} s on one worker and "
              f"{[round(v, 2) for v in c['both_workers_s']]} s on both workers at once: "
              f"{c['parallel_capacity']:.2f} of {r['workers']} cores' worth "
              "(2 = two free cores; 1 = the other jobs left one)", ""]
    p = r["projection"]
    lines.append("Projection (not run): Figures 1-6 at paper scale (stride 1, S = 20), from the "
                 "single-process incremental throughputs of bench/results/pda_throughput.json "
                 f"times the measured AlexNet per-worker factor {p['per_worker_factor']:.2f} "
                 "(speed-up / 2: one 1-core worker vs one 2-core process)")
    lines.append(f"{'figure':8} {'network':10} {'k':>3} {'explanations':>12} {'windows':>8} "
                 f"{'worker w-s/s':>12} {'worker-hours':>12}")
    for row in p["rows"]:
        lines.append(f"{row['figure']:8} {row['network']:10} {row['k']:>3} "
                     f"{row['explanations']:>12} {row['windows']:>8} "
                     f"{row['worker_ws_per_s']:>12.1f} {row['worker_hours']:>12.1f}")
    lines.append(f"total {p['worker_hours']:.0f} worker-hours -> about "
                 f"{p['workers_for_one_hour']} such workers (one core of this machine each) to "
                 "finish in one hour, if the speed-up stays linear")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
