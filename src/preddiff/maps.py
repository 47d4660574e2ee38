"""Relevance maps computed from the per-window values when they are asked for.

Algorithm 1 ends by averaging each window's prediction difference over the pixels it covers
(§3.2). For a probability blob of an ImageNet network that is 1000 maps of H × W (1000 × 224²
float64 = 400 MB), while a user looks at a handful of classes. :class:`RelevanceMaps` keeps
the small table of per-window values (windows × units) and computes a blob's maps, or a
single unit's map, on first use. A single unit's map is bit-identical to the same unit's row
of the full computation: :func:`preddiff.windows.window_sum` adds every pixel's covering
windows in the same fixed order whatever units it is given.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .errors import InvalidArgument
from .windows import window_sum

__all__ = ["RelevanceMaps"]


class RelevanceMaps(Mapping):
    """Per blob, the relevance maps (units, H, W), computed from per-window values on use.

    A read-only mapping ``blob -> ndarray (units, H, W)`` of float64, like the dict of arrays
    a loaded :class:`~preddiff.analysis.Explanation` holds; ``maps[blob]`` computes (and keeps)
    every unit's map, :meth:`unit` one unit's map only.

    Parameters
    ----------
    values : dict of str to ndarray, shape (n_windows, units)
        Per blob, each window's prediction difference (weight of evidence, eq. 4–5, or
        activation difference, eq. 9), in the order of
        :func:`preddiff.windows.window_positions`; kept as ``window_values``.
    counts : ndarray of int64, shape (H, W)
        Windows covering each pixel; pixels with count 0 get relevance 0.
    window, stride, edges
        The window grid (:func:`preddiff.windows.window_grid`).
    transform : callable, optional
        Applied to every computed map (array in, array of the same shape out), e.g. the
        released code's float16 rounding (:func:`preddiff.compat.round_relevance`). Must be
        elementwise, so that a unit's map equals the unit's row of the blob's maps.
    """

    def __init__(self, values: dict, counts: np.ndarray, window, stride: int, edges: str,
                 transform=None):
        self.window_values = {b: np.asarray(v, dtype=np.float64) for b, v in values.items()}
        for blob, v in self.window_values.items():
            if v.ndim != 2:
                raise InvalidArgument(f"values of blob {blob!r} must be (windows, units), "
                                      f"got shape {v.shape}")
        self.counts = np.asarray(counts)
        self.window, self.stride, self.edges = window, int(stride), edges
        self.transform = transform
        self._full: dict = {}
        self._units: dict = {}

    # ---- Mapping ----------------------------------------------------------------------

    def __getitem__(self, blob: str) -> np.ndarray:
        if blob not in self.window_values:
            raise KeyError(blob)
        if blob not in self._full:
            self._full[blob] = self._compute(self.window_values[blob])
            self._units = {k: v for k, v in self._units.items() if k[0] != blob}
        return self._full[blob]

    def __contains__(self, blob) -> bool:  # Mapping's default would compute the maps
        return blob in self.window_values

    def __iter__(self):
        return iter(self.window_values)

    def __len__(self) -> int:
        return len(self.window_values)

    # ---- single units -----------------------------------------------------------------

    def num_units(self, blob: str) -> int:
        """Number of maps of ``blob`` (without computing them)."""
        return int(self.window_values[blob].shape[1])

    def computed(self, blob: str) -> bool:
        """Whether every map of ``blob`` has been computed."""
        return blob in self._full

    def unit(self, blob: str, unit: int) -> np.ndarray:
        """The map of one unit, shape (H, W), computed alone unless the blob's maps are.

        Raises
        ------
        InvalidArgument
            An unknown blob or a unit outside ``0 … units − 1``.
        """
        if blob not in self.window_values:
            raise InvalidArgument(f"unknown blob {blob!r}; the maps have {', '.join(self)}")
        n = self.num_units(blob)
        if not 0 <= int(unit) < n:
            raise InvalidArgument(f"unit {unit} of blob {blob!r} is outside 0–{n - 1}")
        if blob in self._full:
            return self._full[blob][int(unit)]
        key = (blob, int(unit))
        if key not in self._units:
            self._units[key] = self._compute(self.window_values[blob][:, [int(unit)]])[0]
        return self._units[key]

    def transformed(self, transform) -> "RelevanceMaps":
        """The same maps with ``transform`` applied after any transform they already have."""
        first = self.transform
        combined = transform if first is None else _Chain(first, transform)
        return RelevanceMaps(self.window_values, self.counts, self.window, self.stride, self.edges,
                             combined)

    def _compute(self, values: np.ndarray) -> np.ndarray:
        """(windows, units) → (units, H, W): the average over the covering windows."""
        total = window_sum(values, self.counts.shape, self.window, self.stride,
                           edges=self.edges)
        # uncovered pixels are exactly 0 in the sum and stay so
        maps = np.divide(total, self.counts, out=total, where=self.counts > 0)
        return maps if self.transform is None else self.transform(maps)


class _Chain:
    """Two transforms, one after the other (a picklable composition)."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def __call__(self, maps):
        return self.second(self.first(maps))
