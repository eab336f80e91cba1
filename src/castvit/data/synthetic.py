"""Synthetic scenes of objects built from parts, with exact object and part masks.

A dataset small enough to train a tiny CAST by classification on a laptop CPU, whose
emergent hierarchy can then be scored against ground truth at two levels: whole
objects and their parts. Everything is drawn with numpy from a per-image random
generator, so a scene is a pure function of ``(index, config, seed)``.

Part vocabulary
---------------
Each part type has its own shape and its own binary fill texture; colours are *not*
tied to part types (see below). Ids are the values of ``Scene.part_class``:

==  =========  ========  =============================================
id  shape      texture   role
==  =========  ========  =============================================
0   --         --        background
1   disc       rings     head (some classes)
2   rectangle  stripes   body (every class)
3   triangle   checkers  head (some classes), pointing away from body
4   ellipse    dots      foot: a flat plate against one side of body
==  =========  ========  =============================================

Classes
-------
Every object has exactly three parts: a rectangular *body*, a *head* (disc or
triangle) at one end of the body, and an elliptical *foot* on another side. A class
is the head shape together with where head and foot attach (sides as seen in the
upright object, before the random rotation of at most ``max_rotation_deg``)::

    label  name      head      head side  foot side
    0      totem     disc      top        bottom
    1      rocket    triangle  top        bottom
    2      rattle    disc      right      left
    3      arrow     triangle  right      left
    4      crook     disc      top        right
    5      sail      triangle  top        right
    6      pendulum  disc      bottom     top
    7      drill     triangle  bottom     top

``num_classes = k`` uses the first k rows. Every class shares the body and foot;
every head shape appears in half of the classes, and every head side / foot side
pairing appears with both head shapes. So neither one part nor one placement names
the class: it takes the head's shape *and* the layout of the three parts. Layouts
have an up: a vertical flip or a large rotation turns one class into another (a
flipped totem is a pendulum), so never augment with those. A horizontal flip maps
no class onto another, only onto mirror layouts that belong to no class, so it is
label-safe (it merely teaches mirror invariance the task does not need).

Part colours are drawn per object from a fixed palette, all three different,
independently of the class, so colour carries no class information. Backgrounds are
procedural (smooth noise, stripes, checkers, two-tone blobs) or tinted random crops
of the CC0 textures shipped with scikit-image (brick, grass, gravel). With
``clutter > 0`` loose parts of the same vocabulary (distractors) are scattered on the
background; they are background in the masks.

Scene families
--------------
``family="colour"`` (the default, above) gives every part its own palette colour, all
different from each other and standing out from the background: a colour clustering
finds the parts. ``family="camouflage"`` keeps the classes, parts, textures and masks
but removes that low-level cue, so only shape and layout tell object from clutter:

* each image draws **three shared colours**; the background is a patchwork of
  polygonal (Voronoi) cells, each in one shared colour with one of the four part
  textures; the distractor parts and the object's parts take their colours from the
  same three, independently, so neighbouring parts may share a colour with each other
  and with the background around them;
* distractors are always present (2 to 6 with ``clutter``), and are the same part
  shapes, with the same textures, as the object's.

Masks are exact: pixels are drawn without anti-aliasing, later shapes overwrite
earlier ones, and the masks record whatever is visible. Part ids are renumbered to
the visible parts, so a part or object hidden completely by another object (only
possible with ``objects_per_image > 1``) has no id. Every object pixel belongs to
one of that object's parts.
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = [
    "PART_TYPES",
    "PARTS_PER_OBJECT",
    "MAX_CLASSES",
    "FAMILIES",
    "SceneConfig",
    "Scene",
    "class_names",
    "generate_scene",
    "generate_split",
    "SyntheticScenes",
]

PART_TYPES: tuple[str, ...] = ("background", "disc", "rectangle", "triangle", "ellipse")
DISC, RECTANGLE, TRIANGLE, ELLIPSE = 1, 2, 3, 4
PARTS_PER_OBJECT = 3
FAMILIES: tuple[str, ...] = ("colour", "camouflage")


class _Layout(NamedTuple):
    name: str
    head: int  # DISC or TRIANGLE
    head_side: float  # degrees in image axes: 0 = right, 90 = bottom, 270 = top
    foot_side: float


_LAYOUTS: tuple[_Layout, ...] = (
    _Layout("totem", DISC, 270.0, 90.0),
    _Layout("rocket", TRIANGLE, 270.0, 90.0),
    _Layout("rattle", DISC, 0.0, 180.0),
    _Layout("arrow", TRIANGLE, 0.0, 180.0),
    _Layout("crook", DISC, 270.0, 0.0),
    _Layout("sail", TRIANGLE, 270.0, 0.0),
    _Layout("pendulum", DISC, 90.0, 270.0),
    _Layout("drill", TRIANGLE, 90.0, 270.0),
)
MAX_CLASSES = len(_LAYOUTS)

# Saturated, mutually distinct part colours (RGB in [0, 1]).
_PALETTE = np.array(
    [
        [0.86, 0.14, 0.14],  # red
        [0.96, 0.56, 0.10],  # orange
        [0.95, 0.86, 0.16],  # yellow
        [0.20, 0.70, 0.24],  # green
        [0.08, 0.64, 0.66],  # teal
        [0.16, 0.34, 0.88],  # blue
        [0.56, 0.24, 0.82],  # purple
        [0.96, 0.46, 0.72],  # pink
        [0.94, 0.94, 0.90],  # white
        [0.12, 0.12, 0.15],  # black
    ],
    dtype=np.float32,
)

# Upright part geometry in units of the object radius R (see _sample_object).
_BODY_HALF_LENGTH, _BODY_HALF_WIDTH = 0.34, 0.24
_DISC_RADIUS = 0.28
_TRIANGLE_HEIGHT, _TRIANGLE_HALF_BASE = 0.68, 0.35
_FOOT_THICKNESS, _FOOT_HALF_SPAN = 0.17, 0.42
_OVERLAP = 0.05  # parts overlap the body slightly so each object is one connected blob
_SHAPE_JITTER = 0.15  # each part dimension is scaled by U(1 - j, 1 + j)


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """Difficulty knobs of the synthetic scenes.

    Attributes:
        image_size: side of the square image in pixels, at least 32 (models with
            patch 8 want a multiple of 8; 32..224 are tested).
        num_classes: number of object classes, 2..8 (first rows of the class table
            in the module docstring).
        objects_per_image: instances drawn per image, all of the image's class.
        scale_range: object size as a fraction of the image side, sampled
            uniformly per object: the object fits in a circle of this diameter
            (and fills 75-100 % of it, by class and shape jitter). Divided by
            ``sqrt(objects_per_image)`` so that several objects still fit.
        max_rotation_deg: objects are rotated uniformly within ±this, in [0, 45)
            (45° or more would let rotated layouts of different classes coincide).
        clutter: in [0, 1]. 0: a nearly plain background; 1: a high-contrast
            textured background, up to 6 distractor parts and stronger pixel noise.
        texture_strength: in [0, 1], amplitude of the part fill textures
            (1 = brightness ±30 %); 0 gives flat-coloured parts.
        color_jitter: in [0, 1], per-part colour perturbation and per-image
            brightness / white-balance change; 0 keeps exact palette colours.
        family: ``"colour"`` (parts in their own colours) or ``"camouflage"`` (parts,
            distractors and background share three colours; module docstring).
    """

    image_size: int = 64
    num_classes: int = 4
    objects_per_image: int = 1
    scale_range: tuple[float, float] = (0.5, 0.8)
    max_rotation_deg: float = 20.0
    clutter: float = 0.3
    texture_strength: float = 0.5
    color_jitter: float = 0.5
    family: str = "colour"

    def __post_init__(self) -> None:
        # Configs read from YAML give lists; keep the dataclass hashable.
        object.__setattr__(self, "scale_range", tuple(float(x) for x in self.scale_range))
        if len(self.scale_range) != 2:
            raise ValueError(f"scale_range must be (low, high), got {self.scale_range}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32 pixels, got {self.image_size}")
        if not 2 <= self.num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must be in 2..{MAX_CLASSES}, got {self.num_classes}")
        if self.objects_per_image < 1:
            raise ValueError(f"objects_per_image must be >= 1, got {self.objects_per_image}")
        low, high = self.scale_range
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"scale_range must satisfy 0 < low <= high <= 1, got {self.scale_range}")
        if not 0.0 <= self.max_rotation_deg < 45.0:
            raise ValueError(f"max_rotation_deg must be in [0, 45), got {self.max_rotation_deg}")
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        for name in ("clutter", "texture_strength", "color_jitter"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")

    @property
    def max_parts(self) -> int:
        """Upper bound on part ids per image: ``PARTS_PER_OBJECT * objects_per_image``."""
        return PARTS_PER_OBJECT * self.objects_per_image


@dataclasses.dataclass
class Scene:
    """One generated image with its ground truth.

    Attributes:
        image: ``H×W×3`` uint8 RGB.
        label: class index in ``[0, num_classes)``.
        object_mask: ``H×W`` int64; 0 = background, 1..n = object instances.
        part_mask: ``H×W`` int64; 0 = background, 1..P = parts (ids contiguous,
            every part inside exactly one object).
        part_class: ``(P + 1,)`` int64 part type of each part id (index 0 is the
            background, type 0); types index ``PART_TYPES``.
    """

    image: np.ndarray
    label: int
    object_mask: np.ndarray
    part_mask: np.ndarray
    part_class: np.ndarray


def class_names(config: SceneConfig | None = None) -> list[str]:
    """Names of the classes used by ``config`` (default config when None), by label."""
    config = config or SceneConfig()
    return [layout.name for layout in _LAYOUTS[: config.num_classes]]


# --------------------------------------------------------------------------- drawing


@dataclasses.dataclass
class _Part:
    """A shape: a centre, the direction of its own u axis and half-extents.

    ``size_u`` / ``size_v`` are the half-extents along the part's u and v axes (for a
    triangle: its height along u from the base at u = 0, and its half-base along v).
    ``angle`` is the direction of the u axis in radians in image axes (y down).
    Lengths are pixels once posed in an image, units of the object radius before.
    """

    kind: int
    centre_x: float
    centre_y: float
    angle: float
    size_u: float
    size_v: float
    colour: np.ndarray  # (3,) float32 RGB in [0, 1]
    period: float  # texture period in pixels
    phase: tuple[float, float]  # texture phases, fractions of a period

    def reach(self) -> float:
        """Radius of a circle about the part's centre that holds the part."""
        if self.kind in (DISC, ELLIPSE):
            return max(self.size_u, self.size_v)
        return math.hypot(self.size_u, self.size_v)

    def outline(self) -> np.ndarray:
        """``k×2`` points (x, y) whose convex hull holds the part."""
        u_axis = np.array([math.cos(self.angle), math.sin(self.angle)])
        v_axis = np.array([-u_axis[1], u_axis[0]])
        centre = np.array([self.centre_x, self.centre_y])
        if self.kind == TRIANGLE:
            return np.stack([centre + self.size_v * v_axis, centre - self.size_v * v_axis, centre + self.size_u * u_axis])
        return np.stack(
            [centre + su * self.size_u * u_axis + sv * self.size_v * v_axis for su in (-1, 1) for sv in (-1, 1)]
        )

    def posed(self, centre: tuple[float, float], scale: float, rotation: float) -> _Part:
        """This part rotated by ``rotation`` about the origin, scaled, then moved to ``centre``."""
        cos_r, sin_r = math.cos(rotation), math.sin(rotation)
        return dataclasses.replace(
            self,
            centre_x=centre[0] + scale * (cos_r * self.centre_x - sin_r * self.centre_y),
            centre_y=centre[1] + scale * (sin_r * self.centre_x + cos_r * self.centre_y),
            angle=self.angle + rotation,
            size_u=scale * self.size_u,
            size_v=scale * self.size_v,
        )


