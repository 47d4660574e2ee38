"""A user's own ONNX model: labels, normalisation, resize policy, the classes kept in the .npz,
and every pixel covered at strides that do not divide the image (issue 9)."""
import numpy as np
import pytest

from preddiff import Explanation
from preddiff.cli import main
from preddiff.errors import InvalidArgument
from preddiff.preprocess import CROP_FRACTION, NORMALIZATIONS, OnnxPreprocessor
from test_explain_cli import free_size_onnx

FAST = ["--window", "4", "--stride", "3", "--samples", "2", "--sampler", "marginal",
        "--no-progress", "--device", "cpu", "--threads", "1"]


pytestmark = pytest.mark.usefixtures("isolated_home")


def explain(*argv):
    return main(["explain", *map(str, argv)])


def classifier_onnx(path, classes=4, size=("H", "W")):
    """Average pool → linear → softmax (weights large enough for distinct probabilities)."""
    return free_size_onnx(path, classes=classes, size=size, scale=3.0)


def image_file(path, shape, seed=1):
    import skimage.io

    pixels = np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)
    skimage.io.imsave(path, pixels, check_contrast=False)
    return path, pixels


# ----------------------------------------------------------------------------------------------
# preprocessing


def test_crop_follows_torchvision_resize_and_centre_crop():
    pre = OnnxPreprocessor((3, 224, 224))
    assert pre._fitted_size(1908, 2792) == (256, 374)  # short side 256, long side truncated
    assert pre._fitted_size(500, 375) == (341, 256)
    assert pre._fitted_size(224, 224) == (224, 224)  # already the input size: untouched
    assert CROP_FRACTION == 224 / 256


def test_crop_takes_the_centre_of_the_resized_image():
    from skimage.transform import resize

    rng = np.random.default_rng(0)
    image = rng.random((30, 60, 3))
    x = OnnxPreprocessor((3, 14, 14))(image)
    # 14 / 0.875 = 16: the short side 30 → 16, the long side 60 → 32; centre 14x14
    expected = resize(image, (16, 32), order=1, anti_aliasing=True)[1:15, 9:23]
    np.testing.assert_allclose(x, expected.transpose(2, 0, 1), atol=1e-6)
    stretched = OnnxPreprocessor((3, 14, 14), resize="stretch")(image)
    np.testing.assert_allclose(stretched, resize(image, (14, 14), order=1, anti_aliasing=True)
                               .transpose(2, 0, 1), atol=1e-6)


def test_normalisation_and_its_inverse():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    mean, std = NORMALIZATIONS["imagenet"]
    pre = OnnxPreprocessor((3, 8, 8), mean=mean, std=std)
    x = pre(pixels)
    expected = (pixels / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(x, expected.transpose(2, 0, 1), atol=1e-6)
    np.testing.assert_allclose(pre.deprocess(x), pixels / 255.0, atol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    ({"mean": (0.5, 0.5)}, "mean has 2 value"),
    ({"std": (0.2, 0.0, 0.2)}, "must be positive"),
    ({"resize": "fit"}, "expected one of crop, stretch"),
])
def test_preprocessor_rejects(kwargs, message):
    with pytest.raises(InvalidArgument, match=message):
        OnnxPreprocessor((3, 8, 8), **kwargs)


def test_huge_photo_is_box_filtered_first(recwarn):
    """A photo many times the input is box-filtered to twice the fitted size first."""
    image = np.zeros((3000, 4000, 3), np.uint8)
    image[:, 2000:] = 200
    pre = OnnxPreprocessor((3, 100, 100))
    x = pre(image, what="big.jpg")
    assert x.shape == (3, 100, 100) and 0 <= x.min() and x.max() <= 200 / 255 + 1e-6
    assert any("big.jpg" in str(w.message) for w in recwarn.list)
    assert pre.last_fit.startswith("resized 3000x4000 to 114x152")


# ----------------------------------------------------------------------------------------------
# the CLI


def test_labels_classes_and_what_is_kept(tmp_path, capsys):
    model = classifier_onnx(tmp_path / "six.onnx", classes=6, size=(16, 16))
    image, _ = image_file(tmp_path / "img.png", (16, 16, 3))
    labels = tmp_path / "labels.txt"
    labels.write_text("ant\nbee\ncat\ndog\neel\nfox\n")
    assert explain(image, "--model", model, "--labels", labels, "--top", "2",
                   "--classes", "cat,5", *FAST, "--out", tmp_path) == 0
    out = capsys.readouterr().out
    e = Explanation.load(tmp_path / "img_six.npz")
    top = [i for i, _ in e.top_classes("out", 2, names=False)]
    names = ["ant", "bee", "cat", "dog", "eel", "fox"]
    assert [n for n, _ in e.top_classes(n=2)] == [names[i] for i in top]  # labels known
    assert out.startswith(f"{image}: {names[top[0]]} (p=")
    kept = sorted(set(top) | {2, 5})
    assert e.units["out"].tolist() == kept
    assert e.relevance["out"].shape == (len(kept), 16, 16)
    assert e.metadata["labels"] == names and e.metadata["saved_units"] == kept
    if 2 not in top:
        assert "cat (p=" in out.split("also:")[1]
    assert explain(image, "--model", model, *FAST, "--save-all", "--out",
                   tmp_path / "all") == 0
    assert Explanation.load(tmp_path / "all" / "img_six.npz").units["out"].tolist() == \
        list(range(6))


