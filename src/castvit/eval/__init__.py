"""Evaluation: segmentation and hierarchy metrics (numpy/scipy only)."""

from castvit.eval.metrics import (
    BSDS_TOLERANCE,
    COUNT_KEYS,
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

__all__ = [
    "BSDS_TOLERANCE",
    "COUNT_KEYS",
    "boundary_map",
    "boundary_prf",
    "evaluate_hierarchy",
    "hierarchy_consistency",
    "is_nested",
    "majority_label_miou",
    "ods_ois",
    "prf_from_counts",
    "probabilistic_rand_index",
    "rand_index",
    "segmentation_covering",
    "variation_of_information",
]
