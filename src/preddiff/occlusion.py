"""Occlusion with a grey patch: the Zeiler & Fergus baseline the paper compares with.

Zeiler & Fergus ("Visualizing and Understanding Convolutional Networks", ECCV 2014, §4.2)
slide a grey square over the image and watch the probability of the correct class. The paper
(Zintgraf et al., §2.1) presents PDA as "a more rigorous approach at removing information"
than that grey patch: occlusion is PDA with the crudest possible "sampler", one constant value
instead of samples from p(x_w | x\\x_w). We therefore run the *same* engine
(:func:`preddiff.prediction_difference`, Algorithm 1: the same k×k windows, the same stride,
the same per-pixel average over the covering windows, the weight of evidence eq. (4)–(5) for
probabilities and the activation difference eq. (9) otherwise) with a
:class:`ConstantSampler`, so the fill is the only difference between occlusion and PDA maps.
(Zeiler & Fergus plotted the probability itself; the weight of evidence is a monotone
function of it for a fixed image, so the window ranking is the same.)

The grey patch is 0 in the zoo nets' mean-subtracted input space (the mean colour); on the
LeNet digits 0 is the background.
"""
from __future__ import annotations

import numpy as np

from .errors import InvalidArgument
from .samplers import Sampler
from .windows import window_shape


class ConstantSampler(Sampler):
    """A deterministic sampler that fills every window with ``value`` (the grey patch).

    Parameters
    ----------
    value : float or array_like, shape (C,)
        One value, or one per channel, in the classifier's input space.

    Notes
    -----
    Follows the sampler protocol of :mod:`preddiff.samplers`; it draws no random numbers, so
    the engine's ``rng`` does not change the result and one sample suffices.
    """

    def __init__(self, value=0.0):
        value = np.asarray(value, dtype=np.float64)
        if value.ndim > 1 or not np.all(np.isfinite(value)):
            raise InvalidArgument(
                f"value must be a finite number or one per channel, got {value!r}")
        self.value = value

    def sample(self, x, top_left, window, num_samples, rngs) -> np.ndarray:
        kh, kw = window_shape(window)
        channels = np.shape(x)[0]
        if self.value.ndim == 1 and self.value.size != channels:
            raise InvalidArgument(
                f"the constant has {self.value.size} channel values, the image {channels}")
        n = np.asarray(top_left).reshape(-1, 2).shape[0]
        fill = np.broadcast_to(self.value.reshape(-1, 1, 1) if self.value.ndim else self.value,
                               (channels, kh, kw))
        return np.broadcast_to(fill, (n, num_samples, channels, kh, kw)).astype(np.float32)

    def describe(self) -> dict:
        return {"name": "ConstantSampler", "value": np.atleast_1d(self.value).tolist()}


def occlusion(x, classifier, *, window, stride: int = 1, value=0.0, blobs=("prob",),
              batch_size: int = 256, progress: bool = False, **kwargs):
    """Grey-patch occlusion map (Zeiler & Fergus 2014) computed by the PDA engine.

    Parameters
    ----------
    x : ndarray, shape (C, H, W)
        Preprocessed image.
    classifier : callable
        (N, C, H, W) float32 -> {blob: (N, ...)}, as for :func:`preddiff.prediction_difference`.
    window : int or (int, int)
        Side of the grey square.
    stride : int
        Window stride (1: every position, as the paper's PDA).
    value : float or array_like, shape (C,)
        The grey: 0 in mean-subtracted space; the background (0) on the digits.
    blobs, batch_size, progress, **kwargs
        Passed to :func:`preddiff.prediction_difference` (e.g. ``laplace_n``, ``checkpoint``).

    Returns
    -------
    Explanation
        ``relevance[blob]`` (units, H, W): the weight of evidence (or activation difference)
        of replacing each window by the constant, averaged over the windows covering a pixel.
    """
    from .analysis import prediction_difference

    return prediction_difference(x, classifier, ConstantSampler(value), window=window,
                                 stride=stride, num_samples=1, blobs=blobs,
                                 batch_size=batch_size, rng=0, progress=progress, **kwargs)
