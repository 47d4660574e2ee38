"""Issue 11: nothing silently wrong, nothing lost — bad images, outputs, caches, concurrency.

Command-line cases run the real ``preddiff`` in a subprocess (``python -m preddiff``), as a
user would, and check the exit status and that stderr is one clear line (no traceback).
"""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from preddiff import Explanation
from test_explain_cli import free_size_onnx

FAST = ["--window", "4", "--stride", "3", "--samples", "3", "--patches", "2000",
        "--no-progress", "--device", "cpu", "--threads", "1"]
ONNX_FAST = ["--window", "4", "--stride", "4", "--samples", "2", "--no-progress",
             "--device", "cpu", "--threads", "1", "--no-incremental"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A PREDDIFF_HOME shared by the module's runs (LeNet converted once)."""
    return tmp_path_factory.mktemp("home")


def cli(*argv, home=None, env=None, timeout=300, **kwargs):
    """Run ``python -m preddiff ARGV``; returns the CompletedProcess (text stdout/stderr)."""
    environ = dict(os.environ, MPLBACKEND="Agg")
    if home is not None:
        environ["PREDDIFF_HOME"] = str(home)
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "preddiff", *map(str, argv)],
                          capture_output=True, text=True, env=environ, timeout=timeout,
                          **kwargs)


def explain(*argv, **kwargs):
    """``preddiff explain ARGV`` in a subprocess."""
    return cli("explain", *argv, **kwargs)


def one_error_line(proc, *fragments):
    """The run failed with one ``preddiff: error:`` line holding every fragment."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("preddiff: error: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def save(path, array, **kwargs):
    from PIL import Image

    Image.fromarray(array).save(path, **kwargs)
    return path


def colour_image(height=24, width=32):
    """Smooth colour bands: distinct R, G, B (so a channel mix-up shows), JPEG-friendly."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 3] = (220, 30, 30)
    image[:, width // 3 : 2 * width // 3] = (30, 200, 40)
    image[:, 2 * width // 3 :] = (40, 50, 210)
    return image


# ----------------------------------------------------------------------------------------------
# 1-3: silently wrong results


def test_1_cmyk_jpeg_is_converted_to_rgb(tmp_path, home):
    from PIL import Image

    rgb = colour_image()
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(path, quality=100)
    model = free_size_onnx(tmp_path / "tiny.onnx")
    proc = explain(path, "--model", model, "--input-size", "24x32", *ONNX_FAST, "--out", tmp_path,
               home=home)
    assert proc.returncode == 0, proc.stderr
    assert "is CMYK: converted to RGB" in proc.stderr and "alpha" not in proc.stderr
    x = Explanation.load(tmp_path / "cmyk_tiny.npz").x
    assert np.abs(x - rgb.transpose(2, 0, 1) / 255.0).max() < 0.08


@pytest.mark.parametrize("mode", ["LA", "P-transparent", "I;16"])
def test_1_other_pil_modes_are_read_as_what_they_show(tmp_path, mode):
    from PIL import Image

    from preddiff.preprocess import load_image

    gray = np.tile(np.arange(0, 240, 10, dtype=np.uint8), (20, 1))  # (20, 24)
    path = tmp_path / "img.png"
    if mode == "LA":
        image = Image.fromarray(np.dstack([gray, np.full_like(gray, 128)]), "LA")
        expected = np.dstack([gray] * 3)
    elif mode == "P-transparent":
        rgb = colour_image(20, 24)
        image = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
        image.info["transparency"] = 0
        expected = rgb
    else:
        image = Image.fromarray(gray.astype(np.uint16) * 257)
        assert image.mode.startswith("I;16")
        expected = np.dstack([gray] * 3)
    image.save(path)
    with pytest.warns(UserWarning):
        got = load_image(path)
    assert got.shape == expected.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - expected).max() <= 2


def test_2_exif_orientation_is_applied_and_noted(tmp_path, home):
    from PIL import Image

    upright = colour_image(24, 32)  # as the viewer shows it: 24 rows, 32 columns
    stored = np.rot90(upright, 1)  # the camera's sensor rows (32 × 24)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    path = tmp_path / "phone.jpg"
    Image.fromarray(np.ascontiguousarray(stored)).save(path, quality=100, subsampling=0,
                                                        exif=exif)
    model = free_size_onnx(tmp_path / "tiny.onnx")
    proc = explain(path, "--model", model, "--input-size", "24x32", *ONNX_FAST, "--out", tmp_path,
               home=home)
    assert proc.returncode == 0, proc.stderr
    assert "EXIF orientation 6" in proc.stderr
    x = Explanation.load(tmp_path / "phone_tiny.npz").x
    assert np.abs(x - upright.transpose(2, 0, 1) / 255.0).max() < 0.08


def test_3_negative_digit_index_is_an_error(tmp_path, home):
    proc = explain("digits:-1", *FAST, "--out", tmp_path, home=home)
    one_error_line(proc, "'digits:-1'", "0..1796")
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------
# 9, 12: what the image is; huge photos


@pytest.mark.parametrize("kind", ["directory", "device"])
def test_9_directory_or_device_as_image_says_what_it_is(tmp_path, home, kind):
    if kind == "device" and not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    target = tmp_path if kind == "directory" else "/dev/zero"
    proc = explain(target, *FAST, "--out", tmp_path / "out", home=home)
    one_error_line(proc, "a directory" if kind == "directory" else "a character device",
                   "not an image file")


def test_12_large_image_is_box_filtered_first_and_noted(tmp_path, home):
    rng = np.random.default_rng(5)
    big = np.repeat(np.repeat(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), 30, 0), 30, 1)
    path = save(tmp_path / "big.png", big)  # 1200 × 1200
    model = free_size_onnx(tmp_path / "tiny.onnx")
    proc = explain(path, "--model", model, "--input-size", "16x16", *ONNX_FAST,
               "--out", tmp_path, home=home)
    assert proc.returncode == 0, proc.stderr
    # --resize crop (default): resized to 16 / 0.875 = 18, so box-filtered to twice that
    assert "is 1200×1200: box-filtered to 36×36 before resizing to 18×18" \
        in proc.stderr


