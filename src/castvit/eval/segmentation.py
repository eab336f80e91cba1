"""Semantic segmentation scoring as the paper did (PROTOCOLS §1–2).

* :class:`SegmentationMetric`: mmseg's mIoU — intersection and union summed per class
  over the **whole set**, IoU = I/U (NaN where the union is empty), mIoU = mean over
  classes with a non-empty union; pixels whose ground truth is ``ignore_index`` and
  predictions outside ``0..C−1`` are left out. ``mean_over="all"`` is SPML's variant:
  the mean over all C classes, an empty union counting as 0.
* :func:`slide_inference` / :func:`whole_inference`: logits of one image. Sliding
  windows of ``crop`` with ``stride`` (anchors every ``stride`` while the window fits,
  plus one flush with the far edge), superpixels computed per window, overlapping
  logits averaged.
* :func:`predict` adds the test-time resize, flip and multi-scale (softmax averaged);
  :func:`evaluate_segmentation` scores a dataset (each rank a shard, sums reduced).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from castvit.data.segmentation import IGNORE_INDEX, SegSuperpixels, resize_pair
from castvit.data.transforms import normalize, to_float_image, to_uint8_image


# ---------------------------------------------------------------------- metric


class SegmentationMetric:
    """Accumulate a confusion-free mIoU over a dataset (mmseg convention).

    Args:
        num_classes: C.
        ignore_index: ground-truth value that is not scored (255).
        mean_over: ``"present"`` (mmseg: classes whose union is non-zero) or ``"all"``
            (SPML: every class, an empty union counting as IoU 0).

    ``update(pred, target)`` takes integer maps of any (equal) shape — one image or a
    batch, tensors or arrays. ``compute()`` returns ``mIoU``, ``IoU`` (per class, NaN
    where the union is empty), ``aAcc``, ``mAcc``, ``Acc`` (per class, NaN where the
    class is absent from the ground truth) and the summed areas.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, *, mean_over: str = "present"):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if mean_over not in ("present", "all"):
            raise ValueError(f"mean_over must be 'present' or 'all', got {mean_over!r}")
        self.num_classes, self.ignore_index, self.mean_over = int(num_classes), int(ignore_index), mean_over
        self.reset()

    def reset(self) -> None:
        c = self.num_classes
        self.intersection = torch.zeros(c, dtype=torch.float64)
        self.area_pred = torch.zeros(c, dtype=torch.float64)
        self.area_label = torch.zeros(c, dtype=torch.float64)

    @property
    def area_union(self) -> torch.Tensor:
        return self.area_pred + self.area_label - self.intersection

    def update(self, pred, target) -> None:
        pred = torch.as_tensor(np.asarray(pred) if not torch.is_tensor(pred) else pred).detach().cpu()
        target = torch.as_tensor(np.asarray(target) if not torch.is_tensor(target) else target).detach().cpu()
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from the target's {tuple(target.shape)}")
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError("pred and target must be integer class maps (argmax the logits first)")
        pred, target = pred.long().flatten(), target.long().flatten()
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        c = self.num_classes
        pred_ok = (pred >= 0) & (pred < c)
        label_ok = (target >= 0) & (target < c)
        hit = pred_ok & label_ok & (pred == target)
        self.intersection += torch.bincount(target[hit], minlength=c).double()
        self.area_pred += torch.bincount(pred[pred_ok], minlength=c).double()
        self.area_label += torch.bincount(target[label_ok], minlength=c).double()

    def state(self) -> torch.Tensor:
        """The sums as one ``3×C`` float64 tensor (to reduce across processes)."""
        return torch.stack([self.intersection, self.area_pred, self.area_label])

    def load_state(self, state: torch.Tensor) -> None:
        self.intersection, self.area_pred, self.area_label = (s.clone().double() for s in state.cpu())

    def all_reduce(self) -> None:
        """Sum the state over the processes of an initialised process group."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            s = self.state()
            if torch.distributed.get_backend() == "nccl":
                s = s.cuda()
            torch.distributed.all_reduce(s)
            self.load_state(s)

    def compute(self) -> dict[str, Any]:
        i, u, lab = self.intersection.numpy(), self.area_union.numpy(), self.area_label.numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(u > 0, i / np.where(u > 0, u, 1), np.nan)
            acc = np.where(lab > 0, i / np.where(lab > 0, lab, 1), np.nan)
        if self.mean_over == "all":
            miou = float(np.nan_to_num(iou, nan=0.0).mean())
        else:
            miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
        total = lab.sum()
        return {
            "mIoU": miou,
            "IoU": iou,
            "aAcc": float(i.sum() / total) if total > 0 else float("nan"),
            "mAcc": float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"),
            "Acc": acc,
            "area_intersect": i.copy(), "area_union": u.copy(), "area_label": lab.copy(),
            "area_pred": self.area_pred.numpy().copy(),
        }


# ------------------------------------------------------------------ inference


def window_anchors(size: int, crop: int, stride: int) -> list[int]:
    """Window starts along one axis: every ``stride`` while the window fits, plus one
    flush with the far edge; ``[0]`` when the side is at most ``crop``."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if size <= crop:
        return [0]
    starts = list(range(0, size - crop + 1, stride))
    if starts[-1] + crop < size:
        starts.append(size - crop)
    return starts


