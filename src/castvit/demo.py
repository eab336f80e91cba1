"""``castvit demo``: learn a segmentation hierarchy by classification on a CPU in
minutes, and measure it against ground truth and the paper's baselines.

The paper's claim is that a CAST trained on recognition alone groups its superpixels
into a meaningful part/whole hierarchy. This command makes that claim checkable on a
laptop, with no download, on two families of scenes:

1. **Data.** Synthetic scenes (:mod:`castvit.data.synthetic`): one object of three
   parts per image, whose class depends on the head shape and the parts' layout,
   with exact object and part masks, in two families (``--families``):

   * ``colour``: every part has its own colour, distinct from the background. A
     colour clustering finds the parts without any recognition.
   * ``camouflage``: parts, distractor parts and a patchwork background share three
     colours and the same textures. Only shape and layout tell object from clutter.

   Train and test splits come from different seeds. Superpixels (SEEDS by default)
   are computed once per image. Defaults per family: 4,000 training and 200 test
   scenes of 64×64 px, 4 classes, SEEDS with ``n_segments=50`` (about 36 superpixels).
2. **Training**, per family, by image classification only, with the shared engine
   :mod:`castvit.train.supervised` (AdamW, lr 1e-3, warmup then cosine, 6 epochs, no
   mixing or augmentation: flips would change the class); the masks are never seen.

   * ``trained``: a small CAST (:func:`castvit.create_model`: width 96, one block
     per stage, 4 heads, levels of 16/8/4/2 segments) as the authors train a
     classifier: the head reads the cls token, so the last pooling is never read and
     stays frozen at its random initialisation (level 4 is not learned);
   * ``trained_l4`` (``--no-level4`` skips it): the same CAST with a classifier head
     on the mean of its pooled level-4 tokens (:class:`Level4Classifier`), so every
     pooling, the last one included, is trained;
   * with ``--baselines tome,vit_kmeans`` (off by default: they do not fit the
     10-minute budget on 2 cores), ``tome``: ToMe on the same superpixel tokens
     (:mod:`castvit.models.tome`, 2+1+1+1 blocks, merges traced to 16/8/4/2 tokens)
     and ``vit_kmeans``: a superpixel-token ViT (``vit_suppix``, 4 blocks) whose
     tokens are clustered by hierarchical spherical k-means (:mod:`castvit.eval.kmeans`).
3. **Hierarchies** over the same test superpixels, with the same number of segments
   per level (the model's ``num_clusters``): the models above, and

   * ``untrained``: the CAST before training (same initialisation seed);
   * ``superpixels``: the superpixels alone (level 0 of every hierarchy);
   * ``colour_grouping``: a non-learned grouping of the same superpixels:
     agglomerative Ward clustering on mean CIELAB colour, merging only adjacent
     regions, cut at each level's segment count (:func:`colour_grouping`). It is
     nested like CAST's hierarchy, so the comparison is level for level.
4. **Scores** with :mod:`castvit.eval` against the object mask (object vs
   background) and the part mask (background + three parts): per level, boundary
   precision/recall/F by the BSDS500 benchmark's rule (``seg2bdry`` boundaries,
   thinning, one-to-one matching; counts summed over images) at a distance in pixels,
   ``--tolerance-px`` (1.5 px; BSDS's 0.0075 × diagonal would be 0.68 px at 64×64),
   segmentation covering, variation of information,
   probabilistic Rand index and majority-label mIoU (means over images); ODS/OIS
   boundary F over the grouping levels 1..4; hierarchy consistency. Then a verdict
   per family: paired bootstrap intervals over test images decide, level by level,
   whether each trained CAST beats each baseline.
5. **Report** in ``--out``: ``metrics.json``, ``predictions.npz`` (every method's label
   maps, the ground truth and the predicted classes of every family, keys
   ``"<family>.<name>"``, so the numbers can be recomputed), PNG figures and one
   self-contained ``index.html``.

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
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from castvit.eval.baselines import colour_grouping_batch
from castvit.eval.compare import GT_NAMES, HEADLINE, compare_methods, score_method

FAMILIES = ("colour", "camouflage")
EXTRA_BASELINES = ("tome", "vit_kmeans")  # trained baselines behind --baselines
# every method a report may hold, in table order
ALL_METHODS = ("trained", "trained_l4", "tome", "vit_kmeans", "untrained", "colour_grouping", "superpixels")
METHODS = ("trained", "untrained", "colour_grouping", "superpixels")  # always present
GROUPING_METHODS = ("trained", "untrained", "colour_grouping")
TRAINED_MODELS = ("trained", "trained_l4", "tome", "vit_kmeans")


@dataclasses.dataclass
class DemoConfig:
    """Everything that defines one demo run (stored in ``metrics.json``).

    Attributes:
        families: scene families to run, from ``("colour", "camouflage")``.
        level4: also train ``trained_l4`` (a head on the pooled level-4 tokens, so
            every pooling is learned).
        baselines: trained baselines to add, from ``("tome", "vit_kmeans")``.
        image_size: side of the square scenes in pixels (multiple of 8).
        num_classes: object classes (2..8, see :mod:`castvit.data.synthetic`).
        clutter: background clutter of the scenes, in [0, 1].
        object_scale: object diameter as a fraction of the image side (low, high).
        num_train, num_test: scenes in the training and the test split, per family.
        superpixels: ``"seeds"`` or ``"slic"``.
        n_segments: superpixels requested per image.
        embed_dim, depth, num_heads, num_clusters: the CAST (``cast_small`` with these
            overrides); ``num_clusters`` are the segments of levels 1..4. ToMe and the
            ViT use the same width and heads (ToMe: one more block in stage 1, since
            a block can at most halve the tokens; the ViT: ``sum(depth)`` blocks).
        epochs, batch_size, lr, weight_decay, warmup_epochs, label_smoothing: training
            (the same for every trained model).
        kmeans_concentration, kmeans_iterations: the ViT + k-means baseline.
        seed: seeds the data (train split ``seed``, test split ``seed + 1``), the model
            initialisation and the training order.
        device: torch device for training and inference.
        threads: CPU threads for torch. One by default: on a lightly loaded 2-core
            machine two threads made an epoch about a third faster (18 s vs 27 s), but
            when other processes compete for the cores, threads waiting on each other
            slowed runs many times over (one epoch took 207 s instead of 18 s); one
            thread degrades least on a busy machine. Use
            ``--threads 2`` (or more) on an idle one. Results depend slightly on it.
        tolerance_px: boundary match distance in pixels, for the BSDS boundary rule of
            :func:`castvit.eval.boundary_prf` (BSDS's own 0.0075 × diagonal is 0.68 px
            at 64×64, too strict for such small scenes).
        num_examples: test images drawn in the example figures, per family.
        bootstrap: resamples of the paired bootstrap behind the verdict.
    """

    families: tuple[str, ...] = FAMILIES
    level4: bool = True
    baselines: tuple[str, ...] = ()
    image_size: int = 64
    num_classes: int = 4
    clutter: float = 0.3
    object_scale: tuple[float, float] = (0.5, 0.8)
    num_train: int = 4000
    num_test: int = 200
    superpixels: str = "seeds"
    n_segments: int = 50
    embed_dim: int = 96
    depth: tuple[int, ...] = (1, 1, 1, 1)
    num_heads: int = 4
    num_clusters: tuple[int, ...] = (16, 8, 4, 2)
    epochs: int = 6
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    kmeans_concentration: float = 5.0
    kmeans_iterations: int = 30
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    tolerance_px: float = 1.5
    num_examples: int = 3
    bootstrap: int = 1000

    @classmethod
    def quick(cls, **overrides: Any) -> "DemoConfig":
        """A tiny run for tests (well under a minute): few images, one epoch, every
        method."""
        base = dict(num_train=32, num_test=8, embed_dim=48, epochs=1, batch_size=16, num_examples=1, bootstrap=100,
                    baselines=EXTRA_BASELINES)
        base.update(overrides)
        return cls(**base)

    def methods(self) -> tuple[str, ...]:
        """The methods of this run, in table order."""
        chosen = {*METHODS, *self.baselines} | ({"trained_l4"} if self.level4 else set())
        return tuple(m for m in ALL_METHODS if m in chosen)


# ------------------------------------------------------------------------ the run


def run_demo(cfg: DemoConfig, out_dir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Generate data, train, score every method of every family, print the tables,
    write the report.

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
    out.mkdir(parents=True, exist_ok=True)
    load_before = _load_average()
    start, cpu_start = time.perf_counter(), time.process_time()
    _say(progress, f"castvit demo: families {', '.join(cfg.families)}; {cfg.num_train} training and {cfg.num_test} "
                   f"test scenes of {cfg.image_size}x{cfg.image_size} px each, {cfg.num_classes} classes; methods "
                   f"{', '.join(cfg.methods())}; report in {out}/")
    families: dict[str, Any] = {}
    predictions: dict[str, np.ndarray] = {}
    for family in cfg.families:
        report, preds = _run_family(cfg, family, progress, out)
        families[family] = report
        predictions.update({f"{family}.{k}": v for k, v in preds.items()})
    report = {
        "format": "castvit-demo/2",
        "config": dataclasses.asdict(cfg),
        "methods": list(cfg.methods()),
        "families": families,
        "verdicts": {f: families[f]["verdict"] for f in cfg.families},
        "aggregation": {
            "boundary": "precision/recall/F from counts summed over images (castvit.eval.prf_from_counts)",
            "regions": "covering, vi, pri, miou: mean over images of castvit.eval.evaluate_hierarchy",
            "num_segments": "mean over images",
            "ods_ois": "castvit.eval.ods_ois over the levels listed in ods_ois_levels",
            "tolerance": "tolerance_px / image diagonal",
        },
        "tolerance": cfg.tolerance_px / math.hypot(cfg.image_size, cfg.image_size),
        "timing": {f: families[f]["timing"] for f in cfg.families},
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_1min_before": load_before},
    }
    np.savez_compressed(out / "predictions.npz", **predictions)

    from castvit.viz.report import write_figures, write_html

    table = format_table(report)
    print(table, flush=True)
    report["table"] = table
    clock = time.perf_counter()
    files = write_figures(out, report, predictions)
    report["timing"]["report_s"] = round(time.perf_counter() - clock, 2)
    report["timing"]["total_s"] = round(time.perf_counter() - start, 2)
    # CPU seconds of this process: on a shared machine the wall time above also counts
    # the time other processes held the cores
    report["timing"]["cpu_total_s"] = round(time.process_time() - cpu_start, 2)
    report["machine"]["load_average_1min_after"] = _load_average()
    saved = [f for fam in families.values() for f in fam["checkpoints"].values()]
    report["files"] = ["metrics.json", "predictions.npz", *files, "index.html", *saved,
                       *(str(Path(f).with_suffix(".json")) for f in saved)]
    write_html(out, report)
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    _say(progress, f"total {report['timing']['total_s']:.0f} s; report: {out / 'index.html'}")
    return report


def _run_family(cfg: DemoConfig, family: str, progress: bool,
                out: Path | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Data, training, hierarchies and scores of one scene family; with ``out``, the
    trained models are saved as ``out/checkpoints/<family>_<name>.safetensors``."""
    timing: dict[str, float] = {}
    clock, cpu_clock = time.perf_counter(), time.process_time()

    def lap(name: str) -> None:  # wall seconds, and CPU seconds as "cpu_<name>"
        nonlocal clock, cpu_clock
        now, cpu_now = time.perf_counter(), time.process_time()
        timing[name] = round(now - clock, 2)
        timing[f"cpu_{name}"] = round(cpu_now - cpu_clock, 2)
        clock, cpu_clock = now, cpu_now

    _say(progress, f"== {family} scenes")
    train = make_split(cfg, cfg.num_train, cfg.seed, f"{family} train", progress, masks=False, family=family)
    test = make_split(cfg, cfg.num_test, cfg.seed + 1, f"{family} test", progress, family=family)
    lap("data_s")

    methods = cfg.methods()
    models = {name: build_model(cfg, name) for name in TRAINED_MODELS if name in methods}
    untrained = build_model(cfg)  # same seed, so the same initial weights as "trained"
    histories: dict[str, Any] = {}
    for name, model in models.items():
        params = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
        _say(progress, f"{family}: training {name} ({params:.2f}M trainable parameters)")
        histories[name] = _plain_history(train_classifier(model, train, test, cfg, progress))
        lap(f"train_{name}_s")
    checkpoints = save_checkpoints(models, cfg, family, out / "checkpoints") if out is not None else {}

    predictions: dict[str, np.ndarray] = {
        "image": test["image"], "label": test["label"], "object_mask": test["object_mask"],
        "part_mask": test["part_mask"], "superpixels": test["superpixels"],
    }
    classification: dict[str, Any] = {"chance": 1.0 / cfg.num_classes}
    for name, net in (*models.items(), ("untrained", untrained)):
        pred_label, levels = predict_hierarchies(net, test, cfg.device, progress=progress, desc=name)
        predictions[f"pred_label_{name}"] = pred_label
        classification[name] = {"acc": float((pred_label == test["label"]).mean())}
        if name == "vit_kmeans":
            levels = kmeans_levels(net, test, cfg, progress=progress)
        predictions[f"levels_{name}"] = levels
    predictions["levels_colour_grouping"] = colour_grouping_batch(test["image"], test["superpixels"],
                                                                  cfg.num_clusters, progress=progress)
    predictions["levels_superpixels"] = test["superpixels"][:, None].astype(np.int16)
    lap("inference_s")

    scores = {m: score_method(predictions[f"levels_{m}"], test["object_mask"], test["part_mask"], cfg.tolerance_px,
                              progress=progress, desc=f"{family} {m}")
              for m in methods}
    baselines = tuple(m for m in methods if m not in ("trained", "trained_l4"))
    comparison = compare_methods(scores, cfg.bootstrap, seed=cfg.seed, baselines=baselines)
    comparisons = {"trained": comparison}
    if "trained_l4" in methods:
        comparisons["trained_l4"] = compare_methods(scores, cfg.bootstrap, seed=cfg.seed, reference="trained_l4",
                                                    baselines=("trained", *baselines))
    verdict = " ".join(f"[{REFERENCE_NAMES[r]}] {c['verdict']}" for r, c in comparisons.items())
    lap("scoring_s")
    report = {
        "family": family,
        "data": {
            "num_train": cfg.num_train, "num_test": cfg.num_test, "image_size": cfg.image_size,
            "class_names": test["class_names"],
            "superpixels_per_image": float(np.mean([np.unique(s).size for s in test["superpixels"]])),
            "superpixels_with_token": float(np.mean([np.unique(s[::8, ::8]).size for s in test["superpixels"]])),
        },
        "classification": classification,
        "segmentation": {m: s.summary for m, s in scores.items()},
        "comparisons": comparisons,
        "verdict": verdict,
        "history": histories,
        "checkpoints": checkpoints,
        "timing": timing,
    }
    return report, predictions


