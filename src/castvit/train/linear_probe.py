"""Linear probe (SPEC §7): a linear classifier on the frozen backbone's ``out4``.

The backbone stays in eval mode the whole time (BatchNorm statistics and dropout
frozen, as in MoCo-v3's ``main_lincls``); only ``head`` trains, with SGD (momentum 0.9,
no weight decay) and a cosine learning rate set at the start of each epoch. The head
starts at N(0, 0.01²) weights and zero bias. Checkpoints are the authors' linear-probe
container: ``state_dict`` of the whole classifier with the ``module.`` prefix.

    model = castvit.create_model("cast_small", num_classes=1000)
    castvit.load_checkpoint(model, "moco/checkpoint_0099.pth.tar")     # drops the projector
    history = train_linear_probe(model, train_loader, LinearProbeConfig(), val_loader=val_loader)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from castvit.train import distributed as D
from castvit.train.engine import LoopConfig, Recipe, fit, record_preprocessing
from castvit.train.knn import backbone_features
from castvit.train.optim import amp_dtype, autocast, load_optimizer_checked, set_lr
from castvit.train.schedules import cosine_lr, scaled_lr
from castvit.train.supervised import evaluate_classifier


@dataclass
class LinearProbeConfig(LoopConfig):
    """Linear-probe settings (defaults: ImageNet-100, SPEC §7).

    Attributes (besides :class:`~castvit.train.engine.LoopConfig`'s):
        lr: base learning rate per ``lr_scale_batch`` images.
        momentum, weight_decay: SGD settings.
        lr_per_iteration: update the cosine every iteration instead of once per epoch
            (the authors' choice).
        monitor: epoch-record key that selects ``best.pth.tar``.
    """

    epochs: int = 90
    lr: float = 0.8
    lr_scale_batch: int | None = 256
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_per_iteration: bool = False
    monitor: str = "val_acc"


def freeze_backbone(model: nn.Module) -> list[nn.Parameter]:
    """Freeze everything but ``head``; reinitialise the head as the authors do
    (N(0, 0.01²) weights from torch's global generator, zero bias). Returns the head's
    parameters."""
    if not isinstance(getattr(model, "head", None), nn.Linear):
        raise ValueError("the linear probe needs a model with a Linear head; call model.reset_classifier(C)")
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    nn.init.normal_(model.head.weight, std=0.01)
    nn.init.zeros_(model.head.bias)
    return list(model.head.parameters())


class LinearProbeRecipe(Recipe):
    name = "linear_probe"

    def __init__(self, model: nn.Module, cfg: LinearProbeConfig, *, global_batch: int, device: torch.device,
                 val_loader=None):
        if cfg.compile:
            raise ValueError("compile serves the moco, supervised and segmentation recipes; the linear probe runs a "
                             "frozen encoder: leave compile=False")
        self.cfg, self.device, self.val_loader = cfg, device, val_loader
        self.model = model.to(device)
        self.record_model = self.model
        self.amp = amp_dtype(cfg)
        params = freeze_backbone(self.model)
        self.head = D.wrap_ddp(self.model.head, device)
        self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.base_lr = scaled_lr(cfg.lr, global_batch, cfg.lr_scale_batch)
        self.monitor = cfg.monitor if val_loader is not None else None
        self.best_acc1 = 0.0
        self.lr = 0.0

    def on_epoch_start(self, epoch: int) -> None:
        self.model.eval()

    def train_step(self, batch, *, epoch, step, t):
        c = self.cfg
        self.lr = cosine_lr(t if c.lr_per_iteration else math.floor(t), base_lr=self.base_lr, epochs=c.epochs)
        set_lr(self.optimizer, self.lr)
        images, labels = batch["image"].to(self.device), batch["label"].to(self.device)
        with torch.no_grad(), autocast(self.device, self.amp):
            feats = backbone_features(self.model, images, batch["superpixels"].to(self.device))
        logits = self.head(feats.float())
        loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        acc = (logits.detach().argmax(1) == labels).float().mean()
        return {"loss": loss.detach(), "acc": acc}, int(labels.numel()), {"lr": self.lr}

    def evaluate(self, epoch: int) -> dict[str, float]:
        if self.val_loader is None:
            return {}
        out = evaluate_classifier(self.model, self.val_loader, self.device, amp=self.amp)
        self.best_acc1 = max(self.best_acc1, 100.0 * out["acc"])
        return {f"val_{k}": v for k, v in out.items()}

    def container(self, next_epoch: int) -> dict[str, Any]:
        return {
            "epoch": next_epoch,
            "arch": getattr(self.model, "castvit_name", type(self.model).__name__),
            "state_dict": {f"module.{k}": v.detach().cpu() for k, v in self.model.state_dict().items()},
            "best_acc1": self.best_acc1,
            "optimizer": self.optimizer.state_dict(),
        }

    def load_container(self, ckpt: dict[str, Any]) -> int | None:
        from castvit.checkpoint import load_checkpoint

        load_checkpoint(self.model, {"state_dict": ckpt["state_dict"]}, reset_head="never")
        load_optimizer_checked(self.optimizer, ckpt.get("optimizer"))
        self.best_acc1 = float(ckpt.get("best_acc1", 0.0))
        return int(ckpt.get("epoch", 0))


def train_linear_probe(model: nn.Module, train_loader, cfg: LinearProbeConfig, *, val_loader=None,
                       out_dir: str | Path | None = None, device: str | torch.device = "cpu", progress: bool = True,
                       resume: bool | str | Path = False, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a linear classifier on the frozen features of ``model`` (in place).

    Args:
        model: a castvit classifier whose backbone holds the pre-trained weights and
            whose ``head`` is ``Linear(num_features, C)`` (``reset_classifier(C)``).
        train_loader, val_loader: batch-contract loaders (``TrainView`` with
            ``scale=(0.08, 1)`` and flips; ``EvalView``); ``batch_size`` per process.
        cfg, out_dir, device, progress, resume, config: as
            :func:`castvit.train.supervised.train_supervised`.

    Returns:
        The history (``train_loss``, ``train_acc``, ``lr``, ``val_acc`` … per epoch).
    """
    device = torch.device(device)
    record_preprocessing(model, train_loader)
    recipe = LinearProbeRecipe(model, cfg, global_batch=train_loader.batch_size * D.get_world_size(),
                               device=device, val_loader=val_loader)
    return fit(recipe, train_loader, cfg, out_dir=out_dir, progress=progress, resume=resume, config=config)
