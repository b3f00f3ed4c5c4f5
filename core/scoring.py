"""The fused scorer every stage shares: from embeddings to one probability per label.

``probability = sigmoid(logit_scale * dot(image_embedding, label_embedding) + logit_bias)``,
with ``logit_scale`` and ``logit_bias`` from training (``scorer.json``, then the
bundle's manifest).  A regional model outputs one embedding per cell of its last
feature map (``[cells, D]``) and a label scores as its best cell.

Training's evaluation, conversion's numeric checks and the benchmarks score batches
with :func:`label_probabilities` (or :class:`Scorer`); the board scores one model
output per frame with :class:`FrameScorer`, the same formula with the scale folded
into the label matrix.  This module imports nothing heavier than numpy.

Example:
    >>> scorer = Scorer(logit_scale=12.0, logit_bias=-4.0)
    >>> probabilities = scorer(image_embeddings, label_embeddings)   # [images, labels]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LOGIT_LIMIT = 60.0  # exp(60) is far inside float32; beyond it the probability is 0 or 1
# The largest logit magnitude :meth:`FrameScorer.problem` lets through: float32 tops out at
# 3.4e38, and a margin keeps sums of products below it as well.
SCORABLE_LIMIT = 1e30


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """The logistic function, with logits clipped so ``exp`` never overflows."""
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -LOGIT_LIMIT, LOGIT_LIMIT)))


def activate(model_output: np.ndarray, activation: str = "none") -> np.ndarray:
    """The image embedding a model output stands for, per the manifest's ``output_activation``.

    ``"softmax"`` (zero-shot bundles) turns class logits into probabilities over the
    last axis; the board computes it in float32 because an int8 softmax output rounds
    every probability to 1/256, which loses most of the mass a broad word collects
    from hundreds of small ones.
    """
    if activation != "softmax":
        return model_output
    shifted = np.asarray(model_output, np.float32)
    shifted = np.exp(shifted - shifted.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def label_logits(image_embedding: np.ndarray, label_embeddings: np.ndarray,
                 logit_scale: float, logit_bias: float) -> np.ndarray:
    """The logits ``[batch, labels]`` behind :func:`label_probabilities`, before the sigmoid."""
    similarity = np.asarray(image_embedding, np.float32) @ np.asarray(label_embeddings, np.float32).T
    if similarity.ndim == 3:
        similarity = similarity.max(axis=1)
    return logit_scale * similarity + logit_bias


def label_probabilities(image_embedding: np.ndarray, label_embeddings: np.ndarray,
                        logit_scale: float, logit_bias: float) -> np.ndarray:
    """Probability of each label for each image.

    ``image_embedding`` is ``[batch, D]`` (one embedding per image) or
    ``[batch, cells, D]`` (regional models: one per cell of the last feature map,
    and a label scores as its best cell).  Returns ``[batch, labels]``.
    """
    return sigmoid(label_logits(image_embedding, label_embeddings, logit_scale, logit_bias))


def global_embedding(image_embedding: np.ndarray) -> np.ndarray:
    """One unit-length embedding per image (the mean of the cells for regional models)."""
    emb = np.asarray(image_embedding, np.float32)
    if emb.ndim == 3:
        emb = emb.mean(axis=1)
    return emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Scorer:
    """The fused scorer of a run or bundle, for batches of embeddings.

    Attributes:
        logit_scale: Scale applied to the cosine similarity.
        logit_bias: Bias added before the sigmoid.
    """

    logit_scale: float
    logit_bias: float

    def __call__(self, image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
        """Probabilities ``[len(image_emb), len(text_emb)]``; regional embeddings score their best cell."""
        return label_probabilities(image_emb, text_emb, self.logit_scale, self.logit_bias)

    def logits(self, image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
        """The logits behind :meth:`__call__` (what the sigmoid is applied to)."""
        return label_logits(image_emb, text_emb, self.logit_scale, self.logit_bias)


class FrameScorer:
    """Scores one model output per frame: the fast path the board runs.

    ``logit_scale`` is folded into the label matrix once, which saves one multiply per
    frame; a quantized output is dequantized with ``output_quant`` first.

    Example:
        >>> scorer = FrameScorer(label_embeddings, 12.0, -4.0, output_quant=(0.0078, 0))
        >>> probabilities = scorer(model.run(model_input))   # [labels]
    """

    def __init__(self, label_embeddings: np.ndarray, logit_scale: float, logit_bias: float,
                 output_quant: tuple[float, int] | None = None, output_activation: str = "none") -> None:
        if logit_scale <= 0:  # folded, a negative scale would turn the best cell into the worst
            raise ValueError(f"logit_scale must be positive, not {logit_scale}")
        self.quantization = output_quant
        self.activation = output_activation
        self.weights = (logit_scale * np.asarray(label_embeddings, np.float32)).T.copy()
        self.bias = np.float32(logit_bias)
        # A logit is at most max|embedding| times its label's L1 weight, plus the bias.
        self._gain = float(np.abs(self.weights.astype(np.float64)).sum(axis=0).max(initial=0.0))
        # Integer outputs are finite and bounded by 256 steps of their scale: when that
        # bound scores safely, no frame needs the check (it cost 4 % of a 64 px frame).
        self._always_scorable = output_quant is not None and self._scorable(256.0 * abs(output_quant[0]))
        self._sparse = _sparse_columns(self.weights)

    def problem(self, model_output: np.ndarray) -> str | None:
        """Why ``model_output`` cannot be scored, or None: NaN or infinity in it, or values
        so large that a logit could overflow float32 (and a score become NaN)."""
        if self._always_scorable:
            return None
        if self.quantization is not None:  # a scale so large that the bound above failed
            with np.errstate(over="ignore", invalid="ignore"):
                model_output = self.embedding(model_output)
        if not np.isfinite(model_output).all():
            return "the model output NaN or infinity"
        if self.quantization is not None:
            peak = float(np.abs(model_output).max(initial=0.0))
        else:  # a softmax maps any finite output into [0, 1]
            peak = 1.0 if self.activation == "softmax" else float(np.abs(model_output).max(initial=0.0))
        if not self._scorable(peak):
            return f"the model output {peak:.3g}, too large to score in float32"
        return None

    def _scorable(self, peak: float) -> bool:
        """Whether an embedding no larger than ``peak`` in any value gives finite logits."""
        return math.isfinite(peak) and peak * self._gain + abs(float(self.bias)) <= SCORABLE_LIMIT

    def embedding(self, model_output: np.ndarray) -> np.ndarray:
        """The float32 embedding held in one model output: ``[D]``, or ``[cells, D]``."""
        embedding = model_output.reshape(-1, model_output.shape[-1]).astype(np.float32)
        if embedding.shape[0] == 1:
            embedding = embedding[0]
        if self.quantization is not None:
            scale, zero_point = self.quantization
            embedding -= zero_point
            embedding *= scale
        return activate(embedding, self.activation)

    def __call__(self, model_output: np.ndarray) -> np.ndarray:
        """Returns float32 probabilities, one per label."""
        return self.scores_and_cells(model_output)[0]

    def scores_and_cells(self, model_output: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(probabilities, cell logits)``: what :meth:`__call__` returns and, for a
        regional output, every label's logit in every cell ``[labels, cells]`` (None for
        a pooled one).

        The runtime locates labels from the cell logits it scored the frame with, instead
        of dequantizing and multiplying the cells a second time (:meth:`cell_logits`).
        """
        embedding = self.embedding(model_output)
        if self._sparse is not None and embedding.ndim == 1:
            rows, labels, values = self._sparse
            logits = np.bincount(labels, weights=embedding[rows] * values, minlength=self.weights.shape[1])
            logits = logits.astype(np.float32)
        else:
            logits = embedding @ self.weights
        logits += self.bias
        if logits.ndim == 2:  # regional: the best cell per label (logit_scale > 0)
            return sigmoid(logits.max(axis=0)), logits.T  # rows of labels, picked cheaply
        return sigmoid(logits), None

    def cell_logits(self, model_output: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Logits ``[len(labels), cells]`` of the labels at indices ``labels`` in each cell of a
        regional output; their sigmoid is the labels' heatmaps (see :mod:`fuselite.maps`).

        The same scale, bias and dequantization as :meth:`__call__`, so a label's frame
        logit is the maximum of its row.
        """
        return self.cells_logits(self.embedding(model_output).reshape(-1, self.weights.shape[0]), labels)

    def cells_logits(self, cells: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Logits ``[len(labels), cells]`` of float32 cell embeddings ``[cells, D]`` (e.g. a
        class activation map's, :func:`fuselite.maps.cam_cells`).

        Logits, not probabilities: float32 sigmoids of strong cells all round to 1.0, and a
        peak among equal ones would be the first cell, not the strongest.
        """
        logits = cells @ self.weights[:, labels]
        logits += self.bias
        return logits.T


# A label matrix this sparse (an imported classifier's identity rows, a zero-shot bundle's
# multi-hot concepts over 1,000 classes) is scored by its non-zero entries: the dense
# product read a 4 MB matrix per frame and OpenBLAS spread it over every core (an imported
# MobileNetV2 spent 12.8 ms of CPU per frame around a 3.6 ms invoke).
SPARSE_DENSITY = 0.05
SPARSE_MIN_ENTRIES = 16_384


def _sparse_columns(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(rows, labels, values)`` of the non-zero entries of a large, sparse ``[D, labels]``
    matrix, or ``None`` when the dense product is as cheap."""
    if weights.size < SPARSE_MIN_ENTRIES:
        return None
    rows, labels = np.nonzero(weights)
    if rows.size > SPARSE_DENSITY * weights.size:
        return None
    return rows, labels, weights[rows, labels].astype(np.float64)