def _texture(kind: int, u: np.ndarray, v: np.ndarray, period: float, phase: tuple[float, float]) -> np.ndarray:
    """Binary ±1 fill pattern of a part type, in the part's own coordinates (pixels).

    All patterns cover about half the area with +1, so their intensity histograms
    match and a texture names a part type only through its geometry.
    """
    fu = u / period + phase[0]
    fv = v / period + phase[1]
    if kind == DISC:
        on = np.sin(2 * np.pi * (np.hypot(u, v) / period + phase[0])) >= 0
    elif kind == RECTANGLE:
        on = np.sin(2 * np.pi * fu) >= 0
    elif kind == TRIANGLE:
        on = (np.sin(2 * np.pi * fu) * np.sin(2 * np.pi * fv)) >= 0
    else:  # dots of radius 0.4 period: area fraction pi * 0.16 ~ 0.5
        on = (fu - np.floor(fu) - 0.5) ** 2 + (fv - np.floor(fv) - 0.5) ** 2 <= 0.16
    return np.where(on, 1.0, -1.0).astype(np.float32)


def _draw_part(
    canvas: np.ndarray,
    part: _Part,
    texture_amplitude: float,
    masks: tuple[np.ndarray, np.ndarray] | None = None,
    ids: tuple[int, int] = (0, 0),
) -> None:
    """Paint ``part`` over ``canvas`` (``H×W×3`` float32) and, if given, the masks.

    Only the part's bounding window is evaluated, so the cost scales with the part's
    area, not the image's. ``masks`` = (object_mask, part_mask) receive ``ids``.
    """
    height, width = canvas.shape[:2]
    reach = part.reach() + 1.0
    x0, x1 = max(int(part.centre_x - reach), 0), min(int(part.centre_x + reach) + 1, width)
    y0, y1 = max(int(part.centre_y - reach), 0), min(int(part.centre_y + reach) + 1, height)
    if x0 >= x1 or y0 >= y1:
        return
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - part.centre_x)[None, :]
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - part.centre_y)[:, None]
    cos_a, sin_a = math.cos(part.angle), math.sin(part.angle)
    u = cos_a * dx + sin_a * dy
    v = cos_a * dy - sin_a * dx
    if part.kind in (DISC, ELLIPSE):
        inside = (u / part.size_u) ** 2 + (v / part.size_v) ** 2 <= 1.0
    elif part.kind == RECTANGLE:
        inside = (np.abs(u) <= part.size_u) & (np.abs(v) <= part.size_v)
    else:
        inside = (u >= 0) & (np.abs(v) <= part.size_v * (1.0 - u / part.size_u))
    if not inside.any():
        return
    shade = 1.0 + texture_amplitude * _texture(part.kind, u, v, part.period, part.phase)
    window = canvas[y0:y1, x0:x1]
    window[inside] = (shade[..., None] * part.colour)[inside]
    if masks is not None:
        masks[0][y0:y1, x0:x1][inside] = ids[0]
        masks[1][y0:y1, x0:x1][inside] = ids[1]


