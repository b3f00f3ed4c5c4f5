"""Task metrics shared by training and bench (``fuselite.metrics``), on hand-computed cases."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from fuselite import metrics as m


def test_average_precision_is_the_mean_precision_at_each_positive():
    # ranks 1 and 3 are positive: precision 1/1 and 2/3
    assert m.average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(5 / 6)
    # ranks 2 and 4: precision 1/2 and 2/4
    assert m.average_precision([0.9, 0.8, 0.7, 0.6], [0, 1, 0, 1]) == pytest.approx(0.5)


def test_average_precision_ranks_by_score_not_by_position():
    assert m.average_precision([0.1, 0.9, 0.5], [1, 0, 0]) == pytest.approx(1 / 3)
    assert m.average_precision([0.1, 0.9, 0.5], [0, 1, 1]) == 1.0


def test_average_precision_breaks_ties_by_order():
    assert m.average_precision([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    assert m.average_precision([0.5, 0.5], [1, 0]) == 1.0


def test_average_precision_without_positives_is_nan():
    assert math.isnan(m.average_precision([0.9, 0.1], [0, 0]))


def test_map_averages_only_labels_that_have_positives():
    scores = np.array([[0.9, 0.8, 0.2], [0.8, 0.1, 0.3], [0.7, 0.5, 0.1], [0.6, 0.4, 0.9]])
    targets = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 1]], np.float32)
    # label 0: AP 5/6 (as above); label 1: no positive, skipped; label 2: ranked first, AP 1
    assert m.mean_average_precision(scores, targets) == pytest.approx((5 / 6 + 1) / 2)


def test_map_with_no_positive_anywhere_is_nan():
    assert math.isnan(m.mean_average_precision(np.ones((2, 2)), np.zeros((2, 2))))


def test_top1_is_the_share_of_rows_whose_best_label_is_the_true_one():
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    targets = np.array([[0, 1], [0, 1], [0, 1]])
    assert m.top1_accuracy(scores, targets) == pytest.approx(2 / 3)


def test_micro_f1_counts_every_label_decision_together():
    scores = np.array([[0.9, 0.2], [0.4, 0.6]])
    targets = np.array([[1, 0], [1, 1]])
    # predicted [[1, 0], [0, 1]]: 2 true positives, 2 predicted, 3 actual -> 4/5
    assert m.micro_f1(scores, targets, np.array([0.5, 0.5])) == pytest.approx(0.8)
    # a lower threshold on label 0 also catches 0.4: every decision right
    assert m.micro_f1(scores, targets, np.array([0.3, 0.5])) == 1.0


def test_micro_f1_is_zero_with_no_prediction_and_no_positive():
    assert m.micro_f1(np.zeros((2, 2)), np.zeros((2, 2)), np.array([0.5, 0.5])) == 0.0


def test_calibrated_threshold_sits_between_the_best_cut_and_the_next_score():
    scores = np.array([[0.9], [0.8], [0.3], [0.1]])
    targets = np.array([[1], [1], [0], [0]])
    assert m.calibrate_thresholds(scores, targets).tolist() == pytest.approx([0.55])
    # when every item is positive, the cut is below the lowest score (halfway to 0)
    assert m.calibrate_thresholds(np.array([[0.9], [0.4]]), np.ones((2, 1))).tolist() == pytest.approx([0.2])


def test_a_label_with_no_positive_keeps_the_default_threshold():
    scores = np.array([[0.9, 0.8], [0.1, 0.7]])
    targets = np.array([[1, 0], [0, 0]])
    thresholds = m.calibrate_thresholds(scores, targets, default=0.42)
    assert thresholds[1] == 0.42 and thresholds[0] == pytest.approx(0.5)


def test_retrieval_recall_counts_a_caption_with_the_same_text_as_a_hit():
    images = np.eye(3)
    captions_emb = np.array([[0.5, 1, 0], [1, 0.5, 0], [0, 0, 1]])  # the first two swapped
    recall = m.retrieval_recall(images, captions_emb, ["a", "b", "c"], ks=(1, 2))
    assert recall["image_to_caption_r@1"] == pytest.approx(1 / 3)
    assert recall["caption_to_image_r@1"] == pytest.approx(1 / 3)
    assert recall["image_to_caption_r@2"] == 1.0
    same_text = m.retrieval_recall(images, captions_emb, ["a", "a", "c"], ks=(1,))
    assert same_text["image_to_caption_r@1"] == 1.0


def test_sigmoid_is_stable_at_extreme_logits():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = m.sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    assert values.tolist() == [0.0, 0.5, 1.0]
