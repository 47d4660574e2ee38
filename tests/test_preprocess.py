"""Preprocessing: crops, the AlexNet mean offset, BGR order, mean subtraction, and the inverse.

The expected values are written out by hand from the released code's recipe (centre crop at
floor((H − h) / 2), RGB → BGR, 0–255, minus the mean), not computed with the module itself.
"""
import dataclasses

import numpy as np
import pytest

from preddiff import zoo
from preddiff.errors import InvalidArgument
from preddiff.preprocess import Preprocessor, load_image


def tiny_manifest(mean, **changes):
    """A zoo manifest shrunk to a 3×4×5 input, so that crops can be checked by hand."""
    base = dataclasses.replace(zoo.manifest("googlenet"), input_shape=(3, 4, 5),
                               mean=np.asarray(mean, np.float32), mean_crop_offset=None)
    return dataclasses.replace(base, **changes)


def test_crop_is_centred_floor_and_bgr_minus_mean(rng):
    image = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
    x = Preprocessor(tiny_manifest([10.0, 20.0, 30.0]))(image)
    top, left = (9 - 4) // 2, (12 - 5) // 2  # 2, 3
    crop = image[top:top + 4, left:left + 5].astype(np.float32)
    assert x.shape == (3, 4, 5) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], crop[:, :, 2] - 10)  # blue first
    np.testing.assert_array_equal(x[1], crop[:, :, 1] - 20)
    np.testing.assert_array_equal(x[2], crop[:, :, 0] - 30)


