"""The offline default end to end: the real Caffe LeNet, converted to ONNX and run by
onnxruntime, on the real UCI digits; checked against OpenCV's independent Caffe importer."""
import numpy as np
import pytest

from preddiff import zoo
from preddiff.classifier import OnnxClassifier
from preddiff.digits import load_digits

cv2 = pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("PREDDIFF_HOME", str(tmp_path_factory.mktemp("home")))
    try:
        yield OnnxClassifier.for_model("lenet", outputs=["ip2", "prob"], batch_size=256,
                                       device="cpu", threads=1)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def outputs(lenet):
    return lenet(load_digits()[0])


@pytest.fixture(scope="module")
def opencv_outputs():
    m = zoo.manifest("lenet")
    net = cv2.dnn.readNetFromCaffe(str(m.prototxt), str(zoo.weights_path("lenet")))
    net.setInput(np.ascontiguousarray(load_digits()[0]))
    ip2, prob = net.forward(["ip2", "prob"])
    return {"ip2": ip2, "prob": prob}


def test_converted_lenet_classifies_the_digits(lenet, outputs, capsys):
    labels, out = load_digits()[1], outputs
    accuracy = float((out["prob"].argmax(1) == labels).mean())
    with capsys.disabled():
        print(f"\nconverted LeNet (onnxruntime, {lenet.provider}): "
              f"{accuracy:.2%} of {len(labels)} UCI digits correct")
    assert out["prob"].shape == (1797, 10)
    np.testing.assert_allclose(out["prob"].sum(1), 1, atol=1e-5)
    assert accuracy >= 0.90


def test_converted_lenet_matches_opencv(outputs, opencv_outputs, capsys):
    labels, out = load_digits()[1], outputs
    for blob in ("ip2", "prob"):
        ours, theirs = out[blob], opencv_outputs[blob].reshape(out[blob].shape)
        error = np.abs(ours - theirs).max() / np.abs(theirs).max()
        assert error <= 1e-4, f"{blob}: normalised max error {error:.2e}"
    opencv_accuracy = float((opencv_outputs["prob"].argmax(1) == labels).mean())
    with capsys.disabled():
        print(f"\nOpenCV {cv2.__version__} Caffe importer: {opencv_accuracy:.2%} correct")
    assert (out["prob"].argmax(1) == opencv_outputs["prob"].argmax(1)).all()


def test_for_model_sets_the_manifest_and_default_output(lenet):
    assert lenet.manifest.name == "lenet" and lenet.input_shape == (1, 28, 28)
    assert {"conv1", "pool1", "conv2", "pool2", "ip1", "ip2", "prob"} <= set(lenet.blob_names)
    hidden = lenet.with_outputs(["conv2"])
    assert hidden(load_digits()[0][:3])["conv2"].shape == (3, 50, 8, 8)
