"""Image → network input, faithful to the authors' released code, and back for display.

The released code (lmzintgraf/DeepVis-PredDiff, ``utils_data.py`` and
``utils_classifiers.py``) centre-crops each image to the network input **without resizing**
(offset ``floor((H − h) / 2)``), converts RGB → BGR on the 0–255 scale, and subtracts the
model's mean: per channel for GoogLeNet and VGG16, and for AlexNet the 3×256×256 mean image
cropped at offset 29 on both axes (its bottom-right 227×227 — what the released code did;
Caffe's own test transform uses the centre). That is ``policy="crop"``, the default.

``policy="resize"`` is standard Caffe practice instead: resize (anisotropically) to 256×256
with :func:`skimage.transform.resize` (order 1, anti-aliased), centre-crop to the input, and
centre-crop the mean image (offset 14 for AlexNet, as Caffe's ``TEST`` transform).

Input images are RGB arrays of shape (H, W, 3): ``uint8`` in 0–255, or floating point in
[0, 1] (a float image outside [0, 1] is an error, so that a 0–255 float image is not silently
scaled twice). Grayscale (H, W) or (H, W, 1) images are replicated to three channels and RGBA
images lose their alpha channel, each with a warning. For a grayscale network (LeNet,
``channel_order="gray"``, scale 1) the input is the intensity in [0, 1]; an RGB image is
converted to luminance with :func:`skimage.color.rgb2gray`, with a warning.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .errors import InvalidArgument
from .zoo import Manifest, manifest as zoo_manifest

POLICIES = ("crop", "resize")
RESIZE_TO = 256
"""Side of the square image that ``policy="resize"`` resizes to before cropping."""


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB, as a viewer shows it (:func:`preddiff.inputs.read_image`).

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)
        The EXIF orientation is applied; CMYK, palette and 16-bit files are converted;
        grayscale files are replicated to three channels, an alpha channel is dropped (each
        with a warning).
    """
    from skimage.util import img_as_ubyte

    from .inputs import read_image

    image = read_image(path)
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and image.size and (
                not np.isfinite(image).all() or image.min() < 0 or image.max() > 1):
            # img_as_ubyte would raise a bare ValueError ("between -1 and 1")
            raise InvalidArgument(
                f"{str(path)!r} holds floating-point pixels in [{np.nanmin(image):g}, "
                f"{np.nanmax(image):g}]; float image files must lie in [0, 1]")
        try:
            image = img_as_ubyte(image)
        except ValueError as exc:
            raise InvalidArgument(f"cannot convert {str(path)!r} to 8-bit RGB: {exc}") from None
    return to_rgb(image, what=str(path))


