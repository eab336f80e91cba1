"""The BSDS500 benchmark: boundaries and regions, as the original MATLAB code scores them.

Arbeláez, Maire, Fowlkes, Malik, *Contour Detection and Hierarchical Image
Segmentation*, TPAMI 2011 (the ``BSR/bench`` code). Three kinds of prediction, one per
image (PROTOCOLS §5):

* a **segmentation stack** (``segs``): ``T`` label maps, fine to coarse, scored at the
  "thresholds" ``1..T`` — a castvit :class:`~castvit.Hierarchy`'s levels, a BSDS
  ``segs`` .mat, or a single superpixel map (``T = 1``);
* a **UCM** (``ucm2``): the ``(2H+1)×(2W+1)`` ultrametric contour map in [0, 1]; at
  threshold ``t`` the boundaries are ``ucm2[2::2, 2::2] >= t`` and the regions the
  8-connected components of ``ucm2 <= t`` read at ``[1::2, 1::2]``;
* a **soft boundary map** (``pb``): ``H×W`` in [0, 1] (an 8-bit PNG / 255), boundaries
  ``pb >= t``; boundaries only, no regions.

UCMs and boundary maps are cut at ``nthresh`` thresholds
``linspace(1/(n+1), 1 − 1/(n+1), n)`` (99 in the benchmark).

**Boundaries** (``evaluation_bdry_image.m``): the thresholded map (or :func:`seg2bdry`
of a label map) is thinned to one pixel (:func:`thin`, MATLAB's ``bwmorph(…, 'thin',
Inf)``) and matched one-to-one against each annotator's ``Boundaries`` within
``0.0075 ×`` the image diagonal (:func:`correspond_pixels`). A predicted pixel is
correct if it matches in any annotation; recall counts matched pixels of all
annotations over all their pixels. Counts are summed over images per threshold.
**ODS**: best F of the summed counts, interpolated linearly between thresholds (the
benchmark's ``maxF``); **OIS**: each image's best threshold (its last one on ties),
counts summed over images; **AP**: area under the P–R curve sampled at recall
``0:0.01:1`` (precision 0 outside the recalls reached).

**Regions** (``evaluation_reg_image.m``): per threshold, the covering of every
annotator's regions by the segmentation (area-weighted best IoU; summed over images
as ``Σ cnt / Σ K·N``), the probabilistic Rand index and the variation of information
(**in bits**, as the benchmark's ``log2``), each averaged over annotators; ODS = one
threshold for the set (images averaged for PRI and VI), OIS = each image's best,
"best" covering = each GT region's best overlap over all thresholds.

Everything here agrees with the MATLAB outputs shipped with BSDS500 (``bench/test_2…
test_5``): boundary figures of the data set within 0.0006 and per image within
0.0013, region figures to the printed precision (checked in ``tests/test_bsds.py``
with the issue's tolerances, 0.005 and 0.01; the benchmark itself varies by ~1e-3
between runs, see :func:`correspond_pixels`). One deliberate difference: every label
of a predicted segmentation is a region, where the MATLAB covering code drops pixels
labelled 0 (BSDS ``segs`` and UCM cuts are numbered from 1, so scores on them are
unaffected; castvit's label maps start at 0).

Data-set runs: :func:`evaluate_dataset` (images in parallel processes, progress bar),
used by ``castvit eval bsds``.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

__all__ = [
    "MAX_DIST",
    "NTHRESH",
    "BSDSError",
    "GroundTruth",
    "seg2bdry",
    "thin",
    "correspond_pixels",
    "match_boundaries",
    "default_thresholds",
    "load_ground_truth",
    "load_segs",
    "load_ucm2",
    "load_boundary_png",
    "ucm_regions",
    "evaluate_image",
    "summarize",
    "list_images",
    "load_image",
    "FilePredictions",
    "HierarchyPredictions",
    "evaluate_dataset",
]

MAX_DIST = 0.0075
"""Boundary match distance, as a fraction of the image diagonal (the benchmark's ``maxDist``)."""

NTHRESH = 99
"""Thresholds for UCMs and soft boundary maps (the benchmark's default ``nthresh``)."""

# correspondPixels' constants: costs are distances × 100 rounded to integers; an
# unmatched pixel costs ceil(outlierCost × 100) with outlierCost = 100 × maxDist (px).
_MULTIPLIER = 100
_OUTLIER_COST = 100


class BSDSError(ValueError):
    """A benchmark input that cannot be scored (missing file, wrong size, wrong variable)."""


# ------------------------------------------------------------------ boundaries


def seg2bdry(seg: np.ndarray, fmt: str = "imageSize") -> np.ndarray:
    """Boundaries of a label map, by the BSDS rule (``seg2bdry.m``).

    Label changes between 4-neighbours are drawn on the ``(2H+1)×(2W+1)`` grid (edge
    cells between pixels, each corner cell set when any of its four edges is), the
    outer rows and columns copy their neighbours, and ``"imageSize"`` reads the grid
    back at ``[2::2, 2::2]``: pixel ``(i, j)`` is a boundary pixel when a label changes
    around the corner below-right of it. BSDS ground-truth ``Boundaries`` are exactly
    ``thin(seg2bdry(Segmentation))``.

    Args:
        seg: ``H×W`` integer label map.
        fmt: ``"imageSize"`` (``H×W``) or ``"doubleSize"`` (``(2H+1)×(2W+1)``).

    Returns:
        bool array.
    """
    if fmt not in ("imageSize", "doubleSize"):
        raise ValueError(f"fmt must be 'imageSize' or 'doubleSize', got {fmt!r}")
    seg = np.asarray(seg)
    if seg.ndim != 2 or seg.size == 0:
        raise ValueError(f"seg must be a non-empty H×W label map, got shape {seg.shape}")
    h, w = seg.shape
    ev = np.zeros((h, w), dtype=bool)  # (i, j) differs from (i+1, j)
    ev[:-1] = seg[:-1] != seg[1:]
    eh = np.zeros((h, w), dtype=bool)  # (i, j) differs from (i, j+1)
    eh[:, :-1] = seg[:, :-1] != seg[:, 1:]
    b = _double_grid(ev, eh)
    return b[2::2, 2::2] if fmt == "imageSize" else b


def _double_grid(ev: np.ndarray, eh: np.ndarray) -> np.ndarray:
    h, w = ev.shape
    b = np.zeros((2 * h + 1, 2 * w + 1), dtype=bool)
    b[2::2, 1::2] = ev
    b[1::2, 2::2] = eh
    b[2:-1:2, 2:-1:2] = eh[:-1, :-1] | eh[1:, :-1] | ev[:-1, :-1] | ev[:-1, 1:]
    b[0, :] = b[1, :]
    b[:, 0] = b[:, 1]
    b[-1, :] = b[-2, :]
    b[:, -1] = b[:, -2]
    return b


def thin(bmap: np.ndarray) -> np.ndarray:
    """Morphological thinning to one-pixel-wide curves: MATLAB's ``bwmorph(b, 'thin',
    Inf)`` (the same Guo–Hall / Lam–Lee–Suen algorithm, via scikit-image; it
    reproduces the BSDS ``Boundaries`` from ``seg2bdry`` bit for bit)."""
    from skimage.morphology import thin as _thin

    return _thin(np.asarray(bmap, dtype=bool))


def _disk(max_dist: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offsets (dy, dx) with ``dy² + dx² <= max_dist²`` and their lengths, as
    correspondPixels enumerates them (window ``ceil(max_dist)``)."""
    r = int(math.ceil(max_dist))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    inside = dy**2 + dx**2 <= max_dist**2
    dy, dx = dy[inside], dx[inside]
    return dy, dx, np.sqrt(dy**2 + dx**2)


def match_boundaries(pred: np.ndarray, gt: np.ndarray, max_dist_px: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of two boundary maps; the engine of :func:`correspond_pixels`.

    Args:
        pred, gt: ``H×W`` bool maps.
        max_dist_px: largest match distance in pixels.

    Returns:
        ``(matched_pred, matched_gt)``: bool vectors over the ``np.nonzero`` pixels of
        ``pred`` and of ``gt``.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    py, px = np.nonzero(pred)
    gy, gx = np.nonzero(gt)
    matched_pred = np.zeros(len(py), dtype=bool)
    matched_gt = np.zeros(len(gy), dtype=bool)
    if len(py) == 0 or len(gy) == 0:
        return matched_pred, matched_gt
    h, w = gt.shape
    r = int(math.ceil(max_dist_px))
    index = np.full((h + 2 * r, w + 2 * r), -1, dtype=np.int64)  # -1 margin: no bounds checks
    index[gy + r, gx + r] = np.arange(len(gy))
    rows, cols, costs = [], [], []
    for dy, dx, d in zip(*_disk(max_dist_px)):
        g = index[py + r + dy, px + r + dx]
        hit = np.flatnonzero(g >= 0)
        rows.append(hit)
        cols.append(g[hit])
        costs.append(np.full(len(hit), float(np.rint(d * _MULTIPLIER))))
    i, j, cost = np.concatenate(rows), np.concatenate(cols), np.concatenate(costs)
    if len(i) == 0:
        return matched_pred, matched_gt
    # Only pixels with a candidate partner take part (as in correspondPixels).
    ui, ii = np.unique(i, return_inverse=True)
    uj, jj = np.unique(j, return_inverse=True)
    a, b = len(ui), len(uj)
    outlier = float(math.ceil(_OUTLIER_COST * max_dist_px * _MULTIPLIER))
    # Square assignment problem: rows = pred pixels + one outlier per GT pixel,
    # columns = GT pixels + one outlier per pred pixel. A pixel left unmatched takes its
    # own outlier; the outliers of matched pixels pair up along the transposed real
    # edges. Real edges cost distance × 100 + 1 (no zero weights), every outlier edge
    # costs `outlier`: total = Σ(cost + 1) + outlier · (n_pred + n_gt − k) for k
    # matches, correspondPixels' objective (+ the constant k).
    n = a + b
    sr = np.concatenate([ii, np.arange(a), a + np.arange(b), a + jj])
    sc = np.concatenate([jj, b + np.arange(a), np.arange(b), b + ii])
    sw = np.concatenate([cost + 1.0, np.full(a + b + len(ii), outlier)])
    graph = csr_matrix((sw, (sr, sc)), shape=(n, n))
    row_ind, col_ind = min_weight_full_bipartite_matching(graph)
    real = (row_ind < a) & (col_ind < b)
    matched_pred[ui[row_ind[real]]] = True
    matched_gt[uj[col_ind[real]]] = True
    return matched_pred, matched_gt


def correspond_pixels(pred: np.ndarray, gt: np.ndarray, max_dist: float = MAX_DIST) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one correspondence of two boundary maps (the benchmark's ``correspondPixels``).

    Pixels at most ``max_dist × diagonal`` apart (Euclidean) may match. Among all
    one-to-one matchings the one of least cost is chosen, where an unmatched pixel
    costs ``ceil(100 · 100 · max_dist_px)`` and a matched pair ``round(100 · distance)``
    — the MATLAB objective. Since an unmatched pixel costs far more than any distance
    (43,400 vs at most 434 at BSDS sizes), this is in practice a maximum-cardinality
    matching that prefers short matches.

    **How it differs from the MATLAB code, and why the results agree.** MATLAB solves
    this assignment problem with Goldberg–Kennedy's cost-scaling algorithm (CSA) on a
    graph where each pixel may go unmatched only through 6 randomly chosen "outlier"
    nodes (plus a 100× dearer fallback edge), so its solution depends on the random
    draw and on CSA's ε-optimal termination. Here the same objective is solved exactly
    with scipy's ``min_weight_full_bipartite_matching`` (LAPJVsp) on a deterministic
    graph in which every pixel has its own outlier. Same objective, so the same
    matched *counts* wherever MATLAB finds the optimum; where its sparse random
    outlier graph or CSA's tolerance make it miss a few matches, castvit matches a few
    more pixels. Ties between equally cheap matchings are broken differently, which can
    change *which* predicted pixels match an annotator and so the any-annotator
    precision by a few pixels. On the BSDS example (``bench/test_2…4``) per-image
    recall comes out 0 to +0.0005 and precision −0.0013 to +0.0008 off MATLAB's, and
    every data-set figure within 0.0006 — about what separates two MATLAB runs
    (~1e-3 per image), and well inside the tolerances tested (0.005 / 0.01).

    Args:
        pred, gt: ``H×W`` boundary maps (nonzero = boundary).
        max_dist: match distance as a fraction of the image diagonal.

    Returns:
        ``(match1, match2)``: ``H×W`` bool maps of the matched pixels of ``pred`` and
        of ``gt``.
    """
    pred = np.asarray(pred) != 0
    gt = np.asarray(gt) != 0
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"pred and gt must be H×W maps of one shape, got {pred.shape} and {gt.shape}")
    mp_, mg = match_boundaries(pred, gt, max_dist * math.hypot(*pred.shape))
    m1 = np.zeros(pred.shape, dtype=bool)
    m2 = np.zeros(gt.shape, dtype=bool)
    m1[np.nonzero(pred)] = mp_
    m2[np.nonzero(gt)] = mg
    return m1, m2


def default_thresholds(nthresh: int = NTHRESH) -> np.ndarray:
    """``linspace(1/(n+1), 1 − 1/(n+1), n)``: the thresholds of UCMs and boundary maps."""
    if isinstance(nthresh, bool) or not isinstance(nthresh, (int, np.integer)) or nthresh < 1:
        raise ValueError(f"nthresh must be a positive integer, got {nthresh!r}")
    return np.linspace(1.0 / (nthresh + 1), 1.0 - 1.0 / (nthresh + 1), int(nthresh))


# ---------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class GroundTruth:
    """The human segmentations of one image: ``K`` label maps and their ``Boundaries``."""

    segmentations: list[np.ndarray]
    boundaries: list[np.ndarray]
    path: str | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.segmentations[0].shape)

    @classmethod
    def from_segmentations(cls, segmentations: Sequence[np.ndarray] | np.ndarray,
                           path: str | None = None) -> "GroundTruth":
        """Ground truth from label maps alone; boundaries = ``thin(seg2bdry(seg))`` (BSDS's rule)."""
        segs = [np.asarray(s) for s in (list(segmentations) if not isinstance(segmentations, np.ndarray)
                                        or segmentations.ndim == 3 else [segmentations])]
        if not segs:
            raise BSDSError(f"{path or 'ground truth'}: no segmentations")
        return cls([s for s in segs], [thin(seg2bdry(s)) for s in segs], path)


