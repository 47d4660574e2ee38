"""The benchmark scripts of issue 16 run end to end (tiny scale, CPU) and write their records."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(args, tmp_path):
    env = {**os.environ, "PREDDIFF_HOME": str(tmp_path / "home"), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def paper_scale_lenet(tmp_path, *args):
    """``bench/paper_scale.py`` on LeNet, full images, a small sampler fit: (the JSON record,
    the path of its table, stderr)."""
    out = tmp_path / "paper.json"
    r = run(["bench/paper_scale.py", "--models", "lenet", *args, "--device", "cpu",
             "--incremental", "off", "--patches", "500", "--no-progress", "--json", str(out)],
            tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(out.read_text()), out.with_suffix(".txt"), r.stderr


def test_paper_scale_measures_and_projects(tmp_path):
    result, table, _ = paper_scale_lenet(tmp_path, "--complete", "lenet")
    lenet = result["models"]["lenet"]
    assert lenet["complete"] and lenet["windows"] == lenet["windows_timed"] == 19 * 19
    assert lenet["rate"] > 0 and lenet["engine"] == "full images"
    # the figures use the paper's networks: none of them was measured here
    assert {run["figure"] for run in result["figures"]} == {f"fig{i}" for i in range(1, 7)}
    assert all(run["seconds"] is None for run in result["figures"])
    assert "not measured: alexnet, googlenet, vgg16" in table.read_text()


def test_paper_scale_times_a_fraction_in_batches_spread_over_the_image(tmp_path):
    result, _, stderr = paper_scale_lenet(tmp_path, "--fraction", "0.3")
    lenet = result["models"]["lenet"]
    per_batch = lenet["engine_batch"] // 20  # windows per batch (S = 20)
    batches = lenet["windows_timed"] // per_batch
    assert not lenet["complete"] and lenet["windows_timed"] == batches * per_batch
    assert batches == max(1, round(0.3 * 361 / per_batch))
    assert lenet["image_seconds"] == pytest.approx(361 * 20 / lenet["rate"])
    assert f"{batches} batches spread over the image" in stderr


def test_timed_batches_are_whole_batches_spread_evenly():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from paper_scale import timed_batches
    finally:
        sys.path.remove(str(ROOT / "bench"))
    # VGG16 at paper scale: 46,225 windows, 50 per batch (925 batches); 0.5 % of them
    got = timed_batches(46225, 50, 0.005)
    assert len(got) == 5 and all(stop - start == 50 and start % 50 == 0 for start, stop in got)
    starts = [start for start, _ in got]
    gaps = np.diff(starts)
    assert gaps.max() - gaps.min() <= 50  # evenly spread, not the first rows
    # each in the middle of its fifth of the image, none at the top or bottom edge
    assert starts == [int((i + 0.5) * 924 / 5) * 50 for i in range(5)]
    assert starts[0] > 0 and starts[-1] + 50 < 46225 - 50
    assert timed_batches(46225, 50, 0.0001) == [(23100, 23150)]  # at least one: the middle
    assert timed_batches(10, 50, 0.5) == [(0, 10)]  # a single (short) batch: the image
    every = timed_batches(1000, 50, 1.0)  # all whole batches but the last, each once
    assert every == [(i * 50, i * 50 + 50) for i in range(19)]


def test_figure_runs_follow_the_figure_configurations():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import paper_scale
    finally:
        sys.path.remove(str(ROOT / "bench"))
    runs = paper_scale.figure_runs()
    fig1 = [r for r in runs if r["figure"] == "fig1"]
    assert {r["model"] for r in fig1} == {"alexnet", "googlenet", "vgg16"}
    assert all(r["count"] == 8 and r["window"] == 10 and r["samples"] == 20 for r in fig1)
    assert sorted(r["window"] for r in runs if r["figure"] == "fig3") == [1, 4, 7, 10]
    measured = {"alexnet": {"input": [3, 227, 227], "rate": 1000.0,
                            "sampler_fit_seconds": 0.0}}
    fig3 = [r for r in paper_scale.project(measured) if r["figure"] == "fig3"]
    k10 = next(r for r in fig3 if r["window"] == 10)
    assert k10["seconds"] == pytest.approx(218 * 218 * 20 / 1000.0)


def test_engine_profile_accounts_for_the_run(tmp_path):
    out = tmp_path / "profile.json"
    r = run(["bench/engine_profile.py", "--models", "lenet", "--quick", "--device", "cpu",
             "--json", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    lenet = json.loads(out.read_text())["models"]["lenet"]
    parts = lenet["parts"]
    assert parts["session"] > 0 and parts["sampling"] > 0 and parts["composing"] > 0
    engine_thread = sum(parts[p] for p in ("waiting", "composing", "copies", "session",
                                            "reductions", "other"))
    assert engine_thread == pytest.approx(lenet["seconds"])


def test_sampler_cost_times_every_piece(tmp_path):
    out = tmp_path / "sampler_cost.txt"
    r = run(["bench/sampler_cost.py", "--repeats", "1", "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
    rows = {line.split()[0]: line.split() for line in text.splitlines()[4:9]}
    assert list(rows) == ["piece", "seeding", "normals", "sampling", "composing"]
    assert "classifier" in text.splitlines()[9]
    for piece in ("seeding", "normals", "sampling", "composing"):
        assert float(rows[piece][1]) > 0
    assert "LeNet, 361 windows x 10 samples" in text


def test_incremental_profile_times_the_host_index_of_every_batch(monkeypatch):
    # the share covers one index computation per batch and pass, and the graph runs on it
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import incremental_profile
    finally:
        sys.path.remove(str(ROOT / "bench"))
    from untuned_nets import vgg_like

    from preddiff.incremental import IncrementalClassifier
    from preddiff.incremental_graph import PATCHES
    from preddiff.incremental_index import IndexProgram
    from preddiff.netzoo import example_pool

    x = example_pool(120)[0].astype("float32")
    clf = IncrementalClassifier(vgg_like(0), outputs=["prob"], device="cpu")
    clf._set_clean(x)
    plan = clf._plan(x.shape, (10, 10))
    clean = {ci.name: ci.build(clf._clean[ci.tensor]) for ci in plan.compiled.clean_inputs}
    rng = np.random.default_rng(0)
    tops = [np.array(c, np.int64) for c in ([(0, 0), (0, 0)], [(55, 60), (100, 110), (7, 3)])]
    feeds = [{**clean, PATCHES: rng.normal(size=(len(t), 3, 10, 10)).astype(np.float32)}
             for t in tops]
    calls = []
    original = IndexProgram.feeds
    monkeypatch.setattr(IndexProgram, "feeds",
                        lambda self, top: calls.append(len(top)) or original(self, top))
    share = incremental_profile._host_index_share(plan, tops, feeds, "prob", rounds=2)
    assert 0 < share < 1
    assert calls == [2, 3] * 3  # an untimed pass, then two


def test_untuned_nets_brackets_each_engine_run_with_plain_measurements(tmp_path, monkeypatch):
    # each engine's run lies between two plain measurements and its ratio is taken against
    # their mean; the record goes where --out says
    import importlib.util

    spec = importlib.util.spec_from_file_location("untuned_bench", ROOT / "bench" /
                                                  "untuned_nets.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    events = []

    def plain(classifier, x, seconds):
        events.append("plain")
        return 100.0 * events.count("plain")

    def pda(x, classifier, *args):
        events.append(type(classifier).__name__)
        return real_pda(x, classifier, *args)

    real_pda = script._pda
    monkeypatch.setattr(script, "_plain", plain)
    monkeypatch.setattr(script, "_pda", pda)
    monkeypatch.setattr(script, "STRIDE", 55)  # 3 x 3 windows
    out = tmp_path / "u.txt"
    assert script.main(["--models", "vgg_like_120", "--rounds", "2", "--out", str(out)]) == 0
    timed = events[events.index("plain"):]
    assert timed == ["plain", "OnnxClassifier", "plain", "IncrementalClassifier", "plain"] * 2
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["command"].endswith("--models vgg_like_120 --rounds 2 --out " + str(out))
    row = record["models"]["vgg_like_120"]
    assert [r["plains"] for r in row["rounds"]] == [[100, 200, 300], [400, 500, 600]]
    first, second = row["rounds"]  # plain around the incremental runs: 250 and 550
    ratios = [first["incremental"] / 250, second["incremental"] / 550]
    assert row["ratio_incremental"] == pytest.approx(np.median(ratios))
    assert row["measured_over_planned"] == pytest.approx(
        row["ratio_incremental"] / row["planned_reduction"])
    assert row["max_relative_difference"] <= 1e-4
    assert out.read_text().splitlines()[3].startswith("vgg_like_120")


def test_untuned_nets_refuses_unknown_networks(tmp_path):
    r = run(["bench/untuned_nets.py", "--models", "vgg_like", "--out", str(tmp_path / "u.txt")],
            tmp_path)
    assert r.returncode == 2
    assert "--models 'vgg_like': choose among vgg_like_120, resnet_like_160" in r.stderr
    assert not (tmp_path / "u.txt").exists()


def test_machine_phases_writes_a_turn_per_row_and_the_correlations(tmp_path):
    out = tmp_path / "phases.txt"
    r = run(["bench/machine_phases.py", "--turns", "3", "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = out.read_text().splitlines()
    assert lines[2] == f"command: python bench/machine_phases.py --turns 3 --out {out}"
    rows = [line.split() for line in lines[4:7]]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    for _, plain, incremental, ratio, matmul in rows:
        assert float(plain) > 0 and float(incremental) > 0 and float(matmul) > 0
        assert float(ratio) == pytest.approx(float(incremental) / float(plain), abs=0.006)
    assert lines[-1].startswith("correlation with the matmul rate: incremental ")
    r = run(["bench/machine_phases.py", "--turns", "2", "--out", str(out)], tmp_path)
    assert r.returncode == 2 and "--turns 2: at least 3" in r.stderr


def _load_script(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name.replace(".py", "_bench"),
                                                  ROOT / "bench" / name)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_workers_ab_alternates_the_engines_and_compares_their_maps(tmp_path, monkeypatch):
    # both engines on a block, in turn, the order alternating by round; the record has each
    # round's rates, the median of the per-round ratios and whether the maps are identical
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from untuned_nets import vgg_like
    finally:
        sys.path.remove(str(ROOT / "tests"))
    from preddiff.netzoo import example_pool
    from preddiff.samplers import ConditionalGaussianSampler

    script = _load_script("workers_ab.py")
    pool = example_pool(120)
    sampler = ConditionalGaussianSampler.fit(pool[1:], 10, 2, num_patches=300, rng=0)
    monkeypatch.setattr(script, "bench_inputs",
                        lambda name, seed: (vgg_like(0), "random", pool[0], sampler))
    monkeypatch.setattr(script, "BLOCK_STRIDE", {"resnet18": (55, 55)})  # 3 x 3 windows
    order = []
    pda = script._pda
    monkeypatch.setattr(script, "_pda", lambda x, clf, *a: order.append(clf.workers)
                        or pda(x, clf, *a))
    out = tmp_path / "w.txt"
    assert script.main(["--models", "resnet18", "--rounds", "3", "--out", str(out)]) == 0
    assert order[2:] == [1, 2, 2, 1, 1, 2]  # after one warm-up run each
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["command"] == f"python bench/workers_ab.py --models resnet18 --rounds 3 --out {out}"
    row = record["models"]["resnet18"]
    assert row["maps_identical"] is True and row["window_samples"] == 90
    ratios = [b / a for a, b in zip(row["rates"]["1"], row["rates"]["2"])]
    assert row["ratios"] == pytest.approx(ratios)
    assert row["median_ratio"] == pytest.approx(np.median(ratios))
    assert "identical" in out.read_text().splitlines()[5]


def test_workers_ab_refuses_unknown_networks(tmp_path):
    r = run(["bench/workers_ab.py", "--models", "lenet", "--out", str(tmp_path / "w.txt")],
            tmp_path)
    assert r.returncode == 2 and "--models 'lenet': choose among alexnet," in r.stderr
    assert not (tmp_path / "w.txt").exists()
