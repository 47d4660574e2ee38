"""Tests of :mod:`preddiff.plot`."""
import numpy as np
import pytest
from matplotlib.figure import Figure
from skimage.color import rgb2gray, rgb2hsv

from preddiff import plot
from preddiff.errors import InvalidArgument


def test_signed_cmap_is_white_at_zero_and_red_blue_at_the_ends():
    cmap = plot.signed_cmap()
    np.testing.assert_array_equal(cmap(0.5)[:3], (1.0, 1.0, 1.0))
    low, high = np.array(cmap(0.0)[:3]), np.array(cmap(1.0)[:3])
    assert low[2] > 0 and low[0] == low[1] == 0          # blue
    assert high[0] > 0 and high[1] == high[2] == 0       # red
    # Monotone towards white from both ends: saturation falls to 0 at the centre.
    sat = rgb2hsv(cmap(np.linspace(0, 1, 257))[None, :, :3])[0, :, 1]
    assert sat[128] == 0 and np.all(sat[:128] > 0) and np.all(sat[129:] > 0)


def test_show_signed_scales_symmetrically(rng):
    relevance = rng.standard_normal((6, 7))
    relevance[2, 3] = -5.0
    fig = Figure()
    ax = fig.subplots()
    image = plot.show_signed(ax, relevance)
    assert image.get_clim() == (-5.0, 5.0)
    assert plot.show_signed(ax, relevance, vmax=2.0).get_clim() == (-2.0, 2.0)
    assert plot.show_signed(ax, np.zeros((3, 3))).get_clim() == (-1.0, 1.0)
    plot.show_signed(ax, relevance, colorbar=True)
    assert len(fig.axes) == 2


def test_overlay_of_zero_relevance_is_the_lightened_grey_image(rng):
    image = rng.uniform(size=(5, 6, 3))
    out = plot.overlay(image, np.zeros((5, 6)))
    grey = 1 - (1 - rgb2gray(image)) * 0.5
    assert out.shape == (5, 6, 3)
    np.testing.assert_allclose(out, np.dstack([grey] * 3), atol=1e-12)


def test_overlay_takes_hue_from_the_heatmap_and_value_from_the_image(rng):
    image = rng.uniform(size=(4, 4, 3))
    relevance = np.zeros((4, 4))
    relevance[0, 0], relevance[3, 3] = 2.0, -2.0
    out = plot.overlay(image, relevance)
    hsv = rgb2hsv(out)
    grey = 1 - (1 - rgb2gray(image)) * 0.5
    np.testing.assert_allclose(hsv[..., 2], grey, atol=1e-12)   # brightness from the image
    assert out[0, 0, 0] > out[0, 0, 2]                           # positive: red
    assert out[3, 3, 2] > out[3, 3, 0]                           # negative: blue
    assert hsv[0, 0, 1] == pytest.approx(0.8)                    # full saturation × alpha


def test_overlay_of_grey_image_follows_the_released_code(rng):
    digit = rng.uniform(size=(4, 5))
    out = plot.overlay(digit, np.zeros((4, 5)))
    np.testing.assert_allclose(out[..., 0], 1 - 0.15 * digit, atol=1e-12)


def test_overlay_rejects_bad_shapes_and_ranges(rng):
    with pytest.raises(InvalidArgument, match="does not match"):
        plot.overlay(rng.uniform(size=(4, 4, 3)), np.zeros((4, 5)))
    with pytest.raises(InvalidArgument, match=r"\[0, 1\]"):
        plot.overlay(rng.uniform(size=(4, 4, 3)) * 255, np.zeros((4, 4)))


@pytest.mark.parametrize("percent", [0, 5, 12.5, 100])
def test_top_mask_selects_the_given_share_of_largest_values(rng, percent):
    relevance = rng.standard_normal((16, 20))
    mask = plot.top_mask(relevance, percent)
    assert mask.dtype == bool and mask.shape == relevance.shape
    assert mask.sum() == round(percent / 100 * relevance.size)
    if 0 < percent < 100:
        assert np.abs(relevance[mask]).min() >= np.abs(relevance[~mask]).max()


def test_top_mask_signed_and_invalid(rng):
    relevance = rng.standard_normal((10, 10))
    mask = plot.top_mask(relevance, 10, absolute=False)
    assert relevance[mask].min() >= relevance[~mask].max()
    with pytest.raises(InvalidArgument, match="percent"):
        plot.top_mask(relevance, 101)


def test_grid_draws_every_kind_with_titles_and_colorbars(rng):
    image = rng.uniform(size=(8, 8, 3))
    signed = rng.standard_normal((8, 8))
    panels = [image, signed, plot.top_mask(signed, 20),
              plot.Panel(np.abs(signed), "unsigned"), None]
    titles = [plot.panel_title("input"), plot.panel_title("tabby cat", 0.6234, "p"),
              "top 20 %", "sensitivity", None]
    fig = plot.grid(panels, titles, ncols=3, colorbar=True, suptitle="test")
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert [ax.get_title() for ax in axes[:4]] == ["input", "tabby cat\np = 0.623", "top 20 %",
                                                   "sensitivity"]
    assert len(fig.axes) == 6 + 2  # 2×3 cells + colour bars of the two maps
    with pytest.raises(InvalidArgument, match="titles"):
        plot.grid(panels, titles[:2])