def _loadmat(path: str | os.PathLike, what: str) -> dict[str, Any]:
    from scipy.io import loadmat

    p = Path(path)
    if not p.is_file():
        raise BSDSError(f"{what} {str(p)!r} does not exist")
    try:
        return loadmat(str(p))
    except NotImplementedError:
        raise BSDSError(f"{str(p)!r} is a MATLAB v7.3 (HDF5) file; save it with save(..., '-v7') "
                        "or read it with h5py and pass the arrays") from None
    except Exception as exc:  # scipy's own error types for damaged files
        raise BSDSError(f"{what} {str(p)!r} is not a readable .mat file ({str(exc).splitlines()[0]})") from None


def _variable(data: Mapping[str, Any], name: str, path: str | os.PathLike) -> Any:
    if name not in data:
        found = sorted(k for k in data if not k.startswith("__"))
        raise BSDSError(f"{str(path)!r} has no variable {name!r} (it holds: {', '.join(found) or 'nothing'})")
    return data[name]


def _cells(x: Any) -> list[Any]:
    arr = np.asarray(x)
    if arr.dtype == object:
        return [c for c in arr.reshape(-1, order="F")]
    return [arr]


def load_ground_truth(path: str | os.PathLike) -> GroundTruth:
    """Read a BSDS ``groundTruth/<id>.mat`` (1×K cell of structs with ``Segmentation``
    and ``Boundaries``)."""
    data = _loadmat(path, "ground-truth file")
    cells = _cells(_variable(data, "groundTruth", path))
    segs, bdrys = [], []
    for k, cell in enumerate(cells):
        fields = cell.dtype.names if hasattr(cell, "dtype") else None
        if not fields or "Segmentation" not in fields:
            raise BSDSError(f"{str(path)!r}: groundTruth{{{k + 1}}} has no 'Segmentation' field")
        seg = np.asarray(cell["Segmentation"][0, 0])
        segs.append(seg.astype(np.int64))
        bdrys.append(np.asarray(cell["Boundaries"][0, 0]).astype(bool) if "Boundaries" in fields
                     else thin(seg2bdry(seg)))
    if not segs:
        raise BSDSError(f"{str(path)!r}: groundTruth is empty")
    for k, s in enumerate(segs[1:], 2):
        if s.shape != segs[0].shape:
            raise BSDSError(f"{str(path)!r}: annotation {k} is {s.shape}, annotation 1 is {segs[0].shape}")
    return GroundTruth(segs, bdrys, str(path))


