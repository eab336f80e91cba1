"""``castvit models [PATTERN]``: the registered models, with their published weights."""

from __future__ import annotations

import argparse
import shutil
import textwrap


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default=None, help="fnmatch filter, e.g. 'cast_*_seg'")
    parser.add_argument("--pretrained", action="store_true",
                        help="list the published weights (name.tag) instead of the architectures")


def format_rows(rows: list[tuple[str, str]], width: int | None = None) -> str:
    """Two aligned columns; the second wraps under itself when the terminal is narrow."""
    width = width or shutil.get_terminal_size((100, 24)).columns
    first = max((len(a) for a, _ in rows), default=0) + 2
    room = max(20, width - first)
    lines = []
    for a, b in rows:
        wrapped = textwrap.wrap(b, room) or [""]
        lines.append(a.ljust(first) + wrapped[0])
        lines.extend(" " * first + w for w in wrapped[1:])
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from castvit.models import list_models, list_pretrained, model_entry

    if args.pretrained:
        from castvit.models.hub import pretrained_entry

        rows = []
        for name in list_pretrained(args.pattern):
            e = pretrained_entry(name)
            rows.append((name, f"{e.description} [{e.filename}, {e.size_mb:.0f} MB]"))
    else:
        rows = [(n, model_entry(n).description) for n in list_models(args.pattern)]
    print(format_rows(rows))
    return 0
