"""Issue 18: ``preddiff.explain`` (one call, the command line's results), defaults that work on
colour models, the explained image kept out of its own pool, ``Explanation.save`` defaults, the
probability blob found by the graph, readable figures, and the messages of point 7 (with the
class-name rules of issue 19). Command-line behaviour is checked through a subprocess."""
import json
import os
import socket
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import pytest

import preddiff
from preddiff import Explanation, plot
from preddiff.errors import InvalidArgument
from test_explain_cli import free_size_onnx

pytestmark = pytest.mark.usefixtures("isolated_home")

#: Few windows and samples: a run takes about a second.
FAST = dict(window=4, stride=4, samples=2, progress=False, device="cpu", threads=1,
            incremental="off")
FAST_CLI = ["--window", "4", "--stride", "4", "--samples", "2", "--no-progress", "--device",
            "cpu", "--threads", "1", "--incremental", "off"]


def cli(*argv, cwd=None, env=None):
    """``preddiff ARGV`` in a subprocess: (exit code, stdout, stderr)."""
    done = subprocess.run([sys.executable, "-m", "preddiff", *map(str, argv)],
                          capture_output=True, text=True, cwd=cwd, timeout=900,
                          env={**os.environ, **(env or {})})
    return done.returncode, done.stdout, done.stderr


def rgb_model(path, classes=6, size=(16, 16)):
    """A small RGB classifier: average pool → linear → Softmax, output ``out``."""
    return free_size_onnx(path, classes=classes, size=size, scale=3.0)


def pixels(shape=(16, 16, 3), seed=1):
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def save_png(path, array):
    from PIL import Image

    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def labelled(tmp_path):
    model = rgb_model(tmp_path / "six.onnx")
    labels = tmp_path / "labels.txt"
    labels.write_text("ant\nbee\ncat\ndog\neel\nfox\n")
    return model, labels


# ----------------------------------------------------------------------------------------------
# point 5: the one-call API


def test_zoo_name_gives_the_command_lines_maps(tmp_path):
    e = preddiff.explain("digits:7", "lenet", target=[3], top=3, **FAST)
    assert isinstance(e, Explanation)
    code, out, err = cli("explain", "digits:7", *FAST_CLI, "--classes", "3", "--out", tmp_path)
    assert code == 0, err
    saved = Explanation.load(tmp_path / "digit7_lenet.npz")
    assert sorted(e.units["prob"].tolist()) == saved.units["prob"].tolist()
    for unit in saved.units["prob"]:
        np.testing.assert_array_equal(e.relevance_of("prob", unit).astype(np.float32),
                                      saved.relevance_of("prob", unit))
    assert e.top_classes(n=1)[0][0] == "7"  # LeNet's labels are known: names
    assert e.top_classes(n=1, names=False)[0][0] == 7
    assert e.metadata["model"] == "lenet" and e.metadata["labels"][7] == "7"


def test_onnx_path_names_as_target_and_the_command_line(tmp_path, labelled):
    model, labels = labelled
    image = pixels()
    e = preddiff.explain(image, model, labels=labels, target="Cat", **FAST)
    assert e.units["out"].tolist() == [2]  # only the target's map is kept
    assert e.relevance["out"].shape == (1, 16, 16)
    png = save_png(tmp_path / "img.png", image)
    code, out, err = cli("explain", png, "--model", model, "--labels", labels, "--classes",
                         "cat", *FAST_CLI, "--out", tmp_path / "o")
    assert code == 0, err
    saved = Explanation.load(tmp_path / "o" / "img_six.npz")
    np.testing.assert_array_equal(e.relevance_of("out", 2).astype(np.float32),
                                  saved.relevance_of("out", 2))
    assert [n for n, _ in e.top_classes(n=2)] == [n for n, _ in saved.top_classes(n=2)]
    assert isinstance(e.top_classes()[0][0], str)


def test_model_proto_pil_image_and_indices_and_names_as_target(tmp_path, labelled):
    from PIL import Image

    model, labels = labelled
    image = pixels()
    by_path = preddiff.explain(image, model, labels=labels, target=[5, "bee"], **FAST)
    by_proto = preddiff.explain(Image.fromarray(image), onnx.load(str(model)),
                                labels=labels, target=[5, "bee"], **FAST)
    assert by_path.units["out"].tolist() == by_proto.units["out"].tolist() == [5, 1]
    np.testing.assert_array_equal(by_path.relevance["out"], by_proto.relevance["out"])
    assert by_proto.metadata["probability"]["weight_of_evidence"]
    with pytest.raises(InvalidArgument, match="unknown class 'zebra'"):
        preddiff.explain(image, model, labels=labels, target="zebra", **FAST)
    with pytest.raises(InvalidArgument, match="unknown option"):
        preddiff.explain(image, model, windows=3)


