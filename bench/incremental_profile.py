"""Where the compiled incremental graph's time goes, by operator (onnxruntime's profiler).

For each network of the benchmark (:mod:`preddiff.commands.bench`), the incremental plan for
k = 10 is compiled as :class:`preddiff.incremental.IncrementalClassifier` compiles it, and its
graph is run on the benchmark's block of windows (the engine's batches, S = 10 samples per
window, random patches) in a session with onnxruntime's profiler on. The kernel time is summed
per operator type (after onnxruntime's own graph rewrites: ``ReorderInput``/``ReorderOutput``
are its conversions to and from the blocked NCHWc layout of its CPU convolutions) and grouped:

- compute: convolutions, pooling, Gemm (what the multiply-add plan counts);
- layout: ``Transpose``, ``ReorderInput``, ``ReorderOutput``;
- regions: ``Gather``, ``Concat``, ``ScatterElements`` (the clean maps and crops read);
- element-wise: ``Add``, ``Relu``, ``Mul`` ... on float maps (residual merges, scales);
- index arithmetic: int64 nodes (each region's index combined from the row and column terms
  that the host computes: ``Add``, ``Less``, ``Where``).

Two measurements say what the shares cannot: the compute kernels' time per multiply-add
against the plain network's on whole images (are convolutions on crops slower?), and, timed
without the profiler, the share of the host's index arithmetic
(:mod:`preddiff.incremental_index`) in a pass over the block.

::

    python bench/incremental_profile.py                     # resnet50, resnet18
    python bench/incremental_profile.py --models mobilenet_v2,googlenet
    python bench/incremental_profile.py --models resnet_like_160 --out /tmp/untuned.txt

Writes the table to ``bench/results/incremental_profile.txt`` (``--out`` to change). The
profiler adds time per node; use the shares of the large operators, not the absolute rate.
"""
import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from preddiff.commands.bench import BLOCK_STRIDE, bench_inputs, machine_info
from preddiff.fileio import atomic_write_text
from preddiff.windows import window_positions

RESULTS = Path(__file__).resolve().parent / "results" / "incremental_profile.txt"
SAMPLES = 10
WINDOW = (10, 10)
#: Window stride of the untuned networks' block (as ``bench/untuned_nets.py``).
UNTUNED_STRIDE = 11
#: Images per call of the plain network whose convolutions the compiled graph's are compared to.
PLAIN_IMAGES = 8
GROUPS = {
    "compute": {"Conv", "FusedConv", "NchwcConv", "MaxPool", "NchwcMaxPool", "AveragePool",
                "NchwcAveragePool", "GlobalAveragePool", "NchwcGlobalAveragePool",
                "GlobalMaxPool", "Gemm", "FusedGemm", "MatMul", "LRN", "Softmax"},
    "layout": {"Transpose", "ReorderInput", "ReorderOutput"},
    "regions": {"Gather", "Concat", "ScatterElements", "Expand"},
    "element-wise": {"Add", "Relu", "Mul", "Sum", "Clip", "Sigmoid", "Div", "Sub", "Max",
                     "Min", "HardSwish", "HardSigmoid", "BatchNormalization"},
}


def _group(op: str, float_output: bool) -> str:
    for name, ops in GROUPS.items():
        # Add, Where ... of int64 index tensors are index arithmetic, not map work
        if op in ops and (name in ("compute", "layout") or float_output):
            return name
    return "index arithmetic" if not float_output else "other"


def _untuned() -> dict:
    """The networks of ``tests/untuned_nets.py`` (name: (builder, input size))."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    try:
        from untuned_nets import NETS
    finally:
        sys.path.pop(0)
    return NETS


def _kernel_times(runs: list, output: str) -> list:
    """Kernel time (µs) per (operator, float output) and wall seconds of each ``(model bytes,
    feeds)`` in ``runs``, profiled in one pass that takes the runs' feeds in turn (the i-th
    feed of every run, then the next: a change of the machine's speed affects all alike),
    after one untimed pass (first calls at a shape prepare kernels)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        sessions = []
        for k, (model_bytes, _) in enumerate(runs):
            so = ort.SessionOptions()
            so.log_severity_level = 3
            # two sessions take turns: threads left spinning by one would slow the other
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(tmp, f"profile{k}")
            sessions.append(ort.InferenceSession(model_bytes, so,
                                                 providers=["CPUExecutionProvider"]))
        for session, (_, feeds) in zip(sessions, runs):
            for f in feeds:
                session.run([output], f)
        # events after this instant are counted (profiler timestamps: us since its start)
        since = [(time.time_ns() - s.get_profiling_start_time_ns()) / 1e3 for s in sessions]
        seconds = [0.0] * len(runs)
        for i in range(max(len(feeds) for _, feeds in runs)):
            for k, (session, (_, feeds)) in enumerate(zip(sessions, runs)):
                if i < len(feeds):
                    tic = time.perf_counter()
                    session.run([output], feeds[i])
                    seconds[k] += time.perf_counter() - tic
        results = []
        for k, session in enumerate(sessions):
            by_op = collections.Counter()
            for e in json.load(open(session.end_profiling())):
                if (e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
                        and e["ts"] >= since[k]):
                    types = e["args"].get("output_type_shape") or []
                    is_float = (any("float" in json.dumps(t) for t in types) if types
                                else True)
                    by_op[(e["args"]["op_name"], is_float)] += e["dur"]
            results.append((by_op, seconds[k]))
    return results


