"""The reference images a bundle carries for labels typed on the board.

A label typed at run time has no calibrated threshold of its own; the board measures
how often it would fire on these validation images, as the bundle's own image model
embeds them, and raises its threshold when it would fire more often than the trained
labels allow (:mod:`fuselite.runtime.typed_thresholds`).  They must stay small: up to
:data:`REFERENCE_IMAGES` images and :data:`REFERENCE_BYTES` of int8 values, so a regional
model keeps only each image's best-scoring cells (where a trained label scores
highest; a label scores as its best cell, so these are the cells that decide).

No TensorFlow here: the embeddings come from the converted flatbuffer.
"""

from __future__ import annotations

import numpy as np

REFERENCE_IMAGES = 128  # validation images a bundle carries
MIN_REFERENCE_IMAGES = 32  # fewer, for a wide embedding, before keeping less than one cell each
REFERENCE_BYTES = 8 * 1024  # int8 values: a few kB beside a 47 to 160 kB tiny-tower bundle


def reference_image_count(available: int, embedding_dim: int) -> int:
    """How many validation images to embed: :data:`REFERENCE_IMAGES`, fewer when one
    embedding per image would pass :data:`REFERENCE_BYTES` (at least
    :data:`MIN_REFERENCE_IMAGES`), never more than ``available``."""
    by_budget = max(MIN_REFERENCE_IMAGES, REFERENCE_BYTES // max(embedding_dim, 1))
    return max(0, min(available, REFERENCE_IMAGES, by_budget))


def reference_embeddings(
    embeddings: np.ndarray, label_embeddings: np.ndarray, budget: int = REFERENCE_BYTES
) -> np.ndarray:
    """``[images, cells, D]``: each image's cells where a trained label scores highest,
    as many per image as ``budget`` int8 values allow (at least one).

    ``embeddings`` is the image model's output for the reference images: ``[images, D]``
    (pooled) or ``[images, cells, D]`` (regional).
    """
    values = np.asarray(embeddings, np.float32)
    if values.ndim == 2:
        values = values[:, None, :]
    images, cells, dim = values.shape
    kept = max(1, min(cells, budget // max(images * dim, 1)))
    if kept == cells:
        return values
    # The scale is positive and the bias shared, so the best cosine is the best logit.
    strength = (values @ np.asarray(label_embeddings, np.float32).T).max(axis=-1)
    best = np.argsort(-strength, axis=1, kind="stable")[:, :kept]
    return np.take_along_axis(values, best[..., None], axis=1)
