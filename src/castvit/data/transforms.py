"""Image augmentations on tensors (no torchvision), and the view pipelines of the recipes.

Every random function takes an explicit ``torch.Generator``: a view is a pure function
of ``(image, generator state)``, so the data loader can seed each sample from
``(seed, epoch, index)`` and a run reproduces exactly whatever the number of workers or
processes (see :mod:`castvit.data.datasets`).

Images are ``3×H×W`` float tensors in ``[0, 1]`` while they are augmented. A view
pipeline ends the same way everywhere (SPEC §6): quantise the augmented view to uint8,
compute its superpixels, then normalise with the ImageNet statistics. The result is a
dict with ``image`` (float32 ``3×S×S``, normalised) and ``superpixels`` (int64 ``S×S``).

Where the authors' pipelines used PIL (torchvision's crops and resizes, timm's
RandAugment), the operations here do what PIL does on the 8-bit image: resizing within
one level of PIL's, RandAugment level for level (see the RandAugment section).

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


INTERPOLATIONS = ("bilinear", "bicubic")


def resize(image: torch.Tensor, size: int | tuple[int, int], interpolation: str = "bilinear") -> torch.Tensor:
    """Resize as PIL does (torchvision's transforms on PIL images): antialiased,
    ``"bilinear"`` or ``"bicubic"`` (a = −0.5), in two passes — horizontal, then
    vertical — each rounded to 8-bit levels and clipped, as PIL's uint8 passes are. On
    an 8-bit image the result is PIL's within one level.

    An int resizes the shorter side to ``size`` and the longer one to
    ``int(size · long / short)`` (torchvision's ``Resize(int)``, which truncates); a pair
    gives ``(height, width)``.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    h, w = image.shape[-2:]
    if isinstance(size, int):
        if h <= w:
            size = (size, max(1, int(size * w / h)))
        else:
            size = (max(1, int(size * h / w)), size)
    out_h, out_w = int(size[0]), int(size[1])
    out = image
    for pass_size, changed in (((h, out_w), out_w != w), ((out_h, out_w), out_h != h)):
        if changed:
            out = F.interpolate(out[None], size=pass_size, mode=interpolation, align_corners=False,
                                antialias=True)[0]
            out = torch.round(out.clamp(0, 1) * 255.0) / 255.0
    return out


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size×size`` window, placed as torchvision's ``CenterCrop`` places it
    (offsets ``int(round((H − size) / 2))``)."""
    h, w = image.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot center-crop {size}×{size} from a {h}×{w} image; resize it first")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
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
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), interpolation: str = "bilinear") -> torch.Tensor:
    top, left, h, w = random_resized_crop_box(image.shape[-2], image.shape[-1], scale, ratio, gen)
    return resize(image[..., top:top + h, left:left + w], (size, size), interpolation)


def hflip(image: torch.Tensor) -> torch.Tensor:
    return image.flip(-1)


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
    """RGB → HSV along the channel dimension ``-3`` (``3×H×W`` or ``B×3×H×W``), all in [0, 1]."""
    r, g, b = image.unbind(-3)
    maxc, _ = image.max(-3)
    minc, _ = image.min(-3)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    safe = delta.clamp_min(1e-12)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc], -3)


def hsv_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """HSV → RGB along the channel dimension ``-3`` (the inverse of :func:`rgb_to_hsv`)."""
    h, s, v = image.unbind(-3)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = (i.long() % 6).unsqueeze(-3)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [torch.stack(c, -3) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))]
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


# ------------------------------------------------------------------- RandAugment
#
# timm 0.4.12's RandAugment as DeiT uses it (``rand-m9-mstd0.5-inc1``), restated from
# its definitions: timm's level functions turn a magnitude into an argument, and PIL
# applies the operation to an 8-bit image. Here the image is held as 8-bit levels
# (0..255, whole numbers in a float32 tensor) while the operations run, so every
# threshold, bit mask and lookup table acts on the same integers as in PIL, and blends
# and interpolation are evaluated as PIL evaluates them (float32 blends, float64
# interpolation, truncated to whole levels): on the same 8-bit input the results agree
# with PIL's level for level.

RA_FILL = tuple(min(255, round(255 * m)) for m in IMAGENET_MEAN)
"""Fill of pixels that a geometric operation brings in from outside: the ImageNet mean
in 8-bit levels, (124, 116, 104), as timm's ``img_mean`` hyper-parameter."""

RA_TRANSLATE_PCT = 0.45
RA_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
          "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
"""timm's ``_RAND_TRANSFORMS`` (``inc0``)."""
RA_OPS_INCREASING = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                     "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                     "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
"""timm's ``_RAND_INCREASING_TRANSFORMS`` (``inc1``, DeiT's): every operation grows more
severe with the magnitude."""

_SIGNED = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel", "ColorIncreasing",
           "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing")


def ra_level_arg(name: str, magnitude: float, negate: bool = False) -> float | int | None:
    """The argument timm gives operation ``name`` at ``magnitude`` (0..10).

    ``negate`` is timm's random sign (``_randomly_negate``) for the signed operations.

    ==============================  ==================================================
    Rotate                          ±30·m/10 degrees
    Posterize / PosterizeIncreasing bits kept: int(4·m/10) / 4 − int(4·m/10)
    Solarize / SolarizeIncreasing   threshold: int(256·m/10) / 256 − int(256·m/10)
    SolarizeAdd                     added levels: int(110·m/10)
    Color, Contrast, Brightness,    factor 1.8·m/10 + 0.1; the Increasing variants
    Sharpness                       1 ± 0.9·m/10
    ShearX, ShearY                  ±0.3·m/10
    TranslateXRel, TranslateYRel    ±0.45·m/10 of the width / height
    AutoContrast, Equalize, Invert  None (no argument)
    ==============================  ==================================================
    """
    level = magnitude / 10.0
    sign = -1.0 if negate else 1.0
    base = name.removesuffix("Increasing")
    if base in ("AutoContrast", "Equalize", "Invert"):
        return None
    if name == "Rotate":
        return sign * level * 30.0
    if name == "Posterize":
        return int(level * 4)
    if name == "PosterizeIncreasing":
        return 4 - int(level * 4)
    if name == "Solarize":
        return int(level * 256)
    if name == "SolarizeIncreasing":
        return 256 - int(level * 256)
    if name == "SolarizeAdd":
        return int(level * 110)
    if base in ("Color", "Contrast", "Brightness", "Sharpness"):
        return level * 1.8 + 0.1 if name == base else 1.0 + sign * level * 0.9
    if name in ("ShearX", "ShearY"):
        return sign * level * 0.3
    if name in ("TranslateXRel", "TranslateYRel"):
        return sign * level * RA_TRANSLATE_PCT
    raise ValueError(f"unknown RandAugment operation {name!r}; one of {', '.join(RA_OPS + RA_OPS_INCREASING)}")


def _to_levels(image: torch.Tensor) -> torch.Tensor:
    """float ``[0, 1]`` → 8-bit levels (whole numbers 0..255 as float32)."""
    return torch.round(image.float().clamp(0, 1) * 255.0)


def _truncate(levels: torch.Tensor) -> torch.Tensor:
    """Clip to 0..255 and drop the fraction, as PIL's ``(UINT8)`` casts do."""
    return torch.floor(levels.clamp(0, 255))


def _luma(levels: torch.Tensor) -> torch.Tensor:
    """PIL's RGB → L: ``(19595 R + 38470 G + 7471 B + 2¹⁵) >> 16`` (ITU-R 601-2)."""
    r, g, b = levels.long()
    return ((19595 * r + 38470 * g + 7471 * b + 32768) >> 16).float()


def _pil_blend(degenerate: torch.Tensor, levels: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL's ``Image.blend(degenerate, image, factor)`` (``ImageEnhance``):
    ``degenerate + factor·(image − degenerate)`` in float32, extrapolating for factors
    above 1, then clipped and truncated."""
    if factor == 1.0:
        return levels
    alpha = torch.tensor(factor, dtype=torch.float32)
    return _truncate(degenerate + alpha * (levels - degenerate))


def _lut(levels: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """Apply a 256-entry table per channel (``tables``: ``C×256``)."""
    idx = levels.long()
    return torch.stack([tables[c][idx[c]] for c in range(levels.shape[0])]).float()


def _autocontrast(levels: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageOps.autocontrast`` (cutoff 0): per channel, map [lo, hi] to [0, 255]
    with ``int(v·255/(hi − lo) − lo·255/(hi − lo))``; a flat channel is left alone."""
    out = []
    for c in levels:
        lo, hi = float(c.min()), float(c.max())
        if hi <= lo:
            out.append(c)
            continue
        scale = 255.0 / (hi - lo)
        table = torch.floor(torch.arange(256, dtype=torch.float64) * scale + (-lo * scale)).clamp(0, 255)
        out.append(table[c.long()].float())
    return torch.stack(out)


def _equalize(levels: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageOps.equalize``: per channel, ``step = (N − count of the last used
    level) // 255`` and level ``v`` maps to ``(step // 2 + #pixels below v) // step``;
    identity when ``step`` is 0."""
    tables = []
    for c in levels.long():
        hist = torch.bincount(c.flatten(), minlength=256)
        used = hist[hist > 0]
        step = int((used.sum() - used[-1]) // 255)
        if step == 0:
            tables.append(torch.arange(256))
        else:
            tables.append(((step // 2 + torch.cumsum(hist, 0) - hist) // step).clamp(0, 255))
    return _lut(levels, torch.stack(tables))


def _posterize(levels: torch.Tensor, bits: int) -> torch.Tensor:
    """Keep the ``bits`` most significant bits (8: unchanged; 0: black, as the Pillow of
    timm 0.4.12's day gave for ``inc1`` at magnitude 10 — Pillow ≥ 10 refuses 0 bits)."""
    if bits >= 8:
        return levels
    return (levels.long() & (~(2 ** (8 - bits) - 1) & 0xFF)).float()


def _solarize(levels: torch.Tensor, threshold: int) -> torch.Tensor:
    """Invert the levels at or above ``threshold`` (256: nothing)."""
    return torch.where(levels >= threshold, 255.0 - levels, levels)


def _solarize_add(levels: torch.Tensor, add: int, threshold: int = 128) -> torch.Tensor:
    """Add ``add`` to the levels below ``threshold``, saturating at 255."""
    return torch.where(levels < threshold, (levels + add).clamp(max=255), levels)


def _smooth(levels: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageFilter.SMOOTH`` (3×3 kernel [[1,1,1],[1,5,1],[1,1,1]] / 13) with the
    one-pixel border copied unchanged, as PIL's 3×3 filter does; rounded to levels."""
    kernel = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=torch.float32) / 13.0
    inner = F.conv2d(levels[:, None], kernel.view(1, 1, 3, 3))[:, 0]
    out = levels.clone()
    out[:, 1:-1, 1:-1] = torch.floor(inner + 0.5).clamp(0, 255)
    return out


def _cubic(v1: torch.Tensor, v2: torch.Tensor, v3: torch.Tensor, v4: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """PIL's transform bicubic between samples at offsets −1, 0, 1, 2, fraction ``d``:
    the cubic convolution kernel with a = −1, in PIL's order of evaluation."""
    return v2 + d * ((v3 - v1) + d * ((2 * (v1 - v2) + v3 - v4) + d * (-v1 + v2 - v3 + v4)))


def pil_affine(levels: torch.Tensor, coeffs: Sequence[float], fill: Sequence[float] = RA_FILL,
               interpolation: str = "bicubic") -> torch.Tensor:
    """PIL's ``Image.transform(size, AFFINE, coeffs, resample, fillcolor=fill)``.

    Output pixel ``(x, y)`` (integer column, row) samples the input at
    ``(a·(x + ½) + b·(y + ½) + c, d·(x + ½) + e·(y + ½) + f)`` in pixel units with the
    origin at the top-left corner of the image; pixel centres sit at ``+½``. A sample
    outside ``[0, W) × [0, H)`` takes ``fill``; inside, neighbours beyond the border are
    clamped to it. Bicubic is PIL's transform kernel (a = −1), bilinear the usual one;
    results are truncated to levels.

    Args:
        levels: ``C×H×W`` 8-bit levels (float).
        coeffs: ``(a, b, c, d, e, f)``, output → input.
        fill: per-channel fill level.
        interpolation: ``"bicubic"`` or ``"bilinear"``.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    a, b, c, d, e, f = (float(v) for v in coeffs)
    ch, h, w = levels.shape
    ys = torch.arange(h, dtype=torch.float64).view(-1, 1) + 0.5
    xs = torch.arange(w, dtype=torch.float64).view(1, -1) + 0.5
    xin, yin = a * xs + b * ys + c, d * xs + e * ys + f
    inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    x0, y0 = torch.floor(xin - 0.5), torch.floor(yin - 0.5)
    dx, dy = xin - 0.5 - x0, yin - 0.5 - y0
    flat = levels.reshape(ch, -1).double()
    offsets = (-1, 0, 1, 2) if interpolation == "bicubic" else (0, 1)
    # A zero fraction gives the centre sample exactly, so shears and translations,
    # which keep one coordinate on the pixel grid, need one row (or column) of taps.
    cols = [(x0 + ox).clamp(0, w - 1).long() for ox in (offsets if bool(dx.any()) else (0,))]

    def row(oy: int) -> torch.Tensor:  # one input row per output pixel, interpolated along x
        base = (y0 + oy).clamp(0, h - 1).long() * w
        taps = [flat[:, (base + col).flatten()].view(ch, h, w) for col in cols]
        if len(taps) == 1:
            return taps[0]
        return _cubic(*taps, dx) if interpolation == "bicubic" else taps[0] + (taps[1] - taps[0]) * dx

    if not bool(dy.any()):
        out = row(0)
    else:
        rows = [row(oy) for oy in offsets]
        out = _cubic(*rows, dy) if interpolation == "bicubic" else rows[0] + (rows[1] - rows[0]) * dy
    fill_t = torch.tensor([float(v) for v in fill], dtype=torch.float64).view(-1, 1, 1)
    return torch.where(inside, torch.floor(out.clamp(0, 255)), fill_t).float()


def _rotate_coeffs(degrees: float, width: int, height: int) -> list[float]:
    """PIL's ``Image.rotate(degrees)``: counter-clockwise about the image centre
    ``(W/2, H/2)``, same size."""
    angle = -math.radians(degrees)
    a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
    d, e = round(-math.sin(angle), 15), round(math.cos(angle), 15)
    cx, cy = width / 2.0, height / 2.0
    return [a, b, a * -cx + b * -cy + cx, d, e, d * -cx + e * -cy + cy]


def ra_op(image: torch.Tensor, name: str, arg: float | int | None = None, *, fill: Sequence[float] = RA_FILL,
          interpolation: str = "bicubic") -> torch.Tensor:
    """Apply one RandAugment operation with timm's argument ``arg`` (see
    :func:`ra_level_arg`) to a ``3×H×W`` float image in ``[0, 1]``; the result is on 8-bit
    levels (``k/255``), as the PIL image it stands for.

    Geometric operations (PIL's affine convention, see :func:`pil_affine`): Rotate
    ``arg`` degrees counter-clockwise about the centre; ShearX samples ``(x + arg·y, y)``
    and ShearY ``(x, y + arg·x)`` from the top-left origin; TranslateXRel samples
    ``(x + arg·W, y)``, TranslateYRel ``(x, y + arg·H)``. Enhancements blend with a
    degenerate image by ``arg`` (PIL's ``ImageEnhance``): Color with the luma image,
    Contrast with a flat image at ``int(mean luma + ½)``, Brightness with black,
    Sharpness with the SMOOTH-filtered image.
    """
    x = _to_levels(image)
    base = name.removesuffix("Increasing")
    h, w = x.shape[-2:]
    if base == "AutoContrast":
        out = _autocontrast(x)
    elif base == "Equalize":
        out = _equalize(x)
    elif base == "Invert":
        out = 255.0 - x
    elif base == "Posterize":
        out = _posterize(x, int(arg))
    elif base == "Solarize":
        out = _solarize(x, int(arg))
    elif base == "SolarizeAdd":
        out = _solarize_add(x, int(arg))
    elif base == "Color":
        out = _pil_blend(_luma(x).expand_as(x), x, float(arg))
    elif base == "Contrast":
        out = _pil_blend(torch.full_like(x, float(int(float(_luma(x).mean()) + 0.5))), x, float(arg))
    elif base == "Brightness":
        out = _pil_blend(torch.zeros_like(x), x, float(arg))
    elif base == "Sharpness":
        out = _pil_blend(_smooth(x), x, float(arg))
    elif name == "Rotate":
        out = pil_affine(x, _rotate_coeffs(float(arg), w, h), fill, interpolation)
    elif name == "ShearX":
        out = pil_affine(x, (1, float(arg), 0, 0, 1, 0), fill, interpolation)
    elif name == "ShearY":
        out = pil_affine(x, (1, 0, 0, float(arg), 1, 0), fill, interpolation)
    elif name == "TranslateXRel":
        out = pil_affine(x, (1, 0, float(arg) * w, 0, 1, 0), fill, interpolation)
    elif name == "TranslateYRel":
        out = pil_affine(x, (1, 0, 0, 0, 1, float(arg) * h), fill, interpolation)
    else:
        raise ValueError(f"unknown RandAugment operation {name!r}; one of {', '.join(RA_OPS + RA_OPS_INCREASING)}")
    return (out / 255.0).to(image.dtype if image.is_floating_point() else torch.float32)


def rand_augment(image: torch.Tensor, gen: torch.Generator, num_ops: int = 2, magnitude: float = 9.0,
                 magnitude_std: float = 0.5, prob: float = 0.5, increasing: bool = True,
                 fill: Sequence[float] = RA_FILL, interpolation: str = "bicubic") -> torch.Tensor:
    """timm's RandAugment; the defaults are ``rand-m9-mstd0.5-inc1`` as DeiT sets it up
    (fill = ImageNet mean, bicubic).

    ``num_ops`` times: draw an operation uniformly (with replacement) from
    :data:`RA_OPS_INCREASING` (or :data:`RA_OPS` with ``increasing=False``); skip it with
    probability ``1 − prob``; else draw the magnitude from N(magnitude, magnitude_std),
    clip it to [0, 10], turn it into the operation's argument (:func:`ra_level_arg`, with
    a fair random sign for the signed ones) and apply it (:func:`ra_op`).
    """
    names = RA_OPS_INCREASING if increasing else RA_OPS
    for _ in range(num_ops):
        name = names[_randint(gen, 0, len(names) - 1)]
        if _uniform(gen) > prob:
            continue
        m = magnitude + magnitude_std * float(torch.randn((), generator=gen)) if magnitude_std > 0 else magnitude
        m = min(max(m, 0.0), 10.0)
        negate = name in _SIGNED and _uniform(gen) > 0.5
        image = ra_op(image, name, ra_level_arg(name, m, negate), fill=fill, interpolation=interpolation)
    return image


def autocontrast(image: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageOps.autocontrast`` of a ``[0, 1]`` image (on 8-bit levels)."""
    return ra_op(image, "AutoContrast")


def equalize(image: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageOps.equalize`` of a ``[0, 1]`` image (on 8-bit levels)."""
    return ra_op(image, "Equalize")


# ------------------------------------------------------------------- superpixels


SUPERPIXEL_METHODS = ("seeds", "slic", "slic_torch", "grid")


@dataclass
class SuperpixelConfig:
    """How each view is cut into superpixels (SPEC §6).

    ``method`` 'seeds' (default), 'slic' or 'slic_torch' calls
    :func:`castvit.superpixels.compute_superpixels` ('slic_torch': the batched torch SLIC
    of :mod:`castvit.slic_torch`, options such as ``compactness`` or ``iterations`` in
    ``extra``; at most ``n_segments`` ids per image); 'grid' gives square cells of about
    ``n_segments`` (useful in tests: it is instant and never returns too few segments).
    :meth:`batch` cuts a whole ``B×3×H×W`` batch, on the batch's device for 'slic_torch'.
    """

    method: str = "seeds"
    n_segments: int = 196
    histogram_bins: int = 15
    num_iterations: int = 20
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in SUPERPIXEL_METHODS:
            raise ValueError(f"superpixel method must be one of {', '.join(map(repr, SUPERPIXEL_METHODS))}, "
                             f"got {self.method!r}")
        if self.n_segments < 1:
            raise ValueError(f"n_segments must be >= 1, got {self.n_segments}")

    def describe(self, size: int | None = None) -> dict[str, Any]:
        """These settings as plain values, in the form a model's
        ``pretrained_cfg["superpixels"]`` takes: ``method``, ``n_segments``, the backend
        options (SEEDS: ``histogram_bins``, ``num_iterations``, ``num_levels``, ``prior``
        and anything in ``extra``) and, given the view's ``size``,
        ``pixels_per_superpixel`` (the density that scales ``n_segments`` to other sizes)."""
        out: dict[str, Any] = {"method": self.method, "n_segments": int(self.n_segments)}
        if self.method == "seeds":
            out.update(histogram_bins=int(self.histogram_bins), num_iterations=int(self.num_iterations),
                       num_levels=1, prior=2)
        out.update(self.extra)
        if size is not None:
            out["pixels_per_superpixel"] = size * size / self.n_segments
        return out

    def max_labels(self, height: int, width: int) -> int | None:
        """The most ids an ``height×width`` image can get (a bound for the static-shape
        model's ``max_tokens``), or None where the backend gives no bound (SEEDS, SLIC)."""
        if self.method == "slic_torch":
            return int(self.n_segments)
        if self.method == "grid":
            return int(grid_superpixels(height, width, self.n_segments).max()) + 1
        return None

    def batch(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """``B×3×H×W`` uint8 → ``B×H×W`` int64 labels on the images' device: one batched
        call for 'slic_torch' (on the device), image by image on the CPU otherwise."""
        if self.method == "slic_torch":
            from castvit.slic_torch import slic_torch

            return slic_torch(images_uint8, self.n_segments, **dict(self.extra))
        labels = [self(im) for im in images_uint8.cpu()]
        return torch.stack(labels).to(images_uint8.device)

    def __call__(self, image_uint8: torch.Tensor) -> torch.Tensor:
        """``3×H×W`` uint8 → ``H×W`` int64 labels."""
        if self.method == "grid":
            return grid_superpixels(image_uint8.shape[-2], image_uint8.shape[-1], self.n_segments)
        if self.method == "slic_torch":
            return self.batch(image_uint8[None])[0]
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

    ``interpolation`` of the crop: ``"bilinear"`` (torchvision's default: the MoCo-v3
    linear probe) or ``"bicubic"`` (DeiT). ``rand_augment`` is timm's
    ``rand-m{rand_augment_magnitude}-n{rand_augment_ops}-mstd{rand_augment_mstd}-inc1``
    (:func:`rand_augment`; ``rand_augment_increasing=False`` gives ``inc0``), with
    the ImageNet-mean fill and the crop's interpolation, as timm builds it.

    Random erasing (timm's 'pixel' mode, one box, after normalisation) fills the box with
    Gaussian noise. castvit cuts the superpixels **before** erasing and gives the box one
    new superpixel of its own; the authors cut them after, so SEEDS sees the noise (wrapped
    around by their uint8 conversion) and splits the box into many noise-shaped pieces.
    The box holds no image structure, so castvit spends one token on it instead of many.
    """

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    hflip_prob: float = 0.5
    interpolation: str = "bilinear"
    rand_augment: bool = False
    rand_augment_magnitude: float = 9.0
    rand_augment_ops: int = 2
    rand_augment_mstd: float = 0.5
    rand_augment_increasing: bool = True
    jitter: float = 0.0
    erase_prob: float = 0.0
    superpixels: SuperpixelConfig = field(default_factory=SuperpixelConfig)

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")

    def geometric(self, image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The first steps, shared with the device path: random resized crop, flip and
        RandAugment of a uint8 ``3×H×W`` image → float ``3×size×size`` in [0, 1]."""
        x = random_resized_crop(to_float_image(image), self.size, gen, scale=tuple(self.scale),
                                interpolation=self.interpolation)
        if _uniform(gen) < self.hflip_prob:
            x = hflip(x)
        if self.rand_augment:
            x = rand_augment(x, gen, num_ops=self.rand_augment_ops, magnitude=self.rand_augment_magnitude,
                             magnitude_std=self.rand_augment_mstd, increasing=self.rand_augment_increasing,
                             interpolation=self.interpolation)
        return x

    def __call__(self, image: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        x = self.geometric(image, gen)
        if self.jitter > 0:
            x = color_jitter(x, gen, self.jitter, self.jitter, self.jitter, 0.0)
        out = finish_view(x, self.superpixels)
        if self.erase_prob > 0 and _uniform(gen) < self.erase_prob:
            out = random_erase(out, gen)
        return out


def random_erase(view: dict[str, torch.Tensor], gen: torch.Generator, scale: tuple[float, float] = (0.02, 1 / 3),
                 ratio: tuple[float, float] = (0.3, 3.3)) -> dict[str, torch.Tensor]:
    """timm's RandomErasing (mode 'pixel', count 1) on a normalised view; the erased box
    gets its own superpixel id (see :class:`TrainView` for why)."""
    image, labels = view["image"], view["superpixels"]
    box = erase_box(gen, *image.shape[-2:], scale, ratio)
    if box is None:
        return view
    top, left, eh, ew = box
    image = image.clone()
    image[:, top:top + eh, left:left + ew] = torch.randn((3, eh, ew), generator=gen)
    labels = labels.clone()
    labels[top:top + eh, left:left + ew] = int(labels.max()) + 1
    return {**view, "image": image, "superpixels": relabel_compact(labels[None])[0]}


def erase_box(gen: torch.Generator, height: int, width: int, scale: tuple[float, float] = (0.02, 1 / 3),
              ratio: tuple[float, float] = (0.3, 3.3)) -> tuple[int, int, int, int] | None:
    """The box of :func:`random_erase` (``top, left, height, width``), drawn from ``gen``
    as timm draws it (10 tries of area and log-uniform aspect), or None when none fits.
    The device path draws it with the same calls, so both paths erase the same box."""
    for _ in range(10):
        area = height * width * _uniform(gen, *scale)
        aspect = math.exp(_uniform(gen, math.log(ratio[0]), math.log(ratio[1])))
        eh, ew = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if 0 < eh < height and 0 < ew < width:
            return _randint(gen, 0, height - eh), _randint(gen, 0, width - ew), eh, ew
    return None


@dataclass
class EvalView:
    """Resize the shorter side to ``int(size / crop_fraction)`` (256 for 224) and
    center-crop, as torchvision's ``Resize`` + ``CenterCrop``; ``interpolation``
    ``"bilinear"`` (MoCo-v3's linear probe) or ``"bicubic"`` (DeiT)."""

    size: int = 224
    crop_fraction: float = 0.875
    interpolation: str = "bilinear"
    superpixels: SuperpixelConfig = field(default_factory=SuperpixelConfig)

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")

    def __call__(self, image: torch.Tensor, gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        x = to_float_image(image)
        x = center_crop(resize(x, int(self.size / self.crop_fraction), self.interpolation), self.size)
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
