"""Files written for one segmented image: overlays, 16-bit label maps, JSON, npz.

Layout of ``DIR/<name>/`` (``s`` = level, 0 = superpixels .. 4 = coarsest):

=========================  ==================================================
``level{s}_overlay.png``   segment-mean colours with white boundaries (RGB)
``level{s}_labels.png``    segment ids, 16-bit grayscale PNG (mode ``I;16``)
``contours.png``           ultrametric contour map: brighter = coarser level
``hierarchy.json``         per level, every segment's id, area, bbox, parent,
                           children and mean colour; how the image was made
``hierarchy.npz``          every array (:meth:`castvit.Hierarchy.load_npz`)
=========================  ==================================================

All at the resolution of the image as read (its original size unless it was
downscaled for ``--max-side``; ``hierarchy.json`` has both sizes).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from castvit.hierarchy import Hierarchy
from castvit.ops import json_default, segment_mean_colors
from castvit.viz.draw import overlay

JSON_FORMAT = "castvit-segment/1"
MAX_LABEL = 65535
# zlib level 1: label maps and overlays are flat regions, so they shrink almost as much
# as at level 6, several times faster (the writer threads must keep up with the model).
PNG_LEVEL = 1


def write_label_png(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write an ``H×W`` label map as a 16-bit grayscale PNG (ids 0..65535)."""
    from PIL import Image

    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL):
        raise ValueError(f"label ids must lie in 0..{MAX_LABEL} for a 16-bit PNG, "
                         f"got {labels.min()}..{labels.max()}")
    Image.fromarray(labels.astype(np.uint16)).save(path, optimize=False, compress_level=PNG_LEVEL)


def class_palette(n: int = 256) -> np.ndarray:
    """``n×3`` uint8: the Pascal VOC colour map (class 0 black, 255 the void colour)."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def write_class_png(path: str | os.PathLike, classes: np.ndarray) -> None:
    """Write an ``H×W`` class map (ids 0..255) as a palette PNG: the pixel values are the
    class ids (``np.asarray(Image.open(path))``), the palette colours them."""
    from PIL import Image

    classes = np.asarray(classes)
    if classes.size and (classes.min() < 0 or classes.max() > 255):
        raise ValueError(f"class ids must lie in 0..255 for a palette PNG, got {classes.min()}..{classes.max()}")
    im = Image.fromarray(classes.astype(np.uint8))  # mode L; putpalette makes it P
    im.putpalette(class_palette().ravel().tolist())
    im.save(path, compress_level=PNG_LEVEL)


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG written by :func:`write_label_png` as ``H×W`` int64."""
    from PIL import Image

    with Image.open(path) as im:
        if not im.mode.startswith("I"):
            raise ValueError(f"{str(path)!r} is a {im.mode} image, not a 16-bit label map")
        return np.asarray(im).astype(np.int64)


def write_rgb_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(path, compress_level=PNG_LEVEL)


def contour_image(boundary_map: np.ndarray, num_levels: int) -> np.ndarray:
    """Ultrametric contour map as ``H×W`` uint8: 0 off boundaries, boundary pixels
    brighter the coarser the level they survive to (255 = top level)."""
    out = np.zeros(boundary_map.shape, dtype=np.uint8)
    on = boundary_map >= 0
    out[on] = np.round(255 * (boundary_map[on].astype(np.float64) + 1) / num_levels).astype(np.uint8)
    return out


def level_files(level: int) -> dict[str, str]:
    return {"labels": f"level{level}_labels.png", "overlay": f"level{level}_overlay.png"}


def hierarchy_record(h: Hierarchy, *, info: dict[str, Any],
                     outputs: set[str] | tuple[str, ...] = ("labels", "json", "contours", "overlays", "npz")
                     ) -> dict[str, Any]:
    """The ``hierarchy.json`` document of ``h``; ``info`` adds what the caller knows
    (source, sizes, model, notes)."""
    levels = []
    for s in range(h.num_levels):
        segs = h.segments(s)
        colors: dict[int, list[int]] = {}
        if h.image is not None:
            ids, cols = segment_mean_colors(h.label_map(s), h.image)
            colors = {int(i): c.tolist() for i, c in zip(ids, cols)}
        for rec in segs:
            del rec["level"]
            if colors:
                rec["color"] = colors[rec["id"]]
        files = {k: v for k, v in level_files(s).items() if {"labels": "labels", "overlay": "overlays"}[k] in outputs}
        levels.append({"level": s, "num_segments": len(segs), **files, "segments": segs})
    head = {"format": JSON_FORMAT, "name": info.get("name"), "source": info.get("source"), "size": list(h.shape)}
    return {**head, **{k: v for k, v in info.items() if k not in head}, "num_levels": h.num_levels,
            "hierarchy": h.meta,
            "files": {**{k: v for k, v in (("npz", "hierarchy.npz"), ("contours", "contours.png")) if k in outputs},
                      **({"classes": "classes.png"} if h.classes is not None else {})},
            "levels": levels}


def write_outputs(h: Hierarchy, out_dir: str | os.PathLike, *, info: dict[str, Any],
                  outputs: set[str] | tuple[str, ...] = ("labels", "json", "contours", "overlays", "npz")
                  ) -> dict[str, Any]:
    """Write the chosen files of one image into ``out_dir`` and return the JSON record.

    ``outputs`` picks among ``labels`` (a 16-bit PNG per level), ``overlays`` (an RGB
    PNG per level), ``contours`` (``contours.png``), ``npz`` (``hierarchy.npz``) and
    ``json`` (``hierarchy.json``, which lists the files written).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = set(outputs)
    maps = h.label_maps()
    if "labels" in outputs and max(int(m.max()) for m in maps) > MAX_LABEL:
        raise ValueError(f"more than {MAX_LABEL + 1} superpixel ids do not fit 16-bit label PNGs; "
                         "use fewer --n-segments")
    for s, lab in enumerate(maps):
        names = level_files(s)
        if "labels" in outputs:
            write_label_png(out_dir / names["labels"], lab)
        if "overlays" in outputs:
            write_rgb_png(out_dir / names["overlay"], overlay(h, s))
    if "contours" in outputs:
        from PIL import Image

        Image.fromarray(contour_image(h.boundary_map(), h.num_levels)).save(out_dir / "contours.png",
                                                                             compress_level=PNG_LEVEL)
    if "npz" in outputs:
        h.save_npz(out_dir / "hierarchy.npz")
    if h.classes is not None:
        write_class_png(out_dir / "classes.png", h.classes)
    record = hierarchy_record(h, info=info, outputs=outputs)
    if "json" in outputs:
        tmp = out_dir / ".hierarchy.json.tmp"
        tmp.write_text(json.dumps(record, default=json_default, separators=(",", ":")))
        os.replace(tmp, out_dir / "hierarchy.json")
    return record
