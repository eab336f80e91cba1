"""Superpixels: the tokens of CAST (image → **superpixels** → model → hierarchy).

Two backends, both returning contiguous ``int64`` labels ``0..K-1`` per image:

* :func:`seeds` — OpenCV's SEEDS on the image converted RGB→CIELAB with
  ``cv2.cvtColor(image, cv2.COLOR_RGB2LAB)``, as the authors do (SPEC §6). This is the
  method every published number uses.
* :func:`slic` — scikit-image's SLIC, an alternative that retries with 3× compactness
  while fewer than ``n_segments / 2`` labels come back.
* ``"slic_torch"`` — :func:`castvit.slic_torch.slic_torch`, SLIC in batched torch on the
  images' own device (CPU or GPU), the tokenizer of the device-side input path. Labels
  are numbered in grid order rather than order of first appearance, and with
  ``fixed_k=True`` the id range is always ``0..n_segments-1``.

:func:`compute_superpixels` runs either over a batch in a thread pool (OpenCV and
scikit-image release the GIL) and returns a ``B×H×W`` int64 tensor;
:func:`compute_superpixels_single` does one image and returns an ``H×W`` array.

**SEEDS' K depends on the image size.** SEEDS does not place ``n_segments`` seeds: it
tiles the image with a grid of square-ish blocks whose side is rounded *up* to whole
pixels, then groups the blocks 2×2, and K is the size of that coarser grid. So K is
only approximately ``n_segments``, is never more, and is not monotonic in the image
size. :func:`seeds_num_superpixels` predicts it exactly. Measured with
``n_segments=196`` (``num_levels=1``) on natural images:

==========  ====  ===========================================
H×W         K     note
==========  ====  ===========================================
64×64       100   blocks of 3 px instead of 2.3 px
128×128     144
224×224     196   the size the published models were trained at
240×320     192   (320×240 too)
256×256     144   fewer than at 224: blocks round up from 9.1 to 10 px
384×384     169
512×512     169
480×640     192
==========  ====  ===========================================

With the segmentation rule ``n = H·W/256`` (:func:`segmentation_n_segments`) K equals n
whenever H and W are multiples of 16 (checked for every such size from 64 to 1056 px;
e.g. 240×320 → 300, 512×512 → 1024).

OpenCV's SEEDS hangs or crashes (or returns a single label) when its block grid would
need blocks under 2×2 pixels or an empty grid; :func:`seeds` refuses those settings
with a ``ValueError`` instead. OpenCV also raises ``n_segments`` below 10 to 10 and
``num_levels`` below 2 to 2, so ``num_levels=1`` (the authors' value) means 2 levels.
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from castvit.ops import relabel_contiguous

METHODS = ("seeds", "slic", "slic_torch")
MIN_IMAGE_SIZE = 8  # pixels per side; below this neither backend gives useful superpixels


# --------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class SeedsPreset:
    """SEEDS settings of one training recipe; ``seeds(img, **dataclasses.asdict(p))``
    or ``compute_superpixels(imgs, **dataclasses.asdict(p))`` applies them."""

    n_segments: int = 196
    histogram_bins: int = 15
    num_iterations: int = 20


#: MoCo pre-training, linear probe, visualisation (per augmented 224×224 view).
PRETRAIN_SEEDS = SeedsPreset(n_segments=196, histogram_bins=15, num_iterations=20)
#: DeiT and segmentation fine-tuning. For segmentation replace ``n_segments`` with
#: ``segmentation_n_segments(H, W)`` (``dataclasses.replace``).
FINETUNE_SEEDS = SeedsPreset(n_segments=196, histogram_bins=5, num_iterations=15)


def segmentation_n_segments(height: int, width: int) -> int:
    """Superpixels per image for segmentation fine-tuning: ``H·W/256`` (one per 16×16
    pixels), at least 1."""
    return max(1, (height * width) // 256)


# --------------------------------------------------------------------------- SEEDS


def seeds_num_superpixels(height: int, width: int, n_segments: int = 196, num_levels: int = 1) -> int:
    """Size of the block grid that OpenCV's SEEDS starts from, i.e. the K it returns.

    This mirrors the grid rule of ``cv2.ximgproc.createSuperpixelSEEDS`` (float32
    arithmetic included). K is an upper bound on the number of labels. Every grid cell
    survived in our checks on natural images with ``num_levels=1`` and superpixels of
    more than ~20 pixels; with tinier superpixels, more levels or pure noise a few
    cells can vanish.

    Args:
        height, width: image size in pixels.
        n_segments: requested number of superpixels.
        num_levels: the ``num_levels`` passed to SEEDS.

    Returns:
        The number of superpixels SEEDS will lay out.

    Raises:
        ValueError: if this size and ``n_segments`` need blocks under 2×2 pixels or an
            empty grid, where OpenCV hangs, crashes or returns one label.
    """
    f32 = np.float32
    n = max(int(n_segments), 10)
    levels_requested = max(int(num_levels), 2)
    rows = int(np.sqrt(f32(n) * f32(height) / f32(width)))
    cols = rows * width // height
    if rows < 1 or cols < 1:
        raise ValueError(
            f"a {height}×{width} image is too elongated for SEEDS with n_segments={n_segments}: "
            "its grid gets no row or no column. Crop or pad the image towards a square, or use method='slic'.")
    levels = levels_requested + 1
    block_w = block_h = 0.0
    while levels > 1:
        levels -= 1
        scale = f32(1 << (levels - 1))
        block_w = f32(f32(width) / f32(cols)) / scale
        block_h = f32(f32(height) / f32(rows)) / scale
        if block_w >= 1 and block_h >= 1:
            break
    top_cols = (width // math.ceil(block_w)) >> (levels - 1)
    top_rows = (height // math.ceil(block_h)) >> (levels - 1)
    if levels < 2 or block_w < 1 or block_h < 1 or top_cols < 1 or top_rows < 1:
        raise ValueError(
            f"n_segments={n_segments} is too many for a {height}×{width} image with SEEDS: its blocks would be "
            "smaller than 2×2 pixels, where OpenCV hangs or returns one label. Use fewer segments "
            f"(segmentation_n_segments({height}, {width}) = {segmentation_n_segments(height, width)}) "
            "or a larger image.")
    return top_cols * top_rows


def seeds(image: np.ndarray, n_segments: int = 196, *, histogram_bins: int = 15, num_iterations: int = 20,
          num_levels: int = 1, prior: int = 2, double_step: bool = False) -> np.ndarray:
    """SEEDS superpixels of one RGB image, computed in CIELAB as the authors do.

    K is set by a block grid, not by ``n_segments`` alone (see the module docstring):
    224×224 with ``n_segments=196`` gives exactly 196, 64×64 gives 100, 512×512 gives
    169. :func:`seeds_num_superpixels` predicts it.

    Args:
        image: ``H×W×3`` RGB, uint8 (or float in [0, 1], or a tensor in either layout;
            see :func:`compute_superpixels`).
        n_segments: requested number of superpixels (OpenCV raises values below 10 to 10).
        histogram_bins: colour-histogram bins per channel.
        num_iterations: pixel-level refinement iterations.
        num_levels: block levels (OpenCV raises values below 2 to 2).
        prior: boundary smoothness prior (0..5).
        double_step: also do block updates with a confidence threshold.

    Returns:
        ``H×W`` int64 labels ``0..K-1``, numbered in order of first appearance.
    """
    import cv2  # lazy: the model code needs no OpenCV

    rgb = _as_rgb_uint8(image)
    n_segments = _check_n_segments(n_segments)
    height, width = rgb.shape[:2]
    seeds_num_superpixels(height, width, n_segments, num_levels)  # refuses settings where OpenCV hangs
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    engine = cv2.ximgproc.createSuperpixelSEEDS(width, height, 3, n_segments, num_levels, prior,
                                                histogram_bins, double_step)
    engine.iterate(lab, num_iterations)
    return relabel_contiguous(engine.getLabels())


# --------------------------------------------------------------------------- SLIC


def slic(image: np.ndarray, n_segments: int = 196, *, compactness: float = 10.0, sigma: float = 0.0,
         max_retries: int = 3) -> np.ndarray:
    """SLIC superpixels of one RGB image (scikit-image, in CIELAB).

    SLIC with low compactness on flat or noisy images can merge nearly everything into
    a few labels; then it is rerun with 3× the compactness (SPEC §6), at most
    ``max_retries`` times. If even the last try gives fewer than ``n_segments / 2``
    labels, its result is returned with a ``RuntimeWarning``.

    Args:
        image: ``H×W×3`` RGB, uint8 (or float in [0, 1], or a tensor in either layout).
        n_segments: approximate number of superpixels.
        compactness: colour/space trade-off of the first try (higher = squarer).
        sigma: Gaussian pre-smoothing in pixels (0 = none).
        max_retries: extra tries with 3× compactness each.

    Returns:
        ``H×W`` int64 labels ``0..K-1``, numbered in order of first appearance.
    """
    from skimage.segmentation import slic as skimage_slic  # lazy, like cv2

    rgb = _as_rgb_uint8(image)
    n_segments = _check_n_segments(n_segments)
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    for attempt in range(max_retries + 1):
        labels = skimage_slic(rgb, n_segments=n_segments, compactness=compactness, sigma=sigma,
                              convert2lab=True, start_label=0, channel_axis=-1)
        labels = relabel_contiguous(labels)
        num_labels = int(labels.max()) + 1
        if num_labels >= n_segments / 2:
            return labels
        if attempt < max_retries:
            compactness *= 3
    warnings.warn(
        f"SLIC gave {num_labels} superpixels for n_segments={n_segments} even at compactness={compactness:g} "
        f"after {max_retries} retries; raise max_retries or compactness, or use method='seeds'.",
        RuntimeWarning, stacklevel=2)
    return labels


# --------------------------------------------------------------------------- batch API

_BACKENDS: dict[str, Callable[..., np.ndarray]] = {"seeds": seeds, "slic": slic}


def compute_superpixels_single(image: np.ndarray | torch.Tensor, method: str = "seeds", n_segments: int = 196,
                               **kwargs: Any) -> np.ndarray:
    """Superpixels of one image.

    Args:
        image: one ``H×W×3`` or ``3×H×W`` RGB image, uint8 or float in [0, 1], numpy
            or torch (the rules of :func:`compute_superpixels`).
        method: ``"seeds"``, ``"slic"`` or ``"slic_torch"``.
        n_segments: requested number of superpixels.
        **kwargs: passed to :func:`seeds`, :func:`slic` or :func:`~castvit.slic_torch.slic_torch`.

    Returns:
        ``H×W`` int64 labels ``0..K-1``.
    """
    if method == "slic_torch":
        from castvit.slic_torch import slic_torch

        rgb = _as_rgb_uint8(image)
        rgb = torch.from_numpy(rgb if rgb.flags.writeable else rgb.copy())[None]
        return slic_torch(rgb, _check_n_segments(n_segments), **kwargs)[0].numpy()
    return _backend(method)(_as_rgb_uint8(image), n_segments, **kwargs)


def compute_superpixels(images: torch.Tensor | np.ndarray | Sequence[np.ndarray], method: str = "seeds",
                        n_segments: int = 196, *, num_workers: int | None = None, **kwargs: Any) -> torch.Tensor:
    """Superpixels of a batch of images, in parallel threads.

    Always a batch in, a batch out; for one image use :func:`compute_superpixels_single`
    (or pass ``image[None]``).

    Args:
        images: RGB images of one size, as

            * a tensor or array ``B×3×H×W`` or ``B×H×W×3`` (the axis of size 3 is the
              channel axis; channels-first wins when both are 3), or
            * a list of ``H×W×3`` (or ``3×H×W``) arrays or tensors.

            Values are uint8 0..255, or floating point in [0, 1] (turned into uint8
            by ``round(x·255)``). Superpixels are computed before normalisation, so
            mean/std-normalised images are refused.
        method: ``"seeds"`` (the paper's), ``"slic"`` or ``"slic_torch"`` (batched
            torch: a tensor stays on its device and the labels come back there).
        n_segments: requested superpixels per image (SEEDS: see the module docstring
            for the K it actually returns).
        num_workers: threads; ``None`` = ``min(B, os.cpu_count())``, ``0`` = serial in
            the calling thread. ``slic_torch`` ignores it and uses torch's intra-op
            threads (``torch.set_num_threads``).
        **kwargs: passed to :func:`seeds`, :func:`slic` or
            :func:`~castvit.slic_torch.slic_torch` (e.g.
            ``**dataclasses.asdict(FINETUNE_SEEDS)``, or ``fixed_k=True``).

    Returns:
        ``B×H×W`` int64 tensor; image ``b`` has labels ``0..K_b-1`` (``slic_torch`` with
        ``fixed_k=True``: ids below ``n_segments``, some possibly unused).
    """
    if method == "slic_torch":
        return _slic_torch_batch(images, n_segments, kwargs)
    backend = _backend(method)
    n_segments = _check_n_segments(n_segments)
    batch = _as_rgb_uint8_batch(images)
    if num_workers is None:
        num_workers = min(len(batch), os.cpu_count() or 1)
    if num_workers < 0:
        raise ValueError(f"num_workers must be None, 0 (serial) or positive, got {num_workers}")

    def one(image: np.ndarray) -> np.ndarray:
        return backend(image, n_segments, **kwargs)

    if num_workers <= 1 or len(batch) == 1:
        label_maps = [one(image) for image in batch]
    else:
        with ThreadPoolExecutor(max_workers=min(num_workers, len(batch))) as pool:
            label_maps = list(pool.map(one, batch))
    return torch.from_numpy(np.stack(label_maps))


def _slic_torch_batch(images: Any, n_segments: int, kwargs: dict[str, Any]) -> torch.Tensor:
    """``compute_superpixels(method="slic_torch")``: one batched call on the images' device."""
    from castvit.slic_torch import slic_torch

    n_segments = _check_n_segments(n_segments)
    if isinstance(images, (list, tuple)):  # the same checks and layout as the other backends
        images = torch.from_numpy(np.stack(_as_rgb_uint8_batch(images)))
    return slic_torch(images, n_segments, **kwargs)


