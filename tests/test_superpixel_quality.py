"""castvit.eval.superpixel_quality against independent, loop-by-loop computations of the
standard definitions (PROTOCOLS §6) on small hand-made maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from castvit.eval.bsds import GroundTruth, seg2bdry, thin
from castvit.eval.superpixel_quality import (achievable_segmentation_accuracy, boundary_recall, compactness,
                                             number_of_superpixels, superpixel_quality, undersegmentation_error)


# ------------------------------------------------------- independent references


def naive_ue(sp: np.ndarray, gt: np.ndarray) -> float:
    total = 0
    for g in np.unique(gt):
        in_g = gt == g
        for s in np.unique(sp):
            in_s = sp == s
            inter = int((in_s & in_g).sum())
            if inter:
                total += min(inter, int((in_s & ~in_g).sum()))
    return total / sp.size


def naive_asa(sp: np.ndarray, gt: np.ndarray) -> float:
    return sum(max(int(((sp == s) & (gt == g)).sum()) for g in np.unique(gt)) for s in np.unique(sp)) / sp.size


def naive_compactness(sp: np.ndarray) -> float:
    h, w = sp.shape
    total = 0.0
    for s in np.unique(sp):
        area = perimeter = 0
        for i in range(h):
            for j in range(w):
                if sp[i, j] != s:
                    continue
                area += 1
                for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                    y, x = i + di, j + dj
                    if not (0 <= y < h and 0 <= x < w) or sp[y, x] != s:
                        perimeter += 1
        total += area / (h * w) * 4 * math.pi * area / perimeter**2
    return total


def naive_br(sp: np.ndarray, gt_boundary: np.ndarray, r: int) -> float:
    h, w = sp.shape
    sb = seg2bdry(sp)
    hits = total = 0
    for i in range(h):
        for j in range(w):
            if gt_boundary[i, j]:
                total += 1
                hits += bool(sb[max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].any())
    return hits / total


def random_maps(seed: int, shape=(13, 17), k_sp=9, k_gt=4):
    rng = np.random.default_rng(seed)
    # blocky maps (so regions have extent), then random relabelling
    sp = rng.integers(0, k_sp, size=(shape[0] // 3 + 1, shape[1] // 3 + 1)).repeat(3, 0).repeat(3, 1)
    gt = rng.integers(0, k_gt, size=(shape[0] // 4 + 1, shape[1] // 4 + 1)).repeat(4, 0).repeat(4, 1)
    return sp[: shape[0], : shape[1]] * 7 + 3, gt[: shape[0], : shape[1]]


# ------------------------------------------------------------------- hand-made


def test_hand_made_example():
    # 4×4: superpixels = left/right halves; ground truth = top row vs the rest
    sp = np.array([[0, 0, 1, 1]] * 4)
    gt = np.array([[5, 5, 5, 5], [6, 6, 6, 6], [6, 6, 6, 6], [6, 6, 6, 6]])
    # UE: each half (8 px) meets G5 in 2 px and G6 in 6 px: min(2, 6) + min(6, 2) per half
    assert undersegmentation_error(sp, gt) == pytest.approx((2 + 2) * 2 / 16)
    # ASA: each half's best GT overlap is 6 px
    assert achievable_segmentation_accuracy(sp, gt) == pytest.approx(12 / 16)
    # CO: each half is 4×2, area 8, perimeter 12 (border included): 2 · 8/16 · 4π·8/144
    assert compactness(sp) == pytest.approx(4 * math.pi * 8 / 144)
    # BR: GT boundary = row 0 (thin(seg2bdry)); superpixel boundary = column 1 → the
    # GT pixels within 1 px of column 1 are columns 0..2 of row 0
    assert thin(seg2bdry(gt)).sum() == 4
    assert boundary_recall(sp, gt, radius=1) == pytest.approx(3 / 4)
    assert boundary_recall(sp, gt, radius=0) == pytest.approx(1 / 4)
    assert number_of_superpixels(sp) == 2


def test_a_square_superpixel_has_compactness_pi_over_four():
    assert compactness(np.zeros((10, 10), int)) == pytest.approx(math.pi / 4)


def test_superpixels_equal_to_the_ground_truth_are_perfect():
    _, gt = random_maps(3)
    assert undersegmentation_error(gt, gt) == 0.0
    assert achievable_segmentation_accuracy(gt, gt) == 1.0
    assert boundary_recall(gt, gt, radius=0) == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_the_naive_computation_on_random_maps(seed):
    sp, gt = random_maps(seed)
    assert undersegmentation_error(sp, gt) == pytest.approx(naive_ue(sp, gt))
    assert achievable_segmentation_accuracy(sp, gt) == pytest.approx(naive_asa(sp, gt))
    assert compactness(sp) == pytest.approx(naive_compactness(sp))
    gb = thin(seg2bdry(gt))
    for r in (0, 1, 2):
        assert boundary_recall(sp, gt, radius=r) == pytest.approx(naive_br(sp, gb, r))


def test_several_annotators_are_averaged():
    sp, g1 = random_maps(0)
    _, g2 = random_maps(1)
    assert undersegmentation_error(sp, [g1, g2]) == pytest.approx((naive_ue(sp, g1) + naive_ue(sp, g2)) / 2)
    assert achievable_segmentation_accuracy(sp, np.stack([g1, g2])) == pytest.approx(
        (naive_asa(sp, g1) + naive_asa(sp, g2)) / 2)
    gt = GroundTruth.from_segmentations([g1, g2])
    assert boundary_recall(sp, gt, radius=1) == pytest.approx(
        (naive_br(sp, thin(seg2bdry(g1)), 1) + naive_br(sp, thin(seg2bdry(g2)), 1)) / 2)


def test_the_radius_is_round_of_0_0025_diagonal():
    # 224×224: 0.79 → 1 px; 481×321 (BSDS): 1.45 → 1 px; 800×600: 2.5 → 3 px (half up)
    for shape, r in (((224, 224), 1), ((321, 481), 1), ((600, 800), 3)):
        sp = np.zeros(shape, int)
        sp[:, shape[1] // 2:] = 1
        assert superpixel_quality(sp, sp)["boundary_recall_radius"] == r


def test_superpixel_quality_reports_the_count_produced():
    sp, gt = random_maps(2)
    q = superpixel_quality(sp, gt)
    assert q["count"] == len(np.unique(sp))
    assert set(q) == {"count", "boundary_recall", "boundary_recall_radius", "boundary_recall_2px",
                      "undersegmentation_error", "asa", "compactness"}


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="must match"):
        undersegmentation_error(np.zeros((4, 4), int), np.zeros((4, 5), int))
