"""Finding and reading images for ``castvit segment``: anything Pillow opens becomes
an ``H×W×3`` uint8 RGB array, with a note for every conversion, or an
:class:`ImageReadError` that says what is wrong.

Conversions (each reported as a note, never silent):

=====================  ============================================================
grayscale (L, 1)       channels replicated
alpha (RGBA, LA, PA)   composited on white (transparent pixels have no colour)
palette (P)            expanded to RGB (through RGBA when it has transparency)
16-bit grayscale       value / 257 (the full 16-bit range maps to 0..255)
16-bit RGB             reduced to 8 bits by Pillow (high byte)
32-bit int / float     stretched from the image's min..max to 0..255
CMYK, YCbCr, LAB, HSV  converted to RGB by Pillow
EXIF orientation       applied, so the outputs are upright
animated / multi-page  first frame only
=====================  ============================================================

Huge images: a longer side above ``max_side`` is downscaled (Lanczos) to
``max_side`` before anything else, and everything is written at that size. Images
above Pillow's decompression-bomb limit (``2 × PIL.Image.MAX_IMAGE_PIXELS``, about
179 megapixels) are refused.
"""

from __future__ import annotations

import glob
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                              ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".jp2", ".ico"})


class ImageReadError(Exception):
    """An input that cannot be used as an image; the message says why."""


@dataclass
class LoadedImage:
    """An RGB image ready for segmentation.

    Attributes:
        rgb: ``H×W×3`` uint8 (after orientation and any downscaling).
        original_size: ``(H, W)`` of the file as stored (after EXIF orientation).
        notes: one line per conversion applied.
    """

    path: Path
    rgb: np.ndarray
    original_size: tuple[int, int]
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.rgb.shape[:2])


def find_images(inputs: list[str], *, recursive: bool = False) -> tuple[list[Path], list[str]]:
    """Expand files, folders and glob patterns into image paths, in order, without
    duplicates.

    Files named explicitly are kept whatever their extension (reading decides);
    folders and globs contribute files with an image extension. Returns ``(paths,
    problems)``, ``problems`` being one message per input that matched nothing.
    """
    paths: list[Path] = []
    problems: list[str] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            paths.append(p)

    for item in inputs:
        p = Path(item)
        if p.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(q for q in p.glob(pattern) if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                hint = "" if recursive else " (use --recursive for sub-folders)"
                problems.append(f"{item}: folder holds no images{hint}")
            for q in found:
                add(q)
        elif p.exists():
            add(p)
        elif glob.has_magic(item):
            found = sorted(Path(q) for q in glob.glob(item, recursive=True)
                           if os.path.isfile(q) and Path(q).suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                problems.append(f"{item}: pattern matches no images")
            for q in found:
                add(q)
        else:
            problems.append(f"{item}: no such file or folder")
    return paths, problems


def read_image(path: str | os.PathLike, *, max_side: int | None = None) -> LoadedImage:
    """Read any image Pillow understands as RGB uint8 (see the module docstring).

    Args:
        path: the image file.
        max_side: if set, images whose longer side exceeds it are downscaled to it.

    Raises:
        ImageReadError: missing, unreadable, truncated, corrupt or too large files.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    notes: list[str] = []
    if not path.is_file():
        raise ImageReadError("no such file" if not path.exists() else "not a file")
    if path.stat().st_size == 0:
        raise ImageReadError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Between 1× and 2× the bomb limit Pillow only warns; we downscale anyway.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"refused as a possible decompression bomb ({str(exc).split(',')[0]}); castvit "
                             f"reads images up to {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels: downscale it "
                             "first") from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError("not an image file Pillow can read (unknown or corrupt format)") from exc
    except OSError as exc:
        raise ImageReadError(f"cannot open: {exc}") from exc
    with im:
        tile = getattr(im, "tile", None) or []
        raw = tile[0].args if tile and isinstance(tile[0].args, str) else ""  # cleared once pixels load
        frames = getattr(im, "n_frames", 1)
        if frames > 1:
            notes.append(f"{frames} frames/pages: using the first")
        try:
            orientation = int(im.getexif().get(0x0112, 1) or 1)
        except Exception:  # a broken EXIF block must not make the pixels unreadable
            orientation = 1
        h, w = im.height, im.width
        original_size = (w, h) if orientation in (5, 6, 7, 8) else (h, w)
        if max_side and im.format == "JPEG" and max(h, w) > 2 * max_side:
            # Decode at a reduced DCT scale (each side still >= max_side): far faster.
            im.draft("RGB", (max_side, max_side))
        try:
            im.load()
            oriented = ImageOps.exif_transpose(im)
        except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as exc:
            raise ImageReadError(f"truncated or corrupt image data ({exc})") from exc
        if orientation != 1:
            notes.append(f"EXIF orientation {orientation} applied")
        if im.mode in ("RGB", "RGBA") and ";16" in raw:
            bits = 48 if im.mode == "RGB" else 64
            notes.append(f"{bits}-bit {im.mode} (16 bits per channel): reduced to 8 bits per channel")
        rgb = _to_rgb(oriented, notes)
    if max_side and max(original_size) > max_side:
        s = max_side / max(original_size)
        nh, nw = max(1, round(original_size[0] * s)), max(1, round(original_size[1] * s))
        rgb = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.Resampling.LANCZOS, reducing_gap=3.0))
        notes.append(f"downscaled from {original_size[1]}×{original_size[0]} to {nw}×{nh} (--max-side "
                     f"{max_side}); outputs are at {nw}×{nh}")
    return LoadedImage(path=path, rgb=np.ascontiguousarray(rgb), original_size=original_size, notes=notes)


def _to_rgb(im, notes: list[str]) -> np.ndarray:
    """Pillow image of any mode → ``H×W×3`` uint8, noting the conversion."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode in ("L", "1"):
        notes.append("grayscale: channels replicated to RGB" if mode == "L" else "1-bit: converted to RGB")
        return np.asarray(im.convert("RGB"))
    if mode == "P":
        if "transparency" in im.info:
            notes.append("palette image with transparency: expanded to RGBA")
            return _composite(im.convert("RGBA"), notes)
        notes.append("palette image: expanded to RGB")
        return np.asarray(im.convert("RGB"))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite(im.convert("RGBA"), notes)
    if mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.float64)
        notes.append("16-bit grayscale: scaled to 8 bits (value / 257)")
        gray = np.round(arr / 257.0).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("I", "F"):
        arr = np.asarray(im).astype(np.float64)
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            raise ImageReadError(f"{mode} image holds no finite values")
        lo, hi = float(finite.min()), float(finite.max())
        notes.append(f"{'32-bit integer' if mode == 'I' else 'floating-point'} grayscale: stretched from "
                     f"{lo:g}..{hi:g} to 0..255")
        arr = np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo)
        gray = np.round((arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    try:
        out = np.asarray(im.convert("RGB"))
    except (ValueError, OSError) as exc:
        raise ImageReadError(f"image mode {mode!r} cannot be converted to RGB ({exc})") from exc
    notes.append(f"{mode}: converted to RGB")
    return out


def _composite(rgba, notes: list[str]) -> np.ndarray:
    arr = np.asarray(rgba)
    alpha = arr[..., 3:4].astype(np.float64) / 255.0
    if (alpha == 1).all():
        notes.append("alpha channel is fully opaque: dropped")
        return np.ascontiguousarray(arr[..., :3])
    notes.append("alpha channel: composited on white")
    rgb = arr[..., :3] * alpha + 255.0 * (1 - alpha)
    return np.round(rgb).astype(np.uint8)
