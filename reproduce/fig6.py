"""Figure 6: four feature maps of GoogLeNet's ``inception_3a/output`` across images.

Paper (§4.4, Fig. 6): GoogLeNet, conditional sampling, k = 10, l = 2, S = 20; the relevance
of the input for four feature maps of ``inception_3a/output`` (activation difference, eq. (9),
averaged over each map's units), for several images. The paper picked its four maps by hand;
by default (``maps: null``) we take the four maps with the largest |relevance| on the first
image — whose explanation is the one of Fig. 5, shared through the cache when the parameters
agree — and ``--set maps=[...]`` chooses others.

Smoke scale: the narrow random-weight GoogLeNet of Fig. 5 on four images, coarse stride.

    python -m reproduce.fig6 [--scale paper|smoke] [--set maps=[1,2,3,4]] [--force]
"""
from __future__ import annotations

from . import common, fig5

FIGURE = "fig6"
CONFIG = {
    scale: {**{k: v for k, v in fig5.CONFIG[scale].items() if k not in ("image", "columns")},
            "blob": "inception_3a/output", "maps": None, "num_maps": 4}
    for scale in common.SCALES
}
CONFIG["paper"]["images"] = ["chelsea", "n01855672_8202", "n02488291_1177", "n02917067_1599",
                             "coffee", "astronaut", "rocket"]
CONFIG["smoke"]["images"] = ["chelsea", "n01855672_8202", "coffee", "astronaut"]


def compute(run: common.Run) -> dict:
    cfg = run.config
    model = common.load_model(run, cfg["model"])
    images = common.load_inputs(run, model, cfg["images"])
    blob = cfg["blob"]
    maps = cfg["maps"]
    first = None
    if maps is None:  # the top maps of the first image, from Fig. 5's explanation
        first = common.explain(run, model, images[0], sampler="conditional",
                               window=int(cfg["window"]), units=fig5.layer_units(cfg))
        maps = [int(u) for u in first[f"units/{blob}"][: int(cfg["num_maps"])]]
    rows = []
    for n, image in enumerate(images):
        if n == 0 and first is not None:
            # Fig. 5's explanation of this image already holds these maps (same seeds, same
            # samples): explaining it again for one blob would double the first image's cost
            # (hours at paper scale) for the same numbers.
            pda = first
        else:
            pda = common.explain(run, model, image, sampler="conditional",
                                 window=int(cfg["window"]), units={blob: maps})
        rows.append({"image": image, "maps": [common.unit_map(pda, blob, m) for m in maps]})
    return {"model": model, "units": maps, "rows": rows}


def plot(run: common.Run, result: dict):
    cfg = run.config
    units = result["units"]
    fig, axes = common.subplots(len(result["rows"]), len(units) + 1, size=1.8)
    for r, row in enumerate(result["rows"]):
        common.show_image(axes[r, 0], row["image"].display, ylabel=row["image"].title)
        for c, relevance in enumerate(row["maps"]):
            common.show_signed(axes[r, c + 1], relevance,
                               title=f"map {units[c]}" if r == 0 else None)
    model = result["model"]
    title = (f"Fig. 6 — four feature maps of {cfg['blob']!r} across images: {model.label},\n"
             f"conditional, k={cfg['window']}, l={cfg['padding']}, "
             f"S={cfg['num_samples']}, stride {cfg['stride']} ({run.scale} scale)")
    common.suptitle(fig, title, fontsize=9)
    common.signed_colorbar(fig, axes[:, 1:])
    return fig


def main(argv: list[str] | None = None) -> int:
    run = common.parse_args(FIGURE, __doc__.split("\n\n")[0], CONFIG, argv)
    result = compute(run)
    fig = plot(run, result)
    name = result["model"].name
    maps = {f"{name}/{row['image'].name}/{run.config['blob']}/{u}": m
            for row in result["rows"] for u, m in zip(result["units"], row["maps"])}
    common.finish(run, fig, images=run.config["images"], relevance=maps,
                  classes={f"{name}/{run.config['blob']}/shown": result["units"]})
    return 0


if __name__ == "__main__":
    common.run_main(main, "python -m reproduce.fig6")
