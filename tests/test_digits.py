"""The UCI digits in MNIST format: shapes, range, centring by mass."""
import numpy as np
import pytest
from scipy import ndimage

from preddiff.digits import digit, load_digits
from preddiff.errors import InvalidArgument
from preddiff.resources import DATA_DIR


def test_shapes_dtypes_and_labels():
    images, labels = load_digits()
    assert images.shape == (1797, 1, 28, 28) and images.dtype == np.float32
    assert labels.shape == (1797,) and labels.dtype == np.int64
    assert set(labels.tolist()) == set(range(10))
    with np.load(DATA_DIR / "digits.npz") as raw:
        np.testing.assert_array_equal(labels, raw["labels"])


def test_values_in_unit_range_with_full_ink():
    images, _ = load_digits()
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert (images.reshape(len(images), -1).max(1) > 0.5).all()  # every digit has ink
    # the 4-pixel margin of MNIST stays (almost) empty before centring moves the digit
    assert images[:, 0, 0, :].max() < 0.2 and images[:, 0, -1, :].max() < 0.2


def test_centre_of_mass_at_frame_centre():
    images, _ = load_digits()
    coms = np.array([ndimage.center_of_mass(im[0]) for im in images])
    np.testing.assert_allclose(coms, 13.5, atol=0.5)


def test_mass_is_that_of_the_resized_digit():
    """The 8×8 digit, scaled to [0, 1], resized to 20×20: the shift keeps its total ink."""
    from skimage.transform import resize

    images, _ = load_digits()
    with np.load(DATA_DIR / "digits.npz") as raw:
        first = raw["images"][:20]
    for image, expect in zip(images[:20], first):
        box = resize(expect / 16.0, (20, 20), order=1, anti_aliasing=False)
        assert image.sum() == pytest.approx(box.sum(), rel=1e-4)


def test_cached_arrays_are_read_only_and_digit_returns_copies():
    images, labels = load_digits()
    assert load_digits()[0] is images
    with pytest.raises(ValueError):
        images[0, 0, 0, 0] = 1.0
    image, label = digit(5)
    assert image.shape == (1, 28, 28) and label == labels[5]
    image[:] = 0  # a copy: the cache is untouched
    assert images[5].sum() > 0
    with pytest.raises(InvalidArgument, match="out of range"):
        digit(1797)