def test_float_image_is_scaled_from_unit_range(rng):
    image = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    pre = Preprocessor(tiny_manifest([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(pre(image / 255.0), pre(image), atol=1e-4)
    with pytest.raises(InvalidArgument, match=r"\[0, 1\]"):
        pre(image.astype(np.float32))  # a 0–255 float image is refused, not scaled twice


def test_alexnet_mean_crop_offset_29_under_crop():
    m = zoo.manifest("alexnet")
    assert m.mean_crop_offset == 29 and m.mean.shape == (3, 256, 256)
    image = np.zeros((230, 231, 3), np.uint8)
    x = Preprocessor("alexnet", policy="crop")(image)
    # black image: the input is minus the bottom-right 227×227 of the (BGR) mean image
    np.testing.assert_allclose(x, -m.mean[:, 29:256, 29:256], rtol=0, atol=1e-4)
    assert not np.allclose(x, -m.mean[:, 14:241, 14:241], atol=1e-2)


def test_alexnet_mean_centre_crop_offset_14_under_resize():
    m = zoo.manifest("alexnet")
    x = Preprocessor("alexnet", policy="resize")(np.zeros((300, 400, 3), np.uint8))
    np.testing.assert_allclose(x, -m.mean[:, 14:241, 14:241], rtol=0, atol=1e-4)


@pytest.mark.parametrize("name, mean", [("googlenet", [104, 117, 123]),
                                         ("vgg16", [103.939, 116.779, 123.68])])
def test_per_channel_means(name, mean):
    image = np.zeros((224, 224, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 200, 100, 50  # R, G, B
    x = Preprocessor(name)(image)
    np.testing.assert_allclose(x[:, 0, 0], [50 - mean[0], 100 - mean[1], 200 - mean[2]], atol=1e-4)


def test_resize_policy_resizes_to_256_then_centre_crops():
    # a horizontal ramp: after an anisotropic resize to 256 wide the centre 224 columns are
    # known in closed form (linear interpolation of a linear ramp is exact away from borders)
    width = 512
    ramp = np.tile(np.linspace(0, 1, width)[None, :, None], (100, 1, 3))
    x = Preprocessor(tiny_manifest([0, 0, 0], input_shape=(3, 224, 224)), policy="resize")(ramp)
    cols = np.arange(16, 16 + 224)  # (256 − 224) // 2 = 16
    source = (cols + 0.5) * width / 256 - 0.5  # skimage's pixel-centre mapping
    np.testing.assert_allclose(x[0, 100], 255 * source / (width - 1), atol=0.05)
    np.testing.assert_allclose(x[0, 0], x[0, 223], atol=1e-3)  # rows are identical


def test_crop_too_small_names_sizes():
    with pytest.raises(InvalidArgument, match=r"200×240.*227×227"):
        Preprocessor("alexnet")(np.zeros((200, 240, 3), np.uint8))
    x = Preprocessor("alexnet", policy="resize")(np.zeros((200, 240, 3), np.uint8))
    assert x.shape == (3, 227, 227)


@pytest.mark.parametrize("policy", ["crop", "resize"])
@pytest.mark.parametrize("name", ["alexnet", "googlenet", "vgg16"])
def test_deprocess_inverts_preprocess(rng, name, policy):
    pre = Preprocessor(name, policy=policy)
    image = rng.integers(0, 256, (240, 250, 3), dtype=np.uint8)
    x = pre(image)
    back = pre.deprocess(x)
    assert back.shape == (*x.shape[1:], 3) and back.dtype == np.float32
    c, h, w = pre.input_shape
    if policy == "crop":
        top, left = (240 - h) // 2, (250 - w) // 2
        np.testing.assert_allclose(back, image[top:top + h, left:left + w] / 255.0, atol=1e-5)
        np.testing.assert_allclose(pre(back), x, atol=2e-3)  # and forward again
    else:
        from skimage.transform import resize

        big = resize(image / 255.0, (256, 256), order=1, anti_aliasing=True)
        top = (256 - h) // 2
        np.testing.assert_allclose(back, np.clip(big[top:top + h, top:top + w], 0, 1), atol=1e-5)
    batch = np.stack([x, x])
    assert pre.deprocess(batch).shape == (2, *back.shape)


def test_grayscale_and_rgba_are_converted_with_a_note(rng):
    gray = rng.integers(0, 256, (230, 230), dtype=np.uint8)
    pre = Preprocessor("googlenet")
    with pytest.warns(UserWarning, match="grayscale"):
        x = pre(gray)
    np.testing.assert_allclose(x, pre(np.repeat(gray[:, :, None], 3, axis=2)))
    with pytest.warns(UserWarning, match="grayscale"):
        pre(gray[:, :, None])
    rgba = np.concatenate([np.repeat(gray[:, :, None], 3, axis=2),
                           np.full((230, 230, 1), 7, np.uint8)], axis=2)
    with pytest.warns(UserWarning, match="alpha"):
        np.testing.assert_allclose(pre(rgba), x)


def test_lenet_gray_input_scale_1(rng):
    pre = Preprocessor("lenet")
    assert pre.input_shape == (1, 28, 28)
    digit = rng.random((28, 28))
    np.testing.assert_allclose(pre(digit)[0], digit, atol=1e-7)  # scale 1, mean 0
    np.testing.assert_allclose(pre((digit * 255).astype(np.uint8))[0], digit, atol=1 / 255)
    with pytest.warns(UserWarning, match="gray"):
        assert pre(np.zeros((30, 30, 3), np.uint8)).shape == (1, 28, 28)
    assert pre.deprocess(pre(digit)).shape == (28, 28, 3)


def test_bad_arguments():
    with pytest.raises(InvalidArgument, match="policy"):
        Preprocessor("vgg16", policy="stretch")
    with pytest.raises(InvalidArgument, match="shape"):
        Preprocessor("vgg16")(np.zeros((230, 230, 2), np.uint8))
    with pytest.raises(InvalidArgument, match="unknown model"):
        Preprocessor("resnet")


def test_load_image_reads_bundled_jpg_and_gray_png(tmp_path):
    from preddiff.resources import DATA_DIR
    import skimage.io

    image = load_image(DATA_DIR / "images" / "n01855672_8202.jpg")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    path = tmp_path / "g.png"
    skimage.io.imsave(path, np.arange(64, dtype=np.uint8).reshape(8, 8), check_contrast=False)
    with pytest.warns(UserWarning, match="grayscale"):
        assert load_image(path).shape == (8, 8, 3)
    with pytest.raises(InvalidArgument, match="does not exist"):
        load_image(tmp_path / "nope.jpg")


# --- example images and the default pool (preddiff.images) ---------------------------------

def test_example_images_load_offline():
    from preddiff.images import example_images

    images = example_images()
    assert list(images) == ["n01855672_8202", "n02488291_1177", "n02917067_1599",
                            "astronaut", "chelsea", "coffee", "rocket"]
    for image in images.values():
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert min(image.shape[:2]) >= 227
    images["astronaut"][:] = 0  # copies: the cache is untouched
    assert example_images()["astronaut"].any()


@pytest.mark.parametrize("name", ["alexnet", "vgg16"])
def test_default_pool_is_the_preprocessed_examples(name):
    from preddiff.images import default_pool, example_images

    pool = default_pool(name)
    pre = Preprocessor(name)
    assert pool.shape == (7, *pre.input_shape) and pool.dtype == np.float32
    np.testing.assert_array_equal(pool[3], pre(example_images()["astronaut"]))
    left = default_pool(name, exclude="astronaut")
    np.testing.assert_array_equal(left, np.delete(pool, 3, axis=0))
    np.testing.assert_array_equal(default_pool(name, exclude=3), left)
    with pytest.raises(InvalidArgument, match="not in the pool"):
        default_pool(name, exclude="lena")


def test_default_pool_skips_images_too_small_for_crop(monkeypatch):
    from preddiff import images

    items = (("small", np.zeros((100, 300, 3), np.uint8)),) + images._example_images()[:1]
    monkeypatch.setattr(images, "_example_images", lambda: items)
    with pytest.warns(UserWarning, match="small.*left out"):
        assert images.default_pool("googlenet").shape == (1, 3, 224, 224)
    assert images.default_pool("googlenet", policy="resize").shape == (2, 3, 224, 224)


def test_lenet_pool_is_the_digits():
    from preddiff.digits import load_digits
    from preddiff.images import default_pool

    digits = load_digits()[0]
    pool = default_pool("lenet", exclude=10)
    assert pool.shape == (1796, 1, 28, 28) and pool.dtype == np.float32
    np.testing.assert_array_equal(pool[10], digits[11])
    assert default_pool("lenet").shape == (1797, 1, 28, 28)


def test_load_image_float_file_outside_unit_range_is_an_error(tmp_path):
    """A float TIFF in 0–255 made skimage's img_as_ubyte raise a bare ValueError (a traceback
    from `preddiff explain`); a float file in [0, 1] still loads."""
    import skimage.io

    values = np.random.default_rng(0).random((9, 7, 3)).astype(np.float32)
    skimage.io.imsave(tmp_path / "big.tif", values * 255)
    with pytest.raises(InvalidArgument, match=r"big\.tif' holds floating-point pixels in "
                                              r"\[.*\]; float image files must lie in \[0, 1\]"):
        load_image(tmp_path / "big.tif")
    skimage.io.imsave(tmp_path / "unit.tif", values)
    image = load_image(tmp_path / "unit.tif")
    assert image.shape == (9, 7, 3) and image.dtype == np.uint8
