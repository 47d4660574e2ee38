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


# --------------------------------------------------------------------------- review fixes
def test_compare_fails_on_an_unreadable_reference_or_result(tmp_path, maps):
    ref = _reference(tmp_path, maps, {"lenet/digits:0": 3})
    result = _result(tmp_path, maps, {"lenet/digits:0": 3})
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(b"not an npz file")
    cmp = common.compare(result, damaged)
    assert cmp.verdict == "FAIL" and any("cannot read the reference" in m for m in cmp.messages)
    cmp = common.compare(damaged, ref)
    assert cmp.verdict == "FAIL" and any("cannot read the result" in m for m in cmp.messages)


def test_paper_scale_parameters_follow_the_paper():
    """k = 10, l = 2, S = 20, stride 1 (paper §4) and each figure's own specifics."""
    from reproduce import fig1, fig2, fig3, fig4, fig5, fig6

    goose, cat = "n01855672_8202", "chelsea"
    for module in (fig1, fig2, fig3, fig4, fig5, fig6):
        cfg = module.CONFIG["paper"]
        assert cfg["padding"] == 2 and cfg["num_samples"] == 20 and cfg["stride"] == 1, module
        assert cfg["weights"] == "zoo" and cfg["seed"] == 0 and cfg["num_patches"] == 25000
        assert cfg["colour"] == "per-channel" and cfg["preprocess"] == "crop"
        assert cfg.get("laplace_n", 100000) == 100000
    cfg = fig1.CONFIG["paper"]
    assert cfg["window"] == 10 and cfg["models"] == ["alexnet", "googlenet", "vgg16"]
    assert cat in cfg["images"] and len(cfg["images"]) >= 3
    cfg = fig2.CONFIG["paper"]
    assert cfg["model"] == "alexnet" and cfg["window"] == 10 and cfg["top"] == 3
    cfg = fig3.CONFIG["paper"]
    assert cfg["model"] == "alexnet" and cfg["windows"] == [1, 4, 7, 10] and cfg["image"] == goose
    cfg = fig4.CONFIG["paper"]
    assert cfg["model"] == "alexnet" and cfg["window"] == 1 and cfg["percent"] == 5.0
    cfg = fig5.CONFIG["paper"]
    assert cfg["model"] == "googlenet" and cfg["window"] == 10 and cfg["image"] == cat
    assert cfg["layers"] == ["conv1/7x7_s2", "inception_3a/output", "inception_5b/output"]
    cfg = fig6.CONFIG["paper"]
    assert cfg["model"] == "googlenet" and cfg["window"] == 10 and cfg["num_maps"] == 4
    assert cfg["blob"] == "inception_3a/output" and cfg["images"][0] == cat
    assert len(cfg["images"]) >= 4


class _Manifest:
    labels = tuple(f"n{i:08d} a class name long enough to be truncated, synonym" for i in range(10))
    penultimate, output = "fc8", "prob"


def _stub_model(name="vgg16"):
    return common.Model(name=name, path=Path(f"{name}.onnx"), manifest=_Manifest(),
                        source="random weights, channels / 16, seed 0", sha256="0" * 64)


def _stub_input(name, size=12):
    return common.Input(name, np.zeros((3, size, size), np.float32),
                        np.full((size, size, 3), 0.5))


def test_fig6_explains_the_first_image_once(monkeypatch):
    """With maps chosen automatically, the first image's maps come from Fig. 5's explanation
    of it; it used to be explained a second time (hours at paper scale)."""
    from reproduce import fig6

    blob, calls = "inception_3a/output", []

    def explain(run, model, image, *, sampler, window, units, exclude=None):
        calls.append((image.name, dict(units)))
        want = units[blob]
        kept = np.arange(20, 4, -1)[:want] if isinstance(want, int) else np.asarray(want)
        rel = np.stack([np.full((12, 12), float(u)) for u in kept])
        return {f"units/{blob}": kept, f"relevance/{blob}": rel}

    monkeypatch.setattr(common, "load_model", lambda run, name: _stub_model("googlenet"))
    monkeypatch.setattr(common, "load_inputs",
                        lambda run, model, names: [_stub_input(n) for n in names])
    monkeypatch.setattr(common, "explain", explain)
    cfg = json.loads(json.dumps(fig6.CONFIG["smoke"]))
    run = common.Run(figure="fig6", scale="smoke", config=cfg, argv=["test"])
    result = fig6.compute(run)
    names = [name for name, _ in calls]
    assert names.count(cfg["images"][0]) == 1, calls
    assert sorted(names) == sorted(cfg["images"])
    assert result["units"] == [20, 19, 18, 17]
    for row in result["rows"]:
        assert [float(m[0, 0]) for m in row["maps"]] == [20.0, 19.0, 18.0, 17.0]
    # explicitly chosen maps: every image is explained for exactly those maps
    calls.clear()
    cfg["maps"] = [3, 7]
    fig6.compute(common.Run(figure="fig6", scale="smoke", config=cfg, argv=["test"]))
    assert [u for _, u in calls] == [{blob: [3, 7]}] * len(cfg["images"])


