"""The segmentation hierarchy of one image: image → superpixels → model → here.

Level 0 is the superpixel map; level s (1..4) groups level s−1 by the argmax of the
s-th graph pooling's logits (SPEC §5). Each level's map is a function of the
previous one, so the hierarchy is strictly nested.

**Resolution.** :func:`segment` accepts images of any size. Superpixels are computed
(or given) at the image's own resolution and every output is at that resolution.
The model itself sees a *working* copy: with ``size=None`` the image rounded to the
nearest multiples of 8 (unchanged when already so), with ``size=N`` the image
resized to about ``N×N`` pixels of area, aspect ratio kept and each side rounded to
a multiple of 8 (:func:`working_size`). No padding is ever added — a padded border
would become superpixels and segments of its own; rounding instead changes the
aspect ratio by at most 4 px per side. The working superpixel map is the full one
sampled at the working pixels' centres, so a token stands for the same superpixel
at both resolutions.

**Superpixels without a token.** Classification and pre-training models read labels
on the 8-px grid (the top-left pixel of every 8×8 working cell), so a small
superpixel can own no cell and get no token of its own. With ``vanished="inherit"``
(castvit's default) such a superpixel joins, as a whole, the segment of the token
whose cells hold most of its pixels (ties to the lowest token id).
``vanished="own_token"`` uses the authors' rule instead: the superpixel takes the
argmax of its own padded token (a token built from nothing), which reproduces their
pictures exactly; superpixels that the resizing dropped entirely have no padded
token either and always inherit.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from castvit.models.graph_pool import compose_assignments
from castvit.ops import label_boundaries, normalize_images

PATCH = 8
MIN_SIDE = 16
NPZ_FORMAT = "castvit-hierarchy/1"


@dataclass
class Hierarchy:
    """Nested segmentation of one image.

    Attributes:
        superpixels: ``H×W`` int64 level-0 ids.
        parents: ``parents[s][i]`` is the level-(s+1) segment that contains level-s
            segment ``i`` (``-1`` for level-0 ids absent from the map).
        image: optional ``H×W×3`` uint8 RGB image, used for pictures.
        meta: how the hierarchy was made (working size, superpixel method, …).
    """

    superpixels: np.ndarray
    parents: list[np.ndarray]
    image: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_levels(self) -> int:
        """Number of levels including level 0 (the superpixels)."""
        return len(self.parents) + 1

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of every map."""
        return tuple(self.superpixels.shape)

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
        """``H×W`` int64 segment ids at ``level``. Ids are the model's cluster ids, so
        they need not be contiguous; every pixel has one (no ``-1``)."""
        return self.segment_of(level)[self.superpixels]

    def label_maps(self) -> list[np.ndarray]:
        return [self.label_map(s) for s in range(self.num_levels)]

    def num_segments(self, level: int) -> int:
        return int(np.count_nonzero(np.bincount(self.label_map(level).ravel())))

    def is_nested(self) -> bool:
        """True when every segment lies inside one segment of the next level."""
        maps = self.label_maps()
        for fine, coarse in zip(maps, maps[1:]):
            # nested iff "coarse label of a fine segment" is a function: write one
            # coarse label per fine id, then every pixel must agree with it
            of_fine = np.zeros(int(fine.max()) + 1, dtype=coarse.dtype)
            of_fine[fine.ravel()] = coarse.ravel()
            if not np.array_equal(of_fine[fine], coarse):
                return False
        return True

    def ancestors(self, level: int, segment_id: int) -> list[int]:
        """Ids of the segments containing ``segment_id`` at levels ``level+1 .. top``."""
        self._check_level(level)
        out, sid = [], int(segment_id)
        for s in range(level, len(self.parents)):
            sid = int(self.parents[s][sid])
            out.append(sid)
        return out

    def segments(self, level: int) -> list[dict[str, Any]]:
        """Per-segment records at ``level`` without pixel masks (cheap at any size).

        Each record: ``id``, ``level``, ``area`` (pixels), ``bbox`` ``[x, y, w, h]``
        (pixels, SAM's XYWH), ``parent`` (id at level+1, or None at the top),
        ``children`` (sorted ids at level−1; empty at level 0). Sorted by id.
        """
        from scipy import ndimage

        self._check_level(level)
        lab = self.label_map(level)
        area = np.bincount(lab.ravel())
        boxes = ndimage.find_objects(lab + 1)
        parent_of = self.parents[level] if level < len(self.parents) else None
        children: dict[int, list[int]] = {}
        if level > 0:
            below = self.segment_of(level - 1)
            below_ids = np.unique(below[self.superpixels])
            for c in below_ids.tolist():
                children.setdefault(int(self.parents[level - 1][c]), []).append(int(c))
        records = []
        for sid in np.nonzero(area)[0].tolist():
            ys, xs = boxes[sid]
            records.append({
                "id": sid, "level": level, "area": int(area[sid]),
                "bbox": [xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start],
                "parent": int(parent_of[sid]) if parent_of is not None else None,
                "children": children.get(sid, []),
            })
        return records

    def masks(self, level: int) -> list[dict[str, Any]]:
        """Per-segment records at ``level``, like SAM's automatic mask generator.

        Each record: ``id``, ``level``, ``segmentation`` (bool ``H×W``), ``area``
        (pixels), ``bbox`` ``[x, y, w, h]``, ``parent`` (id at level+1, or None at the
        top), ``children`` (ids at level−1; empty at level 0).
        """
        lab = self.label_map(level)
        records = self.segments(level)
        for rec in records:
            rec["segmentation"] = lab == rec["id"]
        return records

    def boundary_map(self) -> np.ndarray:
        """Ultrametric contour map, ``H×W`` int8: each boundary pixel holds the coarsest
        level at which it is still a boundary (0 = only between superpixels, up to
        ``num_levels − 1``); ``-1`` marks pixels on no boundary. Thresholding it at
        ``k`` (``>= k``) gives the boundaries of level ``k``."""
        out = np.full(self.superpixels.shape, -1, dtype=np.int8)
        for s, lab in enumerate(self.label_maps()):
            out[label_boundaries(lab)] = s
        return out

    def segment_colors(self, level: int) -> dict[int, tuple[int, int, int]]:
        """Mean RGB colour of each segment at ``level`` (needs ``image``)."""
        if self.image is None:
            raise ValueError("this hierarchy has no image; pass image= to get segment colours")
        lab = self.label_map(level)
        ids, colors = _mean_colors(lab, self.image)
        return {int(i): tuple(int(v) for v in c) for i, c in zip(ids, colors)}

    def overlay(self, level: int, *, boundary_color: Sequence[int] = (255, 255, 255),
                thickness: int | None = None) -> np.ndarray:
        """``H×W×3`` uint8 picture of ``level``: segment-mean colours of the image (random
        colours without one) with boundaries drawn ``thickness`` px wide (default: 1 px
        per 800 px of the longer side, at least 1)."""
        self._check_level(level)
        lab = self.label_map(level)
        if thickness is None:
            thickness = max(1, round(max(lab.shape) / 800))
        return _segment_colors(lab, self.image, boundary_color=boundary_color, thickness=thickness)

    def plot(self, *, levels: Sequence[int] | None = None, figsize_per_panel: float = 3.0):
        """A matplotlib figure: the image (if any) and each level's segments, drawn as
        segment-mean colours (or random colours without an image) with boundaries."""
        import matplotlib.pyplot as plt

        levels = list(range(self.num_levels)) if levels is None else list(levels)
        for s in levels:
            self._check_level(s)
        panels = ([("image", None)] if self.image is not None else []) + [(f"level {s}", s) for s in levels]
        h, w = self.shape
        aspect = h / max(w, 1)
        fig, axes = plt.subplots(1, len(panels), squeeze=False,
                                 figsize=(figsize_per_panel * len(panels), figsize_per_panel * max(aspect, 0.3) + 0.4))
        for ax, (title, s) in zip(axes[0], panels):
            if s is None:
                ax.imshow(self.image)
                ax.set_title(title, fontsize=9)
            else:
                ax.imshow(self.overlay(s))
                ax.set_title(f"{title}: {self.num_segments(s)} segments", fontsize=9)
            ax.axis("off")
        fig.tight_layout()
        return fig

    # ------------------------------------------------------------ saving
    def save_npz(self, path: str | os.PathLike, *, compressed: bool = True) -> None:
        """Write every array to ``path`` (.npz): ``superpixels``, ``labels``
        (``levels×H×W``), ``parents_0..``, ``boundary_map``, ``image`` (if any) and
        ``meta`` (JSON). Read back with :meth:`load_npz`."""
        import json

        arrays: dict[str, np.ndarray] = {
            "format": np.array(NPZ_FORMAT),
            "superpixels": self.superpixels.astype(np.int32),
            "labels": np.stack(self.label_maps()).astype(np.int32),
            "boundary_map": self.boundary_map(),
            "meta": np.array(json.dumps(self.meta, default=_json_default)),
        }
        for s, p in enumerate(self.parents):
            arrays[f"parents_{s}"] = np.asarray(p, dtype=np.int32)
        if self.image is not None:
            arrays["image"] = np.asarray(self.image, dtype=np.uint8)
        (np.savez_compressed if compressed else np.savez)(path, **arrays)

    @classmethod
    def load_npz(cls, path: str | os.PathLike) -> "Hierarchy":
        """Read a hierarchy written by :meth:`save_npz`."""
        import json

        with np.load(path, allow_pickle=False) as z:
            if "format" not in z or str(z["format"]) != NPZ_FORMAT:
                raise ValueError(f"{str(path)!r} is not a castvit hierarchy .npz (expected format {NPZ_FORMAT})")
            n = sum(1 for k in z.files if k.startswith("parents_"))
            return cls(superpixels=z["superpixels"].astype(np.int64),
                       parents=[z[f"parents_{s}"].astype(np.int64) for s in range(n)],
                       image=z["image"] if "image" in z.files else None,
                       meta=json.loads(str(z["meta"])))

    # ------------------------------------------------------------ building
    @classmethod
    def from_outputs(cls, outputs: dict[str, torch.Tensor], superpixels: torch.Tensor, *,
                     vanished: str = "inherit", on_grid: bool = True,
                     images: Sequence[np.ndarray] | np.ndarray | None = None,
                     full_superpixels: Sequence[np.ndarray] | None = None) -> list["Hierarchy"]:
        """Build one hierarchy per image from ``model.forward_features`` outputs.

        Args:
            outputs: dict with ``logit1..logit4`` (and ``padding_mask1``).
            superpixels: ``B×h×w`` labels given to the model.
            vanished: ``"inherit"`` or ``"own_token"`` (see module docstring).
            on_grid: True when the model read labels on the 8-px grid (classification
                and pre-training variants); False for the ``seg`` variants.
            images: optional ``B`` images (``H×W×3`` uint8) kept for pictures.
            full_superpixels: optional ``B`` label maps (``H×W`` each) at the images'
                own resolution, of which ``superpixels`` are the nearest samples at
                the working pixel centres; the hierarchies are then built at that
                resolution. Default: ``superpixels`` themselves.
        """
        if vanished not in ("inherit", "own_token"):
            raise ValueError(f"vanished must be 'inherit' or 'own_token', got {vanished!r}")
        logits = [outputs[f"logit{k}"] for k in range(1, 5) if f"logit{k}" in outputs]
        if not logits:
            raise ValueError("outputs hold no pooling logits (logit1..); pass model.forward_features(...)")
        sp = superpixels.detach().cpu() if torch.is_tensor(superpixels) else torch.as_tensor(superpixels)
        if sp.ndim != 3 or sp.shape[0] != logits[0].shape[0]:
            raise ValueError(f"superpixels must be B×H×W with B={logits[0].shape[0]}, got {tuple(sp.shape)}")
        if full_superpixels is not None and len(full_superpixels) != sp.shape[0]:
            raise ValueError(f"full_superpixels must hold {sp.shape[0]} maps, got {len(full_superpixels)}")
        n1 = logits[0].shape[1]
        # the model makes one token per id it reads (on the 8-px grid, unless seg)
        read = sp[:, ::PATCH, ::PATCH] if on_grid else sp
        if int(read.max()) >= n1:
            raise ValueError(f"superpixel ids go up to {int(read.max())} but the model saw only {n1} tokens; "
                             "pass the same superpixels that went into the model")
        step = [lg.argmax(-1).cpu().numpy() for lg in logits]
        level1 = compose_assignments([lg.detach().cpu() for lg in logits])[0].numpy()
        out = []
        for b in range(sp.shape[0]):
            work = sp[b].numpy().astype(np.int64)
            full = work if full_superpixels is None else np.asarray(full_superpixels[b]).astype(np.int64)
            parent0 = _level0_parents(full, work, level1[b], n1, vanished=vanished, on_grid=on_grid)
            parents = [parent0] + [step[s][b].astype(np.int64) for s in range(1, len(step))]
            img = None if images is None else np.asarray(images[b])
            out.append(cls(superpixels=full, parents=parents, image=img))
        return out


