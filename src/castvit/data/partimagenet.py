"""PartImageNet: COCO-style part annotations and image folders (PROTOCOLS §4).

Layout (the OOD split the paper scores)::

    ROOT/images/<split>/<wnid>/<file>       e.g. images/val/n02085620/n02085620_1234.JPEG
    ROOT/annotations/<split>/<split>.json   (or any JSON given with ``annotations=``)

The JSON is COCO-style: ``images`` (``id``, ``file_name``, ``height``, ``width``),
``annotations`` (``image_id``, ``category_id``, ``segmentation``) and ``categories``
(``id``, ``name`` such as ``"Quadruped Head"``, ``supercategory`` such as
``"Quadruped"``). Ground truth of one image (:meth:`PartImageNet.targets`):

* **fine** map: the part (category) index of every pixel; categories are indexed
  in the order of their ids (0..P−1, P = 40 for PartImageNet); unannotated pixels
  are P (**40**);
* **coarse** map: the supercategory index of the pixel's part; supercategories are
  indexed in the order they first appear among the categories sorted by id
  (PartImageNet: Quadruped, Biped, Fish, Bird, Snake, Reptile, Car, Bicycle, Boat,
  Aeroplane, Bottle); unannotated pixels are S (**11**);
* annotations are painted in the order of the JSON's ``annotations`` list, so a
  later annotation overwrites an earlier one where they overlap.

**Mask decoding** is written here (no pycocotools: one less compiled dependency, and
the rules are short and stated):

* RLE (``{"size": [h, w], "counts": ...}``): run lengths over the pixels in
  column-major order, starting with a run of zeros; ``counts`` is a list of ints
  (uncompressed) or COCO's compressed string (6 bits per character offset by 48,
  5 data bits and a continuation bit, the value sign-extended, and from the third
  run on each value stored as the difference to the run two before).
* Polygons (a list of ``[x0, y0, x1, y1, ...]`` in pixel units, pixel ``(x, y)``
  covering ``[x, x+1]×[y, y+1]``): a pixel belongs to a polygon when its centre
  ``(x + ½, y + ½)`` is inside by the even-odd rule; an annotation with several
  polygons is their union. pycocotools rasterises polygons its own way (edges traced
  on a 5× grid); on pixels whose centre lies within about half a pixel of an edge the
  two rules may differ.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np


class AnnotationError(ValueError):
    """An annotation file or entry castvit cannot read; the message names it and the fix."""


# ------------------------------------------------------------------ mask decoding


def rle_string_to_counts(s: str | bytes) -> list[int]:
    """Decode COCO's compressed RLE string into run lengths."""
    if isinstance(s, bytes):
        s = s.decode("ascii")
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise AnnotationError(f"compressed RLE string ends inside a value: {s[:40]!r}")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise AnnotationError(f"character {s[p]!r} cannot appear in a compressed RLE string")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def counts_to_rle_string(counts: Sequence[int]) -> str:
    """Encode run lengths as COCO's compressed RLE string (inverse of
    :func:`rle_string_to_counts`)."""
    out = []
    for i, v in enumerate(counts):
        x = int(v) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """``{"size": [h, w], "counts": list | str}`` → ``h×w`` bool mask."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError):
        raise AnnotationError("an RLE segmentation needs 'size' [h, w] and 'counts'") from None
    if isinstance(counts, (str, bytes)):
        counts = rle_string_to_counts(counts)
    counts = np.asarray(counts, dtype=np.int64)
    if (counts < 0).any():
        raise AnnotationError("RLE run lengths must be >= 0")
    if int(counts.sum()) != h * w:
        raise AnnotationError(f"RLE runs cover {int(counts.sum())} pixels but the size {h}×{w} has {h * w}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape(w, h).T.copy()


def encode_rle(mask: np.ndarray, *, compressed: bool = True) -> dict[str, Any]:
    """``h×w`` bool mask → COCO RLE (``counts`` a compressed string, or a list)."""
    m = np.asarray(mask, dtype=bool)
    flat = m.T.reshape(-1).astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    return {"size": [int(m.shape[0]), int(m.shape[1])],
            "counts": counts_to_rle_string(runs) if compressed else [int(r) for r in runs]}


def polygon_mask(polygon: Sequence[float], height: int, width: int) -> np.ndarray:
    """Pixels whose centre lies inside ``polygon`` (even-odd rule), ``height×width`` bool."""
    pts = np.asarray(polygon, dtype=np.float64).reshape(-1)
    if pts.size < 6 or pts.size % 2:
        raise AnnotationError(f"a polygon needs at least 3 (x, y) points, got {pts.size} numbers")
    x, y = pts[0::2], pts[1::2]
    x2, y2 = np.roll(x, -1), np.roll(y, -1)
    cy = np.arange(height) + 0.5
    mask = np.zeros((height, width), dtype=bool)
    cx = np.arange(width) + 0.5
    for yc, row in zip(cy, mask):
        # edges crossing the scanline (half-open in y so a vertex is counted once)
        cross = (y <= yc) != (y2 <= yc)
        if not cross.any():
            continue
        xa, ya, xb, yb = x[cross], y[cross], x2[cross], y2[cross]
        xs = np.sort(xa + (yc - ya) * (xb - xa) / (yb - ya))
        # a centre is inside when an odd number of crossings lie to its left
        row[:] = np.searchsorted(xs, cx, side="left") % 2 == 1
    return mask


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygon list or RLE dict) → ``height×width`` bool mask."""
    if isinstance(seg, dict):
        mask = decode_rle(seg)
        if mask.shape != (height, width):
            raise AnnotationError(f"RLE size {list(mask.shape)} differs from the image's {height}×{width}")
        return mask
    if isinstance(seg, (list, tuple)):
        if not seg:
            return np.zeros((height, width), dtype=bool)
        if all(isinstance(v, (int, float)) for v in seg):
            seg = [seg]
        mask = np.zeros((height, width), dtype=bool)
        for poly in seg:
            mask |= polygon_mask(poly, height, width)
        return mask
    raise AnnotationError(f"segmentation must be a list of polygons or an RLE dict, got {type(seg).__name__}")


