"""Checkpoints: the authors' containers (read safely) and castvit's own
safetensors + JSON format.

Published containers (SPEC §4), recognised by their keys:

========================  ==========================================================
MoCo pre-training         ``state_dict`` with ``module.base_encoder.`` (also
                          ``module.momentum_encoder.``, ``module.predictor.``)
linear probe              ``state_dict`` with ``module.``
DeiT                      ``model`` (+ ``model_ema``, argparse ``args``, …)
Segmenter                 ``model`` with ``encoder.`` / ``decoder.``
SPML                      ``embedding_model`` with ``vit_backbone.``
plain                     a flat ``{name: tensor}`` state dict
========================  ==========================================================

Files are read with ``torch.load(weights_only=True)``; the only extra type allowed
is ``argparse.Namespace`` (DeiT's ``args``). Anything else is refused with an error
that names it — nothing is unpickled silently.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

SAFE_GLOBALS = [argparse.Namespace]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


@dataclass
class LoadReport:
    container: str
    loaded: int
    dropped: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Read a checkpoint file without executing arbitrary pickled code.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)`` plus ``argparse.Namespace``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{str(path)!r} is not a readable safetensors file ({_first_line(exc)}); "
                                  "the file is damaged or truncated: download or write it again") from None
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = str(exc)
        blocked = re.findall(r"GLOBAL ([\w.]+)", msg)
        if blocked:
            raise CheckpointError(
                f"{str(path)!r} contains pickled objects of type {', '.join(sorted(set(blocked)))} that castvit "
                "will not unpickle, because unpickling can run arbitrary code. Save the weights alone "
                "(a state dict of tensors, or castvit convert on a machine that produced the file)."
            ) from None
        if "Weights only load failed" in msg or "pickle" in msg.lower() or "zip" in msg.lower() or not msg:
            cause = _first_line(exc.__cause__ or exc.__context__ or exc) if (exc.__cause__ or exc.__context__) \
                else type(exc).__name__
            raise CheckpointError(f"{str(path)!r} is not a PyTorch checkpoint castvit can read ({cause}); "
                                  "the file is damaged, truncated or of another format") from None
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    """The first line of an error's message, without torch's advice to unpickle unsafely."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if "weights_only" not in text else type(exc).__name__


