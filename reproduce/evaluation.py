"""Quantitative evaluation: which explanation points at what the classifier really uses?

Deletion and insertion curves (Petsiuk et al. 2018) under three fills (marginal, conditional,
mean), the probability change after deleting the 10 % most negative pixels, and the cascading
model-randomisation sanity check (Adebayo et al. 2018), for PDA marginal, PDA conditional,
grey-patch occlusion, the sensitivity map and a random map (:func:`preddiff.evaluate.compare`).

* LeNet (bundled, real weights) on the bundled digits, on the CPU: paper scale 30 digits,
  smoke scale 5 digits; k = 4, l = 2, S = 10, stride 2, the full cascade (ip2 … conv1).
* The zoo nets (paper scale only) when their weights are present, k = 10 with stride 10 and a
  partial cascade (the conditional fill and PDA at full resolution cost minutes per map);
  otherwise the table says "weights absent, skipped".

Outputs (``figures/<scale>/``): ``evaluation.md`` (tables with the settings and the command),
``evaluation.csv`` (LeNet; ``evaluation_<net>.csv`` for zoo nets), ``evaluation_curves.png``,
``evaluation_randomisation.png`` and ``evaluation.json`` (configuration, versions, timings).
Per-image results are cached in ``figures/cache/<scale>/`` (an interrupted run resumes).

    python -m reproduce.evaluation [--scale paper|smoke] [--set KEY=VALUE ...] [--force]
"""
from __future__ import annotations

import shlex
import time

import numpy as np

from preddiff.fileio import atomic_write_text

from . import common

FIGURE = "evaluation"
BASE = {"seed": 0, "window": 4, "padding": 2, "num_samples": 10, "step": 0.05,
        "num_draws": 3, "negative_fraction": 0.1, "fills": ["marginal", "conditional", "mean"],
        "num_patches": 5000, "colour": "per-channel", "batch_size": 500, "randomise": True,
        "preprocess": "crop", "pool_dir": None,
        "zoo_images": ["chelsea", "n01855672_8202", "n02488291_1177", "n02917067_1599"],
        "zoo_window": 10, "zoo_stride": 10, "zoo_num_samples": 10, "zoo_stages": [1, 2, 4],
        "zoo_num_patches": 20000, "zoo_batch_size": 64}
CONFIG = {
    "paper": {**BASE, "digits": 30, "stride": 2, "zoo": ["alexnet", "googlenet", "vgg16"]},
    "smoke": {**BASE, "digits": 5, "stride": 2, "zoo": []},
}
POOL_START = 200  # digits 0 … 199 may be explained; the pool is digits 200 … 1796


def _per_image_cache(run: common.Run, tag: str, params: dict):
    def per_image(image_id, compute):
        return run.cached(f"{FIGURE}-{tag}-{image_id}", {**params, "image_id": image_id},
                          compute)
    return per_image


def compute_lenet(run: common.Run):
    """The comparison on the LeNet digits (one cached ``.npz`` per digit)."""
    import onnx

    from preddiff.digits import load_digits
    from preddiff.evaluate import compare

    cfg = run.config
    n = int(cfg["digits"])
    if not 1 <= n <= POOL_START:
        raise ValueError(f"digits={n}: expected 1..{POOL_START}")
    model = common.load_model(run, "lenet")
    images, _ = load_digits()
    params = {"model": "lenet", "onnx_sha256": model.sha256, "config": cfg,
              "preddiff": common._preddiff_version()}
    return compare(images[:n], list(range(n)), onnx.load(str(model.path)), images[POOL_START:],
                   window=int(cfg["window"]), padding=int(cfg["padding"]),
                   num_samples=int(cfg["num_samples"]), stride=int(cfg["stride"]),
                   fills=cfg["fills"], step=float(cfg["step"]), num_draws=int(cfg["num_draws"]),
                   negative_fraction=float(cfg["negative_fraction"]),
                   randomise=bool(cfg["randomise"]), num_patches=int(cfg["num_patches"]),
                   colour=cfg["colour"], grey=0.0, seed=int(cfg["seed"]),
                   batch_size=int(cfg["batch_size"]), progress=run.progress, client=run.client(),
                   per_image=_per_image_cache(run, "lenet", params),
                   describe_model=f"{model.source} (real weights); digits 0–{n - 1} of the "
                   f"bundled UCI set, pool = digits {POOL_START}–1796")


