"""Semantic segmentation fine-tuning (PROTOCOLS §1–2) through the shared engine.

The recipe is the authors': SGD with momentum 0.9 (Nesterov), polynomial decay per
iteration (power 0.9, down to ``min_lr``), optional linear warm-up (SPML), per-group
learning-rate multipliers (SPML's head ×10 / ×20, biases ×2), pixel cross-entropy
ignoring 255. The loop, checkpoints, exact resume, torchrun and progress are
:func:`castvit.train.engine.fit`'s. Checkpoints are Segmenter's container: ``model``
(``encoder.`` / ``decoder.`` keys), ``optimizer``, ``lr_scheduler``, ``epoch``, plus
``castvit_model`` (the model record).

``castvit train configs/segmenter_ade20k.yaml`` runs it from a recipe file; the
``data`` section of a segmentation recipe:

=================  ==========================================================
kind               ``ade20k`` | ``pascal_context`` | ``voc_aug`` | ``sbd`` |
                   ``synthetic``
root               dataset folder (see the README for each layout)
train_split,       split names (defaults: ADE ``training``/``validation``,
val_split          Context ``train``/``val``, VOC ``train_aug``/``val``)
train_size,        synthetic: scenes per split, dataset seed (val: seed + 1),
val_size, seed,    ``target`` (``part`` | ``object``) and ``scene``
target, scene      (:class:`~castvit.data.synthetic.SceneConfig` fields)
crop_size,         training augmentation (:class:`~castvit.data.segmentation.
img_scale,         SegTrainView`)
ratio_range,
cat_max_ratio,
flip_prob,
photometric
superpixels        :class:`~castvit.data.segmentation.SegSuperpixels` of the
                   training crops
eval               :class:`~castvit.eval.segmentation.InferenceConfig` fields
                   (``mode``, ``short_side``, ``long_side``, ``crop``,
                   ``stride``, ``flip``, ``scales``, ``superpixels``,
                   ``batch_size``) and ``mean_over`` (``present`` | ``all``),
                   ``max_images``
=================  ==========================================================

``model``: ``name`` (``segmenter_cast_small``, ``spml_cast_small`` …), ``kwargs``
(``num_classes``, ``encoder_kwargs``, ``decoder_kwargs``), ``pretrained``: the
checkpoint the **encoder** starts from (any pre-training container castvit reads;
loaded non-strictly), or null for random initialisation.

``data.device_augment: true`` splits the view (:class:`~castvit.data.device_augment.
DeviceSegView`): workers rescale, crop and flip; the photometric distortion, padding,
superpixels (``superpixels.method: slic_torch`` on the device) and normalisation run
batched on the training device. ``train.compile: true`` compiles the model (the
encoder in the static ``max_tokens`` mode; ``slic_torch`` bounds the count).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from castvit.data.segmentation import IGNORE_INDEX
from castvit.train import distributed as D
from castvit.train.engine import LoopConfig, Recipe, compile_for_training, fit, loader_view, to_plain
from castvit.train.optim import (amp_dtype, autocast, grad_scaler, load_optimizer_checked, load_scaler_state,
                                 scaler_state, set_lr)

DATA_KEYS = ("kind", "root", "train_split", "val_split", "train_size", "val_size", "seed", "target", "scene",
             "crop_size", "img_scale", "ratio_range", "cat_max_ratio", "flip_prob", "photometric", "superpixels",
             "eval", "device_augment")
EVAL_EXTRA = ("mean_over", "max_images")


@dataclass
class SegmentationConfig(LoopConfig):
    """Segmentation fine-tuning (defaults: the Segmenter ADE20K recipe of PROTOCOLS §1).

    Attributes (besides :class:`~castvit.train.engine.LoopConfig`'s):
        lr, min_lr, power: poly decay per iteration, ``(lr − min_lr)(1 − i/I)^power + min_lr``
            over the I iterations of ``epochs``.
        momentum, nesterov, weight_decay: SGD.
        bias_weight_decay: weight decay of biases (SPML: 0).
        lr_mult: multipliers per group, keys ``encoder_weight``, ``encoder_bias``,
            ``decoder_weight``, ``decoder_bias`` (SPML: 1, 2, 10, 20).
        warmup_iters, warmup_ratio: linear warm-up from ``lr · warmup_ratio`` (SPML: 100, 0.1).
        sync_bn: synchronise BatchNorm over processes (SPML used SyncBN).
        monitor: epoch-record key selecting ``best.pth.tar``.
    """

    epochs: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-5
    power: float = 0.9
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    bias_weight_decay: float = 0.0
    lr_mult: dict = field(default_factory=dict)
    warmup_iters: int = 0
    warmup_ratio: float = 0.1
    sync_bn: bool = False
    monitor: str = "val_mIoU"


def poly_lr(iteration: float, max_iters: float, *, base_lr: float, min_lr: float = 0.0, power: float = 0.9,
            warmup_iters: int = 0, warmup_ratio: float = 0.1) -> float:
    """mmseg's poly schedule (``by_epoch=False``) with its linear warm-up:
    ``lr = (base − min)(1 − i/I)^power + min``; during the first ``warmup_iters``
    multiplied by ``1 − (1 − i/W)(1 − warmup_ratio)``."""
    if max_iters <= 0:
        raise ValueError(f"max_iters must be > 0, got {max_iters}")
    progress = min(max(iteration / max_iters, 0.0), 1.0)
    lr = (base_lr - min_lr) * (1.0 - progress) ** power + min_lr
    if warmup_iters and iteration < warmup_iters:
        lr *= 1.0 - (1.0 - iteration / warmup_iters) * (1.0 - warmup_ratio)
    return lr


def pixel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
                        ) -> torch.Tensor:
    """Mean cross-entropy over the labelled pixels (0 with a zero gradient when every
    pixel is ignored, where ``F.cross_entropy`` would give NaN)."""
    valid = int((target != ignore_index).sum())
    loss = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    return loss / max(valid, 1)


class SegmentationRecipe(Recipe):
    name = "segmentation"

    def __init__(self, model: nn.Module, cfg: SegmentationConfig, *, steps_per_epoch: int, device: torch.device,
                 val_set=None, eval_cfg=None, eval_options: dict[str, Any] | None = None, train_loader=None):
        self.cfg, self.device, self.steps_per_epoch = cfg, device, steps_per_epoch
        self.model = model.to(device)
        self.record_model = self.model
        self.amp = amp_dtype(cfg)
        self.scaler = grad_scaler(device, enabled=cfg.amp_fp16)
        if cfg.sync_bn:
            self.model = D.convert_sync_batchnorm(self.model, device)
        forward = compile_for_training(self.model, train_loader) if cfg.compile else self.model
        self.ddp = D.wrap_ddp(forward, device)
        groups = self.model.param_groups(cfg.weight_decay, cfg.lr_mult, cfg.bias_weight_decay)
        self.optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
        self.val_set, self.eval_cfg = val_set, eval_cfg
        self.eval_options = dict(eval_options or {})
        self.monitor = cfg.monitor if val_set is not None else None
        self.lr = cfg.lr

    def on_epoch_start(self, epoch: int) -> None:
        self.ddp.train()

    def lr_at(self, t: float) -> float:
        c = self.cfg
        return poly_lr(t * self.steps_per_epoch, c.epochs * self.steps_per_epoch, base_lr=c.lr, min_lr=c.min_lr,
                       power=c.power, warmup_iters=c.warmup_iters, warmup_ratio=c.warmup_ratio)

    def train_step(self, batch, *, epoch, step, t):
        c = self.cfg
        images = batch["image"].to(self.device, non_blocking=True)
        sp = batch["superpixels"].to(self.device, non_blocking=True)
        target = batch["target"].to(self.device, non_blocking=True)
        self.lr = self.lr_at(t)
        set_lr(self.optimizer, self.lr)
        with autocast(self.device, self.amp):
            logits = self.ddp(images, sp)
        # Mean over the labelled pixels of the *global* batch: DDP averages gradients over
        # ranks, so each rank scales its sum by world / (labelled pixels on all ranks).
        valid_here = (target != IGNORE_INDEX).sum().double().cpu()
        total = float(D.all_reduce_sum(valid_here)) if D.is_distributed() else float(valid_here)
        loss_sum = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
        loss = loss_sum * D.get_world_size() / max(total, 1.0)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if c.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        valid = target != IGNORE_INDEX
        acc = (logits.detach().argmax(1)[valid] == target[valid]).float().mean() if valid.any() \
            else torch.zeros(())
        return {"loss": loss.detach(), "pixel_acc": acc}, int(images.shape[0]), {"lr": self.lr}

    def evaluate(self, epoch: int) -> dict[str, float]:
        if self.val_set is None:
            return {}
        from castvit.eval.segmentation import evaluate_segmentation

        opts = self.eval_options
        result, _ = evaluate_segmentation(self.model, self.val_set, self.model.num_classes, self.eval_cfg,
                                          mean_over=opts.get("mean_over", "present"),
                                          max_images=opts.get("max_images"))
        return {"val_mIoU": result["mIoU"], "val_mAcc": result["mAcc"], "val_aAcc": result["aAcc"]}

    # Segmenter's container: {model (encoder./decoder.), optimizer, lr_scheduler, epoch}, plus
    # the loss scaler; fit() adds castvit_model (the record_model's record, preprocessing included).
    def container(self, next_epoch: int) -> dict[str, Any]:
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": {"kind": "poly", "power": self.cfg.power, "base_lr": self.cfg.lr, "lr": self.lr},
            "epoch": next_epoch - 1,
            "scaler": scaler_state(self.scaler),
            "args": to_plain(self.cfg),
        }

    def load_container(self, ckpt: dict[str, Any]) -> int | None:
        from castvit.models.segmenter import load_segmentation_checkpoint

        load_segmentation_checkpoint(self.model, {"model": ckpt["model"]})
        load_optimizer_checked(self.optimizer, ckpt.get("optimizer"))
        load_scaler_state(self.scaler, ckpt.get("scaler"))
        return int(ckpt["epoch"]) + 1 if "epoch" in ckpt else None


def seg_view_preprocessing(loader) -> dict[str, Any] | None:
    """What a segmentation training loader feeds the model, as ``pretrained_cfg``
    entries (``input_size``: the crop; ``superpixels``: method, backend options and the
    density; ``mean``, ``std``), or None for a loader without a castvit segmentation view."""
    from castvit.ops import IMAGENET_MEAN, IMAGENET_STD

    view = loader_view(loader)
    view = getattr(view, "view", view)  # the device path's worker view wraps the CPU one
    sp, crop = getattr(view, "superpixels", None), getattr(view, "crop_size", None)
    if sp is None or not hasattr(sp, "pixels_per_superpixel") or not isinstance(crop, int):
        return None
    described: dict[str, Any] = {"method": sp.method}
    if sp.method == "seeds":
        described.update(num_levels=1, prior=2, histogram_bins=int(sp.histogram_bins),
                         num_iterations=int(sp.num_iterations))
    described["n_segments"] = int(sp.count(crop, crop))
    if not sp.n_segments:
        described["pixels_per_superpixel"] = int(sp.pixels_per_superpixel)
    else:
        described["pixels_per_superpixel"] = crop * crop / int(sp.n_segments)
    if sp.scale != 1.0:
        described["scale"] = float(sp.scale)
    if sp.wrapped_input:
        described["wrapped_input"] = True
    return {"input_size": [crop, crop], "superpixels": described, "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD)}


def train_segmentation(model: nn.Module, train_loader, cfg: SegmentationConfig, *, val_set=None, eval_cfg=None,
                       eval_options: dict[str, Any] | None = None, out_dir: str | Path | None = None,
                       device: str | torch.device = "cpu", progress: bool = True, resume: bool | str | Path = False,
                       config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune a :class:`~castvit.models.segmenter.SegmentationModel` in place.

    Args:
        model: the segmentation model (encoder already initialised).
        train_loader: batches with ``image``, ``superpixels`` and ``target`` (from
            :func:`build_segmentation_loader`); ``batch_size`` per process.
        cfg: the recipe settings.
        val_set: dataset of ``{"image", "target"}`` scored every ``cfg.eval_every``
            epochs with ``eval_cfg`` (:class:`~castvit.eval.segmentation.InferenceConfig`).
        out_dir, device, progress, resume, config: as :func:`castvit.train.engine.fit`.

    Returns:
        The history (``train_loss``, ``train_pixel_acc``, ``lr``, ``val_mIoU`` …).
    """
    device = torch.device(device)
    settings = seg_view_preprocessing(train_loader)
    if settings is not None:  # the checkpoint's model record says how the model was trained
        model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}), **settings}
    recipe = SegmentationRecipe(model, cfg, steps_per_epoch=len(train_loader), device=device, val_set=val_set,
                                eval_cfg=eval_cfg, eval_options=eval_options, train_loader=train_loader)
    return fit(recipe, train_loader, cfg, out_dir=out_dir, progress=progress, resume=resume, config=config)


