"""Sliding windows over an image: positions, coverage counts and the per-pixel average.

Prediction difference analysis (Zintgraf et al. 2016, §3.2 and Algorithm 1) removes a
``kh × kw`` window (all colour channels) at every position of the image and assigns each pixel
the average of the values obtained from all windows that contain it. This module holds the
geometry of that procedure, independent of samplers and classifiers:

- :func:`window_shape` checks and normalises the ``window`` argument;
- :func:`window_positions` lists the top-left corners, row-major;
- :func:`coverage_counts` counts the windows covering each pixel;
- :func:`window_sum` adds per-window values over the pixels each window covers, with array
  operations (a separable box filter of the window grid) instead of a loop over windows.

Window positions form a regular grid: top-left rows ``0, stride, 2·stride, …`` up to
``H − kh`` and the same for columns. With ``stride = 1`` the windows run from the top-left to
the bottom-right corner, ``(H − kh + 1)·(W − kw + 1)`` of them (paper). ``stride = kh = kw``
is the released code's non-overlapping mode. Any other stride is allowed; the maps get coarser
and, when ``(H − kh)`` is not a multiple of the stride, the last rows or columns are never
covered (they get count 0 and relevance 0).
"""
from __future__ import annotations

import numbers

import numpy as np

from .errors import InvalidArgument

__all__ = ["window_shape", "window_grid", "window_positions", "coverage_counts", "window_sum"]


