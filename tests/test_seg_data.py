"""Segmentation loaders on the real sample files, their errors, and the training view."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from castvit.data.segmentation import (
    IGNORE_INDEX, LabelFileError, SegSuperpixels, SegTrainView, SyntheticSegmentation, ade20k, build_segmentation_dataset,
    pascal_context, read_label, sbd, voc_aug,
)
from castvit.data.synthetic import SceneConfig, generate_scene
from castvit.ops import IMAGENET_MEAN, IMAGENET_STD

DATA = Path("/work/shared/data")


def test_ade20k_reduce_zero_label_on_every_sample():
    ds = ade20k(DATA / "ade20k-sample", split=None)
    assert len(ds) == 3 and ds.num_classes == 150
    assert ds.class_names[:3] == ["wall", "building", "sky"] and len(ds.class_names) == 150
    for i in range(len(ds)):
        item = ds[i]
        raw = np.array(Image.open(ds.pairs[i][1]))
        assert raw.min() >= 0 and raw.max() <= 150 and (raw == 0).any()
        t = item["target"].numpy()
        assert t.shape == raw.shape == tuple(item["image"].shape[1:])
        assert np.array_equal(t == 255, raw == 0)
        assert np.array_equal(t[raw > 0], raw[raw > 0].astype(np.int64) - 1)
        assert set(np.unique(t)) <= set(range(150)) | {255}


def _voc_layout(tmp: Path, label_img: Image.Image, folder: str, split: str) -> Path:
    root = tmp / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / folder).mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    shutil.copy(DATA / "voc-sample" / "2007_000129.jpg", root / "JPEGImages")
    label_img.save(root / folder / "2007_000129.png")
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("2007_000129\n")
    return root


def test_voc_aug_label_png_and_palette_png_give_the_indices(tmp_path):
    src = Image.open(DATA / "voc-sample" / "2007_000129.png")
    assert src.mode == "L"
    root = _voc_layout(tmp_path / "a", src, "SegmentationClassAug", "train_aug")
    item = voc_aug(root, "train_aug")[0]
    assert set(np.unique(item["target"].numpy())) == {0, 2, 15, 255}
    # the same labels as a palette PNG (VOC's SegmentationClass): indices, not colours
    pal = Image.fromarray(np.array(src), mode="P")
    pal.putpalette([v for k in range(256) for v in ((k * 37) % 256, (k * 91) % 256, (k * 53) % 256)])
    root2 = _voc_layout(tmp_path / "b", pal, "SegmentationClass", "val")
    assert Image.open(root2 / "SegmentationClass" / "2007_000129.png").mode == "P"
    item2 = voc_aug(root2, "val")[0]
    assert torch.equal(item2["target"], item["target"])
    # a colour-rendered label is refused with the file named
    root3 = _voc_layout(tmp_path / "c", pal.convert("RGB"), "SegmentationClass", "val")
    with pytest.raises(LabelFileError, match="2007_000129.png.*mode RGB"):
        voc_aug(root3, "val")[0]


def test_sbd_mat_class_maps():
    ds = sbd(DATA / "sbd-sample")
    values = [set(np.unique(ds[i]["target"].numpy())) for i in range(len(ds))]
    assert values == [{0, 5, 9, 15}, {0, 4, 15}]
    for i in range(len(ds)):
        assert tuple(ds[i]["target"].shape) == tuple(ds[i]["image"].shape[1:])


def test_pascal_context_layout_keeps_background_as_class_zero(tmp_path):
    root = tmp_path / "VOC2010"
    for d in ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"):
        (root / d).mkdir(parents=True)
    shutil.copy(DATA / "voc-sample" / "2007_000129.jpg", root / "JPEGImages")
    raw = np.array(Image.open(DATA / "voc-sample" / "2007_000129.png"))
    ctx = np.where(raw == 255, 59, raw).astype(np.uint8)  # context maps have no void: 0..59
    Image.fromarray(ctx, mode="L").save(root / "SegmentationClassContext" / "2007_000129.png")
    (root / "ImageSets" / "SegmentationContext" / "val.txt").write_text("2007_000129\n")
    ds = pascal_context(root, "val")
    assert ds.num_classes == 60 and ds.class_names[0] == "background"
    assert set(np.unique(ds[0]["target"].numpy())) == {0, 2, 15, 59}


def test_missing_and_mismatched_label_files_name_the_file(tmp_path):
    root = tmp_path / "ade"
    shutil.copytree(DATA / "ade20k-sample", root)
    (root / "annotations" / "ADE_val_00000002.png").unlink()
    with pytest.raises(LabelFileError, match="ADE_val_00000002.png"):
        ade20k(root, split=None)
    shutil.copy(DATA / "ade20k-sample" / "annotations" / "ADE_val_00000001.png",
                root / "annotations" / "ADE_val_00000002.png")
    ds = ade20k(root, split=None)
    with pytest.raises(LabelFileError, match="ADE_val_00000002.png.*does not belong"):
        ds[1]
    with pytest.raises(LabelFileError, match="nothere.png"):
        read_label(tmp_path / "nothere.png")
    # VOC values loaded as ADE (after reduce-zero-label 254 stays out of range)
    Image.fromarray(np.full((300, 400), 254, np.uint8)).save(root / "annotations" / "ADE_val_00000003.png")
    with pytest.raises(LabelFileError, match="outside 0..149"):
        ade20k(root, split=None)[2]


def test_synthetic_targets_are_the_part_types_and_objects():
    parts = SyntheticSegmentation(3, seed=4, target="part", image_size=64)
    objects = SyntheticSegmentation(3, seed=4, target="object", image_size=64)
    assert parts.num_classes == 5 and objects.num_classes == 5
    for i in range(3):
        s = generate_scene(i, SceneConfig(image_size=64), 4)
        assert np.array_equal(parts[i]["target"].numpy(), s.part_class[s.part_mask])
        assert np.array_equal(objects[i]["target"].numpy(), np.where(s.object_mask > 0, s.label + 1, 0))
    ds = build_segmentation_dataset({"kind": "synthetic", "val_size": 2, "seed": 4, "scene": {"image_size": 64}},
                                    "val")
    assert len(ds) == 2 and ds.seed == 5


def _denorm(x):
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((x * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)


def test_train_view_moves_image_and_label_together_pads_255_and_seeds_the_true_crop():
    # left half red = class 1, right half blue = class 2, so the label can be read off the image
    h, w = 96, 160
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    image[0, :, : w // 2] = 220
    image[2, :, w // 2:] = 220
    target = torch.ones(h, w, dtype=torch.long)
    target[:, w // 2:] = 2
    view = SegTrainView(crop_size=128, img_scale=(512, 128), ratio_range=(0.5, 1.0), photometric=False,
                        superpixels=SegSuperpixels(n_segments=None))
    seen_pad = False
    for seed in range(6):
        out = view(image, target, torch.Generator().manual_seed(seed))
        assert out["image"].shape == (3, 128, 128) and out["target"].shape == (128, 128)
        t, rgb = out["target"], _denorm(out["image"])
        pad = t == IGNORE_INDEX
        seen_pad |= bool(pad.any())
        assert torch.all(out["image"][:, pad] == 0)  # padding is 0 after normalisation
        red = (rgb[0] > rgb[2]) & ~pad
        assert torch.all(t[red] == 1) and torch.all(t[(rgb[2] > rgb[0]) & ~pad] == 2)
        # SEEDS on the true RGB of the padded crop, n = 128·128/256 = 64
        again = SegSuperpixels()(rgb)
        assert torch.equal(out["superpixels"], again)
        assert int(out["superpixels"].max()) + 1 <= 64
    assert seen_pad
    wrapped = SegSuperpixels(wrapped_input=True)
    inverted = ((256 - rgb.long()) % 256).to(torch.uint8)
    assert torch.equal(wrapped(rgb), SegSuperpixels()(inverted))


def test_cat_max_ratio_prefers_crops_without_one_dominant_class():
    target = torch.zeros(200, 200, dtype=torch.long)
    target[:, 150:] = 1  # class 0 covers 75 % of the image
    view = SegTrainView(crop_size=64, cat_max_ratio=0.75)
    balanced = 0
    for seed in range(20):
        top, left, bottom, right = view.crop_box(target, torch.Generator().manual_seed(seed))
        crop = target[top:bottom, left:right]
        counts = torch.bincount(crop.flatten(), minlength=2).double()
        balanced += bool((counts > 0).all() and counts.max() / counts.sum() < 0.75)
    plain = SegTrainView(crop_size=64, cat_max_ratio=None)
    plain_balanced = 0
    for seed in range(20):
        top, left, bottom, right = plain.crop_box(target, torch.Generator().manual_seed(seed))
        counts = torch.bincount(target[top:bottom, left:right].flatten(), minlength=2).double()
        plain_balanced += bool((counts > 0).all() and counts.max() / counts.sum() < 0.75)
    assert balanced > plain_balanced and balanced >= 15


def test_rescale_follows_mmseg_keep_ratio():
    from castvit.data.segmentation import rescale_size

    assert rescale_size(683, 512, (2048, 512)) == (683, 512)
    assert rescale_size(300, 400, (2048, 512)) == (512, 683)
    assert rescale_size(100, 1000, (2048, 512)) == (205, 2048)
