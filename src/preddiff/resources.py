"""Locations of the data installed with the package and of the user's cache.

Everything the code reads at run time (model manifests, prototxts, the ImageNet mean, labels,
the LeNet weights, the digits, the ImageNet example images) is installed inside the package,
so a plain ``pip install .`` works without the source tree.
"""
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
MODELS_DIR = PACKAGE_DIR / "models"
DATA_DIR = PACKAGE_DIR / "data"


def cache_dir() -> Path:
    """Directory for downloaded weights and converted models.

    ``$PREDDIFF_HOME`` when set, else the platform's user cache directory
    (``~/.cache/preddiff`` on Linux).
    """
    home = os.environ.get("PREDDIFF_HOME")
    if home:
        return Path(home).expanduser()
    import pooch  # deferred: pooch pulls in requests

    return Path(pooch.os_cache("preddiff"))


def describe_cache() -> str:
    """The cache folder in messages: ``PREDDIFF_HOME=<path>`` when it is set, and what is
    wrong with it when something is (a file, not writable, cannot be created)."""
    folder = cache_dir()
    name = (f"PREDDIFF_HOME={folder}" if os.environ.get("PREDDIFF_HOME")
            else f"the cache folder {folder} (set PREDDIFF_HOME to use another)")
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"{name} (not a folder: {probe} is a file)"
    if not os.access(probe, os.W_OK):
        return f"{name} (not writable)"
    return name
