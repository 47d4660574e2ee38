"""``preddiff evaluate``: how faithful is each explanation? (deletion/insertion, sanity check)

Runs :func:`preddiff.evaluate.compare` on the bundled LeNet and digits (offline, CPU), or with
``--model FILE.onnx`` on a user's network (explain's preprocessing options; a colour network
on the image files given, by default the bundled ImageNet photographs, with explain's
marginal pool), and writes the table: PDA marginal and conditional, grey-patch occlusion, the sensitivity map and
a random map, under each fill, mean ± standard error over the digits.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ..fileio import atomic_path, atomic_write_text

ORDER = 70

POOL_START = 200
"""The digits explained are taken from 0 … 199; the samplers' pool is digits 200 … 1796."""


def register(subparsers) -> None:
    """Add the ``evaluate`` sub-command."""
    p = subparsers.add_parser(
        "evaluate",
        help="deletion/insertion curves and the model-randomisation check of every explanation",
        description="Quantitative evaluation on the bundled LeNet digits: deletion and "
        "insertion AUC (Petsiuk et al. 2018), the probability change after deleting the most "
        "negative pixels, and the cascading model-randomisation sanity check (Adebayo et al. "
        "2018) for PDA (marginal, conditional), grey-patch occlusion, the sensitivity map and "
        "a random map. Writes evaluation.md, evaluation.csv, evaluation.json and "
        "evaluation.npz into --out.",
    )
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="with --model FILE.onnx of a colour network: the image files to "
                   "evaluate on (default: the three bundled ImageNet photographs)")
    p.add_argument("--model", default="lenet",
                   help="lenet (default: the bundled LeNet and digits), or a FILE.onnx (or "
                   "alexnet, googlenet, vgg16) with explain's preprocessing options")
    p.add_argument("--blob", default=None,
                   help="the probability blob (default: the output a Softmax node produces)")
    p.add_argument("--pool", type=Path, default=None, metavar="DIR",
                   help="colour network: images the samplers and fills learn from (default: "
                   "explain's marginal pool, the views of the offline photographs that are "
                   "not evaluated)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="onnxruntime device (default: CUDA when available)")
    g = p.add_argument_group("ONNX files (--model FILE.onnx), as for explain")
    g.add_argument("--input-size", default=None, metavar="HxW",
                   help="the size to resize images to, for a model with a free input size")
    g.add_argument("--resize", choices=("crop", "stretch"), default=None,
                   help="fit images to the input: crop (default) or stretch")
    g.add_argument("--mean", default=None, metavar="R,G,B",
                   help="subtract this per-channel mean (on the [0, 1] scale)")
    g.add_argument("--std", default=None, metavar="R,G,B",
                   help="then divide by this per-channel standard deviation")
    g.add_argument("--normalize", choices=("imagenet",), default=None,
                   help="imagenet: torchvision's --mean and --std")
    g.add_argument("--policy", choices=("crop", "resize"), default=None,
                   help="zoo nets: centre crop without resizing (default) or resize to 256")
    p.add_argument("--digits", type=int, default=20, metavar="N",
                   help=f"explain digits 0 … N-1 (at most {POOL_START}; default 20); the pool "
                   f"is digits {POOL_START}-1796")
    p.add_argument("--fill", action="append", choices=("marginal", "conditional", "mean"),
                   help="fill of removed pixels; repeat for several (default: all three)")
    p.add_argument("--window", type=int, default=4, help="PDA/occlusion window k (default 4)")
    p.add_argument("--padding", type=int, default=2, help="conditional padding l (default 2)")
    p.add_argument("--samples", type=int, default=10, help="PDA samples S (default 10)")
    p.add_argument("--stride", type=int, default=2,
                   help="window stride (default 2; 1 is the paper's, about 3x slower)")
    p.add_argument("--step", type=float, default=0.05,
                   help="fraction of the pixels per curve step (default 0.05)")
    p.add_argument("--draws", type=int, default=3,
                   help="fill draws averaged for random fills (default 3)")
    p.add_argument("--no-randomisation", action="store_true",
                   help="skip the model-randomisation sanity check")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--batch-size", type=int, default=500, help="images per classifier call")
    p.add_argument("--out", type=Path, default=Path("evaluation"),
                   help="output folder (default ./evaluation)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    from ..cluster import add_arguments as add_cluster_arguments

    add_cluster_arguments(p)  # --workers N | --scheduler ADDRESS: one task per digit
    p.set_defaults(func=run)


def _atomic_npz(path: Path, arrays) -> None:
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def lenet_inputs(num_digits: int):
    """``(images (N, 1, 28, 28), ids, pool)``: digits 0 … N-1 and the pool 200 … 1796."""
    from ..digits import load_digits
    from ..errors import InvalidArgument

    if not 1 <= num_digits <= POOL_START:
        raise InvalidArgument(f"--digits must be in 1..{POOL_START}, got {num_digits}")
    images, _ = load_digits()
    return images[:num_digits], list(range(num_digits)), images[POOL_START:]


def _user_inputs(args):
    """``--model FILE.onnx`` (or a zoo net): the images, ids, pool, model, its description,
    sha1, and the output/grey/mean fill, prepared as ``preddiff explain`` prepares them."""
    import numpy as np
    import onnx

    from ..errors import InvalidArgument
    from ..explainer import Input, check_options, load_model, options, read_image
    from ..images import example_images, natural_views, photos_like, same_picture
    from ..preprocess import load_image

    opts = options(model=args.model, blob=args.blob, input_size=args.input_size,
                   resize=args.resize, mean=args.mean, std=args.std,
                   normalize=args.normalize, policy=args.policy, device=args.device,
                   batch_size=args.batch_size, sampler="marginal", incremental="off")
    check_options(opts)
    net = load_model(opts)
    if not net.probability:
        raise InvalidArgument(f"evaluate needs a probability blob: {net.probability_reason}; "
                              "name the Softmax output with --blob")
    proto = onnx.load(net.source) if isinstance(net.source, str) else net.source
    if net.gray and not args.images:
        from ..digits import load_digits

        if not 1 <= args.digits <= POOL_START:
            raise InvalidArgument(f"--digits must be in 1..{POOL_START}, got {args.digits}")
        digits = load_digits()[0]
        items = [Input(f"digit{i}", net.preprocess(digits[i][0])) for i in range(args.digits)]
        pool = np.stack([net.preprocess(d[0]) for d in digits[POOL_START:]])
        what = f"the bundled digits 0-{args.digits - 1}"
    else:
        specs = [str(i) for i in args.images] or [
            str(p) for p in sorted((Path(__file__).parents[1] / "data" / "images").glob("*.jpg"))]
        items = [read_image(spec, net) for spec in specs]
        thumbs = [it.thumbnail for it in items]
        if args.pool is None:
            same = {k for t in thumbs for k in photos_like(t)}
            views = natural_views(net.min_view) if not net.gray else \
                list(example_images().items())
            pictures = [v for k, v in views if k.split(":")[0] not in same]
        else:
            if not args.pool.is_dir():
                raise InvalidArgument(f"--pool {str(args.pool)!r} is not a folder")
            from ..explainer import IMAGE_SUFFIXES

            pictures = []
            for path in sorted(args.pool.iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    picture = load_image(path)
                    if not any(same_picture(t, picture) for t in thumbs):
                        pictures.append(picture)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pool = [net.preprocess(p) for p in pictures]
        if not pool:
            raise InvalidArgument("the pool holds no image other than the ones evaluated; give "
                                  "--pool DIR")
        pool = np.stack(pool)
        what = f"{len(items)} images ({', '.join(specs[:5])}{' …' if len(specs) > 5 else ''})"
    images = np.stack([it.x for it in items])
    grey = pool.reshape(len(pool), pool.shape[1], -1).mean(axis=(0, 2))  # the mean colour
    describe = f"{net.name} (ONNX, sha1 {net.sha1[:12]}) on {what}, blob {net.blob!r}"
    return (images, list(range(len(items))), pool, proto, describe, net.sha1,
            {"output": net.blob, "grey": grey, "mean_value": None})


def _command(args: argparse.Namespace, fills) -> str:
    """The full command line that regenerates this run (every option spelled out)."""
    parts = ["preddiff", "evaluate", *map(str, args.images), "--digits", str(args.digits)]
    if args.model != "lenet":
        parts += ["--model", str(args.model)]
        for name in ("blob", "input_size", "resize", "mean", "std", "normalize", "policy",
                     "pool"):
            if getattr(args, name) is not None:
                parts += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    for fill in fills:
        parts += ["--fill", fill]
    parts += ["--window", str(args.window), "--padding", str(args.padding), "--samples",
              str(args.samples), "--stride", str(args.stride), "--step", f"{args.step:g}",
              "--draws", str(args.draws), "--seed", str(args.seed)]
    if args.no_randomisation:
        parts.append("--no-randomisation")
    return " ".join(parts + ["--out", str(args.out)])


PROGRESS_DIR = "evaluation-progress"


def _resumable(out: Path, settings: dict):
    """``per_image`` hook of :func:`preddiff.evaluate.compare` that keeps each finished
    image's numbers in ``OUT/evaluation-progress/`` (atomically), so an interrupted run started
    again with the same arguments resumes; files written with other settings are recomputed."""
    import numpy as np

    folder = out / PROGRESS_DIR
    key = json.dumps(settings, sort_keys=True)

    def per_image(image_id, compute):
        path = folder / f"digit{image_id}.npz"
        if path.is_file():
            try:
                with np.load(path) as saved:
                    if str(saved["__settings__"]) == key:
                        return {k: saved[k] for k in saved.files if k != "__settings__"}
            except Exception as exc:  # noqa: BLE001 - truncated zip, bad pickle, ...
                reason = " ".join(str(exc).split())[:200] or type(exc).__name__
                print(f"preddiff: warning: {path} is damaged ({reason}): digit {image_id} is "
                      "computed again", file=sys.stderr)
        arrays = compute()
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, __settings__=np.array(key), **arrays)
        return arrays
    return per_image


def run(args: argparse.Namespace) -> int:
    import onnx
    import onnxruntime

    from .. import zoo
    from ..errors import InvalidArgument
    from ..evaluate import FILLS, compare, csv_text, step_fractions

    for name in ("window", "samples", "stride", "draws", "batch_size"):
        if getattr(args, name) < 1:
            raise InvalidArgument(f"--{name.replace('_', '-')} must be >= 1, "
                                  f"got {getattr(args, name)}")
    if args.seed < 0:
        raise InvalidArgument(f"--seed must be a non-negative integer, got {args.seed}")
    if args.padding < 0:
        raise InvalidArgument(f"--padding must be >= 0, got {args.padding}")
    fills = tuple(dict.fromkeys(args.fill or FILLS))
    target = {"output": None, "grey": 0.0, "mean_value": None}
    if args.model == "lenet":
        if args.images:
            raise InvalidArgument("IMAGE arguments need --model FILE.onnx of a colour "
                                  "network; LeNet is evaluated on the bundled digits (--digits)")
        given = [f"--{n.replace('_', '-')}" for n in ("input_size", "resize", "mean", "std",
                                                      "normalize", "policy", "blob", "pool")
                 if getattr(args, n) is not None]
        if given:
            raise InvalidArgument(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'}"
                                  " with --model FILE.onnx (or a zoo colour net) only")
        images, ids, pool = lenet_inputs(args.digits)
        model = onnx.load(os.fspath(zoo.ensure_onnx("lenet")))
        describe_model = "Caffe LeNet (bundled weights) on the bundled UCI digits"
        model_sha1 = zoo.manifest("lenet").sha1
    else:
        images, ids, pool, model, describe_model, model_sha1, target = _user_inputs(args)
    # a step below one pixel only repeats steps (1e-9: a billion of them, and gigabytes)
    pixels = images.shape[-2] * images.shape[-1]
    step_fractions(pixels, args.step)
    if args.step * pixels < 1 - 1e-9:
        raise InvalidArgument(
            f"--step {args.step:g} is less than one pixel of the {pixels} of "
            f"{'a digit' if args.model == 'lenet' else 'an image'}: give at "
            f"least 1/{pixels} = {1.0 / pixels:.6g} (one pixel a step)")
    from .. import cluster as _cluster

    if _cluster.wanted(args):
        _cluster.check_options(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InvalidArgument(f"--out {str(out)!r} is a file; give a folder")
    settings = {k: getattr(args, k) for k in ("window", "padding", "samples", "stride", "step",
                                              "draws", "seed", "no_randomisation")}
    settings["fills"], settings["model_sha1"] = list(fills), model_sha1
    settings["images"] = [str(i) for i in args.images]
    from contextlib import nullcontext

    from .. import cluster

    started = time.perf_counter()
    with (cluster.connect(workers=args.workers, scheduler=args.scheduler)
          if cluster.wanted(args) else nullcontext()) as client:
        result = compare(images, ids, model, pool, window=args.window, padding=args.padding,
                         num_samples=args.samples, stride=args.stride, fills=fills,
                         step=args.step, num_draws=args.draws,
                         randomise=not args.no_randomisation, seed=args.seed,
                         batch_size=args.batch_size, grey=target["grey"],
                         mean_value=target["mean_value"], device=args.device,
                         progress=not args.no_progress, per_image=_resumable(out, settings),
                         describe_model=describe_model, client=client,
                         output=target["output"])
    seconds = time.perf_counter() - started
    command = _command(args, fills)
    ran = ", ".join(result.providers) or "no network run"
    header = (f"Command: `{command}`\n\nSettings: {result.settings_text()}.\n\n"
              f"Time: {seconds:.0f} s (onnxruntime {onnxruntime.__version__}, {ran}).\n\n")
    table = result.markdown()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "evaluation.md", header + table)
    atomic_write_text(out / "evaluation.csv", csv_text(result.rows, result.settings_text()))
    atomic_write_text(out / "evaluation.json", json.dumps(
        {"command": command, "settings": result.settings, "fills": result.fills,
         "randomised_layers": result.stage_names, "seconds": round(seconds, 1),
         "onnxruntime_providers_used": result.providers}, indent=1)
        + "\n")
    _atomic_npz(out / "evaluation.npz", result.arrays())
    import shutil

    shutil.rmtree(out / PROGRESS_DIR, ignore_errors=True)  # finished: nothing to resume
    print(table)
    print(f"wrote {out}/evaluation.md, .csv, .json, .npz ({seconds:.0f} s)", file=sys.stderr)
    return 0
