"""The training loop every recipe shares: epochs and steps, logging, checkpoints, resume.

A recipe (:class:`Recipe`: supervised, MoCo-v3, linear probe) owns its model,
optimizer and loss and says how to take one step, how to evaluate and how to pack its
state into the authors' checkpoint container. :func:`fit` does the rest:

* per-step seeding: before step ``g`` (counted over the whole run) the torch generator
  is seeded from ``(seed, rank, g)``, so dropout and drop path depend on the step, not
  on the history of the process; data order and augmentation are seeded per sample by
  the loader (:mod:`castvit.data.datasets`). Together they make a resumed run — even
  one resumed from the middle of an epoch — continue bit for bit on CPU.
* checkpoints ``last.pth.tar`` (every ``checkpoint_every_steps`` steps and at every
  epoch end), ``best.pth.tar`` (best epoch by the recipe's monitored metric) and, with
  ``keep_epoch_checkpoints``, ``checkpoint_%04d.pth.tar`` numbered as the authors number
  them: by the 0-based epoch just finished, so a 100-epoch run ends with
  ``checkpoint_0099``. Written atomically by rank 0; each holds the recipe's container
  (model, optimizer, scaler, schedule…), ``castvit_model`` (the record that rebuilds the
  model: :func:`castvit.models.model_record`, with the preprocessing the run trained
  with in its ``pretrained_cfg``) and a ``castvit`` entry with the epoch, step, every
  rank's RNG states, the running epoch meters, the history and the resolved config.
* feedback: a tqdm bar on rank 0, ``metrics.jsonl`` (one JSON record per logged step
  and per epoch; cut back to the checkpoint on resume), optional TensorBoard, and
  ``config.yaml`` with the resolved configuration.
"""

from __future__ import annotations

import inspect
import json
import math
import random
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from castvit.checkpoint import atomic_write, read_checkpoint
from castvit.train import distributed as D

CHECKPOINT_FORMAT = "castvit-train/1"
LAST = "last.pth.tar"
BEST = "best.pth.tar"


