"""Real handwritten digits in MNIST format, the input of the offline default LeNet.

The 1,797 8×8 digits of the UCI "Optical Recognition of Handwritten Digits" test set
(Alpaydin & Kaynak 1998), as scikit-learn ships them, are bundled as ``data/digits.npz``
(uint8 values 0–16, see ``data/PROVENANCE.md``). :func:`load_digits` turns them into what
Caffe's MNIST LeNet was trained on, following MNIST's own recipe (LeCun et al.): the digit is
scaled to [0, 1], resized to 20×20 (:func:`skimage.transform.resize`, order 1, no
anti-aliasing), placed in a 28×28 frame, and translated so that its centre of mass lies at the
centre of the frame, pixel coordinate (13.5, 13.5).

The translation is sub-pixel: :func:`scipy.ndimage.shift` with linear interpolation
(``order=1``, zeros outside). Linear interpolation preserves the total mass and moves the
centre of mass by exactly the shift as long as the digit stays inside the frame (it does: the
20×20 box leaves a 4-pixel margin and the centre of mass of a digit is never more than a few
pixels off its box centre), and it keeps the values in [0, 1].
"""
from __future__ import annotations

import functools

import numpy as np

from .errors import InvalidArgument
from .resources import DATA_DIR

FRAME = 28
"""Side of the MNIST frame."""
BOX = 20
"""Side of the box the digit is resized to (MNIST's 20×20)."""


def _centre(image: np.ndarray) -> np.ndarray:
    """One 8×8 digit in [0, 1] → (28, 28) float64, centred by mass."""
    from scipy import ndimage
    from skimage.transform import resize

    box = resize(image, (BOX, BOX), order=1, anti_aliasing=False)  # mode "reflect" (default)
    frame = np.zeros((FRAME, FRAME))
    offset = (FRAME - BOX) // 2
    frame[offset : offset + BOX, offset : offset + BOX] = box
    if frame.sum() <= 0:
        return frame
    centre = (FRAME - 1) / 2.0
    com = np.array(ndimage.center_of_mass(frame))
    frame = ndimage.shift(frame, centre - com, order=1, mode="constant", cval=0.0)
    return np.clip(frame, 0.0, 1.0)


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    with np.load(DATA_DIR / "digits.npz") as data:
        raw, labels = data["images"], data["labels"]
    images = np.empty((len(raw), 1, FRAME, FRAME), np.float32)
    for i, image in enumerate(raw):
        images[i, 0] = _centre(image.astype(np.float64) / 16.0)
    labels = labels.astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 UCI handwritten digits in MNIST format (computed once, then cached).

    Returns
    -------
    images : ndarray of float32, shape (1797, 1, 28, 28)
        Intensities in [0, 1] (ink is 1), each digit's centre of mass at pixel (13.5, 13.5).
        Read-only (shared by every call); copy before modifying.
    labels : ndarray of int64, shape (1797,)
        The digit, 0–9. Read-only.
    """
    return _digits()


def digit(i: int) -> tuple[np.ndarray, int]:
    """Digit number ``i``.

    Returns
    -------
    image : ndarray of float32, shape (1, 28, 28)
        A writable copy.
    label : int
    """
    images, labels = _digits()
    if not -len(images) <= int(i) < len(images):
        raise InvalidArgument(f"digit index {i} out of range; there are {len(images)} digits")
    return images[i].copy(), int(labels[i])