# ------------------------------------------------------------------ from a recipe file


def _check_keys(section: str, given: dict[str, Any], allowed) -> None:
    import difflib

    for k in given:
        if k not in allowed:
            close = difflib.get_close_matches(k, list(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(allowed)}"
            raise ValueError(f"unknown key {section}.{k}{hint}")


def check_data(data: dict[str, Any]) -> None:
    """Validate a segmentation recipe's ``data`` section (``ValueError`` naming the key)."""
    from castvit.data.segmentation import DATASET_KINDS
    from castvit.eval.segmentation import InferenceConfig

    _check_keys("data", data, DATA_KEYS)
    if data.get("kind") not in DATASET_KINDS:
        raise ValueError(f"data.kind of a segmentation recipe must be one of {', '.join(DATASET_KINDS)}, "
                         f"got {data.get('kind')!r}")
    allowed = [f.name for f in dataclasses.fields(InferenceConfig)] + list(EVAL_EXTRA)
    _check_keys("data.eval", dict(data.get("eval") or {}), allowed)
    from castvit.data.segmentation import SegSuperpixels
    from castvit.data.transforms import SUPERPIXEL_METHODS

    sp = dict(data.get("superpixels") or {})
    _check_keys("data.superpixels", sp, [f.name for f in dataclasses.fields(SegSuperpixels)])
    if sp.get("method", "seeds") not in SUPERPIXEL_METHODS:
        raise ValueError(f"data.superpixels.method must be one of {', '.join(SUPERPIXEL_METHODS)}, "
                         f"got {sp['method']!r}")
    if data.get("device_augment") not in (None, True, False):
        raise ValueError(f"data.device_augment must be true or false, got {data['device_augment']!r}")
    if data.get("device_augment") and "crop_size" in data and data["crop_size"] is None:
        raise ValueError("data.device_augment pads every crop to data.crop_size so that a batch stacks on the "
                         "device; set data.crop_size (or data.device_augment: false)")


def eval_settings(data: dict[str, Any]):
    """``(InferenceConfig, options)`` from ``data.eval``."""
    from castvit.eval.segmentation import InferenceConfig

    ev = dict(data.get("eval") or {})
    options = {k: ev.pop(k) for k in EVAL_EXTRA if k in ev}
    return InferenceConfig(**ev), options


def build_segmentation_model(cfg: dict[str, Any], *, load_encoder: bool = True) -> nn.Module:
    import castvit

    m = cfg["model"]
    model = castvit.create_model(m["name"], **dict(m.get("kwargs") or {}))
    if load_encoder and m.get("pretrained"):
        report = model.load_encoder(m["pretrained"])
        if D.is_main_process():
            print(f"encoder: loaded {report.loaded} tensors from {m['pretrained']} ({report.container} container); "
                  + "; ".join(report.notes), flush=True)
    return model


def build_segmentation_loader(cfg: dict[str, Any], train_set, per_process: int, seed: int, workers: int):
    from castvit.data.datasets import build_loader
    from castvit.data.segmentation import SegViewDataset, seg_view_from_config

    view = seg_view_from_config(cfg["data"])
    if cfg["data"].get("device_augment"):
        from castvit.data.device_augment import DeviceSegView

        view = DeviceSegView(view)
    return build_loader(SegViewDataset(train_set, view, seed=seed), batch_size=per_process, train=True, seed=seed,
                        num_workers=workers)


def run_config(cfg: dict[str, Any], train_cfg: SegmentationConfig, device: torch.device, *,
               resume: bool | str = False, progress: bool = True) -> dict[str, Any]:
    """Run a resolved segmentation recipe (called by :func:`castvit.train.build.run`,
    which has checked the batch against the processes and picked the device)."""
    from castvit.data.segmentation import build_segmentation_dataset

    data = cfg["data"]
    train_set = build_segmentation_dataset(data, "train")
    val_set = None
    if data.get("kind") != "synthetic" or int(data.get("val_size", 0) or 0) > 0:
        val_set = build_segmentation_dataset(data, "val")
    loader = build_segmentation_loader(cfg, train_set, train_cfg.batch_size // D.get_world_size(), train_cfg.seed,
                                       train_cfg.num_workers)
    model = build_segmentation_model(cfg)
    if getattr(train_set, "num_classes", model.num_classes) != model.num_classes:
        raise ValueError(f"the {data['kind']} data has {train_set.num_classes} classes but the model "
                         f"{model.num_classes}; set model.kwargs.num_classes")
    eval_cfg, options = eval_settings(data)
    return train_segmentation(model, loader, train_cfg, val_set=val_set, eval_cfg=eval_cfg, eval_options=options,
                              out_dir=cfg["output_dir"], device=device, progress=progress, resume=resume, config=cfg)


__all__ = ["SegmentationConfig", "SegmentationRecipe", "build_segmentation_loader", "build_segmentation_model",
           "check_data", "eval_settings", "pixel_cross_entropy", "poly_lr", "run_config", "train_segmentation"]
