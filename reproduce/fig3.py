"""Figure 3: how the window size changes the visualisation.

Paper (§4.3, Fig. 3): AlexNet, conditional sampling, one image, window sizes k = 1, 4, 7 and
10 (``--set windows=[...]`` to change them), l = 2, S = 20, top class in ``prob``.

Smoke scale: the real Caffe LeNet on one digit, k = 1, 2, 4, 7 (a 28×28 input), S = 10.

    python -m reproduce.fig3 [--scale paper|smoke] [--set windows=[1,4,7,10]] [--force]
"""
from __future__ import annotations

import textwrap

from . import common

FIGURE = "fig3"
BASE = {"padding": 2, "stride": 1, "seed": 0, "colour": "per-channel", "preprocess": "crop",
        "laplace_n": 100000, "pool_dir": None}
CONFIG = {
    "paper": {**BASE, "model": "alexnet", "image": "n01855672_8202", "windows": [1, 4, 7, 10],
              "num_samples": 20, "num_patches": 25000, "incremental": True, "weights": "zoo",
              "random_factor": 1, "random_seed": 0, "batch_size": 64},
    "smoke": {**BASE, "model": "lenet", "image": "digits:2", "windows": [1, 2, 4, 7],
              "num_samples": 10, "num_patches": 5000, "incremental": False, "batch_size": 500},
}


def compute(run: common.Run) -> dict:
    cfg = run.config
    model = common.load_model(run, cfg["model"])
    (image,) = common.load_inputs(run, model, [cfg["image"]])
    (top,), (prob,) = common.top_classes(model, image.x, 1)
    maps = []
    for window in cfg["windows"]:
        pda = common.explain(run, model, image, sampler="conditional", window=int(window),
                             units={model.output: [int(top)]})
        maps.append(common.unit_map(pda, model.output, int(top)))
    return {"model": model, "image": image, "class": int(top), "prob": float(prob), "maps": maps}


def plot(run: common.Run, result: dict):
    windows = run.config["windows"]
    model, image = result["model"], result["image"]
    fig, axes = common.subplots(2, len(windows) + 1, size=2.2)
    label = common.short_label(model.labels[result["class"]])
    common.show_image(axes[0, 0], image.display, title="\n".join(
        textwrap.fill(part, 24) for part in (image.title, f"top: {label}, p = {result['prob']:.2f}")))
    axes[1, 0].axis("off")
    for c, (window, relevance) in enumerate(zip(windows, result["maps"])):
        common.show_signed(axes[0, c + 1], relevance, title=f"window {window}×{window}")
        common.show_overlay(axes[1, c + 1], image.display, relevance)
    axes[0, 1].set_ylabel("relevance", fontsize=8)
    axes[1, 1].set_ylabel("overlay", fontsize=8)
    cfg = run.config
    title = (f"Fig. 3 — window size: {model.label}, conditional, l={cfg['padding']}, "
             f"S={cfg['num_samples']}, {label} in {model.output!r} ({run.scale} scale)")
    common.suptitle(fig, title, fontsize=10)
    common.signed_colorbar(fig, axes[:, 1:])
    return fig


def main(argv: list[str] | None = None) -> int:
    run = common.parse_args(FIGURE, __doc__.split("\n\n")[0], CONFIG, argv)
    result = compute(run)
    fig = plot(run, result)
    key = f"{result['model'].name}/{result['image'].name}"
    maps = {f"{key}/k{w}": m for w, m in zip(run.config["windows"], result["maps"])}
    common.finish(run, fig, images=[run.config["image"]], relevance=maps,
                  classes={key: result["class"]})
    return 0


if __name__ == "__main__":
    common.run_main(main, "python -m reproduce.fig3")
