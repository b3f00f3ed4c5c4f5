"""fuselite.maps: heatmaps from cells, their peak and box, and the pointing game."""

from __future__ import annotations

import numpy as np
import pytest

from fuselite.maps import (
    ObjectBox,
    cell_probabilities,
    grid_shape,
    locate,
    locate_many,
    logit,
    logit_maps,
    pointing_chance,
    pointing_game_of_heatmaps,
    pointing_hit,
)
from fuselite.scoring import label_probabilities


def test_a_labels_frame_score_is_the_maximum_of_its_heatmap():
    rng = np.random.default_rng(0)
    cells = rng.normal(size=(3, 16, 8)).astype(np.float32)
    labels = rng.normal(size=(5, 8)).astype(np.float32)
    maps = cell_probabilities(cells, labels, 12.0, -4.0)
    assert maps.shape == (3, 5, 4, 4)
    np.testing.assert_allclose(
        maps.max(axis=(2, 3)), label_probabilities(cells, labels, 12.0, -4.0), rtol=1e-6
    )


def test_cells_that_are_not_a_square_grid_are_refused():
    assert grid_shape(49) == (7, 7) and grid_shape(12) is None and grid_shape(0) is None
    with pytest.raises(ValueError, match="square grid"):
        cell_probabilities(np.zeros((12, 4)), np.zeros((1, 4)), 1.0, 0.0)


def test_the_box_covers_the_peaks_region_only():
    heatmap = np.array(
        [
            [0.9, 0.8, 0.1, 0.0],
            [0.7, 0.2, 0.1, 0.6],  # 0.6 is above the threshold but not connected to the peak
            [0.1, 0.1, 0.1, 0.7],
            [0.0, 0.0, 0.0, 0.0],
        ],
        np.float32,
    )
    where = locate(heatmap, threshold=0.5)
    assert where.peak == (0.125, 0.125)
    assert where.box == (0.0, 0.0, 0.5, 0.5)


def test_a_peak_below_the_threshold_boxes_its_own_cell():
    heatmap = np.full((4, 4), 0.1, np.float32)
    heatmap[2, 3] = 0.3
    assert locate(heatmap, threshold=0.5).box == (0.75, 0.5, 1.0, 0.75)


def test_locating_many_equals_locating_each():
    rng = np.random.default_rng(1)
    heatmaps = rng.uniform(size=(30, 5, 5)).astype(np.float32)
    thresholds = rng.uniform(0.3, 0.9, size=30)
    peaks, boxes = locate_many(heatmaps, thresholds)
    for heatmap, threshold, peak, box in zip(heatmaps, thresholds, peaks, boxes):
        single = locate(heatmap, float(threshold))
        assert tuple(peak) == pytest.approx(single.peak)
        assert tuple(box) == pytest.approx(single.box)
        assert box[0] <= peak[0] <= box[2] and box[1] <= peak[1] <= box[3]


def test_the_pointing_game_counts_a_peak_cell_that_overlaps_the_objects_box():
    heatmap = np.zeros((4, 4), np.float32)
    heatmap[1, 2] = 1.0  # the cell x 0.5..0.75, y 0.25..0.5
    assert pointing_hit(heatmap, [(0.6, 0.3, 0.9, 0.9)])
    assert not pointing_hit(heatmap, [(0.0, 0.0, 0.5, 0.25)])  # touching corners do not count
    assert pointing_chance((4, 4), [(0.0, 0.0, 0.5, 0.5)]) == 0.25


def test_the_pointing_game_scores_only_labels_an_image_holds():
    maps = np.zeros((2, 2, 2, 2), np.float32)
    maps[0, 0, 0, 0] = maps[1, 0, 1, 1] = maps[0, 1, 1, 1] = 1.0
    objects = [
        [ObjectBox(("red", "circle"), (0.0, 0.0, 0.4, 0.4))],
        [ObjectBox(("red",), (0.0, 0.0, 0.4, 0.4))],
    ]
    game = pointing_game_of_heatmaps(maps, ["red", "circle"], objects)
    assert game["pairs"] == 3  # red twice, circle once
    assert game["per_label"] == {"red": 0.5, "circle": 0.0}
    assert game["pointing_game"] == pytest.approx(1 / 3)
    assert game["pointing_chance"] == pytest.approx(0.25)


def test_peaks_are_found_on_logits_where_probabilities_saturate():
    cells = np.zeros((4, 2), np.float32)
    cells[1, 0], cells[3, 0] = 2.0, 3.0  # logits 20 and 30: both probabilities round to 1.0
    label = np.array([[1.0, 0.0]], np.float32)
    probabilities = cell_probabilities(cells, label, 10.0, 0.0)[0]
    assert probabilities[0, 1] == probabilities[1, 1] == 1.0  # a tie: the first cell would win
    peaks, _ = locate_many(logit_maps(cells, label, 10.0, 0.0), np.array([logit(0.5)]))
    assert tuple(peaks[0]) == (0.75, 0.75)  # the stronger cell, bottom right
