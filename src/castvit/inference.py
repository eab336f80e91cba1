"""From images to hierarchies: the predictor.

    import castvit
    model = castvit.create_model("cast_small.moco_in1k")
    predictor = castvit.HierarchyPredictor(model)          # eval mode, the model's preprocessing
    h = predictor.predict(image)                           # H×W×3 uint8 → Hierarchy
    hs = predictor.predict_batch(images, progress=True)    # bounded batches, parallel superpixels
    for h in predictor.iter_predict(paths_or_images): ...  # streaming, superpixels ahead of the model

**Preprocessing comes from the model.** Every model built by
:func:`castvit.create_model` carries ``pretrained_cfg``: its input size, superpixel
method and settings, mean and std (:func:`castvit.models.resolve_pretrained_cfg`; a
checkpoint written by castvit stores the one it was trained with). The predictor
reads it, so nothing is guessed from attribute names.

**Resolution.** Images of any size are accepted and every output is at the image's
own resolution. The model sees a *working* copy: by default (``size="auto"``) the
image resized to the model's input area (224² for the classification and
pre-training models, 512² for the segmentation ones), aspect ratio kept, each side a
multiple of 8 (:func:`working_size`); ``size=N`` asks for about ``N×N`` pixels of
area and ``size=None`` keeps the native resolution (rounded to multiples of 8). No
padding is ever added: a padded border would become superpixels of its own.

**Superpixels** are computed on the working image, as in training, with the count the
model was trained with at that size (196 at 224², one per 256 px elsewhere), then
carried to the full resolution by nearest sampling at pixel centres. With
``superpixel_resolution="full"`` they are computed on the full image instead (sharper
boundaries on large photos, but SEEDS then returns fewer superpixels than asked:
169 for 196 at 512²). Given superpixels (full resolution) are sampled down the same
way, so a token always stands for the same superpixel at both resolutions.

**Eval mode.** Every call runs the model in eval mode and restores its previous mode
afterwards, so BatchNorm statistics never change and two calls give the same result.
"""

from __future__ import annotations

import contextlib
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from castvit.hierarchy import Hierarchy
from castvit.ops import check_unit_range, normalize_images

PATCH = 8
MIN_SIDE = 16


def working_size(height: int, width: int, size: int | None = None) -> tuple[int, int]:
    """The ``(h, w)`` a model sees for an ``height×width`` image: multiples of 8.

    ``size=None`` keeps the resolution (each side rounded to the nearest multiple
    of 8); ``size=N`` resizes to about ``N·N`` pixels of area, aspect ratio kept.
    Sides are at least 8.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}×{width}")
    scale = 1.0 if size is None else size / math.sqrt(height * width)
    return (max(PATCH, int(height * scale / PATCH + 0.5) * PATCH),
            max(PATCH, int(width * scale / PATCH + 0.5) * PATCH))


def min_image_pixels(model: torch.nn.Module) -> int:
    """Fewest pixels an image needs for ``model``: one 8×8 cell for each superpixel
    of the first stage's minimum (4096 = 64×64 for 64 clusters)."""
    return int(getattr(model, "min_superpixels", 1)) * PATCH * PATCH


def check_image_size(model: torch.nn.Module, height: int, width: int) -> None:
    """Raise ``ValueError`` naming the minimum when an image is too small for ``model``."""
    need = min_image_pixels(model)
    side = int(math.ceil(math.sqrt(need)))
    if height * width < need or min(height, width) < MIN_SIDE:
        name = getattr(model, "castvit_name", type(model).__name__)
        raise ValueError(
            f"image is {width}×{height} px (W×H), too small for {name}: it needs at least {need} pixels "
            f"(e.g. {side}×{side}) and sides of at least {MIN_SIDE} px, because its first stage pools "
            f"{getattr(model, 'min_superpixels', '?')} superpixels that each need an {PATCH}×{PATCH} cell")


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``H×W×3`` uint8 → ``height×width×3`` uint8, bilinear with antialiasing (Pillow)."""
    if image.shape[:2] == (height, width):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def sample_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest sample of an ``H×W`` label map at the centres of a ``height×width`` grid."""
    hf, wf = labels.shape
    if (hf, wf) == (height, width):
        return labels
    rows = ((np.arange(height) + 0.5) * hf / height).astype(np.int64).clip(0, hf - 1)
    cols = ((np.arange(width) + 0.5) * wf / width).astype(np.int64).clip(0, wf - 1)
    return labels[rows][:, cols]  # rows, then columns: 4× faster than one 2-D fancy index


def model_preprocessing(model: torch.nn.Module) -> dict[str, Any]:
    """The model's ``pretrained_cfg`` (set by :func:`castvit.create_model`); derived from
    its attributes for a model built another way."""
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg:
        return cfg
    from castvit.models._builder import default_preprocessing

    return default_preprocessing(tuple(getattr(model, "img_size", (224, 224))), task=getattr(model, "task", "cls"),
                                 convention=getattr(model, "convention", "moco"),
                                 first_clusters=int(getattr(model, "min_superpixels", 0)))


