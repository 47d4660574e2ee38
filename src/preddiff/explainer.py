"""One call from an image and a model to a finished explanation: :func:`explain`.

``preddiff.explain(image, model, **options)`` does what ``preddiff explain IMAGE --model
MODEL`` does, with the command line's options as keyword arguments (``input_size="64x64"``
for ``--input-size 64x64``, ``target`` for ``--classes``), and returns the
:class:`~preddiff.analysis.Explanation` instead of writing files::

    import preddiff
    e = preddiff.explain("cat.jpg", "effnet.onnx", labels="imagenet", target="tiger cat",
                         stride=8)
    e.top_classes()            # [('tiger cat', 0.61), ...] with labels, else indices
    e.plot()                   # the command line's figure
    e.save("cat.npz")          # what the command line keeps, compressed

The pieces are also the command line's (:mod:`preddiff.commands.explain` is a thin layer of
files, locks, checkpoints and printing over them): :func:`load_model` (a zoo name, an ONNX
file or an ``onnx.ModelProto``, with its preprocessing, labels and probability blob),
:func:`read_image`, :func:`build_pool`, :func:`make_sampler`, :func:`use_incremental` (the
measured decision, announced with its duration) and :func:`engine_kwargs`.

The probability blob
--------------------
A blob gets the weight of evidence (eq. 4–5) when it holds probabilities: for a zoo net its
manifest's output; for an ONNX model a blob produced by a ``Softmax`` node (whatever its
name). Every other blob gets the activation difference (eq. 9). The choice and its reason are
in ``explanation.metadata["probability"]``.
"""
from __future__ import annotations

import sys
import time
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import InvalidArgument

__all__ = ["explain", "DEFAULTS", "DEFAULT_TOP", "Model", "load_model", "read_image",
           "build_pool", "make_sampler", "use_incremental", "engine_kwargs", "options"]

#: Classes whose maps are plotted, printed and kept by default (``--top``).
DEFAULT_TOP = 3

#: The command line's options and their defaults (None: decided from the model or sampler).
DEFAULTS = dict(
    model="lenet", sampler="conditional", window=None, padding=None, samples=10, stride=1,
    blob=None, top=DEFAULT_TOP, pool=None, colour=None, patches=None, order=None,
    compat="intended", policy=None, input_size=None, seed=0, batch_size=None, device="auto",
    threads=None, labels=None, resize=None, mean=None, std=None, normalize=None,
    incremental="auto", no_incremental=False, classes=None, save_all=False,
)

#: Options that apply to one sampler or to the zoo nets only, and their defaults.
SAMPLER_OPTIONS = {"conditional": {"padding": 2, "colour": "per-channel", "patches": 25000},
                   "marginal": {"order": "random"}}
ZOO_OPTIONS = {"policy": "crop"}
INCREMENTAL_MODES = ("auto", "on", "off", "remeasure")


def say(kind: str, text: str) -> None:
    """One line on stderr, as the command line prints it: ``preddiff: note: …``."""
    print(f"preddiff: {kind}: {text}", file=sys.stderr)


def options(**given) -> types.SimpleNamespace:
    """:data:`DEFAULTS` updated with ``given`` (the command line's option names, ``_`` for
    ``-``), as the namespace the pieces of this module read.

    Raises
    ------
    InvalidArgument
        An unknown option (the message lists the known ones).
    """
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise InvalidArgument(f"unknown option(s) {', '.join(unknown)}; the options are "
                              f"{', '.join(sorted(DEFAULTS))}")
    return types.SimpleNamespace(**{**DEFAULTS, **given})


# ----------------------------------------------------------------------------------------------
# models


@dataclass
class Model:
    """A network ready to explain: its classifier, preprocessing, labels and blob.

    Attributes
    ----------
    name : str
        Zoo name, the ONNX file's stem, or the ModelProto's graph name.
    classifier : callable
        ``classifier(batch (N, C, H, W)) -> {blob: array}`` (onnxruntime).
    blob : str
        The explained blob.
    probability : bool
        Whether ``blob`` holds probabilities (weight of evidence) or not (activation
        difference); :attr:`probability_reason` says why.
    input_shape : (int, int, int)
        ``(C, H, W)``.
    preprocess : callable
        ``preprocess(image (H, W[, 3]), what=name) -> x (C, H, W) float32``.
    deprocess : callable
        ``x -> (H, W, 3)`` RGB in [0, 1], for display.
    labels : list of str
        Class names (empty when unknown).
    sha1 : str
        sha1 of the weights (zoo) or of the ONNX model.
    source : str or onnx.ModelProto
        The ONNX file (or the model itself) the classifier runs.
    min_view : (int, int)
        Smallest photograph crop the preprocessing uses without enlarging it (pool views).
    """

    name: str
    classifier: object
    blob: str
    probability: bool
    input_shape: tuple
    preprocess: Callable
    deprocess: Callable
    labels: list
    sha1: str
    source: object
    min_view: tuple = (1, 1)
    probability_reason: str = ""
    extra: dict = field(default_factory=dict)
    preprocessor: object = None      # OnnxPreprocessor of an ONNX model (its last_fit is said)

    @property
    def gray(self) -> bool:
        return self.input_shape[0] == 1