@dataclass
class LoopConfig:
    """Settings shared by every recipe.

    Attributes:
        epochs: number of passes over the training set.
        batch_size: global batch over all processes (each takes ``batch_size /
            world_size``). ``castvit train`` builds its loaders with it; with loaders of
            your own leave it None (the loader's ``batch_size × world_size`` is used) or
            give that very number: any other value is an error, not a silent no-op.
        seed: seeds the model's initialisation (``castvit train``), the data order, every
            augmentation and the per-step generator.
        num_workers: loader processes per training process (``castvit train``'s loaders).
        amp_bf16: run forward passes under bfloat16 autocast (castvit's default AMP).
        amp_fp16: float16 autocast with a GradScaler, the authors' AMP (MoCo-v3's
            ``torch.cuda.amp``, DeiT's ``NativeScaler``); not with ``amp_bf16``.
        grad_clip: clip the global gradient norm to this (None: no clipping).
        log_every: write a step record (and update the bar) every this many steps.
        checkpoint_every_steps: also save ``last`` every this many steps inside an
            epoch (0: only at epoch ends).
        keep_epoch_checkpoints: keep ``checkpoint_%04d.pth.tar`` of every epoch.
        eval_every: evaluate every this many epochs (and after the last).
        tensorboard: also log to TensorBoard (needs the ``tensorboard`` package).
        compile: run the training forward through
            :func:`castvit.models.cast.compile_model` (``torch.compile``, one graph, the
            static-shape ``max_tokens`` mode). ``max_tokens`` is the model's when it was
            built with one, else the most superpixel ids the training view can give
            (``slic_torch``: ``n_segments``, plus one for random erasing, doubled under
            cutmix); SEEDS gives no such bound, so with SEEDS build the model with
            ``max_tokens``. Not for the linear probe.
    """

    epochs: int = 1
    batch_size: int | None = None
    seed: int = 0
    num_workers: int = 4
    amp_bf16: bool = False
    amp_fp16: bool = False
    grad_clip: float | None = None
    log_every: int = 20
    checkpoint_every_steps: int = 0
    keep_epoch_checkpoints: bool = False
    eval_every: int = 1
    tensorboard: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.amp_bf16 and self.amp_fp16:
            raise ValueError("amp_bf16 and amp_fp16 are exclusive; pick one autocast dtype")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (or None: the loader's), got {self.batch_size}")


class Recipe:
    """What :func:`fit` needs from a training recipe."""

    name: str = "recipe"
    monitor: str | None = None  # epoch-record key that decides the best checkpoint
    monitor_mode: str = "max"
    record_model: torch.nn.Module | None = None  # the model ``castvit_model`` describes

    def on_epoch_start(self, epoch: int) -> None:
        """Put modules in the right mode before the epoch's first step."""

    def train_step(self, batch: dict[str, Any], *, epoch: int, step: int, t: float
                   ) -> tuple[dict[str, torch.Tensor], int, dict[str, float]]:
        """One optimisation step. Returns ``(metrics, count, scalars)``: per-sample
        averages over the local batch (0-d tensors, averaged over the epoch weighted
        by ``count``), the local batch size, and schedule values to log (lr, …)."""
        raise NotImplementedError

    def evaluate(self, epoch: int) -> dict[str, float]:
        return {}

    def container(self, next_epoch: int) -> dict[str, Any]:
        """The checkpoint container in the authors' layout (CPU tensors and plain
        values); ``next_epoch`` is the epoch a resumed run starts (or continues)."""
        raise NotImplementedError

    def load_container(self, ckpt: dict[str, Any]) -> int | None:
        """Restore from a container; return the epoch to start at (used for published
        containers, which carry no castvit loop state)."""
        raise NotImplementedError

    def model_record(self) -> dict[str, Any] | None:
        """:func:`castvit.models.model_record` of :attr:`record_model` (None for a model
        not built by ``castvit.create_model``)."""
        if self.record_model is None or getattr(self.record_model, "castvit_name", None) is None:
            return None
        from castvit.models import model_record

        return model_record(self.record_model)


@dataclass
class LoopState:
    epoch: int = 0  # the epoch in progress (or the next one to start)
    step: int = 0  # steps done in that epoch
    global_step: int = 0
    best: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def to_plain(obj: Any) -> Any:
    """Dataclasses, tuples and paths → JSON/YAML-friendly values."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return to_plain(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return obj


# ------------------------------------------------------------------ RNG states


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) generator states, as values that
    ``torch.load(weights_only=True)`` reads back."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_seed(seed: int, rank: int, global_step: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(rank), int(global_step), 7]).generate_state(1)[0])


# ----------------------------------------------------------------------- output


class MetricsWriter:
    """``metrics.jsonl`` plus optional TensorBoard, on rank 0 only."""

    def __init__(self, out_dir: Path | None, tensorboard: bool, resume_step: int | None):
        self.path = out_dir / "metrics.jsonl" if out_dir is not None else None
        self.tb = None
        if self.path is None or not D.is_main_process():
            self.path = None
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            # Records written after the checkpoint were made by steps that will run again.
            keep = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("global_step", 0) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn("tensorboard=True but the tensorboard package is not installed "
                              "(pip install 'castvit[tensorboard]'); logging to metrics.jsonl only", stacklevel=2)
            else:
                self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step)

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(to_plain(record)) + "\n")
        if self.tb is not None:
            prefix = "epoch" if record.get("kind") == "epoch" else "step"
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step", "global_step"):
                    self.tb.add_scalar(f"{prefix}/{k}", v, record["global_step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def save_config(out_dir: Path, config: dict[str, Any]) -> None:
    import yaml

    text = yaml.safe_dump(to_plain(config), sort_keys=False)
    atomic_write(out_dir / "config.yaml", lambda tmp: Path(tmp).write_text(text))


def find_checkpoint(out_dir: Path | None, resume: bool | str | Path) -> Path | None:
    """``resume`` True → ``out_dir/last.pth.tar`` if it exists; a path → that file."""
    if resume is False or resume is None:
        return None
    if resume is True:
        if out_dir is None:
            raise ValueError("resume=True needs an out_dir to look for last.pth.tar in")
        path = out_dir / LAST
        if not path.exists():
            if D.is_main_process():
                warnings.warn(f"resume requested but {path} does not exist; starting from scratch", stacklevel=3)
            return None
        return path
    path = Path(resume)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint to resume from {str(path)!r} does not exist")
    return path


# ------------------------------------------------------------ model preprocessing


def view_preprocessing(loader) -> dict[str, Any] | None:
    """What a loader's view pipeline feeds the model, as ``pretrained_cfg`` entries
    (``input_size``, ``superpixels``, ``mean``, ``std``), or None when the loader is not a
    :func:`~castvit.data.datasets.build_loader` loader with one of castvit's views."""
    from castvit.ops import IMAGENET_MEAN, IMAGENET_STD

    view = getattr(getattr(loader, "dataset", None), "transform", None)
    superpixels, size = getattr(view, "superpixels", None), getattr(view, "size", None)
    if not hasattr(superpixels, "describe") or not isinstance(size, int):
        return None
    return {"input_size": [size, size], "superpixels": superpixels.describe(size),
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def loader_view(loader):
    """The view pipeline of a :func:`~castvit.data.datasets.build_loader` loader (None
    for other loaders)."""
    return getattr(getattr(loader, "dataset", None), "transform", None)


def device_stage(loader):
    """The device side of a loader whose view is split between workers and the training
    device (:mod:`castvit.data.device_augment`): ``device_batch(batch, device)``, or
    None for a view that the workers finish."""
    return getattr(loader_view(loader), "device_batch", None)


def token_bound(loader, *, mixing: bool = False) -> int | None:
    """The most superpixel ids an image of ``loader``'s training batches can carry, or
    None where the tokenizer gives no bound (SEEDS, SLIC): the view's bound, one more
    with random erasing (the box's own id), twice that with cutmix (``mixing``: the
    partner's ids are pasted in)."""
    view = loader_view(loader)
    superpixels = getattr(view, "superpixels", None)
    size = getattr(view, "size", None) or getattr(view, "crop_size", None)
    if superpixels is None or not isinstance(size, int):
        return None
    if hasattr(superpixels, "max_labels"):
        bound = superpixels.max_labels(size, size)
    elif hasattr(superpixels, "count"):  # segmentation's SegSuperpixels: the count of the (padded) crop
        from castvit.data.transforms import SuperpixelConfig

        side = size if superpixels.scale == 1.0 else max(8, int(round(size * superpixels.scale)))
        bound = SuperpixelConfig(method=superpixels.method,
                                 n_segments=superpixels.count(size, size)).max_labels(side, side)
    else:
        return None
    if bound is None:
        return None
    inner = getattr(view, "view", view)
    if getattr(inner, "erase_prob", 0) > 0:
        bound += 1
    return 2 * bound if mixing else bound


def compile_for_training(model: torch.nn.Module, loader, *, mixing: bool = False) -> torch.nn.Module:
    """``cfg.compile``: :func:`castvit.models.cast.compile_model` of ``model`` (one graph)
    with the ``max_tokens`` of :class:`LoopConfig`'s ``compile`` note; the returned module
    shares ``model``'s parameters (checkpoints keep saving ``model``)."""
    from castvit.models.cast import compile_model

    target = getattr(model, "encoder", model)  # segmentation models: the encoder holds the tokens
    if not hasattr(target, "max_tokens"):  # no superpixel tokens (a ViT): nothing to make static
        return compile_model(model)
    max_tokens = target.max_tokens or token_bound(loader, mixing=mixing)
    if max_tokens is None:
        raise ValueError("compile needs a fixed token count, and the training superpixels give no bound on theirs "
                         "(SEEDS / SLIC); use the slic_torch tokenizer (at most n_segments ids per image) or build "
                         "the model with max_tokens= (above the most superpixels an image gets)")
    return compile_model(model, max_tokens=max_tokens)


def record_preprocessing(model: torch.nn.Module | None, loader) -> None:
    """Write the training loader's preprocessing into ``model.pretrained_cfg``, so the
    saved model says which superpixels and input size it was trained with."""
    settings = view_preprocessing(loader)
    if model is None or settings is None:
        return
    model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}), **settings}