def test_12_staged_resize_matches_direct_resize():
    from skimage.transform import resize

    from preddiff.inputs import shrink

    yy, xx = np.mgrid[0:1100, 0:1000] / 1000.0
    smooth = np.dstack([np.sin(3 * yy), np.cos(2 * xx), yy * xx]) * 0.5 + 0.5
    image = np.round(smooth * 255).astype(np.uint8)
    direct = resize(image / 255.0, (20, 25), order=1, anti_aliasing=True)
    with pytest.warns(UserWarning, match="box-filtered to 40×50"):
        reduced = shrink(image, (20, 25))
    staged = resize(reduced / 255.0, (20, 25), order=1, anti_aliasing=True)
    # the filters differ (box + narrow Gaussian against one wide Gaussian): close, not equal
    assert np.abs(staged - direct).mean() < 0.01 and np.abs(staged - direct).max() < 0.06
    small = image[:500, :500]
    assert shrink(small, (20, 25)) is small  # ordinary images: unchanged


# ----------------------------------------------------------------------------------------------
# 4-7: lost or overwritten work


def test_4_same_stem_images_get_their_own_outputs(tmp_path, home):
    rng = np.random.default_rng(6)
    png = save(tmp_path / "ok.png", rng.integers(0, 255, (28, 28), dtype=np.uint8))
    jpg = save(tmp_path / "ok.jpg", rng.integers(0, 255, (28, 28), dtype=np.uint8))
    out = tmp_path / "out"
    proc = explain(png, jpg, *FAST, "--out", out, home=home)
    assert proc.returncode == 0, proc.stderr
    assert "ok-png_lenet.npz" in proc.stderr and "ok-jpg_lenet.npz" in proc.stderr
    a, b = (Explanation.load(out / f"ok-{ext}_lenet.npz") for ext in ("png", "jpg"))
    assert a.metadata["image"] == str(png) and b.metadata["image"] == str(jpg)
    assert not np.array_equal(a.x, b.x)
    assert not (out / "ok_lenet.npz").exists()