SuperpixelFn = Callable[[torch.Tensor], torch.Tensor]  # 3×h×w uint8 → h'×w' int64


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def _run(model: nn.Module, views_uint8: list[torch.Tensor], superpixel_fn: SuperpixelFn) -> torch.Tensor:
    device = _model_device(model)
    images = torch.stack([normalize(v.float() / 255.0) for v in views_uint8]).to(device)
    sp = torch.stack([torch.as_tensor(superpixel_fn(v)).long() for v in views_uint8]).to(device)
    return model(images, sp).float()


@torch.no_grad()
def slide_inference(model: nn.Module, image: torch.Tensor, num_classes: int, *, crop: int, stride: int,
                    superpixel_fn: SuperpixelFn, batch_size: int = 4) -> torch.Tensor:
    """``C×H×W`` logits of one ``3×H×W`` image (uint8, or float in [0, 1]) by sliding
    windows; each window gets its own superpixels; overlaps are averaged. A side
    shorter than ``crop`` gives windows of that side."""
    view = to_uint8_image(to_float_image(image)) if image.dtype != torch.uint8 else image
    h, w = view.shape[-2:]
    ch, cw = min(crop, h), min(crop, w)
    boxes = [(t, l) for t in window_anchors(h, ch, stride) for l in window_anchors(w, cw, stride)]
    device = _model_device(model)
    total = torch.zeros(num_classes, h, w, device=device)
    count = torch.zeros(1, h, w, device=device)
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i:i + batch_size]
        logits = _run(model, [view[:, t:t + ch, l:l + cw] for t, l in chunk], superpixel_fn)
        if logits.shape[1] != num_classes:
            raise ValueError(f"the model gives {logits.shape[1]} classes, expected {num_classes}")
        for (t, l), lg in zip(chunk, logits):
            total[:, t:t + ch, l:l + cw] += lg
            count[:, t:t + ch, l:l + cw] += 1
    return total / count


@torch.no_grad()
def whole_inference(model: nn.Module, image: torch.Tensor, num_classes: int, *,
                    superpixel_fn: SuperpixelFn) -> torch.Tensor:
    """``C×H×W`` logits of the whole image in one pass."""
    view = to_uint8_image(to_float_image(image)) if image.dtype != torch.uint8 else image
    logits = _run(model, [view], superpixel_fn)[0]
    if logits.shape[0] != num_classes:
        raise ValueError(f"the model gives {logits.shape[0]} classes, expected {num_classes}")
    return logits


@dataclass
class InferenceConfig:
    """Test-time settings (PROTOCOLS §1–2).

    Attributes:
        mode: ``"slide"`` (Segmenter) or ``"whole"`` (SPML).
        short_side: resize so the short side is this (512 ADE20K, 520 Context) before
            sliding; ``long_side`` instead resizes the longer side (SPML: 512). None
            keeps the size.
        crop, stride: sliding window and step (512 / 480 ADE; 480 / 448 Context).
        flip: also score the mirrored image (softmax averaged).
        scales: multipliers of the resize (``(0.5, 0.75, 1, 1.25, 1.5, 1.75)`` for "MS").
        superpixels: SEEDS settings (``n`` = window area / 256).
        batch_size: windows per forward pass.
    """

    mode: str = "slide"
    short_side: int | None = 512
    long_side: int | None = None
    crop: int = 512
    stride: int = 480
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    superpixels: SegSuperpixels = field(default_factory=SegSuperpixels)
    batch_size: int = 4

    def __post_init__(self) -> None:
        if self.mode not in ("slide", "whole"):
            raise ValueError(f"inference mode must be 'slide' or 'whole', got {self.mode!r}")
        self.scales = tuple(float(s) for s in self.scales)
        if isinstance(self.superpixels, dict):
            self.superpixels = SegSuperpixels(**self.superpixels)


