"""Deterministic synthetic scenes: coloured shapes on varied backgrounds, with tags and captions.

The scenes give the fused image-text model a task whose answer is known exactly and
whose label texts compose ("green" + "star" -> "green star"). Some colour-shape combos
are held out of the training pool, so a run can measure whether the text tower
generalises to a combination it never saw.

Example:
    >>> data = generate_scenes(8, SceneSpec(image_size=64), seed=1)
    >>> data.images.shape
    (8, 64, 64, 3)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from fuselite.data.dataset import ImageTextData
from fuselite.maps import ObjectBox

log = logging.getLogger(__name__)

# Saturated or bright on purpose: backgrounds are dark-to-mid, low-saturation tones, so
# no background pixel can be mistaken for one of these.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (40, 200, 60),
    "blue": (45, 95, 235),
    "yellow": (240, 220, 40),
    "purple": (160, 55, 210),
    "white": (245, 245, 245),
    "orange": (245, 140, 20),
    "cyan": (40, 220, 230),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
SIZES = ("small", "large")

# Radius as a fraction of the image side, per size.
_RADIUS_FRACTION = {"small": (0.10, 0.14), "large": (0.20, 0.26)}
_COLOR_JITTER = 12  # per channel, so a colour name covers a small range, not one RGB value
_BACKGROUND_LEVEL = (15, 110)  # grey level range; objects are all brighter or saturated
_BACKGROUND_TINT = 10
_CLUTTER_LEVEL = (55, 125)
_PLACEMENT_TRIES = 40
_SUBPIXEL_BITS = 4  # cv2 fixed-point coordinates, so small shapes keep their geometry


@dataclass(frozen=True)
class SceneSpec:
    """What the synthetic scenes look like.

    Attributes:
        image_size: Side of the square RGB image in pixels.
        colors: Colour names that objects may take (keys of :data:`COLOR_RGB`).
        shapes: Shape names that objects may take (a subset of :data:`SHAPES`).
        min_objects: Fewest objects per scene.
        max_objects: Most objects per scene (fewer if they cannot be placed apart).
        heldout_combos: ``(color, shape)`` pairs kept out of the training pool.
        noise: Standard deviation of the gaussian pixel noise, in 0-255 units.
        clutter: Number of thin grey lines and blobs drawn in the background.
    """

    image_size: int = 64
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "white")
    shapes: tuple[str, ...] = SHAPES
    min_objects: int = 1
    max_objects: int = 3
    heldout_combos: tuple[tuple[str, str], ...] = (
        ("green", "star"),
        ("blue", "triangle"),
        ("yellow", "circle"),
    )
    noise: float = 8.0
    clutter: int = 3

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32 pixels, not {self.image_size}")
        unknown = [c for c in self.colors if c not in COLOR_RGB]
        if unknown:
            raise ValueError(f"unknown colours {unknown}; choose from {sorted(COLOR_RGB)}")
        unknown = [s for s in self.shapes if s not in SHAPES]
        if unknown:
            raise ValueError(f"unknown shapes {unknown}; choose from {list(SHAPES)}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError("need 1 <= min_objects <= max_objects")
        for color, shape in self.heldout_combos:
            if color not in self.colors or shape not in self.shapes:
                raise ValueError(
                    f"held-out combo {(color, shape)} uses a colour or shape not in the spec"
                )
        if len(self.heldout_combos) >= len(self.colors) * len(self.shapes):
            raise ValueError("heldout_combos leaves no combo for training")


@dataclass(frozen=True)
class SceneObject:
    """One shape in a scene.

    Attributes:
        color: Colour name.
        shape: Shape name.
        size: ``"small"`` or ``"large"``.
        center: ``(x, y)`` in pixels.
        radius: Radius of the shape's circumscribed circle, in pixels.
        angle: Rotation in degrees.
    """

    color: str
    shape: str
    size: str
    center: tuple[float, float]
    radius: float
    angle: float


def scene_tags(objects: Sequence[SceneObject]) -> list[str]:
    """Sorted unique label texts of a scene: colour, shape, colour+shape, size, size+shape."""
    tags: set[str] = set()
    for obj in objects:
        tags.update(object_tags(obj))
    return sorted(tags)


def object_tags(obj: SceneObject) -> tuple[str, ...]:
    """The label texts one object carries: colour, shape, colour+shape, size, size+shape."""
    return (obj.color, obj.shape, f"{obj.color} {obj.shape}", obj.size, f"{obj.size} {obj.shape}")


def object_box(obj: SceneObject, image_size: int) -> ObjectBox:
    """Where ``obj`` is drawn: its tags and its bounding box, normalised by ``image_size``.

    The box bounds the drawn outline (the polygon's vertices, or the circle), so the
    pointing game of a thin star or cross is judged on the shape, not its circumcircle.
    OpenCV puts pixel ``i``'s centre at coordinate ``i``, while a normalised box (like a
    heatmap cell) gives pixel ``i`` the span ``[i, i + 1] / size``: hence the half pixel.
    """
    if obj.shape == "circle":
        x, y, r = obj.center[0], obj.center[1], obj.radius
        x0, y0, x1, y1 = x - r, y - r, x + r, y + r
    else:
        outline = _outline(obj)
        (x0, y0), (x1, y1) = outline.min(axis=0), outline.max(axis=0)
    box = tuple(float(np.clip((v + 0.5) / image_size, 0.0, 1.0)) for v in (x0, y0, x1, y1))
    return ObjectBox(object_tags(obj), box)


def scene_caption(objects: Sequence[SceneObject]) -> str:
    """``"a large red circle, a small green cross and a small blue star"``, in object order."""
    phrases = [f"a {obj.size} {obj.color} {obj.shape}" for obj in objects]
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _is_heldout(color: str, shape: str, spec: SceneSpec) -> bool:
    return (color, shape) in spec.heldout_combos


def _random_combo(
    rng: np.random.Generator, spec: SceneSpec, allow_heldout: bool
) -> tuple[str, str]:
    """A uniform (colour, shape); rejection keeps the rest uniform when heldout is banned."""
    while True:
        color = spec.colors[rng.integers(len(spec.colors))]
        shape = spec.shapes[rng.integers(len(spec.shapes))]
        if allow_heldout or not _is_heldout(color, shape, spec):
            return color, shape


def _place(
    rng: np.random.Generator, size: str, placed: list[SceneObject], image_size: int
) -> tuple[tuple[float, float], float] | None:
    """A centre and radius inside the image that keeps clear of ``placed``, or None."""
    low, high = _RADIUS_FRACTION[size]
    radius = float(rng.uniform(low, high) * image_size)
    margin = radius + 1.0
    for _ in range(_PLACEMENT_TRIES):
        x, y = rng.uniform(margin, image_size - margin, size=2)
        if all(np.hypot(x - o.center[0], y - o.center[1]) >= radius + o.radius + 2 for o in placed):
            return (float(x), float(y)), radius
    return None


def random_objects(
    rng: np.random.Generator, spec: SceneSpec, allow_heldout: bool
) -> list[SceneObject]:
    """``min_objects..max_objects`` non-overlapping objects in random order.

    With ``allow_heldout`` False no object is a held-out combo; with True at least one is.
    An object that cannot be placed apart from the others is retried small, then dropped;
    the first object always fits, so the held-out guarantee holds.
    """
    count = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    objects: list[SceneObject] = []
    for i in range(count):
        if allow_heldout and i == 0:
            color, shape = spec.heldout_combos[rng.integers(len(spec.heldout_combos))]
        else:
            color, shape = _random_combo(rng, spec, allow_heldout)
        size = SIZES[rng.integers(len(SIZES))]
        placement = _place(rng, size, objects, spec.image_size)
        if placement is None and size == "large":
            size = "small"
            placement = _place(rng, size, objects, spec.image_size)
        if placement is None:
            continue
        center, radius = placement
        angle = float(rng.uniform(0.0, 360.0))
        objects.append(SceneObject(color, shape, size, center, radius, angle))
    # The forced held-out object was placed first (when the canvas is empty); shuffle so
    # captions do not always start with it.
    return [objects[i] for i in rng.permutation(len(objects))]


@functools.lru_cache(maxsize=8)
def _unit_grid(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates scaled to [0, 1], cached because every scene of a size uses them."""
    axis = np.linspace(0.0, 1.0, image_size, dtype=np.float32)
    return np.meshgrid(axis, axis)


