"""Plots of relevance maps: signed heatmaps, the released code's overlay, top-p % masks, grids.

Conventions of the paper (Zintgraf et al. 2016/2017, §4, Fig. 1): red = evidence *for* the
class (positive weight of evidence, eq. (4)–(5), or activation difference, eq. (9)), blue =
evidence *against*, white = no relevance; each signed map is scaled symmetrically by its own
largest absolute value, so the colour intensity is the relative importance within the map.

Everything here draws into objects the caller passes or receives: figures are created as
:class:`matplotlib.figure.Figure` (rendered by the Agg/PDF canvases on save), never through
``pyplot``, so no global state (current figure, backend) is touched and nothing leaks when
many figures are made. :func:`save_figure` writes each file atomically.

Deviation from the released code (``utils_visualise.py``): it used Matplotlib's ``seismic``
colour map, whose 256-entry table has no exact white at 0 (0 maps to ``(1, .99, .99)``);
:func:`signed_cmap` has the same colours with 257 entries, so 0 is exactly white.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.colors import LinearSegmentedColormap, Normalize
from matplotlib.figure import Figure

from .errors import InvalidArgument
from .fileio import atomic_path

__all__ = ["signed_cmap", "show_signed", "show_unsigned", "overlay", "top_mask", "Panel",
           "panel_title", "grid", "explanation_figure", "save_figure", "figure_of",
           "value_text", "unit_label", "sampler_words", "MAX_PANELS"]

#: Class panels :meth:`preddiff.Explanation.plot` draws at most when not told which.
MAX_PANELS = 12

WOE_UNIT = "weight of evidence (bits)"
"""Colour-bar label of a probability blob's maps (eq. 4–5, log2 odds)."""


def value_text(value: float) -> str:
    """A probability or unit value as the figures and the console print it: three
    significant digits (``0.948``, ``6.49e-05``), never ``0.000`` for a small probability."""
    return f"{float(value):.3g}"


def unit_label(probability: bool, blob: str) -> str:
    """The colour-bar label: ``weight of evidence (bits)`` for a probability blob, else
    ``activation difference of 'fc8'`` (eq. 9, in the blob's own units)."""
    return WOE_UNIT if probability else f"activation difference of {blob!r}"


def sampler_words(sampler: dict, num_samples: int | None = None, pool: int | None = None) -> str:
    """A sampler's description (``describe()``) in words, e.g. ``"10 conditional samples
    per window (Gaussian given the 2-pixel border)"``."""
    name = (sampler or {}).get("name", "")
    count = f"{num_samples} " if num_samples else ""
    if name == "ConditionalGaussianSampler":
        colour = ", all colour channels jointly" if sampler.get("colour") == "joint" else ""
        return (f"{count}conditional samples per window (Gaussian given the "
                f"{sampler.get('padding')}-pixel border{colour})")
    if name == "MarginalSampler":
        images = (pool if pool is not None else (sampler.get("pool_shape") or [None])[0])
        of = f" of {images} other images" if images else " of other images"
        return f"{count}marginal samples per window (the same window{of})"
    return f"{count}samples per window from {name or 'the sampler'}"


# Matplotlib's "seismic": dark blue, blue, white, red, dark red at equal spacing.
_SEISMIC = ((0.0, 0.0, 0.3), (0.0, 0.0, 1.0), (1.0, 1.0, 1.0), (1.0, 0.0, 0.0), (0.5, 0.0, 0.0))


def signed_cmap() -> LinearSegmentedColormap:
    """Diverging colour map for signed relevance: blue < 0, white = 0, red > 0.

    Returns
    -------
    matplotlib.colors.LinearSegmentedColormap
        The colours of Matplotlib's ``seismic`` (used by the released code) on an odd number
        of entries (257), so that 0.5 — relevance 0 under a symmetric norm — is exactly white.
        A new object on each call (no shared mutable state).
    """
    return LinearSegmentedColormap.from_list("preddiff_signed", _SEISMIC, N=257)


