"""Synthetic stand-ins for Pascal VOC and PartImageNet, written in their exact layouts.

The label-free protocols (:mod:`castvit.eval.retrieval`, :mod:`castvit.eval.partimagenet`)
read real dataset folders. These writers put castvit's synthetic part scenes
(:mod:`castvit.data.synthetic`) into the same folders and file formats, so both
protocols run end to end in the test suite and on a CPU, through the very readers
that read the real datasets.

:func:`write_voc_layout` → ``ROOT/VOC2012/``::

    JPEGImages/<id>.jpg                      RGB JPEG
    SegmentationClass/<id>.png               mode P, palette indices = class ids
    SegmentationClassAug/<id>.png            same files (train_aug reads these)
    ImageSets/Segmentation/{train_aug,train,val}.txt
    castvit_classes.txt                      class names, one per line (castvit's own)

Class ids: 0 background, ``1 + label`` for the scene's object class; with
``void_px > 0`` the object's outer rim (pixels of the object within ``void_px`` of the
background, 4-neighbourhood) is 255 like VOC's "void" band.

:func:`write_partimagenet_layout` → ``ROOT/``::

    images/<split>/<wnid>/<wnid>_<k>.JPEG
    annotations/<split>/<split>.json         COCO-style

Each object class is a supercategory (``"Totem"``, …) with three parts
(``"Totem Head"``, ``"Totem Body"``, ``"Totem Foot"``); category ids are
``3·class + role`` (head 0, body 1, foot 2). Every visible part is one annotation;
their masks rotate through the three COCO encodings: polygons (one rectangle per row
run of the mask, whose union is the mask exactly), a compressed RLE string and an
uncompressed RLE list.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from castvit.data.partimagenet import encode_rle
from castvit.data.synthetic import DISC, ELLIPSE, RECTANGLE, TRIANGLE, SceneConfig, class_names, generate_scene

PART_ROLES = ("Head", "Body", "Foot")
_ROLE_OF_TYPE = {DISC: 0, TRIANGLE: 0, RECTANGLE: 1, ELLIPSE: 2}


def voc_palette() -> list[int]:
    """The Pascal VOC colour map (bit-interleaved class ids), 256×3 values."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def _rim(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` 4-steps of a pixel outside it."""
    inner = mask.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:] &= inner[:-1]
        shrunk[:-1] &= inner[1:]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return mask & ~inner


def _scene_config(scene: dict[str, Any] | SceneConfig | None) -> SceneConfig:
    if isinstance(scene, SceneConfig):
        return scene
    return SceneConfig(**(scene or {}))


def write_voc_layout(root: str | os.PathLike, *, num_train: int = 64, num_val: int = 32, seed: int = 0,
                     scene: dict[str, Any] | SceneConfig | None = None, void_px: int = 1,
                     jpeg_quality: int = 95) -> Path:
    """Write synthetic scenes as a Pascal VOC 2012 folder; returns ``ROOT/VOC2012``.

    Train scenes use ``seed``, val scenes ``seed + 1`` (disjoint). See the module
    docstring for the layout and the labels.
    """
    from PIL import Image

    cfg = _scene_config(scene)
    base = Path(root) / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    lists: dict[str, list[str]] = {"train_aug": [], "val": []}
    for split, n, s in (("train_aug", num_train, seed), ("val", num_val, seed + 1)):
        for i in range(n):
            sc = generate_scene(i, cfg, s)
            stem = f"{'2000' if split == 'train_aug' else '2001'}_{i:06d}"
            obj = sc.object_mask > 0
            label = np.where(obj, sc.label + 1, 0).astype(np.uint8)
            if void_px > 0:
                label[_rim(obj, void_px)] = 255
            Image.fromarray(sc.image).save(base / "JPEGImages" / f"{stem}.jpg", quality=jpeg_quality)
            png = Image.fromarray(label, mode="P")
            png.putpalette(palette)
            for folder in ("SegmentationClass", "SegmentationClassAug"):
                png.save(base / folder / f"{stem}.png")
            lists[split].append(stem)
    lists["train"] = lists["train_aug"]
    for name, stems in lists.items():
        (base / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("".join(f"{s}\n" for s in stems))
    (base / "castvit_classes.txt").write_text("\n".join(["background"] + class_names(cfg)) + "\n")
    return base


def row_run_polygons(mask: np.ndarray) -> list[list[float]]:
    """One rectangle polygon per horizontal run of ``mask``; their union is the mask
    exactly under the pixel-centre rule of :func:`castvit.data.partimagenet.polygon_mask`."""
    polys = []
    for y, row in enumerate(np.asarray(mask, dtype=bool)):
        padded = np.concatenate([[False], row, [False]]).astype(np.int8)
        edges = np.flatnonzero(np.diff(padded))
        for x0, x1 in zip(edges[0::2], edges[1::2]):
            polys.append([float(x0), float(y), float(x1), float(y), float(x1), float(y + 1), float(x0), float(y + 1)])
    return polys


def partimagenet_vocabulary(cfg: SceneConfig) -> list[dict[str, Any]]:
    """COCO ``categories`` of the synthetic PartImageNet: ids ``3·class + role``."""
    cats = []
    for c, name in enumerate(class_names(cfg)):
        sup = name.capitalize()
        for r, role in enumerate(PART_ROLES):
            cats.append({"id": 3 * c + r, "name": f"{sup} {role}", "supercategory": sup})
    return cats


def write_partimagenet_layout(root: str | os.PathLike, *, num_images: int = 24, split: str = "val", seed: int = 0,
                              scene: dict[str, Any] | SceneConfig | None = None,
                              jpeg_quality: int = 95) -> Path:
    """Write synthetic scenes as a PartImageNet split (module docstring); returns ``root``."""
    from PIL import Image

    cfg = _scene_config(scene)
    root = Path(root)
    ann_dir = root / "annotations" / split
    ann_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    encodings = ("polygon", "rle_string", "rle_list")
    for i in range(num_images):
        sc = generate_scene(i, cfg, seed)
        wnid = f"n{9000000 + sc.label:08d}"
        name = f"{wnid}_{i}.JPEG"
        folder = root / "images" / split / wnid
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sc.image).save(folder / name, format="JPEG", quality=jpeg_quality)
        h, w = sc.part_mask.shape
        images.append({"id": i, "file_name": name, "height": int(h), "width": int(w)})
        for pid in range(1, int(sc.part_mask.max()) + 1):
            mask = sc.part_mask == pid
            if not mask.any():
                continue
            kind = encodings[len(anns) % 3]
            if kind == "polygon":
                seg: Any = row_run_polygons(mask)
            else:
                seg = encode_rle(mask, compressed=kind == "rle_string")
            ys, xs = np.nonzero(mask)
            anns.append({"id": len(anns), "image_id": i,
                         "category_id": 3 * int(sc.label) + _ROLE_OF_TYPE[int(sc.part_class[pid])],
                         "segmentation": seg, "area": int(mask.sum()), "iscrowd": 0,
                         "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                  int(ys.max() - ys.min() + 1)]})
    data = {"images": images, "annotations": anns, "categories": partimagenet_vocabulary(cfg)}
    (ann_dir / f"{split}.json").write_text(json.dumps(data))
    return root


__all__ = ["PART_ROLES", "partimagenet_vocabulary", "row_run_polygons", "voc_palette", "write_partimagenet_layout",
           "write_voc_layout"]