# ------------------------------------------------------------------ dataset


@dataclass(frozen=True)
class PartVocabulary:
    """Names and indices of the fine (part) and coarse (supercategory) classes.

    Attributes:
        part_names: category names by fine index (``"Quadruped Head"``, …).
        supercategories: supercategory names by coarse index.
        part_super: coarse index of every fine index.
        category_ids: the JSON category id of every fine index.
    """

    part_names: tuple[str, ...]
    supercategories: tuple[str, ...]
    part_super: tuple[int, ...]
    category_ids: tuple[int, ...]

    @property
    def fine_background(self) -> int:
        return len(self.part_names)

    @property
    def coarse_background(self) -> int:
        return len(self.supercategories)

    @property
    def num_fine(self) -> int:
        """Fine classes including background (41 for PartImageNet)."""
        return len(self.part_names) + 1

    @property
    def num_coarse(self) -> int:
        """Coarse classes including background (12 for PartImageNet)."""
        return len(self.supercategories) + 1

    def parts_of(self, coarse: int) -> list[int]:
        """Fine indices of the parts of supercategory ``coarse``."""
        return [i for i, s in enumerate(self.part_super) if s == coarse]

    @classmethod
    def from_categories(cls, categories: Sequence[dict[str, Any]], where: str = "the annotation file"
                        ) -> "PartVocabulary":
        if not categories:
            raise AnnotationError(f"{where} has no 'categories'")
        try:
            cats = sorted(categories, key=lambda c: int(c["id"]))
            names = tuple(str(c["name"]) for c in cats)
            supers_of = [str(c["supercategory"]) for c in cats]
        except (KeyError, TypeError, ValueError):
            raise AnnotationError(f"every category of {where} needs 'id', 'name' and 'supercategory'") from None
        supers: list[str] = []
        for s in supers_of:
            if s not in supers:
                supers.append(s)
        return cls(names, tuple(supers), tuple(supers.index(s) for s in supers_of),
                   tuple(int(c["id"]) for c in cats))


