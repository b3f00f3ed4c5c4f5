"""The one scorer: batches and the board's per-frame path agree, and softmax outputs sum classes."""

from __future__ import annotations

import numpy as np
import pytest

from fuselite.scoring import FrameScorer, activate, label_probabilities, sigmoid


def test_the_frame_scorer_equals_the_batch_scorer_for_global_and_regional_outputs():
    rng = np.random.default_rng(0)
    labels = rng.normal(size=(5, 8)).astype(np.float32)
    for shape in ((1, 8), (1, 9, 8)):
        output = rng.normal(size=shape).astype(np.float32)
        frame = FrameScorer(labels, 7.0, -2.0)(output)
        np.testing.assert_allclose(frame, label_probabilities(output, labels, 7.0, -2.0)[0], rtol=1e-5)


def test_a_softmax_output_scores_a_label_by_the_summed_probability_of_its_classes():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
    rows = np.array([[1, 1, 0, 0], [0, 0, 0, 1]], np.float32)  # "cat" = classes 0, 1; "car" = 3
    scores = FrameScorer(rows, 10.0, -2.5, output_activation="softmax")(logits)
    expected = 1 / (1 + np.exp(-(10.0 * np.array([0.8, 0.05]) - 2.5)))
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_softmax_is_stable_for_large_quantized_logits():
    probabilities = activate(np.array([[1000.0, 999.0, -1000.0]]), "softmax")
    assert np.isfinite(probabilities).all() and abs(probabilities.sum() - 1) < 1e-6
    assert activate(np.ones(3), "none") is not None


def test_an_output_that_scores_finitely_has_no_problem():
    labels = np.eye(2, 4, dtype=np.float32)
    scorer = FrameScorer(labels, 10.0, -5.0, output_quant=(0.0078125, 0))
    assert scorer.problem(np.array([[128, 0, 0, 255]], np.uint8)) is None
    assert FrameScorer(labels, 10.0, -5.0).problem(np.full((1, 9, 4), 1e20, np.float32)) is None


@pytest.mark.parametrize(("output", "words"), [
    (np.array([[0.1, np.nan, 0.2, 0.3]], np.float32), "NaN or infinity"),
    (np.array([[0.1, -np.inf, 0.2, 0.3]], np.float32), "NaN or infinity"),
    (np.array([[3e38, -3e38, 0.0, 0.0]], np.float32), "too large to score"),  # inf - inf once gave NaN
])
def test_an_output_that_would_score_nan_is_named(output, words):
    scorer = FrameScorer(np.ones((2, 4), np.float32), 10.0, -5.0)
    with np.errstate(all="ignore"):  # before the check the board scored such logits
        assert not np.isfinite(scorer.embedding(output) @ scorer.weights).all()
    assert words in scorer.problem(output)


def test_a_quantized_output_whose_scale_overflows_is_named():
    scorer = FrameScorer(np.ones((2, 4), np.float32), 10.0, -5.0, output_quant=(1e38, 0))
    assert "NaN or infinity" in scorer.problem(np.array([[255, 0, 0, 0]], np.uint8))


@pytest.mark.parametrize("quant", [None, (0.004, 0)])
def test_a_large_sparse_label_matrix_scores_like_the_dense_product(quant):
    # An imported classifier's identity rows and a zero-shot bundle's multi-hot concepts.
    rng = np.random.default_rng(0)
    embeddings = np.zeros((40, 1000), np.float32)
    embeddings[np.arange(40), rng.choice(1000, 40, replace=False)] = 1.0
    embeddings[3, rng.choice(1000, 25, replace=False)] = 1.0  # "animal" covering many classes
    output = rng.integers(0, 256, (1, 1000)).astype(np.uint8) if quant else rng.random((1, 1000), np.float32)
    scorer = FrameScorer(embeddings, 10.0, -2.5, output_quant=quant, output_activation="softmax")
    assert scorer._sparse is not None
    dense = sigmoid(scorer.embedding(output) @ scorer.weights + np.float32(-2.5))
    np.testing.assert_allclose(scorer(output), dense, rtol=1e-5, atol=1e-6)