def softmax_outputs(model) -> list[str]:
    """Names of the tensors a ``Softmax`` node produces in an ``onnx.ModelProto``."""
    return [o for n in model.graph.node if n.op_type == "Softmax" for o in n.output if o]


def _zoo_model(name: str, opts) -> Model:
    from . import zoo
    from .classifier import OnnxClassifier
    from .preprocess import RESIZE_TO, Preprocessor

    m = zoo.manifest(name)
    blob = opts.blob or m.output
    onnx_file = zoo.ensure_onnx(name)
    classifier = OnnxClassifier(onnx_file, outputs=[blob], batch_size=batch_size(opts),
                                device=opts.device, threads=opts.threads)
    pre = Preprocessor(m, policy=opts.policy)
    probability = blob == m.output
    reason = (f"{blob!r} is the {name} manifest's probability output (a Softmax layer)"
              if probability else f"{blob!r} is not {name}'s probability output {m.output!r}")
    _, h, w = m.input_shape
    return Model(
        name=name, classifier=classifier, blob=blob, probability=probability,
        input_shape=tuple(m.input_shape),
        preprocess=lambda image, what="image": pre(image, what=what),
        deprocess=pre.deprocess, labels=list(m.labels), sha1=m.sha1, source=str(onnx_file),
        min_view=(h, w) if opts.policy == "crop" else (RESIZE_TO, RESIZE_TO),
        probability_reason=reason, extra={"policy": opts.policy, "onnx": str(onnx_file)})


def _onnx_model(model, opts) -> Model:
    import hashlib

    import onnx

    from .classifier import OnnxClassifier, _load_model as _load_onnx
    from .labels import read_labels
    from .zoo import file_sha1

    if isinstance(model, onnx.ModelProto):
        proto, shown = model, f"ONNX model {model.graph.name or '(unnamed graph)'!r}"
        name = model.graph.name or "model"
        sha1 = hashlib.sha1(model.SerializeToString()).hexdigest()
        extra = {}
    else:
        path = Path(model)
        if not path.is_file():
            raise InvalidArgument(f"--model {str(path)!r}: no such ONNX file (or use lenet, "
                                  f"alexnet, googlenet, vgg16)")
        proto, _ = _load_onnx(path)  # PredDiffError (one line) for a file that is not ONNX
        shown, name, sha1 = str(path), path.stem, file_sha1(path)
        extra = {"onnx": str(path)}
    softmax = softmax_outputs(proto)
    graph_outputs = [o.name for o in proto.graph.output]
    if opts.blob is None and not graph_outputs:
        raise InvalidArgument(f"{shown} has no graph outputs; name the blob with --blob")
    # default: the probability output (a graph output produced by a Softmax node), else the
    # first graph output
    blob = opts.blob or next((o for o in graph_outputs if o in softmax),
                             graph_outputs[0] if graph_outputs else None)
    classifier = OnnxClassifier(proto, outputs=[blob], batch_size=batch_size(opts),
                                device=opts.device, threads=opts.threads, name=shown)
    channels, height, width = classifier.input_shape
    if channels not in (1, 3):
        dims = ", ".join("?" if d is None else str(d) for d in classifier.input_shape)
        layout = (f"it looks channels-last (N, H, W, C) with {width} channels; "
                  if width in (1, 3) else "")
        raise InvalidArgument(
            f"{shown}: input {classifier.input_name!r} has shape (N, {dims}): {layout}"
            "preddiff explain needs a channels-first input (N, C, H, W) with C = 1 (gray) or "
            "3 (RGB); export the model with that layout (e.g. a Transpose at its input)")
    size = parse_size(opts.input_size) if opts.input_size else None
    if height is None or width is None:
        if size is None:
            raise InvalidArgument(f"{shown} leaves its input size free: give --input-size HxW")
        height, width = size
    elif size is not None and size != (height, width):
        raise InvalidArgument(f"--input-size {size[0]}x{size[1]} differs from the model's "
                              f"input {height}x{width}")
    # a probability blob: produced by a Softmax node (its weight of evidence is meaningful)
    probability = blob in softmax
    reason = (f"a Softmax node produces {blob!r}" if probability else
              f"no Softmax node produces {blob!r}")
    pre = _onnx_preprocessor(opts, (channels, height, width))
    labels = read_labels(opts.labels)
    # photograph crops the preprocessing does not enlarge: torchvision's crop resizes the
    # short side to input / CROP_FRACTION, a stretch to the input size
    from .preprocess import CROP_FRACTION

    min_view = (int(np.ceil(height / CROP_FRACTION)), int(np.ceil(width / CROP_FRACTION))) \
        if pre.resize == "crop" else (height, width)
    return Model(name=name, classifier=classifier, blob=blob, probability=probability,
                 input_shape=(channels, height, width),
                 preprocess=lambda image, what="image": pre(image, what=what),
                 deprocess=pre.deprocess, labels=labels, sha1=sha1,
                 source=extra.get("onnx", proto), min_view=min_view,
                 probability_reason=reason,
                 extra={**extra, "preprocessing": pre.describe()}, preprocessor=pre)


