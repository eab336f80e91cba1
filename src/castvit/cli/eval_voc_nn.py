"""``castvit eval voc-nn --root VOC2012 --model NAME.TAG | --checkpoint PATH``: VOC
segmentation without labels by nearest-neighbour retrieval (PROTOCOLS §3).

Builds (or reuses) the memory bank of the training split's segment prototypes, labels
every validation segment by its ``k`` nearest prototypes, prints the per-class IoU
table and writes ``metrics.json`` (and the bank, unless ``--bank`` points elsewhere)
to ``--out``. Works on any folder in the VOC 2012 layout, including the synthetic one
of :func:`castvit.data.synthetic_layouts.write_voc_layout`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, help="VOCdevkit/VOC2012 folder (JPEGImages, SegmentationClass[Aug], "
                                                      "ImageSets/Segmentation)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="published weights, e.g. cast_small_seg_pretrain.moco_coco_ep149")
    src.add_argument("--checkpoint", help="a checkpoint file: a MoCo block-fusion CAST (castvit train's "
                                          "last.pth.tar, or a castvit .safetensors), or a CAST classifier such as "
                                          "castvit demo's checkpoints/colour_trained_l4.safetensors (its stage "
                                          "outputs fused without parameters)")
    parser.add_argument("--untrained", action="store_true",
                        help="same architecture and projector shape, random weights (the baseline)")
    parser.add_argument("--head", choices=("auto", "projector", "none"), default="auto",
                        help="embedding: the MoCo projector per token (the protocol) or the fused tokens; auto "
                             "(default): the projector when the checkpoint has one")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed of --untrained (default 0)")
    parser.add_argument("--k", type=int, default=20, help="neighbours that vote (default 20)")
    parser.add_argument("--level", type=int, default=4, choices=range(5), metavar="{0..4}",
                        help="hierarchy level of the segments (default 4: all four levels composed; 0 = superpixels)")
    parser.add_argument("--num-clusters", default=None,
                        help="clusters per stage, e.g. 320,160,80,40 (default: 320/160/80/40 for a 64/32/16/8 "
                             "pre-trained model, else the checkpoint's)")
    parser.add_argument("--train-split", default="train_aug", help="split of the memory bank (default train_aug)")
    parser.add_argument("--val-split", default="val", help="split to score (default val)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes (default: the lines of ROOT/castvit_classes.txt if present, else 21)")
    parser.add_argument("--long-side", type=int, default=512, help="longer image side the model sees (default 512; "
                                                                     "0 keeps the size)")
    parser.add_argument("--superpixels", type=int, default=1024, help="SEEDS superpixels per image (default 1024)")
    parser.add_argument("--histogram-bins", type=int, default=5, help="SEEDS histogram bins (default 5)")
    parser.add_argument("--iterations", type=int, default=15, help="SEEDS iterations (default 15)")
    parser.add_argument("--bank", default=None, help="memory bank folder (default OUT/bank); reused when it exists "
                                                     "and was built with the same settings")
    parser.add_argument("--rebuild-bank", action="store_true", help="build the bank even if it exists")
    parser.add_argument("--max-train", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--max-val", type=int, default=None, help="score only the first N validation images")
    parser.add_argument("--out", default="out/voc_nn", help="output folder (default out/voc_nn)")
    parser.add_argument("--pictures", type=int, default=4, help="prediction pictures to save (default 4)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _class_names(root: Path, num_classes: int | None) -> list[str]:
    from castvit.data.segmentation import VOC_CLASSES

    listed = root / "castvit_classes.txt"
    if listed.is_file():
        names = [ln.strip() for ln in listed.read_text().splitlines() if ln.strip()]
        if num_classes is None or num_classes == len(names):
            return names
    n = 21 if num_classes is None else num_classes
    return list(VOC_CLASSES) if n == 21 else [str(i) for i in range(n)]


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from castvit.checkpoint import CheckpointError
    from castvit.data.segmentation import SegmentationPairs, voc_aug
    from castvit.eval.retrieval import MemoryBank, SegmentEmbedder, TokenProjector, build_embedding_model, \
        build_memory_bank, evaluate_retrieval
    from castvit.eval.segmentation import format_table

    root = Path(args.root)
    out = Path(args.out)
    source = args.model or args.checkpoint
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    names = _class_names(root, args.num_classes)
    num_classes = len(names)
    try:
        clusters = [int(c) for c in args.num_clusters.split(",")] if args.num_clusters else None
        model = build_embedding_model(source, num_clusters=clusters, head=args.head, untrained=args.untrained,
                                      seed=args.seed)
        train = voc_aug(root, args.train_split)
        val = voc_aug(root, args.val_split)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"castvit eval voc-nn: {exc}", file=sys.stderr)
        return 2
    for ds in (train, val):  # labels must fit the class count (255 = void)
        if isinstance(ds, SegmentationPairs):
            ds.num_classes = num_classes
    sp = {"method": "seeds", "n_segments": args.superpixels, "num_levels": 1, "prior": 2,
          "histogram_bins": args.histogram_bins, "num_iterations": args.iterations}
    embedder = SegmentEmbedder(model, level=args.level, long_side=args.long_side or None, superpixels=sp,
                               device=device)
    bank_dir = Path(args.bank) if args.bank else out / "bank"
    head = "projector" if isinstance(model.head, TokenProjector) else "none"
    settings = {"source": str(source), "head": head, "fusion": model.embedding_fusion, "untrained": args.untrained, "seed": args.seed if args.untrained else None,
                "num_clusters": list(model.num_clusters), "train_split": args.train_split,
                "max_train": args.max_train, **embedder.settings(), "num_classes": num_classes}
    t0 = time.time()
    bank = None
    if (bank_dir / "meta.json").is_file() and not args.rebuild_bank:
        bank = MemoryBank.load(bank_dir, device)
        if {k: bank.meta.get(k) for k in settings} != json.loads(json.dumps(settings)):
            print(f"castvit eval voc-nn: the bank in {bank_dir} was built with other settings; rebuilding it "
                  "(--bank elsewhere keeps both)", file=sys.stderr)
            bank = None
        else:
            print(f"reusing the memory bank {bank_dir} ({len(bank)} prototypes)", flush=True)
    try:
        if bank is None:
            bank = build_memory_bank(embedder, train, bank_dir, num_classes=num_classes, max_images=args.max_train,
                                     progress=not args.no_progress, meta=settings).to(device)
            print(f"memory bank: {len(bank)} prototypes from {bank.meta['num_images']} images "
                  f"({bank.meta['dropped_void_segments']} void segments dropped) -> {bank_dir}", flush=True)
        t1 = time.time()
        res = evaluate_retrieval(embedder, bank, val, k=args.k, num_classes=num_classes, max_images=args.max_val,
                                 progress=not args.no_progress, keep=args.pictures)
    except ValueError as exc:
        print(f"castvit eval voc-nn: {exc}", file=sys.stderr)
        return 2
    print(format_table(res.metrics, names))
    print(f"majority class ({names[res.majority_class]}) everywhere: mIoU {100 * res.majority_baseline['mIoU']:.2f}")
    out.mkdir(parents=True, exist_ok=True)

    def num(v):
        return None if not np.isfinite(v) else float(v)

    record = {"benchmark": "voc-nn", "root": str(root), "val_split": args.val_split, "images": res.count,
              "k": args.k, "bank": str(bank_dir), "prototypes": len(bank), **settings,
              "mIoU": res.metrics["mIoU"], "mAcc": num(res.metrics["mAcc"]), "aAcc": num(res.metrics["aAcc"]),
              "mean_over": "all classes (an empty union counts 0)",
              "per_class": {n: num(i) for n, i in zip(names, res.metrics["IoU"])},
              "majority_baseline": {"class": names[res.majority_class], "mIoU": res.majority_baseline["mIoU"]},
              "seconds": {"bank": round(t1 - t0, 1), "eval": round(time.time() - t1, 1)}}
    (out / "metrics.json").write_text(json.dumps(record, indent=1))
    if res.kept:
        from castvit.cli.eval_seg import save_picture

        for i, item in enumerate(res.kept):
            save_picture(out / f"prediction_{i}.png", item["image"], item["target"], item["pred"], names)
    print(f"wrote {out / 'metrics.json'}", flush=True)
    return 0