def _compute_us(by_op) -> float:
    return sum(us for (op, _), us in by_op.items() if op in GROUPS["compute"])


def _images_executed(clf, plan, rows, batches) -> float:
    """The block's executed multiply-adds in full images (boxes widened as batched)."""
    report = plan.report
    steps = report["steps"][:plan.cut]
    # multiply-adds only (the engine's batching model adds the values moved)
    per_position = np.array([t["macs_full"] / (t["shape"][1] * t["shape"][2]) for t in steps])
    _, heights, widths = clf._batch_model(plan)
    rest = report["macs_planned"] - sum(t["macs_crop"] for t in steps)
    total = sum(len(idx) * (per_position @ (heights[:, rows[idx, 0]].max(1)
                                            * widths[:, rows[idx, 1]].max(1)) + rest)
                for idx in batches)
    return total / report["macs_full"]


def _host_index_share(plan, tops: list, feeds: list, output: str, rounds: int = 3) -> float:
    """Share of the host's index arithmetic (:meth:`IndexProgram.feeds
    <preddiff.incremental_index.IndexProgram.feeds>` of every batch) in the time of a pass
    over the batches (index, then the graph call), without the profiler, in a session that
    does not spin: median over ``rounds`` passes."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(plan.compiled.model.SerializeToString(), so,
                                   providers=["CPUExecutionProvider"])
    shares = []
    for r in range(rounds + 1):  # the first pass untimed
        t_index = t_graph = 0.0
        for top, f in zip(tops, feeds):
            tic = time.perf_counter()
            index = plan.compiled.index.feeds(top)
            toc = time.perf_counter()
            session.run([output], {**f, **index})
            t_index += toc - tic
            t_graph += time.perf_counter() - toc
        if r:
            shares.append(t_index / (t_index + t_graph))
    return float(np.median(shares))


def profile(name: str, seed: int = 0) -> dict:
    """Per-operator kernel time of the compiled graph of bench network ``name``, its
    convolutions' time per multiply-add against the plain network's, and the share of the
    host's index arithmetic."""
    import onnx

    from preddiff.incremental import IncrementalClassifier
    from preddiff.incremental_graph import PATCHES

    untuned = _untuned()
    if name in untuned:
        from preddiff.netzoo import example_pool

        build, size = untuned[name]
        model, x, stride = build(seed), example_pool(size)[0], UNTUNED_STRIDE
    else:
        model, _, x, _ = bench_inputs(name, seed)
        stride = BLOCK_STRIDE[name][0]
    x = np.ascontiguousarray(x, np.float32)
    clf = IncrementalClassifier(model, outputs=["prob"], device="cpu")
    clf._set_clean(x)
    plan = clf._plan(x.shape, WINDOW)
    feeds = {ci.name: ci.build(clf._clean[ci.tensor]) for ci in plan.compiled.clean_inputs}
    top_left = np.asarray(window_positions(x.shape[1:], WINDOW, stride, edges="cover"),
                          np.int64)
    rows = np.repeat(top_left, SAMPLES, axis=0)
    batches = clf._batches(plan, rows[:, 0], rows[:, 1]) if plan.report["cut"] else []
    rng = np.random.default_rng(seed)
    tops = [rows[idx] for idx in batches]
    patches = [rng.normal(size=(len(idx), x.shape[0], *WINDOW)).astype(np.float32)
               for idx in batches]
    fed = [{**feeds, **plan.compiled.feeds(p, t)} for p, t in zip(patches, tops)]
    n = sum(len(t) for t in tops)
    # the plain network on whole images (PLAIN_IMAGES per call), one call beside each batch
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(model)
    name_in = [i.name for i in proto.graph.input
               if i.name not in {t.name for t in proto.graph.initializer}][0]
    plain_feeds = [{name_in: np.repeat(x[None], PLAIN_IMAGES, 0)}] * max(len(fed), 1)
    (by_op, seconds), (plain_ops, _) = _kernel_times(
        [(plan.compiled.model.SerializeToString(), fed),
         (proto.SerializeToString(), plain_feeds)], "prob")
    plain_compute = _compute_us(plain_ops) / (len(plain_feeds) * PLAIN_IMAGES)
    plain_share = _compute_us(plain_ops) / (sum(plain_ops.values()) or 1)
    executed = _images_executed(clf, plan, rows, batches) if batches else 0.0
    compute_efficiency = (plain_compute / (_compute_us(by_op) / executed) if executed
                          else float("nan"))
    host_index = (_host_index_share(plan, tops, [{**feeds, PATCHES: p} for p in patches],
                                    "prob") if batches else float("nan"))
    total = sum(by_op.values()) or 1
    groups = collections.Counter()
    for (op, is_float), us in by_op.items():
        groups[_group(op, is_float)] += us
    return {"name": name, "cut": plan.report["cut"], "steps": len(plan.report["steps"]),
            "nodes": plan.compiled.nodes, "window_samples": n, "seconds": seconds,
            "groups": {g: groups[g] / total for g in groups},
            "compute_efficiency": compute_efficiency, "host_index": host_index,
            "plain_compute_share": plain_share,
            "ops": sorted(((op + ("" if f else " (int)"), us / total)
                           for (op, f), us in by_op.items()), key=lambda t: -t[1])}


