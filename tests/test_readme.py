"""Every Python block of the README runs as written.

A block may be preceded by a marker comment that shrinks it for the test, e.g.
``<!-- readme-test: replace "epochs=10" "epochs=1" -->`` (the README keeps the real
values). Published weights the blocks name get a local stand-in: a MoCo container made
from a randomly initialised model, placed in a temporary cache, which is exactly where a
user without network puts the real file.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import pytest
import torch

import castvit
from castvit.models import hub

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"((?:<!-- readme-test:[^>]*-->\n)*)```python\n(.*?)```", re.S)
REPLACE = re.compile(r'replace "([^"]*)" "([^"]*)"')


def readme_blocks() -> list[tuple[int, str]]:
    text = README.read_text()
    out = []
    for m in BLOCK.finditer(text):
        code = m.group(2)
        for old, new in REPLACE.findall(m.group(1)):
            assert old in code, f"README marker replaces {old!r}, which the block does not contain"
            code = code.replace(old, new)
        out.append((text[:m.start()].count("\n") + 1, code))
    return out


def _stand_in(cache: Path, full_name: str) -> None:
    entry = hub.pretrained_entry(full_name)
    torch.manual_seed(0)
    model = castvit.create_model(entry.model)
    sd = {f"module.base_encoder.{k}": v for k, v in model.state_dict().items() if not k.startswith("head.")}
    sd["module.base_encoder.head.0.weight"] = torch.zeros(32, model.embed_dim)  # the MoCo projector
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 100, "arch": entry.model, "state_dict": sd}, cache / entry.filename)


def test_the_readme_has_python_blocks():
    assert len(readme_blocks()) >= 3


@pytest.mark.parametrize("line,code", readme_blocks(), ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_readme_block_runs(line, code, tmp_path, monkeypatch):
    matplotlib.use("Agg")
    cache = tmp_path / "cache"
    monkeypatch.setenv("CASTVIT_HOME", str(cache))
    monkeypatch.setenv("CASTVIT_HUB_URL", (tmp_path / "offline").as_uri())
    for name in set(re.findall(r"[\w]+\.(?:moco_in1k|moco_coco_ep\d+|deit_in1k)", code)):
        _stand_in(cache, name)
    monkeypatch.chdir(tmp_path)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a stand-in's projector head does not fit a classifier
        exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
    import matplotlib.pyplot as plt

    plt.close("all")