def load_segs(path: str | os.PathLike) -> list[np.ndarray]:
    """Read a ``segs`` .mat: a 1×T cell of label maps, fine to coarse."""
    data = _loadmat(path, "segmentation file")
    segs = [np.asarray(s) for s in _cells(_variable(data, "segs", path))]
    for t, s in enumerate(segs):
        if s.ndim != 2 or not (np.issubdtype(s.dtype, np.integer) or np.issubdtype(s.dtype, np.floating)):
            raise BSDSError(f"{str(path)!r}: segs{{{t + 1}}} is not a label map (shape {s.shape}, dtype {s.dtype})")
    if not segs:
        raise BSDSError(f"{str(path)!r}: segs is empty")
    return [s.astype(np.int64) for s in segs]


def load_ucm2(path: str | os.PathLike) -> np.ndarray:
    """Read a ``ucm2`` .mat: the double-size ``(2H+1)×(2W+1)`` UCM."""
    data = _loadmat(path, "UCM file")
    ucm = np.asarray(_variable(data, "ucm2", path), dtype=np.float64)
    if ucm.ndim != 2 or ucm.shape[0] % 2 == 0 or ucm.shape[1] % 2 == 0:
        raise BSDSError(f"{str(path)!r}: ucm2 must be a (2H+1)×(2W+1) map, got shape {ucm.shape}")
    return ucm


