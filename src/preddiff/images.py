"""Example images and the default image pool for the marginal sampler.

The marginal sampler of PDA (Zintgraf et al. 2017, §3.1, eq. (7)) replaces a window by the
same window of other images. The released code took those from the few images of its data
folder; offline we have :func:`example_images`: the three ImageNet images shipped with the
authors' code (bundled, ``data/images``) and the four colour photographs installed with
scikit-image (``astronaut``, ``chelsea``, ``coffee``, ``rocket``; no download needed).
:func:`default_pool` preprocesses them for a zoo network; for LeNet the pool is the 1,797
handwritten digits (:mod:`preddiff.digits`).
"""
from __future__ import annotations

import functools
import warnings

import numpy as np

from .errors import InvalidArgument
from .resources import DATA_DIR

SKIMAGE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket")
"""Colour photographs shipped inside the scikit-image wheel (they load offline)."""


@functools.lru_cache(maxsize=1)
def _example_images() -> tuple[tuple[str, np.ndarray], ...]:
    import skimage.data

    from .preprocess import load_image

    items = [(path.stem, load_image(path)) for path in sorted((DATA_DIR / "images").glob("*.jpg"))]
    items += [(name, getattr(skimage.data, name)()) for name in SKIMAGE_IMAGES]
    for _, image in items:
        image.flags.writeable = False
    return tuple(items)


def example_images() -> dict[str, np.ndarray]:
    """The example colour images, in a fixed order.

    Returns
    -------
    dict of str to ndarray of uint8, shape (H, W, 3)
        The bundled ImageNet images (keys: file stems, e.g. ``"n01855672_8202"``, about
        230×230), then ``astronaut``, ``chelsea``, ``coffee`` and ``rocket`` from scikit-image.
        The arrays are writable copies.
    """
    return {key: image.copy() for key, image in _example_images()}


def default_pool(model_name: str, *, policy: str = "crop", exclude=None) -> np.ndarray:
    """The default data for the marginal sampler of network ``model_name``.

    Parameters
    ----------
    model_name : str
        Zoo name. For ``"lenet"`` the pool is the handwritten digits.
    policy : {"crop", "resize"}
        Preprocessing policy of the zoo nets (see :class:`preddiff.preprocess.Preprocessor`).
        Under ``"crop"`` an example image smaller than the network input is skipped with a
        warning, as the released code skipped it (none of the current ones is).
    exclude : int or str, optional
        Leave this image out (the one being explained): an index into the pool or, for the
        zoo nets, a key of :func:`example_images`.

    Returns
    -------
    ndarray of float32, shape (M, C, H, W)
        Network inputs (M = 7 images, or 1,797 digits, minus the excluded one and skipped ones).
    """
    from .preprocess import Preprocessor
    from .zoo import manifest

    m = manifest(model_name)
    if model_name == "lenet":
        from .digits import load_digits

        pool = load_digits()[0]
        return np.delete(pool, _index(exclude, len(pool), None), axis=0) if exclude is not None \
            else pool.copy()
    pre = Preprocessor(m, policy=policy)
    items = list(_example_images())
    if exclude is not None:
        items.pop(_index(exclude, len(items), [key for key, _ in items]))
    _, h, w = m.input_shape
    kept = []
    for key, image in items:
        if policy == "crop" and (image.shape[0] < h or image.shape[1] < w):
            warnings.warn(f"example image {key} ({image.shape[0]}×{image.shape[1]}) is smaller "
                          f"than the {h}×{w} input of {model_name}: left out of the pool",
                          stacklevel=2)
            continue
        kept.append(pre(image, what=f"example image {key}"))
    return np.stack(kept).astype(np.float32, copy=False)


def _index(exclude, n: int, keys: list[str] | None) -> int:
    if isinstance(exclude, str):
        if keys is None or exclude not in keys:
            allowed = ", ".join(keys) if keys else "an integer index"
            raise InvalidArgument(f"exclude={exclude!r} is not in the pool; use {allowed}")
        return keys.index(exclude)
    if isinstance(exclude, (int, np.integer)) and -n <= int(exclude) < n:
        return int(exclude) % n
    raise InvalidArgument(f"exclude={exclude!r} is not an index of the pool of {n} images")