def to_rgb(image: np.ndarray, *, what: str = "image") -> np.ndarray:
    """An image with three colour channels: grayscale is replicated, alpha dropped (warned).

    Parameters
    ----------
    image : ndarray, shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)

    Returns
    -------
    ndarray, shape (H, W, 3), same dtype
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        warnings.warn(f"{what} is grayscale: replicated to three RGB channels", stacklevel=3)
        return np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 4:
        warnings.warn(f"{what} is RGBA: the alpha channel is ignored", stacklevel=3)
        return image[:, :, :3]
    raise InvalidArgument(
        f"{what} has shape {image.shape}; expected (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA"
    )


def _as_unit_float(image: np.ndarray, what: str) -> np.ndarray:
    """uint8 0–255 → float64 [0, 1]; floats must already lie in [0, 1]."""
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    if not np.issubdtype(image.dtype, np.floating):
        raise InvalidArgument(f"{what} has dtype {image.dtype}; expected uint8 (0–255) or float in [0, 1]")
    image = image.astype(np.float64)
    if image.size and (np.nanmin(image) < -1e-6 or np.nanmax(image) > 1 + 1e-6):
        raise InvalidArgument(
            f"{what} is a float image with values in [{np.nanmin(image):g}, {np.nanmax(image):g}]; "
            "float images must lie in [0, 1] (pass uint8 for 0–255)"
        )
    return image


class Preprocessor:
    """Turn an RGB image into the input of one network (and back, for display).

    Parameters
    ----------
    manifest : Manifest or str
        The network (a zoo name or its :class:`~preddiff.zoo.Manifest`).
    policy : {"crop", "resize"}
        ``"crop"``: centre crop without resizing, the released code's behaviour (AlexNet mean
        image cropped at ``manifest.mean_crop_offset`` = 29). ``"resize"``: resize to
        256×256, centre crop, mean image centre-cropped (offset 14 for AlexNet).

    Examples
    --------
    >>> from preddiff.preprocess import Preprocessor
    >>> import numpy as np
    >>> pre = Preprocessor("googlenet")
    >>> x = pre(np.zeros((230, 240, 3), np.uint8))
    >>> x.shape, x.dtype
    ((3, 224, 224), dtype('float32'))
    >>> float(x[0, 0, 0])  # black minus the blue mean
    -104.0
    """

    def __init__(self, manifest: Manifest | str, policy: str = "crop"):
        if isinstance(manifest, str):
            manifest = zoo_manifest(manifest)
        if policy not in POLICIES:
            raise InvalidArgument(f"unknown policy {policy!r}; expected one of {', '.join(POLICIES)}")
        self.manifest = manifest
        self.policy = policy
        self.input_shape = tuple(manifest.input_shape)
        self.gray = manifest.channel_order.lower() in ("gray", "grey")
        if not self.gray and manifest.channel_order.upper() not in ("BGR", "RGB"):
            raise InvalidArgument(f"unknown channel order {manifest.channel_order!r}")
        self.mean = self._network_mean()

    def _network_mean(self) -> np.ndarray:
        """The mean to subtract, broadcastable to (C, H, W), float32."""
        mean = np.asarray(self.manifest.mean, dtype=np.float32)
        c, h, w = self.input_shape
        if mean.ndim == 1:
            return mean.reshape(-1, 1, 1)
        mh, mw = mean.shape[1:]
        if self.policy == "crop" and self.manifest.mean_crop_offset is not None:
            top = left = int(self.manifest.mean_crop_offset)
        else:
            top, left = (mh - h) // 2, (mw - w) // 2
        if top < 0 or left < 0 or top + h > mh or left + w > mw:
            raise InvalidArgument(
                f"mean image of shape {mean.shape} cannot be cropped to {h}×{w} at offset {top}"
            )
        return np.ascontiguousarray(mean[:, top : top + h, left : left + w])

    def _crop(self, image: np.ndarray, what: str) -> np.ndarray:
        _, h, w = self.input_shape
        height, width = image.shape[:2]
        if self.policy == "resize":
            from skimage.transform import resize

            image = resize(image, (RESIZE_TO, RESIZE_TO), order=1, anti_aliasing=True)
            height = width = RESIZE_TO
        if height < h or width < w:
            raise InvalidArgument(
                f"{what} is {height}×{width} pixels, smaller than the {h}×{w} network input: "
                f"policy 'crop' does not resize; use policy 'resize' or a larger image"
            )
        top, left = (height - h) // 2, (width - w) // 2
        return image[top : top + h, left : left + w]

    def __call__(self, image: np.ndarray, *, what: str = "image") -> np.ndarray:
        """Preprocess one image.

        Parameters
        ----------
        image : ndarray, shape (H, W, 3), (H, W), (H, W, 1) or (H, W, 4)
            RGB, uint8 in 0–255 or float in [0, 1].
        what : str
            Name of the image in messages.

        Returns
        -------
        ndarray of float32, shape (C, h, w)
            Network input: BGR (or gray), times ``manifest.scale``, minus the mean.
        """
        image = np.asarray(image)
        if self.policy == "resize":
            from .inputs import shrink

            image = shrink(image, (RESIZE_TO, RESIZE_TO), what=what)
        if self.gray:
            if image.ndim == 3 and image.shape[2] == 1:
                image = image[:, :, 0]
            elif image.ndim == 3 and image.shape[2] in (3, 4):
                warnings.warn(f"{what} is in colour: converted to gray for a grayscale network",
                              stacklevel=2)
                from skimage.color import rgb2gray

                image = rgb2gray(_as_unit_float(image[:, :, :3], what))
            elif image.ndim != 2:
                raise InvalidArgument(f"{what} has shape {image.shape}; expected a 2-D gray image")
            image = _as_unit_float(image, what)[:, :, None]
        else:
            image = _as_unit_float(to_rgb(image, what=what), what)
        image = self._crop(image, what)
        x = image.transpose(2, 0, 1)  # (C, h, w)
        if self.manifest.channel_order.upper() == "BGR":
            x = x[::-1]
        x = x.astype(np.float32) * np.float32(self.manifest.scale) - self.mean
        return np.ascontiguousarray(x, dtype=np.float32)

    def batch(self, images) -> np.ndarray:
        """Preprocess several images: a sequence of (H, W, 3) arrays → (N, C, h, w) float32."""
        c, h, w = self.input_shape
        out = np.empty((len(images), c, h, w), np.float32)
        for i, image in enumerate(images):
            out[i] = self(image, what=f"image {i}")
        return out

    def deprocess(self, x: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`__call__` for display.

        Parameters
        ----------
        x : ndarray, shape (C, h, w) or (N, C, h, w)
            Network input(s).

        Returns
        -------
        ndarray of float32, shape (h, w, 3) or (N, h, w, 3)
            RGB in [0, 1] (clipped); a grayscale network's input is replicated to three channels.
        """
        x = np.asarray(x, dtype=np.float32)
        if x.ndim not in (3, 4) or x.shape[-3:] != self.input_shape:
            raise InvalidArgument(
                f"input of shape {x.shape}; expected (C, H, W) or (N, C, H, W) with "
                f"(C, H, W) = {self.input_shape}"
            )
        image = (x + self.mean) / np.float32(self.manifest.scale)
        if self.manifest.channel_order.upper() == "BGR":
            image = image[..., ::-1, :, :]
        image = np.moveaxis(image, -3, -1)
        if self.gray:
            image = np.repeat(image, 3, axis=-1)
        return np.clip(image, 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# user ONNX files: resize policy and normalisation

RESIZE_MODES = ("crop", "stretch")
"""How :class:`OnnxPreprocessor` fits an image to the network input."""

CROP_FRACTION = 0.875
"""Input side ÷ resized short side for ``resize="crop"``: torchvision's ImageNet evaluation
transform ``Resize(256)`` + ``CenterCrop(224)`` (224 / 256)."""

NORMALIZATIONS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
"""Named ``(mean, std)`` pairs on the [0, 1] scale, RGB order (torchvision's ImageNet values)."""


def resize_image(image: np.ndarray, size) -> np.ndarray:
    """Bilinear, anti-aliased resize (:func:`skimage.transform.resize`) of an (H, W, C) float
    image to ``size = (h, w)``.

    Returns
    -------
    ndarray of float64, shape (h, w, C)
    """
    from skimage.transform import resize

    return resize(image, tuple(int(n) for n in size), order=1, anti_aliasing=True)


def parse_channel_values(text: str, channels: int, name: str) -> tuple[float, ...]:
    """``"0.485,0.456,0.406"`` → a tuple of ``channels`` floats (one value is repeated).

    Raises
    ------
    InvalidArgument
        Not numbers, or a count other than 1 or ``channels``.
    """
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        raise InvalidArgument(f"{name} {text!r}: expected {channels} comma-separated numbers, "
                              f"e.g. {'0.485,0.456,0.406' if channels == 3 else '0.5'}") from None
    if len(values) == 1:
        values = values * channels
    if len(values) != channels or not all(np.isfinite(values)):
        raise InvalidArgument(f"{name} {text!r}: expected {channels} finite value(s) for a "
                              f"{channels}-channel input, got {len(values)}")
    return values


class OnnxPreprocessor:
    """Image → input of a user's ONNX network: RGB (or gray) in [0, 1], fitted to the input
    size, optionally normalised ``(x − mean) / std`` per channel.

    Parameters
    ----------
    input_shape : (int, int, int)
        ``(C, h, w)``, ``C`` 1 (gray) or 3 (RGB).
    resize : {"crop", "stretch"}
        ``"crop"`` (default): torchvision's convention — resize so the image covers
        ``(h, w) / CROP_FRACTION`` keeping its aspect ratio (for a square input: the short
        side to ``h / 0.875``, e.g. 256 for 224), then take the centre ``h × w``.
        ``"stretch"``: resize the whole image to ``h × w`` (distorts the aspect ratio).
        An image already of size ``h × w`` is used as it is in both modes.
    mean, std : sequence of float, optional
        Per-channel normalisation on the [0, 1] scale, RGB order (``NORMALIZATIONS`` has
        torchvision's ImageNet values). Without them the input is in [0, 1].

    Attributes
    ----------
    last_fit : str or None
        What the last call did to the image size, for the printout (``None``: nothing).
    """

    def __init__(self, input_shape, *, resize: str = "crop", mean=None, std=None):
        c, h, w = (int(n) for n in input_shape)
        if c not in (1, 3):
            raise InvalidArgument(f"input with {c} channels; 1 (gray) or 3 (RGB) are handled")
        if resize not in RESIZE_MODES:
            raise InvalidArgument(f"resize {resize!r}: expected one of {', '.join(RESIZE_MODES)}")
        self.input_shape, self.resize = (c, h, w), resize
        self.mean = np.zeros(c) if mean is None else np.asarray(mean, dtype=np.float64)
        self.std = np.ones(c) if std is None else np.asarray(std, dtype=np.float64)
        for name, value in (("mean", self.mean), ("std", self.std)):
            if value.shape != (c,):
                raise InvalidArgument(f"{name} has {value.size} value(s); the input has {c} "
                                      "channel(s)")
        if np.any(self.std <= 0):
            raise InvalidArgument(f"std {self.std.tolist()} must be positive")
        self.normalized = mean is not None or std is not None
        self.last_fit = None

    def describe(self) -> dict:
        """The settings, JSON-serialisable (stored in the ``.npz`` metadata)."""
        return {"resize": self.resize, "crop_fraction": CROP_FRACTION,
                "mean": self.mean.tolist(), "std": self.std.tolist()}

    def fit(self, image: np.ndarray, source=None) -> np.ndarray:
        """Fit an (H, W, C) image to the input size; sets :attr:`last_fit`.

        ``source``: the (H, W) of the original image when ``image`` was box-reduced from it
        (for the message)."""
        _, h, w = self.input_shape
        height, width = source or image.shape[:2]
        self.last_fit = None
        if image.shape[:2] == (h, w):
            return image
        nh, nw = self._fitted_size(height, width)
        image = resize_image(image, (nh, nw))
        if self.resize == "stretch":
            self.last_fit = f"stretched {height}x{width} to {h}x{w} (--resize stretch)"
            return image
        top, left = int(round((nh - h) / 2)), int(round((nw - w) / 2))
        self.last_fit = (f"resized {height}x{width} to {nh}x{nw} and took the centre {h}x{w} "
                         "(--resize crop, torchvision's convention; --resize stretch keeps "
                         "the whole image)")
        return image[top:top + h, left:left + w]

    def _fitted_size(self, height: int, width: int) -> tuple[int, int]:
        """Size the image is resized to before the centre crop (the input size to stretch)."""
        _, h, w = self.input_shape
        if self.resize == "stretch" or (height, width) == (h, w):
            return h, w
        scale = max(h / height, w / width) / CROP_FRACTION
        # torchvision's Resize truncates the long side; its CenterCrop rounds the offsets
        return max(h, int(height * scale)), max(w, int(width * scale))

    def __call__(self, image: np.ndarray, *, what: str = "image") -> np.ndarray:
        """Preprocess one image (a large one is first box-filtered by
        :func:`preddiff.inputs.shrink`).

        Parameters
        ----------
        image : ndarray, shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)
            uint8 in 0–255 or float in [0, 1].

        Returns
        -------
        ndarray of float32, shape (C, h, w)
        """
        from .inputs import shrink

        c, h, w = self.input_shape
        image = np.asarray(image)
        source = image.shape[:2]
        # a huge photo is box-filtered first (no full-size float copy, no giant Gaussian)
        image = shrink(image, self._fitted_size(*source), what=what)
        image = _as_unit_float(image, what)
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if c == 1 and image.ndim == 3:
            from skimage.color import rgb2gray

            image = rgb2gray(image[:, :, :3])
        if c == 3 and image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim == 2:
            image = image[:, :, None]
        image = self.fit(image[:, :, :c], source)
        x = (image - self.mean) / self.std
        return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)

    def deprocess(self, x: np.ndarray) -> np.ndarray:
        """Network input (C, h, w) → RGB (h, w, 3) in [0, 1] for display."""
        x = np.moveaxis(np.asarray(x, dtype=np.float64), 0, -1) * self.std + self.mean
        image = np.clip(x, 0.0, 1.0).astype(np.float32)
        return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