def load_boundary_png(path: str | os.PathLike) -> np.ndarray:
    """Read a soft boundary map (8-bit PNG, higher = stronger) as ``H×W`` float in [0, 1]."""
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise BSDSError(f"boundary map {str(p)!r} does not exist")
    try:
        with Image.open(p) as im:
            arr = np.asarray(im)
    except Exception as exc:
        raise BSDSError(f"boundary map {str(p)!r} is not a readable image ({exc})") from None
    if arr.ndim == 3:  # a grey image saved as RGB(A): take the first channel
        arr = arr[..., 0]
    if arr.dtype == np.uint16:
        return arr.astype(np.float64) / 65535.0
    return arr.astype(np.float64) / 255.0


def ucm_regions(ucm2: np.ndarray, threshold: float) -> np.ndarray:
    """Regions of a UCM at ``threshold``: 8-connected components of ``ucm2 <= t`` on the
    double grid, read at ``[1::2, 1::2]`` (``bwlabel``; labels from 1)."""
    from scipy import ndimage

    labels, _ = ndimage.label(np.asarray(ucm2) <= threshold, structure=np.ones((3, 3), dtype=bool))
    return labels[1::2, 1::2]


# ------------------------------------------------------------------- per image


def _dense(labels: np.ndarray) -> tuple[np.ndarray, int]:
    flat = np.asarray(labels).reshape(-1)
    lo, hi = int(flat.min()), int(flat.max())
    if hi - lo <= 4 * flat.size + 1024:
        shifted = flat.astype(np.int64) - lo
        present = np.bincount(shifted, minlength=hi - lo + 1) > 0
        return (np.cumsum(present) - 1)[shifted], int(present.sum())
    _, ids = np.unique(flat, return_inverse=True)
    ids = ids.reshape(-1)
    return ids.astype(np.int64), int(ids.max()) + 1


@dataclass
class _GTRegions:
    ids: list[np.ndarray]  # dense ids per annotator
    sizes: list[np.ndarray]  # region areas per annotator
    n: int  # pixels


def _gt_regions(gt: GroundTruth) -> _GTRegions:
    ids, sizes = [], []
    for s in gt.segmentations:
        d, k = _dense(s)
        ids.append(d)
        sizes.append(np.bincount(d, minlength=k).astype(np.float64))
    return _GTRegions(ids, sizes, int(gt.segmentations[0].size))


def _entropy_bits(counts: np.ndarray, total: float) -> float:
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


def _region_scores(seg: np.ndarray, gtr: _GTRegions) -> dict[str, Any]:
    """Covering counts, PRI and VI of one segmentation against every annotator."""
    s_ids, ns = _dense(seg)
    s_size = np.bincount(s_ids, minlength=ns).astype(np.float64)
    n = float(gtr.n)
    best_seg = np.zeros(ns)  # each segment's best IoU over every GT region
    best_gt = []  # each GT region's best IoU, per annotator
    ri = vi = 0.0
    pairs_total = n * (n - 1) / 2
    for g_ids, g_size in zip(gtr.ids, gtr.sizes):
        ng = len(g_size)
        code = g_ids * ns + s_ids
        if ng * ns <= 4 * code.size + 1024:
            full = np.bincount(code, minlength=ng * ns)
            cells = np.flatnonzero(full)
            cnt = full[cells].astype(np.float64)
        else:
            cells, cnt = np.unique(code, return_counts=True)
            cnt = cnt.astype(np.float64)
        gi, si = cells // ns, cells % ns
        iou = cnt / (g_size[gi] + s_size[si] - cnt)
        bg = np.zeros(ng)
        np.maximum.at(bg, gi, iou)
        np.maximum.at(best_seg, si, iou)
        best_gt.append(bg)
        ri += 1.0 - ((g_size**2).sum() / 2 + (s_size**2).sum() / 2 - (cnt**2).sum()) / pairs_total
        vi += max(2 * _entropy_bits(cnt, n) - _entropy_bits(g_size, n) - _entropy_bits(s_size, n), 0.0)
    k = len(gtr.ids)
    best_gt_all = np.concatenate(best_gt)
    areas = np.concatenate(gtr.sizes)
    return {
        "cover_cnt_r": float((areas * best_gt_all).sum()),
        "cover_sum_r": float(areas.sum()),
        "cover_cnt_p": float((s_size * best_seg).sum()),
        "cover_sum_p": float(s_size.sum()),
        "best_gt": best_gt_all,
        "pri": ri / k,
        "vi": vi / k,
        "num_segments": ns,
    }


