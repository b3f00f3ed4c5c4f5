"""The phrases suite's judge (``python -m fuselite.bench.suite phrases``): when a typed phrase
applies to a scene, and the false-firing and recall it reports."""

from __future__ import annotations

import numpy as np
import pytest

from fuselite.bench.phrases_suite import _rates, _truth
from fuselite.data.scenes import SceneObject, object_tags
from fuselite.maps import ObjectBox


def _scene(*objects: tuple[str, str, str]) -> list[ObjectBox]:
    return [
        ObjectBox(object_tags(SceneObject(c, s, size, (0, 0), 1, 0)), (0, 0, 1, 1))
        for c, s, size in objects
    ]


def test_a_phrase_applies_when_one_object_carries_all_its_words():
    frames = [
        _scene(("green", "star", "large")),
        _scene(("green", "circle", "large"), ("red", "star", "small")),
    ]
    truth = _truth(["green star", "a large green star", "small green star", "red"], frames)
    assert truth.tolist() == [[True, True, False, False], [False, False, False, True]]


def test_false_firing_counts_only_frames_the_phrase_does_not_describe():
    fires = np.array([[True], [True], [False], [True]])
    applies = np.array([[True], [False], [False], [False]])
    rates = _rates(fires, applies)
    assert rates["false_firing"] == pytest.approx(2 / 3) and rates["recall"] == 1.0
    assert rates["precision"] == pytest.approx(1 / 3)
    assert _rates(fires, np.zeros_like(applies))["recall"] is None  # nothing to find
