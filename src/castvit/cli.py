"""The ``castvit`` command. Each subcommand lives in the module that owns its work and
exposes ``add_arguments(parser)`` and ``run(args) -> int`` (the exit code); this file
only dispatches, importing a subcommand's module when it is used."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "demo": ("castvit.demo", "train a small CAST on synthetic scenes by classification and score its hierarchy"),
    "train": ("castvit.train.command", "train from a YAML recipe (MoCo-v3, supervised, linear probe)"),
    "segment": ("castvit.viz.command", "segment images into a hierarchy; write overlays, label maps, JSON, viewer"),
    "models": ("castvit.cli", "list the registered models"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default=None, help="fnmatch filter, e.g. 'cast_*_seg'")


def run(args: argparse.Namespace) -> int:
    from castvit.models.registry import list_models, model_entry

    for name in list_models(args.pattern):
        print(f"{name:32s} {model_entry(name).description}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="castvit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.print_help() if (not argv or argv[0] in ("-h", "--help")) else parser.error(
            f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module_name, help_text = COMMANDS[argv[0]]
    module = importlib.import_module(module_name)
    cmd = argparse.ArgumentParser(prog=f"castvit {argv[0]}", description=help_text)
    module.add_arguments(cmd)
    args = cmd.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
