"""CAST: superpixel tokens, four ViT stages, graph pooling after each stage.

One class covers every published variant (SPEC §3); the factory functions in
:mod:`castvit.models.registry` fix the sizes. Variants differ in three choices:

* ``convention``: ``"moco"`` (fixed sin-cos PE + frozen zero ``pe_token``) or
  ``"deit"`` (learnable PE with a cls slot);
* ``task``: ``"cls"`` (cls-token classifier, last pooling frozen), ``"seg_pretrain"``
  (block fusion, mean of fused tokens → head) or ``"seg"`` (block fusion, per-token
  output, labels kept at their own resolution);
* sizes: ``embed_dim``, ``depth`` (blocks per stage), ``num_clusters``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from castvit.models.graph_pool import BlockFusion, GraphPool, Pooling
from castvit.models.layers import (
    Block, ConvStem, init_deit_linear_, init_moco_linear_, key_padding_to_attn_mask,
    resize_pos_grid, run_blocks, sincos_pos_embed,
)
from castvit.ops import segment_count, segment_sum

PATCH = 8


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def check_inputs(images: torch.Tensor, superpixels: torch.Tensor, min_superpixels: int | None = None, *,
                 any_label_size: bool = False, max_tokens: int | None = None) -> None:
    """Raise ``ValueError`` with a fix for inputs the model cannot use.

    Args:
        images: ``B×3×H×W`` float, H and W multiples of 8.
        superpixels: ``B×H×W`` integer labels ≥ 0.
        min_superpixels: if given, each image must keep at least this many distinct
            superpixels on the 8-px token grid (the first stage's cluster count).
        any_label_size: accept ``B×h×w`` label maps of any size (the segmentation
            models bring features to the labels' resolution).
        max_tokens: the static-shape mode's token count. Shapes and dtypes are checked as
            usual; the checks of values (finite images, labels in ``[0, max_tokens)``)
            become ``torch._assert_async`` (no host sync: raised on CPU, a device-side
            assert on CUDA), and the caller asserts ``min_superpixels`` on its tokens.
    """
    if not torch.is_tensor(images) or images.ndim != 4:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be a B×3×H×W tensor, got {shape}; add a batch dim with images[None]")
    b, c, h, w = images.shape
    if c != 3:
        raise ValueError(f"images must have 3 (RGB) channels, got {c}; convert grayscale/RGBA images to RGB first")
    if h % PATCH or w % PATCH:
        raise ValueError(f"image height and width must be multiples of {PATCH}, got {h}×{w}; "
                         f"resize or pad to {h + (-h) % PATCH}×{w + (-w) % PATCH}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor (normalised RGB), got {images.dtype}")
    _check_label_shape(images, superpixels, any_label_size)
    if max_tokens is not None:
        torch._assert_async(torch.isfinite(images).all(),
                            "images contain NaN or inf values; check the loading and normalisation")
        torch._assert_async(((superpixels >= 0) & (superpixels < max_tokens)).all(),
                            f"superpixel labels must lie in [0, max_tokens={max_tokens}); relabel them to "
                            f"0..K-1 (castvit.ops.relabel_contiguous) with K <= {max_tokens}, or raise max_tokens")
        return
    # Any NaN or inf makes the sum non-finite; the sum costs a tenth of isfinite().all(),
    # which then only runs to rule out an overflowing sum of finite values.
    if not torch.isfinite(images.sum()) and not torch.isfinite(images).all():
        raise ValueError("images contain NaN or inf values; check the loading and normalisation")
    if superpixels.min() < 0:
        raise ValueError("superpixel labels must be >= 0, found negative ids; relabel them to 0..K-1 "
                         "(castvit.ops.relabel_contiguous)")
    if min_superpixels is not None:
        b = images.shape[0]
        grid = superpixels[:, ::PATCH, ::PATCH]
        kept = (segment_count(grid.reshape(b, -1), int(grid.max()) + 1) > 0).sum(1)
        bad = (kept < min_superpixels).nonzero().flatten().tolist()
        if bad:
            i = bad[0]
            raise ValueError(
                f"image {i} has {int(kept[i])} superpixels on the {PATCH}-px token grid, fewer than the "
                f"{min_superpixels} clusters of the first stage; use at least {min_superpixels} superpixels "
                f"that each cover an {PATCH}×{PATCH} cell's top-left pixel (e.g. more n_segments, or a model "
                f"with fewer num_clusters)")


def _check_label_shape(images: torch.Tensor, superpixels: torch.Tensor, any_label_size: bool) -> None:
    b, _, h, w = images.shape
    if not torch.is_tensor(superpixels) or superpixels.ndim != 3:
        shape = tuple(superpixels.shape) if torch.is_tensor(superpixels) else type(superpixels).__name__
        raise ValueError(f"superpixels must be a B×H×W integer tensor, got {shape}")
    if any_label_size and superpixels.shape[0] != b:
        raise ValueError(f"superpixel maps for {superpixels.shape[0]} images, but {b} images; "
                         "pass one label map per image")
    if not any_label_size and tuple(superpixels.shape) != (b, h, w):
        raise ValueError(f"superpixel map shape {tuple(superpixels.shape)} does not match the images "
                         f"({b}×{h}×{w}); compute superpixels on the same (resized) images")
    if superpixels.is_floating_point() or superpixels.is_complex() or superpixels.dtype == torch.bool:
        raise ValueError(f"superpixel labels must be integers, got dtype {superpixels.dtype}; "
                         "pass label maps as int64 (labels.long())")


def superpixel_tokens(stem: ConvStem, feat: torch.Tensor, pe: torch.Tensor, labels: torch.Tensor,
                      num_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Average stem features and positional embeddings per superpixel (SPEC §2.3).

    Args:
        stem: the conv stem that produced ``feat``; its final 1×1 projection is applied here.
        feat: ``B×L×D`` stem features before that projection
            (:meth:`ConvStem.forward_unprojected`), one row per cell.
        pe: ``L×D`` positional embedding of the same cells.
        labels: ``B×L`` superpixel id of each cell.
        num_tokens: N, a fixed token count (static shapes: no host sync); ids must be
            below it. Default: max id in the batch + 1.

    Returns:
        ``(tokens B×N×D, valid B×N bool)``; token i
        stands for id i, and ids absent from an image give an all-zero invalid token.
    """
    b = feat.shape[0]
    if num_tokens is None:
        num_tokens = int(labels.max()) + 1
    n = num_tokens
    # Sums and counts in float32 whatever the model's dtype: a bf16/fp16 running sum over
    # hundreds of cells loses digits (or overflows), and the means go back to the dtype.
    count = segment_count(labels, n).unsqueeze(-1)
    valid = count.squeeze(-1) > 0
    count = count.clamp_min(1)
    # The projection is affine and a mean is a convex combination, so projecting the N
    # means equals averaging the projected cells, for 4× fewer FLOPs in that layer.
    tokens = stem.project((segment_sum(feat.float(), labels, n) / count).to(feat.dtype))
    tokens = tokens.masked_fill(~valid.unsqueeze(-1), 0.0)
    pe_mean = segment_sum(pe.float().expand(b, -1, -1), labels, n) / count
    # In the PE's dtype: the model's own (a .half() model stays half), and under autocast
    # float32, which keeps the residual stream in float32 as in a timm ViT.
    return tokens + pe_mean.to(pe.dtype), valid


class CAST(nn.Module):
    """Contour-aware superpixel transformer.

    Call ``model(images, superpixels)`` with ``images`` ``B×3×H×W`` (normalised) and
    ``superpixels`` ``B×H×W`` int64 labels; see :meth:`forward_features` for the
    intermediate outputs.
    """

    def __init__(
        self,
        *,
        img_size: int | Sequence[int] = 224,
        embed_dim: int = 384,
        depth: Sequence[int] = (3, 3, 3, 2),
        num_heads: int = 12,
        num_clusters: Sequence[int] = (64, 32, 16, 8),
        num_classes: int = 1000,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        pool_num_heads: int = 12,
        pool_dropout: float = 0.1,
        fusion_dropout: float = 0.2,
        convention: str = "moco",
        task: str = "cls",
        mask_padded_tokens: bool = True,
        max_tokens: int | None = None,
    ):
        super().__init__()
        if convention not in ("moco", "deit"):
            raise ValueError(f"convention must be 'moco' or 'deit', got {convention!r}")
        if task not in ("cls", "seg_pretrain", "seg"):
            raise ValueError(f"task must be 'cls', 'seg_pretrain' or 'seg', got {task!r}")
        depth, num_clusters = list(depth), list(num_clusters)
        if len(depth) != 4 or len(num_clusters) != 4:
            raise ValueError(f"depth and num_clusters need 4 entries (one per stage), got {depth}, {num_clusters}")
        if any(a < b for a, b in zip(num_clusters, num_clusters[1:])):
            raise ValueError(f"num_clusters must not increase from stage to stage, got {num_clusters}")
        self.img_size = _pair(img_size)
        if self.img_size[0] % PATCH or self.img_size[1] % PATCH:
            raise ValueError(f"img_size must be a multiple of {PATCH}, got {self.img_size}")
        self.grid_size = (self.img_size[0] // PATCH, self.img_size[1] // PATCH)
        self.embed_dim = self.num_features = embed_dim
        self.depth, self.num_clusters = depth, num_clusters
        self.num_classes = num_classes
        self.convention, self.task = convention, task
        self.mask_padded_tokens = mask_padded_tokens
        self.max_tokens = max_tokens
        if max_tokens is not None and (not mask_padded_tokens or max_tokens < num_clusters[0]):
            raise ValueError(f"max_tokens={max_tokens} needs mask_padded_tokens=True and at least num_clusters[0]="
                             f"{num_clusters[0]} tokens")
        # MoCo segmentation models keep one Sequential per stage; the others keep one
        # `blocks` Sequential and slice it per stage (as the published weights do).
        self.shared_blocks = task == "cls" or convention == "deit"
        n_grid = self.grid_size[0] * self.grid_size[1]

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if convention == "moco":
            self.pos_embed = nn.Parameter(sincos_pos_embed(*self.grid_size, embed_dim)[None], requires_grad=False)
            self.pe_token = nn.Parameter(torch.zeros(1, 1, embed_dim), requires_grad=False)
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, n_grid + 1, embed_dim))
        self.patch_embed = ConvStem(embed_dim, PATCH)
        self.pos_drop = nn.Dropout(drop_rate)

        dpr = [drop_path_rate * i / max(sum(depth) - 1, 1) for i in range(sum(depth))]
        all_blocks = [Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i])
                      for i in range(sum(depth))]
        bounds = [sum(depth[:i]) for i in range(5)]
        self._stage_bounds = list(zip(bounds[:-1], bounds[1:]))
        if self.shared_blocks:
            self.blocks = nn.Sequential(*all_blocks)
            self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        for k in range(4):
            if not self.shared_blocks:
                a, b = self._stage_bounds[k]
                self.add_module(f"blocks{k + 1}", nn.Sequential(*all_blocks[a:b]))
            pool = Pooling(GraphPool(embed_dim, num_clusters[k], num_heads=pool_num_heads, dropout=pool_dropout))
            self.add_module(f"pool{k + 1}", pool)
        if task == "cls":
            # The last pooling only provides the coarsest level; its output is unused.
            self.pool4.requires_grad_(False)
        else:
            self.block_fusion = BlockFusion(embed_dim, dropout=fusion_dropout)
        self._init_weights()
        self._freeze_unread()

    def _freeze_unread(self) -> None:
        """Freeze the parameters no output reads, which the published layout keeps: the
        DeiT segmentation models' ``norm`` (classifier leftover) and, for ``*_deit_seg``
        (a Segmenter encoder returning features), ``head``. They would never receive a
        gradient, which multi-process DDP with ``find_unused_parameters=False`` refuses."""
        if self.task != "cls" and self.shared_blocks:
            self.norm.requires_grad_(False)
        if self.task == "seg" and self.convention == "deit":
            self.head.requires_grad_(False)

    # ------------------------------------------------------------------ init
    def _init_weights(self) -> None:
        if self.convention == "moco":
            init_moco_linear_(self)
            nn.init.normal_(self.cls_token, std=1e-6)
        else:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.trunc_normal_(self.cls_token, std=0.02)
            vit_part = [self.blocks, self.norm, self.head] if self.shared_blocks else []
            for m in vit_part:
                init_deit_linear_(m)

    # ------------------------------------------------------------ structure
    def stage_blocks(self, k: int) -> nn.Sequential:
        """ViT blocks of stage ``k`` (0-based)."""
        if self.shared_blocks:
            a, b = self._stage_bounds[k]
            return self.blocks[a:b]
        return getattr(self, f"blocks{k + 1}")

    def pools(self) -> list[GraphPool]:
        return [getattr(self, f"pool{k + 1}").pool_block for k in range(4)]

    @property
    def min_superpixels(self) -> int:
        """Fewest distinct superpixels per image the first stage can pool."""
        return self.num_clusters[0]

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._freeze_unread()

    # ------------------------------------------------------- tokenisation
    def _grid_pos_embed(self, grid_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(grid PE ``(h·w)×D`` for ``grid_hw``, cls PE ``1×D``)."""
        if self.convention == "moco":
            table = self.pos_embed[0]
            if tuple(grid_hw) != self.grid_size:
                table = sincos_pos_embed(*grid_hw, self.embed_dim).to(table)
            return table, self.pe_token[0]
        table = resize_pos_grid(self.pos_embed[0, 1:], self.grid_size, grid_hw)
        return table, self.pos_embed[0, :1]

    def tokenize(self, images: torch.Tensor, superpixels: torch.Tensor):
        """Superpixel tokens (SPEC §2.3).

        Returns ``(tokens B×N×D, cls B×1×D, valid B×N bool)`` with N = ``max_tokens``
        when set, else max label in the batch + 1; token i stands for superpixel id i.
        """
        feat = self.patch_embed.forward_unprojected(images)
        b, gh, gw, d = feat.shape
        if self.task == "seg":
            # Labels stay at their own resolution: bring features and PE to it.
            lh, lw = superpixels.shape[-2:]
            labels = superpixels
            feat = F.interpolate(feat.permute(0, 3, 1, 2), size=(lh, lw), mode="bilinear",
                                 align_corners=False).permute(0, 2, 3, 1)
            pe_src = self.pos_embed[0] if self.convention == "moco" else self.pos_embed[0, 1:]
            pe = resize_pos_grid(pe_src, self.grid_size, (lh, lw))
            cls_pe = self.pe_token[0] if self.convention == "moco" else self.pos_embed[0, :1]
        else:
            # PyTorch 'nearest' picks the top-left pixel of each 8×8 cell.
            labels = superpixels[:, ::PATCH, ::PATCH][:, :gh, :gw]
            pe, cls_pe = self._grid_pos_embed((gh, gw))
        tokens, valid = superpixel_tokens(self.patch_embed, feat.reshape(b, -1, d), pe, labels.reshape(b, -1),
                                          self.max_tokens)
        cls = (self.cls_token + cls_pe).expand(b, -1, -1)
        return self.pos_drop(tokens), cls, valid

    # ------------------------------------------------------------- forward
    def forward_features(self, images: torch.Tensor, superpixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the encoder.

        Args:
            images: ``B×3×H×W`` normalised float images, H, W multiples of 8.
            superpixels: ``B×H×W`` int64 labels (ids ≥ 0; ids need not be contiguous);
                segmentation (``*_seg``) models take label maps of any size ``B×h×w``.

        Returns:
            A dict with, for stage K = 1..4: ``logitK`` ``B×N_K×C_K`` pooling logits
            (N_1 = max id + 1; N_K = C_{K−1}), ``centroidK`` ``B×C_K×D`` pooled tokens,
            ``blockK`` ``B×N_K×D`` stage output tokens, ``padding_maskK`` ``B×N_K`` (True
            = padded input token), ``sampled_indsK`` ``B×C_K``; classifiers add
            ``out4`` ``B×D``; segmentation variants add ``features`` (``B×D`` for
            seg_pretrain, ``B×N_1×D`` for MoCo seg, ``B×(1+N_1)×D`` cls+tokens for DeiT
            seg).
        """
        return self._features(images, superpixels, last_pool=True)

    def _features(self, images: torch.Tensor, superpixels: torch.Tensor, *,
                  last_pool: bool) -> dict[str, torch.Tensor]:
        """:meth:`forward_features`; ``last_pool=False`` (classifiers only) skips the
        last graph pooling, whose output the head never reads (no ``*4`` pooling keys)."""
        seg, static = self.task == "seg", self.max_tokens is not None
        check_inputs(images, superpixels, None if (seg or static) else self.min_superpixels, any_label_size=seg,
                     max_tokens=self.max_tokens)
        x, cls, valid = self.tokenize(images, superpixels)
        if static:
            torch._assert_async((valid.sum(1) >= self.min_superpixels).all(),
                                f"an image has fewer superpixels than the {self.min_superpixels} clusters of the "
                                "first stage; use more superpixels")
        elif seg:
            kept = valid.sum(1)
            if (kept < self.min_superpixels).any():
                i = int((kept < self.min_superpixels).nonzero()[0])
                raise ValueError(f"image {i} has {int(kept[i])} superpixels, fewer than the "
                                 f"{self.min_superpixels} clusters of the first stage; use more superpixels")
        padding_mask = ~valid
        # Masks only when a token is padded: an all-True mask would cost time (masked
        # attention kernels, a masked FPS) and change nothing. The static-shape mode
        # always masks: asking whether a token is padded is a host sync.
        any_padded = True if static else not bool(valid.all())
        stage_valid = valid if (self.mask_padded_tokens and any_padded) else None
        out: dict[str, torch.Tensor] = {}
        blocks, cls_after_pool, logits = [], [], []
        for k in range(4):
            attn_mask = None
            if stage_valid is not None:
                attn_mask = key_padding_to_attn_mask(F.pad(stage_valid, (1, 0), value=True))
            h = run_blocks(self.stage_blocks(k), torch.cat([cls, x], dim=1), attn_mask)
            if k == 3 and self.task == "cls":
                out["out4"] = self.norm(h[:, 0])
            cls_k, tokens_k = h[:, :1], h[:, 1:]
            if k == 3 and not last_pool:
                break
            pool_valid = valid if (k == 0 and any_padded) else None
            cls, logit, x, inds = self.pools()[k](cls_k, tokens_k, pool_valid, self.mask_padded_tokens)
            out[f"logit{k + 1}"] = logit
            out[f"centroid{k + 1}"] = x
            out[f"block{k + 1}"] = tokens_k
            out[f"padding_mask{k + 1}"] = padding_mask
            out[f"sampled_inds{k + 1}"] = inds
            blocks.append(tokens_k)
            cls_after_pool.append(cls)
            logits.append(logit)
            padding_mask = torch.zeros(padding_mask.shape[0], self.num_clusters[k], dtype=torch.bool,
                                       device=padding_mask.device)
            stage_valid = None
        if self.task != "cls":
            fuse_valid = valid if (self.mask_padded_tokens and any_padded) else None
            fused, fused_cls = self.block_fusion(blocks, cls_after_pool, logits[:3], fuse_valid)
            if self.task == "seg_pretrain":
                out["features"] = (fused.mean(1) if fuse_valid is None
                                   else (fused * fuse_valid.unsqueeze(-1)).sum(1) / fuse_valid.sum(1, keepdim=True))
            elif self.convention == "deit":
                out["features"] = torch.cat([fused_cls, fused], dim=1)
            else:
                out["features"] = fused
        return out

    def forward_head(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.task == "cls":
            return self.head(feats["out4"])
        if self.task == "seg" and self.convention == "deit":
            # The DeiT segmentation model is the Segmenter encoder: it returns the fused
            # cls+tokens and leaves classification to the decoder (as published).
            return feats["features"]
        return self.head(feats["features"])

    def forward(self, images: torch.Tensor, superpixels: torch.Tensor) -> torch.Tensor:
        """Head output: ``B×num_classes`` (cls, seg_pretrain), ``B×N1×num_classes`` (MoCo
        seg) or ``B×(1+N1)×D`` encoder features (DeiT seg)."""
        return self.forward_head(self._features(images, superpixels, last_pool=self.task != "cls"))


def compile_model(model: nn.Module, *, max_tokens: int | None = None, fullgraph: bool = True,
                  **compile_kwargs) -> nn.Module:
    """``torch.compile`` a castvit model as one graph (issue 12 §3).

    Superpixel models (CAST, SuperpixelViT, and the encoder of a segmentation model) are
    switched to the static-shape mode first:
    ``max_tokens`` (default: the model's, else the stem grid's cell count, the most
    superpixels the 8-px grid can hold) fixes the token count, padded tokens are masked,
    and input checks on values become asynchronous asserts, so the forward has no host
    sync and no data-dependent branch. Use the returned module for the forward (and
    ``loss.backward()`` as usual); ``model`` itself is changed in place (its
    ``max_tokens``) and shares parameters with the result. CPU speed-ups of
    :mod:`castvit.models.fast_cpu` are turned off (Inductor makes its own kernels).

    Label ids must lie in ``[0, max_tokens)``; an image with fewer superpixels than the
    first stage's clusters trips the assert. Extra keyword arguments go to
    ``torch.compile`` (``mode``, ``dynamic``, ``backend``…).
    """
    from castvit.models import fast_cpu

    fast_cpu.disable(model)
    # a segmentation model (encoder + decoder): its encoder holds the tokens
    tokens = model if hasattr(model, "max_tokens") else getattr(model, "encoder", None)
    if hasattr(tokens, "max_tokens"):
        if max_tokens is None and tokens.max_tokens is None and getattr(tokens, "task", None) == "seg":
            raise ValueError("segmentation models read labels at their own resolution: pass max_tokens, the "
                             "superpixel count (e.g. H·W/256 for the segmentation preset)")
        if max_tokens is None:
            max_tokens = tokens.max_tokens or tokens.grid_size[0] * tokens.grid_size[1]
        least = getattr(tokens, "min_superpixels", 1)
        if max_tokens < least:
            raise ValueError(f"max_tokens={max_tokens} is below the {least} clusters of the first stage")
        tokens.max_tokens = int(max_tokens)
    elif max_tokens is not None:
        raise ValueError(f"{type(model).__name__} has no superpixel tokens; leave max_tokens unset")
    compile_kwargs.setdefault("dynamic", False)
    return torch.compile(model, fullgraph=fullgraph, **compile_kwargs)
