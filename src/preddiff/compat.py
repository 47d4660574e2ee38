"""The released code's behaviours that change numbers, selectable as one compatibility mode.

The authors' released implementation (lmzintgraf/DeepVis-PredDiff, Python 2 + Caffe) departs
from what the paper describes and from what the code itself intends in several ways that
change the relevance maps (see the README's faithfulness table). preddiff follows the intent
by default (``compat="intended"``); ``compat="released"`` reproduces those departures that it
can reproduce exactly:

* marginal sampling takes the **first S** images of the pool for every window
  (:class:`preddiff.samplers.MarginalSampler` ``order="first"``);
* the conditional Gaussians are fitted the released way — ``int(20000 / M) + 1`` positions
  per colour channel, each from all ``M`` pool images, the last patch row and column never
  drawn (``patches="released"``, ``num_patches=20000``);
* channels 1 and 2 reuse channel 0's regression matrix ``Σ12 Σ22⁻¹`` and conditional
  covariance (``colour="per-channel-released"``), the released cache having no channel in
  its key;
* windows on the regular grid only: with a stride that does not divide ``H − k`` the last
  rows and columns get no window (``edges="drop"``; preddiff adds windows aligned to them);
* the relevance is rounded to **float16** before it is returned.

Used by ``preddiff explain --compat released`` and by the figure scripts'
``--set compat=released``.
"""
from __future__ import annotations

import numpy as np

from .errors import InvalidArgument

__all__ = ["COMPATS", "RELEASED", "settings", "round_relevance", "float16_round"]

COMPATS = ("intended", "released")
"""``"intended"``: the paper and the released code's intent (default); ``"released"``: the
released code's actual numbers where they differ."""

RELEASED = {
    "marginal_order": "first",
    "colour": "per-channel-released",
    "patches": "released",
    "num_patches": 20000,  # the released cond_sampler_imagenet's num_samples_fit
    "relevance_dtype": "float16",
    "edges": "drop",  # the released code's regular window grid (no edge-aligned windows)
}
"""Sampler and output settings of ``compat="released"``."""


def settings(compat: str) -> dict:
    """The settings a compatibility mode imposes (empty for ``"intended"``).

    Raises
    ------
    InvalidArgument
        ``compat`` is not one of :data:`COMPATS`.
    """
    if compat not in COMPATS:
        raise InvalidArgument(f"compat must be one of {', '.join(COMPATS)}, got {compat!r}")
    return dict(RELEASED) if compat == "released" else {}


def round_relevance(relevance, compat: str):
    """Relevance maps as the mode returns them: rounded through float16 for ``"released"``
    (the released code's ``.astype(np.float16)``), unchanged otherwise. Values keep their
    dtype, so the rounding, not the storage type, is what changes.

    Parameters
    ----------
    relevance : dict of str to ndarray, or preddiff.maps.RelevanceMaps
        Maps (units, H, W) per blob. Lazily computed maps stay lazy: the rounding is applied
        to each map when it is computed.
    """
    if not settings(compat):
        return relevance
    transformed = getattr(relevance, "transformed", None)
    if transformed is not None:
        return transformed(float16_round)
    return {blob: float16_round(r) for blob, r in relevance.items()}


def float16_round(maps) -> np.ndarray:
    """``maps`` rounded to the nearest float16 value, in their own dtype (elementwise)."""
    maps = np.asarray(maps)
    return maps.astype(np.float16).astype(maps.dtype)
