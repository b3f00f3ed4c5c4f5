"""Plain result dataclasses returned by :class:`fuselite.runtime.Annotator`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Category:
    """One label judged present in a frame.

    Attributes:
        index: Position of the label in :attr:`Annotator.labels`.
        label: The label text.
        score: Probability after temporal smoothing (equal to ``raw_score`` when
            smoothing is off).
        raw_score: This frame's probability alone.
        threshold: The threshold the label was judged against.
        heatmap: float32 ``[rows, cols]``: this frame's probability of the label in each
            cell of the model's grid, or ``None`` (the bundle has no label maps, or
            ``AnnotatorOptions.explain`` is off).
        peak: Normalised ``(x, y)`` in the frame of the heatmap's best cell (0..1, left
            and top are 0, to 4 decimals), or ``None`` without a heatmap.
        box: Normalised ``(x0, y0, x1, y1)`` around the cells at or above ``threshold``
            that touch the peak cell (the peak cell alone when none is; to 4 decimals),
            or ``None``.
    """

    index: int
    label: str
    score: float
    raw_score: float
    threshold: float
    heatmap: np.ndarray | None = field(default=None, compare=False, repr=False)
    peak: tuple[float, float] | None = None
    box: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class Latency:
    """Time spent on one frame inside the annotator, in milliseconds.

    Attributes:
        preprocess_ms: Resizing, colour conversion and quantization of the frame.
        inference_ms: The image model's ``invoke``.
        postprocess_ms: Scoring every label, smoothing and selecting the answer.
    """

    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0


@dataclass(frozen=True)
class AnnotationResult:
    """What the annotator says about one frame.

    Attributes:
        timestamp_ms: The timestamp the frame was given.
        categories: Labels judged present, best first, after the allow/deny lists and
            ``max_results``. For a ``"single"`` task at most the top label.
        scores: Every allowed label's (smoothed) probability, in label order, whether or
            not it is present.
        latency: Time spent per stage.
    """

    timestamp_ms: float
    categories: tuple[Category, ...]
    scores: dict[str, float] = field(default_factory=dict)
    latency: Latency = field(default_factory=Latency)

    @property
    def top(self) -> Category | None:
        """The best present label, or ``None`` when nothing passed its threshold."""
        return self.categories[0] if self.categories else None
