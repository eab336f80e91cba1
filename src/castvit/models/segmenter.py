"""Semantic segmentation on CAST's superpixel tokens (PROTOCOLS §1–2).

One model class, :class:`SegmentationModel`: a ``*_seg`` CAST encoder (block fusion,
320/160/80/40 clusters, one fused token per superpixel) followed by one of two
decoders, and ``model(images, superpixels)`` returns ``B×C×H×W`` logits at the
image's resolution.

* ``"mask_transformer"`` (Segmenter, used for ADE20K and Pascal Context): the tokens
  and ``C`` learnable class embeddings go through two transformer blocks; the
  L2-normalised token · class products, normalised over classes, are the per-token
  class scores; every pixel takes the row of its superpixel.
* ``"spml"`` (used for Pascal VOC): each pixel takes its superpixel's feature, then
  Conv1×1 D→D (no bias) → BN → ReLU → Conv1×1 D→C.

State-dict prefixes are ``encoder.`` and ``decoder.``, as in the authors' Segmenter
checkpoints, so :func:`load_segmentation_checkpoint` reads their fine-tuned files; the
encoder alone loads from any pre-training checkpoint castvit reads
(:meth:`SegmentationModel.load_encoder`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from castvit.checkpoint import CheckpointError, LoadReport, load_checkpoint, read_checkpoint
from castvit.models.cast import CAST, PATCH
from castvit.models.layers import Block
from castvit.models.registry import model_config, model_entry

DECODERS = ("mask_transformer", "spml")


class MaskTransformerDecoder(nn.Module):
    """Segmenter's mask transformer over superpixel tokens (PROTOCOLS §1).

    Args:
        num_classes: classes (``n_cls``).
        d_encoder: width of the encoder tokens.
        d_model: decoder width (default ``d_encoder``).
        n_layers: transformer blocks (2).
        n_heads: attention heads (default ``d_model / 64``, at least 1).
        mlp_ratio: MLP width / d_model (4).
        dropout: dropout of attention weights, projections and MLP (0.1).
        drop_path_rate: stochastic depth, linearly increasing over the blocks (0).
    """

    def __init__(self, num_classes: int, d_encoder: int, d_model: int | None = None, n_layers: int = 2,
                 n_heads: int | None = None, mlp_ratio: float = 4.0, dropout: float = 0.1,
                 drop_path_rate: float = 0.0):
        super().__init__()
        d_model = int(d_model or d_encoder)
        n_heads = int(n_heads or max(1, d_model // 64))
        if d_model % n_heads:
            raise ValueError(f"decoder width {d_model} is not divisible by {n_heads} heads; pass n_heads")
        self.num_classes, self.d_model = int(num_classes), d_model
        dpr = [drop_path_rate * i / max(n_layers - 1, 1) for i in range(n_layers)]
        self.proj_dec = nn.Linear(d_encoder, d_model)
        self.blocks = nn.ModuleList([Block(d_model, n_heads, mlp_ratio, True, dropout, dropout, dpr[i], norm_eps=1e-5)
                                     for i in range(n_layers)])
        self.cls_emb = nn.Parameter(torch.zeros(1, num_classes, d_model))
        scale = d_model ** -0.5
        self.proj_patch = nn.Parameter(scale * torch.randn(d_model, d_model))
        self.proj_classes = nn.Parameter(scale * torch.randn(d_model, d_model))
        self.decoder_norm = nn.LayerNorm(d_model)
        self.mask_norm = nn.LayerNorm(num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.cls_emb, std=0.02)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """``B×N×D`` superpixel tokens (cls dropped) → ``B×N×C`` class scores. ``valid``
        (``B×N`` bool) keeps padded tokens out of the attention keys."""
        b, n, _ = tokens.shape
        x = torch.cat([self.proj_dec(tokens), self.cls_emb.expand(b, -1, -1).to(tokens.dtype)], dim=1)
        mask = None
        # Traced (torch.compile) the mask is always applied: asking whether a token is
        # padded is a host sync; an all-True mask changes nothing.
        if valid is not None and (torch.compiler.is_compiling() or not bool(valid.all())):
            keys = F.pad(valid, (0, self.num_classes), value=True)
            mask = keys[:, None, None, :]
        for blk in self.blocks:
            x = blk(x, mask)
        x = self.decoder_norm(x)
        patches = F.normalize(x[:, :n] @ self.proj_patch, dim=-1)
        classes = F.normalize(x[:, n:] @ self.proj_classes, dim=-1)
        return self.mask_norm(patches @ classes.transpose(1, 2))


class SPMLHead(nn.Module):
    """SPML's 1×1-conv head (PROTOCOLS §2): ``B×D×h×w`` → ``B×C×h×w``."""

    def __init__(self, num_classes: int, d_encoder: int):
        super().__init__()
        self.num_classes = int(num_classes)
        self.head = nn.Sequential(nn.Conv2d(d_encoder, d_encoder, 1, bias=False), nn.BatchNorm2d(d_encoder),
                                  nn.ReLU(inplace=True), nn.Conv2d(d_encoder, num_classes, 1))

    def forward(self, pixel_features: torch.Tensor) -> torch.Tensor:
        return self.head(pixel_features)


