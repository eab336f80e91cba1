"""End-to-end ``castvit segment`` vs the model alone, on real photographs.

    python bench/segment_throughput.py                       # the 200 BSDS500 test photos
    python bench/segment_throughput.py --images DIR --limit 50 --rounds 2

Measured in one run, interleaved round by round, on the same images:

* ``model``: the model's forward pass alone, at the working size the command uses
  (224² area), on inputs prepared beforehand (decoded, resized, superpixels computed),
  batched as the command batches (``--batch-size``), once with torch on every core and
  once as the command runs it on a CPU (two passes at once, half the cores' threads
  each); the faster of the two is the reference of the targets;
* ``default``: ``castvit segment`` with its default outputs (labels, JSON, contours, viewer);
* ``labels_json``: ``castvit segment --outputs labels,json --no-viewer``;
* ``all``: every output (overlays and npz too) and the viewer.

End to end includes decoding, superpixels, the model, hierarchy building and writing
(the Python imports are done before the clock starts).

Throughput depends on what else the machine runs, so the script also measures every
step's **CPU time per image** on one thread (``time.thread_time``, which other processes
barely move) and prints what those costs allow on this many cores: end to end cannot
beat ``cores / Σ core-ms``. The load average is recorded before and after each
measurement. Prints tables and writes JSON to ``bench/results/segment_throughput.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
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


def load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def prepared_batches(paths: list[Path], model, batch_size: int) -> tuple[list, int]:
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
    return batches, len(prepared)


def model_only(batches: list, count: int, model, threads: int, streams: int = 1) -> float:
    """img/s of the forward pass alone on prepared inputs, with ``threads`` torch threads
    per pass and ``streams`` passes at once (each in its own Python thread, as the command
    runs them on a CPU)."""
    from concurrent.futures import ThreadPoolExecutor

    def forward(batch) -> None:
        with torch.inference_mode():
            model.forward_features(*batch)

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    model.eval()
    try:
        forward(batches[0])  # warm-up
        t0 = time.perf_counter()
        if streams == 1:
            for batch in batches:
                forward(batch)
        else:
            with ThreadPoolExecutor(streams) as pool:
                list(pool.map(forward, batches))
        return count / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)


def step_costs(paths: list[Path], model, batch_size: int) -> dict[str, float]:
    """CPU ms per image of each step of ``castvit segment``, one thread, this thread's clock."""
    from castvit.inference import HierarchyPredictor
    from castvit.viz import export, viewer
    from castvit.viz.images import read_image

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    clock = time.thread_time
    cost: dict[str, float] = {}

    def timed(key: str, fn, *a, **kw):
        t0 = clock()
        out = fn(*a, **kw)
        cost[key] = cost.get(key, 0.0) + clock() - t0
        return out

    try:
        predictor = HierarchyPredictor(model, num_workers=0)
        loaded = [timed("decode", read_image, p) for p in paths]
        prepared = [timed("resize + superpixels", predictor.prepare, im.rgb) for im in loaded]
        hs = []
        with torch.inference_mode():
            predictor.run_prepared(prepared[:batch_size])  # warm-up
            for i in range(0, len(prepared), batch_size):
                hs += timed("model forward + hierarchy", predictor.run_prepared, prepared[i:i + batch_size])
        out = Path(tempfile.mkdtemp(prefix="castvit-bench-steps-"))
        try:
            info = {"name": "x", "source": "x", "notes": [], "model": {"name": "bench", "random_weights": True}}
            for k, h in enumerate(hs):
                d = out / str(k)
                d.mkdir()
                tables = timed("segment records (all levels)", h.segment_tables, colors=True)
                record = timed("hierarchy.json", lambda: export.hierarchy_record(h, info=info, tables=tables))
                timed("hierarchy.json", lambda: (d / "hierarchy.json").write_text(
                    json.dumps(record, default=export.json_default, separators=(",", ":"))))
                timed("label PNGs (5 levels)", lambda: [export.write_label_png(d / f"l{s}.png", m)
                                                        for s, m in enumerate(h.label_maps())])
                timed("contours.png", lambda: export.write_png(d / "contours.png",
                                                               export.contour_image(h.boundary_map(), h.num_levels)))
                timed("viewer entry", lambda: viewer._entry_script(viewer.viewer_entry(h, name="x", info=info,
                                                                                        tables=tables)))
        finally:
            shutil.rmtree(out, ignore_errors=True)
    finally:
        torch.set_num_threads(before)
    return {k: 1000 * v / len(paths) for k, v in cost.items()}


