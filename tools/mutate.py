#!/usr/bin/env python
"""Re-measure the mutation score: apply small deliberate bugs one at a time to a
temporary copy of the repository and check that the tests meant to pin each behaviour
fail.

    python tools/mutate.py                               # every mutant in tools/mutants/
    python tools/mutate.py tools/mutants/knn_*.patch     # some of them
    python tools/mutate.py --list                        # what each mutant breaks

A mutant is a unified diff (usually of one line) under ``tools/mutants/``. Lines before
its ``---`` header describe it::

    # Behaviour: the kNN monitor weights votes by exp(similarity / T)
    # Tests: tests/test_mutants_pinned.py::test_the_knn_monitor_weights_votes_by_exp_of_similarity_over_temperature

Hunks are located by their text, not their line numbers, so a mutant keeps applying
while the code around it moves; if the text is gone from the named file, the other
source files are searched (code that moved to another module), and a mutant whose text
is found nowhere is reported as stale rather than counted.

For each mutant the named tests first run on the clean copy (they must pass), then on
the mutated one: the mutant is *killed* if they fail, *survived* if they pass. The
working tree is never touched. Exit status 0 when every applied mutant is killed.
This script is not part of the test suite (it runs the suite's tests many times).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MUTANTS = REPO / "tools" / "mutants"
IGNORE = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", "*.egg-info", "runs", "*.pyc")


@dataclass
class Hunk:
    old: str
    new: str


@dataclass
class Mutant:
    path: Path
    name: str
    behaviour: str
    tests: list[str]
    target: str
    hunks: list[Hunk] = field(default_factory=list)


def parse(path: Path) -> Mutant:
    """Read a mutant: the ``# Behaviour:`` / ``# Tests:`` header and a one-file unified diff."""
    behaviour, tests, target = "", [], None
    hunks: list[Hunk] = []
    old: list[str] | None = None
    new: list[str] = []
    for line in path.read_text().splitlines():
        if old is None and target is None:
            if line.startswith("# Behaviour:"):
                behaviour = line.split(":", 1)[1].strip()
            elif line.startswith("# Tests:"):
                tests += line.split(":", 1)[1].split()
            elif line.startswith("--- "):
                continue
            elif line.startswith("+++ "):
                target = re.sub(r"^b/", "", line[4:].split("\t")[0].strip())
            continue
        if line.startswith("@@"):
            if old is not None:
                hunks.append(Hunk("".join(old), "".join(new)))
            old, new = [], []
            continue
        if old is None:
            continue
        body = line[1:] + "\n"
        if line.startswith("-"):
            old.append(body)
        elif line.startswith("+"):
            new.append(body)
        elif line.startswith(" ") or line == "":
            old.append(body)
            new.append(body)
        elif line.startswith("\\"):
            continue
    if old is not None:
        hunks.append(Hunk("".join(old), "".join(new)))
    if target is None or not hunks:
        raise ValueError(f"{path}: no '+++ b/FILE' header or no hunk")
    if not tests:
        raise ValueError(f"{path}: no '# Tests:' line naming the tests that pin it")
    return Mutant(path, path.stem, behaviour, tests, target, hunks)


def apply(mutant: Mutant, root: Path) -> tuple[Path, str]:
    """Apply ``mutant`` under ``root``; returns ``(file, original text)``. Raises
    ``LookupError`` when its text is nowhere (a stale mutant)."""
    candidates = [root / mutant.target]
    candidates += sorted(p for p in (root / "src").rglob("*.py") if p != candidates[0])
    candidates += sorted(p for p in (root / "tests").rglob("*.py") if p != candidates[0])
    for file in candidates:
        if not file.is_file():
            continue
        text = original = file.read_text()
        for hunk in mutant.hunks:
            if text.count(hunk.old) != 1:
                break
            text = text.replace(hunk.old, hunk.new)
        else:
            if text == original:
                raise LookupError(f"{mutant.path.name} changes nothing")
            file.write_text(text)
            return file, original
    raise LookupError(f"the text of {mutant.path.name} is in no file (stale: update the mutant)")


def run_tests(root: Path, tests: list[str], timeout: float) -> tuple[str, str]:
    """``("pass" | "skip" | "fail" | "timeout", output tail)`` of pytest on ``tests`` in
    ``root``; "skip" when a test did not run (a skipped test proves nothing)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("CASTVIT_FIXTURES", str(REPO.parent / "shared" / "fixtures" / "official"))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *tests]
    try:
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", ""
    lines = (done.stdout + done.stderr).strip().splitlines()
    tail = " | ".join(lines[-3:])
    if done.returncode != 0:
        return "fail", tail
    return ("skip" if re.search(r"\b\d+ skipped\b", lines[-1] if lines else "") else "pass"), tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mutants", nargs="*", type=Path, help="patch files (default: tools/mutants/*.patch)")
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests, run nothing")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per pytest run (default 900)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy and print where it is")
    args = parser.parse_args(argv)

    paths = args.mutants or sorted(MUTANTS.glob("*.patch"))
    mutants = [parse(p) for p in paths]
    if args.list:
        for m in mutants:
            print(f"{m.name}\n  {m.behaviour}\n  {m.target}\n  " + "\n  ".join(m.tests))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="castvit-mutants-"))
    root = tmp / REPO.name
    shutil.copytree(REPO, root, ignore=IGNORE)
    baseline: dict[tuple[str, ...], str] = {}
    results = []
    try:
        for m in mutants:
            key = tuple(m.tests)
            if key not in baseline:
                baseline[key], tail = run_tests(root, m.tests, args.timeout)
                if baseline[key] != "pass":
                    why = "skip (set CASTVIT_FIXTURES?)" if baseline[key] == "skip" else "do not pass"
                    print(f"  tests of {m.name} {why} unmutated ({tail}); not counted", flush=True)
            if baseline[key] != "pass":
                results.append((m, "baseline " + baseline[key], ""))
                continue
            try:
                file, original = apply(m, root)
            except LookupError as exc:
                results.append((m, "stale", str(exc)))
                print(f"{m.name:40s} stale: {exc}", flush=True)
                continue
            start = time.time()
            try:
                outcome, tail = run_tests(root, m.tests, args.timeout)
            finally:
                file.write_text(original)
            verdict = {"fail": "killed", "timeout": "killed (timeout)", "pass": "SURVIVED",
                       "skip": "skipped (not counted)"}[outcome]
            where = file.relative_to(root)
            moved = "" if str(where) == m.target else f" (found in {where})"
            results.append((m, verdict, moved))
            print(f"{m.name:40s} {verdict:16s} {time.time() - start:6.1f}s{moved}", flush=True)
    finally:
        if args.keep:
            print(f"copy kept in {root}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    counted = [r for r in results if r[1].startswith(("killed", "SURVIVED"))]  # stale/skipped: not counted
    killed = [r for r in counted if r[1].startswith("killed")]
    print(f"\n{len(killed)} of {len(counted)} mutants killed"
          + (f" ({100 * len(killed) / len(counted):.0f} %)" if counted else "")
          + (f"; {len(results) - len(counted)} not counted (stale, skipped or failing baseline)"
             if len(results) > len(counted) else ""))
    for m, verdict, _ in results:
        if not verdict.startswith("killed"):
            print(f"  {verdict}: {m.name} — {m.behaviour}")
    return 0 if counted and len(killed) == len(counted) and len(counted) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