def gather_to_pixels(token_values: torch.Tensor, superpixels: torch.Tensor) -> torch.Tensor:
    """``B×N×K`` per-superpixel values, ``B×h×w`` ids → ``B×K×h×w`` (each pixel takes
    its superpixel's row)."""
    b, h, w = superpixels.shape
    k = token_values.shape[-1]
    idx = superpixels.reshape(b, h * w, 1).expand(-1, -1, k)
    return torch.gather(token_values, 1, idx).transpose(1, 2).reshape(b, k, h, w)


class SegmentationModel(nn.Module):
    """A ``*_seg`` CAST encoder and a segmentation decoder.

    Args:
        num_classes: output classes (150 ADE20K, 60 Pascal Context, 21 VOC).
        encoder: registry name of the encoder, a segmentation CAST (``task="seg"``):
            ``cast_small_deit_seg`` (Segmenter, PROTOCOLS §1) or ``cast_small_seg`` (SPML).
        encoder_kwargs: constructor overrides of the encoder (``img_size``,
            ``embed_dim``, ``depth``, ``num_heads``, ``num_clusters`` …).
        decoder: ``"mask_transformer"`` or ``"spml"``.
        decoder_kwargs: options of :class:`MaskTransformerDecoder` (``n_layers``,
            ``n_heads``, ``dropout``, ``drop_path_rate``, ``d_model``).
        drop_path_rate: the encoder's stochastic depth (0 in the authors' runs).

    ``model(images, superpixels)``: ``images`` ``B×3×H×W`` normalised (any H, W: padded
    to a multiple of 8 inside and cut back), ``superpixels`` ``B×h×w`` int64 ids, at the
    image's resolution or any other (SPML computes them at half the crop). Returns
    ``B×C×H×W`` logits; logits of another label resolution are resized bilinearly.
    """

    def __init__(self, *, num_classes: int = 150, encoder: str = "cast_small_deit_seg",
                 encoder_kwargs: Mapping[str, Any] | None = None, decoder: str = "mask_transformer",
                 decoder_kwargs: Mapping[str, Any] | None = None, drop_path_rate: float = 0.0):
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        kwargs = dict(encoder_kwargs or {})
        kwargs.setdefault("drop_path_rate", drop_path_rate)
        cfg = model_config(encoder, **kwargs)
        if cfg.get("task") != "seg":
            raise ValueError(f"encoder {encoder!r} is not a segmentation CAST (task 'seg'); use a '*_seg' model "
                             "such as 'cast_small_deit_seg' or 'cast_small_seg'")
        if cfg.get("convention") == "moco" and "num_classes" not in kwargs:
            cfg["num_classes"] = 0  # the decoder reads the fused tokens; the encoder head would be unused
        self.encoder: CAST = model_entry(encoder).builder(**cfg)
        self.encoder_name = encoder
        self.has_cls = self.encoder.convention == "deit"
        self.num_classes = int(num_classes)
        self.decoder_kind = decoder
        d = self.encoder.embed_dim
        if decoder == "mask_transformer":
            self.decoder = MaskTransformerDecoder(num_classes, d, **dict(decoder_kwargs or {}))
        else:
            if decoder_kwargs:
                raise ValueError(f"the spml decoder takes no options, got {sorted(decoder_kwargs)}")
            self.decoder = SPMLHead(num_classes, d)

    @property
    def min_superpixels(self) -> int:
        return self.encoder.min_superpixels

    def forward(self, images: torch.Tensor, superpixels: torch.Tensor) -> torch.Tensor:
        """``B×C×H×W`` class logits at the images' resolution."""
        return self.forward_features(images, superpixels)["class_logits"]

    def forward_features(self, images: torch.Tensor, superpixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The encoder's outputs (pooling logits ``logit1..4`` for the hierarchy, fused
        ``features``) plus ``class_logits`` (``B×C×H×W``)."""
        if not torch.is_tensor(images) or images.ndim != 4:
            raise ValueError("images must be a B×3×H×W tensor")
        if not torch.is_tensor(superpixels) or superpixels.ndim != 3 or superpixels.shape[0] != images.shape[0]:
            shape = tuple(superpixels.shape) if torch.is_tensor(superpixels) else type(superpixels).__name__
            raise ValueError(f"superpixels must be a B×h×w integer tensor with one map per image, got {shape}")
        h, w = images.shape[-2:]
        ph, pw = (-h) % PATCH, (-w) % PATCH
        same = tuple(superpixels.shape[-2:]) == (h, w)
        if ph or pw:
            # Pad to a multiple of 8 (image 0); a full-resolution superpixel map is
            # extended by its edge ids, and the padding is cut off at the end.
            images = F.pad(images, (0, pw, 0, ph))
            if same:
                superpixels = F.pad(superpixels[:, None].float(), (0, pw, 0, ph), mode="replicate")[:, 0].long()
        feats = self.encoder.forward_features(images, superpixels)
        tokens = feats["features"]
        if self.has_cls:
            tokens = tokens[:, 1:]
        valid = ~feats["padding_mask1"]
        if self.decoder_kind == "mask_transformer":
            out = gather_to_pixels(self.decoder(tokens, valid), superpixels)
        else:
            out = self.decoder(gather_to_pixels(tokens, superpixels))
        if same:
            out = out[..., :h, :w]
        if tuple(out.shape[-2:]) != (h, w):
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        return {**feats, "class_logits": out}

    def param_groups(self, weight_decay: float, lr_mult: Mapping[str, float] | None = None,
                     bias_weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Optimizer groups with per-group ``lr_scale`` (read by
        :func:`castvit.train.optim.set_lr`): encoder weights / encoder biases / decoder
        weights / decoder biases, multipliers from ``lr_mult`` keys ``encoder_weight``,
        ``encoder_bias``, ``decoder_weight``, ``decoder_bias`` (default 1). Biases (names
        ending in ``bias``) take ``bias_weight_decay``. Frozen parameters are left out."""
        mult = {"encoder_weight": 1.0, "encoder_bias": 1.0, "decoder_weight": 1.0, "decoder_bias": 1.0}
        unknown = set(lr_mult or {}) - set(mult)
        if unknown:
            raise ValueError(f"unknown lr multiplier keys {sorted(unknown)}; use {', '.join(mult)}")
        mult.update({k: float(v) for k, v in (lr_mult or {}).items()})
        groups: dict[str, list[nn.Parameter]] = {k: [] for k in mult}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            part = "encoder" if name.startswith("encoder.") else "decoder"
            groups[f"{part}_{'bias' if name.endswith('bias') else 'weight'}"].append(p)
        return [{"params": ps, "lr_scale": mult[k], "name": k,
                 "weight_decay": bias_weight_decay if k.endswith("bias") else weight_decay}
                for k, ps in groups.items() if ps]

    def load_encoder(self, checkpoint: str | os.PathLike | Mapping[str, Any]) -> LoadReport:
        """Initialise the encoder from any pre-training checkpoint castvit reads (MoCo,
        DeiT, linear probe, Segmenter, SPML, castvit files), non-strictly: what fits is
        loaded, the rest (block fusion of a classifier checkpoint, a projector head)
        keeps its initialisation and is listed in the report."""
        report = load_checkpoint(self.encoder, checkpoint, strict=False, reset_head="auto")
        own = self.encoder.state_dict()
        if report.loaded < len(own) // 2:
            raise CheckpointError(f"only {report.loaded} of {len(own)} encoder tensors fit the checkpoint "
                                  f"{checkpoint if isinstance(checkpoint, (str, os.PathLike)) else '(dict)'}; "
                                  "check the encoder size (embed_dim, depth, num_heads) against the checkpoint's")
        report.notes.append(f"{len(own) - report.loaded} encoder tensors keep their initialisation")
        return report