def _symmetric_limit(relevance: np.ndarray, vmax) -> float:
    """``vmax`` or the largest |relevance|; 1 for an all-zero (or empty) map."""
    if vmax is None:
        finite = np.abs(relevance[np.isfinite(relevance)])
        vmax = float(finite.max()) if finite.size else 0.0
    vmax = float(vmax)
    if not np.isfinite(vmax) or vmax < 0:
        raise InvalidArgument(f"vmax must be a finite non-negative number, got {vmax}")
    return vmax if vmax > 0 else 1.0


def _as_map(relevance, name="relevance") -> np.ndarray:
    relevance = np.asarray(relevance, dtype=np.float64)
    if relevance.ndim != 2:
        raise InvalidArgument(f"{name} must be a 2-D map (H, W), got shape {relevance.shape}")
    return relevance


def _no_ticks(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def show_signed(ax, relevance, vmax=None, colorbar=False, *, title=None, label=None):
    """Draw a signed map, scaled symmetrically about 0.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    relevance : array_like, shape (H, W)
        Signed relevance (weight of evidence, eq. (4)–(5), or activation difference, eq. (9)).
    vmax : float, optional
        Colour limit: the map is drawn on ``[-vmax, vmax]``; default its largest ``|value|``.
    colorbar : bool, default False
        Add a colour bar next to ``ax``.
    title : str, optional
    label : str, optional
        The colour bar's label: the unit, e.g. :data:`WOE_UNIT`.

    Returns
    -------
    matplotlib.image.AxesImage
    """
    relevance = _as_map(relevance)
    limit = _symmetric_limit(relevance, vmax)
    image = ax.imshow(relevance, cmap=signed_cmap(), vmin=-limit, vmax=limit,
                      interpolation="nearest")
    return _finish_panel(ax, image, title, colorbar, label)


def show_unsigned(ax, values, vmax=None, colorbar=False, *, title=None):
    """Draw a non-negative map (e.g. a sensitivity map, eq. (1)) from white (0) to black.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    values : array_like, shape (H, W)
    vmax : float, optional
        Upper colour limit; default the map's maximum.
    colorbar : bool, default False
    title : str, optional

    Returns
    -------
    matplotlib.image.AxesImage
    """
    values = _as_map(values, "values")
    limit = _symmetric_limit(values, vmax)
    image = ax.imshow(values, cmap="gray_r", vmin=0.0, vmax=limit, interpolation="nearest")
    return _finish_panel(ax, image, title, colorbar)


def _finish_panel(ax, image, title, colorbar, label=None):
    """No ticks, an optional small title and colour bar (with its unit); returns ``image``."""
    _no_ticks(ax)
    if title:
        ax.set_title(title, fontsize=8)
    if colorbar:
        bar = ax.figure.colorbar(image, ax=ax, shrink=0.8)
        bar.ax.tick_params(labelsize=7)
        if label:
            bar.set_label(label, fontsize=7)
    return image


def _grey_background(image: np.ndarray) -> np.ndarray:
    """The released code's background: grey, lightened halfway to white; ``(H, W)``.

    A 2-D (single-channel, e.g. MNIST) image is first mapped to ``1 − 0.3·x``, as the
    released code did (dark strokes on a light background)."""
    from skimage.color import rgb2gray

    if image.ndim == 2:
        grey = 1.0 - 0.3 * image
    elif image.ndim == 3 and image.shape[2] == 3:
        grey = rgb2gray(image)
    else:
        raise InvalidArgument(
            f"image must be (H, W, 3) RGB or (H, W) grey, got shape {image.shape}")
    return 1.0 - (1.0 - grey) * 0.5


def overlay(image, relevance, vmax=None, *, alpha=0.8) -> np.ndarray:
    """The released code's overlay of a relevance map on its image.

    The image is turned grey and lightened (``g ← 1 − (1 − g)/2``); in HSV space its value
    channel is kept, while hue and saturation (times ``alpha``) are taken from the signed
    heatmap's RGB colours (:func:`signed_cmap`, symmetric about 0).

    Parameters
    ----------
    image : array_like, shape (H, W, 3) or (H, W)
        RGB image with values in [0, 1] (a 2-D grey image is handled as the released code
        handled MNIST: ``1 − 0.3·x`` first).
    relevance : array_like, shape (H, W)
        Signed relevance.
    vmax : float, optional
        Colour limit (default: the map's largest ``|value|``).
    alpha : float, default 0.8
        Saturation factor of the released code.

    Returns
    -------
    ndarray, shape (H, W, 3)
        RGB in [0, 1]. With zero relevance it is the lightened grey image.
    """
    from skimage.color import hsv2rgb, rgb2hsv

    image = np.asarray(image, dtype=np.float64)
    relevance = _as_map(relevance)
    if image.shape[:2] != relevance.shape:
        raise InvalidArgument(f"relevance shape {relevance.shape} does not match the image's "
                              f"{image.shape[:2]}")
    if image.size and (image.min() < 0 or image.max() > 1):
        raise InvalidArgument(
            f"image values must lie in [0, 1], got [{image.min()}, {image.max()}]")
    grey = _grey_background(image)
    limit = _symmetric_limit(relevance, vmax)
    colours = signed_cmap()(Normalize(-limit, limit, clip=True)(relevance))[..., :3]
    hsv = rgb2hsv(np.dstack([grey, grey, grey]))
    heat = rgb2hsv(colours)
    hsv[..., 0] = heat[..., 0]
    hsv[..., 1] = heat[..., 1] * alpha
    return hsv2rgb(hsv)


def top_mask(relevance, percent=5, absolute=True) -> np.ndarray:
    """Boolean mask of the top ``percent`` % of pixels (paper Fig. 4).

    Parameters
    ----------
    relevance : array_like, shape (H, W)
    percent : float, default 5
        Share of pixels to select, in [0, 100]; ``round(percent/100 · H·W)`` pixels are
        selected exactly (ties broken by position, row-major).
    absolute : bool, default True
        Rank by ``|relevance|`` (the paper's choice); False ranks by the signed value.

    Returns
    -------
    ndarray of bool, shape (H, W)
    """
    relevance = _as_map(relevance)
    if not 0 <= float(percent) <= 100:
        raise InvalidArgument(f"percent must lie in [0, 100], got {percent}")
    score = np.abs(relevance) if absolute else relevance
    score = np.where(np.isnan(score), -np.inf, score)
    count = int(round(float(percent) / 100.0 * score.size))
    order = np.argsort(-score.ravel(), kind="stable")
    mask = np.zeros(score.size, dtype=bool)
    mask[order[:count]] = True
    return mask.reshape(score.shape)


@dataclass
class Panel:
    """One cell of :func:`grid`.

    Attributes
    ----------
    data : ndarray
        ``(H, W, 3)`` RGB image in [0, 1], ``(H, W)`` map, or ``(H, W)`` bool mask.
    kind : {"auto", "image", "signed", "unsigned", "mask"}
        How to draw it; ``auto``: RGB → image, bool → mask, otherwise signed.
    title : str, optional
    vmax : float, optional
        Colour limit of a signed/unsigned map (default: its own largest ``|value|``).
    colorbar : bool, optional
        Overrides the grid's ``colorbar`` for this panel.
    label : str, optional
        The colour bar's label (the unit of the map).
    """

    data: np.ndarray
    kind: str = "auto"
    title: str | None = None
    vmax: float | None = None
    colorbar: bool | None = None
    label: str | None = None


_KINDS = ("auto", "image", "signed", "unsigned", "mask")


def _resolve_kind(panel: Panel) -> str:
    if panel.kind not in _KINDS:
        raise InvalidArgument(f"panel kind {panel.kind!r} is not one of {_KINDS}")
    if panel.kind != "auto":
        return panel.kind
    data = np.asarray(panel.data)
    if data.ndim == 3 and data.shape[2] in (3, 4):
        return "image"
    if data.dtype == bool:
        return "mask"
    return "signed"


def panel_title(name: str, value: float | None = None, label: str = "") -> str:
    """A title with a class name and a unit value, e.g. ``"tabby cat\\np = 0.62"``.

    Parameters
    ----------
    name : str
        Class (or unit) name.
    value : float, optional
        The unit's value (probability or score); omitted when None.
    label : str, default ""
        Prefix of the value, e.g. ``"p"`` or ``"fc8"``.
    """
    if value is None:
        return name
    text = value_text(value)
    return f"{name}\n{label} = {text}" if label else f"{name}\n{text}"


def _draw(ax, panel: Panel, colorbar: bool) -> None:
    kind = _resolve_kind(panel)
    data = np.asarray(panel.data)
    if kind == "image":
        if data.ndim == 2:
            ax.imshow(data, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(np.clip(data.astype(np.float64), 0, 1), interpolation="nearest")
    elif kind == "mask":
        ax.imshow(_as_map(data, "mask") > 0.5, cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
    elif kind == "signed":
        show_signed(ax, data, panel.vmax, colorbar, label=panel.label)
    else:
        show_unsigned(ax, data, panel.vmax, colorbar)
    _no_ticks(ax)
    if panel.title:
        ax.set_title(panel.title, fontsize=8)


def grid(panels: Sequence, titles: Sequence[str] | None = None, ncols: int | None = None, *,
         colorbar: bool = False, panel_size: float = 2.2, suptitle: str | None = None,
         dpi: float = 100) -> Figure:
    """A grid of images, signed maps and masks.

    Parameters
    ----------
    panels : sequence of (ndarray or Panel or None)
        Row-major cells; arrays are drawn by their kind (see :class:`Panel`); None leaves a
        cell empty.
    titles : sequence of str, optional
        One title per panel (e.g. from :func:`panel_title`: class name and unit value);
        overrides a Panel's own title when not None.
    ncols : int, optional
        Columns (default ``min(len(panels), 4)``).
    colorbar : bool, default False
        Colour bar beside every signed/unsigned map.
    panel_size : float, default 2.2
        Size of one cell in inches.
    suptitle : str, optional
    dpi : float, default 100

    Returns
    -------
    matplotlib.figure.Figure
        Not registered with ``pyplot``; save it with :func:`save_figure`.
    """
    panels = list(panels)
    if not panels:
        raise InvalidArgument("panels is empty: give at least one image or map")
    if titles is not None and len(titles) != len(panels):
        raise InvalidArgument(f"{len(titles)} titles for {len(panels)} panels")
    ncols = min(len(panels), 4) if ncols is None else int(ncols)
    if ncols < 1:
        raise InvalidArgument(f"ncols must be at least 1, got {ncols}")
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(ncols * panel_size * (1.25 if colorbar else 1.0),
                          nrows * panel_size + (0.4 if suptitle else 0.0)),
                 dpi=dpi, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        item = panels[i] if i < len(panels) else None
        if item is None:
            ax.set_axis_off()
            continue
        panel = item if isinstance(item, Panel) else Panel(np.asarray(item))
        if titles is not None and titles[i] is not None:
            panel = Panel(panel.data, panel.kind, titles[i], panel.vmax, panel.colorbar,
                          panel.label)
        _draw(ax, panel, colorbar if panel.colorbar is None else panel.colorbar)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


def explanation_figure(image, relevance_by_class: Mapping[str, np.ndarray],
                       values: Mapping[str, float] | None = None, *, value_label: str = "p",
                       suptitle: str | None = None, colorbar: bool = True,
                       panel_size: float = 2.4, unit: str | None = WOE_UNIT,
                       shared_scale: bool = False, legend: bool = True) -> Figure:
    """The explanation of one image: the input, a signed map per class, and its overlay.

    Layout: first row the input and one signed heatmap per class (titled with the class name
    and its value), each with a colour bar labelled with ``unit``; second row the overlay
    (:func:`overlay`) under each heatmap; at the bottom a legend: red = evidence for the
    class, blue = evidence against it.

    Parameters
    ----------
    image : array_like, shape (H, W, 3) or (H, W)
        The image in [0, 1] (as shown to the user, RGB).
    relevance_by_class : mapping of str to array_like, shape (H, W)
        Class name → signed relevance (e.g. weight of evidence, eq. (4)–(5)).
    values : mapping of str to float, optional
        Class name → value of the unit (e.g. its probability) shown in the title
        (:func:`value_text`: three significant digits).
    value_label : str, default "p"
    suptitle : str, optional
    colorbar : bool, default True
        Colour bars beside the heatmaps.
    panel_size : float, default 2.4
    unit : str, optional
        Label of the colour bars: :data:`WOE_UNIT` (default) or :func:`unit_label`.
    shared_scale : bool, default False
        One colour scale for every class (the largest ``|value|`` of all maps), so that the
        panels' magnitudes compare; by default each map is scaled by its own largest
        ``|value|``.
    legend : bool, default True
        Say under the panels what red and blue mean.

    Returns
    -------
    matplotlib.figure.Figure
    """
    image = np.asarray(image, dtype=np.float64)
    if not relevance_by_class:
        raise InvalidArgument("relevance_by_class is empty: give at least one class's map")
    maps = {name: _as_map(relevance, f"relevance of {name!r}")
            for name, relevance in relevance_by_class.items()}
    vmax = None
    if shared_scale:
        vmax = max(_symmetric_limit(m, None) for m in maps.values())
    panels: list = [Panel(image, "image", "input")]
    overlays: list = [None]
    for name, relevance in maps.items():
        value = None if values is None else values.get(name)
        panels.append(Panel(relevance, "signed", panel_title(name, value, value_label),
                            vmax=vmax, label=unit))
        overlays.append(Panel(overlay(image, relevance, vmax), "image", "overlay"))
    if suptitle:  # wrapped to the figure's width (about 11 characters an inch at 10 pt)
        import textwrap

        width = max(30, int(len(panels) * panel_size * (1.25 if colorbar else 1.0) * 11))
        suptitle = "\n".join(textwrap.fill(line, width, break_on_hyphens=False)
                             for line in suptitle.split("\n"))
    fig = grid(panels + overlays, ncols=len(panels), colorbar=colorbar, panel_size=panel_size,
               suptitle=suptitle)
    if legend:
        from matplotlib.patches import Patch

        scale = ("one colour scale for all classes" if shared_scale else
                 "each map scaled to its largest |value|")
        cmap = signed_cmap()
        fig.legend(handles=[Patch(color=cmap(0.85), label="red: evidence for the class"),
                            Patch(color=cmap(0.15), label="blue: evidence against it"),
                            Patch(facecolor="white", edgecolor="0.7",
                                  label=f"white: none ({scale})")],
                   loc="outside lower center", ncol=3 if len(panels) >= 4 else 1,
                   fontsize=7, frameon=False)
    return fig


def display_image(explanation) -> np.ndarray:
    """The explained input as an RGB (or gray) image in [0, 1], from what the metadata says
    of the preprocessing (a zoo net's, a user model's mean and std); otherwise the input
    rescaled to [0, 1]."""
    x = np.asarray(explanation.x, dtype=np.float64)
    meta = explanation.metadata if isinstance(explanation.metadata, dict) else {}
    pre = meta.get("preprocessing")
    if isinstance(pre, dict) and "mean" in pre and "std" in pre:
        c = x.shape[0]
        mean = np.asarray(pre["mean"], dtype=np.float64).reshape(c, 1, 1)
        std = np.asarray(pre["std"], dtype=np.float64).reshape(c, 1, 1)
        image = np.clip(x * std + mean, 0, 1)
        return image[0] if c == 1 else image.transpose(1, 2, 0)
    model = meta.get("model")
    from .zoo import MODEL_NAMES

    if model in MODEL_NAMES:
        from .preprocess import Preprocessor

        return Preprocessor(model, policy=meta.get("policy") or "crop").deprocess(
            x.astype(np.float32))
    low, high = float(x.min()), float(x.max())
    image = (x - low) / (high - low) if high > low else np.zeros_like(x)
    return image[0] if image.shape[0] == 1 else image[:3].transpose(1, 2, 0)


def figure_title(explanation, blob: str) -> str:
    """A title in words: model, what the maps are, window, stride and sampler."""
    meta = explanation.metadata if isinstance(explanation.metadata, dict) else {}
    kh, kw = explanation.window
    what = ("weight of evidence of each class" if blob in explanation.probability_blobs
            else f"activation difference of {blob!r}")
    model = meta.get("model")
    stride = "" if explanation.stride == 1 else f", stride {explanation.stride}"
    sampler = sampler_words(explanation.sampler, explanation.num_samples, meta.get("pool_size"))
    return (f"{model + ': ' if model else ''}{what}, {kh}x{kw}-pixel windows{stride}\n"
            f"removed by {sampler}")


def figure_of(explanation, blob: str, units=None, *, path=None, shared_scale: bool = False,
              title: str | None = None, names=None) -> Figure:
    """:func:`explanation_figure` of an :class:`~preddiff.Explanation` (what
    :meth:`preddiff.Explanation.plot` and ``preddiff explain`` draw).

    Parameters
    ----------
    explanation : Explanation
    blob : str
    units : sequence of int, optional
        Classes to draw (default: the kept ones, at most :data:`MAX_PANELS`, largest clean
        value first).
    path : str or Path, optional
        Also save it there (format from the suffix, atomically).
    shared_scale : bool, default False
    title : str, optional
        Default: :func:`figure_title`.
    names : sequence of str, optional
        The name of every unit (default: the labels in the metadata, else ``class i``).
    """
    clean = explanation.clean_values(blob)
    if units is None:
        kept = [int(u) for u in explanation.units[blob]]
        units = sorted(kept, key=lambda u: -clean[u])[:MAX_PANELS]
    units = [int(u) for u in units]
    probability = blob in explanation.probability_blobs
    if names is None:
        names = explanation.labels(blob)
    if names is None:
        names = [f"{'class' if probability else 'unit'} {i}" for i in range(len(clean))]
    shown = [names[u] for u in units]
    if len(set(shown)) < len(shown):  # e.g. ImageNet's two "crane"s: tell them apart
        shown = [f"{n} ({u})" if shown.count(n) > 1 else n for n, u in zip(shown, units)]
    maps = {n: explanation.relevance_of(blob, u) for n, u in zip(shown, units)}
    values = {n: float(clean[u]) for n, u in zip(shown, units)}
    fig = explanation_figure(display_image(explanation), maps, values,
                             value_label="p" if probability else blob,
                             suptitle=title if title is not None else
                             figure_title(explanation, blob),
                             unit=unit_label(probability, blob), shared_scale=shared_scale)
    if path is not None:
        path = Path(path)
        fmt = path.suffix.lstrip(".") or "png"
        save_figure(fig, path.with_suffix("") if path.suffix else path, formats=(fmt,))
    return fig


def save_figure(fig, path_without_suffix, formats=("png", "pdf"), *, dpi=150) -> list[Path]:
    """Write ``fig`` once per format, each file atomically (temporary file + ``os.replace``).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path_without_suffix : str or os.PathLike
        The suffix ``.<format>`` is appended (so dots in the name are kept); parent folders
        are created.
    formats : sequence of str, default ("png", "pdf")
    dpi : float, default 150

    Returns
    -------
    list of pathlib.Path
        The files written, in the order of ``formats``.
    """
    if isinstance(formats, str):
        formats = (formats,)
    supported = fig.canvas.get_supported_filetypes()
    for fmt in formats:
        if fmt not in supported:
            raise InvalidArgument(f"figure format {fmt!r} is not supported; allowed: "
                                  f"{', '.join(sorted(supported))}")
    stem = Path(path_without_suffix)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        target = stem.parent / f"{stem.name}.{fmt}"
        # No creation date in PDFs, so the same figure gives the same bytes.
        metadata = {"CreationDate": None} if fmt == "pdf" else None
        with atomic_path(target, suffix=f".{fmt}") as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata=metadata)
        written.append(target)
    return written
