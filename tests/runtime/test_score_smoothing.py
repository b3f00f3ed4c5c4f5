"""Temporal smoothing: an EMA plus hysteresis keeps labels from flickering."""

from __future__ import annotations

import itertools

import numpy as np
from runtime_helpers import GRAY, RED, solid

from fuselite.runtime import Annotator, AnnotatorOptions
from fuselite.runtime.smoothing import ScoreSmoother


def flips(states: list[bool]) -> int:
    return sum(a != b for a, b in itertools.pairwise(states))


def test_hysteresis_stops_a_score_hovering_at_the_threshold_from_flickering():
    noisy = 0.5 + 0.04 * np.array([1, -1] * 20, dtype=np.float32)  # 0.54, 0.46, ...
    raw = ScoreSmoother(np.array([0.5]))
    calm = ScoreSmoother(np.array([0.5]), smoothing=0.6, hysteresis=0.05)
    raw_states = [bool(raw.update(np.array([p]))[1][0]) for p in noisy]
    calm_states = [bool(calm.update(np.array([p]))[1][0]) for p in noisy]
    assert flips(raw_states) == len(noisy) - 1
    assert flips(calm_states) == 0


def test_a_real_change_still_switches_the_label_after_a_few_frames():
    smoother = ScoreSmoother(np.array([0.5]), smoothing=0.6, hysteresis=0.05)
    states = [
        bool(smoother.update(np.array([p]))[1][0]) for p in [0.05] * 5 + [0.95] * 10 + [0.05] * 10
    ]
    assert states[:5] == [False] * 5
    assert states[14] and not states[-1]
    assert flips(states) == 2
    assert 1 <= states[5:].index(True) <= 3  # on within a few frames, not at once


def test_smoothing_off_returns_the_raw_scores():
    smoother = ScoreSmoother(np.array([0.5, 0.5]))
    scores, present = smoother.update(np.array([0.7, 0.2], dtype=np.float32))
    assert scores.tolist() == np.array([0.7, 0.2], dtype=np.float32).tolist()
    assert present.tolist() == [True, False]


def test_annotator_with_smoothing_does_not_flicker_on_alternating_frames(fp32_bundle):
    frames = [solid(RED if i % 2 else GRAY) for i in range(30)]
    options = AnnotatorOptions(
        fp32_bundle, smoothing=0.8, hysteresis=0.1, category_allowlist=("red",)
    )
    with Annotator.create(AnnotatorOptions(fp32_bundle, category_allowlist=("red",))) as raw:
        raw_states = [bool(raw.annotate(f, i * 40).categories) for i, f in enumerate(frames)]
    with Annotator.create(options) as calm:
        results = [calm.annotate(f, i * 40) for i, f in enumerate(frames)]
    calm_states = [bool(r.categories) for r in results]
    assert flips(raw_states) == 29
    assert flips(calm_states) <= 1
    assert 0.2 < results[-1].scores["red"] < 0.8  # the smoothed score sits between the extremes


def test_an_earlier_timestamp_restarts_smoothing(fp32_bundle):
    with Annotator.create(AnnotatorOptions(fp32_bundle, smoothing=0.9)) as annotator:
        for t in range(10):
            annotator.annotate(solid(RED), t * 40)
        restarted = annotator.annotate(solid(GRAY), 0)
    assert [c.label for c in restarted.categories] == ["gray"]
    assert restarted.scores["red"] < 0.05
