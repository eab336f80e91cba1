"""MoCo-v3 train step end to end: the CPU SEEDS loader path vs the device path (issue 12 §4).

    python bench/moco_step.py                        # cast_small, 224 px, batch 8, 2 workers, 2 threads, CPU
    python bench/moco_step.py --device cuda --batch 128 --workers 8 --steps 10   # on a lent GPU

Two input paths feed the same MoCo-v3 recipe step (:class:`castvit.train.moco.MoCoRecipe`,
two views, AdamW, momentum encoder):

* ``cpu_seeds``: :class:`~castvit.data.transforms.MoCoViews` in ``--workers`` loader
  processes, everything per image there, SEEDS at the pre-training preset (196, 15 bins,
  20 iterations), as the recipes run today;
* ``device_slic``: ``data.device_augment`` — :class:`~castvit.data.device_augment.
  DeviceMoCoViews` workers only decode and crop (uint8); jitter, grayscale, blur,
  solarize, flip, normalisation and ``slic_torch`` superpixels (196) run batched on
  ``--device`` in the training process.

For each path two rates, wall clock, after one warm-up batch, best of ``--rounds``
rounds that alternate between the paths (so load from other processes hits both alike):

* ``input img/s``: the loader alone (plus the device stage for ``device_slic``), i.e.
  the most steps per second the input path could feed;
* ``step img/s``: loader + device stage + the train step, one after the other in the
  training process (workers prefetch in parallel), i.e. what training runs at.

Images: crops of scikit-image's photographs (``_common.natural_images``) at 1.15× the
view size, held in memory (no decoding cost: both paths would pay it alike). Writes
``bench/results/moco_step_<device>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import torch
from torch.utils.data import Dataset

import _common as C
import castvit
from castvit.data.datasets import build_loader
from castvit.data.device_augment import DeviceMoCoViews
from castvit.data.transforms import MoCoViews, SuperpixelConfig
from castvit.train.engine import device_stage
from castvit.train.moco import MoCo, MoCoConfig, MoCoRecipe

PATHS = ("cpu_seeds", "device_slic")


class Photos(Dataset):
    """``n`` uint8 ``3×S×S`` photo crops in memory."""

    def __init__(self, n: int, size: int):
        rgb = C.natural_images(n, size, seed=1)
        self.images = torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "label": 0}


def make_loader(path: str, data: Dataset, size: int, batch: int, workers: int, n_segments: int):
    if path == "cpu_seeds":
        sp = SuperpixelConfig(method="seeds", n_segments=n_segments, histogram_bins=15, num_iterations=20)
        view = MoCoViews(size, superpixels=sp)
    else:
        view = DeviceMoCoViews(MoCoViews(size, superpixels=SuperpixelConfig(method="slic_torch",
                                                                            n_segments=n_segments)))
    return build_loader(data, view, batch_size=batch, train=True, seed=0, num_workers=workers, keep_keys=("label",))


def rate(loader, device: str, steps: int, recipe: MoCoRecipe | None = None) -> float:
    """Images per second over ``steps`` batches after one warm-up batch (which pays the
    workers' start-up): the input alone, or with ``recipe`` the whole train step."""
    stage = device_stage(loader)
    it = iter(loader)
    done, start = 0, None
    for k in range(steps + 1):
        batch = next(it)
        if stage is not None:
            batch = stage(batch, device)
        count = batch["image"].shape[0]
        if recipe is not None:
            _, count, _ = recipe.train_step(batch, epoch=0, step=k, t=0.5)
        C.synchronize(device)
        if k == 0:
            start = time.perf_counter()
        else:
            done += count
    return done / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cast_small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=4, help="timed batches per path and round (after one warm-up)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best counts")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the training process (CPU)")
    p.add_argument("--superpixels", type=int, default=196)
    p.add_argument("--amp", choices=("none", "bf16"), default="none")
    p.add_argument("--paths", default=",".join(PATHS))
    p.add_argument("--skip-step", action="store_true", help="input rates only")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda but no GPU is visible")
    C.set_threads(args.threads if device == "cpu" else None, device)
    size = args.img_size
    data = Photos(max(args.batch * (args.steps + 1), 16), int(size * 1.15))
    machine = C.machine_info(device)
    print(f"# {machine['cpu'] if device == 'cpu' else machine.get('gpu')} · torch {machine['torch']} · "
          f"{machine['threads']} threads · {args.workers} workers · batch {args.batch} · {size} px · "
          f"load {machine['load_average_start']}", flush=True)
    paths = args.paths.split(",")
    loaders = {path: make_loader(path, data, size, args.batch, args.workers, args.superpixels) for path in paths}
    recipes = {}
    if not args.skip_step:
        for path in paths:
            torch.manual_seed(0)
            encoder = castvit.create_model(args.model, img_size=size)
            cfg = MoCoConfig(epochs=1, amp_bf16=args.amp == "bf16", sync_bn=False)
            recipes[path] = MoCoRecipe(MoCo(encoder, cfg.dim, cfg.mlp_dim, cfg.temperature), cfg,
                                       global_batch=args.batch, device=torch.device(device))
            recipes[path].on_epoch_start(0)
    rows = [{"path": path, "input_img_s": 0.0, **({} if args.skip_step else {"step_img_s": 0.0})} for path in paths]
    for r in range(args.rounds):
        for row in rows:
            path = row["path"]
            row["input_img_s"] = max(row["input_img_s"], rate(loaders[path], device, args.steps))
            if path in recipes:
                row["step_img_s"] = max(row["step_img_s"], rate(loaders[path], device, args.steps, recipes[path]))
            print(f"round {r}: {path:12s} input {row['input_img_s']:8.2f} img/s   step "
                  f"{row.get('step_img_s', float('nan')):8.2f} img/s (best so far)", flush=True)
    print()
    C.print_table(rows, [("path", "path", "s"), ("input_img_s", "input img/s", ".2f"),
                         ("step_img_s", "step img/s", ".2f")])
    ratios = {}
    if len(rows) == 2:
        for key in ("input_img_s", "step_img_s"):
            if key in rows[0] and key in rows[1]:
                ratios[f"{key}_device_over_cpu"] = rows[1][key] / rows[0][key]
        print("  device path / CPU SEEDS path: " + ", ".join(f"{k} ×{v:.2f}" for k, v in ratios.items()))
    payload = {"benchmark": "moco_step", "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
               "machine": machine,
               "settings": {"model": args.model, "img_size": size, "batch": args.batch, "steps": args.steps,
                            "rounds": args.rounds, "statistic": "best of alternating rounds",
                            "workers": args.workers, "threads": args.threads, "superpixels": args.superpixels,
                            "amp": args.amp, "clock": "wall", "cpu_seeds": "SEEDS 15 bins 20 iterations",
                            "device_slic": "slic_torch defaults"},
               "rows": rows, "ratios": ratios}
    path = C.write_json(f"moco_step_{device.split(':')[0]}", payload, args.out)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
