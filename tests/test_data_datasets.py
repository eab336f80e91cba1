"""Datasets, the batch contract, deterministic and resumable loading, unreadable images."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from castvit.data.datasets import (
    EpochSampler, ImageFolder, UnlabeledImages, ViewDataset, build_loader, collate, synthetic_dataset,
)
from castvit.data.transforms import EvalView, MoCoViews, SuperpixelConfig, TrainView


pytestmark = pytest.mark.usefixtures("one_thread")

GRID = SuperpixelConfig(method="grid", n_segments=16)


@pytest.fixture
def image_folder(tmp_path):
    """root/<class>/<img>: 2 classes × 3 images, one of them corrupt."""
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return tmp_path


def test_epoch_sampler_shards_give_the_single_process_global_batches():
    single = list(EpochSampler(20, seed=3, world_size=1))
    shards = [list(EpochSampler(20, seed=3, rank=r, world_size=2)) for r in range(2)]
    local_batch = 3
    for step in range(3):
        global_batch = single[step * 2 * local_batch:(step + 1) * 2 * local_batch]
        window = slice(step * local_batch, (step + 1) * local_batch)
        union = shards[0][window] + shards[1][window]
        assert sorted(union) == sorted(global_batch)


def test_epoch_sampler_orders_differ_by_epoch_and_start_skips_samples():
    s = EpochSampler(10, seed=0)
    s.set_epoch(0)
    first = [i for i, _ in s]
    s.set_epoch(1)
    second = [i for i, _ in s]
    assert sorted(first) == sorted(second) == list(range(10)) and first != second
    s.set_epoch(1, start=4)
    assert [i for i, _ in s] == second[4:] and len(s) == 6
    assert all(e == 1 for _, e in s)


def test_eval_sampler_covers_every_sample_once_across_ranks():
    parts = [[i for i, _ in EpochSampler(7, shuffle=False, rank=r, world_size=3, drop_last=False, pad=False)]
             for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(7))


def test_collate_follows_the_batch_contract():
    items = [{"image": torch.zeros(3, 8, 8), "superpixels": torch.zeros(8, 8, dtype=torch.int32), "label": 1,
              "index": 4, "skipped": 1, "path": "a.png", "mask": torch.ones(8, 8)} for _ in range(2)]
    batch = collate(items)
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (2, 3, 8, 8)
    assert batch["superpixels"].dtype == torch.int64 and batch["label"].dtype == torch.int64
    assert batch["skipped"].item() == 2 and batch["path"] == ["a.png", "a.png"]
    assert batch["mask"].shape == (2, 8, 8)


def test_image_folder_layout_and_labels(image_folder):
    ds = ImageFolder(image_folder)
    assert ds.classes == ["cat", "dog"] and len(ds) == 6
    item = ds[0]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 40, 48) and item["label"] == 0
    assert len(ImageFolder(image_folder, classes=["dog"])) == 3
    assert len(UnlabeledImages(image_folder)) == 6
    with pytest.raises(FileNotFoundError, match="class folders missing"):
        ImageFolder(image_folder, classes=["cat", "horse"])


def test_a_corrupt_image_is_skipped_with_a_warning_and_counted(image_folder):
    loader = build_loader(ImageFolder(image_folder), TrainView(32, superpixels=GRID), batch_size=6, train=False)
    with pytest.warns(UserWarning, match="unreadable image"):
        batches = list(loader)
    assert sum(int(b["skipped"]) for b in batches) == 1
    assert sum(len(b["label"]) for b in batches) == 6, "the batch keeps its size"
    assert all("dog/1.png" not in p for b in batches for p in b["path"])


def test_views_depend_on_seed_epoch_and_index_only_not_on_workers():
    data = synthetic_dataset(8, seed=0, image_size=32)
    views = MoCoViews(32, superpixels=GRID)

    def epoch_batches(workers):
        loader = build_loader(data, views, batch_size=4, train=True, seed=1, num_workers=workers,
                              keep_keys=("label",))
        loader.sampler.set_epoch(2)
        return list(loader)

    a, b = epoch_batches(0), epoch_batches(2)
    for x, y in zip(a, b):
        for k in ("image", "superpixels", "image2", "superpixels2", "label", "index"):
            assert torch.equal(x[k], y[k]), k


def test_loader_resumes_inside_an_epoch_with_the_same_batches():
    data = synthetic_dataset(12, seed=0, image_size=32)
    loader = build_loader(data, TrainView(32, superpixels=GRID), batch_size=3, train=True, seed=4)
    loader.sampler.set_epoch(1)
    full = list(loader)
    loader.sampler.set_epoch(1, start=2 * 3)
    rest = list(loader)
    assert len(rest) == 2
    for x, y in zip(full[2:], rest):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["index"], y["index"])


def test_loader_refuses_a_dataset_smaller_than_one_batch():
    with pytest.raises(ValueError, match="fewer than one batch"):
        build_loader(synthetic_dataset(4, image_size=32), EvalView(32, superpixels=GRID), batch_size=8, train=True)


def test_view_dataset_accepts_plain_indices():
    ds = ViewDataset(synthetic_dataset(2, image_size=32), EvalView(32, crop_fraction=1.0, superpixels=GRID))
    item = ds[1]
    assert item["index"] == 1 and item["image"].shape == (3, 32, 32) and item["skipped"] == 0
