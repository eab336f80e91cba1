"""``castvit convert IN OUT.safetensors``: any checkpoint castvit reads → castvit's own
format (safetensors, with the model record in its metadata and as JSON beside it)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="checkpoint: castvit train output, .safetensors, or a published container "
                        "(MoCo, linear probe, DeiT, Segmenter, SPML)")
    parser.add_argument("output", help="the .safetensors file to write (its .json is written beside it)")
    parser.add_argument("--model", default=None, metavar="NAME",
                        help="registered architecture; needed when the input does not name its model "
                             "(the authors' files): see 'castvit models'")
    parser.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="constructor override, repeatable, value in YAML syntax (e.g. num_classes=1000)")
    parser.add_argument("--ema", action="store_true", help="DeiT checkpoints: convert model_ema instead of model")


def run(args: argparse.Namespace) -> int:
    import yaml

    from castvit.checkpoint import CheckpointError, load_checkpoint
    from castvit.models import create_model, read_pretrained_config, save_pretrained

    overrides = {}
    for item in args.model_arg:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"castvit convert: --model-arg expects KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        overrides[key.strip()] = yaml.safe_load(value)
    try:
        record = read_pretrained_config(args.input)
        if record is not None and not args.ema:
            model = create_model(args.model, pretrained=args.input, **overrides)
        else:
            name = args.model or (record or {}).get("name")
            if name is None:
                print(f"castvit convert: {args.input!r} does not say which model it holds; pass --model NAME "
                      "(see 'castvit models')", file=sys.stderr)
                return 2
            model = create_model(name, **{**((record or {}).get("config") or {}), **overrides})
            report = load_checkpoint(model, args.input, use_ema=args.ema)
            for note in report.notes:
                print(f"note: {note}")
        path = save_pretrained(model, args.output)
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"castvit convert: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} and {path.with_suffix('.json')} ({model.castvit_name})")
    return 0
