"""ViT baselines: a patch-token ViT with a conv stem (MoCo-v3 style) and a ViT whose
tokens are superpixel means (CAST's tokens, no pooling)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from castvit.models.cast import PATCH, _pair, check_inputs, superpixel_tokens
from castvit.models.layers import (
    Block, ConvStem, init_moco_linear_, key_padding_to_attn_mask, run_blocks, sincos_pos_embed,
)


class _ViTBase(nn.Module):
    def __init__(self, *, img_size, patch_size, embed_dim, depth, num_heads, num_classes, mlp_ratio,
                 qkv_bias, drop_rate, drop_path_rate):
        super().__init__()
        self.img_size = _pair(img_size)
        self.patch_size = patch_size
        if self.img_size[0] % patch_size or self.img_size[1] % patch_size:
            raise ValueError(f"img_size {self.img_size} must be a multiple of patch_size {patch_size}")
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.embed_dim = self.num_features = embed_dim
        self.num_classes = num_classes
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.patch_embed = ConvStem(embed_dim, patch_size)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, 0.0, dpr[i])
                                      for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _finish_init(self) -> None:
        init_moco_linear_(self)
        nn.init.normal_(self.cls_token, std=1e-6)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_head(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(feats["out4"])

    def forward(self, images: torch.Tensor, superpixels: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(images, superpixels))


class ViT(_ViTBase):
    """Patch-token ViT: conv stem (patch 8 or 16), fixed sin-cos PE with a zero cls slot
    inside ``pos_embed`` (``1×(1+N)×D``), blocks, norm, head. ``superpixels`` is
    accepted and ignored so every model shares one call signature."""

    def __init__(self, *, img_size: int | Sequence[int] = 224, patch_size: int = 16, embed_dim: int = 384,
                 depth: int = 12, num_heads: int = 12, num_classes: int = 1000, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_rate: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                         num_heads=num_heads, num_classes=num_classes, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                         drop_rate=drop_rate, drop_path_rate=drop_path_rate)
        pe = torch.cat([torch.zeros(1, embed_dim), sincos_pos_embed(*self.grid_size, embed_dim)])
        self.pos_embed = nn.Parameter(pe[None], requires_grad=False)
        self._finish_init()

    def forward_features(self, images: torch.Tensor, superpixels: torch.Tensor | None = None):
        """Returns ``{"out4": B×D normed cls, "tokens": B×N×D normed patch tokens}``."""
        b, c, h, w = images.shape
        if c != 3 or h % self.patch_size or w % self.patch_size:
            raise ValueError(f"images must be B×3×H×W with H, W multiples of {self.patch_size}, "
                             f"got {tuple(images.shape)}")
        x = self.patch_embed(images)
        gh, gw = x.shape[1:3]
        pe = self.pos_embed[0, 1:]
        if (gh, gw) != self.grid_size:
            pe = sincos_pos_embed(gh, gw, self.embed_dim).to(x)
        x = x.reshape(b, gh * gw, -1) + pe
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1), x], dim=1)
        x = self.norm(run_blocks(self.blocks, self.pos_drop(x)))
        return {"out4": x[:, 0], "tokens": x[:, 1:]}


class SuperpixelViT(_ViTBase):
    """ViT over superpixel tokens: CAST's tokenisation (patch-8 conv stem, per-superpixel
    mean of features and sin-cos PE), plain blocks, no pooling."""

    def __init__(self, *, img_size: int | Sequence[int] = 224, embed_dim: int = 384, depth: int = 11,
                 num_heads: int = 12, num_classes: int = 1000, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, mask_padded_tokens: bool = True,
                 max_tokens: int | None = None):
        super().__init__(img_size=img_size, patch_size=PATCH, embed_dim=embed_dim, depth=depth,
                         num_heads=num_heads, num_classes=num_classes, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                         drop_rate=drop_rate, drop_path_rate=drop_path_rate)
        self.mask_padded_tokens = mask_padded_tokens
        self.max_tokens = max_tokens  # static-shape mode: a fixed token count, always masked
        if max_tokens is not None and not mask_padded_tokens:
            raise ValueError("max_tokens needs mask_padded_tokens=True")
        self.pos_embed = nn.Parameter(sincos_pos_embed(*self.grid_size, embed_dim)[None], requires_grad=False)
        self.pe_token = nn.Parameter(torch.zeros(1, 1, embed_dim), requires_grad=False)
        self._finish_init()

    def forward_features(self, images: torch.Tensor, superpixels: torch.Tensor):
        """Returns ``{"out4": B×D, "tokens": B×N×D, "padding_mask": B×N}``."""
        static = self.max_tokens is not None
        check_inputs(images, superpixels, None if static else 1, max_tokens=self.max_tokens)
        feat = self.patch_embed.forward_unprojected(images)
        b, gh, gw, d = feat.shape
        labels = superpixels[:, ::PATCH, ::PATCH][:, :gh, :gw].reshape(b, -1)
        pe = self.pos_embed[0] if (gh, gw) == self.grid_size else sincos_pos_embed(gh, gw, d).to(self.pos_embed)
        x, valid = superpixel_tokens(self.patch_embed, feat.reshape(b, -1, d), pe, labels, self.max_tokens)
        x = torch.cat([(self.cls_token + self.pe_token).expand(b, -1, -1), x], dim=1)
        mask = None
        if self.mask_padded_tokens and (static or not bool(valid.all())):
            mask = key_padding_to_attn_mask(F.pad(valid, (1, 0), value=True))
        x = self.norm(run_blocks(self.blocks, self.pos_drop(x), mask))
        return {"out4": x[:, 0], "tokens": x[:, 1:], "padding_mask": ~valid}
