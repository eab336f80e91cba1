"""``castvit eval bsds``: the BSDS500 benchmark (boundaries, regions, superpixel quality).

    castvit eval bsds --root BSR/BSDS500/data --split test --ucm2 results/ucm2/
    castvit eval bsds --split test --segs results/segs/            # <id>.mat holding segs
    castvit eval bsds --split test --boundaries results/png/       # <id>.png soft boundaries
    castvit eval bsds --split test --model cast_small --checkpoint run/last.pth.tar
    castvit eval bsds --split test --superpixels seeds --n-segments 196

Scores one input on every image of the split as the original MATLAB benchmark does
(castvit.eval.bsds): boundary P/R/F at ODS and OIS and AP; covering, PRI and VI at
ODS and OIS; for --superpixels also boundary recall, undersegmentation error, ASA and
compactness against the number of superpixels produced. Prints a table and writes
every number, per image and per threshold, to --out (JSON).

Exit status: 0 on success, 2 when the inputs cannot be scored (the message names the
file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

DESCRIPTION = __doc__

ROOT_ENV = "CASTVIT_BSDS500"
ROOT_CANDIDATES = ("data/bsds500", "../shared/data/bsds500", "BSR/BSDS500/data", "BSDS500/data")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default=None, metavar="DIR",
                        help=f"folder holding images/ and groundTruth/ (default: ${ROOT_ENV}, else the first of "
                             f"{', '.join(ROOT_CANDIDATES)} that exists)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"),
                        help="images/<split>/ and groundTruth/<split>/ (default test)")
    src = parser.add_argument_group("input (exactly one; --checkpoint and --model may go together)")
    src.add_argument("--ucm2", metavar="DIR", help="UCMs: DIR/<id>.mat holding ucm2 ((2H+1)×(2W+1), in [0, 1])")
    src.add_argument("--segs", metavar="DIR", help="segmentation stacks: DIR/<id>.mat holding segs (1×T cell)")
    src.add_argument("--boundaries", metavar="DIR", help="soft boundary maps: DIR/<id>.png (8-bit, higher = stronger)")
    src.add_argument("--checkpoint", metavar="PATH", help="run castvit with these weights and score its hierarchy")
    src.add_argument("--model", metavar="NAME",
                     help="castvit model (registered name or published tag; default: the checkpoint's, else "
                          "cast_small); without --checkpoint the weights are random unless NAME names published ones")
    src.add_argument("--superpixels", metavar="METHOD", choices=("seeds", "slic"),
                     help="score a superpixel method (seeds: the authors' pre-training settings, 15 bins, "
                          "20 iterations; slic: scikit-image)")
    parser.add_argument("--n-segments", type=int, default=None, metavar="N",
                        help="superpixels requested per image (default 196; with a model: the model's default)")
    parser.add_argument("--baseline", choices=("colour_grouping",), default=None,
                        help="with --superpixels: score the colour-grouping baseline built on them instead "
                             "(the superpixels, then --levels segments)")
    parser.add_argument("--levels", type=int, nargs="+", default=[64, 32, 16, 8], metavar="K",
                        help="segments per level of --baseline (default 64 32 16 8, castvit's)")
    parser.add_argument("--size", default="auto", metavar="N|auto|native",
                        help="castvit's working resolution (default auto: the model's input area)")
    parser.add_argument("--seed", type=int, default=0, help="seed of random model weights (default 0)")
    parser.add_argument("--nthresh", type=int, default=99,
                        help="thresholds for --ucm2 and --boundaries (default 99, the benchmark's); segmentation "
                             "stacks use their own count")
    parser.add_argument("--max-dist", type=float, default=0.0075,
                        help="boundary match distance as a fraction of the image diagonal (default 0.0075)")
    parser.add_argument("--out", default="results.json", metavar="FILE", help="JSON output (default results.json)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="processes scoring images (default: every CPU; 1 = in this process)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N images (name order)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


class _UsageError(Exception):
    pass


def resolve_root(root: str | None) -> Path:
    """--root, else $CASTVIT_BSDS500, else the first candidate folder that exists."""
    if root:
        return Path(root)
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV])
    for cand in ROOT_CANDIDATES:
        if (Path(cand) / "images").is_dir():
            return Path(cand)
    raise _UsageError(f"no --root given, ${ROOT_ENV} is not set and none of {', '.join(ROOT_CANDIDATES)} holds "
                      "images/; pass --root DIR (the folder holding images/ and groundTruth/)")


def _parse_size(text: str) -> int | str | None:
    if text == "auto":
        return "auto"
    if text == "native":
        return None
    try:
        return int(text)
    except ValueError:
        raise _UsageError(f"--size must be auto, native or a number of pixels, got {text!r}") from None


def build_predictions(args: argparse.Namespace, say) -> Any:
    from castvit.eval.bsds import FilePredictions, HierarchyPredictions
    from castvit.eval.superpixel_quality import SuperpixelPredictions

    kinds = [k for k in ("ucm2", "segs", "boundaries", "superpixels") if getattr(args, k)]
    if args.checkpoint or args.model:
        kinds.append("castvit")
    if len(kinds) != 1:
        raise _UsageError("give exactly one input: --ucm2, --segs, --boundaries, --checkpoint/--model or "
                          f"--superpixels (got {', '.join('--' + k for k in kinds) or 'none'})")
    kind = kinds[0]
    if args.baseline and kind != "superpixels":
        raise _UsageError("--baseline needs --superpixels METHOD (the superpixels it groups)")
    if args.n_segments is not None and args.n_segments < 1:
        raise _UsageError(f"--n-segments must be positive, got {args.n_segments}")
    if kind in ("ucm2", "segs", "boundaries"):
        return FilePredictions(kind, getattr(args, kind))
    if kind == "superpixels":
        options: dict[str, Any] = {}
        if args.superpixels == "seeds":
            from dataclasses import asdict

            from castvit.superpixels import PRETRAIN_SEEDS

            options = asdict(PRETRAIN_SEEDS)
            del options["n_segments"]
        return SuperpixelPredictions(args.superpixels, args.n_segments or 196, options=options,
                                     grouping="colour" if args.baseline else None, levels=args.levels)
    from castvit.checkpoint import CheckpointError

    try:
        model, description = _build_model(args, say)
    except (CheckpointError, ValueError, TypeError) as exc:
        raise _UsageError(f"cannot build the model: {exc}") from None
    return HierarchyPredictions(model, size=_parse_size(args.size), n_segments=args.n_segments,
                                description=description)


def _build_model(args: argparse.Namespace, say) -> tuple[Any, dict[str, Any]]:
    import warnings

    import torch

    import castvit
    from castvit.models import read_pretrained_config

    torch.manual_seed(args.seed)
    name = args.model
    if args.checkpoint:
        path = Path(args.checkpoint)
        if not path.is_file():
            raise _UsageError(f"checkpoint {str(path)!r} does not exist")
        record = read_pretrained_config(path)
        if record is not None and name is not None and record["name"] != name:
            raise _UsageError(f"checkpoint {str(path)!r} holds a {record['name']!r} model, not {name!r}; "
                              "drop --model or pass the matching checkpoint")
        name = record["name"] if record is not None else (name or "cast_small")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = castvit.create_model(name, pretrained=str(path))
        for w in caught:
            say(f"checkpoint: {w.message}")
    else:
        model = castvit.create_model(name)
    if not hasattr(model, "pools"):
        raise _UsageError(f"model {name!r} has no segmentation hierarchy (it is not a CAST model)")
    random_weights = not args.checkpoint and "." not in name
    if random_weights:
        say(f"note: no --checkpoint, so {name} has RANDOM weights (seed {args.seed})")
    checkpoint = str(Path(args.checkpoint).resolve()) if args.checkpoint else None
    return model.eval(), {"model": name, "checkpoint": checkpoint, "random_weights": random_weights, "seed": args.seed}


def _f(x: float) -> str:
    return f"{x:.4f}"


def format_table(result: dict[str, Any]) -> str:
    """The terminal summary of an :func:`~castvit.eval.bsds.evaluate_dataset` result."""
    inp = result["input"]
    desc = ", ".join(f"{k}={v}" for k, v in inp.items() if k not in ("kind", "options") and v is not None)
    split = f" {result['split']}" if result.get("split") else ""
    lines = [f"BSDS500{split} ({result['num_images']} images), {inp['kind']}"
             + (f" ({desc})" if desc else "") + f", {len(result['thresholds'])} thresholds"]
    lines.append(f"{'':11s} {'ODS':>8s} {'OIS':>8s} {'best':>8s}   ODS threshold")
    b = result.get("boundary")
    if b:
        lines.append(f"{'boundary F':11s} {_f(b['ods']['f']):>8s} {_f(b['ois']['f']):>8s} {'':>8s}   "
                     f"{b['ods']['threshold']:.3g}   (AP {_f(b['ap'])})")
        lines.append(f"{'  recall':11s} {_f(b['ods']['recall']):>8s} {_f(b['ois']['recall']):>8s}")
        lines.append(f"{'  precision':11s} {_f(b['ods']['precision']):>8s} {_f(b['ois']['precision']):>8s}")
    if "covering" in result:
        c, p, v = result["covering"], result["pri"], result["vi"]
        lines.append(f"{'covering':11s} {_f(c['ods']):>8s} {_f(c['ois']):>8s} {_f(c['best']):>8s}   "
                     f"{c['ods_threshold']:.3g}")
        lines.append(f"{'PRI':11s} {_f(p['ods']):>8s} {_f(p['ois']):>8s} {'':>8s}   {p['ods_threshold']:.3g}")
        lines.append(f"{'VI (bits)':11s} {_f(v['ods']):>8s} {_f(v['ois']):>8s} {'':>8s}   {v['ods_threshold']:.3g}")
        segs = result.get("num_segments") or []
        if segs:
            lines.append("segments per threshold (mean): " + " ".join(f"{s:.0f}" for s in segs[:12])
                         + (" …" if len(segs) > 12 else ""))
    sp = result.get("superpixels")
    if sp:
        lines.append(f"superpixels: {sp['count']:.1f} produced per image (requested {sp['requested']}, "
                     f"{sp['count_min']}–{sp['count_max']}); boundary recall {_f(sp['boundary_recall'])} "
                     f"(r = {sp['boundary_recall_radius']:.0f} px; {_f(sp['boundary_recall_2px'])} at 2 px), "
                     f"undersegmentation error {_f(sp['undersegmentation_error'])}, ASA {_f(sp['asa'])}, "
                     f"compactness {_f(sp['compactness'])}")
    return "\n".join(lines)


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_json(result: dict[str, Any], path: str | os.PathLike) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=_json_default))
    tmp.replace(out)


def run(args: argparse.Namespace) -> int:
    from castvit.eval.bsds import BSDSError, evaluate_dataset

    def say(msg: str) -> None:
        print(msg, file=sys.stderr)

    try:
        root = resolve_root(args.root)
        predictions = build_predictions(args, say)
        start = time.perf_counter()
        result = evaluate_dataset(root, args.split, predictions, nthresh=args.nthresh, max_dist=args.max_dist,
                                  workers=args.workers, progress=not args.quiet, limit=args.limit)
    except (_UsageError, BSDSError) as exc:
        say(f"castvit eval bsds: error: {exc}")
        return 2
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["arguments"] = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "command"}
    write_json(result, args.out)
    print(format_table(result))
    print(f"wrote {args.out} ({result['seconds']} s)")
    return 0
