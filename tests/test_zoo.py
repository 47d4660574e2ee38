"""The model zoo: manifests, download and verification against a local HTTP server, the
``preddiff models`` command, and the ONNX cache. Nothing here touches the network."""
import dataclasses
import hashlib
import http.server
import json
import socket
import sys
import threading
import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from preddiff import cli, zoo
from preddiff.errors import DownloadError, InvalidArgument, PredDiffError
from preddiff.resources import MODELS_DIR

PAYLOAD = np.random.default_rng(7).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
PAYLOAD_SHA1 = hashlib.sha1(PAYLOAD).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    """/good: the payload; /bad: other bytes; /truncated: Content-Length larger than the body,
    then the connection is closed; anything else: 404."""

    protocol_version = "HTTP/1.1"
    requests_seen = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).requests_seen.append(self.path)
        if self.path == "/good":
            body, length = PAYLOAD, len(PAYLOAD)
        elif self.path == "/bad":
            body = PAYLOAD[::-1]
            length = len(body)
        elif self.path == "/truncated":
            body, length = PAYLOAD[: len(PAYLOAD) // 3], len(PAYLOAD)
        else:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty PREDDIFF_HOME, and no proxy between us and 127.0.0.1."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("PREDDIFF_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def fake_alexnet(monkeypatch, server):
    """The alexnet manifest with the test payload's sha1 and size and the local server's URL."""
    real = zoo.manifest

    def fake(name):
        m = real(name)
        if name == "alexnet":
            return dataclasses.replace(m, sha1=PAYLOAD_SHA1, size=len(PAYLOAD),
                                       weights_url=f"{server}/good")
        return m

    monkeypatch.setattr(zoo, "manifest", fake)
    Handler.requests_seen.clear()
    return fake("alexnet")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_helpful(message, url, sha1, path):
    assert url in message and sha1 in message and str(path) in message
    assert "\n" not in message


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- manifests ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, sha1, size, shape", [
    ("alexnet", "9116a64c0fbe4459d18f4bb6b56d647b63920377", 243_862_414, (3, 227, 227)),
    ("googlenet", "405fc5acd08a3bb12de8ee5e23a96bec22f08204", 53_533_754, (3, 224, 224)),
    ("vgg16", "9363e1f6d65f7dba68c4f27a1e62105cdf6c4e24", 553_432_081, (3, 224, 224)),
])
def test_zoo_manifests_carry_the_published_facts(name, sha1, size, shape):
    m = zoo.manifest(name)
    assert (m.sha1, m.size, m.input_shape, m.channel_order) == (sha1, size, shape, "BGR")
    assert m.weights_url.startswith("http") and not m.bundled and m.prototxt.is_file()
    assert m.scale == 255.0 and len(m.labels) == 1000 and m.output == "prob"
    assert m.mean.dtype == np.float32 and not m.mean.flags.writeable


def test_means_and_labels():
    assert zoo.manifest("alexnet").mean.shape == (3, 256, 256)
    np.testing.assert_allclose(zoo.manifest("googlenet").mean, [104, 117, 123])
    np.testing.assert_allclose(zoo.manifest("vgg16").mean, [103.939, 116.779, 123.68], rtol=1e-6)
    assert zoo.labels("lenet") == [str(d) for d in range(10)]
    names = zoo.labels("vgg16")
    assert len(names) == 1000 and names[0].startswith("tench")


def test_lenet_is_bundled_and_verified():
    m = zoo.manifest("lenet")
    assert m.bundled and m.weights_url is None and m.input_shape == (1, 28, 28) and m.scale == 1.0
    assert zoo.weights_path("lenet") == MODELS_DIR / "lenet" / "lenet.caffemodel"
    assert zoo.is_present("lenet", verify=True)
    assert zoo.fetch("lenet") == zoo.weights_path("lenet")


def test_unknown_model_lists_valid_names():
    with pytest.raises(InvalidArgument, match="alexnet, googlenet, vgg16, lenet"):
        zoo.manifest("resnet50")
    with pytest.raises(InvalidArgument):
        zoo.onnx_path("resnet50")


def test_paths_follow_preddiff_home(home):
    assert zoo.weights_path("vgg16") == home / "weights" / "VGG_ILSVRC_16_layers.caffemodel"
    assert zoo.onnx_path("googlenet") == home / "onnx" / "googlenet.onnx"
    assert zoo.onnx_path("googlenet", "all") != zoo.onnx_path("googlenet")
    assert not zoo.is_present("vgg16")


# --- fetch ----------------------------------------------------------------------------------

