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