def test_5_one_bad_image_stops_nothing_half_way(tmp_path, home):
    zero = tmp_path / "zero.jpg"
    zero.write_bytes(b"")
    missing = tmp_path / "missing.png"
    out = tmp_path / "out"
    proc = explain("digits:1", zero, "digits:2", missing, *FAST, "--out", out, home=home)
    one_error_line(proc, "2 of 4 images cannot be explained (nothing was computed)",
                   f"{str(zero)!r} is empty", f"{str(missing)!r} does not exist")
    assert not list(out.glob("*.npz"))  # was: digit1 explained, then the run stopped
    proc = explain("digits:1", "digits:2", *FAST, "--out", out, home=home)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "digit1_lenet.npz", "digit1_lenet.png", "digit2_lenet.npz", "digit2_lenet.png"]


def test_6_concurrent_run_into_the_same_output_is_refused(tmp_path, home):
    from preddiff.lock import OutputLock

    out = tmp_path / "out"
    out.mkdir()
    held = OutputLock(out / "digit4_lenet").acquire()  # a run (this process) computing it
    try:
        proc = explain("digits:3", "digits:4", *FAST, "--out", out, home=home)
        one_error_line(proc, f"{out / 'digit4_lenet'}.npz is being computed by another "
                       f"preddiff run (pid {os.getpid()} on ")
        assert sorted(p.name for p in out.iterdir()) == [".digit4_lenet.lock"]
    finally:
        held.release()
    proc = explain("digits:4", *FAST, "--out", out, home=home, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["digit4_lenet.npz", "digit4_lenet.png"]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_7_unwritable_out_is_refused_before_computing(tmp_path, home):
    # /proc/self is a folder that nobody, not even root, can create files in
    proc = explain("digits:1", *FAST, "--no-checkpoint", "--samples", "30", "--stride", "1",
                   "--out", "/proc/self", home=home)
    one_error_line(proc, "--out '/proc/self' is not writable", "nothing was computed")
    assert "wrote" not in proc.stdout


def test_7_output_path_that_is_a_folder_is_refused_first(tmp_path, home):
    out = tmp_path / "out"
    (out / "digit1_lenet.png").mkdir(parents=True)
    proc = explain("digits:1", *FAST, "--out", out, home=home)
    one_error_line(proc, f"output {str(out / 'digit1_lenet.png')!r} is a folder")
    assert not (out / "digit1_lenet.npz").exists()


# ----------------------------------------------------------------------------------------------
# 8, 14: preddiff evaluate

EVALUATE_FAST = ["--digits", "2", "--fill", "mean", "--no-randomisation", "--stride", "4",
                 "--samples", "2", "--draws", "1", "--no-progress"]


def test_8_damaged_evaluate_progress_is_recomputed(tmp_path, home):
    out = tmp_path / "ev"
    fresh = cli("evaluate", *EVALUATE_FAST, "--out", tmp_path / "fresh", home=home)
    assert fresh.returncode == 0, fresh.stderr
    progress = out / "evaluation-progress"
    progress.mkdir(parents=True)
    (progress / "digit0.npz").write_bytes(b"PK\x03\x04 truncated")
    np.savez(progress / "digit1.npz", a=np.zeros(3))
    (progress / "digit1.npz").write_bytes((progress / "digit1.npz").read_bytes()[:60])
    proc = cli("evaluate", *EVALUATE_FAST, "--out", out, home=home)
    assert proc.returncode == 0, proc.stderr  # was: zipfile.BadZipFile on every rerun
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2 and all("is damaged" in w for w in warnings), proc.stderr
    assert "Traceback" not in proc.stderr
    with np.load(out / "evaluation.npz") as got, \
            np.load(tmp_path / "fresh" / "evaluation.npz") as want:
        assert sorted(got.files) == sorted(want.files)
        for key in want.files:
            assert np.array_equal(got[key], want[key], equal_nan=True), key


def test_14_evaluate_negative_seed_is_one_line(tmp_path, home):
    proc = cli("evaluate", *EVALUATE_FAST, "--seed", "-1", "--out", tmp_path, home=home)
    one_error_line(proc, "--seed must be a non-negative integer, got -1")


# ----------------------------------------------------------------------------------------------
# 10, 11, 18a: ONNX files


def test_10_zero_byte_onnx_is_named_empty(tmp_path, home):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    proc = explain("digits:1", *FAST, "--model", empty, "--out", tmp_path, home=home)
    one_error_line(proc, f"ONNX model file {str(empty)!r} is empty (0 bytes): not an ONNX model")


def test_10_protobuf_without_graph_is_not_an_onnx_model(tmp_path, home):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07")  # a valid protobuf: ir_version = 7, nothing else
    proc = explain("digits:1", *FAST, "--model", junk, "--out", tmp_path, home=home)
    one_error_line(proc, f"{str(junk)!r} is not an ONNX model: it holds no graph")


def test_11_input_size_too_large_for_memory_is_refused(tmp_path, home):
    model = free_size_onnx(tmp_path / "tiny.onnx")
    proc = explain("digits:1", *ONNX_FAST, "--model", model, "--input-size", "100000x100000",
                   "--out", tmp_path, home=home)
    one_error_line(proc, "--input-size 100000x100000: a batch of 256 images of "
                   "3x100000x100000 float32 needs at least 28,833.7 GiB", "GiB is available")


def test_18_messages_name_the_model_file_not_modelproto(tmp_path, home):
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(free_size_onnx(tmp_path / "tiny.onnx")))
    model.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1]))
    path = tmp_path / "two_inputs.onnx"
    onnx.save(model, str(path))
    proc = explain("digits:1", *ONNX_FAST, "--model", path, "--input-size", "8x8",
                   "--out", tmp_path, home=home)
    one_error_line(proc, f"{path} has 2 graph inputs (data, extra)")
    assert "<ModelProto>" not in proc.stderr


