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
- index arithmetic: the int64 box computations (``Range``, ``Where``, ``Less`` ...).

::

    python bench/incremental_profile.py                     # resnet50, resnet18
    python bench/incremental_profile.py --models mobilenet_v2,googlenet

Writes the table to ``bench/results/incremental_profile.txt`` (``--out`` to change). The
profiler adds time per node (most to the many tiny int64 nodes of the box arithmetic); use
the shares of the large operators, not the absolute rate.
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
        # Gather, Add ... of int64 index tensors are box arithmetic, not map work
        if op in ops and (name in ("compute", "layout") or float_output):
            return name
    return "index arithmetic" if not float_output else "other"


def profile(name: str, seed: int = 0) -> dict:
    """Per-operator kernel time of the compiled graph of bench network ``name``."""
    import onnxruntime as ort

    from preddiff.incremental import IncrementalClassifier
    from preddiff.incremental_graph import PATCHES, TOP_LEFT

    model, _, x, _ = bench_inputs(name, seed)
    x = np.ascontiguousarray(x, np.float32)
    clf = IncrementalClassifier(model, outputs=["prob"], device="cpu")
    clf._set_clean(x)
    plan = clf._plan(x.shape, WINDOW)
    feeds = {ci.name: ci.build(clf._clean[ci.tensor]) for ci in plan.compiled.clean_inputs}
    stride = BLOCK_STRIDE[name][0]
    top_left = np.asarray(window_positions(x.shape[1:], WINDOW, stride, edges="cover"),
                          np.int64)
    rows = np.repeat(top_left, SAMPLES, axis=0)
    batches = clf._batches(plan, rows[:, 0], rows[:, 1]) if plan.report["cut"] else []
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, name)
        session = ort.InferenceSession(plan.compiled.model.SerializeToString(), so,
                                       providers=["CPUExecutionProvider"])
        fed = []
        for idx in batches:
            f = dict(feeds)
            f[PATCHES] = rng.normal(size=(len(idx), x.shape[0], *WINDOW)).astype(np.float32)
            f[TOP_LEFT] = rows[idx]
            fed.append(f)
        for f in fed:  # warm-up: first calls at each shape allocate and prepare kernels
            session.run(["prob"], f)
        # events after this instant are counted (profiler timestamps: us since its start)
        since = (time.time_ns() - session.get_profiling_start_time_ns()) / 1e3
        tic, n = time.perf_counter(), 0
        for f in fed:
            session.run(["prob"], f)
            n += len(f[TOP_LEFT])
        seconds = time.perf_counter() - tic
        events = json.load(open(session.end_profiling()))
    by_op = collections.Counter()
    for e in events:
        if (e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
                and e["ts"] >= since):
            op = e["args"]["op_name"]
            types = e["args"].get("output_type_shape") or []
            is_float = any("float" in json.dumps(t) for t in types) if types else True
            key = (op, is_float)
            by_op[key] += e["dur"]
    total = sum(by_op.values()) or 1
    groups = collections.Counter()
    for (op, is_float), us in by_op.items():
        groups[_group(op, is_float)] += us
    return {"name": name, "cut": plan.report["cut"], "steps": len(plan.report["steps"]),
            "nodes": plan.compiled.nodes, "window_samples": n, "seconds": seconds,
            "groups": {g: groups[g] / total for g in groups},
            "ops": sorted(((op + ("" if f else " (int)"), us / total)
                           for (op, f), us in by_op.items()), key=lambda t: -t[1])}


def format_rows(rows) -> str:
    names = ["compute", "layout", "regions", "element-wise", "index arithmetic", "other"]
    lines = [f"{'model':18s} {'cut':>7s} {'nodes':>6s} {'w-s':>6s} {'w-s/s':>8s} "
             + " ".join(f"{g:>16s}" for g in names)]
    for r in rows:
        lines.append(f"{r['name']:18s} {r['cut']:3d}/{r['steps']:<3d} {r['nodes']:6d} "
                     f"{r['window_samples']:6d} {r['window_samples'] / r['seconds']:8.1f} "
                     + " ".join(f"{100 * r['groups'].get(g, 0.0):15.1f}%" for g in names))
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
        "of the graph alone, profiler on, after one untimed pass over the block; shares: of "
        "the summed kernel time;",
        "compute: convolutions, pooling, Gemm; layout: Transpose and onnxruntime's NCHWc "
        "reorders; regions: Gather/Concat/ScatterElements of float maps; element-wise: float "
        "Add/Relu/Mul...; index arithmetic: int64 box computations (many tiny nodes: the "
        "profiler's own cost per node inflates their share; a call's fixed cost without it "
        "is a few ms).",
        "The benchmark's blocks batch few windows per call (ResNet-50: one window's 10 "
        "samples), so per-call work weighs more here than in a full-image run."])
    print(text)
    atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
