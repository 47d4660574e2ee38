"""Models exported by real PyTorch (tests/data/torch_export, made by bench/torch_export.py):
onnxruntime reproduces torch's outputs, and ``preddiff explain`` runs them as a user would."""
from pathlib import Path

import numpy as np
import pytest

from preddiff import Explanation
from preddiff.classifier import OnnxClassifier
from preddiff.cli import main

DATA = Path(__file__).resolve().parent / "data" / "torch_export"
MODELS = ["mini_resnet", "mini_mobilenet"]
FAST = ["--window", "10", "--stride", "8", "--samples", "2", "--sampler", "marginal",
        "--no-progress", "--device", "cpu", "--threads", "1"]


pytestmark = pytest.mark.usefixtures("isolated_home")


@pytest.mark.parametrize("name", MODELS)
def test_onnxruntime_reproduces_torch(name):
    expected = np.load(DATA / "torch_outputs.npz")
    clf = OnnxClassifier(DATA / f"{name}.onnx", outputs=["prob"], device="cpu", threads=1)
    got = clf(expected["input"])["prob"]
    np.testing.assert_allclose(got, expected[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_explain_a_torch_export_with_labels(tmp_path, capsys, name):
    import skimage.io

    image = tmp_path / "photo.png"
    skimage.io.imsave(image, np.random.default_rng(2).integers(0, 255, (80, 100, 3),
                                                              dtype=np.uint8))
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"thing {i}\n" for i in range(10)))
    args = [image, "--model", DATA / f"{name}.onnx", "--labels", labels, *FAST]
    # the whole data path of torch's graph (normalisation, the folded ZeroPad2d chain, Clip,
    # the Erf GELU, SiLU, residual Add) is incremental; whether it pays on these 64x64 nets
    # depends on the machine and threads, so force it to test that it is exact
    assert main(["explain", *map(str, args), "--incremental", "on",
                 "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{image}: thing ")
    assert "incremental inference on" in out  # "(forced)" when measured slower
    assert main(["explain", *map(str, args), "--no-incremental",
                 "--out", str(tmp_path / "b")]) == 0
    a = Explanation.load(tmp_path / "a" / f"photo_{name}.npz")
    b = Explanation.load(tmp_path / "b" / f"photo_{name}.npz")
    assert a.counts.min() >= 1  # 64 - 10 = 54 is not a multiple of 8: edge windows added
    scale = np.abs(b.relevance["prob"]).max()
    # float32 resolves these near-uniform probabilities (about 0.1) to ~1.5e-8, i.e. a
    # weight of evidence to ~2e-7 (eq. 3 in log2 odds), while the maps' maximum is only
    # ~5e-3: the tolerance is 1e-5 of the maximum or 2.5 such steps, whichever is larger
    np.testing.assert_allclose(a.relevance["prob"], b.relevance["prob"],
                               atol=max(1e-5 * scale, 5e-7))
