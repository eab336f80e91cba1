"""``castvit eval BENCHMARK …``: score models and segmentations on a benchmark.

Each benchmark is one module ``castvit.cli.eval_<name>`` with ``add_arguments`` and
``run``, like a top-level command; this module only dispatches to it.
"""

from __future__ import annotations

import argparse
import importlib

# benchmark -> (module, one-line help)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "bsds": ("castvit.cli.eval_bsds", "BSDS500 boundary and region benchmark, superpixel quality"),
    "seg": ("castvit.cli.eval_seg", "semantic segmentation mIoU of a fine-tuned model (ADE20K, Context, VOC)"),
    "voc-nn": ("castvit.cli.eval_voc_nn", "VOC segmentation without labels: nearest-neighbour retrieval (MoCo CAST)"),
    "partimagenet": ("castvit.cli.eval_partimagenet", "PartImageNet object / part segmentation named by CLIP"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, (module_name, help_text) in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(p)


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(args._module).run(args) or 0)
