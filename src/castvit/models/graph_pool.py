"""Graph pooling (SPEC §2.5) and block fusion (SPEC §2.6).

Padding: ``valid`` is a ``B×N`` bool mask of tokens that stand for a real
superpixel. With ``mask_padded=True`` padded tokens are kept out of attention keys,
of the token mean, of farthest point sampling and of the cluster averages, so an
image's result does not depend on the other images in its batch. With
``mask_padded=False`` the authors' numerics are reproduced (padded tokens take part
everywhere except sampling).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from castvit.models.fps import farthest_point_sampling
from castvit.models.layers import Attention, key_padding_to_attn_mask


def masked_token_mean(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """``B×N×C`` → ``B×1×C`` mean over the valid tokens (all tokens if ``valid`` is None)."""
    if valid is None:
        return x.mean(dim=1, keepdim=True)
    w = valid.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)


class CentroidBlock(nn.Module):
    """Attention without MLP, then re-centring: ``x + attn(norm(x)) − mean(x) + bias``."""

    def __init__(self, dim: int, num_heads: int = 12, qkv_bias: bool = True, norm_eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.bias = nn.Parameter(torch.zeros(dim).normal_(0, 1e-2))

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm(x), key_padding_to_attn_mask(valid))
        return x - masked_token_mean(x, valid) + self.bias


class GraphPool(nn.Module):
    """Group ``N`` tokens into ``num_clusters`` by farthest-point-sampled centroids and
    soft cosine assignments.

    Forward takes ``cls`` ``B×1×D``, ``tokens`` ``B×N×D`` and ``valid`` ``B×N`` bool (or
    None when every token is valid). Returns ``(cls, logits B×N×K, pooled B×K×D,
    sampled_inds B×K)``.
    """

    def __init__(self, dim: int, num_clusters: int, num_heads: int = 12, dropout: float = 0.1):
        super().__init__()
        self.num_clusters = num_clusters
        self.centroid_fc = CentroidBlock(dim, num_heads=num_heads)
        self.fc1 = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * 4), nn.GELU(), nn.Dropout(dropout))
        self.fc2 = nn.Sequential(nn.LayerNorm(dim * 4), nn.Linear(dim * 4, dim))

    def sample_centroids(self, tokens: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Indices ``B×K`` into ``tokens`` chosen by farthest point sampling started at the
        mean token (padded tokens are replaced by the mean, so they are never farthest)."""
        mean = masked_token_mean(tokens, valid)
        filled = tokens if valid is None else torch.where(valid.unsqueeze(-1), tokens, mean)
        points = torch.cat([mean, filled], dim=1).detach()
        exclude = None
        if valid is not None:
            exclude = F.pad(~valid, (1, 0), value=False)
        inds = farthest_point_sampling(points, self.num_clusters + 1, 0, exclude=exclude)
        return inds[:, 1:] - 1

    def forward(self, cls: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor | None = None,
                mask_padded: bool = True):
        b, n, d = tokens.shape
        if n < self.num_clusters:
            raise ValueError(f"graph pooling to {self.num_clusters} clusters needs at least that many tokens, got {n}")
        inds = self.sample_centroids(tokens, valid)
        attn_valid = valid if mask_padded else None

        node = self.centroid_fc(tokens, attn_valid)
        gather_idx = inds.unsqueeze(-1).expand(-1, -1, d)
        cent = node.gather(1, gather_idx)
        logits = 5.0 * torch.bmm(F.normalize(node, dim=-1), F.normalize(cent, dim=-1).transpose(1, 2))
        assign = logits.softmax(dim=-1)
        if attn_valid is not None:
            assign_w = assign * attn_valid.unsqueeze(-1).to(assign.dtype)
        else:
            assign_w = assign

        f = self.fc1(torch.cat([cls, tokens], dim=1))
        f_cls, f_tok = f[:, :1], f[:, 1:]
        pooled = torch.bmm(assign_w.transpose(1, 2), f_tok) / assign_w.sum(1).unsqueeze(-1)
        g = self.fc2(torch.cat([f_cls, pooled], dim=1))
        new_tokens = g[:, 1:] + tokens.gather(1, gather_idx)
        new_cls = g[:, :1] + cls
        return new_cls, logits, new_tokens, inds