def auto_size(model: torch.nn.Module) -> int:
    """The working-area side ``size="auto"`` stands for: ``√(h·w)`` of the model's
    ``pretrained_cfg["input_size"]`` (224 for the classification models, 512 for the
    segmentation ones)."""
    h, w = model_preprocessing(model)["input_size"]
    return int(round(math.sqrt(h * w)))


def as_uint8_images(images) -> list[np.ndarray]:
    """Images in any layout the API accepts → a list of ``H×W×3`` uint8 arrays.

    Accepts ``H×W×3`` / ``B×H×W×3`` arrays or tensors, ``3×H×W`` / ``B×3×H×W`` tensors or
    arrays, PIL images, or a list of any of these (sizes may differ); uint8, or float in
    [0, 1] (float images in 0..255 are refused with the fix).
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no images given")
        out = []
        for im in images:
            arrs = as_uint8_images(im)
            if len(arrs) != 1:
                raise ValueError("a list of images must hold single images (H×W×3), not batches")
            out.append(arrs[0])
        return out
    if _is_pil(images):
        return [np.asarray(images.convert("RGB"))]
    t = images.detach().cpu() if torch.is_tensor(images) else torch.from_numpy(np.array(images))
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or 3 not in (t.shape[1], t.shape[-1]):
        raise ValueError(f"images must be H×W×3, B×H×W×3, 3×H×W or B×3×H×W RGB, got shape {tuple(t.shape)}; "
                         "convert grayscale/RGBA to RGB")
    if t.shape[-1] != 3:
        t = t.permute(0, 2, 3, 1)
    if t.dtype == torch.uint8:
        return list(t.numpy())
    if not t.is_floating_point():
        raise ValueError(f"images must be uint8 (0..255) or float (0..1), got {t.dtype}")
    check_unit_range(t)
    return list((t.float() * 255).round().to(torch.uint8).numpy())


def _is_pil(obj) -> bool:
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "convert")


def _is_single(images) -> bool:
    if _is_pil(images):
        return True
    return (isinstance(images, np.ndarray) or torch.is_tensor(images)) and images.ndim == 3


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Run ``model`` in eval mode inside the block, then restore its previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@dataclass
class PreparedImage:
    image: np.ndarray  # full resolution
    work_image: np.ndarray
    full_sp: np.ndarray
    work_sp: np.ndarray
    n_superpixels: int  # produced (at full resolution)
    n_requested: int | None  # asked of the superpixel method (None when given)


class HierarchyPredictor:
    """Segment images into nested hierarchies with one forward pass each.

    Args:
        model: any CAST model (``create_model(...)``), on any device and dtype.
        size: working resolution: ``"auto"`` (default: the model's input area),
            ``N`` (about ``N×N`` pixels of area), or ``None`` (native resolution).
        method: superpixel method (default: the model's, ``"seeds"``).
        n_segments: superpixels per image (default: the model's count at the working
            size, see the module docstring).
        superpixel_options: backend settings overriding the model's (e.g.
            ``{"histogram_bins": 5}``).
        superpixel_resolution: ``"working"`` (default) or ``"full"``.
        vanished: rule for superpixels without a token (see :mod:`castvit.hierarchy`);
            default ``"inherit"`` (``"own_token"`` for ``mask_padded_tokens=False``).
        batch_size: images per forward pass (bounds memory).
        num_workers: threads computing superpixels ahead of the model.
    """

    def __init__(self, model: torch.nn.Module, *, size: int | str | None = "auto", method: str | None = None,
                 n_segments: int | None = None, superpixel_options: dict[str, Any] | None = None,
                 superpixel_resolution: str = "working", vanished: str | None = None, batch_size: int = 16,
                 num_workers: int = 2):
        if superpixel_resolution not in ("working", "full"):
            raise ValueError(f"superpixel_resolution must be 'working' or 'full', got {superpixel_resolution!r}")
        if vanished not in (None, "inherit", "own_token"):
            raise ValueError(f"vanished must be 'inherit' or 'own_token', got {vanished!r}")
        if batch_size < 1 or num_workers < 0:
            raise ValueError("batch_size must be >= 1 and num_workers >= 0")
        self.model = model
        self.preprocessing = model_preprocessing(model)
        self.size = _resolve_size(model, size)
        sp_cfg = dict(self.preprocessing["superpixels"])
        sp_cfg.update(superpixel_options or {})
        if method is not None and method != sp_cfg.get("method"):
            sp_cfg = {"method": method, **{k: v for k, v in sp_cfg.items()
                                           if k in ("n_segments", "pixels_per_superpixel")}}
            sp_cfg.update(superpixel_options or {})
        self.method = sp_cfg.pop("method", "seeds")
        self.superpixel_settings = sp_cfg
        self.n_segments = n_segments
        self.superpixel_resolution = superpixel_resolution
        self.vanished = vanished or ("inherit" if getattr(model, "mask_padded_tokens", True) else "own_token")
        self.batch_size = batch_size
        self.num_workers = num_workers

    # ------------------------------------------------------------ public
    def predict(self, image, superpixels: np.ndarray | torch.Tensor | None = None) -> Hierarchy:
        """One image (``H×W×3`` uint8, a tensor, or a PIL image) → its :class:`Hierarchy`."""
        if not _is_single(image):
            raise ValueError("predict() takes one image; use predict_batch() for several")
        return self.predict_batch([image], None if superpixels is None else [superpixels])[0]

    def predict_batch(self, images, superpixels: Sequence | np.ndarray | torch.Tensor | None = None, *,
                      progress: bool = False) -> list[Hierarchy]:
        """Several images (a batch array/tensor or a list; sizes may differ) → hierarchies, in order."""
        imgs = as_uint8_images(images)
        sps = self._given_superpixels(superpixels, imgs)
        return list(self.iter_predict(imgs, sps, progress=progress, total=len(imgs)))

    def iter_predict(self, images: Iterable, superpixels: Iterable | None = None, *, progress: bool = False,
                     total: int | None = None) -> Iterator[Hierarchy]:
        """Stream hierarchies in input order; superpixels of the next images are computed in
        ``num_workers`` threads while the model runs. Images may be any accepted single
        image. Each batch holds at most ``batch_size`` images."""
        from tqdm.auto import tqdm

        sp_iter = iter(superpixels) if superpixels is not None else None
        bar = tqdm(total=total, desc="segment", unit="img", disable=not progress)
        pool = ThreadPoolExecutor(self.num_workers) if self.num_workers > 0 else None
        try:
            pending: list = []
            for image in images:
                img = as_uint8_images(image)
                if len(img) != 1:
                    raise ValueError("iter_predict takes single images, not batches")
                given = next(sp_iter) if sp_iter is not None else None
                job = (pool.submit(self.prepare, img[0], given) if pool is not None
                       else _Done(self.prepare(img[0], given)))
                pending.append(job)
                if len(pending) >= self.batch_size * (2 if pool is not None else 1):
                    batch, pending = pending[:self.batch_size], pending[self.batch_size:]
                    yield from self.run_prepared([j.result() for j in batch])
                    bar.update(len(batch))
            while pending:
                batch, pending = pending[:self.batch_size], pending[self.batch_size:]
                yield from self.run_prepared([j.result() for j in batch])
                bar.update(len(batch))
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            bar.close()

    __call__ = predict

    # ------------------------------------------------------------ steps
    def working_size(self, height: int, width: int) -> tuple[int, int]:
        return working_size(height, width, self.size)

    def superpixel_count(self, height: int, width: int) -> int:
        """Superpixels requested for an ``height×width`` working image."""
        if self.n_segments is not None:
            return self.n_segments
        from castvit.models._builder import superpixel_count

        return superpixel_count({**self.preprocessing, "superpixels": self.superpixel_settings}, height, width)

    def compute_superpixels(self, image: np.ndarray) -> np.ndarray:
        """``H×W`` int64 superpixels of one image as the predictor computes them (at the
        full resolution of ``image``)."""
        return self.prepare(image, None).full_sp

    def _backend_options(self) -> dict[str, Any]:
        from castvit.superpixels import method_parameters

        accepted = method_parameters(self.method)
        return {k: v for k, v in self.superpixel_settings.items() if k in accepted and k != "n_segments"}

    def prepare(self, image: np.ndarray, given=None) -> PreparedImage:
        """Check one ``H×W×3`` uint8 image, resize it to the working size and compute (or
        sample) its superpixels: everything before the model, safe to run in a thread."""
        from castvit.superpixels import compute_superpixels_single

        check_image_size(self.model, *image.shape[:2])
        h, w = self.working_size(*image.shape[:2])
        work_image = resize_image(image, h, w)
        n = None if given is not None else self.superpixel_count(h, w)
        if given is not None:
            full = np.asarray(given.detach().cpu() if torch.is_tensor(given) else given).astype(np.int64)
            work = sample_labels(full, h, w)
        else:
            source = work_image if self.superpixel_resolution == "working" else image
            labels = np.asarray(compute_superpixels_single(source, method=self.method, n_segments=n,
                                                           **self._backend_options())).astype(np.int64, copy=False)
            if self.superpixel_resolution == "working":
                work, full = labels, sample_labels(labels, *image.shape[:2])
            else:
                full, work = labels, sample_labels(labels, h, w)
        # the backends' ids are 0..K-1: count them in linear time (given maps may hold any ids)
        count = np.unique(full).size if given is not None else np.count_nonzero(np.bincount(full.ravel()))
        return PreparedImage(image, work_image, full, work, int(count), n)

    @torch.no_grad()
    def run_prepared(self, items: list[PreparedImage]) -> list[Hierarchy]:
        """The model on prepared images (batched by working size) → hierarchies, in order."""
        param = next(self.model.parameters())
        on_grid = getattr(self.model, "task", "cls") != "seg"
        mean, std = self.preprocessing["mean"], self.preprocessing["std"]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(it.work_image.shape[:2], []).append(i)
        out: list[Hierarchy | None] = [None] * len(items)
        with eval_mode(self.model):
            for (h, w), idx in groups.items():
                x = normalize_images(np.stack([items[i].work_image for i in idx]), mean, std)
                sp = torch.from_numpy(np.stack([items[i].work_sp for i in idx]))
                feats = self.model.forward_features(x.to(param.device, param.dtype), sp.to(param.device))
                feats = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in feats.items()}
                hs = Hierarchy.from_outputs(feats, sp, vanished=self.vanished, on_grid=on_grid,
                                            images=[items[i].image for i in idx],
                                            full_superpixels=[items[i].full_sp for i in idx])
                class_logits = feats.get("class_logits")
                for k, (i, hier) in enumerate(zip(idx, hs)):
                    if class_logits is not None:  # semantic models: the class map at full resolution
                        full = torch.nn.functional.interpolate(class_logits[k:k + 1], size=hier.shape,
                                                               mode="bilinear", align_corners=False)
                        hier.classes = full[0].argmax(0).cpu().numpy().astype(np.int64)
                    hier.meta.update(working_size=[h, w], superpixel_method=self.method,
                                     superpixel_resolution=self.superpixel_resolution,
                                     n_superpixels=items[i].n_superpixels, vanished=self.vanished,
                                     model=getattr(self.model, "castvit_name", type(self.model).__name__))
                    out[i] = hier
        return out

    def _given_superpixels(self, superpixels, imgs: list[np.ndarray]) -> list | None:
        if superpixels is None:
            return None
        if torch.is_tensor(superpixels):
            superpixels = superpixels.detach().cpu().numpy()
        if isinstance(superpixels, np.ndarray) and superpixels.ndim == 2:
            superpixels = superpixels[None]
        sps = [np.asarray(s).astype(np.int64) for s in superpixels]
        if len(sps) != len(imgs):
            raise ValueError(f"got {len(sps)} superpixel maps for {len(imgs)} images")
        for i, (s, im) in enumerate(zip(sps, imgs)):
            if s.shape != im.shape[:2]:
                raise ValueError(f"superpixel map {i} is {s.shape}, image {i} is {im.shape[:2]}; they must match")
            if s.size and s.min() < 0:
                raise ValueError("superpixel labels must be >= 0; relabel them (castvit.ops.relabel_contiguous)")
        return sps


class _Done:
    """A finished 'future' for the no-thread path."""

    def __init__(self, value):
        self._value = value

    def result(self):
        return self._value


def _resolve_size(model: torch.nn.Module, size: int | str | None) -> int | None:
    if size == "auto":
        return auto_size(model)
    if size is not None and (isinstance(size, str) or size < PATCH):
        raise ValueError(f"size must be None, 'auto' or a side of at least {PATCH} px, got {size!r}")
    return size


def segment(model: torch.nn.Module, images, superpixels=None, *, method: str | None = None,
            n_segments: int | None = None, vanished: str | None = None, size: int | str | None = "auto",
            batch_size: int = 16, progress: bool = False):
    """Segment images into hierarchies: a thin wrapper over :class:`HierarchyPredictor`.

    Args:
        model: a CAST model; it runs in eval mode (its mode is restored afterwards).
        images: one image (``H×W×3`` uint8 array, ``3×H×W`` tensor, PIL image) or several
            (a ``B×…`` batch or a list; sizes may differ), uint8 or float in [0, 1].
        superpixels: optional labels at the images' resolution (one map or a list).
        method, n_segments: superpixel method and count (default: the model's).
        vanished: rule for superpixels without a token (see :mod:`castvit.hierarchy`).
        size: working resolution, ``"auto"`` (default, the model's input area), ``N`` or
            ``None`` (native).

    Returns:
        A :class:`Hierarchy` for a single image, else a list of them (input order).
    """
    predictor = HierarchyPredictor(model, size=size, method=method, n_segments=n_segments, vanished=vanished,
                                   batch_size=batch_size)
    if _is_single(images):
        return predictor.predict(images, superpixels)
    return predictor.predict_batch(images, superpixels, progress=progress)
