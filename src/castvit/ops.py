"""Small tensor operations shared by every layer of the package.

This module sits below everything else (models, superpixels, hierarchy, data,
eval, viz all may import it) and imports nothing from castvit.
"""

from __future__ import annotations

import numpy as np
import torch


def segment_sum(x: torch.Tensor, labels: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Sum the features of each segment, independently per image.

    Args:
        x: ``B×L×C`` features.
        labels: ``B×L`` integer segment ids in ``[0, num_segments)`` (not checked: an
            id out of range lands in another image's slots or raises).
        num_segments: number of output slots per image.

    Returns:
        ``B×num_segments×C`` sums (zero for ids that do not occur).
    """
    b, length, c = x.shape
    # index_add_ over the flattened batch adds whole rows (vectorised over C); it is
    # about 3.5× faster on CPU than scatter_add_ with a B×L×C expanded index.
    rows = (labels + torch.arange(b, device=labels.device).unsqueeze(1) * num_segments).reshape(-1)
    out = x.new_zeros(b * num_segments, c)
    return out.index_add_(0, rows, x.reshape(b * length, c)).view(b, num_segments, c)


def segment_count(labels: torch.Tensor, num_segments: int, dtype=torch.float32) -> torch.Tensor:
    """``B×num_segments`` number of entries with each id."""
    out = torch.zeros(labels.shape[0], num_segments, dtype=dtype, device=labels.device)
    return out.scatter_add_(1, labels, torch.ones_like(labels, dtype=dtype))


def segment_mean(x: torch.Tensor, labels: torch.Tensor, num_segments: int | None = None) -> torch.Tensor:
    """Mean of the features of each segment, independently per image.

    Args:
        x: ``B×H×W×C`` (or ``B×L×C``) features.
        labels: ``B×H×W`` (or ``B×L``) integer ids.
        num_segments: slots per image; default ``labels.max() + 1`` over the batch.

    Returns:
        ``B×num_segments×C``. Ids absent from an image get an all-zero row.
    """
    b, c = x.shape[0], x.shape[-1]
    x = x.reshape(b, -1, c)
    labels = labels.reshape(b, -1)
    if num_segments is None:
        num_segments = int(labels.max()) + 1
    total = segment_sum(x, labels, num_segments)
    count = segment_count(labels, num_segments, dtype=x.dtype).clamp_min(1)
    return total / count.unsqueeze(-1)


def relabel_contiguous(labels: np.ndarray) -> np.ndarray:
    """Map the ids of one label map to ``0..K-1`` in order of first appearance
    along the flattened (row-major) map. Returns int64."""
    flat = np.asarray(labels).reshape(-1)
    _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[inverse].reshape(np.shape(labels)).astype(np.int64)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_images(images, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """RGB images → normalised float32 ``B×3×H×W`` (a single image gets ``B = 1``).

    Accepts tensors or numpy arrays laid out ``B×3×H×W``, ``3×H×W``, ``B×H×W×3`` or
    ``H×W×3``: uint8 in 0..255, or float in 0..1. Float images with values above 1 are
    refused (they are almost always 0..255 images stored as float: divide by 255).
    """
    if isinstance(images, np.ndarray):
        images = np.array(images) if not images.flags.writeable else np.ascontiguousarray(images)
    x = torch.from_numpy(images) if isinstance(images, np.ndarray) else images
    if not torch.is_tensor(x):
        raise TypeError(f"images must be a tensor or numpy array, got {type(images).__name__}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or 3 not in (x.shape[1], x.shape[-1]):
        raise ValueError(f"images must be B×3×H×W, 3×H×W, B×H×W×3 or H×W×3 RGB, got shape {tuple(images.shape)}")
    if x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif x.is_floating_point():
        x = x.float()
        check_unit_range(x)
    else:
        raise ValueError(f"images must be uint8 (0..255) or float (0..1), got {x.dtype}")
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def check_unit_range(x: torch.Tensor) -> None:
    """Raise for float images that are not finite values in [0, 1] (with the fix)."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError("images contain NaN or inf values")
    lo, hi = float(x.min()), float(x.max())
    if hi > 1.0 + 1e-3 or lo < -1e-3:
        hint = (" They look like 0..255 values: divide by 255 or pass uint8."
                if hi > 1.5 else " Clip them to [0, 1] first.")
        raise ValueError(f"float images must hold values in [0, 1], got {lo:.4g}..{hi:.4g}.{hint}")


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """Thin boundaries of an ``H×W`` label map: a pixel is on a boundary when its right or
    lower neighbour has another label. Returns bool ``H×W``."""
    labels = np.asarray(labels)
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def json_default(obj):
    """``json.dumps(default=...)`` for numpy scalars and arrays."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def compact_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, index)`` like ``np.unique(labels, return_inverse=True)`` for non-negative
    ids, in linear time: ``ids[index] == labels``."""
    present = np.bincount(labels.ravel()) > 0
    ids = np.nonzero(present)[0]
    rank = np.cumsum(present) - 1
    return ids, rank[labels]


def segment_mean_colors(labels: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, K×3 uint8)``: the mean RGB colour of each segment of an ``H×W`` map."""
    ids, inv = compact_labels(labels)
    inv = inv.ravel()
    count = np.bincount(inv, minlength=ids.size).astype(np.float64)
    flat = image.reshape(-1, 3)
    sums = np.stack([np.bincount(inv, weights=flat[:, c], minlength=ids.size) for c in range(3)], 1)
    return ids, np.round(sums / count[:, None]).astype(np.uint8)
