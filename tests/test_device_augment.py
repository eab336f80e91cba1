"""The device-side MoCo views: the same random decisions as the CPU pipeline (drawn from
the same per-sample generator), applied batched; equal to the CPU ops image by image."""

import numpy as np
import pytest
import torch
from skimage import data

from castvit.data.device_augment import (NUM_PARAMS, DeviceMoCoViews, apply_view_params, device_moco_batch,
                                         draw_view_params)
from castvit.data.transforms import MoCoViews, SuperpixelConfig, random_resized_crop, to_float_image


def photo() -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(data.astronaut()[::4, ::4])).permute(2, 0, 1)


def cpu_view_and_params(views, image, seed, which):
    """(the CPU pipeline's view, the float crop and the drawn params) from one seed."""
    image = to_float_image(image)
    ref = views.view(image, torch.Generator().manual_seed(seed), which)
    gen = torch.Generator().manual_seed(seed)
    crop = random_resized_crop(image, views.size, gen, scale=tuple(views.scale))
    params = draw_view_params(views, gen, which)
    return ref, crop, params


@pytest.mark.parametrize("which", [0, 1])
def test_batched_device_ops_equal_the_cpu_view_image_by_image(which):
    views = MoCoViews(size=64, jitter_prob=0.9, grayscale_prob=0.3, solarize_prob=(0.4, 0.5))
    image = photo()
    refs, crops, params = zip(*(cpu_view_and_params(views, image, seed, which) for seed in range(24)))
    out = apply_view_params(torch.stack(crops), torch.stack(params))
    for k, ref in enumerate(refs):
        assert torch.allclose(out[k], ref, atol=2e-5), f"sample {k}: {(out[k] - ref).abs().max()}"
    p = torch.stack(params)
    # the batch exercised every branch
    assert p[:, 0].any() and p[:, 9].any() and p[:, 10].any() and p[:, 13].any() and not p[:, 13].all()


def test_drawing_consumes_the_generator_exactly_as_the_cpu_view():
    views = MoCoViews(size=64)
    image = to_float_image(photo())
    for seed in range(10):
        a = torch.Generator().manual_seed(seed)
        views.view(image, a, 1)
        b = torch.Generator().manual_seed(seed)
        random_resized_crop(image, views.size, b, scale=tuple(views.scale))
        draw_view_params(views, b, 1)
        assert torch.equal(a.get_state(), b.get_state())


def test_the_distribution_of_decisions_matches_the_recipe_probabilities():
    views = MoCoViews(size=32)
    gen = torch.Generator().manual_seed(0)
    p1 = torch.stack([draw_view_params(views, gen, 0) for _ in range(3000)])
    p2 = torch.stack([draw_view_params(views, gen, 1) for _ in range(3000)])
    assert p1.shape[1] == NUM_PARAMS
    for col, want1, want2 in ((0, 0.8, 0.8), (9, 0.2, 0.2), (10, 1.0, 0.1), (12, 0.0, 0.2), (13, 0.5, 0.5)):
        assert abs(float(p1[:, col].mean()) - want1) < 0.03 and abs(float(p2[:, col].mean()) - want2) < 0.03
    factors = p1[p1[:, 0] > 0][:, 5:9]
    assert factors[:, 0].min() >= 0.6 and factors[:, 0].max() <= 1.4 and factors[:, 3].abs().max() <= 0.1


def test_worker_samples_are_uint8_crops_and_the_device_batch_is_what_moco_trains_on():
    views = MoCoViews(size=64)
    worker = DeviceMoCoViews(views)
    samples = [worker(photo(), torch.Generator().manual_seed(s)) for s in range(4)]
    assert samples[0]["crop"].dtype == torch.uint8 and samples[0]["crop"].shape == (3, 64, 64)
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    out = device_moco_batch(batch, SuperpixelConfig(method="grid", n_segments=64), "cpu")
    assert out["image"].shape == out["image2"].shape == (4, 3, 64, 64)
    assert out["superpixels"].shape == (4, 64, 64) and out["superpixels"].dtype == torch.int64
    # deterministic: the same seeds give the same batch
    again = [worker(photo(), torch.Generator().manual_seed(s)) for s in range(4)]
    assert all(torch.equal(a["params2"], b["params2"]) and torch.equal(a["crop"], b["crop"])
               for a, b in zip(samples, again))
