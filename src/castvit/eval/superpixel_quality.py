"""Superpixel quality: boundary recall, undersegmentation error, ASA, compactness.

The standard definitions (PROTOCOLS §6; Stutz, Hermans, Leibe, *Superpixels: an
evaluation of the state-of-the-art*, CVIU 2018, whose C++ code these follow). For a
superpixel map ``S`` and a ground-truth map ``G`` of ``N`` pixels:

* **Boundary recall** (BR): the fraction of ground-truth boundary pixels with a
  superpixel boundary pixel in the ``(2r+1)×(2r+1)`` window around them,
  ``r = round(0.0025 × diagonal)`` (half away from zero, like ``std::round``): 1 px
  at 224×224 and also 1 px at BSDS's 481×321 (0.0025 × 578.3 = 1.45; PROTOCOLS §6
  says 2 there, which would be ``ceil``, so :func:`superpixel_quality` reports BR at
  2 px as well). Boundaries follow the BSDS rule: a ground truth's are its
  ``Boundaries`` (``thin(seg2bdry(G))``), the superpixels' are ``seg2bdry(S)``
  (not thinned).
* **Undersegmentation error** (Neubert & Protzel 2012):
  ``(1/N) Σ_G Σ_{S∩G≠∅} min(|S∩G|, |S∖G|)``; 0 is best.
* **Achievable segmentation accuracy** (ASA): ``(1/N) Σ_S max_G |S∩G|``; 1 is best.
* **Compactness** (CO, Schick et al. 2012): ``Σ_S (|S|/N) · 4π|S| / perimeter(S)²``
  with the perimeter counted in pixel edges, the image border included (a square of
  side ``a`` scores π/4).

With several annotators (BSDS) each metric is the mean over them; over a data set,
the mean over images. A superpixel is a label value (it need not be connected). Every
figure is reported with the number of superpixels actually produced (``count``),
which differs from the number requested (SEEDS' grid rounds it, SLIC drops some).
"""

from __future__ import annotations

import math
from typing import Any, Sequence, Union

import numpy as np

from castvit.eval.bsds import GroundTruth, seg2bdry, thin

__all__ = [
    "BR_TOLERANCE",
    "boundary_recall",
    "undersegmentation_error",
    "achievable_segmentation_accuracy",
    "compactness",
    "number_of_superpixels",
    "superpixel_quality",
    "SuperpixelPredictions",
]

BR_TOLERANCE = 0.0025
"""Boundary-recall window half-size as a fraction of the image diagonal (rounded to pixels)."""

GroundTruthLike = Union[GroundTruth, np.ndarray, Sequence[np.ndarray]]


