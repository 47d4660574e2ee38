"""Time spent inside vs outside the classifier in :func:`preddiff.prediction_difference`.

The issue's target: on the CPU, with AlexNet-sized random weights at k = 10, S = 10, the time
outside the classifier (sampling, building the perturbed batches, reductions, checkpoints,
progress bar) is at most 10 % of the total.

The model is the real AlexNet architecture with random weights, converted through the real
path (``preddiff.caffe.writer.random_onnx("alexnet")``), run by
``preddiff.classifier.OnnxClassifier``. When that helper is missing the script falls back to a
stand-in ONNX model of AlexNet's cost built with ``onnx.helper`` (same conv/FC shapes, no LRN).

A full stride-1 run has 218² windows × 10 samples = 475,240 AlexNet evaluations (hours on a
CPU), so the script times a fixed block of windows: the same engine, with ``--stride``
choosing the block (default 24 → 10×10 = 100 windows, 1,000 images). The final per-pixel
reduction runs once per image; its cost for a full stride-1 run (all 1000 classes) is timed
separately and reported against the projected full-run time.

Usage::

    python bench/engine_overhead.py [--sampler conditional|marginal] [--stride 24]
                                    [--batch-size 100] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np


def alexnet_classifier(batch_size: int, threads):
    from preddiff.classifier import OnnxClassifier

    try:
        from preddiff.caffe.writer import random_onnx
    except ImportError:
        model, source = _stand_in_alexnet(), "stand-in AlexNet-cost ONNX (onnx.helper)"
    else:
        model, source = random_onnx("alexnet", seed=0), "random-weight AlexNet (random_onnx)"
    return OnnxClassifier(model, outputs=["prob"], batch_size=batch_size, device="cpu",
                          threads=threads), source


def _stand_in_alexnet():
    """AlexNet's convolution and fully connected layers (cost-equivalent), random weights."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []

    def weight(name, shape, scale):
        inits.append(numpy_helper.from_array(
            (rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def conv(x, out, cin, cout, k, stride=1, pad=0, group=1, name=""):
        w = weight(f"{name}_w", (cout, cin // group, k, k), (2 / (cin // group * k * k)) ** 0.5)
        b = weight(f"{name}_b", (cout,), 0.0)
        nodes.append(helper.make_node("Conv", [x, w, b], [f"{name}_c"], kernel_shape=[k, k],
                                      strides=[stride] * 2, pads=[pad] * 4, group=group))
        nodes.append(helper.make_node("Relu", [f"{name}_c"], [out]))

    def pool(x, out):
        nodes.append(helper.make_node("MaxPool", [x], [out], kernel_shape=[3, 3],
                                      strides=[2, 2], ceil_mode=1))

    conv("data", "conv1", 3, 96, 11, stride=4, name="conv1")
    pool("conv1", "pool1")
    conv("pool1", "conv2", 96, 256, 5, pad=2, group=2, name="conv2")
    pool("conv2", "pool2")
    conv("pool2", "conv3", 256, 384, 3, pad=1, name="conv3")
    conv("conv3", "conv4", 384, 384, 3, pad=1, group=2, name="conv4")
    conv("conv4", "conv5", 384, 256, 3, pad=1, group=2, name="conv5")
    pool("conv5", "pool5")
    nodes.append(helper.make_node("Flatten", ["pool5"], ["flat"], axis=1))
    x, cin = "flat", 256 * 6 * 6
    for name, cout in (("fc6", 4096), ("fc7", 4096), ("fc8", 1000)):
        w = weight(f"{name}_w", (cout, cin), (1 / cin) ** 0.5)
        b = weight(f"{name}_b", (cout,), 0.0)
        nodes.append(helper.make_node("Gemm", [x, w, b], [name], transB=1))
        if name != "fc8":
            nodes.append(helper.make_node("Relu", [name], [f"{name}_r"]))
            x = f"{name}_r"
        cin = cout
    nodes.append(helper.make_node("Softmax", ["fc8"], ["prob"], axis=1))
    graph = helper.make_graph(
        nodes, "alexnet_cost", [helper.make_tensor_value_info("data", TensorProto.FLOAT,
                                                              ["N", 3, 227, 227])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1000])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sampler", choices=["conditional", "marginal"], default="conditional")
    parser.add_argument("--stride", type=int, default=24)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    import preddiff
    from preddiff.samplers import ConditionalGaussianSampler, MarginalSampler
    from preddiff.windows import window_positions, window_sum

    rng = np.random.default_rng(0)
    shape = (3, 227, 227)
    # smooth random "images" in a mean-subtracted 0–255 range
    from scipy.ndimage import gaussian_filter

    pool = gaussian_filter(rng.normal(size=(12,) + shape), sigma=(0, 0, 3, 3)) * 400
    pool = pool.astype(np.float32)
    x, pool = pool[0], pool[1:]
    tic = time.perf_counter()
    if args.sampler == "conditional":
        sampler = ConditionalGaussianSampler.fit(pool, args.window, 2, num_patches=20000,
                                                 rng=1)
    else:
        sampler = MarginalSampler(pool)
    fit_s = time.perf_counter() - tic
    classifier, source = alexnet_classifier(args.batch_size, args.threads)
    classifier(x[None])  # warm-up: session initialisation is not part of a run

    n_windows = len(window_positions(shape[1:], args.window, args.stride))
    result = preddiff.prediction_difference(
        x, classifier, sampler, window=args.window, stride=args.stride,
        num_samples=args.samples, batch_size=args.batch_size, rng=0, progress=False)
    t = result.timings
    per_window = t["total"] / n_windows

    # one-off final reduction of a full stride-1 run: 218² windows × 1000 classes
    full_windows = len(window_positions(shape[1:], args.window, 1))
    values = rng.normal(size=(full_windows, 1000))
    tic = time.perf_counter()
    window_sum(values, shape[1:], args.window, 1)
    reduce_s = time.perf_counter() - tic
    projected = per_window * full_windows

    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, python {platform.python_version()}")
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"model: {source}, onnxruntime {classifier.provider}, batch {args.batch_size}")
    print(f"sampler: {args.sampler} (fit {fit_s:.1f} s, not counted), k={args.window}, "
          f"S={args.samples}, stride={args.stride}: {n_windows} windows, "
          f"{n_windows * args.samples} images")
    print(f"total               {t['total']:8.2f} s  ({n_windows * args.samples / t['total']:.1f}"
          " images/s)")
    print(f"inside classifier   {t['classifier']:8.2f} s  "
          f"{100 * t['classifier'] / t['total']:5.1f} %")
    print(f"outside classifier  {t['outside']:8.2f} s  {100 * t['outside_fraction']:5.1f} %"
          f"   (of which sampler {t['sampler']:.2f} s)")
    print(f"full stride-1 run, projected: {projected / 3600:.2f} h; its final reduction "
          f"(1000 classes x {full_windows} windows) {reduce_s:.2f} s = "
          f"{100 * reduce_s / projected:.3f} % more")
    ok = t["outside_fraction"] <= 0.10
    print("target (outside <= 10 %):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
