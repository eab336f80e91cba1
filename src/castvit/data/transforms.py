"""Image augmentations on tensors (no torchvision), and the view pipelines of the recipes.

Every random function takes an explicit ``torch.Generator``: a view is a pure function
of ``(image, generator state)``, so the data loader can seed each sample from
``(seed, epoch, index)`` and a run reproduces exactly whatever the number of workers or
processes (see :mod:`castvit.data.datasets`).

Images are ``3×H×W`` float tensors in ``[0, 1]`` while they are augmented. A view
pipeline ends the same way everywhere (SPEC §6): quantise the augmented view to uint8,
compute its superpixels, then normalise with the ImageNet statistics. The result is a
dict with ``image`` (float32 ``3×S×S``, normalised) and ``superpixels`` (int64 ``S×S``).

Batch-level mixing (mixup / cutmix with consistent superpixels) lives at the end of
this file; it runs in the training process on collated batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from castvit.ops import IMAGENET_MEAN, IMAGENET_STD

# ----------------------------------------------------------------------------- helpers


def _uniform(gen: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return float(low + (high - low) * torch.rand((), generator=gen))


def _randint(gen: torch.Generator, low: int, high: int) -> int:
    """Integer in ``[low, high]`` (inclusive)."""
    return int(torch.randint(low, high + 1, (), generator=gen))


def to_float_image(image: torch.Tensor) -> torch.Tensor:
    """``3×H×W`` uint8 (0..255) or float (0..1) → float32 in ``[0, 1]``."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a 3×H×W (or 1×H×W) image tensor, got shape {tuple(image.shape)}")
    x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def to_uint8_image(image: torch.Tensor) -> torch.Tensor:
    """float ``[0, 1]`` → uint8, rounding to nearest."""
    return (image.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)


