"""Mixup and cutmix mix the superpixel maps consistently with the images."""

from __future__ import annotations

import pytest
import torch

from castvit.data.transforms import MixConfig, grid_superpixels, mix_batch, one_hot_smooth, relabel_compact


pytestmark = pytest.mark.usefixtures("one_thread")


def make_batch(b: int = 4, size: int = 32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    sp = torch.stack([grid_superpixels(size, size, n) for n in (16, 64, 16, 64)[:b]])
    # distinct per-image superpixel geometry: transpose every other map
    sp[1::2] = sp[1::2].transpose(-1, -2)
    return {"image": torch.randn(b, 3, size, size, generator=gen), "superpixels": sp,
            "label": torch.tensor([0, 1, 2, 3][:b])}


def run(cfg: MixConfig, seed: int, batch=None):
    batch = make_batch() if batch is None else batch
    return batch, mix_batch(batch, cfg, torch.Generator().manual_seed(seed))


def cutmix_out(seed=0):
    cfg = MixConfig(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, label_smoothing=0.0, num_classes=4)
    for s in range(seed, seed + 50):
        batch, out = run(cfg, s)
        if 0.1 < out["mix_lam"] < 0.9:
            return batch, out
    raise AssertionError("no cutmix box of useful size in 50 draws")


def pasted_region(batch, out):
    return (out["image"] != batch["image"]).any(1)  # B×H×W, True inside the box


def test_cutmix_pastes_the_partner_pixels_and_superpixels_in_one_box():
    batch, out = cutmix_out()
    box = pasted_region(batch, out)[0]
    rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
    assert box[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all(), "the pasted region is a rectangle"
    torch.testing.assert_close(out["image"][:, :, box], batch["image"].flip(0)[:, :, box])
    for b in range(4):
        partner = batch["superpixels"].flip(0)[b]
        mixed = out["superpixels"][b]
        # same partition as the partner inside the box, as the image itself outside
        for region, source in ((box, partner), (~box, batch["superpixels"][b])):
            pairs = torch.stack([mixed[region], source[region]], 1).unique(dim=0)
            assert len(pairs) == len(mixed[region].unique()) == len(source[region].unique())


def test_cutmix_superpixel_ids_inside_and_outside_the_box_are_distinct_and_compact():
    batch, out = cutmix_out()
    box = pasted_region(batch, out)[0]
    for b in range(4):
        sp = out["superpixels"][b]
        assert not set(sp[box].unique().tolist()) & set(sp[~box].unique().tolist())
        assert sp.unique().tolist() == list(range(int(sp.max()) + 1))


def test_cutmix_lambda_is_the_kept_area_and_targets_follow_it():
    batch, out = cutmix_out()
    area = pasted_region(batch, out)[0].float().mean()
    assert out["mix_lam"] == pytest.approx(1.0 - float(area), abs=1e-6)
    lam = out["mix_lam"]
    expected = lam * one_hot_smooth(batch["label"], 4) + (1 - lam) * one_hot_smooth(batch["label"].flip(0), 4)
    torch.testing.assert_close(out["target"], expected)


@pytest.mark.parametrize("seed", range(6))
def test_mixup_blends_images_and_keeps_the_dominant_images_superpixels(seed):
    cfg = MixConfig(mixup_alpha=0.8, cutmix_alpha=0.0, prob=1.0, label_smoothing=0.1, num_classes=4)
    batch, out = run(cfg, seed)
    lam = out["mix_lam"]
    torch.testing.assert_close(out["image"], lam * batch["image"] + (1 - lam) * batch["image"].flip(0))
    dominant = batch["superpixels"] if lam >= 0.5 else batch["superpixels"].flip(0)
    assert torch.equal(out["superpixels"], dominant)
    torch.testing.assert_close(out["target"].sum(1), torch.ones(4))


def test_no_mixing_gives_smoothed_one_hot_targets():
    cfg = MixConfig(mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=4)
    batch, out = run(cfg, 0)
    assert torch.equal(out["image"], batch["image"]) and torch.equal(out["superpixels"], batch["superpixels"])
    assert out["target"][0].tolist() == pytest.approx([0.925, 0.025, 0.025, 0.025])


def test_relabel_compact_keeps_the_partition():
    sp = torch.tensor([[[5, 5, 9], [9, 2, 2]]])
    assert relabel_compact(sp).tolist() == [[[1, 1, 2], [2, 0, 0]]]


def test_mixing_refuses_labels_outside_the_classes():
    batch = make_batch()
    batch["label"] = torch.tensor([0, 1, 2, 9])
    with pytest.raises(ValueError, match="num_classes"):
        mix_batch(batch, MixConfig(num_classes=4), torch.Generator())
