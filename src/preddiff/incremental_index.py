"""The index arithmetic of a compiled incremental graph, computed on the host.

A batch of windows read by the graph of :mod:`preddiff.incremental_graph` needs, per prefix
tensor, where the batch's changed box lies (one common size, each window's start) and, per
gathered region, which row of the channel-vector table every region position reads (a clean
position, or a row of the previous step's crop). All of it follows from the windows' top-left
corners alone, in integer arithmetic, so it is computed here, in NumPy, once per batch, and
fed to the graph as int64 inputs. A region's index is separable: the host computes a row term
and a column term per source, O(N (gh + gw)) values, and the graph broadcasts them into the
O(N gh gw) index with four operators, on the execution provider that runs the rest. The graph
itself thus holds the float work and little else; the same arithmetic as graph nodes took
~2,000 tiny int64 operators per ResNet call, each paying a kernel launch
(``docs/performance.md``).

Boxes follow :class:`~preddiff.incremental_plan.Box`: the batch's common size along an axis is
the largest of its windows' sizes, and a smaller box is shifted inwards at the map's border
(``start = min(start, map size - size)``), which recomputes some unchanged values, exactly.
"""
from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["BoxTable", "Region", "Positions", "IndexProgram", "OUTSIDE"]

_I64 = np.int64
#: Below every clean row: a row or column term of a position outside the crop (two of them
#: sum far below zero, so the graph's maximum picks the clean row there).
OUTSIDE = -(2 ** 40)


@dataclasses.dataclass(frozen=True)
class BoxTable:
    """A tensor's changed box for every window position (from
    :class:`~preddiff.incremental_plan.Box`) and its map size.

    Attributes
    ----------
    start, size : (ndarray, ndarray)
        Per axis, int64 tables indexed by the window's top row (column).
    shape : (int, int)
        The map's height and width.
    """

    start: tuple
    size: tuple
    shape: tuple

    def locate(self, rows: np.ndarray, cols: np.ndarray) -> tuple:
        """The batch's box: starts ``r0``, ``c0`` (N,) and common sizes ``h``, ``w`` (int)."""
        out = []
        for d, pos in enumerate((rows, cols)):
            size = int(self.size[d][pos].max())
            start = np.minimum(self.start[d][pos], self.shape[d] - size)
            out.append((start, size))
        (r0, h), (c0, w) = out
        return r0, c0, h, w


@dataclasses.dataclass(frozen=True)
class Region:
    """Gather index of a region (N, gh, gw) of a padded map, read from a table of channel
    vectors: the clean map's ``positions`` padded positions, then the crops' rows.

    The region starts at padded row ``r0 * stride[0]`` of the output box ``out`` and spans
    ``(h - 1) * stride[0] + extent[0]`` rows (columns alike); ``out`` None: the whole map.
    Positions inside window ``n``'s crop (box ``crop``, unpadded coordinates) read the crop's
    row ``positions + n * h_c * w_c + i * w_c + j``; all others the clean row
    ``r * padded width + c``.

    The index is fed as four terms, a row term (N, gh, 1) and a column term (N, 1, gw) of
    each source, which the graph broadcasts and combines
    (``max(clean_rows + clean_cols, crop_rows + crop_cols)``: a term of a row or column
    outside the crop is :data:`OUTSIDE`), so that the host computes O(N (gh + gw)) values and
    the execution provider the O(N gh gw) index.

    Attributes
    ----------
    name : str
        Prefix of the four graph inputs (:attr:`inputs`).
    out, crop : hashable
        Keys of :attr:`IndexProgram.boxes` (``out`` None: the whole map).
    stride, extent : (int, int)
        Per axis, the stride and the kernel extent of the step reading the region (1, 1 for
        a region on the output box itself).
    pads : ((int, int), (int, int))
        Rows before/after and columns before/after around the map.
    """

    name: str
    out: object
    crop: object
    stride: tuple = (1, 1)
    extent: tuple = (1, 1)
    pads: tuple = ((0, 0), (0, 0))

    @property
    def inputs(self) -> tuple:
        """The graph inputs: clean rows, clean columns, crop rows, crop columns."""
        return tuple(f"{self.name}/{part}" for part in ("clean_r", "clean_c", "crop_r", "crop_c"))

    def dims(self, tag: str) -> tuple:
        """The inputs' declared shapes; ``tag`` makes the symbolic sizes this entry's own
        (they differ between entries and batches)."""
        rows, cols = ["n", f"h{tag}", 1], ["n", 1, f"w{tag}"]
        return (rows, cols, rows, cols)

    def terms(self, box, n: int) -> tuple:
        """The four terms (see the class docstring) for a batch of ``n`` windows; ``box(key)``
        gives the batch's (r0, c0, h, w) of a box and ``box.shape(key)`` its map's size."""
        (pt, pb), (pl, pr) = self.pads
        height, width = box.shape(self.crop)
        if self.out is None:
            starts = (np.zeros(n, _I64), np.zeros(n, _I64))
            spans = (height + pt + pb, width + pl + pr)
        else:
            r0, c0, h, w = box(self.out)
            starts = (r0 * self.stride[0], c0 * self.stride[1])
            spans = ((h - 1) * self.stride[0] + self.extent[0],
                     (w - 1) * self.stride[1] + self.extent[1])
        cr0, cc0, ch, cw = box(self.crop)
        padded_width = width + pl + pr
        first = (height + pt + pb) * padded_width + np.arange(n, dtype=_I64) * (ch * cw)
        out = []
        for d, (start, span, crop_start, pad, size) in enumerate(
                ((starts[0], spans[0], cr0, pt, ch), (starts[1], spans[1], cc0, pl, cw))):
            grid = start[:, None] + np.arange(span, dtype=_I64)       # padded coordinates
            rel = grid - (crop_start + pad)[:, None]                   # in the crop
            crop = np.where((rel >= 0) & (rel < size),
                            rel * cw + first[:, None] if d == 0 else rel, OUTSIDE)
            out.append((grid * padded_width if d == 0 else grid, crop))
        (clean_r, crop_r), (clean_c, crop_c) = out
        return (clean_r[:, :, None], clean_c[:, None, :], crop_r[:, :, None], crop_c[:, None, :])


