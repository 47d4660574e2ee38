"""Reading the user's image files: every file format and pixel mode read as what it shows.

:func:`read_image` opens a file with Pillow and returns its pixels as an 8-bit array that
:func:`preddiff.preprocess.to_rgb` understands, applying what a viewer applies: the EXIF
orientation (a phone photo taken upright is explained upright), CMYK → RGB, palette →
RGB(A), gray + alpha → gray, 16-bit → 8-bit. Each conversion that changes what the network
sees is announced with a :class:`UserWarning` (the command line prints it as a note). TIFF
files Pillow cannot decode (e.g. 64-bit float) are read with :func:`skimage.io.imread`.

:func:`shrink` reduces a very large image with a box filter by an integer factor before the
anti-aliased resize of the preprocessing: :func:`skimage.transform.resize` smooths with a
Gaussian whose width grows with the scale factor, so resizing a 12000×12000 photo to 64×64 in
one step takes minutes and gigabytes; after the box filter the resize has at most a factor of
about 2 left to do.
"""
from __future__ import annotations

import stat
import warnings
from pathlib import Path

import numpy as np

from .errors import InvalidArgument

#: Pillow modes read as they are: gray, RGB, RGBA (uint8).
_DIRECT = ("L", "RGB", "RGBA")
#: Files Pillow cannot decode that are tried with scikit-image (float TIFFs via tifffile).
SKIMAGE_SUFFIXES = (".tif", ".tiff")
#: Images with more pixels than this are box-reduced before an anti-aliased resize.
SHRINK_ABOVE_PIXELS = 1 << 20


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_image_path(path) -> Path:
    """``path`` as a Path, after checking that it names a regular file.

    Raises
    ------
    InvalidArgument
        The file does not exist, or is a directory, a device, a pipe or a socket (the message
        says which).
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InvalidArgument(f"image file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise InvalidArgument(f"cannot open image file {str(path)!r}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise InvalidArgument(f"image {str(path)!r} is {_file_kind(mode)}, not an image file")
    if path.stat().st_size == 0:
        raise InvalidArgument(f"image file {str(path)!r} is empty (0 bytes)")
    return path


def read_image(path) -> np.ndarray:
    """The pixels of an image file, as a viewer shows them.

    Parameters
    ----------
    path : str or Path
        An image file Pillow reads (JPEG, PNG, BMP, GIF, TIFF, WebP, …); TIFFs it cannot
        decode (e.g. 64-bit float) are read with :func:`skimage.io.imread`.

    Returns
    -------
    ndarray, shape (H, W), (H, W, 3) or (H, W, 4)
        uint8 gray, RGB or RGBA for every file Pillow reads (EXIF orientation applied); a
        file only scikit-image reads is returned as it decodes it (e.g. float).

    Raises
    ------
    InvalidArgument
        Not a regular file, or not an image.
    """
    path = check_image_path(path)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                kind = "animated" if getattr(image, "is_animated", False) else "multi-page"
                warnings.warn(f"{path} is {kind} ({frames} frames): only its first frame is "
                              "used", stacklevel=2)
            return _pixels(_upright(image, path), path)
    except UnidentifiedImageError:
        if path.suffix.lower() not in SKIMAGE_SUFFIXES:
            raise InvalidArgument(f"cannot read {str(path)!r} as an image: not a file format "
                                  "Pillow reads, or a damaged file") from None
        # e.g. a float TIFF: scikit-image (tifffile) reads it
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InvalidArgument(f"cannot read {str(path)!r} as an image: {exc}") from None
    import skimage.io

    try:
        return np.asarray(skimage.io.imread(path))
    except Exception as exc:  # noqa: BLE001 - whatever the plugin raises: not an image
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InvalidArgument(f"cannot read {str(path)!r} as an image: {reason}") from None


def _upright(image, path: Path):
    """Apply the EXIF orientation tag (2–8), with a warning saying which."""
    from PIL import ImageOps

    orientation = image.getexif().get(0x0112, 1)
    if orientation in (None, 1):
        return image
    if orientation not in range(2, 9):
        warnings.warn(f"{path} has an invalid EXIF orientation ({orientation!r}; valid: 1-8): "
                      "ignored, the image is used as stored", stacklevel=3)
        return image
    turned = ImageOps.exif_transpose(image)
    how = {2: "mirrored", 3: "rotated 180°", 4: "flipped upside down",
           5: "mirrored and rotated 90° anticlockwise", 6: "rotated 90° clockwise",
           7: "mirrored and rotated 90° clockwise", 8: "rotated 90° anticlockwise"}
    warnings.warn(f"{path} has EXIF orientation {orientation}: "
                  f"{how.get(orientation, 'turned')} to stand upright", stacklevel=3)
    return turned


def _pixels(image, path: Path) -> np.ndarray:
    """A Pillow image of any mode → uint8 gray, RGB or RGBA array (conversions warned)."""
    mode = image.mode
    if mode in _DIRECT:
        return np.asarray(image)
    if mode == "1":
        return np.asarray(image.convert("L"))
    if mode in ("LA", "La"):
        warnings.warn(f"{path} is gray with an alpha channel: the alpha channel is ignored",
                      stacklevel=3)
        return np.asarray(image.convert("LA"))[:, :, 0]
    if mode in ("P", "PA"):
        transparent = mode == "PA" or "transparency" in image.info
        return np.asarray(image.convert("RGBA" if transparent else "RGB"))
    if mode == "CMYK":
        warnings.warn(f"{path} is CMYK: converted to RGB", stacklevel=3)
        return np.asarray(image.convert("RGB"))
    if mode.startswith("I") or mode == "F":
        return _to_8bit(np.asarray(image), path, mode)
    if mode == "RGBa":
        return np.asarray(image.convert("RGBA"))
    try:  # RGBX, YCbCr, LAB, HSV, ...
        converted = image.convert("RGB")
    except ValueError as exc:
        raise InvalidArgument(f"{str(path)!r} has pixel mode {mode}, which cannot be "
                              f"converted to RGB: {exc}") from None
    warnings.warn(f"{path} is {mode}: converted to RGB", stacklevel=3)
    return np.asarray(converted)


def _to_8bit(values: np.ndarray, path: Path, mode: str) -> np.ndarray:
    """16/32-bit integer (0–65535) or float ([0, 1]) gray pixels → uint8 0–255."""
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.floating):
        low, high = (float(np.nanmin(values)), float(np.nanmax(values))) if values.size \
            else (0.0, 0.0)
        if not np.isfinite(values).all() or low < 0 or high > 1:
            raise InvalidArgument(
                f"{str(path)!r} holds floating-point pixels in [{low:g}, {high:g}]; float "
                "image files must lie in [0, 1]")
        return np.round(values * 255).astype(np.uint8)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise InvalidArgument(f"{str(path)!r} has {mode} pixels in [{values.min()}, "
                              f"{values.max()}]; integer image files must lie in 0–65535")
    return np.round(values.astype(np.float64) / 257.0).astype(np.uint8)


def shrink(image: np.ndarray, size, *, what: str = "image") -> np.ndarray:
    """Box-filter a large ``image`` down to twice ``size`` before it is resized to ``size``.

    An image with more than :data:`SHRINK_ABOVE_PIXELS` pixels that is at least 4× the
    target along an axis is reduced along that axis to twice the target by area averaging
    (Pillow's ``BOX`` resampling, exact for fractional factors: every source pixel weighs
    by the area it covers), leaving the final anti-aliased resize a factor of 2; a
    :class:`UserWarning` says so. Smaller images are returned unchanged, so results on
    ordinary images do not depend on this step.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
        uint8 stays uint8 (rounded means); other dtypes are averaged in float32.
    size : (int, int)
        Target height and width of the resize that follows.
    what : str
        Name of the image in the warning.

    Returns
    -------
    ndarray, shape (H', W'[, C])
        ``H' = 2 · size[0]`` when ``H >= 4 · size[0]``, else ``H`` (likewise ``W'``).
    """
    image = np.asarray(image)
    height, width = image.shape[:2]
    target = [int(size[0]), int(size[1])]
    new = (2 * target[0] if height >= 4 * target[0] else height,
           2 * target[1] if width >= 4 * target[1] else width)
    if height * width <= SHRINK_ABOVE_PIXELS or new == (height, width) or image.ndim > 3:
        return image
    from PIL import Image

    planes = image[:, :, None] if image.ndim == 2 else image
    if image.dtype == np.uint8:
        out = [np.asarray(Image.fromarray(np.ascontiguousarray(planes[:, :, c]), "L")
                          .resize(new[::-1], Image.Resampling.BOX))
               for c in range(planes.shape[2])]
    else:
        out = [np.asarray(Image.fromarray(planes[:, :, c].astype(np.float32), "F")
                          .resize(new[::-1], Image.Resampling.BOX)).astype(image.dtype)
               for c in range(planes.shape[2])]
    reduced = np.stack(out, axis=2).reshape(new + image.shape[2:])
    warnings.warn(f"{what} is {height}×{width}: box-filtered to {new[0]}×{new[1]} before "
                  f"resizing to {target[0]}×{target[1]}", stacklevel=2)
    return reduced