def _background(image_size: int, rng: np.random.Generator) -> np.ndarray:
    """float32 [H, W, 3]: a flat or linear-gradient, low-saturation, dark-to-mid tone."""
    levels = rng.uniform(*_BACKGROUND_LEVEL, size=(2, 1)) + rng.uniform(
        -_BACKGROUND_TINT, _BACKGROUND_TINT, size=(2, 3)
    )
    if rng.random() < 0.3:
        levels[1] = levels[0]
    xx, yy = _unit_grid(image_size)
    theta = rng.uniform(0.0, 2.0 * np.pi)
    ramp = np.cos(theta) * xx + np.sin(theta) * yy
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    start, end = levels.astype(np.float32)
    return start + ramp[..., None] * (end - start)


def _draw_clutter(canvas: np.ndarray, count: int, rng: np.random.Generator) -> None:
    """Thin grey lines and small blobs: distractors that carry no label."""
    size = canvas.shape[0]
    for _ in range(count):
        grey = float(rng.uniform(*_CLUTTER_LEVEL))
        color = (grey, grey, grey)
        if rng.random() < 0.6:
            p1, p2 = rng.integers(0, size, size=(2, 2))
            cv2.line(canvas, tuple(map(int, p1)), tuple(map(int, p2)), color, 1, cv2.LINE_AA)
        else:
            center = tuple(map(int, rng.integers(0, size, size=2)))
            cv2.circle(
                canvas, center, int(rng.integers(1, max(2, size // 24) + 1)), color, -1, cv2.LINE_AA
            )


def _polygon(obj: SceneObject, radii: Sequence[float], start_deg: float) -> np.ndarray:
    """Vertices at ``radii`` (fractions of the object radius) evenly spaced around the centre."""
    steps = np.arange(len(radii))
    theta = np.deg2rad(obj.angle + start_deg) + steps * 2.0 * np.pi / len(radii)
    r = obj.radius * np.asarray(radii)
    xs = obj.center[0] + r * np.cos(theta)
    ys = obj.center[1] + r * np.sin(theta)
    return np.stack([xs, ys], axis=1)


def _cross(obj: SceneObject) -> np.ndarray:
    """A plus sign: 12 vertices, arms a third of the radius thick, rotated by ``angle``."""
    h = 0.32
    unit = np.array(
        [
            (-h, -1),
            (h, -1),
            (h, -h),
            (1, -h),
            (1, h),
            (h, h),
            (h, 1),
            (-h, 1),
            (-h, h),
            (-1, h),
            (-1, -h),
            (-h, -h),
        ],
        dtype=np.float64,
    ) * (obj.radius * 0.95)
    a = np.deg2rad(obj.angle)
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return unit @ rotation.T + np.asarray(obj.center)


def _outline(obj: SceneObject) -> np.ndarray:
    """Polygon vertices (float pixels) of every shape but the circle."""
    if obj.shape == "square":
        return _polygon(obj, [1.0] * 4, 45.0)
    if obj.shape == "triangle":
        return _polygon(obj, [1.0] * 3, -90.0)
    if obj.shape == "star":
        return _polygon(obj, [1.0, 0.45] * 5, -90.0)
    if obj.shape == "cross":
        return _cross(obj)
    raise ValueError(f"unknown shape {obj.shape!r}; choose from {list(SHAPES)}")


def _draw_object(canvas: np.ndarray, obj: SceneObject, rng: np.random.Generator) -> None:
    """Fills one object, anti-aliased, in its colour with a small per-object jitter."""
    base = np.asarray(COLOR_RGB[obj.color], dtype=np.float64)
    color = tuple(np.clip(base + rng.uniform(-_COLOR_JITTER, _COLOR_JITTER, 3), 0, 255).tolist())
    scale = 1 << _SUBPIXEL_BITS
    if obj.shape == "circle":
        center = (round(obj.center[0] * scale), round(obj.center[1] * scale))
        cv2.circle(
            canvas, center, round(obj.radius * scale), color, -1, cv2.LINE_AA, _SUBPIXEL_BITS
        )
        return
    points = np.round(_outline(obj) * scale).astype(np.int32)
    cv2.fillPoly(canvas, [points], color, cv2.LINE_AA, _SUBPIXEL_BITS)


def render_scene(
    objects: Sequence[SceneObject], image_size: int, rng: np.random.Generator, spec: SceneSpec
) -> np.ndarray:
    """uint8 ``[H, W, 3]`` RGB: background, clutter, the objects, then gaussian noise."""
    canvas = _background(image_size, rng)
    _draw_clutter(canvas, spec.clutter, rng)
    for obj in objects:
        _draw_object(canvas, obj, rng)
    if spec.noise > 0:
        canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(spec.noise)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def generate_scenes(
    n: int, spec: SceneSpec = SceneSpec(), seed: int = 0, heldout: bool = False
) -> ImageTextData:
    """``n`` scenes, identical for the same ``(spec, seed, heldout)``.

    With ``heldout`` False (the training pool) no scene contains a held-out combo; with
    True every scene contains at least one, so its tags include e.g. ``"green star"``.
    Each scene's objects are recorded with their boxes (``objects``), for the pointing game.
    """
    # The heldout flag is part of the seed so both pools with the same seed still differ.
    rng = np.random.default_rng([seed, int(heldout)])
    prefix = "heldout" if heldout else "scene"
    images = np.empty((n, spec.image_size, spec.image_size, 3), dtype=np.uint8)
    tags: list[list[str]] = []
    captions: list[str] = []
    boxes: list[list[ObjectBox]] = []
    for i in range(n):
        objects = random_objects(rng, spec, allow_heldout=heldout)
        images[i] = render_scene(objects, spec.image_size, rng, spec)
        tags.append(scene_tags(objects))
        captions.append(scene_caption(objects))
        boxes.append([object_box(obj, spec.image_size) for obj in objects])
    ids = [f"{prefix}-{seed}-{i}" for i in range(n)]
    log.debug("generated %d %s scenes at %d px", n, prefix, spec.image_size)
    return ImageTextData(
        images=images, tags=tags, captions=captions, ids=ids, task="multi", name="scenes", objects=boxes
    )
