"""Batched farthest point sampling in plain PyTorch (CPU and CUDA)."""

from __future__ import annotations

import torch


def farthest_point_sampling(points: torch.Tensor, num_samples: int, start_idx: int = 0,
                            exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Pick ``num_samples`` points per batch element, each the farthest (squared
    Euclidean, float64) from the points already picked.

    Semantics follow the sampler the authors used (SPEC §2.5): the first pick is
    ``start_idx``; each later pick maximises the distance to the chosen set, ties
    going to the lowest index.

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
    # All pairwise distances up front, from one float64 Gram matrix, so that each pick
    # is three small ops (gather a row, running minimum, argmax): the loop runs
    # num_samples times per forward and its per-op overhead dominates at N ≈ 200.
    p = points.to(torch.float64)
    sq = (p * p).sum(-1)
    gram = torch.bmm(p, p.transpose(1, 2))
    # dist[i, j] = |p_j|² + |p_i|² − 2⟨p_j, p_i⟩, in exactly the order of operations of
    # the row-by-row formula, so the picks (and their ties) do not change.
    dist = (sq[:, None, :] + sq[:, :, None] - 2.0 * gram.transpose(1, 2)).clamp_min_(0.0)
    # A chosen point's own distance is −1 and excluded points start at −2, so neither is
    # picked while any eligible point (distance ≥ 0) remains.
    dist.diagonal(dim1=1, dim2=2).fill_(-1.0)
    min_dist = torch.full((b, 1, n), float("inf"), dtype=torch.float64, device=p.device)
    if exclude is not None:
        min_dist.masked_fill_(exclude.unsqueeze(1), -2.0)
    cur = torch.full((b, 1, 1), start_idx, dtype=torch.long, device=p.device)
    picks = [cur]
    for _ in range(num_samples - 1):
        torch.minimum(min_dist, dist.gather(1, cur.expand(b, 1, n)), out=min_dist)
        cur = min_dist.argmax(dim=2, keepdim=True)
        picks.append(cur)
    return torch.cat(picks, dim=1).view(b, num_samples)
