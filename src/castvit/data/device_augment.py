"""View augmentation split in two: loader workers crop, the training device does the
rest, batched (issue 12, ``data.device_augment: true``).

Three recipes' views have a device form: MoCo-v3 / BYOL (:class:`DeviceMoCoViews`),
the supervised / DeiT view (:class:`DeviceTrainView`) and the segmentation view
(:class:`DeviceSegView`). Each is the worker side; its ``device_batch(batch, device)``
is the device side, which the training loop (:func:`castvit.train.engine.fit`) calls
on every collated batch. The MoCo views show the split in detail.

The CPU pipeline (:class:`castvit.data.transforms.MoCoViews`) does everything per image
in the loader workers, superpixels included, which bounds a GPU step by the number of
CPU cores. Here:

* **worker side** (:class:`DeviceMoCoViews`): decode, random resized crop, quantise the
  crop to uint8, and *draw* every random decision of the view (jitter on/off, the four
  jitter factors and their order, grayscale, blur and its sigma, solarize, flip) from
  the sample's own generator, in exactly the order :meth:`MoCoViews.view` consumes it.
  The sample carries ``crop``/``crop2`` (uint8 ``3×S×S``) and ``params``/``params2``
  (float32 vectors of :data:`NUM_PARAMS`);
* **device side** (:func:`apply_view_params`, :func:`finish_views`): apply those
  decisions to the whole batch at once on the training device, then cut the augmented
  batch into superpixels (``slic_torch`` on the device, or SEEDS on the CPU) and
  normalise.

Because the decisions come from the same per-sample generator as before, a run stays
exactly resumable, and a view differs from the CPU pipeline's only by the uint8
quantisation of the crop (tested: the device ops on the float crop equal the CPU ops).
The crops of :class:`MoCoViews` and :class:`TrainView` are already whole 8-bit levels
(their resize rounds each pass to levels, as PIL does), so there the quantisation
loses nothing; the segmentation view's bilinear rescale is not rounded (≤ ½ level).

The supervised view keeps RandAugment in the worker: timm's operations are defined on
the 8-bit image and are cheap next to the superpixels; colour jitter, normalisation,
superpixels and random erasing run on the device. Random erasing draws its box from the
sample's generator as before, and its Gaussian noise from a generator seeded by a value
drawn there too (the CPU pipeline draws the noise itself): the same distribution,
deterministic, and still exactly resumable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from castvit.data.segmentation import IGNORE_INDEX, SegSuperpixels, SegTrainView
from castvit.data.transforms import (MoCoViews, SuperpixelConfig, TrainView, _randint, _uniform, erase_box,
                                     hsv_to_rgb, random_resized_crop, rgb_to_hsv, to_float_image, to_uint8_image)
from castvit.ops import IMAGENET_MEAN, IMAGENET_STD

# params vector layout
JITTER, ORDER, FACTORS, GRAY, BLUR, SIGMA, SOLARIZE, FLIP = 0, slice(1, 5), slice(5, 9), 9, 10, 11, 12, 13
NUM_PARAMS = 14


def identity_params() -> torch.Tensor:
    """A params vector that changes nothing."""
    p = torch.zeros(NUM_PARAMS)
    p[ORDER] = torch.arange(4, dtype=torch.float32)
    p[FACTORS] = torch.tensor([1.0, 1.0, 1.0, 0.0])
    return p


def _draw_jitter(p: torch.Tensor, gen: torch.Generator, b: float, c: float, s: float, h: float) -> None:
    """:func:`~castvit.data.transforms.color_jitter`'s draws (order, then the four
    factors), stored in ``p``."""
    p[JITTER] = 1.0
    p[ORDER] = torch.randperm(4, generator=gen).float()
    p[FACTORS] = torch.tensor([_uniform(gen, max(0.0, 1 - b), 1 + b), _uniform(gen, max(0.0, 1 - c), 1 + c),
                               _uniform(gen, max(0.0, 1 - s), 1 + s), _uniform(gen, -h, h)])


def draw_view_params(views: MoCoViews, gen: torch.Generator, which: int) -> torch.Tensor:
    """The random decisions of one view after its crop, drawn in the order
    :meth:`MoCoViews.view` draws them (so the generator ends in the same state)."""
    p = identity_params()
    if _uniform(gen) < views.jitter_prob:
        _draw_jitter(p, gen, *views.jitter)
    p[GRAY] = float(_uniform(gen) < views.grayscale_prob)
    if _uniform(gen) < views.blur_prob[which]:
        p[BLUR] = 1.0
        p[SIGMA] = _uniform(gen, *views.blur_sigma) * views.size / 224.0
    p[SOLARIZE] = float(_uniform(gen) < views.solarize_prob[which])
    p[FLIP] = float(_uniform(gen) < 0.5)
    return p


@dataclass
class DeviceMoCoViews:
    """Worker side of the MoCo views: two uint8 crops and their drawn decisions.

    Same fields as :class:`MoCoViews` (``views``); the superpixels are computed later,
    on the device, by :func:`finish_views`.
    """

    views: MoCoViews = field(default_factory=MoCoViews)

    def __call__(self, image: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        image = to_float_image(image)
        out: dict[str, torch.Tensor] = {}
        for which, suffix in ((0, ""), (1, "2")):
            crop = random_resized_crop(image, self.views.size, gen, scale=tuple(self.views.scale))
            out[f"crop{suffix}"] = to_uint8_image(crop)
            out[f"params{suffix}"] = draw_view_params(self.views, gen, which)
        return out

    @property
    def size(self) -> int:
        return self.views.size

    @property
    def superpixels(self) -> SuperpixelConfig:
        return self.views.superpixels

    def device_batch(self, batch: dict[str, Any], device: torch.device | str) -> dict[str, torch.Tensor]:
        """The device side: :func:`device_moco_batch` with these views' superpixels."""
        return device_moco_batch(batch, self.views.superpixels, device)


# ------------------------------------------------------------------ batched ops (B×3×H×W, [0, 1])
def _luma(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * a + (1 - f) * b).clamp(0, 1)


def _jitter_op(x: torch.Tensor, op: int, factor: torch.Tensor) -> torch.Tensor:
    if op == 0:
        return (x * factor.view(-1, 1, 1, 1)).clamp(0, 1)
    if op == 1:
        return _blend(x, _luma(x).mean((1, 2, 3), keepdim=True), factor)
    if op == 2:
        return _blend(x, _luma(x).expand_as(x), factor)
    hsv = rgb_to_hsv(x)
    hsv = torch.cat([((hsv[:, :1] + factor.view(-1, 1, 1, 1)) % 1.0), hsv[:, 1:]], 1)
    return hsv_to_rgb(hsv).clamp(0, 1)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur; each kernel has radius ⌈3σ⌉ (zero taps beyond
    it, so a wider common padding changes nothing), reflected borders."""
    n, c, hgt, wid = x.shape
    radii = torch.ceil(3.0 * sigma).clamp_min(1).clamp_max(min(hgt, wid) - 1)
    big = int(radii.max())
    taps = torch.arange(-big, big + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (taps[None] / sigma[:, None]) ** 2) * (taps.abs()[None] <= radii[:, None])
    kernel = kernel / kernel.sum(1, keepdim=True)
    kernel = kernel.repeat_interleave(c, 0)  # one per (image, channel)
    out = F.pad(x.reshape(1, n * c, hgt, wid), (big, big, big, big), mode="reflect")
    out = F.conv2d(out, kernel.view(n * c, 1, 1, -1), groups=n * c)
    out = F.conv2d(out, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return out.view(n, c, hgt, wid)


def apply_view_params(crops: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Apply drawn decisions to a batch of crops, on their device.

    Args:
        crops: ``B×3×S×S`` uint8 (or float in [0, 1]).
        params: ``B×NUM_PARAMS`` from :func:`draw_view_params`.

    Returns:
        ``B×3×S×S`` float32 in [0, 1], each image as :meth:`MoCoViews.view` makes it.
    """
    x = crops.float() / 255.0 if crops.dtype == torch.uint8 else crops.float()
    params = params.to(x.device)
    order = params[:, ORDER].long()
    factors = params[:, FACTORS]
    jitter = params[:, JITTER] > 0
    for step in range(4):
        for op in range(4):
            # as the CPU path, an op is skipped when its factor is the identity
            identity = 0.0 if op == 3 else 1.0
            sel = jitter & (order[:, step] == op) & (factors[:, op] != identity)
            idx = sel.nonzero().flatten()
            if idx.numel():
                x = x.index_copy(0, idx, _jitter_op(x[idx], op, factors[idx, op]))
    x = torch.where((params[:, GRAY] > 0).view(-1, 1, 1, 1), _luma(x).expand_as(x), x)
    idx = (params[:, BLUR] > 0).nonzero().flatten()
    if idx.numel():
        x = x.index_copy(0, idx, _gaussian_blur(x[idx], params[idx, SIGMA]))
    x = torch.where((params[:, SOLARIZE] > 0).view(-1, 1, 1, 1) & (x >= 0.5), 1.0 - x, x)
    return torch.where((params[:, FLIP] > 0).view(-1, 1, 1, 1), x.flip(-1), x)


def finish_views(views: torch.Tensor, superpixels: SuperpixelConfig) -> dict[str, torch.Tensor]:
    """Augmented ``B×3×S×S`` [0, 1] views → quantised to uint8 (as the CPU pipeline),
    cut into superpixels, ImageNet-normalised; everything stays on the views' device
    except SEEDS/SLIC, which run on the CPU."""
    quantised = to_uint8_image(views)
    return {"image": _normalize(quantised), "superpixels": superpixels.batch(quantised)}


def _normalize(quantised: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=quantised.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=quantised.device).view(1, 3, 1, 1)
    return (quantised.float() / 255.0 - mean) / std


def device_moco_batch(batch: dict[str, Any], superpixels: SuperpixelConfig, device: torch.device | str
                      ) -> dict[str, torch.Tensor]:
    """A collated batch of :class:`DeviceMoCoViews` samples → the dict the MoCo recipe
    trains on (``image``, ``superpixels``, ``image2``, ``superpixels2``), on ``device``."""
    out = {}
    for suffix in ("", "2"):
        crops = batch[f"crop{suffix}"].to(device, non_blocking=True)
        view = finish_views(apply_view_params(crops, batch[f"params{suffix}"]), superpixels)
        out[f"image{suffix}"], out[f"superpixels{suffix}"] = view["image"], view["superpixels"]
    return {**{k: v for k, v in batch.items() if not k.startswith(("crop", "params"))}, **out}



# ------------------------------------------------------------------ supervised (DeiT) view
# erase vector layout (int64): drawn?, top, left, height, width, noise seed
ERASE_ON, ERASE_TOP, ERASE_LEFT, ERASE_H, ERASE_W, ERASE_SEED = range(6)