def compute_zoo(run: common.Run, name: str):
    """The comparison on a zoo net, or None when its weights are absent."""
    import onnx

    from preddiff import zoo
    from preddiff.evaluate import compare

    if not zoo.is_present(name):
        return None
    cfg = run.config
    model = common.load_model(run, name)
    inputs = common.load_inputs(run, model, list(cfg["zoo_images"]))
    pool, _ = common.pool_for(run, model, [i.name for i in inputs])
    params = {"model": name, "onnx_sha256": model.sha256, "config": cfg,
              "preddiff": common._preddiff_version()}
    return compare(np.stack([i.x for i in inputs]), list(range(len(inputs))),
                   onnx.load(str(model.path)), pool, window=int(cfg["zoo_window"]),
                   padding=int(cfg["padding"]), num_samples=min(int(cfg["zoo_num_samples"]),
                                                                len(pool)),
                   stride=int(cfg["zoo_stride"]), fills=cfg["fills"], step=float(cfg["step"]),
                   num_draws=int(cfg["num_draws"]),
                   negative_fraction=float(cfg["negative_fraction"]),
                   randomise=bool(cfg["randomise"]), stages=cfg["zoo_stages"],
                   num_patches=int(cfg["zoo_num_patches"]), colour=cfg["colour"], grey=0.0,
                   mean_value=0.0,  # the training-set mean, which the preprocessing subtracts
                   seed=int(cfg["seed"]), batch_size=int(cfg["zoo_batch_size"]),
                   progress=run.progress, per_image=_per_image_cache(run, name, params),
                   client=run.client(),
                   describe_model=f"{name} ({model.source}); images "
                   f"{', '.join(i.name for i in inputs)}")


# ----------------------------------------------------------------------------- plots
COLOURS = {"pda-marginal": "tab:red", "pda-conditional": "tab:purple", "occlusion": "tab:orange",
           "sensitivity": "tab:blue", "random": "tab:gray"}


def plot_curves(result, title: str):
    """Mean curves over the images (± standard error): rows deletion, insertion,
    negative-first deletion; one column per fill."""
    import matplotlib.pyplot as plt

    kinds = (("deletion", "deletion (most relevant first)"),
             ("insertion", "insertion (most relevant first)"),
             ("negative", "deletion, most negative first"))
    fills = list(result.fills)
    fig, axes = plt.subplots(len(kinds), len(fills), figsize=(3.6 * len(fills), 8.4),
                             squeeze=False, sharex=True, layout="constrained")
    fractions = result.results[0]["fractions"]
    for c, fill in enumerate(fills):
        for r, (kind, label) in enumerate(kinds):
            ax = axes[r, c]
            for m in result.methods:
                curves = np.stack([res[f"curve/{fill}/{m.key}/{kind}"] for res in result.results])
                if not np.all(np.isfinite(curves)):
                    continue  # unsigned map: no negative evidence claimed
                mean = curves.mean(axis=0)
                sem = curves.std(axis=0, ddof=1) / np.sqrt(len(curves)) if len(curves) > 1 \
                    else np.zeros_like(mean)
                ax.plot(fractions, mean, color=COLOURS.get(m.key), label=m.label, lw=1.4)
                ax.fill_between(fractions, mean - sem, mean + sem, color=COLOURS.get(m.key),
                                alpha=0.15, lw=0)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            if r == 0:
                ax.set_title(f"fill: {fill}", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{label}\np(class)", fontsize=8)
            if r == len(kinds) - 1:
                ax.set_xlabel("fraction of pixels removed / revealed", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=9)
    return fig


def plot_randomisation(result, title: str):
    """Similarity between the trained and the randomised network's maps along the cascade:
    Spearman and SSIM of |map|, Spearman of the signed map (signed methods only)."""
    import matplotlib.pyplot as plt

    names = result.stage_names
    panels = ((0, "Spearman ρ of |map|"), (1, "SSIM of |map|"),
              (2, "Spearman ρ of the signed map"))
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 3.6), layout="constrained")
    steps = np.arange(len(names))
    for col, (c, label) in enumerate(panels):
        ax = axes[col]
        for m in result.methods:
            if c >= 2 and not m.signed:
                continue
            values = np.stack([res[f"similarity/{m.key}"][:, c] for res in result.results])
            mean = np.nanmean(values, axis=0)
            ax.plot(steps, mean, "o-", color=COLOURS.get(m.key), label=m.label, lw=1.4, ms=4)
        ax.set_xticks(steps, [f"→{n}" for n in names], fontsize=7, rotation=30)
        ax.set_ylabel(label, fontsize=8)
        ax.set_xlabel("layers re-randomised, from the output down to", fontsize=8)
        ax.axhline(0, color="k", lw=0.5)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


# ----------------------------------------------------------------------------- outputs
def _write(path, text: str) -> None:
    atomic_write_text(path, text)


