"""Tests of the figure pipeline (``reproduce/``): scripts importable, cache keyed on the
parameters, comparison with references, and one tiny end-to-end figure run."""
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the figure scripts live in the repository, not the package
    sys.path.insert(0, str(ROOT))

from reproduce import check, common, paths  # noqa: E402

FIGURES = paths.FIGURE_NAMES


@pytest.mark.parametrize("figure", FIGURES)
def test_figure_scripts_are_importable_with_main_and_both_scales(figure):
    module = importlib.import_module(f"reproduce.{figure}")
    assert callable(module.main)
    assert set(module.CONFIG) == set(common.SCALES)
    for cfg in module.CONFIG.values():
        assert "seed" in cfg
        json.dumps(cfg)  # plain JSON: it is written next to the figure and hashed


def test_cache_reused_when_parameters_match_and_recomputed_when_they_differ(tmp_path):
    calls = []

    def compute(value):
        def f():
            calls.append(value)
            return {"a": np.full((2, 3), value, dtype=np.float32)}
        return f

    params = {"window": 4, "seed": 0, "blobs": ["prob"]}
    first, hit = common.cached(tmp_path, "x", params, compute(1.0))
    assert not hit and calls == [1.0]
    again, hit = common.cached(tmp_path, "x", dict(params), compute(2.0))
    assert hit and calls == [1.0]
    np.testing.assert_array_equal(again["a"], first["a"])
    other, hit = common.cached(tmp_path, "x", {**params, "window": 5}, compute(3.0))
    assert not hit and calls == [1.0, 3.0]
    assert float(other["a"][0, 0]) == 3.0
    forced, hit = common.cached(tmp_path, "x", params, compute(4.0), force=True)
    assert not hit and float(forced["a"][0, 0]) == 4.0


def test_cache_recomputes_when_the_stored_parameters_do_not_match_the_file_name(tmp_path):
    params = {"window": 4}
    common.cached(tmp_path, "x", params, lambda: {"a": np.zeros(1)})
    (path,) = tmp_path.glob("x-*.npz")
    common.save_npz(path, {"a": np.ones(1)}, {"window": 99})  # a collision, or a tampered file
    arrays, hit = common.cached(tmp_path, "x", params, lambda: {"a": np.full(1, 7.0)})
    assert not hit and arrays["a"][0] == 7.0


def _run(tmp_path, config=None):
    return common.Run(figure="figX", scale="smoke", config=config or {"seed": 0, "window": 4},
                      argv=["test"], out_root=tmp_path / "out", cache_root=tmp_path / "cache")


def _result(tmp_path, maps, classes, config=None):
    run = _run(tmp_path, config)
    return common.save_result(run, maps, classes)


def _reference(tmp_path, maps, classes, config=None):
    src = _result(tmp_path, maps, classes, config)
    ref = tmp_path / "ref" / "figX.npz"
    check.record(src, ref)
    return ref


@pytest.fixture
def maps(rng):
    return {"lenet/digits:0/conditional": rng.standard_normal((10, 28, 28)).astype(np.float32),
            "lenet/digits:0/sensitivity": rng.random((28, 28)).astype(np.float32)}


def test_compare_passes_identical_data(tmp_path, maps):
    ref = _reference(tmp_path, maps, {"lenet/digits:0": 3})
    result = _result(tmp_path, maps, {"lenet/digits:0": 3})
    cmp = common.compare(result, ref)
    assert cmp.passed and cmp.verdict == "PASS" and cmp.max_deviation == 0.0


def test_compare_passes_a_deviation_below_tolerance(tmp_path, maps):
    ref = _reference(tmp_path, maps, {"lenet/digits:0": 3})
    key = "lenet/digits:0/conditional"
    scale = np.abs(maps[key]).max()
    nudged = {**maps, key: maps[key] + np.float32(0.1 * common.TOLERANCE * scale)}
    cmp = common.compare(_result(tmp_path, nudged, {"lenet/digits:0": 3}), ref)
    assert cmp.passed
    assert 0 < cmp.max_deviation < common.TOLERANCE


def test_compare_flags_a_deviation_above_tolerance(tmp_path, maps):
    ref = _reference(tmp_path, maps, {"lenet/digits:0": 3})
    key = "lenet/digits:0/conditional"
    changed = {k: v.copy() for k, v in maps.items()}
    changed[key][5, 10, 10] += 3 * common.TOLERANCE * np.abs(maps[key]).max()
    cmp = common.compare(_result(tmp_path, changed, {"lenet/digits:0": 3}), ref)
    assert not cmp.passed and cmp.verdict == "FAIL"
    assert cmp.max_deviation > common.TOLERANCE
    assert any(key in m for m in cmp.messages)


def test_compare_flags_a_changed_predicted_class(tmp_path, maps):
    ref = _reference(tmp_path, maps, {"lenet/digits:0": 3})
    cmp = common.compare(_result(tmp_path, maps, {"lenet/digits:0": 5}), ref)
    assert cmp.verdict == "FAIL"
    assert any("predicted classes" in m for m in cmp.messages)


