"""Build a registered model, with its preprocessing config and optional weights.

``create_model`` is the one factory: by name (``"cast_small"``), by name and tag
(``"cast_small.moco_in1k"`` or ``pretrained="moco_in1k"``, fetched by
:mod:`castvit.models.hub`), or from a file (``pretrained="run/last.pth.tar"``), in which
case a castvit checkpoint brings its own architecture and preprocessing.

Every model it returns carries three attributes that nothing downstream has to guess:

* ``castvit_name``: the registry name;
* ``castvit_config``: the builder's keyword arguments;
* ``pretrained_cfg``: how images must be prepared for it (:func:`resolve_pretrained_cfg`).

This module sits above the registry and :mod:`castvit.checkpoint` (which knows no
model), so neither imports the other.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch.nn as nn

from castvit.checkpoint import CheckpointError, atomic_write, load_checkpoint, read_checkpoint
from castvit.models.registry import model_config, model_entry
from castvit.ops import IMAGENET_MEAN, IMAGENET_STD

FORMAT = "castvit/1"
# SEEDS settings of the authors' recipes (SPEC §6).
SEEDS_PRETRAIN = {"method": "seeds", "num_levels": 1, "prior": 2, "histogram_bins": 15, "num_iterations": 20}
SEEDS_FINETUNE = {"method": "seeds", "num_levels": 1, "prior": 2, "histogram_bins": 5, "num_iterations": 15}
PIXELS_PER_SUPERPIXEL = 256  # 224² / 196: the density every recipe trains at


def resolve_pretrained_cfg(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing a model built as ``create_model(name, **config)`` expects.

    Keys:
        ``input_size``: ``[H, W]`` the model works at (its ``img_size``; 512×512 crops
            for the segmentation variants);
        ``superpixels``: the tokenizer and its settings; ``n_segments`` is the count at
            ``input_size`` (196 at 224×224, SPEC §6) and ``pixels_per_superpixel`` the
            density that gives the count at any other working size;
        ``mean``, ``std``: RGB normalisation (ImageNet).

    Derived from the model's convention and task, then overridden by the registry
    entry's ``pretrained_cfg`` (and later by what a checkpoint stores).
    """
    entry = model_entry(name)
    cfg = default_preprocessing(config.get("img_size", 224), task=config.get("task", "cls"),
                                convention=config.get("convention", "moco"),
                                first_clusters=(config.get("num_clusters") or [0])[0])
    return merge_cfg(cfg, entry.pretrained_cfg)


