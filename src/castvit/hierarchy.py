"""The segmentation hierarchy of one image: image → superpixels → model → here.

Level 0 is the superpixel map; level s (1..4) groups level s−1 by the argmax of the
s-th graph pooling's logits (SPEC §5). Each level's map is a function of the
previous one, so the hierarchy is strictly nested.

**Superpixels without a token.** Classification and pre-training models read labels
on the 8-px grid (the top-left pixel of every 8×8 cell), so a small superpixel can
own no cell and get no token of its own. With ``vanished="inherit"`` (castvit's
default) such a superpixel joins, as a whole, the segment of the token whose cells
hold most of its pixels (ties to the lowest token id). ``vanished="own_token"`` uses
the authors' rule instead: the superpixel takes the argmax of its own padded token
(a token built from nothing), which reproduces their pictures exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from castvit.models.graph_pool import compose_assignments
from castvit.ops import label_boundaries, normalize_images

PATCH = 8


@dataclass
class Hierarchy:
    """Nested segmentation of one image.

    Attributes:
        superpixels: ``H×W`` int64 level-0 ids.
        parents: ``parents[s][i]`` is the level-(s+1) segment that contains level-s
            segment ``i`` (``-1`` for level-0 ids absent from the map).
        image: optional ``H×W×3`` uint8 RGB image, used for pictures.
    """

    superpixels: np.ndarray
    parents: list[np.ndarray]
    image: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_levels(self) -> int:
        """Number of levels including level 0 (the superpixels)."""
        return len(self.parents) + 1

    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.num_levels:
            raise ValueError(f"level must be in 0..{self.num_levels - 1}, got {level}")

    def segment_of(self, level: int) -> np.ndarray:
        """For every level-0 id, its level-``level`` segment id (``-1`` if absent)."""
        self._check_level(level)
        ids = np.arange(len(self.parents[0]) if self.parents else int(self.superpixels.max()) + 1)
        out = ids.copy()
        for s in range(level):
            out = np.where(out >= 0, self.parents[s][np.clip(out, 0, None)], -1)
        return out

    def label_map(self, level: int) -> np.ndarray:
        """``H×W`` int64 segment ids at ``level``."""
        return self.segment_of(level)[self.superpixels]

    def label_maps(self) -> list[np.ndarray]:
        return [self.label_map(s) for s in range(self.num_levels)]

    def num_segments(self, level: int) -> int:
        return int(np.unique(self.label_map(level)).size)

    def is_nested(self) -> bool:
        """True when every segment lies inside one segment of the next level."""
        maps = self.label_maps()
        for fine, coarse in zip(maps, maps[1:]):
            pairs = np.unique(np.stack([fine.ravel(), coarse.ravel()]), axis=1)
            if np.unique(pairs[0]).size != pairs.shape[1]:
                return False
        return True

    def masks(self, level: int) -> list[dict[str, Any]]:
        """Per-segment records at ``level``, like SAM's automatic mask generator.

        Each record: ``id``, ``level``, ``segmentation`` (bool ``H×W``), ``area``
        (pixels), ``bbox`` ``[x, y, w, h]``, ``parent`` (id at level+1, or None at the
        top), ``children`` (ids at level−1; empty at level 0).
        """
        lab = self.label_map(level)
        parent_of = self.parents[level] if level < len(self.parents) else None
        child_level = self.label_map(level - 1) if level > 0 else None
        records = []
        for sid in np.unique(lab):
            m = lab == sid
            ys, xs = np.nonzero(m)
            children: list[int] = []
            if child_level is not None:
                children = sorted(int(c) for c in np.unique(child_level[m]))
            records.append({
                "id": int(sid), "level": level, "segmentation": m, "area": int(m.sum()),
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
                "parent": int(parent_of[sid]) if parent_of is not None else None,
                "children": children,
            })
        return records

    def boundary_map(self) -> np.ndarray:
        """Ultrametric contour map, ``H×W`` int8: each boundary pixel holds the coarsest
        level at which it is still a boundary (0 = only between superpixels, up to
        ``num_levels − 1``); ``-1`` marks pixels on no boundary."""
        out = np.full(self.superpixels.shape, -1, dtype=np.int8)
        for s, lab in enumerate(self.label_maps()):
            out[label_boundaries(lab)] = s
        return out

    def plot(self, *, levels: Sequence[int] | None = None, figsize_per_panel: float = 3.0):
        """A matplotlib figure: the image (if any) and each level's segments, drawn as
        segment-mean colours (or random colours without an image) with boundaries."""
        import matplotlib.pyplot as plt

        levels = list(range(self.num_levels)) if levels is None else list(levels)
        panels = ([("image", None)] if self.image is not None else []) + [(f"level {s}", s) for s in levels]
        fig, axes = plt.subplots(1, len(panels), figsize=(figsize_per_panel * len(panels), figsize_per_panel))
        axes = np.atleast_1d(axes)
        for ax, (title, s) in zip(axes, panels):
            if s is None:
                ax.imshow(self.image)
            else:
                lab = self.label_map(s)
                ax.imshow(_segment_colors(lab, self.image))
                ax.set_title(f"{title}: {np.unique(lab).size} segments", fontsize=9)
            if s is None:
                ax.set_title(title, fontsize=9)
            ax.axis("off")
        fig.tight_layout()
        return fig

    # ------------------------------------------------------------ building
    @classmethod
    def from_outputs(cls, outputs: dict[str, torch.Tensor], superpixels: torch.Tensor, *,
                     vanished: str = "inherit", on_grid: bool = True,
                     images: np.ndarray | None = None) -> list["Hierarchy"]:
        """Build one hierarchy per image from ``model.forward_features`` outputs.

        Args:
            outputs: dict with ``logit1..logit4`` (and ``padding_mask1``).
            superpixels: ``B×H×W`` full-resolution labels given to the model.
            vanished: ``"inherit"`` or ``"own_token"`` (see module docstring).
            on_grid: True when the model read labels on the 8-px grid (classification
                and pre-training variants); False for the ``seg`` variants.
            images: optional ``B×H×W×3`` uint8 images kept for pictures.
        """
        if vanished not in ("inherit", "own_token"):
            raise ValueError(f"vanished must be 'inherit' or 'own_token', got {vanished!r}")
        logits = [outputs[f"logit{k}"] for k in range(1, 5) if f"logit{k}" in outputs]
        if not logits:
            raise ValueError("outputs hold no pooling logits (logit1..); pass model.forward_features(...)")
        sp = superpixels.detach().cpu()
        if sp.ndim != 3 or sp.shape[0] != logits[0].shape[0]:
            raise ValueError(f"superpixels must be B×H×W with B={logits[0].shape[0]}, got {tuple(sp.shape)}")
        n1 = logits[0].shape[1]
        if int(sp.max()) >= n1:
            raise ValueError(f"superpixel ids go up to {int(sp.max())} but the model saw only {n1} tokens; "
                             "pass the same superpixels that went into the model")
        step = [lg.argmax(-1).cpu().numpy() for lg in logits]
        level1 = compose_assignments([lg.detach().cpu() for lg in logits])[0].numpy()
        out = []
        for b in range(sp.shape[0]):
            spb = sp[b].numpy().astype(np.int64)
            parent0 = level1[b].copy()
            present = np.bincount(spb.ravel(), minlength=n1) > 0
            if on_grid and vanished == "inherit":
                owner = spb[::PATCH, ::PATCH]
                has_token = np.bincount(owner.ravel(), minlength=n1) > 0
                lost = present & ~has_token
                if lost.any():
                    cell_owner = np.repeat(np.repeat(owner, PATCH, 0), PATCH, 1)[: spb.shape[0], : spb.shape[1]]
                    sel = lost[spb]
                    pair = spb[sel] * n1 + cell_owner[sel]
                    counts = np.bincount(pair, minlength=n1 * n1).reshape(n1, n1)
                    for v in np.nonzero(lost)[0]:
                        parent0[v] = level1[b][int(np.argmax(counts[v]))]
            parent0 = np.where(present, parent0, -1)
            parents = [parent0] + [step[s][b].astype(np.int64) for s in range(1, len(step))]
            img = None if images is None else np.asarray(images[b])
            out.append(cls(superpixels=spb, parents=parents, image=img))
        return out


def _segment_colors(labels: np.ndarray, image: np.ndarray | None) -> np.ndarray:
    """``H×W×3`` uint8: segment-mean colours of ``image`` (random colours without one),
    with boundaries drawn in white."""
    ids, inv = np.unique(labels, return_inverse=True)
    inv = inv.reshape(labels.shape)
    if image is not None:
        flat = image.reshape(-1, 3).astype(np.float64)
        sums = np.zeros((ids.size, 3))
        np.add.at(sums, inv.ravel(), flat)
        colors = (sums / np.bincount(inv.ravel(), minlength=ids.size)[:, None]).astype(np.uint8)
    else:
        colors = np.random.default_rng(0).integers(0, 255, size=(ids.size, 3), dtype=np.uint8)
    out = colors[inv]
    out[label_boundaries(labels)] = 255
    return out


def _as_uint8_batch(images) -> np.ndarray:
    """Accept ``H×W×3`` / ``B×H×W×3`` uint8 arrays, a list of them, or ``B×3×H×W`` /
    ``3×H×W`` tensors (uint8, or float in [0, 1]); return ``B×H×W×3`` uint8."""
    if isinstance(images, (list, tuple)):
        arrs = [_as_uint8_batch(im)[0] for im in images]
        if len({a.shape for a in arrs}) != 1:
            raise ValueError("images in one call must share a size; call segment() per image or resize them")
        return np.stack(arrs)
    if torch.is_tensor(images):
        t = images.detach().cpu()
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or t.shape[1] != 3:
            raise ValueError(f"image tensors must be B×3×H×W or 3×H×W RGB, got {tuple(images.shape)}")
        if t.is_floating_point():
            if not torch.isfinite(t).all():
                raise ValueError("images contain NaN or inf values")
            t = (t.clamp(0, 1) * 255).round().to(torch.uint8)
        return t.permute(0, 2, 3, 1).numpy().astype(np.uint8)
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"image arrays must be H×W×3 or B×H×W×3 RGB, got shape {arr.shape}; "
                         "convert grayscale/RGBA to RGB")
    if arr.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {arr.dtype}")
    return arr


@torch.no_grad()
def segment(model: torch.nn.Module, images, superpixels: torch.Tensor | np.ndarray | None = None, *,
            method: str = "seeds", n_segments: int = 196, vanished: str | None = None):
    """Segment images into a hierarchy with one forward pass.

    Args:
        model: a CAST model (any variant), in eval mode.
        images: ``H×W×3`` uint8 RGB, a batch ``B×H×W×3``, a list of equal-size arrays,
            or ``(B×)3×H×W`` tensors (uint8 or float in [0, 1]). H and W must be
            multiples of 8 (the CLI resizes arbitrary images for you).
        superpixels: optional ``(B×)H×W`` labels; computed with ``method`` and
            ``n_segments`` when omitted.
        vanished: rule for superpixels without a token; default ``"inherit"`` for
            masked models and ``"own_token"`` for ``mask_padded_tokens=False``.

    Returns:
        A :class:`Hierarchy` for a single image, else a list of them.
    """
    single = (isinstance(images, np.ndarray) and images.ndim == 3) or (torch.is_tensor(images) and images.ndim == 3)
    batch = _as_uint8_batch(images)
    if superpixels is None:
        from castvit.superpixels import compute_superpixels

        sp = compute_superpixels(batch, method=method, n_segments=n_segments)
    else:
        sp = torch.as_tensor(np.asarray(superpixels) if not torch.is_tensor(superpixels) else superpixels)
        if sp.ndim == 2:
            sp = sp[None]
    device = next(model.parameters()).device
    x = normalize_images(torch.from_numpy(batch).permute(0, 3, 1, 2)).to(device)
    feats = model.forward_features(x, sp.to(device))
    if vanished is None:
        vanished = "inherit" if getattr(model, "mask_padded_tokens", True) else "own_token"
    hs = Hierarchy.from_outputs(feats, sp, vanished=vanished, on_grid=getattr(model, "task", "cls") != "seg",
                                images=batch)
    return hs[0] if single else hs
