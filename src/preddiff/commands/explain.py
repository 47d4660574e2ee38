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
ONNX file. For an ONNX file the preprocessing is (:class:`preddiff.preprocess.OnnxPreprocessor`):
RGB (or gray for a 1-channel input) scaled to [0, 1], fitted to the input size (``--resize
crop``: torchvision's resize-and-centre-crop, the default; ``--resize stretch``), and
normalised per channel when ``--mean``/``--std`` or ``--normalize imagenet`` is given; no
channel swap. The input size comes from the model or, when the model leaves it free, from
``--input-size``. ``--labels FILE`` (one name a line) or ``--labels imagenet`` names its
classes.

Output size: the ``.npz`` keeps the maps of the classes shown (``--top``) and of those named
with ``--classes``, compressed (a few MB for a 224×224 ImageNet explanation); ``--save-all``
keeps every class (200 MB for 1000 classes at 224×224).

IMAGE is an image file, or ``digits:N`` for the N-th bundled digit (LeNet or a 1-channel ONNX
model).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ORDER = 30

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
ZOO_COLOUR = ("alexnet", "googlenet", "vgg16")


#: Classes whose maps are plotted, printed and kept in the ``.npz`` by default (``--top``).
DEFAULT_TOP = 3
#: Classes drawn in the figure at most (two panels each; 1000 classes would take minutes);
#: the ``.npz`` keeps the maps of every class asked for.
MAX_FIGURE_CLASSES = 20

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
    p.add_argument("--padding", type=int, default=None,
                   help="conditional sampler: padding l around the window (default 2)")
    p.add_argument("--samples", type=int, default=10,
                   help="samples S per window (default 10, the released code; the paper: 20)")
    p.add_argument("--stride", type=int, default=1,
                   help="window stride (default 1; --stride k: non-overlapping windows)")
    p.add_argument("--blob", default=None,
                   help="blob to explain (default: the probability output, e.g. prob)")
    p.add_argument("--top", type=int, default=DEFAULT_TOP,
                   help="classes to plot and print (default %(default)s)")
    p.add_argument("--pool", type=Path, default=None, metavar="DIR",
                   help="images the samplers learn from (default: the bundled images; for "
                   "LeNet the digits other than the explained one)")
    p.add_argument("--colour", choices=("per-channel", "joint"), default=None,
                   help="conditional sampler: one Gaussian per channel (released code; "
                   "default) or one over all channels (paper text)")
    p.add_argument("--patches", type=int, default=None,
                   help="conditional sampler: patches to fit on (default 25000)")
    p.add_argument("--order", choices=("random", "first"), default=None,
                   help="marginal sampler: random pool images per window (default), or the "
                   "first S (released code)")
    p.add_argument("--compat", choices=("intended", "released"), default="intended",
                   help="released: reproduce the released code's numbers (first-S marginal, "
                   "its patch drawing and shared colour conditionals, the regular window grid "
                   "without edge windows, float16 relevance; see the README); default: "
                   "intended")
    p.add_argument("--policy", choices=("crop", "resize"), default=None,
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
    p.add_argument("--classes", default=None, metavar="C1,C2",
                   help="classes (indices, or names when labels are known) to plot, print "
                   "and keep in the .npz besides the --top ones")
    p.add_argument("--save-all", action="store_true",
                   help="keep the maps of every class in the .npz (default: the --top classes "
                   "and --classes only)")
    g = p.add_argument_group("ONNX files (--model FILE.onnx)")
    g.add_argument("--labels", default=None, metavar="FILE|imagenet",
                   help="class names, one a line in output order; 'imagenet': the 1000 "
                   "ILSVRC-2012 names the package ships")
    g.add_argument("--resize", choices=("crop", "stretch"), default=None,
                   help="fit images to the input: crop (default; resize keeping the aspect "
                   "ratio so the input is 87.5%% of it, then centre crop: torchvision's "
                   "Resize(256)+CenterCrop(224)) or stretch (the whole image, distorted)")
    g.add_argument("--mean", default=None, metavar="R,G,B",
                   help="subtract this per-channel mean (on the [0, 1] scale) before the "
                   "network, for models that do not normalise inside the graph")
    g.add_argument("--std", default=None, metavar="R,G,B",
                   help="then divide by this per-channel standard deviation")
    g.add_argument("--normalize", choices=("imagenet",), default=None,
                   help="imagenet: --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 "
                   "(torchvision)")
    p.add_argument("--incremental", choices=("auto", "on", "off"), default="auto",
                   help="exact incremental inference: auto (default) = when the network allows "
                   "it and a few batches timed both ways on this machine (cached per model) "
                   "show a gain; on = whenever the network allows it; off = full images")
    p.add_argument("--no-incremental", action="store_true",
                   help="the same as --incremental off")
    from ..cluster import add_arguments as add_cluster_arguments

    add_cluster_arguments(p)  # --workers N | --scheduler ADDRESS (preddiff.cluster)
    p.set_defaults(func=_run_with_locks)


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
    preprocessor: object = None      # OnnxPreprocessor of an ONNX file (its last_fit is printed)


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
                                device=args.device, threads=args.threads, name=str(path))
    channels, height, width = classifier.input_shape
    if channels not in (1, 3):
        shape = ", ".join("?" if d is None else str(d) for d in classifier.input_shape)
        layout = (f"it looks channels-last (N, H, W, C) with {width} channels; "
                  if width in (1, 3) else "")
        raise InvalidArgument(
            f"{path}: input {classifier.input_name!r} has shape (N, {shape}): {layout}"
            "preddiff explain needs a channels-first input (N, C, H, W) with C = 1 (gray) or "
            "3 (RGB); export the model with that layout (e.g. a Transpose at its input)")
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
    pre = _onnx_preprocessor(args, (channels, height, width))

    def preprocess(image, what="image"):
        return pre(image, what=what)

    def default_pool(exclude):
        if channels == 1:
            from ..digits import load_digits

            images = [np.asarray(d[0]) for i, d in enumerate(load_digits()[0]) if i != exclude]
        else:
            images = [im for key, im in example_images().items() if key != exclude]
        return np.stack([preprocess(im) for im in images])

    return _Model(name=path.stem, classifier=classifier, blob=blob, probability=softmax,
                  input_shape=(channels, height, width), preprocess=preprocess,
                  deprocess=pre.deprocess, labels=_read_labels(args.labels),
                  sha1=file_sha1(path), default_pool=default_pool,
                  extra={"onnx": str(path), "preprocessing": pre.describe()},
                  preprocessor=pre)


def _onnx_preprocessor(args, input_shape):
    from ..errors import InvalidArgument
    from ..preprocess import NORMALIZATIONS, OnnxPreprocessor, parse_channel_values

    channels = input_shape[0]
    mean = std = None
    if args.normalize is not None:
        if args.mean is not None or args.std is not None:
            raise InvalidArgument(f"--normalize {args.normalize} sets the mean and std; give "
                                  "either --normalize or --mean/--std")
        mean, std = NORMALIZATIONS[args.normalize]
        if channels == 1:
            raise InvalidArgument(f"--normalize {args.normalize} is for RGB inputs; this model "
                                  "takes 1 channel: give --mean and --std")
    if args.mean is not None:
        mean = parse_channel_values(args.mean, channels, "--mean")
    if args.std is not None:
        std = parse_channel_values(args.std, channels, "--std")
    return OnnxPreprocessor(input_shape, resize=args.resize or "crop", mean=mean, std=std)


def _read_labels(spec) -> list:
    """``--labels``: a file with one name a line, or ``imagenet`` (the bundled ILSVRC names)."""
    from ..errors import InvalidArgument

    if spec is None:
        return []
    if spec == "imagenet":
        from .. import zoo

        return list(zoo.manifest("alexnet").labels)
    path = Path(spec)
    if not path.is_file():
        raise InvalidArgument(f"--labels {spec!r}: no such file (give a text file with one "
                              "class name a line, or 'imagenet')")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"--labels {spec!r}: cannot read it as UTF-8 text "
                              f"({type(exc).__name__})") from None
    labels = [line.strip() for line in lines]
    while labels and not labels[-1]:
        labels.pop()
    if not labels:
        raise InvalidArgument(f"--labels {spec!r} is empty; expected one class name a line")
    return labels


