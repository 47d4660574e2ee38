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

The work is :mod:`preddiff.explainer`'s (what :func:`preddiff.explain` does in Python); this
module adds the files, the output locks, the checkpoints, the cluster and the printing.

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
import sys
import time
from collections import Counter
from pathlib import Path

from ..explainer import DEFAULT_TOP  # noqa: F401 (commands/bench.py imports it from here)

ORDER = 30

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
                   help="images the samplers learn from (default: for the marginal sampler "
                   "views of nine offline photographs, about 100 images; for the conditional "
                   "sampler the seven example photographs; for LeNet the digits; never the "
                   "explained image, recognised by content)")
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
                   "without edge windows, float16 relevance; see docs/faithfulness.md); "
                   "default: intended")
    p.add_argument("--policy", choices=("crop", "resize"), default=None,
                   help="zoo nets: centre crop without resizing (released code; default) or "
                   "resize to 256 then crop")
    p.add_argument("--input-size", default=None, metavar="HxW",
                   help="ONNX file with a free input size: the size to resize images to")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="perturbed images per classifier call and per engine batch "
                   "(default: the call size --incremental measured, the engine working "
                   "through 256 images at a time, 1000 with incremental inference, or one "
                   "such call when larger)")
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
                   help="classes (indices, or names when labels are known; case-insensitive; "
                   'a name with a comma in double quotes: \'"crane, bird",281\') to plot, '
                   "print and keep in the .npz besides the --top ones")
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
    p.add_argument("--incremental", choices=("auto", "on", "off", "remeasure"),
                   default="auto",
                   help="exact incremental inference: auto (default) = when the network allows "
                   "it and a few batches timed both ways on this machine (announced, about "
                   "10-60 s once per model, then cached) show a gain; remeasure = auto with a "
                   "fresh measurement replacing the cached one (e.g. one taken while the "
                   "machine was busy); on = whenever the network allows it; off = full images")
    p.add_argument("--no-incremental", action="store_true",
                   help="the same as --incremental off")
    from ..cluster import add_arguments as add_cluster_arguments

    add_cluster_arguments(p)  # --workers N | --scheduler ADDRESS (preddiff.cluster)
    p.set_defaults(func=_run_with_locks)


# ----------------------------------------------------------------------------------------------
# images


def _read_inputs(specs, model) -> list[tuple]:
    """Read and preprocess every IMAGE before any work starts, each output name unique.

    Returns ``[(spec, name, Input), ...]`` (an IMAGE given twice once). Inputs with the same
    stem (``ok.png ok.jpg``) get the extension in their name (``ok-png``, ``ok-jpg``; a number
    when that is not enough), with a note. Every unusable input is reported in one error,
    before anything is computed."""
    from ..errors import InvalidArgument
    from ..explainer import read_image

    jobs, problems = [], []
    for spec in dict.fromkeys(specs):
        try:
            item = read_image(spec, model)
            jobs.append([spec, item.name, item])
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


# ----------------------------------------------------------------------------------------------
# output


def _resumable(checkpoint) -> bool:
    """Whether a checkpoint with finished windows is there to resume from (checked before
    the run; a checkpoint that records none, left by a run that failed at once, holds
    nothing to resume and is overwritten)."""
    from ..checkpoint import finished_windows

    return checkpoint is not None and finished_windows(checkpoint) > 0


def _say_resumed(checkpoint) -> None:
    """Say on stderr that the run resumed (also without a progress bar, which would show the
    windows already done)."""
    print(f"preddiff: note: resumed from {checkpoint}: the windows finished by the earlier "
          "run were not computed again", file=sys.stderr)


def _time_text(seconds: float, explanation, resumed: bool, cluster_images: int = 0) -> str:
    """``"12.3 s (classifier 10.1 s"``; for a resumed run the times over all its runs, so
    that the classifier's share does not look larger than the whole; for a cluster run the
    wall time of all its images together and the classifier time summed over the workers."""
    timings = explanation.timings
    if cluster_images:
        together = f"the {cluster_images} images together" if cluster_images > 1 else "it"
        return (f"{timings['total']:.1f} s on the cluster for {together}"
                f"{' over all runs (resumed)' if resumed else ''} (classifier "
                f"{timings['classifier']:.1f} s summed over the workers")
    if not resumed:
        return f"{seconds:.1f} s (classifier {timings['classifier']:.1f} s"
    return (f"{seconds:.1f} s this run, resumed (over all runs: prediction difference "
            f"{timings['total']:.1f} s, classifier {timings['classifier']:.1f} s")


#: Classes drawn in the figure at most (two panels each; 1000 classes would take minutes);
#: the ``.npz`` keeps the maps of every class asked for.
MAX_FIGURE_CLASSES = 20


def _figure(model, explanation, shown, names, stem: Path) -> Path:
    from .. import plot

    if len(shown) > MAX_FIGURE_CLASSES:
        print(f"preddiff: note: the figure shows the first {MAX_FIGURE_CLASSES} of the "
              f"{len(shown)} classes asked for (--top, --classes); the .npz holds all their "
              "maps", file=sys.stderr)
        shown = shown[:MAX_FIGURE_CLASSES]
    fig = plot.figure_of(explanation, model.blob, [i for i, _ in shown], names=names)
    return plot.save_figure(fig, stem, formats=("png",))[0]