# ----------------------------------------------------------------------------------------------
# 15, 16: the cache


@pytest.mark.parametrize("kind", ["file", "unwritable"])
def test_15_unusable_preddiff_home_still_runs_lenet(tmp_path, kind):
    if kind == "file":
        home = tmp_path / "home-is-a-file"
        home.write_text("")
        why = f"PREDDIFF_HOME={home} (not a folder: {home} is a file)"
    else:
        if not os.path.isdir("/proc/self"):
            pytest.skip("needs Linux /proc")
        home = "/proc/self/preddiff"  # cannot be created, not even by root
        why = "PREDDIFF_HOME=/proc/self/preddiff (not writable)"
    proc = explain("digits:1", *FAST, "--out", tmp_path / "out", home=home)
    assert proc.returncode == 0, proc.stderr  # was: [Errno 20] / [Errno 2], no result
    assert f"{why} cannot hold the converted lenet model" in proc.stderr
    assert "using a temporary copy at " in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "out" / "digit1_lenet.npz").is_file()


def test_15_fetch_names_preddiff_home(tmp_path):
    home = tmp_path / "home-is-a-file"
    home.write_text("")
    source = tmp_path / "weights.caffemodel"
    source.write_bytes(b"x")
    proc = cli("models", "fetch", "alexnet", "--url", source.as_uri(), home=home)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"PREDDIFF_HOME={home} (not a folder: {home} is a file) cannot hold it" \
        in proc.stderr, proc.stderr