def test_save_figure_writes_png_and_pdf_atomically(tmp_path, rng):
    fig = plot.grid([rng.standard_normal((8, 8))])
    paths = plot.save_figure(fig, tmp_path / "sub" / "fig1.alexnet")
    assert [p.name for p in paths] == ["fig1.alexnet.png", "fig1.alexnet.pdf"]
    assert paths[0].read_bytes().startswith(b"\x89PNG")
    assert paths[1].read_bytes().startswith(b"%PDF")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["fig1.alexnet.pdf",
                                                                     "fig1.alexnet.png"]
    again = plot.save_figure(fig, tmp_path / "sub" / "fig1.alexnet", formats=("pdf",))
    assert again[0].read_bytes() == paths[1].read_bytes()  # no creation date: same bytes


def test_save_figure_leaves_nothing_on_failure(tmp_path, rng):
    fig = plot.grid([rng.standard_normal((8, 8))])
    with pytest.raises(InvalidArgument, match="'bmp0'"):
        plot.save_figure(fig, tmp_path / "f", formats=("png", "bmp0"))
    assert list(tmp_path.iterdir()) == []

    class Broken(Exception):
        pass

    def fail(*args, **kwargs):
        raise Broken

    fig.savefig = fail
    with pytest.raises(Broken):
        plot.save_figure(fig, tmp_path / "f")
    assert list(tmp_path.iterdir()) == []


def test_explanation_figure(tmp_path, rng):
    image = rng.uniform(size=(12, 12, 3))
    maps = {"tabby cat": rng.standard_normal((12, 12)), "tiger cat": rng.standard_normal((12, 12))}
    fig = plot.explanation_figure(image, maps, {"tabby cat": 0.61, "tiger cat": 0.2})
    titles = [ax.get_title() for ax in fig.axes]
    assert "tabby cat\np = 0.61" in titles and titles.count("overlay") == 2
    paths = plot.save_figure(fig, tmp_path / "explain", formats=("png",))
    assert paths[0].stat().st_size > 1000
    with pytest.raises(InvalidArgument, match="empty"):
        plot.explanation_figure(image, {})


def _released_overlay(x, c, gray_factor_bg=0.3):
    """A transcription of the released code's ``get_overlayed_image`` (utils_visualise.py):
    Matplotlib's 256-entry ``seismic`` on ``[-max|c|, max|c|]``, HSV hue and saturation × 0.8
    from the heatmap, value from the greyed, lightened image."""
    import matplotlib as mpl
    from skimage import color

    if np.ndim(x) == 2:  # MNIST
        x = 1 - np.dstack((x, x, x)) * gray_factor_bg
    if np.ndim(x) == 3:
        x = color.rgb2gray(x)
        x = 1 - (1 - x) * 0.5
        x = np.dstack((x, x, x))
    limit = np.max(np.abs(c))
    mask = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(-limit, limit),
                                 cmap=mpl.colormaps["seismic"]).to_rgba(c)[:, :, :3]
    hsv, mask_hsv = color.rgb2hsv(x), color.rgb2hsv(mask)
    hsv[..., 0] = mask_hsv[..., 0]
    hsv[..., 1] = mask_hsv[..., 1] * 0.8
    return color.hsv2rgb(hsv)


@pytest.mark.parametrize("shape", [(16, 18, 3), (16, 18)])
def test_overlay_matches_a_transcription_of_the_released_code(rng, shape):
    """Equal up to the colour table (257 entries with an exact white instead of seismic's
    256): at most about one table step, ~0.01."""
    image = rng.uniform(size=shape)
    relevance = rng.standard_normal(shape[:2]) * 3.0
    np.testing.assert_allclose(plot.overlay(image, relevance),
                               _released_overlay(image, relevance), atol=0.015)


def test_explanation_figure_units_legend_shared_scale_and_values(rng):
    """Issue 18 point 6: a unit on every colour bar, a red/blue legend, an option for one
    scale across panels, and small probabilities with their digits."""
    image = rng.uniform(size=(12, 12, 3))
    maps = {"a": rng.standard_normal((12, 12)), "b": 5 * rng.standard_normal((12, 12))}
    fig = plot.explanation_figure(image, maps, {"a": 6.49e-05, "b": 0.948})
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert [b.get_ylabel() for b in bars] == ["weight of evidence (bits)"] * 2
    texts = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    assert texts[:2] == ["red: evidence for the class", "blue: evidence against it"]
    titles = [ax.get_title() for ax in fig.axes]
    assert "a\np = 6.49e-05" in titles and "b\np = 0.948" in titles

    def limits(figure):
        return [im.get_clim() for ax in figure.axes for im in ax.get_images()
                if im.get_cmap().name == "preddiff_signed"]
    assert limits(fig)[0] != limits(fig)[1]
    shared = plot.explanation_figure(image, maps, unit=plot.unit_label(False, "fc8"),
                                     shared_scale=True)
    assert limits(shared)[0] == limits(shared)[1]
    bars = [ax for ax in shared.axes if ax.get_label() == "<colorbar>"]
    assert bars[0].get_ylabel() == "activation difference of 'fc8'"
    assert plot.value_text(6.49e-05) == "6.49e-05" and plot.value_text(0.9481) == "0.948"
