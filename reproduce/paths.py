"""Every path the figure scripts read or write, in one place (showyourwork's ``paths`` module).

Layout (relative to the repository root)::

    figures/<scale>/figN.png, figN.pdf, figN.json   the figures and the configuration used
                                                    (``figures/smoke/`` is ignored by git: its
                                                    records hold each run's timings)
    figures/reference/<scale>/figN.npz              stored reference numbers (committed)
    figures/cache/<scale>/                          computed relevance maps and results
                                                    (``.npz``, not committed; safe to delete)

``scale`` is ``"paper"`` or ``"smoke"``. The output and cache roots can be moved with the
``--out-dir`` / ``--cache-dir`` options of every script (tests use temporary folders).
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPRODUCE = ROOT / "reproduce"
FIGURES = ROOT / "figures"
REFERENCE = FIGURES / "reference"
CACHE = FIGURES / "cache"

FIGURE_NAMES = ("fig1", "fig2", "fig3", "fig4", "fig5", "fig6")


def figure_dir(scale: str, root: Path | None = None) -> Path:
    """Folder of the rendered figures and their configuration JSON for ``scale``."""
    return (Path(root) if root is not None else FIGURES) / scale


def cache_dir(scale: str, root: Path | None = None) -> Path:
    """Folder of the cached computations (``.npz``) for ``scale``."""
    return (Path(root) if root is not None else CACHE) / scale


def reference_dir(scale: str, root: Path | None = None) -> Path:
    """Folder of the stored reference numbers for ``scale``."""
    return (Path(root) if root is not None else REFERENCE) / scale


def result_path(figure: str, scale: str, root: Path | None = None) -> Path:
    """The numbers a figure run produced (compared with :func:`reference_path`)."""
    return cache_dir(scale, root) / f"{figure}_result.npz"


def reference_path(figure: str, scale: str, root: Path | None = None) -> Path:
    """The stored reference numbers of ``figure`` at ``scale``."""
    return reference_dir(scale, root) / f"{figure}.npz"


def figure_stem(figure: str, scale: str, root: Path | None = None) -> Path:
    """Path of a figure without suffix (``.png``, ``.pdf`` and ``.json`` are added)."""
    return figure_dir(scale, root) / figure
