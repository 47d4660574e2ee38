"""Figure 4: the top 5 % most relevant pixels, sensitivity map vs prediction difference.

Paper (§4.3, Fig. 4): boolean masks of the 5 % of pixels with the largest |relevance|; first
row the sensitivity map (Simonyan et al. 2013), second row the conditional prediction
difference with a 1×1 window (all colour channels), both for the top class's unit in the
penultimate layer of AlexNet (``fc8``; activation difference, eq. (9)); l = 2, S = 20.

Smoke scale: the real Caffe LeNet (penultimate ``ip2``) on four digits, S = 10.

    python -m reproduce.fig4 [--scale paper|smoke] [--set KEY=VALUE ...] [--force]
"""
from __future__ import annotations

from . import common

FIGURE = "fig4"
BASE = {"padding": 2, "stride": 1, "seed": 0, "colour": "per-channel", "preprocess": "crop",
        "laplace_n": 100000, "pool_dir": None, "window": 1, "percent": 5.0}
CONFIG = {
    "paper": {**BASE, "model": "alexnet",
              "images": ["chelsea", "n01855672_8202", "n02488291_1177", "n02917067_1599"],
              "num_samples": 20, "num_patches": 25000, "incremental": True, "weights": "zoo",
              "random_factor": 1, "random_seed": 0, "batch_size": 64},
    "smoke": {**BASE, "model": "lenet", "images": ["digits:0", "digits:4", "digits:6", "digits:7"],
              "num_samples": 10, "num_patches": 5000, "incremental": False, "batch_size": 500},
}


def compute(run: common.Run) -> list[dict]:
    cfg = run.config
    model = common.load_model(run, cfg["model"])
    out = []
    for image in common.load_inputs(run, model, cfg["images"]):
        (top,), _ = common.top_classes(model, image.x, 1)
        pda = common.explain(run, model, image, sampler="conditional", window=int(cfg["window"]),
                             units={model.penultimate: [int(top)]})
        out.append({"model": model, "image": image, "class": int(top),
                    "sensitivity": common.sensitivity(run, model, image, int(top)),
                    "pda": common.unit_map(pda, model.penultimate, int(top))})
    return out


def plot(run: common.Run, items: list[dict]):
    cfg = run.config
    percent = float(cfg["percent"])
    fig, axes = common.subplots(3, len(items), size=2.0)
    for c, item in enumerate(items):
        model = item["model"]
        common.show_image(axes[0, c], item["image"].display,
                          title=f"{item['image'].title}\n{common.short_label(model.labels[item['class']])}")
        common.show_mask(axes[1, c], item["sensitivity"], percent)
        common.show_mask(axes[2, c], item["pda"], percent)
    k = int(cfg["window"])
    axes[1, 0].set_ylabel("sensitivity map", fontsize=8)
    axes[2, 0].set_ylabel(f"prediction difference\nconditional, {k}×{k}", fontsize=8)
    title = (f"Fig. 4 — top {percent:g} % of |relevance| (white) for the top class in "
             f"{items[0]['model'].penultimate!r}\n({items[0]['model'].label}, "
             f"S={cfg['num_samples']}, {run.scale} scale)")
    common.suptitle(fig, title, fontsize=10)
    return fig


def main(argv: list[str] | None = None) -> int:
    run = common.parse_args(FIGURE, __doc__.split("\n\n")[0], CONFIG, argv)
    items = compute(run)
    fig = plot(run, items)
    maps, classes = {}, {}
    for item in items:
        key = f"{item['model'].name}/{item['image'].name}"
        maps[f"{key}/sensitivity"] = item["sensitivity"]
        maps[f"{key}/conditional_k{int(run.config['window'])}"] = item["pda"]
        classes[key] = item["class"]
    common.finish(run, fig, images=run.config["images"], relevance=maps, classes=classes)
    return 0


if __name__ == "__main__":
    common.run_main(main, "python -m reproduce.fig4")
