"""Datasets, the batch contract and deterministic, resumable data loading.

Batch contract (every loader in castvit): a dict with

* ``image``: float32 ``B×3×H×W``, ImageNet-normalised;
* ``superpixels``: int64 ``B×H×W``, computed on that very view (SPEC §6);
* ``label``: int64 ``B`` (−1 for unlabelled images);
* ``image2`` / ``superpixels2`` for the second MoCo view; ``index`` int64 ``B``;
  ``skipped`` int64 scalar: unreadable images replaced while making this batch;
  any other item key passes through (stacked when it is a tensor of one shape,
  else a list).

Determinism: :class:`EpochSampler` hands ``(index, epoch)`` pairs (``(index, epoch,
copy)`` under repeated augmentation) to :class:`ViewDataset`, which seeds each sample's
augmentation from ``(seed, epoch, index[, copy])``. A sample's views therefore do not
depend on the worker that makes them, on the number of workers or on the number of
processes, and a run resumed in the middle of an epoch sees exactly the batches it
would have seen.

Repeated augmentation (DeiT's ``RASampler``, ``repeated_aug=3``): every epoch draws
each of its images ``repeated_aug`` times in a row, each copy with its own
augmentation; the epoch keeps its length, so it holds about ``1/repeated_aug`` of the
images. Consecutive positions go to consecutive ranks, so with three or more processes
the copies of an image are augmented on different ranks, as in DeiT.

Unreadable images: :class:`ViewDataset` replaces an image that fails to load by the
next readable one (index + 1, + 2, …), warns with the path, and counts it in the
batch's ``skipped``; batch shapes stay fixed, which keeps every rank in step.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")


class CorruptImageError(OSError):
    """An image file that cannot be decoded."""


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as a ``3×H×W`` uint8 RGB tensor; raise
    :class:`CorruptImageError` naming the file if it cannot be decoded."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("RGB"))
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, …
        raise CorruptImageError(f"cannot read image {str(path)!r}: {exc}") from exc
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


class ImageFolder(Dataset):
    """ImageNet layout: ``root/<class>/<image>`` (any depth below the class folder).

    Args:
        root: the split folder, e.g. ``/data/imagenet/train``.
        classes: class folder names to use, in label order (ImageNet-100 is ImageNet
            restricted to a list of 100 synsets), or a path to a text file with one name
            per line; default: every sub-folder, sorted.

    Items: ``image`` uint8 ``3×H×W``, ``label`` int, ``path`` str.
    """

    def __init__(self, root: str | os.PathLike, classes: Sequence[str] | str | os.PathLike | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {str(self.root)!r} does not exist")
        if isinstance(classes, (str, os.PathLike)):
            classes = [ln.split()[0] for ln in Path(classes).read_text().splitlines() if ln.strip()]
        if classes is None:
            classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        missing = [c for c in classes if not (self.root / c).is_dir()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} class folders missing under {str(self.root)!r}: "
                                    f"{', '.join(missing[:5])}")
        if not classes:
            raise FileNotFoundError(f"no class folders under {str(self.root)!r}; expected root/<class>/<image>")
        self.classes = list(classes)
        self.samples = [(p, label) for label, c in enumerate(self.classes) for p in _list_images(self.root / c)]
        if not self.samples:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {str(self.root)!r}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.samples[index]
        return {"image": load_image(path), "label": label, "path": str(path)}


class UnlabeledImages(Dataset):
    """Every image below ``root`` (the COCO layout, e.g. ``coco/train2017/*.jpg``),
    with ``label`` −1."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {str(self.root)!r} does not exist")
        self.paths = _list_images(self.root)
        if not self.paths:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {str(self.root)!r}")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": load_image(self.paths[index]), "label": -1, "path": str(self.paths[index])}


def sample_generator(seed: int, epoch: int, index: int, copy: int = 0) -> torch.Generator:
    """The generator that drives the augmentation of sample ``index`` in ``epoch`` (its
    ``copy``-th draw in that epoch under repeated augmentation)."""
    entropy = [int(seed), int(epoch), int(index)] + ([int(copy)] if copy else [])
    state = np.random.SeedSequence(entropy).generate_state(2, np.uint32)
    gen = torch.Generator()
    gen.manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
    return gen


class ViewDataset(Dataset):
    """Apply a view pipeline (``transform(image, generator) -> dict``) to the items of
    ``dataset`` (dicts with a uint8 ``image``), seeding it from ``(seed, epoch, index)``.

    Indices are ints (epoch 0) or ``(index, epoch)`` / ``(index, epoch, copy)`` keys from
    :class:`EpochSampler`.
    Keys of the item other than ``image`` pass through (only ``keep_keys`` if given:
    masks of the original image no longer match a cropped view); ``skipped`` counts
    unreadable images replaced by the next readable one.
    """

    def __init__(self, dataset: Dataset, transform: Callable[[torch.Tensor, torch.Generator], dict[str, Any]],
                 seed: int = 0, max_retries: int = 50, keep_keys: Sequence[str] | None = None):
        self.dataset, self.transform, self.seed, self.max_retries = dataset, transform, seed, max_retries
        self.keep_keys = None if keep_keys is None else set(keep_keys)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, ...]) -> dict[str, Any]:
        index, epoch, copy = (int(key), 0, 0) if isinstance(key, (int, np.integer)) else (*key, 0)[:3]
        n = len(self.dataset)
        skipped = 0
        for attempt in range(min(self.max_retries, n)):
            try:
                item = self.dataset[(index + attempt) % n]
                break
            except CorruptImageError as exc:
                skipped += 1
                warnings.warn(f"skipping an unreadable image (dataset index {(index + attempt) % n}): {exc}",
                              stacklevel=2)
        else:
            raise RuntimeError(f"{self.max_retries} consecutive images from index {index} are unreadable; "
                               "check the dataset")
        image = item["image"]
        item = {k: v for k, v in item.items()
                if k != "image" and (self.keep_keys is None or k in self.keep_keys)}
        out = self.transform(image, sample_generator(self.seed, epoch, index, copy))
        item.update(out)
        item["index"] = index
        item["skipped"] = skipped
        return item


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of item dicts into the batch contract (see the module docstring)."""
    if not items:
        raise ValueError("cannot collate an empty list of items")
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if key == "skipped":
            batch[key] = torch.tensor(sum(int(v) for v in values), dtype=torch.int64)
        elif key in ("label", "index"):
            batch[key] = torch.as_tensor([int(v) for v in values], dtype=torch.int64)
        elif key in ("image", "image2"):
            batch[key] = torch.stack([torch.as_tensor(v) for v in values]).float()
        elif key in ("superpixels", "superpixels2"):
            batch[key] = torch.stack([torch.as_tensor(v) for v in values]).long()
        elif all(torch.is_tensor(v) for v in values) and len({tuple(v.shape) for v in values}) == 1:
            batch[key] = torch.stack(values)
        elif all(isinstance(v, (int, float, bool)) for v in values):
            batch[key] = torch.as_tensor(values)
        else:
            batch[key] = values
    batch.setdefault("skipped", torch.tensor(0, dtype=torch.int64))
    return batch


class EpochSampler(Sampler):
    """Deterministic, resumable, distributed sampler yielding ``(index, epoch)`` pairs.

    The epoch's order is a permutation seeded by ``(seed, epoch)`` (identity when
    ``shuffle`` is False). With ``drop_last`` the order is cut to a multiple of
    ``world_size`` (training), otherwise it is padded by wrapping around, as
    ``DistributedSampler`` does. Rank ``r`` takes positions ``r, r + W, r + 2W, …``, so the
    union of the ranks' ``s``-th local batches is the ``s``-th global batch of a single
    process with the same global batch size, whatever ``W``.

    ``repeated_aug=k > 1`` is DeiT's repeated augmentation (timm's ``RASampler``): each
    index of the permutation is repeated ``k`` times in a row and the result is cut back
    to ``num_samples``, so an epoch keeps its length and holds about ``num_samples / k``
    images, ``k`` copies each; items are then ``(index, epoch, copy)`` with ``copy`` in
    ``0..k-1`` (each copy gets its own augmentation). As with the ``RASampler``,
    consecutive copies land on consecutive ranks.

    ``set_epoch(epoch, start)`` skips the first ``start`` samples of this rank (used to
    resume mid-epoch). With ``shard=False`` (evaluation) ranks take ``r::W`` of the
    unpadded order, so nothing is counted twice.
    """

    def __init__(self, num_samples: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = True, pad: bool = True, repeated_aug: int = 1):
        if num_samples <= 0:
            raise ValueError("the dataset is empty")
        if int(repeated_aug) != repeated_aug or repeated_aug < 1:
            raise ValueError(f"repeated_aug must be a whole number >= 1 (1: off), got {repeated_aug!r}")
        self.num_samples, self.shuffle, self.seed = num_samples, shuffle, seed
        self.rank, self.world_size, self.drop_last, self.pad = rank, world_size, drop_last, pad
        self.repeated_aug = int(repeated_aug)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def _order(self) -> list[tuple[int, ...]]:
        if self.shuffle:
            gen = torch.Generator()
            gen.manual_seed(int(np.random.SeedSequence([self.seed, self.epoch, 1]).generate_state(1)[0]))
            perm = torch.randperm(self.num_samples, generator=gen).tolist()
        else:
            perm = list(range(self.num_samples))
        k = self.repeated_aug
        if k == 1:
            order: list[tuple[int, ...]] = [(i, self.epoch) for i in perm]
        else:
            order = [(i, self.epoch, c) for i in perm[: -(-self.num_samples // k)] for c in range(k)]
            order = order[: self.num_samples]
        w = self.world_size
        if self.drop_last:
            order = order[: len(order) - len(order) % w]
        elif self.pad and len(order) % w:
            extra = w - len(order) % w
            order = order + (order * (extra // len(order) + 1))[:extra]
        return order[self.rank::w]

    def local_length(self) -> int:
        return len(self._order())

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        return iter(self._order()[self.start:])

    def __len__(self) -> int:
        return max(0, self.local_length() - self.start)


def _worker_init(worker_id: int) -> None:
    # Augmentation is seeded per sample; keep each worker to one thread so that
    # num_workers workers do not oversubscribe the cores.
    torch.set_num_threads(1)


def build_loader(dataset: Dataset, transform: Callable | None = None, *, batch_size: int, train: bool,
                 seed: int = 0, num_workers: int = 0, rank: int | None = None, world_size: int | None = None,
                 drop_last: bool | None = None, keep_keys: Sequence[str] | None = None,
                 repeated_aug: int = 1) -> DataLoader:
    """A DataLoader that follows the batch contract, deterministic and resumable.

    Args:
        dataset: items with a uint8 ``image`` ``3×H×W`` (wrapped in :class:`ViewDataset`
            with ``transform``), or already a :class:`ViewDataset` (``transform=None``).
        transform: a view pipeline from :mod:`castvit.data.transforms`.
        batch_size: images per process (the global batch is ``batch_size × world_size``).
        train: shuffle and drop the last incomplete batch; evaluation keeps every image
            once across ranks.
        seed: seeds the order (per epoch) and every sample's augmentation.
        num_workers: loader processes computing the views and superpixels.
        rank, world_size: default from the initialised process group (or 0 and 1).
        keep_keys: item keys to pass through besides the view (default: all).
        repeated_aug: DeiT's repeated augmentation: each drawn image appears this many
            times per epoch, each copy augmented apart (3 in DeiT; 1: off). Training only.
    """
    # The process group is read from torch directly: data/ sits below train/.
    grouped = torch.distributed.is_available() and torch.distributed.is_initialized()
    if rank is None:
        rank = torch.distributed.get_rank() if grouped else 0
    if world_size is None:
        world_size = torch.distributed.get_world_size() if grouped else 1
    if transform is not None:
        dataset = ViewDataset(dataset, transform, seed=seed, keep_keys=keep_keys)
    elif not isinstance(dataset, ViewDataset):
        raise TypeError("pass a transform, or a ViewDataset")
    if repeated_aug != 1 and not train:
        raise ValueError("repeated_aug is for training loaders; evaluation sees every image once")
    sampler = EpochSampler(len(dataset), shuffle=train, seed=seed, rank=rank, world_size=world_size,
                           drop_last=train if drop_last is None else drop_last, pad=False,
                           repeated_aug=repeated_aug)
    if train and sampler.local_length() < batch_size:
        raise ValueError(f"{len(dataset)} images give {sampler.local_length()} per process, fewer than one batch "
                         f"of {batch_size}; lower batch_size")
    gen = torch.Generator()
    gen.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate, drop_last=train, generator=gen, worker_init_fn=_worker_init,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())


def synthetic_dataset(num_images: int, *, seed: int = 0, **scene_config: Any) -> Dataset:
    """The synthetic scenes of :mod:`castvit.data.synthetic` (labelled part-based objects);
    ``scene_config`` are :class:`~castvit.data.synthetic.SceneConfig` fields."""
    from castvit.data.synthetic import SceneConfig, SyntheticScenes

    if "scale_range" in scene_config:
        scene_config["scale_range"] = tuple(scene_config["scale_range"])
    return SyntheticScenes(num_images, SceneConfig(**scene_config), seed=seed)
