"""A model trained on SEEDS tokens, fed slic_torch tokens (issue 12 §4).

    python bench/token_transfer.py                       # ~2 min on 2 busy cores
    python bench/token_transfer.py --train 4000 --epochs 6   # the demo's full size

The demo's classifier (:mod:`castvit.demo`: a small ``cast_small``, 64-px synthetic
scenes of 4 classes, SEEDS with ``n_segments=50``) is trained on SEEDS superpixels, then
scored on the same test scenes with the superpixels cut by:

* ``seeds``: as trained (the reference);
* ``slic_torch@n``: the batched torch SLIC at the same ``n_segments``, and at the
  ``n_segments`` whose mean superpixel count matches SEEDS' (``calibrated``);
* ``grid``: square cells of about the SEEDS count (a floor: no image edges at all).

Reported: test accuracy per tokenizer, its difference to SEEDS, the mean superpixel
count and the share of test images whose prediction equals the SEEDS prediction.
Writes ``bench/results/token_transfer.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np
import torch

import _common as C
from castvit.data.transforms import grid_superpixels
from castvit.demo import DemoConfig, build_model, make_split, train_classifier
from castvit.ops import normalize_images
from castvit.superpixels import compute_superpixels


def tokenize(images: np.ndarray, method: str, n: int) -> torch.Tensor:
    if method == "grid":
        one = grid_superpixels(images.shape[1], images.shape[2], n)
        return one.expand(len(images), -1, -1).contiguous()
    chw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return compute_superpixels(chw if method == "slic_torch" else images, method=method, n_segments=n).long()


@torch.no_grad()
def predict(model: torch.nn.Module, images: np.ndarray, labels: torch.Tensor, batch: int = 100) -> torch.Tensor:
    model.eval()
    x = normalize_images(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    return torch.cat([model(x[i:i + batch], labels[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


def count(labels: torch.Tensor) -> float:
    return float(np.mean([int(lab.max()) + 1 for lab in labels]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--test", type=int, default=400)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = DemoConfig(num_train=args.train, num_test=args.test, epochs=args.epochs, seed=args.seed, threads=args.threads)
    machine = C.machine_info("cpu")
    print(f"# {machine['cpu']} · torch {machine['torch']} · {args.threads} threads · load "
          f"{machine['load_average_start']}", flush=True)
    start = time.perf_counter()
    train = make_split(cfg, cfg.num_train, cfg.seed, masks=False)
    test = make_split(cfg, cfg.num_test, cfg.seed + 1, masks=False)
    model = build_model(cfg, "trained")
    history = train_classifier(model, train, test, cfg)
    train_s = time.perf_counter() - start
    images, truth = test["image"], torch.from_numpy(test["label"])
    seeds = torch.from_numpy(test["superpixels"].astype(np.int64))
    seeds_k = count(seeds)
    # the slic_torch count that matches SEEDS' mean count
    candidates = {n: count(tokenize(images[:100], "slic_torch", n)) for n in range(30, 81, 5)}
    calibrated = min(candidates, key=lambda n: abs(candidates[n] - seeds_k))
    variants = [("seeds", "seeds", cfg.n_segments, seeds),
                (f"slic_torch@{cfg.n_segments}", "slic_torch", cfg.n_segments, None),
                (f"slic_torch@{calibrated} (calibrated)", "slic_torch", calibrated, None),
                (f"grid@{round(seeds_k)}", "grid", round(seeds_k), None)]
    rows: list[dict[str, Any]] = []
    reference = None
    for name, method, n, labels in variants:
        labels = tokenize(images, method, n) if labels is None else labels
        pred = predict(model, images, labels)
        reference = pred if reference is None else reference
        rows.append({"tokens": name, "method": method, "n_segments": n, "mean_superpixels": count(labels),
                     "accuracy": float((pred == truth).float().mean()),
                     "same_as_seeds": float((pred == reference).float().mean())})
    for r in rows:
        r["minus_seeds"] = r["accuracy"] - rows[0]["accuracy"]
    C.print_table(rows, [("tokens", "tokens", "s"), ("mean_superpixels", "K mean", ".1f"),
                         ("accuracy", "test acc", ".3f"), ("minus_seeds", "− SEEDS", "+.3f"),
                         ("same_as_seeds", "same pred", ".3f")])
    payload = {"benchmark": "token_transfer", "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
               "machine": machine,
               "settings": {"train": cfg.num_train, "test": cfg.num_test, "epochs": cfg.epochs,
                            "model": "demo 'trained' (cast_small, embed 96, depth 1-1-1-1, clusters 16-8-4-2)",
                            "trained_on": f"SEEDS n_segments={cfg.n_segments}", "image_size": cfg.image_size,
                            "slic_calibration": candidates},
               "train_seconds": train_s, "val_acc_history": history.get("val_acc"), "rows": rows}
    path = C.write_json("token_transfer", payload, args.out)
    print(f"\nwrote {path} (training {train_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
