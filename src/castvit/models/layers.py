"""Transformer building blocks (timm naming, so the published state dicts load),
the convolutional stems and the positional embeddings."""

from __future__ import annotations

import functools
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


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same arguments and behaviour) whose CPU mask comes from
    ``rand_like``: the ``bernoulli_`` behind ``F.dropout`` costs about 1.6× as much on
    CPU, and the graph pooling's 4D-wide dropout made it 2.4 % of a cast_small train
    step. Other devices keep the fused kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or self.p >= 1.0 or self.inplace:
            return super().forward(x)
        return x * (torch.rand_like(x) >= self.p) * (1.0 / (1.0 - self.p))


#: Route no-grad fp32 CPU linears to oneDNN (see :func:`linear`). Set to False to use
#: ``F.linear`` everywhere, e.g. under ``FlopCounterMode``, which does not count oneDNN ops.
ONEDNN_LINEAR = True


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           gelu: bool = False) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, followed by exact GELU when ``gelu``.

    For fp32 CPU inference (no autograd, no autocast) it runs oneDNN's linear kernel,
    the one ``torch.compile`` emits for CPU linears, with the GELU fused in: on AVX-512
    CPUs it beats the MKL sgemm behind ``F.linear`` by 6–11 % per matmul (cast_small
    forward: −3.4 %). Everything else, and any torch without that kernel, takes
    ``F.linear``. Results agree to float32 rounding.
    """
    if (ONEDNN_LINEAR and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not _cpu_autocast_enabled() and _onednn_linear_works()):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu" if gelu else "none", [],
                                                  "none" if gelu else "")
    y = F.linear(x, weight, bias)
    return F.gelu(y) if gelu else y


def _cpu_autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


@functools.cache
def _onednn_linear_works() -> bool:
    """The private oneDNN op exists in this torch build and matches ``F.linear``."""
    try:
        op = torch.ops.mkldnn._linear_pointwise
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*shape, generator=gen) for shape in ((2, 3, 16), (8, 16), (8,)))
        with torch.no_grad():
            ok = torch.allclose(op(x, w, b, "none", [], ""), F.linear(x, w, b), atol=1e-5)
            ok = ok and torch.allclose(op(x, w, b, "gelu", [], "none"), F.gelu(F.linear(x, w, b)), atol=1e-5)
        return bool(ok)
    except (AttributeError, RuntimeError, TypeError):
        return False


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) computed by :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` with exact (erf) GELU."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim)
        self.fc2 = Linear(hidden_dim, dim)
        self.drop = Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = linear(x, self.fc1.weight, self.fc1.bias, gelu=True)
        return self.drop(self.fc2(self.drop(x)))


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
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = Linear(dim, dim)
        self.proj_drop = Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        dropout_p = self.attn_drop if self.training else 0.0
        if q.dtype == torch.bfloat16 and q.device.type == "cpu" and dropout_p == 0.0:
            x = bf16_cpu_attention(q, k, v, attn_mask)
        else:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


def bf16_cpu_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
                       chunk_bytes: int = 1 << 20) -> torch.Tensor:
    """``softmax(q kᵀ / √d) v`` for ``B×H×L×d`` bfloat16 inputs on CPU (``attn_mask``:
    ``B×1×1×L`` bool, True = key takes part).

    Same result as ``F.scaled_dot_product_attention`` up to bf16 rounding, in 0.73–0.8 of
    the time of its CPU flash kernel, which gains nothing from bf16 at head dim 32: two
    oneDNN bf16 batched matmuls and a softmax, over chunks of heads whose L×L scores fit
    in ``chunk_bytes`` (about one core's L2 cache; unchunked scores lose to flash
    attention once they spill out of cache, e.g. ViT-S/8's 785 tokens).
    """
    b, h, n, d = q.shape
    q, k, v = (t.reshape(b * h, n, d) for t in (q, k, v))
    bias = None
    if attn_mask is not None:  # additive −inf bias, broadcast over the query rows by baddbmm
        bias = q.new_zeros(b, h, 1, n).masked_fill_(~attn_mask, float("-inf")).view(b * h, 1, n)
    step = max(1, chunk_bytes // (n * n * q.element_size()))
    outs = []
    for i in range(0, b * h, step):
        j = min(i + step, b * h)
        if bias is None:
            scores = torch.baddbmm(q.new_empty(j - i, n, n), q[i:j], k[i:j].transpose(1, 2), beta=0.0,
                                   alpha=d ** -0.5)
        else:
            scores = torch.baddbmm(bias[i:j], q[i:j], k[i:j].transpose(1, 2), alpha=d ** -0.5)
        outs.append(torch.bmm(scores.softmax(dim=-1), v[i:j]))
    return (outs[0] if len(outs) == 1 else torch.cat(outs)).view(b, h, n, d)


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


def conv_bn_relu(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``relu(bn(conv(x)))``; in eval mode the BatchNorm is folded into the convolution
    (one pass over the activations instead of three, same result up to rounding)."""
    if bn.training or bn.running_mean is None:
        return F.relu(bn(conv(x)), inplace=True)
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return F.relu(F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups), inplace=True)


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
        """``B×3×H×W`` → ``B×(H/p)×(W/p)×D`` features before the final 1×1 conv."""
        # Channels-last activations: oneDNN's fastest conv layout on CPU, and the
        # B×h×w×D output is then a free view instead of a copy.
        x = x.contiguous(memory_format=torch.channels_last)
        for i in range(0, 12, 3):
            x = conv_bn_relu(self.proj[i], self.proj[i + 1], x)
        return x.permute(0, 2, 3, 1)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The final 1×1 conv as a linear map of the last dim: ``…×D`` → ``…×D``."""
        conv = self.proj[12]
        return linear(x, conv.weight.flatten(1), conv.bias)

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