def _texture_period(rng: np.random.Generator, radius: float) -> float:
    """Fill texture period in pixels: about a fifth of the object radius, >= 3 px."""
    return max(3.0, 0.2 * radius * rng.uniform(0.8, 1.25))


def _part_colour(rng: np.random.Generator, palette_index: int, config: SceneConfig) -> np.ndarray:
    jitter = config.color_jitter * rng.uniform(-0.12, 0.12, size=3)
    return np.clip(_PALETTE[palette_index] + jitter, 0.0, 1.0).astype(np.float32)


class _Object(NamedTuple):
    """One object before placement: upright parts in units of ``radius``, centred."""

    parts: list[_Part]  # drawing order: foot, body, head
    radius: float  # pixels per unit
    reach: float  # units: every part lies within this distance of the origin
    rotation: float  # radians

    def parts_at(self, centre: tuple[float, float]) -> list[_Part]:
        """The parts rotated, scaled to pixels and centred on ``centre`` (x, y)."""
        return [part.posed(centre, self.radius, self.rotation) for part in self.parts]


def _sample_object(rng: np.random.Generator, layout: _Layout, radius: float, config: SceneConfig) -> _Object:
    """Draw the shape jitter, colours, textures and rotation of one object of ``layout``.

    The parts are laid out upright around the body centre in units of the object
    radius, then shifted so that the object's bounding box is centred on the origin.
    """
    rotation = math.radians(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg))
    jitter = rng.uniform(1 - _SHAPE_JITTER, 1 + _SHAPE_JITTER, size=6)
    colours = rng.choice(len(_PALETTE), size=PARTS_PER_OBJECT, replace=False)
    phases = rng.uniform(0.0, 1.0, size=(PARTS_PER_OBJECT, 2))
    period = _texture_period(rng, radius)

    head_dir = math.radians(layout.head_side)
    foot_dir = math.radians(layout.foot_side)
    half_length = _BODY_HALF_LENGTH * jitter[0]
    half_width = _BODY_HALF_WIDTH * jitter[1]
    # Distance from the body centre to its edge along a side (sides are 90° apart).
    foot_offset = half_width if abs(math.sin(foot_dir - head_dir)) > 0.5 else half_length
    foot_thickness = _FOOT_THICKNESS * jitter[2]
    foot_distance = foot_offset + foot_thickness - _OVERLAP
    if layout.head == DISC:
        head_u = _DISC_RADIUS * jitter[3]
        head_v = head_u
        head_distance = half_length + head_u - _OVERLAP
    else:
        head_u = _TRIANGLE_HEIGHT * jitter[3]
        head_v = _TRIANGLE_HALF_BASE * jitter[4]
        head_distance = half_length - _OVERLAP

    # (kind, distance from the body centre, direction, u-axis direction, size_u, size_v)
    upright = (
        (ELLIPSE, foot_distance, foot_dir, foot_dir, foot_thickness, _FOOT_HALF_SPAN * jitter[5]),
        (RECTANGLE, 0.0, 0.0, head_dir, half_length, half_width),
        (layout.head, head_distance, head_dir, head_dir, head_u, head_v),
    )
    parts = [
        _Part(
            kind=kind,
            centre_x=distance * math.cos(direction),
            centre_y=distance * math.sin(direction),
            angle=axis,
            size_u=size_u,
            size_v=size_v,
            colour=_part_colour(rng, int(colours[slot]), config),
            period=period,
            phase=(float(phases[slot, 0]), float(phases[slot, 1])),
        )
        for slot, (kind, distance, direction, axis, size_u, size_v) in enumerate(upright)
    ]
    outline = np.concatenate([part.outline() for part in parts])
    shift = (outline.min(0) + outline.max(0)) / 2
    parts = [part.posed((-shift[0], -shift[1]), 1.0, 0.0) for part in parts]
    reach = float(np.linalg.norm(outline - shift, axis=1).max())
    return _Object(parts=parts, radius=radius, reach=reach, rotation=rotation)


