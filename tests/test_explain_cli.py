"""``preddiff explain`` end to end on the offline LeNet and digits (small windows: seconds)."""
import numpy as np
import pytest

from preddiff import Explanation, __version__, zoo
from preddiff.cli import main

FAST = ["--window", "4", "--stride", "3", "--samples", "3", "--patches", "2000",
        "--no-progress", "--device", "cpu", "--threads", "1"]


pytestmark = pytest.mark.usefixtures("isolated_home")


def explain(*argv):
    return main(["explain", *map(str, argv)])


def test_explain_digit(tmp_path, capsys):
    assert explain("digits:7", *FAST, "--out", tmp_path) == 0
    out = capsys.readouterr().out
    assert out.startswith("digits:7: 7 (p=")  # LeNet's top class for this 7
    assert " s (classifier " in out and "digit7_lenet.png" in out
    e = Explanation.load(tmp_path / "digit7_lenet.npz")
    # the maps of the three classes shown are kept (--save-all: all ten)
    assert e.relevance["prob"].shape == (3, 28, 28) and e.clean["prob"].shape == (10,)
    assert sorted(e.units["prob"].tolist()) == sorted(i for i, _, _ in e.metadata["top"])
    assert e.relevance["prob"].dtype == np.float32
    assert e.window == (4, 4) and e.stride == 3 and e.num_samples == 3 and e.seed == 0
    assert e.sampler["name"] == "ConditionalGaussianSampler" and e.sampler["padding"] == 2
    meta = e.metadata
    assert meta["model"] == "lenet" and meta["model_sha1"] == zoo.manifest("lenet").sha1
    assert meta["preddiff_version"] == __version__ and meta["pool_size"] == 1796
    assert meta["top"][0][1] == "7"
    assert e.timings["total"] > 0
    png = tmp_path / "digit7_lenet.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digit7_lenet.npz",
                                                          "digit7_lenet.png"]


def test_marginal_first_excludes_the_explained_digit(tmp_path):
    assert explain("digits:0", "digits:5", *FAST, "--sampler", "marginal", "--order", "first",
                   "--out", tmp_path) == 0
    for n in (0, 5):
        e = Explanation.load(tmp_path / f"digit{n}_lenet.npz")
        assert e.sampler["order"] == "first" and e.sampler["pool_shape"][0] == 1796


@pytest.mark.parametrize("incremental", [False, True], ids=["full-images", "incremental"])
def test_resume_after_interruption_is_identical(tmp_path, monkeypatch, incremental):
    from preddiff.classifier import OnnxClassifier
    from preddiff.incremental import IncrementalClassifier

    # the method that runs the network on perturbed images in each mode (full images: one
    # onnxruntime call of at most --batch-size images)
    cls, method = ((IncrementalClassifier, "evaluate_windows") if incremental
                   else (OnnxClassifier, "_run"))
    mode = ["--incremental", "on"] if incremental else ["--no-incremental"]
    small = ["--batch-size", "30", *mode]  # 81 windows, 10 per batch
    assert explain("digits:3", *FAST, *small, "--out", tmp_path / "fresh",
                   "--no-checkpoint") == 0
    fresh = Explanation.load(tmp_path / "fresh" / "digit3_lenet.npz")

    real_call = getattr(cls, method)
    calls = []

    def crashing(self, *args):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real_call(self, *args)

    monkeypatch.setattr(cls, method, crashing)
    assert explain("digits:3", *FAST, *small, "--out", tmp_path / "run") == 130  # Ctrl-C
    assert (tmp_path / "run" / "digit3_lenet.ckpt.npz").exists()
    monkeypatch.setattr(cls, method, real_call)
    assert explain("digits:3", *FAST, "--batch-size", "60", *mode,
                   "--out", tmp_path / "run") == 0
    resumed = Explanation.load(tmp_path / "run" / "digit3_lenet.npz")
    np.testing.assert_array_equal(resumed.relevance["prob"], fresh.relevance["prob"])
    assert not (tmp_path / "run" / "digit3_lenet.ckpt.npz").exists()


