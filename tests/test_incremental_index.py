"""The host's index arithmetic (preddiff.incremental_index) against literal per-window loops."""
import numpy as np
import pytest

from preddiff.incremental_index import BoxTable, IndexProgram, Positions, Region


def _table(rng, positions: int, sizes: tuple, shape: tuple) -> BoxTable:
    """Box tables of a map ``shape`` (rows, columns): box sizes 1..sizes[d] along axis d,
    starts anywhere; rows and columns differ, so a swap of the axes shows."""
    start, size = [], []
    for d in range(2):
        s = rng.integers(1, sizes[d] + 1, positions)
        start.append(np.array([rng.integers(0, shape[d] - v + 1) for v in s]))
        size.append(s)
    return BoxTable(tuple(start), tuple(size), tuple(shape))


def _literal_box(table: BoxTable, rows, cols):
    out = []
    for d, pos in enumerate((rows, cols)):
        size = max(table.size[d][p] for p in pos)
        out.append(([min(table.start[d][p], table.shape[d] - size) for p in pos], size))
    return out


def _read(region, feeds, clean, crops):
    """What the compiled graph reads: a table of the clean map's channel vectors followed by
    the crops', gathered at the index combined from the four terms
    (``max(clean_r + clean_c, crop_r + crop_c)``). One channel here: values are unique
    labels."""
    clean_r, clean_c, crop_r, crop_c = (feeds[name] for name in region.inputs)
    table = np.concatenate([clean.reshape(-1), crops.reshape(-1)])
    return table[np.maximum(clean_r + clean_c, crop_r + crop_c)]


@pytest.mark.parametrize("whole_map", [False, True])
def test_region_index_is_the_literal_read_of_every_position(whole_map):
    rng = np.random.default_rng(3)
    pads, stride, extent = ((1, 2), (2, 0)), (2, 1), (3, 2)
    # the output map of a (3, 2) kernel at strides (2, 1) over the padded 12 x 13 map
    out_table = _table(rng, 12, (4, 2), ((12 - 3) // 2 + 1, (13 - 2) // 1 + 1))
    crop_table = _table(rng, 12, (5, 3), (9, 11))
    if whole_map:
        region = Region("r", None, "crop", pads=pads)
    else:
        region = Region("r", "out", "crop", stride, extent, pads)
    program = IndexProgram({"out": out_table, "crop": crop_table}, [region])
    top_left = rng.integers(0, 12, (7, 2))
    feeds = program.feeds(top_left)
    assert list(feeds) == list(region.inputs)
    assert all(v.dtype == np.int64 for v in feeds.values())

    (crop_r0, ch), (crop_c0, cw) = _literal_box(crop_table, top_left[:, 0], top_left[:, 1])
    assert ch != cw  # the batch's largest crop differs per axis: a swap would show
    (pt, pb), (pl, pr) = pads
    padded_h, padded_w = 9 + pt + pb, 11 + pl + pr
    clean = np.arange(padded_h * padded_w, dtype=float).reshape(padded_h, padded_w)
    crops = -1.0 - np.arange(7 * ch * cw, dtype=float).reshape(7, ch, cw)
    got = _read(region, feeds, clean, crops)
    if whole_map:
        spans, starts = (padded_h, padded_w), ([0] * 7, [0] * 7)
    else:
        (r0, h), (c0, w) = _literal_box(out_table, top_left[:, 0], top_left[:, 1])
        spans = ((h - 1) * stride[0] + extent[0], (w - 1) * stride[1] + extent[1])
        starts = ([r * stride[0] for r in r0], [c * stride[1] for c in c0])
    assert got.shape == (7, *spans)
    for n in range(7):
        for i in range(spans[0]):
            for j in range(spans[1]):
                row, col = starts[0][n] + i, starts[1][n] + j            # padded
                ri, ci = row - pt - crop_r0[n], col - pl - crop_c0[n]    # in the crop
                if 0 <= ri < ch and 0 <= ci < cw:
                    want = crops[n, ri, ci]
                else:
                    want = clean[row, col]
                assert got[n, i, j] == want, (n, i, j)


def test_positions_are_the_flat_box_in_the_map():
    rng = np.random.default_rng(4)
    table = _table(rng, 10, (4, 2), (8, 7))
    program = IndexProgram({"b": table}, [Positions("m", "b"), Positions("s", "b", flat=True)])
    top_left = rng.integers(0, 10, (5, 2))
    feeds = program.feeds(top_left)
    (r0, h), (c0, w) = _literal_box(table, top_left[:, 0], top_left[:, 1])
    assert h != w
    want = np.array([[[[(r0[n] + i) * 7 + c0[n] + j for j in range(w)] for i in range(h)]]
                     for n in range(5)])
    np.testing.assert_array_equal(feeds["m"], want)
    np.testing.assert_array_equal(feeds["s"], want.reshape(5, 1, h * w))
    assert all(v.dtype == np.int64 for v in feeds.values())


def test_boxes_take_the_largest_size_and_shift_inwards_at_the_border():
    table = BoxTable((np.array([0, 5, 7]), np.array([0, 1, 2])),
                     (np.array([2, 3, 1]), np.array([1, 1, 1])), (8, 8))
    r0, c0, h, w = table.locate(np.array([2, 0, 1]), np.array([0, 2, 1]))
    assert (h, w) == (3, 1)
    np.testing.assert_array_equal(r0, [5, 0, 5])  # 7 shifted to 8 - 3
    np.testing.assert_array_equal(c0, [0, 2, 1])
