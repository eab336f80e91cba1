"""The batched torch tokenizer (``slic_torch``) against SEEDS and scikit-image SLIC:
throughput at 224 and 512 px and superpixel quality on BSDS500 test (issue 12 §1, §4).

    python bench/tokenizer.py                      # CPU: throughput + quality → results/tokenizer.json
    python bench/tokenizer.py --skip-quality       # throughput only
    python bench/tokenizer.py --device cuda --skip-quality --batch 256   # → results/tokenizer_cuda.json

**Throughput.** One batch of natural images (crops of scikit-image's photographs) per
size; rounds interleave the methods and the best round counts (the machine is shared).

* ``slic_torch`` — ``compute_superpixels(images, "slic_torch")``, the whole batch in one
  call, torch intra-op threads = ``--threads``; on CUDA the batch lives on the GPU and
  the clock includes a synchronize.
* ``slic_torch_split`` (CPU) — the batch cut into ``--threads`` parts, each run by its
  own Python thread with one intra-op thread (no OpenMP barriers between cores).
* ``seeds_threads`` — castvit's batched SEEDS path, ``compute_superpixels(images,
  "seeds", num_workers=--threads)`` (OpenCV releases the GIL), pre-training preset.
* ``seeds_processes`` — SEEDS in a pool of ``--threads`` worker processes, as loader
  workers would run it (images pickled to the workers and labels back).

On the CPU each size also gets the CPU time per image on one thread (slic_torch on the
batch with one intra-op thread, SEEDS serially), by the thread's own clock: a figure
that load on the shared machine barely moves, unlike the img/s above.

**Quality.** BSDS500 test images (every ``--stride``-th of the sorted ids, ``--images``
of them) at full resolution; metrics from :mod:`castvit.eval.superpixel_quality`
(PROTOCOLS §6: boundary recall at r = round(0.0025·diagonal) = 1 px and at 2 px,
Neubert–Protzel undersegmentation error, ASA, compactness), averaged over annotators
then images. SEEDS runs at the authors' settings (15 bins, 20 iterations, 1 level,
prior 2) with n = 196 (SEEDS' grid gives 150/160 superpixels on 481×321/321×481) and
n = 254 (216/198), which bracket 196; slic_torch and scikit-image SLIC (castvit's
wrapper, compactness 10) get the ``n_segments`` that makes their mean count match
SEEDS' on these images (found by two rescaling passes), so each comparison is at equal
counts.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import _common as C
from castvit.superpixels import PRETRAIN_SEEDS, compute_superpixels, seeds, slic
from castvit.slic_torch import slic_torch

SEEDS_KW = {"histogram_bins": PRETRAIN_SEEDS.histogram_bins, "num_iterations": PRETRAIN_SEEDS.num_iterations}
TARGETS = {"br_within": 0.02, "asa_within": 0.02, "ue_ratio_max": 1.10}


# ----------------------------------------------------------------------------- throughput


def _seeds_chunk(images: np.ndarray) -> np.ndarray:
    return np.stack([seeds(im, 196, **SEEDS_KW) for im in images])


def throughput(sizes: list[int], batch: int, threads: int, rounds: int, device: str) -> list[dict[str, Any]]:
    rows = []
    pool = ProcessPoolExecutor(max_workers=threads) if device == "cpu" else None
    try:
        for size in sizes:
            rgb = C.natural_images(batch, size)
            chw = torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous()
            on_device = chw.to(device)
            parts = np.array_split(np.arange(batch), threads)

            def split_run() -> None:
                torch.set_num_threads(1)
                try:
                    with ThreadPoolExecutor(threads) as ex:
                        list(ex.map(lambda idx: slic_torch(chw[idx], 196), parts))
                finally:
                    torch.set_num_threads(threads)

            methods: dict[str, Callable[[], Any]] = {"slic_torch": lambda: compute_superpixels(on_device, "slic_torch", 196)}
            if device == "cpu":
                methods["slic_torch_split"] = split_run
                methods["seeds_threads"] = lambda: compute_superpixels(rgb, "seeds", 196, num_workers=threads, **SEEDS_KW)
                methods["seeds_processes"] = lambda: list(pool.map(_seeds_chunk, [rgb[p] for p in parts]))
            for fn in methods.values():  # warm-up (CUDA kernels, worker start-up)
                fn()
            best = {name: float("inf") for name in methods}
            for _ in range(rounds):
                for name, fn in methods.items():
                    best[name] = min(best[name], C.timed(fn, device))
            cpu_ms = cpu_time_per_image(chw, rgb, rounds) if device == "cpu" else {}
            counts = compute_superpixels(on_device, "slic_torch", 196).amax(dim=(1, 2)).cpu() + 1
            for name, seconds in best.items():
                key = "slic_torch" if name.startswith("slic") else "seeds"
                rows.append({"size": size, "method": name, "batch": batch, "img_s": batch / seconds,
                             "ms_per_img": 1e3 * seconds / batch, "cpu_ms_per_img_1thread": cpu_ms.get(key),
                             "superpixels_mean": float(counts.float().mean()) if name.startswith("slic") else None})
                print(f"{size:4d} px {name:17s} {batch / seconds:9.1f} img/s  (1-thread CPU time "
                      f"{cpu_ms.get(key, float('nan')):.1f} ms/img)", flush=True)
    finally:
        if pool is not None:
            pool.shutdown()
    return rows


def cpu_time_per_image(chw: torch.Tensor, rgb: np.ndarray, rounds: int) -> dict[str, float]:
    """CPU milliseconds per image on one thread (this thread's CPU clock, so time spent
    descheduled on a shared machine does not count): slic_torch on the whole batch with
    one intra-op thread, SEEDS serially. 2 cores / this = the 2-core rate of either."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for name, fn in (("slic_torch", lambda: slic_torch(chw, 196)),
                         ("seeds", lambda: compute_superpixels(rgb, "seeds", 196, num_workers=0, **SEEDS_KW))):
            best = float("inf")
            for _ in range(rounds):
                start = time.thread_time()
                fn()
                best = min(best, time.thread_time() - start)
            out[name] = 1e3 * best / len(rgb)
        return out
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- quality