def test_fetch_success_with_progress_bar(home, fake_alexnet, capsys):
    path = zoo.fetch("alexnet")
    assert path == home / "weights" / "bvlc_alexnet.caffemodel"
    assert path.read_bytes() == PAYLOAD
    assert leftovers(path.parent) == [path.name]  # no temporary file left
    assert "100%" in capsys.readouterr().err  # tqdm bar on stderr
    assert zoo.is_present("alexnet", verify=True)


def test_present_file_is_not_downloaded_again(home, fake_alexnet):
    zoo.fetch("alexnet", progress=False)
    assert Handler.requests_seen == ["/good"]
    zoo.fetch("alexnet", progress=False)
    assert Handler.requests_seen == ["/good"]


def test_present_file_with_wrong_sha1_is_reported_and_replaced(home, fake_alexnet, caplog):
    path = zoo.weights_path("alexnet")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not the weights")
    zoo.fetch("alexnet", progress=False)
    assert "expected " + PAYLOAD_SHA1 in caplog.text
    assert path.read_bytes() == PAYLOAD


def test_checksum_mismatch_removes_the_file(home, fake_alexnet, server):
    url = f"{server}/bad"
    with pytest.raises(DownloadError) as err:
        zoo.fetch("alexnet", progress=False, url=url)
    message = str(err.value)
    assert_helpful(message, url, PAYLOAD_SHA1, zoo.weights_path("alexnet"))
    assert hashlib.sha1(PAYLOAD[::-1]).hexdigest() in message and "removed" in message
    assert leftovers(home / "weights") == []


def test_interrupted_transfer(home, fake_alexnet, server):
    url = f"{server}/truncated"
    with pytest.raises(DownloadError) as err:
        zoo.fetch("alexnet", progress=False, url=url)
    assert_helpful(str(err.value), url, PAYLOAD_SHA1, zoo.weights_path("alexnet"))
    assert "interrupted" in str(err.value)
    assert leftovers(home / "weights") == []


def test_offline(home, fake_alexnet):
    url = f"http://127.0.0.1:{free_port()}/bvlc_alexnet.caffemodel"
    with pytest.raises(DownloadError) as err:
        zoo.fetch("alexnet", progress=False, url=url)
    assert_helpful(str(err.value), url, PAYLOAD_SHA1, zoo.weights_path("alexnet"))
    assert "could not connect" in str(err.value)
    assert leftovers(home / "weights") == []


def test_http_error(home, fake_alexnet, server):
    url = f"{server}/nothing-here"
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        zoo.fetch("alexnet", progress=False, url=url)
    assert_helpful(str(err.value), url, PAYLOAD_SHA1, zoo.weights_path("alexnet"))


def test_file_url(home, fake_alexnet, tmp_path):
    good, bad = tmp_path / "good.caffemodel", tmp_path / "bad.caffemodel"
    good.write_bytes(PAYLOAD)
    bad.write_bytes(PAYLOAD[:-1])
    with pytest.raises(DownloadError, match="removed"):
        zoo.fetch("alexnet", progress=False, url=bad.as_uri())
    assert leftovers(home / "weights") == []
    assert zoo.fetch("alexnet", progress=False, url=good.as_uri()).read_bytes() == PAYLOAD


# --- the command line -------------------------------------------------------------------------

def test_cli_models_lists_the_zoo(home, fake_alexnet, capsys):
    assert cli.main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "weights", "present", "path"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows) == list(zoo.MODEL_NAMES)
    assert " no " in rows["alexnet"] and str(home / "weights" / "bvlc_alexnet.caffemodel") in rows["alexnet"]
    assert "553.4 MB" in rows["vgg16"] and "yes" in rows["lenet"]
    zoo.fetch("alexnet", progress=False)
    assert cli.main(["models", "--verify"]) == 0
    assert "yes, sha1 ok" in capsys.readouterr().out


def test_cli_fetch_success(home, fake_alexnet, capsys):
    assert cli.main(["models", "fetch", "alexnet", "--no-progress"]) == 0
    assert str(zoo.weights_path("alexnet")) in capsys.readouterr().out


@pytest.mark.parametrize("route", ["bad", "truncated", "offline"])
def test_cli_fetch_failure_is_one_line(home, fake_alexnet, server, capsys, route):
    url = f"http://127.0.0.1:{free_port()}/x" if route == "offline" else f"{server}/{route}"
    code = cli.main(["models", "fetch", "alexnet", "--url", url, "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and err.startswith("preddiff: error:")
    assert "Traceback" not in err
    assert_helpful(err.strip(), url, PAYLOAD_SHA1, zoo.weights_path("alexnet"))


def test_cli_fetch_unknown_model(home, capsys):
    assert cli.main(["models", "fetch", "resnet"]) != 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "alexnet, googlenet, vgg16, lenet" in err


# --- the ONNX cache ---------------------------------------------------------------------------

def test_ensure_onnx_without_weights_says_how_to_get_them(home):
    with pytest.raises(PredDiffError) as err:
        zoo.ensure_onnx("googlenet")
    message = str(err.value)
    assert "preddiff models fetch googlenet" in message
    assert str(home / "weights" / "bvlc_googlenet.caffemodel") in message


def test_ensure_onnx_rejects_weights_with_wrong_sha1(home):
    path = zoo.weights_path("googlenet")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"corrupt")
    with pytest.raises(PredDiffError, match=zoo.manifest("googlenet").sha1):
        zoo.ensure_onnx("googlenet")


@pytest.fixture
def fake_converter(monkeypatch):
    """A stand-in for preddiff.caffe that records its calls (the real one is tested elsewhere)."""
    calls = []

    def caffe_to_onnx(prototxt, caffemodel, *, outputs=None):
        calls.append((prototxt, caffemodel, outputs))
        node = helper.make_node("Identity", ["data"], ["prob"])
        graph = helper.make_graph(
            [node], "fake",
            [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 1, 28, 28])],
            [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1, 28, 28])])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)

    def save_onnx(model, path):
        onnx.save(model, str(path))

    module = types.ModuleType("preddiff.caffe")
    module.caffe_to_onnx, module.save_onnx = caffe_to_onnx, save_onnx
    monkeypatch.setitem(sys.modules, "preddiff.caffe", module)
    return calls


def test_ensure_onnx_converts_once_and_again_when_weights_change(home, fake_converter, monkeypatch):
    path = zoo.ensure_onnx("lenet")
    assert path == home / "onnx" / "lenet.onnx" and path.is_file()
    assert len(fake_converter) == 1 and fake_converter[0][1] == zoo.weights_path("lenet")
    sidecar = json.loads((home / "onnx" / "lenet.onnx.json").read_text())
    assert sidecar["weights_sha1"] == zoo.manifest("lenet").sha1
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["preddiff.weights_sha1"] == zoo.manifest("lenet").sha1
    assert zoo.ensure_onnx("lenet") == path and len(fake_converter) == 1  # cached
    # the weights changed (another sha1 recorded): converted again
    sidecar["weights_sha1"] = "0" * 40
    (home / "onnx" / "lenet.onnx.json").write_text(json.dumps(sidecar))
    assert not zoo.onnx_is_current("lenet")
    zoo.ensure_onnx("lenet")
    assert len(fake_converter) == 2 and zoo.onnx_is_current("lenet")
    # an ONNX file without its sidecar (a crash in between) is not trusted either
    (home / "onnx" / "lenet.onnx.json").unlink()
    zoo.ensure_onnx("lenet")
    assert len(fake_converter) == 3
    # other outputs are cached in their own file
    other = zoo.ensure_onnx("lenet", outputs=["ip2", "prob"])
    assert other != path and fake_converter[-1][2] == ["ip2", "prob"]


# --- review fixes: mirror URL schemes, file modes ---------------------------------------------

def test_ftp_mirror_uses_poochs_ftp_downloader():
    """The docstring promised ftp:// mirrors; the code called a pooch function that does not
    exist (``pooch.choose_downloader``), so every ftp URL failed with an AttributeError text."""
    import pooch

    assert isinstance(zoo._downloader("ftp://mirror.example/bvlc_alexnet.caffemodel", False),
                      pooch.FTPDownloader)


@pytest.mark.parametrize("url", ["notaurl", "/tmp/bvlc_alexnet.caffemodel",
                                 "gopher://host/x"])
def test_unsupported_url_is_one_clear_line(home, fake_alexnet, capsys, url):
    with pytest.raises(InvalidArgument, match="must start with http://, https://, ftp://"):
        zoo.fetch("alexnet", progress=False, url=url)
    assert cli.main(["models", "fetch", "alexnet", "--url", url, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and url in err and "file://" in err
    assert "pooch" not in err and Handler.requests_seen == []
    assert leftovers(home / "weights") == []


def test_fetched_weights_get_an_ordinary_file_mode(home, fake_alexnet):
    """pooch renames a NamedTemporaryFile (mode 0600) into place; the weights in a shared
    cache must be readable like any file the user creates."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = zoo.fetch("alexnet", progress=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
