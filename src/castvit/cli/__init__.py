"""The ``castvit`` command line.

Every subcommand is one thin module in this package exposing ``add_arguments(parser)``
and ``run(args) -> int`` (the exit code). The work itself lives in the library
(``castvit.inference``, ``castvit.train``, ``castvit.eval`` …); this package only parses
arguments, calls it and prints. A subcommand's module is imported only when it runs,
so ``castvit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Keep the help short: it is a column in ``castvit --help``.
COMMANDS: dict[str, tuple[str, str]] = {
    "segment": ("castvit.cli.segment", "segment images into a nested hierarchy (overlays, label maps, JSON, viewer)"),
    "train": ("castvit.cli.train", "train from a YAML recipe (MoCo-v3, supervised, linear probe)"),
    "eval": ("castvit.cli.eval", "score models and segmentations on benchmarks"),
    "demo": ("castvit.cli.demo", "train a small CAST on synthetic scenes and score its hierarchy"),
    "models": ("castvit.cli.models", "list the registered models and published weights"),
    "convert": ("castvit.cli.convert", "convert a checkpoint to castvit's safetensors format"),
}

DESCRIPTION = """\
castvit: CAST vision transformers, whose tokens are superpixels and whose graph
pooling groups them into a nested segmentation hierarchy (64 > 32 > 16 > 8 segments)
in the same forward pass that recognises the image.

Run 'castvit COMMAND --help' for a command's options."""

EPILOG = """\
examples:
  castvit segment photo.jpg --model cast_small.moco_in1k --out seg/
  castvit train configs/moco_synthetic_cpu.yaml output_dir=runs/try
  castvit models 'cast_*'"""


def _version() -> str:
    from castvit import __version__

    return __version__


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="castvit", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"castvit {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        _top_parser().print_help()
        return 0
    if argv[0] == "--version":
        print(f"castvit {_version()}")
        return 0
    if argv[0] not in COMMANDS:
        _top_parser().error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
    module_name, help_text = COMMANDS[argv[0]]
    module = importlib.import_module(module_name)
    cmd = argparse.ArgumentParser(prog=f"castvit {argv[0]}", description=getattr(module, "DESCRIPTION", help_text),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(cmd)
    args = cmd.parse_args(argv[1:])
    return int(module.run(args) or 0)
