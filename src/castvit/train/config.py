"""YAML recipes: loading, ``_base_`` inheritance, ``key=value`` overrides, validation.

A recipe file has five sections::

    recipe: moco                 # moco | supervised | linear_probe
    output_dir: runs/moco_in1k   # checkpoints, metrics.jsonl, config.yaml
    device: auto                 # auto | cpu | cuda
    model:                       # castvit.create_model(name, **kwargs)
      name: cast_small
      kwargs: {drop_path_rate: 0.0}
      pretrained: null           # checkpoint loaded with castvit.load_checkpoint
    data:
      kind: imagefolder          # imagefolder (ImageNet layout) | images (COCO) | synthetic
      train: /data/imagenet/train
      val: /data/imagenet/val    # optional; kNN monitor for MoCo, accuracy otherwise
      ...                        # see castvit.train.build
    train:                       # fields of MoCoConfig / SupervisedConfig / LinearProbeConfig
      epochs: 100
      ...

``_base_: other.yaml`` (relative to the file) is loaded first and the file's keys are
merged over it. Overrides on the command line use dotted keys and YAML values:
``train.epochs=2 data.train=/tmp/x model.kwargs.img_size=64 train.grad_clip=null``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
from pathlib import Path
from typing import Any

import yaml

RECIPES = ("moco", "supervised", "linear_probe", "segmentation")
TOP_LEVEL = ("recipe", "output_dir", "device", "model", "data", "train")
DATA_KEYS = ("kind", "train", "val", "classes", "image_size", "train_size", "val_size", "seed", "scene",
             "superpixels", "eval_superpixels", "train_view", "eval_view", "knn_memory", "knn_memory_size",
             "val_batch_size", "repeated_aug", "device_augment")
# Keys that only mean something for some data kinds or recipes: anywhere else they would
# be read by nobody, so a value there is refused rather than silently ignored.
SYNTHETIC_ONLY = ("train_size", "val_size", "seed", "scene")
FOLDER_ONLY = ("train", "val", "classes", "knn_memory")
LABELLED_ONLY = ("val", "classes", "knn_memory", "knn_memory_size")
MOCO_ONLY = ("knn_memory", "knn_memory_size")
MODEL_KEYS = ("name", "kwargs", "pretrained", "num_classes")


class ConfigError(ValueError):
    """A recipe file or override that does not make sense."""


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


class _Loader(yaml.SafeLoader):
    """YAML as PyYAML's safe loader reads it, except that ``2e-3`` is the float everyone
    means (YAML 1.2) rather than a string (YAML 1.1 wants ``2.0e-3``)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 — a SafeLoader subclass


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe, resolving ``_base_`` chains."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"_base_ cycle: {' -> '.join(str(p) for p in _seen + (path,))}")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    data = _load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    base = data.pop("_base_", None)
    if base is not None:
        data = deep_merge(read_yaml(path.parent / base, _seen + (path,)), data)
    return data