def check_batch_size(cfg: LoopConfig, loader) -> None:
    """``cfg.batch_size`` must be None or the loader's global batch."""
    global_batch = loader.batch_size * D.get_world_size()
    if cfg.batch_size is not None and cfg.batch_size != global_batch:
        raise ValueError(f"batch_size={cfg.batch_size} but the loader gives a global batch of {global_batch} "
                         f"({loader.batch_size} per process × {D.get_world_size()} processes); the loader decides "
                         "the batch: build it with the batch you want, or leave batch_size=None")


# -------------------------------------------------------------------------- fit


def _resumable(loader) -> bool:
    """Whether the loader's sampler can start inside an epoch (EpochSampler)."""
    set_epoch = getattr(loader.sampler, "set_epoch", None)
    return set_epoch is not None and "start" in inspect.signature(set_epoch).parameters


def _set_epoch(loader, epoch: int, step: int) -> None:
    if _resumable(loader):
        loader.sampler.set_epoch(epoch, start=step * loader.batch_size)
    elif hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)


class _Loop:
    """The state and steps of one :func:`fit` call (one object so the pieces stay short)."""

    def __init__(self, recipe: Recipe, loader, cfg: LoopConfig, out: Path | None, progress: bool,
                 config: dict[str, Any]):
        self.recipe, self.loader, self.cfg, self.out, self.progress = recipe, loader, cfg, out, progress
        self.config = config
        self.rank, self.world = D.get_rank(), D.get_world_size()
        self.main = self.rank == 0
        self.state = LoopState()
        self.sums: dict[str, torch.Tensor] = {}  # per-epoch metric sums of this rank
        self.writer: MetricsWriter | None = None
        # Split views (data.device_augment): the device finishes each batch before the step.
        self.device_stage = device_stage(loader)
        self.device = getattr(recipe, "device", torch.device("cpu"))

    # ---------------------------------------------------------------- resume
    def restore(self, path: Path) -> None:
        ckpt = read_checkpoint(path)
        info = ckpt.get("castvit") or {}
        start_epoch = self.recipe.load_container(ckpt)
        if info.get("format") != CHECKPOINT_FORMAT:  # a published container: weights (+ optimizer) only
            self.state = LoopState(epoch=int(start_epoch or 0))
        else:
            global_batch = self.loader.batch_size * self.world
            if info["step"] and info.get("global_batch") != global_batch:
                raise ValueError(f"{path} stopped mid-epoch with a global batch of {info.get('global_batch')}; "
                                 f"resume it with the same global batch (now {global_batch})")
            self.state = LoopState(info["epoch"], info["step"], info["global_step"], info.get("best"),
                                   list(info.get("history", [])))
            rngs = info.get("rng") or []
            if len(rngs) == self.world:
                set_rng_state(rngs[self.rank])
            if self.main:  # the saved meters are already summed over ranks
                self.sums = {k: torch.tensor(v, dtype=torch.float64) for k, v in (info.get("meters") or {}).items()}
        if self.main and self.progress:
            print(f"resuming from {path}: epoch {self.state.epoch}, step {self.state.step}", flush=True)

    # ------------------------------------------------------------ checkpoint
    def save(self, kind: str, record: dict[str, Any] | None = None) -> None:
        """Write ``last`` (and ``best`` / the epoch snapshot) from rank 0; every rank
        takes part because RNG states and meters are gathered."""
        rngs = D.all_gather_object(rng_state())
        reduced = {k: D.all_reduce_sum(v.cpu()) for k, v in sorted(self.sums.items())}
        self.sums = dict(reduced) if self.main else {k: torch.zeros_like(v) for k, v in reduced.items()}
        if self.main and self.out is not None:
            s = self.state
            payload = self.recipe.container(s.epoch)
            model_record = self.recipe.model_record()
            if model_record is not None:
                payload["castvit_model"] = model_record
            payload["castvit"] = {
                "format": CHECKPOINT_FORMAT, "recipe": self.recipe.name, "epoch": s.epoch, "step": s.step,
                "global_step": s.global_step, "world_size": self.world,
                "global_batch": self.loader.batch_size * self.world, "best": s.best,
                "history": to_plain(s.history), "rng": rngs, "meters": {k: float(v) for k, v in reduced.items()},
                "config": self.config,
            }
            names = [LAST]
            if kind == "epoch" and self.cfg.keep_epoch_checkpoints:
                names.append(f"checkpoint_{s.epoch - 1:04d}.pth.tar")  # the epoch just finished, 0-based
            if kind == "epoch" and record is not None and record.get("is_best"):
                names.append(BEST)
            first = self.out / names[0]
            atomic_write(first, lambda tmp: torch.save(payload, tmp))
            for name in names[1:]:  # the same bytes: copy rather than pickle again
                atomic_write(self.out / name, lambda tmp: shutil.copyfile(first, tmp))
        D.barrier()

    # ------------------------------------------------------------------ steps
    def add(self, key: str, value: float) -> None:
        self.sums[key] = self.sums.get(key, torch.zeros((), dtype=torch.float64)) + value

    def step(self, batch: dict[str, Any], epoch: int, steps_per_epoch: int) -> dict[str, float]:
        s = self.state
        torch.manual_seed(step_seed(self.cfg.seed, self.rank, s.global_step))
        if self.device_stage is not None:
            batch = self.device_stage(batch, self.device)
        metrics, count, scalars = self.recipe.train_step(batch, epoch=epoch, step=s.step,
                                                         t=epoch + s.step / steps_per_epoch)
        loss = float(metrics["loss"])
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at epoch {epoch} step {s.step}; lower the learning rate, "
                                     "enable grad_clip, or check the data")
        for k, v in metrics.items():
            self.add(k, float(v) * count)
        self.add("count", float(count))
        self.add("skipped", float(batch.get("skipped", 0)))
        s.step += 1
        s.global_step += 1
        record = None
        if s.step % self.cfg.log_every == 0 or s.step == steps_per_epoch:
            # Logged values are averaged over every rank's batch: the global batch.
            local = torch.tensor([float(v) * count for v in metrics.values()] + [count], dtype=torch.float64)
            total = D.all_reduce_sum(local)
            record = {"kind": "step", "epoch": epoch, "step": s.step, "global_step": s.global_step}
            record.update({k: float(total[i] / total[-1]) for i, k in enumerate(metrics)})
            record.update(scalars)
            self.writer.write(record)
        if self.cfg.checkpoint_every_steps and s.step % self.cfg.checkpoint_every_steps == 0 \
                and s.step < steps_per_epoch:
            self.save("step")
        return {**scalars, **(record or {})}

    def run_epoch(self, epoch: int, steps_per_epoch: int) -> dict[str, Any]:
        start = self.state.step
        _set_epoch(self.loader, epoch, start)
        skip = 0 if _resumable(self.loader) else start
        self.recipe.on_epoch_start(epoch)
        bar = None
        if self.progress and self.main:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps_per_epoch, initial=start, desc=f"{self.recipe.name} epoch {epoch}",
                       dynamic_ncols=True, leave=False)
        t0 = time.time()
        last: dict[str, float] = {}
        for batch in self.loader:
            if skip:
                skip -= 1
                continue
            last = self.step(batch, epoch, steps_per_epoch)
            if bar is not None:
                if "loss" in last:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in last.items() if k in ("loss", "acc", "lr", "momentum")})
                bar.update(1)
        if bar is not None:
            bar.close()
        if self.state.step < steps_per_epoch:
            raise RuntimeError(f"epoch {epoch} ended after {self.state.step} of {steps_per_epoch} steps; the loader "
                               "must yield the same number of batches every epoch")
        return self.finish_epoch(epoch, last.get("lr"), time.time() - t0)

    def finish_epoch(self, epoch: int, lr: float | None, seconds: float) -> dict[str, Any]:
        keys = sorted(self.sums)
        totals = dict(zip(keys, D.all_reduce_sum(torch.stack([self.sums[k] for k in keys])).tolist()))
        n = max(totals.pop("count", 0.0), 1.0)
        skipped = int(totals.pop("skipped", 0.0))
        record = {"kind": "epoch", "epoch": epoch, "global_step": self.state.global_step}
        record.update({f"train_{k}": v / n for k, v in totals.items()})
        record.update({"lr": lr, "skipped_images": skipped, "epoch_time_s": seconds})
        if (epoch + 1) % self.cfg.eval_every == 0 or epoch + 1 == self.cfg.epochs:
            record.update(self.recipe.evaluate(epoch))
        monitor = self.recipe.monitor
        if monitor is not None and record.get(monitor) is not None:
            value, best = float(record[monitor]), self.state.best
            better = best is None or (value > best if self.recipe.monitor_mode == "max" else value < best)
            self.state.best = value if better else best
            record["is_best"] = bool(better)
        self.state.history.append(record)
        self.writer.write(record)
        if self.main and skipped:
            warnings.warn(f"epoch {epoch}: {skipped} unreadable images were skipped", stacklevel=2)
        if self.main and self.progress:
            shown = {k: v for k, v in record.items() if k not in ("kind", "global_step", "is_best")}
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()),
                  flush=True)
        self.state.epoch, self.state.step = epoch + 1, 0
        self.sums = {}
        self.save("epoch", record)
        return record


