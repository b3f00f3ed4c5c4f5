"""The overlay drawn on annotated frames: the best scores over score bars and a status line."""

from __future__ import annotations

import math

import cv2
import numpy as np

from fuselite.runtime.results import AnnotationResult

OVERLAY_ROWS = 5
GREEN, GREY, WHITE, BLACK = (80, 230, 80), (190, 190, 190), (255, 255, 255), (0, 0, 0)


def draw_overlay(image: np.ndarray, result: AnnotationResult, status: str = "") -> np.ndarray:
    """Draws the best scores (text over a score bar) and a status line onto ``image`` in place."""
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