def _target_size(h: int, w: int, cfg: InferenceConfig, scale: float) -> tuple[int, int]:
    if cfg.short_side:
        f = cfg.short_side * scale / min(h, w)
    elif cfg.long_side:
        f = cfg.long_side * scale / max(h, w)
    else:
        f = scale
    return max(8, int(h * f + 0.5)), max(8, int(w * f + 0.5))


@torch.no_grad()
def predict_probabilities(model: nn.Module, image: torch.Tensor, num_classes: int, cfg: InferenceConfig
                          ) -> torch.Tensor:
    """``C×H×W`` class probabilities at the original size: per scale (and flip) the
    logits are resized bilinearly to the original size and soft-maxed; the softmaxes
    are averaged."""
    x = to_float_image(image)
    h, w = x.shape[-2:]
    acc = None
    for s in cfg.scales:
        size = _target_size(h, w, cfg, s)
        xs, _ = resize_pair(x, None, size)
        if cfg.mode == "slide" and min(size) < cfg.crop:
            # Upsample only when a side is smaller than the window (Segmenter).
            f = cfg.crop / min(size)
            xs, _ = resize_pair(xs, None, (max(cfg.crop, int(size[0] * f + 0.5)), max(cfg.crop, int(size[1] * f + 0.5))))
        view = to_uint8_image(xs)
        for flip in ((False, True) if cfg.flip else (False,)):
            v = view.flip(-1) if flip else view
            if cfg.mode == "slide":
                logits = slide_inference(model, v, num_classes, crop=cfg.crop, stride=cfg.stride,
                                         superpixel_fn=cfg.superpixels, batch_size=cfg.batch_size)
            else:
                logits = whole_inference(model, v, num_classes, superpixel_fn=cfg.superpixels)
            if flip:
                logits = logits.flip(-1)
            logits = F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            prob = logits.softmax(0)
            acc = prob if acc is None else acc + prob
    return acc / (len(cfg.scales) * (2 if cfg.flip else 1))


def predict(model: nn.Module, image: torch.Tensor, num_classes: int, cfg: InferenceConfig) -> torch.Tensor:
    """``H×W`` int64 class map of one image (model put in eval mode for the call)."""
    was = model.training
    model.eval()
    try:
        return predict_probabilities(model, image, num_classes, cfg).argmax(0).cpu()
    finally:
        model.train(was)


def evaluate_segmentation(model: nn.Module, dataset, num_classes: int, cfg: InferenceConfig, *,
                          ignore_index: int = IGNORE_INDEX, mean_over: str = "present", max_images: int | None = None,
                          progress: bool = False, keep: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score ``model`` on a dataset of ``{"image", "target"}`` items.

    Under an initialised process group rank r scores items ``r, r+W, …`` and the sums
    are reduced, so every rank returns the whole-set result.

    Returns:
        ``(metric result, kept)`` where ``kept`` holds the first ``keep`` items of this
        rank with their prediction (``image``, ``target``, ``pred``, ``path``).
    """
    grouped = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if grouped else 0
    world = torch.distributed.get_world_size() if grouped else 1
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    metric = SegmentationMetric(num_classes, ignore_index, mean_over=mean_over)
    indices = range(rank, n, world)
    if progress and rank == 0:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="eval seg", leave=False, dynamic_ncols=True)
    kept: list[dict[str, Any]] = []
    for i in indices:
        item = dataset[i]
        pred = predict(model, item["image"], num_classes, cfg)
        metric.update(pred, item["target"])
        if len(kept) < keep:
            kept.append({"image": item["image"], "target": item["target"], "pred": pred,
                         "path": item.get("path", str(i))})
    metric.all_reduce()
    result = metric.compute()
    result["count"] = n
    return result, kept


def format_table(result: dict[str, Any], class_names: Sequence[str] | None = None) -> str:
    """Per-class IoU / Acc table and the summary line (percent)."""
    iou, acc = result["IoU"], result["Acc"]
    names = list(class_names) if class_names else [str(i) for i in range(len(iou))]
    width = max(8, max(len(n) for n in names))

    def pct(v: float) -> str:
        return "   nan" if not math.isfinite(v) else f"{100 * v:6.2f}"

    lines = [f"{'class':<{width}}    IoU    Acc", "-" * (width + 15)]
    lines += [f"{n:<{width}} {pct(i)} {pct(a)}" for n, i, a in zip(names, iou, acc)]
    lines.append("-" * (width + 15))
    lines.append(f"mIoU {pct(result['mIoU'])}  mAcc {pct(result['mAcc'])}  aAcc {pct(result['aAcc'])}")
    return "\n".join(lines)


__all__ = ["InferenceConfig", "SegmentationMetric", "evaluate_segmentation", "format_table", "predict",
           "predict_probabilities", "slide_inference", "whole_inference", "window_anchors"]
