"""The overlay drawn on annotated frames: the best scores over score bars and a status line,
and optionally where the top labels fired (their heatmaps as a translucent tint, outlined)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from fuselite.runtime.results import AnnotationResult, Category

OVERLAY_ROWS = 5
GREEN, GREY, WHITE, BLACK = (80, 230, 80), (190, 190, 190), (255, 255, 255), (0, 0, 0)
# BGR tints of the top labels' heatmaps, in rank order: far apart in hue, and none is
# the overlay's green, so a tint never reads as a score bar.
HEATMAP_COLOURS = ((0, 140, 255), (255, 200, 0), (255, 0, 200))
HEATMAP_OPACITY = 0.55  # of a cell at probability 1; lower probabilities tint less


def draw_overlay(image: np.ndarray, result: AnnotationResult, status: str = "",
                 heatmaps: bool = False) -> np.ndarray:
    """Draws the best scores (text over a score bar) and a status line onto ``image`` in place.

    With ``heatmaps``, the top reported labels' heatmaps go underneath
    (:func:`draw_heatmaps`).
    """
    if heatmaps:
        draw_heatmaps(image, result.categories)
    scale = max(0.7, min(2.0, image.shape[0] / 480))
    row = int(26 * scale)
    present = {c.label for c in result.categories}
    best = sorted(result.scores.items(), key=lambda item: -_drawable(item[1]))[:OVERLAY_ROWS]
    width = min(image.shape[1], int(240 * scale))
    height = row * (len(best) + (1 if status else 0)) + int(8 * scale)
    panel = image[:height, :width]
    panel[:] = (panel * 0.35).astype(np.uint8)  # darken behind the text, no copy of the frame
    y = int(4 * scale)
    if status:
        _text(image, status, (6, y + row - int(8 * scale)), scale, WHITE)
        y += row
    for label, score in best:
        colour = GREEN if label in present else GREY
        _text(image, f"{label[:24]}  {score:.2f}", (8, y + row - int(10 * scale)), scale, colour)
        bar_y = y + row - int(6 * scale)
        cv2.rectangle(
            image,
            (8, bar_y),
            (8 + int((width - 16) * _drawable(score)), bar_y + max(2, int(3 * scale))),
            colour,
            cv2.FILLED,
        )
        y += row
    return image


def _drawable(score: float) -> float:
    """A score as a bar length from 0 to 1: NaN and infinities (which the annotator
    refuses, but a result may be built elsewhere) draw no bar instead of crashing
    ``int()``; the text beside it still shows the value (``nan``)."""
    return min(max(score, 0.0), 1.0) if math.isfinite(score) else 0.0


def _text(image: np.ndarray, text: str, origin: tuple[int, int], scale: float, colour) -> None:
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, BLACK, 3, cv2.LINE_AA)
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, colour, 1, cv2.LINE_AA)


def draw_heatmaps(image: np.ndarray, categories: tuple[Category, ...] | list[Category],
                  count: int = len(HEATMAP_COLOURS)) -> np.ndarray:
    """Tints ``image`` in place with the heatmaps of the first ``count`` categories that have one.

    Each label gets its own colour, as opaque as its probability in each place, an
    outline around the part at or above its threshold, and a dot at its peak with the
    label's name beside it.
    Categories without a heatmap (a bundle without label maps) draw nothing.
    """
    located = [c for c in categories if c.heatmap is not None][:count]
    scale = max(0.7, min(2.0, image.shape[0] / 480))
    for category, colour in zip(located, HEATMAP_COLOURS):
        tint_heatmap(image, category.heatmap, colour, category.threshold)
    for category, colour in zip(located, HEATMAP_COLOURS):  # names on top of every tint
        if category.peak is not None:
            x, y = int(category.peak[0] * image.shape[1]), int(category.peak[1] * image.shape[0])
            radius = max(3, image.shape[0] // 80)
            cv2.circle(image, (x, y), radius, colour, cv2.FILLED, cv2.LINE_AA)
            _text(image, category.label[:24], (x + 2 * radius, y + radius), scale, colour)
    return image


def tint_heatmap(image: np.ndarray, heatmap: np.ndarray, colour: tuple[int, int, int],
                 threshold: float) -> np.ndarray:
    """Blends ``colour`` into ``image`` (BGR, in place) as strongly as ``heatmap`` says, and
    outlines where it is at or above ``threshold``.

    The grid covers the whole frame (the model sees the frame resized whole), so it is
    stretched to the frame with bilinear interpolation between cell centres.
    """
    height, width = image.shape[:2]
    upsampled = upsample_heatmap(heatmap, width, height)
    alpha = (np.clip(upsampled, 0.0, 1.0) * HEATMAP_OPACITY)[..., np.newaxis]
    blended = image * (1.0 - alpha) + np.asarray(colour, np.float32) * alpha
    image[:] = blended.astype(np.uint8)
    outline_above(image, upsampled, threshold, colour, max(1, height // 240))
    return image


def upsample_heatmap(heatmap: np.ndarray, width: int, height: int) -> np.ndarray:
    """A ``[rows, cols]`` heatmap stretched to ``height x width`` pixels (bilinear between cell centres)."""
    return cv2.resize(np.asarray(heatmap, np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def outline_above(image: np.ndarray, upsampled: np.ndarray, threshold: float, colour, thickness: int) -> None:
    """Draws onto ``image`` the outline of where ``upsampled`` is at or above ``threshold``."""
    mask = (upsampled >= threshold).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(image, contours, -1, colour, thickness, cv2.LINE_AA)
