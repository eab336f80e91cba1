"""The authors' published weights, by name: ``create_model("cast_small.moco_in1k")``.

The files are the model zoo of the CAST release on Hugging Face (repository
``twke/CAST``). A file is fetched once into the cache and verified by sha256:

* cache folder: ``$CASTVIT_HOME`` if set, else ``<torch hub dir>/checkpoints/castvit``
  (``torch.hub.get_dir()``, i.e. ``~/.cache/torch/hub`` by default);
* a file already in the cache (put there by hand, e.g. on a machine without network)
  is used as it is;
* ``$CASTVIT_HUB_URL`` replaces the base URL (a mirror; ``file://`` URLs work);
* the sha256 of a file is checked against the table below when it is known, else
  recorded on the first download (``sha256.json`` in the cache) and checked on every
  later load, so a file that changes is refused.

The sizes are estimates from the parameter counts of what each container holds (the
MoCo containers carry both encoders, the predictor and AdamW's two moments); the
published sizes are recorded here once measured.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BASE_URL = "https://huggingface.co/twke/CAST/resolve/main/"


class PretrainedDownloadError(RuntimeError):
    """A published file could not be fetched or failed verification."""


@dataclass(frozen=True)
class PretrainedEntry:
    model: str  # registry name of the architecture the weights fit
    tag: str
    path: str  # path in the model zoo, relative to BASE_URL
    description: str
    size_mb: float  # estimated, see the module docstring
    sha256: str | None = None  # None until measured: recorded on first download
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # published results with these weights

    @property
    def full_name(self) -> str:
        return f"{self.model}.{self.tag}"

    @property
    def filename(self) -> str:
        return self.path.replace("/", "_")

    @property
    def url(self) -> str:
        return os.environ.get("CASTVIT_HUB_URL", BASE_URL).rstrip("/") + "/" + self.path


_MOCO_IN1K = "MoCo-v3 on ImageNet-1k, 100 epochs, batch 256"
_ENTRIES = [
    PretrainedEntry("cast_small", "moco_in1k", "snapshots/moco/imagenet1k/cast_small/checkpoint_0099.pth.tar",
                    f"CAST-S, {_MOCO_IN1K}", 290, metrics={"linear_probe_top1": 68.1}),
    PretrainedEntry("cast_small_deep", "moco_in1k",
                    "snapshots/moco/imagenet1k/cast_small_deep/checkpoint_0099.pth.tar",
                    f"CAST-SD, {_MOCO_IN1K}", 350, metrics={"linear_probe_top1": 69.1}),
    PretrainedEntry("cast_base", "moco_in1k", "snapshots/moco/imagenet1k/cast_base/checkpoint_0099.pth.tar",
                    f"CAST-B, {_MOCO_IN1K}", 880, metrics={"linear_probe_top1": 72.4}),
    PretrainedEntry("vit_conv_small_patch16", "moco_in1k",
                    "snapshots/moco/imagenet1k/vit_small/checkpoint_0099.pth.tar",
                    f"ViT-S/16 (conv stem), {_MOCO_IN1K}", 270, metrics={"linear_probe_top1": 67.9}),
    PretrainedEntry("vit_conv_base_patch16", "moco_in1k",
                    "snapshots/moco/imagenet1k/vit_base/checkpoint_0099.pth.tar",
                    f"ViT-B/16 (conv stem), {_MOCO_IN1K}", 860, metrics={"linear_probe_top1": 72.5}),
    PretrainedEntry("cast_small_seg_pretrain", "moco_coco_ep149",
                    "snapshots/moco/coco/cast_small/checkpoint_0149.pth.tar",
                    "CAST-S (block fusion), MoCo-v3 on COCO, 150 of 400 epochs: VOC nearest-neighbour segmentation",
                    290, metrics={"voc_nn_miou": 38.4}),
    PretrainedEntry("cast_small_seg_pretrain", "moco_coco_ep399",
                    "snapshots/moco/coco/cast_small/checkpoint_0399.pth.tar",
                    "CAST-S (block fusion), MoCo-v3 on COCO, 400 epochs: initialisation for VOC fine-tuning",
                    290, metrics={"voc_finetuned_miou": 67.6}),
    PretrainedEntry("cast_small_deit", "deit_in1k", "snapshots/deit/imagenet1k/cast_small/best_checkpoint.pth",
                    "CAST-S supervised on ImageNet-1k (DeiT recipe, 300 epochs)", 310,
                    metrics={"imagenet_top1": 80.4, "ade20k_miou": 43.1, "pascal_context_miou": 49.1}),
]
_BY_NAME = {e.full_name: e for e in _ENTRIES}


def list_pretrained(pattern: str | None = None) -> list[str]:
    """Published weights as ``model.tag`` names, sorted; ``pattern`` is an fnmatch filter."""
    return sorted(n for n in _BY_NAME if pattern is None or fnmatch.fnmatch(n, pattern))


def pretrained_entry(full_name: str) -> PretrainedEntry:
    if full_name not in _BY_NAME:
        import difflib

        close = difflib.get_close_matches(full_name, list(_BY_NAME), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; published: {', '.join(list_pretrained())}"
        raise ValueError(f"no published weights {full_name!r}{hint}")
    return _BY_NAME[full_name]


def tags_of(model: str | None) -> list[str]:
    return [e.tag for e in _ENTRIES if e.model == model]


def is_tag(model: str | None, tag: str) -> bool:
    return f"{model}.{tag}" in _BY_NAME


def cache_dir() -> Path:
    """Where published files are kept (see the module docstring)."""
    home = os.environ.get("CASTVIT_HOME")
    if home:
        return Path(home).expanduser()
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / "castvit"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _recorded(cache: Path) -> dict[str, str]:
    f = cache / "sha256.json"
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except ValueError:
        return {}


def _record(cache: Path, filename: str, digest: str) -> None:
    from castvit.checkpoint import atomic_write

    table = _recorded(cache)
    table[filename] = digest
    atomic_write(cache / "sha256.json", lambda tmp: Path(tmp).write_text(json.dumps(table, indent=2, sort_keys=True)))


def download_pretrained(full_name: str, *, progress: bool = True) -> Path:
    """The local path of a published file: from the cache, else downloaded into it.

    Raises:
        PretrainedDownloadError: offline or failed download (the message names the URL
            and the path to put the file at), or a sha256 mismatch.
    """
    entry = pretrained_entry(full_name)
    cache = cache_dir()
    dst = cache / entry.filename
    expected = entry.sha256 or _recorded(cache).get(entry.filename)
    if not dst.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        import torch.hub

        tmp = dst.with_name(dst.name + ".part")
        try:
            torch.hub.download_url_to_file(entry.url, str(tmp), progress=progress)
        except Exception as exc:
            if tmp.exists():
                tmp.unlink()
            raise PretrainedDownloadError(
                f"could not download {full_name} from {entry.url} ({type(exc).__name__}: {exc}). "
                f"Fetch that file on a machine with network access and put it at {dst} "
                f"(or set CASTVIT_HOME to the folder holding {entry.filename}, or pass the file's path as "
                "pretrained=...).") from None
        digest = _sha256(tmp)
        if expected is not None and digest != expected:
            tmp.unlink()
            raise PretrainedDownloadError(f"{entry.url} has sha256 {digest}, expected {expected}; the file was "
                                          "refused (a changed or corrupted upload). Nothing was kept.")
        os.replace(tmp, dst)
        if expected is None:
            _record(cache, entry.filename, digest)
        return dst
    digest = _sha256(dst)
    if expected is None:
        _record(cache, entry.filename, digest)
    elif digest != expected:
        raise PretrainedDownloadError(f"{dst} has sha256 {digest}, expected {expected} for {full_name}; the "
                                      "file is corrupted or was replaced. Delete it to download it again.")
    return dst