def test_compare_flags_nan_missing_maps_and_other_parameters(tmp_path, maps):
    ref = _reference(tmp_path, maps, {"lenet/digits:0": 3})
    key = "lenet/digits:0/conditional"
    with_nan = {k: v.copy() for k, v in maps.items()}
    with_nan[key][0, 0, 0] = np.nan
    assert common.compare(_result(tmp_path, with_nan, {"lenet/digits:0": 3}), ref).verdict == "FAIL"
    fewer = {key: maps[key]}
    assert common.compare(_result(tmp_path, fewer, {"lenet/digits:0": 3}), ref).verdict == "FAIL"
    other = _result(tmp_path, maps, {"lenet/digits:0": 3}, config={"seed": 1, "window": 4})
    cmp = common.compare(other, ref)
    assert cmp.verdict == "FAIL" and any("seed" in m for m in cmp.messages)


def test_compare_without_reference_is_unverified_never_a_pass(tmp_path, maps):
    result = _result(tmp_path, maps, {"lenet/digits:0": 3})
    cmp = common.compare(result, tmp_path / "nowhere" / "figX.npz")
    assert not cmp.passed
    assert cmp.verdict == "UNVERIFIED"
    assert any("no reference recorded" in m for m in cmp.messages)


def test_relative_deviation_of_zero_maps():
    zero = np.zeros((3, 3))
    assert common.relative_deviation(zero, zero) == 0.0
    assert common.relative_deviation(zero + 1e-9, zero) == float("inf")


def test_overrides_are_json_and_unknown_keys_are_refused():
    assert common.parse_overrides(["windows=[1,2]", "sampler=marginal"], {"windows", "sampler"}) == {
        "windows": [1, 2], "sampler": "marginal"}
    with pytest.raises(ValueError, match="windows"):
        common.parse_overrides(["window=3"], {"windows"})


def test_table_lists_every_column():
    table = check.format_table([{"figure": "fig1", "seconds": 1.25, "models": "lenet",
                                 "deviation": 0.0, "verdict": "PASS"},
                                {"figure": "fig2", "seconds": None, "models": "-",
                                 "deviation": None, "verdict": "UNVERIFIED"}])
    assert "max rel. dev." in table and "UNVERIFIED" in table and "1.2" in table


def _fig3(tmp_path, *overrides):
    from reproduce import fig3

    argv = ["--scale", "smoke", "--no-progress", "--out-dir", str(tmp_path / "out"),
            "--cache-dir", str(tmp_path / "cache"), "--set", "windows=[3]",
            "--set", "num_patches=300"]
    for item in overrides:
        argv += ["--set", item]
    assert fig3.main(argv) == 0
    record = json.loads((tmp_path / "out" / "smoke" / "fig3.json").read_text())
    return record


def test_a_tiny_figure_runs_end_to_end_and_reuses_its_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREDDIFF_HOME", str(tmp_path / "home"))  # LeNet converted in the test
    first = _fig3(tmp_path, "num_samples=2")
    assert first["cache"]["computed"] and not first["cache"]["reused"]
    for suffix in ("png", "pdf", "json"):
        assert (tmp_path / "out" / "smoke" / f"fig3.{suffix}").stat().st_size > 0
    assert first["config"]["windows"] == [3] and first["seeds"] == {"explanation": 0, "sampler_fit": 1}
    assert "--set" in first["command"] and first["versions"]["numpy"]
    result = tmp_path / "cache" / "smoke" / "fig3_result.npz"
    ref = tmp_path / "ref.npz"
    check.record(result, ref)

    again = _fig3(tmp_path, "num_samples=2")
    assert again["cache"]["reused"] and not again["cache"]["computed"]
    assert common.compare(result, ref).verdict == "PASS"

    changed = _fig3(tmp_path, "num_samples=3")
    assert changed["cache"]["computed"] == ["pda-lenet-digits_2-conditional-k3"]
    cmp = common.compare(result, ref)
    assert cmp.verdict == "FAIL" and any("num_samples" in m for m in cmp.messages)


def test_paper_scale_without_weights_stops_at_the_fetch_and_points_to_smoke(monkeypatch, capsys):
    from preddiff import zoo
    from preddiff.errors import DownloadError

    def offline(name, **kwargs):
        raise DownloadError(f"could not download the {name} weights; place them at /x/{name}")

    monkeypatch.setattr(zoo, "is_present", lambda name, **kwargs: False)
    monkeypatch.setattr(zoo, "fetch", offline)
    assert check.main(["--scale", "paper", "--prepare-only"]) == check.EXIT_FETCH
    err = capsys.readouterr().err
    assert all(f"/x/{name}" in err for name in common.ZOO_MODELS)
    assert "./run_all.sh --smoke" in err


def test_check_exit_status_is_unverified_without_references(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(paths, "REFERENCE", tmp_path / "nothing")
    monkeypatch.setattr(paths, "CACHE", tmp_path / "cache")
    assert check.main(["--scale", "smoke", "--no-run", "--figures", "fig1"]) == check.EXIT_UNVERIFIED
    out = capsys.readouterr().out
    assert "UNVERIFIED" in out and "no reference recorded" in out and "PASS" not in out
