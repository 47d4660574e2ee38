"""Benchmark: read a VGG16-sized caffemodel (553 MB, old ``layers`` format like the zoo file).

Writes a random-weight VGG16 caffemodel (exact zoo architecture, legacy V1 format, extra
unused layers) to a temporary folder unless it exists, then reads it with
``preddiff.caffe.read_caffemodel(path, net)`` in a *fresh* Python process and reports the
wall time and that process's peak resident memory (``ru_maxrss``), against the file size.

Usage::

    python bench/read_caffemodel.py [--path /tmp/preddiff-bench/vgg16.caffemodel] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_PATH = Path("/tmp/preddiff-bench/vgg16_random_layers.caffemodel")


def write_file(path: Path) -> None:
    """Write the random VGG16 caffemodel (old `layers` format) to ``path``."""
    import numpy as np

    from preddiff.caffe import load_net
    from preddiff.caffe.writer import random_weights, write_caffemodel
    from preddiff.resources import MODELS_DIR

    net = load_net(MODELS_DIR / "vgg16" / "deploy.prototxt")
    t0 = time.perf_counter()
    write_caffemodel(net, random_weights(net, np.random.default_rng(0)), path, style="layers")
    print(f"wrote {path} in {time.perf_counter() - t0:.1f} s")


def peak_rss() -> int:
    """Peak resident memory of this process in bytes.

    Linux's ``VmHWM`` (reset by exec); ``ru_maxrss`` is not used there because exec carries
    over the parent's high-water mark.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def read_once(path: Path) -> dict:
    """Read ``path`` in this process; return timings and peak RSS (run in a fresh process)."""
    from preddiff.caffe import load_net, read_caffemodel
    from preddiff.resources import MODELS_DIR

    net = load_net(MODELS_DIR / "vgg16" / "deploy.prototxt")
    before = peak_rss()
    t0 = time.perf_counter()
    weights = read_caffemodel(path, net)
    seconds = time.perf_counter() - t0
    peak = peak_rss()
    values = sum(b.size for blobs in weights.values() for b in blobs)
    return {"seconds": seconds, "peak_rss": peak, "rss_before_read": before,
            "layers": len(weights), "values": values}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--keep", action="store_true", help="keep the file afterwards")
    parser.add_argument("--read-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.read_only:
        print(json.dumps(read_once(args.path)))
        return 0
    created = not args.path.exists()
    if created:
        write_file(args.path)
    size = args.path.stat().st_size
    try:
        child = subprocess.run([sys.executable, __file__, "--read-only", "--path",
                                str(args.path)], check=True, capture_output=True, text=True)
        result = json.loads(child.stdout)
    finally:
        if created and not args.keep:
            args.path.unlink(missing_ok=True)
    mb = 1e6
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    print(f"command: python bench/read_caffemodel.py{' ' + ' '.join(argv) if argv else ''}")
    print(f"file: {args.path} ({size:,} bytes): VGG16 random weights, old 'layers' format, "
          f"{result['values']:,} float32 values in {result['layers']} layers")
    print(f"read_caffemodel(path, net): {result['seconds']:.2f} s")
    print(f"peak RSS of the reading process: {result['peak_rss'] / mb:.0f} MB "
          f"({result['rss_before_read'] / mb:.0f} MB before the read) = "
          f"{result['peak_rss'] / size:.2f}x the file size")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
