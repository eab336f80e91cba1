"""Segmentation and hierarchy metrics.

* Boundaries: :func:`boundary_map`, :func:`boundary_prf` by the BSDS500 benchmark's
  rule (``seg2bdry`` boundaries, thinning, one-to-one matching within a distance
  tolerance; :mod:`castvit.eval.bsds`), and :func:`ods_ois` over hierarchy levels.
* Regions: :func:`segmentation_covering`, :func:`variation_of_information`,
  :func:`probabilistic_rand_index`, :func:`majority_label_miou`.
* Hierarchies: :func:`is_nested`, :func:`hierarchy_consistency`, and
  :func:`evaluate_hierarchy`, which runs everything above on every level.

A label map is an ``H×W`` integer (or bool) array; numpy arrays, nested lists and
torch tensors are all accepted. Ids need not be contiguous or start at zero, and two
maps that differ only by a renaming of ids score as identical. A "hierarchy" is a list
of label maps ordered fine to coarse. Where ground truth may come from several
annotators (as in BSDS), pass a list of maps or a ``K×H×W`` stack.

Every region metric is read off one contingency table (pixel counts per pair of
labels), kept sparse, so a 224×224 pair with hundreds of labels costs about a
millisecond. This module depends on numpy and scipy (and scikit-image for thinning).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
from numpy.typing import ArrayLike
from castvit.eval.bsds import MAX_DIST, match_boundaries, seg2bdry, thin
from castvit.ops import label_boundaries

__all__ = [
    "BSDS_TOLERANCE",
    "COUNT_KEYS",
    "boundary_map",
    "boundary_prf",
    "prf_from_counts",
    "ods_ois",
    "segmentation_covering",
    "variation_of_information",
    "rand_index",
    "probabilistic_rand_index",
    "majority_label_miou",
    "is_nested",
    "hierarchy_consistency",
    "evaluate_hierarchy",
]

BSDS_TOLERANCE = MAX_DIST
"""Boundary match distance as a fraction of the image diagonal (BSDS500 benchmark)."""

COUNT_KEYS = ("matched_pred", "num_pred", "matched_gt", "num_gt")
"""Raw boundary counts; sum them over images, then call :func:`prf_from_counts`."""

LabelMaps = Union[ArrayLike, Sequence[ArrayLike]]


# --------------------------------------------------------------------------- inputs


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, maybe on GPU or requiring grad
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_label_map(x: Any, name: str) -> np.ndarray:
    arr = _to_numpy(x)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a single H×W label map, got shape {arr.shape}; "
            "index one image out of a batch and squeeze any channel axis"
        )
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); metrics need at least one pixel")
    if arr.dtype != bool and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"{name} must hold integer labels, got dtype {arr.dtype}; convert it with "
            "np.rint(x).astype(np.int64) (or tensor.round().long()) first"
        )
    return arr


def _as_label_maps(x: Any, name: str) -> list[np.ndarray]:
    """One map, a list of maps or a ``K×H×W`` stack -> list of ``H×W`` maps of one shape."""
    if isinstance(x, (list, tuple)) and (len(x) == 0 or np.ndim(_to_numpy(x[0])) == 2):
        items = list(x)
    else:
        arr = _to_numpy(x)
        items = list(arr) if arr.ndim == 3 else [arr]
    if not items:
        raise ValueError(f"{name} holds no label maps; pass at least one H×W map")
    maps = [_as_label_map(m, f"{name}[{i}]") for i, m in enumerate(items)]
    for i, m in enumerate(maps[1:], start=1):
        _check_same_shape(maps[0], m, f"{name}[0]", f"{name}[{i}]")
    return maps


def _check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}; resize the "
            "prediction to the ground truth with nearest-neighbour interpolation "
            "(never bilinear, which invents labels)"
        )


def _check_tolerance(tolerance: float) -> None:
    if not (isinstance(tolerance, numbers.Real) and 0.0 <= tolerance < 1.0):
        raise ValueError(
            f"tolerance must be a fraction of the image diagonal in [0, 1), got {tolerance!r}; "
            f"BSDS uses {BSDS_TOLERANCE}"
        )


# ---------------------------------------------------------------- contingency tables


def _dense_ids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat ids in ``0..K-1`` (``H·W``, int64) and the ``K`` original labels, sorted."""
    flat = labels.reshape(-1)
    if flat.dtype == bool:
        flat = flat.view(np.uint8)
    lo, hi = int(flat.min()), int(flat.max())
    if hi - lo <= 4 * flat.size + 1024 and hi < 2**62:  # a lookup table beats sorting
        shifted = flat.astype(np.int64) - lo
        present = np.bincount(shifted, minlength=hi - lo + 1) > 0
        lookup = np.cumsum(present) - 1
        return lookup[shifted], np.flatnonzero(present) + lo
    values, ids = np.unique(flat, return_inverse=True)
    return ids.reshape(-1).astype(np.int64), values


