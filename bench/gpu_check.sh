#!/usr/bin/env bash
# The device check: preddiff on a lent NVIDIA GPU machine, in one prepared run of <= 8 minutes.
#
# Stages, each with its own time limit, everything written under $OUT:
#   1. install the carried onnxruntime-gpu wheel (and pooch) into /tmp/site;        ~30 s
#   2. the machine (nvidia-smi), onnxruntime's providers, `preddiff doctor`;         ~10 s
#   3. tests on the CUDA provider: tests/test_cuda.py (device composition, maps vs the
#      CPU within the float32 floor), test_compose.py, test_classifier.py;          <= 60 s
#   4. CUDA maps vs CPU maps of the bench blocks (AlexNet, ResNet-50), naive engine;  <= 60 s
#   5. `preddiff bench --device cuda --quick` for alexnet, googlenet, vgg16, resnet50:
#      plain images/s with the batch swept up to what the device holds, naive PDA
#      (composed on the device) and incremental PDA;                                <= 150 s
#   6. bench/paper_scale.py: one paper-scale image (k = 10, S = 20, stride 1,
#      conditional sampler) of AlexNet (<= 150 s) and GoogLeNet (<= 240 s) to completion,
#      VGG16 on 1 % of its windows (<= 60 s), naive engine, one process and record each;
#      VGG16 on 1 % again with exact incremental inference (the compiled graph, issue 17;
#      <= 60 s); then the projection of Figures 1-6 from the three naive records.
#                                                                      (targets: 120 + 240 s)
# Records: $OUT/gpu_check.txt (this log), gpu_bench.{json,txt} (plain, naive and incremental
# rows), paper_scale_<net>_incremental_{off,on}.json, paper_scale_cuda.{json,txt},
# cuda_vs_cpu.txt: copy them to bench/results/.
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
#
# `bash bench/gpu_check.sh --dry-run` runs every stage at a tiny scale on this machine's CPU
# (no install), to check the script itself before spending device time.
set -u
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-/tmp/gpu_check_out}
WHEELS=${WHEELS:-/tmp/o}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.txt") 2>&1
say() { echo "[gpu_check $(date -u +%T)] $*"; }
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PREDDIFF_HOME=/tmp/preddiff-home

if [ $DRY = 1 ]; then
    DEVICE=cpu; BENCH_MODELS=lenet; COMPARE_MODELS="lenet"; T=4
    PAPER_RUNS="alexnet:--fraction:0.0005 alexnet:--fraction:0.0005::on"; PAPER_OPTS="--patches 2000"
    export PYTHONPATH=$PWD/src:$PWD
else
    DEVICE=cuda; BENCH_MODELS=alexnet,googlenet,vgg16,resnet50
    COMPARE_MODELS="alexnet resnet50"; T=1
    # network:options:limit - AlexNet and GoogLeNet to completion, VGG16 on 1 % of its windows
    # (a fifth field: the engine; VGG16 once more with exact incremental inference, issue 17)
    PAPER_RUNS="alexnet:--complete:alexnet:150 googlenet:--complete:googlenet:240 vgg16:--fraction:0.01:60 vgg16:--fraction:0.01:60:on"
    PAPER_OPTS=""
    say "stage 1: install"
    cp .ortgpu/part_* "$WHEELS/" 2>/dev/null
    ls -l "$WHEELS"
    cat "$WHEELS"/part_* > /tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl || exit 1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        /tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl .ortgpu/small/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD/src:$PWD
fi

say "stage 2: machine and providers"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
nproc; python3 --version
python3 -c "import onnxruntime as o; getattr(o, 'preload_dlls', lambda: None)(); print('onnxruntime', o.__version__, o.get_available_providers())"
timeout 60 python3 -m preddiff doctor

say "stage 3: tests on CUDA"
timeout $((60 * T)) python3 -m pytest -q -p no:cacheprovider -rs \
    tests/test_cuda.py tests/test_compose.py tests/test_classifier.py 2>&1 | tail -15

say "stage 4: CUDA maps vs CPU maps (naive engine, bench blocks)"
timeout $((60 * T)) python3 - "$DEVICE" $COMPARE_MODELS <<'EOF' 2>&1 | tee "$OUT/cuda_vs_cpu.txt"
import sys, time
import numpy as np
from preddiff import prediction_difference
from preddiff.classifier import OnnxClassifier
from preddiff.commands import bench
device, names = sys.argv[1], sys.argv[2:]
print(f"device {device}: max |a - b| / max |b| of the prob maps, a on {device}, b on the CPU; "
      "float32 floor (bench/float32_floor.py): 2.4e-5 to 4.8e-5")
for name in names:
    model, _, x, sampler = bench.bench_inputs(name)
    stride = bench.BLOCK_STRIDE[name][1]
    maps = {}
    for dev in (device, "cpu"):
        clf = OnnxClassifier(model, outputs=["prob"], batch_size=256, device=dev)
        tic = time.perf_counter()
        e = prediction_difference(x, clf, sampler, window=10, stride=stride, num_samples=10,
                                  rng=0, progress=False)
        maps[dev] = (e.relevance["prob"], clf.provider, time.perf_counter() - tic)
    a, b = maps[device][0], maps["cpu"][0]
    print(f"{name}: {maps[device][1]} {maps[device][2]:.1f} s, CPU {maps['cpu'][2]:.1f} s, "
          f"max rel diff {np.abs(a - b).max() / np.abs(b).max():.2e}")
EOF

say "stage 5: preddiff bench on $DEVICE"
timeout $((150 * T)) python3 -m preddiff bench --device $DEVICE --quick --models $BENCH_MODELS \
    --json "$OUT/gpu_bench.json" 2>&1 | tail -40

say "stage 6: paper-scale images and the projection of Figures 1-6"
PREVIOUS=""
for run in $PAPER_RUNS; do
    IFS=: read -r net flag value limit mode <<< "$run"
    limit=${limit:-$((60 * T))}
    mode=${mode:-off}
    record="$OUT/paper_scale_${net}_incremental_${mode}.json"
    timeout "$limit" python3 bench/paper_scale.py --device $DEVICE --incremental $mode \
        --models "$net" $flag "$value" $PAPER_OPTS --no-progress \
        --json "$record" 2>&1 | grep -v "^  fig" | tail -8
    # the projection of Figures 1-6 uses the naive engine's records
    [ -f "$record" ] && [ "$mode" = off ] && PREVIOUS="$PREVIOUS $record"
done
# the projection from every network measured (a run stopped by its limit is left out)
timeout 60 python3 bench/paper_scale.py --models "" --from $PREVIOUS \
    --json "$OUT/paper_scale_cuda.json" 2>&1 | tail -25
say "done"
