"""Forward time against the number of superpixels and against the image size.

    python bench/scaling.py                              # cast_small, CPU, 2 threads
    python bench/scaling.py --models cast_small,vit_conv_small_patch16 --quick

* Superpixel sweep: 512 px images (a 64×64 token grid, so up to 4096 superpixels
  can keep a token), SEEDS with n = 64 … 1024. SEEDS returns its own K (≤ n, see
  ``castvit.superpixels``): the table shows the tokens the model really got.
* Size sweep: 224 … 512 px with SEEDS n = 196 (the pre-training preset), so the
  conv stem grows with the pixels while the token count stays near 196.

fp32, eval, no_grad, batch 8 by default; the best of ``--rounds`` calls counts, each
followed by a 2048² fp32 matmul whose best throughput is reported as the peak of the
same run. ViT baselines ignore the superpixels (their cost depends on the size only).
Writes ``bench/results/scaling_<device>.json``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

import _common as C
import castvit

SUPERPIXELS = [64, 128, 196, 256, 384, 512, 768, 1024]
SIZES = [224, 288, 320, 384, 448, 512]


def measure(model, images, superpixels, peak: C.MatmulPeak, rounds: int, warmup: int, device: str) -> dict[str, float]:
    def run():
        with torch.no_grad():
            model(images, superpixels)

    t = C.interleaved({"forward": run}, {"fp32": peak}, rounds, warmup, device)["forward"]
    b = images.shape[0]
    return {"ms_per_batch": 1e3 * t["min_s"], "img_s": b / t["min_s"], "peak_fp32_gflops": t["peak_fp32_gflops"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="cast_small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--superpixels", default=",".join(map(str, SUPERPIXELS)))
    p.add_argument("--sweep-size", type=int, default=512, help="image size of the superpixel sweep")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="batch 2, 2 rounds, three points per sweep")
    p.add_argument("--thread-clock", action="store_true",
                   help="with --threads 1: time by the thread's CPU clock (robust on a busy machine)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.rounds = 2, 2
        args.superpixels, args.sizes = "64,256,1024", "224,384,512"
    device = args.device
    C.set_threads(args.threads if device == "cpu" else None, device)
    C.use_thread_clock(args.thread_clock)
    machine = C.machine_info(device)
    peak = C.MatmulPeak(torch.float32, device)
    print(f"# {machine['cpu'] if device == 'cpu' else machine.get('gpu')} · torch {machine['torch']} · "
          f"{machine['threads']} threads · batch {args.batch}", flush=True)

    rows: list[dict[str, Any]] = []
    sweeps = [("superpixels", args.sweep_size, int(n)) for n in args.superpixels.split(",")]
    sweeps += [("size", int(s), 196) for s in args.sizes.split(",")]
    inputs: dict[tuple[int, int], Any] = {}
    for name in args.models.split(","):
        is_vit = name.startswith("vit_conv")
        for sweep, size, n in sweeps:
            if is_vit and sweep == "superpixels":
                continue
            if (size, n) not in inputs:
                inputs[(size, n)] = C.model_inputs(args.batch, size, n, device=device)
            images, superpixels, info = inputs[(size, n)]
            model = castvit.create_model(name, img_size=size).to(device).eval()
            row = {"model": name, "sweep": sweep, "img_size": size, "seeds_n": n, "tokens": info["tokens"],
                   "min_tokens_on_grid": min(info["labels_on_token_grid"])}
            try:
                row.update(measure(model, images, superpixels, peak, args.rounds, args.warmup, device))
            except ValueError as err:  # e.g. fewer superpixels than the first stage's clusters
                row["error"] = str(err).split(";")[0]
            rows.append(row)
            print(f"{name:24s} {sweep:11s} {size:4d} px  n={n:4d}  tokens {row['tokens']:4d}  "
                  + (f"{row['ms_per_batch']:8.1f} ms/batch  {row['img_s']:6.2f} img/s" if "img_s" in row
                     else f"skipped: {row['error']}"), flush=True)

    print()
    C.print_table(rows, [("model", "model", "s"), ("sweep", "sweep", "s"), ("img_size", "px", "d"),
                         ("seeds_n", "SEEDS n", "d"), ("tokens", "tokens", "d"), ("ms_per_batch", "ms/batch", ".1f"),
                         ("img_s", "img/s", ".2f"), ("peak_fp32_gflops", "peak", ".0f")])
    payload = {"benchmark": "scaling", "command": " ".join(["python"] + sys.argv), "machine": machine,
               "settings": {"batch": args.batch, "rounds": args.rounds, "dtype": "fp32",
                            "clock": "thread CPU time" if args.thread_clock else "wall", "mode": "forward (eval)",
                            "statistic": "best of rounds"}, "rows": rows}
    path = C.write_json(f"scaling_{device.split(':')[0]}", payload, args.out)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