def _strip(sd: Mapping[str, Any], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def extract_state_dict(obj: Any, *, use_ema: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """Find the encoder state dict inside any published container.

    Returns ``(state_dict, container_name)``.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"a checkpoint must be a dict, got {type(obj).__name__}")
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        sd = obj["state_dict"]
        if any(k.startswith("module.base_encoder.") for k in sd):
            return _strip(sd, "module.base_encoder."), "moco"
        if any(k.startswith("base_encoder.") for k in sd):
            return _strip(sd, "base_encoder."), "moco"
        if all(k.startswith("module.") for k in sd):
            return _strip(sd, "module."), "linear_probe"
        return dict(sd), "state_dict"
    if "model" in obj and isinstance(obj["model"], Mapping):
        sd = obj["model"]
        if use_ema:
            if not isinstance(obj.get("model_ema"), Mapping):
                raise CheckpointError("use_ema=True but the checkpoint has no 'model_ema' entry")
            sd = obj["model_ema"]
        if any(k.startswith("encoder.") for k in sd):
            return _strip(sd, "encoder."), "segmenter"
        return dict(sd), "deit"
    if "embedding_model" in obj and isinstance(obj["embedding_model"], Mapping):
        sd = obj["embedding_model"]
        pre = next((k[: k.index("vit_backbone.") + len("vit_backbone.")] for k in sd if "vit_backbone." in k), None)
        if pre is None:
            raise CheckpointError("SPML checkpoint without 'vit_backbone.' keys")
        return _strip(sd, pre), "spml"
    if obj and all(torch.is_tensor(v) for v in obj.values()):
        sd = dict(obj)
        if all(k.startswith("module.") for k in sd):
            return _strip(sd, "module."), "state_dict"
        return sd, "state_dict"
    keys = ", ".join(list(obj)[:8])
    raise CheckpointError(f"unrecognised checkpoint container with top-level keys [{keys}]; expected one of "
                          "'state_dict' (MoCo / linear probe), 'model' (DeiT / Segmenter), 'embedding_model' "
                          "(SPML) or a plain state dict")


_ALIAS = re.compile(r"^blocks([1-4])\.(\d+)\.(.*)$")
_FLAT = re.compile(r"^blocks\.(\d+)\.(.*)$")


def _stage_bounds(model: nn.Module) -> list[tuple[int, int]] | None:
    return getattr(model, "_stage_bounds", None)


def adapt_block_keys(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map block names between the flat ``blocks.N`` layout (classification models and
    DeiT-seg) and the per-stage ``blocksK.i`` layout (MoCo segmentation models).

    Alias groups ``blocksK.N`` of flat checkpoints (same tensors as ``blocks.N``)
    are accepted with or without ``blocks.N``.
    """
    own = model.state_dict().keys()
    model_flat = any(k.startswith("blocks.") for k in own)
    ckpt_flat = any(_FLAT.match(k) for k in sd)
    bounds = _stage_bounds(model)
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m_alias = _ALIAS.match(k)
        if m_alias and ckpt_flat:
            # alias of blocks.N (global index): keep only if blocks.N itself is absent
            n = int(m_alias.group(2))
            if f"blocks.{n}.{m_alias.group(3)}" in sd:
                continue
            k = f"blocks.{n}.{m_alias.group(3)}"
        elif m_alias and model_flat and bounds is not None:
            # per-stage checkpoint into a flat model. Flat-model aliases use global
            # indices, per-stage ones local indices: tell them apart by range.
            stage, i = int(m_alias.group(1)) - 1, int(m_alias.group(2))
            a, b = bounds[stage]
            n = i if a <= i < b and f"blocks{stage + 1}.0.{m_alias.group(3)}" not in sd else a + i
            k = f"blocks.{n}.{m_alias.group(3)}"
        m_flat = _FLAT.match(k)
        if m_flat and not model_flat and bounds is not None:
            n = int(m_flat.group(1))
            stage = next((s for s, (a, b) in enumerate(bounds) if a <= n < b), None)
            if stage is not None:
                k = f"blocks{stage + 1}.{n - bounds[stage][0]}.{m_flat.group(2)}"
        out[k] = v
    return out


def _fit_pos_embed(sd: dict[str, torch.Tensor], model: nn.Module, notes: list[str]) -> None:
    if "pos_embed" not in sd or not hasattr(model, "pos_embed"):
        return
    src, dst = sd["pos_embed"], model.pos_embed
    if src.shape == dst.shape:
        return
    if src.ndim != 3 or src.shape[-1] != dst.shape[-1]:
        return  # reported as mis-shaped
    if not dst.requires_grad:
        # A fixed sin-cos table is a function of the grid: keep the model's exact one.
        del sd["pos_embed"]
        notes.append(f"pos_embed {tuple(src.shape)} -> model's own sin-cos table {tuple(dst.shape)}")
        return
    extra = dst.shape[1] - model.grid_size[0] * model.grid_size[1]
    n_src = src.shape[1] - extra
    side = int(round(n_src ** 0.5))
    if side * side != n_src:
        return
    grid = src[:, extra:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=model.grid_size, mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, src.shape[-1]).to(src.dtype)
    sd["pos_embed"] = torch.cat([src[:, :extra], grid], dim=1)
    notes.append(f"pos_embed interpolated bicubically {side}x{side} -> {model.grid_size[0]}x{model.grid_size[1]}")


def load_checkpoint(model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any], *,
                    strict: bool = True, use_ema: bool = False, reset_head: str = "auto") -> LoadReport:
    """Load weights from any published container (or castvit file) into ``model``.

    Args:
        model: a castvit model.
        checkpoint: a path or an already-loaded container / state dict.
        strict: raise :class:`CheckpointError` listing missing, unexpected and
            mis-shaped keys if anything else does not fit.
        use_ema: for DeiT checkpoints, load ``model_ema`` instead of ``model``.
        reset_head: ``"auto"`` drops checkpoint ``head.*`` weights that do not fit the
            model's head (e.g. a MoCo projector into a classifier, or another number
            of classes) and keeps the model's freshly initialised head; ``"never"``
            treats them as a mismatch; ``"always"`` ignores the checkpoint head.
    """
    if reset_head not in ("auto", "never", "always"):
        raise ValueError(f"reset_head must be 'auto', 'never' or 'always', got {reset_head!r}")
    obj = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    sd, container = extract_state_dict(obj, use_ema=use_ema)
    if container == "segmenter" and any(k.startswith("encoder.") for k in model.state_dict()):
        # a whole segmentation model (encoder + decoder) takes the container as it is
        sd, container = dict(obj["model"]), "segmenter (encoder + decoder)"
    sd = adapt_block_keys(sd, model)
    report = LoadReport(container=container, loaded=0)
    _fit_pos_embed(sd, model, report.notes)
    own = model.state_dict()

    ckpt_head = [k for k in sd if k.startswith("head.")]
    own_head = [k for k in own if k.startswith("head.")]
    head_fits = sorted(ckpt_head) == sorted(own_head) and all(sd[k].shape == own[k].shape for k in ckpt_head)
    if reset_head == "always" or (reset_head == "auto" and ckpt_head and not head_fits):
        for k in ckpt_head:
            del sd[k]
        report.dropped += ckpt_head
        report.reinitialised += own_head
        if own_head:
            report.notes.append("checkpoint head does not fit the model; the model keeps its new head")
            if ckpt_head and reset_head == "auto":
                shapes = ", ".join(f"{k} {tuple(own[k].shape)}" for k in own_head if k.endswith("weight"))
                warnings.warn(f"the {container} checkpoint's head ({len(ckpt_head)} tensors) does not fit this "
                              f"model's head ({shapes}); the head is newly initialised, train it before use "
                              "(reset_head='never' makes this an error)", UserWarning, stacklevel=3)
    allowed_missing = set(report.reinitialised)
    if "pos_embed" not in sd and any("pos_embed" in n for n in report.notes):
        allowed_missing.add("pos_embed")

    missing = [k for k in own if k not in sd and k not in allowed_missing]
    unexpected = [k for k in sd if k not in own]
    misshaped = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in sd if k in own and sd[k].shape != own[k].shape]
    if strict and (missing or unexpected or misshaped):
        def fmt(title, items):
            if not items:
                return ""
            more = f" … and {len(items) - 20} more" if len(items) > 20 else ""
            return f"\n  {title} ({len(items)}): " + ", ".join(items[:20]) + more
        raise CheckpointError(
            f"{container} checkpoint does not fit model {getattr(model, 'castvit_name', type(model).__name__)!r}"
            + fmt("missing", missing) + fmt("unexpected", unexpected) + fmt("mis-shaped", misshaped)
            + "\n  Check the model name and overrides (embed_dim, depth, num_classes, img_size); in Python, "
              "load_checkpoint(model, path, strict=False) loads what fits.")
    fit = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(fit, strict=False)
    report.loaded = len(fit)
    if not strict:
        report.dropped += [k for k in sd if k not in fit]
    return report


# --------------------------------------------------------------- castvit format
def atomic_write(path: str | os.PathLike, write_fn) -> None:
    """Write through ``write_fn(tmp_path)`` to a temp file in the same folder, fsync,
    then rename over ``path``: a crash leaves the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; give the usual mode
    try:
        write_fn(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(str(path.parent), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