def _available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux: MemAvailable), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def _check_batch_memory(args, shape) -> None:
    """Refuse, before any work, a run whose batch of perturbed float32 images cannot fit in
    the memory available (the network's own activations come on top). A batch holds whole
    windows: at least the ``--samples`` images of one window, whatever ``--batch-size``."""
    from ..errors import InvalidArgument

    available = _available_memory()
    channels, height, width = shape
    batch = _batch_size(args)
    images = max(batch, int(args.samples))
    need = (images + 2) * channels * height * width * 4  # the batch, the image, its copy
    if available is None or need <= available:
        return
    knobs = ["--samples" if images > batch else "--batch-size"]
    if 3 * channels * height * width * 4 > available:
        knobs = []
    if args.input_size is not None:
        knobs.insert(0, "--input-size")
    why = " (the samples of one window, --samples)" if images > batch else ""
    prefix = f"--input-size {height}x{width}: " if args.input_size is not None else ""
    raise InvalidArgument(
        f"{prefix}a batch of {images} images of {channels}x{height}x{width} float32{why} "
        f"needs at least {_gib(need)} of memory, and {_gib(available)} is available; give a "
        f"smaller {' or '.join(knobs) or '--samples'}")


def _gib(count: int) -> str:
    return f"{count / 2**30:,.1f} GiB"


