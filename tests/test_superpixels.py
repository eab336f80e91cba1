"""castvit.superpixels: SEEDS/SLIC labels, the batch API, presets and input checks."""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import cv2
import numpy as np
import pytest
import skimage.data
import skimage.segmentation
import torch
from skimage.transform import resize

from castvit.ops import relabel_contiguous
from castvit.superpixels import (
    FINETUNE_SEEDS,
    PRETRAIN_SEEDS,
    compute_superpixels,
    compute_superpixels_single,
    seeds,
    seeds_num_superpixels,
    segmentation_n_segments,
    slic,
)

NAMES = ("astronaut", "coffee", "chelsea", "rocket")


@lru_cache(maxsize=None)
def _natural(name: str, height: int, width: int) -> np.ndarray:
    image = getattr(skimage.data, name)()
    return resize(image, (height, width), preserve_range=True, anti_aliasing=True).astype(np.uint8)


def natural(name: str = "astronaut", height: int = 64, width: int = 64) -> np.ndarray:
    """A real photo from scikit-image, ``height×width×3`` uint8 (a fresh copy)."""
    return _natural(name, height, width).copy()


def natural_batch(height: int = 64, width: int = 64, size: int = 3) -> np.ndarray:
    """``size×height×width×3`` uint8, different photos."""
    return np.stack([natural(NAMES[i % len(NAMES)], height, width) for i in range(size)])


def nearly_uniform(size: int = 64) -> np.ndarray:
    """Grey with ±1 noise: SLIC at compactness 10 merges it into a handful of labels."""
    rng = np.random.default_rng(0)
    return (np.full((size, size, 3), 128) + rng.integers(0, 2, (size, size, 3))).astype(np.uint8)


def assert_contiguous_labels(labels: np.ndarray) -> None:
    assert labels.dtype == np.int64
    assert labels.min() == 0
    assert np.array_equal(np.unique(labels), np.arange(labels.max() + 1))


# --------------------------------------------------------------------------- SEEDS


@pytest.mark.parametrize("name", NAMES)
def test_seeds_gives_exactly_196_labels_at_224_with_n_196(name):
    labels = seeds(natural(name, 224, 224), 196)
    assert labels.shape == (224, 224)
    assert labels.max() + 1 == 196
    assert_contiguous_labels(labels)


@pytest.mark.parametrize("height,width,expected_k", [(64, 64, 100), (240, 320, 192), (256, 256, 144),
                                                      (512, 512, 169)])
def test_seeds_label_count_follows_the_block_grid_not_n_segments(height, width, expected_k):
    assert seeds_num_superpixels(height, width, 196) == expected_k
    assert seeds(natural("coffee", height, width), 196).max() + 1 == expected_k


def test_seeds_matches_the_authors_opencv_pipeline_on_cielab():
    image = natural("chelsea", 96, 128)
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    engine = cv2.ximgproc.createSuperpixelSEEDS(128, 96, 3, 48, 1, 2, 15, False)
    engine.iterate(lab, 20)
    expected = relabel_contiguous(engine.getLabels())
    assert np.array_equal(seeds(image, 48, histogram_bins=15, num_iterations=20), expected)


def test_seeds_refuses_more_segments_than_its_block_grid_allows_instead_of_hanging():
    # OpenCV itself hangs on a 16×16 image with n=196 (blocks under 2×2 pixels).
    with pytest.raises(ValueError, match="too many for a 16×16 image.*Use fewer segments"):
        seeds(natural(height=16, width=16), 196)


def test_seeds_refuses_an_image_too_elongated_for_its_grid():
    with pytest.raises(ValueError, match="too elongated.*method='slic'"):
        seeds(natural(height=8, width=2000), 10)


# --------------------------------------------------------------------------- SLIC


def test_slic_equals_scikit_image_when_the_first_try_gives_enough_labels():
    image = natural("rocket")
    expected = skimage.segmentation.slic(image, n_segments=64, compactness=10.0, convert2lab=True, start_label=0)
    assert expected.max() + 1 >= 32  # the first try suffices, so no retry happens
    assert np.array_equal(slic(image, 64), relabel_contiguous(expected))


def test_slic_retries_with_triple_compactness_until_half_the_labels_come_back():
    image = nearly_uniform()
    tries = {c: skimage.segmentation.slic(image, n_segments=64, compactness=c, convert2lab=True, start_label=0)
             for c in (10.0, 30.0, 90.0, 270.0)}
    assert [t.max() + 1 < 32 for t in tries.values()] == [True, True, True, False]  # needs all 3 retries
    labels = slic(image, 64, compactness=10.0, max_retries=3)
    assert labels.max() + 1 >= 32
    assert np.array_equal(labels, relabel_contiguous(tries[270.0]))


def test_slic_warns_and_returns_the_last_try_when_retries_run_out():
    image = nearly_uniform()
    with pytest.warns(RuntimeWarning, match="raise max_retries or compactness"):
        labels = slic(image, 64, compactness=10.0, max_retries=1)
    last_try = skimage.segmentation.slic(image, n_segments=64, compactness=30.0, convert2lab=True, start_label=0)
    assert np.array_equal(labels, relabel_contiguous(last_try))


@pytest.mark.parametrize("backend", [seeds, slic])
def test_backends_return_contiguous_int64_labels_of_the_image_shape(backend):
    labels = backend(natural("coffee", 48, 80), 40)
    assert labels.shape == (48, 80)
    assert_contiguous_labels(labels)


@pytest.mark.parametrize("backend", [seeds, slic])
def test_same_input_gives_same_labels(backend):
    image = natural("astronaut")
    assert np.array_equal(backend(image, 64), backend(image.copy(), 64))


# --------------------------------------------------------------------------- batch API


def _as_layout(batch: np.ndarray, layout: str):
    if layout == "numpy_uint8_bhwc":
        return batch
    if layout == "torch_uint8_bchw":
        return torch.from_numpy(batch).permute(0, 3, 1, 2)
    if layout == "torch_uint8_bhwc":
        return torch.from_numpy(batch)
    if layout == "torch_float_bchw":
        return torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255
    if layout == "list_of_arrays":
        return list(batch)
    raise AssertionError(layout)


@pytest.mark.parametrize("layout", ["numpy_uint8_bhwc", "torch_uint8_bchw", "torch_uint8_bhwc",
                                    "torch_float_bchw", "list_of_arrays"])
@pytest.mark.parametrize("method,backend", [("seeds", seeds), ("slic", slic)])
def test_batch_equals_per_image_calls(method, backend, layout):
    batch = natural_batch()
    labels = compute_superpixels(_as_layout(batch, layout), method, 64)
    assert labels.dtype == torch.int64 and labels.shape == (3, 64, 64)
    for b, image in enumerate(batch):
        assert np.array_equal(labels[b].numpy(), backend(image, 64))


@pytest.mark.parametrize("method", ["seeds", "slic"])
def test_threaded_batch_equals_serial_batch(method):
    batch = natural_batch(size=4)
    serial = compute_superpixels(batch, method, 64, num_workers=0)
    assert torch.equal(compute_superpixels(batch, method, 64, num_workers=2), serial)
    assert torch.equal(compute_superpixels(batch, method, 64), serial)


def test_batch_labels_are_contiguous_per_image():
    labels = compute_superpixels(natural_batch(), "seeds", 64).numpy()
    for image_labels in labels:
        assert_contiguous_labels(image_labels)


def test_float_images_are_rounded_not_truncated_to_uint8():
    batch = np.maximum(natural_batch(size=2), 1)
    just_below = torch.from_numpy(batch).permute(0, 3, 1, 2).double().sub(0.4) / 255  # truncates to batch - 1
    assert not torch.equal(compute_superpixels(batch - 1), compute_superpixels(batch))  # so the test can tell
    assert torch.equal(compute_superpixels(just_below), compute_superpixels(batch))


def test_single_image_api_accepts_either_layout_and_returns_h_w_labels():
    image = natural("chelsea", 40, 56)
    channels_first = torch.from_numpy(image).permute(2, 0, 1)
    labels = compute_superpixels_single(channels_first, "seeds", 30)
    assert labels.shape == (40, 56)
    assert np.array_equal(labels, seeds(image, 30))


def test_keyword_arguments_reach_the_backend():
    batch = natural_batch(size=2)
    labels = compute_superpixels(batch, "slic", 64, compactness=1000.0)
    assert np.array_equal(labels[0].numpy(), slic(batch[0], 64, compactness=1000.0))
    assert not np.array_equal(labels[0].numpy(), slic(batch[0], 64))


# --------------------------------------------------------------------------- presets


def test_presets_hold_the_published_settings():
    assert dataclasses.asdict(PRETRAIN_SEEDS) == dict(n_segments=196, histogram_bins=15, num_iterations=20)
    assert (FINETUNE_SEEDS.histogram_bins, FINETUNE_SEEDS.num_iterations) == (5, 15)
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRETRAIN_SEEDS.n_segments = 10


def test_segmentation_uses_one_superpixel_per_256_pixels():
    assert segmentation_n_segments(512, 512) == 1024
    assert segmentation_n_segments(240, 320) == 300


def test_presets_apply_as_keyword_arguments():
    batch = natural_batch(size=1)
    preset = dataclasses.replace(FINETUNE_SEEDS, n_segments=segmentation_n_segments(64, 64))
    labels = compute_superpixels(batch, **dataclasses.asdict(preset))
    assert np.array_equal(labels[0].numpy(), seeds(batch[0], 16, histogram_bins=5, num_iterations=15))


# --------------------------------------------------------------------------- bad input

RGB = natural_batch(size=1)

BAD_INPUTS = {
    "grayscale_2d": (lambda: compute_superpixels_single(RGB[0, ..., 0]), "grayscale.*convert it to RGB"),
    "grayscale_tensor": (lambda: compute_superpixels(torch.zeros(1, 1, 32, 32, dtype=torch.uint8)),
                         "3 RGB channels.*Convert grayscale to RGB"),
    "rgba": (lambda: compute_superpixels(np.zeros((1, 32, 32, 4), np.uint8)), "3 RGB channels.*RGBA to RGB"),
    "uint16": (lambda: compute_superpixels(RGB.astype(np.uint16) * 257), "dtype uint16.*16-bit"),
    "float_outside_unit_range": (lambda: compute_superpixels(RGB.astype(np.float32)),
                                 r"\[0, 1\].*before mean/std normalisation"),
    "normalised_tensor": (lambda: compute_superpixels(torch.randn(1, 3, 32, 32)), r"must lie in \[0, 1\]"),
    "nan": (lambda: compute_superpixels(torch.full((1, 3, 32, 32), float("nan"))), "NaN or infinite"),
    "too_small": (lambda: compute_superpixels(np.zeros((1, 4, 4, 3), np.uint8)), "4×4.*at least 8×8"),
    "zero_segments": (lambda: compute_superpixels(RGB, n_segments=0), "positive integer, got 0"),
    "float_segments": (lambda: seeds(RGB[0], 19.6), "positive integer, got 19.6"),
    "unknown_method": (lambda: compute_superpixels(RGB, method="felzenszwalb"), "'felzenszwalb'.*seeds, slic"),
    "single_image_to_batch_api": (lambda: compute_superpixels(RGB[0]), "compute_superpixels_single.*image\\[None\\]"),
    "list_of_mixed_sizes": (lambda: compute_superpixels([RGB[0], RGB[0, :32]]), "share one size"),
    "empty_list": (lambda: compute_superpixels([]), "empty list"),
    "negative_workers": (lambda: compute_superpixels(RGB, num_workers=-1), "num_workers"),
    "negative_retries": (lambda: slic(RGB[0], max_retries=-1), "max_retries must be >= 0"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_value_error_that_names_the_fix(case):
    call, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        call()


def test_slic_torch_is_a_registered_method_of_the_batch_api():
    from castvit.superpixels import METHODS

    images = np.stack([natural(name) for name in NAMES])
    labels = compute_superpixels(images, "slic_torch", 49)
    assert "slic_torch" in METHODS
    assert labels.shape == (4, 64, 64) and labels.dtype == torch.int64
    for lab in labels:
        assert 1 < int(lab.max()) + 1 <= 49
        assert torch.equal(torch.unique(lab), torch.arange(int(lab.max()) + 1))
