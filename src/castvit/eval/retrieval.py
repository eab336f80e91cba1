"""Segmentation without labels by nearest-neighbour retrieval (PROTOCOLS §3).

A MoCo-pre-trained CAST labels the segments of its own hierarchy from their nearest
neighbours among labelled segments of a training set — the paper's "VOC before
fine-tuning" number (38.4 mIoU with ``cast_small_seg_pretrain.moco_coco_ep149``).

1. **Embedding model** (:func:`build_embedding_model`): the block-fusion CAST as a
   per-superpixel model (task ``seg``: fused tokens per superpixel, labels at their
   own resolution) whose head is the MoCo projector of the checkpoint, applied to every
   token (384 → 4096 → 4096 → 256, last BatchNorm without affine), in eval mode. A
   ``*_seg_pretrain`` checkpoint with the 64/32/16/8 clusters of pre-training is run
   with 320/160/80/40 clusters, as the authors' retrieval model is; other cluster
   counts are kept.
2. **Segments and prototypes** (:class:`SegmentEmbedder`): superpixels on the image at
   its own resolution (SEEDS 1024, 5 bins, 15 iterations), the image resized so its
   longer side is 512 (multiples of 8), the hierarchy composed through ``level``
   (default 4: all four levels). Every pixel's embedding is its superpixel's projector
   output, L2-normalised; a segment's prototype is the L2-normalised sum of its
   pixels' embeddings (computed from per-superpixel pixel counts, never per pixel).
3. **Memory bank** (:class:`MemoryBank`, :func:`build_memory_bank`): the prototypes of
   every segment of the labelled training images with their label, the majority
   ground-truth value of the segment's pixels (ties to the lowest value); segments
   whose majority is the ignore value 255 are dropped. Built one image at a time and
   written to disk in shards as it grows.
4. **Voting** (:func:`knn_vote`): each query segment takes the ``k`` (20) prototypes
   of highest cosine similarity — among equal similarities the earlier prototype in
   the bank — and their unweighted majority label, ties to the lowest class; the
   label is painted on the segment's pixels.
5. **Score** (:func:`evaluate_retrieval`): mIoU accumulated over the validation set,
   averaged over all classes (SPML's convention: a class with an empty union counts
   0), with :class:`~castvit.eval.segmentation.SegmentationMetric`; also the
   majority-class baseline (every pixel the most frequent training class).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from castvit.eval.segmentation import SegmentationMetric

IGNORE_INDEX = 255
BANK_FORMAT = "castvit-memory-bank/1"
# SPML's VOC inference settings (PROTOCOLS §2): longer side 512, SEEDS 1024 on the image.
SPML_SUPERPIXELS = {"method": "seeds", "n_segments": 1024, "num_levels": 1, "prior": 2, "histogram_bins": 5,
                    "num_iterations": 15}
PRETRAIN_CLUSTERS = [64, 32, 16, 8]
RETRIEVAL_CLUSTERS = [320, 160, 80, 40]


# ------------------------------------------------------------------ embedding model


class TokenProjector(nn.Module):
    """Apply an MLP with BatchNorm1d layers to every token of a ``B×N×D`` tensor (the
    MoCo projector sees ``B×D`` rows; here each token is a row)."""

    def __init__(self, mlp: nn.Sequential):
        super().__init__()
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return self.mlp(x.reshape(-1, shape[-1])).reshape(*shape[:-1], -1)


def projector_from_state_dict(sd: Mapping[str, torch.Tensor], prefix: str = "head.") -> nn.Sequential:
    """Rebuild the MoCo projector from its weights: numbered layers where a 2-D
    ``weight`` is a Linear (bias if stored), ``running_mean`` a BatchNorm1d (affine
    when it has a ``weight``), and each index without parameters a ReLU (the authors'
    ``_build_mlp`` layout)."""
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k.startswith(prefix):
            idx, _, name = k[len(prefix):].partition(".")
            if not idx.isdigit():
                raise ValueError(f"{k!r} is not a numbered projector layer; the checkpoint head is not a MoCo "
                                 "projector (use head='none')")
            layers.setdefault(int(idx), {})[name] = v
    if not layers:
        raise ValueError("the checkpoint has no projector (no 'head.N.*' weights); a MoCo checkpoint keeps its "
                         "projector as 'head' — pass a MoCo pre-training checkpoint, or head='none'")
    mods: list[nn.Module] = []
    for i in range(max(layers) + 1):
        p = layers.get(i)
        if p is None:
            mods.append(nn.ReLU(inplace=True))
        elif "weight" in p and p["weight"].ndim == 2:
            out_f, in_f = p["weight"].shape
            mods.append(nn.Linear(in_f, out_f, bias="bias" in p))
        elif "running_mean" in p:
            mods.append(nn.BatchNorm1d(p["running_mean"].numel(), affine="weight" in p))
        else:
            raise ValueError(f"projector layer {prefix}{i} has parameters {sorted(p)} that are neither a Linear "
                             "nor a BatchNorm")
    return nn.Sequential(*mods)


def _base_name(name: str) -> str:
    """``name`` without a ``_seg_pretrain`` / ``_seg`` suffix."""
    for suffix in ("_seg_pretrain", "_seg"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _retrieval_name(name: str) -> str:
    if _base_name(name) != name:
        return _base_name(name) + "_seg"
    raise ValueError(f"{name!r} has no block fusion, so it gives no per-superpixel features; retrieval needs a "
                     "block-fusion CAST (a '*_seg_pretrain' MoCo checkpoint such as "
                     "cast_small_seg_pretrain.moco_coco_ep149, or a '*_seg' model)")


def _train_container_record(path: Path) -> dict[str, Any] | None:
    """The model of a ``castvit train`` container from its recipe (``castvit.config.model``:
    name and kwargs), for containers that carry no ``castvit_model`` record."""
    from castvit.checkpoint import read_checkpoint
    from castvit.models.registry import model_config

    if path.suffix not in (".tar", ".pth", ".pt"):
        return None
    obj = read_checkpoint(path)
    recipe = obj.get("castvit", {}).get("config") if isinstance(obj, dict) and isinstance(obj.get("castvit"), dict) \
        else None
    model = recipe.get("model") if isinstance(recipe, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        return None
    return {"name": model["name"], "config": model_config(model["name"], **dict(model.get("kwargs") or {})),
            "pretrained_cfg": {}}


def _load_source(source: str | os.PathLike) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """``(name, config, pretrained_cfg, encoder state dict)`` of a checkpoint file or a
    published ``model.tag``."""
    from castvit.checkpoint import extract_state_dict, read_checkpoint
    from castvit.models._builder import read_pretrained_config
    from castvit.models.registry import model_config

    path = Path(source)
    pretrained_cfg: dict[str, Any] = {}
    if not path.exists() and "." in str(source) and os.sep not in str(source):
        from castvit.models import hub

        entry = hub.pretrained_entry(str(source))
        path = Path(hub.download_pretrained(entry.full_name))
        name, config, pretrained_cfg = entry.model, model_config(entry.model), dict(entry.pretrained_cfg)
    else:
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist; give a checkpoint file or a published "
                                    "name such as cast_small_seg_pretrain.moco_coco_ep149")
        record = read_pretrained_config(path) or _train_container_record(path)
        if record is None:
            raise ValueError(f"{str(path)!r} does not say which model it holds; give the published name instead "
                             "(e.g. cast_small_seg_pretrain.moco_coco_ep149) or a checkpoint written by castvit")
        name, config, pretrained_cfg = record["name"], dict(record["config"]), dict(record["pretrained_cfg"])
    sd, _ = extract_state_dict(read_checkpoint(path))
    return name, config, pretrained_cfg, sd


class _Unpooled(nn.Module):
    """Stands in for the BatchNorm of :class:`~castvit.models.graph_pool.BlockFusion`'s
    projection, so that the fusion returns the unpooled stage outputs themselves."""

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return x


def unpooled_fusion(model: nn.Module) -> nn.Module:
    """Make a ``*_seg`` CAST's block fusion parameter-free: every superpixel token becomes
    the concatenation of the stage 1–4 outputs unpooled to it through the hard hierarchy
    (``B×N1×4D``), without the learnt projection back to ``D``.

    The embedding of an encoder that was not trained with block fusion (a classifier
    such as ``castvit demo``'s CAST, or a supervised ``cast_small``): its fusion weights
    do not exist, and a randomly initialised projection would only blur what the
    stages learnt. Changes ``model`` in place and returns it.
    """
    model.block_fusion.proj_blocks = nn.Sequential(_Unpooled(), nn.Identity(), nn.Identity())
    model.embedding_fusion = "unpooled"
    return model


def _has_projector(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("head.") and k[5:].partition(".")[0].isdigit() for k in sd)


def build_embedding_model(source: str | os.PathLike, *, num_clusters: Sequence[int] | None = None,
                          head: str = "auto", untrained: bool = False, seed: int = 0) -> nn.Module:
    """The per-superpixel embedding model of a checkpoint (module docstring, step 1).

    Args:
        source: a published ``model.tag`` (``"cast_small_seg_pretrain.moco_coco_ep149"``)
            or a checkpoint file (the authors' MoCo container with a castvit record,
            ``castvit train``'s ``last.pth.tar``, a castvit ``.safetensors`` such as the
            ``castvit demo`` checkpoints).
        num_clusters: clusters per stage (default: 320/160/80/40 for a model pre-trained
            with 64/32/16/8, else the checkpoint's own).
        head: ``"projector"`` (the checkpoint's MoCo projector per token), ``"none"``
            (the fused tokens themselves) or ``"auto"`` (the projector when the
            checkpoint has one, else ``"none"``).
        untrained: build the same architecture with fresh random weights (seeded by
            ``seed``), projector included: the baseline that retrieval must beat.

    A block-fusion CAST (``*_seg_pretrain``, ``*_seg``) is run as it was trained. Any
    other CAST (a classifier: ``cast_small``, the ``castvit demo`` models) has no fusion
    weights; its tokens are fused without parameters (:func:`unpooled_fusion`: the four
    stage outputs concatenated per superpixel) and ``head`` must be ``"none"`` (or
    ``"auto"``), since a classifier's head is no per-token projector.

    Returns:
        A ``*_seg`` CAST in eval mode whose ``forward`` gives ``B×N×C`` token embeddings
        (its ``embedding_fusion`` says ``"block"`` or ``"unpooled"``).
    """
    if head not in ("projector", "none", "auto"):
        raise ValueError(f"head must be 'projector', 'none' or 'auto', got {head!r}")
    from castvit.checkpoint import load_checkpoint
    from castvit.models._builder import create_model

    name, config, pretrained_cfg, sd = _load_source(source)
    fusion = "block" if any(k.startswith("block_fusion.") for k in sd) else "unpooled"
    if fusion == "unpooled" and (not name.startswith("cast_") or "deit" in name):
        raise ValueError(f"{name!r} is neither a block-fusion CAST nor a MoCo-convention CAST classifier; retrieval "
                         "needs per-superpixel tokens (a '*_seg_pretrain' MoCo checkpoint, a '*_seg' model, or a "
                         "CAST classifier such as cast_small)")
    if head == "auto":
        head = "projector" if _has_projector(sd) else "none"
    if head == "projector" and fusion == "unpooled":
        raise ValueError(f"the checkpoint of {name!r} has no block-fusion weights, so its tokens are fused without "
                         "parameters (4×width) and a projector trained on fused tokens does not fit them; use "
                         "head='none' (--head none)")
    seg_name = _retrieval_name(name) if fusion == "block" else _base_name(name) + "_seg"
    cfg = {k: v for k, v in config.items() if k not in ("task", "num_classes")}
    if num_clusters is None:
        own = list(cfg.get("num_clusters") or PRETRAIN_CLUSTERS)
        num_clusters = RETRIEVAL_CLUSTERS if own == PRETRAIN_CLUSTERS else own
    cfg["num_clusters"] = [int(c) for c in num_clusters]
    if untrained:
        torch.manual_seed(seed)
    model = create_model(seg_name, **{**cfg, "num_classes": 0})
    if head == "projector":
        model.head = TokenProjector(projector_from_state_dict(sd))
        sd = {("head.mlp." + k[5:] if k.startswith("head.") else k): v for k, v in sd.items()}
    else:
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    if fusion == "unpooled":
        unpooled_fusion(model)
        # the classifier's final norm reads only its cls token, which no segment uses
        sd = {k: v for k, v in sd.items() if not k.startswith("norm.")}
    else:
        model.embedding_fusion = "block"
    if not untrained:
        load_checkpoint(model, sd, reset_head="never")
    model.retrieval_source = str(source)
    model.retrieval_pretrained_cfg = pretrained_cfg
    return model.eval()


# ------------------------------------------------------------------ segments → prototypes


@dataclass
class ImageEmbedding:
    """One image through the embedding model.

    Attributes:
        superpixels: ``H×W`` level-0 ids (at the image's resolution).
        segments: ``H×W`` segment index ``0..S−1`` at the chosen level.
        token_embeddings: ``N×C`` projector output of every superpixel id (rows of ids
            absent from the map are unused).
        prototypes: ``S×C`` L2-normalised sums of the pixels' normalised embeddings.
    """

    superpixels: np.ndarray
    segments: np.ndarray
    token_embeddings: torch.Tensor
    prototypes: torch.Tensor


def segment_prototypes(token_embeddings: torch.Tensor, superpixels: np.ndarray, segment_of: np.ndarray
                       ) -> tuple[torch.Tensor, np.ndarray]:
    """Prototypes of the segments that group ``superpixels``.

    Args:
        token_embeddings: ``N×C``, row ``i`` for superpixel id ``i``.
        superpixels: ``H×W`` ids.
        segment_of: segment id of every superpixel id (``-1`` where absent).

    Returns:
        ``(S×C prototypes, H×W segment index 0..S−1)``; segments are numbered in
        increasing order of their ids.
    """
    sp = np.asarray(superpixels, dtype=np.int64)
    n = int(sp.max()) + 1
    count = np.bincount(sp.ravel(), minlength=n)
    present = np.nonzero(count)[0]
    seg_ids = np.asarray(segment_of)[present]
    if (seg_ids < 0).any():
        raise ValueError("a superpixel in the map has no segment; the hierarchy does not match the superpixels")
    uniq, seg_index = np.unique(seg_ids, return_inverse=True)
    unit = F.normalize(token_embeddings[torch.from_numpy(present)].float(), dim=-1)
    weighted = unit * torch.from_numpy(count[present]).to(unit)[:, None]
    protos = torch.zeros(len(uniq), unit.shape[1], dtype=unit.dtype, device=unit.device)
    protos.index_add_(0, torch.from_numpy(seg_index).to(unit.device), weighted)
    lut = np.full(n, -1, dtype=np.int64)
    lut[present] = seg_index
    return F.normalize(protos, dim=-1), lut[sp]


class SegmentEmbedder:
    """Images → segments and their prototypes (module docstring, step 2).

    Args:
        model: from :func:`build_embedding_model` (any ``*_seg`` CAST whose forward gives
            token embeddings).
        level: hierarchy level whose segments are labelled (0 = superpixels, 4 = all
            four levels composed, the protocol).
        long_side: the model sees the image resized so its longer side is this
            (multiples of 8); None keeps the size (rounded to multiples of 8).
        superpixels: superpixel method and settings, computed on the image at its own
            resolution (default: SEEDS 1024, 5 bins, 15 iterations).
        device: where the model runs (default: the model's).
    """

    def __init__(self, model: nn.Module, *, level: int = 4, long_side: int | None = 512,
                 superpixels: Mapping[str, Any] | None = None, device: str | torch.device | None = None):
        if getattr(model, "task", None) != "seg":
            raise ValueError("the embedding model must be a per-superpixel ('*_seg') CAST; build it with "
                             "castvit.eval.retrieval.build_embedding_model")
        if not 0 <= level <= 4:
            raise ValueError(f"level must be in 0..4 (0 = superpixels, 4 = all four levels), got {level}")
        self.model = model.eval()
        self.level = int(level)
        self.long_side = long_side
        self.superpixels = dict(SPML_SUPERPIXELS if superpixels is None else superpixels)
        param = next(model.parameters())
        self.device = torch.device(device) if device is not None else param.device
        self.model.to(self.device)
        from castvit.inference import model_preprocessing

        pre = model_preprocessing(model)
        self.mean, self.std = pre["mean"], pre["std"]

    def settings(self) -> dict[str, Any]:
        return {"level": self.level, "long_side": self.long_side, "superpixels": dict(self.superpixels)}

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        if self.long_side is None:
            f = 1.0
        else:
            f = self.long_side / max(height, width)
        return max(8, int(round(height * f / 8)) * 8), max(8, int(round(width * f / 8)) * 8)

    def compute_superpixels(self, image: np.ndarray) -> np.ndarray:
        from castvit.superpixels import compute_superpixels_single

        opts = dict(self.superpixels)
        method = opts.pop("method", "seeds")
        n = int(opts.pop("n_segments", 1024))
        return np.asarray(compute_superpixels_single(image, method=method, n_segments=n, **opts)).astype(np.int64)

    @torch.no_grad()
    def __call__(self, image, superpixels: np.ndarray | None = None) -> ImageEmbedding:
        """Embed one ``H×W×3`` uint8 image (or ``3×H×W`` tensor)."""
        from castvit.hierarchy import Hierarchy
        from castvit.inference import as_uint8_images, resize_image
        from castvit.ops import normalize_images

        img = as_uint8_images(image)[0]
        sp = self.compute_superpixels(img) if superpixels is None else np.asarray(superpixels, dtype=np.int64)
        if sp.shape != img.shape[:2]:
            raise ValueError(f"superpixels {sp.shape} do not match the image {img.shape[:2]}")
        h, w = self.working_size(*img.shape[:2])
        x = normalize_images(resize_image(img, h, w), self.mean, self.std).to(self.device)
        param = next(self.model.parameters())
        sp_t = torch.from_numpy(sp)[None].to(self.device)
        feats = self.model.forward_features(x.to(param.dtype), sp_t)
        emb = self.model.forward_head(feats)[0].float()
        if self.level == 0:
            segment_of = np.arange(int(sp.max()) + 1)
        else:
            hier = Hierarchy.from_outputs({k: v.float() for k, v in feats.items() if k.startswith("logit")},
                                          sp_t.cpu(), on_grid=False)[0]
            segment_of = hier.segment_of(self.level)
        protos, segments = segment_prototypes(emb, sp, segment_of)
        return ImageEmbedding(sp, segments, emb, protos)


def majority_labels(segments: np.ndarray, target: np.ndarray, num_segments: int | None = None) -> np.ndarray:
    """Majority ground-truth value of every segment (0..S−1), ties to the lowest value;
    the ignore value 255 counts like any other value."""
    seg = np.asarray(segments, dtype=np.int64).ravel()
    t = np.asarray(target, dtype=np.int64).ravel()
    if seg.shape != t.shape:
        raise ValueError(f"segments {np.shape(segments)} and target {np.shape(target)} differ in shape")
    if t.min() < 0 or t.max() > 255:
        raise ValueError("target values must be in 0..255")
    s = int(seg.max()) + 1 if num_segments is None else int(num_segments)
    hist = np.bincount(seg * 256 + t, minlength=s * 256).reshape(s, 256)
    return hist.argmax(1)  # first maximum = lowest value


# ------------------------------------------------------------------ memory bank


class MemoryBank:
    """Labelled segment prototypes, stored as shards in a folder.

    Folder: ``meta.json`` (format, settings, shard sizes, training pixel counts per
    class) and per shard ``prototypes_XXXXX.npy`` (float32 ``n×C``), ``labels_XXXXX.npy``
    (int64) and ``images_XXXXX.npy`` (index of the training image).
    """

    def __init__(self, prototypes: list[torch.Tensor], labels: list[torch.Tensor], images: list[torch.Tensor],
                 meta: dict[str, Any]):
        self.prototypes, self.labels, self.images, self.meta = prototypes, labels, images, meta

    def __len__(self) -> int:
        return sum(len(lab) for lab in self.labels)

    @property
    def dim(self) -> int:
        return int(self.prototypes[0].shape[1]) if self.prototypes else 0

    def all_prototypes(self) -> torch.Tensor:
        return torch.cat(self.prototypes) if self.prototypes else torch.zeros(0, 0)

    def all_labels(self) -> torch.Tensor:
        return torch.cat(self.labels) if self.labels else torch.zeros(0, dtype=torch.long)

    def to(self, device: str | torch.device) -> "MemoryBank":
        return MemoryBank([p.to(device) for p in self.prototypes], [lab.to(device) for lab in self.labels],
                          self.images, self.meta)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "MemoryBank":
        path = Path(path)
        meta_file = path / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{str(path)!r} is not a memory bank folder (no meta.json); build one with "
                                    "castvit eval voc-nn (it writes --bank) or build_memory_bank")
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != BANK_FORMAT:
            raise ValueError(f"{str(meta_file)!r} is not a castvit memory bank ({BANK_FORMAT})")
        protos, labels, images = [], [], []
        for i in range(int(meta["num_shards"])):
            try:
                protos.append(torch.from_numpy(np.load(path / f"prototypes_{i:05d}.npy")).to(device))
                labels.append(torch.from_numpy(np.load(path / f"labels_{i:05d}.npy")).to(device))
                images.append(torch.from_numpy(np.load(path / f"images_{i:05d}.npy")))
            except (OSError, ValueError) as exc:
                raise ValueError(f"memory bank {str(path)!r}: shard {i} cannot be read ({exc}); build the bank "
                                 "again (--rebuild-bank)") from None
        return cls(protos, labels, images, meta)


class BankWriter:
    """Write a :class:`MemoryBank` shard by shard while images stream through."""

    def __init__(self, path: str | os.PathLike, meta: dict[str, Any], *, shard_size: int = 65536):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        for old in self.path.glob("*_?????.npy"):
            old.unlink()
        self.meta = dict(meta, format=BANK_FORMAT)
        self.shard_size = int(shard_size)
        self._buf: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._n_buf = 0
        self.shards: list[int] = []
        self.pixel_counts: np.ndarray | None = None

    def add(self, prototypes: torch.Tensor, labels: np.ndarray, image_index: int) -> None:
        p = prototypes.detach().float().cpu().numpy()
        lab = np.asarray(labels, dtype=np.int64)
        self._buf.append((p, lab, np.full(len(lab), image_index, dtype=np.int64)))
        self._n_buf += len(lab)
        if self._n_buf >= self.shard_size:
            self._flush()

    def count_pixels(self, target: np.ndarray, num_classes: int) -> None:
        t = np.asarray(target).ravel()
        t = t[(t >= 0) & (t < num_classes)]
        c = np.bincount(t, minlength=num_classes)
        self.pixel_counts = c if self.pixel_counts is None else self.pixel_counts + c

    def _flush(self) -> None:
        if not self._buf:
            return
        i = len(self.shards)
        p, lab, img = (np.concatenate([b[j] for b in self._buf]) for j in range(3))
        np.save(self.path / f"prototypes_{i:05d}.npy", p.astype(np.float32))
        np.save(self.path / f"labels_{i:05d}.npy", lab)
        np.save(self.path / f"images_{i:05d}.npy", img)
        self.shards.append(len(lab))
        self._buf, self._n_buf = [], 0

    def close(self) -> dict[str, Any]:
        self._flush()
        self.meta.update(num_shards=len(self.shards), shard_sizes=self.shards, num_prototypes=sum(self.shards),
                         pixel_counts=None if self.pixel_counts is None else self.pixel_counts.tolist())
        (self.path / "meta.json").write_text(json.dumps(self.meta, indent=1))
        return self.meta


def _progress(it: Iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, unit="img", dynamic_ncols=True)


def _item_image(item: Mapping[str, Any]) -> np.ndarray:
    img = item["image"]
    if torch.is_tensor(img):
        img = img.permute(1, 2, 0).numpy() if img.shape[0] == 3 else img.numpy()
    return np.ascontiguousarray(img)


def build_memory_bank(embedder: SegmentEmbedder, dataset, path: str | os.PathLike, *, num_classes: int = 21,
                      max_images: int | None = None, shard_size: int = 65536, progress: bool = False,
                      meta: dict[str, Any] | None = None) -> MemoryBank:
    """Embed every labelled image of ``dataset`` (items ``image``, ``target``), keep each
    segment's prototype and majority label (dropping majority-255 segments), and write
    the bank to ``path``. Returns it loaded."""
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    writer = BankWriter(path, {**(meta or {}), **embedder.settings(), "num_classes": num_classes,
                               "num_images": n}, shard_size=shard_size)
    dropped = 0
    for i in _progress(range(n), n, "memory bank", progress):
        item = dataset[i]
        target = np.asarray(item["target"])
        emb = embedder(_item_image(item))
        labels = majority_labels(emb.segments, target, len(emb.prototypes))
        keep = labels != IGNORE_INDEX
        dropped += int((~keep).sum())
        if keep.any():
            writer.add(emb.prototypes[torch.from_numpy(keep)], labels[keep], i)
        writer.count_pixels(target, num_classes)
    writer.meta["dropped_void_segments"] = dropped
    writer.close()
    return MemoryBank.load(path)


# ------------------------------------------------------------------ voting


def _select_topk(sims: torch.Tensor, index: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row the ``k`` largest ``sims``; among equal values the earlier column wins.

    ``index`` (``Q×M``, increasing along each row) holds the bank index of every column.
    Returns ``(values, index)`` ``Q×k`` in column order.
    """
    q, m = sims.shape
    if m <= k:
        return sims, index
    kth = sims.topk(k, dim=1).values[:, -1:]
    greater = sims > kth
    equal = sims == kth
    need = k - greater.sum(1, keepdim=True)
    take = greater | (equal & (equal.long().cumsum(1) <= need))
    cols = take.nonzero()[:, 1].reshape(q, k)
    return sims.gather(1, cols), index.gather(1, cols)


@torch.no_grad()
def knn_vote(queries: torch.Tensor, bank: MemoryBank, k: int = 20, num_classes: int = 21,
             *, return_neighbours: bool = False):
    """Label ``Q×C`` L2-normalised queries by the unweighted majority of their ``k``
    most similar prototypes (cosine; equal similarities: the earlier prototype; equal
    votes: the lowest class). Streams over the bank's shards.

    Returns ``Q`` int64 labels (and the ``Q×k`` neighbour indices if asked)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(bank) == 0:
        raise ValueError("the memory bank is empty: no labelled segment was kept (are all training labels 255?)")
    device = bank.prototypes[0].device
    qn = F.normalize(queries.float().to(device), dim=-1)
    best_v = torch.zeros(len(qn), 0, device=device)
    best_i = torch.zeros(len(qn), 0, dtype=torch.long, device=device)
    offset = 0
    for protos in bank.prototypes:
        sims = qn @ protos.float().T
        idx = (torch.arange(len(protos), device=device) + offset).expand(len(qn), -1)
        v, i = _select_topk(sims, idx, k)
        best_v, best_i = _select_topk(torch.cat([best_v, v], 1), torch.cat([best_i, i], 1), k)
        offset += len(protos)
    labels = bank.all_labels().to(device)[best_i]
    votes = F.one_hot(labels, num_classes).sum(1)
    pred = votes.argmax(1)  # first maximum: the lowest class
    return (pred, best_i) if return_neighbours else pred


@dataclass
class RetrievalResult:
    metrics: dict[str, Any]
    majority_baseline: dict[str, Any]
    majority_class: int
    count: int
    kept: list[dict[str, Any]] = field(default_factory=list)


def evaluate_retrieval(embedder: SegmentEmbedder, bank: MemoryBank, dataset, *, k: int = 20, num_classes: int = 21,
                       max_images: int | None = None, progress: bool = False, keep: int = 0) -> RetrievalResult:
    """Label every segment of every ``dataset`` image by :func:`knn_vote`, paint the
    labels and accumulate mIoU over all ``num_classes`` (empty unions count 0). Also
    scores the majority-class baseline: every pixel the most frequent training class."""
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    metric = SegmentationMetric(num_classes, IGNORE_INDEX, mean_over="all")
    base = SegmentationMetric(num_classes, IGNORE_INDEX, mean_over="all")
    counts = bank.meta.get("pixel_counts")
    majority = int(np.argmax(counts)) if counts else int(torch.bincount(bank.all_labels().cpu()).argmax())
    kept: list[dict[str, Any]] = []
    for i in _progress(range(n), n, "retrieval", progress):
        item = dataset[i]
        target = np.asarray(item["target"])
        emb = embedder(_item_image(item))
        labels = knn_vote(emb.prototypes, bank, k, num_classes).cpu().numpy()
        pred = labels[emb.segments]
        metric.update(pred, target)
        base.update(np.full_like(target, majority), target)
        if len(kept) < keep:
            kept.append({"image": item["image"], "target": torch.as_tensor(target), "pred": torch.from_numpy(pred),
                         "path": item.get("path", str(i))})
    return RetrievalResult(metric.compute(), base.compute(), majority, n, kept)


__all__ = ["BankWriter", "ImageEmbedding", "MemoryBank", "RetrievalResult", "SegmentEmbedder", "TokenProjector",
           "build_embedding_model", "build_memory_bank", "evaluate_retrieval", "knn_vote", "majority_labels",
           "projector_from_state_dict", "segment_prototypes"]