def _boundary_counts(bmap: np.ndarray, gt: GroundTruth, max_dist_px: float) -> tuple[int, int, int, int]:
    """``(cntR, sumR, cntP, sumP)`` of one thinned boundary map."""
    acc = np.zeros(int(bmap.sum()), dtype=bool)
    cnt_r = sum_r = 0
    for g in gt.boundaries:
        m1, m2 = match_boundaries(bmap, g, max_dist_px)
        acc |= m1
        cnt_r += int(m2.sum())
        sum_r += int(g.sum())
    return cnt_r, sum_r, int(acc.sum()), len(acc)


def evaluate_image(gt: GroundTruth, *, segs: Sequence[np.ndarray] | None = None, ucm2: np.ndarray | None = None,
                   pb: np.ndarray | None = None, nthresh: int = NTHRESH, max_dist: float = MAX_DIST,
                   boundaries: bool = True, regions: bool = True, name: str = "prediction") -> dict[str, Any]:
    """Boundary counts and region scores of one image at every threshold.

    Give exactly one of ``segs`` (``T`` label maps; thresholds ``1..T``), ``ucm2``
    (``(2H+1)×(2W+1)``) or ``pb`` (``H×W`` in [0, 1]; boundaries only).

    Returns:
        Per-threshold numpy arrays: ``thresholds``; boundary ``cnt_r``, ``sum_r``,
        ``cnt_p``, ``sum_p``; for ``segs``/``ucm2`` also ``cover_cnt_r``,
        ``cover_sum_r``, ``cover_cnt_p``, ``cover_sum_p``, ``pri``, ``vi``,
        ``num_segments`` and the scalar ``cover_best_cnt_r``. Feed a dict of these
        (one per image) to :func:`summarize`.
    """
    given = [x is not None for x in (segs, ucm2, pb)]
    if sum(given) != 1:
        raise ValueError("give exactly one of segs=, ucm2=, pb=")
    h, w = gt.shape
    if segs is not None:
        maps = [np.asarray(s) for s in (segs if not isinstance(segs, np.ndarray) or segs.ndim == 3 else [segs])]
        if not maps:
            raise BSDSError(f"{name}: no segmentations")
        for t, s in enumerate(maps):
            if s.shape != (h, w):
                raise BSDSError(f"{name}: segmentation {t + 1} is {s.shape[0]}×{s.shape[1]} (H×W) but the ground "
                                f"truth {gt.path or ''} is {h}×{w}")
        thresholds = np.arange(1, len(maps) + 1, dtype=np.float64)
    elif ucm2 is not None:
        ucm2 = np.asarray(ucm2, dtype=np.float64)
        if ucm2.shape != (2 * h + 1, 2 * w + 1):
            raise BSDSError(f"{name}: ucm2 is {ucm2.shape[0]}×{ucm2.shape[1]} but the ground truth "
                            f"{gt.path or ''} needs {2 * h + 1}×{2 * w + 1} (double size of {h}×{w})")
        thresholds = default_thresholds(nthresh)
        pb = ucm2[2::2, 2::2]
    else:
        pb = np.asarray(pb, dtype=np.float64)
        if pb.shape != (h, w):
            raise BSDSError(f"{name}: boundary map is {pb.shape[0]}×{pb.shape[1]} (H×W) but the ground truth "
                            f"{gt.path or ''} is {h}×{w}")
        thresholds = default_thresholds(nthresh)
        regions = False
    nt = len(thresholds)
    out: dict[str, Any] = {"thresholds": thresholds}
    max_dist_px = max_dist * math.hypot(h, w)

    if boundaries:
        counts = np.zeros((nt, 4), dtype=np.int64)
        prev = None
        for t in range(nt):
            raw = seg2bdry(maps[t]) if segs is not None else pb >= thresholds[t]
            if prev is not None and np.array_equal(raw, prev):
                counts[t] = counts[t - 1]
                continue
            counts[t] = _boundary_counts(thin(raw), gt, max_dist_px)
            prev = raw
        for k, key in enumerate(("cnt_r", "sum_r", "cnt_p", "sum_p")):
            out[key] = counts[:, k]

    if regions:
        gtr = _gt_regions(gt)
        keys = ("cover_cnt_r", "cover_sum_r", "cover_cnt_p", "cover_sum_p", "pri", "vi", "num_segments")
        vals = {k: np.zeros(nt) for k in keys}
        best = np.zeros(sum(len(s) for s in gtr.sizes))
        prev, last = None, None
        for t in range(nt):
            if segs is not None:
                seg = maps[t]
            else:
                mask = ucm2 <= thresholds[t]
                if prev is not None and np.array_equal(mask, prev):
                    for k in keys:
                        vals[k][t] = last[k]
                    continue
                prev = mask
                seg = ucm_regions(ucm2, thresholds[t])
            last = _region_scores(seg, gtr)
            for k in keys:
                vals[k][t] = last[k]
            best = np.maximum(best, last["best_gt"])
        out.update(vals)
        out["num_segments"] = vals["num_segments"].astype(np.int64)
        out["cover_best_cnt_r"] = float((np.concatenate(gtr.sizes) * best).sum())
    return out


# --------------------------------------------------------------------- summary


def _fmeasure(r: np.ndarray, p: np.ndarray) -> np.ndarray:
    r, p = np.asarray(r, dtype=np.float64), np.asarray(p, dtype=np.float64)
    return 2 * p * r / (p + r + ((p + r) == 0))


def _ratio(cnt: np.ndarray, tot: np.ndarray) -> np.ndarray:
    cnt, tot = np.asarray(cnt, dtype=np.float64), np.asarray(tot, dtype=np.float64)
    return cnt / (tot + (tot == 0))


