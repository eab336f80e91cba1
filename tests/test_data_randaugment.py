"""RandAugment ``rand-m9-mstd0.5-inc1`` as timm 0.4.12 defines it, and the bicubic crop and
resize of the DeiT recipe.

Every expected value is written here from the definitions — timm's level functions
(magnitude → argument) and what PIL does with the argument — not taken from the
implementation: thresholds, bit masks, the luma formula, the blend, the SMOOTH kernel,
the affine convention (output pixel centre ``(x + ½, y + ½)`` mapped to the input, origin
at the top-left corner), the fill (ImageNet mean in 8-bit levels) and PIL's transform
bicubic (cubic convolution with a = −1).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from castvit.data import transforms as T


pytestmark = pytest.mark.usefixtures("one_thread")


def levels_image(rows: list[list[list[int]]]) -> torch.Tensor:
    """``3×H×W`` float image in [0, 1] from 8-bit levels given as ``[channel][row][col]``."""
    return torch.tensor(rows, dtype=torch.float32) / 255.0


def as_levels(image: torch.Tensor) -> np.ndarray:
    return (image * 255.0).round().to(torch.int64).numpy()


@pytest.fixture
def ramp() -> torch.Tensor:
    """5×6 image: R = 40·x + 10, G = 30·y + 20, B = 200 − 10·(x + y)."""
    y, x = np.mgrid[0:5, 0:6]
    return levels_image([(40 * x + 10).tolist(), (30 * y + 20).tolist(), (200 - 10 * (x + y)).tolist()])


# ------------------------------------------------------------------ level → argument


@pytest.mark.parametrize("m", [0.0, 4.5, 9.0, 9.7, 10.0])
def test_level_arguments_follow_timms_formulas(m):
    assert T.ra_level_arg("Rotate", m) == pytest.approx(m / 10 * 30)
    assert T.ra_level_arg("Rotate", m, negate=True) == pytest.approx(-m / 10 * 30)
    assert T.ra_level_arg("PosterizeIncreasing", m) == 4 - int(m / 10 * 4)
    assert T.ra_level_arg("Posterize", m) == int(m / 10 * 4)
    assert T.ra_level_arg("SolarizeIncreasing", m) == 256 - int(m / 10 * 256)
    assert T.ra_level_arg("Solarize", m) == int(m / 10 * 256)
    assert T.ra_level_arg("SolarizeAdd", m) == int(m / 10 * 110)
    for op in ("Color", "Contrast", "Brightness", "Sharpness"):
        assert T.ra_level_arg(op, m) == pytest.approx(m / 10 * 1.8 + 0.1)
        assert T.ra_level_arg(op + "Increasing", m) == pytest.approx(1 + m / 10 * 0.9)
        assert T.ra_level_arg(op + "Increasing", m, negate=True) == pytest.approx(1 - m / 10 * 0.9)
    assert T.ra_level_arg("ShearX", m, negate=True) == pytest.approx(-m / 10 * 0.3)
    assert T.ra_level_arg("TranslateYRel", m) == pytest.approx(m / 10 * 0.45)
    for op in ("AutoContrast", "Equalize", "Invert"):
        assert T.ra_level_arg(op, m) is None


def test_at_magnitude_9_increasing_posterize_keeps_one_bit_not_five():
    """timm's inc1 keeps 4 − int(0.4·9) = 1 bit; castvit kept 5 before."""
    assert T.ra_level_arg("PosterizeIncreasing", 9.0) == 1
    assert T.ra_level_arg("SolarizeIncreasing", 9.0) == 256 - 230


def test_the_increasing_op_list_is_timms():
    assert T.RA_OPS_INCREASING == (
        "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
        "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
        "TranslateXRel", "TranslateYRel")
    assert T.RA_FILL == (124, 116, 104), "round(255 · ImageNet mean)"


# ------------------------------------------------------------------ colour operations


def test_posterize_keeps_the_top_bits():
    img = levels_image([[[0, 63, 64, 127, 128, 255]]] * 3)
    assert as_levels(T.ra_op(img, "PosterizeIncreasing", 1))[0].tolist() == [[0, 0, 0, 0, 128, 128]]
    assert as_levels(T.ra_op(img, "PosterizeIncreasing", 2))[0].tolist() == [[0, 0, 64, 64, 128, 192]]
    assert as_levels(T.ra_op(img, "PosterizeIncreasing", 0)).max() == 0, "0 bits: black"


def test_solarize_inverts_levels_at_or_above_the_threshold():
    img = levels_image([[[0, 25, 26, 100, 255]]] * 3)
    assert as_levels(T.ra_op(img, "SolarizeIncreasing", 26))[0].tolist() == [[0, 25, 255 - 26, 155, 0]]
    assert as_levels(T.ra_op(img, "SolarizeIncreasing", 256))[0].tolist() == [[0, 25, 26, 100, 255]]


def test_solarize_add_adds_to_levels_below_128_and_saturates():
    img = levels_image([[[0, 100, 127, 128, 250]]] * 3)
    assert as_levels(T.ra_op(img, "SolarizeAdd", 99))[0].tolist() == [[99, 199, 226, 128, 250]]
    img = levels_image([[[120, 127]]] * 3)
    assert as_levels(T.ra_op(img, "SolarizeAdd", 200))[0].tolist() == [[255, 255]]


def test_invert_autocontrast_and_equalize(ramp):
    assert (as_levels(T.ra_op(ramp, "Invert")) == 255 - as_levels(ramp)).all()
    # autocontrast: each channel's [lo, hi] stretched to [0, 255], truncated
    red = np.array([10, 50, 90, 130, 170, 210], dtype=np.float64)
    scale = 255.0 / (210 - 10)
    expected = np.floor(red * scale + (-10 * scale))  # PIL: int(v·scale + offset), offset = −lo·scale
    assert as_levels(T.ra_op(ramp, "AutoContrast"))[0, 0].tolist() == expected.tolist()
    # equalize on one channel of 8 pixels: levels 10 ×4, 20 ×2, 30 ×1, 40 ×1
    chan = [[10, 10, 10, 10, 20, 20, 30, 40]]
    img = levels_image([chan, chan, chan])
    step = (8 - 1) // 255  # (N − count of the last level) // 255 = 0 → identity
    assert step == 0 and as_levels(T.ra_op(img, "Equalize"))[0].tolist() == chan
    chan = [[10] * 300 + [20] * 300 + [30] * 100]
    img = levels_image([chan, chan, chan])
    step = (700 - 100) // 255  # 2
    lut = {10: (step // 2 + 0) // step, 20: (step // 2 + 300) // step, 30: (step // 2 + 600) // step}
    assert as_levels(T.ra_op(img, "Equalize"))[0, 0].tolist() == [min(255, lut[v]) for v in chan[0]]


def test_enhancements_blend_with_their_degenerate_image(ramp):
    lv = as_levels(ramp).astype(np.float64)
    r, g, b = lv
    luma = np.floor((19595 * r + 38470 * g + 7471 * b + 32768) / 65536)  # PIL's RGB → L
    for f in (0.19, 0.64, 1.81):
        def blend(deg):
            return np.clip(np.floor(np.float32(deg) + np.float32(f) * np.float32(lv - deg)), 0, 255)

        np.testing.assert_array_equal(as_levels(T.ra_op(ramp, "ColorIncreasing", f)), blend(luma[None]))
        mean = int(luma.mean() + 0.5)
        np.testing.assert_array_equal(as_levels(T.ra_op(ramp, "ContrastIncreasing", f)), blend(np.full_like(lv, mean)))
        np.testing.assert_array_equal(as_levels(T.ra_op(ramp, "BrightnessIncreasing", f)), blend(np.zeros_like(lv)))
        smooth = lv.copy()  # SMOOTH: [[1,1,1],[1,5,1],[1,1,1]]/13 inside, border pixels kept
        for c in range(3):
            for i in range(1, 4):
                for j in range(1, 5):
                    win = lv[c, i - 1:i + 2, j - 1:j + 2]
                    smooth[c, i, j] = min(255, math.floor((win.sum() + 4 * lv[c, i, j]) / 13 + 0.5))
        np.testing.assert_array_equal(as_levels(T.ra_op(ramp, "SharpnessIncreasing", f)), blend(smooth))


# ------------------------------------------------------------------ geometric operations


def test_shear_x_samples_x_plus_factor_times_y_from_the_top_left_origin(ramp):
    """Factor 2 puts every sample on a pixel centre: out(x, y) = in(x + 2y + 1, y), else the fill."""
    out = as_levels(T.ra_op(ramp, "ShearX", 2.0))
    src = as_levels(ramp)
    for y in range(5):
        for x in range(6):
            xs = x + 2 * y + 1
            expected = src[:, y, xs] if xs < 6 else np.array(T.RA_FILL)
            assert out[:, y, x].tolist() == expected.tolist(), (x, y)


def test_shear_y_and_translations_use_the_same_convention(ramp):
    src = as_levels(ramp)
    out = as_levels(T.ra_op(ramp, "ShearY", 2.0))  # out(x, y) = in(x, y + 2x + 1)
    for y in range(5):
        for x in range(6):
            expected = src[:, y + 2 * x + 1, x] if y + 2 * x + 1 < 5 else np.array(T.RA_FILL)
            assert out[:, y, x].tolist() == expected.tolist()
    out = as_levels(T.ra_op(ramp, "TranslateXRel", 2 / 6))  # 2 px: out(x) = in(x + 2)
    assert out[:, :, :4].tolist() == src[:, :, 2:].tolist()
    assert (out[:, :, 4:] == np.array(T.RA_FILL).reshape(3, 1, 1)).all()
    out = as_levels(T.ra_op(ramp, "TranslateYRel", -0.2))  # −1 px: out(y) = in(y − 1)
    assert out[:, 1:].tolist() == src[:, :4].tolist()
    assert (out[:, 0] == np.array(T.RA_FILL).reshape(3, 1)).all()


def test_rotate_turns_counter_clockwise_about_the_centre(ramp):
    square = ramp[:, :5, :5]
    np.testing.assert_array_equal(as_levels(T.ra_op(square, "Rotate", 90.0)),
                                  as_levels(torch.rot90(square, 1, dims=(-2, -1))))


def test_fractional_samples_use_pils_transform_bicubic():
    """Half a pixel to the left: weights (−1/8, 5/8, 5/8, −1/8) of the a = −1 cubic kernel
    (bilinear would give ½, ½; Keys' a = −½ kernel −1/16, 9/16, …), edges clamped,
    truncated to levels."""
    row = [0, 0, 100, 200, 50, 250, 250, 10]
    img = levels_image([[row]] * 3)
    out = as_levels(T.ra_op(img, "TranslateXRel", 0.5 / len(row)))[0, 0]
    v = [row[0]] + row + [row[-1], row[-1]]  # clamped neighbours
    expected = [math.floor(min(255, max(0, -v[i] / 8 + 5 * v[i + 1] / 8 + 5 * v[i + 2] / 8 - v[i + 3] / 8)))
                for i in range(len(row) - 1)]
    assert out[:-1].tolist() == expected
    assert out[-1] == T.RA_FILL[0], "the last sample falls outside the image"
    bilinear = as_levels(T.ra_op(img, "TranslateXRel", 0.5 / len(row), interpolation="bilinear"))[0, 0]
    assert bilinear[:-1].tolist() == [math.floor((row[i] + row[i + 1]) / 2) for i in range(len(row) - 1)]


# ------------------------------------------------------------------ the policy


def test_rand_augment_draws_timms_ops_magnitudes_signs_and_skips(monkeypatch):
    calls = []

    def record(image, name, arg=None, **kw):
        calls.append((name, arg, kw))
        return image

    monkeypatch.setattr(T, "ra_op", record)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 8, 8)
    n = 3000
    for _ in range(n):
        T.rand_augment(x, gen)
    assert abs(len(calls) / (2 * n) - 0.5) < 0.03, "each of the 2 ops applies with probability ½"
    assert {c[0] for c in calls} == set(T.RA_OPS_INCREASING)
    assert all(kw == {"fill": T.RA_FILL, "interpolation": "bicubic"} for _, _, kw in calls)
    degrees = np.array([a for name, a, _ in calls if name == "Rotate"])
    assert (degrees > 0).any() and (degrees < 0).any(), "random sign"
    magnitudes = np.abs(degrees) / 3.0  # 30·m/10 degrees
    assert magnitudes.max() <= 10.0 + 1e-9
    assert abs(magnitudes.mean() - 9.0) < 0.1 and 0.35 < magnitudes.std() < 0.55, "m ~ N(9, 0.5), clipped at 10"
    bits = {a for name, a, _ in calls if name == "PosterizeIncreasing"}
    assert bits <= {0, 1, 2}, "4 − int(0.4·m) for m near 9"


def test_train_view_crops_with_the_configured_interpolation():
    image = (torch.rand(3, 40, 56, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    sp = T.SuperpixelConfig(method="grid", n_segments=16)
    for interpolation in ("bilinear", "bicubic"):
        view = T.TrainView(32, hflip_prob=0.0, interpolation=interpolation, superpixels=sp)
        got = view(image, torch.Generator().manual_seed(3))
        crop = T.random_resized_crop(T.to_float_image(image), 32, torch.Generator().manual_seed(3),
                                     interpolation=interpolation)
        torch.testing.assert_close(got["image"], T.finish_view(crop, sp)["image"])
    with pytest.raises(ValueError, match="interpolation"):
        T.TrainView(32, interpolation="lanczos")


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_resize_agrees_with_pil_within_one_level(mode):
    from PIL import Image

    arr = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    arr = np.cumsum(arr, axis=1) // np.arange(1, 71)[None, :, None]  # some structure
    arr = arr.astype(np.uint8)
    for size in ((21, 29), (90, 110), (50, 140)):
        pil = np.asarray(Image.fromarray(arr).resize(size[::-1], Image.BICUBIC if mode == "bicubic" else Image.BILINEAR))
        ours = T.resize(torch.from_numpy(arr.transpose(2, 0, 1)).float() / 255, size, mode)
        diff = np.abs(as_levels(ours).transpose(1, 2, 0) - pil.astype(np.int64))
        assert diff.max() <= 1, (size, diff.max())


def test_eval_view_resizes_as_torchvision_then_crops_the_centre():
    image = torch.zeros(3, 300, 451, dtype=torch.uint8)
    x = T.to_float_image(image)
    resized = T.resize(x, 256)
    assert resized.shape[-2:] == (256, int(256 * 451 / 300)), "long side truncated, as torchvision"
    marked = torch.zeros(3, 33, 40)
    marked[:, 0, :] = 1.0
    crop = T.center_crop(marked, 30)
    # offsets int(round((33 − 30)/2)) = 2 and int(round((40 − 30)/2)) = 5
    assert crop.shape[-2:] == (30, 30) and crop[:, 0].sum() == 0
    torch.testing.assert_close(crop, marked[:, 2:32, 5:35])
    view = T.EvalView(224, interpolation="bicubic", superpixels=T.SuperpixelConfig(method="grid", n_segments=16))
    assert view(image)["image"].shape == (3, 224, 224)
