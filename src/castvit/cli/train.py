"""``castvit train CONFIG.yaml [key=value ...]``: run a YAML recipe.

Single process::

    castvit train configs/moco_synthetic_cpu.yaml train.epochs=2 output_dir=runs/try

Many processes (one per GPU, or several CPU processes with gloo)::

    torchrun --nproc_per_node 8 -m castvit.cli train configs/moco_imagenet1k.yaml data.train=/data/in1k/train

``--resume`` continues from ``OUTPUT_DIR/last.pth.tar`` (``--resume-from PATH`` from any
checkpoint), exactly where it stopped, mid-epoch included.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML recipe, e.g. configs/moco_imagenet1k.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides with YAML values, e.g. train.epochs=2 data.train=/data/train")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUTPUT_DIR/last.pth.tar when it exists (else start fresh)")
    parser.add_argument("--resume-from", default=None, metavar="CHECKPOINT",
                        help="continue from this checkpoint (ours, or a published MoCo / DeiT / probe container)")
    parser.add_argument("--device", default=None, help="override the config's device (auto, cpu, cuda)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (epoch summaries only)")
    # Flags may sit anywhere among the KEY=VALUE overrides (plain parse_args would stop
    # collecting overrides at the first flag).
    parser.parse_args = parser.parse_intermixed_args


def run(args: argparse.Namespace) -> int:
    import yaml

    from castvit.train.config import ConfigError, load_config

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={args.device}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"castvit train: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(cfg, sort_keys=False), end="")
        return 0

    from castvit.train import distributed as D
    from castvit.train.build import run as run_recipe

    info = D.init_distributed(None if cfg["device"] == "auto" else cfg["device"])
    try:
        resume = args.resume_from if args.resume_from else args.resume
        history = run_recipe(cfg, resume=resume, progress=not args.no_progress)
    except ConfigError as exc:
        print(f"castvit train: {exc}", file=sys.stderr)
        return 2
    finally:
        D.cleanup_distributed()
    if info.is_main and history.get("epochs"):
        last = history["epochs"][-1]
        shown = {k: v for k, v in last.items() if isinstance(v, (int, float)) and k != "global_step"}
        print("done: " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in shown.items()), flush=True)
    return 0
