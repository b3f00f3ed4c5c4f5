"""Task metrics in plain numpy, shared by training (Keras scores) and bench (runtime scores).

Keeping one implementation means the number in ``metrics.json`` and the number
in the bench table are computed the same way.
"""

from __future__ import annotations

import numpy as np


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Average precision of ranking ``scores`` against boolean ``positives``.

    The mean of precision at each positive's rank (ties broken by order, stable).
    Returns NaN when there is no positive.
    """
    positives = np.asarray(positives, dtype=bool)
    if not positives.any():
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = positives[order]
    precision_at_k = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at_k[hits].mean())


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """mAP over the labels (columns) that have at least one positive."""
    aps = [average_precision(scores[:, j], targets[:, j] > 0.5) for j in range(targets.shape[1])]
    aps = [a for a in aps if not np.isnan(a)]
    return float(np.mean(aps)) if aps else float("nan")


def top1_accuracy(scores: np.ndarray, targets: np.ndarray) -> float:
    """Share of rows whose highest-scoring label is the true one (single-label data)."""
    return float(np.mean(np.argmax(scores, axis=1) == np.argmax(targets, axis=1)))


def calibrate_thresholds(scores: np.ndarray, targets: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per-label thresholds that maximise F1 on a validation set.

    A label with no positive in the set keeps ``default``.  Each threshold is the
    midpoint between the chosen cut and the next score, so it generalises a little
    better than sitting exactly on a validation score.
    """
    thresholds = np.full(scores.shape[1], default, dtype=np.float64)
    for j in range(scores.shape[1]):
        positives = targets[:, j] > 0.5
        if positives.any():
            thresholds[j] = _best_f1_threshold(scores[:, j], positives)
    return thresholds


def _best_f1_threshold(scores: np.ndarray, positives: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    sorted_scores, hits = scores[order], positives[order]
    true_pos = np.cumsum(hits)
    f1 = 2 * true_pos / (np.arange(1, len(hits) + 1) + positives.sum())
    best = int(np.argmax(f1))
    below = sorted_scores[best + 1] if best + 1 < len(sorted_scores) else 0.0
    return float((sorted_scores[best] + below) / 2)


def micro_f1(scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray) -> float:
    """Micro-averaged F1 of ``scores >= thresholds`` (per label) against ``targets``."""
    predicted = scores >= thresholds[None, :]
    actual = targets > 0.5
    true_pos = np.logical_and(predicted, actual).sum()
    denominator = predicted.sum() + actual.sum()
    return float(2 * true_pos / denominator) if denominator else 0.0


def retrieval_recall(image_emb: np.ndarray, caption_emb: np.ndarray, captions: list[str],
                     ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Image->caption and caption->image recall@k on paired embeddings.

    A retrieved caption counts as correct when its text equals the image's own
    caption, so scenes that happen to share a caption are not counted as misses.
    """
    similarity = image_emb @ caption_emb.T
    text = np.asarray(captions, dtype=object)
    same_text = text[:, None] == text[None, :]
    results = {}
    for k in ks:
        top_captions = np.argsort(-similarity, axis=1)[:, :k]
        top_images = np.argsort(-similarity.T, axis=1)[:, :k]
        rows = np.arange(len(text))[:, None]
        results[f"image_to_caption_r@{k}"] = float(same_text[rows, top_captions].any(axis=1).mean())
        results[f"caption_to_image_r@{k}"] = float(same_text[rows, top_images].any(axis=1).mean())
    return results


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))
