"""Semantic segmentation data: the real layouts of ADE20K, Pascal Context and Pascal
VOC 2012 + SBD, the synthetic scenes as segmentation data, and the authors' training
augmentation (PROTOCOLS §1–2), without mmcv or torchvision.

Items of every dataset here: ``image`` uint8 ``3×H×W`` RGB, ``target`` int64 ``H×W``
class ids with 255 = ignore, ``path`` (the image file, or ``synthetic:<index>``).

Label encodings (what :func:`read_label` and the datasets return):

=================  =========================================================
ADE20K             PNG mode L, 0 = "other", 1..150 → reduce-zero-label:
                   0 → 255, k → k − 1 (150 classes, 0..149)
Pascal Context     PNG mode L, 0 = background, 1..59 → kept (60 classes)
VOC 2012 / Aug     PNG mode P (or L), the palette **indices** are the labels,
                   0..20 and 255 = void (21 classes)
SBD ``cls/*.mat``  ``GTcls.Segmentation`` uint8 map, 0..20 (21 classes)
synthetic          ``target="part"``: part type 0..4 (background, disc, rectangle,
                   triangle, ellipse); ``"object"``: 0 background, 1 + class
=================  =========================================================

The training view (:class:`SegTrainView`) is mmseg's pipeline: random rescale
(``img_scale × ratio``, aspect kept), random crop with ``cat_max_ratio``, horizontal
flip, photometric distortion, ImageNet normalisation, padding (image 0 in normalised
units, i.e. the mean colour; label 255). SEEDS runs on every augmented crop from its
true RGB values, ``n = H·W/256``; ``wrapped_input=True`` reproduces the authors'
inverted input (``256 − x`` in uint8, PROTOCOLS §1) for their released checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from castvit.data.datasets import ViewDataset, load_image, sample_generator
from castvit.data.transforms import (
    SuperpixelConfig, _randint, _uniform, hsv_to_rgb, normalize, rgb_to_hsv, to_float_image, to_uint8_image,
)

IGNORE_INDEX = 255

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
CONTEXT_CLASSES = ("background", "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
                   "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer",
                   "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
                   "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform",
                   "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
                   "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood")
SYNTHETIC_PART_CLASSES = ("background", "disc", "rectangle", "triangle", "ellipse")


class LabelFileError(FileNotFoundError):
    """A missing, unreadable or mismatched annotation file."""


# ------------------------------------------------------------------ label files


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Read an annotation as an ``H×W`` uint8/int array of the stored values.

    PNG (mode L, or P whose palette indices are the labels, never converted) or an SBD
    ``cls/*.mat`` (``GTcls.Segmentation``). Raises :class:`LabelFileError` naming the file
    for a missing file, an RGB-rendered label or a ``.mat`` without ``GTcls``."""
    path = Path(path)
    if not path.is_file():
        raise LabelFileError(f"annotation file {str(path)!r} does not exist; check the dataset root and layout "
                             "(see the README section 'Semantic segmentation')")
    if path.suffix.lower() == ".mat":
        from scipy.io import loadmat

        try:
            mat = loadmat(str(path))
            return np.ascontiguousarray(mat["GTcls"]["Segmentation"][0, 0])
        except (KeyError, ValueError, IndexError, TypeError, OSError) as exc:
            raise LabelFileError(f"{str(path)!r} is not an SBD class map (expected a struct GTcls with field "
                                 f"Segmentation): {exc}; use the cls/ folder of SBD, not inst/") from None
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.array(im)
    except Exception as exc:
        raise LabelFileError(f"cannot read annotation {str(path)!r}: {exc}") from exc
    if mode not in ("L", "P", "I", "I;16"):
        raise LabelFileError(f"annotation {str(path)!r} has mode {mode}; label maps must be single-channel PNGs "
                             "(mode L, or P with the class ids as palette indices). A colour-rendered label (RGB) "
                             "cannot be read; use the original SegmentationClass / SegmentationClassAug files")
    return arr


