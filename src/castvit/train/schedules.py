"""Learning-rate and momentum schedules as pure functions of the fractional epoch.

``t`` is ``epoch + step / steps_per_epoch``: the recipes evaluate the schedules at every
iteration (SPEC §7), so a schedule has no state to save and a resumed run lands on the
same values. DeiT's per-epoch timm schedule (:func:`deit_epoch_lr`) is a pure function
of the epoch for the same reason.
"""

from __future__ import annotations

import math


def cosine_lr(t: float, *, base_lr: float, epochs: float, warmup_epochs: float = 0.0, min_lr: float = 0.0,
              warmup_start_lr: float = 0.0) -> float:
    """Linear warmup then half-cosine decay.

    ``t < W``: ``warmup_start_lr + (base_lr − warmup_start_lr)·t/W``;
    else ``min_lr + (base_lr − min_lr)·½(1 + cos(π (t − W)/(E − W)))``.
    With ``warmup_start_lr = min_lr = 0`` this is MoCo-v3's ``adjust_learning_rate``.
    """
    if epochs <= 0:
        raise ValueError(f"epochs must be > 0, got {epochs}")
    if warmup_epochs > 0 and t < warmup_epochs:
        return warmup_start_lr + (base_lr - warmup_start_lr) * t / warmup_epochs
    if epochs <= warmup_epochs:
        return base_lr
    progress = min(max((t - warmup_epochs) / (epochs - warmup_epochs), 0.0), 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def moco_momentum(t: float, *, base_momentum: float, epochs: float, cosine: bool = True) -> float:
    """MoCo-v3 momentum: ``m = 1 − ½(1 + cos(π t/E))(1 − m0)`` (from m0 to 1), or the
    constant ``m0`` with ``cosine=False``."""
    if not cosine:
        return base_momentum
    return 1.0 - 0.5 * (1.0 + math.cos(math.pi * t / epochs)) * (1.0 - base_momentum)


def scaled_lr(lr: float, global_batch: int, reference_batch: int | None) -> float:
    """The linear scaling rule ``lr × batch / reference`` (``lr`` itself when
    ``reference_batch`` is None)."""
    return lr if not reference_batch else lr * global_batch / reference_batch


def timm_cosine_lr(t: float, *, base_lr: float, epochs: int, warmup_epochs: int = 0, warmup_lr: float = 0.0,
                   min_lr: float = 0.0) -> float:
    """timm 0.4.12's ``CosineLRScheduler`` at epoch ``t`` (DeiT's ``--sched cosine``:
    ``t_initial = epochs``, no warmup prefix, one cycle).

    ``t < W``: ``warmup_lr + t·(base_lr − warmup_lr)/W``; ``W ≤ t < E``:
    ``min_lr + ½(base_lr − min_lr)(1 + cos(π t/E))`` (the cosine runs over the whole
    ``E`` epochs, warmup included); ``t ≥ E``: ``min_lr``.
    """
    if epochs <= 0:
        raise ValueError(f"epochs must be > 0, got {epochs}")
    if t < warmup_epochs:
        return warmup_lr + t * (base_lr - warmup_lr) / warmup_epochs
    if t >= epochs:
        return min_lr
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * t / epochs))


def deit_epoch_lr(epoch: int, **kwargs: float) -> float:
    """The learning rate DeiT trains epoch ``epoch`` (0-based) with: its scheduler starts
    at ``warmup_lr`` and is stepped with ``step(e)`` *after* epoch ``e``, so epoch ``e``
    runs at :func:`timm_cosine_lr` of ``e − 1`` (epoch 0 at that of 0), constant within
    the epoch. ``kwargs``: those of :func:`timm_cosine_lr`."""
    return timm_cosine_lr(max(int(epoch) - 1, 0), **kwargs)