def _load_model(args) -> _Model:
    from .. import zoo

    if args.model in zoo.MODEL_NAMES:
        return _zoo_model(args.model, args)
    return _onnx_model(Path(args.model), args)


#: Options that apply to one sampler or to the zoo nets only, and their defaults.
SAMPLER_OPTIONS = {"conditional": {"padding": 2, "colour": "per-channel", "patches": 25000},
                   "marginal": {"order": "random"}}
ZOO_OPTIONS = {"policy": "crop"}


def _options_that_apply(args) -> None:
    """Say when an option is given where it has no effect: a sampler's options with the other
    sampler (a warning: scripts switch samplers), ``--policy`` with an ONNX file (an error,
    as ``--input-size`` with a zoo net); fill in the defaults."""
    from .. import zoo
    from ..errors import InvalidArgument

    for sampler, options in SAMPLER_OPTIONS.items():
        for name, default in options.items():
            if getattr(args, name) is not None and args.sampler != sampler:
                print(f"preddiff: warning: --{name} applies to the {sampler} sampler only: "
                      f"ignored with --sampler {args.sampler}", file=sys.stderr)
            if getattr(args, name) is None:
                setattr(args, name, default)
    if args.policy is not None and args.model not in zoo.MODEL_NAMES:
        raise InvalidArgument(f"--policy applies to the zoo nets ({', '.join(zoo.MODEL_NAMES)}) "
                              f"only; images for {args.model} are fitted to its input size "
                              "with --resize crop|stretch")
    args.policy = args.policy or ZOO_OPTIONS["policy"]
    if args.model in zoo.MODEL_NAMES:
        given = [f"--{name}" for name in ("labels", "resize", "mean", "std", "normalize")
                 if getattr(args, name) is not None]
        if given:
            raise InvalidArgument(
                f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to ONNX files "
                f"only; {args.model} has its own labels and preprocessing (--policy)")


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
    input_dtype = getattr(model.classifier, "_input_dtype", None)
    if input_dtype is not None and input_dtype().dtype.name != "float32":
        return (f"incremental inference off: the model's input is "
                f"{input_dtype().dtype.name} (cast from float32)")
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
        index = _digit_index(spec)
        image, _ = digit(index)
        return f"digit{index}", model.preprocess(image[0]), index, None
    path = Path(spec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = model.preprocess(load_image(path), what=str(path))
    notes = [" ".join(str(w.message).split()) for w in caught
             if issubclass(w.category, UserWarning)]
    gray_file = any("is grayscale" in note for note in notes)
    if gray_file and model.input_shape[0] == 1:
        # a gray file for a gray network (read as RGB, then back to gray) is no news
        notes = [n for n in notes if "is grayscale" not in n and "is in colour" not in n]
    # a conversion happened (gray → RGB, RGBA → RGB, colour → gray, EXIF orientation,
    # CMYK, a large image box-filtered): say so, one line each
    fit = getattr(model.preprocessor, "last_fit", None)
    if fit:  # the resize of a user's ONNX model: which policy, from what size
        notes.append(f"{path}: {fit}")
    for note in notes:
        print(f"preddiff: note: {note}", file=sys.stderr)
    return path.stem, x, path.stem, path.resolve()


def _read_inputs(specs, model: _Model) -> list[tuple]:
    """Read and preprocess every IMAGE before any work starts, each output name unique.

    Returns ``[(spec, name, x, exclude, source), ...]`` (an IMAGE given twice once). Inputs
    with the same stem (``ok.png ok.jpg``) get the extension in their name (``ok-png``,
    ``ok-jpg``; a number when that is not enough), with a note. Every unusable input is
    reported in one error, before anything is computed."""
    from ..errors import InvalidArgument

    jobs, problems = [], []
    for spec in dict.fromkeys(specs):
        try:
            jobs.append([spec, *_load_input(spec, model)])
        except (InvalidArgument, OSError) as exc:
            problems.append(" ".join(str(exc).split()))
    if problems:
        raise InvalidArgument(f"{len(problems)} of {len(set(specs))} images cannot be explained "
                              f"(nothing was computed): {'; '.join(problems)}")
    counts = Counter(job[1] for job in jobs)
    taken = set()
    for job in jobs:
        spec, stem = job[0], job[1]
        name = stem
        if counts[stem] > 1 and not spec.startswith("digits:") and Path(spec).suffix:
            name = f"{stem}-{Path(spec).suffix.lstrip('.')}"
        base, number = name, 2
        while name in taken:
            name, number = f"{base}-{number}", number + 1
        if name != stem:
            print(f"preddiff: note: {spec} has the same name as another image: its results "
                  f"are {name}_{model.name}.npz and .png", file=sys.stderr)
        taken.add(name)
        job[1] = name
    return [tuple(job) for job in jobs]


def _claim_outputs(out: Path, names):
    """Check ``out`` is writable and lock each ``out/<name>`` against a concurrent run."""
    from ..lock import claim_outputs

    return claim_outputs(out, [out / name for name in names])


def _run_with_locks(args: argparse.Namespace) -> int:
    """:func:`run`, releasing the output locks it took however it ends."""
    try:
        return run(args)
    finally:
        claim = getattr(args, "claim", None)
        if claim is not None:
            claim.release()


def _digit_index(spec: str) -> int:
    """``digits:N`` → N, which must name one of the bundled digits (no negative indices)."""
    from ..digits import load_digits
    from ..errors import InvalidArgument

    count = len(load_digits()[0])
    text = spec.split(":", 1)[1]
    try:
        index = int(text)
    except ValueError:
        raise InvalidArgument(f"{spec!r}: expected digits:N with an integer N in "
                              f"0..{count - 1}") from None
    if not 0 <= index < count:
        raise InvalidArgument(f"{spec!r}: N is out of range; use 0..{count - 1} (there are "
                              f"{count} bundled digits)")
    return index


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
    from ..compat import settings
    from ..samplers import ConditionalGaussianSampler, MarginalSampler

    released = settings(getattr(args, "compat", "intended"))  # --compat overrides the options
    if args.sampler == "marginal":
        return MarginalSampler(pool, order=released.get("marginal_order", args.order))
    return ConditionalGaussianSampler.fit(
        pool, window, args.padding, colour=released.get("colour", args.colour),
        num_patches=released.get("num_patches", args.patches), clip=True, rng=args.seed,
        patches=released.get("patches", "random"))


# ----------------------------------------------------------------------------------------------
# output


def _resumable(checkpoint) -> bool:
    """Whether a checkpoint with finished windows is there to resume from (checked before the
    run). A file that records none is not resumed from (the engine starts afresh); one that
    cannot be read is left to the engine, which says so."""
    import json

    import numpy as np

    if checkpoint is None or not checkpoint.is_file():
        return False
    try:
        with np.load(checkpoint, allow_pickle=False) as data:
            return int(json.loads(str(data["meta"]))["done"]) > 0
    except Exception:  # noqa: BLE001 - reported by the engine
        return False


def _say_resumed(checkpoint) -> None:
    """Say on stderr that the run resumed (also without a progress bar, which would show the
    windows already done)."""
    print(f"preddiff: note: resumed from {checkpoint}: the windows finished by the earlier "
          "run were not computed again", file=sys.stderr)


def _time_text(seconds: float, explanation, resumed: bool, together: int = 0) -> str:
    """``"12.3 s (classifier 10.1 s"``; for a resumed run the times over all its runs, so
    that the classifier's share does not look larger than the whole. ``together``: the number
    of images a cluster computed at once (their time is the cluster run's, shared)."""
    timings = explanation.timings
    shared = f" for the {together} images together" if together > 1 else ""
    if not resumed:
        return f"{seconds:.1f} s{shared} (classifier {timings['classifier']:.1f} s"
    return (f"{seconds:.1f} s this run{shared}, resumed (over all runs: prediction difference "
            f"{timings['total']:.1f} s, classifier {timings['classifier']:.1f} s")


def _unit_names(model: _Model, units: int) -> list[str]:
    if model.labels and len(model.labels) == units:
        return model.labels
    kind = "class" if model.probability else "unit"
    return [f"{kind} {i}" for i in range(units)]


def _count_units(model: _Model, x) -> int:
    """Units (classes) of the explained blob, from one forward pass of the image."""
    import numpy as np

    out = np.asarray(model.classifier(x[None])[model.blob])
    return int(out.shape[1]) if out.ndim >= 2 else 1


def _check_output(model: _Model, x) -> None:
    """Refuse, before any work, a blob with no unit axis: one forward pass of the first image.

    A model whose output is one value per image, shape (N,), would be computed in full and
    then fail when its classes are ranked (issue 19)."""
    import numpy as np

    from ..errors import InvalidArgument

    shape = np.shape(model.classifier(x[None])[model.blob])
    if len(shape) < 2:
        raise InvalidArgument(
            f"blob {model.blob!r} of {model.name} has shape {shape} for one image: one value "
            "per image, without a class axis; preddiff explain needs an output of shape "
            "(N, classes) or (N, C, H, W): give the model an (N, 1) output (e.g. an Unsqueeze "
            "node), or name another blob with --blob")


def _parse_classes(text, names: list[str], units: int, labelled: bool) -> list[int]:
    """``--classes 281,tiger cat`` → unit indices (names need labels)."""
    from ..errors import InvalidArgument

    if text is None:
        return []
    index = {name: i for i, name in enumerate(names)} if labelled else {}
    chosen = []
    for item in (part.strip() for part in str(text).split(",")):
        if not item:
            continue
        if item.lstrip("-").isdigit():
            unit = int(item)
        elif item in index:
            unit = index[item]
        else:
            hint = ("a class index or a name from --labels" if labelled else
                    "a class index (names need labels: --labels FILE|imagenet)")
            raise InvalidArgument(f"--classes: unknown class {item!r}; give {hint}")
        if not 0 <= unit < units:
            raise InvalidArgument(f"--classes: class {unit} is out of range; the blob has "
                                  f"{units} units (0-{units - 1})")
        if unit not in chosen:
            chosen.append(unit)
    return chosen


def _figure(model: _Model, explanation, top, names, stem: Path) -> Path:
    from .. import plot

    if len(top) > MAX_FIGURE_CLASSES:
        print(f"preddiff: note: the figure shows the first {MAX_FIGURE_CLASSES} of the "
              f"{len(top)} classes asked for (--top, --classes); the .npz holds all their maps",
              file=sys.stderr)
        top = top[:MAX_FIGURE_CLASSES]
    maps = {f"{names[i]}": explanation.relevance_of(model.blob, i) for i, _ in top}
    values = {f"{names[i]}": v for i, v in top}
    title = (f"{model.name}: {model.blob}, k={explanation.window[0]}x{explanation.window[1]}, "
             f"stride {explanation.stride}, S={explanation.num_samples}, "
             f"{explanation.sampler['name']}")
    fig = plot.explanation_figure(model.deprocess(explanation.x), maps, values,
                                  value_label="p" if model.probability else model.blob,
                                  suptitle=title)
    return plot.save_figure(fig, stem, formats=("png",))[0]


def _prepare_image(args, model: _Model, spec: str, window: int, loaded=None):
    """IMAGE argument → (name, x, pool, fitted sampler, output stem, checkpoint or None).

    ``loaded``: the image as :func:`_read_inputs` read it, ``(name, x, exclude, source)``."""
    from ..windows import window_grid

    name, x, exclude, source = loaded or _load_input(spec, model)
    window_grid(x.shape[1:], window, args.stride)  # a bad window fails before the fit
    pool = _pool(args, model, exclude, source)
    sampler = _sampler(args, pool, window)
    stem = args.out / f"{name}_{model.name}"
    checkpoint = None if args.no_checkpoint else stem.with_name(stem.name + ".ckpt.npz")
    return name, x, pool, sampler, stem, checkpoint


def _engine_kwargs(args, model: _Model, window: int) -> dict:
    """The arguments of :func:`preddiff.prediction_difference` besides the image, the
    classifier, the sampler and the checkpoint (shared with :mod:`preddiff.cluster`)."""
    from ..compat import settings as compat_settings

    incremental = bool(getattr(model.classifier, "incremental", False))
    return dict(window=window, stride=args.stride, num_samples=args.samples,
                blobs=(model.blob,),
                probability_blobs=(model.blob,) if model.probability else (),
                batch_size=_batch_size(args, incremental), rng=args.seed,
                edges=compat_settings(getattr(args, "compat", "intended")).get("edges", "cover"))


def _check_classes(args, model: _Model, x) -> list[int]:
    """``--labels`` and ``--classes`` checked against the blob's units (one forward pass of
    the first image, before any work); returns the unit indices of ``--classes``."""
    from ..errors import InvalidArgument

    if not (args.labels or args.classes):
        return []
    units = _count_units(model, x)
    if args.labels and units != len(model.labels):
        raise InvalidArgument(
            f"--labels {args.labels}: {len(model.labels)} names, but blob {model.blob!r} has "
            f"{units} units; give one name a line for each unit")
    labelled = bool(model.labels) and len(model.labels) == units
    return _parse_classes(args.classes, _unit_names(model, units), units, labelled) \
        if args.classes else []


def run(args: argparse.Namespace) -> int:
    """Explain each image; print the top classes and where the results went."""
    import numpy as np

    from .. import __version__, cluster, prediction_difference
    from ..compat import round_relevance
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
    _options_that_apply(args)
    if cluster.wanted(args):
        cluster.check_options(args)  # --workers bounds, the --scheduler address: before work
    model = _load_model(args)
    _check_batch_memory(args, model.input_shape)
    window = args.window if args.window is not None else (4 if model.input_shape[0] == 1 else 10)
    window_grid(model.input_shape[1:], window, args.stride)  # a bad window fails first
    note = _use_incremental(model, args, window)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = _read_inputs(args.images, model)  # every image checked before any work
    args.claim = _claim_outputs(args.out, [f"{job[1]}_{model.name}" for job in jobs])
    loaded = {job[0]: tuple(job[1:]) for job in jobs}
    if args.model not in zoo.MODEL_NAMES:  # the zoo nets' blobs are all (N, C, ...)
        _check_output(model, jobs[0][2])
    classes = _check_classes(args, model, jobs[0][2])

    def prepare_image(args, model, spec, window):
        return _prepare_image(args, model, spec, window, loaded[spec])

    prepared, earlier, cluster_seconds = {}, {}, 0.0
    if cluster.wanted(args):  # every image on a Dask cluster; handed over as checkpoints
        # which images resume a checkpoint, known before the cluster run completes them all
        earlier = {spec: _resumable(args.out / f"{loaded[spec][0]}_{model.name}.ckpt.npz")
                   for spec in loaded}
        tic = time.perf_counter()
        prepared = cluster.explain_images(args, model, window, prepare_image, _engine_kwargs)
        cluster_seconds = time.perf_counter() - tic
    for spec in loaded:
        # a cluster run's images share its time (they were computed together)
        started = time.perf_counter() - (cluster_seconds if spec in prepared else 0.0)
        name, x, pool, sampler, stem, checkpoint = (
            prepared.get(spec) or prepare_image(args, model, spec, window))
        resumed = earlier.get(spec, False) if spec in prepared else _resumable(checkpoint)
        explanation = prediction_difference(
            x, model.classifier, sampler, **_engine_kwargs(args, model, window),
            checkpoint=checkpoint, keep_checkpoint=True,
            progress=not args.no_progress and not prepared)
        if resumed:
            _say_resumed(checkpoint)
        explanation.relevance = round_relevance(explanation.relevance,
                                                getattr(args, "compat", "intended"))
        units = len(explanation.units[model.blob])
        names = _unit_names(model, units)
        top = explanation.top_classes(model.blob, args.top)
        clean = explanation.clean_values(model.blob)
        shown = top + [(i, float(clean[i])) for i in classes if i not in dict(top)]
        explanation.metadata.update({
            "image": spec, "model": model.name, "model_sha1": model.sha1,
            "blob": model.blob, "preddiff_version": __version__, "pool_size": int(len(pool)),
            "padding": args.padding if args.sampler == "conditional" else None,
            "top": [[i, names[i], v] for i, v in top], "argv": sys.argv[1:],
            "classes": [[i, names[i], v] for i, v in shown[len(top):]],
            "labels": list(model.labels) or None,
            "saved_units": "all" if args.save_all else sorted(i for i, _ in shown),
            "seconds_with_sampler_fit": time.perf_counter() - started,
            "provider": getattr(model.classifier, "provider", None), "incremental": note,
            **model.extra,
        })
        npz = stem.with_name(stem.name + ".npz")
        explanation.save(npz, dtype=np.float32, compress=True,
                         units=None if args.save_all else {model.blob: [i for i, _ in shown]})
        png = _figure(model, explanation, shown, names, stem)
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)
        seconds = time.perf_counter() - started
        label = "p" if model.probability else model.blob
        tops = ", ".join(f"{names[i]} ({label}={v:.3f})" for i, v in top)
        print(f"{spec}: {tops}")
        if shown[len(top):]:
            print("  also: " + ", ".join(f"{names[i]} ({label}={v:.3f})"
                                         for i, v in shown[len(top):]))
        uncovered = int((explanation.counts == 0).sum())
        if uncovered:
            print(f"  note: {uncovered} pixels lie in no window (stride {args.stride} > window "
                  f"{window}): their relevance is 0", file=sys.stderr)
        provider = getattr(model.classifier, "provider", None) or "?"
        together = len(prepared) if spec in prepared else 0
        print(f"  {_time_text(seconds, explanation, resumed, together)} on "
              f"{provider.replace('ExecutionProvider', '')}; {note}); wrote {npz} and {png}")
    return 0
