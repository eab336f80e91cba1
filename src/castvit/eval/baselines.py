"""Non-learned hierarchies that a learned one must beat.

``colour_grouping``: agglomerative Ward clustering of adjacent superpixels on mean
CIELAB colour, cut at given segment counts, so it is nested like CAST's hierarchy and
compares level for level (the baseline of ``castvit demo`` and the BSDS500 figures).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from tqdm.auto import tqdm



def colour_grouping(image: np.ndarray, superpixels: np.ndarray, num_segments: Sequence[int]) -> np.ndarray:
    """A nested grouping of superpixels by colour alone (the non-learned baseline).

    Agglomerative clustering with Ward's criterion on each superpixel's mean CIELAB
    colour: repeatedly merge the two *adjacent* regions whose merge least increases
    the within-region colour variance (cost ``n_a n_b / (n_a + n_b) · |μ_a − μ_b|²``
    with ``n`` in pixels), and record the partition when ``k`` regions are left, for
    every ``k`` in ``num_segments``. One merge sequence gives every level, so the
    levels are strictly nested, like CAST's. If no adjacent pair is left (a region
    graph in pieces), the closest non-adjacent pair is merged.

    Args:
        image: ``H×W×3`` uint8 RGB.
        superpixels: ``H×W`` integer labels.
        num_segments: segments per level, fine to coarse (e.g. ``(16, 8, 4, 2)``); a
            level asking for at least as many segments as there are superpixels is
            the superpixel map.

    Returns:
        ``(1 + L)×H×W`` int16: the superpixels relabelled ``0..K-1``, then one map per
        level.
    """
    from skimage.color import rgb2lab

    from castvit.ops import relabel_contiguous

    sp = relabel_contiguous(superpixels)
    n = int(sp.max()) + 1
    flat = sp.ravel()
    size = np.bincount(flat, minlength=n).astype(np.float64)
    lab = rgb2lab(image).reshape(-1, 3)
    mean = np.stack([np.bincount(flat, lab[:, c], minlength=n) for c in range(3)], 1) / size[:, None]
    adjacent = np.zeros((n, n), bool)
    for a, b in ((sp[:, :-1], sp[:, 1:]), (sp[:-1], sp[1:])):
        adjacent[a.ravel(), b.ravel()] = True
    adjacent |= adjacent.T
    np.fill_diagonal(adjacent, False)

    def ward(i: int | slice) -> np.ndarray:
        return size[i, None] * size[None] / (size[i, None] + size[None]) * ((mean[i, None] - mean[None]) ** 2).sum(-1)

    cost = ward(slice(None))
    alive = np.ones(n, bool)
    owner = np.arange(n)  # superpixel -> current region
    wanted = sorted({min(k, n) for k in num_segments}, reverse=True)
    cuts = {n: owner.copy()}
    for remaining in range(n, min(wanted), -1):
        masked = np.where(adjacent & alive[:, None] & alive[None], cost, np.inf)
        if not np.isfinite(masked).any():
            masked = np.where(alive[:, None] & alive[None], cost, np.inf)
            np.fill_diagonal(masked, np.inf)
        i, j = np.unravel_index(int(np.argmin(masked)), masked.shape)
        i, j = (i, j) if i < j else (j, i)
        mean[i] = (size[i] * mean[i] + size[j] * mean[j]) / (size[i] + size[j])
        size[i] += size[j]
        alive[j] = False
        owner[owner == j] = i
        adjacent[i] |= adjacent[j]
        adjacent[:, i] = adjacent[i]
        adjacent[i, i] = False
        cost[i] = ward(i)
        cost[:, i] = cost[i]
        cuts[remaining - 1] = owner.copy()
    maps = [sp] + [relabel_contiguous(cuts[min(k, n)][sp]) for k in num_segments]
    return np.stack(maps).astype(np.int16)


def colour_grouping_batch(images: np.ndarray, superpixels: np.ndarray, num_segments: Sequence[int], *,
                          progress: bool = False) -> np.ndarray:
    """:func:`colour_grouping` of every image: ``N×(1+L)×H×W`` int16."""
    return np.stack([colour_grouping(im, sp, num_segments)
                     for im, sp in tqdm(zip(images, superpixels), desc="colour grouping", total=len(images),
                                          disable=not progress, leave=False)])