def _prepare_image(args, model, spec: str, window: int, loaded):
    """IMAGE argument → (name, x, pool, fitted sampler, output stem, checkpoint or None).

    ``loaded``: the image as :func:`_read_inputs` read it, ``(name, Input)``."""
    from ..explainer import build_pool, make_sampler
    from ..windows import window_grid

    name, item = loaded
    window_grid(item.x.shape[1:], window, args.stride)  # a bad window fails before the fit
    pool, info = build_pool(args, model, item)
    args.pool_info[spec] = info
    sampler = make_sampler(args, pool, window)
    stem = args.out / f"{name}_{model.name}"
    checkpoint = None if args.no_checkpoint else stem.with_name(stem.name + ".ckpt.npz")
    return name, item.x, pool, sampler, stem, checkpoint


def run(args: argparse.Namespace) -> int:
    """Explain each image; print the top classes and where the results went."""
    import numpy as np

    from .. import cluster, prediction_difference
    from ..compat import round_relevance
    from ..errors import InvalidArgument
    from .. import zoo
    from ..explainer import (check_batch_memory, check_classes, check_options, check_output,
                             default_window, describe, engine_kwargs, load_model, unit_names,
                             use_incremental)
    from ..plot import value_text
    from ..windows import window_grid

    if args.out.exists() and not args.out.is_dir():
        raise InvalidArgument(f"--out {str(args.out)!r} is a file; give a folder")
    check_options(args)
    if cluster.wanted(args):
        cluster.check_options(args)  # --workers bounds, the --scheduler address: before work
    model = load_model(args)
    check_batch_memory(args, model.input_shape)
    window = default_window(args, model)
    window_grid(model.input_shape[1:], window, args.stride)  # a bad window fails first
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = _read_inputs(args.images, model)  # every image checked before any work
    args.claim = _claim_outputs(args.out, [f"{job[1]}_{model.name}" for job in jobs])
    loaded = {job[0]: tuple(job[1:]) for job in jobs}
    if args.model not in zoo.MODEL_NAMES:  # the zoo nets' blobs are all (N, C, ...)
        check_output(model, jobs[0][2].x)
    classes = check_classes(args, model, jobs[0][2].x)
    args.pool_info = {}

    def prepare_image(args, model, spec, window):
        return _prepare_image(args, model, spec, window, loaded[spec])

    prepared, resumable, first = {}, {}, {}
    if not cluster.wanted(args):  # the first image's pool and sampler: their errors come
        first[jobs[0][0]] = prepare_image(args, model, jobs[0][0], window)  # before a wait
    # the measured decision (announced; once per model and machine) when nothing else can fail
    note = use_incremental(model, args, window)
    if cluster.wanted(args):  # every image on a Dask cluster; handed over as checkpoints
        for spec in loaded:
            stem = args.out / f"{loaded[spec][0]}_{model.name}"
            resumable[spec] = _resumable(stem.with_name(stem.name + ".ckpt.npz"))
        prepared = cluster.explain_images(args, model, window, prepare_image, engine_kwargs)
    for spec in loaded:
        started = time.perf_counter()
        name, x, pool, sampler, stem, checkpoint = (
            prepared.get(spec) or first.pop(spec, None)
            or prepare_image(args, model, spec, window))
        resumed = resumable.get(spec, False) if prepared else _resumable(checkpoint)
        explanation = prediction_difference(
            x, model.classifier, sampler, **engine_kwargs(args, model, window),
            checkpoint=checkpoint, keep_checkpoint=True,
            progress=not args.no_progress and not prepared)
        if resumed:
            _say_resumed(checkpoint)
        explanation.relevance = round_relevance(explanation.relevance,
                                                getattr(args, "compat", "intended"))
        units = len(explanation.units[model.blob])
        names = unit_names(model, units)
        top = explanation.top_classes(model.blob, args.top, names=False)
        clean = explanation.clean_values(model.blob)
        shown = top + [(i, float(clean[i])) for i in classes if i not in dict(top)]
        explanation.metadata.update(describe(model, explanation, top, shown, names, args,
                                             args.pool_info[spec]))
        explanation.metadata.update({
            "image": spec, "argv": sys.argv[1:], "incremental": note,
            "seconds_with_sampler_fit": time.perf_counter() - started,
        })
        npz = stem.with_name(stem.name + ".npz")
        explanation.save(npz, dtype=np.float32, compress=True,
                         units="all" if args.save_all else {model.blob: [i for i, _ in shown]})
        png = _figure(model, explanation, shown, names, stem)
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)
        seconds = time.perf_counter() - started
        label = "p" if model.probability else model.blob
        tops = ", ".join(f"{names[i]} ({label}={value_text(v)})" for i, v in top)
        print(f"{spec}: {tops}")
        if shown[len(top):]:
            print("  also: " + ", ".join(f"{names[i]} ({label}={value_text(v)})"
                                         for i, v in shown[len(top):]))
        uncovered = int((explanation.counts == 0).sum())
        if uncovered:
            print(f"  note: {uncovered} pixels lie in no window (stride {args.stride} > window "
                  f"{window}): their relevance is 0", file=sys.stderr)
        provider = getattr(model.classifier, "provider", None) or "?"
        print(f"  {_time_text(seconds, explanation, resumed, len(loaded) if prepared else 0)}"
              f" on {provider.replace('ExecutionProvider', '')}; {note}); wrote {npz} and {png}")
    return 0
