"""Issue 19: the surface added by issues 12-18 under bad input and faults.

Each test is one numbered point of the issue. Command-line cases run the real ``preddiff`` in
a subprocess and check that the run fails before computing with one ``preddiff: error:`` line
(no traceback), or handles the case and says so. Nothing here waits on wall-clock time: the
subprocess timeouts are generous deadlines against hangs, never part of a result.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

from preddiff import Explanation, prediction_difference
from preddiff.errors import CheckpointMismatch, InvalidArgument, PredDiffError
from preddiff.samplers import ConditionalGaussianSampler, MarginalSampler
from test_explain_cli import free_size_onnx
from test_reliability import ONNX_FAST, cli, explain, one_error_line

FAST = ["--window", "4", "--stride", "4", "--samples", "2", "--patches", "2000",
        "--no-progress", "--device", "cpu", "--threads", "1", "--no-incremental"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A PREDDIFF_HOME shared by the module's runs (LeNet converted once)."""
    return tmp_path_factory.mktemp("home")


def onnx_model(path, *, input_type="FLOAT", shape=("N", 3, 8, 8), output="softmax",
               classes=4):
    """A tiny classifier with the given input type and layout; ``output="sum"``: one value
    per image, shape (N,)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).normal(size=(classes, 3)).astype(np.float32) * 3
    nodes, source = [], "data"
    if input_type != "FLOAT":
        nodes.append(helper.make_node("Cast", ["data"], ["as_float"], to=TensorProto.FLOAT))
        source = "as_float"
    if shape[-1] == 3:  # channels-last
        nodes.append(helper.make_node("Transpose", [source], ["nchw"], perm=[0, 3, 1, 2]))
        source = "nchw"
    nodes += [helper.make_node("GlobalAveragePool", [source], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
              helper.make_node("Gemm", ["flat", "w"], ["scores"], transB=1)]
    if output == "sum":
        nodes.append(helper.make_node("ReduceSum", ["scores"], ["out"], keepdims=0,
                                      axes=[1]))
        out_shape = ["N"]
    else:
        nodes.append(helper.make_node("Softmax", ["scores"], ["out"], axis=1))
        out_shape = ["N", classes]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("data", getattr(TensorProto, input_type),
                                                      list(shape))],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def image(path, shape=(8, 8, 3), seed=1):
    from PIL import Image

    Image.fromarray(np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)) \
        .save(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------------
# 1: a model with one value per image


def test_01_output_without_a_class_axis_is_refused_before_computing(tmp_path, home):
    model = onnx_model(tmp_path / "one.onnx", output="sum")
    out = tmp_path / "out"
    proc = explain(image(tmp_path / "img.png"), "--model", model, *ONNX_FAST, "--out", out,
                   home=home)
    one_error_line(proc, "blob 'out' of one has shape (1,) for one image",
                   "without a class axis", "--blob")
    assert not list(out.glob("*.npz")), "something was computed (a checkpoint kept)"


# ----------------------------------------------------------------------------------------------
# 3, 4, 9, 18: schedulers that are not there, not Dask, without workers, or lost


@pytest.mark.parametrize("address,message", [
    ("inproc://x", "inproc:// addresses name a scheduler inside one process"),
    ("tcp://127.0.0.1:99999", "port 99999 is out of range (1-65535)"),
    ("tcp://127.0.0.1", "no port"),
])
def test_18_bad_scheduler_addresses_are_refused_before_any_work(tmp_path, home, address,
                                                                 message):
    proc = explain("digits:1", *FAST, "--scheduler", address, "--out", tmp_path, home=home)
    one_error_line(proc, f"--scheduler {address!r}: {message}")


def test_18_a_refused_connection_is_called_refused(tmp_path, home):
    proc = explain("digits:1", *FAST, "--scheduler", f"tcp://127.0.0.1:{free_port()}",
                   "--out", tmp_path, home=home)
    one_error_line(proc, "the connection was refused")


def test_04_an_http_server_is_not_taken_for_a_scheduler(tmp_path, home):
    from http.server import HTTPServer, SimpleHTTPRequestHandler

    server = HTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        proc = explain("digits:1", *FAST, "--scheduler",
                       f"tcp://127.0.0.1:{server.server_address[1]}", "--out", tmp_path,
                       home=home, env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s"})
    finally:
        server.shutdown()
        server.server_close()
    one_error_line(proc, "is not a Dask scheduler", "HTTP server")


@pytest.fixture
def scheduler(tmp_path):
    """A ``dask scheduler`` process without workers: its address (killed afterwards)."""
    port = free_port()
    log = open(tmp_path / "scheduler.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", str(port), "--dashboard-address", "127.0.0.1:0"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"tcp://127.0.0.1:{port}"
    try:
        _wait_until_listening(port, process, tmp_path / "scheduler.log")
        yield address, process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()


def _wait_until_listening(port, process, log, deadline=300.0):
    import time

    end = time.monotonic() + deadline
    while time.monotonic() < end:
        assert process.poll() is None, log.read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"no scheduler listening on port {port}: {log.read_text()}")


def test_03_a_scheduler_without_workers_is_one_line_not_a_wait(tmp_path, home, scheduler):
    address, _ = scheduler
    proc = explain("digits:1", *FAST, "--scheduler", address, "--out", tmp_path, home=home,
                   env={"PREDDIFF_NO_WORKERS_TIMEOUT": "2"})
    one_error_line(proc, f"the Dask scheduler {address} has no workers (waited 2 s)",
                   "dask worker")


def _analyses(n=1, pool_size=50):
    from preddiff import zoo
    from preddiff.cluster import Analysis, ClassifierRecipe
    from preddiff.digits import load_digits

    images, _ = load_digits()
    recipe = ClassifierRecipe.for_file(zoo.ensure_onnx("lenet"), ["prob"], 64, device="cpu",
                                       threads=1)
    kwargs = dict(window=4, stride=1, num_samples=4, blobs=("prob",), batch_size=64, rng=7)
    return [Analysis(f"digit{i}", images[i], recipe, MarginalSampler(images[200:200 + pool_size]),
                     kwargs) for i in range(n)]


def test_03_workers_that_all_died_end_the_run_with_one_error(monkeypatch, home):
    """The watchdog: a cluster whose workers are gone (here: scaled to none before the run)
    stops the run after PREDDIFF_NO_WORKERS_TIMEOUT seconds instead of waiting forever."""
    import logging

    distributed = pytest.importorskip("distributed")
    from preddiff import cluster

    monkeypatch.setenv("PREDDIFF_HOME", str(home))
    monkeypatch.setenv(cluster.NO_WORKERS_VARIABLE, "1")
    analyses = _analyses()
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  silence_logs=logging.CRITICAL) as lc, \
            distributed.Client(lc) as client:
        lc.scale(0)
        for _ in range(3000):  # the client's view catches up (a deadline, not a timing)
            if not client.scheduler_info()["workers"]:
                break
            threading.Event().wait(0.1)
        assert not client.scheduler_info()["workers"]
        with pytest.raises(cluster.ClusterUnavailable, match="has had no workers for 1 s"):
            cluster.explain_all(client, analyses, progress=False)


def test_09_a_lost_scheduler_is_one_line_saying_rerun_to_resume(tmp_path, home, monkeypatch,
                                                                scheduler):
    pytest.importorskip("distributed")
    from preddiff import cluster

    address, process = scheduler
    monkeypatch.setenv("PREDDIFF_HOME", str(home))
    worker = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
         "--no-nanny"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        analyses = _analyses()
        analyses[0].checkpoint = tmp_path / "digit0.ckpt.npz"

        def kill_the_scheduler(name, start, stop):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

        with cluster.connect(scheduler=address) as client:
            with pytest.raises(cluster.ClusterUnavailable,
                               match="lost the connection to the Dask scheduler .* rerun"):
                cluster.explain_all(client, analyses, progress=False, block_windows=8,
                                    on_block=kill_the_scheduler)
        assert analyses[0].checkpoint.is_file()  # the finished blocks are kept
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


# ----------------------------------------------------------------------------------------------
# 6, 10, 13: local clusters


def test_06_more_workers_than_the_machine_holds_are_refused(tmp_path, home):
    from preddiff.cluster import max_local_workers

    proc = explain("digits:1", *FAST, "--workers", max_local_workers() + 1, "--out", tmp_path,
                   home=home)
    one_error_line(proc, f"--workers {max_local_workers() + 1}: this machine runs at most "
                   f"{max_local_workers()} local workers")
    proc = cli("evaluate", "--digits", "1", "--workers", 100000, "--out", tmp_path / "ev",
               home=home)
    one_error_line(proc, "--workers 100000: this machine runs at most")


def _die(context, item):
    os._exit(1)


def test_10_evaluate_with_workers_that_keep_dying_is_one_error(home, monkeypatch):
    import logging

    import dask

    distributed = pytest.importorskip("distributed")
    from preddiff import cluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                     host="127.0.0.1", dashboard_address=None,
                                     silence_logs=logging.CRITICAL) as lc, \
            distributed.Client(lc) as client:
        with pytest.raises(cluster.ClusterUnavailable,
                           match="digit3: the workers computing it died repeatedly"):
            cluster.map_images(client, _die, None, [3], ["digit3"], progress=False)


def test_13_dask_logs_stay_off_stderr(home, monkeypatch, capfd):
    """A block that fails on a worker (here: the model file differs there) is preddiff's one
    error; the worker's "Compute Failed" traceback and the scheduler's lines are not shown."""
    from preddiff import cluster

    monkeypatch.setenv("PREDDIFF_HOME", str(home))
    analyses = _analyses()
    bad = cluster.ClassifierRecipe(analyses[0].recipe.path, "0" * 40, ("prob",), 64,
                                   device="cpu", threads=1)
    analyses[0].recipe = bad
    analyses[0].classifier = cluster.ClassifierRecipe(
        bad.path, cluster._file_sha1(bad.path), ("prob",), 64, device="cpu").build()
    capfd.readouterr()
    with cluster.connect(workers=1) as client:
        with pytest.raises(PredDiffError, match="has sha1"):
            cluster.explain_all(client, analyses, progress=False)
    err = capfd.readouterr().err
    for noise in ("Traceback", "Compute Failed", "marked as failed", "ERROR", "Couldn't"):
        assert noise not in err, err


# ----------------------------------------------------------------------------------------------
# 5: evaluate's curve step


def test_05_a_step_below_one_pixel_is_refused(tmp_path, home):
    proc = cli("evaluate", "--digits", "1", "--fill", "mean", "--no-randomisation", "--step",
               "0.001", "--no-progress", "--out", tmp_path, home=home)
    one_error_line(proc, "--step 0.001 is less than one pixel of the 784 of a digit",
                   "at least 1/784 = 0.00127551")
    from preddiff.evaluate import step_fractions

    with pytest.raises(InvalidArgument, match="less than a quarter of a pixel of the 784: a "
                       "curve would have 1,000,000,000 steps"):
        step_fractions(784, 1e-9)
    assert len(step_fractions(784, 1 / 784)[0]) == 785  # one pixel a step is allowed
    assert len(step_fractions(16, 0.05)[0]) == 21  # the API keeps small images' curves


# ----------------------------------------------------------------------------------------------
# 7, 8: large requests


def test_07_the_figure_shows_at_most_twenty_classes(tmp_path, home):
    model = free_size_onnx(tmp_path / "many.onnx", classes=30, size=(8, 8), scale=3.0)
    out = tmp_path / "out"
    proc = explain(image(tmp_path / "img.png"), "--model", model, *ONNX_FAST, "--top", "30",
                   "--out", out, home=home)
    assert proc.returncode == 0, proc.stderr
    assert "note: the figure shows the first 20 of the 30 classes asked for" in proc.stderr
    assert len(Explanation.load(out / "img_many.npz").units["out"]) == 30


def test_08_the_memory_guard_counts_the_samples_of_a_window(tmp_path, home):
    model = onnx_model(tmp_path / "fixed.onnx", shape=("N", 3, 64, 64))  # no --input-size
    proc = explain(image(tmp_path / "img.png"), "--model", model, "--samples", "100000000",
                   "--no-incremental", "--no-progress", "--device", "cpu", "--out", tmp_path,
                   home=home)
    one_error_line(proc, "a batch of 100000000 images of 3x64x64 float32 (the samples of one "
                   "window, --samples) needs at least 4,577.6 GiB of memory",
                   "give a smaller --samples")


# ----------------------------------------------------------------------------------------------
# 11, 20: model inputs


def test_11_integer_model_inputs_are_refused_naming_the_type(tmp_path, home):
    from preddiff.classifier import OnnxClassifier

    model = onnx_model(tmp_path / "bytes.onnx", input_type="UINT8")
    with pytest.raises(InvalidArgument, match="input 'data' has type uint8"):
        OnnxClassifier(model, device="cpu")
    proc = explain(image(tmp_path / "img.png"), "--model", model, *ONNX_FAST, "--out",
                   tmp_path, home=home)
    one_error_line(proc, "input 'data' has type uint8", "float32 input")


def test_11_float64_model_inputs_are_cast(tmp_path, home):
    from preddiff.classifier import OnnxClassifier

    single = OnnxClassifier(onnx_model(tmp_path / "f32.onnx"), device="cpu")
    double = OnnxClassifier(onnx_model(tmp_path / "f64.onnx", input_type="DOUBLE"),
                            device="cpu")
    batch = np.random.default_rng(0).random((5, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(double(batch)["out"], single(batch)["out"], rtol=1e-6)
    proc = explain(image(tmp_path / "img.png"), "--model", tmp_path / "f64.onnx", *FAST[:-1],
                   "--out", tmp_path, home=home)
    assert proc.returncode == 0, proc.stderr
    assert "incremental inference off: the model's input is float64" in proc.stdout


def test_20_a_channels_last_model_is_named_as_such(tmp_path, home):
    model = onnx_model(tmp_path / "nhwc.onnx", shape=("N", 32, 32, 3))
    proc = explain(image(tmp_path / "img.png"), "--model", model, *ONNX_FAST, "--out",
                   tmp_path, home=home)
    one_error_line(proc, "input 'data' has shape (N, 32, 32, 3)", "channels-last",
                   "(N, C, H, W)")


# ----------------------------------------------------------------------------------------------
# 12: a broken onnxruntime


@pytest.fixture
def broken_onnxruntime(tmp_path):
    package = tmp_path / "broken" / "onnxruntime"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "raise ImportError('libonnxruntime.so.1: cannot open shared object file')\n")
    return {"PYTHONPATH": os.pathsep.join([str(package.parent), os.environ.get("PYTHONPATH",
                                                                              "")])}


def test_12_doctor_reports_an_onnxruntime_that_does_not_import(broken_onnxruntime, home):
    proc = cli("doctor", home=home, env=broken_onnxruntime)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "execution provider: none" in proc.stdout
    assert "cannot import onnxruntime (ImportError: libonnxruntime.so.1: cannot open shared " \
        "object file)" in proc.stdout
    assert "numpy" in proc.stdout  # the versions are still listed


def test_12_other_commands_say_onnxruntime_is_broken_in_one_line(broken_onnxruntime, tmp_path,
                                                                 home):
    proc = explain("digits:1", *FAST, "--out", tmp_path, home=home, env=broken_onnxruntime)
    one_error_line(proc, "cannot import onnxruntime", "pip install --force-reinstall")


def test_12_ctrl_c_while_onnxruntime_initialises_is_an_interrupt(tmp_path, home):
    """Ctrl-C inside an extension module's initialisation raises ImportError from the
    KeyboardInterrupt: the CLI says "interrupted" (status 130), not "broken installation"."""
    package = tmp_path / "interrupted" / "onnxruntime"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "try:\n    raise KeyboardInterrupt\nexcept KeyboardInterrupt as exc:\n"
        "    raise ImportError('initialization failed') from exc\n")
    env = {"PYTHONPATH": os.pathsep.join([str(package.parent), os.environ.get("PYTHONPATH",
                                                                              "")])}
    proc = explain("digits:1", *FAST, "--out", tmp_path, home=home, env=env)
    assert (proc.returncode, proc.stderr.strip()) == (130, "preddiff: interrupted"), proc.stderr


# ----------------------------------------------------------------------------------------------
# 14, 21: convert


def test_14_a_deeply_nested_prototxt_is_refused(tmp_path, home):
    deep = tmp_path / "deep.prototxt"
    deep.write_text('name: "x"\n' + "layer { " * 20000 + "}" * 20000 + "\n")
    proc = cli("convert", "--prototxt", deep, "--caffemodel", deep, "--output",
               tmp_path / "x.onnx", home=home)
    one_error_line(proc, "messages nested more than 100 levels deep")
    from preddiff.caffe.prototxt import parse

    assert parse("a { " * 100 + "}" * 100)  # 100 levels are read


def test_21_convert_into_a_folder_names_the_folder(tmp_path, home):
    proc = cli("convert", "lenet", "--output", tmp_path, home=home)
    err = one_error_line(proc, f"cannot write {tmp_path}: it is a folder")
    assert ".tmp" not in err and "Errno" not in err


def test_21_a_lock_path_that_is_a_folder_is_one_line_naming_it(tmp_path, home):
    out = tmp_path / "out"
    (out / ".digit1_lenet.lock").mkdir(parents=True)
    proc = explain("digits:1", *FAST, "--out", out, home=home)
    one_error_line(proc, f"{out / '.digit1_lenet.lock'}, the lock file of output "
                   f"{out / 'digit1_lenet'}.npz, is a folder")


def test_21_a_full_disk_names_the_file(tmp_path, monkeypatch):
    import errno

    from preddiff.checkpoint import atomic_savez

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    target = tmp_path / "result.npz"
    with pytest.raises(OSError, match=f"cannot write {target}: No space left on device") as e:
        atomic_savez(target, a=np.zeros(3))
    assert e.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []  # no temporary file left


# ----------------------------------------------------------------------------------------------
# 15, 17: files of the Python API


@pytest.fixture(scope="module")
def small_run():
    from test_checkpoint import Net

    rng = np.random.default_rng(1)
    pool = rng.normal(size=(10, 2, 8, 7)).astype(np.float32)
    x = rng.normal(size=(2, 8, 7)).astype(np.float32)
    sampler = ConditionalGaussianSampler.fit(pool, 2, 1, num_patches=600, rng=2)

    def run(**kw):
        return prediction_difference(x, Net(x.shape), sampler, window=2, num_samples=3,
                                     blobs=("prob", "maps"), rng=7, batch_size=6,
                                     progress=False, **kw)
    return run, sampler


def _rewrite(path, change):
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["meta"]))
    change(meta, arrays)
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


@pytest.mark.parametrize("change,message", [
    (lambda meta, arrays: meta.update(done=meta["done"] + 5),
     "it records 47 finished windows of 42"),
    (lambda meta, arrays: arrays.update(values_0=arrays["values_0"][:10]),
     r"its values of blob 'prob' have shape \(10, 4\)"),
    (lambda meta, arrays: meta.update(timings={"total": "soon"}), "its timings are not numbers"),
])
def test_15_an_inconsistent_checkpoint_is_refused_saying_delete_it(small_run, tmp_path,
                                                                   change, message):
    run, _ = small_run
    checkpoint = tmp_path / "run.ckpt.npz"
    run(checkpoint=checkpoint, keep_checkpoint=True)
    _rewrite(checkpoint, change)
    with pytest.raises(CheckpointMismatch,
                       match=f"cannot read checkpoint {checkpoint}: {message}.*delete it"):
        run(checkpoint=checkpoint)


def test_17_explanation_files_raise_preddiff_errors(small_run, tmp_path):
    run, _ = small_run
    explanation = run()
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(InvalidArgument, match="no such file"):
        Explanation.load(tmp_path / "missing.npz")
    with pytest.raises(InvalidArgument, match="is a folder, not a saved Explanation"):
        Explanation.load(folder)
    with pytest.raises(InvalidArgument, match="it is a folder; give a file name"):
        explanation.save(folder)
    for units in (["a"], 5, [1.5], [True]):
        with pytest.raises(InvalidArgument, match=r"units\['prob'\] must be a sequence"):
            explanation.save(tmp_path / "u.npz", units={"prob": units})
    explanation.save(tmp_path / "e.npz", units={"prob": [np.int64(1), 2]})
    assert Explanation.load(tmp_path / "e.npz").units["prob"].tolist() == [1, 2]
    _rewrite(tmp_path / "e.npz", lambda meta, arrays: meta.pop("window"))
    with pytest.raises(InvalidArgument, match="is not a saved Explanation .KeyError: 'window'"):
        Explanation.load(tmp_path / "e.npz")


def test_17_sampler_files_raise_preddiff_errors(small_run, tmp_path):
    _, sampler = small_run
    with pytest.raises(InvalidArgument, match="no such file"):
        ConditionalGaussianSampler.load(tmp_path / "missing.npz")
    with pytest.raises(InvalidArgument, match="is a folder, not a saved Conditional"):
        ConditionalGaussianSampler.load(tmp_path)
    sampler.save(tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as data:
        arrays = {k: data[k] for k in data.files if k != "window"}
    np.savez(tmp_path / "s.npz", **arrays)
    with pytest.raises(InvalidArgument, match="not a saved ConditionalGaussianSampler"):
        ConditionalGaussianSampler.load(tmp_path / "s.npz")


# ----------------------------------------------------------------------------------------------
# 19: resume notes and times


def test_19_a_checkpoint_without_finished_windows_is_not_called_resumed(tmp_path, home):
    from preddiff.checkpoint import json_array

    out = tmp_path / "out"
    out.mkdir()
    np.savez(out / "digit1_lenet.ckpt.npz",
             meta=json_array({"format": 1, "fingerprint": {"blobs": ["prob"]}, "done": 0}),
             values_0=np.zeros((0, 10)), clean_0=np.zeros(10))
    proc = explain("digits:1", *FAST, "--out", out, home=home)
    assert proc.returncode == 0, proc.stderr
    assert "resumed" not in proc.stderr + proc.stdout


def _partial_checkpoint(out, argv):
    """Run ``preddiff explain ARGV`` in this process up to a crash in its fourth classifier
    call: the checkpoint the engine saves then holds the windows of the batches before it."""
    from preddiff import explainer
    from preddiff.cli import build_parser
    from preddiff.commands import explain as command

    args = build_parser().parse_args(["explain", *map(str, argv), "--out", str(out)])
    explainer.check_options(args)
    model = explainer.load_model(args)
    out.mkdir(parents=True, exist_ok=True)
    args.pool_info = {}
    (spec, *loaded), = command._read_inputs(args.images, model)
    _, x, _, sampler, _, checkpoint = command._prepare_image(args, model, spec, args.window,
                                                             tuple(loaded))
    calls, run = [], model.classifier._run

    def crashing(chunk):
        calls.append(len(chunk))
        if len(calls) > 3:
            raise RuntimeError("crash")
        return run(chunk)

    model.classifier._run = crashing
    with pytest.raises(RuntimeError, match="crash"):
        prediction_difference(x, model.classifier, sampler,
                              **explainer.engine_kwargs(args, model, args.window),
                              checkpoint=checkpoint, keep_checkpoint=True, progress=False)
    with np.load(checkpoint) as data:
        assert json.loads(str(data["meta"]))["done"] > 0
    return checkpoint


def _seconds(line):
    return float(line.strip().split(" s")[0])


def test_19_cluster_runs_say_resumed_and_time_the_cluster_run(tmp_path, home, monkeypatch):
    monkeypatch.setenv("PREDDIFF_HOME", str(home))
    argv = ["digits:1", *FAST, "--batch-size", "8"]
    proc = explain(*argv, "--workers", "1", "--out", tmp_path / "fresh", home=home)
    assert proc.returncode == 0, proc.stderr
    assert "resumed" not in proc.stderr + proc.stdout
    e = Explanation.load(tmp_path / "fresh" / "digit1_lenet.npz")
    # the time line counts the cluster's computation, not only the writing after it
    assert _seconds(proc.stdout.splitlines()[1]) >= e.timings["total"] - 0.05, \
        (proc.stdout, e.timings)

    checkpoint = _partial_checkpoint(tmp_path / "resumed", argv)
    proc = explain(*argv, "--workers", "1", "--out", tmp_path / "resumed", home=home)
    assert proc.returncode == 0, proc.stderr
    assert f"preddiff: note: resumed from {checkpoint}" in proc.stderr
    assert "on the cluster for it over all runs (resumed)" in proc.stdout.splitlines()[1]


# ----------------------------------------------------------------------------------------------
# 22, 23: litter and images


def test_22_temporary_files_of_a_killed_run_are_removed(tmp_path, home):
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / ".digit1_lenet.png.abcd1234.png", out / ".digit1_lenet.npz.x_y9k2mq.tmp",
             out / ".digit1_lenet.ckpt.npz.0a1b2c3d.tmp"]
    kept = [out / ".digit2_lenet.png.abcd1234.png", out / ".digit1_lenet.png.notatemp.txt",
            out / "notes.txt"]
    for path in stale + kept:
        path.write_bytes(b"")
    proc = explain("digits:1", *FAST, "--out", out, home=home)
    assert proc.returncode == 0, proc.stderr
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)


def test_23_an_animated_gif_says_only_its_first_frame_is_used(tmp_path, home):
    from PIL import Image

    frames = [Image.fromarray(np.full((20, 24, 3), 80 * i, np.uint8)) for i in range(3)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    from preddiff.preprocess import load_image

    with pytest.warns(UserWarning, match="animated .3 frames.: only its first frame is used"):
        assert load_image(gif).max() == 0  # the first frame (black)
    model = onnx_model(tmp_path / "tiny.onnx")
    proc = explain(gif, "--model", model, *ONNX_FAST, "--out", tmp_path, home=home)
    assert proc.returncode == 0, proc.stderr
    assert "is animated (3 frames): only its first frame is used" in proc.stderr


def test_23_an_invalid_exif_orientation_is_said_to_be_ignored(tmp_path):
    from PIL import Image

    from preddiff.preprocess import load_image

    pixels = np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    picture = Image.fromarray(pixels)
    exif = picture.getexif()
    exif[0x0112] = 9
    path = tmp_path / "odd.png"
    picture.save(path, exif=exif)
    with pytest.warns(UserWarning, match=r"invalid EXIF orientation \(9; valid: 1-8\): "
                      "ignored") as caught:
        image = load_image(path)
    assert not any("upright" in str(w.message) for w in caught)
    np.testing.assert_array_equal(image, pixels)
