"""Figure 1: sensitivity map vs marginal and conditional prediction difference, per network.

Paper (Zintgraf et al. 2016, §4.1, Fig. 1): for AlexNet, GoogLeNet and VGG16 and each image,
(a) the sensitivity map (Simonyan et al. 2013, penultimate layer), (b) the marginal and (d) the
conditional prediction difference of the top class in the output layer (weight of evidence,
eq. (4)-(5)), (c)/(e) each overlaid on the image; k = 10, l = 2, S = 20.

Marginal sampling draws each sample from a different pool image, so with the seven bundled
example images (six once the explained one is left out) it uses S = 6; ``--set pool_dir=DIR``
gives it a folder of ImageNet images instead, as the paper had. The S used is in the column
title and in ``fig1.json``.

Smoke scale: the real Caffe LeNet on three bundled digits, k = 4, l = 2, S = 10 (the pool:
the other 1,796 digits).

    python -m reproduce.fig1 [--scale paper|smoke] [--set KEY=VALUE ...] [--force]
"""
from __future__ import annotations

import textwrap

from . import common

FIGURE = "fig1"
BASE = {"padding": 2, "stride": 1, "seed": 0, "colour": "per-channel",
        "marginal_order": "random", "preprocess": "crop", "laplace_n": 100000,
        "pool_dir": None}
CONFIG = {
    "paper": {**BASE, "models": ["alexnet", "googlenet", "vgg16"],
              "images": ["chelsea", "n01855672_8202", "n02488291_1177", "n02917067_1599"],
              "window": 10, "num_samples": 20, "num_patches": 25000, "incremental": True, "weights": "zoo",
              "random_factor": 1, "random_seed": 0,
              "batch_size": 64},
    "smoke": {**BASE, "models": ["lenet"], "images": ["digits:0", "digits:3", "digits:8"],
              "window": 4, "num_samples": 10, "num_patches": 5000, "incremental": False,
              "batch_size": 500},
}
COLUMNS = ("input", "(a) sensitivity", "(b) marginal", "(c) marginal overlay",
           "(d) conditional", "(e) conditional overlay")


def compute(run: common.Run) -> list[dict]:
    """One row per (image, model): input, top class, sensitivity map, both PDA maps."""
    cfg = run.config
    rows = []
    for image_name in cfg["images"]:
        for model_name in cfg["models"]:
            model = common.load_model(run, model_name)
            (image,) = common.load_inputs(run, model, [image_name])
            (top,), (prob,) = common.top_classes(model, image.x, 1)
            row = {"model": model, "image": image, "class": int(top), "prob": float(prob),
                   "sensitivity": common.sensitivity(run, model, image, int(top))}
            for sampler in ("marginal", "conditional"):
                pda = common.explain(run, model, image, sampler=sampler, window=cfg["window"],
                                     units={model.output: [int(top)]})
                row[sampler] = common.unit_map(pda, model.output, int(top))
                row[f"{sampler}_samples"] = int(pda["num_samples"])
            rows.append(row)
    return rows


def plot(run: common.Run, rows: list[dict]):
    fig, axes = common.subplots(len(rows), len(COLUMNS), size=1.9)
    for r, row in enumerate(rows):
        model, image = row["model"], row["image"]
        label = common.short_label(model.labels[row["class"]])
        # wrapped: a long label (random weights in a dry run) must not run past the row
        ylabel = "\n".join(textwrap.fill(part, 26) for part in (
            model.label, image.title, f"top: {label}, p = {row['prob']:.2f}"))
        common.show_image(axes[r, 0], image.display, ylabel=ylabel)
        common.show_unsigned(axes[r, 1], row["sensitivity"])
        common.show_signed(axes[r, 2], row["marginal"])
        common.show_overlay(axes[r, 3], image.display, row["marginal"])
        common.show_signed(axes[r, 4], row["conditional"])
        common.show_overlay(axes[r, 5], image.display, row["conditional"])
    cfg = run.config
    used = sorted({row["marginal_samples"] for row in rows})
    titles = list(COLUMNS)
    if used != [int(cfg["num_samples"])]:  # marginal sampling: at most one sample per pool image
        titles[2] += f", S={'/'.join(map(str, used))}"
    for c, title in enumerate(titles):
        axes[0, c].set_title(title, fontsize=9)
    title = (f"Fig. 1 — top class in {rows[0]['model'].output!r}: sensitivity (penultimate) vs "
             f"prediction difference, k={cfg['window']}, l={cfg['padding']}, "
             f"S={cfg['num_samples']}, stride {cfg['stride']} ({run.scale} scale)")
    common.suptitle(fig, title, fontsize=10)
    common.signed_colorbar(fig, axes)
    return fig


def main(argv: list[str] | None = None) -> int:
    run = common.parse_args(FIGURE, __doc__.split("\n\n")[0], CONFIG, argv)
    rows = compute(run)
    fig = plot(run, rows)
    maps, classes = {}, {}
    for row in rows:
        key = f"{row['model'].name}/{row['image'].name}"
        for what in ("sensitivity", "marginal", "conditional"):
            maps[f"{key}/{what}"] = row[what]
        classes[key] = row["class"]
    common.finish(run, fig, images=run.config["images"], relevance=maps, classes=classes,
                  extra={"marginal_samples_used": {f"{r['model'].name}/{r['image'].name}":
                                                   r["marginal_samples"] for r in rows}})
    return 0


if __name__ == "__main__":
    common.run_main(main, "python -m reproduce.fig1")