def _onnx_preprocessor(opts, input_shape):
    from .preprocess import NORMALIZATIONS, OnnxPreprocessor, parse_channel_values

    channels = input_shape[0]
    mean = std = None
    if opts.normalize is not None:
        if opts.mean is not None or opts.std is not None:
            raise InvalidArgument(f"--normalize {opts.normalize} sets the mean and std; give "
                                  "either --normalize or --mean/--std")
        if opts.normalize not in NORMALIZATIONS:
            raise InvalidArgument(f"--normalize {opts.normalize!r}: expected one of "
                                  f"{', '.join(NORMALIZATIONS)}")
        mean, std = NORMALIZATIONS[opts.normalize]
        if channels == 1:
            raise InvalidArgument(f"--normalize {opts.normalize} is for RGB inputs; this model "
                                  "takes 1 channel: give --mean and --std")
    if opts.mean is not None:
        mean = parse_channel_values(_text(opts.mean), channels, "--mean")
    if opts.std is not None:
        std = parse_channel_values(_text(opts.std), channels, "--std")
    return OnnxPreprocessor(input_shape, resize=opts.resize or "crop", mean=mean, std=std)


def _text(values) -> str:
    """``(0.5, 0.4, 0.3)`` or ``"0.5,0.4,0.3"`` → ``"0.5,0.4,0.3"``."""
    if isinstance(values, str):
        return values
    return ",".join(str(v) for v in np.atleast_1d(values))


def _zoo_name(model) -> bool:
    from . import zoo

    return isinstance(model, str) and model in zoo.MODEL_NAMES


def check_output(model: Model, x) -> None:
    """Refuse, before any work, a blob with no unit axis: one forward pass of the first image.

    A model whose output is one value per image, shape (N,), would be computed in full and
    then fail when its classes are ranked (issue 19)."""
    shape = np.shape(model.classifier(np.asarray(x, np.float32)[None])[model.blob])
    if len(shape) < 2:
        raise InvalidArgument(
            f"blob {model.blob!r} of {model.name} has shape {shape} for one image: one value "
            "per image, without a class axis; preddiff explain needs an output of shape "
            "(N, classes) or (N, C, H, W): give the model an (N, 1) output (e.g. an Unsqueeze "
            "node), or name another blob with --blob")