def _max_f(thresholds: np.ndarray, r: np.ndarray, p: np.ndarray) -> tuple[float, float, float, float]:
    """The benchmark's ``maxF``: best F along the P–R curve, linearly interpolated
    between consecutive thresholds at 100 points; the first best wins."""
    t_all, r_all, p_all = [thresholds[:1]], [r[:1]], [p[:1]]
    if len(thresholds) > 1:
        d = np.linspace(0.0, 1.0, 100)[None, :]
        for arr, acc in ((thresholds, t_all), (r, r_all), (p, p_all)):
            acc.append((arr[1:, None] * d + arr[:-1, None] * (1 - d)).reshape(-1))
    t_c, r_c, p_c = (np.concatenate(x) for x in (t_all, r_all, p_all))
    f_c = _fmeasure(r_c, p_c)
    i = int(np.argmax(f_c))
    return float(t_c[i]), float(r_c[i]), float(p_c[i]), float(f_c[i])


def _last_argmax(x: np.ndarray) -> int:
    return int(np.flatnonzero(x == x.max())[-1])


def _last_argmin(x: np.ndarray) -> int:
    return int(np.flatnonzero(x == x.min())[-1])


def _average_precision(r: np.ndarray, p: np.ndarray) -> float:
    ru, first = np.unique(r, return_index=True)
    if len(ru) < 2:
        return 0.0
    pi = np.interp(np.arange(101) * 0.01, ru, p[first], left=np.nan, right=np.nan)
    return float(np.nan_to_num(pi, nan=0.0).sum() * 0.01)


def _thresholds_of(per_image: Mapping[str, Mapping[str, Any]]) -> np.ndarray:
    items = list(per_image.items())
    if not items:
        raise ValueError("no images to summarize")
    thresholds = np.asarray(items[0][1]["thresholds"], dtype=np.float64)
    for iid, res in items[1:]:
        th = np.asarray(res["thresholds"], dtype=np.float64)
        if th.shape != thresholds.shape or not np.allclose(th, thresholds):
            raise BSDSError(f"image {iid} was scored at {len(th)} thresholds but image {items[0][0]} at "
                            f"{len(thresholds)}; every image needs the same thresholds (segs: the same number "
                            "of segmentations)")
    return thresholds


