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

Window positions form a grid: top-left rows ``0, stride, 2·stride, …`` up to ``H − kh`` and
the same for columns. With ``stride = 1`` the windows run from the top-left to the
bottom-right corner, ``(H − kh + 1)·(W − kw + 1)`` of them (paper). ``stride = kh = kw`` is the
released code's non-overlapping mode. Any other stride is allowed; the maps get coarser.

When ``H − kh`` is not a multiple of the stride, the regular grid stops short of the last rows
(columns). ``edges="cover"`` (the default) adds one more row (column) of windows aligned to the
image's last row (column), so every pixel is covered whenever ``stride <= k``;
``edges="drop"`` keeps the regular grid only, as the released code did, and the uncovered band
gets count 0 and relevance 0. A stride larger than the window leaves gaps between windows in
either mode.
"""
from __future__ import annotations

import numbers

import numpy as np

from .errors import InvalidArgument

__all__ = ["window_shape", "window_grid", "window_positions", "coverage_counts", "window_sum",
           "window_views", "EDGES"]

#: Values of the ``edges`` argument: add windows aligned to the last row and column when the
#: stride does not reach them (``"cover"``), or keep the regular grid only (``"drop"``).
EDGES = ("cover", "drop")


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


def window_views(array: np.ndarray, window, *, writeable: bool = False) -> np.ndarray:
    """Every ``kh × kw`` window of the last two axes of ``array``, as a strided view.

    The same view as ``numpy.lib.stride_tricks.sliding_window_view(array, window,
    axis=(-2, -1))``, built directly for a C-contiguous array (a few microseconds instead of
    tens: it is built for every batch of windows).

    Parameters
    ----------
    array : ndarray, shape (..., H, W)
    window : (int, int)
    writeable : bool
        A writeable view (each window's values are shared with its neighbours': write
        non-overlapping windows only).

    Returns
    -------
    ndarray, shape (..., H − kh + 1, W − kw + 1, kh, kw)
    """
    kh, kw = window
    if not array.flags.c_contiguous or array.ndim < 2:
        from numpy.lib.stride_tricks import sliding_window_view

        return sliding_window_view(array, (kh, kw), axis=(-2, -1), writeable=writeable)
    *lead, h, w = array.shape
    strides = array.strides
    view = np.ndarray((*lead, h - kh + 1, w - kw + 1, kh, kw), array.dtype, buffer=array,
                      strides=(*strides, *strides[-2:]))
    if not writeable:
        view.flags.writeable = False
    return view


def check_edges(edges) -> str:
    """Check the ``edges`` argument (one of :data:`EDGES`)."""
    if not isinstance(edges, str) or edges not in EDGES:
        raise InvalidArgument(f"edges must be one of {', '.join(map(repr, EDGES))}, "
                              f"got {edges!r}")
    return edges


def _axis_starts(length: int, k: int, stride: int, edges: str) -> np.ndarray:
    starts = np.arange(0, length - k + 1, stride, dtype=np.int64)
    if edges == "cover" and starts[-1] != length - k:
        starts = np.append(starts, np.int64(length - k))
    return starts


def window_grid(image_shape, window, stride=1, *, edges="cover") -> tuple[np.ndarray, np.ndarray]:
    """Top-left rows and columns of the window grid.

    Parameters
    ----------
    image_shape : (int, int)
        ``(H, W)``.
    window : int or (int, int)
    stride : int, optional
    edges : {"cover", "drop"}, optional
        ``"cover"``: when ``H − kh`` is not a multiple of ``stride``, add the row ``H − kh``
        (the same for columns), so the last rows are covered; ``"drop"``: the regular grid
        only (released code).

    Returns
    -------
    rows : ndarray of int64, shape (Nr,)
        ``0, stride, …`` up to ``H − kh`` (and ``H − kh`` itself with ``edges="cover"``),
        strictly increasing.
    cols : ndarray of int64, shape (Nc,)

    Raises
    ------
    InvalidArgument
        When the window is larger than the image, the stride is not a positive integer or
        ``edges`` is unknown.

    Examples
    --------
    >>> [a.tolist() for a in window_grid((7, 6), 2, 2)]
    [[0, 2, 4, 5], [0, 2, 4]]
    >>> [a.tolist() for a in window_grid((7, 6), 2, 2, edges="drop")]
    [[0, 2, 4], [0, 2, 4]]
    """
    kh, kw = window_shape(window)
    stride = _positive_int(stride, "stride")
    height, width = (int(n) for n in image_shape)
    if kh > height or kw > width:
        raise InvalidArgument(
            f"window {kh}x{kw} is larger than the image {height}x{width}; "
            f"the window must fit inside the image")
    edges = check_edges(edges)
    return (_axis_starts(height, kh, stride, edges), _axis_starts(width, kw, stride, edges))


def window_positions(image_shape, window, stride=1, *, edges="cover") -> np.ndarray:
    """Top-left corners of all windows, row-major.

    Parameters
    ----------
    image_shape : (int, int)
        ``(H, W)``.
    window : int or (int, int)
    stride : int, optional
    edges : {"cover", "drop"}, optional
        See :func:`window_grid`.

    Returns
    -------
    ndarray of int64, shape (Nr·Nc, 2)
        ``(row, col)`` of window ``i``; window ``i`` sits at grid cell ``divmod(i, Nc)``.

    Examples
    --------
    >>> window_positions((3, 4), 2).tolist()
    [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    """
    rows, cols = window_grid(image_shape, window, stride, edges=edges)
    grid = np.stack(np.meshgrid(rows, cols, indexing="ij"), axis=-1)
    return grid.reshape(-1, 2)


def coverage_counts(image_shape, window, stride=1, *, edges="cover") -> np.ndarray:
    """How many windows contain each pixel (``counts`` of Algorithm 1).

    Returns
    -------
    ndarray of int64, shape (H, W)
    """
    kh, kw = window_shape(window)
    rows, cols = window_grid(image_shape, window, stride, edges=edges)
    height, width = (int(n) for n in image_shape)
    # The grid is a product of row and column intervals, so the count factorises.
    return np.outer(_axis_counts(height, kh, rows), _axis_counts(width, kw, cols))


def window_sum(values, image_shape, window, stride=1, *, edges="cover", chunk=64) -> np.ndarray:
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
    edges : {"cover", "drop"}, optional
        See :func:`window_grid`.
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
    rows, cols = window_grid(image_shape, window, stride, edges=edges)
    height, width = (int(n) for n in image_shape)
    values = np.asarray(values, dtype=np.float64)
    n_r, n_c = rows.size, cols.size
    if values.ndim != 2 or values.shape[0] != n_r * n_c:
        raise InvalidArgument(
            f"values must have shape ({n_r * n_c}, units) for {n_r}x{n_c} windows, "
            f"got {values.shape}")
    row_at, col_at = _spreader(rows), _spreader(cols)
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
            spread[row_at(dy)] += part
        for dx in range(kw):
            block[:, col_at(dx)] += spread
        out[u0:u0 + chunk] = block.transpose(2, 0, 1)
    return out


def _spreader(starts: np.ndarray):
    """``offset -> index`` of the image rows ``starts + offset``: a slice for a regular grid,
    an index array when an edge-aligned start was added. The starts are distinct, so an
    in-place addition through either adds each value exactly once."""
    if starts.size == 1:
        return lambda offset: slice(int(starts[0]) + offset, int(starts[0]) + offset + 1)
    step = int(starts[1] - starts[0])
    if np.all(np.diff(starts) == step):
        end = int(starts[-1]) + 1
        return lambda offset: slice(int(starts[0]) + offset, end + offset, step)
    return lambda offset: starts + offset


def _axis_counts(length: int, k: int, starts: np.ndarray) -> np.ndarray:
    """Number of intervals ``[s, s + k)`` containing each index ``0 … length − 1``."""
    diff = np.zeros(length + 1, dtype=np.int64)
    np.add.at(diff, starts, 1)
    np.add.at(diff, starts + k, -1)
    return np.cumsum(diff)[:length]
