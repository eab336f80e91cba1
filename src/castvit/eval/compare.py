"""Score hierarchies level by level and decide, by a paired bootstrap over test
images, whether one method beats another (used by ``castvit demo``).

Each method's hierarchies are ``N×L×H×W`` label maps scored against two ground truths
(``object`` and ``parts``); :func:`compare_methods` compares the ``reference`` method
(the trained model) with every baseline level by level.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from tqdm.auto import tqdm

GT_NAMES = ("object", "parts")
# (key in a level's scores, higher is better, short name)
HEADLINE = (("boundary_f", True, "bF"), ("covering", True, "cov"), ("miou", True, "mIoU"), ("vi", False, "VI"))


@dataclasses.dataclass
class MethodScores:
    """Scores of one method: ``summary`` (JSON) and per-image arrays for the bootstrap.

    ``per_image[gt][key]`` is ``N×L``; for boundaries the four raw counts are kept
    (``matched_pred``, ``num_pred``, ``matched_gt``, ``num_gt``).
    """

    summary: dict[str, Any]
    per_image: dict[str, dict[str, np.ndarray]]


def score_method(levels: np.ndarray, gt_object: np.ndarray, gt_parts: np.ndarray, tolerance_px: float, *,
                 progress: bool = False, desc: str = "") -> MethodScores:
    """Score one method's hierarchies (``N×L×H×W``) against both ground truths.

    Per level: boundary P/R/F from counts summed over images, the means over images
    of covering, VI, PRI and majority-label mIoU, and the mean number of segments;
    ODS/OIS over levels 1..L-1 (every level when there is only one); the mean
    hierarchy consistency.
    """
    from castvit.eval import COUNT_KEYS, evaluate_hierarchy, ods_ois, prf_from_counts

    n, num_levels, h, w = levels.shape
    tolerance = tolerance_px / math.hypot(h, w)
    region_keys = ("covering", "vi", "pri", "miou")
    per_image = {g: {k: np.zeros((n, num_levels)) for k in (*region_keys, *COUNT_KEYS)} for g in GT_NAMES}
    segments = np.zeros((n, num_levels))
    consistency = np.zeros(n)
    for i in tqdm(range(n), desc=f"scoring {desc}", disable=not progress, leave=False):
        result = evaluate_hierarchy(list(levels[i]), gt_object[i], gt_parts[i], tolerance=tolerance)
        consistency[i] = result["hierarchy_consistency"]
        for lvl, rec in enumerate(result["levels"]):
            segments[i, lvl] = rec["num_segments"]
            for g in GT_NAMES:
                for k in region_keys:
                    per_image[g][k][i, lvl] = rec[g][k]
                for k in COUNT_KEYS:
                    per_image[g][k][i, lvl] = rec[g]["boundary"][k]
    ods_levels = list(range(1, num_levels)) if num_levels > 1 else [0]
    summary: dict[str, Any] = {"num_levels": num_levels, "ods_ois_levels": ods_levels,
                               "hierarchy_consistency": float(consistency.mean()), "levels": [], "ods_ois": {}}
    for lvl in range(num_levels):
        record: dict[str, Any] = {"level": lvl, "num_segments": float(segments[:, lvl].mean())}
        for g in GT_NAMES:
            counts = [{k: int(per_image[g][k][i, lvl]) for k in COUNT_KEYS} for i in range(n)]
            prf = prf_from_counts(counts)
            record[g] = {"boundary_precision": prf["precision"], "boundary_recall": prf["recall"],
                         "boundary_f": prf["f"], **{k: float(per_image[g][k][:, lvl].mean()) for k in region_keys}}
        summary["levels"].append(record)
    for g in GT_NAMES:
        counts = [[{k: int(per_image[g][k][i, lvl]) for k in COUNT_KEYS} for lvl in ods_levels] for i in range(n)]
        oo = ods_ois(counts)
        summary["ods_ois"][g] = {"ods_f": oo["ods_f"], "ods_level": ods_levels[oo["ods_level"]],
                                 "ois_f": oo["ois_f"]}
    return MethodScores(summary, per_image)


def _boundary_f(c: dict[str, np.ndarray]) -> np.ndarray:
    """F from summed counts along the first axis (NaN-free: empty sides give 0)."""
    p = np.divide(c["matched_pred"], c["num_pred"], out=np.zeros_like(c["matched_pred"]), where=c["num_pred"] > 0)
    r = np.divide(c["matched_gt"], c["num_gt"], out=np.zeros_like(c["matched_gt"]), where=c["num_gt"] > 0)
    return np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)


def _statistic(scores: MethodScores, gt: str, key: str, level: int, idx: np.ndarray) -> np.ndarray:
    """The dataset-level value of ``key`` at ``level`` for each resample ``idx`` (``R×N``)."""
    table = scores.per_image[gt]
    if key == "boundary_f":
        summed = {k: table[k][:, level][idx].sum(-1) for k in ("matched_pred", "num_pred", "matched_gt", "num_gt")}
        return _boundary_f(summed)
    return table[key][:, level][idx].mean(-1)


def compare_methods(scores: dict[str, MethodScores], num_resamples: int = 1000, seed: int = 0, *,
                    reference: str = "trained", baselines: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Does training beat the baselines? Paired bootstrap over test images.

    For each baseline, each ground truth, each headline metric (boundary F, covering,
    mIoU, VI) and each grouping level, the difference ``trained − baseline``
    (``baseline − trained`` for VI, so positive always favours training) gets a 95 %
    percentile interval from ``num_resamples`` resamples of the test images (the same
    images for both methods). The trained model *wins* a comparison when the interval
    lies above zero, *loses* when below, else it is a tie. Against the superpixels
    alone (any one-level baseline) the trained model's best level by the full-set value is used,
    and mIoU is skipped (over-segmentation scores 1 there by construction).

    Returns:
        ``{"reference": reference, "pairs": {baseline: [rows]}, "counts": {baseline:
        {"win", "loss", "tie"}}, "beats": {baseline: bool}, "num_resamples", "verdict": str}``;
        a row holds ``gt``, ``metric``,
        ``level``, ``trained``, ``baseline``, ``diff``, ``low``, ``high``, ``outcome``.
        ``beats`` is True when wins outnumber losses and ties together.
    """
    trained = scores[reference]
    if baselines is None:
        baselines = tuple(m for m in scores if m != reference)
    n = trained.per_image["object"]["covering"].shape[0]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(num_resamples, n))
    full = np.arange(n)[None]
    pairs: dict[str, list[dict[str, Any]]] = {}
    counts: dict[str, dict[str, int]] = {}
    for base_name in baselines:
        base = scores[base_name]
        rows = []
        for g in GT_NAMES:
            for key, higher, _ in HEADLINE:
                if base.summary["num_levels"] == 1:  # one level (the superpixels): the best level
                    if key == "miou":
                        continue
                    values = [float(_statistic(trained, g, key, lvl, full)[0])
                              for lvl in range(1, trained.summary["num_levels"])]
                    level_pairs = [(1 + int(np.argmax(values) if higher else np.argmin(values)), 0)]
                else:
                    level_pairs = [(lvl, lvl) for lvl in range(1, trained.summary["num_levels"])]
                for t_lvl, b_lvl in level_pairs:
                    t_full = float(_statistic(trained, g, key, t_lvl, full)[0])
                    b_full = float(_statistic(base, g, key, b_lvl, full)[0])
                    sign = 1.0 if higher else -1.0
                    diffs = sign * (_statistic(trained, g, key, t_lvl, idx) - _statistic(base, g, key, b_lvl, idx))
                    low, high = (float(v) for v in np.percentile(diffs, [2.5, 97.5]))
                    outcome = "win" if low > 0 else "loss" if high < 0 else "tie"
                    rows.append({"gt": g, "metric": key, "level": t_lvl, "baseline_level": b_lvl,
                                 "trained": t_full, "baseline": b_full, "diff": sign * (t_full - b_full),
                                 "low": low, "high": high, "outcome": outcome})
        pairs[base_name] = rows
        counts[base_name] = {o: sum(r["outcome"] == o for r in rows) for o in ("win", "loss", "tie")}
    beats = {b: c["win"] > c["loss"] + c["tie"] for b, c in counts.items()}
    return {"reference": reference, "pairs": pairs, "counts": counts, "beats": beats,
            "num_resamples": num_resamples, "verdict": _verdict(counts, beats, reference)}