def _machine(providers) -> str:
    """This machine in words (for the timings), with the onnxruntime execution provider(s)
    that actually ran the networks (``Comparison.providers``), not the ones installed."""
    v = common.versions()
    ran = ", ".join(providers) if providers else "no network run, every image from the cache"
    return (f"{v.get('processor') or v.get('machine')}, {v.get('cpu_count')} CPU cores, "
            f"onnxruntime {v.get('onnxruntime')} ({ran})")


def section(name: str, result, seconds: float, reused: int = 0) -> str:
    """A markdown section: settings, the tables, the time (and how many images came from
    the cache, whose time is not included)."""
    cache = f" ({reused} of {len(result.image_ids)} images reused from the cache)" if reused \
        else ""
    return (f"## {name}\n\n"
            + "".join(f"- {k}: {v}\n" for k, v in result.settings.items())
            + f"- time: {seconds:.0f} s on {_machine(result.providers)}"
            f"{cache}\n\n"
            + result.markdown() + "\n")


def main(argv: list[str] | None = None) -> int:
    from preddiff.evaluate import csv_text
    from preddiff.plot import save_figure

    import matplotlib.pyplot as plt

    run = common.parse_args(FIGURE, __doc__.split("\n\n")[0], CONFIG, argv)
    out = run.out_dir
    out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(run.argv)
    parts = [f"# Quantitative evaluation ({run.scale} scale)\n\nCommand: `{command}`\n\n"
             "Mean ± standard error over images. Deletion AUC: lower is better; insertion "
             "AUC: higher is better; negative-first Δp: change of the class probability "
             f"after deleting the {run.config['negative_fraction']:g} fraction of pixels with "
             "the most negative relevance (positive confirms the map's negative evidence; "
             "n/a for the unsigned sensitivity map). Randomisation: similarity between the "
             "maps of the trained and the re-randomised network (lower = the map depends "
             "more on the weights). The random map is seeded per image, not per network, so it "
             "ignores the weights and the check flags it (ρ = 1); passing the check is "
             "necessary, not sufficient. Bold: best non-random method per fill.\n"]

    start = time.perf_counter()
    lenet = compute_lenet(run)
    seconds = time.perf_counter() - start
    run.timings["lenet"] = round(seconds, 1)
    providers_used = {"lenet": lenet.providers}
    parts.append(section("LeNet digits", lenet, seconds,
                         sum(1 for n in run.reused if n.startswith(f"{FIGURE}-lenet-"))))
    _write(out / f"{FIGURE}.csv", csv_text(lenet.rows, lenet.settings_text()))
    title = (f"LeNet, {len(lenet.image_ids)} digits, k={run.config['window']}, "
             f"S={run.config['num_samples']}, stride {run.config['stride']} ({run.scale} scale)")
    for suffix, fig in (("curves", plot_curves(lenet, title)),
                        ("randomisation", plot_randomisation(lenet, title) if lenet.stage_names
                         else None)):
        if fig is not None:
            save_figure(fig, out / f"{FIGURE}_{suffix}", formats=("png",))
            plt.close(fig)
    common.save_npz(run.cache_dir / f"{FIGURE}_lenet.npz", lenet.arrays(),
                    params={"config": run.config})

    for name in run.config["zoo"]:
        start = time.perf_counter()
        result = compute_zoo(run, name)
        if result is None:
            parts.append(f"## {name}\n\nweights absent, skipped.\n")
            print(f"{FIGURE}: {name}: weights absent, skipped")
            continue
        seconds = time.perf_counter() - start
        run.timings[name] = round(seconds, 1)
        providers_used[name] = result.providers
        parts.append(section(name, result, seconds,
                             sum(1 for n in run.reused if n.startswith(f"{FIGURE}-{name}-"))))
        _write(out / f"{FIGURE}_{name}.csv", csv_text(result.rows, result.settings_text()))
        fig = plot_curves(result, f"{name} ({run.scale} scale)")
        save_figure(fig, out / f"{FIGURE}_{name}_curves", formats=("png",))
        plt.close(fig)
    if not run.config["zoo"]:
        parts.append("## Zoo networks\n\nnot run at this scale (paper scale only).\n")

    _write(out / f"{FIGURE}.md", "\n".join(parts))
    # versions.onnxruntime_providers lists what onnxruntime offers; this is what ran
    common.write_config(run, images=[f"digits:{i}" for i in lenet.image_ids],
                        extra={"onnxruntime_providers_used": providers_used})
    print(lenet.markdown())
    print(f"{FIGURE}: wrote {out}/{FIGURE}.md, .csv, _curves.png, _randomisation.png, .json "
          f"(computed {len(run.computed)}, reused {len(run.reused)} cached)")
    return 0


if __name__ == "__main__":
    common.run_main(main, "python -m reproduce.evaluation")
