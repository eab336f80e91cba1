"""ToMe on superpixel tokens, with merge tracing: the token-merging baseline of CAST.

Token Merging (Bolya et al., ICLR 2023) shortens a ViT by merging similar tokens
inside every block. The CAST authors' ablation applies it to the same superpixel
tokens as CAST; here it also *traces* the merges, so it yields a nested segmentation
hierarchy that the metrics of :mod:`castvit.eval` score like CAST's.

The model is ``vit_suppix_*`` (:class:`castvit.models.vit.SuperpixelViT`: the same
tokenisation, blocks and parameter names, so its weights load) with, in every block
after attention and before the MLP, **bipartite soft matching**:

1. the image's tokens (not the cls token, which is never merged) are split
   alternately, in order, into sets A and B;
2. each A token finds its most similar B token by the cosine similarity of the
   attention keys (averaged over heads);
3. the ``r`` A tokens with the highest similarity are merged into their B tokens by a
   size-weighted mean; the others are kept, in order.

Every token carries a *size*, the number of superpixel tokens merged into it, and
attention is *proportional*: ``log size`` is added to the attention logits of each
key, so a merged token weighs as much as its members did.

**Padding.** A batch holds one token per id up to the largest id in the batch, so an
image has padded tokens for the ids it lacks (:func:`castvit.models.cast.superpixel_tokens`).
They get size 0 (``log 0 = −∞`` keeps them out of attention), take no part in the
matching, and ``r`` is worked out per image from its own tokens; the kept tokens move
to the front in order after every merge, and the batch is cut to its longest image.
An image's merges, and so its hierarchy, therefore do not depend on the other images
in its batch.

**Schedule.** ``depth`` gives the blocks of four stages and ``num_clusters`` the token
count wanted at the end of each (CAST's 64/32/16/8 for ``tome_small``/``tome_base``:
stages of 3, 3, 3, 2 of the 11 blocks). Each image's ``r`` per block comes from its
number of superpixel tokens, spread evenly over the stage's blocks
(:func:`merge_schedule`). A fixed ``r`` (an int, or one per block) may be given
instead, as in the ToMe paper; it is capped at half an image's tokens in each block.

**Tracing.** At each stage end, the merges since the previous one map every token to
the token it is now part of; ``forward_features`` returns these maps as one-hot
``logit1..logit4`` (rows: tokens before, columns: tokens after), the format of CAST's
pooling logits, so :meth:`castvit.Hierarchy.from_outputs` builds the strictly nested
hierarchy. ``sizeK`` holds the token sizes at stage end K.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from castvit.models.cast import PATCH, check_inputs, superpixel_tokens
from castvit.models.layers import Block, key_padding_to_attn_mask, sincos_pos_embed
from castvit.models.vit import SuperpixelViT


def merge_schedule(num_tokens: int, stage_depths: Sequence[int], num_clusters: Sequence[int]) -> list[int]:
    """Tokens to merge in each block so stage ``k`` ends with ``num_clusters[k]`` tokens.

    The merges of a stage are spread evenly over its blocks, except where bipartite
    matching (which at most halves the tokens of a block) needs more of them early.
    A stage that starts with no more tokens than its target merges nothing; one that
    cannot reach its target (too many tokens for its blocks: ``num_tokens`` above
    ``target · 2^blocks``) halves the tokens in each of its blocks and ends above the
    target, and the next stages go on from there.

    Args:
        num_tokens: superpixel tokens entering the first block (cls not counted).
        stage_depths: blocks per stage.
        num_clusters: tokens wanted at the end of each stage, non-increasing.

    Returns:
        ``r`` per block (``sum(stage_depths)`` entries).
    """
    schedule, tokens = [], int(num_tokens)
    for depth, target in zip(stage_depths, num_clusters):
        for left in range(depth, 0, -1):
            need = max(tokens - target, 0)
            # enough now that halving in each of the remaining blocks still reaches the target
            r = max(math.ceil(need / left), tokens - target * 2 ** (left - 1))
            r = min(r, tokens // 2, need)
            schedule.append(r)
            tokens -= r
    return schedule


def bipartite_merge(x: torch.Tensor, metric: torch.Tensor, size: torch.Tensor, r: torch.Tensor | int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One round of bipartite soft matching with size-weighted merging, per image.

    Args:
        x: ``B×T×D`` tokens (no cls).
        metric: ``B×T×d`` vectors compared by cosine similarity (the keys).
        size: ``B×T`` float token sizes; size 0 marks a token that is not there
            (padding), which is skipped.
        r: tokens to merge away, per image (``B`` ints) or for all; at most half an
            image's tokens.

    Returns:
        ``(x B×T'×D, size B×T', new_index B×T)``: each image's kept tokens in their
        input order (``T'`` = the most any image kept; shorter images end in size-0
        tokens), and ``new_index[b, t]``, the output token that input token ``t`` is
        part of (0 for tokens that were not there).
    """
    bsz, t, d = x.shape
    alive = size > 0
    count = alive.sum(1)
    r = torch.as_tensor(r, device=x.device).expand(bsz)
    if bool((r < 0).any()) or bool((r > count // 2).any()):
        raise ValueError(f"r must be in 0..half the tokens of each image ({(count // 2).tolist()}), got {r.tolist()}")
    rank = alive.long().cumsum(1) - 1
    is_a = alive & (rank % 2 == 0)
    is_b = alive & (rank % 2 == 1)
    unit = F.normalize(metric.float(), dim=-1)
    scores = (unit @ unit.transpose(1, 2)).masked_fill(~is_b[:, None, :], -math.inf)
    best, dst = scores.max(-1)
    best = best.masked_fill(~is_a, -math.inf)
    order = torch.sort(best, dim=-1, descending=True, stable=True).indices
    chosen = torch.zeros_like(alive).scatter_(1, order, torch.arange(t, device=x.device)[None] < r[:, None])

    weight = torch.where(chosen, size, torch.zeros_like(size))
    target = torch.where(chosen, dst, torch.arange(t, device=x.device).expand(bsz, -1))
    total = (x * size[..., None].to(x.dtype)).scatter_add(1, target[..., None].expand(-1, -1, d),
                                                           x * weight[..., None].to(x.dtype))
    new_size = size.scatter_add(1, target, weight).masked_fill(chosen, 0.0)
    received = torch.zeros_like(size).scatter_add_(1, target, chosen.to(size.dtype)) > 0
    # only tokens that received a merge change (an untouched token stays bit-exact)
    x = torch.where(received[..., None], total / new_size.clamp_min(1e-6)[..., None].to(x.dtype), x)

    # kept tokens to the front, in order; cut the batch to its longest image
    keep = new_size > 0
    front = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices
    length = max(int(keep.sum(1).max()), 1)
    front = front[:, :length]
    position = torch.zeros_like(target).scatter_(1, front, torch.arange(length, device=x.device).expand(bsz, -1))
    new_index = position.gather(1, target).masked_fill(~alive, 0)
    return x.gather(1, front[..., None].expand(-1, -1, d)), new_size.gather(1, front), new_index


class ToMeViT(SuperpixelViT):
    """``vit_suppix`` with token merging in every block and merge tracing (module
    docstring). ``model(images, superpixels)`` gives the head's logits; see
    :meth:`forward_features` for the traced hierarchy.

    Args (besides :class:`~castvit.models.vit.SuperpixelViT`'s):
        depth: blocks per stage, four entries as for CAST (the hierarchy's levels are
            read at the stage ends); or the total number of blocks, cut into four
            stages as evenly as possible, earlier stages first (11 → 3, 3, 3, 2).
        num_clusters: tokens at the end of each stage (the hierarchy's segments).
        r: None (schedule from ``num_clusters``), or tokens merged per block: one int
            for every block, or ``depth`` ints. ``r = 0`` is ``vit_suppix`` exactly.
    """

    def __init__(self, *, depth: int | Sequence[int] = (3, 3, 3, 2), num_clusters: Sequence[int] = (64, 32, 16, 8),
                 r: int | Sequence[int] | None = None, **kwargs):
        if isinstance(depth, int):
            if depth < 4:
                raise ValueError(f"ToMe needs at least 4 blocks (one per level), got depth={depth}")
            stage_depths = [depth // 4 + (k < depth % 4) for k in range(4)]
        else:
            stage_depths = [int(v) for v in depth]
            if len(stage_depths) != 4 or min(stage_depths) < 1:
                raise ValueError(f"depth must be an int >= 4 or 4 positive blocks-per-stage counts, got {depth}")
            depth = sum(stage_depths)
        super().__init__(depth=depth, **kwargs)
        num_clusters = [int(v) for v in num_clusters]
        if len(num_clusters) != 4:
            raise ValueError(f"num_clusters needs 4 entries (one per level), got {num_clusters}")
        if min(num_clusters) < 1 or any(a < b for a, b in zip(num_clusters, num_clusters[1:])):
            raise ValueError(f"num_clusters must be positive and not increase, got {num_clusters}")
        if r is not None:
            r = [int(r)] * depth if isinstance(r, int) else [int(v) for v in r]
            if len(r) != depth or min(r) < 0:
                raise ValueError(f"r must be an int >= 0 or {depth} ints >= 0 (one per block), got {r}")
        self.stage_depths, self.num_clusters, self.r = stage_depths, num_clusters, r

    def block_schedule(self, num_tokens: int) -> list[int]:
        """``r`` of each block for an image of ``num_tokens`` superpixel tokens (a fixed
        ``r`` is capped at half the tokens at run time)."""
        if self.r is not None:
            return list(self.r)
        return merge_schedule(num_tokens, self.stage_depths, self.num_clusters)

    def forward_features(self, images: torch.Tensor, superpixels: torch.Tensor, *,
                         trace_blocks: bool = False) -> dict[str, torch.Tensor]:
        """Run the encoder and trace the merges.

        Args:
            images: ``B×3×H×W`` normalised float images, H, W multiples of 8.
            superpixels: ``B×H×W`` int64 labels.
            trace_blocks: also return ``size_block{i}``, the ``B×T_i`` token sizes
                after block i (1-based).

        Returns:
            ``out4`` ``B×D`` (normed cls), ``tokens`` ``B×T×D`` (normed, the tokens
            left), ``padding_mask`` ``B×N_1`` (True = padded superpixel token), and for
            K = 1..4: ``logitK`` ``B×T_{K−1}×T_K`` one-hot merge maps (``T_0 = N_1``
            superpixel tokens) and ``sizeK`` ``B×T_K`` token sizes at stage end K.
        """
        check_inputs(images, superpixels, 1)
        feat = self.patch_embed.forward_unprojected(images)
        b, gh, gw, d = feat.shape
        labels = superpixels[:, ::PATCH, ::PATCH][:, :gh, :gw].reshape(b, -1)
        pe = self.pos_embed[0] if (gh, gw) == self.grid_size else sincos_pos_embed(gh, gw, d).to(self.pos_embed)
        tokens, valid = superpixel_tokens(self.patch_embed, feat.reshape(b, -1, d), pe, labels)
        x = torch.cat([(self.cls_token + self.pe_token).expand(b, -1, -1), tokens], dim=1)
        mask = None
        if self.mask_padded_tokens and not bool(valid.all()):
            mask = key_padding_to_attn_mask(F.pad(valid, (1, 0), value=True))
        x = self.pos_drop(x)

        n1 = tokens.shape[1]
        counts = valid.sum(1).tolist() if self.mask_padded_tokens else [n1] * b
        schedule = torch.tensor([self.block_schedule(n) for n in counts], dtype=torch.long, device=x.device)
        ends = {sum(self.stage_depths[:k + 1]): k + 1 for k in range(4)}
        out: dict[str, torch.Tensor] = {"padding_mask": ~valid}
        size = None  # B×T float once a merge happened; before that, vit_suppix's own path
        since_stage = torch.arange(n1, device=x.device).expand(b, -1)
        for i, blk in enumerate(self.blocks):
            r = schedule[:, i]
            if size is None and not bool(r.any()):
                x = blk(x, mask)
            else:
                if size is None:
                    size = valid.float() if self.mask_padded_tokens else torch.ones_like(valid, dtype=torch.float)
                x, size, new_index = self._merging_block(blk, x, size, r)
                since_stage = new_index.gather(1, since_stage)
            current = size if size is not None else valid.float()
            if trace_blocks:
                out[f"size_block{i + 1}"] = current
            if i + 1 in ends:
                k = ends[i + 1]
                out[f"logit{k}"] = F.one_hot(since_stage, x.shape[1] - 1).to(x.dtype)
                out[f"size{k}"] = current
                since_stage = torch.arange(x.shape[1] - 1, device=x.device).expand(b, -1)
        x = self.norm(x)
        out["out4"], out["tokens"] = x[:, 0], x[:, 1:]
        return out

    def _merging_block(self, blk: Block, x: torch.Tensor, size: torch.Tensor, r: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A block with proportional attention and ``r`` merges between attention and
        MLP. Padded tokens (size 0) get ``log 0 = −∞``: no attention mask is needed.
        Returns ``(cls + tokens, token sizes, new index of each input token)``."""
        attn = blk.attn
        bsz, n, c = x.shape
        qkv = attn.qkv(blk.norm1(x)).reshape(bsz, n, 3, attn.num_heads, c // attn.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        log_size = F.pad(size, (1, 0), value=1.0).log()  # the cls token has size 1; padding -inf
        bias = log_size[:, None, None, :].to(q.dtype)
        dropout_p = attn.attn_drop if attn.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)
        a = attn.proj_drop(attn.proj(a.transpose(1, 2).reshape(bsz, n, c)))
        x = x + blk.drop_path(a)
        r = torch.minimum(r, (size > 0).sum(1) // 2)  # a fixed r is capped per image
        tokens, size, new_index = bipartite_merge(x[:, 1:], k.mean(1)[:, 1:], size, r)
        x = torch.cat([x[:, :1], tokens], dim=1)
        x = x + blk.drop_path(blk.mlp(blk.norm2(x)))
        return x, size, new_index