def normalize(image: torch.Tensor) -> torch.Tensor:
    """float ``3×H×W`` in ``[0, 1]`` → ImageNet-normalised float32."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image - mean) / std


# ------------------------------------------------------------------------- geometry


def resize(image: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased) resize. An int resizes the shorter side to ``size``
    keeping the aspect ratio; a pair gives ``(height, width)``."""
    h, w = image.shape[-2:]
    if isinstance(size, int):
        if h <= w:
            size = (size, max(1, round(w * size / h)))
        else:
            size = (max(1, round(h * size / w)), size)
    if tuple(size) == (h, w):
        return image
    return F.interpolate(image[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True)[0]


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot center-crop {size}×{size} from a {h}×{w} image; resize it first")
    top, left = (h - size) // 2, (w - size) // 2
    return image[..., top:top + size, left:left + size]


def random_resized_crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                            gen: torch.Generator) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a crop covering a random fraction ``scale`` of the area
    with a log-uniform aspect ratio in ``ratio`` (10 tries, then a central crop), as in
    torchvision's RandomResizedCrop."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(gen, *scale)
        aspect = math.exp(_uniform(gen, *log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return _randint(gen, 0, height - h), _randint(gen, 0, width - w), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image: torch.Tensor, size: int, gen: torch.Generator,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    top, left, h, w = random_resized_crop_box(image.shape[-2], image.shape[-1], scale, ratio, gen)
    return resize(image[..., top:top + h, left:left + w], (size, size))


def hflip(image: torch.Tensor) -> torch.Tensor:
    return image.flip(-1)


def _affine(image: torch.Tensor, matrix: Sequence[float], fill: float = 0.5) -> torch.Tensor:
    """Apply the 2×3 affine ``matrix`` (output pixel → input pixel, in normalised
    coordinates) with bilinear sampling; outside pixels get ``fill``."""
    theta = torch.tensor(matrix, dtype=image.dtype).view(1, 2, 3)
    grid = F.affine_grid(theta, [1, *image.shape], align_corners=False)
    ones = torch.ones_like(image[:1])
    out = F.grid_sample(torch.cat([image, ones])[None], grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)[0]
    inside = out[3:]
    return out[:3] + (1 - inside) * fill


# --------------------------------------------------------------------------- colour


def grayscale(image: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma, repeated over 3 channels (as PIL's convert('L'))."""
    luma = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
    return luma.expand(3, -1, -1).contiguous()


def _blend(a: torch.Tensor, b: torch.Tensor, factor: float) -> torch.Tensor:
    return (factor * a + (1 - factor) * b).clamp(0, 1)


def adjust_brightness(image: torch.Tensor, factor: float) -> torch.Tensor:
    return (image * factor).clamp(0, 1)


def adjust_contrast(image: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(image, grayscale(image)[0].mean(), factor)


def adjust_saturation(image: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(image, grayscale(image), factor)


def rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    r, g, b = image
    maxc, _ = image.max(0)
    minc, _ = image.min(0)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    safe = delta.clamp_min(1e-12)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc])


def hsv_to_rgb(image: torch.Tensor) -> torch.Tensor:
    h, s, v = image
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [torch.stack(c) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))]
    out = torch.zeros_like(image)
    for k, c in enumerate(choices):
        out = torch.where(i == k, c, out)
    return out


def adjust_hue(image: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate the hue by ``shift`` turns, ``shift`` in ``[-0.5, 0.5]``."""
    hsv = rgb_to_hsv(image)
    hsv[0] = (hsv[0] + shift) % 1.0
    return hsv_to_rgb(hsv).clamp(0, 1)


def color_jitter(image: torch.Tensor, gen: torch.Generator, brightness: float = 0.4, contrast: float = 0.4,
                 saturation: float = 0.2, hue: float = 0.1) -> torch.Tensor:
    """torchvision's ColorJitter: the four adjustments in a random order, factors
    uniform in ``[1 − v, 1 + v]`` (hue shift in ``[−hue, hue]``)."""
    order = torch.randperm(4, generator=gen).tolist()
    factors = [_uniform(gen, max(0.0, 1 - brightness), 1 + brightness),
               _uniform(gen, max(0.0, 1 - contrast), 1 + contrast),
               _uniform(gen, max(0.0, 1 - saturation), 1 + saturation),
               _uniform(gen, -hue, hue)]
    ops = [adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue]
    for k in order:
        if (k < 3 and factors[k] != 1.0) or (k == 3 and factors[k] != 0.0):
            image = ops[k](image, factors[k])
    return image


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with standard deviation ``sigma`` pixels (kernel radius
    ⌈3σ⌉, reflected borders), like PIL's GaussianBlur(radius=sigma)."""
    radius = max(1, math.ceil(3.0 * sigma))
    radius = min(radius, min(image.shape[-2:]) - 1)
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return out[0]


def solarize(image: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Invert the pixels at or above ``threshold`` (PIL's ImageOps.solarize(128))."""
    return torch.where(image >= threshold, 1.0 - image, image)


def posterize(image: torch.Tensor, bits: int) -> torch.Tensor:
    q = 2 ** (8 - bits)
    return (torch.floor(image * 255.0 / q) * q / 255.0).clamp(0, 1)


def autocontrast(image: torch.Tensor) -> torch.Tensor:
    lo = image.amin(dim=(1, 2), keepdim=True)
    hi = image.amax(dim=(1, 2), keepdim=True)
    scale = torch.where(hi > lo, 1.0 / (hi - lo).clamp_min(1e-12), torch.ones_like(hi))
    return torch.where(hi > lo, (image - lo) * scale, image).clamp(0, 1)


def equalize(image: torch.Tensor) -> torch.Tensor:
    """Per-channel histogram equalisation on 256 levels (PIL's ImageOps.equalize)."""
    levels = to_uint8_image(image).long()
    out = []
    for c in levels:
        hist = torch.bincount(c.flatten(), minlength=256)
        nonzero = hist[hist > 0]
        step = int((nonzero.sum() - nonzero[-1]) // 255) if len(nonzero) else 0
        if step == 0:
            out.append(c.float() / 255.0)
            continue
        lut = ((torch.cumsum(hist, 0) - hist + step // 2) // step).clamp(0, 255)
        out.append(lut[c].float() / 255.0)
    return torch.stack(out)


def sharpness(image: torch.Tensor, factor: float) -> torch.Tensor:
    kernel = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=image.dtype) / 13.0
    smooth = F.conv2d(F.pad(image[None], (1, 1, 1, 1), mode="replicate"), kernel.expand(3, 1, 3, 3), groups=3)[0]
    return _blend(image, smooth, factor)


# ------------------------------------------------------------------- RandAugment


_RA_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
           "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY")


def rand_augment(image: torch.Tensor, gen: torch.Generator, num_ops: int = 2, magnitude: float = 9.0,
                 magnitude_std: float = 0.5, prob: float = 0.5) -> torch.Tensor:
    """RandAugment as timm's ``rand-m9-mstd0.5-inc1`` (the DeiT recipe): ``num_ops``
    operations drawn uniformly, each applied with probability ``prob`` at a magnitude
    drawn from N(magnitude, magnitude_std) clipped to [0, 10], increasing severity."""
    for _ in range(num_ops):
        name = _RA_OPS[_randint(gen, 0, len(_RA_OPS) - 1)]
        if _uniform(gen) >= prob:
            continue
        m = magnitude + magnitude_std * float(torch.randn((), generator=gen)) if magnitude_std > 0 else magnitude
        level = min(max(m, 0.0), 10.0) / 10.0
        sign = -1.0 if _uniform(gen) < 0.5 else 1.0
        if name == "AutoContrast":
            image = autocontrast(image)
        elif name == "Equalize":
            image = equalize(image)
        elif name == "Invert":
            image = 1.0 - image
        elif name == "Rotate":
            a = math.radians(30.0 * level * sign)
            h, w = image.shape[-2:]
            image = _affine(image, [math.cos(a), -math.sin(a) * h / w, 0.0, math.sin(a) * w / h, math.cos(a), 0.0])
        elif name == "Posterize":
            image = posterize(image, 8 - int(4 * level))
        elif name == "Solarize":
            image = solarize(image, 1.0 - level)
        elif name == "SolarizeAdd":
            added = (image + 110.0 / 255.0 * level).clamp(0, 1)
            image = torch.where(image < 128 / 255.0, added, image)
        elif name == "Color":
            image = adjust_saturation(image, 1.0 + 0.9 * level * sign)
        elif name == "Contrast":
            image = adjust_contrast(image, 1.0 + 0.9 * level * sign)
        elif name == "Brightness":
            image = adjust_brightness(image, 1.0 + 0.9 * level * sign)
        elif name == "Sharpness":
            image = sharpness(image, 1.0 + 0.9 * level * sign)
        elif name in ("ShearX", "ShearY"):
            s = 0.3 * level * sign
            image = _affine(image, [1, s, 0, 0, 1, 0] if name == "ShearX" else [1, 0, 0, s, 1, 0])
        else:  # translate by up to 45 % of the side (timm's translate_pct 0.45)
            t = 2 * 0.45 * level * sign
            image = _affine(image, [1, 0, t, 0, 1, 0] if name == "TranslateX" else [1, 0, 0, 0, 1, t])
    return image


# ------------------------------------------------------------------- superpixels


@dataclass
class SuperpixelConfig:
    """How each view is cut into superpixels (SPEC §6).

    ``method`` 'seeds' (default) or 'slic' calls
    :func:`castvit.superpixels.compute_superpixels`; 'grid' gives square cells of about
    ``n_segments`` (useful in tests: it is instant and never returns too few segments).
    """

    method: str = "seeds"
    n_segments: int = 196
    histogram_bins: int = 15
    num_iterations: int = 20
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in ("seeds", "slic", "grid"):
            raise ValueError(f"superpixel method must be 'seeds', 'slic' or 'grid', got {self.method!r}")
        if self.n_segments < 1:
            raise ValueError(f"n_segments must be >= 1, got {self.n_segments}")

    def __call__(self, image_uint8: torch.Tensor) -> torch.Tensor:
        """``3×H×W`` uint8 → ``H×W`` int64 labels."""
        if self.method == "grid":
            return grid_superpixels(image_uint8.shape[-2], image_uint8.shape[-1], self.n_segments)
        from castvit.superpixels import compute_superpixels_single

        kwargs: dict[str, Any] = dict(self.extra)
        if self.method == "seeds":
            kwargs.setdefault("histogram_bins", self.histogram_bins)
            kwargs.setdefault("num_iterations", self.num_iterations)
        labels = compute_superpixels_single(image_uint8, method=self.method, n_segments=self.n_segments, **kwargs)
        return torch.as_tensor(labels).long()


def grid_superpixels(height: int, width: int, n_segments: int) -> torch.Tensor:
    """Square cells, about ``n_segments`` of them, as an ``H×W`` int64 label map."""
    side = max(1, round(math.sqrt(height * width / n_segments)))
    rows = torch.arange(height) // side
    cols = torch.arange(width) // side
    return rows[:, None] * int(cols.max() + 1) + cols[None, :]


def finish_view(image: torch.Tensor, superpixels: SuperpixelConfig) -> dict[str, torch.Tensor]:
    """Quantise an augmented ``[0, 1]`` view to uint8, cut it into superpixels, normalise."""
    view = to_uint8_image(image)
    return {"image": normalize(view.float() / 255.0), "superpixels": superpixels(view)}


# --------------------------------------------------------------- view pipelines


@dataclass
class MoCoViews:
    """The two asymmetric MoCo-v3 / BYOL views (SPEC §7), each with its own superpixels.

    Returns ``image``/``superpixels`` (view 1) and ``image2``/``superpixels2`` (view 2).
    """

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    blur_prob: tuple[float, float] = (1.0, 0.1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: tuple[float, float] = (0.0, 0.2)
    superpixels: SuperpixelConfig = field(default_factory=SuperpixelConfig)

    def view(self, image: torch.Tensor, gen: torch.Generator, which: int) -> torch.Tensor:
        x = random_resized_crop(image, self.size, gen, scale=tuple(self.scale))
        if _uniform(gen) < self.jitter_prob:
            x = color_jitter(x, gen, *self.jitter)
        if _uniform(gen) < self.grayscale_prob:
            x = grayscale(x)
        if _uniform(gen) < self.blur_prob[which]:
            # BYOL blurs with a kernel of 10 % of the 224-px side; sigma is in pixels of that size.
            x = gaussian_blur(x, _uniform(gen, *self.blur_sigma) * self.size / 224.0)
        if _uniform(gen) < self.solarize_prob[which]:
            x = solarize(x)
        if _uniform(gen) < 0.5:
            x = hflip(x)
        return x

    def __call__(self, image: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        image = to_float_image(image)
        one = finish_view(self.view(image, gen, 0), self.superpixels)
        two = finish_view(self.view(image, gen, 1), self.superpixels)
        return {"image": one["image"], "superpixels": one["superpixels"],
                "image2": two["image"], "superpixels2": two["superpixels"]}


@dataclass
class TrainView:
    """One classification training view: random resized crop and flip (the linear probe),
    optionally RandAugment, colour jitter and random erasing (DeiT).

    Random erasing (timm's 'pixel' mode, one box, after normalisation) fills the box with
    Gaussian noise; the box becomes one new superpixel, since it holds no image structure
    for SEEDS to follow.
    """

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    hflip_prob: float = 0.5
    rand_augment: bool = False
    rand_augment_magnitude: float = 9.0
    rand_augment_ops: int = 2
    jitter: float = 0.0
    erase_prob: float = 0.0
    superpixels: SuperpixelConfig = field(default_factory=SuperpixelConfig)

    def __call__(self, image: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        x = random_resized_crop(to_float_image(image), self.size, gen, scale=tuple(self.scale))
        if _uniform(gen) < self.hflip_prob:
            x = hflip(x)
        if self.rand_augment:
            x = rand_augment(x, gen, num_ops=self.rand_augment_ops, magnitude=self.rand_augment_magnitude)
        if self.jitter > 0:
            x = color_jitter(x, gen, self.jitter, self.jitter, self.jitter, 0.0)
        out = finish_view(x, self.superpixels)
        if self.erase_prob > 0 and _uniform(gen) < self.erase_prob:
            out = random_erase(out, gen)
        return out


def random_erase(view: dict[str, torch.Tensor], gen: torch.Generator, scale: tuple[float, float] = (0.02, 1 / 3),
                 ratio: tuple[float, float] = (0.3, 3.3)) -> dict[str, torch.Tensor]:
    """timm's RandomErasing (mode 'pixel', count 1) on a normalised view; the erased box
    gets its own superpixel id."""
    image, labels = view["image"], view["superpixels"]
    h, w = image.shape[-2:]
    for _ in range(10):
        area = h * w * _uniform(gen, *scale)
        aspect = math.exp(_uniform(gen, math.log(ratio[0]), math.log(ratio[1])))
        eh, ew = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if 0 < eh < h and 0 < ew < w:
            top, left = _randint(gen, 0, h - eh), _randint(gen, 0, w - ew)
            image = image.clone()
            image[:, top:top + eh, left:left + ew] = torch.randn((3, eh, ew), generator=gen)
            labels = labels.clone()
            labels[top:top + eh, left:left + ew] = int(labels.max()) + 1
            return {**view, "image": image, "superpixels": relabel_compact(labels[None])[0]}
    return view


@dataclass
class EvalView:
    """Resize the shorter side to ``size / crop_fraction`` (256 for 224), center-crop."""

    size: int = 224
    crop_fraction: float = 0.875
    superpixels: SuperpixelConfig = field(default_factory=SuperpixelConfig)

    def __call__(self, image: torch.Tensor, gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        x = to_float_image(image)
        x = center_crop(resize(x, int(math.floor(self.size / self.crop_fraction + 0.5))), self.size)
        return finish_view(x, self.superpixels)


# ------------------------------------------------------------------ batch mixing


def relabel_compact(labels: torch.Tensor) -> torch.Tensor:
    """Renumber each ``H×W`` map of a ``B×H×W`` batch to ``0..K_b−1`` (sorted order),
    so no id is left unused inside an image."""
    out = torch.empty_like(labels)
    for b in range(labels.shape[0]):
        _, inverse = torch.unique(labels[b], return_inverse=True)
        out[b] = inverse
    return out


def one_hot_smooth(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """``B`` int64 → ``B×num_classes`` with ``1 − smoothing + smoothing/C`` on the label
    and ``smoothing/C`` elsewhere (timm's convention)."""
    off = smoothing / num_classes
    out = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    return out.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)


def cutmix_box(height: int, width: int, lam: float, gen: torch.Generator) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of a box of area ``(1 − lam)·H·W`` centred at a
    uniform random point and clipped to the image (timm's rand_bbox)."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(height * cut), int(width * cut)
    cy, cx = _randint(gen, 0, height - 1), _randint(gen, 0, width - 1)
    return (max(cy - ch // 2, 0), min(cy + ch // 2, height), max(cx - cw // 2, 0), min(cx + cw // 2, width))


@dataclass
class MixConfig:
    """timm's Mixup in 'batch' mode: each image is mixed with its mirror in the batch
    (``i`` with ``B−1−i``) with one ``lam`` for the batch.

    Superpixels follow the pixels:

    * **cutmix** pastes the partner's superpixels inside the box; ids inside and outside
      are kept apart (partner ids are offset, then each map is renumbered compactly),
      so no superpixel straddles the box edge.
    * **mixup** keeps the superpixel map of the dominant image (weight ≥ ½). The mixed
      image's edges are mostly those of that image; the token count stays that of one
      SEEDS map, as at test time; intersecting both maps would roughly triple the tokens
      and create sliver superpixels that follow the fainter image's edges.
    """

    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1
    num_classes: int = 1000

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


def mix_batch(batch: dict[str, torch.Tensor], cfg: MixConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Mix a collated batch (images, superpixels, labels) in place of a copy.

    Args:
        batch: ``image`` ``B×3×H×W``, ``superpixels`` ``B×H×W`` int64, ``label`` ``B``.
        cfg: mixing settings; ``cfg.num_classes`` sizes the soft targets.
        gen: generator for ``lam``, the choice of mixup or cutmix, and the box.

    Returns:
        A new dict with mixed ``image`` and ``superpixels``, soft ``target``
        ``B×num_classes`` (label smoothing included) and ``mix_lam`` (the pixel share of
        each image's own content, a float).
    """
    images, labels, sp = batch["image"], batch["label"], batch["superpixels"]
    if labels.numel() and int(labels.max()) >= cfg.num_classes:
        raise ValueError(f"label {int(labels.max())} >= num_classes {cfg.num_classes}")
    out = dict(batch)
    lam, use_cutmix = 1.0, False
    if cfg.enabled and _uniform(gen) < cfg.prob:
        if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0:
            use_cutmix = _uniform(gen) < cfg.switch_prob
        else:
            use_cutmix = cfg.cutmix_alpha > 0
        alpha = cfg.cutmix_alpha if use_cutmix else cfg.mixup_alpha
        lam = float(np.random.default_rng(int(torch.randint(0, 2**62, (), generator=gen))).beta(alpha, alpha))
    if lam < 1.0 and use_cutmix:
        h, w = images.shape[-2:]
        top, bottom, left, right = cutmix_box(h, w, lam, gen)
        lam = 1.0 - (bottom - top) * (right - left) / float(h * w)
        images = images.clone()
        images[..., top:bottom, left:right] = batch["image"].flip(0)[..., top:bottom, left:right]
        partner = sp.flip(0)[:, top:bottom, left:right]
        offset = sp.flatten(1).max(1).values.view(-1, 1, 1) + 1
        sp = sp.clone()
        sp[:, top:bottom, left:right] = partner + offset
        sp = relabel_compact(sp)
    elif lam < 1.0:
        images = images * lam + batch["image"].flip(0) * (1.0 - lam)
        if lam < 0.5:
            sp = sp.flip(0)
    out["image"], out["superpixels"] = images, sp
    own = one_hot_smooth(labels, cfg.num_classes, cfg.label_smoothing)
    out["target"] = own * lam + own.flip(0) * (1.0 - lam)
    out["mix_lam"] = lam
    return out