def reduce_zero_label(target: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """mmseg's reduce-zero-label: 0 → 255 (ignored), k → k − 1; 255 stays 255."""
    if torch.is_tensor(target):
        t = target.long()
        return torch.where((t == 0) | (t == IGNORE_INDEX), torch.full_like(t, IGNORE_INDEX), t - 1)
    t = np.asarray(target).astype(np.int64)
    return np.where((t == 0) | (t == IGNORE_INDEX), IGNORE_INDEX, t - 1)


class SegmentationPairs(Dataset):
    """Image / annotation file pairs.

    Args:
        pairs: ``(image_path, label_path)`` list.
        num_classes: classes after decoding; values ≥ ``num_classes`` other than 255 are
            an error naming the file (a wrong dataset kind or ``reduce_zero_label``).
        reduce_zero_label: apply :func:`reduce_zero_label` (ADE20K).
        class_names: names by class id.
    """

    def __init__(self, pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike]], num_classes: int, *,
                 reduce_zero_label: bool = False, class_names: Sequence[str] | None = None):
        if not pairs:
            raise FileNotFoundError("the segmentation dataset is empty: no image / annotation pairs were found")
        self.pairs = [(Path(a), Path(b)) for a, b in pairs]
        self.num_classes = int(num_classes)
        self.reduce_zero_label = reduce_zero_label
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")

    def __len__(self) -> int:
        return len(self.pairs)

    def load_target(self, index: int) -> torch.Tensor:
        label_path = self.pairs[index][1]
        t = read_label(label_path).astype(np.int64)
        if self.reduce_zero_label:
            t = reduce_zero_label(t)
        bad = (t != IGNORE_INDEX) & ((t < 0) | (t >= self.num_classes))
        if bad.any():
            raise LabelFileError(f"annotation {str(label_path)!r} has values {sorted(np.unique(t[bad]).tolist())[:8]} "
                                 f"outside 0..{self.num_classes - 1} and {IGNORE_INDEX}"
                                 f"{' after reduce-zero-label' if self.reduce_zero_label else ''}; "
                                 "is this the right dataset kind?")
        return torch.from_numpy(t)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path, label_path = self.pairs[index]
        if not image_path.is_file():
            raise FileNotFoundError(f"image {str(image_path)!r} (listed for {str(label_path)!r}) does not exist")
        image = load_image(image_path)
        target = self.load_target(index)
        if tuple(image.shape[-2:]) != tuple(target.shape):
            raise LabelFileError(f"annotation {str(label_path)!r} is {tuple(target.shape)[1]}×{tuple(target.shape)[0]} "
                                 f"but its image {str(image_path)!r} is {image.shape[2]}×{image.shape[1]} (W×H); "
                                 "the pair does not belong together")
        return {"image": image, "target": target, "path": str(image_path)}


def _pair_by_stem(images: Path, labels: Path, stems: Sequence[str] | None, label_ext: str,
                  image_ext: str = ".jpg") -> list[tuple[Path, Path]]:
    if not images.is_dir():
        raise FileNotFoundError(f"image folder {str(images)!r} does not exist")
    if not labels.is_dir():
        raise FileNotFoundError(f"annotation folder {str(labels)!r} does not exist")
    if stems is None:
        stems = sorted(p.stem for p in images.iterdir() if p.suffix.lower() == image_ext)
    pairs = []
    for s in stems:
        label = labels / f"{s}{label_ext}"
        if not label.is_file():
            raise LabelFileError(f"annotation {str(label)!r} for image {str(images / (s + image_ext))!r} "
                                 "does not exist; the image and annotation folders do not match")
        pairs.append((images / f"{s}{image_ext}", label))
    return pairs


def _read_split(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"split list {str(path)!r} does not exist")
    return [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip()]


def ade20k_class_names(root: str | os.PathLike | None) -> list[str]:
    """The 150 names from ``objectInfo150.csv`` (first synonym), or ``class_k``."""
    csv = Path(root) / "objectInfo150.csv" if root is not None else None
    if csv is not None and csv.is_file():
        rows = [ln.split(",") for ln in csv.read_text().splitlines()[1:] if ln.strip()]
        names = [r[-1].split(";")[0].strip() for r in rows]
        if len(names) == 150:
            return names
    return [f"class_{i}" for i in range(150)]


def ade20k(root: str | os.PathLike, split: str | None = "validation") -> SegmentationPairs:
    """ADE20K (``ADEChallengeData2016``): ``images/<split>/*.jpg`` and
    ``annotations/<split>/*.png``; ``split=None`` reads ``images/`` and ``annotations/``
    directly (the sample layout). Reduce-zero-label, 150 classes."""
    root = Path(root)
    sub = (lambda p: p / split) if split else (lambda p: p)
    pairs = _pair_by_stem(sub(root / "images"), sub(root / "annotations"), None, ".png")
    return SegmentationPairs(pairs, 150, reduce_zero_label=True, class_names=ade20k_class_names(root))


def pascal_context(root: str | os.PathLike, split: str = "val") -> SegmentationPairs:
    """Pascal Context, 60 classes (0 = background): ``root`` is ``VOCdevkit/VOC2010``
    with ``JPEGImages/``, ``SegmentationClassContext/*.png`` and
    ``ImageSets/SegmentationContext/{train,val}.txt``."""
    root = Path(root)
    stems = _read_split(root / "ImageSets" / "SegmentationContext" / f"{split}.txt")
    pairs = _pair_by_stem(root / "JPEGImages", root / "SegmentationClassContext", stems, ".png")
    return SegmentationPairs(pairs, 60, class_names=CONTEXT_CLASSES)


def voc_aug(root: str | os.PathLike, split: str = "val") -> SegmentationPairs:
    """Pascal VOC 2012 (+ SBD "train_aug"), 21 classes, 255 void. ``root`` is
    ``VOCdevkit/VOC2012``: ``JPEGImages/``, ``SegmentationClass/`` (val),
    ``SegmentationClassAug/`` (train_aug: the SBD-derived PNGs) and
    ``ImageSets/Segmentation/{train_aug,train,val}.txt``."""
    root = Path(root)
    stems = _read_split(root / "ImageSets" / "Segmentation" / f"{split}.txt")
    folder = "SegmentationClassAug" if split == "train_aug" else "SegmentationClass"
    if split != "train_aug" and not (root / folder).is_dir() and (root / "SegmentationClassAug").is_dir():
        folder = "SegmentationClassAug"
    pairs = _pair_by_stem(root / "JPEGImages", root / folder, stems, ".png")
    return SegmentationPairs(pairs, 21, class_names=VOC_CLASSES)


def sbd(root: str | os.PathLike, split: str | None = None) -> SegmentationPairs:
    """SBD raw: ``img/*.jpg`` and ``cls/*.mat`` (``GTcls.Segmentation``), 21 classes;
    ``split`` reads ``<split>.txt`` (``train``/``val``) when given."""
    root = Path(root)
    stems = _read_split(root / f"{split}.txt") if split else None
    pairs = _pair_by_stem(root / "img", root / "cls", stems, ".mat")
    return SegmentationPairs(pairs, 21, class_names=VOC_CLASSES)


class SyntheticSegmentation(Dataset):
    """castvit's synthetic scenes as semantic segmentation data.

    ``target="part"``: every pixel's part type (5 classes: background, disc,
    rectangle, triangle, ellipse); ``"object"``: 0 background, 1 + the object's class.
    """

    def __init__(self, num_images: int, *, seed: int = 0, target: str = "part", **scene_config: Any):
        from castvit.data.synthetic import SceneConfig, class_names

        if target not in ("part", "object"):
            raise ValueError(f"synthetic target must be 'part' or 'object', got {target!r}")
        if "scale_range" in scene_config:
            scene_config["scale_range"] = tuple(scene_config["scale_range"])
        self.config = SceneConfig(**scene_config)
        self.num_images, self.seed, self.target = int(num_images), int(seed), target
        if target == "part":
            self.class_names = list(SYNTHETIC_PART_CLASSES)
        else:
            self.class_names = ["background"] + class_names(self.config)
        self.num_classes = len(self.class_names)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> dict[str, Any]:
        from castvit.data.synthetic import generate_scene

        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} scenes")
        s = generate_scene(index, self.config, self.seed)
        if self.target == "part":
            t = s.part_class[s.part_mask]
        else:
            t = np.where(s.object_mask > 0, s.label + 1, 0)
        return {"image": torch.from_numpy(np.ascontiguousarray(s.image.transpose(2, 0, 1))),
                "target": torch.from_numpy(t.astype(np.int64)), "path": f"synthetic:{index}"}


DATASET_KINDS = ("ade20k", "pascal_context", "voc_aug", "sbd", "synthetic")


def build_segmentation_dataset(data: dict[str, Any], split: str) -> Dataset:
    """The ``train`` or ``val`` dataset of a segmentation recipe's ``data`` section
    (keys: ``kind``, ``root``, ``train_split``, ``val_split``; synthetic: ``train_size``,
    ``val_size``, ``seed``, ``target``, ``scene``)."""
    kind = data.get("kind")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if kind == "synthetic":
        size = int(data.get(f"{split}_size", 0) or 0)
        seed = int(data.get("seed", 0)) + (1 if split == "val" else 0)
        return SyntheticSegmentation(size, seed=seed, target=data.get("target", "part"), **(data.get("scene") or {}))
    defaults = {"ade20k": ("training", "validation"), "pascal_context": ("train", "val"),
                "voc_aug": ("train_aug", "val"), "sbd": ("train", "val")}
    if kind not in defaults:
        raise ValueError(f"data.kind must be one of {', '.join(DATASET_KINDS)}, got {kind!r}")
    if not data.get("root"):
        raise ValueError(f"data.root (the {kind} folder) is required; see the README section "
                         "'Semantic segmentation' for the layout")
    name = data.get(f"{split}_split") or defaults[kind][split == "val"]
    builder = {"ade20k": ade20k, "pascal_context": pascal_context, "voc_aug": voc_aug, "sbd": sbd}[kind]
    return builder(data["root"], name)


# ------------------------------------------------------------------ augmentation


def resize_pair(image: torch.Tensor, target: torch.Tensor | None, size: tuple[int, int]):
    """Image bilinear (float ``3×H×W``), target nearest, to ``size`` = (H, W)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image, target
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1)
    if target is not None:
        target = F.interpolate(target[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return image, target


def rescale_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmseg's keep-ratio rescale: the largest size with the image's aspect that fits
    in ``scale`` = (long edge, short edge)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def photometric_distortion(image: torch.Tensor, gen: torch.Generator, brightness_delta: float = 32 / 255,
                           contrast_range: tuple[float, float] = (0.5, 1.5),
                           saturation_range: tuple[float, float] = (0.5, 1.5), hue_delta: float = 18 / 180
                           ) -> torch.Tensor:
    """mmseg's PhotoMetricDistortion on a ``[0, 1]`` image, each step with probability ½:
    additive brightness, multiplicative contrast (before or after the HSV steps, at
    random), saturation scale, hue shift (in turns: mmseg's 18 of 180 = 0.1)."""
    x = image
    if _randint(gen, 0, 1):
        x = (x + _uniform(gen, -brightness_delta, brightness_delta)).clamp(0, 1)
    contrast_first = bool(_randint(gen, 0, 1))

    def contrast(y):
        if _randint(gen, 0, 1):
            y = (y * _uniform(gen, *contrast_range)).clamp(0, 1)
        return y

    if contrast_first:
        x = contrast(x)
    hsv = None
    if _randint(gen, 0, 1):
        hsv = rgb_to_hsv(x)
        hsv[1] = (hsv[1] * _uniform(gen, *saturation_range)).clamp(0, 1)
    if _randint(gen, 0, 1):
        hsv = rgb_to_hsv(x) if hsv is None else hsv
        hsv[0] = (hsv[0] + _uniform(gen, -hue_delta, hue_delta)) % 1.0
    if hsv is not None:
        x = hsv_to_rgb(hsv).clamp(0, 1)
    if not contrast_first:
        x = contrast(x)
    return x


@dataclass
class SegSuperpixels:
    """SEEDS for segmentation views (PROTOCOLS §1): ``n = H·W / pixels_per_superpixel``
    of the (padded) crop, or ``n_segments`` if given; 5 bins, 15 iterations.

    ``scale``: compute on the crop resized by this factor (SPML: 0.5), with the count
    of the full crop. ``wrapped_input``: feed SEEDS ``(256 − x) mod 256`` as the authors'
    pipeline did. ``method='grid'`` (tests) gives square cells."""

    method: str = "seeds"
    pixels_per_superpixel: int = 256
    n_segments: int | None = None
    histogram_bins: int = 5
    num_iterations: int = 15
    scale: float = 1.0
    wrapped_input: bool = False

    def count(self, height: int, width: int) -> int:
        if self.n_segments:
            return int(self.n_segments)
        return max(1, (height * width) // int(self.pixels_per_superpixel))

    def __call__(self, image_uint8: torch.Tensor) -> torch.Tensor:
        """``3×H×W`` uint8 → ``h×w`` int64 labels (``h×w`` = ``H×W`` times ``scale``)."""
        h, w = image_uint8.shape[-2:]
        n = self.count(h, w)
        x = image_uint8
        if self.scale != 1.0:
            size = (max(8, int(round(h * self.scale))), max(8, int(round(w * self.scale))))
            x = to_uint8_image(resize_pair(x.float() / 255.0, None, size)[0])
        if self.wrapped_input:
            x = ((256 - x.long()) % 256).to(torch.uint8)
        cfg = SuperpixelConfig(method=self.method, n_segments=n, histogram_bins=self.histogram_bins,
                               num_iterations=self.num_iterations)
        return cfg(x)


@dataclass
class SegTrainView:
    """The authors' training augmentation (PROTOCOLS §1–2) for an ``(image, target)`` pair.

    Attributes:
        crop_size: square crop side (512 ADE20K / VOC, 480 Pascal Context).
        img_scale: (long, short) target scale of the random rescale ((2048, 512) ADE,
            (2080, 520) Context); ``None`` rescales the image itself by the ratio (SPML).
        ratio_range: random ratio range (0.5–2.0 Segmenter; 0.5–1.5 SPML).
        cat_max_ratio: retry the crop (up to 10 times) while one class covers more than
            this fraction of its labelled pixels (0.75; None: off).
        flip_prob: horizontal flip probability.
        photometric: mmseg's photometric distortion.
        superpixels: :class:`SegSuperpixels`.
    """

    crop_size: int = 512
    img_scale: tuple[int, int] | None = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float | None = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    superpixels: SegSuperpixels = field(default_factory=SegSuperpixels)

    def rescale(self, image: torch.Tensor, target: torch.Tensor, gen: torch.Generator):
        h, w = image.shape[-2:]
        ratio = _uniform(gen, *self.ratio_range)
        if self.img_scale is not None:
            size = rescale_size(h, w, (int(self.img_scale[0] * ratio), int(self.img_scale[1] * ratio)))
        else:
            size = (int(h * ratio + 0.5), int(w * ratio + 0.5))
        return resize_pair(image, target, (max(size[0], 1), max(size[1], 1)))

    def crop_box(self, target: torch.Tensor, gen: torch.Generator) -> tuple[int, int, int, int]:
        h, w = target.shape
        c = self.crop_size
        box = (0, 0, 0, 0)
        for _ in range(10 if self.cat_max_ratio is not None else 1):
            top, left = _randint(gen, 0, max(h - c, 0)), _randint(gen, 0, max(w - c, 0))
            box = (top, left, min(top + c, h), min(left + c, w))
            if self.cat_max_ratio is None:
                break
            crop = target[box[0]:box[2], box[1]:box[3]]
            counts = torch.bincount(crop[crop != IGNORE_INDEX].flatten(), minlength=1)
            counts = counts[counts > 0]
            if len(counts) > 1 and float(counts.max()) / float(counts.sum()) < self.cat_max_ratio:
                break
        return box

    def __call__(self, image: torch.Tensor, target: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
        x = to_float_image(image)
        x, t = self.rescale(x, target.long(), gen)
        top, left, bottom, right = self.crop_box(t, gen)
        x, t = x[:, top:bottom, left:right], t[top:bottom, left:right]
        if _uniform(gen) < self.flip_prob:
            x, t = x.flip(-1), t.flip(-1)
        if self.photometric:
            x = photometric_distortion(x, gen)
        return finish_seg_view(x, t, self.crop_size, self.superpixels)


def finish_seg_view(image01: torch.Tensor, target: torch.Tensor | None, crop_size: int | None,
                    superpixels: SegSuperpixels) -> dict[str, torch.Tensor]:
    """Quantise to uint8, pad to ``crop_size`` (the mean colour, i.e. 0 after
    normalisation; label 255), SEEDS on that true RGB crop, normalise."""
    view = to_uint8_image(image01)
    h, w = view.shape[-2:]
    if crop_size is not None and (h < crop_size or w < crop_size):
        ph, pw = max(crop_size - h, 0), max(crop_size - w, 0)
        from castvit.ops import IMAGENET_MEAN

        mean = to_uint8_image(torch.tensor(IMAGENET_MEAN).view(3, 1, 1)).expand(3, h + ph, w + pw).clone()
        mean[:, :h, :w] = view
        view = mean
        if target is not None:
            target = F.pad(target, (0, pw, 0, ph), value=IGNORE_INDEX)
    out = {"image": normalize(view.float() / 255.0), "superpixels": superpixels(view)}
    if crop_size is not None and (h < crop_size or w < crop_size):
        out["image"][:, h:, :] = 0.0  # exactly 0 (mmseg pads after normalising)
        out["image"][:, :, w:] = 0.0
    if target is not None:
        out["target"] = target.long()
    return out


class SegViewDataset(ViewDataset):
    """:class:`~castvit.data.datasets.ViewDataset` for ``(image, target)`` pairs: the
    view pipeline gets both, seeded from ``(seed, epoch, index)`` as every castvit
    loader is (so :func:`~castvit.data.datasets.build_loader` resumes it exactly)."""

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = (key, 0) if isinstance(key, (int, np.integer)) else key
        item = self.dataset[index]
        out = self.transform(item["image"], item["target"], sample_generator(self.seed, epoch, index))
        out["index"] = index
        out["skipped"] = 0
        return out


def seg_view_from_config(data: dict[str, Any]) -> SegTrainView:
    """:class:`SegTrainView` from a recipe's ``data`` section (``crop_size``,
    ``img_scale``, ``ratio_range``, ``cat_max_ratio``, ``flip_prob``, ``photometric``,
    ``superpixels``)."""
    sp = SegSuperpixels(**dict(data.get("superpixels") or {}))
    kw = {k: data[k] for k in ("crop_size", "img_scale", "ratio_range", "cat_max_ratio", "flip_prob", "photometric")
          if k in data}
    for k in ("img_scale", "ratio_range"):
        if kw.get(k) is not None:
            kw[k] = tuple(kw[k])
    return SegTrainView(superpixels=sp, **kw)


__all__ = ["CONTEXT_CLASSES", "DATASET_KINDS", "IGNORE_INDEX", "LabelFileError", "SYNTHETIC_PART_CLASSES",
           "SegSuperpixels", "SegTrainView", "SegViewDataset", "SegmentationPairs", "SyntheticSegmentation",
           "VOC_CLASSES", "ade20k", "ade20k_class_names", "build_segmentation_dataset", "finish_seg_view",
           "pascal_context", "photometric_distortion", "read_label", "reduce_zero_label", "rescale_size",
           "resize_pair", "sbd", "seg_view_from_config", "voc_aug"]