def _distractor(rng: np.random.Generator, radius: float, config: SceneConfig) -> _Part:
    """A loose part of random type, sized as if it belonged to an object of ``radius``."""
    kind = int(rng.integers(DISC, ELLIPSE + 1))
    scale = radius * rng.uniform(1 - _SHAPE_JITTER, 1 + _SHAPE_JITTER)
    size_u, size_v = {
        DISC: (_DISC_RADIUS, _DISC_RADIUS),
        RECTANGLE: (_BODY_HALF_LENGTH, _BODY_HALF_WIDTH),
        TRIANGLE: (_TRIANGLE_HEIGHT, _TRIANGLE_HALF_BASE),
        ELLIPSE: (_FOOT_THICKNESS, _FOOT_HALF_SPAN),
    }[kind]
    size = config.image_size
    return _Part(
        kind=kind,
        centre_x=float(rng.uniform(0, size)),
        centre_y=float(rng.uniform(0, size)),
        angle=float(rng.uniform(0, 2 * np.pi)),
        size_u=scale * size_u,
        size_v=scale * size_v,
        colour=_part_colour(rng, int(rng.integers(len(_PALETTE))), config),
        period=_texture_period(rng, radius),
        phase=(float(rng.uniform()), float(rng.uniform())),
    )


def _object_radius(rng: np.random.Generator, config: SceneConfig) -> float:
    """Object radius R in pixels: the unit of the part geometry; objects fit in 2R."""
    fraction = rng.uniform(*config.scale_range) / math.sqrt(config.objects_per_image)
    return fraction * config.image_size / 2.0