def _bsds(root: str, count: int, stride: int) -> list[tuple[str, np.ndarray, Any]]:
    from castvit.eval.bsds import _image_path, list_images, load_ground_truth, load_image

    ids, image_dir, gt_dir = list_images(root, "test")
    ids = ids[::stride][:count]
    return [(i, load_image(_image_path(image_dir, i)), load_ground_truth(gt_dir / f"{i}.mat")) for i in ids]


def _labels(method: str, n: int, image: np.ndarray) -> np.ndarray:
    if method == "seeds":
        return seeds(image, n, **SEEDS_KW)
    if method == "slic_torch":
        return slic_torch(torch.from_numpy(image.copy())[None], n)[0].numpy()
    return slic(image, n)  # scikit-image SLIC, castvit's wrapper (compactness 10, retries)


def _calibrate(method: str, target: float, images: list[np.ndarray]) -> tuple[int, list[np.ndarray]]:
    """The n_segments whose mean count over ``images`` is closest to ``target``."""
    n, tried = int(round(target)), {}
    for _ in range(3):
        if n in tried:
            break
        maps = [_labels(method, n, im) for im in images]
        tried[n] = (float(np.mean([m.max() + 1 for m in maps])), maps)
        n = max(2, int(round(n * target / tried[n][0])))
    best = min(tried, key=lambda k: abs(tried[k][0] - target))
    return best, tried[best][1]


