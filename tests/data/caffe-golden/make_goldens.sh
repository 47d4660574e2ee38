#!/bin/sh
# Regenerate the goldens of the cases this repository added, with real BVLC Caffe.
#
#   CAFFE_DUMP=/path/to/caffe_dump sh tests/data/caffe-golden/make_goldens.sh [CASE ...]
#
# caffe_dump is built with shared/tools/realcaffe/RECIPE.md (Caffe 9b89154, CPU). Per case:
# Caffe-filled weights (seed 7; BatchNorm statistics then made non-trivial, see
# make_goldens.py), inputs from numpy.random.default_rng(0), and Caffe's forward pass at batch
# 1 and 2. Run from the repository root with preddiff installed (python -m pip install -e .).
set -e
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python}
: "${CAFFE_DUMP:?set CAFFE_DUMP to the caffe_dump binary}"
cases=${*:-"lrn_within_k deconv_group batchnorm_scale eltwise flatten_reshape activations slice_crop resnet50 eltwise_in_place shared_views shared_concat_slice power_degenerate scale_two_bottoms in_place_layers"}
for case in $cases; do
    d=$here/$case
    if [ -f "$d/make_prototxt.py" ]; then "$py" "$d/make_prototxt.py" > "$d/deploy.prototxt"; fi
    if [ -f "$d/blobs.txt" ]; then  # a large net: preddiff's seeded writer, not committed
        "$py" "$here/make_goldens.py" writer "$d"
    else
        "$CAFFE_DUMP" init "$d/deploy.prototxt" "$d/weights.caffemodel" 7
        if grep -q '"BatchNorm"' "$d/deploy.prototxt"; then
            "$py" "$here/make_goldens.py" bnstats "$d"
        fi
    fi
    if [ -f "$d/blobs.txt" ]; then keep=$(cat "$d/blobs.txt"); else keep=""; fi
    "$py" "$here/make_goldens.py" inputs "$d"
    for b in 1 2; do
        tmp=$(mktemp -d)
        "$CAFFE_DUMP" dump "$d/deploy.prototxt" "$d/weights.caffemodel" "$d/input_b$b.npy" "$tmp"
        "$py" "$here/make_goldens.py" pack "$d" "$tmp" "$b" $keep
        rm -r "$tmp"
    done
    if [ -f "$d/blobs.txt" ]; then rm "$d/weights.caffemodel"; fi
    echo "$case: done"
done
