"""The segmentation hierarchy of one image: the data structure, nothing else.

Level 0 is the superpixel map; level s (1..4) groups level s−1 by the argmax of the
s-th graph pooling's logits (SPEC §5). Each level's map is a function of the
previous one, so the hierarchy is strictly nested.

How an image becomes a hierarchy (working size, superpixel settings) is
:mod:`castvit.inference`; pictures of a hierarchy are :mod:`castvit.viz`.

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

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from castvit.models.graph_pool import compose_assignments
from castvit.ops import json_default, segment_mean_colors

PATCH = 8
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
        classes: optional ``H×W`` semantic class ids, when the model is a semantic
            segmentation model (``segmenter_*``, ``spml_*``).
    """

    superpixels: np.ndarray
    parents: list[np.ndarray]
    image: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    classes: np.ndarray | None = None  # H×W semantic class ids, from a semantic segmentation model

    def __repr__(self) -> str:
        h, w = self.shape
        segs = "/".join(str(self.num_segments(s)) for s in range(self.num_levels))
        extra = (", with image" if self.image is not None else "") + (", with classes" if self.classes is not None
                                                                      else "")
        return f"Hierarchy({w}×{h} px, {self.num_levels} levels, segments per level {segs}{extra})"

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
        For several levels, :meth:`segment_tables` does them all in one pass.
        """
        self._check_level(level)
        return self.segment_tables(upto=level)[level].records()

    def segment_tables(self, *, colors: bool = False, upto: int | None = None) -> list["SegmentTable"]:
        """Every level's segment statistics (:class:`SegmentTable`), levels ``0..upto``
        (default: all), from one pass over the pixels.

        Each level's map is a function of the superpixel map, so areas, bounding boxes
        and colour sums are gathered once per superpixel and summed up the hierarchy
        over the (few) ids; the results equal per-level computation on the label maps
        exactly. ``colors=True`` adds mean RGB colours (when the hierarchy has an image).
        """
        from scipy import ndimage

        top = self.num_levels - 1 if upto is None else upto
        self._check_level(top)
        sp = self.superpixels
        flat = sp.ravel()
        if flat.size and int(flat.min()) < 0:
            raise ValueError("superpixel ids must be >= 0")
        n0 = len(self.parents[0]) if self.parents else 0
        area0 = np.bincount(flat, minlength=n0)
        ids0 = np.flatnonzero(area0)
        # bounding boxes of the superpixels (x0, y0, x1, y1), end exclusive
        boxes = ndimage.find_objects(sp + 1)
        box0 = np.array([(boxes[i][1].start, boxes[i][0].start, boxes[i][1].stop, boxes[i][0].stop)
                         for i in ids0.tolist()], dtype=np.int64).reshape(-1, 4)
        sums0 = None
        if colors and self.image is not None:
            rgb = np.asarray(self.image).reshape(-1, 3)
            sums0 = np.stack([np.bincount(flat, weights=rgb[:, c], minlength=area0.size)[ids0] for c in range(3)], 1)
        area0 = area0[ids0]
        tables: list[SegmentTable] = []
        of = ids0.copy()  # level-s id of each present superpixel
        for s in range(top + 1):
            if s > 0:
                of = self.parents[s - 1][of]
            if of.size and int(of.min()) < 0:
                raise ValueError(f"level {s}: a superpixel present in the map has no segment (-1)")
            ids, inv = np.unique(of, return_inverse=True)
            k = ids.size
            area = np.bincount(inv, weights=area0, minlength=k).astype(np.int64)
            lo = np.full((k, 2), np.iinfo(np.int64).max, dtype=np.int64)
            hi = np.zeros((k, 2), dtype=np.int64)
            np.minimum.at(lo, inv, box0[:, :2])
            np.maximum.at(hi, inv, box0[:, 2:])
            color = None
            if sums0 is not None:
                sums = np.stack([np.bincount(inv, weights=sums0[:, c], minlength=k) for c in range(3)], 1)
                color = np.round(sums / area[:, None].astype(np.float64)).astype(np.uint8)
            if s > 0:
                below = tables[-1].ids
                up = np.searchsorted(ids, self.parents[s - 1][below])
                child_ids = below[np.argsort(up, kind="stable")]
                child_ptr = np.concatenate([[0], np.cumsum(np.bincount(up, minlength=k))])
            else:
                child_ids, child_ptr = np.zeros(0, dtype=np.int64), np.zeros(k + 1, dtype=np.int64)
            tables.append(SegmentTable(
                level=s, ids=ids, area=area, bbox=np.concatenate([lo, hi - lo], 1),
                parent=np.asarray(self.parents[s])[ids].astype(np.int64) if s < len(self.parents) else None,
                child_ids=child_ids.astype(np.int64), child_ptr=child_ptr.astype(np.int64), color=color))
        return tables

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
        ``k`` (``>= k``) gives the boundaries of level ``k``. (A pixel is on a level's
        boundary when its right or lower neighbour is in another segment.)"""
        sp = self.superpixels
        of = [self.segment_of(s) for s in range(self.num_levels)]
        out = np.full(sp.shape, -1, dtype=np.int8)
        # only pixels on a superpixel boundary can be on a coarser one: look up the
        # pair of ids across each such edge in every level's table
        for a, b, view in ((sp[:, :-1], sp[:, 1:], out[:, :-1]), (sp[:-1, :], sp[1:, :], out[:-1, :])):
            edge = a != b
            ia, ib = a[edge], b[edge]
            lev = np.zeros(ia.size, dtype=np.int8)
            for s in range(1, self.num_levels):
                lev[of[s][ia] != of[s][ib]] = s
            view[edge] = np.maximum(view[edge], lev)
        return out

    def to_ucm(self) -> np.ndarray:
        """BSDS-style double-size UCM, ``(2H+1)×(2W+1)`` float64 in [0, 1]: each boundary
        holds the level at which it disappears over ``num_levels`` (1 for the top
        level's). Cut it back with ``castvit.ucm.ucm_to_levels(ucm,
        castvit.ucm.level_thresholds(h.num_levels))``; see :mod:`castvit.ucm`."""
        from castvit.ucm import levels_to_ucm

        return levels_to_ucm(self.label_maps())

    def segment_colors(self, level: int) -> dict[int, tuple[int, int, int]]:
        """Mean RGB colour of each segment at ``level`` (needs ``image``)."""
        if self.image is None:
            raise ValueError("this hierarchy has no image; pass image= to get segment colours")
        lab = self.label_map(level)
        ids, colors = segment_mean_colors(lab, self.image)
        return {int(i): tuple(int(v) for v in c) for i, c in zip(ids, colors)}

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
            "meta": np.array(json.dumps(self.meta, default=json_default)),
        }
        for s, p in enumerate(self.parents):
            arrays[f"parents_{s}"] = np.asarray(p, dtype=np.int32)
        if self.image is not None:
            arrays["image"] = np.asarray(self.image, dtype=np.uint8)
        if self.classes is not None:
            arrays["classes"] = np.asarray(self.classes, dtype=np.int32)
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
                       classes=z["classes"].astype(np.int64) if "classes" in z.files else None,
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


