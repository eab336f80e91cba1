"""Batched farthest point sampling in plain PyTorch (CPU and CUDA)."""

from __future__ import annotations

import torch


def farthest_point_sampling(points: torch.Tensor, num_samples: int, start_idx: int = 0,
                            exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Pick ``num_samples`` points per batch element, each the farthest (squared
    Euclidean, float64) from the points already picked.

    Semantics follow the sampler the authors used (SPEC §2.5): the first pick is
    ``start_idx``; each later pick maximises the distance to the chosen set, ties
    going to the lowest index. Distances come from one float64 Gram matrix, so the
    loop does only ``O(N)`` work per pick.

    Args:
        points: ``B×N×D`` (any float dtype; computed in float64).
        num_samples: picks per batch element, ``1 ≤ num_samples ≤ N``.
        start_idx: index of the first pick.
        exclude: optional ``B×N`` bool; True points are never picked (unless a row
            runs out of other points, which callers must prevent).

    Returns:
        ``B×num_samples`` int64 indices.
    """
    if points.ndim != 3:
        raise ValueError(f"points must be B×N×D, got shape {tuple(points.shape)}")
    b, n, _ = points.shape
    if not 1 <= num_samples <= n:
        raise ValueError(f"num_samples must be in [1, {n}], got {num_samples}")
    p = points.to(torch.float64)
    sq = (p * p).sum(-1)
    gram = torch.bmm(p, p.transpose(1, 2))
    # Already-chosen and excluded points carry a negative distance, so they are never
    # re-picked while any eligible point (distance >= 0) remains.
    min_dist = torch.full((b, n), float("inf"), dtype=torch.float64, device=p.device)
    if exclude is not None:
        min_dist = min_dist.masked_fill(exclude, -2.0)
    cur = torch.full((b, 1), start_idx, dtype=torch.long, device=p.device)
    picks = [cur]
    for _ in range(num_samples - 1):
        d = (sq + sq.gather(1, cur) - 2.0 * gram.gather(2, cur.unsqueeze(1).expand(b, n, 1)).squeeze(2))
        min_dist = torch.minimum(min_dist, d.clamp_min_(0.0))
        min_dist.scatter_(1, cur, -1.0)
        cur = min_dist.argmax(dim=1, keepdim=True)
        picks.append(cur)
    return torch.cat(picks, dim=1)