def demo_preprocessing(cfg: DemoConfig) -> dict[str, Any]:
    """The preprocessing the demo trains with, as a ``pretrained_cfg``: the scene size,
    ImageNet mean/std (:func:`castvit.ops.normalize_images`) and the superpixels of
    :func:`make_split`."""
    from castvit.models._builder import SEEDS_PRETRAIN
    from castvit.ops import IMAGENET_MEAN, IMAGENET_STD

    # make_split calls compute_superpixels with its defaults: for SEEDS, the pre-training settings
    sp = {**(SEEDS_PRETRAIN if cfg.superpixels == "seeds" else {"method": cfg.superpixels}),
          "n_segments": cfg.n_segments}
    return {"input_size": [cfg.image_size, cfg.image_size], "superpixels": sp, "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD)}


def save_checkpoints(models: dict[str, nn.Module], cfg: DemoConfig, family: str, folder: Path) -> dict[str, str]:
    """Save each trained model as ``folder/<family>_<name>.safetensors`` (castvit's
    format: :func:`castvit.load_pretrained`, ``create_model(pretrained=path)``, and as an
    encoder for fine-tuning, ``model.pretrained=path`` in a recipe). ``trained_l4`` is
    saved as its CAST (the level-4 head is dropped: the file is the encoder).

    Returns:
        ``{name: file name relative to the report folder}``.
    """
    from castvit.models._builder import save_pretrained

    folder.mkdir(parents=True, exist_ok=True)
    saved = {}
    for name, model in models.items():
        net = model.cast if isinstance(model, Level4Classifier) else model
        net.pretrained_cfg = demo_preprocessing(cfg)
        path = save_pretrained(net, folder / f"{family}_{name}.safetensors")
        saved[name] = f"{folder.name}/{path.name}"
    return saved


REFERENCE_NAMES = {"trained": "CAST, authors' classifier (level 4 frozen)",
                   "trained_l4": "CAST, head on level-4 tokens (every level learned)"}


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
    unknown = [f for f in cfg.families if f not in FAMILIES]
    if unknown or not cfg.families or len(set(cfg.families)) != len(cfg.families):
        raise ValueError(f"families must be distinct names from {', '.join(FAMILIES)}, got {list(cfg.families)}")
    unknown = [b for b in cfg.baselines if b not in EXTRA_BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {', '.join(EXTRA_BASELINES)}")


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
               masks: bool = True, family: str = "colour") -> dict[str, Any]:
    """Scenes ``0..n-1`` of seed ``seed`` and ``family`` with their superpixels.

    Returns:
        ``image`` ``N×H×W×3`` uint8, ``label`` ``N`` int64, ``superpixels`` ``N×H×W``
        int16, ``class_names``, and with ``masks`` the ``object_mask`` and ``part_mask``
        ``N×H×W`` int16 (left out for training, where they are never used).
    """
    from castvit.data.synthetic import SceneConfig, class_names, generate_scene
    from castvit.superpixels import compute_superpixels

    scene_cfg = SceneConfig(image_size=cfg.image_size, num_classes=cfg.num_classes, clutter=cfg.clutter,
                            scale_range=tuple(cfg.object_scale), family=family)
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


class Level4Classifier(nn.Module):
    """A CAST classifier whose head reads the pooled level-4 tokens, so that every
    graph pooling is trained (the demo's ``trained_l4``).

    The authors' classifier reads the cls token after stage 4, so its last pooling
    never reaches the loss and stays at its random initialisation. Here the logits
    are ``head(norm(mean of the level-4 tokens))``: the level-4 tokens are averages
    weighted by the pooling's soft assignments, so the last pooling learns too. The
    CAST's own ``norm`` and ``head`` are unused and frozen.
    """

    def __init__(self, cast: nn.Module):
        super().__init__()
        self.cast = cast
        cast.requires_grad_(True)
        for p in (*cast.norm.parameters(), *cast.head.parameters(), cast.pos_embed, cast.pe_token):
            p.requires_grad_(False)
        self.num_features = cast.embed_dim
        self.norm = nn.LayerNorm(cast.embed_dim, eps=1e-6)
        self.head = nn.Linear(cast.embed_dim, cast.num_classes)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward_features(self, images: torch.Tensor, superpixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The CAST's outputs (every pooling run), with ``pooled4`` ``B×D``: the
        normalised mean of the level-4 tokens."""
        feats = self.cast.forward_features(images, superpixels)
        feats["pooled4"] = self.norm(feats["centroid4"].mean(1))
        return feats

    def forward_head(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(feats["pooled4"])

    def forward(self, images: torch.Tensor, superpixels: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images, superpixels))


def build_model(cfg: DemoConfig, name: str = "trained") -> torch.nn.Module:
    """The demo's model ``name`` with its sizes, initialised from ``cfg.seed``.

    ``trained``/``untrained``: a small ``cast_small``; ``trained_l4``: the same CAST in
    a :class:`Level4Classifier`; ``tome``: ``tome_small`` of the same width with one
    more block in stage 1; ``vit_kmeans``: ``vit_suppix_small`` with ``sum(depth)``
    blocks.
    """
    from castvit import create_model

    torch.manual_seed(cfg.seed)
    common = dict(img_size=cfg.image_size, embed_dim=cfg.embed_dim, num_heads=cfg.num_heads,
                  num_classes=cfg.num_classes)
    if name in ("trained", "untrained", "trained_l4"):
        cast = create_model("cast_small", depth=list(cfg.depth), num_clusters=list(cfg.num_clusters), **common)
        return Level4Classifier(cast) if name == "trained_l4" else cast
    if name == "tome":
        depth = [cfg.depth[0] + 1, *cfg.depth[1:]]
        return create_model("tome_small", depth=depth, num_clusters=list(cfg.num_clusters), **common)
    if name == "vit_kmeans":
        return create_model("vit_suppix_small", depth=sum(cfg.depth), **common)
    raise ValueError(f"unknown demo model {name!r}; choose from trained, untrained, {', '.join(TRAINED_MODELS[1:])}")


def train_classifier(model: nn.Module, train: dict[str, Any], test: dict[str, Any], cfg: DemoConfig,
                     progress: bool = False) -> dict[str, Any]:
    """Train ``model`` by classification on ``train`` (the shared supervised engine)
    and return its history; ``test`` gives the per-epoch test accuracy."""
    from castvit.train.supervised import SupervisedConfig, train_supervised

    loader = _loader(train, cfg.batch_size, train=True, seed=cfg.seed)
    val_loader = _loader(test, 100, train=False, seed=cfg.seed)
    train_cfg = SupervisedConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, min_lr=cfg.lr * 0.01, warmup_lr=cfg.lr * 0.01,
        warmup_epochs=min(cfg.warmup_epochs, cfg.epochs / 2), weight_decay=cfg.weight_decay,
        label_smoothing=cfg.label_smoothing, mixup_alpha=0.0, cutmix_alpha=0.0, mix_prob=0.0, drop_path=0.0,
        seed=cfg.seed, num_workers=0, log_every=5, eval_every=max(1, cfg.epochs // 4))
    return train_supervised(model, loader, train_cfg, val_loader=val_loader, out_dir=None, device=cfg.device,
                            progress=progress)


def kmeans_levels(model: nn.Module, split: dict[str, Any], cfg: DemoConfig, *, batch_size: int = 100,
                  progress: bool = False) -> np.ndarray:
    """``N×5×H×W`` int16 hierarchies of the ViT + spherical k-means baseline."""
    from castvit.eval.kmeans import label_maps, vit_kmeans_hierarchies
    from castvit.ops import normalize_images

    model = model.to(cfg.device).eval()
    out = []
    for i in _bar(range(0, len(split["label"]), batch_size), progress, "k-means hierarchies",
                  total=math.ceil(len(split["label"]) / batch_size)):
        images = normalize_images(torch.from_numpy(split["image"][i:i + batch_size]).permute(0, 3, 1, 2))
        sp = torch.from_numpy(split["superpixels"][i:i + batch_size].astype(np.int64))
        out.append(label_maps(vit_kmeans_hierarchies(model, images.to(cfg.device), sp.to(cfg.device),
                                                     cfg.num_clusters, concentration=cfg.kmeans_concentration,
                                                     iterations=cfg.kmeans_iterations, seed=cfg.seed)))
    return np.concatenate(out)


@torch.no_grad()
def predict_hierarchies(model: torch.nn.Module, split: dict[str, Any], device: str = "cpu", *,
                        batch_size: int = 100, progress: bool = False, desc: str = "model"
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Predicted classes and hierarchies of a split.

    Returns:
        ``(labels N int64, levels N×5×H×W int16)``; level 0 is the superpixel map and
        level s the s-th pooling's (or ToMe's s-th traced) segments
        (:class:`castvit.Hierarchy`); empty levels for a model without them (a ViT).
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
        if "logit1" in feats:
            for h in Hierarchy.from_outputs(feats, sp):
                levels.append(np.stack(h.label_maps()).astype(np.int16))
    levels_out = np.stack(levels) if levels else np.zeros((0,), np.int16)
    return np.concatenate(labels).astype(np.int64), levels_out


# ---------------------------------------------------------------------------- table


def format_table(report: dict[str, Any]) -> str:
    """The printed summary: one row per family and method, then per family the
    per-level segmentation, ODS/OIS and the verdict."""
    lines = [summary_table(report), ""]
    for family, fam in report["families"].items():
        lines += [f"== {family} scenes: per level", _family_table(report, fam), ""]
        lines.append(f"verdict ({family}): " + fam["verdict"])
        lines.append("")
    return "\n".join(lines).rstrip()


METHOD_NAMES = {"trained": "CAST (authors')", "trained_l4": "CAST (all levels)", "tome": "ToMe traced",
                "vit_kmeans": "ViT + k-means", "untrained": "CAST untrained", "colour_grouping": "colour grouping",
                "superpixels": "superpixels"}


def summary_table(report: dict[str, Any]) -> str:
    """One row per scene family and method: test accuracy, then covering per level
    and ODS boundary F against the object and the part masks."""
    levels = range(1, len(report["config"]["num_clusters"]) + 1)
    cov_head = " ".join(f"{'L' + str(k):>5s}" for k in levels)
    lines = [
        "summary (acc: test classification accuracy; cov Lk: segmentation covering at level k; ODS: boundary F "
        f"at the best level for the test set; tolerance {report['config']['tolerance_px']:g} px)",
        f"{'family':10s} {'method':17s} {'acc':>5s} | {'object cov':^{6 * len(levels) - 1}s} {'ODS':>5s} | "
        f"{'part cov':^{6 * len(levels) - 1}s} {'ODS':>5s}",
        f"{'':10s} {'':17s} {'':5s} | {cov_head} {'':5s} | {cov_head} {'':5s}",
    ]
    for family, fam in report["families"].items():
        for m in report["methods"]:
            seg = fam["segmentation"][m]
            acc = fam["classification"].get(m, {}).get("acc")
            cells = []
            for g in GT_NAMES:
                recs = {rec["level"]: rec for rec in seg["levels"]}
                covs = [f"{recs[k][g]['covering']:5.3f}" if k in recs else (
                    f"{recs[0][g]['covering']:5.3f}" if k == 1 and m == "superpixels" else f"{'-':>5s}")
                    for k in levels]
                cells.append(" ".join(covs) + f" {seg['ods_ois'][g]['ods_f']:5.3f}")
            acc_text = f"{acc:5.3f}" if acc is not None else f"{'-':>5s}"
            lines.append(f"{family:10s} {METHOD_NAMES[m]:17s} {acc_text} | {cells[0]} | {cells[1]}")
    return "\n".join(lines)


def _family_table(report: dict[str, Any], fam: dict[str, Any]) -> str:
    seg = fam["segmentation"]
    head = " ".join(f"{short:>5s}" for _, _, short in HEADLINE)
    lines = [
        f"segmentation (bF: BSDS-rule boundary F at {report['config']['tolerance_px']:g} px, cov: covering, mIoU: "
        "majority-label mIoU, VI: variation of information, lower is better)",
        f"{'method':17s} {'level':>5s} {'segs':>5s} | {'object GT':^23s} | {'part GT':^23s}",
        f"{'':17s} {'':5s} {'':5s} | {head} | {head}",
    ]
    order = ["superpixels", *(m for m in report["methods"] if m != "superpixels")]
    for m in order:
        for rec in seg[m]["levels"]:
            if m != "superpixels" and rec["level"] == 0:
                continue
            cells = " | ".join(" ".join(f"{rec[g][k]:5.3f}" if k != "vi" else f"{rec[g][k]:5.2f}"
                                        for k, _, _ in HEADLINE) for g in GT_NAMES)
            name = METHOD_NAMES[m] if rec["level"] in (0, 1) else ""
            lines.append(f"{name:17s} {rec['level']:5d} {rec['num_segments']:5.1f} | {cells}")
    lines.append("")
    lines.append(f"{'boundary F over levels':24s} {'object ODS':>10s} {'object OIS':>10s} {'parts ODS':>10s} "
                 f"{'parts OIS':>10s}")
    for m in order:
        oo = seg[m]["ods_ois"]
        lines.append(f"{METHOD_NAMES[m]:24s} {oo['object']['ods_f']:10.3f} {oo['object']['ois_f']:10.3f} "
                     f"{oo['parts']['ods_f']:10.3f} {oo['parts']['ois_f']:10.3f}")
    return "\n".join(lines)


def _plain_history(history: dict[str, Any]) -> dict[str, list]:
    """The per-epoch lists of the training history (JSON-friendly)."""
    keys = ("epoch", "train_loss", "train_acc", "val_acc", "val_loss", "lr", "epoch_time_s")
    return {k: [None if v is None else float(v) for v in history.get(k, [])] for k in keys if k in history}