def fit(recipe: Recipe, loader, cfg: LoopConfig, *, out_dir: str | Path | None = None, progress: bool = True,
        resume: bool | str | Path = False, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``recipe`` for ``cfg.epochs`` epochs over ``loader``.

    Args:
        recipe: the recipe (model, optimizer, step, evaluation, container).
        loader: training loader; exact mid-epoch resume needs the
            :class:`~castvit.data.datasets.EpochSampler` of
            :func:`~castvit.data.datasets.build_loader` (other samplers resume at the
            step by skipping batches).
        cfg: loop settings.
        out_dir: where checkpoints, ``metrics.jsonl`` and ``config.yaml`` go (None:
            nothing is written).
        progress: show a progress bar and epoch summaries on rank 0.
        resume: True (``out_dir/last.pth.tar`` when present), a checkpoint path, or False.
        config: the resolved configuration to save and store in checkpoints
            (default: ``cfg``).

    Returns:
        The history: ``epochs`` (one record per epoch), and per-key lists over epochs
        (``train_loss``, ``lr``, ``val_acc`` … whatever the recipe reports).
    """
    out = Path(out_dir) if out_dir is not None else None
    check_batch_size(cfg, loader)
    loop = _Loop(recipe, loader, cfg, out, progress, to_plain(config if config is not None else cfg))
    ckpt_path = find_checkpoint(out, resume)
    if ckpt_path is not None:
        loop.restore(ckpt_path)
        if loop.state.epoch >= cfg.epochs and loop.main:
            print(finished_run_message(ckpt_path, loop.state.epoch, cfg.epochs), flush=True)
    if out is not None and loop.main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(out, loop.config)
    loop.writer = MetricsWriter(out, cfg.tensorboard, loop.state.global_step if ckpt_path is not None else None)
    _set_epoch(loader, loop.state.epoch, 0)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError("the training loader yields no batch; lower batch_size or add data")
    try:
        for epoch in range(loop.state.epoch, cfg.epochs):
            loop.run_epoch(epoch, steps_per_epoch)
    finally:
        loop.writer.close()
    return summarize(loop.state.history)


def finished_run_message(path: Path, done: int, epochs: int) -> str:
    """What a resume of a run that has nothing left to train says."""
    more = max(done, epochs) * 2
    return (f"{path} is from a finished run: {done} epochs done, {epochs} asked for, so there is nothing to train; "
            f"the results reported are the finished run's. To train longer, raise the epoch count and resume "
            f"(castvit train: the same command with train.epochs={more} --resume; Python: cfg.epochs={more}, "
            "resume=True); the learning-rate schedule then stretches over the new length. To start over, use "
            "another output_dir.")


def summarize(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Epoch records → ``{"epochs": records, key: [values per epoch] …}``."""
    out: dict[str, Any] = {"epochs": history}
    keys = [k for rec in history for k in rec if k not in ("kind",)]
    for k in dict.fromkeys(keys):
        out[k] = [rec.get(k) for rec in history]
    return out