@dataclass(frozen=True)
class _Table:
    """Sparse contingency table of two label maps ``a`` (rows) and ``b`` (columns)."""

    rows: np.ndarray  # row index of each non-empty cell
    cols: np.ndarray  # column index of each non-empty cell
    counts: np.ndarray  # pixels in each non-empty cell, int64
    row_sizes: np.ndarray  # pixels per label of a, K_a
    col_sizes: np.ndarray  # pixels per label of b, K_b
    col_labels: np.ndarray  # original label of each column

    @property
    def num_pixels(self) -> int:
        return int(self.row_sizes.sum())


def _table(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> _Table:
    (a_ids, a_labels), (b_ids, b_labels) = a, b
    ka, kb = len(a_labels), len(b_labels)
    pair = a_ids * kb + b_ids
    if ka * kb <= 4 * pair.size + 1024:
        full = np.bincount(pair, minlength=ka * kb)
        cells = np.flatnonzero(full)
        counts = full[cells]
    else:  # too many label pairs for a dense table (e.g. pixel-level labels)
        cells, counts = np.unique(pair, return_counts=True)
    return _Table(
        rows=cells // kb,
        cols=cells % kb,
        counts=counts.astype(np.int64),
        row_sizes=np.bincount(a_ids, minlength=ka),
        col_sizes=np.bincount(b_ids, minlength=kb),
        col_labels=b_labels,
    )


def _covering(t: _Table) -> float:
    """Covering of the column map by the row map."""
    iou = t.counts / (t.row_sizes[t.rows] + t.col_sizes[t.cols] - t.counts)
    best = np.zeros(len(t.col_sizes))
    np.maximum.at(best, t.cols, iou)
    return float((t.col_sizes * best).sum() / t.num_pixels)


def _entropy(counts: np.ndarray, total: int) -> float:
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())


def _variation_of_information(t: _Table) -> float:
    n = t.num_pixels
    joint = _entropy(t.counts, n)
    vi = 2.0 * joint - _entropy(t.row_sizes, n) - _entropy(t.col_sizes, n)
    return max(vi, 0.0)  # rounding can leave a tiny negative for identical maps


