"""A self-contained HTML viewer of segmentation hierarchies: one file, no server.

    from castvit.viz.viewer import write_viewer
    write_viewer("viewer.html", [hierarchy], names=["photo"])

The page embeds, per image, a JPEG of the picture and a PNG of its superpixel ids
(both at most ``max_side`` px on the longer side) plus every segment's parent, area
and bounding box (at full resolution); the levels above 0 are composed in the
browser. It has a level slider, an image picker when it holds several images, and
highlights the segment under the cursor with its ancestors and children; a click
locks the highlight. Images are stored one ``<script type="application/json">``
each, so a big folder is written (and parsed) one image at a time.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from castvit.hierarchy import Hierarchy, SegmentTable
from castvit.inference import resize_image, sample_labels
from castvit.ops import json_default
from castvit.viz.draw import overlay
from castvit.viz.export import encode_png

THUMB_SIDE = 160


def _data_url(image, fmt: str, **save_kw) -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save_kw)
    mime = {"JPEG": "image/jpeg", "PNG": "image/png"}[fmt]
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def _display_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    s = min(1.0, max_side / max(h, w))
    return max(1, round(h * s)), max(1, round(w * s))


def viewer_entry(h: Hierarchy, *, name: str, info: dict[str, Any] | None = None,
                 max_side: int = 1024, tables: list[SegmentTable] | None = None) -> dict[str, Any]:
    """The embedded record of one image (JSON-able). ``tables``: ``h.segment_tables()``
    if the caller has them already (``hierarchy.json`` is made from the same)."""
    from PIL import Image

    info = info or {}
    H, W = h.shape
    dh, dw = _display_size(H, W, max_side)
    image = h.image if h.image is not None else overlay(h, 0)
    shown = resize_image(np.asarray(image, dtype=np.uint8), dh, dw)
    sp = sample_labels(h.superpixels, dh, dw)
    if sp.max() > 65535:
        raise ValueError("the viewer holds at most 65536 superpixel ids per image")
    ids = np.zeros((dh, dw, 3), dtype=np.uint8)
    ids[..., 0] = sp >> 8
    ids[..., 1] = sp & 255
    th, tw = _display_size(H, W, THUMB_SIDE)
    if tables is None:
        tables = h.segment_tables()
    levels = []
    for t in tables:
        parent = t.parent.tolist() if t.parent is not None else [None] * len(t)
        levels.append({"num_segments": len(t),
                       "segments": [[i, a, *b, p] for i, a, b, p in zip(t.ids.tolist(), t.area.tolist(),
                                                                         t.bbox.tolist(), parent)]})
    model = info.get("model") or {}
    return {
        "name": name,
        "source": info.get("source", name),
        "size": [H, W],
        "original_size": list(info.get("original_size", [H, W])),
        "working_size": list(h.meta.get("working_size", [H, W])),
        "display_size": [dh, dw],
        "model": model.get("name", h.meta.get("model", "")) if isinstance(model, dict) else str(model),
        "random_weights": bool(model.get("random_weights", False)) if isinstance(model, dict) else False,
        "notes": list(info.get("notes", [])),
        "image": _data_url(Image.fromarray(shown), "JPEG", quality=88),
        "thumb": _data_url(Image.fromarray(resize_image(shown, th, tw)), "JPEG", quality=80),
        "superpixels": f"data:image/png;base64,{base64.b64encode(encode_png(ids)).decode('ascii')}",
        "parents": [np.asarray(p).astype(int).tolist() for p in h.parents],
        "levels": levels,
    }


def _script_json(obj: Any) -> str:
    """JSON safe inside a <script> element."""
    text = json.dumps(obj, default=json_default, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c")


def _entry_script(entry: dict[str, Any]) -> str:
    thumb = entry.pop("thumb")
    attrs = f'data-name="{html.escape(entry["name"])}" data-thumb="{thumb}"'
    return f'<script type="application/json" class="castvit-image" {attrs}>{_script_json(entry)}</script>\n'


def _template() -> tuple[str, str]:
    pkg = resources.files("castvit.viz")
    return (pkg / "viewer.html").read_text(encoding="utf-8"), (pkg / "viewer.js").read_text(encoding="utf-8")


def _fill(template: str, values: dict[str, str]) -> str:
    # one pass, so text inserted for one placeholder is never scanned for another
    return re.sub(r"__CASTVIT_[A-Z]+__", lambda m: values[m.group(0)], template)


class ViewerWriter:
    """Write a viewer page one image at a time (constant memory for big folders).

    ``add()`` each hierarchy, then ``close()``; the page appears atomically at
    ``path`` on close.
    """

    def __init__(self, path: str | os.PathLike, *, title: str = "castvit viewer", max_side: int = 1024):
        self.path = Path(path)
        self.title = title
        self.max_side = max_side
        self.count = 0
        self.random_weights = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".viewer-entries.", suffix=".tmp", dir=str(self.path.parent))
        self._entries_path = Path(tmp)
        self._entries = os.fdopen(fd, "w", encoding="utf-8")

    def entry(self, h: Hierarchy, *, name: str, info: dict[str, Any] | None = None,
              tables: list[SegmentTable] | None = None) -> dict[str, Any]:
        """The record :meth:`add_entry` takes; the expensive part (picture encoding), safe
        to compute in another thread. ``tables``: ``h.segment_tables()`` if at hand."""
        return viewer_entry(h, name=name, info=info, max_side=self.max_side, tables=tables)

    def add_entry(self, entry: dict[str, Any]) -> None:
        self.random_weights |= entry["random_weights"]
        self._entries.write(_entry_script(entry))
        self.count += 1

    def add(self, h: Hierarchy, *, name: str, info: dict[str, Any] | None = None) -> None:
        self.add_entry(self.entry(h, name=name, info=info))

    def close(self, *, random_weights: bool | None = None) -> int:
        """Write the page; returns the number of images in it."""
        from castvit import __version__

        self._entries.close()
        try:
            entries = self._entries_path.read_text(encoding="utf-8")
            meta = {"count": self.count,
                    "random_weights": self.random_weights if random_weights is None else random_weights}
            page_html, js = _template()
            page = _fill(page_html, {
                "__CASTVIT_VERSION__": html.escape(__version__),
                "__CASTVIT_TITLE__": html.escape(self.title),
                "__CASTVIT_META__": _script_json(meta),
                "__CASTVIT_ENTRIES__": entries,
                "__CASTVIT_JS__": js.replace("</script", "<\\/script"),
            })
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text(page, encoding="utf-8")
            os.replace(tmp, self.path)
        finally:
            self._entries_path.unlink(missing_ok=True)
        return self.count

    def discard(self) -> None:
        """Drop everything added; no page is written."""
        if not self._entries.closed:
            self._entries.close()
        self._entries_path.unlink(missing_ok=True)

    def __enter__(self) -> "ViewerWriter":
        return self

    def __exit__(self, *exc) -> None:
        if not self._entries.closed:
            if exc[0] is None:
                self.close()
            else:
                self.discard()


def write_viewer(path: str | os.PathLike, hierarchies: Sequence[Hierarchy], *, names: Sequence[str] | None = None,
                 infos: Sequence[dict[str, Any]] | None = None, title: str = "castvit viewer",
                 max_side: int = 1024) -> Path:
    """Write a viewer of ``hierarchies`` (one image or many) to ``path``; returns it.

    Args:
        names: shown in the picker (default ``image 0``, ``image 1``, …).
        infos: per image, optional ``source``, ``original_size``, ``notes`` and
            ``model`` (``{"name", "random_weights"}``) to show.
        max_side: longer side of the embedded pictures, in pixels.
    """
    names = list(names) if names is not None else [f"image {i}" for i in range(len(hierarchies))]
    infos = list(infos) if infos is not None else [{} for _ in hierarchies]
    if not (len(names) == len(infos) == len(hierarchies)):
        raise ValueError(f"got {len(hierarchies)} hierarchies, {len(names)} names and {len(infos)} infos")
    with ViewerWriter(path, title=title, max_side=max_side) as writer:
        for h, name, info in zip(hierarchies, names, infos):
            writer.add(h, name=name, info=info)
    return Path(path)
