"""MoCo-v3 self-supervised pre-training of any castvit model (SPEC §7).

The wrapper mirrors the authors' ``moco.builder.MoCo_ViT`` so that its state dict —
and the ``checkpoint_%04d.pth.tar`` container, with the ``module.`` prefix DDP gives —
has the published names: ``base_encoder.*`` (encoder with the 3-layer projector as
``head``), ``momentum_encoder.*`` (same layout) and ``predictor.*``. Published MoCo
checkpoints therefore load into :class:`MoCo` (to resume) and, through
:func:`castvit.load_checkpoint`, into any classifier (``head.*`` dropped).

    from castvit.data.datasets import build_loader, synthetic_dataset
    from castvit.data.transforms import MoCoViews, SuperpixelConfig
    from castvit.train.moco import MoCoConfig, train_moco

    encoder = castvit.create_model("cast_small")
    views = MoCoViews(224, superpixels=SuperpixelConfig(196, 15, 20))
    loader = build_loader(dataset, views, batch_size=256, train=True)
    history = train_moco(encoder, loader, MoCoConfig(epochs=100, warmup_epochs=10), out_dir="runs/moco")
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from castvit.train import distributed as D
from castvit.train.engine import LoopConfig, Recipe, fit, record_preprocessing
from castvit.train.optim import (amp_dtype, autocast, grad_scaler, load_optimizer_checked, load_scaler_state,
                                 scaler_state, set_lr)
from castvit.train.schedules import cosine_lr, moco_momentum, scaled_lr


@dataclass
class MoCoConfig(LoopConfig):
    """MoCo-v3 settings (defaults: SPEC §7, ImageNet-1k, 100 epochs; the global batch
    comes from the loader, the recipes set 256).

    Attributes (besides :class:`~castvit.train.engine.LoopConfig`'s):
        lr: base learning rate per ``lr_scale_batch`` images (1.5e-4 per 256);
            AdamW over every parameter, weight decay included, as the authors do.
        warmup_epochs: linear warmup (10 % of the epochs in the recipes), then
            half-cosine to 0, per iteration.
        temperature: the contrastive temperature T.
        momentum: m0 of the momentum encoder; ``momentum_cosine`` raises it to 1 along
            a half cosine over the (fractional) epochs.
        dim, mlp_dim: projector / predictor output and hidden widths.
        sync_bn: synchronise every BatchNorm across processes (the authors convert the
            whole model).
        knn_k, knn_temperature: kNN monitor settings (used when memory and query
            loaders are given; its accuracy then picks ``best.pth.tar``, else the
            lowest training loss does).
    """

    epochs: int = 100
    lr: float = 1.5e-4
    lr_scale_batch: int | None = 256
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 10.0
    temperature: float = 0.2
    momentum: float = 0.99
    momentum_cosine: bool = True
    dim: int = 256
    mlp_dim: int = 4096
    sync_bn: bool = True
    knn_k: int = 20
    knn_temperature: float = 0.07


def build_mlp(num_layers: int, input_dim: int, mlp_dim: int, output_dim: int, last_bn: bool = True
              ) -> nn.Sequential:
    """The authors' ``_build_mlp``: ``num_layers`` bias-free Linear layers, BN + ReLU
    between them, and an affine-free BN at the end (indices are state-dict names:
    ``0`` Linear, ``1`` BN, ``2`` ReLU, ``3`` Linear, …)."""
    layers: list[nn.Module] = []
    for i in range(num_layers):
        d_in = input_dim if i == 0 else mlp_dim
        d_out = output_dim if i == num_layers - 1 else mlp_dim
        layers.append(nn.Linear(d_in, d_out, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(d_out, affine=False))
    return nn.Sequential(*layers)


def contrastive_loss(q: torch.Tensor, k: torch.Tensor, temperature: float, rank: int | None = None) -> torch.Tensor:
    """MoCo-v3 InfoNCE: ``2T · CE(q̂ k̂ᵀ / T, labels)`` where ``k`` holds the keys of every
    rank (gathered here) and query ``i`` of rank ``r`` matches key ``i + r·B``.

    Args:
        q: ``B×C`` queries of this rank (gradients flow).
        k: ``B×C`` keys of this rank (no gradient).
        temperature: T.
        rank: this process's rank (default: from the process group).
    """
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1)
    k = D.concat_all_gather(k)
    logits = q @ k.T / temperature
    rank = D.get_rank() if rank is None else rank
    labels = torch.arange(q.shape[0], device=q.device) + q.shape[0] * rank
    return F.cross_entropy(logits, labels) * (2 * temperature)


class MoCo(nn.Module):
    """MoCo-v3: base encoder + projector, momentum encoder, predictor.

    Args:
        encoder: a castvit model; its ``head`` is replaced by the 3-layer projector
            (``num_features → mlp_dim → mlp_dim → dim``). The encoder object becomes
            ``base_encoder``; ``momentum_encoder`` is a frozen copy.
        dim, mlp_dim: projector output and hidden widths (256, 4096 published).
        temperature: T of the contrastive loss.
    """

    def __init__(self, encoder: nn.Module, dim: int = 256, mlp_dim: int = 4096, temperature: float = 0.2):
        super().__init__()
        self.temperature = temperature
        hidden = int(getattr(encoder, "num_features", 0)) or encoder.head.weight.shape[1]
        # As the authors: deleting and re-adding `head` moves it last in the encoder.
        del encoder.head
        encoder.head = build_mlp(3, hidden, mlp_dim, dim)
        self.base_encoder = encoder
        self.momentum_encoder = copy.deepcopy(encoder)
        self.momentum_encoder.requires_grad_(False)
        self.predictor = build_mlp(2, dim, mlp_dim, dim)

    @torch.no_grad()
    def update_momentum_encoder(self, m: float) -> None:
        """``θ_k ← m·θ_k + (1 − m)·θ_q`` for the parameters (BN statistics stay the
        momentum encoder's own)."""
        for p_b, p_m in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters()):
            p_m.mul_(m).add_(p_b.detach(), alpha=1.0 - m)

    def compile_encoders(self, train_loader=None) -> None:
        """Run both encoders (projector included) compiled from now on
        (:func:`~castvit.train.engine.compile_for_training`: one graph each, static
        shapes); the modules and their state dicts stay as they are."""
        from castvit.train.engine import compile_for_training

        # Kept outside the module tree: the state dict must not gain `_orig_mod.` copies.
        self.__dict__["_compiled"] = (compile_for_training(self.base_encoder, train_loader),
                                      compile_for_training(self.momentum_encoder, train_loader))

    def forward(self, x1: torch.Tensor, s1: torch.Tensor, x2: torch.Tensor, s2: torch.Tensor, m: float
                ) -> torch.Tensor:
        """Symmetric loss ``ctr(q1, k2) + ctr(q2, k1)`` of two views (images ``B×3×H×W``
        and their superpixels ``B×H×W``); updates the momentum encoder with ``m``."""
        base, momentum = self.__dict__.get("_compiled") or (self.base_encoder, self.momentum_encoder)
        q1 = self.predictor(base(x1, s1))
        q2 = self.predictor(base(x2, s2))
        with torch.no_grad():
            self.update_momentum_encoder(m)
            k1 = momentum(x1, s1)
            k2 = momentum(x2, s2)
        return contrastive_loss(q1, k2, self.temperature) + contrastive_loss(q2, k1, self.temperature)


class MoCoRecipe(Recipe):
    name = "moco"

    def __init__(self, moco: MoCo, cfg: MoCoConfig, *, global_batch: int, device: torch.device,
                 memory_loader=None, query_loader=None, arch: str | None = None, train_loader=None):
        self.cfg, self.device = cfg, device
        self.moco = moco.to(device)
        self.record_model = self.moco.base_encoder
        self.amp = amp_dtype(cfg)
        self.scaler = grad_scaler(device, enabled=cfg.amp_fp16)
        if cfg.sync_bn:
            self.moco = D.convert_sync_batchnorm(self.moco, device)
        if cfg.compile:
            self.moco.compile_encoders(train_loader)
        self.ddp = D.wrap_ddp(self.moco, device)
        # The authors' optimizer: AdamW over model.parameters() in one group (frozen ones
        # included; they get no gradient), weight decay on all, so their state lines up.
        self.optimizer = torch.optim.AdamW(self.moco.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                                           weight_decay=cfg.weight_decay)
        self.base_lr = scaled_lr(cfg.lr, global_batch, cfg.lr_scale_batch)
        self.memory_loader, self.query_loader = memory_loader, query_loader
        if memory_loader is not None and query_loader is not None:
            self.monitor, self.monitor_mode = "knn_acc", "max"
        else:
            self.monitor, self.monitor_mode = "train_loss", "min"
        self.arch = arch or getattr(moco.base_encoder, "castvit_name", type(moco.base_encoder).__name__)
        self.lr = self.m = 0.0

    def on_epoch_start(self, epoch: int) -> None:
        self.ddp.train()

    def train_step(self, batch, *, epoch, step, t):
        c = self.cfg
        self.lr = cosine_lr(t, base_lr=self.base_lr, epochs=c.epochs, warmup_epochs=c.warmup_epochs)
        self.m = moco_momentum(t, base_momentum=c.momentum, epochs=c.epochs, cosine=c.momentum_cosine)
        set_lr(self.optimizer, self.lr)
        x1, s1 = batch["image"].to(self.device, non_blocking=True), batch["superpixels"].to(self.device)
        x2, s2 = batch["image2"].to(self.device, non_blocking=True), batch["superpixels2"].to(self.device)
        with autocast(self.device, self.amp):
            loss = self.ddp(x1, s1, x2, s2, self.m)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if c.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.moco.parameters(), c.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {"loss": loss.detach()}, int(x1.shape[0]), {"lr": self.lr, "momentum": self.m}

    def evaluate(self, epoch: int) -> dict[str, float]:
        if self.memory_loader is None or self.query_loader is None:
            return {}
        from castvit.train.knn import knn_evaluate

        acc = knn_evaluate(self.moco.base_encoder, self.memory_loader, self.query_loader, self.device,
                           k=self.cfg.knn_k, temperature=self.cfg.knn_temperature, amp=self.amp)
        return {"knn_acc": acc}

    def container(self, next_epoch: int) -> dict[str, Any]:
        return {
            "epoch": next_epoch,
            "arch": self.arch,
            "state_dict": {f"module.{k}": v.detach().cpu() for k, v in self.moco.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": scaler_state(self.scaler),
        }

    def load_container(self, ckpt: dict[str, Any]) -> int | None:
        load_moco_state(self.moco, ckpt)
        load_optimizer_checked(self.optimizer, ckpt.get("optimizer"))
        load_scaler_state(self.scaler, ckpt.get("scaler"))
        return int(ckpt.get("epoch", 0))


def load_moco_state(moco: MoCo, ckpt: dict[str, Any]) -> None:
    """Load a MoCo container (ours or the authors') into a :class:`MoCo` wrapper,
    strictly; alias keys (``blocksK.N``) are accepted with or without the flat ones."""
    from castvit.checkpoint import CheckpointError, adapt_block_keys

    sd = ckpt["state_dict"] if "state_dict" in ckpt else ckpt
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    parts = {}
    for name in ("base_encoder", "momentum_encoder", "predictor"):
        sub = {k[len(name) + 1:]: v for k, v in sd.items() if k.startswith(name + ".")}
        module = getattr(moco, name)
        parts[name] = adapt_block_keys(sub, module) if name != "predictor" else sub
    merged = {f"{n}.{k}": v for n, sub in parts.items() for k, v in sub.items()}
    own = moco.state_dict()
    missing = sorted(set(own) - set(merged))
    unexpected = sorted(set(merged) - set(own))
    bad = [k for k in merged if k in own and merged[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise CheckpointError(f"MoCo checkpoint does not fit the model: missing {missing[:8]}, unexpected "
                              f"{unexpected[:8]}, mis-shaped {bad[:8]}; check the model name, overrides, "
                              "dim and mlp_dim")
    moco.load_state_dict(merged)


def train_moco(encoder: nn.Module | MoCo, train_loader, cfg: MoCoConfig, *, memory_loader=None, query_loader=None,
               out_dir: str | Path | None = None, device: str | torch.device = "cpu", progress: bool = True,
               resume: bool | str | Path = False, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pre-train ``encoder`` with MoCo-v3. The encoder is trained in place; its ``head``
    becomes the projector (call ``reset_classifier`` to classify afterwards).

    Args:
        encoder: any castvit model (``model(images, superpixels)``), or a :class:`MoCo`
            wrapper (to keep a handle on the momentum encoder and predictor).
        train_loader: batches with two views (``image``/``superpixels`` and
            ``image2``/``superpixels2``), e.g. :func:`~castvit.data.datasets.build_loader`
            with :class:`~castvit.data.transforms.MoCoViews`; ``batch_size`` per process.
        cfg: the recipe.
        memory_loader, query_loader: labelled eval-view loaders for the kNN monitor
            (``knn_acc`` each ``cfg.eval_every`` epochs); optional.
        out_dir, device, progress, resume, config: as :func:`castvit.train.engine.fit`.
            Checkpoints are the authors' MoCo container, plus ``castvit_model``: the base
            encoder's record (its ``head`` there is the classifier it was built with;
            the container's ``head.*`` is the projector, which loaders drop).

    Returns:
        The history (``train_loss``, ``lr``, ``knn_acc`` … per epoch).
    """
    device = torch.device(device)
    moco = encoder if isinstance(encoder, MoCo) else MoCo(encoder, cfg.dim, cfg.mlp_dim, cfg.temperature)
    record_preprocessing(moco.base_encoder, train_loader)
    recipe = MoCoRecipe(moco, cfg, global_batch=train_loader.batch_size * D.get_world_size(), device=device,
                        memory_loader=memory_loader, query_loader=query_loader, train_loader=train_loader)
    return fit(recipe, train_loader, cfg, out_dir=out_dir, progress=progress, resume=resume, config=config)
