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


# ------------------------------------------------------------------ supervised (DeiT) and segmentation views

from castvit.data.device_augment import (NUM_PM_PARAMS, DeviceSegView, DeviceTrainView, apply_photometric,
                                         compact_labels, draw_photometric_params)
from castvit.data.segmentation import IGNORE_INDEX, SegSuperpixels, SegTrainView, photometric_distortion
from castvit.data.transforms import TrainView, relabel_compact

GRID = SuperpixelConfig(method="grid", n_segments=16)


def collate(samples):
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def levels(x):
    """Normalised images back to (float) 8-bit levels."""
    from castvit.ops import IMAGENET_MEAN, IMAGENET_STD

    return (x * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) * 255


@pytest.mark.parametrize("rand_augment", [False, True])
def test_device_train_view_equals_the_cpu_view(rand_augment):
    """Crop, flip and RandAugment in the worker, jitter and the rest on the device: the
    crop is already whole 8-bit levels, so the views agree up to float rounding (a level
    at most, at a rounding edge) and the superpixels exactly."""
    view = TrainView(48, scale=(0.3, 1.0), jitter=0.4, rand_augment=rand_augment, superpixels=GRID)
    image = photo()
    seeds = range(12)
    refs = [view(image, torch.Generator().manual_seed(s)) for s in seeds]
    out = DeviceTrainView(view).device_batch(
        collate([DeviceTrainView(view)(image, torch.Generator().manual_seed(s)) for s in seeds]), "cpu")
    for k, ref in enumerate(refs):
        diff = (levels(out["image"][k]) - levels(ref["image"])).abs()
        assert diff.max() < 1.01 and (diff < 0.01).float().mean() > 0.99, f"sample {k}: {diff.max()}"
        assert torch.equal(out["superpixels"][k], ref["superpixels"])


def test_device_random_erase_draws_the_cpu_box_and_gives_it_the_last_id():
    view = TrainView(48, scale=(0.3, 1.0), erase_prob=1.0, superpixels=GRID)
    worker = DeviceTrainView(view)
    image = photo()
    seeds = range(10)
    refs = [view(image, torch.Generator().manual_seed(s)) for s in seeds]
    plain = TrainView(48, scale=(0.3, 1.0), superpixels=GRID)
    clean = [plain(image, torch.Generator().manual_seed(s)) for s in seeds]
    out = worker.device_batch(collate([worker(image, torch.Generator().manual_seed(s)) for s in seeds]), "cpu")
    noise = []
    for k in range(len(refs)):
        box_cpu = (refs[k]["image"] != clean[k]["image"]).any(0)
        box_dev = (out["image"][k] != clean[k]["image"]).any(0)
        assert torch.equal(box_cpu, box_dev), f"sample {k}: the box differs"
        assert torch.equal(out["superpixels"][k], refs[k]["superpixels"]), "box = one new last id, ids compact"
        noise.append(out["image"][k][:, box_dev].flatten())
    noise = torch.cat(noise)
    assert noise.numel() > 2000 and abs(float(noise.mean())) < 0.1 and abs(float(noise.std()) - 1) < 0.1
    # drawn with probability erase_prob, and deterministic per sample
    half = DeviceTrainView(TrainView(48, erase_prob=0.25, superpixels=GRID))
    drawn = torch.stack([half(image, torch.Generator().manual_seed(s))["erase"][0] for s in range(400)]).float()
    assert abs(float(drawn.mean()) - 0.25) < 0.06
    again = worker.device_batch(collate([worker(image, torch.Generator().manual_seed(s)) for s in seeds]), "cpu")
    assert torch.equal(again["image"], out["image"])


def test_compact_labels_equals_relabel_compact():
    labels = torch.randint(0, 40, (3, 16, 16), generator=torch.Generator().manual_seed(0)) * 3
    assert torch.equal(compact_labels(labels, 40 * 3), relabel_compact(labels))


def test_batched_photometric_distortion_equals_mmseg_s_image_by_image():
    image = to_float_image(photo())[:, :40, :48]
    refs, params = [], []
    for seed in range(32):
        refs.append(photometric_distortion(image, torch.Generator().manual_seed(seed)))
        gen = torch.Generator().manual_seed(seed)
        params.append(draw_photometric_params(gen))
        ref_gen = torch.Generator().manual_seed(seed)
        photometric_distortion(image, ref_gen)
        assert torch.equal(gen.get_state(), ref_gen.get_state()), "the draws consume the generator as the CPU op"
    p = torch.stack(params)
    assert p.shape == (32, NUM_PM_PARAMS)
    for col in (0, 2, 3, 5, 7):  # every branch on and off in the batch
        assert p[:, col].any() and not p[:, col].all()
    out = apply_photometric(image.expand(32, -1, -1, -1), p)
    for k, ref in enumerate(refs):
        assert torch.allclose(out[k], ref, atol=1e-5), f"sample {k}: {(out[k] - ref).abs().max()}"


