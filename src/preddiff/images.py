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


# ----------------------------------------------------------------------------------------------
# the marginal sampler's default pool: natural photographs, several views of each

MARGINAL_EXTRA = {"motorcycle_left": "skimage", "grace_hopper": "matplotlib"}
"""Colour photographs besides :func:`example_images` that load offline: scikit-image's
``motorcycle_left`` (a garage scene, the left view of ``stereo_motorcycle``) and Matplotlib's ``grace_hopper.jpg`` (a portrait), both
installed with those packages."""

VIEW_FRACTION = 2 / 3
"""Side of a crop view, as a fraction of the photograph's height and width."""


@functools.lru_cache(maxsize=1)
def _natural_photos() -> tuple[tuple[str, np.ndarray], ...]:
    """:func:`example_images` and :data:`MARGINAL_EXTRA`: nine distinct scenes, (H, W, 3)
    uint8, read-only."""
    items = list(_example_images())
    for key, package in MARGINAL_EXTRA.items():
        if package == "skimage":
            import skimage.data

            image = np.asarray(skimage.data.stereo_motorcycle()[0])  # the left view
        else:
            from matplotlib import cbook

            from .preprocess import load_image

            image = load_image(cbook.get_sample_data(f"{key}.jpg", asfileobj=False))
        image = np.ascontiguousarray(image[:, :, :3])
        image.flags.writeable = False
        items.append((key, image))
    return tuple(items)


def _offsets(room: int, side: int) -> tuple[int, ...]:
    """Start, middle and end offsets of a crop with ``room`` pixels to move; the middle only
    when the room is under a tenth of the crop (the views would be near copies)."""
    return (0, room // 2, room) if room >= MIN_SHIFT * side else (room // 2,)


#: Crops that could move by less than this fraction of their side are not varied along it.
MIN_SHIFT = 0.1


def natural_views(min_size=(1, 1)) -> list[tuple[str, np.ndarray]]:
    """Views of the nine offline photographs for the marginal sampler's default pool.

    Each photograph gives itself and up to nine crops (at the top, middle and bottom times
    left, centre and right) of :data:`VIEW_FRACTION` of its height and width, or of
    ``min_size`` where that is larger (so that the preprocessing never enlarges a crop more
    than it enlarges the whole photograph); each view is also mirrored left to right. Crops
    that could move by less than a tenth of their side along an axis are not varied along it.

    Why this is a fair sample of the marginal ``p(x_w)`` of eq. (3): natural-image statistics
    are, to a good approximation, the same at every position and under a left-right mirror
    (the translation and flip invariance that ImageNet training augmentation relies on), so
    the window of a crop or of a mirrored photograph is as much a draw from the distribution
    of natural-image windows as the window of another photograph. Vertical flips, rotations
    and colour changes are not used: skies are up, and colour statistics are not symmetric.
    Nine scenes remain a small sample; ``--pool DIR`` (``pool=`` in Python) with images
    from the model's training distribution is better for serious work.

    Parameters
    ----------
    min_size : (int, int)
        The size the model's preprocessing fits a photograph to before taking its input (its
        input size when it does not resize).

    Returns
    -------
    list of (str, ndarray of uint8, shape (h, w, 3))
        ``("astronaut", full)``, ``("astronaut:flip", ...)``, ``("astronaut:crop0,0", ...)``,
        …; the key's part before ``:`` names the photograph. For a 224×224 model (fitted to
        256) there are 126 views, for 299×299 114, for 32×32 180.
    """
    min_h, min_w = (int(n) for n in min_size)
    views = []
    for key, image in _natural_photos():
        height, width = image.shape[:2]
        bh = min(height, max(int(round(height * VIEW_FRACTION)), min_h))
        bw = min(width, max(int(round(width * VIEW_FRACTION)), min_w))
        boxes = [(0, 0, height, width)]
        rows, cols = _offsets(height - bh, bh), _offsets(width - bw, bw)
        if len(rows) > 1 or len(cols) > 1:
            boxes += [(top, left, bh, bw) for top in rows for left in cols]
        for n, (top, left, h, w) in enumerate(boxes):
            crop = image[top:top + h, left:left + w]
            name = key if n == 0 else f"{key}:crop{top},{left}"
            views.append((name, crop))
            views.append((f"{name}:flip", crop[:, ::-1]))
    return views


THUMBNAIL = 32
#: Largest mean absolute difference (of [0, 1] gray thumbnails) of two copies of one picture:
#: a JPEG re-encoding at ordinary qualities stays far below it, another photograph far above.
SAME_PICTURE = 0.02


def thumbnail(image) -> np.ndarray:
    """A 32×32 gray [0, 1] thumbnail of an (H, W[, C]) uint8 or [0, 1] float image, for
    :func:`same_picture`."""
    from skimage.color import rgb2gray
    from skimage.transform import resize

    image = np.asarray(image)
    image = image.astype(np.float64) / 255.0 if image.dtype == np.uint8 else \
        image.astype(np.float64)
    if image.ndim == 3:
        image = image[:, :, 0] if image.shape[2] == 1 else rgb2gray(image[:, :, :3])
    return resize(image, (THUMBNAIL, THUMBNAIL), order=1, anti_aliasing=True)


def same_picture(a, b) -> bool:
    """Whether two images show the same picture, by content: their thumbnails differ by less
    than :data:`SAME_PICTURE` on average (a copy under another name, re-encoded or resized,
    is the same picture; a crop of it is not)."""
    a = a if np.shape(a) == (THUMBNAIL, THUMBNAIL) else thumbnail(a)
    b = b if np.shape(b) == (THUMBNAIL, THUMBNAIL) else thumbnail(b)
    return float(np.mean(np.abs(a - b))) < SAME_PICTURE


def content_sha1(image) -> str:
    """sha1 of an image array's shape, dtype and bytes (an exact copy has the same)."""
    import hashlib

    image = np.ascontiguousarray(image)
    digest = hashlib.sha1(f"{image.shape}{image.dtype}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def photos_like(image) -> list[str]:
    """Keys of the offline photographs (:func:`natural_views`, :func:`example_images`) that
    show the same picture as ``image`` (the explained image must not be in its own pool)."""
    thumb = thumbnail(image)
    return [key for key, photo in _natural_photos() if same_picture(thumb, photo)]