BASELINE_NAMES = {"untrained": "the untrained model", "colour_grouping": "the colour grouping",
                  "superpixels": "the superpixels alone", "trained": "the authors' CAST (level 4 frozen)",
                  "tome": "traced ToMe", "vit_kmeans": "ViT + k-means"}
SUBJECTS = {"trained": "Training", "trained_l4": "Training every level"}


def _verdict(counts: dict[str, dict[str, int]], beats: dict[str, bool], reference: str = "trained") -> str:
    names = {b: BASELINE_NAMES.get(b, b) for b in counts}
    subject = SUBJECTS.get(reference, reference)
    parts = []
    for b, c in counts.items():
        total = sum(c.values())
        parts.append(f"vs {names[b]}: {c['win']} wins, {c['loss']} losses, {c['tie']} ties of {total}")
    won = [names[b] for b, ok in beats.items() if ok]
    lost = [names[b] for b, ok in beats.items() if not ok]
    if not lost:
        head = f"{subject} BEATS every baseline on segmentation"
    elif not won:
        head = f"{subject} does NOT beat any baseline on segmentation"
    else:
        head = f"{subject} beats {', '.join(won)} but does NOT beat {' or '.join(lost)} on segmentation"
    return (f"{head} (paired bootstrap 95% intervals per level and metric; " + "; ".join(parts) + ").")