def seg_pair():
    h, w = 60, 90
    image = photo()[:, :h, :w].contiguous()
    target = torch.zeros(h, w, dtype=torch.long)
    target[:, w // 3:] = 1
    target[h // 2:, 2 * w // 3:] = 2
    return image, target


def test_device_segmentation_view_equals_the_cpu_view():
    """Rescale, crop, flip in the worker; photometric distortion, pad, superpixels and
    normalisation on the device: the target and the pad exactly as the CPU view, the
    image within the uint8 quantisation of the rescaled crop (amplified by contrast up to
    1.5, and the rounding of the result: ≤ 2 levels)."""
    view = SegTrainView(crop_size=64, img_scale=(256, 64), ratio_range=(0.75, 1.5), photometric=True,
                        superpixels=SegSuperpixels(method="grid", n_segments=24))
    worker = DeviceSegView(view)
    image, target = seg_pair()
    seeds = range(12)
    refs = [view(image, target, torch.Generator().manual_seed(s)) for s in seeds]
    samples = [worker(image, target, torch.Generator().manual_seed(s)) for s in seeds]
    assert samples[0]["crop"].dtype == torch.uint8 and samples[0]["crop"].shape == (3, 64, 64)
    out = worker.device_batch(collate(samples), "cpu")
    padded = 0
    for k, ref in enumerate(refs):
        assert torch.equal(out["target"][k], ref["target"])
        pad = ref["target"] == IGNORE_INDEX
        padded += int(pad.any())
        assert torch.all(out["image"][k][:, pad] == 0) and torch.all(ref["image"][:, pad] == 0)
        diff = (levels(out["image"][k]) - levels(ref["image"]))[:, ~pad].abs()
        assert diff.max() <= 2.01, f"sample {k}: {diff.max()}"
        assert torch.equal(out["superpixels"][k], ref["superpixels"])
    assert padded, "some crops were smaller than crop_size"


def test_device_segmentation_view_with_slic_torch_cuts_the_padded_crop_on_the_device():
    sp = SegSuperpixels(method="slic_torch", pixels_per_superpixel=64)
    worker = DeviceSegView(SegTrainView(crop_size=64, img_scale=(256, 64), ratio_range=(0.75, 1.5),
                                        superpixels=sp))
    image, target = seg_pair()
    out = worker.device_batch(collate([worker(image, target, torch.Generator().manual_seed(s)) for s in range(4)]),
                              "cpu")
    labels = out["superpixels"]
    assert labels.shape == (4, 64, 64)
    for k in range(4):  # ids 0..K-1, K ≤ 64·64/64
        ids = labels[k].unique()
        assert torch.equal(ids, torch.arange(len(ids))) and len(ids) <= 64
    # the labels are those of the augmented, padded view (normalised 0 = the mean colour = the pad)
    rgb = levels(out["image"]).round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(labels, SuperpixelConfig(method="slic_torch", n_segments=64).batch(rgb))
    assert torch.equal(labels[1], sp(rgb[1])), "the CPU SegSuperpixels agrees"


def test_moco_device_views_reproduce_the_cpu_views_statistics():
    """The whole device path (worker + device batch) against the CPU views, seed for
    seed: the same images up to a level, hence the same statistics."""
    views = MoCoViews(size=48, superpixels=GRID)
    image = photo()
    seeds = range(16)
    cpu = [views(image, torch.Generator().manual_seed(s)) for s in seeds]
    worker = DeviceMoCoViews(views)
    dev = worker.device_batch(collate([worker(image, torch.Generator().manual_seed(s)) for s in seeds]), "cpu")
    for key in ("image", "image2"):
        ref = torch.stack([c[key] for c in cpu])
        diff = (levels(dev[key]) - levels(ref)).abs()
        assert diff.max() < 1.01 and (diff < 0.01).float().mean() > 0.99
        assert torch.allclose(dev[key].mean((0, 2, 3)), ref.mean((0, 2, 3)), atol=1e-3)
        assert torch.allclose(dev[key].std((0, 2, 3)), ref.std((0, 2, 3)), atol=1e-3)
    assert torch.equal(dev["superpixels2"], torch.stack([c["superpixels2"] for c in cpu]))


def test_slic_torch_in_the_cpu_loader_path():
    """``SuperpixelConfig(method="slic_torch")`` per image (loader workers) equals the
    batched call, ids contiguous and at most n_segments."""
    sp = SuperpixelConfig(method="slic_torch", n_segments=49)
    crops = torch.stack([DeviceMoCoViews(MoCoViews(48))(photo(), torch.Generator().manual_seed(s))["crop"]
                         for s in range(3)])
    batched = sp.batch(crops)
    for k in range(3):
        single = sp(crops[k])
        assert torch.equal(single, batched[k])
        ids = single.unique()
        assert torch.equal(ids, torch.arange(len(ids))) and len(ids) <= 49
    assert sp.describe(48)["method"] == "slic_torch" and sp.max_labels(48, 48) == 49
