"""Turn a resolved recipe (:mod:`castvit.train.config`) into datasets, loaders and a
model, and run it. This is what ``castvit train`` calls.

``data`` section:

=================  ==========================================================
kind               ``imagefolder`` (ImageNet / ImageNet-100 layout,
                   ``root/<class>/<img>``), ``images`` (every image below a
                   folder, unlabelled: COCO), ``synthetic`` (castvit's scenes)
train, val         folders (``val`` optional)
classes            class list (file or list) for ImageNet-100
image_size         side of the training and evaluation views (224)
train_size,        synthetic: number of train / val scenes; ``seed`` their
val_size, seed,    dataset seed (val uses ``seed + 1``); ``scene``:
scene              :class:`~castvit.data.synthetic.SceneConfig` fields
superpixels        :class:`~castvit.data.transforms.SuperpixelConfig` of the
                   training views; ``eval_superpixels`` of the eval views
                   (default: the same)
train_view         options of :class:`~castvit.data.transforms.MoCoViews` (moco)
                   or :class:`~castvit.data.transforms.TrainView`
eval_view          options of :class:`~castvit.data.transforms.EvalView`
knn_memory,        MoCo's kNN monitor: labelled memory folder (default
knn_memory_size    ``train``) and how many of its images to use (default all)
val_batch_size     per-process evaluation batch (default: the training one)
repeated_aug       DeiT's repeated augmentation: copies of each drawn image
                   per epoch (3 in ``supervised_imagenet1k``; default 1, off)
device_augment     true: loader workers only decode and crop (uint8); the rest
                   of the training view (colour, blur, solarize, flip,
                   normalisation, erasing) and its superpixels run batched on
                   the training device (:mod:`castvit.data.device_augment`;
                   ``superpixels.method: slic_torch`` cuts them there)
=================  ==========================================================

Keys that the chosen kind or recipe would not read (``train_size`` on an image folder,
``knn_memory`` outside MoCo, ``model.num_classes`` for MoCo, …) are refused, not ignored.

Seeding: :func:`run` seeds Python, numpy and torch from ``train.seed`` before it builds
anything, so the model's initialisation — and with the per-sample and per-step seeds of
the loop, the whole run — is the same every time the command is run (bit for bit on
CPU).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from castvit.data.datasets import ImageFolder, UnlabeledImages, build_loader, synthetic_dataset
from castvit.data.transforms import EvalView, MoCoViews, SuperpixelConfig, TrainView
from castvit.train import distributed as D
from castvit.train.config import ConfigError, make_dataclass


def build_datasets(cfg: dict[str, Any]) -> tuple[Dataset, Dataset | None, Dataset | None, int | None]:
    """``(train, val, knn_memory, num_classes)`` from the ``data`` section."""
    data, recipe = cfg["data"], cfg["recipe"]
    kind = data["kind"]
    if kind == "synthetic":
        scene = dict(data.get("scene") or {})
        seed = int(data.get("seed", 0))
        train = synthetic_dataset(int(data.get("train_size", 2000)), seed=seed, **scene)
        val_size = int(data.get("val_size", 0))
        val = synthetic_dataset(val_size, seed=seed + 1, **scene) if val_size else None
        return train, val, train, train.config.num_classes
    if not data.get("train"):
        raise ConfigError("data.train (a folder) is required")
    if kind == "images":
        if recipe != "moco":
            raise ConfigError("data.kind 'images' has no labels; it only serves the moco recipe")
        return UnlabeledImages(data["train"]), None, None, None
    train = ImageFolder(data["train"], data.get("classes"))
    val = ImageFolder(data["val"], train.classes) if data.get("val") else None
    memory = ImageFolder(data["knn_memory"], train.classes) if data.get("knn_memory") else train
    return train, val, memory, len(train.classes)


def _subset(dataset: Dataset, size: int | None, seed: int) -> Dataset:
    if not size or size >= len(dataset):
        return dataset
    gen = torch.Generator().manual_seed(seed)
    return Subset(dataset, sorted(torch.randperm(len(dataset), generator=gen)[:size].tolist()))


def build_views(cfg: dict[str, Any]):
    data = cfg["data"]
    size = int(data.get("image_size", 224))
    sp = make_dataclass(SuperpixelConfig, dict(data.get("superpixels") or {}), "data.superpixels")
    eval_sp = make_dataclass(SuperpixelConfig, dict(data.get("eval_superpixels") or data.get("superpixels") or {}),
                             "data.eval_superpixels")
    view_cls = MoCoViews if cfg["recipe"] == "moco" else TrainView
    train_view = make_dataclass(view_cls, {**(data.get("train_view") or {}), "size": size}, "data.train_view")
    train_view.superpixels = sp
    eval_view = make_dataclass(EvalView, {**(data.get("eval_view") or {}), "size": size}, "data.eval_view")
    eval_view.superpixels = eval_sp
    if data.get("device_augment"):
        from castvit.data.device_augment import DeviceMoCoViews, DeviceTrainView

        train_view = DeviceMoCoViews(train_view) if cfg["recipe"] == "moco" else DeviceTrainView(train_view)
    return train_view, eval_view


def build_model(cfg: dict[str, Any], num_classes: int | None) -> torch.nn.Module:
    import castvit

    m = cfg["model"]
    kwargs = dict(m.get("kwargs") or {})
    if cfg["recipe"] != "moco" and num_classes is not None:
        wanted = m.get("num_classes") or kwargs.get("num_classes") or num_classes
        if wanted < num_classes:
            raise ConfigError(f"model.num_classes {wanted} is below the {num_classes} classes of the data")
        kwargs["num_classes"] = wanted
    drop_path = cfg["train"].get("drop_path") if cfg["recipe"] == "supervised" else None
    if drop_path is not None:
        if kwargs.get("drop_path_rate", drop_path) != drop_path:
            raise ConfigError(f"train.drop_path {drop_path} and model.kwargs.drop_path_rate "
                              f"{kwargs['drop_path_rate']} disagree; set one of them")
        kwargs["drop_path_rate"] = drop_path
    model = castvit.create_model(m["name"], **kwargs)
    if m.get("pretrained"):
        report = castvit.load_checkpoint(model, m["pretrained"])
        if D.is_main_process():
            print(f"loaded {report.loaded} tensors from {m['pretrained']} ({report.container} container)"
                  + (f"; {'; '.join(report.notes)}" if report.notes else ""), flush=True)
    elif cfg["recipe"] == "linear_probe":
        raise ConfigError("the linear probe needs model.pretrained (a MoCo or castvit checkpoint)")
    return model


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (the same on every rank:
    DDP starts every replica from rank 0's weights anyway)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run(cfg: dict[str, Any], *, resume: bool | str = False, progress: bool = True) -> dict[str, Any]:
    """Run a resolved recipe (the body of ``castvit train``). Call
    :func:`castvit.train.distributed.init_distributed` first under torchrun."""
    from castvit.train.config import recipe_config_class

    recipe = cfg["recipe"]
    train_cfg = make_dataclass(recipe_config_class(recipe), cfg["train"], "train")
    world = D.get_world_size()
    if train_cfg.batch_size % world:
        raise ConfigError(f"train.batch_size {train_cfg.batch_size} (global) is not divisible by the "
                          f"{world} processes")
    per_process = train_cfg.batch_size // world
    device = torch.device(cfg["device"] if cfg["device"] != "auto" else ("cuda" if torch.cuda.is_available()
                                                                        else "cpu"))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    seed, workers = train_cfg.seed, train_cfg.num_workers
    seed_everything(seed)
    if recipe == "segmentation":
        from castvit.train.segmentation import run_config

        return run_config(cfg, train_cfg, device, resume=resume, progress=progress)
    train_set, val_set, memory_set, num_classes = build_datasets(cfg)
    train_view, eval_view = build_views(cfg)
    val_batch = int(cfg["data"].get("val_batch_size") or per_process)
    keep = ("label", "path")
    train_loader = build_loader(train_set, train_view, batch_size=per_process, train=True, seed=seed,
                                num_workers=workers, keep_keys=keep,
                                repeated_aug=int(cfg["data"].get("repeated_aug") or 1))
    val_loader = None
    if val_set is not None:
        val_loader = build_loader(val_set, eval_view, batch_size=val_batch, train=False, seed=seed,
                                  num_workers=workers, keep_keys=keep)
    model = build_model(cfg, num_classes)
    common = dict(out_dir=cfg["output_dir"], device=device, progress=progress, resume=resume, config=cfg)
    if recipe == "moco":
        from castvit.train.moco import train_moco

        memory_loader = None
        if val_loader is not None and memory_set is not None:
            memory = _subset(memory_set, cfg["data"].get("knn_memory_size"), seed)
            memory_loader = build_loader(memory, eval_view, batch_size=val_batch, train=False, seed=seed,
                                         num_workers=workers, keep_keys=keep)
        return train_moco(model, train_loader, train_cfg, memory_loader=memory_loader, query_loader=val_loader,
                          **common)
    if recipe == "supervised":
        from castvit.train.supervised import train_supervised

        return train_supervised(model, train_loader, train_cfg, val_loader=val_loader, **common)
    from castvit.train.linear_probe import train_linear_probe

    return train_linear_probe(model, train_loader, train_cfg, val_loader=val_loader, **common)