def format_rows(rows) -> str:
    names = ["compute", "layout", "regions", "element-wise", "index arithmetic", "other"]
    lines = [f"{'model':18s} {'cut':>7s} {'nodes':>6s} {'w-s':>6s} {'w-s/s':>8s} "
             + " ".join(f"{g:>16s}" for g in names)
             + "  plain compute  MAC rate÷plain  host index"]
    for r in rows:
        lines.append(f"{r['name']:18s} {r['cut']:3d}/{r['steps']:<3d} {r['nodes']:6d} "
                     f"{r['window_samples']:6d} {r['window_samples'] / r['seconds']:8.1f} "
                     + " ".join(f"{100 * r['groups'].get(g, 0.0):15.1f}%" for g in names)
                     + f"  {100 * r['plain_compute_share']:12.1f}%"
                     f"  {r['compute_efficiency']:14.2f}  "
                     f"{100 * r['host_index']:10.1f}%")
    lines.append("")
    for r in rows:
        top = ", ".join(f"{op} {100 * share:.1f}%" for op, share in r["ops"][:10])
        lines.append(f"{r['name']}: {top}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet50,resnet18")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    m = machine_info()
    rows = [profile(name.strip()) for name in args.models.split(",")]
    text = "\n".join([
        "Compiled incremental graph profiled by operator (k=10, S=10, the benchmark's block, "
        "onnxruntime's profiler, CPU provider)",
        f"machine: {m['cpu']}, {m['cores']} cores, load average {m['load_average_start']} at "
        f"start; onnxruntime {m['onnxruntime']}, numpy {m['numpy']}, commit {m['git_commit']}",
        f"command: python bench/incremental_profile.py {' '.join(argv or sys.argv[1:])}".rstrip(),
        "", format_rows(rows), "",
        "cut: incremental steps of all; nodes: of the compiled graph; w-s/s: window-samples/s "
        "of the graph alone, profiler on, after one untimed pass over the block, taking turns "
        "with calls of the plain network (not comparable with this file's earlier records); "
        "shares: of the summed kernel time;",
        "compute: convolutions, pooling, Gemm; layout: Transpose and onnxruntime's NCHWc "
        "reorders; regions: Gather/Concat/ScatterElements of float maps; element-wise: float "
        "Add/Relu/Mul...; index arithmetic: int64 nodes combining each region's index from "
        "its row and column terms;",
        f"plain compute: the plain network's compute share of its kernel time ({PLAIN_IMAGES} "
        "images per call, one call beside each batch of the graph, same profiler); MAC rate"
        "÷plain: its compute kernel time per image ÷ the compiled graph's per image of executed "
        "multiply-adds (the block's boxes widened as batched; above 1: the crops' compute runs "
        "more multiply-adds per second than whole maps);",
        "host index: without the profiler, the share of a pass over the block's batches "
        "spent computing the index inputs on the host (boxes and each region's row and "
        "column terms; the graph call is the rest), median of 3 passes;",
        "The benchmark's blocks batch few windows per call (ResNet-50: one window's 10 "
        "samples), so per-call work weighs more here than in a full-image run."])
    print(text)
    atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