def summarize(per_image: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Data-set figures from :func:`evaluate_image` results (``{image_id: result}``), as
    ``collect_eval_bdry.m`` / ``collect_eval_reg.m`` compute them.

    Returns a JSON-ready dict: ``thresholds``, ``boundary`` (``ods``
    ``{threshold, recall, precision, f}``, ``ois`` ``{recall, precision, f}``, ``ap``,
    ``curve``), and with regions ``covering`` (``ods``, ``ois``, ``best``,
    ``ods_threshold``, ``curve``), ``pri`` and ``vi`` (``ods``, ``ois``,
    ``ods_threshold``, ``curve``), ``num_segments`` (mean per threshold) and
    ``images`` (per image: best-threshold rows like ``eval_bdry_img.txt`` /
    ``eval_cover_img.txt`` and every per-threshold value).
    """
    thresholds = _thresholds_of(per_image)
    ids = list(per_image)
    res = [per_image[i] for i in ids]
    out: dict[str, Any] = {"thresholds": thresholds.tolist()}
    images: dict[str, dict[str, Any]] = {i: {"thresholds": thresholds.tolist()} for i in ids}

    if all("cnt_r" in r for r in res):
        c = {k: np.stack([np.asarray(r[k], dtype=np.float64) for r in res])
             for k in ("cnt_r", "sum_r", "cnt_p", "sum_p")}
        tot = {k: v.sum(0) for k, v in c.items()}
        r_t, p_t = _ratio(tot["cnt_r"], tot["sum_r"]), _ratio(tot["cnt_p"], tot["sum_p"])
        f_t = _fmeasure(r_t, p_t)
        bt, br, bp, bf = _max_f(thresholds, r_t, p_t)
        sel = {k: 0.0 for k in c}
        for n, iid in enumerate(ids):
            ri, pi = _ratio(c["cnt_r"][n], c["sum_r"][n]), _ratio(c["cnt_p"][n], c["sum_p"][n])
            fi = _fmeasure(ri, pi)
            j = _last_argmax(fi)
            for k in c:
                sel[k] += c[k][n, j]
            it, ir, ip, iff = _max_f(thresholds, ri, pi)
            images[iid]["boundary"] = {
                "best": {"threshold": it, "recall": ir, "precision": ip, "f": iff},
                "recall": ri.tolist(), "precision": pi.tolist(), "f": fi.tolist(),
                **{k: c[k][n].astype(np.int64).tolist() for k in c},
            }
        r_o, p_o = float(_ratio(sel["cnt_r"], sel["sum_r"])), float(_ratio(sel["cnt_p"], sel["sum_p"]))
        out["boundary"] = {
            "ods": {"threshold": bt, "recall": br, "precision": bp, "f": bf},
            "ois": {"recall": r_o, "precision": p_o, "f": float(_fmeasure(r_o, p_o))},
            "ap": _average_precision(r_t, p_t),
            "curve": {"threshold": thresholds.tolist(), "recall": r_t.tolist(), "precision": p_t.tolist(),
                      "f": f_t.tolist()},
        }

    if all("cover_cnt_r" in r for r in res):
        c = {k: np.stack([np.asarray(r[k], dtype=np.float64) for r in res])
             for k in ("cover_cnt_r", "cover_sum_r", "cover_cnt_p", "cover_sum_p", "pri", "vi", "num_segments")}
        cov_t = _ratio(c["cover_cnt_r"].sum(0), c["cover_sum_r"].sum(0))
        j = int(np.argmax(cov_t))
        cnt_sel = sum_sel = 0.0
        for n, iid in enumerate(ids):
            ci = _ratio(c["cover_cnt_r"][n], c["cover_sum_r"][n])
            pi = _ratio(c["cover_cnt_p"][n], c["cover_sum_p"][n])
            last = _last_argmax(ci)
            cnt_sel += c["cover_cnt_r"][n, last]
            sum_sel += c["cover_sum_r"][n, last]
            first = int(np.argmax(ci))
            images[iid]["covering"] = {
                "best": {"threshold": float(thresholds[first]), "covering": float(ci[first]),
                         "precision": float(pi[first])},
                "values": ci.tolist(),
                "best_over_thresholds": float(res[n]["cover_best_cnt_r"] / c["cover_sum_r"][n, 0]),
            }
            images[iid]["pri"] = c["pri"][n].tolist()
            images[iid]["vi"] = c["vi"][n].tolist()
            images[iid]["num_segments"] = c["num_segments"][n].astype(np.int64).tolist()
        best_total = sum(float(r["cover_best_cnt_r"]) for r in res) / c["cover_sum_r"][:, 0].sum()
        pri_t, vi_t = c["pri"].mean(0), c["vi"].mean(0)
        jr, jv = int(np.argmax(pri_t)), int(np.argmin(vi_t))
        out["covering"] = {"ods": float(cov_t[j]), "ois": float(cnt_sel / sum_sel), "best": float(best_total),
                           "ods_threshold": float(thresholds[j]), "curve": cov_t.tolist()}
        out["pri"] = {"ods": float(pri_t[jr]), "ois": float(np.mean([x[_last_argmax(x)] for x in c["pri"]])),
                      "ods_threshold": float(thresholds[jr]), "curve": pri_t.tolist()}
        out["vi"] = {"ods": float(vi_t[jv]), "ois": float(np.mean([x[_last_argmin(x)] for x in c["vi"]])),
                     "ods_threshold": float(thresholds[jv]), "curve": vi_t.tolist()}
        out["num_segments"] = c["num_segments"].mean(0).tolist()
    out["images"] = images
    return out


# -------------------------------------------------------------------- data set

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def list_images(root: str | os.PathLike, split: str | None = "test") -> tuple[list[str], Path, Path]:
    """Image ids of a BSDS folder and where their images and ground truth live.

    ``root`` holds ``images/`` and ``groundTruth/``, with a sub-folder per split
    (``images/test/*.jpg``, ``groundTruth/test/*.mat``) or, as in the benchmark's own
    5-image example, none (``split=None``, or a root without that split's folder).

    Returns:
        ``(ids, image_dir, gt_dir)``, ids sorted by name (the MATLAB ``dir`` order).
    """
    root = Path(root)
    if not (root / "images").is_dir():
        raise BSDSError(f"{str(root)!r} has no images/ folder; --root must be the folder holding images/ and "
                        "groundTruth/ (e.g. BSR/BSDS500/data)")
    image_dir, gt_dir = root / "images", root / "groundTruth"
    if split and (image_dir / split).is_dir():
        image_dir, gt_dir = image_dir / split, gt_dir / split
    elif split and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in image_dir.iterdir()):
        raise BSDSError(f"{str(root)!r} has no images/{split}/ folder")
    ids = sorted(p.stem for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not ids:
        raise BSDSError(f"no images (*.jpg, *.png) in {str(image_dir)!r}")
    if not gt_dir.is_dir():
        raise BSDSError(f"ground-truth folder {str(gt_dir)!r} does not exist")
    return ids, image_dir, gt_dir


def _image_path(image_dir: Path, image_id: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        p = image_dir / f"{image_id}{suffix}"
        if p.is_file():
            return p
    raise BSDSError(f"image {image_id} not found in {str(image_dir)!r}")


def load_image(path: str | os.PathLike) -> np.ndarray:
    """``H×W×3`` uint8 RGB."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


class FilePredictions:
    """Predictions stored one file per image: ``<directory>/<id>.mat`` (``segs`` or
    ``ucm2``) or ``<directory>/<id>.png`` (soft boundaries)."""

    in_workers = True

    def __init__(self, kind: str, directory: str | os.PathLike):
        if kind not in ("segs", "ucm2", "boundaries"):
            raise ValueError(f"kind must be 'segs', 'ucm2' or 'boundaries', got {kind!r}")
        self.kind, self.directory = kind, Path(directory)
        if not self.directory.is_dir():
            raise BSDSError(f"--{kind} folder {str(self.directory)!r} does not exist")

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.directory)}

    def path(self, image_id: str) -> Path:
        return self.directory / f"{image_id}{'.png' if self.kind == 'boundaries' else '.mat'}"

    def check(self, image_id: str) -> None:
        p = self.path(image_id)
        if not p.is_file():
            raise BSDSError(f"prediction {str(p)!r} for image {image_id} does not exist")

    def __call__(self, image_id: str, image_path: Path) -> dict[str, Any]:
        p = self.path(image_id)
        if self.kind == "segs":
            return {"segs": load_segs(p), "source": str(p)}
        if self.kind == "ucm2":
            return {"ucm2": load_ucm2(p), "source": str(p)}
        return {"pb": load_boundary_png(p), "source": str(p)}


class HierarchyPredictions:
    """castvit's hierarchy of every image (``castvit.segment``), scored as a segmentation
    stack: level 0 (the superpixels) … the top level, thresholds ``1..L``. Runs the
    model in the calling process; the scoring goes to the worker processes."""

    in_workers = False

    def __init__(self, model: Any, *, size: int | str | None = "auto", n_segments: int | None = None,
                 description: Mapping[str, Any] | None = None):
        self.model, self.size, self.n_segments = model, size, n_segments
        self.description = dict(description or {})

    def describe(self) -> dict[str, Any]:
        return {"kind": "hierarchy", "size": self.size, "n_segments": self.n_segments, **self.description}

    def check(self, image_id: str) -> None:
        pass

    def __call__(self, image_id: str, image_path: Path) -> dict[str, Any]:
        import castvit

        kwargs = {} if self.n_segments is None else {"n_segments": self.n_segments}
        hierarchy = castvit.segment(self.model, load_image(image_path), size=self.size, **kwargs)
        return {"segs": [np.asarray(m).astype(np.int32) for m in hierarchy.label_maps()]}


@dataclass
class _Job:
    image_id: str
    gt_path: str
    image_path: str
    nthresh: int
    max_dist: float
    predictor: Any = None
    prediction: dict[str, Any] | None = None
    scorer: Any = None  # an object with extra_scores(prediction, gt), e.g. superpixel quality


def _run_job(job: _Job) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    gt = load_ground_truth(job.gt_path)
    pred = job.prediction if job.prediction is not None else job.predictor(job.image_id, Path(job.image_path))
    name = pred.get("source") or f"prediction for image {job.image_id}"
    result = evaluate_image(gt, segs=pred.get("segs"), ucm2=pred.get("ucm2"), pb=pred.get("pb"),
                            nthresh=job.nthresh, max_dist=job.max_dist, name=name)
    extra = job.scorer.extra_scores(pred, gt) if job.scorer is not None else None
    return job.image_id, result, extra


def _ordered_results(jobs: Iterable[_Job], workers: int) -> Iterator[tuple[str, dict[str, Any], dict | None]]:
    """Run jobs in a process pool (at most ``2 × workers`` in flight), yielding results
    in job order; ``workers <= 1`` runs them here."""
    if workers <= 1:
        for job in jobs:
            yield _run_job(job)
        return
    # fork on Linux: workers inherit the loaded modules and callers need no
    # ``if __name__ == "__main__"`` guard; elsewhere the platform default (spawn).
    ctx = mp.get_context("fork") if sys.platform.startswith("linux") else mp.get_context()
    with ctx.Pool(workers) as pool:
        pending: deque = deque()
        for job in jobs:
            pending.append(pool.apply_async(_run_job, (job,)))
            while len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def evaluate_dataset(root: str | os.PathLike, split: str | None, predictions: Any, *, nthresh: int = NTHRESH,
                     max_dist: float = MAX_DIST, workers: int | None = None, progress: bool = True,
                     limit: int | None = None, image_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Score a method on a BSDS split: every image, in parallel, then :func:`summarize`.

    Args:
        root: folder holding ``images/`` and ``groundTruth/``.
        split: ``"train"``, ``"val"``, ``"test"`` or None (no split folders).
        predictions: :class:`FilePredictions`, :class:`HierarchyPredictions`,
            :class:`castvit.eval.superpixel_quality.SuperpixelPredictions` or any object
            with the same ``__call__(image_id, image_path)`` (returning ``{"segs"|"ucm2"|
            "pb": …}``), ``check(image_id)``, ``describe()`` and ``in_workers``; one
            with ``extra_scores(prediction, gt)`` and ``extra_key`` adds per-image
            extra figures, averaged over images under ``extra_key``.
        nthresh: thresholds for UCMs and boundary maps (segs use their own count).
        max_dist: boundary match distance (fraction of the diagonal).
        workers: processes; default: every CPU, at most the number of images.
        progress: tqdm progress bar.
        limit: score only the first ``limit`` images (name order).
        image_ids: score only these images.

    Returns:
        :func:`summarize`'s dict plus ``benchmark``, ``split``, ``input``,
        ``num_images``, ``nthresh``, ``max_dist`` and, for predictions with extra
        scores, their means over images (for superpixels: ``superpixels``, the
        means of :func:`~castvit.eval.superpixel_quality.superpixel_quality`, the
        min/max count and the count requested).
    """
    from tqdm.auto import tqdm

    ids, image_dir, gt_dir = list_images(root, split)
    if image_ids is not None:
        missing = sorted(set(image_ids) - set(ids))
        if missing:
            raise BSDSError(f"no image {missing[0]} in {str(image_dir)!r}")
        ids = [i for i in ids if i in set(image_ids)]
    if limit is not None:
        ids = ids[: int(limit)]
    for iid in ids:  # fail before any work on a missing file
        gt_path = gt_dir / f"{iid}.mat"
        if not gt_path.is_file():
            raise BSDSError(f"ground-truth file {str(gt_path)!r} for image {iid} does not exist")
        predictions.check(iid)
    workers = min(os.cpu_count() or 1, len(ids)) if workers is None else max(1, min(int(workers), len(ids)))

    def jobs() -> Iterator[_Job]:
        for iid in ids:
            job = _Job(iid, str(gt_dir / f"{iid}.mat"), str(_image_path(image_dir, iid)), nthresh, max_dist,
                       scorer=predictions if hasattr(predictions, "extra_scores") else None)
            if predictions.in_workers:
                job.predictor = predictions
            else:
                job.prediction = predictions(iid, Path(job.image_path))
            yield job

    per_image: dict[str, dict[str, Any]] = {}
    extras: dict[str, dict[str, Any]] = {}
    bar = tqdm(total=len(ids), desc="BSDS500", unit="img", disable=not progress)
    try:
        for iid, result, sp in _ordered_results(jobs(), workers):
            per_image[iid] = result
            if sp is not None:
                extras[iid] = sp
            bar.update(1)
    finally:
        bar.close()
    used_split = split if split and image_dir.name == split else None  # None: a root without split folders
    out = {"benchmark": "bsds500", "root": str(Path(root)), "split": used_split, "input": predictions.describe(),
           "num_images": len(ids), "nthresh": nthresh, "max_dist": max_dist, **summarize(per_image)}
    if extras:
        key = getattr(predictions, "extra_key", "extra")
        rows = [extras[i] for i in ids]
        agg: dict[str, Any] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        if "count" in rows[0]:
            agg["count_min"] = int(min(r["count"] for r in rows))
            agg["count_max"] = int(max(r["count"] for r in rows))
            agg["requested"] = getattr(predictions, "n_segments", None)
        out[key] = agg
        for iid in ids:
            out["images"][iid][key] = extras[iid]
    return out
