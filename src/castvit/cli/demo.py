"""``castvit demo``: train a small CAST on synthetic scenes by classification and
score its hierarchy (the work is :mod:`castvit.demo`)."""

from __future__ import annotations

import argparse
import dataclasses

from castvit.demo import EXTRA_BASELINES, FAMILIES, DemoConfig, run_demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DemoConfig()
    parser.add_argument("--out", default="castvit-demo", help="report folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny run for tests: 32 training images, 1 epoch, every baseline (other flags apply)")
    parser.add_argument("--families", type=_families,
                        help=f"scene families, comma-separated from {','.join(FAMILIES)} (default: both)")
    parser.add_argument("--baselines", type=_baselines,
                        help=f"trained baselines to add: {','.join(EXTRA_BASELINES)}, 'all' or 'none' (default none: "
                        "they do not fit the 10-minute budget on 2 CPU cores)")
    parser.add_argument("--no-level4", dest="level4", action="store_false", default=None,
                        help="skip the CAST whose head reads the level-4 tokens (every level learned)")
    parser.add_argument("--epochs", type=int, help=f"training epochs (default {d.epochs})")
    parser.add_argument("--num-train", type=int, help=f"training scenes (default {d.num_train})")
    parser.add_argument("--num-test", type=int, help=f"test scenes (default {d.num_test})")
    parser.add_argument("--image-size", type=int, help=f"scene side in pixels, multiple of 8 (default {d.image_size})")
    parser.add_argument("--num-classes", type=int, help=f"object classes, 2..8 (default {d.num_classes})")
    parser.add_argument("--clutter", type=float, help=f"background clutter in [0, 1] (default {d.clutter})")
    parser.add_argument("--object-scale", type=_float_pair, help="object diameter as a fraction of the image "
                        f"side, low,high (default {d.object_scale[0]},{d.object_scale[1]})")
    parser.add_argument("--embed-dim", type=int, help=f"CAST width (default {d.embed_dim})")
    parser.add_argument("--depth", type=_int_list, help="blocks per stage, e.g. 1,1,1,1 (default "
                        f"{','.join(map(str, d.depth))})")
    parser.add_argument("--num-heads", type=int, help=f"attention heads (default {d.num_heads})")
    parser.add_argument("--clusters", type=_int_list, dest="num_clusters",
                        help="segments of levels 1..4, e.g. 16,8,4,2 (default "
                        f"{','.join(map(str, d.num_clusters))})")
    parser.add_argument("--superpixels", choices=("seeds", "slic"), help=f"superpixel method (default {d.superpixels})")
    parser.add_argument("--n-segments", type=int, help=f"superpixels requested per image (default {d.n_segments})")
    parser.add_argument("--batch-size", type=int, help=f"training batch (default {d.batch_size})")
    parser.add_argument("--lr", type=float, help=f"peak learning rate (default {d.lr})")
    parser.add_argument("--seed", type=int, help=f"data, initialisation and order seed (default {d.seed})")
    parser.add_argument("--device", help=f"torch device, e.g. cpu or cuda (default {d.device})")
    parser.add_argument("--threads", type=int, help=f"CPU threads for torch (default {d.threads})")
    parser.add_argument("--tolerance-px", type=float,
                        help=f"boundary match distance in pixels, BSDS boundary rule (default {d.tolerance_px})")
    parser.add_argument("--examples", type=int, dest="num_examples",
                        help=f"test images in the example figures (default {d.num_examples})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _families(text: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [n for n in names if n not in FAMILIES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown families {bad or text!r}; choose from {', '.join(FAMILIES)}")
    return names


def _baselines(text: str) -> tuple[str, ...]:
    if text in ("all", "none"):
        return EXTRA_BASELINES if text == "all" else ()
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [n for n in names if n not in EXTRA_BASELINES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown baselines {bad}; choose from {', '.join(EXTRA_BASELINES)}, "
                                         "all or none")
    return names


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_pair(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two comma-separated numbers, got {text!r}") from None
    return low, high


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    """The :class:`DemoConfig` the flags ask for (``--quick`` first, then each flag)."""
    fields = {f.name for f in dataclasses.fields(DemoConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    return DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    run_demo(cfg, args.out, progress=not args.no_progress)
    return 0
