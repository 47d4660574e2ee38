"""Figure 2: the top-3 classes in the penultimate layer vs the output layer.

Paper (§4.2, Fig. 2): AlexNet, conditional sampling, k = 10, l = 2, S = 20; for each image
the first row explains the top-3 classes' units of the penultimate layer ``fc8`` (activation
difference, eq. (9)), the second row the same classes in the output layer ``prob`` (weight of
evidence, eq. (4)-(5)); the unit values are in the titles.

Smoke scale: the real Caffe LeNet (penultimate ``ip2``, output ``prob``) on two digits,
k = 4, l = 2, S = 10.

    python -m reproduce.fig2 [--scale paper|smoke] [--set KEY=VALUE ...] [--force]
"""
from __future__ import annotations

from . import common

FIGURE = "fig2"
BASE = {"padding": 2, "stride": 1, "seed": 0, "colour": "per-channel", "preprocess": "crop",
        "laplace_n": 100000, "pool_dir": None, "top": 3}
CONFIG = {
    "paper": {**BASE, "model": "alexnet",
              "images": ["chelsea", "n01855672_8202", "n02488291_1177", "n02917067_1599"],
              "window": 10, "num_samples": 20, "num_patches": 25000, "incremental": True, "weights": "zoo",
              "random_factor": 1, "random_seed": 0,
              "batch_size": 64},
    "smoke": {**BASE, "model": "lenet", "images": ["digits:5", "digits:9"],
              "window": 4, "num_samples": 10, "num_patches": 5000, "incremental": False,
              "batch_size": 500},
}


def compute(run: common.Run) -> list[dict]:
    """Per image: the top classes, their unit values and relevance in both layers."""
    cfg = run.config
    model = common.load_model(run, cfg["model"])
    out = []
    for image in common.load_inputs(run, model, cfg["images"]):
        classes, _ = common.top_classes(model, image.x, int(cfg["top"]))
        classes = [int(c) for c in classes]
        layers = (model.penultimate, model.output)
        pda = common.explain(run, model, image, sampler="conditional", window=cfg["window"],
                             units={blob: classes for blob in layers})
        out.append({"model": model, "image": image, "classes": classes, "layers": layers,
                    "values": {b: [float(pda[f"clean/{b}"][c]) for c in classes] for b in layers},
                    "maps": {b: [common.unit_map(pda, b, c) for c in classes] for b in layers}})
    return out


def plot(run: common.Run, items: list[dict]):
    top = int(run.config["top"])
    fig, axes = common.subplots(2 * len(items), top + 1, size=2.0)
    for i, item in enumerate(items):
        model = item["model"]
        for j, blob in enumerate(item["layers"]):
            r = 2 * i + j
            kind = "penultimate" if blob == model.penultimate else "output"
            if j == 0:
                common.show_image(axes[r, 0], item["image"].display, title=item["image"].title)
            else:
                axes[r, 0].axis("off")
            axes[r, 1].set_ylabel(f"{kind} layer\n{blob!r}", fontsize=8)
            for c, (cls, value, relevance) in enumerate(
                    zip(item["classes"], item["values"][blob], item["maps"][blob])):
                unit = f"p = {value:.3f}" if blob == model.output else f"{blob} = {value:.2f}"
                common.show_signed(axes[r, c + 1], relevance,
                                   title=f"{common.short_label(model.labels[cls])}\n{unit}")
    cfg = run.config
    title = (f"Fig. 2 — top-{top} classes, penultimate vs output layer:\n"
             f"{items[0]['model'].label}, conditional, k={cfg['window']}, l={cfg['padding']}, "
             f"S={cfg['num_samples']}, stride {cfg['stride']} ({run.scale} scale)")
    common.suptitle(fig, title, fontsize=10)
    common.signed_colorbar(fig, axes[:, 1:])
    return fig


def main(argv: list[str] | None = None) -> int:
    run = common.parse_args(FIGURE, __doc__.split("\n\n")[0], CONFIG, argv)
    items = compute(run)
    fig = plot(run, items)
    maps, classes = {}, {}
    for item in items:
        key = f"{item['model'].name}/{item['image'].name}"
        classes[key] = item["classes"]
        for blob in item["layers"]:
            for cls, relevance in zip(item["classes"], item["maps"][blob]):
                maps[f"{key}/{blob}/{cls}"] = relevance
    common.finish(run, fig, images=run.config["images"], relevance=maps, classes=classes)
    return 0


if __name__ == "__main__":
    common.run_main(main, "python -m reproduce.fig2")