def _level0_parents(full: np.ndarray, work: np.ndarray, level1: np.ndarray, n1: int, *,
                    vanished: str, on_grid: bool) -> np.ndarray:
    """Level-1 segment of every level-0 id of ``full`` (``-1`` for absent ids).

    ``work`` is the ``h×w`` map the model saw (nearest samples of ``full``) and
    ``level1[i]`` the level-1 segment of token ``i``. Ids without a token inherit
    from the tokens whose cells hold most of their pixels.
    """
    owner = work[::PATCH, ::PATCH] if on_grid else work
    n_ids = max(int(full.max()) + 1, n1)
    present = np.bincount(full.ravel(), minlength=n_ids) > 0
    has_token = np.zeros(n_ids, dtype=bool)
    has_token[:n1] = np.bincount(owner.ravel(), minlength=n1)[:n1] > 0
    parent0 = np.full(n_ids, -1, dtype=np.int64)
    parent0[:n1] = level1
    if vanished == "inherit":
        lost = present & ~has_token
    else:  # the authors' padded tokens exist only for ids the model saw
        in_work = np.zeros(n_ids, dtype=bool)
        in_work[:n1] = np.bincount(work.ravel(), minlength=n1)[:n1] > 0
        lost = present & ~in_work
    if lost.any():
        (hf, wf), (hw, ww) = full.shape, work.shape
        cell = PATCH if on_grid else 1
        # full pixel y lies in working pixel floor(y·h/H), whose cell is that // 8
        rows = (np.arange(hf) * hw // hf) // cell
        cols = (np.arange(wf) * ww // wf) // cell
        sel = lost[full]
        ids = full[sel]
        owners = owner[rows[:, None], cols[None, :]][sel]
        pairs, counts = np.unique(ids * n1 + owners, return_counts=True)
        pid, pown = pairs // n1, pairs % n1
        # per id: the owner with most pixels, ties to the lowest owner id
        order = np.lexsort((pown, -counts, pid))
        first = np.ones(order.size, dtype=bool)
        first[1:] = pid[order][1:] != pid[order][:-1]
        best = order[first]
        parent0[pid[best]] = level1[pown[best]]
    return np.where(present, parent0, -1)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, index)`` like ``np.unique(labels, return_inverse=True)`` for non-negative
    ids, in linear time: ``ids[index] == labels``."""
    present = np.bincount(labels.ravel()) > 0
    ids = np.nonzero(present)[0]
    rank = np.cumsum(present) - 1
    return ids, rank[labels]


def _mean_colors(labels: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, ``K×3`` uint8 mean colours) of the segments of ``labels``."""
    ids, inv = _compact(labels)
    inv = inv.ravel()
    count = np.bincount(inv, minlength=ids.size).astype(np.float64)
    flat = image.reshape(-1, 3)
    sums = np.stack([np.bincount(inv, weights=flat[:, c], minlength=ids.size) for c in range(3)], 1)
    return ids, np.round(sums / count[:, None]).astype(np.uint8)


def _thicken(edge: np.ndarray, thickness: int) -> np.ndarray:
    """Grow a boundary mask to ``thickness`` px (down and right, like the edge rule)."""
    out = edge.copy()
    for d in range(1, thickness):
        out[d:, :] |= edge[:-d, :]
        out[:, d:] |= edge[:, :-d]
    return out


def _segment_colors(labels: np.ndarray, image: np.ndarray | None, *, boundary_color: Sequence[int] = (255, 255, 255),
                    thickness: int = 1) -> np.ndarray:
    """``H×W×3`` uint8: segment-mean colours of ``image`` (random colours without one),
    with boundaries drawn in ``boundary_color``."""
    ids, inv = _compact(labels)
    if image is not None:
        _, colors = _mean_colors(labels, image)
    else:
        colors = np.random.default_rng(0).integers(0, 255, size=(ids.size, 3), dtype=np.uint8)
    out = colors[inv]
    out[_thicken(label_boundaries(labels), thickness)] = np.asarray(boundary_color, dtype=np.uint8)
    return out


def working_size(height: int, width: int, size: int | None = None) -> tuple[int, int]:
    """The ``(h, w)`` a model sees for an ``height×width`` image: multiples of 8.

    ``size=None`` keeps the resolution (each side rounded to the nearest multiple
    of 8); ``size=N`` resizes to about ``N·N`` pixels of area, aspect ratio kept.
    Sides are at least 8.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}×{width}")
    scale = 1.0 if size is None else size / math.sqrt(height * width)
    return (max(PATCH, int(height * scale / PATCH + 0.5) * PATCH),
            max(PATCH, int(width * scale / PATCH + 0.5) * PATCH))


def auto_size(model: torch.nn.Module) -> int:
    """The working-area side ``size="auto"`` stands for: what the model was built for
    (``√(h·w)`` of its ``img_size``: 224 for the registered classification models),
    512 for segmentation models (their fine-tuning crops)."""
    if getattr(model, "task", "cls") == "seg":
        return 512
    h, w = getattr(model, "img_size", (224, 224))
    return int(round(math.sqrt(h * w)))


def _resolve_size(model: torch.nn.Module, size: int | str | None) -> int | None:
    if size == "auto":
        return auto_size(model)
    if size is not None and (isinstance(size, str) or size < PATCH):
        raise ValueError(f"size must be None, 'auto' or a side of at least {PATCH} px, got {size!r}")
    return size


def min_image_pixels(model: torch.nn.Module) -> int:
    """Fewest pixels an image needs for ``model``: one 8×8 cell for each superpixel
    of the first stage's minimum (4096 = 64×64 for 64 clusters)."""
    return int(getattr(model, "min_superpixels", 1)) * PATCH * PATCH


def check_image_size(model: torch.nn.Module, height: int, width: int) -> None:
    """Raise ``ValueError`` naming the minimum when an image is too small for ``model``."""
    need = min_image_pixels(model)
    side = int(math.ceil(math.sqrt(need)))
    if height * width < need or min(height, width) < MIN_SIDE:
        name = getattr(model, "castvit_name", type(model).__name__)
        raise ValueError(
            f"image is {width}×{height} px (W×H), too small for {name}: it needs at least {need} pixels "
            f"(e.g. {side}×{side}) and sides of at least {MIN_SIDE} px, because its first stage pools "
            f"{getattr(model, 'min_superpixels', '?')} superpixels that each need an {PATCH}×{PATCH} cell")


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``H×W×3`` uint8 → ``height×width×3`` uint8, bilinear with antialiasing (Pillow)."""
    if image.shape[:2] == (height, width):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def sample_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest sample of an ``H×W`` label map at the centres of a ``height×width`` grid."""
    hf, wf = labels.shape
    if (hf, wf) == (height, width):
        return labels
    rows = ((np.arange(height) + 0.5) * hf / height).astype(np.int64).clip(0, hf - 1)
    cols = ((np.arange(width) + 0.5) * wf / width).astype(np.int64).clip(0, wf - 1)
    return labels[rows[:, None], cols[None, :]]


def _as_uint8_list(images) -> list[np.ndarray]:
    """Accept ``H×W×3`` / ``B×H×W×3`` uint8 arrays, a list of ``H×W×3`` arrays (sizes may
    differ), or ``B×3×H×W`` / ``3×H×W`` tensors (uint8, or float in [0, 1]); return a
    list of ``H×W×3`` uint8 arrays."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no images given")
        out = []
        for im in images:
            arrs = _as_uint8_list(im)
            if len(arrs) != 1:
                raise ValueError("a list of images must hold single images (H×W×3), not batches")
            out.append(arrs[0])
        return out
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
        return list(t.permute(0, 2, 3, 1).numpy().astype(np.uint8))
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"image arrays must be H×W×3 or B×H×W×3 RGB, got shape {arr.shape}; "
                         "convert grayscale/RGBA to RGB")
    if arr.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {arr.dtype}")
    return list(arr)


def default_n_segments(model: torch.nn.Module, working_hw: tuple[int, int]) -> int:
    """Superpixels per image the model was trained with: 196 for classification and
    pre-training models (SPEC §6), ``h·w/256`` of the working size for segmentation
    models (at least their first stage's cluster count)."""
    if getattr(model, "task", "cls") == "seg":
        from castvit.superpixels import segmentation_n_segments

        return max(segmentation_n_segments(*working_hw), int(getattr(model, "min_superpixels", 0)))
    return 196


def superpixel_options(model: torch.nn.Module, method: str) -> dict[str, Any]:
    """Backend settings matching the model's training recipe (SPEC §6): SEEDS with 15
    bins and 20 iterations for MoCo-convention models (pre-training, linear probe,
    visualisation), 5 bins and 15 iterations for DeiT-convention and segmentation
    models. Nothing extra for SLIC."""
    if method != "seeds":
        return {}
    from dataclasses import asdict

    from castvit.superpixels import FINETUNE_SEEDS, PRETRAIN_SEEDS

    finetuned = getattr(model, "convention", "moco") == "deit" or getattr(model, "task", "cls") == "seg"
    opts = asdict(FINETUNE_SEEDS if finetuned else PRETRAIN_SEEDS)
    del opts["n_segments"]
    return opts


def compute_image_superpixels(model: torch.nn.Module, image: np.ndarray, *, method: str = "seeds",
                              n_segments: int | None = None, size: int | str | None = None) -> np.ndarray:
    """``H×W`` int64 superpixels of one image as :func:`segment` computes them: at the
    image's resolution, ``n_segments`` defaulting to :func:`default_n_segments` of its
    working size, with the model's :func:`superpixel_options`."""
    from castvit.superpixels import compute_superpixels_single

    size = _resolve_size(model, size)
    n = n_segments if n_segments is not None else default_n_segments(model, working_size(*image.shape[:2], size))
    return np.asarray(compute_superpixels_single(image, method=method, n_segments=n,
                                                 **superpixel_options(model, method))).astype(np.int64)


@torch.no_grad()
def segment(model: torch.nn.Module, images, superpixels: torch.Tensor | np.ndarray | Sequence | None = None, *,
            method: str = "seeds", n_segments: int | None = None, vanished: str | None = None,
            size: int | str | None = None):
    """Segment images into a hierarchy with one forward pass.

    Args:
        model: a CAST model (any variant), in eval mode.
        images: ``H×W×3`` uint8 RGB, a batch ``B×H×W×3``, a list of arrays (sizes may
            differ), or ``(B×)3×H×W`` tensors (uint8 or float in [0, 1]). Any size of at
            least :func:`min_image_pixels` pixels.
        superpixels: optional ``(B×)H×W`` labels (or a list) at the images' resolution;
            computed with ``method`` and ``n_segments`` when omitted.
        n_segments: superpixels per image; default :func:`default_n_segments` (196
            for the classification models).
        vanished: rule for superpixels without a token; default ``"inherit"`` for
            masked models and ``"own_token"`` for ``mask_padded_tokens=False``.
        size: the model's working resolution (see the module docstring): ``None``
            runs at the image's own resolution (rounded to multiples of 8); ``N``
            resizes to about ``N×N`` pixels of area; ``"auto"`` picks
            :func:`auto_size` (224 for the classification models, as the CLI does).
            Outputs are at the image's resolution either way.

    Returns:
        A :class:`Hierarchy` for a single image, else a list of them (input order).
    """
    single = (isinstance(images, np.ndarray) and images.ndim == 3) or (torch.is_tensor(images) and images.ndim == 3)
    imgs = _as_uint8_list(images)
    size = _resolve_size(model, size)
    for im in imgs:
        check_image_size(model, *im.shape[:2])
    works = [working_size(*im.shape[:2], size) for im in imgs]
    if superpixels is None:
        sps = [compute_image_superpixels(model, im, method=method, n_segments=n_segments, size=size) for im in imgs]
    else:
        if torch.is_tensor(superpixels):
            superpixels = superpixels.detach().cpu().numpy()
        if isinstance(superpixels, np.ndarray) and superpixels.ndim == 2:
            superpixels = superpixels[None]
        sps = [np.asarray(s).astype(np.int64) for s in superpixels]
        if len(sps) != len(imgs):
            raise ValueError(f"got {len(sps)} superpixel maps for {len(imgs)} images")
        for i, (s, im) in enumerate(zip(sps, imgs)):
            if s.shape != im.shape[:2]:
                raise ValueError(f"superpixel map {i} is {s.shape}, image {i} is {im.shape[:2]}; they must match")
            if s.size and s.min() < 0:
                raise ValueError("superpixel labels must be >= 0; relabel them (castvit.ops.relabel_contiguous)")
    if vanished is None:
        vanished = "inherit" if getattr(model, "mask_padded_tokens", True) else "own_token"
    on_grid = getattr(model, "task", "cls") != "seg"
    device = next(model.parameters()).device
    groups: dict[tuple[int, int], list[int]] = {}
    for i, wk in enumerate(works):
        groups.setdefault(wk, []).append(i)
    result: list[Hierarchy | None] = [None] * len(imgs)
    for (h, w), idx in groups.items():
        work_imgs = np.stack([resize_image(imgs[i], h, w) for i in idx])
        work_sp = torch.from_numpy(np.stack([sample_labels(sps[i], h, w) for i in idx]))
        x = normalize_images(torch.from_numpy(work_imgs).permute(0, 3, 1, 2)).to(device)
        feats = model.forward_features(x, work_sp.to(device))
        hs = Hierarchy.from_outputs(feats, work_sp, vanished=vanished, on_grid=on_grid,
                                    images=[imgs[i] for i in idx], full_superpixels=[sps[i] for i in idx])
        for i, hier in zip(idx, hs):
            hier.meta.update(working_size=[h, w], superpixel_method=method if superpixels is None else "given",
                             n_superpixels=int(np.unique(sps[i]).size), vanished=vanished,
                             model=getattr(model, "castvit_name", type(model).__name__))
            result[i] = hier
    return result[0] if single else result
