"""Supervised classification (the DeiT recipe of SPEC §7) for any castvit classifier.

    from castvit.data.datasets import build_loader, synthetic_dataset
    from castvit.data.transforms import EvalView, SuperpixelConfig, TrainView
    from castvit.train.supervised import SupervisedConfig, train_supervised

    sp = SuperpixelConfig(n_segments=64, histogram_bins=5, num_iterations=15)
    train = build_loader(synthetic_dataset(2000, seed=1, image_size=64), TrainView(64, scale=(0.35, 1),
                         superpixels=sp), batch_size=64, train=True)
    val = build_loader(synthetic_dataset(500, seed=2, image_size=64), EvalView(64, crop_fraction=1.0,
                       superpixels=sp), batch_size=100, train=False)
    history = train_supervised(model, train, SupervisedConfig(epochs=10, lr=1e-3), val_loader=val,
                               out_dir="runs/sup")

Mixup and cutmix mix the superpixel maps with the images (see
:class:`castvit.data.transforms.MixConfig`); label smoothing goes into the soft targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from castvit.data.transforms import MixConfig, mix_batch, one_hot_smooth
from castvit.train import distributed as D
from castvit.train.engine import (LoopConfig, Recipe, compile_for_training, fit, record_preprocessing, step_seed,
                                  to_plain)
from castvit.train.optim import (ModelEma, amp_dtype, autocast, grad_scaler, load_optimizer_checked,
                                 load_scaler_state, param_groups, scaler_state, set_lr)
from castvit.train.schedules import cosine_lr, deit_epoch_lr, scaled_lr

LR_SCHEDULES = ("iteration", "timm_epoch")


@dataclass
class SupervisedConfig(LoopConfig):
    """DeiT-style supervised training (defaults: SPEC §7's published recipe; the global
    batch comes from the loader, ``configs/supervised_imagenet1k.yaml`` sets 1024).

    Attributes (besides :class:`~castvit.train.engine.LoopConfig`'s):
        lr: peak learning rate at the global batch ``lr_scale_batch`` (or as given when
            that is None); AdamW with ``betas`` and ``weight_decay`` (no decay on biases,
            norms and embeddings).
        min_lr, warmup_lr, warmup_epochs: linear warmup from ``warmup_lr``, then cosine
            down to ``min_lr``.
        lr_schedule: ``"iteration"`` (castvit's: warmup then half-cosine over the epochs
            after it, set at every iteration) or ``"timm_epoch"`` (DeiT's: timm's
            ``CosineLRScheduler``, whose cosine spans all the epochs, set once per epoch
            and stepped after it, so epoch ``e`` runs at timm's value for ``e − 1``; see
            :func:`~castvit.train.schedules.deit_epoch_lr`).
        label_smoothing: folded into the (mixed) soft targets.
        mixup_alpha, cutmix_alpha, mix_prob, mix_switch_prob: timm's Mixup settings
            (batch mode); 0 alphas or ``mix_prob=0`` turn mixing off.
        drop_path: the model's stochastic-depth rate. ``castvit train`` builds the model
            with it; here it is checked: a model built with another ``drop_path_rate``
            is refused (None: take the model as it is).
        ema_decay: keep an EMA of the weights with this decay (None: off); evaluated
            too when a validation loader is given.
        sync_bn: synchronise the conv stem's BatchNorm across processes (DeiT does not).
        monitor: epoch-record key that selects ``best.pth.tar``.
    """

    epochs: int = 300
    lr: float = 1e-3
    lr_scale_batch: int | None = None
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: float = 5.0
    lr_schedule: str = "iteration"
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    label_smoothing: float = 0.1
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    mix_prob: float = 1.0
    mix_switch_prob: float = 0.5
    drop_path: float | None = None
    ema_decay: float | None = None
    sync_bn: bool = False
    monitor: str = "val_acc"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.lr_schedule == "timm_epoch" and (int(self.warmup_epochs) != self.warmup_epochs):
            raise ValueError(f"lr_schedule 'timm_epoch' steps per epoch: warmup_epochs must be whole, "
                             f"got {self.warmup_epochs}")


def check_drop_path(model: nn.Module, drop_path: float | None) -> None:
    """Refuse a ``drop_path`` the model was not built with (stochastic depth is fixed
    when the blocks are made, so it cannot be changed afterwards). The model's rate is
    its ``drop_path_rate`` when :func:`castvit.create_model` built it, else the largest
    ``drop_prob`` of its stochastic-depth modules (the last block's, 0 without any)."""
    if drop_path is None:
        return
    if getattr(model, "castvit_name", None) is not None:  # castvit builders default to 0
        built = float((getattr(model, "castvit_config", None) or {}).get("drop_path_rate", 0.0))
    else:
        built = max((float(m.drop_prob) for m in model.modules() if hasattr(m, "drop_prob")), default=0.0)
    if abs(built - float(drop_path)) > 1e-12:
        raise ValueError(f"drop_path={drop_path} but the model was built with drop_path_rate={built}; build it "
                         f"with castvit.create_model(..., drop_path_rate={drop_path}) or leave drop_path=None")


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``−Σ_c target_c · log softmax(logits)_c``."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def _num_classes(model: nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    if n is None and isinstance(getattr(model, "head", None), nn.Linear):
        n = model.head.out_features
    if not n:
        raise ValueError("the model has no classification head; call model.reset_classifier(num_classes) first")
    return int(n)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader, device: str | torch.device = "cpu", *,
                        amp: torch.dtype | bool | None = None, progress: bool = False) -> dict[str, float]:
    """Top-1 / top-5 accuracy and mean cross-entropy of ``model`` over ``loader``.

    Runs in eval mode (the previous mode is restored), under autocast to ``amp`` (a
    dtype; True: bfloat16). Under torchrun each rank scores its shard and the sums are
    reduced, so every rank returns the full-set numbers.

    Returns:
        ``{"acc": top-1 in [0, 1], "acc5": top-5, "loss": mean CE, "count": images}``.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # correct1, correct5, loss sum, count
    batches = loader
    if progress and D.is_main_process():
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True)
    for batch in batches:
        images = batch["image"].to(device, non_blocking=True)
        sp = batch["superpixels"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images, sp)
        logits = logits.float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        sums[0] += float((top[:, 0] == labels).sum())
        sums[1] += float((top == labels[:, None]).any(1).sum())
        sums[2] += float(F.cross_entropy(logits, labels, reduction="sum"))
        sums[3] += labels.numel()
    model.train(was_training)
    sums = D.all_reduce_sum(sums)
    n = max(float(sums[3]), 1.0)
    return {"acc": float(sums[0]) / n, "acc5": float(sums[1]) / n, "loss": float(sums[2]) / n,
            "count": int(sums[3])}


class SupervisedRecipe(Recipe):
    name = "supervised"

    def __init__(self, model: nn.Module, cfg: SupervisedConfig, *, global_batch: int, device: torch.device,
                 val_loader=None, train_loader=None):
        check_drop_path(model, cfg.drop_path)
        self.cfg, self.device, self.val_loader = cfg, device, val_loader
        self.model = model.to(device)
        self.record_model = self.model
        self.amp = amp_dtype(cfg)
        self.scaler = grad_scaler(device, enabled=cfg.amp_fp16)
        if cfg.sync_bn:
            self.model = D.convert_sync_batchnorm(self.model, device)
        forward = self.model
        if cfg.compile:  # the token bound comes from the training view (cutmix pastes a partner's ids)
            mixing = cfg.cutmix_alpha > 0 and cfg.mix_prob > 0
            forward = compile_for_training(self.model, train_loader, mixing=mixing)
        self.ddp = D.wrap_ddp(forward, device)
        self.num_classes = _num_classes(model)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr,
                                           betas=tuple(cfg.betas))
        self.base_lr = scaled_lr(cfg.lr, global_batch, cfg.lr_scale_batch)
        self.ema = ModelEma(self.model, cfg.ema_decay) if cfg.ema_decay else None
        self.mix = MixConfig(cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mix_prob, cfg.mix_switch_prob,
                             cfg.label_smoothing, self.num_classes)
        self.monitor = cfg.monitor if val_loader is not None else None
        self.lr = 0.0

    def on_epoch_start(self, epoch: int) -> None:
        self.ddp.train()

    def lr_at(self, t: float) -> float:
        c = self.cfg
        if c.lr_schedule == "timm_epoch":
            return deit_epoch_lr(int(t), base_lr=self.base_lr, epochs=c.epochs, warmup_epochs=int(c.warmup_epochs),
                                 warmup_lr=c.warmup_lr, min_lr=c.min_lr)
        return cosine_lr(t, base_lr=self.base_lr, epochs=c.epochs, warmup_epochs=c.warmup_epochs,
                         min_lr=c.min_lr, warmup_start_lr=c.warmup_lr)

    def train_step(self, batch, *, epoch, step, t):
        c = self.cfg
        batch = {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        if self.mix.enabled:
            gen = torch.Generator()
            gen.manual_seed(step_seed(c.seed, D.get_rank(), epoch * 1_000_003 + step))
            batch = mix_batch(batch, self.mix, gen)
            target = batch["target"]
        else:
            target = one_hot_smooth(batch["label"], self.num_classes, c.label_smoothing)
        self.lr = self.lr_at(t)
        set_lr(self.optimizer, self.lr)
        with autocast(self.device, self.amp):
            logits = self.ddp(batch["image"], batch["superpixels"])
        loss = soft_cross_entropy(logits, target)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if c.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        acc = (logits.detach().argmax(1) == target.argmax(1)).float().mean()
        return {"loss": loss.detach(), "acc": acc}, int(logits.shape[0]), {"lr": self.lr}

    def evaluate(self, epoch: int) -> dict[str, float]:
        if self.val_loader is None:
            return {}
        out = {f"val_{k}": v for k, v in evaluate_classifier(self.model, self.val_loader, self.device,
                                                             amp=self.amp).items()}
        if self.ema is not None:
            ema = evaluate_classifier(self.ema.module, self.val_loader, self.device, amp=self.amp)
            out.update({f"val_ema_{k}": v for k, v in ema.items() if k != "count"})
        return out

    # DeiT's container: {model, optimizer, lr_scheduler, epoch, model_ema, scaler, args}
    def container(self, next_epoch: int) -> dict[str, Any]:
        out = {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": {"kind": self.cfg.lr_schedule, "base_lr": self.base_lr, "lr": self.lr},
            "epoch": next_epoch - 1,
            "scaler": scaler_state(self.scaler),
            "args": to_plain(self.cfg),
        }
        if self.ema is not None:
            out["model_ema"] = {k: v.detach().cpu() for k, v in self.ema.module.state_dict().items()}
        return out

    def load_container(self, ckpt: dict[str, Any]) -> int | None:
        from castvit.checkpoint import load_checkpoint

        load_checkpoint(self.model, {"model": ckpt["model"]}, reset_head="never")
        load_optimizer_checked(self.optimizer, ckpt.get("optimizer"))
        load_scaler_state(self.scaler, ckpt.get("scaler"))
        if self.ema is not None and "model_ema" in ckpt:
            self.ema.module.load_state_dict(ckpt["model_ema"])
        return int(ckpt["epoch"]) + 1 if "epoch" in ckpt else None


def train_supervised(model: nn.Module, train_loader, cfg: SupervisedConfig, *, val_loader=None,
                     out_dir: str | Path | None = None, device: str | torch.device = "cpu", progress: bool = True,
                     resume: bool | str | Path = False, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a classifier with the supervised recipe; the model is trained in place.

    Args:
        model: a castvit classifier (``model(images, superpixels) -> B×C`` logits).
        train_loader: batches following the batch contract, ideally from
            :func:`castvit.data.datasets.build_loader` (deterministic and exactly
            resumable); its ``batch_size`` is per process.
        cfg: the recipe settings.
        val_loader: scored after every ``cfg.eval_every`` epochs (``val_acc``, …).
        out_dir: checkpoints (``last.pth.tar``, ``best.pth.tar``, DeiT container plus
            ``castvit_model``), ``metrics.jsonl``, ``config.yaml``; None writes nothing.
        device: ``"cpu"``, ``"cuda"``…; under torchrun, ``cuda`` means this rank's GPU.
        progress: progress bar and epoch summaries.
        resume: True to continue from ``out_dir/last.pth.tar`` when present, or a path.
        config: resolved configuration to record (default: ``cfg``).

    Returns:
        History: ``epochs`` (records) and per-epoch lists ``train_loss``, ``train_acc``,
        ``lr``, ``val_acc``, ``val_loss`` … (see :func:`castvit.train.engine.fit`).
    """
    device = torch.device(device)
    global_batch = train_loader.batch_size * D.get_world_size()
    record_preprocessing(model, train_loader)
    recipe = SupervisedRecipe(model, cfg, global_batch=global_batch, device=device, val_loader=val_loader,
                              train_loader=train_loader)
    return fit(recipe, train_loader, cfg, out_dir=out_dir, progress=progress, resume=resume, config=config)