class Pooling(nn.Module):
    """Holds a :class:`GraphPool` as ``pool_block`` (the published state-dict prefix)."""

    def __init__(self, pool_block: GraphPool):
        super().__init__()
        self.pool_block = pool_block

    def forward(self, *args, **kwargs):
        return self.pool_block(*args, **kwargs)


def compose_assignments(logits: list[torch.Tensor]) -> list[torch.Tensor]:
    """Hard hierarchy from pooling logits (SPEC §5).

    ``logits[s]`` is ``B×N_s×K_s`` (rows: level-s tokens, cols: level-(s+1) clusters).
    Returns, for every level s+1, the ``B×N_1`` segment of each level-1 token:
    ``lab_1 = argmax(logits[0])``, ``lab_{s+1} = argmax(logits[s])[lab_s]``.
    """
    labels = [logits[0].argmax(-1)]
    for lg in logits[1:]:
        labels.append(lg.argmax(-1).gather(1, labels[-1]))
    return labels


class TokenBatchNorm(nn.Module):
    """BatchNorm1d over the channel dim of ``B×L×C`` tokens (attribute ``norm``, as in
    the published checkpoints). With a ``valid`` mask, statistics and outputs use the
    valid tokens only (padded rows come out zero), computed with masked sums so that
    shapes stay static: the same result as ``norm(x[valid])``, running statistics
    included, without a data-dependent shape."""

    def __init__(self, num_features: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(num_features)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        bn = self.norm
        if valid is None:
            return bn(x.transpose(1, 2)).transpose(1, 2)
        w = valid.unsqueeze(-1).float()
        xf = x.float()
        if bn.training or bn.running_mean is None:
            count = w.sum()
            mean = (xf * w).sum((0, 1)) / count
            var = ((xf - mean).square() * w).sum((0, 1)) / count
            if bn.training and bn.running_mean is not None:
                with torch.no_grad():
                    bn.num_batches_tracked.add_(1)
                    momentum = bn.momentum if bn.momentum is not None else 1.0 / bn.num_batches_tracked.float()
                    unbiased = var * count / (count - 1).clamp_min(1)
                    bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
                    bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), momentum)
        else:
            mean, var = bn.running_mean.float(), bn.running_var.float()
        y = (xf - mean) * (var + bn.eps).rsqrt()
        if bn.affine:
            y = y * bn.weight.float() + bn.bias.float()
        return (y * w).to(x.dtype)


class BlockFusion(nn.Module):
    """Unpool the stage-2/3/4 block outputs to the level-1 tokens through the hard
    hierarchy, concatenate with stage 1 (``B×N1×4D``) and project back to ``D``."""

    def __init__(self, dim: int, dropout: float = 0.2):
        super().__init__()
        self.proj_blocks = nn.Sequential(TokenBatchNorm(dim * 4), nn.Dropout(dropout), nn.Linear(dim * 4, dim))

    def forward(self, blocks: list[torch.Tensor], cls_tokens: list[torch.Tensor],
                logits: list[torch.Tensor], valid: torch.Tensor | None = None):
        """``blocks[s]`` ``B×N_s×D``; ``cls_tokens[s]`` ``B×1×D``; ``logits`` the first three
        pooling logits; ``valid`` ``B×N1`` or None. Returns ``(tokens B×N1×D, cls B×1×D)``."""
        labels = compose_assignments(logits)
        d = blocks[0].shape[-1]
        ups = [blocks[0]] + [blk.gather(1, lab.unsqueeze(-1).expand(-1, -1, d))
                             for blk, lab in zip(blocks[1:], labels)]
        x = torch.cat([torch.cat(cls_tokens, dim=-1), torch.cat(ups, dim=-1)], dim=1)
        bn, drop, fc = self.proj_blocks
        row_valid = None if valid is None else F.pad(valid, (1, 0), value=True)
        x = fc(drop(bn(x, row_valid)))
        return x[:, 1:], x[:, :1]