def quality(root: str, count: int, stride: int, seeds_ns: list[int]) -> list[dict[str, Any]]:
    from castvit.eval.superpixel_quality import superpixel_quality

    data = _bsds(root, count, stride)
    images = [im for _, im, _ in data]
    rows = []
    for seeds_n in seeds_ns:
        t = time.perf_counter()
        seeds_maps = [_labels("seeds", seeds_n, im) for im in images]
        runs = [("seeds", seeds_n, seeds_maps, time.perf_counter() - t)]
        target = float(np.mean([m.max() + 1 for m in seeds_maps]))
        for method in ("slic_torch", "skimage_slic"):
            t = time.perf_counter()
            n, maps = _calibrate("slic" if method == "skimage_slic" else method, target, images)
            runs.append((method, n, maps, time.perf_counter() - t))
        for method, n, maps, seconds in runs:
            scores = [superpixel_quality(m, gt) for m, (_, _, gt) in zip(maps, data)]
            row = {"seeds_n": seeds_n, "method": method, "n_segments": n, "images": len(data)}
            for key in ("count", "boundary_recall", "boundary_recall_2px", "undersegmentation_error", "asa",
                        "compactness"):
                row[key] = float(np.mean([s[key] for s in scores]))
            rows.append(row)
            print(f"SEEDS n={seeds_n}: {method:12s} n={n:4d} K={row['count']:6.1f} BR={row['boundary_recall']:.4f} "
                  f"BR2={row['boundary_recall_2px']:.4f} UE={row['undersegmentation_error']:.4f} "
                  f"ASA={row['asa']:.4f} CO={row['compactness']:.3f}", flush=True)
    return rows


def verdicts(quality_rows: list[dict[str, Any]], speed_rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for seeds_n in sorted({r["seeds_n"] for r in quality_rows}):
        by = {r["method"]: r for r in quality_rows if r["seeds_n"] == seeds_n}
        s, t = by["seeds"], by["slic_torch"]
        out[f"quality_at_seeds_n{seeds_n}"] = {
            "boundary_recall_diff": t["boundary_recall"] - s["boundary_recall"],
            "asa_diff": t["asa"] - s["asa"],
            "ue_ratio": t["undersegmentation_error"] / s["undersegmentation_error"],
            "met": bool(t["boundary_recall"] >= s["boundary_recall"] - TARGETS["br_within"]
                        and t["asa"] >= s["asa"] - TARGETS["asa_within"]
                        and t["undersegmentation_error"] <= TARGETS["ue_ratio_max"] * s["undersegmentation_error"]),
        }
    for size in sorted({r["size"] for r in speed_rows}):
        by = {r["method"]: r["img_s"] for r in speed_rows if r["size"] == size}
        if "seeds_processes" in by:
            seeds_best = max(by["seeds_processes"], by["seeds_threads"])
            torch_best = max(by["slic_torch"], by.get("slic_torch_split", 0.0))
            cpu = {r["method"]: r["cpu_ms_per_img_1thread"] for r in speed_rows if r["size"] == size}
            out[f"cpu_speed_{size}px"] = {"slic_torch_over_seeds": torch_best / seeds_best,
                                          "met": bool(torch_best >= seeds_best),
                                          "cpu_time_seeds_over_slic_torch": cpu["seeds_threads"] / cpu["slic_torch"]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", default="224,512")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--bsds", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "bsds500"))
    p.add_argument("--images", type=int, default=50, help="BSDS500 test images")
    p.add_argument("--stride", type=int, default=4, help="take every stride-th test id")
    p.add_argument("--seeds-n", default="196,254")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = C.machine_info(args.device)
    print(f"# {machine['cpu']} · {args.threads} threads · device {args.device}", flush=True)
    speed = [] if args.skip_throughput else throughput([int(s) for s in args.sizes.split(",")], args.batch,
                                                        args.threads, args.rounds, args.device)
    qual = [] if args.skip_quality else quality(args.bsds, args.images, args.stride,
                                                [int(n) for n in args.seeds_n.split(",")])
    result = verdicts(qual, speed)
    for key, value in result.items():
        print(key, value)
    payload = {"benchmark": "tokenizer", "command": " ".join(["python"] + sys.argv), "machine": machine,
               "settings": {"batch": args.batch, "threads": args.threads, "rounds": args.rounds,
                            "statistic": "best of interleaved rounds", "images": args.images, "stride": args.stride,
                            "slic_torch": "defaults: compactness 20, iterations 10, stride 2, connectivity on, "
                                          "min_size_factor 0.25"},
               "throughput": speed, "quality": qual, "targets": TARGETS, "verdicts": result}
    name = "tokenizer" if args.device == "cpu" else f"tokenizer_{args.device.split(':')[0]}"
    print(f"\nwrote {C.write_json(name, payload, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
