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


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """``B×3×H×W`` uint8 (0..255) or float (0..1) RGB → ImageNet-normalised float32."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """Thin boundaries of an ``H×W`` label map: a pixel is on a boundary when its right or
    lower neighbour has another label. Returns bool ``H×W``."""
    labels = np.asarray(labels)
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge
