"""MoCo-v3 / BYOL view augmentation split in two: loader workers crop, the training
device does the rest, batched.

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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from castvit.data.transforms import (MoCoViews, SuperpixelConfig, _uniform, hsv_to_rgb, random_resized_crop,
                                     rgb_to_hsv, to_float_image, to_uint8_image)
from castvit.ops import IMAGENET_MEAN, IMAGENET_STD

# params vector layout
JITTER, ORDER, FACTORS, GRAY, BLUR, SIGMA, SOLARIZE, FLIP = 0, slice(1, 5), slice(5, 9), 9, 10, 11, 12, 13
NUM_PARAMS = 14


def draw_view_params(views: MoCoViews, gen: torch.Generator, which: int) -> torch.Tensor:
    """The random decisions of one view after its crop, drawn in the order
    :meth:`MoCoViews.view` draws them (so the generator ends in the same state)."""
    p = torch.zeros(NUM_PARAMS)
    p[ORDER] = torch.arange(4, dtype=torch.float32)
    p[FACTORS] = torch.tensor([1.0, 1.0, 1.0, 0.0])
    if _uniform(gen) < views.jitter_prob:
        b, c, s, h = views.jitter
        p[JITTER] = 1.0
        p[ORDER] = torch.randperm(4, generator=gen).float()
        p[FACTORS] = torch.tensor([_uniform(gen, max(0.0, 1 - b), 1 + b), _uniform(gen, max(0.0, 1 - c), 1 + c),
                                   _uniform(gen, max(0.0, 1 - s), 1 + s), _uniform(gen, -h, h)])
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
    if superpixels.method == "slic_torch":
        from castvit.slic_torch import slic_torch

        labels = slic_torch(quantised, superpixels.n_segments, **dict(superpixels.extra))
    else:
        labels = torch.stack([superpixels(im) for im in quantised.cpu()]).to(views.device)
    mean = torch.tensor(IMAGENET_MEAN, device=views.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=views.device).view(1, 3, 1, 1)
    return {"image": (quantised.float() / 255.0 - mean) / std, "superpixels": labels}


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

