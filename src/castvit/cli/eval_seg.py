"""``castvit eval seg CONFIG --checkpoint PATH``: mIoU of a fine-tuned segmentation
model on the validation split of its recipe (PROTOCOLS §1–2).

Prints the per-class IoU table, writes ``metrics.json`` and a few pictures (image,
ground truth, prediction, with a legend of the classes shown) to ``--out``. The
inference settings come from the recipe's ``data.eval`` (sliding window for
Segmenter, whole image for SPML); ``--flip`` and ``--scales`` add the "MS" options.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the segmentation recipe the model was trained with, "
                                       "e.g. configs/segmenter_ade20k.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. data.root=/data/ade")
    parser.add_argument("--checkpoint", required=True,
                        help="fine-tuned model: castvit's last.pth.tar / best.pth.tar or the authors' Segmenter "
                             "checkpoint.pth")
    parser.add_argument("--out", default=None, help="folder for metrics.json and pictures (default: beside the "
                                                    "checkpoint, eval_seg/)")
    parser.add_argument("--split", default="val", choices=("val", "train"), help="split to score (default val)")
    parser.add_argument("--max-images", type=int, default=None, help="score only the first N images")
    parser.add_argument("--flip", action="store_true", help="also score the mirrored images (softmax averaged)")
    parser.add_argument("--scales", default=None,
                        help="comma-separated test scales, e.g. 0.5,0.75,1,1.25,1.5,1.75 (multi-scale)")
    parser.add_argument("--mean-over", choices=("present", "all"), default=None,
                        help="mIoU over classes with a non-empty union (mmseg, default) or all classes (SPML)")
    parser.add_argument("--pictures", type=int, default=4, help="prediction pictures to save (default 4)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the recipe's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.parse_args = parser.parse_intermixed_args


def _palette(n: int):
    import numpy as np

    rng = np.random.default_rng(12345)
    pal = rng.integers(40, 256, size=(max(n, 1), 3), dtype=np.uint8)
    pal[0] = (0, 0, 0) if n > 0 else pal[0]
    return pal


def save_picture(path: Path, image, target, pred, class_names, ignore_index: int = 255) -> None:
    """Image | ground truth | prediction, and a legend of the classes in either map."""
    import numpy as np
    from PIL import Image, ImageDraw

    img = image.permute(1, 2, 0).numpy()
    t, p = target.numpy(), pred.numpy()
    pal = _palette(len(class_names))

    def colour(m):
        out = np.full((*m.shape, 3), 255, np.uint8)  # ignored pixels white
        ok = (m >= 0) & (m < len(class_names))
        out[ok] = pal[m[ok]]
        return out

    up = max(1, math.ceil(160 / min(t.shape)))  # small scenes: enlarge (nearest) so the picture reads
    if up > 1:
        img, t, p = (np.repeat(np.repeat(a, up, 0), up, 1) for a in (img, t, p))
    h, w = t.shape
    shown = [c for c in sorted(set(np.unique(t).tolist()) | set(np.unique(p).tolist()))
             if 0 <= c < len(class_names)]
    row_h = 14
    legend_h = row_h * math.ceil(len(shown) / 3) + 6
    canvas = Image.new("RGB", (3 * w + 8, h + legend_h + 16), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, (title, arr) in enumerate((("image", img), ("ground truth", colour(t)), ("prediction", colour(p)))):
        canvas.paste(Image.fromarray(np.ascontiguousarray(arr)), (k * (w + 4), 14))
        draw.text((k * (w + 4) + 2, 1), title, fill=(0, 0, 0))
    col_w = (3 * w + 8) // 3
    for i, c in enumerate(shown):
        x, y = (i % 3) * col_w + 2, h + 18 + (i // 3) * row_h
        draw.rectangle([x, y, x + 10, y + 10], fill=tuple(int(v) for v in pal[c]), outline=(0, 0, 0))
        draw.text((x + 14, y), f"{c} {class_names[c]}", fill=(0, 0, 0))
    canvas.save(path)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from castvit.checkpoint import CheckpointError, read_checkpoint
    from castvit.data.segmentation import build_segmentation_dataset
    from castvit.eval.segmentation import evaluate_segmentation, format_table
    from castvit.models.segmenter import load_segmentation_checkpoint
    from castvit.train.config import ConfigError, load_config
    from castvit.train.segmentation import build_segmentation_model, eval_settings

    try:
        cfg = load_config(args.config, list(args.overrides))
        if cfg["recipe"] != "segmentation":
            raise ConfigError(f"{args.config} is a {cfg['recipe']!r} recipe, not a segmentation one")
        dataset = build_segmentation_dataset(cfg["data"], args.split)
        model = build_segmentation_model(cfg, load_encoder=False)
        load_segmentation_checkpoint(model, read_checkpoint(args.checkpoint))
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"castvit eval seg: {exc}", file=sys.stderr)
        return 2
    infer, options = eval_settings(cfg["data"])
    if args.flip:
        infer.flip = True
    if args.scales:
        infer.scales = tuple(float(s) for s in args.scales.split(","))
    mean_over = args.mean_over or options.get("mean_over", "present")
    device = args.device or cfg["device"]
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          ("cpu" if device == "auto" else device))
    model.to(device)
    max_images = args.max_images if args.max_images is not None else options.get("max_images")
    result, kept = evaluate_segmentation(model, dataset, model.num_classes, infer, mean_over=mean_over,
                                         max_images=max_images, progress=not args.no_progress,
                                         keep=args.pictures)
    names = list(getattr(dataset, "class_names", [str(i) for i in range(model.num_classes)]))
    table = format_table(result, names)
    print(table)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "eval_seg"
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "config": str(args.config), "checkpoint": str(args.checkpoint), "split": args.split,
        "images": result["count"], "mean_over": mean_over,
        "inference": {"mode": infer.mode, "short_side": infer.short_side, "long_side": infer.long_side,
                      "crop": infer.crop, "stride": infer.stride, "flip": infer.flip, "scales": list(infer.scales)},
        "mIoU": result["mIoU"], "mAcc": result["mAcc"], "aAcc": result["aAcc"],
        "per_class": {n: {"IoU": None if not np.isfinite(i) else float(i), "Acc": None if not np.isfinite(a)
                          else float(a)} for n, i, a in zip(names, result["IoU"], result["Acc"])},
    }
    (out / "metrics.json").write_text(json.dumps(record, indent=1))
    for k, item in enumerate(kept):
        save_picture(out / f"prediction_{k}.png", item["image"], item["target"], item["pred"], names)
    print(f"wrote {out / 'metrics.json'} and {len(kept)} pictures", flush=True)
    return 0