def test_explain_cache_key_follows_the_pool_folder_contents(tmp_path):
    """A cached explanation sampled from ``pool_dir`` is not reused once the folder's images
    change (the path alone used to be the key)."""
    folder = tmp_path / "pool"
    folder.mkdir()
    for name in ("a.jpg", "b.png", "chelsea.jpg", "notes.txt"):
        (folder / name).write_bytes(b"x" * 10)
    cfg = {**json.loads(json.dumps(importlib.import_module("reproduce.fig1").CONFIG["smoke"])),
           "pool_dir": str(folder)}
    run = _run(tmp_path, cfg)
    seen = []
    run.cached = lambda name, params, compute: seen.append(json.loads(common.canonical(params)))
    model, image = _stub_model("googlenet"), _stub_input("chelsea")

    def key():
        common.explain(run, model, image, sampler="conditional", window=4, units={"prob": [1]})
        return seen[-1]

    first = key()
    assert [f[0] for f in first["pool_files"]] == ["a.jpg", "b.png"]  # explained image left out
    assert key() == first
    (folder / "c.jpg").write_bytes(b"y" * 10)
    assert key() != first
    (folder / "c.jpg").unlink()
    (folder / "b.png").write_bytes(b"z" * 12)  # replaced by another image
    assert key()["pool_files"] != first["pool_files"]
    (folder / "notes.txt").write_text("not an image")  # ignored, as by the pool itself
    run.config["pool_dir"] = str(tmp_path / "missing")
    with pytest.raises(ValueError, match="missing"):
        key()


