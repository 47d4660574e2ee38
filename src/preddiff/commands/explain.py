"""``preddiff explain``: prediction difference analysis of images, written to .npz and .png.

For each IMAGE the command preprocesses it for the network, fits or builds the sampler on a
pool of other images, runs :func:`preddiff.prediction_difference` (with a checkpoint next to
the output, so an interrupted run resumes), and writes

- ``OUT/<name>_<model>.npz`` — :meth:`preddiff.Explanation.save`: the relevance of every unit
  of the blob (stored as float32), the clean outputs, the window counts, the input, every
  parameter, timings, and in ``metadata`` the model, its weights' sha1, the package version,
  the labels of the top classes and the command line;
- ``OUT/<name>_<model>.png`` — the input, the signed heatmap of each top class (red: evidence
  for, blue: against, white: 0) and its overlay on the image;

and prints the top classes with their probabilities and the time taken.

Models: ``lenet`` (the default; bundled weights and digits, no network needed), the Caffe zoo
nets ``alexnet``, ``googlenet``, ``vgg16`` (weights from ``preddiff models fetch NAME``), or an
ONNX file. For an ONNX file the preprocessing is only: RGB (or gray for a 1-channel input),
scaled to [0, 1], resized to the input size — no mean subtraction, no channel swap; the input
size comes from the model or, when the model leaves it free, from ``--input-size``.

IMAGE is an image file, or ``digits:N`` for the N-th bundled digit (LeNet or a 1-channel ONNX
model).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ORDER = 30

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
ZOO_COLOUR = ("alexnet", "googlenet", "vgg16")


def register(subparsers) -> None:
    """Add the ``explain`` sub-command."""
    p = subparsers.add_parser(
        "explain",
        help="explain a classifier's decision on images (prediction difference analysis)",
        description="Prediction difference analysis (Zintgraf et al. 2017, Algorithm 1): slide "
        "a window over the image, replace it by samples, and average the weight of evidence "
        "of each class over the windows covering each pixel. Writes <name>_<model>.npz and "
        ".png per image into --out. Without --model: the bundled LeNet and digits, offline.",
        epilog="examples: preddiff explain digits:7 --window 4 | preddiff explain cat.jpg "
        "--model alexnet | preddiff explain img.png --model net.onnx --input-size 64x64",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image file, or digits:N for a bundled digit")
    p.add_argument("--model", default="lenet",
                   help="lenet (default), alexnet, googlenet, vgg16, or a FILE.onnx")
    p.add_argument("--sampler", choices=("conditional", "marginal"), default="conditional",
                   help="conditional (Gaussian on the patch around the window; default) or "
                   "marginal (the window from other images)")
    p.add_argument("--window", type=int, default=None,
                   help="window size k (default 10; 4 for LeNet)")
    p.add_argument("--padding", type=int, default=2,
                   help="conditional sampler: padding l around the window (default 2)")
    p.add_argument("--samples", type=int, default=10,
                   help="samples S per window (default 10, the released code; the paper: 20)")
    p.add_argument("--stride", type=int, default=1,
                   help="window stride (default 1; --stride k: non-overlapping windows)")
    p.add_argument("--blob", default=None,
                   help="blob to explain (default: the probability output, e.g. prob)")
    p.add_argument("--top", type=int, default=3, help="classes to plot and print (default 3)")
    p.add_argument("--pool", type=Path, default=None, metavar="DIR",
                   help="images the samplers learn from (default: the bundled images; for "
                   "LeNet the digits other than the explained one)")
    p.add_argument("--colour", choices=("per-channel", "joint"), default="per-channel",
                   help="conditional sampler: one Gaussian per channel (released code; "
                   "default) or one over all channels (paper text)")
    p.add_argument("--patches", type=int, default=25000,
                   help="conditional sampler: patches to fit on (default 25000)")
    p.add_argument("--order", choices=("random", "first"), default="random",
                   help="marginal sampler: random pool images per window (default), or the "
                   "first S (released code)")
    p.add_argument("--policy", choices=("crop", "resize"), default="crop",
                   help="zoo nets: centre crop without resizing (released code; default) or "
                   "resize to 256 then crop")
    p.add_argument("--input-size", default=None, metavar="HxW",
                   help="ONNX file with a free input size: the size to resize images to")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="images per classifier call (default 256)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="onnxruntime device (default: CUDA when available)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="onnxruntime CPU threads (default: one per core)")
    p.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                   help="output folder (default: the current folder)")
    p.add_argument("--no-checkpoint", action="store_true",
                   help="do not save progress (by default OUT/<name>_<model>.ckpt.npz, "
                   "deleted after success; a rerun with the same arguments resumes from it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--incremental", choices=("auto", "on", "off"), default="auto",
                   help="exact incremental inference: auto (default) = when the network allows "
                   "it and a few batches timed both ways on this machine (cached per model) "
                   "show a gain; on = whenever the network allows it; off = full images")
    p.add_argument("--no-incremental", action="store_true",
                   help="the same as --incremental off")
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------------------------
# models


@dataclass
class _Model:
    name: str                        # zoo name, or the ONNX file's stem
    classifier: object
    blob: str
    probability: bool
    input_shape: tuple               # (C, H, W)
    preprocess: Callable             # (image (H, W[, 3]), what=name) -> x (C, H, W) float32
    deprocess: Callable              # x -> (H, W, 3) RGB in [0, 1], for display
    labels: list
    sha1: str
    default_pool: Callable           # exclude -> pool (M, C, H, W)
    extra: dict = field(default_factory=dict)


def _zoo_model(name: str, args) -> _Model:
    from .. import zoo
    from ..classifier import OnnxClassifier
    from ..images import default_pool
    from ..preprocess import Preprocessor

    m = zoo.manifest(name)
    blob = args.blob or m.output
    onnx_file = zoo.ensure_onnx(name)
    classifier = OnnxClassifier(onnx_file, outputs=[blob], batch_size=_batch_size(args),
                                device=args.device, threads=args.threads)
    pre = Preprocessor(m, policy=args.policy)
    return _Model(
        name=name, classifier=classifier, blob=blob, probability=blob == m.output,
        input_shape=tuple(m.input_shape),
        preprocess=lambda image, what="image": pre(image, what=what),
        deprocess=pre.deprocess, labels=list(m.labels), sha1=m.sha1,
        default_pool=lambda exclude: default_pool(name, policy=args.policy, exclude=exclude),
        extra={"policy": args.policy, "onnx": str(onnx_file)})


def _onnx_model(path: Path, args) -> _Model:
    import numpy as np

    from ..classifier import OnnxClassifier, _load_model as _load_onnx
    from ..errors import InvalidArgument
    from ..images import example_images
    from ..zoo import file_sha1

    if not path.is_file():
        raise InvalidArgument(f"--model {str(path)!r}: no such ONNX file (or use lenet, "
                              f"alexnet, googlenet, vgg16)")
    model, _ = _load_onnx(path)  # PredDiffError (one line) for a file that is not ONNX
    softmax_outputs = [o for n in model.graph.node if n.op_type == "Softmax" for o in n.output]
    graph_outputs = [o.name for o in model.graph.output]
    if args.blob is None and not graph_outputs:
        raise InvalidArgument(f"{path} has no graph outputs; name the blob with --blob")
    # default: the probability output (a graph output produced by a Softmax node), else the
    # first graph output
    blob = args.blob or next((o for o in graph_outputs if o in softmax_outputs),
                             graph_outputs[0] if graph_outputs else None)
    classifier = OnnxClassifier(model, outputs=[blob], batch_size=_batch_size(args),
                                device=args.device, threads=args.threads)
    classifier.source = str(path)
    channels, height, width = classifier.input_shape
    if channels not in (1, 3):
        raise InvalidArgument(f"{path} takes {channels} channels; preddiff explain handles "
                              "1 (gray) or 3 (RGB) channel images")
    size = _parse_size(args.input_size) if args.input_size else None
    if height is None or width is None:
        if size is None:
            raise InvalidArgument(f"{path} leaves its input size free: give --input-size HxW")
        height, width = size
    elif size is not None and size != (height, width):
        raise InvalidArgument(f"--input-size {size[0]}x{size[1]} differs from the model's "
                              f"input {height}x{width}")
    # a probability blob: produced by a Softmax node (its weight of evidence is meaningful)
    softmax = blob in softmax_outputs

    def preprocess(image, what="image"):
        from skimage.color import rgb2gray
        from skimage.transform import resize

        image = np.asarray(image)
        image = image.astype(np.float64) / 255.0 if image.dtype == np.uint8 \
            else image.astype(np.float64)
        if channels == 1 and image.ndim == 3:
            image = rgb2gray(image[:, :, :3])
        if channels == 3 and image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        image = image.reshape(image.shape[0], image.shape[1], -1)[:, :, :channels]
        if image.shape[:2] != (height, width):
            image = resize(image, (height, width), order=1, anti_aliasing=True)
        return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)

    def deprocess(x):
        image = np.clip(np.moveaxis(np.asarray(x, np.float32), 0, -1), 0, 1)
        return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image

    def default_pool(exclude):
        if channels == 1:
            from ..digits import load_digits

            images = [np.asarray(d[0]) for i, d in enumerate(load_digits()[0]) if i != exclude]
        else:
            images = [im for key, im in example_images().items() if key != exclude]
        return np.stack([preprocess(im) for im in images])

    return _Model(name=path.stem, classifier=classifier, blob=blob, probability=softmax,
                  input_shape=(channels, height, width), preprocess=preprocess,
                  deprocess=deprocess, labels=[], sha1=file_sha1(path),
                  default_pool=default_pool, extra={"onnx": str(path)})


def _load_model(args) -> _Model:
    from .. import zoo

    if args.model in zoo.MODEL_NAMES:
        return _zoo_model(args.model, args)
    return _onnx_model(Path(args.model), args)


def _parse_size(text: str) -> tuple[int, int]:
    from ..errors import InvalidArgument

    parts = text.lower().replace(",", "x").split("x")
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        raise InvalidArgument(f"--input-size {text!r}: expected HxW, e.g. 64x64") from None
    if height < 1 or width < 1:
        raise InvalidArgument(f"--input-size {text!r}: sizes must be positive")
    return height, width


def _batch_size(args, incremental: bool = False) -> int:
    """Images per classifier call: the user's, else 256 (1000 with incremental inference,
    whose per-call overhead is larger and which batches windows of equal changed regions)."""
    if args.batch_size is not None:
        return args.batch_size
    return 1000 if incremental else 256


def _use_incremental(model: _Model, args, window: int) -> str:
    """Swap ``model.classifier`` for an :class:`~preddiff.incremental.IncrementalClassifier`
    when the graph allows it and, with ``--incremental auto``, a few batches timed both ways
    on this machine show it is faster (:func:`preddiff.incremental_decision.
    decide_incremental`, cached per model and machine); the batch size of the engine kept is
    the fastest measured unless ``--batch-size`` is given. Returns a one-line note.

    Any failure while planning or measuring (a graph onnxruntime or the planner cannot handle)
    keeps the plain classifier, with the reason in the note and the log."""
    if args.no_incremental:
        return "incremental inference off (--no-incremental)"
    if args.incremental == "off":
        return "incremental inference off (--incremental off)"
    import logging

    import numpy as np

    from ..incremental_decision import decide_incremental
    from ..incremental_plan import load_model

    try:
        source = load_model(model.extra["onnx"])
        # timing hardly depends on the values: a seeded image of the input's size
        x = np.random.default_rng(args.seed).normal(size=model.input_shape).astype(np.float32)
        decision = decide_incremental(source, x, window, args.incremental,
                                      outputs=[model.blob], device=args.device,
                                      threads=args.threads, batch_size=args.batch_size,
                                      samples=args.samples, seed=args.seed)
    except Exception as exc:  # noqa: BLE001 - the plain classifier is always a safe choice
        why = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        logging.getLogger(__name__).warning("incremental inference off, evaluating full "
                                            "images: %s", why)
        return f"incremental inference off: it could not be planned ({why})"
    if decision.use:
        model.classifier = decision.classifier
    elif args.batch_size is None:
        model.classifier.batch_size = decision.batch_size
    return decision.message


# ----------------------------------------------------------------------------------------------
# images and pools


def _load_input(spec: str, model: _Model):
    """IMAGE argument → (name, x, pool exclusion key, source path or None)."""
    from ..errors import InvalidArgument
    from ..preprocess import load_image

    if spec.startswith("digits:"):
        from ..digits import digit

        if model.input_shape[0] != 1:
            raise InvalidArgument(f"{spec}: bundled digits are gray 28x28 images, for LeNet "
                                  f"or a 1-channel ONNX model, not {model.name}")
        try:
            index = int(spec.split(":", 1)[1])
        except ValueError:
            raise InvalidArgument(f"{spec!r}: expected digits:N with an integer N") from None
        image, _ = digit(index)
        return f"digit{index}", model.preprocess(image[0]), index, None
    path = Path(spec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = model.preprocess(load_image(path), what=str(path))
    notes = [" ".join(str(w.message).split()) for w in caught
             if issubclass(w.category, UserWarning)]
    gray_file = any("is grayscale" in note for note in notes)
    if not (gray_file and model.input_shape[0] == 1):
        # a conversion happened (gray → RGB, RGBA → RGB, colour → gray): say so, one line
        # each; a gray file for a gray network (read as RGB, then back to gray) is no news
        for note in notes:
            print(f"preddiff: note: {note}", file=sys.stderr)
    return path.stem, x, path.stem, path.resolve()


def _pool(args, model: _Model, exclude, source) -> "np.ndarray":
    import numpy as np

    from ..errors import InvalidArgument
    from ..preprocess import load_image

    if args.pool is None:
        if model.name == "lenet" or model.input_shape[0] == 1:
            exclude = exclude if isinstance(exclude, int) else None
        else:
            from ..images import example_images

            exclude = exclude if exclude in example_images() else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return model.default_pool(exclude)
    if not args.pool.is_dir():
        raise InvalidArgument(f"--pool {str(args.pool)!r} is not a folder")
    files = sorted(p for p in args.pool.iterdir()
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.resolve() != source)
    pool = []
    for path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pool.append(model.preprocess(load_image(path)))
        except InvalidArgument as exc:
            reason = " ".join(str(exc).split())
            print(f"preddiff: warning: {path.name} left out of the pool: {reason}",
                  file=sys.stderr)
    if not pool:
        raise InvalidArgument(f"--pool {str(args.pool)!r} holds no usable images (other than "
                              "the one explained)")
    return np.stack(pool)


def _sampler(args, pool, window):
    from ..samplers import ConditionalGaussianSampler, MarginalSampler

    if args.sampler == "marginal":
        return MarginalSampler(pool, order=args.order)
    return ConditionalGaussianSampler.fit(pool, window, args.padding, colour=args.colour,
                                          num_patches=args.patches, clip=True, rng=args.seed)


# ----------------------------------------------------------------------------------------------
# output


def _unit_names(model: _Model, explanation) -> list[str]:
    units = explanation.relevance[model.blob].shape[0]
    if model.labels and len(model.labels) == units:
        return model.labels
    kind = "class" if model.probability else "unit"
    return [f"{kind} {i}" for i in range(units)]


def _figure(model: _Model, explanation, top, names, stem: Path) -> Path:
    from .. import plot

    relevance = explanation.relevance[model.blob]
    maps = {f"{names[i]}": relevance[i] for i, _ in top}
    values = {f"{names[i]}": v for i, v in top}
    title = (f"{model.name}: {model.blob}, k={explanation.window[0]}x{explanation.window[1]}, "
             f"stride {explanation.stride}, S={explanation.num_samples}, "
             f"{explanation.sampler['name']}")
    fig = plot.explanation_figure(model.deprocess(explanation.x), maps, values,
                                  value_label="p" if model.probability else model.blob,
                                  suptitle=title)
    return plot.save_figure(fig, stem, formats=("png",))[0]


def run(args: argparse.Namespace) -> int:
    """Explain each image; print the top classes and where the results went."""
    import numpy as np

    from .. import __version__, prediction_difference
    from ..errors import InvalidArgument
    from ..windows import window_grid

    if args.top < 1:
        raise InvalidArgument(f"--top must be at least 1, got {args.top}")
    if args.window is not None and args.window < 1:
        raise InvalidArgument(f"--window must be a positive integer, got {args.window}")
    if args.batch_size is not None and args.batch_size < 1:
        raise InvalidArgument(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.out.exists() and not args.out.is_dir():
        raise InvalidArgument(f"--out {str(args.out)!r} is a file; give a folder")
    from .. import zoo

    if args.input_size is not None and args.model in zoo.MODEL_NAMES:
        raise InvalidArgument(f"--input-size applies to ONNX files only; {args.model} takes "
                              f"{'x'.join(map(str, zoo.manifest(args.model).input_shape[1:]))} "
                              "inputs")
    model = _load_model(args)
    window = args.window if args.window is not None else (4 if model.input_shape[0] == 1 else 10)
    window_grid(model.input_shape[1:], window, args.stride)  # a bad window fails first
    note = _use_incremental(model, args, window)
    incremental = bool(getattr(model.classifier, "incremental", False))
    args.out.mkdir(parents=True, exist_ok=True)
    for spec in args.images:
        started = time.perf_counter()
        name, x, exclude, source = _load_input(spec, model)
        window_grid(x.shape[1:], window, args.stride)  # a bad window fails before the fit
        pool = _pool(args, model, exclude, source)
        sampler = _sampler(args, pool, window)
        stem = args.out / f"{name}_{model.name}"
        checkpoint = None if args.no_checkpoint else stem.with_name(stem.name + ".ckpt.npz")
        explanation = prediction_difference(
            x, model.classifier, sampler, window=window, stride=args.stride,
            num_samples=args.samples, blobs=(model.blob,),
            probability_blobs=(model.blob,) if model.probability else (),
            batch_size=_batch_size(args, incremental), rng=args.seed, checkpoint=checkpoint,
            keep_checkpoint=True, progress=not args.no_progress)
        names = _unit_names(model, explanation)
        top = explanation.top_classes(model.blob, args.top)
        explanation.metadata.update({
            "image": spec, "model": model.name, "model_sha1": model.sha1,
            "blob": model.blob, "preddiff_version": __version__, "pool_size": int(len(pool)),
            "padding": args.padding if args.sampler == "conditional" else None,
            "top": [[i, names[i], v] for i, v in top], "argv": sys.argv[1:],
            "seconds_with_sampler_fit": time.perf_counter() - started,
            "provider": getattr(model.classifier, "provider", None), "incremental": note,
            **model.extra,
        })
        npz = stem.with_name(stem.name + ".npz")
        explanation.save(npz, dtype=np.float32)
        png = _figure(model, explanation, top, names, stem)
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)
        seconds = time.perf_counter() - started
        label = "p" if model.probability else model.blob
        tops = ", ".join(f"{names[i]} ({label}={v:.3f})" for i, v in top)
        print(f"{spec}: {tops}")
        provider = getattr(model.classifier, "provider", None) or "?"
        print(f"  {seconds:.1f} s (classifier {explanation.timings['classifier']:.1f} s on "
              f"{provider.replace('ExecutionProvider', '')}; {note}); wrote {npz} and {png}")
    return 0
