"""``preddiff convert``: a Caffe net and its weights → an ONNX model (see
:func:`preddiff.caffe.caffe_to_onnx`).

``preddiff convert NAME`` converts a zoo network from its cached (or bundled) weights into
the zoo's ONNX cache, where the classifier finds it; ``preddiff convert --prototxt P
--caffemodel M --output OUT.onnx`` converts any files.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InvalidArgument, PredDiffError

ORDER = 20


def register(subparsers) -> None:
    """Add the ``convert`` sub-command to the CLI."""
    parser = subparsers.add_parser(
        "convert",
        help="convert a Caffe network and its weights to ONNX",
        description="Convert a zoo network (NAME, with its downloaded weights) or any Caffe "
        "deploy prototxt + caffemodel to an ONNX model in which every Caffe blob keeps its "
        "name. By default only the last blob is a graph output.",
    )
    parser.add_argument("name", metavar="NAME", nargs="?",
                        help="zoo network: alexnet, googlenet, vgg16 or lenet")
    parser.add_argument("--prototxt", type=Path, help="Caffe deploy net (instead of NAME)")
    parser.add_argument("--caffemodel", type=Path, help="Caffe weights (with --prototxt)")
    parser.add_argument("--output", "-o", type=Path,
                        help="ONNX file to write (default for NAME: the zoo's ONNX cache)")
    parser.add_argument("--outputs", default=None, metavar="BLOBS",
                        help="graph outputs: 'all', or comma-separated blob names such as "
                        "'fc8,prob' (default: the last blob)")
    parser.add_argument("--opset", type=int, default=13, help="ONNX opset (>= 13; default 13)")
    parser.set_defaults(func=convert)


def _outputs(text: str | None):
    if text is None or text == "all":
        return text
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise InvalidArgument(f"--outputs {text!r} names no blob; give 'all' or blob names")
    return names


def convert(args: argparse.Namespace) -> int:
    """Run the conversion; print where the model was written."""
    from ..caffe import caffe_to_onnx, save_onnx

    outputs = _outputs(args.outputs)
    if args.name is not None:
        if args.prototxt or args.caffemodel:
            raise InvalidArgument("give either NAME or --prototxt/--caffemodel, not both")
        return _convert_zoo(args.name, args.output, outputs, args.opset)
    if args.prototxt is None or args.caffemodel is None:
        raise InvalidArgument("give a zoo NAME, or both --prototxt and --caffemodel")
    if args.output is None:
        raise InvalidArgument("--output is required with --prototxt/--caffemodel")
    if not args.caffemodel.is_file():
        raise PredDiffError(f"caffemodel not found: {args.caffemodel}")
    model = caffe_to_onnx(args.prototxt, args.caffemodel, outputs=outputs, opset=args.opset)
    _report(save_onnx(model, args.output), model)
    return 0


def _convert_zoo(name: str, output: Path | None, outputs, opset: int) -> int:
    from .. import zoo
    from ..caffe import caffe_to_onnx, save_onnx

    manifest = zoo.manifest(name)  # InvalidArgument for an unknown name
    if output is None:
        if opset != 13:
            raise InvalidArgument("--opset needs --output for a zoo network (its cache holds "
                                  "opset 13 models)")
        # The zoo's cache: weights verified by sha1, and a sidecar that lets the classifier
        # reuse the model (it is converted again only when weights or converter change).
        path = zoo.ensure_onnx(name, outputs)
        print(f"{name}: {path}")
        return 0
    weights = zoo.verified_weights(name)  # present, with the manifest's sha1
    model = caffe_to_onnx(manifest.prototxt, weights, outputs=outputs, opset=opset)
    _report(save_onnx(model, output), model)
    return 0


def _report(path: Path, model) -> None:
    outputs = ", ".join(o.name for o in model.graph.output)
    print(f"wrote {path} ({len(model.graph.node)} nodes; outputs: {outputs})")
