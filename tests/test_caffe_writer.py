"""The random-weight caffemodel helper (used by tests, smoke runs and benchmarks)."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from preddiff.caffe import load_net, param_shapes
from preddiff.caffe.writer import narrow_prototxt, random_onnx, random_weights, \
    write_caffemodel
from preddiff.errors import InvalidArgument
from preddiff.resources import MODELS_DIR


def test_random_weights_have_the_net_shapes(rng):
    net = load_net(MODELS_DIR / "googlenet" / "deploy.prototxt")
    weights = random_weights(net, rng)
    shapes = param_shapes(net)
    assert {k: [b.shape for b in v] for k, v in weights.items()} == shapes
    assert all(b.dtype == np.float32 for v in weights.values() for b in v)


def test_random_vgg16_neither_vanishes_nor_saturates(rng):
    """He-normal scaling through VGG16's 16 layers (narrowed 4x for speed): every blob keeps
    a unit-order scale for inputs of std 50, and softmax outputs are not one-hot."""
    model = random_onnx("vgg16", factor=4, seed=1, outputs="all")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.normal(0, 50, size=(2, 3, 224, 224)).astype(np.float32)
    blobs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"data": x})))
    rms = {name: float(np.sqrt(np.mean(v.astype(np.float64) ** 2)))
           for name, v in blobs.items() if name != "prob"}
    assert all(0.05 < r < 20 for r in rms.values()), rms
    prob = blobs["prob"]
    assert prob.max() < 0.9  # not one-hot
    assert np.abs(prob[0] - prob[1]).max() > 1e-3  # and still input-dependent


def test_random_onnx_is_reproducible():
    a, b, c = (random_onnx("lenet", seed=s) for s in (3, 3, 4))
    wa, wb, wc = ({i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
                  for m in (a, b, c))
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert not np.array_equal(wa["conv1/weight"], wc["conv1/weight"])


def test_write_caffemodel_rejects_an_unknown_style(tmp_path, rng):
    net = load_net(MODELS_DIR / "lenet" / "deploy.prototxt")
    with pytest.raises(InvalidArgument, match="style must be 'layer' or 'layers'"):
        write_caffemodel(net, {}, tmp_path / "x.caffemodel", style="V2")


def test_v0_layers_need_the_old_style(tmp_path):
    net = load_net(MODELS_DIR / "lenet" / "deploy.prototxt")
    with pytest.raises(InvalidArgument, match="v0_layers needs style='layers'"):
        write_caffemodel(net, {}, tmp_path / "x.caffemodel", v0_layers=True)


@pytest.mark.parametrize("factor", [0, 1.5, "2"])
def test_narrow_factor_must_be_a_positive_integer(factor):
    with pytest.raises(InvalidArgument, match="factor must be an integer >= 1"):
        narrow_prototxt((MODELS_DIR / "lenet" / "deploy.prototxt").read_text(), factor)


def test_random_onnx_accepts_prototxt_text_and_paths(tmp_path):
    text = ('input: "data" input_dim: 1 input_dim: 2 input_dim: 6 input_dim: 6\n'
            'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" '
            "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }\n")
    path = tmp_path / "p.prototxt"
    path.write_text(text)
    for source in (text, path, str(path)):
        assert [n.op_type for n in random_onnx(source).graph.node] == ["Pad", "AveragePool"]
    with pytest.raises(InvalidArgument, match="neither a bundled model"):
        random_onnx("resnet")
