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

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

METHODS = ("trained", "untrained", "colour_grouping", "superpixels")
GROUPING_METHODS = ("trained", "untrained", "colour_grouping")
GT_NAMES = ("object", "parts")
# (key in a level's scores, higher is better, short name)
HEADLINE = (("boundary_f", True, "bF"), ("covering", True, "cov"), ("miou", True, "mIoU"), ("vi", False, "VI"))


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


# ----------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DemoConfig()
    parser.add_argument("--out", default="castvit-demo", help="report folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny run for tests: 48 training images, 1 epoch (other flags still apply)")
    parser.add_argument("--epochs", type=int, help=f"training epochs (default {d.epochs})")
    parser.add_argument("--num-train", type=int, help=f"training scenes (default {d.num_train})")
    parser.add_argument("--num-test", type=int, help=f"test scenes (default {d.num_test})")
    parser.add_argument("--image-size", type=int, help=f"scene side in pixels, multiple of 8 (default {d.image_size})")
    parser.add_argument("--num-classes", type=int, help=f"object classes, 2..8 (default {d.num_classes})")
    parser.add_argument("--clutter", type=float, help=f"background clutter in [0, 1] (default {d.clutter})")
    parser.add_argument("--object-scale", type=_float_pair, help="object diameter as a fraction of the image "
                        f"side, low,high (default {d.object_scale[0]},{d.object_scale[1]})")
    parser.add_argument("--embed-dim", type=int, help=f"CAST width (default {d.embed_dim})")
    parser.add_argument("--depth", type=_int_list, help="blocks per stage, e.g. 1,1,1,1 (default "
                        f"{','.join(map(str, d.depth))})")
    parser.add_argument("--num-heads", type=int, help=f"attention heads (default {d.num_heads})")
    parser.add_argument("--clusters", type=_int_list, dest="num_clusters",
                        help="segments of levels 1..4, e.g. 16,8,4,2 (default "
                        f"{','.join(map(str, d.num_clusters))})")
    parser.add_argument("--superpixels", choices=("seeds", "slic"), help=f"superpixel method (default {d.superpixels})")
    parser.add_argument("--n-segments", type=int, help=f"superpixels requested per image (default {d.n_segments})")
    parser.add_argument("--batch-size", type=int, help=f"training batch (default {d.batch_size})")
    parser.add_argument("--lr", type=float, help=f"peak learning rate (default {d.lr})")
    parser.add_argument("--seed", type=int, help=f"data, initialisation and order seed (default {d.seed})")
    parser.add_argument("--device", help=f"torch device, e.g. cpu or cuda (default {d.device})")
    parser.add_argument("--threads", type=int, help=f"CPU threads for torch (default {d.threads})")
    parser.add_argument("--tolerance-px", type=float,
                        help=f"boundary match distance in pixels (default {d.tolerance_px})")
    parser.add_argument("--examples", type=int, dest="num_examples",
                        help=f"test images in the example figures (default {d.num_examples})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_pair(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two comma-separated numbers, got {text!r}") from None
    return low, high


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    """The :class:`DemoConfig` the flags ask for (``--quick`` first, then each flag)."""
    fields = {f.name for f in dataclasses.fields(DemoConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    return DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    run_demo(cfg, args.out, progress=not args.no_progress)
    return 0


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


# --------------------------------------------------------------- non-learned grouping


def colour_grouping(image: np.ndarray, superpixels: np.ndarray, num_segments: Sequence[int]) -> np.ndarray:
    """A nested grouping of superpixels by colour alone (the non-learned baseline).

    Agglomerative clustering with Ward's criterion on each superpixel's mean CIELAB
    colour: repeatedly merge the two *adjacent* regions whose merge least increases
    the within-region colour variance (cost ``n_a n_b / (n_a + n_b) · |μ_a − μ_b|²``
    with ``n`` in pixels), and record the partition when ``k`` regions are left, for
    every ``k`` in ``num_segments``. One merge sequence gives every level, so the
    levels are strictly nested, like CAST's. If no adjacent pair is left (a region
    graph in pieces), the closest non-adjacent pair is merged.

    Args:
        image: ``H×W×3`` uint8 RGB.
        superpixels: ``H×W`` integer labels.
        num_segments: segments per level, fine to coarse (e.g. ``(16, 8, 4, 2)``); a
            level asking for at least as many segments as there are superpixels is
            the superpixel map.

    Returns:
        ``(1 + L)×H×W`` int16: the superpixels relabelled ``0..K-1``, then one map per
        level.
    """
    from skimage.color import rgb2lab

    from castvit.ops import relabel_contiguous

    sp = relabel_contiguous(superpixels)
    n = int(sp.max()) + 1
    flat = sp.ravel()
    size = np.bincount(flat, minlength=n).astype(np.float64)
    lab = rgb2lab(image).reshape(-1, 3)
    mean = np.stack([np.bincount(flat, lab[:, c], minlength=n) for c in range(3)], 1) / size[:, None]
    adjacent = np.zeros((n, n), bool)
    for a, b in ((sp[:, :-1], sp[:, 1:]), (sp[:-1], sp[1:])):
        adjacent[a.ravel(), b.ravel()] = True
    adjacent |= adjacent.T
    np.fill_diagonal(adjacent, False)

    def ward(i: int | slice) -> np.ndarray:
        return size[i, None] * size[None] / (size[i, None] + size[None]) * ((mean[i, None] - mean[None]) ** 2).sum(-1)

    cost = ward(slice(None))
    alive = np.ones(n, bool)
    owner = np.arange(n)  # superpixel -> current region
    wanted = sorted({min(k, n) for k in num_segments}, reverse=True)
    cuts = {n: owner.copy()}
    for remaining in range(n, min(wanted), -1):
        masked = np.where(adjacent & alive[:, None] & alive[None], cost, np.inf)
        if not np.isfinite(masked).any():
            masked = np.where(alive[:, None] & alive[None], cost, np.inf)
            np.fill_diagonal(masked, np.inf)
        i, j = np.unravel_index(int(np.argmin(masked)), masked.shape)
        i, j = (i, j) if i < j else (j, i)
        mean[i] = (size[i] * mean[i] + size[j] * mean[j]) / (size[i] + size[j])
        size[i] += size[j]
        alive[j] = False
        owner[owner == j] = i
        adjacent[i] |= adjacent[j]
        adjacent[:, i] = adjacent[i]
        adjacent[i, i] = False
        cost[i] = ward(i)
        cost[:, i] = cost[i]
        cuts[remaining - 1] = owner.copy()
    maps = [sp] + [relabel_contiguous(cuts[min(k, n)][sp]) for k in num_segments]
    return np.stack(maps).astype(np.int16)


def colour_grouping_batch(images: np.ndarray, superpixels: np.ndarray, num_segments: Sequence[int], *,
                          progress: bool = False) -> np.ndarray:
    """:func:`colour_grouping` of every image: ``N×(1+L)×H×W`` int16."""
    return np.stack([colour_grouping(im, sp, num_segments)
                     for im, sp in _bar(zip(images, superpixels), progress, "colour grouping", total=len(images))])


# --------------------------------------------------------------------------- scoring


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
    for i in _bar(range(n), progress, f"scoring {desc}"):
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


def compare_methods(scores: dict[str, MethodScores], num_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Does training beat the baselines? Paired bootstrap over test images.

    For each baseline, each ground truth, each headline metric (boundary F, covering,
    mIoU, VI) and each grouping level, the difference ``trained − baseline``
    (``baseline − trained`` for VI, so positive always favours training) gets a 95 %
    percentile interval from ``num_resamples`` resamples of the test images (the same
    images for both methods). The trained model *wins* a comparison when the interval
    lies above zero, *loses* when below, else it is a tie. Against the superpixels
    alone (one level) the trained model's best level by the full-set value is used,
    and mIoU is skipped (over-segmentation scores 1 there by construction).

    Returns:
        ``{"pairs": {baseline: [rows]}, "counts": {baseline: {"win", "loss", "tie"}},
        "beats": {baseline: bool}, "verdict": str}``; a row holds ``gt``, ``metric``,
        ``level``, ``trained``, ``baseline``, ``diff``, ``low``, ``high``, ``outcome``.
        ``beats`` is True when wins outnumber losses and ties together.
    """
    trained = scores["trained"]
    n = trained.per_image["object"]["covering"].shape[0]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(num_resamples, n))
    full = np.arange(n)[None]
    pairs: dict[str, list[dict[str, Any]]] = {}
    counts: dict[str, dict[str, int]] = {}
    for base_name in ("untrained", "colour_grouping", "superpixels"):
        base = scores[base_name]
        rows = []
        for g in GT_NAMES:
            for key, higher, _ in HEADLINE:
                if base_name == "superpixels":
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
    return {"pairs": pairs, "counts": counts, "beats": beats, "num_resamples": num_resamples,
            "verdict": _verdict(counts, beats)}


def _verdict(counts: dict[str, dict[str, int]], beats: dict[str, bool]) -> str:
    names = {"untrained": "the untrained model", "colour_grouping": "the colour grouping",
             "superpixels": "the superpixels alone"}
    parts = []
    for b, c in counts.items():
        total = sum(c.values())
        parts.append(f"vs {names[b]}: {c['win']} wins, {c['loss']} losses, {c['tie']} ties of {total}")
    won = [names[b] for b, ok in beats.items() if ok]
    lost = [names[b] for b, ok in beats.items() if not ok]
    if not lost:
        head = "Training BEATS every baseline on segmentation"
    elif not won:
        head = "Training does NOT beat any baseline on segmentation"
    else:
        head = f"Training beats {' and '.join(won)} but does NOT beat {' or '.join(lost)} on segmentation"
    return (f"{head} (paired bootstrap 95% intervals per level and metric; " + "; ".join(parts) + ").")


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