def _pairs(counts: np.ndarray) -> int:
    c = counts.astype(np.int64)
    return int((c * (c - 1) // 2).sum())


def _rand_index(t: _Table) -> float:
    n = t.num_pixels
    total = n * (n - 1) // 2
    if total == 0:
        return 1.0
    # Agreeing pairs = all pairs - pairs joined in exactly one of the two maps.
    joint = _pairs(t.counts)
    disagree = (_pairs(t.row_sizes) - joint) + (_pairs(t.col_sizes) - joint)
    return (total - disagree) / total


def _children_per_parent_count(t: _Table) -> np.ndarray:
    """For each row label (fine segment), how many column labels (coarse) it touches."""
    return np.bincount(t.rows, minlength=len(t.row_sizes))


def _majority_miou(t: _Table, ignore_index: int | None) -> dict[str, Any]:
    """Rows are predicted segments, columns ground-truth classes."""
    keep_col = np.ones(len(t.col_labels), dtype=bool)
    if ignore_index is not None:
        keep_col &= t.col_labels != ignore_index
    if not keep_col.any():
        raise ValueError(
            f"every ground-truth pixel equals ignore_index={ignore_index}; "
            "there is no class left to score"
        )
    keep = keep_col[t.cols]
    rows, cols, counts = t.rows[keep], t.cols[keep], t.counts[keep]
    # Majority class per segment; ties go to the smaller label (columns are sorted).
    order = np.lexsort((cols, -counts, rows))
    first = np.ones(len(order), dtype=bool)
    first[1:] = rows[order][1:] != rows[order][:-1]
    majority = np.full(len(t.row_sizes), -1, dtype=np.int64)
    majority[rows[order][first]] = cols[order][first]

    assigned = majority[rows]
    k = len(t.col_labels)
    intersection = np.bincount(cols[assigned == cols], weights=counts[assigned == cols], minlength=k)
    predicted_area = np.bincount(assigned, weights=counts, minlength=k)
    union = predicted_area + t.col_sizes - intersection
    classes = np.flatnonzero(keep_col)
    iou = intersection[classes] / union[classes]
    return {
        "miou": float(iou.mean()),
        "per_class_iou": {int(t.col_labels[c]): float(v) for c, v in zip(classes, iou)},
    }


# ------------------------------------------------------------------------ boundaries


def boundary_map(labels: ArrayLike) -> np.ndarray:
    """Thin, one-sided boundaries of a label map (for pictures and quick checks).

    A pixel is a boundary pixel when its right or its lower 4-neighbour carries a
    different label, so each label change marks exactly one side of the edge (the
    left/upper one). The image border is not a boundary. :func:`boundary_prf` scores
    the BSDS benchmark's boundaries instead (:func:`castvit.eval.bsds.seg2bdry`,
    then thinning), which add the corner pixel where two edges meet diagonally.

    Args:
        labels: ``H×W`` integer label map.

    Returns:
        ``H×W`` bool array.
    """
    return label_boundaries(_as_label_map(labels, "labels"))


def _pred_boundary(x: np.ndarray) -> np.ndarray:
    """A prediction's boundaries as the benchmark scores them: ``thin(seg2bdry(labels))``,
    or a bool map thinned."""
    return thin(x if x.dtype == bool else seg2bdry(x))


def _gt_boundary(x: np.ndarray) -> np.ndarray:
    """A ground truth's boundaries: ``thin(seg2bdry(labels))`` (BSDS's ``Boundaries``),
    or a bool map used as it is."""
    return x if x.dtype == bool else thin(seg2bdry(x))


def _match_boundaries(pred: np.ndarray, gt: np.ndarray, max_dist: float) -> tuple[np.ndarray, int]:
    """One-to-one matching of boundary pixels no farther apart than ``max_dist`` px
    (least-cost maximum matching, :func:`castvit.eval.bsds.correspond_pixels`).

    Returns a bool vector over the predicted boundary pixels (in ``np.nonzero``
    order) saying which were matched, and the number of matched GT pixels.
    """
    matched_pred, matched_gt = match_boundaries(pred, gt, max_dist)
    return matched_pred, int(matched_gt.sum())


def _boundary_counts(pred_b: np.ndarray, gt_bs: list[np.ndarray], max_dist: float) -> dict[str, int]:
    # As in the BSDS benchmark: a predicted pixel is correct if it matches in any
    # annotation; recall pools the boundary pixels of all annotations.
    matched_pred = np.zeros(int(pred_b.sum()), dtype=bool)
    matched_gt = num_gt = 0
    for gt_b in gt_bs:
        hit, n = _match_boundaries(pred_b, gt_b, max_dist)
        matched_pred |= hit
        matched_gt += n
        num_gt += int(gt_b.sum())
    return {
        "matched_pred": int(matched_pred.sum()),
        "num_pred": len(matched_pred),
        "matched_gt": matched_gt,
        "num_gt": num_gt,
    }


def prf_from_counts(counts: Mapping[str, int] | Sequence[Mapping[str, int]]) -> dict[str, float | int]:
    """Precision, recall and F-measure from raw boundary counts.

    Args:
        counts: one dict with the keys in :data:`COUNT_KEYS` (as returned by
            :func:`boundary_prf`), or a list of them, which are summed first (the
            dataset-level aggregation used by BSDS).

    Returns:
        ``{"precision", "recall", "f"}`` plus the (summed) counts. An empty side
        scores 0, as in the BSDS benchmark: no predicted boundary gives precision 0,
        no ground-truth boundary gives recall 0.
    """
    items = [counts] if isinstance(counts, Mapping) else list(counts)
    if not items:
        raise ValueError("no counts given; pass a dict of boundary counts or a non-empty list of them")
    total = dict.fromkeys(COUNT_KEYS, 0)
    for i, c in enumerate(items):
        missing = [k for k in COUNT_KEYS if k not in c]
        if missing:
            raise ValueError(
                f"counts[{i}] lacks {missing}; pass the dicts returned by boundary_prf "
                f"(keys {list(COUNT_KEYS)})"
            )
        for k in COUNT_KEYS:
            total[k] += int(c[k])
    precision = total["matched_pred"] / total["num_pred"] if total["num_pred"] else 0.0
    recall = total["matched_gt"] / total["num_gt"] if total["num_gt"] else 0.0
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f": f, **total}


def boundary_prf(
    pred_labels_or_boundary: ArrayLike,
    gt: LabelMaps,
    *,
    tolerance: float = BSDS_TOLERANCE,
) -> dict[str, float | int]:
    """Boundary precision / recall / F-measure of one image, by the BSDS500 rule.

    As the benchmark (:mod:`castvit.eval.bsds`) scores one threshold: a label map's
    boundaries are BSDS's ``seg2bdry`` (label changes between 4-neighbours, drawn on
    the double-resolution grid and read back at pixel resolution), thinned to one
    pixel; predicted and ground-truth pixels are matched one-to-one (least-cost
    maximum matching) over the pairs at most ``tolerance × image diagonal`` apart
    (Euclidean). So a doubled predicted contour next to a single true one earns
    precision 1/2, not 1. With several annotations a predicted pixel counts as
    correct if it matches in any of them and recall pools all annotations' boundary
    pixels. On a BSDS image and one segmentation this gives the benchmark's counts.

    Args:
        pred_labels_or_boundary: ``H×W`` integer label map, or a bool boundary map
            (thinned, like a thresholded boundary map in the benchmark). Mind the
            dtype: a *bool* map is read as boundaries, so pass a foreground mask as
            ``mask.astype(int)``.
        gt: ``H×W`` label map (boundaries ``thin(seg2bdry(gt))``, which are BSDS's
            ``Boundaries``) or bool boundary map used as it is, or a list /
            ``K×H×W`` stack of them for several annotators.
        tolerance: maximum match distance as a fraction of the image diagonal;
            0.0075 (BSDS) is about 2.4 px at 224×224 and 4.3 px at 481×321.

    Returns:
        ``{"precision", "recall", "f", "matched_pred", "num_pred", "matched_gt",
        "num_gt"}``. Sum the four counts over images (:func:`prf_from_counts`,
        :func:`ods_ois`) rather than averaging P/R/F.
    """
    _check_tolerance(tolerance)
    pred = _as_label_map(pred_labels_or_boundary, "pred_labels_or_boundary")
    gts = _as_label_maps(gt, "gt")
    _check_same_shape(pred, gts[0], "pred_labels_or_boundary", "gt")
    max_dist = tolerance * math.hypot(*pred.shape)
    counts = _boundary_counts(_pred_boundary(pred), [_gt_boundary(g) for g in gts], max_dist)
    return prf_from_counts(counts)


def ods_ois(per_image_per_level_counts: Sequence[Sequence[Mapping[str, int]]]) -> dict[str, Any]:
    """Optimal dataset scale (ODS) and optimal image scale (OIS) over hierarchy levels.

    ODS picks one level for the whole dataset: sum each level's counts over all
    images and take the level with the best F. OIS picks the best-F level of each
    image, sums the chosen counts over images and computes P/R/F from the sums (the
    BSDS benchmark's definition; it is not the mean of per-image F).

    Args:
        per_image_per_level_counts: ``[image][level]`` dicts with the keys of
            :data:`COUNT_KEYS`, e.g. ``boundary_prf`` results; every image must have
            the same number of levels. Ties are broken towards the lower level.

    Returns:
        ``{"ods_f", "ods_precision", "ods_recall", "ods_level", "ois_f",
        "ois_precision", "ois_recall", "ois_levels", "per_level"}`` where
        ``ois_levels`` is the chosen level of each image and ``per_level`` the
        dataset-summed :func:`prf_from_counts` of each level.
    """
    images = [list(levels) for levels in per_image_per_level_counts]
    if not images or not images[0]:
        raise ValueError("per_image_per_level_counts is empty; pass [image][level] boundary counts")
    num_levels = len(images[0])
    for i, levels in enumerate(images):
        if len(levels) != num_levels:
            raise ValueError(
                f"image {i} has {len(levels)} levels but image 0 has {num_levels}; ODS picks "
                "one level index for the whole dataset, so every image needs the same levels"
            )
    per_level = [prf_from_counts([img[lvl] for img in images]) for lvl in range(num_levels)]
    ods_level = int(np.argmax([p["f"] for p in per_level]))
    ois_levels = [int(np.argmax([prf_from_counts(c)["f"] for c in img])) for img in images]
    ois = prf_from_counts([img[lvl] for img, lvl in zip(images, ois_levels)])
    ods = per_level[ods_level]
    return {
        "ods_f": ods["f"],
        "ods_precision": ods["precision"],
        "ods_recall": ods["recall"],
        "ods_level": ods_level,
        "ois_f": ois["f"],
        "ois_precision": ois["precision"],
        "ois_recall": ois["recall"],
        "ois_levels": ois_levels,
        "per_level": per_level,
    }


# --------------------------------------------------------------------------- regions


def _pred_and_gts(pred: ArrayLike, gt: LabelMaps) -> tuple[np.ndarray, list[np.ndarray]]:
    p = _as_label_map(pred, "pred")
    gts = _as_label_maps(gt, "gt")
    _check_same_shape(p, gts[0], "pred", "gt")
    return p, gts


def segmentation_covering(pred: ArrayLike, gt: LabelMaps) -> float:
    """Covering of the ground truth by the prediction (Arbeláez et al., TPAMI 2011).

    ``C = Σ_{R ∈ gt} |R| / N · max_{R' ∈ pred} IoU(R, R')``, in [0, 1]; 1 iff the
    maps agree up to a renaming of labels. With several annotators, the mean over them.

    Args:
        pred: ``H×W`` integer label map.
        gt: ``H×W`` label map, or a list / ``K×H×W`` stack of them.
    """
    p, gts = _pred_and_gts(pred, gt)
    pid = _dense_ids(p)
    return float(np.mean([_covering(_table(pid, _dense_ids(g))) for g in gts]))


def variation_of_information(pred: ArrayLike, gt: LabelMaps) -> float:
    """Variation of information ``H(pred|gt) + H(gt|pred)`` in nats (natural log).

    0 iff the maps agree up to a renaming of labels; lower is better. With several
    annotators, the mean over them. (``skimage.metrics.variation_of_information``
    returns the two conditional entropies in bits: their sum times ln 2 is this.)

    Args:
        pred: ``H×W`` integer label map.
        gt: ``H×W`` label map, or a list / ``K×H×W`` stack of them.
    """
    p, gts = _pred_and_gts(pred, gt)
    pid = _dense_ids(p)
    return float(np.mean([_variation_of_information(_table(pid, _dense_ids(g))) for g in gts]))


def rand_index(pred: ArrayLike, gt: ArrayLike) -> float:
    """Rand index: fraction of the ``N(N-1)/2`` unordered pixel pairs on which the two
    maps agree (same segment in both, or different segments in both).

    Args:
        pred, gt: ``H×W`` integer label maps.
    """
    p = _as_label_map(pred, "pred")
    g = _as_label_map(gt, "gt")
    _check_same_shape(p, g, "pred", "gt")
    return _rand_index(_table(_dense_ids(p), _dense_ids(g)))


def probabilistic_rand_index(pred: ArrayLike, gts: LabelMaps) -> float:
    """Probabilistic Rand index (Unnikrishnan et al., 2007): the Rand index against
    each annotation, averaged (equal to the pairwise agreement with the annotators'
    empirical same-segment probabilities). In [0, 1], higher is better.

    Args:
        pred: ``H×W`` integer label map.
        gts: ``H×W`` label map, or a list / ``K×H×W`` stack of them.
    """
    p, maps = _pred_and_gts(pred, gts)
    pid = _dense_ids(p)
    return float(np.mean([_rand_index(_table(pid, _dense_ids(g))) for g in maps]))


def majority_label_miou(
    pred: ArrayLike,
    gt: ArrayLike,
    *,
    ignore_index: int | None = None,
) -> dict[str, Any]:
    """Mean IoU after giving every predicted segment its majority ground-truth label.

    Each predicted segment takes the GT class covering most of its (non-ignored)
    pixels, ties going to the smaller class id. Then IoU per class over the pixels
    whose GT is not ``ignore_index``, for each class present in ``gt``, and the mean
    over those classes. A segmentation that never straddles two classes scores 1,
    however finely it over-segments.

    Args:
        pred: ``H×W`` integer segment map.
        gt: ``H×W`` integer class (or instance) map.
        ignore_index: GT label whose pixels are left out of every count.

    Returns:
        ``{"miou": float, "per_class_iou": {class_id: iou}}`` (int keys).
    """
    p = _as_label_map(pred, "pred")
    g = _as_label_map(gt, "gt")
    _check_same_shape(p, g, "pred", "gt")
    return _majority_miou(_table(_dense_ids(p), _dense_ids(g)), ignore_index)


# ----------------------------------------------------------------------- hierarchies


def is_nested(fine: ArrayLike, coarse: ArrayLike) -> bool:
    """True iff every segment of ``fine`` lies inside a single segment of ``coarse``.

    Args:
        fine, coarse: ``H×W`` integer label maps.
    """
    f = _as_label_map(fine, "fine")
    c = _as_label_map(coarse, "coarse")
    _check_same_shape(f, c, "fine", "coarse")
    return bool((_children_per_parent_count(_table(_dense_ids(f), _dense_ids(c))) == 1).all())


def _contained_fraction(t: _Table) -> float:
    inside = _children_per_parent_count(t) == 1
    return float(t.row_sizes[inside].sum() / t.num_pixels)


def hierarchy_consistency(levels: LabelMaps) -> float:
    """How strictly nested a hierarchy is, in [0, 1].

    For each consecutive pair (level ``i``, level ``i+1``), the fraction of pixels
    whose level-``i`` segment lies entirely inside one level-``i+1`` segment (i.e.
    the area-weighted fraction of fine segments that have a single parent); the mean
    over pairs. 1.0 for a strictly nested hierarchy, and for a single level.

    Args:
        levels: list of ``H×W`` label maps (or an ``L×H×W`` stack), fine to coarse.
    """
    maps = _as_label_maps(levels, "levels")
    ids = [_dense_ids(m) for m in maps]
    if len(ids) == 1:
        return 1.0
    return float(np.mean([_contained_fraction(_table(a, b)) for a, b in zip(ids[:-1], ids[1:])]))


def evaluate_hierarchy(
    levels: LabelMaps,
    gt_object: ArrayLike,
    gt_parts: ArrayLike | None = None,
    *,
    tolerance: float = BSDS_TOLERANCE,
    ignore_index: int | None = None,
) -> dict[str, Any]:
    """Every metric of this module, on every level of one image's hierarchy.

    Args:
        levels: list of ``H×W`` label maps (or an ``L×H×W`` stack), fine to coarse.
        gt_object: ``H×W`` object-level ground truth (foreground/background,
            instance or class map).
        gt_parts: optional ``H×W`` part-level ground truth.
        tolerance: boundary match distance as a fraction of the image diagonal;
            boundaries are scored by the BSDS rule of :func:`boundary_prf`.
        ignore_index: GT label left out of the majority-label mIoU (only there).

    Returns:
        Plain JSON-serialisable dict::

            {"height", "width", "num_levels",
             "hierarchy_consistency": float, "nested": [bool per consecutive pair],
             "levels": [{"level", "num_segments",
                         "object": {"boundary": boundary_prf dict, "covering", "vi",
                                    "pri", "miou", "per_class_iou"},
                         "parts": {...same...}}],        # "parts" only with gt_parts
             "summary": {"object": {"best_boundary_f", "best_boundary_f_level",
                                    "best_covering", "best_covering_level",
                                    "best_vi", "best_vi_level",
                                    "best_pri", "best_pri_level",
                                    "best_miou", "best_miou_level"},
                         "parts": {...}}}

        For dataset ODS/OIS, collect ``[lvl["object"]["boundary"] for lvl in
        result["levels"]]`` per image and pass the list of lists to :func:`ods_ois`.
    """
    _check_tolerance(tolerance)
    maps = _as_label_maps(levels, "levels")
    gts = {"object": _as_label_map(gt_object, "gt_object")}
    if gt_parts is not None:
        gts["parts"] = _as_label_map(gt_parts, "gt_parts")
    for name, g in gts.items():
        _check_same_shape(maps[0], g, "levels[0]", f"gt_{name}")
    max_dist = tolerance * math.hypot(*maps[0].shape)

    ids = [_dense_ids(m) for m in maps]
    edges = [thin(seg2bdry(m)) for m in maps]  # levels and GT are label maps here, even bool ones
    per_level: list[dict[str, Any]] = [
        {"level": i, "num_segments": len(labels)} for i, (_, labels) in enumerate(ids)
    ]
    summary: dict[str, dict[str, Any]] = {}
    for name, g in gts.items():
        g_ids, g_edges = _dense_ids(g), thin(seg2bdry(g))
        for i in range(len(maps)):
            t = _table(ids[i], g_ids)
            per_level[i][name] = {
                "boundary": prf_from_counts(_boundary_counts(edges[i], [g_edges], max_dist)),
                "covering": _covering(t),
                "vi": _variation_of_information(t),
                "pri": _rand_index(t),
                **_majority_miou(t, ignore_index),
            }
        summary[name] = _best_levels([lvl[name] for lvl in per_level])

    pairs = [_table(a, b) for a, b in zip(ids[:-1], ids[1:])]
    return {
        "height": int(maps[0].shape[0]),
        "width": int(maps[0].shape[1]),
        "num_levels": len(maps),
        "hierarchy_consistency": float(np.mean([_contained_fraction(t) for t in pairs])) if pairs else 1.0,
        "nested": [bool((_children_per_parent_count(t) == 1).all()) for t in pairs],
        "levels": per_level,
        "summary": summary,
    }


def _best_levels(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """Best value and its (lowest) level for each headline metric of one GT."""
    columns = {
        "boundary_f": ([s["boundary"]["f"] for s in scores], max),
        "covering": ([s["covering"] for s in scores], max),
        "vi": ([s["vi"] for s in scores], min),
        "pri": ([s["pri"] for s in scores], max),
        "miou": ([s["miou"] for s in scores], max),
    }
    out: dict[str, Any] = {}
    for key, (values, best) in columns.items():
        value = best(values)
        out[f"best_{key}"] = value
        out[f"best_{key}_level"] = values.index(value)
    return out