@pytest.mark.parametrize("extra,message", [
    (["--labels", "imagenet"], "--labels imagenet: 1000 names, but blob 'out' has 6 units"),
    (["--labels", "missing.txt"], "--labels 'missing.txt': no such file"),
    (["--classes", "7"], "class 7 is out of range; the blob has 6 units (0-5)"),
    (["--classes", "cat"], "unknown class 'cat'; give a class index (names need labels"),
    (["--mean", "0.5,0.5"], "--mean '0.5,0.5': expected 3 finite value(s)"),
    (["--normalize", "imagenet", "--std", "0.2"], "give either --normalize or --mean/--std"),
])
def test_user_model_errors_come_before_the_work(tmp_path, capsys, extra, message):
    model = classifier_onnx(tmp_path / "six.onnx", classes=6, size=(16, 16))
    image, _ = image_file(tmp_path / "img.png", (16, 16, 3))
    assert explain(image, "--model", model, *FAST, *extra, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "img_six.npz").exists()


def test_onnx_only_options_are_refused_for_zoo_models(tmp_path, capsys):
    assert explain("digits:1", *FAST, "--normalize", "imagenet", "--resize", "stretch",
                   "--out", tmp_path) == 2
    assert "--resize, --normalize apply to ONNX files only; lenet" in capsys.readouterr().err


def test_normalisation_reaches_the_network(tmp_path, capsys):
    model = classifier_onnx(tmp_path / "six.onnx", classes=6, size=(16, 16))
    image, pixels = image_file(tmp_path / "img.png", (16, 16, 3))
    assert explain(image, "--model", model, *FAST, "--normalize", "imagenet",
                   "--out", tmp_path) == 0
    e = Explanation.load(tmp_path / "img_six.npz")
    mean, std = NORMALIZATIONS["imagenet"]
    np.testing.assert_allclose(e.x, ((pixels / 255.0 - mean) / std).transpose(2, 0, 1),
                               atol=1e-6)
    assert e.metadata["preprocessing"]["mean"] == list(mean)


def test_resize_is_said(tmp_path, capsys):
    model = classifier_onnx(tmp_path / "six.onnx", classes=6, size=(16, 16))
    image, _ = image_file(tmp_path / "wide.png", (20, 40, 3))
    assert explain(image, "--model", model, *FAST, "--out", tmp_path) == 0
    assert "resized 20x40 to 18x36 and took the centre 16x16 (--resize crop" in \
        capsys.readouterr().err
    assert explain(image, "--model", model, *FAST, "--resize", "stretch", "--out",
                   tmp_path) == 0
    assert "stretched 20x40 to 16x16 (--resize stretch)" in capsys.readouterr().err


def test_every_pixel_is_covered_at_a_stride_that_does_not_divide(tmp_path, capsys):
    # 28 - 6 = 22 is not a multiple of 5: the windows aligned to the last row and column
    assert explain("digits:3", *FAST, "--window", "6", "--stride", "5", "--out", tmp_path) == 0
    e = Explanation.load(tmp_path / "digit3_lenet.npz")
    assert e.counts.min() >= 1 and e.edges == "cover"
    assert "lie in no window" not in capsys.readouterr().err
    assert explain("digits:3", *FAST, "--window", "2", "--stride", "5", "--out", tmp_path) == 0
    assert "pixels lie in no window (stride 5 > window 2)" in capsys.readouterr().err


@pytest.mark.slow
def test_an_imagenet_sized_explanation_is_a_few_megabytes(tmp_path, capsys):
    model = classifier_onnx(tmp_path / "k1000.onnx", classes=1000, size=(224, 224))
    image, _ = image_file(tmp_path / "img.png", (230, 250, 3))
    assert explain(image, "--model", model, "--labels", "imagenet", "--window", "32",
                   "--stride", "32", "--samples", "2", "--sampler", "marginal",
                   "--no-progress", "--out", tmp_path) == 0
    size = (tmp_path / "img_k1000.npz").stat().st_size
    assert size < 5e6, size
