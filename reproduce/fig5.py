"""Figure 5: what three layers of GoogLeNet respond to, feature map by feature map.

Paper (§4.4, Fig. 5): GoogLeNet, conditional sampling, k = 10, l = 2, S = 20, the tabby cat;
for each feature map of ``conv1/7x7_s2``, ``inception_3a/output`` and ``inception_5b/output``
the activation difference (eq. (9)) averaged over the map's units, as the released code did.
We show, per layer, the ``maps_per_layer`` maps with the largest |relevance| (largest first),
on one colour scale per layer so that weak maps look weak.

Smoke scale: a narrow random-weight GoogLeNet (same topology, channels / 8, fixed seed) on
the cat, with 14×14 windows at stride 14 (non-overlapping: the released code's fast mode) and
S = 3, so that every code path runs in seconds.

    python -m reproduce.fig5 [--scale paper|smoke] [--set KEY=VALUE ...] [--force]
"""
from __future__ import annotations

import numpy as np

from . import common

FIGURE = "fig5"
LAYERS = ["conv1/7x7_s2", "inception_3a/output", "inception_5b/output"]
BASE = {"padding": 2, "seed": 0, "colour": "per-channel", "preprocess": "crop",
        "pool_dir": None, "model": "googlenet", "image": "chelsea",
        "layers": LAYERS, "maps_per_layer": 16, "columns": 8}
CONFIG = {
    "paper": {**BASE, "window": 10, "stride": 1, "num_samples": 20, "num_patches": 25000, "incremental": True,
              "weights": "zoo", "random_factor": 1, "random_seed": 0, "batch_size": 64},
    "smoke": {**BASE, "window": 14, "stride": 14, "num_samples": 3, "num_patches": 2000, "incremental": False,
              "weights": "random", "random_factor": 8, "random_seed": 0, "batch_size": 64},
}


def layer_units(cfg) -> dict:
    """The ``units`` request of the layers' explanation (shared with Fig. 6's cache)."""
    return {layer: int(cfg["maps_per_layer"]) for layer in cfg["layers"]}


def compute(run: common.Run) -> dict:
    cfg = run.config
    model = common.load_model(run, cfg["model"])
    (image,) = common.load_inputs(run, model, [cfg["image"]])
    pda = common.explain(run, model, image, sampler="conditional", window=int(cfg["window"]),
                         units=layer_units(cfg))
    layers = {}
    for layer in cfg["layers"]:
        layers[layer] = {"units": [int(u) for u in pda[f"units/{layer}"]],
                         "maps": pda[f"relevance/{layer}"],
                         "count": len(pda[f"absmax/{layer}"])}
    return {"model": model, "image": image, "layers": layers}


def plot(run: common.Run, result: dict):
    """The input on the left; per layer a block of maps on one colour scale, titled with the
    layer, how many of its maps are shown and its largest |activation difference|."""
    from matplotlib.figure import Figure

    cfg = run.config
    cols = int(cfg["columns"])
    blocks = list(result["layers"].items())
    rows_per = [max(1, -(-len(item["units"]) // cols)) for _, item in blocks]
    size = 1.45
    fig = Figure(figsize=(size * (cols + 1.6), size * sum(rows_per) + 0.45 * len(blocks) + 0.8),
                 layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1.6, cols])
    ax, cax, rest = left.subplots(3, 1, height_ratios=[1.6, 0.1, max(sum(rows_per) - 2.0, 0.5)])
    common.show_image(ax, result["image"].display, title=result["image"].title)
    ax.set_xticks([])
    ax.set_yticks([])
    rest.axis("off")
    common.signed_colorbar(left, [ax], relative_to="max |AD| of the layer", cax=cax)
    subs = right.subfigures(len(blocks), 1, height_ratios=rows_per) if len(blocks) > 1 else [right]
    for sub, (layer, item), nrows in zip(subs, blocks, rows_per):
        vmax = float(np.abs(item["maps"]).max()) if item["maps"].size else 0.0
        sub.suptitle(f"{layer}: the {len(item['units'])} of {item['count']} maps with the largest "
                     f"|relevance|, max |AD| = {vmax:.2g}", fontsize=9)
        axes = sub.subplots(nrows, cols, squeeze=False)
        for n, ax in enumerate(axes.flat):
            if n < len(item["units"]):
                common.show_signed(ax, item["maps"][n], vmax=vmax, title=f"map {item['units'][n]}")
            else:
                ax.axis("off")
    model = result["model"]
    title = (f"Fig. 5 — feature-map relevance (activation difference, one colour scale per "
             f"layer): {model.label},\nconditional, k={cfg['window']}, l={cfg['padding']}, "
             f"S={cfg['num_samples']}, stride {cfg['stride']} ({run.scale} scale)")
    common.suptitle(fig, title, fontsize=10)
    return fig


def main(argv: list[str] | None = None) -> int:
    run = common.parse_args(FIGURE, __doc__.split("\n\n")[0], CONFIG, argv)
    result = compute(run)
    fig = plot(run, result)
    key = f"{result['model'].name}/{result['image'].name}"
    maps = {}
    for layer, item in result["layers"].items():
        for unit, relevance in zip(item["units"], item["maps"]):
            maps[f"{key}/{layer}/{unit}"] = relevance
    classes = {f"{key}/{layer}/shown": item["units"] for layer, item in result["layers"].items()}
    common.finish(run, fig, images=[run.config["image"]], relevance=maps, classes=classes)
    return 0


if __name__ == "__main__":
    common.run_main(main, "python -m reproduce.fig5")