def test_16_truncated_cached_onnx_is_converted_again(tmp_path):
    home = tmp_path / "home"
    out = tmp_path / "out"
    assert explain("digits:1", *FAST, "--out", out, home=home).returncode == 0
    cached = home / "onnx" / "lenet.onnx"
    whole = cached.read_bytes()
    cached.write_bytes(whole[: len(whole) // 2])  # the sidecar is intact
    proc = explain("digits:2", *FAST, "--out", out, home=home)
    assert proc.returncode == 0, proc.stderr  # was: "cannot read ... as an ONNX model"
    assert cached.read_bytes() == whole


# ----------------------------------------------------------------------------------------------
# 17: library API misuse


def _api_call(classifier, x=None, **kwargs):
    from preddiff import prediction_difference
    from preddiff.samplers import MarginalSampler

    x = np.random.default_rng(3).random((1, 6, 6)).astype(np.float32) if x is None else x
    pool = np.random.default_rng(4).random((5, 1, 6, 6)).astype(np.float32)
    return prediction_difference(x, classifier, MarginalSampler(pool), window=2, stride=2,
                                 num_samples=2, blobs=("prob",), rng=0, progress=False,
                                 **kwargs)


def _softmax_classifier(units=lambda n: 3):
    calls = []

    def classifier(batch):
        calls.append(len(batch))
        k = units(len(calls))
        scores = batch.reshape(len(batch), -1)[:, :k] * np.arange(1, k + 1)
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        return {"prob": e / e.sum(axis=1, keepdims=True)}
    return classifier


def test_17_classifier_none_is_named():
    from preddiff.errors import PredDiffError

    with pytest.raises(PredDiffError, match="classifier must be a callable .* got None"):
        _api_call(None)


def test_17_classifier_whose_units_change_is_named():
    from preddiff.errors import PredDiffError

    changing = _softmax_classifier(units=lambda call: 3 if call == 1 else 2)
    with pytest.raises(PredDiffError, match=r"blob 'prob' with shape \(2,\) per image in batch "
                       r"0 .* but \(3,\) on the unperturbed image"):
        _api_call(changing)


@pytest.mark.parametrize("value,message", [
    (lambda n: np.float32(0.5), r"blob 'prob' with shape \(\) for a batch of 1 image"),
    (lambda n: "prob", r"blob 'prob' as str on the unperturbed image"),
    (lambda n: np.array(["a"] * n), r"blob 'prob' as ndarray of dtype <U1"),
])
def test_17_zero_d_or_string_outputs_are_named(value, message):
    from preddiff.errors import PredDiffError

    with pytest.raises(PredDiffError, match=message):
        _api_call(lambda batch: {"prob": value(len(batch))})


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, bool])
def test_17_integer_or_bool_images_are_refused(dtype):
    from preddiff.errors import PredDiffError

    x = (np.random.default_rng(3).random((1, 6, 6)) * 255).astype(dtype)
    with pytest.raises(PredDiffError, match=f"x has dtype {np.dtype(dtype)}"):
        _api_call(_softmax_classifier(), x=x)
    assert _api_call(_softmax_classifier()).relevance["prob"].shape == (3, 6, 6)


# ----------------------------------------------------------------------------------------------
# 13: Ctrl-C


def _wait_for(path, text, process, timeout=600):
    """Wait until ``path`` (a growing log) contains ``text`` (a string, or a compiled regular
    expression); fail if ``process`` ended. ``timeout`` is a deadline against a hang, generous
    enough for a loaded machine: nothing depends on how soon the text appears."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            found = path.read_text(errors="replace")
            if (text.search(found) if hasattr(text, "search") else text in found):
                return
        assert process.poll() is None, path.read_text(errors="replace")
        time.sleep(0.05)
    pytest.fail(f"{text!r} did not appear in {path}")


#: A progress bar that shows at least one finished window ("  3/625 [").
FINISHED_WINDOW = re.compile(r"\b[1-9][0-9]*/[0-9]+ \[")


def _default_sigint():
    """``preexec_fn`` of a child that must be stoppable with SIGINT: a test run in the
    background of a non-interactive shell inherits SIGINT ignored, and Python keeps it so."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_13_double_ctrl_c_is_one_line_and_keeps_the_checkpoint(tmp_path, home):
    out = tmp_path / "out"
    log = tmp_path / "stderr.txt"
    argv = [sys.executable, "-m", "preddiff", "explain", "digits:3", "--window", "4",
            "--stride", "1", "--samples", "400", "--patches", "2000", "--no-incremental",
            "--batch-size", "400", "--device", "cpu", "--threads", "1", "--out", str(out)]
    environ = dict(os.environ, MPLBACKEND="Agg", PREDDIFF_HOME=str(home))
    with open(log, "w") as err:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=environ,
                                   preexec_fn=_default_sigint)
        _wait_for(log, FINISHED_WINDOW, process)  # windows are being computed
        deadline = time.monotonic() + 600
        while process.poll() is None and time.monotonic() < deadline:
            # Ctrl-C, then again and again while it stops (one that lands while the
            # checkpoint is written is ignored on purpose: keep pressing until it ends)
            process.send_signal(signal.SIGINT)
            time.sleep(0.01)
        code = process.wait(timeout=600)
    lines = [line for line in log.read_text().replace("\r", "\n").splitlines()
             if line.strip() and "prediction difference" not in line]
    assert code == 130 and lines == ["preddiff: interrupted"], (code, lines)
    with np.load(out / "digit3_lenet.ckpt.npz") as checkpoint:  # the finished windows kept
        assert checkpoint.files


