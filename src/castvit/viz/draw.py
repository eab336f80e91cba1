"""Pictures of a :class:`~castvit.hierarchy.Hierarchy`: overlays and a matplotlib figure.

    from castvit.viz import overlay, plot_hierarchy
    rgb = overlay(h, 2)            # H×W×3 uint8: segment-mean colours + boundaries
    fig = plot_hierarchy(h)        # the image and every level side by side
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from castvit.hierarchy import Hierarchy
from castvit.ops import compact_labels, label_boundaries, segment_mean_colors


def thicken(edge: np.ndarray, thickness: int) -> np.ndarray:
    """Grow a boundary mask to ``thickness`` px (down and right, like the edge rule)."""
    out = edge.copy()
    for d in range(1, thickness):
        out[d:, :] |= edge[:-d, :]
        out[:, d:] |= edge[:, :-d]
    return out


def paint_segments(labels: np.ndarray, image: np.ndarray | None, *, boundary_color: Sequence[int] = (255, 255, 255),
                   thickness: int = 1) -> np.ndarray:
    """``H×W×3`` uint8: each segment of ``labels`` in the mean colour of ``image`` under it
    (fixed random colours without an image), boundaries ``thickness`` px in ``boundary_color``."""
    ids, inv = compact_labels(labels)
    if image is not None:
        _, colors = segment_mean_colors(labels, image)
    else:
        colors = np.random.default_rng(0).integers(0, 255, size=(ids.size, 3), dtype=np.uint8)
    out = colors[inv]
    out[thicken(label_boundaries(labels), thickness)] = np.asarray(boundary_color, dtype=np.uint8)
    return out


def overlay(h: Hierarchy, level: int, *, boundary_color: Sequence[int] = (255, 255, 255),
            thickness: int | None = None) -> np.ndarray:
    """``H×W×3`` uint8 picture of ``level``: segment-mean colours of the image (random
    colours without one) with boundaries ``thickness`` px wide (default: 1 px per 800 px
    of the longer side, at least 1)."""
    lab = h.label_map(level)
    if thickness is None:
        thickness = max(1, round(max(lab.shape) / 800))
    return paint_segments(lab, h.image, boundary_color=boundary_color, thickness=thickness)


def plot_hierarchy(h: Hierarchy, *, levels: Sequence[int] | None = None, figsize_per_panel: float = 3.0):
    """A matplotlib figure: the image (if any) and each level's segments, drawn as
    segment-mean colours (or random colours without an image) with boundaries."""
    import matplotlib.pyplot as plt

    levels = list(range(h.num_levels)) if levels is None else list(levels)
    for s in levels:
        if not 0 <= s < h.num_levels:
            raise ValueError(f"level must be in 0..{h.num_levels - 1}, got {s}")
    panels = ([("image", None)] if h.image is not None else []) + [(f"level {s}", s) for s in levels]
    height, width = h.shape
    aspect = height / max(width, 1)
    fig, axes = plt.subplots(1, len(panels), squeeze=False,
                             figsize=(figsize_per_panel * len(panels), figsize_per_panel * max(aspect, 0.3) + 0.4))
    for ax, (title, s) in zip(axes[0], panels):
        if s is None:
            ax.imshow(h.image)
            ax.set_title(title, fontsize=9)
        else:
            ax.imshow(overlay(h, s))
            ax.set_title(f"{title}: {h.num_segments(s)} segments", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig
