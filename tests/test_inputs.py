"""Bad input gets a clear error naming the problem and the fix."""

import pytest
import torch

import castvit
from test_models import grid_superpixels, tiny_overrides


@pytest.fixture(scope="module")
def model():
    return castvit.create_model("cast_small", **tiny_overrides("cast_small")).eval()


def good():
    return torch.randn(2, 3, 64, 64), grid_superpixels(2, 64, 64)


def test_superpixel_map_of_another_size_is_refused(model):
    x, sp = good()
    with pytest.raises(ValueError, match=r"does not match the images .*same \(resized\) images"):
        model(x, sp[:, :56, :])


def test_negative_labels_are_refused(model):
    x, sp = good()
    sp[0, 0, 0] = -1
    with pytest.raises(ValueError, match="must be >= 0.*relabel"):
        model(x, sp)


def test_float_labels_are_refused(model):
    x, sp = good()
    with pytest.raises(ValueError, match="must be integers.*int64"):
        model(x, sp.float() + 0.5)


def test_side_not_multiple_of_8_is_refused_with_the_size_to_use(model):
    with pytest.raises(ValueError, match=r"multiples of 8, got 60×64; resize or pad to 64×64"):
        model(torch.randn(1, 3, 60, 64), torch.zeros(1, 60, 64, dtype=torch.long))


@pytest.mark.parametrize("channels", [1, 4])
def test_channel_count_other_than_3_is_refused(model, channels):
    with pytest.raises(ValueError, match=f"3 \\(RGB\\) channels, got {channels}"):
        model(torch.randn(1, channels, 64, 64), grid_superpixels(1, 64, 64))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_images_are_refused(model, bad):
    x, sp = good()
    x[1, 2, 3, 4] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        model(x, sp)


def test_too_few_superpixels_names_the_minimum(model):
    x, sp = good()
    sp[1] = sp[1] % 10  # 10 distinct ids, the first stage needs 16
    with pytest.raises(ValueError, match="image 1 has 10 superpixels .* fewer than the 16 clusters"):
        model(x, sp)


def test_superpixels_lost_on_the_grid_count_against_the_minimum(model):
    x = torch.randn(1, 3, 64, 64)
    sp = torch.zeros(1, 64, 64, dtype=torch.long)
    sp[0, 1::8, 1::8] = torch.arange(1, 65).reshape(8, 8)  # 65 ids, none on a cell's top-left pixel
    with pytest.raises(ValueError, match="has 1 superpixels on the 8-px token grid"):
        model(x, sp)


def test_missing_batch_dimension_is_explained(model):
    x, sp = good()
    with pytest.raises(ValueError, match=r"B×3×H×W .*images\[None\]"):
        model(x[0], sp[0])