@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
def test_13_run_all_ctrl_c_is_one_line(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.access(os.path.join(root, ".venv", "bin", "python"), os.X_OK):
        pytest.skip("run_all.sh needs the checkout's .venv")
    log, out = tmp_path / "stderr.txt", tmp_path / "stdout.txt"
    with open(log, "w") as err, open(out, "w") as stdout:
        process = subprocess.Popen(["./run_all.sh", "--smoke", "--figures", "fig1"], cwd=root,
                                   stdout=stdout, stderr=err, start_new_session=True,
                                   preexec_fn=_default_sigint)
        _wait_for(out, "== fig1", process)
        # usually past the figure script's imports, inside its computation (~25 s); landing
        # earlier, during its imports, must give the same one line (reproduce.launch)
        time.sleep(6)
        for _ in range(3):  # Ctrl-C at a terminal signals the whole process group
            os.killpg(process.pid, signal.SIGINT)
            time.sleep(0.05)
        code = process.wait(timeout=600)
    text = log.read_text()
    assert code == 130, (code, text)
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert text.count("interrupted") == 1 and text.strip().endswith("run_all.sh: interrupted")


def test_13_ctrl_c_while_a_script_is_still_importing_is_one_line(tmp_path):
    """run_all.sh starts every script through reproduce.launch: a Ctrl-C that lands while the
    script is still importing (before its own handler exists) is one line, exit status 130."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), root]))
    (tmp_path / "slow_import.py").write_text(  # "imports" until interrupted
        "import sys, time\nprint('importing', flush=True)\ntime.sleep(3600)\n")
    process = subprocess.Popen([sys.executable, "-m", "reproduce.launch", "slow_import"],
                               cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True, preexec_fn=_default_sigint)
    try:
        assert process.stdout.readline().strip() == "importing"
        for _ in range(3):  # pressed more than once, as people do
            os.killpg(process.pid, signal.SIGINT)
            time.sleep(0.05)
        _, err = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130
    assert err == "slow_import: interrupted\n"
    ok = subprocess.run([sys.executable, "-m", "reproduce.launch", "reproduce.check",
                         "--help"], cwd=root, env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and "reproduce.check" in ok.stdout  # arguments pass through


def test_13_ctrl_c_inside_an_extension_module_import_is_one_line(tmp_path):
    """A Ctrl-C that lands while a compiled module initialises (SciPy's HiGHS wrapper, seen on
    CI) surfaces as ``ImportError: initialization failed`` caused by the KeyboardInterrupt:
    the launcher and the scripts' own handler treat it as the interrupt, one line, status 130."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), root]))
    body = ("def load():\n    try:\n        raise KeyboardInterrupt\n"
            "    except KeyboardInterrupt as exc:\n"
            "        raise ImportError('initialization failed') from exc\n")
    (tmp_path / "broken_import.py").write_text(body + "load()\n")
    (tmp_path / "broken_main.py").write_text(  # inside reproduce.common.run_main's handler
        body + "from reproduce import common\n"
        "def main():\n    load()\n    return 0\n"
        "common.run_main(main, 'broken_main')\n")
    for module in ("broken_import", "broken_main"):
        done = subprocess.run([sys.executable, "-m", "reproduce.launch", module], cwd=root,
                              env=env, capture_output=True, text=True, timeout=600)
        assert (done.returncode, done.stderr) == (130, f"{module}: interrupted\n"), done.stderr
    (tmp_path / "other_import.py").write_text("raise ImportError('no such thing')\n")
    done = subprocess.run([sys.executable, "-m", "reproduce.launch", "other_import"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and "ImportError: no such thing" in done.stderr  # not hidden


def test_13_interrupted_follows_the_cause_chain():
    from preddiff.errors import interrupted
    from reproduce.launch import interrupted as launcher_interrupted

    def chained():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            try:
                raise ImportError("initialization failed") from exc
            except ImportError as inner:
                return inner
    for test in (interrupted, launcher_interrupted):
        assert test(KeyboardInterrupt()) and test(chained())
        assert not test(ImportError("x")) and not test(ValueError()) and not test(None)


# ----------------------------------------------------------------------------------------------
# 18, 19: misleading or missing words


def test_18_bench_json_folder_is_refused_before_the_benchmark(tmp_path):
    fresh = tmp_path / "home"  # a model cache the benchmark would fill (LeNet converted)
    fresh.mkdir()
    proc = cli("bench", "--models", "lenet", "--quick", "--device", "cpu", "--json", tmp_path,
               home=fresh)
    one_error_line(proc, f"--json {str(tmp_path)!r} is a folder; give a file name")
    assert not proc.stdout and not any(fresh.rglob("*.onnx")), "the benchmark started"


def test_18_resumed_run_without_progress_bar_says_so(tmp_path, home):
    out = tmp_path / "out"
    log = tmp_path / "stderr.txt"
    argv = ["digits:3", "--window", "4", "--stride", "2", "--samples", "150", "--patches",
            "2000", "--no-incremental", "--batch-size", "150", "--device", "cpu",
            "--threads", "1", "--out", str(out)]
    environ = dict(os.environ, MPLBACKEND="Agg", PREDDIFF_HOME=str(home))
    with open(log, "w") as err:
        process = subprocess.Popen([sys.executable, "-m", "preddiff", "explain", *argv],
                                   stdout=subprocess.DEVNULL, stderr=err, env=environ,
                                   preexec_fn=_default_sigint)
        _wait_for(log, FINISHED_WINDOW, process)  # a window is done: there is work to resume
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=600) == 130
    checkpoint = out / "digit3_lenet.ckpt.npz"
    assert checkpoint.is_file()
    proc = explain(*argv, "--no-progress", home=home)
    assert proc.returncode == 0, proc.stderr
    assert f"preddiff: note: resumed from {checkpoint}: the windows finished by the earlier " \
        "run were not computed again" in proc.stderr
    timing = proc.stdout.splitlines()[1]
    assert " s this run, resumed (over all runs: prediction difference " in timing, timing
    e = Explanation.load(out / "digit3_lenet.npz")
    assert f"classifier {e.timings['classifier']:.1f} s on " in timing


@pytest.mark.parametrize("argv,message", [
    (["--sampler", "marginal", "--colour", "joint"],
     "preddiff: warning: --colour applies to the conditional sampler only: ignored with "
     "--sampler marginal"),
    (["--sampler", "marginal", "--padding", "3"],
     "preddiff: warning: --padding applies to the conditional sampler only: ignored with "
     "--sampler marginal"),
    (["--order", "first"],
     "preddiff: warning: --order applies to the marginal sampler only: ignored with "
     "--sampler conditional"),
])
def test_19_sampler_options_without_effect_are_warned(tmp_path, home, argv, message):
    fast = [a for a in FAST if a not in ("--patches", "2000")]
    # --incremental off: stderr holds only the warning, whatever ran before in this home
    # (otherwise an uncached --incremental auto decision adds its notes)
    proc = explain("digits:1", *fast, *argv, "--incremental", "off", "--out", tmp_path,
                   home=home)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == message


def test_19_policy_with_an_onnx_model_is_an_error(tmp_path, home):
    model = free_size_onnx(tmp_path / "tiny.onnx")
    image = save(tmp_path / "img.png", colour_image())
    proc = explain(image, "--model", model, "--input-size", "8x8", "--policy", "resize",
                   *ONNX_FAST, "--out", tmp_path, home=home)
    one_error_line(proc, "--policy applies to the zoo nets (alexnet, googlenet, vgg16, lenet) "
                   f"only; images for {model} are fitted to its input size with --resize "
                   "crop|stretch")