class PartImageNet:
    """PartImageNet images and their fine / coarse ground truth (module docstring).

    Args:
        root: dataset root (``images/`` below it).
        split: image sub-folder, ``"val"`` for the OOD split (also ``"test"``/``"train"``).
        annotations: the COCO JSON (default: ``root/annotations/<split>/<split>.json``,
            else ``root/annotations/<split>.json``).

    Items (``dataset[i]``): ``image`` ``H×W×3`` uint8, ``fine`` / ``coarse`` ``H×W``
    int64 maps, ``path``, ``image_id``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "val", annotations: str | os.PathLike | None = None):
        self.root = Path(root)
        self.split = split
        self.image_dir = self.root / "images" / split
        if annotations is None:
            candidates = [self.root / "annotations" / split / f"{split}.json", self.root / "annotations" / f"{split}.json"]
            annotations = next((c for c in candidates if c.is_file()), candidates[0])
        self.annotation_file = Path(annotations)
        if not self.annotation_file.is_file():
            raise FileNotFoundError(f"PartImageNet annotation file {str(self.annotation_file)!r} does not exist; "
                                    "pass annotations=PATH (CLI: --annotations) or use the layout "
                                    "ROOT/annotations/<split>/<split>.json")
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"PartImageNet image folder {str(self.image_dir)!r} does not exist; "
                                    "expected ROOT/images/<split>/<wnid>/<file>")
        where = repr(str(self.annotation_file))
        try:
            data = json.loads(self.annotation_file.read_text())
        except ValueError as exc:
            raise AnnotationError(f"{where} is not valid JSON ({exc}); download the annotations again") from None
        if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
            raise AnnotationError(f"{where} is not a COCO-style file: it needs 'images', 'annotations' and "
                                  "'categories'")
        self.vocab = PartVocabulary.from_categories(data["categories"], where)
        self._fine_of = {cid: i for i, cid in enumerate(self.vocab.category_ids)}
        try:
            self.images = sorted(data["images"], key=lambda im: int(im["id"]))
            for im in self.images:
                im["file_name"], im["height"], im["width"]  # noqa: B018 (presence check)
        except (KeyError, TypeError, ValueError):
            raise AnnotationError(f"every image of {where} needs 'id', 'file_name', 'height' and 'width'") from None
        self._anns: dict[int, list[dict[str, Any]]] = {int(im["id"]): [] for im in self.images}
        for n, ann in enumerate(data["annotations"]):
            iid = ann.get("image_id") if isinstance(ann, dict) else None
            if iid not in self._anns:
                raise AnnotationError(f"annotation #{n} (id {ann.get('id') if isinstance(ann, dict) else '?'}) of "
                                      f"{where} refers to image {iid!r}, which is not in 'images'")
            if ann.get("category_id") not in self._fine_of:
                raise AnnotationError(f"annotation #{n} (id {ann.get('id')}) of {where} has category "
                                      f"{ann.get('category_id')!r}, not in 'categories'")
            self._anns[iid].append(ann)

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, index: int) -> Path:
        """``images/<split>/<file_name>`` if that exists, else ``images/<split>/<wnid>/<file_name>``
        with the wnid read from the file name's prefix (``n02085620_1234.JPEG``)."""
        name = self.images[index]["file_name"]
        direct = self.image_dir / name
        if direct.is_file():
            return direct
        return self.image_dir / Path(name).name.split("_")[0] / Path(name).name

    def targets(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(fine, coarse)`` ``H×W`` int64 maps of image ``index`` (module docstring)."""
        im = self.images[index]
        h, w = int(im["height"]), int(im["width"])
        fine = np.full((h, w), self.vocab.fine_background, dtype=np.int64)
        for ann in self._anns[int(im["id"])]:
            try:
                mask = decode_segmentation(ann["segmentation"], h, w)
            except (AnnotationError, KeyError) as exc:
                raise AnnotationError(f"annotation id {ann.get('id')} of image {im['file_name']!r} in "
                                      f"{str(self.annotation_file)!r}: {exc}") from None
            fine[mask] = self._fine_of[ann["category_id"]]
        lut = np.array(list(self.vocab.part_super) + [self.vocab.coarse_background], dtype=np.int64)
        return fine, lut[fine]

    def __getitem__(self, index: int) -> dict[str, Any]:
        from castvit.data.datasets import load_image

        im = self.images[index]
        path = self.image_path(index)
        if not path.is_file():
            raise FileNotFoundError(f"image {str(path)!r} (file_name {im['file_name']!r} in "
                                    f"{str(self.annotation_file)!r}) does not exist")
        image = load_image(path).permute(1, 2, 0).numpy()
        fine, coarse = self.targets(index)
        if image.shape[:2] != fine.shape:
            raise AnnotationError(f"image {str(path)!r} is {image.shape[1]}×{image.shape[0]} but its annotation "
                                  f"says {fine.shape[1]}×{fine.shape[0]} (W×H); the JSON does not belong to "
                                  "these images")
        return {"image": image, "fine": fine, "coarse": coarse, "path": str(path), "image_id": int(im["id"])}


__all__ = ["AnnotationError", "PartImageNet", "PartVocabulary", "counts_to_rle_string", "decode_rle",
           "decode_segmentation", "encode_rle", "polygon_mask", "rle_string_to_counts"]
