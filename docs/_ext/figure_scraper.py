"""A sphinx-gallery image scraper for :class:`matplotlib.figure.Figure` objects made without
``pyplot`` (as :mod:`preddiff.plot` makes them): every such figure bound to a name of the
example after a code block is shown below that block, once."""
from __future__ import annotations

_SHOWN: dict[str, list] = {}


def scrape(block, block_vars, gallery_conf, **kwargs):
    from matplotlib.figure import Figure
    from sphinx_gallery.scrapers import figure_rst

    shown = _SHOWN.setdefault(block_vars["src_file"], [])  # the figures themselves: no id reuse
    paths = []
    for value in list(block_vars["example_globals"].values()):
        if (isinstance(value, Figure) and value.canvas.manager is None  # pyplot's: its own
                and not any(value is f for f in shown)):
            shown.append(value)
            path = next(block_vars["image_path_iterator"])
            value.savefig(path, dpi=110)
            paths.append(path)
    return figure_rst(paths, gallery_conf["src_dir"])
