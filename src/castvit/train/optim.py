"""Optimizer parameter groups, the model EMA, and mixed-precision helpers."""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn as nn

NO_DECAY_NAMES = ("pos_embed", "cls_token", "pe_token")


def param_groups(model: nn.Module, weight_decay: float, *, exclude_bias_and_norm: bool = True
                 ) -> list[dict]:
    """Trainable parameters in two groups: with weight decay, and without it for biases,
    norm weights (every 1-D tensor) and the position/cls embeddings (timm/DeiT's rule).
    ``exclude_bias_and_norm=False`` decays everything (MoCo-v3's AdamW)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = exclude_bias_and_norm and (p.ndim <= 1 or name.split(".")[-1] in NO_DECAY_NAMES)
        (no_decay if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def load_optimizer_checked(optimizer: torch.optim.Optimizer, state: dict | None) -> bool:
    """Load an optimizer state if it fits parameter by parameter (torch only checks the
    group sizes, so a state from a model with another parameter order would load
    silently wrong). Warns and keeps the fresh state otherwise; returns whether loaded."""
    import warnings

    if not state:
        return False
    params = [p for g in optimizer.param_groups for p in g["params"]]
    saved = state.get("state", {})
    sizes = [len(g["params"]) for g in state.get("param_groups", [])]
    problem = None
    if sizes != [len(g["params"]) for g in optimizer.param_groups]:
        own = [len(g["params"]) for g in optimizer.param_groups]
        problem = f"parameter groups of sizes {sizes}, the model has {own}"
    else:
        for i, p in enumerate(params):
            s = saved.get(i)
            for v in (s or {}).values():
                if torch.is_tensor(v) and v.ndim > 0 and v.shape != p.shape:
                    problem = f"state of parameter {i} has shape {tuple(v.shape)}, the parameter {tuple(p.shape)}"
                    break
            if problem:
                break
    if problem:
        warnings.warn(f"optimizer state not restored ({problem}); the optimizer starts fresh", stacklevel=2)
        return False
    optimizer.load_state_dict(state)
    return True


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def amp_dtype(cfg) -> torch.dtype | None:
    """The autocast dtype a :class:`~castvit.train.engine.LoopConfig` asks for:
    bfloat16 (``amp_bf16``), float16 (``amp_fp16``, the authors' AMP) or None."""
    if getattr(cfg, "amp_fp16", False):
        return torch.float16
    if getattr(cfg, "amp_bf16", False):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | bool | None):
    """Autocast to ``dtype`` on ``device`` (``True``: bfloat16), or a no-op context."""
    if dtype is True:
        dtype = torch.bfloat16
    if not dtype:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# An enabled GradScaler's initial state (torch's defaults): what the authors' loaders
# (MoCo-v3's GradScaler, DeiT's NativeScaler) accept from a run that did not use one.
_FRESH_SCALER = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                 "_growth_tracker": 0}


def grad_scaler(device: torch.device, enabled: bool):
    """The loss scaler of float16 training (a pass-through when not ``enabled``)."""
    if hasattr(torch.amp, "GradScaler"):  # torch >= 2.3
        return torch.amp.GradScaler(device.type, enabled=enabled)
    if enabled and device.type != "cuda":
        raise ValueError("amp_fp16 off CUDA needs torch >= 2.3 (torch.amp.GradScaler); use amp_bf16")
    return torch.cuda.amp.GradScaler(enabled=enabled)


def scaler_state(scaler) -> dict:
    """``scaler.state_dict()`` of an enabled scaler; for a disabled one, the state of a
    fresh enabled scaler. torch writes ``{}`` for a disabled scaler, which an enabled
    ``GradScaler.load_state_dict`` refuses, so the authors' scripts could not resume it."""
    if scaler is not None and scaler.is_enabled():
        return {k: (float(v) if torch.is_tensor(v) else v) for k, v in scaler.state_dict().items()}
    return dict(_FRESH_SCALER)


def load_scaler_state(scaler, state: dict | None) -> None:
    """Restore a scaler written by :func:`scaler_state` (or by the authors' scripts); an
    empty state (older castvit checkpoints) leaves the scaler fresh."""
    if scaler is not None and scaler.is_enabled() and state:
        scaler.load_state_dict(state)


class ModelEma(nn.Module):
    """Exponential moving average of a model's parameters and buffers (timm's
    ModelEmaV2): ``ema ← decay·ema + (1 − decay)·model`` after every step; integer
    buffers are copied."""

    def __init__(self, model: nn.Module, decay: float = 0.9999):
        super().__init__()
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        pairs = list(zip(self.module.parameters(), model.parameters()))
        pairs += list(zip(self.module.buffers(), model.buffers()))
        for ema_v, v in pairs:
            if ema_v.is_floating_point():
                ema_v.mul_(self.decay).add_(v.detach().to(ema_v.dtype), alpha=1.0 - self.decay)
            else:
                ema_v.copy_(v)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