def test_checkpoint_of_other_arguments_refused(tmp_path, capsys):
    from preddiff.classifier import OnnxClassifier

    real_call = OnnxClassifier._run  # one onnxruntime call
    calls = []

    def crashing(self, batch):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real_call(self, batch)

    mp = pytest.MonkeyPatch()
    mp.setattr(OnnxClassifier, "_run", crashing)
    try:
        assert explain("digits:3", *FAST, "--batch-size", "30", "--no-incremental",
                       "--out", tmp_path) == 130
    finally:
        mp.undo()
    capsys.readouterr()
    assert explain("digits:3", *FAST, "--seed", "1", "--no-incremental", "--out", tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith("preddiff: error: checkpoint") and "seed=" in err
    assert len(err.strip().splitlines()) == 1


def test_image_file_and_pool_folder(tmp_path, capsys):
    import skimage.io

    from preddiff.digits import load_digits

    images = load_digits()[0]
    (tmp_path / "pool").mkdir()
    for i in range(4):
        skimage.io.imsave(tmp_path / "pool" / f"d{i}.png",
                          (images[i, 0] * 255).astype(np.uint8), check_contrast=False)
    target = tmp_path / "pool" / "d0.png"
    assert explain(target, *FAST, "--sampler", "marginal", "--pool", tmp_path / "pool",
                   "--out", tmp_path / "out") == 0
    e = Explanation.load(tmp_path / "out" / "d0_lenet.npz")
    assert e.sampler["pool_shape"][0] == 3  # the explained file is left out
    capsys.readouterr()
    assert explain(target, *FAST, "--sampler", "marginal", "--samples", "5", "--pool",
                   tmp_path / "pool", "--out", tmp_path / "out") == 2
    assert "needs --samples 5 distinct pool images, but the pool has only 3: give --pool" in \
        capsys.readouterr().err


def free_size_onnx(path, classes=4, size=("H", "W"), scale=1.0):
    """A tiny classifier: global average pool → linear (``classes`` × 3 weights times
    ``scale``) → softmax; a free input size by default, or ``size = (H, W)``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = rng.normal(size=(classes, 3)).astype(np.float32) * np.float32(scale)
    w = numpy_helper.from_array(weights, "w")
    nodes = [helper.make_node("GlobalAveragePool", ["data"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "w"], ["scores"], transB=1),
             helper.make_node("Softmax", ["scores"], ["out"], axis=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("data", TensorProto.FLOAT,
                                                      ["N", 3, *size])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", classes])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_onnx_file_model(tmp_path, capsys):
    import skimage.io

    model = free_size_onnx(tmp_path / "tiny.onnx")
    image = tmp_path / "img.png"
    skimage.io.imsave(image, np.random.default_rng(1).integers(0, 255, (20, 24, 3),
                                                               dtype=np.uint8))
    assert explain(image, "--model", model, *FAST, "--out", tmp_path) == 2
    assert "give --input-size HxW" in capsys.readouterr().err
    assert explain(image, "--model", model, "--input-size", "12x16", *FAST,
                   "--out", tmp_path) == 0
    out = capsys.readouterr().out
    assert "class 0 (p=" in out or "class 1 (p=" in out or "class 2" in out or "class 3" in out
    e = Explanation.load(tmp_path / "img_tiny.npz")
    assert e.x.shape == (3, 12, 16) and float(e.x.max()) <= 1.0
    assert e.relevance["out"].shape == (3, 12, 16)  # the --top 3 classes' maps
    assert e.clean["out"].shape == (4,)
    assert e.probability_blobs == ("out",)  # produced by a Softmax node
    assert e.metadata["model_sha1"] == zoo.file_sha1(model)


@pytest.mark.parametrize("argv,message", [
    (["digits:x"], "expected digits:N"),
    (["digits:5000"], "out of range"),
    (["digits:1", "--window", "40"], "window 40x40 is larger than the image 28x28"),
    (["digits:1", "--samples", "0"], "num_samples must be an integer >= 1"),
    (["digits:1", "--padding", "-1"], "padding must be a non-negative integer"),
    (["digits:1", "--blob", "nope"], "unknown blob(s) 'nope'"),
    (["digits:1", "--model", "missing.onnx"], "no such ONNX file"),
    (["nofile.png"], "does not exist"),
])
def test_errors(tmp_path, capsys, argv, message):
    assert explain(*FAST, "--out", tmp_path, *argv) == 2  # the later option wins
    err = capsys.readouterr().err
    assert err.startswith("preddiff: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_zoo_colour_net_with_default_pool(tmp_path, monkeypatch, capsys):
    """AlexNet's path (preprocessing, bundled colour pool, 1000 labels) on a narrowed
    random-weight AlexNet standing in for the real weights, which cannot be downloaded here."""
    import onnx

    from preddiff.caffe.writer import random_onnx
    from preddiff.resources import DATA_DIR

    path = tmp_path / "alexnet-random.onnx"
    onnx.save(random_onnx("alexnet", factor=16, seed=0), str(path))
    monkeypatch.setattr(zoo, "ensure_onnx", lambda name, outputs=None: path)
    image = sorted((DATA_DIR / "images").glob("*.jpg"))[0]
    assert explain(image, "--model", "alexnet", "--window", "10", "--stride", "70",
                   "--samples", "2", "--patches", "500", "--no-progress", "--device", "cpu",
                   "--threads", "1", "--out", tmp_path) == 0
    out = capsys.readouterr().out
    labels = zoo.labels("alexnet")
    e = Explanation.load(tmp_path / f"{image.stem}_alexnet.npz")
    assert e.relevance["prob"].shape == (3, 227, 227) and e.clean["prob"].shape == (1000,)
    top = e.metadata["top"]
    assert out.startswith(f"{image}: {labels[top[0][0]]} (p=")
    assert e.metadata["pool_size"] == 6  # the 7 example images minus the explained one
    assert e.metadata["policy"] == "crop"


# ----------------------------------------------------------------------------------------------
# review fixes


@pytest.mark.parametrize("argv,message", [
    (["--window", "0"], "--window must be a positive integer, got 0"),  # was: silently 4
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),  # was: 256
    (["--input-size", "28x28"], "--input-size applies to ONNX files only"),  # was: ignored
])
def test_zero_and_meaningless_options_are_errors(tmp_path, capsys, argv, message):
    assert explain("digits:1", *FAST, "--out", tmp_path, *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("preddiff: error: ") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_out_is_a_file(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("")
    assert explain("digits:1", *FAST, "--out", target) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"preddiff: error: --out {str(target)!r} is a file; give a folder"


def test_corrupt_onnx_model_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(np.random.default_rng(2).integers(0, 256, 200, dtype=np.uint8).tobytes())
    assert explain("digits:1", *FAST, "--model", bad, "--out", tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"preddiff: error: cannot read {str(bad)!r} as an ONNX model")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_onnx_default_blob_is_the_probability_output(tmp_path, capsys):
    """`--blob` defaults to "the probability output" (help, README); with the scores as the
    first graph output the command explained the scores instead."""
    import onnx
    from onnx import helper

    model = onnx.load(str(free_size_onnx(tmp_path / "tiny.onnx")))
    model.graph.output.insert(0, helper.make_tensor_value_info(
        "scores", onnx.TensorProto.FLOAT, ["N", 4]))
    path = tmp_path / "two.onnx"
    onnx.save(model, str(path))
    image = tmp_path / "img.png"
    import skimage.io

    skimage.io.imsave(image, np.random.default_rng(1).integers(0, 255, (12, 16, 3),
                                                               dtype=np.uint8))
    assert explain(image, "--model", path, "--input-size", "12x16", *FAST,
                   "--out", tmp_path) == 0
    assert "(p=" in capsys.readouterr().out
    e = Explanation.load(tmp_path / "img_two.npz")
    assert e.blobs == ("out",) and e.probability_blobs == ("out",)
    assert explain(image, "--model", path, "--input-size", "12x16", "--blob", "scores", *FAST,
                   "--out", tmp_path / "s") == 0
    e = Explanation.load(tmp_path / "s" / "img_two.npz")
    assert e.blobs == ("scores",) and e.probability_blobs == ()


def test_failed_run_does_not_block_the_corrected_one(tmp_path, capsys):
    """A user error raised in the first batch left a checkpoint that refused every later run
    with other arguments ("made with other arguments: num_samples=5000 there")."""
    assert explain("digits:3", *FAST, "--sampler", "marginal", "--samples", "5000",
                   "--out", tmp_path) == 2
    capsys.readouterr()
    assert explain("digits:3", *FAST, "--out", tmp_path) == 0
    assert (tmp_path / "digit3_lenet.npz").is_file()
    assert not (tmp_path / "digit3_lenet.ckpt.npz").exists()


def test_says_which_execution_provider_ran(tmp_path, capsys):
    assert explain("digits:2", *FAST, "--out", tmp_path) == 0
    assert "s on CPU; incremental inference" in capsys.readouterr().out  # --device cpu
    assert Explanation.load(tmp_path / "digit2_lenet.npz").metadata["provider"] == \
        "CPUExecutionProvider"


def test_pool_warnings_are_one_line_each(tmp_path, capsys):
    import skimage.io

    from preddiff.digits import load_digits

    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "broken.png").write_text("not an image")
    for i in range(4):
        skimage.io.imsave(pool / f"d{i}.png", (load_digits()[0][i, 0] * 255).astype(np.uint8),
                          check_contrast=False)
    conditional_only = ("--patches", "2000")  # warned with the marginal sampler (issue 11)
    assert explain("digits:9", *[a for a in FAST if a not in conditional_only],
                   "--sampler", "marginal", "--pool", pool, "--out", tmp_path / "out") == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("preddiff: warning: broken.png left out")


def test_image_conversions_are_noted(tmp_path, capsys):
    """Issue: grayscale or RGBA images are converted "with a note"; the command silenced every
    such warning. A gray file for the gray LeNet converts nothing and stays quiet."""
    import skimage.io

    rng = np.random.default_rng(4)
    gray, rgb = tmp_path / "gray.png", tmp_path / "rgb.png"
    skimage.io.imsave(gray, rng.integers(0, 255, (28, 28), dtype=np.uint8),
                      check_contrast=False)
    skimage.io.imsave(rgb, rng.integers(0, 255, (28, 28, 3), dtype=np.uint8),
                      check_contrast=False)
    assert explain(gray, *FAST, "--out", tmp_path / "a") == 0
    assert "note" not in capsys.readouterr().err
    assert explain(rgb, *FAST, "--out", tmp_path / "b") == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"preddiff: note: {rgb} is in colour: converted to gray for a grayscale "
                   "network"]
    model = free_size_onnx(tmp_path / "tiny.onnx")  # an RGB network
    assert explain(gray, "--model", model, "--input-size", "12x16", *FAST,
                   "--out", tmp_path / "c") == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"preddiff: note: {gray} is grayscale: replicated to three RGB channels",
                   f"preddiff: note: {gray}: resized 28x28 to 18x18 and took the centre "
                   "12x16 (--resize crop, torchvision's convention; --resize stretch keeps the "
                   "whole image)"]


# ----------------------------------------------------------------------------------------------
# exact incremental inference (issue 5): on by default when the cost model predicts a gain


def test_incremental_by_default_equals_no_incremental(tmp_path, capsys):
    """The default run uses exact incremental inference on a random-weight AlexNet ONNX file
    and says so; ``--no-incremental`` evaluates full images; the maps agree to float32
    rounding (≤ 1e-4 of the largest |value|, the exactness criterion of issue 5)."""
    import onnx

    from preddiff.caffe.writer import random_onnx
    from preddiff.resources import DATA_DIR

    model = tmp_path / "alex16.onnx"
    onnx.save(random_onnx("alexnet", factor=16, seed=1), str(model))
    image = sorted((DATA_DIR / "images").glob("*.jpg"))[1]
    common = [image, "--model", model, "--window", "10", "--stride", "43", "--samples", "2",
              "--patches", "500", "--no-progress", "--device", "cpu", "--threads", "1"]
    assert explain(*common, "--out", tmp_path / "inc") == 0
    out_inc = capsys.readouterr().out
    assert explain(*common, "--no-incremental", "--out", tmp_path / "full") == 0
    out_full = capsys.readouterr().out
    assert "incremental inference on" in out_inc
    assert "incremental inference off (--no-incremental)" in out_full
    name = f"{image.stem}_alex16.npz"
    inc = Explanation.load(tmp_path / "inc" / name).relevance["prob"]
    full = Explanation.load(tmp_path / "full" / name).relevance["prob"]
    scale = np.abs(full).max()
    assert scale > 0
    assert np.abs(inc - full).max() <= 1e-4 * scale


def test_incremental_off_when_measured_slower(tmp_path, capsys, monkeypatch):
    """When the windows timed through the incremental engine are slower than full images, the
    plain classifier is kept and the measured ratio printed; --incremental on forces it."""
    import preddiff.incremental_decision as decision

    monkeypatch.setenv("PREDDIFF_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(decision, "_measure_incremental", lambda *a, **k: {16: 1e-3})
    assert explain("digits:2", *FAST, "--out", tmp_path) == 0
    out = capsys.readouterr().out
    # never "0.0x": the printed ratio is true at its precision
    assert "incremental inference off: measured under 0.01x the speed of full images " \
        "(planned" in out
    assert explain("digits:2", *FAST, "--incremental", "on", "--out", tmp_path) == 0
    out = capsys.readouterr().out
    assert "incremental inference on (forced): measured under 0.01x" in out
    assert explain("digits:2", *FAST, "--incremental", "off", "--out", tmp_path) == 0
    assert "incremental inference off (--incremental off)" in capsys.readouterr().out


def test_incremental_decision_times_windows_on_the_run_stride(tmp_path, capsys, monkeypatch):
    import preddiff.incremental_decision as decision

    monkeypatch.setenv("PREDDIFF_HOME", str(tmp_path / "cache"))
    strides = []
    monkeypatch.setattr(decision, "_measure_incremental",
                        lambda *a, **k: strides.append(a[7]) or {16: 1e-3})
    args = list(FAST)
    args[args.index("--stride") + 1] = "2"
    assert explain("digits:2", *args, "--out", tmp_path) == 0
    assert strides and set(strides) == {2}


def fixed_batch_onnx(path):
    """A small conv net whose input declares batch size 1 and whose head reshapes to (1, -1),
    as many exported ONNX files do."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def tensor(name, shape, scale):
        return numpy_helper.from_array((rng.normal(size=shape) * scale).astype(np.float32),
                                       name)

    inits = [tensor("w1", (8, 3, 5, 5), 0.1), tensor("b1", (8,), 0.1),
             tensor("w2", (8, 8, 3, 3), 0.1), tensor("fc", (4, 8 * 16 * 16), 0.03),
             numpy_helper.from_array(np.array([1, -1], np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["data", "w1", "b1"], ["c1"], kernel_shape=[5, 5],
                              strides=[2, 2], pads=[2, 2, 2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2"], ["c2"], kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Reshape", ["r2", "shape"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc"], ["scores"], transB=1),
             helper.make_node("Softmax", ["scores"], ["prob"], axis=1)]
    graph = helper.make_graph(
        nodes, "fixed", [helper.make_tensor_value_info("data", TensorProto.FLOAT,
                                                       [1, 3, 64, 64])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_incremental_on_a_model_with_a_fixed_batch_size(tmp_path, capsys):
    """An ONNX file with a static batch size of 1 runs incrementally (forced: too small a net
    to gain on every machine) and gives the maps of --no-incremental (the incremental engine
    used to crash on it)."""
    from preddiff.resources import DATA_DIR

    model = fixed_batch_onnx(tmp_path / "fixed.onnx")
    image = sorted((DATA_DIR / "images").glob("*.jpg"))[0]
    common = [image, "--model", model, "--window", "10", "--stride", "9", "--samples", "2",
              "--patches", "500", "--no-progress", "--device", "cpu", "--threads", "1"]
    assert explain(*common, "--incremental", "on", "--out", tmp_path / "inc") == 0
    assert "incremental inference on" in capsys.readouterr().out
    assert explain(*common, "--no-incremental", "--out", tmp_path / "full") == 0
    capsys.readouterr()
    name = f"{image.stem}_fixed.npz"
    inc = Explanation.load(tmp_path / "inc" / name).relevance["prob"]
    full = Explanation.load(tmp_path / "full" / name).relevance["prob"]
    assert np.abs(full).max() > 0
    assert np.abs(inc - full).max() <= 1e-4 * np.abs(full).max()


def test_incremental_planning_failure_keeps_the_plain_classifier(tmp_path, capsys,
                                                                 monkeypatch):
    """A failure while planning incremental inference (here: onnxruntime refusing the graph)
    is not fatal: the run evaluates full images and says why."""
    import preddiff.incremental as inc

    def refuse(*args, **kwargs):
        raise RuntimeError("onnxruntime cannot load this graph")

    monkeypatch.setattr(inc.IncrementalClassifier, "report", refuse)
    monkeypatch.setattr(inc, "supported", lambda *args, **kwargs: (True, ""))
    assert explain("digits:2", *FAST, "--out", tmp_path) == 0
    out = capsys.readouterr().out
    assert "incremental inference off: it could not be planned (RuntimeError: onnxruntime " \
        "cannot load this graph)" in out


@pytest.mark.parametrize("sampler", ["conditional", "marginal"])
def test_compat_released_selects_the_released_behaviours(tmp_path, sampler):
    common = ["digits:3", *FAST, "--sampler", sampler]
    assert explain(*common, "--out", tmp_path / "intended") == 0
    assert explain(*common, "--compat", "released", "--out", tmp_path / "released") == 0
    intended = Explanation.load(tmp_path / "intended" / "digit3_lenet.npz")
    released = Explanation.load(tmp_path / "released" / "digit3_lenet.npz")
    rel = released.relevance["prob"]
    np.testing.assert_array_equal(rel, rel.astype(np.float16).astype(rel.dtype))  # float16
    if sampler == "marginal":
        assert released.sampler["order"] == "first" and intended.sampler["order"] == "random"
    else:
        # LeNet is gray: the shared colour conditionals change nothing; the fit does
        assert released.sampler["colour"] == "per-channel-released"
        assert released.sampler["num_patches"] == (int(20000 / 1796) + 1) * 1796
        assert intended.sampler["num_patches"] == 2000
    assert not np.array_equal(rel, intended.relevance["prob"])
    # the released regular grid: 28 - 4 = 24 is a multiple of FAST's stride 3, so the grids
    # agree here; a stride of 5 leaves the released run's last rows uncovered
    assert (released.edges, intended.edges) == ("drop", "cover")


def test_compat_released_keeps_the_regular_grid(tmp_path):
    common = ["digits:3", *FAST, "--sampler", "marginal", "--window", "6", "--stride", "5"]
    assert explain(*common, "--compat", "released", "--out", tmp_path / "released") == 0
    assert explain(*common, "--out", tmp_path / "intended") == 0
    released = Explanation.load(tmp_path / "released" / "digit3_lenet.npz")
    intended = Explanation.load(tmp_path / "intended" / "digit3_lenet.npz")
    assert released.counts[-2:].sum() == 0 and intended.counts.min() >= 1
