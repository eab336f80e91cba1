"""End-to-end ``castvit segment`` vs the model alone, on real photographs.

    python bench/segment_throughput.py                       # the 200 BSDS500 test photos
    python bench/segment_throughput.py --images DIR --limit 50 --rounds 2

Measured in one run, interleaved round by round, on the same images:

* ``model``: the model's forward pass alone, at the working size the command uses
  (224² area), on inputs prepared beforehand (decoded, resized, superpixels computed),
  batched as the command batches (``--batch-size``);
* ``default``: ``castvit segment`` with its default outputs (labels, JSON, contours, viewer);
* ``labels_json``: ``castvit segment --outputs labels,json --no-viewer``;
* ``all``: every output (overlays and npz too) and the viewer.

End to end includes decoding, superpixels, the model, hierarchy building and writing
(the Python imports are done before the clock starts). Prints a table and writes JSON
to ``bench/results/segment_throughput.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, print_table, set_threads, write_json  # noqa: E402

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "bsds500" / "images" / "test"
MODES = {
    "default": [],
    "labels_json": ["--outputs", "labels,json", "--no-viewer"],
    "all": ["--outputs", "all"],
}


def model_only(paths: list[Path], model, batch_size: int) -> float:
    """img/s of the forward pass alone on prepared inputs."""
    from castvit.inference import HierarchyPredictor
    from castvit.ops import normalize_images
    from castvit.viz.images import read_image

    predictor = HierarchyPredictor(model, num_workers=0)
    prepared = [predictor.prepare(read_image(p).rgb) for p in paths]
    groups: dict[tuple[int, int], list] = {}
    for it in prepared:
        groups.setdefault(it.work_image.shape[:2], []).append(it)
    batches = []
    for items in groups.values():
        for i in range(0, len(items), batch_size):
            chunk = items[i:i + batch_size]
            batches.append((normalize_images(np.stack([c.work_image for c in chunk])),
                            torch.from_numpy(np.stack([c.work_sp for c in chunk]))))
    model.eval()
    with torch.inference_mode():
        model.forward_features(*batches[0])  # warm-up
        t0 = time.perf_counter()
        for x, sp in batches:
            model.forward_features(x, sp)
        return len(prepared) / (time.perf_counter() - t0)


def end_to_end(paths: list[Path], extra: list[str], checkpoint: Path, batch_size: int) -> tuple[float, int]:
    """(img/s, bytes written) of ``castvit segment`` on ``paths``."""
    from castvit.cli import main

    out = Path(tempfile.mkdtemp(prefix="castvit-bench-"))
    try:
        argv = ["segment", *map(str, paths), "--out", str(out), "--checkpoint", str(checkpoint), "-q",
                "--batch-size", str(batch_size), *extra]
        t0 = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            code = main(argv)
        seconds = time.perf_counter() - t0
        if code != 0:
            raise RuntimeError(f"castvit segment exited {code}")
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        return len(paths) / seconds, size
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of photos (default: BSDS500 test)")
    parser.add_argument("--limit", type=int, default=200, help="use the first N images (default 200)")
    parser.add_argument("--model", default="cast_small")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions; the best of each is kept")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/segment_throughput.json)")
    args = parser.parse_args()
    set_threads(args.threads, "cpu")

    import castvit

    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".png"))[:args.limit]
    if not paths:
        raise SystemExit(f"no images in {args.images}")
    torch.manual_seed(0)
    model = castvit.create_model(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="castvit-bench-ckpt-"))
    checkpoint = castvit.save_pretrained(model, tmp / "model.safetensors")
    results: dict[str, list[float]] = {"model": [], **{m: [] for m in MODES}}
    sizes: dict[str, int] = {}
    for r in range(args.rounds):
        results["model"].append(model_only(paths, model, args.batch_size))
        for mode, extra in MODES.items():
            rate, size = end_to_end(paths, extra, checkpoint, args.batch_size)
            results[mode].append(rate)
            sizes[mode] = size
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in results.items()),
              flush=True)
    best = {k: max(v) for k, v in results.items()}
    rows = [{"mode": "model only", "img_s": best["model"], "share": 1.0, "mb": None}]
    for mode in MODES:
        rows.append({"mode": f"segment ({mode})", "img_s": best[mode], "share": best[mode] / best["model"],
                     "mb": sizes[mode] / 1e6})
    print_table(rows, [("mode", "what", "s"), ("img_s", "img/s", ".1f"), ("share", "of model-only", ".0%"),
                       ("mb", "MB written", ".1f")])
    payload = {"images": str(args.images), "count": len(paths), "model": args.model, "batch_size": args.batch_size,
               "rounds": args.rounds, "img_per_s": results, "best": best, "bytes_written": sizes,
               "share_of_model_only": {m: best[m] / best["model"] for m in MODES},
               "targets": {"default": 0.5, "labels_json": 0.8}, "machine": machine_info("cpu")}
    print(f"wrote {write_json('segment_throughput', payload, args.out)}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
