"""``castvit eval partimagenet --root DIR --model NAME.TAG``: open-vocabulary object and
part segmentation on PartImageNet with CLIP (PROTOCOLS §4).

Objects are the hierarchy's level 4, parts its level 3 (or the masks of ``--masks``,
e.g. SAM's, painted largest first), named by CLIP. Prints object and part mIoU (per
image Jaccard, averaged over images) and writes ``metrics.json`` with every image's
scores and the list of failed images. Needs ``pip install 'castvit[clip]'``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, help="PartImageNet root (images/<split>/<wnid>/<file>)")
    parser.add_argument("--split", default="val", help="image split folder (default val: the OOD split)")
    parser.add_argument("--annotations", default=None,
                        help="COCO JSON (default ROOT/annotations/<split>/<split>.json or ROOT/annotations/<split>.json)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a CAST with published weights, e.g. cast_base.moco_in1k, or a model name")
    src.add_argument("--checkpoint", help="a castvit checkpoint file (it names its model)")
    src.add_argument("--masks", help="folder of precomputed masks (<image stem>.npz with 'masks', or 'object' and "
                                     "'part'; N×size×size bool), e.g. SAM automatic masks")
    parser.add_argument("--clip", default="openai/clip-vit-base-patch16",
                        help="CLIP folder or hub id (default openai/clip-vit-base-patch16)")
    parser.add_argument("--size", type=int, default=None,
                        help="resize + centre crop side (default 224, or the model's input side)")
    parser.add_argument("--superpixels", type=int, default=None, help="superpixels per view (default: the model's)")
    parser.add_argument("--object-level", type=int, default=4, help="hierarchy level of objects (default 4)")
    parser.add_argument("--part-level", type=int, default=3, help="hierarchy level of parts (default 3)")
    parser.add_argument("--skip-errors", action="store_true",
                        help="count and list images that fail instead of stopping at the first")
    parser.add_argument("--max-images", type=int, default=None, help="score only the first N images")
    parser.add_argument("--out", default="out/partimagenet", help="output folder (default out/partimagenet)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    from castvit.data.partimagenet import AnnotationError, PartImageNet
    from castvit.eval.partimagenet import (
        CLIPLabeller, HierarchyMasks, ImageFailed, MaskFolder, evaluate_partimagenet, require_transformers,
    )

    try:
        require_transformers()
    except ImportError as exc:
        print(f"castvit eval partimagenet: {exc}", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    try:
        dataset = PartImageNet(args.root, args.split, args.annotations)
        size = args.size or 224
        if args.masks:
            source = MaskFolder(args.masks)
            what = f"masks from {args.masks}"
        else:
            import castvit

            model = (castvit.create_model(args.model) if args.model
                     else castvit.create_model(pretrained=args.checkpoint)).to(device).eval()
            if args.size is None:
                from castvit.inference import auto_size

                size = auto_size(model)
            source = HierarchyMasks(model, object_level=args.object_level, part_level=args.part_level,
                                    n_segments=args.superpixels)
            what = f"{args.model or args.checkpoint}, levels {args.object_level} / {args.part_level}"
        labeller = CLIPLabeller.from_pretrained(args.clip, device=device)
    except (AnnotationError, FileNotFoundError, ValueError) as exc:
        print(f"castvit eval partimagenet: {exc}", file=sys.stderr)
        return 2
    t0 = time.time()
    try:
        res = evaluate_partimagenet(dataset, source, labeller, size=size, skip_errors=args.skip_errors,
                                    max_images=args.max_images, progress=not args.no_progress)
    except ImageFailed as exc:
        print(f"castvit eval partimagenet: {exc}", file=sys.stderr)
        return 1
    lines = [f"PartImageNet {args.split}: {what}, CLIP {args.clip}, view {size}×{size}",
             f"{'':8s} {'classes':>7s} {'mIoU':>7s}",
             f"{'object':8s} {res['num_coarse']:7d} {100 * res['object_miou']:7.2f}",
             f"{'part':8s} {res['num_fine']:7d} {100 * res['part_miou']:7.2f}",
             f"images scored: {res['count']} of {res['num_images']}"]
    if res["failed"]:
        lines.append(f"FAILED: {len(res['failed'])} images (skipped, listed in metrics.json):")
        lines += [f"  {f['path']}: {f['error']}" for f in res["failed"][:20]]
        if len(res["failed"]) > 20:
            lines.append(f"  … and {len(res['failed']) - 20} more")
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": "partimagenet", "root": str(args.root), "split": args.split,
              "annotations": str(dataset.annotation_file), "source": what, "clip": str(args.clip), "size": size,
              "object_miou": res["object_miou"], "part_miou": res["part_miou"], "images": res["count"],
              "num_images": res["num_images"], "failed": res["failed"], "per_image": res["per_image"],
              "metric": "multiclass Jaccard per image (classes present in GT or prediction), mean over images",
              "seconds": round(time.time() - t0, 1)}
    (out / "metrics.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {out / 'metrics.json'}", flush=True)
    return 0