def load_segmentation_checkpoint(model: SegmentationModel, checkpoint: str | os.PathLike | Mapping[str, Any],
                                 ) -> dict[str, Any]:
    """Load a whole segmentation model strictly: a Segmenter ``checkpoint.pth``
    (``model`` with ``encoder.`` / ``decoder.`` keys), a castvit training container
    of the segmentation recipe (the same layout) or a plain state dict.

    Returns the container that was read."""
    where = str(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "(dict)"
    obj = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where}: a checkpoint must be a dict, got {type(obj).__name__}")
    sd = obj.get("model", obj.get("state_dict", obj))
    if not isinstance(sd, Mapping) or not any(str(k).startswith("decoder.") for k in sd):
        raise CheckpointError(f"{where} holds no segmentation model (no 'decoder.' keys); to start from a "
                              "pre-training checkpoint use model.load_encoder(path) instead")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    bad = [f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise CheckpointError(
            f"{where} does not fit this segmentation model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"mis-shaped {bad[:5]}; check num_classes, the encoder and the decoder against the training config")
    model.load_state_dict(dict(sd))
    return dict(obj)


__all__ = ["MaskTransformerDecoder", "SPMLHead", "SegmentationModel", "gather_to_pixels",
           "load_segmentation_checkpoint"]
