"""SegmentationMetric against an independent confusion-matrix computation on the real
ADE20K / VOC / SBD annotations, and the sliding-window inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from castvit.data.segmentation import read_label, reduce_zero_label
from castvit.eval.segmentation import (
    InferenceConfig, SegmentationMetric, predict_probabilities, slide_inference, whole_inference, window_anchors,
)

DATA = Path("/work/shared/data")
ADE = sorted((DATA / "ade20k-sample" / "annotations").glob("*.png"))


def _reference(preds, targets, c, ignore=255):
    """mmseg's definition written with a confusion matrix, per class."""
    cm = np.zeros((c, c), np.float64)  # rows: ground truth, columns: prediction (both in 0..C-1)
    area_label = np.zeros(c)
    stray_pred = np.zeros(c)  # predicted area on labelled pixels whose label is outside 0..C-1
    for p, t in zip(preds, targets):
        p, t = np.asarray(p).ravel().astype(np.int64), np.asarray(t).ravel().astype(np.int64)
        valid = t != ignore
        p, t = p[valid], t[valid]
        lab_ok, pred_ok = (t >= 0) & (t < c), (p >= 0) & (p < c)
        area_label += np.bincount(t[lab_ok], minlength=c)
        both = lab_ok & pred_ok
        cm += np.bincount(t[both] * c + p[both], minlength=c * c).reshape(c, c)
        stray_pred += np.bincount(p[pred_ok & ~lab_ok], minlength=c)
    inter = np.diag(cm)
    union = cm.sum(0) + stray_pred + area_label - inter
    iou = np.array([inter[k] / union[k] if union[k] > 0 else np.nan for k in range(c)])
    acc = np.array([inter[k] / area_label[k] if area_label[k] > 0 else np.nan for k in range(c)])
    return iou, acc, inter.sum() / area_label.sum()


def _ade_targets():
    return [reduce_zero_label(read_label(p)) for p in ADE]


def test_metric_matches_an_independent_computation_on_real_ade_maps():
    targets = _ade_targets()
    assert len(targets) == 3
    rng = np.random.default_rng(0)
    c = 150
    preds = []
    for t in targets:
        # random predictions, mostly right where the map is labelled, plus values outside 0..C-1
        # (random classes only below 100, so classes >= 100 missing from the ground truth stay NaN)
        noise = np.where(rng.random(t.shape) < 0.2, rng.integers(c, c + 40, t.shape), rng.integers(-3, 100, t.shape))
        p = np.where(rng.random(t.shape) < 0.6, t, noise)
        p[t == 255] = rng.integers(0, 100, (t == 255).sum())
        preds.append(p)
    metric = SegmentationMetric(c)
    for p, t in zip(preds, targets):
        metric.update(torch.from_numpy(p), torch.from_numpy(t))
    res = metric.compute()
    iou, acc, aacc = _reference(preds, targets, c)
    assert np.isnan(iou).any(), "classes absent from ground truth and prediction must exist in this test"
    np.testing.assert_array_equal(np.isnan(res["IoU"]), np.isnan(iou))
    np.testing.assert_allclose(res["IoU"][~np.isnan(iou)], iou[~np.isnan(iou)], rtol=0, atol=1e-9)
    assert abs(res["mIoU"] - np.nanmean(iou)) < 1e-9
    assert abs(res["mAcc"] - np.nanmean(acc)) < 1e-9
    assert abs(res["aAcc"] - aacc) < 1e-9
    # classes present only in the predictions get IoU 0 (union > 0, intersection 0)
    only_pred = (res["area_label"] == 0) & (res["area_pred"] > 0)
    assert only_pred.any() and np.all(res["IoU"][only_pred] == 0)


def test_metric_accumulates_over_the_whole_set_not_per_image_and_any_batch_shape():
    targets = _ade_targets()
    rng = np.random.default_rng(1)
    preds = [np.where(rng.random(t.shape) < 0.5, t, rng.integers(0, 150, t.shape)) for t in targets]
    pooled = SegmentationMetric(150)
    for p, t in zip(preds, targets):
        pooled.update(p, t)
    per_image = []
    for p, t in zip(preds, targets):
        m = SegmentationMetric(150)
        m.update(p, t)
        per_image.append(m.compute()["mIoU"])
    iou, _, _ = _reference(preds, targets, 150)
    assert abs(pooled.compute()["mIoU"] - np.nanmean(iou)) < 1e-9
    assert abs(pooled.compute()["mIoU"] - np.mean(per_image)) > 1e-4  # not the mean of image scores
    # a batch of crops of the same size gives the same sums as the crops one by one
    crops_p = torch.stack([torch.from_numpy(p[:256, :256]) for p in preds])
    crops_t = torch.stack([torch.from_numpy(t[:256, :256]) for t in targets])
    a, b = SegmentationMetric(150), SegmentationMetric(150)
    a.update(crops_p, crops_t)
    for p, t in zip(crops_p, crops_t):
        b.update(p, t)
    assert torch.equal(a.state(), b.state())