def test_plot_draws_the_command_lines_figure(tmp_path, labelled):
    model, labels = labelled
    e = preddiff.explain(pixels(), model, labels=labels, **FAST)
    fig = e.plot(path=tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 1000
    titles = [ax.get_title() for ax in fig.axes]
    assert sum(t.count("p = ") for t in titles) == 3 and titles.count("overlay") == 3


# ----------------------------------------------------------------------------------------------
# points 1-2: the default pool works on colour models, without the explained image


@pytest.mark.parametrize("samples", [10, 20])
def test_marginal_sampling_works_on_a_colour_model_by_default(tmp_path, samples):
    model = rgb_model(tmp_path / "rgb.onnx", size=(32, 32))
    png = save_png(tmp_path / "img.png", pixels((32, 32, 3)))
    code, out, err = cli("explain", png, "--model", model, "--sampler", "marginal",
                         "--samples", samples, "--window", "8", "--stride", "8",
                         "--no-progress", "--incremental", "off", "--out", tmp_path)
    assert code == 0, err
    e = Explanation.load(tmp_path / "img_rgb.npz")
    assert e.sampler["pool_shape"][0] >= 100 and e.metadata["pool"]["left_out"] == []


def test_the_explained_photo_is_never_in_its_own_pool(tmp_path):
    import skimage.data
    from PIL import Image

    model = rgb_model(tmp_path / "rgb.onnx", size=(32, 32))
    cat = skimage.data.chelsea()
    save_png(tmp_path / "chelsea.png", cat)
    Image.fromarray(cat).save(tmp_path / "mycat.jpg", quality=90)  # another name, re-encoded
    save_png(tmp_path / "noise.png", pixels((300, 451, 3)))
    sizes = {}
    for name in ("chelsea.png", "mycat.jpg", "noise.png"):
        code, out, err = cli("explain", tmp_path / name, "--model", model, "--sampler",
                             "marginal", "--window", "16", "--stride", "16", "--no-progress",
                             "--incremental", "off", "--out", tmp_path / "o")
        assert code == 0, err
        e = Explanation.load(tmp_path / "o" / f"{name.split('.')[0]}_rgb.npz")
        sizes[name] = e.sampler["pool_shape"][0]
        if name != "noise.png":
            assert e.metadata["pool"]["left_out"] == ["chelsea"]
    assert sizes["chelsea.png"] == sizes["mycat.jpg"] < sizes["noise.png"]


def test_a_pool_file_of_the_same_picture_is_left_out_by_content(tmp_path):
    from preddiff.digits import load_digits

    digits = load_digits()[0]
    (tmp_path / "pool").mkdir()
    for i in range(12):
        save_png(tmp_path / "pool" / f"d{i}.png", (digits[i, 0] * 255).astype(np.uint8))
    copy = save_png(tmp_path / "mine.png", (digits[3, 0] * 255).astype(np.uint8))
    code, out, err = cli("explain", copy, *FAST_CLI, "--sampler", "marginal", "--pool",
                         tmp_path / "pool", "--out", tmp_path / "o")
    assert code == 0, err
    e = Explanation.load(tmp_path / "o" / "mine_lenet.npz")
    assert e.sampler["pool_shape"][0] == 11 and "d3.png" in e.metadata["pool"]["left_out"]


# ----------------------------------------------------------------------------------------------
# point 3: save() keeps what the command line keeps, compressed


class _Softmax:
    def __init__(self, classes, shape, seed=0):
        self.w = np.random.default_rng(seed).normal(size=(classes, int(np.prod(shape))))

    def __call__(self, batch):
        z = batch.reshape(len(batch), -1) @ self.w.T
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return {"prob": z / z.sum(axis=1, keepdims=True)}


def test_save_defaults_to_the_kept_classes_compressed_float32(tmp_path, rng):
    from preddiff.samplers import MarginalSampler

    x = rng.normal(size=(3, 12, 10)).astype(np.float32)
    pool = rng.normal(size=(4, 3, 12, 10)).astype(np.float32)
    e = preddiff.prediction_difference(x, _Softmax(50, x.shape), MarginalSampler(pool),
                                       window=3, num_samples=2, rng=0, progress=False)
    e.save(tmp_path / "e.npz")
    back = Explanation.load(tmp_path / "e.npz")
    assert back.units["prob"].tolist() == sorted(u for u, _ in e.top_classes(n=3))
    assert back.relevance["prob"].dtype == np.float32
    with zipfile.ZipFile(tmp_path / "e.npz") as z:
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
    e.save(tmp_path / "all.npz", units="all")
    assert Explanation.load(tmp_path / "all.npz").units["prob"].tolist() == list(range(50))


# ----------------------------------------------------------------------------------------------
# point 4: a probability blob is recognised by the graph, not by its name


def test_a_softmax_output_not_named_prob_gets_the_weight_of_evidence(tmp_path):
    from preddiff.classifier import OnnxClassifier
    from preddiff.samplers import MarginalSampler

    model = rgb_model(tmp_path / "six.onnx")
    x = np.random.default_rng(0).uniform(size=(3, 16, 16)).astype(np.float32)
    pool = np.random.default_rng(1).uniform(size=(4, 3, 16, 16)).astype(np.float32)
    e = preddiff.prediction_difference(x, OnnxClassifier(model, outputs=["out"]),
                                       MarginalSampler(pool), window=4, stride=4,
                                       num_samples=2, blobs=["out"], rng=0, progress=False)
    assert e.probability_blobs == ("out",)
    assert "Softmax" in e.metadata["probability"]["rule"]
    api = preddiff.explain(x.transpose(1, 2, 0), model, **FAST)
    assert api.probability_blobs == ("out",)
    assert api.metadata["probability"] == {"blob": "out", "weight_of_evidence": True,
                                           "reason": "a Softmax node produces 'out'"}


# ----------------------------------------------------------------------------------------------
# point 6: figures


def test_figure_has_units_legend_plain_title_and_a_shared_scale_option(labelled):
    model, labels = labelled
    e = preddiff.explain(pixels(), model, labels=labels, sampler="conditional", **FAST)
    fig = e.plot()
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 3
    assert all(plot.WOE_UNIT in (b.get_ylabel() + b.get_xlabel()) for b in bars)
    legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    assert any("red: evidence for the class" in t for t in legend)
    assert any("blue: evidence against" in t for t in legend)
    title = fig._suptitle.get_text()
    assert "ConditionalGaussianSampler" not in title and "k=" not in title
    assert "conditional samples per window" in title and "4x4-pixel windows" in title
    limits = {im.get_clim() for ax in fig.axes for im in ax.get_images()
              if im.get_cmap().name == "preddiff_signed"}
    assert len(limits) == 3  # one scale per panel by default
    shared = e.plot(shared_scale=True)
    limits = {im.get_clim() for ax in shared.axes for im in ax.get_images()
              if im.get_cmap().name == "preddiff_signed"}
    assert len(limits) == 1


def test_console_prints_probabilities_as_the_figure_does(tmp_path):
    code, out, err = cli("explain", "digits:1", *FAST_CLI, "--out", tmp_path)
    assert code == 0, err
    e = Explanation.load(tmp_path / "digit1_lenet.npz")
    printed = out.splitlines()[0]
    for name, value in e.top_classes("prob", 3):
        assert f"{name} (p={value:.3g})" in printed  # as the figure's panel titles
        assert plot.panel_title(str(name), value, "p").endswith(f"p = {value:.3g}")
    assert "p=0.000)" not in printed  # a small probability keeps its digits


def test_help_no_longer_says_caffe_zoo_only():
    code, out, err = cli("--help")
    assert code == 0 and "Caffe-zoo networks" not in out and "your own ONNX model" in out


# ----------------------------------------------------------------------------------------------
# point 7 and issue 19: class names and labels files


def test_class_names_are_case_insensitive_with_suggestions_and_ambiguity(tmp_path):
    model = rgb_model(tmp_path / "k1000.onnx", classes=1000)
    png = save_png(tmp_path / "img.png", pixels())
    base = ["explain", png, "--model", model, "--labels", "imagenet", "--window", "8",
            "--stride", "8", "--samples", "2", "--no-progress", "--incremental", "off",
            "--out", tmp_path]
    code, out, err = cli(*base, "--classes", "Tiger Cat")
    assert code == 0, err
    assert "tiger cat (p=" in out.split("also:")[-1] or "tiger cat (p=" in out
    code, out, err = cli(*base, "--classes", "cat")
    assert code == 2 and "unknown class 'cat'; did you mean" in err and "'tiger cat'" in err
    assert len(err.strip().splitlines()) == 1
    code, out, err = cli(*base, "--classes", "crane")
    assert code == 2
    assert "class name 'crane' is ambiguous: classes 134 (crane), 517 (crane)" in err
    code, out, err = cli(*base, "--classes", "maillot")
    assert code == 2 and "638 (maillot), 639 (maillot)" in err


def test_labels_file_bom_blank_lines_duplicates_and_commas(tmp_path):
    model = rgb_model(tmp_path / "six.onnx")
    png = save_png(tmp_path / "img.png", pixels())
    labels = tmp_path / "labels.txt"
    base = ["explain", png, "--model", model, "--labels", labels, *FAST_CLI, "--out",
            tmp_path]
    labels.write_bytes("ant\nbee, honey\ncat\ndog\neel\nfox\n\n".encode("utf-8-sig"))
    code, out, err = cli(*base, "--classes", 'ant,"bee, honey"', "--top", "1")
    assert code == 0, err
    assert "ant (p=" in out and "bee, honey (p=" in out
    e = Explanation.load(tmp_path / "img_six.npz")
    assert e.metadata["labels"][0] == "ant"  # no byte-order mark in the first name
    code, out, err = cli(*base, "--classes", "bee, honey", "--top", "1")  # the whole text
    assert code == 0, err
    labels.write_text("ant\nbee\n\ncat\ndog\neel\nfox\n")
    code, out, err = cli(*base)
    assert code == 2 and "line 3 is blank" in err
    labels.write_text("ant\nbee\nant\ndog\neel\nfox\n")
    code, out, err = cli(*base, "--classes", "ant")
    assert code == 2 and "'ant' is ambiguous: classes 0 (ant), 2 (ant)" in err


# ----------------------------------------------------------------------------------------------
# point 7: the other messages


def test_decision_measurement_is_announced_and_remeasured(tmp_path):
    home = {"PREDDIFF_HOME": str(tmp_path / "home")}
    args = ["explain", "digits:2", "--window", "4", "--stride", "4", "--samples", "2",
            "--no-progress", "--out", tmp_path]
    code, out, err = cli(*args, env=home)
    assert code == 0, err
    assert "measuring whether incremental inference is faster" in err
    assert "measured in " in err and "--incremental remeasure" in err
    code, out, err = cli(*args, env=home)
    assert code == 0 and "measuring whether" not in err and ", cached" in out
    code, out, err = cli(*args, "--incremental", "remeasure", env=home)
    assert code == 0 and "measuring whether incremental inference is faster" in err
    assert ", cached" not in out


def test_a_checkpoint_without_finished_windows_is_not_resumed(tmp_path):
    from preddiff.checkpoint import Checkpoint

    stale = Checkpoint(tmp_path / "digit1_lenet.ckpt.npz", {"blobs": ["prob"], "other": 1},
                       {"prob": np.zeros(10)})
    stale.save(0, {"prob": np.zeros((0, 10))}, {"total": 1.0})
    code, out, err = cli("explain", "digits:1", *FAST_CLI, "--out", tmp_path)
    assert code == 0, err
    assert "resumed from" not in err and "resumed" not in out


def test_cluster_time_line_and_no_dashboard_port_warning(tmp_path):
    pytest.importorskip("distributed")
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 8787))
        holder.listen()
    except OSError:
        pass  # something else holds 8787 already: the same situation
    try:
        code, out, err = cli("explain", "digits:1", "digits:2", *FAST_CLI, "--workers", "1",
                             "--out", tmp_path)
    finally:
        holder.close()
    assert code == 0, err
    assert "already in use" not in err
    lines = [ln for ln in out.splitlines() if "on the cluster" in ln]
    assert len(lines) == 2 and all("for the 2 images together" in ln for ln in lines)
    assert all("summed over the workers" in ln for ln in lines)