def draw_erase(gen: torch.Generator, height: int, width: int, scale: tuple[float, float] = (0.02, 1 / 3),
               ratio: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:
    """:func:`~castvit.data.transforms.random_erase`'s box, drawn as it draws it, and a
    seed for its noise (in place of the noise itself); all zeros when no box fits."""
    box = erase_box(gen, height, width, scale, ratio)
    if box is None:
        return torch.zeros(6, dtype=torch.int64)
    seed = int(torch.randint(0, 2**62, (), generator=gen))
    return torch.tensor([1, *box, seed], dtype=torch.int64)


@dataclass
class DeviceTrainView:
    """Worker side of :class:`~castvit.data.transforms.TrainView`: random resized crop,
    flip and RandAugment (when on) as the CPU view does them, quantised to uint8, and
    the later decisions (colour jitter, random erasing) drawn from the sample's
    generator in the CPU view's order. The sample carries ``crop`` (uint8 ``3×S×S``),
    ``params`` (:data:`NUM_PARAMS` floats; only the jitter fields are used) and
    ``erase`` (6 int64: :data:`ERASE_ON`, box, noise seed)."""

    view: TrainView = field(default_factory=TrainView)

    @property
    def size(self) -> int:
        return self.view.size

    @property
    def superpixels(self) -> SuperpixelConfig:
        return self.view.superpixels

    def __call__(self, image: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        v = self.view
        x = v.geometric(image, gen)
        p = identity_params()
        if v.jitter > 0:
            _draw_jitter(p, gen, v.jitter, v.jitter, v.jitter, 0.0)
        erase = torch.zeros(6, dtype=torch.int64)
        if v.erase_prob > 0 and _uniform(gen) < v.erase_prob:
            erase = draw_erase(gen, v.size, v.size)
        return {"crop": to_uint8_image(x), "params": p, "erase": erase}

    def device_batch(self, batch: dict[str, Any], device: torch.device | str) -> dict[str, torch.Tensor]:
        """Collated worker samples → ``image`` / ``superpixels`` on ``device`` (jitter,
        quantisation, superpixels, normalisation, erasing), other keys passed through."""
        crops = batch["crop"].to(device, non_blocking=True)
        out = finish_views(apply_view_params(crops, batch["params"]), self.view.superpixels)
        image, labels = apply_erase(out["image"], out["superpixels"], batch["erase"])
        rest = {k: v for k, v in batch.items() if k not in ("crop", "params", "erase")}
        return {**rest, "image": image, "superpixels": labels}


def compact_labels(labels: torch.Tensor, bound: int) -> torch.Tensor:
    """Renumber each map of a ``B×H×W`` batch with ids in ``[0, bound)`` to ``0..K_b−1``
    in sorted order (as :func:`~castvit.data.transforms.relabel_compact`), with no host
    synchronisation: a presence table and its running count."""
    flat = labels.flatten(1)
    present = torch.zeros(labels.shape[0], bound, dtype=torch.int64, device=labels.device)
    present.scatter_(1, flat, 1)
    return (present.cumsum(1) - 1).gather(1, flat).view_as(labels)


def apply_erase(images: torch.Tensor, labels: torch.Tensor, erase: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random erasing of normalised ``images`` (Gaussian noise in each drawn box, from
    its own seeded generator on the images' device) and of their ``labels`` (the box
    becomes one new superpixel, the last id, then ids are made compact), as
    :func:`~castvit.data.transforms.random_erase` does. ``erase`` (``B×6``, CPU) is read
    on the host: no device synchronisation."""
    erase = erase.cpu()
    rows = erase[:, ERASE_ON].nonzero().flatten().tolist()
    if not rows:
        return images, labels
    images, labels = images.clone(), labels.clone()
    h, w = labels.shape[-2:]
    new_id = h * w  # above every id: compaction makes it the last one
    for b in rows:
        top, left, eh, ew, seed = (int(v) for v in erase[b, 1:])
        gen = torch.Generator(device=images.device)
        gen.manual_seed(seed)
        images[b, :, top:top + eh, left:left + ew] = torch.randn((3, eh, ew), generator=gen, device=images.device)
        labels[b, top:top + eh, left:left + ew] = new_id
    idx = torch.tensor(rows, device=labels.device)
    labels[idx] = compact_labels(labels[idx], new_id + 1)
    return images, labels


# ------------------------------------------------------------------ segmentation view
# photometric params layout (mmseg's PhotoMetricDistortion)
PM_BRIGHT, PM_DELTA, PM_CONTRAST_FIRST, PM_CONTRAST, PM_ALPHA, PM_SAT, PM_SAT_FACTOR, PM_HUE, PM_HUE_SHIFT = range(9)
NUM_PM_PARAMS = 9


def draw_photometric_params(gen: torch.Generator, brightness_delta: float = 32 / 255,
                            contrast_range: tuple[float, float] = (0.5, 1.5),
                            saturation_range: tuple[float, float] = (0.5, 1.5), hue_delta: float = 18 / 180
                            ) -> torch.Tensor:
    """The draws of :func:`~castvit.data.segmentation.photometric_distortion` (same
    defaults), in its order, as a vector of :data:`NUM_PM_PARAMS`."""
    p = torch.zeros(NUM_PM_PARAMS)
    p[PM_ALPHA] = p[PM_SAT_FACTOR] = 1.0
    if _randint(gen, 0, 1):
        p[PM_BRIGHT], p[PM_DELTA] = 1.0, _uniform(gen, -brightness_delta, brightness_delta)
    contrast_first = bool(_randint(gen, 0, 1))
    p[PM_CONTRAST_FIRST] = float(contrast_first)

    def contrast() -> None:
        if _randint(gen, 0, 1):
            p[PM_CONTRAST], p[PM_ALPHA] = 1.0, _uniform(gen, *contrast_range)

    if contrast_first:
        contrast()
    if _randint(gen, 0, 1):
        p[PM_SAT], p[PM_SAT_FACTOR] = 1.0, _uniform(gen, *saturation_range)
    if _randint(gen, 0, 1):
        p[PM_HUE], p[PM_HUE_SHIFT] = 1.0, _uniform(gen, -hue_delta, hue_delta)
    if not contrast_first:
        contrast()
    return p


def apply_photometric(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """:func:`~castvit.data.segmentation.photometric_distortion` of a ``B×3×H×W``
    [0, 1] batch with drawn ``params`` (``B×NUM_PM_PARAMS``), batched."""
    p = params.to(x.device)

    def col(k: int) -> torch.Tensor:
        return p[:, k].view(-1, 1, 1, 1)

    x = torch.where(col(PM_BRIGHT) > 0, (x + col(PM_DELTA)).clamp(0, 1), x)
    contrast, first = col(PM_CONTRAST) > 0, col(PM_CONTRAST_FIRST) > 0
    x = torch.where(contrast & first, (x * col(PM_ALPHA)).clamp(0, 1), x)
    sat, hue = p[:, PM_SAT].view(-1, 1, 1) > 0, p[:, PM_HUE].view(-1, 1, 1) > 0
    hsv = rgb_to_hsv(x)
    h, s, v = hsv.unbind(1)
    s = torch.where(sat, (s * p[:, PM_SAT_FACTOR].view(-1, 1, 1)).clamp(0, 1), s)
    h = torch.where(hue, (h + p[:, PM_HUE_SHIFT].view(-1, 1, 1)) % 1.0, h)
    x = torch.where((sat | hue).unsqueeze(1), hsv_to_rgb(torch.stack([h, s, v], 1)).clamp(0, 1), x)
    return torch.where(contrast & ~first, (x * col(PM_ALPHA)).clamp(0, 1), x)


def _mean_uint8() -> torch.Tensor:
    return to_uint8_image(torch.tensor(IMAGENET_MEAN).view(3, 1, 1))


@dataclass
class DeviceSegView:
    """Worker side of :class:`~castvit.data.segmentation.SegTrainView`: rescale, crop
    (``cat_max_ratio``), flip, as the CPU view does them, the photometric decisions
    drawn in its order; the crop quantised to uint8 and padded to ``crop_size`` (the
    mean colour; target 255). The sample carries ``crop`` (uint8 ``3×C×C``), ``target``
    (``C×C``), ``params`` (:data:`NUM_PM_PARAMS`) and ``valid`` (the crop's ``h, w``)."""

    view: SegTrainView = field(default_factory=SegTrainView)

    def __post_init__(self) -> None:
        if self.view.crop_size is None:
            raise ValueError("the device path pads every crop to crop_size so that a batch stacks; set crop_size")

    @property
    def size(self) -> int:
        return int(self.view.crop_size)

    @property
    def superpixels(self) -> SegSuperpixels:
        return self.view.superpixels

    def __call__(self, image: torch.Tensor, target: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        v = self.view
        x, t = v.rescale(to_float_image(image), target.long(), gen)
        top, left, bottom, right = v.crop_box(t, gen)
        x, t = x[:, top:bottom, left:right], t[top:bottom, left:right]
        if _uniform(gen) < v.flip_prob:
            x, t = x.flip(-1), t.flip(-1)
        params = draw_photometric_params(gen) if v.photometric else torch.tensor(
            [0, 0, 0, 0, 1, 0, 1, 0, 0], dtype=torch.float32)
        crop = to_uint8_image(x)
        h, w = crop.shape[-2:]
        c = self.size
        padded = _mean_uint8().expand(3, c, c).clone()
        padded[:, :h, :w] = crop
        padded_t = torch.full((c, c), IGNORE_INDEX, dtype=torch.int64)
        padded_t[:h, :w] = t
        return {"crop": padded, "target": padded_t, "params": params, "valid": torch.tensor([h, w])}

    def device_batch(self, batch: dict[str, Any], device: torch.device | str) -> dict[str, torch.Tensor]:
        """Collated worker samples → ``image`` / ``superpixels`` / ``target`` on
        ``device``: photometric distortion, the pad restored to the mean colour,
        quantisation, superpixels of the padded crop, normalisation (pad exactly 0), as
        :func:`~castvit.data.segmentation.finish_seg_view`."""
        crops = batch["crop"].to(device, non_blocking=True)
        n, _, c, _ = crops.shape
        valid = batch["valid"].to(device)
        rows = torch.arange(c, device=crops.device)
        inside = ((rows.view(1, c, 1) < valid[:, 0].view(n, 1, 1))
                  & (rows.view(1, 1, c) < valid[:, 1].view(n, 1, 1))).unsqueeze(1)
        x = apply_photometric(crops.float() / 255.0, batch["params"])
        view = torch.where(inside, to_uint8_image(x), crops)  # the pad keeps its mean colour
        labels = seg_superpixels_batch(view, self.view.superpixels)
        image = torch.where(inside, _normalize(view), torch.zeros((), device=crops.device))
        rest = {k: v for k, v in batch.items() if k not in ("crop", "params", "valid", "target")}
        return {**rest, "image": image, "superpixels": labels,
                "target": batch["target"].to(device, non_blocking=True)}


def seg_superpixels_batch(views: torch.Tensor, sp: SegSuperpixels) -> torch.Tensor:
    """:class:`~castvit.data.segmentation.SegSuperpixels` of a ``B×3×C×C`` uint8 batch:
    one batched call on the device for ``slic_torch``, image by image otherwise."""
    if sp.method != "slic_torch":
        return torch.stack([sp(v) for v in views.cpu()]).to(views.device)
    h, w = views.shape[-2:]
    n = sp.count(h, w)
    x = views
    if sp.scale != 1.0:
        size = (max(8, int(round(h * sp.scale))), max(8, int(round(w * sp.scale))))
        x = to_uint8_image(F.interpolate(x.float() / 255.0, size=size, mode="bilinear", align_corners=False)
                           .clamp(0, 1))
    if sp.wrapped_input:
        x = ((256 - x.long()) % 256).to(torch.uint8)
    return SuperpixelConfig(method="slic_torch", n_segments=n).batch(x)