# --------------------------------------------------------------------------- input checks


def _backend(method: str) -> Callable[..., np.ndarray]:
    if method not in _BACKENDS:
        raise ValueError(f"unknown superpixel method {method!r}; choose one of {', '.join(METHODS)}")
    return _BACKENDS[method]


def method_parameters(method: str) -> set[str]:
    """Keyword options that superpixel method ``method`` accepts (besides the image)."""
    if method == "slic_torch":
        from castvit.slic_torch import slic_torch

        fn = slic_torch
    else:
        fn = _backend(method)
    return set(inspect.signature(fn).parameters) - {"image", "images"}


def _check_n_segments(n_segments: int) -> int:
    if isinstance(n_segments, bool) or not isinstance(n_segments, (int, np.integer)) or n_segments < 1:
        raise ValueError(f"n_segments must be a positive integer, got {n_segments!r}")
    return int(n_segments)


def _as_rgb_uint8_batch(images: torch.Tensor | np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """Any accepted batch → list of ``H×W×3`` C-contiguous uint8 arrays of one size."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("got an empty list of images; pass at least one H×W×3 image")
        batch = [_as_rgb_uint8(image) for image in images]
        sizes = {image.shape[:2] for image in batch}
        if len(sizes) > 1:
            raise ValueError(f"images in a list must share one size to form a B×H×W result, got sizes "
                             f"{sorted(sizes)}; resize them first or call compute_superpixels_single per image")
        return batch
    array = _to_numpy(images)
    if array.ndim != 4:
        hint = (" For one image use compute_superpixels_single or add a batch axis (image[None])."
                if array.ndim == 3 else " Grayscale images must be converted to RGB first.")
        raise ValueError(f"expected a batch B×3×H×W or B×H×W×3, got shape {tuple(array.shape)}.{hint}")
    if array.shape[0] == 0:
        raise ValueError("got an empty batch (B=0); pass at least one image")
    array = _channels_last(_to_uint8(array))
    return [np.ascontiguousarray(image) for image in array]


def _as_rgb_uint8(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """One image (``H×W×3`` or ``3×H×W``, uint8 or float in [0, 1]) → ``H×W×3``
    C-contiguous uint8."""
    array = _to_numpy(image)
    if array.ndim != 3:
        hint = (" A 2-D array is grayscale: convert it to RGB, e.g. np.repeat(gray[..., None], 3, axis=-1)."
                if array.ndim == 2 else " For a batch use compute_superpixels.")
        raise ValueError(f"expected one RGB image H×W×3 or 3×H×W, got shape {tuple(array.shape)}.{hint}")
    if array.dtype == np.uint8 and array.shape[-1] == 3 and array.shape[0] != 3:
        rgb = array  # the common case: skip the copies below
    else:
        rgb = _channels_last(_to_uint8(array))
    height, width = rgb.shape[:2]
    if height < MIN_IMAGE_SIZE or width < MIN_IMAGE_SIZE:
        raise ValueError(f"image is {height}×{width} pixels; superpixels need at least "
                         f"{MIN_IMAGE_SIZE}×{MIN_IMAGE_SIZE}. Upsample it or pass a larger image.")
    return np.ascontiguousarray(rgb)


def _to_numpy(images: Any) -> np.ndarray:
    if torch.is_tensor(images):
        tensor = images.detach().cpu()
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor = tensor.float()  # numpy has no bfloat16
        return tensor.numpy()
    return np.asarray(images)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """uint8 stays; floats in [0, 1] become ``round(x·255)``; anything else is refused."""
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("image contains NaN or infinite values; fix or mask them before computing superpixels")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            raise ValueError(
                f"float images must lie in [0, 1], got values in [{low:.3g}, {high:.3g}]. Compute superpixels "
                "before mean/std normalisation; divide 0..255 floats by 255, or clamp to [0, 1].")
        return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    raise ValueError(
        f"images must be uint8 (0..255) or float in [0, 1], got dtype {array.dtype}. Convert 16-bit images with "
        "(x // 257).astype(np.uint8); integer images already in 0..255 with .astype(np.uint8) / .to(torch.uint8).")


def _channels_last(array: np.ndarray) -> np.ndarray:
    """``…×3×H×W`` or ``…×H×W×3`` → ``…×H×W×3``; any other channel count is refused."""
    if array.shape[-3] == 3:
        return np.moveaxis(array, -3, -1)
    if array.shape[-1] == 3:
        return array
    channels = array.shape[-1] if array.shape[-1] in (1, 2, 4) else array.shape[-3]
    raise ValueError(
        f"images must have 3 RGB channels, got shape {tuple(array.shape)} ({channels} channels?). Convert "
        "grayscale to RGB (repeat the channel 3 times) and RGBA to RGB (drop or composite alpha) first.")