# ----------------------------------------------------------------------------------------------
# point 9: evaluate takes the user's ONNX model


def test_evaluate_takes_a_user_onnx_model(tmp_path):
    model = rgb_model(tmp_path / "rgb.onnx", size=(32, 32))
    code, out, err = cli("evaluate", "--model", model, "--window", "8", "--stride", "8",
                         "--samples", "2", "--draws", "1", "--step", "0.25", "--no-progress",
                         "--no-randomisation", "--device", "cpu", "--out", tmp_path / "ev")
    assert code == 0, err
    record = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert "--model" in record["command"] and "rgb" in record["settings"]["model"]
    assert record["settings"]["images"].startswith("3 ")
    assert "| PDA marginal |" in out
    code, out, err = cli("evaluate", "--model", model, "--normalize", "imagenet", "--stride",
                         "8", "--window", "8", "--samples", "2", "--draws", "1", "--step",
                         "0.5", "--no-progress", "--no-randomisation", "--fill", "mean",
                         "--out", tmp_path / "ev2")
    assert code == 0, err
    code, out, err = cli("evaluate", "--normalize", "imagenet", "--out", tmp_path / "ev3")
    assert code == 2 and "--normalize applies with --model FILE.onnx" in err


def test_keyword_defaults_are_the_command_lines():
    from preddiff.cli import build_parser
    from preddiff.explainer import DEFAULTS

    args = vars(build_parser().parse_args(["explain", "digits:1"]))
    assert {k: args[k] for k in DEFAULTS} == DEFAULTS
