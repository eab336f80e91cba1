"""Tensor augmentations and the view pipelines (superpixels per view, before normalisation)."""

from __future__ import annotations

import math

import pytest
import torch

from castvit.data import transforms as T
from castvit.ops import normalize_images
from castvit.superpixels import compute_superpixels_single


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def image() -> torch.Tensor:
    """A 48×64 uint8 image with structure (gradients and a bright square)."""
    y, x = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 64), indexing="ij")
    img = torch.stack([x, y, 0.5 * (x + y)])
    img[:, 10:30, 20:40] = torch.tensor([0.9, 0.2, 0.1]).view(3, 1, 1)
    return (img * 255).round().to(torch.uint8)


def test_random_resized_crop_box_respects_scale_ratio_and_bounds():
    g = gen()
    for _ in range(200):
        top, left, h, w = T.random_resized_crop_box(100, 150, (0.08, 1.0), (3 / 4, 4 / 3), g)
        assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 150
        assert h > 0 and w > 0


def test_color_ops_stay_in_range_and_identity_factors_do_nothing(image):
    x = T.to_float_image(image)
    for out in (T.color_jitter(x, gen()), T.gaussian_blur(x, 1.3), T.solarize(x), T.grayscale(x),
                T.rand_augment(x, gen(), magnitude=10), T.equalize(x), T.autocontrast(x)):
        assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(T.adjust_brightness(x, 1.0), x)
    torch.testing.assert_close(T.adjust_saturation(x, 1.0), x)
    torch.testing.assert_close(T.adjust_hue(x, 0.0), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(T.hsv_to_rgb(T.rgb_to_hsv(x)), x, atol=1e-5, rtol=0)


def test_solarize_inverts_pixels_at_or_above_half():
    x = torch.tensor([0.2, 0.5, 0.9]).view(3, 1, 1)
    assert T.solarize(x).flatten().tolist() == pytest.approx([0.2, 0.5, 0.1])


def test_gaussian_blur_preserves_the_mean_of_a_constant_image():
    x = torch.full((3, 20, 20), 0.3)
    torch.testing.assert_close(T.gaussian_blur(x, 2.0), x)


def test_moco_views_have_the_contract_shapes_and_differ(image):
    views = T.MoCoViews(32, superpixels=T.SuperpixelConfig(method="grid", n_segments=16))(image, gen())
    assert views["image"].shape == views["image2"].shape == (3, 32, 32)
    assert views["image"].dtype == torch.float32
    assert views["superpixels"].shape == (32, 32) and views["superpixels"].dtype == torch.int64
    assert not torch.equal(views["image"], views["image2"])


def test_views_are_a_function_of_the_generator_seed(image):
    pipe = T.MoCoViews(32, superpixels=T.SuperpixelConfig(n_segments=16, histogram_bins=5, num_iterations=4))
    a, b, c = pipe(image, gen(5)), pipe(image, gen(5)), pipe(image, gen(6))
    for k in a:
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["image"], c["image"])


def test_superpixels_are_computed_on_the_augmented_view_before_normalisation(image):
    sp = T.SuperpixelConfig(method="seeds", n_segments=64, histogram_bins=5, num_iterations=6)
    view = T.TrainView(32, scale=(0.3, 1.0), superpixels=sp)(image, gen(3))
    # undo the normalisation: the uint8 view SEEDS saw
    mean = torch.tensor(T.IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(T.IMAGENET_STD).view(3, 1, 1)
    view_uint8 = ((view["image"] * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
    expected = compute_superpixels_single(view_uint8, "seeds", 64, histogram_bins=5, num_iterations=6)
    assert torch.equal(view["superpixels"], torch.as_tensor(expected))
    torch.testing.assert_close(view["image"], normalize_images(view_uint8[None])[0], atol=1e-5, rtol=0)


def test_eval_view_resizes_the_short_side_then_center_crops(image):
    view = T.EvalView(32, crop_fraction=0.875, superpixels=T.SuperpixelConfig(method="grid", n_segments=16))
    out = view(image)
    assert out["image"].shape == (3, 32, 32)
    assert T.resize(T.to_float_image(image), math.floor(32 / 0.875 + 0.5)).shape[-2] == 37


def test_random_erase_gives_the_box_its_own_superpixel(image):
    view = T.finish_view(T.to_float_image(image)[:, :32, :32], T.SuperpixelConfig(method="grid", n_segments=16))
    erased = T.random_erase(view, gen(1), scale=(0.1, 0.2))
    changed = (erased["image"] != view["image"]).any(0)
    assert changed.any()
    inside = erased["superpixels"][changed].unique()
    assert len(inside) == 1
    assert not (erased["superpixels"][~changed] == inside).any()


def test_grid_superpixels_align_with_the_token_grid():
    labels = T.grid_superpixels(32, 32, 16)
    assert labels.unique().numel() == 16 and labels[::8, ::8].unique().numel() == 16


def test_superpixel_config_rejects_unknown_methods():
    with pytest.raises(ValueError, match="seeds"):
        T.SuperpixelConfig(method="felzenszwalb")
