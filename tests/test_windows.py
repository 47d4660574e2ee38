"""Window geometry: positions, coverage counts and the box sum, against brute-force loops."""
import numpy as np
import pytest

from preddiff.errors import InvalidArgument
from preddiff.windows import (coverage_counts, window_grid, window_positions, window_shape,
                              window_sum)

GEOMETRIES = [((7, 9), 1, 1), ((7, 9), 3, 1), ((7, 9), (2, 4), 1), ((7, 9), 3, 2),
              ((7, 9), 2, 2), ((7, 9), (3, 2), 3), ((8, 8), 4, 4), ((5, 6), 5, 1),
              ((7, 9), 2, 4), ((6, 6), 6, 2)]


EDGES = ["cover", "drop"]


def brute_starts(length, k, stride, edges):
    starts = list(range(0, length - k + 1, stride))
    if edges == "cover" and starts[-1] != length - k:
        starts.append(length - k)  # one more window, aligned to the last pixel
    return starts


def brute_positions(shape, window, stride, edges="cover"):
    kh, kw = window_shape(window)
    return [(r, c) for r in brute_starts(shape[0], kh, stride, edges)
            for c in brute_starts(shape[1], kw, stride, edges)]


def test_window_shape_int_and_pair():
    assert window_shape(4) == (4, 4)
    assert window_shape((2, 3)) == (2, 3)
    assert window_shape(np.int64(5)) == (5, 5)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", (2,), (2, 0), True, None])
def test_window_shape_rejects(bad):
    with pytest.raises(InvalidArgument, match="window"):
        window_shape(bad)


def test_positions_docstring_example():
    assert window_positions((3, 4), 2).tolist() == [[0, 0], [0, 1], [0, 2],
                                                    [1, 0], [1, 1], [1, 2]]


def test_stride_one_runs_corner_to_corner():
    pos = window_positions((10, 12), 3)
    assert len(pos) == (10 - 3 + 1) * (12 - 3 + 1)
    assert pos[0].tolist() == [0, 0] and pos[-1].tolist() == [7, 9]


@pytest.mark.parametrize("edges", EDGES)
@pytest.mark.parametrize("shape,window,stride", GEOMETRIES)
def test_positions_match_loops(shape, window, stride, edges):
    assert window_positions(shape, window, stride, edges=edges).tolist() == \
        [list(p) for p in brute_positions(shape, window, stride, edges)]


@pytest.mark.parametrize("edges", EDGES)
@pytest.mark.parametrize("shape,window,stride", GEOMETRIES)
def test_counts_match_loops(shape, window, stride, edges):
    kh, kw = window_shape(window)
    expected = np.zeros(shape, dtype=np.int64)
    for r, c in brute_positions(shape, window, stride, edges):
        expected[r:r + kh, c:c + kw] += 1
    got = coverage_counts(shape, window, stride, edges=edges)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("edges", EDGES)
@pytest.mark.parametrize("shape,window,stride", GEOMETRIES)
def test_window_sum_matches_loops(shape, window, stride, edges, rng):
    kh, kw = window_shape(window)
    positions = brute_positions(shape, window, stride, edges)
    values = rng.normal(size=(len(positions), 3)) * 10
    expected = np.zeros((3,) + shape)
    for i, (r, c) in enumerate(positions):
        expected[:, r:r + kh, c:c + kw] += values[i, :, None, None]
    got = window_sum(values, shape, window, stride, edges=edges, chunk=2)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    # pixels outside every window are exactly zero, not rounding residue
    uncovered = coverage_counts(shape, window, stride, edges=edges) == 0
    assert np.all(got[:, uncovered] == 0.0)


def test_coarse_stride_leaves_border_uncovered_with_drop():
    counts = coverage_counts((7, 9), 3, 3, edges="drop")  # rows 0, 3 → 0–5; row 6 never
    assert counts[6].sum() == 0
    assert counts[:6].min() == 1 and counts.max() == 1
    gaps = coverage_counts((7, 9), 2, 4, edges="drop")  # stride > window: rows 2, 3, 6 never
    assert [r for r in range(7) if gaps[r].sum() == 0] == [2, 3, 6]


def test_cover_adds_edge_windows_so_every_pixel_is_covered():
    counts = coverage_counts((7, 9), 3, 3)  # rows 0, 3 and the edge row 4
    assert counts.min() >= 1
    assert window_grid((7, 9), 3, 3)[0].tolist() == [0, 3, 4]
    assert window_grid((7, 9), 3, 3)[1].tolist() == [0, 3, 6]  # 9 - 3 = 6: no extra column
    # the ImageNet case of the issue: 224 pixels, k = 10, stride 5 or 10
    for stride in (5, 10):
        rows, _ = window_grid((224, 224), 10, stride)
        assert rows[-1] == 214 and coverage_counts((224, 224), 10, stride).min() >= 1
    # stride > window still leaves gaps between windows: say so, do not pretend
    gaps = coverage_counts((7, 9), 2, 4)
    assert [r for r in range(7) if gaps[r].sum() == 0] == [2, 3]


def test_grids_agree_when_the_stride_divides():
    for shape, window, stride in [((8, 8), 4, 4), ((9, 9), 3, 3), ((10, 12), 3, 1)]:
        np.testing.assert_array_equal(window_positions(shape, window, stride),
                                      window_positions(shape, window, stride, edges="drop"))


@pytest.mark.parametrize("bad", ["all", None, 1])
def test_bad_edges(bad):
    with pytest.raises(InvalidArgument, match="edges must be one of 'cover', 'drop'"):
        window_grid((5, 5), 2, 2, edges=bad)


def test_disjoint_windows_add_back_to_the_values(rng):
    # property (cf. zennit): with stride = window, the windows tile the image
    values = rng.normal(size=(4 * 4, 1))
    total = window_sum(values, (8, 8), 2, 2)
    np.testing.assert_allclose(total.sum(), 4 * values.sum())


def test_window_larger_than_image():
    with pytest.raises(InvalidArgument, match=r"window 5x3 is larger than the image 4x9"):
        window_grid((4, 9), (5, 3))


@pytest.mark.parametrize("stride", [0, -2, 1.0])
def test_bad_stride(stride):
    with pytest.raises(InvalidArgument, match="stride"):
        window_positions((5, 5), 2, stride)


def test_window_sum_shape_checked():
    with pytest.raises(InvalidArgument, match=r"values must have shape \(16, units\)"):
        window_sum(np.zeros((15, 2)), (5, 5), 2)
