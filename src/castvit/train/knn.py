"""Frozen-feature evaluation: backbone features and a weighted kNN classifier.

The kNN monitor is the one of InstDisc / DINO: cosine similarity to the training
features, the ``k`` nearest vote with weight ``exp(sim / T)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from castvit.train import distributed as D
from castvit.train.optim import autocast


def backbone_features(model: nn.Module, images: torch.Tensor, superpixels: torch.Tensor) -> torch.Tensor:
    """The recognition feature of any castvit model, ``B×D``: ``out4`` (the normed cls
    token of classifiers and ViTs) or the mean fused token (segmentation pre-training
    variants)."""
    feats = model.forward_features(images, superpixels)
    if "out4" in feats:
        return feats["out4"]
    if "features" in feats and feats["features"].ndim == 2:
        return feats["features"]
    raise ValueError(f"{type(model).__name__} gives no image-level feature (no 'out4' or B×D 'features'); "
                     "use a classification or seg_pretrain variant")


@torch.no_grad()
def extract_features(model: nn.Module, loader, device: str | torch.device = "cpu", *,
                     amp: torch.dtype | bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features N×D float32, labels N)`` over ``loader`` in eval mode (mode restored),
    gathered from every rank in the loader's order per rank."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    feats, labels = [], []
    for batch in loader:
        with autocast(device, amp):
            f = backbone_features(model, batch["image"].to(device), batch["superpixels"].to(device))
        feats.append(f.float().cpu())
        labels.append(batch["label"].cpu())
    model.train(was_training)
    x, y = torch.cat(feats), torch.cat(labels)
    if D.is_distributed():
        parts = D.all_gather_object((x, y))
        x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return x, y


def knn_predict(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, *, k: int = 20,
                temperature: float = 0.07, num_classes: int | None = None, chunk: int = 1024) -> torch.Tensor:
    """Class scores ``M×C`` for ``test_x`` (``M×D``) from ``train_x`` (``N×D``) and their
    labels, by a similarity-weighted vote of the ``k`` nearest (cosine) neighbours."""
    num_classes = int(train_y.max()) + 1 if num_classes is None else num_classes
    train_x = F.normalize(train_x.float(), dim=1)
    test_x = F.normalize(test_x.float(), dim=1)
    k = min(k, train_x.shape[0])
    out = []
    for start in range(0, test_x.shape[0], chunk):
        sim = test_x[start:start + chunk] @ train_x.T
        top, idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes)
        votes.scatter_add_(1, train_y[idx], (top / temperature).exp())
        out.append(votes)
    return torch.cat(out)


def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
                 k: int = 20, temperature: float = 0.07) -> float:
    """Top-1 accuracy in [0, 1] of :func:`knn_predict`."""
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    scores = knn_predict(train_x, train_y, test_x, k=k, temperature=temperature, num_classes=num_classes)
    return float((scores.argmax(1) == test_y).float().mean())


def knn_evaluate(model: nn.Module, memory_loader, query_loader, device: str | torch.device = "cpu", *,
                 k: int = 20, temperature: float = 0.07, amp: torch.dtype | bool | None = None) -> float:
    """kNN top-1 accuracy of ``model``'s features: ``memory_loader`` (labelled training
    images, eval views) is the memory, ``query_loader`` is scored."""
    train_x, train_y = extract_features(model, memory_loader, device, amp=amp)
    test_x, test_y = extract_features(model, query_loader, device, amp=amp)
    return knn_accuracy(train_x, train_y, test_x, test_y, k=k, temperature=temperature)
