"""``preddiff convert``: success paths and one-line errors (no traceback, non-zero exit)."""
import os
import re
import stat

import numpy as np
import onnx
import pytest

from preddiff.caffe import caffe_to_onnx, load_net
from preddiff.caffe.writer import random_weights, write_caffemodel
from preddiff.cli import main
from preddiff.errors import CaffeFormatError
from preddiff.resources import MODELS_DIR

LENET = MODELS_DIR / "lenet"
PROTO = LENET / "deploy.prototxt"
WEIGHTS = LENET / "lenet.caffemodel"


def _fails(capsys, argv, pattern):
    """Run the CLI expecting a user error: exit 2, one line on stderr matching pattern."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), lines[0]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PREDDIFF_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_convert_files(tmp_path, capsys):
    out = tmp_path / "lenet.onnx"
    assert main(["convert", "--prototxt", str(PROTO), "--caffemodel", str(WEIGHTS),
                 "--output", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    model = onnx.load(out)
    assert [o.name for o in model.graph.output] == ["prob"]


@pytest.mark.parametrize("flag, expected", [
    ("all", ["conv1", "pool1", "conv2", "pool2", "ip1", "ip2", "prob"]),
    ("ip2,prob", ["ip2", "prob"]),
])
def test_convert_outputs(tmp_path, flag, expected):
    out = tmp_path / "lenet.onnx"
    assert main(["convert", "--prototxt", str(PROTO), "--caffemodel", str(WEIGHTS),
                 "--output", str(out), "--outputs", flag]) == 0
    assert [o.name for o in onnx.load(out).graph.output] == expected


def test_convert_zoo_name_uses_the_cache(home, capsys):
    pytest.importorskip("preddiff.zoo")
    assert main(["convert", "lenet"]) == 0
    path = home / "onnx" / "lenet.onnx"
    assert str(path) in capsys.readouterr().out and path.is_file()


def test_convert_zoo_name_to_a_given_file(tmp_path):
    pytest.importorskip("preddiff.zoo")
    out = tmp_path / "x.onnx"
    assert main(["convert", "lenet", "--output", str(out), "--opset", "17"]) == 0
    assert onnx.load(out).opset_import[0].version == 17


def test_missing_zoo_weights_say_how_to_get_them(capsys, home):
    pytest.importorskip("preddiff.zoo")
    _fails(capsys, ["convert", "alexnet"],
           r"preddiff models fetch alexnet.*" + str(home / "weights" / "bvlc_alexnet"))


def test_missing_zoo_weights_with_output(capsys, home, tmp_path):
    pytest.importorskip("preddiff.zoo")
    _fails(capsys, ["convert", "vgg16", "--output", str(tmp_path / "v.onnx")],
           r"preddiff models fetch vgg16.*" + str(home / "weights"))


def test_unknown_zoo_name(capsys):
    pytest.importorskip("preddiff.zoo")
    _fails(capsys, ["convert", "resnet"], r"unknown model 'resnet'")


def test_missing_caffemodel(capsys, tmp_path):
    _fails(capsys, ["convert", "--prototxt", str(PROTO), "--caffemodel",
                    str(tmp_path / "nope.caffemodel"), "--output", str(tmp_path / "o.onnx")],
           r"caffemodel not found: .*nope\.caffemodel")


def test_truncated_caffemodel(capsys, tmp_path):
    bad = tmp_path / "cut.caffemodel"
    bad.write_bytes(WEIGHTS.read_bytes()[:100_000])
    _fails(capsys, ["convert", "--prototxt", str(PROTO), "--caffemodel", str(bad),
                    "--output", str(tmp_path / "o.onnx")], r"cut\.caffemodel .*truncated")
    assert not (tmp_path / "o.onnx").exists()


def test_empty_caffemodel(capsys, tmp_path):
    bad = tmp_path / "empty.caffemodel"
    bad.write_bytes(b"")
    _fails(capsys, ["convert", "--prototxt", str(PROTO), "--caffemodel", str(bad),
                    "--output", str(tmp_path / "o.onnx")], r"empty\.caffemodel is empty")


def test_malformed_prototxt(capsys, tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('name: "x"\nlayer {\n  name "conv"\n}\n')
    _fails(capsys, ["convert", "--prototxt", str(bad), "--caffemodel", str(WEIGHTS),
                    "--output", str(tmp_path / "o.onnx")], r"bad\.prototxt: line 3")


def test_unsupported_layer(capsys, tmp_path):
    proto = tmp_path / "elt.prototxt"
    proto.write_text(PROTO.read_text().replace('type: "ReLU"', 'type: "BNLL"'))
    _fails(capsys, ["convert", "--prototxt", str(proto), "--caffemodel", str(WEIGHTS),
                    "--output", str(tmp_path / "o.onnx")], r"layer 'relu1' has type 'BNLL'")


def test_shape_mismatch(capsys, tmp_path):
    proto = tmp_path / "wide.prototxt"
    proto.write_text(PROTO.read_text().replace("num_output: 500", "num_output: 400"))
    _fails(capsys, ["convert", "--prototxt", str(proto), "--caffemodel", str(WEIGHTS),
                    "--output", str(tmp_path / "o.onnx")],
           r"layer 'ip1' weights: the net expects shape 400x800, the caffemodel has 500x800")


def test_unknown_output_blob(capsys, tmp_path):
    _fails(capsys, ["convert", "--prototxt", str(PROTO), "--caffemodel", str(WEIGHTS),
                    "--output", str(tmp_path / "o.onnx"), "--outputs", "fc8"],
           r"unknown output blob 'fc8'; available blobs: conv1, pool1")


@pytest.mark.parametrize("argv, pattern", [
    (["convert"], r"give a zoo NAME, or both --prototxt and --caffemodel"),
    (["convert", "--prototxt", str(PROTO)], r"both --prototxt and --caffemodel"),
    (["convert", "lenet", "--prototxt", str(PROTO)], r"either NAME or --prototxt"),
    (["convert", "--prototxt", str(PROTO), "--caffemodel", str(WEIGHTS)],
     r"--output is required"),
])
def test_bad_argument_combinations(capsys, argv, pattern):
    _fails(capsys, argv, pattern)


def test_old_style_weights_convert(tmp_path, rng):
    net = load_net(PROTO)
    model = write_caffemodel(net, random_weights(net, rng), tmp_path / "v1.caffemodel",
                             style="layers")
    out = tmp_path / "v1.onnx"
    assert main(["convert", "--prototxt", str(PROTO), "--caffemodel", str(model),
                 "--output", str(out)]) == 0
    init = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(out).graph.initializer}
    assert init["ip1/weight"].shape == (500, 800) and init["ip1/weight"].dtype == np.float32


# --------------------------------------------------------------------------------------------
# Review fixes: malformed values in a prototxt, sha1 of zoo weights given --output, file modes
# --------------------------------------------------------------------------------------------
LENET_TEXT = PROTO.read_text()

MALFORMED = {  # case -> (text to replace in LeNet's prototxt, replacement, expected message)
    "group zero": ("kernel_size: 5", "kernel_size: 5 group: 0",
                   r"layer 'conv1' \(Convolution\): group must be a positive integer, found 0"),
    "group string": ("kernel_size: 5", 'kernel_size: 5 group: "a"',
                     r"group must be a positive integer, found 'a'"),
    "softmax axis string": ('type: "Softmax"', 'type: "Softmax" softmax_param { axis: "x" }',
                            r"layer 'prob' \(Softmax\) has a malformed parameter"),
    "relu slope string": ('type: "ReLU"', 'type: "ReLU" relu_param { negative_slope: "x" }',
                          r"layer 'relu1' \(ReLU\) has a malformed parameter"),
    "input shape not a message": ("shape: { dim: 64 dim: 1 dim: 28 dim: 28 }", "shape: 5",
                                  r"Input layer 'data': each shape must be a message"),
    "param not a message": ("convolution_param {", "convolution_param: 5 x {",
                            r"layer 'conv1': convolution_param must be a message"),
    "type a message": ('type: "Pooling"', "type { a: 1 }",
                       r"layer 'pool1': field 'type' must be a value"),
    "include not a message": ('type: "Pooling"', 'type: "Pooling" include: 5',
                              r"malformed net definition"),
    "layer not a message": ('name: "LeNet"', 'name: "LeNet" layer: 5',
                            r"each layer must be a message"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_prototxt_values_are_one_line_errors(capsys, tmp_path, case):
    """Values of the wrong kind used to escape as ZeroDivisionError, ValueError or
    AttributeError tracebacks."""
    old, new, pattern = MALFORMED[case]
    assert old in LENET_TEXT
    proto = tmp_path / "bad.prototxt"
    proto.write_text(LENET_TEXT.replace(old, new, 1))
    with pytest.raises(CaffeFormatError, match=pattern):
        caffe_to_onnx(proto, WEIGHTS)
    _fails(capsys, ["convert", "--prototxt", str(proto), "--caffemodel", str(WEIGHTS),
                    "--output", str(tmp_path / "o.onnx")], pattern)
    assert not (tmp_path / "o.onnx").exists()


def test_malformed_input_dims_are_refused():
    text = ('input: "data" input_dim: 1 input_dim: 1 input_dim: 2 input_dim: "a"\n'
            'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
    with pytest.raises(CaffeFormatError, match=r"input_dim values must be non-negative "
                                               r"integers, found \[1, 1, 2, 'a'\]"):
        load_net(text)
    with pytest.raises(CaffeFormatError, match="each input_shape must be a message"):
        load_net('input: "data" input_shape: 5\n'
                 'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')


def test_corrupt_caffemodel_and_missing_prototxt_are_one_line(capsys, tmp_path):
    bad = tmp_path / "noise.caffemodel"
    bad.write_bytes(np.random.default_rng(3).integers(0, 256, 300, dtype=np.uint8).tobytes())
    _fails(capsys, ["convert", "--prototxt", str(PROTO), "--caffemodel", str(bad),
                    "--output", str(tmp_path / "o.onnx")], r"noise\.caffemodel .*corrupt")
    _fails(capsys, ["convert", "--prototxt", str(tmp_path / "none.prototxt"), "--caffemodel",
                    str(WEIGHTS), "--output", str(tmp_path / "o.onnx")],
           r"prototxt not found: .*none\.prototxt")
    assert not (tmp_path / "o.onnx").exists()


def test_zoo_weights_are_verified_when_converting_to_a_given_file(capsys, home, tmp_path):
    """README: "A placed file is verified (sha1) before conversion" — also with --output."""
    from preddiff import zoo

    placed = zoo.weights_path("googlenet")
    placed.parent.mkdir(parents=True)
    placed.write_bytes(WEIGHTS.read_bytes())  # a real caffemodel, but not GoogLeNet's
    _fails(capsys, ["convert", "googlenet", "--output", str(tmp_path / "g.onnx")],
           r"has sha1 [0-9a-f]{40}, expected " + zoo.manifest("googlenet").sha1)
    assert not (tmp_path / "g.onnx").exists()


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_onnx_files_are_readable_like_ordinary_files(tmp_path, home, umask_022):
    """save_onnx and the zoo cache wrote through mkstemp, which leaves mode 0600."""
    out = tmp_path / "lenet.onnx"
    assert main(["convert", "--prototxt", str(PROTO), "--caffemodel", str(WEIGHTS),
                 "--output", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert main(["convert", "lenet"]) == 0
    for path in (home / "onnx" / "lenet.onnx", home / "onnx" / "lenet.onnx.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