def test_force_discards_an_interrupted_runs_checkpoint(tmp_path, monkeypatch):
    """``--force`` recomputes from scratch: it must not resume the windows an earlier,
    interrupted run (possibly of older code) left in its checkpoint."""
    import preddiff

    monkeypatch.setenv("PREDDIFF_HOME", str(tmp_path / "home"))
    real = preddiff.prediction_difference
    found = []

    def interrupted(*args, checkpoint=None, **kwargs):
        Path(checkpoint).write_bytes(b"windows of an interrupted run")
        raise KeyboardInterrupt

    def spy(*args, checkpoint=None, **kwargs):
        found.append(Path(checkpoint).exists())
        return real(*args, checkpoint=checkpoint, **kwargs)

    from reproduce import fig3

    argv = ["--scale", "smoke", "--no-progress", "--out-dir", str(tmp_path / "out"),
            "--cache-dir", str(tmp_path / "cache"), "--set", "windows=[7]",
            "--set", "num_patches=300", "--set", "num_samples=2"]
    monkeypatch.setattr(preddiff, "prediction_difference", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fig3.main(argv)
    assert len(list((tmp_path / "cache" / "smoke").glob("*.ckpt.npz"))) == 1
    monkeypatch.setattr(preddiff, "prediction_difference", spy)
    assert fig3.main(argv + ["--force"]) == 0
    assert found == [False]


def _texts_outside(fig):
    """The texts of a rendered figure that run past its edges (cut off in the PNG) or overlap
    another text (unreadable)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    box = fig.bbox
    problems, extents = [], []
    for text in fig.findobj(Text):
        if not text.get_visible() or not text.get_text().strip():
            continue
        extent = text.get_window_extent(renderer)
        if (extent.x0 < box.x0 - 1 or extent.x1 > box.x1 + 1 or extent.y0 < box.y0 - 1
                or extent.y1 > box.y1 + 1):
            problems.append(text.get_text())
        for other, other_extent in extents:
            if (min(extent.x1, other_extent.x1) - max(extent.x0, other_extent.x0) > 1 and
                    min(extent.y1, other_extent.y1) - max(extent.y0, other_extent.y0) > 1):
                problems.append(f"{text.get_text()!r} overlaps {other!r}")
        extents.append((text.get_text(), extent))
    return problems


def _paper_run(module, **overrides):
    config = {**json.loads(json.dumps(module.CONFIG["paper"])), **overrides}
    return common.Run(figure=module.FIGURE, scale="paper", config=config, argv=["test"])


def test_figure_texts_are_not_cut_off_with_long_model_labels(rng):
    """Random-weight dry runs label the model "vgg16 (random weights, channels / 16, seed 0)":
    Fig. 1's row labels and Fig. 4's title used to run past the figure's edges; every title
    must fit whatever the number of columns."""
    from reproduce import fig1, fig2, fig3, fig4, fig5, fig6

    model = _stub_model()

    def signed():
        return rng.standard_normal((12, 12))

    image = _stub_input("n02917067_1599")
    for n in (1, 3):
        rows = [{"model": model, "image": image, "class": 3, "prob": 0.5,
                 "marginal_samples": 6, "sensitivity": np.abs(signed()), "marginal": signed(),
                 "conditional": signed()} for _ in range(n)]
        assert _texts_outside(fig1.plot(_paper_run(fig1), rows)) == [], n
    for n in (1, 2, 4):
        items = [{"model": model, "image": image, "class": 3, "sensitivity": np.abs(signed()),
                  "pda": signed()} for _ in range(n)]
        assert _texts_outside(fig4.plot(_paper_run(fig4), items)) == [], n
    for top in (1, 2, 3):
        classes = [3, 4, 5][:top]
        items = [{"model": model, "image": image, "classes": classes, "layers": ("fc8", "prob"),
                  "values": {"fc8": [12.3] * top, "prob": [0.4] * top},
                  "maps": {"fc8": [signed()] * top, "prob": [signed()] * top}}]
        assert _texts_outside(fig2.plot(_paper_run(fig2, top=top), items)) == [], top
    for windows in ([10], [7, 10], [1, 4, 7, 10]):
        result = {"model": model, "image": image, "class": 3, "prob": 0.5,
                  "maps": [signed() for _ in windows]}
        assert _texts_outside(fig3.plot(_paper_run(fig3, windows=windows), result)) == []
    layers = {layer: {"units": list(range(16)), "maps": np.stack([signed()] * 16), "count": 64}
              for layer in fig5.LAYERS}
    result = {"model": model, "image": image, "layers": layers}
    assert _texts_outside(fig5.plot(_paper_run(fig5), result)) == []
    for units in ([1], [1, 2], [1, 2, 3, 4]):
        result = {"model": model, "units": units,
                  "rows": [{"image": image, "maps": [signed() for _ in units]}] * 2}
        assert _texts_outside(fig6.plot(_paper_run(fig6), result)) == [], units


def test_figure_sensitivity_is_value_seeded_on_the_penultimate_blob(tmp_path, monkeypatch):
    """The figures' sensitivity map is the released code's: the gradient of the class's unit
    in the penultimate blob (LeNet: ``ip2``), seeded with the unit's own value."""
    from preddiff.graph import Graph
    from preddiff.sensitivity import sensitivity_gradient

    monkeypatch.setenv("PREDDIFF_HOME", str(tmp_path / "home"))
    run = _run(tmp_path, dict(importlib.import_module("reproduce.fig1").CONFIG["smoke"]))
    model = common.load_model(run, "lenet")
    (image,) = common.load_inputs(run, model, ["digits:3"])
    assert model.penultimate == "ip2"
    got = common.sensitivity(run, model, image, 3)
    graph = Graph(model.path)
    score = graph.forward(image.x[None], keep="ip2")["ip2"][0, 3]
    assert abs(abs(score) - 1) > 0.5  # so that the seed makes a visible difference
    plain = np.abs(sensitivity_gradient(image.x, graph, 3, "ip2", seed="one")).max(axis=0)
    np.testing.assert_allclose(got, abs(score) * plain, rtol=1e-4, atol=1e-6 * plain.max())
    on_prob = np.abs(sensitivity_gradient(image.x, graph, 3, "prob")).max(axis=0)
    assert not np.allclose(got, on_prob, rtol=1e-2)


def test_run_all_refuses_figures_without_a_list():
    import subprocess

    out = subprocess.run([str(ROOT / "run_all.sh"), "--figures"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 64 and "--figures needs" in out.stderr


def test_a_run_with_the_other_classifier_does_not_trip_over_a_checkpoint(tmp_path, monkeypatch):
    """The engine's checkpoint records the classifier that made it and refuses another; an
    interrupted run without ``incremental`` used to block a rerun with it (same cache key)."""
    pytest.importorskip("preddiff.incremental")
    from preddiff.classifier import OnnxClassifier

    from reproduce import fig3

    monkeypatch.setenv("PREDDIFF_HOME", str(tmp_path / "home"))
    real_call, calls = OnnxClassifier._run, []  # one onnxruntime call

    def flaky(self, batch):
        calls.append(len(batch))
        if len(calls) > 4:  # after the clean passes and a few batches of windows
            raise KeyboardInterrupt
        return real_call(self, batch)

    argv = ["--scale", "smoke", "--no-progress", "--out-dir", str(tmp_path / "out"),
            "--cache-dir", str(tmp_path / "cache"), "--set", "windows=[7]",
            "--set", "num_patches=300", "--set", "num_samples=2", "--set", "batch_size=20"]
    monkeypatch.setattr(OnnxClassifier, "_run", flaky)
    with pytest.raises(KeyboardInterrupt):
        fig3.main(argv + ["--set", "incremental=false"])
    assert len(list((tmp_path / "cache" / "smoke").glob("*.ckpt.npz"))) == 1
    monkeypatch.setattr(OnnxClassifier, "_run", real_call)
    assert fig3.main(argv + ["--set", "incremental=true"]) == 0


def test_wrap_to_width_keeps_every_word_and_fits():
    text = "Fig. 4 — top 5 % of |relevance| (white) for the top class in 'fc8'\n(alexnet, S=20)"
    for width in (1.5, 3.0, 20.0):
        wrapped = common.wrap_to_width(text, width, 10)
        assert wrapped.split() == text.split()
        assert all(common.text_width(line, 10) <= width or " " not in line
                   for line in wrapped.split("\n"))
    assert common.wrap_to_width(text, 20.0, 10) == text  # fits: only the given line break


def test_set_compat_released_selects_the_released_sampler_settings():
    from reproduce import fig1

    run = common.parse_args("fig1", "d", fig1.CONFIG, ["--scale", "smoke", "--set",
                                                       "compat=released"])
    assert run.config["compat"] == "released"
    assert run.config["marginal_order"] == "first"
    assert run.config["colour"] == "per-channel-released"
    assert run.config["patches"] == "released" and run.config["num_patches"] == 20000
    assert run.config["edges"] == "drop"
    explicit = common.parse_args("fig1", "d", fig1.CONFIG, [
        "--scale", "smoke", "--set", "compat=released", "--set", "num_patches=300"])
    assert explicit.config["num_patches"] == 300  # an explicit --set wins
    plain = common.parse_args("fig1", "d", fig1.CONFIG, ["--scale", "smoke"])
    assert "compat" not in plain.config and plain.config["colour"] == "per-channel"
    with pytest.raises(SystemExit):
        common.parse_args("fig1", "d", fig1.CONFIG, ["--scale", "smoke", "--set", "compat=x"])


def test_a_tiny_figure_with_compat_released_rounds_to_float16(tmp_path, monkeypatch):
    monkeypatch.setenv("PREDDIFF_HOME", str(tmp_path / "home"))
    record = _fig3(tmp_path, "num_samples=2", "compat=released")
    assert record["config"]["compat"] == "released"
    (cached,) = (tmp_path / "cache" / "smoke").glob("pda-*.npz")
    arrays = np.load(cached)
    maps = [arrays[k] for k in arrays.files if k.startswith("relevance/")]
    assert maps and np.abs(maps[0]).max() > 0
    for m in maps:
        np.testing.assert_array_equal(m, m.astype(np.float16).astype(m.dtype))
