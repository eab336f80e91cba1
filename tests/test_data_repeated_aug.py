"""Repeated augmentation (DeiT's RASampler): copies per image, ranks, epoch length,
distinct augmentations, exact resume."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import castvit
from castvit.checkpoint import read_checkpoint
from castvit.data.datasets import EpochSampler, ViewDataset, build_loader, synthetic_dataset
from castvit.data.transforms import SuperpixelConfig, TrainView
from castvit.train.supervised import SupervisedConfig, SupervisedRecipe, train_supervised

GRID = SuperpixelConfig(method="grid", n_segments=16)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_three_repeats_on_two_ranks_show_each_drawn_image_three_times_per_epoch():
    n, world = 12, 2
    for epoch in range(3):
        shards = []
        for rank in range(world):
            sampler = EpochSampler(n, seed=5, rank=rank, world_size=world, repeated_aug=3)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
        assert [len(s) for s in shards] == [n // world] * world, "the epoch keeps its length"
        draws = [key for shard in shards for key in shard]
        counts = Counter(index for index, _, _ in draws)
        assert len(counts) == n // 3 and set(counts.values()) == {3}, "a third of the images, 3 times each"
        for index in counts:
            copies = sorted(c for i, e, c in draws if i == index)
            assert copies == [0, 1, 2]
        assert all(e == epoch for _, e, _ in draws)
        # copies sit at consecutive global positions, so they alternate between the two ranks
        for index in counts:
            ranks = {r for r, shard in enumerate(shards) for i, _, _ in shard if i == index}
            assert ranks == {0, 1}
    orders = []
    for epoch in range(2):
        sampler = EpochSampler(n, seed=5, repeated_aug=3)
        sampler.set_epoch(epoch)
        orders.append([i for i, _, _ in sampler])
    assert orders[0] != orders[1], "each epoch draws its own images"


def test_with_three_ranks_the_copies_land_on_three_ranks_as_in_deit():
    n, world = 18, 3
    where = {}
    for rank in range(world):
        for index, _, copy in EpochSampler(n, seed=0, rank=rank, world_size=world, repeated_aug=3):
            where.setdefault(index, set()).add(rank)
    assert all(ranks == {0, 1, 2} for ranks in where.values())


def test_one_repeat_is_the_plain_sampler():
    plain = list(EpochSampler(10, seed=3))
    assert plain == list(EpochSampler(10, seed=3, repeated_aug=1))
    assert all(len(key) == 2 for key in plain)
    with pytest.raises(ValueError, match="repeated_aug"):
        EpochSampler(10, repeated_aug=0)


def test_each_copy_gets_its_own_augmentation_and_copy_zero_is_the_plain_view():
    data = ViewDataset(synthetic_dataset(4, seed=0, image_size=32), TrainView(32, scale=(0.2, 1.0), superpixels=GRID),
                       seed=7)
    views = [data[(2, 1, c)]["image"] for c in range(3)]
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[1], views[2])
    assert torch.equal(views[0], data[(2, 1)]["image"])


def test_resuming_inside_an_epoch_continues_the_same_sequence():
    for rank in range(2):
        full = EpochSampler(30, seed=1, rank=rank, world_size=2, repeated_aug=3)
        full.set_epoch(4)
        resumed = EpochSampler(30, seed=1, rank=rank, world_size=2, repeated_aug=3)
        resumed.set_epoch(4, start=7)
        assert list(resumed) == list(full)[7:]


def test_repeated_aug_is_for_training_loaders_only():
    with pytest.raises(ValueError, match="training"):
        build_loader(synthetic_dataset(8, image_size=32), TrainView(32, superpixels=GRID), batch_size=4, train=False,
                     repeated_aug=3)


class Interrupt(Exception):
    pass


def test_a_run_interrupted_mid_epoch_resumes_bit_for_bit(tmp_path, monkeypatch):
    def run(out, resume=False):
        torch.manual_seed(0)
        model = castvit.create_model("cast_small", img_size=32, embed_dim=48, depth=[1, 1, 1, 1], num_heads=4,
                                     num_clusters=[8, 4, 4, 2], num_classes=4, drop_path_rate=0.1)
        loader = build_loader(synthetic_dataset(12, seed=0, image_size=32), TrainView(32, scale=(0.5, 1.0),
                              superpixels=GRID), batch_size=4, train=True, seed=0, repeated_aug=3)
        cfg = SupervisedConfig(epochs=2, lr=1e-3, warmup_epochs=1, mixup_alpha=0.0, cutmix_alpha=0.0,
                               checkpoint_every_steps=1, log_every=1, num_workers=0)
        return train_supervised(model, loader, cfg, out_dir=out, progress=False, resume=resume)

    run(tmp_path / "full")
    step = SupervisedRecipe.train_step
    count = [0]

    def stopping_step(self, *args, **kwargs):
        count[0] += 1
        if count[0] == 5:  # epoch 1, step 2 of 3; the checkpoint holds step 1
            raise Interrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(SupervisedRecipe, "train_step", stopping_step)
    with pytest.raises(Interrupt):
        run(tmp_path / "broken")
    monkeypatch.setattr(SupervisedRecipe, "train_step", step)
    stopped = read_checkpoint(tmp_path / "broken" / "last.pth.tar")["castvit"]
    assert (stopped["epoch"], stopped["step"]) == (1, 1)
    run(tmp_path / "broken", resume=True)
    a = read_checkpoint(tmp_path / "full" / "last.pth.tar")["model"]
    b = read_checkpoint(tmp_path / "broken" / "last.pth.tar")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