@dataclass
class SegmentTable:
    """The segments of one level as arrays, sorted by id (:meth:`Hierarchy.segment_tables`).

    Attributes:
        level: the level.
        ids: ``K`` segment ids.
        area: ``K`` pixel counts.
        bbox: ``K×4`` boxes ``[x, y, w, h]`` in pixels.
        parent: ``K`` ids at ``level + 1``; None at the top level.
        child_ids, child_ptr: the children (ids at ``level − 1``) of segment ``k`` are
            ``child_ids[child_ptr[k]:child_ptr[k + 1]]``, ascending (none at level 0).
        color: ``K×3`` uint8 mean RGB, or None (not asked for, or no image).
    """

    level: int
    ids: np.ndarray
    area: np.ndarray
    bbox: np.ndarray
    parent: np.ndarray | None
    child_ids: np.ndarray
    child_ptr: np.ndarray
    color: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.ids.size)

    def records(self, *, level_key: bool = True, color: bool = False) -> list[dict[str, Any]]:
        """The records of :meth:`Hierarchy.segments` (``level_key=False`` drops ``level``;
        ``color=True`` adds ``color`` when the table has colours)."""
        ids, area, bbox = self.ids.tolist(), self.area.tolist(), self.bbox.tolist()
        parent = self.parent.tolist() if self.parent is not None else [None] * len(ids)
        kids, ptr = self.child_ids.tolist(), self.child_ptr.tolist()
        cols = self.color.tolist() if color and self.color is not None else None
        out = []
        for k, sid in enumerate(ids):
            rec: dict[str, Any] = {"id": sid}
            if level_key:
                rec["level"] = self.level
            rec.update(area=area[k], bbox=bbox[k], parent=parent[k], children=kids[ptr[k]:ptr[k + 1]])
            if cols is not None:
                rec["color"] = cols[k]
            out.append(rec)
        return out
