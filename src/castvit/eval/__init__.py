"""Evaluation: segmentation and hierarchy metrics, the BSDS500 benchmark
(:mod:`castvit.eval.bsds`) and superpixel quality (:mod:`castvit.eval.superpixel_quality`)."""

from castvit.eval.bsds import correspond_pixels, evaluate_dataset, evaluate_image, seg2bdry, summarize
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
from castvit.eval.superpixel_quality import (
    achievable_segmentation_accuracy,
    boundary_recall,
    compactness,
    superpixel_quality,
    undersegmentation_error,
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
    # BSDS500 benchmark
    "correspond_pixels",
    "evaluate_dataset",
    "evaluate_image",
    "seg2bdry",
    "summarize",
    # superpixel quality
    "achievable_segmentation_accuracy",
    "boundary_recall",
    "compactness",
    "superpixel_quality",
    "undersegmentation_error",
]
