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
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from castvit.hierarchy import Hierarchy, SegmentTable
from castvit.ops import json_default
from castvit.viz.draw import overlay

JSON_FORMAT = "castvit-segment/1"
MAX_LABEL = 65535
# zlib level 1: label maps and overlays are flat regions, so they shrink almost as much
# as at level 6, several times faster (the writer threads must keep up with the model).
PNG_LEVEL = 1


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of ``H×W`` uint8 (grayscale), ``H×W`` uint16 (16-bit grayscale) or
    ``H×W×3`` uint8 (RGB) pixels.

    Every row uses PNG's "Up" filter (the difference to the row above), which turns
    the flat regions of label maps, contours and overlays into runs of zeros, then
    zlib level 1: about half the CPU of Pillow's adaptive filtering for files of the
    same size. Any PNG reader gives the pixels back unchanged."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 2 and pixels.dtype in (np.uint8, np.uint16):
        depth, colour = 8 * pixels.dtype.itemsize, 0
    elif pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.uint8:
        depth, colour = 8, 2
    else:
        raise ValueError(f"encode_png takes H×W uint8/uint16 or H×W×3 uint8, got {pixels.dtype} {pixels.shape}")
    h, w = pixels.shape[:2]
    if h < 1 or w < 1:
        raise ValueError(f"cannot encode an empty {h}×{w} PNG")
    raw = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder(">")).reshape(h, -1).view(np.uint8)
    rows = np.empty((h, raw.shape[1] + 1), dtype=np.uint8)
    rows[:, 0] = 2  # filter type "Up"
    rows[0, 1:] = raw[0]
    np.subtract(raw[1:], raw[:-1], out=rows[1:, 1:])  # modulo 256, as PNG's filters are
    z = zlib.compressobj(PNG_LEVEL)
    data = z.compress(rows) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0))
            + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b""))


def write_png(path: str | os.PathLike, pixels: np.ndarray) -> None:
    """Write pixels as a PNG file (see :func:`encode_png` for what it takes)."""
    data = encode_png(pixels)
    with open(path, "wb") as f:
        f.write(data)


def write_label_png(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write an ``H×W`` label map as a 16-bit grayscale PNG (ids 0..65535)."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL):
        raise ValueError(f"label ids must lie in 0..{MAX_LABEL} for a 16-bit PNG, "
                         f"got {labels.min()}..{labels.max()}")
    write_png(path, labels.astype(np.uint16))


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
    write_png(path, np.asarray(rgb, dtype=np.uint8))


def contour_image(boundary_map: np.ndarray, num_levels: int) -> np.ndarray:
    """Ultrametric contour map as ``H×W`` uint8: 0 off boundaries, boundary pixels
    brighter the coarser the level they survive to (255 = top level)."""
    boundary_map = np.asarray(boundary_map)
    top = max(num_levels, int(boundary_map.max(initial=-1)) + 1)
    lut = np.zeros(top + 1, dtype=np.uint8)  # index level + 1; 0 = no boundary
    lut[1:] = np.round(255 * (np.arange(top, dtype=np.float64) + 1) / num_levels).astype(np.uint8)
    return lut[boundary_map.astype(np.intp) + 1]


def level_files(level: int) -> dict[str, str]:
    return {"labels": f"level{level}_labels.png", "overlay": f"level{level}_overlay.png"}


def hierarchy_record(h: Hierarchy, *, info: dict[str, Any],
                     outputs: set[str] | tuple[str, ...] = ("labels", "json", "contours", "overlays", "npz"),
                     tables: list[SegmentTable] | None = None) -> dict[str, Any]:
    """The ``hierarchy.json`` document of ``h``; ``info`` adds what the caller knows
    (source, sizes, model, notes). ``tables`` are ``h.segment_tables(colors=True)``
    when the caller has them already (the viewer uses the same)."""
    if tables is None:
        tables = h.segment_tables(colors=True)
    levels = []
    for s, table in enumerate(tables):
        segs = table.records(level_key=False, color=True)
        files = {k: v for k, v in level_files(s).items() if {"labels": "labels", "overlay": "overlays"}[k] in outputs}
        levels.append({"level": s, "num_segments": len(segs), **files, "segments": segs})
    head = {"format": JSON_FORMAT, "name": info.get("name"), "source": info.get("source"), "size": list(h.shape)}
    return {**head, **{k: v for k, v in info.items() if k not in head}, "num_levels": h.num_levels,
            "hierarchy": h.meta,
            "files": {**{k: v for k, v in (("npz", "hierarchy.npz"), ("contours", "contours.png")) if k in outputs},
                      **({"classes": "classes.png"} if h.classes is not None else {})},
            "levels": levels}


def write_outputs(h: Hierarchy, out_dir: str | os.PathLike, *, info: dict[str, Any],
                  outputs: set[str] | tuple[str, ...] = ("labels", "json", "contours", "overlays", "npz"),
                  tables: list[SegmentTable] | None = None) -> dict[str, Any]:
    """Write the chosen files of one image into ``out_dir`` and return the JSON record.

    ``outputs`` picks among ``labels`` (a 16-bit PNG per level), ``overlays`` (an RGB
    PNG per level), ``contours`` (``contours.png``), ``npz`` (``hierarchy.npz``) and
    ``json`` (``hierarchy.json``, which lists the files written). ``tables``:
    ``h.segment_tables(colors=True)`` if the caller has them (computed otherwise).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = set(outputs)
    if tables is None:
        tables = h.segment_tables(colors=True)
    if "labels" in outputs and max(int(t.ids[-1]) for t in tables if len(t)) > MAX_LABEL:
        raise ValueError(f"more than {MAX_LABEL + 1} superpixel ids do not fit 16-bit label PNGs; "
                         "use fewer --n-segments")
    if "labels" in outputs or "overlays" in outputs:
        for s, lab in enumerate(h.label_maps()):
            names = level_files(s)
            if "labels" in outputs:
                write_label_png(out_dir / names["labels"], lab)
            if "overlays" in outputs:
                write_rgb_png(out_dir / names["overlay"], overlay(h, s))
    if "contours" in outputs:
        write_png(out_dir / "contours.png", contour_image(h.boundary_map(), h.num_levels))
    if "npz" in outputs:
        h.save_npz(out_dir / "hierarchy.npz")
    if h.classes is not None:
        write_class_png(out_dir / "classes.png", h.classes)
    record = hierarchy_record(h, info=info, outputs=outputs, tables=tables)
    if "json" in outputs:
        tmp = out_dir / ".hierarchy.json.tmp"
        tmp.write_text(json.dumps(record, default=json_default, separators=(",", ":")))
        os.replace(tmp, out_dir / "hierarchy.json")
    return record