def _place_objects(rng: np.random.Generator, reaches: list[float], size: int) -> list[tuple[float, float]]:
    """Centres (x, y) in pixels for objects of the given reaches (pixels).

    Objects stay inside the image (unless one is wider than the image) and apart
    if possible: up to 30 candidates per object, the first that clears all earlier
    objects is taken, else the one farthest from them (the overlap is then resolved
    by drawing order).
    """
    centres: list[tuple[float, float]] = []
    for reach in reaches:
        margin = min(reach + 1.0, size / 2.0)
        best, best_clearance = (size / 2.0, size / 2.0), -np.inf
        for _ in range(30):
            candidate = (float(rng.uniform(margin, size - margin)), float(rng.uniform(margin, size - margin)))
            clearance = min(
                (math.dist(candidate, other) - reach - other_reach for other, other_reach in zip(centres, reaches)),
                default=np.inf,
            )
            if clearance > best_clearance:
                best, best_clearance = candidate, clearance
            if clearance >= 0:
                break
        centres.append(best)
    return centres


# ------------------------------------------------------------------------ background


def _upsample(low: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a ``k×k`` array to ``size×size`` (separable, by gathering)."""
    k = low.shape[0]
    position = np.clip((np.arange(size, dtype=np.float32) + 0.5) * k / size - 0.5, 0, k - 1)
    left = np.minimum(position.astype(np.int64), k - 2)
    weight = (position - left).astype(np.float32)
    rows = low[left] * (1 - weight[:, None]) + low[left + 1] * weight[:, None]
    return rows[:, left] * (1 - weight[None, :]) + rows[:, left + 1] * weight[None, :]


@functools.lru_cache(maxsize=1)
def _photo_textures() -> tuple[list[np.ndarray], ...]:
    """scikit-image's CC0 grayscale textures as pyramids (512, 256, 128, 64 px).

    Each level is normalised to zero mean and unit standard deviation. Empty when
    the data files are not available.
    """
    try:
        from skimage import data
    except ImportError:  # pragma: no cover - scikit-image is a dependency
        return ()
    pyramids = []
    for loader in (data.brick, data.grass, data.gravel):
        try:
            level = loader().astype(np.float32)
        except Exception:  # pragma: no cover - missing data file
            continue
        levels = []
        while min(level.shape) >= 64:
            levels.append((level - level.mean()) / (level.std() + 1e-6))
            h, w = (level.shape[0] // 2) * 2, (level.shape[1] // 2) * 2
            level = level[:h:2, :w:2] + level[1:h:2, :w:2] + level[:h:2, 1:w:2] + level[1:h:2, 1:w:2]
        pyramids.append(levels)
    return tuple(pyramids)


def _background_pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """A ``size×size`` float32 texture with zero mean and roughly unit variance."""
    photos = [levels for levels in _photo_textures() if levels[0].shape[0] >= size]
    kind = int(rng.integers(4 + len(photos)))
    yy = (np.arange(size, dtype=np.float32) / size)[:, None]
    xx = (np.arange(size, dtype=np.float32) / size)[None, :]
    if kind == 0:  # smooth noise, two octaves
        coarse = rng.integers(3, 8)
        fine = rng.integers(max(4, size // 16), max(5, size // 4) + 1)
        pattern = _upsample(rng.standard_normal((coarse, coarse), np.float32), size)
        pattern += 0.5 * _upsample(rng.standard_normal((fine, fine), np.float32), size)
    elif kind == 1:  # stripes, sine or square wave
        angle = rng.uniform(0, np.pi)
        frequency = rng.uniform(3, 12)
        pattern = np.sin(2 * np.pi * (frequency * (math.cos(angle) * xx + math.sin(angle) * yy) + rng.uniform()))
        if rng.uniform() < 0.5:
            pattern = np.sign(pattern)
    elif kind == 2:  # rotated checkers
        angle = rng.uniform(0, np.pi / 2)
        frequency = rng.uniform(2, 8)
        a = frequency * (math.cos(angle) * xx + math.sin(angle) * yy)
        b = frequency * (math.cos(angle) * yy - math.sin(angle) * xx)
        pattern = np.sign(np.sin(2 * np.pi * a) * np.sin(2 * np.pi * b))
    elif kind == 3:  # two-tone blobs
        cells = rng.integers(3, 9)
        pattern = np.sign(_upsample(rng.standard_normal((cells, cells), np.float32), size))
    else:  # random crop of a photographed texture at a random pyramid level
        levels = [level for level in photos[kind - 4] if min(level.shape) >= size]
        level = levels[int(rng.integers(len(levels)))]
        top = int(rng.integers(level.shape[0] - size + 1))
        left = int(rng.integers(level.shape[1] - size + 1))
        pattern = np.rot90(level[top : top + size, left : left + size], k=int(rng.integers(4)))
    pattern = np.asarray(pattern, dtype=np.float32)
    return (pattern - pattern.mean()) / (pattern.std() + 1e-6)


def _background(rng: np.random.Generator, config: SceneConfig) -> np.ndarray:
    """``H×W×3`` float32 background: a tinted texture under a soft illumination ramp."""
    size = config.image_size
    hue, saturation, value = rng.uniform(), rng.uniform(0.05, 0.45), rng.uniform(0.3, 0.75)
    tint = np.array(colorsys.hsv_to_rgb(hue, saturation, value), dtype=np.float32)
    contrast = 0.05 + 0.35 * config.clutter  # relative standard deviation of the texture
    angle = rng.uniform(0, 2 * np.pi)
    axis = np.arange(size, dtype=np.float32) / size - 0.5
    ramp = math.cos(angle) * axis[None, :] + math.sin(angle) * axis[:, None]
    shade = 1.0 + contrast * _background_pattern(rng, size) + 0.2 * rng.uniform(-1, 1) * ramp
    return shade[..., None] * tint


def _patchwork(rng: np.random.Generator, config: SceneConfig, shared: np.ndarray, amplitude: float) -> np.ndarray:
    """``H×W×3`` float32 camouflage background: 6 to 10 Voronoi cells, each in one of
    the ``shared`` palette colours (every one of them used) with one of the part textures (random period,
    orientation and phase), under a soft illumination ramp."""
    size = config.image_size
    num_cells = int(rng.integers(6, 11))
    seeds = rng.uniform(0, size, size=(num_cells, 2))
    axis = np.arange(size, dtype=np.float32) + 0.5
    dist = (axis[None, :, None] - seeds[:, 0, None, None]) ** 2 + (axis[None, None, :] - seeds[:, 1, None, None]) ** 2
    cell = dist.argmin(0).T  # dist is indexed [cell, x, y]
    colour_of_cell = shared[rng.permutation(num_cells) % len(shared)]  # every shared colour is used
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    canvas = np.empty((size, size, 3), np.float32)
    for c in range(num_cells):
        inside = cell == c
        angle = rng.uniform(0, 2 * np.pi)
        u = math.cos(angle) * xx + math.sin(angle) * yy
        v = math.cos(angle) * yy - math.sin(angle) * xx
        period = _texture_period(rng, size * rng.uniform(*config.scale_range) / 2)
        kind = int(rng.integers(DISC, ELLIPSE + 1))
        shade = 1.0 + amplitude * _texture(kind, u, v, period, (float(rng.uniform()), float(rng.uniform())))
        colour = _part_colour(rng, int(colour_of_cell[c]), config)
        canvas[inside] = (shade[..., None] * colour)[inside]
    angle = rng.uniform(0, 2 * np.pi)
    ramp = math.cos(angle) * (xx / size - 0.5) + math.sin(angle) * (yy / size - 0.5)
    return canvas * (1.0 + 0.2 * rng.uniform(-1, 1) * ramp)[..., None]


# ----------------------------------------------------------------------------- scene


def _keep_visible(
    object_mask: np.ndarray, part_mask: np.ndarray, part_types: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renumber object and part ids to the visible ones, contiguously from 1."""
    part_lut = np.zeros(len(part_types), np.int64)
    visible = np.flatnonzero(np.bincount(part_mask.ravel(), minlength=len(part_types))[1:]) + 1
    part_lut[visible] = np.arange(1, len(visible) + 1)
    part_class = np.concatenate([[0], np.asarray(part_types, np.int64)[visible]])

    num_objects = int(object_mask.max(initial=0))
    object_lut = np.zeros(num_objects + 1, np.int64)
    visible_objects = np.flatnonzero(np.bincount(object_mask.ravel(), minlength=num_objects + 1)[1:]) + 1
    object_lut[visible_objects] = np.arange(1, len(visible_objects) + 1)
    return object_lut[object_mask], part_lut[part_mask], part_class


def generate_scene(index: int, config: SceneConfig | None = None, seed: int = 0) -> Scene:
    """Draw scene number ``index`` of the dataset ``(config, seed)``.

    The result depends only on ``(index, config, seed)``: each scene has its own
    generator ``np.random.default_rng([seed, index])``, so scenes can be made in any
    order or in parallel.

    Args:
        index: scene number, >= 0.
        config: difficulty knobs; the default ``SceneConfig()`` when None.
        seed: dataset seed, >= 0; use different seeds for train and test splits.

    Returns:
        A :class:`Scene` with an ``H×W×3`` uint8 image and ``H×W`` int64 masks,
        ``H = W = config.image_size``.
    """
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be >= 0, got index={index}, seed={seed}")
    config = config or SceneConfig()
    rng = np.random.default_rng([seed, index])
    size = config.image_size
    label = int(rng.integers(config.num_classes))

    texture_amplitude = 0.3 * config.texture_strength
    if config.family == "camouflage":
        shared = rng.choice(len(_PALETTE), size=3, replace=False)
        canvas = _patchwork(rng, config, shared, texture_amplitude)
        for _ in range(int(rng.integers(2, 3 + round(4 * config.clutter)))):
            part = _distractor(rng, _object_radius(rng, config), config)
            part.colour = _part_colour(rng, int(rng.choice(shared)), config)
            _draw_part(canvas, part, texture_amplitude)
    else:
        shared = None
        canvas = _background(rng, config)
        for _ in range(int(rng.integers(round(6 * config.clutter) + 1))):
            _draw_part(canvas, _distractor(rng, _object_radius(rng, config), config), texture_amplitude)

    object_mask = np.zeros((size, size), np.int64)
    part_mask = np.zeros((size, size), np.int64)
    part_types = [0]
    objects = [
        _sample_object(rng, _LAYOUTS[label], _object_radius(rng, config), config)
        for _ in range(config.objects_per_image)
    ]
    centres = _place_objects(rng, [obj.reach * obj.radius for obj in objects], size)
    for object_id, (obj, centre) in enumerate(zip(objects, centres), start=1):
        for part in obj.parts_at(centre):
            if shared is not None:
                part.colour = _part_colour(rng, int(rng.choice(shared)), config)
            part_types.append(part.kind)
            ids = (object_id, len(part_types) - 1)
            _draw_part(canvas, part, texture_amplitude, (object_mask, part_mask), ids)

    # brightness (shared by the channels) and white balance (per channel)
    gain = 1.0 + config.color_jitter * (rng.uniform(-0.2, 0.2) + rng.uniform(-0.08, 0.08, 3))
    noise_std = 0.01 + 0.03 * config.clutter
    canvas = canvas * gain.astype(np.float32) + noise_std * rng.standard_normal(canvas.shape, np.float32)
    image = (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    object_mask, part_mask, part_class = _keep_visible(object_mask, part_mask, part_types)
    return Scene(image=image, label=label, object_mask=object_mask, part_mask=part_mask, part_class=part_class)


def _padded_part_class(scene: Scene, config: SceneConfig) -> np.ndarray:
    """``(max_parts + 1,)`` int64 part types, padded with -1 to a fixed length."""
    padded = np.full(config.max_parts + 1, -1, np.int64)
    padded[: len(scene.part_class)] = scene.part_class
    return padded


def generate_split(n: int, config: SceneConfig | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Scenes ``0..n-1`` of ``(config, seed)`` stacked in memory.

    Returns:
        ``image`` ``N×H×W×3`` uint8, ``label`` ``(N,)`` int64, ``object_mask`` and
        ``part_mask`` ``N×H×W`` int64, ``part_class`` ``N×(max_parts+1)`` int64
        (per-scene :attr:`Scene.part_class`, padded with -1). Masks take 8 bytes a
        pixel: 2000 scenes at 64 px need about 130 MB.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    config = config or SceneConfig()
    size = config.image_size
    split = {
        "image": np.empty((n, size, size, 3), np.uint8),
        "label": np.empty(n, np.int64),
        "object_mask": np.empty((n, size, size), np.int64),
        "part_mask": np.empty((n, size, size), np.int64),
        "part_class": np.empty((n, config.max_parts + 1), np.int64),
    }
    for index in range(n):
        scene = generate_scene(index, config, seed)
        split["image"][index] = scene.image
        split["label"][index] = scene.label
        split["object_mask"][index] = scene.object_mask
        split["part_mask"][index] = scene.part_mask
        split["part_class"][index] = _padded_part_class(scene, config)
    return split


class SyntheticScenes(torch.utils.data.Dataset):
    """Scenes ``0..num_images-1`` of ``(config, seed)``, drawn on demand.

    Each item is a dict: ``image`` uint8 tensor ``3×H×W``, ``label`` int,
    ``object_mask`` and ``part_mask`` int64 tensors ``H×W``, ``part_class`` int64
    tensor ``(max_parts + 1,)`` padded with -1, and ``index`` int. ``transform``, if
    given, receives this dict and returns the dict to yield.
    """

    def __init__(
        self,
        num_images: int,
        config: SceneConfig | None = None,
        seed: int = 0,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        self.num_images = num_images
        self.config = config or SceneConfig()
        self.seed = seed
        self.transform = transform

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} scenes")
        scene = generate_scene(index, self.config, self.seed)
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(scene.image.transpose(2, 0, 1))),
            "label": scene.label,
            "object_mask": torch.from_numpy(scene.object_mask),
            "part_mask": torch.from_numpy(scene.part_mask),
            "part_class": torch.from_numpy(_padded_part_class(scene, self.config)),
            "index": index,
        }
        return self.transform(item) if self.transform is not None else item

    @property
    def class_names(self) -> list[str]:
        return class_names(self.config)
