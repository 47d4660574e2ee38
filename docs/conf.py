"""Sphinx configuration of the preddiff documentation.

Build (offline; no inventory is fetched, every example runs on the bundled LeNet)::

    pip install -e ".[docs]"
    python -m sphinx -W -b html docs docs/_build/html

Everything the build writes lies in ignored folders: ``docs/_build/``, the gallery pages
``docs/auto_examples/``, the API stubs ``docs/api/generated/`` and
``docs/sg_execution_times.rst``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
os.environ.setdefault("MPLBACKEND", "Agg")

import preddiff  # noqa: E402

project = "preddiff"
author = "preddiff contributors"
copyright = "preddiff contributors"  # noqa: A001 - Sphinx's name
release = preddiff.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "cli_help",  # docs/_ext/cli_help.py: `preddiff ... --help` rendered at build time
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "examples/README.rst"]
templates_path = ["_templates"]

# -- API reference: numpydoc + autosummary ------------------------------------------------------
autosummary_generate = True
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_typehints = "none"          # numpydoc's Parameters sections carry the types
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# -- Markdown pages -----------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

# -- Examples gallery: every example runs on the bundled LeNet, offline -------------------------
sphinx_gallery_conf = {
    "examples_dirs": ["examples"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": r"plot_",
    "abort_on_example_error": True,
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "reset_modules": ("matplotlib",),
    "show_memory": False,
    # preddiff.plot draws without pyplot: figure_scraper shows the Figure objects an example
    # binds to a name, the matplotlib scraper those made with pyplot
    "image_scrapers": ("figure_scraper.scrape", "matplotlib"),
}

# -- HTML ---------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"preddiff {release}"
html_static_path = ["_static"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "footer_start": ["copyright"],
    "footer_end": [],
}
html_show_sourcelink = False
