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


def autocast(device: torch.device, bf16: bool):
    """bfloat16 autocast on ``device`` when ``bf16``, else a no-op context."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


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
