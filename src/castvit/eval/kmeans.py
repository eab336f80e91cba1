"""ViT + hierarchical spherical k-means: the PartImageNet baseline of the CAST paper.

A ViT's patch (or superpixel) features of one image are clustered into 64 groups by
spherical k-means; the 64 prototypes are then clustered into 32, 16 and 8. Every
level groups the level below, so the result is a strictly nested hierarchy
(:class:`castvit.Hierarchy`), scored by :mod:`castvit.eval.compare` like CAST's.

Each level's points (features, then prototypes) are centred on their mean first (see
:func:`kmeans_parents`). Spherical k-means here is the soft (von Mises-Fisher) variant: features and
prototypes are unit vectors; each iteration gives feature i the responsibilities
``softmax_k(κ · cos(x_i, c_k))`` (``κ`` = ``concentration``, 5 as CAST's pooling
logits) and moves each prototype to the normalised responsibility-weighted sum of the
features. After ``iterations`` (30) rounds every feature goes to its most similar
prototype. Prototypes start from a seeded k-means++ draw (cosine distance), so a
seed fixes the result, and each image is clustered on its own (a batch changes
nothing).

It runs on any registered ViT (``vit_suppix_*``, ``tome_*``, ``vit_conv_*``):
superpixel-token models give hierarchies over the superpixels; patch-token models over
their patch grid (level 0 is then the grid of patches).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

PATCH_LEVEL0 = "patch grid"


def spherical_kmeans(x: torch.Tensor | np.ndarray, k: int, *, concentration: float = 5.0, iterations: int = 30,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Soft spherical k-means of ``x`` (module docstring), in float64 numpy (the
    matrices are small; torch's per-call overhead would dominate).

    Args:
        x: ``N×D`` features (normalised here; a zero row is an error).
        k: clusters; ``k >= N`` gives every feature its own cluster.
        concentration: ``κ`` of the soft assignments.
        iterations: prototype updates.
        seed: seeds the k-means++ initialisation.

    Returns:
        ``(labels N int64 in 0..k'-1, prototypes k'×D unit vectors)`` with
        ``k' = min(k, N)``; ``labels[i]`` is the prototype most similar to ``x[i]``
        (ties to the lowest id). A cluster may end up with no member.
    """
    x = np.asarray(x.detach().cpu() if torch.is_tensor(x) else x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty N×D matrix, got shape {x.shape}")
    if k < 1 or iterations < 0 or concentration <= 0:
        raise ValueError(f"need k >= 1, iterations >= 0 and concentration > 0, got {k}, {iterations}, {concentration}")
    norms = np.linalg.norm(x, axis=1)
    if not (norms > 0).all():
        raise ValueError("x has an all-zero row, which has no direction; drop it (e.g. padded tokens) first")
    unit = x / norms[:, None]
    n = unit.shape[0]
    if k >= n:
        return np.arange(n), unit
    proto = unit[_kmeans_pp(unit, k, seed)]
    for _ in range(iterations):
        logits = concentration * unit @ proto.T
        resp = np.exp(logits - logits.max(1, keepdims=True))
        resp /= resp.sum(1, keepdims=True)
        moved = resp.T @ unit
        length = np.linalg.norm(moved, axis=1, keepdims=True)
        # a prototype with (numerically) no weight stays where it is
        proto = np.where(length > 1e-12, moved / np.maximum(length, 1e-300), proto)
    labels = (unit @ proto.T).argmax(1)
    return labels.astype(np.int64), proto


def _kmeans_pp(unit: np.ndarray, k: int, seed: int) -> list[int]:
    """k-means++ seeds with the cosine distance ``1 − cos``: the first uniformly, each
    next one with probability proportional to its squared distance to the chosen."""
    rng = np.random.default_rng(seed)
    n = unit.shape[0]
    chosen = [int(rng.integers(n))]
    dist = np.clip(1.0 - unit @ unit[chosen[0]], 0, None) ** 2
    for _ in range(1, k):
        total = dist.sum()
        if total <= 0:  # every point coincides with a chosen one: take unchosen ones in order
            chosen.append(next(i for i in range(n) if i not in chosen))
        else:
            chosen.append(int(rng.choice(n, p=dist / total)))
        dist = np.minimum(dist, np.clip(1.0 - unit @ unit[chosen[-1]], 0, None) ** 2)
    return chosen


def kmeans_parents(features: torch.Tensor | np.ndarray, num_clusters: Sequence[int] = (64, 32, 16, 8), *,
                   concentration: float = 5.0, iterations: int = 30, seed: int = 0, center: bool = True
                   ) -> list[np.ndarray]:
    """Hierarchical spherical k-means of one image's features.

    Args:
        features: ``N×D`` token features (tensor or array).
        num_clusters: clusters per level, fine to coarse: the features go into the
            first count, that level's prototypes into the next, and so on.
        center: subtract the mean of the points of each level before clustering them
            (as CAST's pooling centres its tokens before its cosine similarities).
            The tokens of one image share a large common direction; without
            centring, the soft assignments at concentration 5 are nearly uniform and
            the prototypes collapse onto it (one or two clusters per level).

    Returns:
        ``parents``: ``parents[0]`` (``N``) the level-1 cluster of every feature,
        ``parents[s]`` the level-(s+1) cluster of every level-s cluster. Clusters that
        are left empty keep an id (and a parent) but own nothing.
    """
    if any(a < b for a, b in zip(num_clusters, num_clusters[1:])) or min(num_clusters, default=1) < 1:
        raise ValueError(f"num_clusters must be positive and not increase, got {list(num_clusters)}")
    parents = []
    points = np.asarray(features.detach().cpu() if torch.is_tensor(features) else features, dtype=np.float64)
    for level, k in enumerate(num_clusters):
        if center and len(points) > 1:
            centred = points - points.mean(0)
            scale = np.linalg.norm(points, axis=1).max()
            # a point at the mean has no direction once centred: it keeps its own
            points = np.where(np.linalg.norm(centred, axis=1, keepdims=True) > 1e-9 * scale, centred, points)
        labels, proto = spherical_kmeans(points, k, concentration=concentration, iterations=iterations,
                                         seed=seed + level)
        parents.append(labels)
        points = proto
    return parents


def vit_kmeans_hierarchies(model: torch.nn.Module, images: torch.Tensor, superpixels: torch.Tensor | None = None,
                           num_clusters: Sequence[int] = (64, 32, 16, 8), *, concentration: float = 5.0,
                           iterations: int = 30, seed: int = 0, feature: str = "tokens") -> list:
    """ViT features of a batch, clustered into one nested hierarchy per image.

    Args:
        model: a registered ViT whose ``forward_features`` returns ``feature``
            (``B×N×D`` tokens): superpixel-token models (``vit_suppix_*``, ``tome_*``
            with ``r = 0``) return one token per superpixel id, patch models
            (``vit_conv_*``) one per patch.
        images: ``B×3×H×W`` normalised images.
        superpixels: ``B×H×W`` labels; needed by superpixel-token models, ignored by
            patch models.

    Returns:
        One :class:`castvit.Hierarchy` per image with ``len(num_clusters)`` levels
        above level 0: the superpixels (superpixels that own no 8-px cell join the
        segment of the token covering most of them, as for CAST), or for patch models
        the grid of patches (``meta["level0"] == "patch grid"``).
    """
    from castvit.hierarchy import Hierarchy

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            feats = model.forward_features(images, superpixels)
    finally:
        model.train(was_training)
    if feature not in feats:
        raise ValueError(f"the model returns no {feature!r} features (it returns {sorted(feats)})")
    tokens = feats[feature].float().cpu()
    b, n, _ = tokens.shape
    patch_model = "padding_mask" not in feats  # superpixel-token models say which ids are padding
    if "logit1" in feats and feats["logit1"].shape[1] != n:
        raise ValueError(f"{type(model).__name__} merges its tokens ({feats['logit1'].shape[1]} superpixels, {n} "
                         "tokens left); build it with r=0 to cluster one token per superpixel")
    valid = (~feats["padding_mask"]).cpu() if "padding_mask" in feats else torch.ones(b, n, dtype=torch.bool)
    out = []
    for i in range(b):
        ids = torch.nonzero(valid[i]).flatten()
        parents = kmeans_parents(tokens[i, ids], num_clusters, concentration=concentration, iterations=iterations,
                                 seed=seed)
        level1 = np.zeros(n, np.int64)
        level1[ids.numpy()] = parents[0]
        if patch_model:
            h, w = images.shape[-2:]
            gh, gw = _grid(model, h, w, n)
            grid = np.arange(gh * gw).reshape(gh, gw)
            level0 = np.repeat(np.repeat(grid, h // gh, 0), w // gw, 1)
            out.append(Hierarchy(level0, [level1, *parents[1:]], meta={"level0": PATCH_LEVEL0}))
        else:
            logit1 = F.one_hot(torch.from_numpy(level1), int(level1.max()) + 1)[None].float()
            h = Hierarchy.from_outputs({"logit1": logit1}, superpixels[i:i + 1].cpu())[0]
            h.parents = [h.parents[0], *parents[1:]]
            out.append(h)
    return out


def _grid(model: torch.nn.Module, h: int, w: int, n: int) -> tuple[int, int]:
    patch = int(getattr(model, "patch_size", 8))
    gh, gw = h // patch, w // patch
    if gh * gw != n:
        raise ValueError(f"{n} tokens do not match a {gh}×{gw} grid of {patch}-px patches")
    return gh, gw


def label_maps(hierarchies: Sequence) -> np.ndarray:
    """``N×L×H×W`` int16 label maps of hierarchies (the input of
    :func:`castvit.eval.compare.score_method`)."""
    return np.stack([np.stack(h.label_maps()) for h in hierarchies]).astype(np.int16)

