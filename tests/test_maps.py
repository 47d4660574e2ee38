"""Relevance maps computed on use (preddiff.maps): one unit's map is exactly the unit's row of
all maps, and an explanation computes only the maps it is asked for."""
import pickle

import numpy as np
import pytest

from preddiff import Explanation, prediction_difference
from preddiff.compat import float16_round, round_relevance
from preddiff.errors import InvalidArgument
from preddiff.maps import RelevanceMaps
from preddiff.samplers import MarginalSampler
from preddiff.windows import coverage_counts, window_grid, window_sum


def _maps(rng, shape, window, stride, edges, units=7):
    rows, cols = window_grid(shape, window, stride, edges=edges)
    values = {"prob": rng.normal(size=(rows.size * cols.size, units)),
              "fc": rng.normal(size=(rows.size * cols.size, 3))}
    counts = coverage_counts(shape, window, stride, edges=edges)
    return RelevanceMaps(values, counts, window, stride, edges), values, counts


@pytest.mark.parametrize("shape,window,stride,edges", [
    ((11, 9), (3, 3), 1, "cover"), ((11, 9), (2, 4), 3, "cover"), ((11, 9), (2, 4), 3, "drop"),
    ((12, 12), (5, 5), 7, "drop"),  # stride > window: uncovered pixels stay 0
])
def test_unit_map_is_bit_identical_to_the_row_of_all_maps(rng, shape, window, stride, edges):
    maps, values, counts = _maps(rng, shape, window, stride, edges)
    singles = [maps.unit("prob", u) for u in range(7)]
    assert not maps.computed("prob")
    full = maps["prob"]
    assert maps.computed("prob") and full.shape == (7, *shape)
    for u in range(7):
        np.testing.assert_array_equal(singles[u], full[u])
    # the full maps: window sums divided by the counts, 0 where no window covers a pixel
    total = window_sum(values["prob"], shape, window, stride, edges=edges)
    want = np.where(counts > 0, total / np.maximum(counts, 1), 0.0)
    np.testing.assert_array_equal(full, want)
    assert (full[:, counts == 0] == 0).all()


def test_mapping_interface(rng):
    maps, _, _ = _maps(rng, (8, 8), (2, 2), 2, "cover")
    assert list(maps) == ["prob", "fc"] and len(maps) == 2 and "fc" in maps
    assert "nope" not in maps
    assert maps.num_units("prob") == 7 and not maps.computed("prob") and not maps.computed("fc")
    assert [v.shape for v in maps.values()] == [(7, 8, 8), (3, 8, 8)]
    assert dict(maps)["fc"].shape == (3, 8, 8)
    with pytest.raises(KeyError):
        maps["nope"]
    with pytest.raises(InvalidArgument, match=r"unit 7 of blob 'prob' is outside 0–6"):
        maps.unit("prob", 7)
    with pytest.raises(InvalidArgument, match="unknown blob 'nope'"):
        maps.unit("nope", 0)
    with pytest.raises(InvalidArgument, match=r"must be \(windows, units\)"):
        RelevanceMaps({"prob": np.zeros(4)}, np.ones((2, 2)), (1, 1), 1, "cover")


def test_float16_rounding_stays_lazy_and_matches(rng):
    maps, _, _ = _maps(rng, (10, 10), (3, 3), 2, "cover")
    rounded = round_relevance(maps, "released")
    assert isinstance(rounded, RelevanceMaps)
    one = rounded.unit("prob", 4)
    assert not rounded.computed("prob") and not maps.computed("prob")
    np.testing.assert_array_equal(one, float16_round(maps["prob"])[4])
    np.testing.assert_array_equal(rounded["prob"], float16_round(maps["prob"]))
    assert rounded["prob"].dtype == np.float64
    assert round_relevance(maps, "intended") is maps
    twice = rounded.transformed(np.negative)  # transforms chain, and pickle
    back = pickle.loads(pickle.dumps(twice))
    np.testing.assert_array_equal(back.unit("prob", 2), -float16_round(maps["prob"])[2])


class Softmax:
    def __init__(self, rng, shape, classes=40):
        self.weights = rng.normal(size=(classes, int(np.prod(shape)))) * 0.3

    def __call__(self, batch):
        logits = np.asarray(batch, np.float64).reshape(len(batch), -1) @ self.weights.T
        e = np.exp(logits - logits.max(1, keepdims=True))
        return {"prob": e / e.sum(1, keepdims=True)}


@pytest.fixture
def explained(rng):
    pool = rng.normal(size=(6, 3, 12, 10)).astype(np.float32)
    x = rng.normal(size=(3, 12, 10)).astype(np.float32)
    return prediction_difference(x, Softmax(rng, x.shape), MarginalSampler(pool), window=3,
                                 stride=2, num_samples=3, rng=5, progress=False)


def test_explanation_computes_only_the_maps_asked_for(explained, tmp_path):
    e = explained
    assert isinstance(e.relevance, RelevanceMaps)
    assert e.units["prob"].tolist() == list(range(40))
    top = [u for u, _ in e.top_classes("prob", 3)]
    shown = {u: e.relevance_of("prob", u) for u in top}
    e.save(tmp_path / "part.npz", units={"prob": top + [17]}, dtype=np.float64)
    assert not e.relevance.computed("prob")  # 4 maps, not 40
    back = Explanation.load(tmp_path / "part.npz")
    for u in top:
        np.testing.assert_array_equal(back.relevance_of("prob", u), shown[u])
    # the full maps when asked for, identical to the single ones
    e.save(tmp_path / "full.npz", units="all", dtype=np.float64)
    assert e.relevance.computed("prob")
    full = Explanation.load(tmp_path / "full.npz")
    assert full.relevance["prob"].shape == (40, 12, 10)
    np.testing.assert_array_equal(full.relevance["prob"][17],
                                  back.relevance_of("prob", 17))
    for u in top:
        np.testing.assert_array_equal(full.relevance["prob"][u], shown[u])
