"""Specification of castvit.eval.metrics: segmentation and hierarchy metrics."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from skimage import data, metrics, segmentation, transform
from sklearn.metrics import rand_score

from castvit.eval import (
    boundary_map,
    boundary_prf,
    evaluate_hierarchy,
    hierarchy_consistency,
    is_nested,
    majority_label_miou,
    ods_ois,
    prf_from_counts,
    probabilistic_rand_index,
    rand_index,
    segmentation_covering,
    variation_of_information,
)


def vertical_split(h: int, w: int, column: int) -> np.ndarray:
    """Label 0 left of ``column``, 1 from it on."""
    labels = np.zeros((h, w), dtype=np.int64)
    labels[:, column:] = 1
    return labels


def horizontal_split(h: int, w: int, row: int) -> np.ndarray:
    labels = np.zeros((h, w), dtype=np.int64)
    labels[row:, :] = 1
    return labels


def quadrants(size: int) -> np.ndarray:
    half = size // 2
    labels = np.zeros((size, size), dtype=np.int64)
    labels[:half, half:] = 1
    labels[half:, :half] = 2
    labels[half:, half:] = 3
    return labels


@pytest.fixture(scope="module")
def astronaut_slics() -> tuple[np.ndarray, np.ndarray]:
    image = transform.resize(data.astronaut(), (96, 96), anti_aliasing=True)
    fine = segmentation.slic(image, n_segments=150, start_label=0)
    coarse = segmentation.slic(image, n_segments=15, start_label=0)
    return fine, coarse


# ------------------------------------------------------------------------ boundaries


def test_boundary_map_marks_the_pixel_left_of_and_above_each_label_change():
    labels = np.array(
        [
            [0, 0, 1],
            [0, 0, 1],
            [2, 2, 2],
        ]
    )
    expected = np.array(
        [
            [0, 1, 0],
            [1, 1, 1],
            [0, 0, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(boundary_map(labels), expected)


def test_boundary_map_of_a_single_segment_is_empty():
    assert not boundary_map(np.full((5, 7), 3)).any()


def test_boundary_prf_of_a_perfect_prediction_is_one():
    gt = quadrants(40)
    result = boundary_prf(gt + 10, gt)
    assert result["precision"] == result["recall"] == result["f"] == 1.0


# 200×200 with tolerance 0.01: match radius 0.01 · 282.8 = 2.83 px.
@pytest.mark.parametrize("shift", [1, 2, -2])
def test_boundary_prf_is_one_for_a_shift_within_the_tolerance(shift):
    gt = vertical_split(200, 200, 100)
    pred = vertical_split(200, 200, 100 + shift)
    assert boundary_prf(pred, gt, tolerance=0.01)["f"] == 1.0


def test_boundary_prf_is_zero_for_a_shift_beyond_the_tolerance():
    gt = vertical_split(200, 200, 100)
    pred = vertical_split(200, 200, 105)
    result = boundary_prf(pred, gt, tolerance=0.01)
    assert result["matched_pred"] == result["matched_gt"] == 0
    assert result["f"] == 0.0


def test_boundary_prf_of_a_single_segment_prediction_has_zero_recall():
    result = boundary_prf(np.zeros((50, 50), dtype=int), quadrants(50))
    assert result["num_pred"] == 0
    assert result["recall"] == 0.0


def test_boundary_prf_matches_one_to_one_so_a_doubled_contour_halves_precision():
    gt = vertical_split(100, 100, 50)  # boundary in column 49
    doubled = np.zeros((100, 100), dtype=bool)
    doubled[:, [47, 51]] = True  # two contours, each 2 px from the true one
    result = boundary_prf(doubled, gt, tolerance=0.02)  # 2.83 px
    assert result["recall"] == 1.0
    assert result["precision"] == 0.5


def test_boundary_prf_thins_a_thick_predicted_boundary_as_the_benchmark_does():
    gt = vertical_split(100, 100, 50)
    thick = np.zeros((100, 100), dtype=bool)
    thick[:, 48:51] = True  # a 3-px band thins to one line
    result = boundary_prf(thick, gt, tolerance=0.02)
    assert result["precision"] == 1.0
    assert result["num_pred"] < 110


def test_boundary_prf_draws_label_boundaries_by_the_bsds_rule():
    from castvit.eval.bsds import seg2bdry, thin

    gt = quadrants(40)
    result = boundary_prf(gt, gt)
    assert result["num_gt"] == result["num_pred"] == int(thin(seg2bdry(gt)).sum())


def test_boundary_prf_matching_has_maximum_cardinality():
    from castvit.eval.bsds import thin

    rng = np.random.default_rng(0)
    pred = rng.random((12, 12)) < 0.3
    gt = rng.random((12, 12)) < 0.3
    tolerance = 1.5 / np.hypot(12, 12)
    result = boundary_prf(pred, gt, tolerance=tolerance)

    p, g = np.argwhere(thin(pred)), np.argwhere(gt)  # predictions are thinned, GT maps used as given
    too_far = np.linalg.norm(p[:, None] - g[None], axis=-1) > 1.5 + 1e-9
    rows, cols = linear_sum_assignment(too_far.astype(float))
    assert result["matched_gt"] == result["matched_pred"] == int((~too_far[rows, cols]).sum())


def _least_cost_max_matching(p: np.ndarray, g: np.ndarray, radius: float) -> tuple[int, float]:
    """Cardinality and total cost (rounded distance × 100) of the benchmark's matching,
    by a dense assignment: every pixel may stay unmatched at the outlier cost."""
    dist = np.linalg.norm(p[:, None].astype(float) - g[None], axis=-1)
    outlier = np.ceil(100 * radius * 100)
    n1, n2 = len(p), len(g)
    near = dist <= radius
    big = np.full((n1 + n2, n1 + n2), np.inf)
    big[:n1, :n2] = np.where(near, np.rint(dist * 100), np.inf)
    big[:n1, n2:] = np.where(np.eye(n1, dtype=bool), outlier, np.inf)
    big[n1:, :n2] = np.where(np.eye(n2, dtype=bool), outlier, np.inf)
    big[n1:, n2:] = np.where(near.T, outlier, np.inf)
    rows, cols = linear_sum_assignment(np.where(np.isinf(big), 1e12, big))
    real = (rows < n1) & (cols < n2)
    return int(real.sum()), float(big[rows[real], cols[real]].sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_boundary_matching_is_maximum_and_least_cost(seed):
    from castvit.eval.bsds import match_boundaries

    rng = np.random.default_rng(seed)
    pred = rng.random((14, 14)) < 0.3
    gt = rng.random((14, 14)) < 0.3
    radius = 1.5
    matched_pred, matched_gt = match_boundaries(pred, gt, radius)
    p, g = np.argwhere(pred), np.argwhere(gt)
    count, cost = _least_cost_max_matching(p, g, radius)
    assert matched_pred.sum() == matched_gt.sum() == count
    # the matched pixels pair up within the radius at the least total cost
    sub = np.linalg.norm(p[matched_pred][:, None].astype(float) - g[matched_gt][None], axis=-1)
    rows, cols = linear_sum_assignment(np.where(sub <= radius, np.rint(sub * 100), 1e9))
    assert np.rint(sub[rows, cols] * 100).sum() == cost


def test_boundary_prf_accepts_a_boolean_boundary_map_as_prediction():
    gt = quadrants(40)
    assert boundary_prf(boundary_map(gt), gt)["f"] == 1.0


def test_boundary_prf_credits_a_predicted_pixel_matched_in_any_annotation():
    pred = vertical_split(40, 60, 10) + vertical_split(40, 60, 30)  # edges in columns 9 and 29
    result = boundary_prf(pred, [vertical_split(40, 60, 10), vertical_split(40, 60, 30)])
    assert (result["matched_pred"], result["num_pred"]) == (80, 80)


def test_boundary_prf_pools_recall_over_the_annotations():
    pred = vertical_split(40, 60, 30)
    result = boundary_prf(pred, [vertical_split(40, 60, 30), vertical_split(40, 60, 10)])
    assert (result["matched_gt"], result["num_gt"]) == (40, 80)
    assert result["recall"] == 0.5


def test_prf_from_counts_sums_counts_before_dividing():
    counts = [
        {"matched_pred": 1, "num_pred": 1, "matched_gt": 1, "num_gt": 1},
        {"matched_pred": 0, "num_pred": 3, "matched_gt": 0, "num_gt": 3},
    ]
    result = prf_from_counts(counts)
    assert result["precision"] == result["recall"] == pytest.approx(0.25)


def test_ods_and_ois_on_two_images_with_two_levels_match_the_hand_computation():
    # Image A's edge is vertical (40 px), image B's horizontal (60 px). Level 0 finds
    # only A's edge and level 1 only B's, so no level is right for both images.
    h, w = 40, 60
    gt_a, gt_b = vertical_split(h, w, 30), horizontal_split(h, w, 20)
    empty = np.zeros((h, w), dtype=int)
    counts = [
        [boundary_prf(gt_a, gt_a), boundary_prf(empty, gt_a)],
        [boundary_prf(empty, gt_b), boundary_prf(gt_b, gt_b)],
    ]
    result = ods_ois(counts)
    # ODS, level 0: P = 40/40, R = 40/100; level 1: P = 60/60, R = 60/100 -> level 1.
    assert result["ods_level"] == 1
    assert result["ods_precision"] == 1.0
    assert result["ods_recall"] == pytest.approx(0.6)
    assert result["ods_f"] == pytest.approx(2 * 0.6 / 1.6)
    assert result["per_level"][0]["f"] == pytest.approx(2 * 0.4 / 1.4)
    # OIS picks level 0 for A and level 1 for B: every edge found, nothing spurious.
    assert result["ois_levels"] == [0, 1]
    assert result["ois_f"] == 1.0


def test_ods_ois_rejects_images_with_different_numbers_of_levels():
    c = {"matched_pred": 1, "num_pred": 1, "matched_gt": 1, "num_gt": 1}
    with pytest.raises(ValueError, match="same levels"):
        ods_ois([[c, c], [c]])


# --------------------------------------------------------------------------- regions


def skimage_vi_in_nats(a: np.ndarray, b: np.ndarray) -> float:
    # skimage returns the two conditional entropies in bits.
    return float(metrics.variation_of_information(a, b).sum() * np.log(2))


def test_variation_of_information_agrees_with_skimage_on_random_maps():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 30, (64, 48))
    b = rng.integers(0, 7, (64, 48))
    assert variation_of_information(a, b) == pytest.approx(skimage_vi_in_nats(a, b))


def test_variation_of_information_agrees_with_skimage_on_slic_maps(astronaut_slics):
    fine, coarse = astronaut_slics
    expected = skimage_vi_in_nats(fine, coarse)
    assert variation_of_information(fine, coarse) == pytest.approx(expected)


def test_variation_of_information_is_zero_for_relabelled_identical_maps(astronaut_slics):
    fine, _ = astronaut_slics
    assert variation_of_information(fine, 1000 - 3 * fine) == pytest.approx(0.0, abs=1e-12)


def test_variation_of_information_agrees_with_skimage_with_more_labels_than_pixels_per_label():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 600, (64, 48))  # sparse contingency table: 600 × 500 cells > pixels
    b = rng.integers(0, 500, (64, 48))
    assert variation_of_information(a, b) == pytest.approx(skimage_vi_in_nats(a, b))


def test_region_metrics_ignore_label_values_even_negative_or_huge(astronaut_slics):
    fine, coarse = astronaut_slics
    renamed = fine.astype(np.int64) * 10**12 - 5
    assert segmentation_covering(renamed, coarse) == segmentation_covering(fine, coarse)
    assert rand_index(renamed, -coarse) == rand_index(fine, coarse)


def test_rand_index_agrees_with_sklearn_rand_score(astronaut_slics):
    fine, coarse = astronaut_slics
    assert rand_index(fine, coarse) == pytest.approx(rand_score(coarse.ravel(), fine.ravel()))


def test_probabilistic_rand_index_with_one_annotator_is_the_rand_index(astronaut_slics):
    fine, coarse = astronaut_slics
    assert probabilistic_rand_index(fine, [coarse]) == pytest.approx(rand_score(coarse.ravel(), fine.ravel()))


def test_probabilistic_rand_index_averages_over_annotators(astronaut_slics):
    fine, coarse = astronaut_slics
    other = quadrants(96)
    expected = (rand_score(coarse.ravel(), fine.ravel()) + rand_score(other.ravel(), fine.ravel())) / 2
    assert probabilistic_rand_index(fine, np.stack([coarse, other])) == pytest.approx(expected)


def test_segmentation_covering_of_identical_maps_is_one(astronaut_slics):
    fine, _ = astronaut_slics
    assert segmentation_covering(fine + 7, fine) == 1.0


def test_segmentation_covering_matches_hand_computation():
    # GT: a 4-px column and a 12-px rest on 4×4; prediction: one segment.
    gt = vertical_split(4, 4, 1)
    pred = np.zeros((4, 4), dtype=int)
    # Covering of gt by pred: (4 · 4/16 + 12 · 12/16) / 16 = 10/16.
    assert segmentation_covering(pred, gt) == pytest.approx(10 / 16)
    # The other direction: (16 · 12/16) / 16 = 12/16.
    assert segmentation_covering(gt, pred) == pytest.approx(12 / 16)


def test_majority_label_miou_of_a_perfect_oversegmentation_is_one():
    gt = vertical_split(40, 40, 20)
    pred = quadrants(40) * 100 + np.arange(40)[None, :] // 5  # 16 pieces, none straddling
    result = majority_label_miou(pred, gt)
    assert result["miou"] == 1.0
    assert result["per_class_iou"] == {0: 1.0, 1: 1.0}


def test_majority_label_miou_matches_hand_computation():
    gt = vertical_split(4, 4, 2)  # class 0 in columns 0-1, class 1 in columns 2-3
    pred = vertical_split(4, 4, 3)  # columns 0-2 (8 px of class 0, 4 of class 1), column 3
    result = majority_label_miou(pred, gt)
    # Class 0 predicted on columns 0-2: IoU 8/12; class 1 on column 3: IoU 4/8.
    assert result["per_class_iou"] == pytest.approx({0: 8 / 12, 1: 4 / 8})
    assert result["miou"] == pytest.approx((8 / 12 + 4 / 8) / 2)


def test_majority_label_miou_leaves_ignored_pixels_out_of_every_count():
    gt = vertical_split(4, 4, 2)
    gt[:, 2] = 255  # column 2 is unlabelled
    pred = vertical_split(4, 4, 3)
    result = majority_label_miou(pred, gt, ignore_index=255)
    assert result["per_class_iou"] == {0: 1.0, 1: 1.0}


# ----------------------------------------------------------------------- hierarchies


def test_is_nested_accepts_a_coarsening():
    fine = quadrants(8)
    assert is_nested(fine, fine // 2)


def test_is_nested_rejects_a_segment_split_between_two_parents():
    assert not is_nested(quadrants(8), vertical_split(8, 8, 3))


def test_hierarchy_consistency_of_a_nested_hierarchy_is_one(astronaut_slics):
    fine, _ = astronaut_slics
    levels = [fine, fine // 4, fine // 16, np.zeros_like(fine)]
    assert hierarchy_consistency(levels) == 1.0


def test_hierarchy_consistency_matches_hand_computation():
    fine = quadrants(8)  # four 16-px quadrants
    # Split at column 3: the left quadrants (columns 0-3) straddle it, the right ones
    # stay whole -> 1/2.
    middle = vertical_split(8, 8, 3)
    coarse = np.zeros((8, 8), dtype=int)  # everything is inside it -> 1
    assert hierarchy_consistency([fine, middle]) == 0.5
    assert hierarchy_consistency([fine, middle, coarse]) == pytest.approx((0.5 + 1.0) / 2)


def test_evaluate_hierarchy_scores_a_level_equal_to_the_ground_truth_as_perfect():
    gt_parts = quadrants(64)
    gt_object = (gt_parts > 0).astype(int)
    levels = [gt_parts * 16 + np.arange(64)[None, :] // 4 % 4, gt_parts, gt_object]
    result = evaluate_hierarchy(levels, gt_object, gt_parts)
    parts_level, object_level = result["levels"][1]["parts"], result["levels"][2]["object"]
    for scores in (parts_level, object_level):
        assert scores["boundary"]["f"] == scores["covering"] == scores["pri"] == scores["miou"] == 1.0
        assert scores["vi"] == pytest.approx(0.0, abs=1e-12)
    assert result["nested"] == [True, True]
    assert result["hierarchy_consistency"] == 1.0
    assert result["summary"]["object"]["best_covering_level"] == 2


def test_evaluate_hierarchy_returns_plain_json_serialisable_values(astronaut_slics):
    fine, coarse = astronaut_slics
    result = evaluate_hierarchy(torch.from_numpy(np.stack([fine, fine // 8])), coarse > 5, coarse)
    assert json.loads(json.dumps(result))["num_levels"] == 2


def test_evaluate_hierarchy_boundary_counts_feed_ods_ois(astronaut_slics):
    fine, coarse = astronaut_slics
    results = [evaluate_hierarchy([fine, coarse], coarse), evaluate_hierarchy([coarse, fine], fine)]
    counts = [[level["object"]["boundary"] for level in r["levels"]] for r in results]
    assert ods_ois(counts)["ois_levels"] == [1, 1]


def test_evaluate_hierarchy_of_five_levels_at_224_is_fast():
    rng = np.random.default_rng(0)
    fine = np.repeat(np.repeat(rng.permutation(784).reshape(28, 28), 8, 0), 8, 1)  # 784 segments
    levels = [fine, fine // 8, fine // 32, fine // 128, fine // 392]
    gt_parts = quadrants(224)
    evaluate_hierarchy(levels, gt_parts > 0, gt_parts)  # warm-up
    start = time.perf_counter()
    evaluate_hierarchy(levels, gt_parts > 0, gt_parts)
    assert time.perf_counter() - start < 2.0  # ~0.03 s measured; generous for slow CI


# ----------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "metric",
    [
        boundary_prf,
        segmentation_covering,
        variation_of_information,
        rand_index,
        probabilistic_rand_index,
        majority_label_miou,
        is_nested,
    ],
)
def test_metrics_reject_maps_of_different_shapes(metric):
    with pytest.raises(ValueError, match="nearest-neighbour"):
        metric(np.zeros((4, 5), dtype=int), np.zeros((5, 4), dtype=int))


def test_float_labels_are_rejected_with_a_conversion_hint():
    with pytest.raises(ValueError, match="integer labels.*astype"):
        segmentation_covering(np.zeros((4, 4)), np.zeros((4, 4), dtype=int))


def test_an_empty_map_is_rejected():
    with pytest.raises(ValueError, match="empty"):
        variation_of_information(np.zeros((0, 4), dtype=int), np.zeros((0, 4), dtype=int))


def test_a_batch_instead_of_one_map_is_rejected():
    with pytest.raises(ValueError, match="single H×W"):
        rand_index(np.zeros((2, 4, 4), dtype=int), np.zeros((2, 4, 4), dtype=int))


def test_an_empty_list_of_ground_truths_is_rejected():
    with pytest.raises(ValueError, match="no label maps"):
        probabilistic_rand_index(np.zeros((4, 4), dtype=int), [])


def test_an_empty_hierarchy_is_rejected():
    with pytest.raises(ValueError, match="no label maps"):
        hierarchy_consistency([])


def test_a_tolerance_outside_zero_to_one_is_rejected():
    with pytest.raises(ValueError, match="fraction of the image diagonal"):
        boundary_prf(quadrants(8), quadrants(8), tolerance=2.0)


def test_a_ground_truth_entirely_ignored_is_rejected():
    with pytest.raises(ValueError, match="ignore_index"):
        majority_label_miou(quadrants(8), np.full((8, 8), 255), ignore_index=255)