def test_voc_and_sbd_labels_void_and_the_spml_mean_over_all_classes():
    t_voc = read_label(DATA / "voc-sample" / "2007_000129.png").astype(np.int64)
    t_sbd = [read_label(p).astype(np.int64) for p in sorted((DATA / "sbd-sample" / "cls").glob("*.mat"))]
    targets = [t_voc, *t_sbd]
    rng = np.random.default_rng(2)
    preds = [np.where(rng.random(t.shape) < 0.7, np.where(t == 255, 0, t), rng.integers(0, 16, t.shape))
             for t in targets]
    present = SegmentationMetric(21)
    every = SegmentationMetric(21, mean_over="all")
    for p, t in zip(preds, targets):
        present.update(p, t)
        every.update(p, t)
    iou, _, _ = _reference(preds, targets, 21)
    assert (t_voc == 255).any()
    assert abs(present.compute()["mIoU"] - np.nanmean(iou)) < 1e-9
    assert abs(every.compute()["mIoU"] - np.nan_to_num(iou).sum() / 21) < 1e-9
    assert every.compute()["mIoU"] < present.compute()["mIoU"]


def test_perfect_prediction_and_bad_input():
    t = reduce_zero_label(read_label(ADE[0]))
    m = SegmentationMetric(150)
    m.update(np.where(t == 255, 7, t), t)
    r = m.compute()
    assert r["mIoU"] == 1.0 and r["aAcc"] == 1.0
    with pytest.raises(ValueError, match="shape"):
        m.update(np.zeros((2, 2), int), np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="argmax"):
        m.update(np.zeros((2, 2)), np.zeros((2, 2), int))


# ------------------------------------------------------------------ inference


def test_window_anchors():
    assert window_anchors(512, 512, 480) == [0]
    assert window_anchors(300, 512, 480) == [0]
    assert window_anchors(1000, 512, 480) == [0, 480, 488]
    assert window_anchors(992, 512, 480) == [0, 480]
    with pytest.raises(ValueError):
        window_anchors(10, 5, 0)


class _PositionModel(nn.Module):
    """Logit c at window pixel (y, x) = x + 100·c (window-relative)."""

    def __init__(self, classes=2):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.classes = classes

    def forward(self, images, superpixels):
        b, _, h, w = images.shape
        x = torch.arange(w, dtype=torch.float32).expand(b, 1, h, w)
        return torch.cat([x + 100 * c for c in range(self.classes)], 1) + self.w


def _grid_sp(view):
    from castvit.data.transforms import grid_superpixels

    return grid_superpixels(view.shape[-2], view.shape[-1], 16)


def test_overlapping_windows_are_averaged():
    image = torch.randint(0, 256, (3, 40, 70), dtype=torch.uint8)
    out = slide_inference(_PositionModel(), image, 2, crop=32, stride=20, superpixel_fn=_grid_sp, batch_size=3)
    lefts = window_anchors(70, 32, 20)
    assert lefts == [0, 20, 38]
    expect = np.zeros(70)
    for col in range(70):
        covering = [col - left for left in lefts if left <= col < left + 32]
        expect[col] = np.mean(covering)
    np.testing.assert_allclose(out[0, 0].numpy(), expect, atol=1e-5)
    np.testing.assert_allclose(out[1, 17].numpy(), expect + 100, atol=1e-5)


def test_one_window_equals_whole_image_with_a_real_model():
    import castvit

    torch.manual_seed(0)
    model = castvit.create_model("segmenter_cast_small", num_classes=5, encoder="cast_small_seg",
                                 encoder_kwargs=dict(img_size=64, embed_dim=48, depth=[1, 1, 1, 1], num_heads=4,
                                                     pool_num_heads=4, num_clusters=[16, 8, 4, 2]),
                                 decoder_kwargs={"n_heads": 2}).eval()
    image = torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8)
    slide = slide_inference(model, image, 5, crop=64, stride=32, superpixel_fn=_grid_sp)
    whole = whole_inference(model, image, 5, superpixel_fn=_grid_sp)
    assert slide.shape == (5, 48, 64)
    torch.testing.assert_close(slide, whole, rtol=0, atol=0)
    cfg = InferenceConfig(mode="whole", short_side=None, superpixels={"method": "grid", "n_segments": 16})
    p1 = predict_probabilities(model, image, 5, cfg)
    assert p1.shape == (5, 48, 64) and torch.allclose(p1.sum(0), torch.ones(48, 64))
