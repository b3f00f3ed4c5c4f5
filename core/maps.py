"""Where a label fired: per-label heatmaps from per-cell evidence, their peak and box.

A regional image model outputs one embedding per cell of its last feature map
(``[cells, D]``, a square grid in row-major order).  Scored against a label with the
bundle's own scorer, each cell gives a probability: the label's *heatmap*.  The
frame-level score of a regional model is its best cell, so the heatmap's peak is
exactly the cell the score came from; no gradients are needed, which matters
because TFLite has none.

From a heatmap this module derives what an event or a picture needs:

* the *peak*: the centre of the best cell, as a normalised ``(x, y)`` in the frame
  (the frame is resized whole to the model input, so model and frame share the same
  normalised coordinates);
* the *box*: normalised ``(x0, y0, x1, y1)`` around the cells at or above the
  label's threshold that touch the peak cell (4-connected), or the peak cell alone
  when no cell reaches the threshold;
* the *pointing game* (Zhang et al., "Top-down neural attention by excitation
  backprop", 2016): does the peak fall inside an object that carries the label?  At
  a map's resolution a peak is a cell, so a hit is a peak cell that overlaps one of
  the label's object boxes; :func:`pointing_chance` gives the hit rate of a peak
  drawn at random, the baseline to read it against.

This module imports numpy, and OpenCV (its connected components) only when it locates:
``fuselite devices verify``'s probe imports it on board environments without OpenCV.
No TensorFlow.

Example:
    >>> maps = cell_probabilities(cells, label_embeddings, 12.0, -4.0)   # [labels, rows, cols]
    >>> where = locate(maps[0], threshold=0.5)
    >>> where.peak, where.box
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fuselite.scoring import sigmoid

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class ObjectBox:
    """One object of an image whose position is known (the synthetic scenes record them).

    Attributes:
        tags: The label texts that apply to this object (``"red"``, ``"red circle"``, ...).
        box: Normalised ``(x0, y0, x1, y1)`` of the object in the image.
    """

    tags: tuple[str, ...]
    box: Box


@dataclass(frozen=True)
class LabelLocation:
    """Where one label fired in one frame.

    Attributes:
        heatmap: float32 ``[rows, cols]`` probability of the label in each cell.
        peak: Normalised ``(x, y)`` of the best cell's centre (0..1, left/top = 0).
        box: Normalised ``(x0, y0, x1, y1)`` of the cells above the threshold that
            touch the peak cell (the peak cell alone when none is above it).
    """

    heatmap: np.ndarray = field(compare=False, repr=False)
    peak: tuple[float, float]
    box: Box


def grid_shape(cells: int) -> tuple[int, int] | None:
    """``(rows, cols)`` of a square grid of ``cells`` cells, or None when it is not square.

    Regional towers end in a square feature map of a square input (the mirror variant
    relies on the same layout), flattened row-major.
    """
    side = math.isqrt(int(cells)) if cells > 0 else 0
    return (side, side) if side > 0 and side * side == cells else None


def split_outputs(details: Sequence[dict]) -> tuple[dict, dict | None]:
    """``(embedding output, label map output or None)`` of an image model's output details.

    A pooled (global) image model may carry its class activation map as a second
    output: ``[1, cells, D]`` beside the ``[1, D]`` embedding, told apart by rank
    because converters do not keep output names.  Raises ValueError for any other
    number or shape of outputs.
    """
    if len(details) == 1:
        return details[0], None
    ranks = sorted(len(d["shape"]) for d in details)
    if len(details) != 2 or ranks != [2, 3]:
        raise ValueError(
            f"has {len(details)} outputs; the runtime reads one embedding, or an embedding "
            "[1, D] and a label map [1, cells, D]"
        )
    embedding, label_map = sorted(details, key=lambda d: len(d["shape"]))
    return embedding, label_map


def cam_cells(label_map: np.ndarray) -> np.ndarray:
    """The class activation map's cells ``[cells, D]`` on the scale of the pooled embedding.

    A pooling-then-linear head makes the embedding ``normalise(mean_c(W f_c + b))``; its
    label map holds ``u_c = W f_c + b`` per cell.  Dividing every ``u_c`` by the length of
    their mean makes the mean of the per-cell logits equal the frame's logit exactly,
    so the heatmap and the score tell the same story.
    """
    cells = np.asarray(label_map, np.float32).reshape(-1, label_map.shape[-1])
    return cells / max(float(np.linalg.norm(cells.mean(axis=0))), 1e-12)


def cell_logits(
    cells: np.ndarray, label_embeddings: np.ndarray, logit_scale: float, logit_bias: float
) -> np.ndarray:
    """Logits ``[..., labels, cells]`` of each label at each cell of ``cells`` ``[..., cells, D]``."""
    similarity = np.asarray(cells, np.float32) @ np.asarray(label_embeddings, np.float32).T
    return np.swapaxes(logit_scale * similarity + logit_bias, -1, -2)


def cell_probabilities(
    cells: np.ndarray, label_embeddings: np.ndarray, logit_scale: float, logit_bias: float
) -> np.ndarray:
    """Heatmaps ``[..., labels, rows, cols]``: each label's probability at each cell.

    ``cells`` is ``[..., cells, D]`` with a square number of cells (raises ValueError
    otherwise).  The same formula as :func:`fuselite.scoring.label_probabilities`, so
    a label's frame score is its heatmap's maximum.  Find peaks on
    :func:`logit_maps` instead: strong cells' float32 probabilities tie at 1.0.
    """
    return sigmoid(logit_maps(cells, label_embeddings, logit_scale, logit_bias)).astype(np.float32)


def logit_maps(
    cells: np.ndarray, label_embeddings: np.ndarray, logit_scale: float, logit_bias: float
) -> np.ndarray:
    """:func:`cell_probabilities` before the sigmoid: ``[..., labels, rows, cols]`` logits."""
    cells = np.asarray(cells)
    grid = grid_shape(cells.shape[-2])
    if grid is None:
        raise ValueError(f"{cells.shape[-2]} cells do not form a square grid")
    logits = cell_logits(cells, label_embeddings, logit_scale, logit_bias)
    return logits.reshape(*logits.shape[:-1], *grid)


def logit(probability) -> np.ndarray:
    """The logit of probabilities (clipped to float32's open interval), e.g. of thresholds."""
    p = np.clip(np.asarray(probability, np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def peak_cell(heatmap: np.ndarray) -> tuple[int, int]:
    """``(row, col)`` of the heatmap's maximum (the first one on ties, row-major)."""
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(row), int(col)


def cell_of(point: tuple[float, float], grid: tuple[int, int]) -> tuple[int, int]:
    """``(row, col)`` of the cell holding a normalised ``(x, y)`` point (e.g. a ``peak``)."""
    rows, cols = grid
    return min(int(point[1] * rows), rows - 1), min(int(point[0] * cols), cols - 1)


def cell_box(row: int, col: int, grid: tuple[int, int]) -> Box:
    """Normalised ``(x0, y0, x1, y1)`` of one cell of a ``(rows, cols)`` grid."""
    rows, cols = grid
    return (col / cols, row / rows, (col + 1) / cols, (row + 1) / rows)


def peak_point(heatmap: np.ndarray) -> tuple[float, float]:
    """Normalised ``(x, y)`` of the centre of the heatmap's best cell."""
    row, col = peak_cell(heatmap)
    rows, cols = heatmap.shape
    return ((col + 0.5) / cols, (row + 0.5) / rows)


def region_box(heatmap: np.ndarray, threshold: float) -> Box:
    """The box around the cells ``>= threshold`` 4-connected to the peak cell.

    Only the peak's region: two objects with the same label give two regions, and a
    box spanning both would point at the space between them.  When even the peak is
    below ``threshold`` (a label reported by smoothing or a lower frame threshold),
    the peak cell alone.
    """
    _, boxes = locate_many(np.asarray(heatmap)[np.newaxis], np.asarray([threshold]))
    return tuple(boxes[0].tolist())


def locate(heatmap: np.ndarray, threshold: float) -> LabelLocation:
    """The :class:`LabelLocation` of one label's ``[rows, cols]`` heatmap."""
    heatmap = np.asarray(heatmap, np.float32)
    return LabelLocation(heatmap, peak_point(heatmap), region_box(heatmap, threshold))


def locate_many(heatmaps: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Peaks ``[k, 2]`` (x, y) and boxes ``[k, 4]`` of ``k`` heatmaps ``[k, rows, cols]`` at once.

    Any increasing function of the probability serves, with ``thresholds`` on the same
    scale: the runtime passes logits and the thresholds' logits, because strong cells'
    float32 probabilities tie at 1.0 and the peak among them would be the first cell.

    The board locates every reported label of every frame, so this is one OpenCV call
    for all of them: the ``k`` masks (cells at or above each threshold, plus the peak
    cell) stacked one under the other with an empty row between them, labelled into
    4-connected components; each label's box is its peak's component.  A Python loop
    per label and cell cost more than the invoke of a small model (0.12 ms for 9 labels
    on a 4x4 grid against 0.04 ms this way); every step here is one numpy call over all
    labels, because each call, not the arithmetic, is what costs on a small grid.
    """
    import cv2  # here, not at the top: the device probe reads outputs without OpenCV

    count, rows, cols = heatmaps.shape
    peak_rows, peak_cols = np.divmod(heatmaps.reshape(count, -1).argmax(axis=1), cols)
    masks = np.zeros((count, rows + 1, cols), np.bool_)  # the empty last row keeps them apart
    np.greater_equal(heatmaps, np.asarray(thresholds, heatmaps.dtype).reshape(-1, 1, 1), out=masks[:, :rows])
    stacked = masks.view(np.uint8).reshape(-1, cols)
    stacked_rows = peak_rows + np.arange(count) * (rows + 1)
    stacked[stacked_rows, peak_cols] = 1  # the peak cell even when below the threshold
    _, components, stats, _ = cv2.connectedComponentsWithStats(stacked, connectivity=4)
    located = np.empty((count, 6))  # peak x, y, then box x0, y0, x1, y1, in cells
    located[:, 0] = peak_cols
    located[:, 1] = peak_rows
    located[:, :2] += 0.5  # a cell's centre
    located[:, 2:] = stats[components[stacked_rows, peak_cols], :4]  # x, y, width, height
    located[:, 3] -= stacked_rows - peak_rows  # back to each label's own rows
    located[:, 4:] += located[:, 2:4]
    located /= np.array([cols, rows] * 3, np.float64)
    return located[:, :2], located[:, 2:]


def boxes_overlap(a: Box, b: Box) -> bool:
    """Whether two normalised boxes share some area (touching edges do not count)."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def pointing_hit(heatmap: np.ndarray, boxes: Sequence[Box]) -> bool:
    """The pointing game for one (image, label): does the peak cell overlap one of ``boxes``?"""
    peak = cell_box(*peak_cell(heatmap), heatmap.shape)
    return any(boxes_overlap(peak, box) for box in boxes)


def pointing_chance(grid: tuple[int, int], boxes: Sequence[Box]) -> float:
    """The hit rate of a peak at a uniformly random cell: the share of cells overlapping ``boxes``."""
    rows, cols = grid
    hits = sum(pointing_hit(_one_hot(grid, r, c), boxes) for r in range(rows) for c in range(cols))
    return hits / (rows * cols)


def _one_hot(grid: tuple[int, int], row: int, col: int) -> np.ndarray:
    heatmap = np.zeros(grid, np.float32)
    heatmap[row, col] = 1.0
    return heatmap


def pointing_game(
    cells: np.ndarray,
    label_embeddings: np.ndarray,
    labels: Sequence[str],
    logit_scale: float,
    logit_bias: float,
    objects: Sequence[Sequence[ObjectBox]],
) -> dict:
    """The pointing game of ``cells`` ``[images, cells, D]`` (a regional model's outputs)
    for the labels ``labels``: :func:`pointing_game_of_heatmaps` of their heatmaps."""
    heatmaps = [  # logits: the peaks of saturated probabilities would tie
        logit_maps(cells[start : start + 256], label_embeddings, logit_scale, logit_bias)
        for start in range(0, len(cells), 256)
    ]  # [batch, labels, rows, cols] stays small
    return pointing_game_of_heatmaps(np.concatenate(heatmaps), labels, objects)


def pointing_game_of_heatmaps(
    heatmaps: np.ndarray, labels: Sequence[str], objects: Sequence[Sequence[ObjectBox]]
) -> dict:
    """The pointing game over images with known objects.

    ``heatmaps`` is ``[images, labels, rows, cols]`` of any score whose maximum is the
    peak (logits are best: they do not saturate), ``objects`` the objects of each image.  Every (image, label) pair where some object of the image carries the label
    counts once.  Returns ``pointing_game`` (the hit rate), ``pointing_chance`` (the
    mean hit rate of a random peak on the same pairs), ``pairs`` and ``per_label``
    (hit rate of each label that occurs); ``pointing_game`` is None when no pair occurs.
    """
    hits: dict[str, list[bool]] = {label: [] for label in labels}
    chance = []
    for image_maps, image_objects in zip(heatmaps, objects):
        for heatmap, label in zip(image_maps, labels):
            boxes = [o.box for o in image_objects if label in o.tags]
            if boxes:
                hits[label].append(pointing_hit(heatmap, boxes))
                chance.append(pointing_chance(heatmap.shape, boxes))
    every = [hit for label_hits in hits.values() for hit in label_hits]
    return {
        "pointing_game": float(np.mean(every)) if every else None,
        "pointing_chance": float(np.mean(chance)) if chance else None,
        "pairs": len(every),
        "per_label": {label: float(np.mean(h)) for label, h in hits.items() if h},
    }
