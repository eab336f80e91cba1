"""Superpixel throughput per backend (SEEDS, SLIC) at 224 and 512 px, serial and threaded.

    python bench/superpixels.py
    python bench/superpixels.py --sizes 224 --methods seeds --quick

Each configuration runs ``castvit.superpixels.compute_superpixels`` on a batch of
natural images (crops of scikit-image's photographs) with ``num_workers=0`` (serial) and
with one thread per core; the best of ``--rounds`` batches counts. SEEDS uses the
pre-training preset (15 bins, 20 iterations) with n = 196, and at 512 px also the
segmentation rule n = H·W/256 = 1024. Writes ``bench/results/superpixels.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np

import _common as C
from castvit.superpixels import PRETRAIN_SEEDS, compute_superpixels, segmentation_n_segments


def configurations(sizes: list[int], methods: list[str]) -> list[dict[str, Any]]:
    out = []
    for size in sizes:
        counts = sorted({196, segmentation_n_segments(size, size)})
        for method in methods:
            for n in counts:
                out.append({"method": method, "size": size, "n_segments": n})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="224,512")
    p.add_argument("--methods", default="seeds,slic")
    p.add_argument("--batch", type=int, default=16, help="images per timed call")
    p.add_argument("--workers", type=int, default=0, help="threads of the threaded run (0 = os.cpu_count())")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="batch 4, 1 round")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.rounds = 4, 1
    workers = args.workers or os.cpu_count() or 1
    machine = C.machine_info("cpu")
    print(f"# {machine['cpu']} · {os.cpu_count()} cores · batch {args.batch}", flush=True)

    rows = []
    for cfg in configurations([int(s) for s in args.sizes.split(",")], args.methods.split(",")):
        images = C.natural_images(args.batch, cfg["size"])
        kwargs: dict[str, Any] = {}
        if cfg["method"] == "seeds":
            kwargs = {"histogram_bins": PRETRAIN_SEEDS.histogram_bins, "num_iterations": PRETRAIN_SEEDS.num_iterations}
        row = dict(cfg)
        for label, num_workers in (("serial", 0), ("threaded", workers)):
            best, labels = float("inf"), None
            for _ in range(args.rounds):
                start = time.perf_counter()
                labels = compute_superpixels(images, cfg["method"], cfg["n_segments"], num_workers=num_workers, **kwargs)
                best = min(best, time.perf_counter() - start)
            row[f"{label}_img_s"] = args.batch / best
            row[f"{label}_ms_per_img"] = 1e3 * best / args.batch
            row["superpixels_mean"] = float(np.mean([int(l.max()) + 1 for l in labels]))
        row["threads"] = workers
        row["thread_speedup"] = row["threaded_img_s"] / row["serial_img_s"]
        rows.append(row)
        print(f"{cfg['method']:5s} {cfg['size']:4d} px n={cfg['n_segments']:4d}: serial {row['serial_img_s']:7.1f} img/s, "
              f"{workers} threads {row['threaded_img_s']:7.1f} img/s ({row['superpixels_mean']:.0f} superpixels)",
              flush=True)

    print()
    C.print_table(rows, [("method", "method", "s"), ("size", "px", "d"), ("n_segments", "n", "d"),
                         ("superpixels_mean", "K (mean)", ".0f"), ("serial_ms_per_img", "ms/img serial", ".1f"),
                         ("serial_img_s", "img/s serial", ".1f"), ("threaded_img_s", f"img/s {workers} thr", ".1f"),
                         ("thread_speedup", "speed-up", ".2f")])
    payload = {"benchmark": "superpixels", "command": " ".join(["python"] + sys.argv), "machine": machine,
               "settings": {"batch": args.batch, "rounds": args.rounds, "statistic": "best of rounds"}, "rows": rows}
    print(f"\nwrote {C.write_json('superpixels', payload, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