def _positive_int(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise InvalidArgument(f"{name} must be a positive integer, got {value!r}")
    if int(value) < 1:
        raise InvalidArgument(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def window_shape(window) -> tuple[int, int]:
    """Normalise a window size to ``(kh, kw)``.

    Parameters
    ----------
    window : int or (int, int)
        ``k`` for a square ``k × k`` window, or ``(kh, kw)``.

    Returns
    -------
    (int, int)

    Raises
    ------
    InvalidArgument
        When a size is not a positive integer.
    """
    if isinstance(window, (tuple, list, np.ndarray)):
        if len(window) != 2:
            raise InvalidArgument(f"window must be an int or a pair (kh, kw), got {window!r}")
        return (_positive_int(window[0], "window height"), _positive_int(window[1], "window width"))
    k = _positive_int(window, "window")
    return (k, k)


def window_grid(image_shape, window, stride=1) -> tuple[np.ndarray, np.ndarray]:
    """Top-left rows and columns of the window grid.

    Parameters
    ----------
    image_shape : (int, int)
        ``(H, W)``.
    window : int or (int, int)
    stride : int, optional

    Returns
    -------
    rows : ndarray of int64, shape (Nr,)
        ``0, stride, …`` up to ``H − kh``.
    cols : ndarray of int64, shape (Nc,)

    Raises
    ------
    InvalidArgument
        When the window is larger than the image or the stride is not a positive integer.
    """
    kh, kw = window_shape(window)
    stride = _positive_int(stride, "stride")
    height, width = (int(n) for n in image_shape)
    if kh > height or kw > width:
        raise InvalidArgument(
            f"window {kh}x{kw} is larger than the image {height}x{width}; "
            f"the window must fit inside the image")
    rows = np.arange(0, height - kh + 1, stride, dtype=np.int64)
    cols = np.arange(0, width - kw + 1, stride, dtype=np.int64)
    return rows, cols


def window_positions(image_shape, window, stride=1) -> np.ndarray:
    """Top-left corners of all windows, row-major.

    Parameters
    ----------
    image_shape : (int, int)
        ``(H, W)``.
    window : int or (int, int)
    stride : int, optional

    Returns
    -------
    ndarray of int64, shape (Nr·Nc, 2)
        ``(row, col)`` of window ``i``; window ``i`` sits at grid cell ``divmod(i, Nc)``.

    Examples
    --------
    >>> window_positions((3, 4), 2).tolist()
    [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    """
    rows, cols = window_grid(image_shape, window, stride)
    grid = np.stack(np.meshgrid(rows, cols, indexing="ij"), axis=-1)
    return grid.reshape(-1, 2)


def coverage_counts(image_shape, window, stride=1) -> np.ndarray:
    """How many windows contain each pixel (``counts`` of Algorithm 1).

    Returns
    -------
    ndarray of int64, shape (H, W)
    """
    kh, kw = window_shape(window)
    rows, cols = window_grid(image_shape, window, stride)
    height, width = (int(n) for n in image_shape)
    # The grid is a product of row and column intervals, so the count factorises.
    return np.outer(_axis_counts(height, kh, rows), _axis_counts(width, kw, cols))


def window_sum(values, image_shape, window, stride=1, *, chunk=64) -> np.ndarray:
    """Sum per-window values over the pixels each window covers.

    ``out[u, y, x] = Σ_i values[i, u]`` over the windows ``i`` that contain pixel ``(y, x)``.
    The windows form a grid, so this is a separable box filter of the grid values: first each
    grid row is spread over the ``kh`` image rows its windows cover (``kh`` strided slice
    additions), then each grid column over ``kw`` image columns. Cost
    ``O(units · (kh + kw) · H · W)`` in array operations, no Python loop over windows. Every
    output is a plain sum of exactly the covering windows' values, added in a fixed order, so
    pixels whose windows all have value 0 — and pixels no window covers — are exactly 0.

    Parameters
    ----------
    values : array_like, shape (Nr·Nc, units)
        One row per window, in the order of :func:`window_positions`.
    image_shape : (int, int)
    window : int or (int, int)
    stride : int, optional
    chunk : int, optional
        Units processed at a time; the temporary memory is about ``2 · chunk · H · W``
        float64 values.

    Returns
    -------
    ndarray of float64, shape (units, H, W)

    Examples
    --------
    >>> window_sum([[1.0], [2.0]], (1, 3), (1, 2))  # two 1x2 windows
    array([[[1., 3., 2.]]])
    """
    kh, kw = window_shape(window)
    rows, cols = window_grid(image_shape, window, stride)
    height, width = (int(n) for n in image_shape)
    values = np.asarray(values, dtype=np.float64)
    n_r, n_c = rows.size, cols.size
    if values.ndim != 2 or values.shape[0] != n_r * n_c:
        raise InvalidArgument(
            f"values must have shape ({n_r * n_c}, units) for {n_r}x{n_c} windows, "
            f"got {values.shape}")
    step = _positive_int(stride, "stride")
    r_end, c_end = rows[-1] + 1, cols[-1] + 1
    units = values.shape[1]
    out = np.empty((units, height, width))
    grid = values.reshape(n_r, n_c, units)
    chunk = max(1, min(int(chunk), units))
    spread_buf = np.empty((height, n_c, chunk))  # reused: no page faults per chunk
    block_buf = np.empty((height, width, chunk))
    for u0 in range(0, units, chunk):
        # units last: every slice addition moves contiguous runs of units
        part = grid[:, :, u0:u0 + chunk]
        spread, block = spread_buf[:, :, :part.shape[2]], block_buf[:, :, :part.shape[2]]
        spread.fill(0.0)
        block.fill(0.0)
        for dy in range(kh):  # grid row i covers image rows r_i … r_i + kh − 1
            spread[dy:dy + r_end:step] += part
        for dx in range(kw):
            block[:, dx:dx + c_end:step] += spread
        out[u0:u0 + chunk] = block.transpose(2, 0, 1)
    return out


def _axis_counts(length: int, k: int, starts: np.ndarray) -> np.ndarray:
    """Number of intervals ``[s, s + k)`` containing each index ``0 … length − 1``."""
    diff = np.zeros(length + 1, dtype=np.int64)
    np.add.at(diff, starts, 1)
    np.add.at(diff, starts + k, -1)
    return np.cumsum(diff)[:length]