def _labels(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty H×W label map, got shape {arr.shape}")
    if arr.dtype != bool and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer labels, got dtype {arr.dtype}")
    return arr


def _ground_truth(gt: GroundTruthLike, shape: tuple[int, int]) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """(label maps, boundary maps or None to derive them) of every annotator."""
    if isinstance(gt, GroundTruth):
        segs, bdrys = list(gt.segmentations), list(gt.boundaries)
    else:
        arr = None if isinstance(gt, (list, tuple)) else np.asarray(gt)
        segs = list(gt) if arr is None else (list(arr) if arr.ndim == 3 else [arr])
        bdrys = None
        if not segs:
            raise ValueError("gt holds no label maps")
    segs = [_labels(s, f"gt[{k}]") for k, s in enumerate(segs)]
    for k, s in enumerate(segs):
        if s.shape != shape:
            raise ValueError(f"gt[{k}] is {s.shape} but the superpixels are {shape}; they must match")
    return segs, bdrys


def _dense(labels: np.ndarray) -> tuple[np.ndarray, int]:
    _, ids = np.unique(labels.reshape(-1), return_inverse=True)
    ids = ids.reshape(-1).astype(np.int64)
    return ids, int(ids.max()) + 1


def _intersections(sp: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Non-empty cells of the contingency table: (superpixel id, gt id, |S∩G|) and |S|."""
    s_ids, ns = _dense(sp)
    g_ids, ng = _dense(g)
    cells, counts = np.unique(s_ids * ng + g_ids, return_counts=True)
    return cells // ng, cells % ng, counts.astype(np.int64), np.bincount(s_ids, minlength=ns)


def number_of_superpixels(superpixels: Any) -> int:
    """Distinct labels in the map: the number of superpixels actually produced."""
    return int(np.unique(_labels(superpixels, "superpixels")).size)


def boundary_recall(superpixels: Any, gt: GroundTruthLike, *, tolerance: float = BR_TOLERANCE,
                    radius: int | None = None) -> float:
    """Boundary recall of a superpixel map, averaged over annotators.

    Args:
        superpixels: ``H×W`` integer labels.
        gt: a :class:`~castvit.eval.bsds.GroundTruth` (its ``Boundaries`` are used), or
            one label map / a list of them (boundaries ``thin(seg2bdry(g))``).
        tolerance: window half-size as a fraction of the diagonal, rounded to pixels.
        radius: the half-size in pixels instead (overrides ``tolerance``).

    Returns:
        In [0, 1]; annotators without any boundary pixel are left out (1.0 if all are).
    """
    from scipy.ndimage import binary_dilation

    sp = _labels(superpixels, "superpixels")
    segs, bdrys = _ground_truth(gt, sp.shape)
    r = int(math.floor(tolerance * math.hypot(*sp.shape) + 0.5)) if radius is None else int(radius)
    if r < 0:
        raise ValueError(f"radius must be >= 0, got {r}")
    near = seg2bdry(sp)
    if r > 0:
        near = binary_dilation(near, structure=np.ones((2 * r + 1, 2 * r + 1), dtype=bool))
    recalls = []
    for k, s in enumerate(segs):
        b = bdrys[k] if bdrys is not None else thin(seg2bdry(s))
        total = int(b.sum())
        if total:
            recalls.append(int((b & near).sum()) / total)
    return float(np.mean(recalls)) if recalls else 1.0


def undersegmentation_error(superpixels: Any, gt: GroundTruthLike) -> float:
    """Neubert–Protzel undersegmentation error ``(1/N) Σ_G Σ_{S∩G≠∅} min(|S∩G|, |S∖G|)``,
    averaged over annotators."""
    sp = _labels(superpixels, "superpixels")
    segs, _ = _ground_truth(gt, sp.shape)
    errors = []
    for g in segs:
        s_id, _, inter, s_size = _intersections(sp, g)
        errors.append(np.minimum(inter, s_size[s_id] - inter).sum() / sp.size)
    return float(np.mean(errors))


def achievable_segmentation_accuracy(superpixels: Any, gt: GroundTruthLike) -> float:
    """ASA ``(1/N) Σ_S max_G |S∩G|``, averaged over annotators."""
    sp = _labels(superpixels, "superpixels")
    segs, _ = _ground_truth(gt, sp.shape)
    values = []
    for g in segs:
        s_id, _, inter, s_size = _intersections(sp, g)
        best = np.zeros(len(s_size), dtype=np.int64)
        np.maximum.at(best, s_id, inter)
        values.append(best.sum() / sp.size)
    return float(np.mean(values))


def compactness(superpixels: Any) -> float:
    """Compactness ``Σ_S (|S|/N) · 4π|S| / perimeter(S)²``, perimeter in pixel edges
    (between ``S`` and another label, or the image border)."""
    sp = _labels(superpixels, "superpixels")
    ids, n = _dense(sp)
    ids = ids.reshape(sp.shape)
    h, w = sp.shape
    # every pixel side that is not shared with a same-label pixel
    sides = np.full(sp.shape, 4, dtype=np.int64)
    same_v = ids[:-1] == ids[1:]
    same_h = ids[:, :-1] == ids[:, 1:]
    sides[:-1] -= same_v
    sides[1:] -= same_v
    sides[:, :-1] -= same_h
    sides[:, 1:] -= same_h
    perimeter = np.bincount(ids.reshape(-1), weights=sides.reshape(-1), minlength=n)
    area = np.bincount(ids.reshape(-1), minlength=n).astype(np.float64)
    return float((area * 4 * math.pi * area / perimeter**2).sum() / (h * w))


def superpixel_quality(superpixels: Any, gt: GroundTruthLike, *, tolerance: float = BR_TOLERANCE) -> dict[str, Any]:
    """Every metric of this module for one superpixel map.

    Returns:
        ``{"count", "boundary_recall", "boundary_recall_radius", "boundary_recall_2px",
        "undersegmentation_error", "asa", "compactness"}``.
    """
    sp = _labels(superpixels, "superpixels")
    r = int(math.floor(tolerance * math.hypot(*sp.shape) + 0.5))
    return {
        "count": number_of_superpixels(sp),
        "boundary_recall": boundary_recall(sp, gt, radius=r),
        "boundary_recall_radius": r,
        "boundary_recall_2px": boundary_recall(sp, gt, radius=2),
        "undersegmentation_error": undersegmentation_error(sp, gt),
        "asa": achievable_segmentation_accuracy(sp, gt),
        "compactness": compactness(sp),
    }


class SuperpixelPredictions:
    """A superpixel method as a BSDS500 input (:func:`castvit.eval.bsds.evaluate_dataset`):
    the superpixels of every image, scored as one segmentation (``T = 1``) and by
    :func:`superpixel_quality` (under ``superpixels`` in the result); or, with
    ``grouping="colour"``, the colour-grouping baseline built on them
    (:func:`castvit.eval.baselines.colour_grouping`: the superpixels, then ``levels``),
    scored as a segmentation stack.

    Args:
        method: ``"seeds"`` or ``"slic"`` (:func:`castvit.superpixels.compute_superpixels_single`).
        n_segments: superpixels requested per image.
        options: backend settings, e.g. ``dataclasses.asdict(PRETRAIN_SEEDS)`` without
            ``n_segments`` (the authors' SEEDS settings).
        grouping: None or ``"colour"``.
        levels: segments per level of the colour grouping.
    """

    in_workers = True
    extra_key = "superpixels"

    def __init__(self, method: str = "seeds", n_segments: int = 196, *, options: dict[str, Any] | None = None,
                 grouping: str | None = None, levels: Sequence[int] = (64, 32, 16, 8)):
        from castvit.superpixels import METHODS

        if method not in METHODS:
            raise ValueError(f"unknown superpixel method {method!r}; choose one of {', '.join(METHODS)}")
        if grouping not in (None, "colour"):
            raise ValueError(f"grouping must be None or 'colour', got {grouping!r}")
        self.method, self.n_segments = method, int(n_segments)
        self.options = dict(options or {})
        self.grouping, self.levels = grouping, tuple(int(k) for k in levels)

    def describe(self) -> dict[str, Any]:
        d = {"kind": "superpixels", "method": self.method, "n_segments": self.n_segments, "options": self.options}
        if self.grouping:
            d.update(kind="colour_grouping", levels=list(self.levels))
        return d

    def check(self, image_id: str) -> None:
        pass

    def __call__(self, image_id: str, image_path: Any) -> dict[str, Any]:
        from castvit.eval.bsds import load_image
        from castvit.superpixels import compute_superpixels_single

        image = load_image(image_path)
        sp = np.asarray(compute_superpixels_single(image, method=self.method, n_segments=self.n_segments,
                                                   **self.options))
        if self.grouping == "colour":
            from castvit.eval.baselines import colour_grouping

            return {"segs": list(colour_grouping(image, sp, self.levels).astype(np.int64))}
        return {"segs": [sp], "superpixels": sp}

    def extra_scores(self, prediction: dict[str, Any], gt: GroundTruth) -> dict[str, Any] | None:
        sp = prediction.get("superpixels")
        return None if sp is None else superpixel_quality(sp, gt)