@dataclasses.dataclass(frozen=True)
class Positions:
    """Flat positions ``r * width + c`` of a box in its (unpadded) map.

    Attributes
    ----------
    name : str
        The graph input.
    box : hashable
        Key of :attr:`IndexProgram.boxes`.
    flat : bool
        False: (N, 1, h, w) (gathering a constant map at the box, e.g. average pooling's
        divisors); True: (N, 1, h·w) (where ``ScatterElements`` writes a crop).
    """

    name: str
    box: object
    flat: bool = False

    @property
    def inputs(self) -> tuple:
        """The graph input (one)."""
        return (self.name,)

    def dims(self, tag: str) -> tuple:
        """The input's declared shape (see :meth:`Region.dims`)."""
        return (["n", 1, f"hw{tag}"] if self.flat else ["n", 1, f"h{tag}", f"w{tag}"],)

    def terms(self, box, n: int) -> tuple:
        """The positions for a batch of ``n`` windows, as a 1-tuple (see :meth:`Region.terms`
        for ``box``)."""
        r0, c0, h, w = box(self.box)
        width = box.shape(self.box)[1]
        flat = ((r0[:, None] + np.arange(h))[:, :, None] * width
                + (c0[:, None] + np.arange(w))[:, None, :])
        return (flat.reshape(n, 1, *((h * w,) if self.flat else (h, w))),)


class _Located:
    """The batch's boxes, each located once per batch."""

    def __init__(self, boxes: dict, rows, cols):
        self.boxes, self.rows, self.cols, self.done = boxes, rows, cols, {}

    def __call__(self, key) -> tuple:
        if key not in self.done:
            self.done[key] = self.boxes[key].locate(self.rows, self.cols)
        return self.done[key]

    def shape(self, key) -> tuple:
        return self.boxes[key].shape


class IndexProgram:
    """Every index input of a compiled graph, as a function of the windows' positions.

    Parameters
    ----------
    boxes : dict
        Box key -> :class:`BoxTable`.
    entries : list of Region or Positions
    """

    def __init__(self, boxes: dict, entries: list):
        self.boxes = dict(boxes)
        self.entries = list(entries)

    @property
    def names(self) -> list:
        """The graph inputs it feeds."""
        return [name for e in self.entries for name in e.inputs]

    def feeds(self, top_left: np.ndarray) -> dict:
        """The index inputs for a batch of windows.

        Parameters
        ----------
        top_left : ndarray of int, shape (N, 2)
            Each window's top row and left column (N ≥ 1).

        Returns
        -------
        dict
            Input name -> int64 array: a :class:`Region`'s four terms (N, gh, 1),
            (N, 1, gw), (N, gh, 1), (N, 1, gw); a :class:`Positions`' (N, 1, h, w) or
            (N, 1, h·w).
        """
        top_left = np.asarray(top_left, _I64)
        box = _Located(self.boxes, top_left[:, 0], top_left[:, 1])
        out = {}
        for e in self.entries:
            out.update(zip(e.inputs, e.terms(box, len(top_left))))
        return out
