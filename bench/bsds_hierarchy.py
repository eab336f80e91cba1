"""castvit's hierarchy on BSDS500, next to the superpixels alone and the colour grouping.

    python bench/bsds_hierarchy.py                 # the 200 test images
    python bench/bsds_hierarchy.py --limit 50      # the first 50 (name order)
    python bench/bsds_hierarchy.py --checkpoint run/last.pth.tar   # trained weights

Three methods over the same superpixels, each scored as a segmentation stack
(thresholds = levels, fine to coarse) by :func:`castvit.eval.bsds.evaluate_dataset`:

* ``castvit``: ``castvit.segment(model, image, size="auto")`` with cast_small
  (random weights, ``torch.manual_seed(0)``, unless ``--checkpoint``): level 0 (its
  SEEDS superpixels, 15 bins / 20 iterations at the working size) and the four
  pooling levels (≤ 64 / 32 / 16 / 8 segments). The same as

      castvit eval bsds --split test --model cast_small --seed 0 --out castvit.json

* ``superpixels``: level 0 of the same hierarchy alone (one threshold);
* ``colour_grouping``: :func:`castvit.eval.baselines.colour_grouping` of those
  superpixels (adjacent-region Ward clustering on mean CIELAB colour) cut at 64 / 32
  / 16 / 8 segments, the non-learned baseline of ``castvit demo``.

Writes ``bench/results/bsds_hierarchy.json`` (summaries without per-image records)
and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
LEVELS = (64, 32, 16, 8)


class CastvitThenColour:
    """Runs castvit once per image (in this process) and keeps, per image, the three
    stacks; the data-set runner sees one method at a time through :meth:`view`."""

    in_workers = False

    def __init__(self, model: Any, size: str = "auto"):
        self.model, self.size = model, size
        self.cache: dict[str, dict[str, list[np.ndarray]]] = {}
        self.seconds = {"castvit": 0.0, "colour_grouping": 0.0}

    def stacks(self, image_id: str, image_path: Path) -> dict[str, list[np.ndarray]]:
        if image_id not in self.cache:
            import castvit
            from castvit.eval.baselines import colour_grouping
            from castvit.eval.bsds import load_image

            image = load_image(image_path)
            t0 = time.perf_counter()
            levels = [m.astype(np.int32) for m in castvit.segment(self.model, image, size=self.size).label_maps()]
            t1 = time.perf_counter()
            grouped = list(colour_grouping(image, levels[0], LEVELS).astype(np.int32))
            self.seconds["castvit"] += t1 - t0
            self.seconds["colour_grouping"] += time.perf_counter() - t1
            self.cache[image_id] = {"castvit": levels, "superpixels": levels[:1], "colour_grouping": grouped}
        return self.cache[image_id]

    def view(self, method: str) -> "_View":
        return _View(self, method)


class _View:
    in_workers = False

    def __init__(self, parent: CastvitThenColour, method: str):
        self.parent, self.method = parent, method

    def describe(self) -> dict[str, Any]:
        return {"kind": self.method, "model": getattr(self.parent.model, "castvit_name", "cast_small"),
                "size": self.parent.size, "levels": list(LEVELS) if self.method == "colour_grouping" else None}

    def check(self, image_id: str) -> None:
        pass

    def __call__(self, image_id: str, image_path: Path) -> dict[str, Any]:
        stacks = self.parent.stacks(image_id, image_path)
        out = {"segs": stacks[self.method]}
        if self.method == "colour_grouping":  # each image is needed once per method: free the memory
            del self.parent.cache[image_id]
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=None, help="BSDS500 folder (default: castvit eval bsds's search)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--model", default="cast_small")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "bsds_hierarchy.json"))
    args = p.parse_args(argv)

    import torch

    import castvit
    from castvit.cli.eval_bsds import format_table, resolve_root
    from castvit.eval.bsds import evaluate_dataset

    torch.manual_seed(args.seed)
    model = castvit.create_model(args.model, **({"pretrained": args.checkpoint} if args.checkpoint else {})).eval()
    source = CastvitThenColour(model)
    root = resolve_root(args.root)
    runs = {}
    # one pass over the images per method; castvit runs on the first and is cached
    # for the two methods built on its superpixels
    for method in ("castvit", "superpixels", "colour_grouping"):
        start = time.perf_counter()
        r = evaluate_dataset(root, args.split, source.view(method), workers=args.workers, limit=args.limit)
        r["wall_seconds"] = round(time.perf_counter() - start, 1)
        r["input"]["random_weights"] = args.checkpoint is None
        r["input"]["checkpoint"] = args.checkpoint
        r["input"]["seed"] = args.seed
        r["per_image_num_segments"] = {i: v["num_segments"] for i, v in r["images"].items()}
        r.pop("images")
        print(format_table(r), file=sys.stderr)
        runs[method] = r
    runs["castvit"]["model_seconds"] = round(source.seconds["castvit"], 1)
    runs["colour_grouping"]["grouping_seconds"] = round(source.seconds["colour_grouping"], 1)

    RESULTS.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps({"split": args.split, "limit": args.limit, "runs": runs}, indent=1))
    print("\n| method | segments per level (mean) | boundary ODS F | OIS F | AP | covering ODS | OIS | best "
          "| PRI ODS | OIS | VI ODS | OIS |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in runs.items():
        b, c, pr, vi = r["boundary"], r["covering"], r["pri"], r["vi"]
        segs = " / ".join(f"{s:.0f}" for s in r["num_segments"])
        print(f"| {name} | {segs} | {b['ods']['f']:.3f} | {b['ois']['f']:.3f} | {b['ap']:.3f} | {c['ods']:.3f} | "
              f"{c['ois']:.3f} | {c['best']:.3f} | {pr['ods']:.3f} | {pr['ois']:.3f} | {vi['ods']:.3f} | "
              f"{vi['ois']:.3f} |")
    print(f"\n{runs['castvit']['num_images']} images of BSDS500 {args.split}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