def load_model(opts) -> Model:
    """The :class:`Model` named by ``opts.model``: a zoo name, an ONNX file or an
    ``onnx.ModelProto`` (``opts`` from :func:`options` or the command line)."""
    from . import zoo

    model = opts.model
    if isinstance(model, str) and model in zoo.MODEL_NAMES:
        return _zoo_model(model, opts)
    if isinstance(model, (str, Path)) or hasattr(model, "graph"):
        return _onnx_model(model, opts)
    raise InvalidArgument(f"model {type(model).__name__!r}: give a zoo name "
                          f"({', '.join(zoo.MODEL_NAMES)}), an ONNX file or an onnx.ModelProto")


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux: MemAvailable), or None."""
    import os

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


def check_batch_memory(opts, shape) -> None:
    """Refuse, before any work, a run whose batch of perturbed float32 images cannot fit in
    the memory available (the network's own activations come on top). A batch holds whole
    windows: at least the ``--samples`` images of one window, whatever ``--batch-size``."""
    available = available_memory()
    channels, height, width = shape
    batch = batch_size(opts)
    images = max(batch, int(opts.samples))
    need = (images + 2) * channels * height * width * 4  # the batch, the image, its copy
    if available is None or need <= available:
        return
    knobs = ["--samples" if images > batch else "--batch-size"]
    if 3 * channels * height * width * 4 > available:
        knobs = []
    if opts.input_size is not None:
        knobs.insert(0, "--input-size")
    why = " (the samples of one window, --samples)" if images > batch else ""
    prefix = f"--input-size {height}x{width}: " if opts.input_size is not None else ""
    raise InvalidArgument(
        f"{prefix}a batch of {images} images of {channels}x{height}x{width} float32{why} "
        f"needs at least {gib(need)} of memory, and {gib(available)} is available; give a "
        f"smaller {' or '.join(knobs) or '--samples'}")


def gib(count: int) -> str:
    return f"{count / 2**30:,.1f} GiB"


def parse_size(text) -> tuple[int, int]:
    """``"64x64"`` (or ``(64, 64)``) → ``(64, 64)``."""
    if not isinstance(text, str):
        try:
            height, width = (int(v) for v in text)
        except (TypeError, ValueError):
            raise InvalidArgument(f"--input-size {text!r}: expected HxW, e.g. 64x64") from None
        text = f"{height}x{width}"
    parts = text.lower().replace(",", "x").split("x")
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        raise InvalidArgument(f"--input-size {text!r}: expected HxW, e.g. 64x64") from None
    if height < 1 or width < 1:
        raise InvalidArgument(f"--input-size {text!r}: sizes must be positive")
    return height, width


def batch_size(opts, incremental: bool = False, shape=None) -> int:
    """Images per classifier call: the user's, else 256 (1000 with incremental inference,
    whose per-call overhead is larger and which batches windows of equal changed regions);
    given the input ``shape`` (C, H, W), the engine's batch: the user's, else 1000 with
    incremental inference, else :func:`preddiff.analysis.default_batch_size` (1000 for
    images of at most 4,096 values)."""
    if opts.batch_size is not None:
        return opts.batch_size
    if incremental:
        return 1000
    if shape is None:
        return 256
    from .analysis import default_batch_size

    return default_batch_size(shape)


def check_options(opts) -> None:
    """The checks the command line makes before any work, and the defaults it fills in: a
    sampler's options with the other sampler (a warning: scripts switch samplers),
    ``--policy`` with an ONNX file and ONNX-only options with a zoo net (errors)."""
    from . import zoo

    if opts.top < 1:
        raise InvalidArgument(f"--top must be at least 1, got {opts.top}")
    if opts.window is not None and opts.window < 1:
        raise InvalidArgument(f"--window must be a positive integer, got {opts.window}")
    if opts.batch_size is not None and opts.batch_size < 1:
        raise InvalidArgument(f"--batch-size must be a positive integer, got {opts.batch_size}")
    if opts.samples < 1:
        raise InvalidArgument(f"--samples {opts.samples}: num_samples must be an integer >= 1")
    if opts.stride < 1:
        raise InvalidArgument(f"--stride {opts.stride}: stride must be an integer >= 1")
    if opts.padding is not None and opts.padding < 0:
        raise InvalidArgument(f"--padding {opts.padding}: padding must be a non-negative "
                              "integer")
    if opts.sampler not in SAMPLER_OPTIONS:
        raise InvalidArgument(f"--sampler {opts.sampler!r}: expected one of "
                              f"{', '.join(SAMPLER_OPTIONS)}")
    if opts.incremental not in INCREMENTAL_MODES:
        raise InvalidArgument(f"--incremental {opts.incremental!r}: expected one of "
                              f"{', '.join(INCREMENTAL_MODES)}")
    zoo_model = isinstance(opts.model, str) and opts.model in zoo.MODEL_NAMES
    if opts.input_size is not None and zoo_model:
        raise InvalidArgument(f"--input-size applies to ONNX files only; {opts.model} takes "
                              f"{'x'.join(map(str, zoo.manifest(opts.model).input_shape[1:]))} "
                              "inputs")
    for sampler, defaults in SAMPLER_OPTIONS.items():
        for name, default in defaults.items():
            if getattr(opts, name) is not None and opts.sampler != sampler:
                say("warning", f"--{name} applies to the {sampler} sampler only: ignored with "
                    f"--sampler {opts.sampler}")
            if getattr(opts, name) is None:
                setattr(opts, name, default)
    if opts.policy is not None and not zoo_model:
        shown = opts.model if isinstance(opts.model, (str, Path)) else "an ONNX model"
        raise InvalidArgument(f"--policy applies to the zoo nets ({', '.join(zoo.MODEL_NAMES)}) "
                              f"only; images for {shown} are fitted to its input size "
                              "with --resize crop|stretch")
    opts.policy = opts.policy or ZOO_OPTIONS["policy"]
    if zoo_model:
        given = [f"--{name}" for name in ("labels", "resize", "mean", "std", "normalize")
                 if getattr(opts, name) is not None]
        if given:
            raise InvalidArgument(
                f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to ONNX files "
                f"only; {opts.model} has its own labels and preprocessing (--policy)")


def default_window(opts, model: Model) -> int:
    """``--window`` or its default: 4 for a gray (digit) network, else 10."""
    return opts.window if opts.window is not None else (4 if model.gray else 10)


# ----------------------------------------------------------------------------------------------
# incremental inference


def use_incremental(model: Model, opts, window: int) -> str:
    """Swap ``model.classifier`` for an :class:`~preddiff.incremental.IncrementalClassifier`
    when the graph allows it and, with ``--incremental auto``, a few batches timed both ways
    on this machine show it is faster (:func:`preddiff.incremental_decision.
    decide_incremental`, cached per model and machine; ``remeasure``: measure again and
    replace the cached result). A measurement is announced before it starts and its duration
    is said. The batch size of the engine kept is the fastest measured unless
    ``--batch-size`` is given. Returns a one-line note.

    Any failure while planning or measuring (a graph onnxruntime or the planner cannot handle)
    keeps the plain classifier, with the reason in the note and the log."""
    if opts.no_incremental:
        return "incremental inference off (--no-incremental)"
    if opts.incremental == "off":
        return "incremental inference off (--incremental off)"
    input_dtype = getattr(model.classifier, "_input_dtype", None)
    if input_dtype is not None and np.dtype(input_dtype) != np.float32:
        return (f"incremental inference off: the model's input is "
                f"{np.dtype(input_dtype).name} (cast from float32)")
    import logging

    from .incremental_decision import decide_incremental
    from .incremental_plan import load_model as load_graph

    def announce():
        say("note", "measuring whether incremental inference is faster for this model on "
            "this machine (a few batches timed both ways; once per model, the result is "
            "cached; --incremental on|off skips it)")

    try:
        source = load_graph(model.source)
        # timing hardly depends on the values: a seeded image of the input's size
        x = np.random.default_rng(opts.seed).normal(size=model.input_shape).astype(np.float32)
        decision = decide_incremental(
            source, x, window, "auto" if opts.incremental == "remeasure" else opts.incremental,
            outputs=[model.blob], device=opts.device, threads=opts.threads,
            batch_size=opts.batch_size, samples=opts.samples, seed=opts.seed,
            remeasure=opts.incremental == "remeasure", on_measure=announce,
            stride=opts.stride)
    except Exception as exc:  # noqa: BLE001 - the plain classifier is always a safe choice
        why = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        logging.getLogger(__name__).warning("incremental inference off, evaluating full "
                                            "images: %s", why)
        return f"incremental inference off: it could not be planned ({why})"
    if decision.seconds is not None:
        say("note", f"measured in {decision.seconds:.1f} s: {decision.message} (cached; "
            "--incremental remeasure measures again)")
    if decision.use:
        model.classifier = decision.classifier
    elif opts.batch_size is None:
        model.classifier.batch_size = decision.batch_size
    return decision.message


# ----------------------------------------------------------------------------------------------
# images and pools


@dataclass
class Input:
    """An image ready to explain: its name, the network input, and what identifies it (to
    keep it out of its own pool)."""

    name: str
    x: np.ndarray
    digit: int | None = None           # index of a bundled digit
    thumbnail: np.ndarray | None = None  # preddiff.images.thumbnail of the raw image
    source: Path | None = None


def digit_index(spec: str) -> int:
    """``digits:N`` → N, which must name one of the bundled digits (no negative indices)."""
    from .digits import load_digits

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


def read_image(image, model: Model) -> Input:
    """An image file (path), ``digits:N``, an array (H, W[, C]) (uint8 0–255 or float in
    [0, 1]) or a PIL image → :class:`Input`; what the preprocessing changed is said on stderr
    (one note each: gray → RGB, EXIF orientation, a resize of a user's model)."""
    from .images import thumbnail
    from .preprocess import load_image

    if isinstance(image, str) and image.startswith("digits:"):
        from .digits import digit

        if not model.gray:
            raise InvalidArgument(f"{image}: bundled digits are gray 28x28 images, for LeNet "
                                  f"or a 1-channel ONNX model, not {model.name}")
        index = digit_index(image)
        pixels, _ = digit(index)
        return Input(f"digit{index}", model.preprocess(pixels[0]), digit=index)
    if isinstance(image, (str, Path)):
        path, name, what = Path(image), Path(image).stem, str(image)
        load = lambda: load_image(path)  # noqa: E731
    else:
        path, name, what = None, "image", "the image"
        if hasattr(image, "mode") and hasattr(image, "size"):  # a PIL image
            image = np.asarray(image.convert("RGB") if image.mode not in ("L", "RGB", "RGBA")
                               else image)
        pixels = np.asarray(image)
        if pixels.ndim not in (2, 3):
            raise InvalidArgument(f"image of shape {pixels.shape}: expected (H, W) gray or "
                                  "(H, W, 3) RGB pixels, a file name or a PIL image")
        load = lambda: pixels  # noqa: E731
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        raw = load()
        x = model.preprocess(raw, what=what)
    notes = [" ".join(str(w.message).split()) for w in caught
             if issubclass(w.category, UserWarning)]
    gray_file = any("is grayscale" in note for note in notes)
    if gray_file and model.gray:
        # a gray file for a gray network (read as RGB, then back to gray) is no news
        notes = [n for n in notes if "is grayscale" not in n and "is in colour" not in n]
    fit = getattr(model.preprocessor, "last_fit", None)
    if fit:  # the resize of a user's ONNX model: which policy, from what size
        notes.append(f"{what}: {fit}")
    for note in notes:
        say("note", note)
    return Input(name, x, thumbnail=thumbnail(raw),
                 source=path.resolve() if path is not None else None)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def build_pool(opts, model: Model, image: Input) -> tuple[np.ndarray, dict]:
    """The images the sampler learns from, never holding the explained image.

    Default (no ``--pool``): for a gray network the 1,797 bundled digits; for a colour
    network and the marginal sampler the views of nine offline photographs
    (:func:`preddiff.images.natural_views`: each photograph, nine crops of 2/3 of it where
    they need no enlarging, and all of them mirrored); for the conditional sampler (and
    ``--compat released``) the seven example photographs as they are
    (:func:`preddiff.images.example_images`). With ``--pool DIR``: the image files there.

    The explained image is left out by content, whatever its file name: a photograph that
    shows the same picture (:func:`preddiff.images.same_picture`, so a re-encoded copy too)
    with all its views, a pool file of the same picture, and any pool image equal to the
    network input. What was left out is said on stderr and in the description.

    Returns
    -------
    pool : ndarray of float32, shape (M, C, H, W)
    description : dict
        ``source``, ``size`` and ``left_out`` (JSON-serialisable, for the metadata).
    """
    from .images import example_images, natural_views, photos_like, same_picture
    from .preprocess import load_image

    left_out: list[str] = []
    if opts.pool is None:
        if model.gray:
            from .digits import load_digits

            digits = load_digits()[0]
            keep = [i for i in range(len(digits)) if i != image.digit]
            if image.digit is not None:
                left_out.append(f"digit {image.digit}")  # by its index: no news
            if model.name == "lenet":
                pool = digits[keep]
            else:
                pool = np.stack([_quiet(model.preprocess, np.asarray(digits[i][0]))
                                 for i in keep])
            source = "the bundled digits"
        else:
            same = set(photos_like(image.thumbnail)) if image.thumbnail is not None else set()
            left_out += sorted(same)
            if opts.sampler == "marginal" and opts.compat != "released":
                items = [(k, v) for k, v in natural_views(model.min_view)
                         if k.split(":")[0] not in same]
                source = ("views of nine offline photographs (each whole and in up to nine "
                          "crops, all also mirrored; preddiff.images.natural_views)")
            else:
                items = [(k, v) for k, v in example_images().items() if k not in same]
                source = "the seven example photographs"
            pool = []
            for key, picture in items:
                try:
                    pool.append(_quiet(model.preprocess, picture, what=f"pool image {key}"))
                except InvalidArgument:  # smaller than a zoo net's input under policy crop
                    continue
            pool = np.stack(pool)
    else:
        folder = Path(opts.pool)
        if not folder.is_dir():
            raise InvalidArgument(f"--pool {str(opts.pool)!r} is not a folder")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        pool = []
        for path in files:
            try:
                picture = _quiet(load_image, path)
                if image.source is not None and path.resolve() == image.source or (
                        image.thumbnail is not None and same_picture(image.thumbnail, picture)):
                    left_out.append(path.name)
                    continue
                pool.append(_quiet(model.preprocess, picture, what=str(path)))
            except InvalidArgument as exc:
                reason = " ".join(str(exc).split())
                say("warning", f"{path.name} left out of the pool: {reason}")
        if not pool:
            raise InvalidArgument(f"--pool {str(opts.pool)!r} holds no usable images (other "
                                  "than the one explained)")
        pool = np.stack(pool)
        source = f"the images in {folder}"
    pool = np.asarray(pool, dtype=np.float32)
    x = np.asarray(image.x, dtype=np.float32)
    scale = float(np.abs(x).max()) or 1.0
    equal = np.abs(pool - x[None]).reshape(len(pool), -1).max(axis=1) <= 1e-3 * scale
    if equal.any():
        left_out.append(f"{int(equal.sum())} pool image(s) equal to the explained one")
        pool = pool[~equal]
    news = [s for s in left_out if image.digit is None or s != f"digit {image.digit}"]
    if news:
        say("note", f"left out of the pool as the explained picture: {', '.join(news)}")
    if len(pool) == 0:
        raise InvalidArgument("the pool holds no image other than the one explained; give "
                              "--pool DIR with other images")
    return pool, {"source": source, "size": int(len(pool)), "left_out": left_out}


def make_sampler(opts, pool, window):
    """The sampler of ``opts.sampler`` on ``pool``; a marginal sampler whose pool is smaller
    than ``--samples`` is refused with the way out."""
    from .compat import settings
    from .samplers import ConditionalGaussianSampler, MarginalSampler

    released = settings(getattr(opts, "compat", "intended"))  # --compat overrides the options
    if opts.sampler == "marginal":
        if len(pool) < opts.samples:
            raise InvalidArgument(
                f"marginal sampling needs --samples {opts.samples} distinct pool images, but "
                f"the pool has only {len(pool)}: give --pool DIR with at least {opts.samples} "
                "other images of the kind the model was trained on, or fewer --samples")
        return MarginalSampler(pool, order=released.get("marginal_order", opts.order))
    return ConditionalGaussianSampler.fit(
        pool, window, opts.padding, colour=released.get("colour", opts.colour),
        num_patches=released.get("num_patches", opts.patches), clip=True, rng=opts.seed,
        patches=released.get("patches", "random"))


def engine_kwargs(opts, model: Model, window: int) -> dict:
    """The arguments of :func:`preddiff.prediction_difference` besides the image, the
    classifier, the sampler and the checkpoint (shared with :mod:`preddiff.cluster`)."""
    from .compat import settings as compat_settings

    incremental = bool(getattr(model.classifier, "incremental", False))
    size = batch_size(opts, incremental, model.input_shape)
    if opts.batch_size is None:  # at least one call of the measured size (large on a GPU)
        size = max(size, int(getattr(model.classifier, "batch_size", 0)))
    return dict(window=window, stride=opts.stride, num_samples=opts.samples,
                blobs=(model.blob,),
                probability_blobs=(model.blob,) if model.probability else (),
                batch_size=size, rng=opts.seed,
                edges=compat_settings(getattr(opts, "compat", "intended")).get("edges", "cover"))


# ----------------------------------------------------------------------------------------------
# classes


def unit_names(model: Model, units: int) -> list[str]:
    """The label of each unit, or ``class i`` (``unit i`` for a blob that is not a
    probability) when the labels do not fit."""
    if model.labels and len(model.labels) == units:
        return list(model.labels)
    kind = "class" if model.probability else "unit"
    return [f"{kind} {i}" for i in range(units)]


def count_units(model: Model, x) -> int:
    """Units (classes) of the explained blob, from one forward pass of the image."""
    out = np.asarray(model.classifier(np.asarray(x)[None])[model.blob])
    return int(out.shape[1]) if out.ndim >= 2 else 1


def check_classes(opts, model: Model, x, *, option: str = "--classes") -> list[int]:
    """``--labels`` and ``--classes`` (``target``) checked against the blob's units (one
    forward pass of the image, before any work); returns the unit indices named."""
    from .labels import resolve_classes

    if not (opts.labels or opts.classes is not None):
        return []
    units = count_units(model, x)
    if opts.labels and units != len(model.labels):
        shown = opts.labels if isinstance(opts.labels, (str, Path)) else "labels"
        raise InvalidArgument(
            f"--labels {shown}: {len(model.labels)} names, but blob {model.blob!r} has "
            f"{units} units; give one name a line for each unit")
    labelled = bool(model.labels) and len(model.labels) == units
    if opts.classes is None:
        return []
    return resolve_classes(opts.classes, unit_names(model, units), units, labelled=labelled,
                           option=option)


def describe(model: Model, explanation, top, shown, names, opts, pool_info) -> dict:
    """The metadata the command line and :func:`explain` record."""
    from . import __version__

    return {
        "model": model.name, "model_sha1": model.sha1, "blob": model.blob,
        "preddiff_version": __version__, "pool_size": pool_info["size"], "pool": pool_info,
        "padding": opts.padding if opts.sampler == "conditional" else None,
        "top": [[i, names[i], v] for i, v in top],
        "classes": [[i, names[i], v] for i, v in shown[len(top):]],
        "labels": list(model.labels) or None,
        "saved_units": "all" if opts.save_all else sorted(i for i, _ in shown),
        "provider": getattr(model.classifier, "provider", None),
        "probability": {"blob": model.blob, "weight_of_evidence": model.probability,
                        "reason": model.probability_reason},
        **{k: v for k, v in model.extra.items()},
    }


def value_text(value: float) -> str:
    """A probability or unit value as the console and the figure print it: 3 significant
    digits, so that ``6.49e-05`` is never ``0.000``."""
    return f"{value:.3g}"


# ----------------------------------------------------------------------------------------------
# the one call


def explain(image, model="lenet", *, target=None, top=None, checkpoint=None,
            progress: bool = True, **kwargs):
    """Prediction difference analysis of one image, in one call (what ``preddiff explain``
    computes, with the same defaults, preprocessing, pool, labels, incremental decision and
    notes on stderr).

    Parameters
    ----------
    image : str, Path, ndarray or PIL.Image.Image
        An image file, ``"digits:N"`` (a bundled digit), pixels ``(H, W)`` or ``(H, W, 3)``
        (uint8 0–255, or float in [0, 1]), or a PIL image.
    model : str, Path or onnx.ModelProto, default "lenet"
        A zoo name (``lenet``, ``alexnet``, ``googlenet``, ``vgg16``), an ONNX file, or an
        ONNX model in memory.
    target : int, str or sequence of them, optional
        The classes to explain (``--classes``): indices, or names when labels are known
        (case-insensitive; ambiguous names are refused with their indices). Only their maps
        are kept. Default: the ``top`` classes.
    top : int, optional
        Also keep the maps of the ``top`` most probable classes (default 3 without
        ``target``, none with it).
    checkpoint : str or Path, optional
        Save progress there and resume from it (see :func:`preddiff.prediction_difference`).
    progress : bool, default True
        A progress bar on stderr.
    **kwargs
        The command line's options (:data:`DEFAULTS`), e.g. ``window=8``, ``stride=4``,
        ``samples=20``, ``sampler="marginal"``, ``pool="photos/"``, ``labels="imagenet"``,
        ``normalize="imagenet"``, ``input_size="64x64"``, ``blob="fc8"``,
        ``incremental="off"``, ``device="cpu"``, ``seed=1``. ``save_all=True`` keeps every
        class's map (400 MB of float64 for 1000 classes at 224²).

    Returns
    -------
    Explanation
        With ``relevance[blob]`` holding the kept maps (``units[blob]`` their indices),
        ``metadata`` as the command line writes it, and :meth:`~Explanation.plot`,
        :meth:`~Explanation.top_classes` (names when labels are known) and
        :meth:`~Explanation.save` (what the command line keeps, compressed).

    Raises
    ------
    PredDiffError
        Every user error, with the command line's one-line message.

    Examples
    --------
    >>> import preddiff
    >>> e = preddiff.explain("digits:7", window=4, stride=4, samples=4,
    ...                      progress=False)                       # doctest: +SKIP
    >>> e.top_classes(n=1)                                          # doctest: +SKIP
    [('7', 0.99...)]
    """
    from .analysis import prediction_difference
    from .compat import round_relevance
    from .windows import window_grid

    if "classes" in kwargs and target is not None:
        raise InvalidArgument("give target or classes, not both")
    opts = options(model=model, classes=kwargs.pop("classes", target), **kwargs,
                   **({"top": top} if top is not None else {}))
    if opts.classes is not None and top is None and not isinstance(opts.classes, str) \
            and len(np.atleast_1d(np.asarray(opts.classes, dtype=object))) == 0:
        raise InvalidArgument("target is empty: give class indices or names")
    started = time.perf_counter()
    check_options(opts)
    net = load_model(opts)
    check_batch_memory(opts, net.input_shape)
    window = default_window(opts, net)
    window_grid(net.input_shape[1:], window, opts.stride)  # a bad window fails first
    item = read_image(image, net)
    if not _zoo_name(opts.model):  # the zoo nets' blobs are all (N, C, ...)
        check_output(net, item.x)
    classes = check_classes(opts, net, item.x, option="target")
    pool, pool_info = build_pool(opts, net, item)
    sampler = make_sampler(opts, pool, window)
    note = use_incremental(net, opts, window)  # announced; once per model and machine
    explanation = prediction_difference(item.x, net.classifier, sampler,
                                        **engine_kwargs(opts, net, window),
                                        checkpoint=checkpoint, progress=progress)
    explanation.relevance = round_relevance(explanation.relevance, opts.compat)
    units = len(explanation.units[net.blob])
    names = unit_names(net, units)
    n_top = top if top is not None else (0 if classes else opts.top)
    ranked = explanation.top_classes(net.blob, n_top) if n_top else []
    clean = explanation.clean_values(net.blob)
    shown = ranked + [(i, float(clean[i])) for i in classes if i not in dict(ranked)]
    explanation.metadata.update(describe(net, explanation, ranked, shown, names, opts,
                                         pool_info))
    explanation.metadata.update({"image": image if isinstance(image, str) else
                                 (str(image) if isinstance(image, Path) else item.name),
                                 "incremental": note, "target": [i for i, _ in shown],
                                 "seconds_with_sampler_fit": time.perf_counter() - started})
    if not opts.save_all:
        keep = [i for i, _ in shown]
        maps = np.stack([explanation.relevance_of(net.blob, i) for i in keep])
        explanation.relevance = {net.blob: maps}
        explanation.units = {net.blob: np.asarray(keep, dtype=np.int64)}
    return explanation
