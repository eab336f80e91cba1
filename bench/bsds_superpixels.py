"""Superpixel quality on BSDS500: SEEDS (the authors' settings) and SLIC at about 200,
400 and 1,000 superpixels.

    python bench/bsds_superpixels.py                      # the 200 test images
    python bench/bsds_superpixels.py --limit 50           # the first 50 (name order)
    python bench/bsds_superpixels.py --configs seeds:270,slic:200

Each configuration is exactly one ``castvit eval bsds`` run, e.g.

    castvit eval bsds --split test --superpixels seeds --n-segments 270 --out seeds_270.json

SEEDS uses the pre-training preset (15 histogram bins, 20 iterations: what the
authors' CAST models see), with ``n_segments`` chosen so that its block grid gives
about 200 / 400 / 1,000 superpixels on 481×321 images (270 → 216; 500 → 408 or 442;
1,200 → 1,040: SEEDS' K is set by its grid, :func:`castvit.superpixels.seeds_num_superpixels`).
SLIC (scikit-image, compactness 10, connectivity enforced) returns fewer than it is
asked for (200 → 141, 400 → 294, 1,000 → 880 on average over the first 50 test
images), so it is asked for 285 / 550 / 1,250 to produce about 200 / 400 / 1,000.
Every figure is reported against the number of superpixels actually produced (mean
per image, with the range).

Writes ``bench/results/bsds_superpixels.json`` (each run's summary, without the
per-image records) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_CONFIGS = "seeds:270,seeds:500,seeds:1200,slic:285,slic:550,slic:1250"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=None, help="BSDS500 folder (default: castvit eval bsds's search)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"method:n_segments,... (default {DEFAULT_CONFIGS})")
    p.add_argument("--out", default=str(RESULTS / "bsds_superpixels.json"))
    args = p.parse_args(argv)

    from castvit.cli import main as castvit_main

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for item in args.configs.split(","):
            method, n = item.split(":")
            out = Path(tmp) / f"{method}_{n}.json"
            cmd = ["eval", "bsds", "--split", args.split, "--superpixels", method, "--n-segments", n,
                   "--out", str(out), "--quiet"]
            cmd += ["--root", args.root] if args.root else []
            cmd += ["--limit", str(args.limit)] if args.limit else []
            cmd += ["--workers", str(args.workers)] if args.workers else []
            print("castvit " + " ".join(cmd), file=sys.stderr, flush=True)
            start = time.perf_counter()
            if castvit_main(cmd) != 0:
                return 1
            r = json.loads(out.read_text())
            r.pop("images")
            r["command"] = "castvit " + " ".join(cmd).replace(str(out), f"{method}_{n}.json")
            r["wall_seconds"] = round(time.perf_counter() - start, 1)
            runs.append(r)

    RESULTS.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps({"split": args.split, "limit": args.limit, "runs": runs}, indent=1))
    print("\n| method | requested | produced (mean, min–max) | BR r=1 | BR 2 px | UE | ASA | CO | boundary F "
          "| covering |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        s = r["superpixels"]
        print(f"| {r['input']['method']} | {s['requested']} | {s['count']:.0f} ({s['count_min']}–{s['count_max']}) | "
              f"{s['boundary_recall']:.3f} | {s['boundary_recall_2px']:.3f} | {s['undersegmentation_error']:.3f} | "
              f"{s['asa']:.3f} | {s['compactness']:.3f} | {r['boundary']['ods']['f']:.3f} | "
              f"{r['covering']['ods']:.3f} |")
    print(f"\n{runs[0]['num_images']} images of BSDS500 {args.split}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