def default_preprocessing(img_size: int | tuple[int, int], *, task: str = "cls", convention: str = "moco",
                          first_clusters: int = 0) -> dict[str, Any]:
    """The preprocessing config derived from a model's input size, task and convention
    (see :func:`resolve_pretrained_cfg` for the keys)."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))
    seg = task == "seg"
    sp = dict(SEEDS_FINETUNE if seg or convention == "deit" else SEEDS_PRETRAIN)
    if seg:
        h, w = 512, 512
    # The count follows the training density (one superpixel per 256 px, the 196 of a
    # 224² view), but a small model needs enough superpixels for its first pooling.
    sp["n_segments"] = max(int(round(h * w / PIXELS_PER_SUPERPIXEL)),
                           2 * int(first_clusters) if h * w < 224 * 224 else 0)
    sp["pixels_per_superpixel"] = PIXELS_PER_SUPERPIXEL
    return {"input_size": [h, w], "superpixels": sp, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def merge_cfg(base: dict[str, Any], update: dict[str, Any] | None) -> dict[str, Any]:
    """``base`` updated by ``update``, one level deep for the ``superpixels`` dict."""
    out = copy.deepcopy(base)
    for k, v in (update or {}).items():
        if k == "superpixels" and isinstance(v, dict):
            out.setdefault("superpixels", {}).update(v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def model_record(model: nn.Module) -> dict[str, Any]:
    """What rebuilds ``model`` without retyping its architecture: ``{"name", "config",
    "pretrained_cfg"}`` in plain JSON types. Stored in every castvit checkpoint (the
    ``castvit_model`` key of training containers, the metadata of ``.safetensors``)."""
    name = getattr(model, "castvit_name", None)
    cfg = getattr(model, "castvit_config", None)
    if name is None or cfg is None:
        raise ValueError("model_record needs a model built by castvit.create_model")
    return {"name": name, "config": _plain(cfg), "pretrained_cfg": _plain(getattr(model, "pretrained_cfg", {}) or {})}


def _build(name: str, overrides: dict[str, Any], pretrained_cfg: dict[str, Any] | None = None) -> nn.Module:
    entry = model_entry(name)
    cfg = model_config(name, **overrides)
    model = entry.builder(**cfg)
    model.castvit_name = name
    model.castvit_config = cfg
    model.pretrained_cfg = merge_cfg(resolve_pretrained_cfg(name, cfg), pretrained_cfg)
    return model


def create_model(name: str | None = None, *, pretrained: str | os.PathLike | bool | None = None,
                 **overrides: Any) -> nn.Module:
    """Build a registered model, optionally with weights.

    Args:
        name: a name from :func:`castvit.list_models`, optionally with a published tag
            (``"cast_small.moco_in1k"``, see :func:`castvit.list_pretrained`). May be
            omitted when ``pretrained`` is a castvit checkpoint, which names its model.
        pretrained: a published tag (``"moco_in1k"``; ``True`` takes the name's tag),
            fetched into the cache (:mod:`castvit.models.hub`); or a path to a castvit
            ``.safetensors`` file, a checkpoint written by ``castvit train``, or any
            container :func:`castvit.load_checkpoint` reads. Weights load strictly; a
            head that does not fit (a MoCo projector into a classifier) is replaced
            by a new one, with a warning.
        **overrides: constructor arguments, e.g. ``img_size``, ``embed_dim``, ``depth``
            (blocks per stage), ``num_heads``, ``num_clusters``, ``num_classes``,
            ``drop_path_rate``, ``mask_padded_tokens``.

    Returns:
        The model, in train mode as PyTorch builds it, with ``castvit_name``,
        ``castvit_config`` and ``pretrained_cfg`` set.
    """
    tag = None
    if name is not None and "." in name:
        name, tag = name.split(".", 1)
    if pretrained is True:
        if tag is None:
            raise ValueError("pretrained=True needs a tag in the name, e.g. 'cast_small.moco_in1k'")
        pretrained = tag
    elif tag is not None and pretrained is None:
        pretrained = tag
    elif tag is not None and pretrained not in (None, tag):
        raise ValueError(f"the name asks for tag {tag!r} but pretrained={pretrained!r}; give one of them")
    if pretrained in (None, False):
        if name is None:
            raise ValueError("create_model needs a model name (see castvit.list_models())")
        return _build(name, overrides)
    from castvit.models import hub

    if isinstance(pretrained, str) and not os.path.exists(pretrained) and hub.is_tag(name, pretrained):
        entry = hub.pretrained_entry(f"{name}.{pretrained}")
        path = hub.download_pretrained(entry.full_name)
        model = _build(name, overrides, entry.pretrained_cfg)
        load_checkpoint(model, path)
        model.pretrained_tag = entry.full_name
        return model
    if isinstance(pretrained, str) and not os.path.exists(pretrained) and name is not None \
            and os.sep not in pretrained and not pretrained.endswith((".pth", ".tar", ".safetensors", ".pt")):
        raise ValueError(f"{pretrained!r} is neither a file nor a published tag of {name!r}; "
                         f"tags: {', '.join(hub.tags_of(name)) or 'none'} (castvit.list_pretrained())")
    return load_pretrained(name, pretrained, **overrides)


def read_pretrained_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The castvit model record of a checkpoint file, or None for files without one.

    Looks in a ``.safetensors`` file's metadata, a ``castvit_model`` entry of a
    training container, then a JSON file of the same stem written by
    :func:`save_pretrained` (a JSON file that is not castvit's is ignored).
    """
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as fh:
                meta = fh.metadata() or {}
        except Exception as exc:  # safetensors' own error types
            raise CheckpointError(f"{str(path)!r} is not a readable safetensors file ({str(exc).splitlines()[0]}); "
                                  "the file is damaged or truncated: download or write it again") from None
        if "castvit" in meta:
            return _valid_record(json.loads(meta["castvit"]), path)
    elif path.is_file() and path.suffix in (".tar", ".pth", ".pt"):
        obj = read_checkpoint(path)
        if isinstance(obj, dict) and isinstance(obj.get("castvit_model"), dict):
            return _valid_record(obj["castvit_model"], path)
    side = path.with_suffix(".json")
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
        except ValueError:
            return None
        if isinstance(meta, dict) and meta.get("format") == FORMAT:
            return _valid_record(meta, side)
    return None


def _valid_record(meta: dict[str, Any], where: Path) -> dict[str, Any]:
    name = meta.get("model", meta.get("name"))
    if not isinstance(name, str) or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{str(where)!r} has a castvit model record without 'name'/'config'; "
                              "the file was not written by castvit or is damaged")
    return {"name": name, "config": meta["config"], "pretrained_cfg": meta.get("pretrained_cfg") or {}}


def load_pretrained(name: str | None, path: str | os.PathLike, **overrides: Any) -> nn.Module:
    """Build the model a checkpoint file describes (or ``name`` + ``overrides`` for a
    file without castvit's record) and load its weights strictly."""
    record = read_pretrained_config(path)
    if record is not None:
        if name is not None and record["name"] != name:
            raise CheckpointError(f"{str(path)!r} holds a {record['name']!r} model, not {name!r}; "
                                  "drop the model name to use the file's own")
        cfg = dict(record["config"])
        cfg.update(overrides)
        model = _build(record["name"], cfg, record["pretrained_cfg"])
    else:
        if name is None:
            raise CheckpointError(f"{str(path)!r} does not say which model it holds (it has no castvit record); "
                                  "pass the model name, e.g. create_model('cast_small', pretrained=...)")
        model = _build(name, overrides)
    load_checkpoint(model, path)
    return model


def save_pretrained(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save ``model`` as ``path`` (.safetensors, the model record in its metadata) and the
    record as JSON beside it; both written atomically."""
    from safetensors.torch import save_file

    try:
        record = model_record(model)
    except ValueError:
        raise CheckpointError("save_pretrained needs a model built by castvit.create_model") from None
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    meta = {"format": FORMAT, "model": record["name"], "config": record["config"],
            "pretrained_cfg": record["pretrained_cfg"]}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"castvit": json.dumps(meta)}))
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
    return path


def superpixel_count(pretrained_cfg: dict[str, Any], height: int, width: int) -> int:
    """Superpixels to request for an ``height×width`` working image: the trained count
    at ``input_size``, scaled by area at other sizes (one per ``pixels_per_superpixel``)."""
    sp = pretrained_cfg["superpixels"]
    h0, w0 = pretrained_cfg["input_size"]
    if (height, width) == (h0, w0) or "pixels_per_superpixel" not in sp:
        return int(sp["n_segments"])
    return max(1, int(round(sp["n_segments"] * height * width / (h0 * w0))))


__all__ = ["create_model", "load_pretrained", "model_record", "read_pretrained_config", "resolve_pretrained_cfg",
           "save_pretrained", "superpixel_count"]
