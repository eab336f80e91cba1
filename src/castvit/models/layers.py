"""Transformer building blocks (timm naming, so the published state dicts load),
the convolutional stems and the positional embeddings."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` with exact (erf) GELU."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def key_padding_to_attn_mask(key_valid: torch.Tensor | None) -> torch.Tensor | None:
    """``B×L`` bool (True = token takes part) → ``B×1×1×L`` mask for SDPA."""
    if key_valid is None:
        return None
    return key_valid[:, None, None, :]


class Attention(nn.Module):
    """Multi-head self-attention with fused ``qkv`` and an optional key mask.

    ``attn_mask`` is ``B×1×1×L`` bool where True marks keys that take part; it is
    how padded superpixel tokens are kept from influencing valid ones.
    """

    def __init__(self, dim: int, num_heads: int = 12, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = self.attend(q, k, v, attn_mask)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               attn_mask: torch.Tensor | None) -> torch.Tensor:
        """``softmax(q kᵀ / √d) v`` over ``B×H×L×d`` heads."""
        dropout_p = self.attn_drop if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)


class Block(nn.Module):
    """Pre-norm ViT block: ``x += attn(norm1(x)); x += mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 norm_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), attn_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def run_blocks(blocks, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    for blk in blocks:
        x = blk(x, attn_mask)
    return x


class ConvStem(nn.Module):
    """Convolutional stem (Xiao et al. 2021): stride-2 3×3 convs with BN/ReLU, then a
    1×1 projection. ``patch_size`` 8 uses three stride-2 convs and a stride-1 one
    (CAST); 16 uses four stride-2 convs (MoCo-v3's ViT). Children are indexed as in
    the published checkpoints (``proj.0`` … ``proj.12``).

    Input ``B×3×H×W``; output channels-last ``B×(H/p)×(W/p)×D``. The final 1×1 conv is
    available separately as :meth:`project` (a linear map of the channels), so callers
    that average features per superpixel can average first and project the averages.
    """

    def __init__(self, embed_dim: int, patch_size: int = 8):
        super().__init__()
        if patch_size not in (8, 16):
            raise ValueError(f"ConvStem supports patch_size 8 or 16, got {patch_size}")
        if embed_dim % 8:
            raise ValueError(f"ConvStem needs embed_dim divisible by 8, got {embed_dim}")
        self.patch_size = patch_size
        layers: list[nn.Module] = []
        cin, cout = 3, embed_dim // 8
        for i in range(4):
            stride = 1 if (patch_size == 8 and i == 3) else 2
            layers += [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin, cout = cout, cout * 2
        layers.append(nn.Conv2d(cin, embed_dim, 1))
        self.proj = nn.Sequential(*layers)

    def forward_unprojected(self, x: torch.Tensor) -> torch.Tensor:
        """``B×3×H×W`` → ``B×(H/p)×(W/p)×D`` features before the final 1×1 conv. Images
        are cast to the stem's dtype, so fp32 images feed a ``.half()`` model."""
        # Channels-last activations: oneDNN's fastest conv layout on CPU, and the
        # B×h×w×D output is then a free view instead of a copy.
        x = x.to(self.proj[0].weight.dtype).contiguous(memory_format=torch.channels_last)
        for i in range(12):  # conv, BN, ReLU ×4; proj[12] is the 1×1 projection
            x = self.proj[i](x)
        return x.permute(0, 2, 3, 1)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The final 1×1 conv as a linear map of the last dim: ``…×D`` → ``…×D``."""
        conv = self.proj[12]
        return F.linear(x, conv.weight.flatten(1), conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.forward_unprojected(x))


def sincos_pos_embed(grid_h: int, grid_w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos table, ``(grid_h·grid_w)×dim``, row-major over the grid.

    For cell (r, c): ``[sin(r·ω), cos(r·ω), sin(c·ω), cos(c·ω)]`` with
    ``ω_d = temperature^(−d/(dim/4))`` (SPEC §2.2).
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs embed_dim divisible by 4, got {dim}")
    pos_dim = dim // 4
    omega = 1.0 / temperature ** (torch.arange(pos_dim, dtype=torch.float32) / pos_dim)
    rows, cols = torch.meshgrid(torch.arange(grid_h, dtype=torch.float32),
                                torch.arange(grid_w, dtype=torch.float32), indexing="ij")
    out_r = rows.reshape(-1, 1) * omega
    out_c = cols.reshape(-1, 1) * omega
    return torch.cat([out_r.sin(), out_r.cos(), out_c.sin(), out_c.cos()], dim=1)


def resize_pos_grid(grid: torch.Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> torch.Tensor:
    """Bicubically resize an ``(H·W)×D`` (or ``1×(H·W)×D``) grid table to ``dst_hw``
    (align_corners False). Returns ``(h·w)×D``."""
    d = grid.shape[-1]
    g = grid.reshape(1, src_hw[0], src_hw[1], d).permute(0, 3, 1, 2)
    if tuple(src_hw) != tuple(dst_hw):
        g = F.interpolate(g, size=tuple(dst_hw), mode="bicubic", align_corners=False)
    return g.permute(0, 2, 3, 1).reshape(-1, d)


def init_moco_linear_(module: nn.Module) -> None:
    """MoCo-v3 initialisation: xavier-uniform Linear weights, with q, k, v treated as
    three separate matrices; zero biases."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            if "qkv" in name:
                bound = math.sqrt(6.0 / float(m.weight.shape[0] // 3 + m.weight.shape[1]))
                nn.init.uniform_(m.weight, -bound, bound)
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def init_deit_linear_(module: nn.Module) -> None:
    """DeiT/timm initialisation: trunc-normal(0.02) Linear weights, zero biases,
    unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
