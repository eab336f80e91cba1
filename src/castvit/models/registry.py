"""Model registry: every variant is built by name with ``create_model``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn

_REGISTRY: dict[str, "ModelEntry"] = {}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    defaults: dict[str, Any]
    description: str
    official: str | None = None  # the authors' factory this variant is compatible with
    tags: tuple[str, ...] = field(default_factory=tuple)


def register_model(name: str, builder: Callable[..., nn.Module], defaults: dict[str, Any], description: str,
                   official: str | None = None, tags: tuple[str, ...] = ()) -> None:
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = ModelEntry(name, builder, dict(defaults), description, official, tags)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` is an fnmatch filter such as ``'cast_*_seg'``."""
    import fnmatch

    _ensure_registered()
    names = sorted(_REGISTRY)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def model_entry(name: str) -> ModelEntry:
    _ensure_registered()
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see castvit.list_models()"
        raise ValueError(f"unknown model {name!r}{hint}")
    return _REGISTRY[name]


def model_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The keyword arguments ``create_model(name, **overrides)`` passes to the builder."""
    entry = model_entry(name)
    cfg = dict(entry.defaults)
    cfg.update(overrides)
    return cfg


def create_model(name: str, *, pretrained: str | None = None, **overrides: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`.
        pretrained: optional path to a castvit ``.safetensors`` file (its JSON config
            beside it, or embedded) or to any checkpoint :func:`castvit.load_checkpoint`
            understands; its weights are loaded strictly.
        **overrides: constructor arguments, e.g. ``img_size``, ``embed_dim``, ``depth``
            (blocks per stage), ``num_heads``, ``num_clusters``, ``num_classes``,
            ``drop_path_rate``, ``pool_num_heads``, ``mask_padded_tokens``.
    """
    entry = model_entry(name)
    cfg = model_config(name, **overrides)
    if pretrained is not None:
        from castvit.checkpoint import load_pretrained

        return load_pretrained(name, pretrained, **overrides)
    model = entry.builder(**cfg)
    model.castvit_name = name
    model.castvit_config = cfg
    return model


def model_record(model: nn.Module) -> dict[str, Any]:
    """What rebuilds ``model`` without retyping its architecture: ``{"name", "config",
    "pretrained_cfg"}`` (plain JSON types). Stored in every castvit checkpoint (the
    ``castvit_model`` key of training containers, the metadata of ``.safetensors``)."""
    import json

    name = getattr(model, "castvit_name", None)
    cfg = getattr(model, "castvit_config", None)
    if name is None or cfg is None:
        raise ValueError("model_record needs a model built by castvit.create_model")
    plain = json.loads(json.dumps(cfg, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
    return {"name": name, "config": plain, "pretrained_cfg": dict(getattr(model, "pretrained_cfg", {}) or {})}


def _ensure_registered() -> None:
    if not _REGISTRY:
        from castvit.models import variants  # noqa: F401  (registers on import)
