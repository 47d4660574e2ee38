#!/usr/bin/env bash
# The device check: preddiff on a lent NVIDIA GPU machine, in one prepared run.
#
# What it does, each stage with its own time limit, everything written under $OUT:
#   1. installs the carried onnxruntime-gpu wheel (and pooch) into /tmp/site;
#   2. the machine (nvidia-smi) and the providers onnxruntime offers; `preddiff doctor`;
#   3. the tests of the classifier and the incremental engine, on the CUDA provider;
#   4. `preddiff bench --device cuda --float16`: plain, naive and incremental throughput on
#      the GPU, and the deviation of the maps (incremental vs naive, float16 vs float32);
#   5. `preddiff explain` of a bundled ImageNet photo with a ResNet-18 ONNX file (netzoo,
#      random weights) on CUDA, incremental auto and off, and the deviation of the two maps.
#
# How the wheel gets there (the machine reaches no package registry; a call carries at most
# 64 MiB with the working tree): see ../shared/tools/gpu/README.md. Here, once:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 -d .ortgpu onnxruntime-gpu==1.31.1
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp -d .ortgpu/small pooch platformdirs
#   (cd .ortgpu && split -b 44m onnxruntime_gpu-*.whl part_ && rm onnxruntime_gpu-*.whl)
# then one device call per part, carrying `.ortgpu/part_XX` and running
#   mkdir -p /tmp/o && cp .ortgpu/part_* /tmp/o/
# and the last call carrying `.ortgpu` (the last part and small/) runs
#   WHEELS=/tmp/o bash bench/gpu_check.sh
# Results: bench/results/gpu_check.txt (this script's log) and gpu_bench.{json,txt}.
set -u
OUT=${OUT:-/tmp/gpu_check_out}
WHEELS=${WHEELS:-/tmp/o}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.txt") 2>&1
say() { echo "[gpu_check $(date -u +%T)] $*"; }

say "stage 1: install"
cp .ortgpu/part_* "$WHEELS/" 2>/dev/null
ls -l "$WHEELS"
cat "$WHEELS"/part_* > /tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    /tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl .ortgpu/small/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export PREDDIFF_HOME=/tmp/preddiff-home

say "stage 2: machine and providers"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
nproc; python3 --version
python3 -c "import onnxruntime as o; o.preload_dlls(); print('onnxruntime', o.__version__, o.get_available_providers())"
timeout 60 python3 -m preddiff doctor

say "stage 3: tests on CUDA"
timeout 120 python3 -m pytest -q -p no:cacheprovider -rf --timeout 60 \
    tests/test_classifier.py tests/test_incremental.py tests/test_doctor.py 2>&1 | tail -40

say "stage 4: preddiff bench on CUDA"
timeout 180 python3 -m preddiff bench --device cuda --quick --float16 \
    --models alexnet,resnet18,resnet50,mobilenet_v2 --json "$OUT/gpu_bench.json" 2>&1 \
    | grep -v "^\[bench" | tail -30

say "stage 5: explain on CUDA"
timeout 90 python3 - <<'EOF'
import subprocess, sys, time
import numpy as np, onnx
from preddiff import netzoo, Explanation
onnx.save(netzoo.build("resnet18", seed=0), "/tmp/r18.onnx")
img = "src/preddiff/data/images/n02917067_1599.jpg"
for mode in ("auto", "off"):
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "preddiff", "explain", img, "--model", "/tmp/r18.onnx",
                        "--labels", "imagenet", "--stride", "10", "--device", "cuda",
                        "--incremental", mode, "--no-progress", "--out", f"/tmp/ex_{mode}"],
                       capture_output=True, text=True)
    print(mode, f"{time.perf_counter() - t:.1f} s wall, exit {r.returncode}")
    print(r.stdout[-1500:], r.stderr[-1500:])
a = Explanation.load(next(__import__("pathlib").Path("/tmp/ex_auto").glob("*.npz")))
b = Explanation.load(next(__import__("pathlib").Path("/tmp/ex_off").glob("*.npz")))
u = int(a.units["prob"][0])
d = np.abs(a.relevance_of("prob", u) - b.relevance_of("prob", u)).max()
print("max |auto - off| / max |off| of the top class's map:",
      d / np.abs(b.relevance_of("prob", u)).max())
EOF
say "done"