def end_to_end(paths: list[Path], extra: list[str], checkpoint: Path, batch_size: int
               ) -> tuple[float, int, float]:
    """(img/s, bytes written, CPU ms of this process per image) of ``castvit segment`` on ``paths``."""
    from castvit.cli import main

    out = Path(tempfile.mkdtemp(prefix="castvit-bench-"))
    try:
        argv = ["segment", *map(str, paths), "--out", str(out), "--checkpoint", str(checkpoint), "-q",
                "--batch-size", str(batch_size), *extra]
        t0, c0 = time.perf_counter(), time.process_time()
        with contextlib.redirect_stderr(io.StringIO()):
            code = main(argv)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        if code != 0:
            raise RuntimeError(f"castvit segment exited {code}")
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        return len(paths) / seconds, size, 1000 * cpu / len(paths)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of photos (default: BSDS500 test)")
    parser.add_argument("--limit", type=int, default=200, help="use the first N images (default 200)")
    parser.add_argument("--model", default="cast_small")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions; the best of each is kept")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the model-only reference (default: all cores)")
    parser.add_argument("--step-images", type=int, default=40,
                        help="images for the per-step CPU costs (default 40; 0 = skip)")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/segment_throughput.json)")
    args = parser.parse_args()
    set_threads(args.threads, "cpu")

    import castvit
    from castvit.cli.segment import model_threads, usable_cpus

    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".png"))[:args.limit]
    if not paths:
        raise SystemExit(f"no images in {args.images}")
    cores = usable_cpus()
    ref_threads, cli_threads = torch.get_num_threads(), model_threads(cores)
    torch.manual_seed(0)
    model = castvit.create_model(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="castvit-bench-ckpt-"))
    checkpoint = castvit.save_pretrained(model, tmp / "model.safetensors")
    batches, count = prepared_batches(paths, model, args.batch_size)
    # (torch threads per pass, passes at once): every core on one pass (the issue's
    # reference), and the command's way on a CPU (half the cores each, two at once)
    model_keys = {"model": (ref_threads, 1), "model_two_streams": (cli_threads, 2)}
    results: dict[str, list[float]] = {**{k: [] for k in model_keys}, **{m: [] for m in MODES}}
    loads: dict[str, list[float]] = {k: [] for k in results}
    sizes: dict[str, int] = {}
    cpu_ms: dict[str, float] = {}
    for r in range(args.rounds):
        for key, (threads, streams) in model_keys.items():
            start = load()
            results[key].append(model_only(batches, count, model, threads, streams))
            loads[key] += [start, load()]
        for mode, extra in MODES.items():
            start = load()
            rate, size, cpu = end_to_end(paths, extra, checkpoint, args.batch_size)
            loads[mode] += [start, load()]
            results[mode].append(rate)
            sizes[mode] = size
            cpu_ms[mode] = min(cpu, cpu_ms.get(mode, cpu))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in results.items()),
              flush=True)
    best = {k: max(v) for k, v in results.items()}
    # the reference is the model's best figure on these cores, however it was run
    reference = max(best[k] for k in model_keys)
    rows = [{"mode": f"model only, {n} × {t} torch thread(s)", "img_s": best[k], "share": best[k] / reference,
             "load": max(loads[k])} for k, (t, n) in model_keys.items()]
    for mode in MODES:
        rows.append({"mode": f"segment ({mode})", "img_s": best[mode], "share": best[mode] / reference,
                     "mb": sizes[mode] / 1e6, "cpu": cpu_ms[mode], "load": max(loads[mode])})
    print_table(rows, [("mode", "what", "s"), ("img_s", "img/s", ".1f"), ("share", "of model-only", ".0%"),
                       ("mb", "MB written", ".1f"), ("cpu", "CPU ms/img", ".0f"), ("load", "load avg (max)", ".1f")])
    steps: dict[str, float] = {}
    bounds: dict[str, float] = {}
    if args.step_images:
        steps = step_costs(paths[:args.step_images], model, args.batch_size)
        print(f"\nCPU time per image, one thread ({min(args.step_images, len(paths))} images):")
        print_table([{"step": k, "ms": v} for k, v in steps.items()], [("step", "step", "s"), ("ms", "core-ms", ".1f")])
        common = sum(v for k, v in steps.items() if k not in ("contours.png", "viewer entry"))
        per_mode = {"labels_json": common, "default": common + steps["contours.png"] + steps["viewer entry"]}
        model_ms = steps["model forward + hierarchy"]
        # load-insensitive: on any number of cores, end to end needs Σ core-ms per image and
        # the model alone (run as efficiently as one thread runs it) needs model_ms, so the
        # share of model-only cannot exceed model_ms / Σ
        print(f"model alone: {model_ms:.0f} core-ms per image -> at most {1000 * cores / model_ms:.1f} img/s "
              f"on {cores} cores")
        for mode, total in per_mode.items():
            bounds[mode] = 1000 * cores / total
            print(f"{mode}: {total:.0f} core-ms per image -> at most {bounds[mode]:.1f} img/s on {cores} cores, "
                  f"at most {model_ms / total:.0%} of model-only (measured here: {best[mode] / reference:.0%})")
    payload = {"images": str(args.images), "count": len(paths), "model": args.model, "batch_size": args.batch_size,
               "rounds": args.rounds, "model_only_modes": model_keys, "segment_torch_threads": cli_threads,
               "img_per_s": results, "best": best, "bytes_written": sizes, "cpu_ms_per_image": cpu_ms,
               "load_average": loads, "model_only_reference": reference,
               "share_of_model_only": {m: best[m] / reference for m in MODES},
               "step_core_ms": steps, "bound_img_per_s": bounds,
               "targets": {"default": 0.5, "labels_json": 0.8}, "machine": machine_info("cpu")}
    print(f"wrote {write_json('segment_throughput', payload, args.out)}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
