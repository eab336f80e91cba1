"""Model registry: names → builders, default arguments and preprocessing configs.

Building (and loading weights) is :mod:`castvit.models._builder`; published weights
are :mod:`castvit.models.hub`.
"""

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
    tags: tuple[str, ...] = field(default_factory=tuple)  # filter with list_models(tag=...)
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)  # preprocessing overrides


def register_model(name: str, builder: Callable[..., nn.Module], defaults: dict[str, Any], description: str,
                   official: str | None = None, tags: tuple[str, ...] = (),
                   pretrained_cfg: dict[str, Any] | None = None) -> None:
    """Add a model. ``pretrained_cfg`` overrides parts of the preprocessing config that
    :func:`castvit.models._builder.resolve_pretrained_cfg` derives from the model."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = ModelEntry(name, builder, dict(defaults), description, official, tuple(tags),
                                 dict(pretrained_cfg or {}))


def list_models(pattern: str | None = None, *, tag: str | None = None) -> list[str]:
    """Registered model names, sorted.

    Args:
        pattern: fnmatch filter such as ``'cast_*_seg'``.
        tag: keep models carrying this tag (``"cast"``, ``"vit"``, ``"seg"``, ``"moco"``,
            ``"deit"``, ``"baseline"`` …); an unknown tag is an error.
    """
    import fnmatch

    if tag is not None:
        known = sorted({t for e in _REGISTRY.values() for t in e.tags})
        if tag not in known:
            raise ValueError(f"unknown tag {tag!r}; tags in use: {', '.join(known)}")
    names = sorted(_REGISTRY)
    return [n for n in names if (pattern is None or fnmatch.fnmatch(n, pattern))
            and (tag is None or tag in _REGISTRY[n].tags)]


def model_entry(name: str) -> ModelEntry:
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
