"""``castvit demo``: learn a segmentation hierarchy by classification on a CPU in
minutes, and measure it against ground truth.

The paper's claim is that a CAST trained on recognition alone groups its superpixels
into a meaningful part/whole hierarchy. This command makes that claim checkable on a
laptop, with no download:

1. **Data.** Synthetic scenes (:mod:`castvit.data.synthetic`): one object of three
   parts per image, whose class depends on the head shape and the parts' layout,
   with exact object and part masks. Train and test splits come from different seeds.
   Superpixels (SEEDS by default) are computed once per image. Defaults: 10,000
   training and 200 test scenes of 64×64 px, 4 classes, SEEDS with ``n_segments=50``
   (36 superpixels per image; fewer, larger superpixels gave the trained model its
   best hierarchies in our trials).
2. **Training.** A small CAST (:func:`castvit.create_model`: width 96, one block per
   stage, 4 heads, levels of 16/8/4/2 segments) is trained by image classification
   only, with the shared engine :mod:`castvit.train.supervised` (AdamW, lr 1e-3,
   warmup then cosine, 10 epochs, no mixing or augmentation: flips would change the
   class); the masks are never seen. About 5 to 6 minutes on 2 CPU cores.
3. **Hierarchies** over the same test superpixels, with the same number of segments
   per level (the model's ``num_clusters``):

   * ``trained``: the trained model's pooling hierarchy;
   * ``untrained``: the same model before training (same initialisation seed);
   * ``superpixels``: the superpixels alone (level 0 of every hierarchy);
   * ``colour_grouping``: a non-learned grouping of the same superpixels:
     agglomerative Ward clustering on mean CIELAB colour, merging only adjacent
     regions, cut at each level's segment count (:func:`colour_grouping`). It is
     nested like CAST's hierarchy, so the comparison is level for level.
4. **Scores** with :mod:`castvit.eval` against the object mask (object vs
   background) and the part mask (background + three parts): per level, boundary
   precision/recall/F (counts summed over images; tolerance in pixels, see
   ``--tolerance-px``), segmentation covering, variation of information,
   probabilistic Rand index and majority-label mIoU (means over images); ODS/OIS
   boundary F over the grouping levels 1..4; hierarchy consistency. Then a verdict:
   paired bootstrap intervals over test images decide, level by level, whether the
   trained model beats each baseline.
5. **Report** in ``--out``: ``metrics.json``, ``predictions.npz`` (every method's label
   maps, the ground truth and the predicted classes, so the numbers can be recomputed),
   PNG figures and one self-contained ``index.html``.

Majority-label mIoU rewards over-segmentation (every superpixel takes its own majority
label), so it only compares methods with the same number of segments; the verdict
against the superpixels alone uses covering, boundary F and VI instead.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from castvit.eval.baselines import colour_grouping, colour_grouping_batch
from castvit.eval.compare import GT_NAMES, HEADLINE, MethodScores, compare_methods, score_method

METHODS = ("trained", "untrained", "colour_grouping", "superpixels")
GROUPING_METHODS = ("trained", "untrained", "colour_grouping")


@dataclasses.dataclass
class DemoConfig:
    """Everything that defines one demo run (stored in ``metrics.json``).

    Attributes:
        image_size: side of the square scenes in pixels (multiple of 8).
        num_classes: object classes (2..8, see :mod:`castvit.data.synthetic`).
        clutter: background clutter of the scenes, in [0, 1].
        object_scale: object diameter as a fraction of the image side (low, high).
        num_train, num_test: scenes in the training and the test split.
        superpixels: ``"seeds"`` or ``"slic"``.
        n_segments: superpixels requested per image.
        embed_dim, depth, num_heads, num_clusters: the CAST (``cast_small`` with these
            overrides); ``num_clusters`` are the segments of levels 1..4.
        epochs, batch_size, lr, weight_decay, warmup_epochs, label_smoothing: training.
        seed: seeds the data (train split ``seed``, test split ``seed + 1``), the model
            initialisation and the training order.
        device: torch device for training and inference.
        threads: CPU threads for torch. One by default: on a lightly loaded 2-core
            machine two threads made an epoch about a third faster (18 s vs 27 s), but
            when other processes compete for the cores, threads waiting on each other
            slowed runs many times over (one epoch took 207 s instead of 18 s); one
            thread keeps the default run well under 10 minutes on a busy machine. Use
            ``--threads 2`` (or more) on an idle one. Results depend slightly on it.
        tolerance_px: boundary match distance in pixels.
        num_examples: test images drawn in the example figures.
        bootstrap: resamples of the paired bootstrap behind the verdict.
    """

    image_size: int = 64
    num_classes: int = 4
    clutter: float = 0.3
    object_scale: tuple[float, float] = (0.5, 0.8)
    num_train: int = 10000
    num_test: int = 200
    superpixels: str = "seeds"
    n_segments: int = 50
    embed_dim: int = 96
    depth: tuple[int, ...] = (1, 1, 1, 1)
    num_heads: int = 4
    num_clusters: tuple[int, ...] = (16, 8, 4, 2)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    tolerance_px: float = 1.5
    num_examples: int = 4
    bootstrap: int = 1000

    @classmethod
    def quick(cls, **overrides: Any) -> "DemoConfig":
        """A tiny run for tests (well under a minute): few images, one epoch."""
        base = dict(num_train=48, num_test=12, embed_dim=48, epochs=1, batch_size=16, num_examples=2, bootstrap=100)
        base.update(overrides)
        return cls(**base)


# ------------------------------------------------------------------------ the run


def run_demo(cfg: DemoConfig, out_dir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Generate data, train, score every method, print the table, write the report.

    Returns:
        The content of ``metrics.json``.
    """
    _check_config(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run_demo(cfg, Path(out_dir), progress)
    finally:
        torch.set_num_threads(threads)


def _run_demo(cfg: DemoConfig, out: Path, progress: bool) -> dict[str, Any]:
    from castvit.train.supervised import SupervisedConfig, train_supervised

    out.mkdir(parents=True, exist_ok=True)
    load_before = _load_average()
    timing: dict[str, float] = {}
    start = clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timing[name] = round(now - clock, 2)
        clock = now

    _say(progress, f"castvit demo: {cfg.num_train} training and {cfg.num_test} test scenes of "
                   f"{cfg.image_size}x{cfg.image_size} px, {cfg.num_classes} classes; report in {out}/")
    train = make_split(cfg, cfg.num_train, cfg.seed, "train", progress, masks=False)
    test = make_split(cfg, cfg.num_test, cfg.seed + 1, "test", progress)
    lap("data_s")

    model = build_model(cfg)
    untrained = build_model(cfg)  # same seed, so the same initial weights
    _say(progress, f"CAST: {sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f}M trainable "
                   f"parameters; levels of {', '.join(map(str, cfg.num_clusters))} segments")
    loader = _loader(train, cfg.batch_size, train=True, seed=cfg.seed)
    val_loader = _loader(test, 100, train=False, seed=cfg.seed)
    train_cfg = SupervisedConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, min_lr=cfg.lr * 0.01, warmup_lr=cfg.lr * 0.01,
        warmup_epochs=min(cfg.warmup_epochs, cfg.epochs / 2), weight_decay=cfg.weight_decay,
        label_smoothing=cfg.label_smoothing, mixup_alpha=0.0, cutmix_alpha=0.0, mix_prob=0.0, drop_path=0.0,
        seed=cfg.seed, num_workers=0, log_every=5, eval_every=max(1, cfg.epochs // 10))
    history = train_supervised(model, loader, train_cfg, val_loader=val_loader, out_dir=None, device=cfg.device,
                               progress=progress)
    lap("train_s")

    predictions: dict[str, np.ndarray] = {
        "image": test["image"], "label": test["label"], "object_mask": test["object_mask"],
        "part_mask": test["part_mask"], "superpixels": test["superpixels"],
    }
    classification: dict[str, Any] = {"chance": 1.0 / cfg.num_classes}
    for name, net in (("trained", model), ("untrained", untrained)):
        pred_label, levels = predict_hierarchies(net, test, cfg.device, progress=progress, desc=name)
        predictions[f"pred_label_{name}"] = pred_label
        predictions[f"levels_{name}"] = levels
        classification[name] = {"acc": float((pred_label == test["label"]).mean())}
    predictions["levels_colour_grouping"] = colour_grouping_batch(test["image"], test["superpixels"],
                                                                  cfg.num_clusters, progress=progress)
    predictions["levels_superpixels"] = test["superpixels"][:, None].astype(np.int16)
    lap("inference_s")

    scores = {m: score_method(predictions[f"levels_{m}"], test["object_mask"], test["part_mask"], cfg.tolerance_px,
                              progress=progress, desc=m)
              for m in METHODS}
    segmentation = {m: s.summary for m, s in scores.items()}
    comparison = compare_methods(scores, cfg.bootstrap, seed=cfg.seed)
    lap("scoring_s")

    report: dict[str, Any] = {
        "format": "castvit-demo/1",
        "config": dataclasses.asdict(cfg),
        "data": {
            "num_train": cfg.num_train, "num_test": cfg.num_test, "image_size": cfg.image_size,
            "class_names": test["class_names"],
            "superpixels_per_image": float(np.mean([np.unique(s).size for s in test["superpixels"]])),
            "superpixels_with_token": float(np.mean([np.unique(s[::8, ::8]).size for s in test["superpixels"]])),
        },
        "aggregation": {
            "boundary": "precision/recall/F from counts summed over images (castvit.eval.prf_from_counts)",
            "regions": "covering, vi, pri, miou: mean over images of castvit.eval.evaluate_hierarchy",
            "num_segments": "mean over images",
            "ods_ois": "castvit.eval.ods_ois over the levels listed in ods_ois_levels",
            "tolerance": "tolerance_px / image diagonal",
        },
        "tolerance": cfg.tolerance_px / math.hypot(cfg.image_size, cfg.image_size),
        "classification": classification,
        "segmentation": segmentation,
        "comparison": comparison,
        "verdict": comparison["verdict"],
        "history": _plain_history(history),
        "timing": timing,
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_1min_before": load_before},
    }
    np.savez_compressed(out / "predictions.npz", **predictions)

    from castvit.viz.report import write_figures, write_html

    table = format_table(report)
    print(table, flush=True)
    report["table"] = table
    files, examples = write_figures(out, report, predictions)
    lap("report_s")
    timing["total_s"] = round(time.perf_counter() - start, 2)
    report["machine"]["load_average_1min_after"] = _load_average()
    report["files"] = ["metrics.json", "predictions.npz", *files, "index.html"]
    report["examples"] = examples
    write_html(out, report, examples)
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    _say(progress, f"total {timing['total_s']:.0f} s; report: {out / 'index.html'}")
    return report


def _check_config(cfg: DemoConfig) -> None:
    if cfg.image_size % 8:
        raise ValueError(f"image_size must be a multiple of 8, got {cfg.image_size}")
    if len(cfg.depth) != 4 or len(cfg.num_clusters) != 4:
        raise ValueError(f"depth and clusters need 4 entries (one per stage), got {cfg.depth}, {cfg.num_clusters}")
    if cfg.embed_dim % cfg.num_heads or cfg.embed_dim % 12:
        raise ValueError(f"embed_dim must be a multiple of num_heads ({cfg.num_heads}) and of 12 (the graph "
                         f"pooling's heads), got {cfg.embed_dim}")
    if cfg.num_train < cfg.batch_size:
        raise ValueError(f"num_train ({cfg.num_train}) must be at least one batch ({cfg.batch_size})")
    if not 1 <= cfg.n_segments < 2**15:
        raise ValueError(f"n_segments must be in 1..32767 (label maps are stored as int16), got {cfg.n_segments}")
    if cfg.epochs < 1 or cfg.num_test < 1 or cfg.threads < 1:
        raise ValueError("epochs, num_test and threads must be at least 1")


def _load_average() -> float | None:
    """The 1-minute load average (busy processes competing for the cores), if known."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, flush=True)


# ------------------------------------------------------------------------------ data


def make_split(cfg: DemoConfig, n: int, seed: int, desc: str = "scenes", progress: bool = False, *,
               masks: bool = True) -> dict[str, Any]:
    """Scenes ``0..n-1`` of seed ``seed`` with their superpixels.

    Returns:
        ``image`` ``N×H×W×3`` uint8, ``label`` ``N`` int64, ``superpixels`` ``N×H×W``
        int16, ``class_names``, and with ``masks`` the ``object_mask`` and ``part_mask``
        ``N×H×W`` int16 (left out for training, where they are never used).
    """
    from castvit.data.synthetic import SceneConfig, class_names, generate_scene
    from castvit.superpixels import compute_superpixels

    scene_cfg = SceneConfig(image_size=cfg.image_size, num_classes=cfg.num_classes, clutter=cfg.clutter,
                            scale_range=tuple(cfg.object_scale))
    size = cfg.image_size
    split: dict[str, Any] = {"image": np.empty((n, size, size, 3), np.uint8), "label": np.empty(n, np.int64),
                             "superpixels": np.empty((n, size, size), np.int16)}
    if masks:
        split["object_mask"] = np.empty((n, size, size), np.int16)
        split["part_mask"] = np.empty((n, size, size), np.int16)
    for i in _bar(range(n), progress, f"{desc} scenes"):
        scene = generate_scene(i, scene_cfg, seed)
        split["image"][i], split["label"][i] = scene.image, scene.label
        if masks:
            split["object_mask"][i], split["part_mask"][i] = scene.object_mask, scene.part_mask
    chunk = 64
    for i in _bar(range(0, n, chunk), progress, f"{desc} superpixels", total=math.ceil(n / chunk)):
        split["superpixels"][i:i + chunk] = compute_superpixels(
            split["image"][i:i + chunk], method=cfg.superpixels, n_segments=cfg.n_segments).numpy()
    split["class_names"] = class_names(scene_cfg)
    return split


def _bar(iterable, progress: bool, desc: str, total: int | None = None):
    if not progress:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


class _InMemoryScenes(torch.utils.data.Dataset):
    """Items for :func:`castvit.data.datasets.build_loader`: uint8 image, precomputed
    superpixels and label."""

    def __init__(self, split: dict[str, Any]):
        self.split = split

    def __len__(self) -> int:
        return len(self.split["label"])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "image": torch.from_numpy(np.ascontiguousarray(self.split["image"][index].transpose(2, 0, 1))),
            "superpixels": torch.from_numpy(self.split["superpixels"][index].astype(np.int64)),
            "label": int(self.split["label"][index]),
        }


def _normalised_view(image: torch.Tensor, gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """The scenes are used as they are (no augmentation: flips would change the class)."""
    from castvit.ops import normalize_images

    return {"image": normalize_images(image[None])[0]}


def _loader(split: dict[str, Any], batch_size: int, *, train: bool, seed: int):
    from castvit.data.datasets import build_loader

    return build_loader(_InMemoryScenes(split), _normalised_view, batch_size=batch_size, train=train, seed=seed,
                        num_workers=0)


# ----------------------------------------------------------------------------- model


def build_model(cfg: DemoConfig) -> torch.nn.Module:
    """A small ``cast_small`` with the demo's sizes, initialised from ``cfg.seed``."""
    from castvit import create_model

    torch.manual_seed(cfg.seed)
    return create_model("cast_small", img_size=cfg.image_size, embed_dim=cfg.embed_dim, depth=list(cfg.depth),
                        num_heads=cfg.num_heads, num_clusters=list(cfg.num_clusters), num_classes=cfg.num_classes)


@torch.no_grad()
def predict_hierarchies(model: torch.nn.Module, split: dict[str, Any], device: str = "cpu", *,
                        batch_size: int = 100, progress: bool = False, desc: str = "model"
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Predicted classes and hierarchies of a split.

    Returns:
        ``(labels N int64, levels N×5×H×W int16)``; level 0 is the superpixel map and
        level s the s-th pooling's segments (:class:`castvit.Hierarchy`).
    """
    from castvit.hierarchy import Hierarchy
    from castvit.ops import normalize_images

    model = model.to(device).eval()
    labels, levels = [], []
    for i in _bar(range(0, len(split["label"]), batch_size), progress, f"{desc} hierarchies",
                  total=math.ceil(len(split["label"]) / batch_size)):
        images = torch.from_numpy(split["image"][i:i + batch_size]).permute(0, 3, 1, 2)
        sp = torch.from_numpy(split["superpixels"][i:i + batch_size].astype(np.int64))
        feats = model.forward_features(normalize_images(images).to(device), sp.to(device))
        labels.append(model.forward_head(feats).argmax(-1).cpu().numpy())
        for h in Hierarchy.from_outputs(feats, sp):
            levels.append(np.stack(h.label_maps()).astype(np.int16))
    return np.concatenate(labels).astype(np.int64), np.stack(levels)


# ---------------------------------------------------------------------------- table


def format_table(report: dict[str, Any]) -> str:
    """The printed summary: classification, per-level segmentation, ODS/OIS, verdict."""
    cls = report["classification"]
    seg = report["segmentation"]
    lines = [
        f"classification accuracy on {report['data']['num_test']} test scenes: trained {cls['trained']['acc']:.3f}, "
        f"untrained {cls['untrained']['acc']:.3f} (chance {cls['chance']:.3f})",
        "",
        f"segmentation (bF: boundary F at {report['config']['tolerance_px']:g} px, cov: covering, mIoU: "
        "majority-label mIoU, VI: variation of information, lower is better)",
    ]
    head = " ".join(f"{short:>5s}" for _, _, short in HEADLINE)
    lines.append(f"{'method':16s} {'level':>5s} {'segs':>5s} | {'object GT':^23s} | {'part GT':^23s}")
    lines.append(f"{'':16s} {'':5s} {'':5s} | {head} | {head}")
    for m in ("superpixels", *GROUPING_METHODS):
        for rec in seg[m]["levels"]:
            if m != "superpixels" and rec["level"] == 0:
                continue
            cells = " | ".join(" ".join(f"{rec[g][k]:5.3f}" if k != "vi" else f"{rec[g][k]:5.2f}"
                                        for k, _, _ in HEADLINE) for g in GT_NAMES)
            name = m if rec["level"] in (0, 1) else ""
            lines.append(f"{name:16s} {rec['level']:5d} {rec['num_segments']:5.1f} | {cells}")
    lines.append("")
    lines.append(f"{'boundary F over levels':24s} {'object ODS':>10s} {'object OIS':>10s} {'parts ODS':>10s} "
                 f"{'parts OIS':>10s}")
    for m in (*GROUPING_METHODS, "superpixels"):
        oo = seg[m]["ods_ois"]
        lines.append(f"{m:24s} {oo['object']['ods_f']:10.3f} {oo['object']['ois_f']:10.3f} "
                     f"{oo['parts']['ods_f']:10.3f} {oo['parts']['ois_f']:10.3f}")
    lines.append("")
    lines.append("verdict: " + report["verdict"])
    return "\n".join(lines)


def _plain_history(history: dict[str, Any]) -> dict[str, list]:
    """The per-epoch lists of the training history (JSON-friendly)."""
    keys = ("epoch", "train_loss", "train_acc", "val_acc", "val_loss", "lr", "epoch_time_s")
    return {k: [None if v is None else float(v) for v in history.get(k, [])] for k in keys if k in history}
