"""Helpers of ``make_goldens.sh``: inputs, BatchNorm statistics, and packing Caffe's dump.

usage: python make_goldens.py inputs CASE_DIR
       python make_goldens.py bnstats CASE_DIR
       python make_goldens.py writer CASE_DIR
       python make_goldens.py pack CASE_DIR DUMP_DIR BATCH [BLOB ...]

``inputs``: ``input_b2.npy`` uniform(0, 255) − 128 from ``numpy.random.default_rng(0)`` in the
net's input shape with batch 2, ``input_b1.npy`` its first image (as the shared goldens).
``bnstats``: Caffe's BatchNorm layers start with zero statistics, which would test nothing;
this replaces them in ``weights.caffemodel`` (Caffe-filled otherwise) by random running sums
(mean N(0, 10²), variance U(100, 1000), both times a scale factor U(0.5, 5), stored with the
factor, as Caffe stores them); a layer named ``bn2`` gets factor 0 (Caffe then uses mean 0
and variance 0). The file is rewritten with preddiff's caffemodel writer (current format).
``pack``: ``caffe_blobs_bBATCH.npz`` from ``caffe_dump dump``'s ``index.tsv`` and ``NNN.npy``,
every blob except Caffe's own Split copies (or only the BLOBs named; then the shapes of all
blobs go to ``caffe_shapes_bBATCH.json``).
``writer``: weights written by preddiff's writer instead of Caffe's fillers, for a net too
large to commit its weights (ResNet-50: 102 MB): :func:`writer_weights` regenerates them
exactly from the seed, in the tests too.
"""
import sys
from pathlib import Path

import numpy as np


def inputs(case: Path) -> None:
    from preddiff.caffe import load_net

    net = load_net(case / "deploy.prototxt")
    (shape,) = net.inputs.values()
    x = (np.random.default_rng(0).uniform(0, 255, size=(2, *shape[1:])) - 128).astype(np.float32)
    np.save(case / "input_b2.npy", x)
    np.save(case / "input_b1.npy", x[:1])


def bnstats(case: Path) -> None:
    from preddiff.caffe import load_net, read_caffemodel
    from preddiff.caffe.writer import write_caffemodel

    net = load_net(case / "deploy.prototxt")
    weights = read_caffemodel(case / "weights.caffemodel", net)
    rng = np.random.default_rng(1)
    for layer in net.layers:
        if layer.type != "BatchNorm":
            continue
        c = weights[layer.name][0].shape[0]
        factor = 0.0 if layer.name == "bn2" else rng.uniform(0.5, 5)
        mean = rng.normal(0, 10, c) * factor
        var = rng.uniform(100, 1000, c) * factor
        weights[layer.name] = [mean.astype(np.float32), var.astype(np.float32),
                               np.array([factor], np.float32)]
    write_caffemodel(net, weights, case / "weights.caffemodel", style="layer")


def pack(case: Path, dump: Path, batch: str, only: list) -> None:
    import json

    blobs, shapes = {}, {}
    for line in (dump / "index.tsv").read_text().splitlines():
        file, name, producer = line.split("\t")[:3]
        if producer == "Split":
            continue
        array = np.load(dump / file)
        shapes[name] = list(array.shape)
        if not only or name in only:
            blobs[name] = array
    np.savez_compressed(case / f"caffe_blobs_b{batch}.npz", **blobs)
    if only:
        (case / f"caffe_shapes_b{batch}.json").write_text(json.dumps(shapes, indent=0) + "\n")


WRITER_SEED = 50


def writer_weights(net) -> dict:
    """preddiff's random weights for ``net`` (seed :data:`WRITER_SEED`), the last
    InnerProduct divided by 1000 so that the random ResNet-50's softmax is not one-hot."""
    from preddiff.caffe.writer import random_weights

    weights = random_weights(net, np.random.default_rng(WRITER_SEED))
    last = [layer.name for layer in net.layers if layer.type == "InnerProduct"][-1]
    weights[last][0] = weights[last][0] / np.float32(1000)
    return weights


def writer(case: Path) -> None:
    from preddiff.caffe import load_net
    from preddiff.caffe.writer import write_caffemodel

    net = load_net(case / "deploy.prototxt")
    write_caffemodel(net, writer_weights(net), case / "weights.caffemodel", style="layer")


if __name__ == "__main__":
    command, case = sys.argv[1], Path(sys.argv[2])
    if command == "inputs":
        inputs(case)
    elif command == "bnstats":
        bnstats(case)
    elif command == "writer":
        writer(case)
    elif command == "pack":
        pack(case, Path(sys.argv[3]), sys.argv[4], sys.argv[5:])
    else:
        sys.exit(__doc__)