def apply_overrides(cfg: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a copy of ``cfg``."""
    out = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.epochs=2)")
        key, raw = item.split("=", 1)
        try:
            value = _load(raw) if raw != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot parse the value of override {item!r}: {exc}") from exc
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return out


def _check_keys(section: str, given: dict[str, Any], allowed: tuple[str, ...] | list[str]) -> None:
    for k in given:
        if k not in allowed:
            close = difflib.get_close_matches(k, list(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(allowed)}"
            raise ConfigError(f"unknown key {section}.{k}{hint}")


def recipe_config_class(recipe: str):
    if recipe == "moco":
        from castvit.train.moco import MoCoConfig

        return MoCoConfig
    if recipe == "supervised":
        from castvit.train.supervised import SupervisedConfig

        return SupervisedConfig
    if recipe == "linear_probe":
        from castvit.train.linear_probe import LinearProbeConfig

        return LinearProbeConfig
    if recipe == "segmentation":
        from castvit.train.segmentation import SegmentationConfig

        return SegmentationConfig
    raise ConfigError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")


def make_dataclass(cls, values: dict[str, Any], section: str):
    """Build dataclass ``cls`` from ``values``, rejecting unknown keys by name and
    turning lists into tuples where the field is a tuple."""
    names = [f.name for f in dataclasses.fields(cls)]
    _check_keys(section, values, names)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            v = values[f.name]
            if isinstance(v, list) and "tuple" in str(f.type):
                v = tuple(v)
            kwargs[f.name] = v
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid {section}: {exc}") from exc


def resolve(cfg: dict[str, Any]) -> dict[str, Any]:
    """Validate a merged config and fill every default, so what is saved beside the
    checkpoints is the complete recipe."""
    cfg = copy.deepcopy(cfg)
    _check_keys("config", cfg, TOP_LEVEL)
    recipe = cfg.get("recipe")
    cls = recipe_config_class(recipe)
    cfg.setdefault("output_dir", f"runs/{recipe}")
    cfg.setdefault("device", "auto")
    model = cfg.setdefault("model", {})
    _check_keys("model", model, MODEL_KEYS)
    if not model.get("name"):
        raise ConfigError("model.name is required (see `castvit models`)")
    model.setdefault("kwargs", {})
    model.setdefault("pretrained", None)
    data = cfg.setdefault("data", {})
    if recipe == "segmentation":  # its data keys: castvit.train.segmentation
        from castvit.train.segmentation import check_data

        try:
            check_data(data)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    else:
        _check_data(data, recipe, model)
    train = make_dataclass(cls, cfg.get("train") or {}, "train")
    if train.batch_size is None:
        raise ConfigError("train.batch_size (the global batch over all processes) is required")
    _check_device_path(recipe, data, model, train)
    cfg["train"] = dataclasses.asdict(train)
    return cfg


def _check_data(data: dict[str, Any], recipe: str, model: dict[str, Any]) -> None:
    """The ``data`` section of the classification recipes (and ``model.num_classes``):
    known keys, and none that this kind of data or this recipe would not read."""
    _check_keys("data", data, DATA_KEYS)
    kind = data.get("kind")
    if kind not in ("imagefolder", "images", "synthetic"):
        raise ConfigError(f"data.kind must be imagefolder, images or synthetic, got {kind!r}")
    _refuse_set(data, SYNTHETIC_ONLY if kind != "synthetic" else FOLDER_ONLY, f"data.kind {kind}")
    if kind == "images":
        _refuse_set(data, LABELLED_ONLY, "data.kind images (unlabelled: no validation, no kNN monitor)")
    if recipe != "moco":
        _refuse_set(data, MOCO_ONLY, f"the {recipe} recipe (the kNN monitor is MoCo's)")
    if recipe == "moco" and model.get("num_classes") is not None:
        raise ConfigError("model.num_classes has no meaning for moco: the encoder's head becomes the projector "
                          "(its width is train.dim); set it in the linear probe's recipe")


def _check_device_path(recipe: str, data: dict[str, Any], model: dict[str, Any], train: Any) -> None:
    """``data.device_augment``, ``data.superpixels.method: slic_torch`` and
    ``train.compile``: the combinations that cannot work, refused with the fix."""
    device_augment = data.get("device_augment")
    if device_augment not in (None, True, False):
        raise ConfigError(f"data.device_augment must be true or false, got {device_augment!r}")
    if recipe == "linear_probe":
        if device_augment:
            raise ConfigError("data.device_augment serves the moco, supervised and segmentation recipes; the linear "
                              "probe's views stay in the loader workers: remove data.device_augment")
        if train.compile:
            raise ConfigError("train.compile serves the moco, supervised and segmentation recipes (the linear probe "
                              "runs a frozen encoder): remove train.compile")
        return
    if not train.compile:
        return
    method = dict(data.get("superpixels") or {}).get("method", "seeds")
    kwargs = dict(model.get("kwargs") or {})
    given = kwargs.get("encoder_kwargs", {}).get("max_tokens") if recipe == "segmentation" else kwargs.get(
        "max_tokens")
    if method in ("seeds", "slic") and given is None:
        where = "model.kwargs.encoder_kwargs.max_tokens" if recipe == "segmentation" else "model.kwargs.max_tokens"
        raise ConfigError(f"train.compile needs a fixed token count, and data.superpixels.method {method!r} gives no "
                          f"bound on the superpixels per image; set data.superpixels.method: slic_torch (at most "
                          f"n_segments ids per image) or {where} (above the most superpixels an image gets)")


def _refuse_set(section: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    given = [k for k in keys if section.get(k) is not None]
    if given:
        raise ConfigError(f"data.{given[0]} is not used with {where}; remove it (or set it to null)")


def load_config(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read, override and resolve a recipe file."""
    return resolve(apply_overrides(read_yaml(path), overrides or []))
