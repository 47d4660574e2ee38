"""Prototxt parsing (text format and NetSpec) and the narrowing helper."""
import pytest

from preddiff.caffe import load_net
from preddiff.caffe.net import blob_shapes, param_shapes
from preddiff.caffe.prototxt import Ident, format_message, parse
from preddiff.caffe.writer import narrow_prototxt
from preddiff.errors import CaffeFormatError
from preddiff.resources import MODELS_DIR

INPUT_DIM = 'input: "data"\ninput_dim: 2\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\n'


def test_text_format_values_and_comments():
    text = """
    # a comment
    name: 'n\\x41\\101\\"' "cat"   # adjacent strings concatenate
    a: 1 b: -2.5e-1 c: 0x1F d: .5 e: 2.f f: -inf g: MAX h: true
    m { x: 1 x: 2 } m: { y: [3, 4] } k < z: "q" >;
    """
    msg = parse(text)
    assert msg["name"] == ['nAA"cat']
    assert msg["a"] == [1] and msg["b"] == [-0.25] and msg["c"] == [31]
    assert msg["d"] == [0.5] and msg["e"] == [2.0] and msg["f"] == [float("-inf")]
    assert msg["g"] == ["MAX"] and isinstance(msg["g"][0], Ident)
    assert msg["m"] == [{"x": [1, 2]}, {"y": [3, 4]}]
    assert msg["k"] == [{"z": ["q"]}]


def test_format_message_round_trips():
    msg = parse((MODELS_DIR / "googlenet" / "deploy.prototxt").read_text())
    assert parse(format_message(msg)) == msg


def test_new_style_layers():
    net = load_net(MODELS_DIR / "alexnet" / "deploy.prototxt")
    assert net.name == "AlexNet"
    assert net.inputs == {"data": (20, 3, 227, 227)}
    conv2 = net.layer("conv2")
    assert (conv2.type, conv2.bottoms, conv2.tops) == ("Convolution", ["pool1"], ["conv2"])
    assert conv2.params["group"] == 2 and conv2.params["pad"] == 2


def test_old_enum_style_types_are_normalised():
    net = load_net(MODELS_DIR / "vgg16" / "deploy.prototxt")
    types = {layer.type for layer in net.layers}
    assert types == {"Convolution", "ReLU", "Pooling", "InnerProduct", "Dropout", "Softmax"}
    assert net.layer("pool1").params == {"pool": "MAX", "kernel_size": 2, "stride": 2}


def test_input_from_input_shape():
    net = load_net('input: "x" input_shape { dim: 1 dim: 3 dim: 5 dim: 7 }\n'
                   'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }')
    assert net.inputs == {"x": (1, 3, 5, 7)}


def test_input_from_input_layer():
    net = load_net(MODELS_DIR / "lenet" / "deploy.prototxt")
    assert net.inputs == {"data": (64, 1, 28, 28)}
    assert net.layers[0].type == "Input"


def test_layers_of_the_train_phase_are_dropped():
    net = load_net(INPUT_DIM + """
    layer { name: "train_only" type: "ReLU" bottom: "data" top: "a" include { phase: TRAIN } }
    layer { name: "kept" type: "ReLU" bottom: "data" top: "b" include { phase: TEST } }
    layer { name: "excluded" type: "ReLU" bottom: "data" top: "c" exclude { phase: TEST } }
    """)
    assert [layer.name for layer in net.layers] == ["kept"]


def test_syntax_error_names_the_line():
    text = INPUT_DIM + 'layer {\n  name: "r"\n  type "ReLU"\n}\n'
    with pytest.raises(CaffeFormatError, match=r"line 8\b.*expected ':' or '\{'"):
        load_net(text)


def test_unclosed_brace_names_where_it_opened():
    with pytest.raises(CaffeFormatError, match=r"line 7.*opened at line 6"):
        load_net(INPUT_DIM + 'layer {\n name: "r"')


def test_bad_character_names_the_line():
    with pytest.raises(CaffeFormatError, match=r"line 2, column 3: unexpected character '@'"):
        parse('a: 1\nb @ 2')


def test_syntax_error_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text("name: }\n")
    with pytest.raises(CaffeFormatError, match=r"bad\.prototxt: line 1"):
        load_net(path)


def test_missing_prototxt_file(tmp_path):
    with pytest.raises(CaffeFormatError, match="prototxt not found"):
        load_net(tmp_path / "nope.prototxt")


def test_net_without_input_is_an_error():
    with pytest.raises(CaffeFormatError, match="declares no input"):
        load_net('layer { name: "r" type: "ReLU" bottom: "x" top: "y" }')


def test_blob_shapes_follow_caffe_rounding():
    net = load_net(MODELS_DIR / "googlenet" / "deploy.prototxt")
    shapes = blob_shapes(net, batch=1)
    # GoogLeNet's unpadded stride-2 pools need Caffe's ceil: 112 -> 56 -> 28 -> 14 -> 7.
    assert shapes["pool1/3x3_s2"] == (1, 64, 56, 56)
    assert shapes["pool2/3x3_s2"] == (1, 192, 28, 28)
    assert shapes["pool3/3x3_s2"] == (1, 480, 14, 14)
    assert shapes["pool4/3x3_s2"] == (1, 832, 7, 7)
    assert shapes["inception_3a/output"] == (1, 256, 28, 28)


def test_param_shapes_count_the_zoo_parameters():
    counts = {name: sum(int(__import__("math").prod(s)) for v in
                        param_shapes(load_net(MODELS_DIR / name / "deploy.prototxt")).values()
                        for s in v)
              for name in ("alexnet", "vgg16")}
    assert counts == {"alexnet": 60_965_224, "vgg16": 138_357_544}


def test_narrow_prototxt_divides_widths_and_keeps_groups_and_classes():
    text = (MODELS_DIR / "alexnet" / "deploy.prototxt").read_text()
    net = load_net(narrow_prototxt(text, 16))
    widths = {layer.name: layer.params["num_output"] for layer in net.layers
              if layer.type in ("Convolution", "InnerProduct")}
    assert widths == {"conv1": 6, "conv2": 16, "conv3": 24, "conv4": 24, "conv5": 16,
                      "fc6": 256, "fc7": 256, "fc8": 1000}
    blob_shapes(net)  # group-divisibility holds, or this raises


def test_narrow_prototxt_keeps_the_old_style():
    text = (MODELS_DIR / "vgg16" / "deploy.prototxt").read_text()
    narrowed = narrow_prototxt(text, 8)
    assert "type: CONVOLUTION" in narrowed
    assert load_net(narrowed).layer("conv1_1").params["num_output"] == 8
