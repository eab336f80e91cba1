"""Ultrametric contour maps (UCMs) ↔ stacks of nested label maps (numpy only).

A UCM is the BSDS ``ucm2`` format: a ``(2H+1)×(2W+1)`` map on the double-resolution
grid. In 0-based indexing pixel ``(i, j)`` sits at ``[2i+1, 2j+1]`` (always 0), the
edge between two 4-neighbours at the cell between them, corner cells at
``[2i, 2j]``; the outer rows and columns copy their inner neighbours (BSDS
``seg2bdry``'s border rule). A boundary's value is the height at which it disappears.

* :func:`levels_to_ucm`: ``L`` label maps (fine to coarse) → UCM in [0, 1]. The edge
  between two pixels holds ``(1 + the last level at which they are in different
  segments) / L``: ``k/L`` for a boundary of levels ``0..k−1`` that is gone from
  level ``k`` on, 1 for a boundary of the top level, 0 inside a level-0 segment. A
  corner cell holds the largest of its four edges.
* :func:`ucm_to_levels`: cut a UCM into label maps at thresholds or segment counts.
  The regions at ``t`` are the 8-connected components of ``ucm <= t`` on the double
  grid, read at ``[1::2, 1::2]`` (the BSDS benchmark's rule), i.e. the
  4-connected pieces of the pixels whose separating edges are all ``<= t``.
* :func:`level_thresholds`: where to cut a UCM from :func:`levels_to_ucm` to get each
  level back: ``(l + 1/2) / L`` for level ``l``.

Round trip: ``ucm_to_levels(levels_to_ucm(levels), level_thresholds(L))`` gives back
every level of a nested hierarchy whose segments are 4-connected, up to a renaming of
labels. A segment in several pieces (SEEDS superpixels, CAST segments can be) comes
back as its connected pieces — a UCM cannot say that two separate regions are one
segment. In the boundary map ``ucm[2::2, 2::2] >= t`` of a cut, every level's
boundaries are exactly BSDS's ``seg2bdry`` of that level.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["levels_to_ucm", "ucm_to_levels", "level_thresholds", "ucm_boundaries"]


def _as_levels(levels: Any) -> list[np.ndarray]:
    if hasattr(levels, "label_maps"):  # a castvit Hierarchy
        levels = levels.label_maps()
    if hasattr(levels, "detach"):
        levels = levels.detach().cpu().numpy()
    if isinstance(levels, np.ndarray):
        if levels.ndim == 2:
            levels = [levels]
        elif levels.ndim != 3:
            raise ValueError(f"levels must be a list of H×W label maps or an L×H×W stack, got shape {levels.shape}")
    maps = [np.asarray(m.detach().cpu().numpy() if hasattr(m, "detach") else m) for m in levels]
    if not maps:
        raise ValueError("levels is empty; pass at least one H×W label map")
    for k, m in enumerate(maps):
        if m.ndim != 2 or m.size == 0:
            raise ValueError(f"levels[{k}] must be a non-empty H×W label map, got shape {m.shape}")
        if m.dtype != bool and not np.issubdtype(m.dtype, np.integer):
            raise ValueError(f"levels[{k}] must hold integer labels, got dtype {m.dtype}")
        if m.shape != maps[0].shape:
            raise ValueError(f"levels[{k}] is {m.shape} but levels[0] is {maps[0].shape}; every level needs one size")
    return maps


def levels_to_ucm(levels: Any) -> np.ndarray:
    """The UCM of a hierarchy: each boundary's value is the level at which it disappears.

    Args:
        levels: ``L`` label maps ``H×W``, fine to coarse (a list, an ``L×H×W`` array,
            or a castvit ``Hierarchy``).

    Returns:
        ``(2H+1)×(2W+1)`` float64 in [0, 1] (values ``k/L``, ``k = 0..L``). For
        non-nested levels, a boundary lasts up to the last level that has it.
    """
    maps = _as_levels(levels)
    num = len(maps)
    h, w = maps[0].shape
    last_h = np.zeros((h, max(w - 1, 0)), dtype=np.int64)  # 1 + last level where (i,j) != (i,j+1)
    last_v = np.zeros((max(h - 1, 0), w), dtype=np.int64)  # 1 + last level where (i,j) != (i+1,j)
    for k, m in enumerate(maps, start=1):
        last_h[m[:, :-1] != m[:, 1:]] = k
        last_v[m[:-1] != m[1:]] = k
    ucm = np.zeros((2 * h + 1, 2 * w + 1), dtype=np.float64)
    ucm[1:-1:2, 2:-1:2] = last_h / num
    ucm[2:-1:2, 1:-1:2] = last_v / num
    if h > 1 and w > 1:
        ucm[2:-1:2, 2:-1:2] = np.maximum.reduce([ucm[1:-2:2, 2:-1:2], ucm[3::2, 2:-1:2],
                                                 ucm[2:-1:2, 1:-2:2], ucm[2:-1:2, 3::2]])
    ucm[0, :] = ucm[1, :]
    ucm[:, 0] = ucm[:, 1]
    ucm[-1, :] = ucm[-2, :]
    ucm[:, -1] = ucm[:, -2]
    return ucm


def level_thresholds(num_levels: int) -> np.ndarray:
    """Thresholds that cut a :func:`levels_to_ucm` map of ``num_levels`` levels back into
    its levels: ``(l + 1/2) / L``, ``l = 0..L−1``."""
    if isinstance(num_levels, bool) or not isinstance(num_levels, (int, np.integer)) or num_levels < 1:
        raise ValueError(f"num_levels must be a positive integer, got {num_levels!r}")
    return (np.arange(num_levels) + 0.5) / num_levels


def _check_ucm(ucm: Any) -> np.ndarray:
    u = np.asarray(ucm.detach().cpu().numpy() if hasattr(ucm, "detach") else ucm, dtype=np.float64)
    if u.ndim != 2 or u.shape[0] < 3 or u.shape[1] < 3 or u.shape[0] % 2 == 0 or u.shape[1] % 2 == 0:
        raise ValueError(f"a UCM must be a (2H+1)×(2W+1) map (odd sides, at least 3), got shape {u.shape}")
    if not np.isfinite(u).all():
        raise ValueError("the UCM holds NaN or inf values")
    return u


def _cut(u: np.ndarray, t: float) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    labels, n = ndimage.label(u <= t, structure=np.ones((3, 3), dtype=bool))
    regions = labels[1::2, 1::2]
    # relabel 0..K-1 in order of first appearance of the pixel grid's labels
    _, first, inverse = np.unique(regions.reshape(-1), return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.reshape(-1)].reshape(regions.shape).astype(np.int32), len(first)


def ucm_boundaries(ucm: Any, threshold: float) -> np.ndarray:
    """The ``H×W`` boundary map of a UCM at ``threshold``: ``ucm[2::2, 2::2] >= t``."""
    return _check_ucm(ucm)[2::2, 2::2] >= threshold


def ucm_to_levels(ucm: Any, thresholds: Sequence[float] | np.ndarray | None = None,
                  counts: Sequence[int] | None = None) -> list[np.ndarray]:
    """Cut a UCM into a stack of label maps (a ``Hierarchy``-like list, fine to coarse
    when the thresholds rise or the counts fall).

    Args:
        ucm: ``(2H+1)×(2W+1)`` UCM (BSDS ``ucm2``; any non-negative heights).
        thresholds: cut at each ``t``: regions are the connected components of
            ``ucm <= t``, so boundaries higher than ``t`` stay.
        counts: instead, for each ``k`` the cut whose number of regions is closest to
            ``k`` (the finer cut on a tie), searched over the UCM's distinct values.
        Neither: one cut per distinct level of the UCM, from just above 0 to just
            below its highest value (for :func:`levels_to_ucm` output: every level).

    Returns:
        List of ``H×W`` int32 label maps, labels ``0..K−1`` in order of first
        appearance (row-major).
    """
    u = _check_ucm(ucm)
    if thresholds is not None and counts is not None:
        raise ValueError("pass thresholds= or counts=, not both")
    if thresholds is not None:
        ts = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
        if ts.ndim != 1 or not np.isfinite(ts).all():
            raise ValueError(f"thresholds must be a list of finite numbers, got {thresholds!r}")
        return [_cut(u, float(t))[0] for t in ts]
    values = np.unique(u)
    if counts is None:
        if len(values) == 1:
            return [_cut(u, float(values[0]))[0]]
        mids = (values[:-1] + values[1:]) / 2  # one cut between consecutive distinct values
        return [_cut(u, float(t))[0] for t in mids]
    wanted = [int(k) for k in np.atleast_1d(counts)]
    if any(k < 1 for k in wanted):
        raise ValueError(f"counts must be positive integers, got {list(counts)!r}")
    cache: dict[int, tuple[np.ndarray, int]] = {}

    def cut_at(idx: int) -> tuple[np.ndarray, int]:
        if idx not in cache:
            cache[idx] = _cut(u, float(values[idx]))
        return cache[idx]

    out = []
    for k in wanted:
        lo, hi = 0, len(values) - 1  # regions fall as the index rises
        while lo < hi:  # first index with at most k regions
            mid = (lo + hi) // 2
            if cut_at(mid)[1] <= k:
                hi = mid
            else:
                lo = mid + 1
        best = lo
        if lo > 0 and abs(cut_at(lo - 1)[1] - k) <= abs(cut_at(lo)[1] - k):
            best = lo - 1
        out.append(cut_at(best)[0])
    return out
