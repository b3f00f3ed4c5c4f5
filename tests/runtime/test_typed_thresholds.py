"""Thresholds of typed labels, bounded on the bundle's reference images
(:mod:`fuselite.runtime.typed_thresholds`): a phrase made of known words may not fire on
more reference images than the rarest trained label among its words, its threshold is
never lowered, and each raise is one log line."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
from support.bundles import repack

from fuselite.bundle import read_bundle
from fuselite.runtime import typed_thresholds
from fuselite.runtime.annotator import Annotator
from fuselite.runtime.interpreter import TfliteModel
from fuselite.runtime.labels import typed_labels
from fuselite.runtime.typed_thresholds import (
    firing_bound,
    firing_counts,
    label_words,
    threshold_for,
)
from fuselite.scoring import label_probabilities

RED_RGB, GRAY_RGB = (220, 30, 30), (128, 128, 128)


def test_the_threshold_rises_just_enough_to_keep_the_allowed_count():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32)
    raised = threshold_for(scores, 0.4, allowed=2)
    assert 0.7 < raised <= 0.8 and int((scores >= raised).sum()) == 2


def test_the_threshold_is_never_lowered():
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert threshold_for(scores, 0.4, allowed=3) == pytest.approx(0.4)  # within the bound already
    assert threshold_for(scores, 0.95, allowed=1) == pytest.approx(0.95)  # fires on none
    assert threshold_for(np.full(4, 0.6, np.float32), 0.5, allowed=2) > 0.6  # ties: all of them go
    assert threshold_for(scores, 0.4, allowed=0) > 0.9  # none allowed: above the best


def test_the_bound_is_the_rarest_trained_label_among_the_words_else_the_most_frequent():
    trained = ("green", "star", "large star", "red")
    fired = np.array([30, 40, 10, 50])
    inside = firing_bound(label_words("a large green star"), trained, fired)
    assert (inside.images, inside.label, inside.contained) == (10, "large star", True)
    outside = firing_bound(label_words("blue"), trained, fired)
    assert (outside.images, outside.label, outside.contained) == (50, "red", False)
    # A label that never fired still lets the phrase fire on one image: the sample's resolution.
    assert firing_bound(label_words("green star"), trained, np.array([0, 4, 1, 5])).images == 1


def _frames(red: int, gray: int) -> np.ndarray:
    """``red`` red and ``gray`` gray 32x32 RGB frames, as the colour bundles take them."""
    colours = [RED_RGB] * red + [GRAY_RGB] * gray
    return np.stack([np.full((32, 32, 3), colour, np.float32) for colour in colours])


def _image_embeddings(bundle, frames: np.ndarray) -> np.ndarray:
    """The bundle's own image model's embeddings ``[frames, 1, D]`` (a pooled model: one cell)."""
    model = TfliteModel(bundle.model_bytes, 1, name="image model")
    try:
        return np.stack([model.run(frame[None]).reshape(1, -1) for frame in frames])
    finally:
        model.close()


@pytest.fixture(scope="module")
def mostly_gray_reference(fp32_bundle, tmp_path_factory):
    """The fp32 colour bundle carrying 2 red and 28 gray reference frames."""
    bundle = read_bundle(fp32_bundle)
    reference = _image_embeddings(bundle, _frames(red=2, gray=28))
    return repack(
        fp32_bundle,
        tmp_path_factory.mktemp("reference") / "fp32.tflite",
        reference_embeddings=reference,
    )


def _fires(bundle, labels) -> np.ndarray:
    """How many reference images each typed label fires on at its threshold."""
    m = bundle.manifest
    scores = label_probabilities(
        bundle.reference_embeddings, labels.embeddings, m.logit_scale, m.logit_bias
    )
    return (scores >= labels.thresholds).sum(axis=0)


def test_a_phrase_fires_on_no_more_reference_images_than_the_rarest_label_in_it(
    mostly_gray_reference, caplog
):
    bundle = read_bundle(mostly_gray_reference)
    default = typed_labels(replace(bundle, reference_embeddings=None), ["red gray"])
    assert _fires(bundle, default)[0] > 2  # at the default it fires on gray frames as well
    with caplog.at_level(logging.INFO, logger="fuselite.runtime.typed_thresholds"):
        annotator = Annotator.create_from_bundle_path(
            mostly_gray_reference, labels=("red gray",), num_threads=1
        )
    with annotator:
        threshold = annotator.thresholds[0]
    assert threshold > bundle.manifest.default_threshold
    bounded = typed_labels(bundle, ["red gray"])
    assert bounded.thresholds[0] == pytest.approx(threshold)
    assert _fires(bundle, bounded)[0] <= 2  # "red" fires on the 2 red frames
    lines = [
        r.getMessage() for r in caplog.records if r.name == "fuselite.runtime.typed_thresholds"
    ]
    assert len(lines) == 1
    assert lines[0].startswith("label 'red gray': threshold 0.500 -> ") and "'red' (2)" in lines[0]


def test_a_phrase_within_its_bound_and_the_bundle_labels_keep_their_thresholds(
    mostly_gray_reference, caplog
):
    bundle = read_bundle(mostly_gray_reference)
    with caplog.at_level(logging.INFO, logger="fuselite.runtime.typed_thresholds"):
        labels = typed_labels(bundle, ["red circle", "gray", "red"])
    assert _fires(bundle, labels)[0] <= 2
    assert labels.thresholds[0] == pytest.approx(bundle.manifest.default_threshold)
    assert list(labels.thresholds[1:]) == pytest.approx(
        [bundle.manifest.thresholds[3], bundle.manifest.thresholds[0]]
    )
    assert "threshold" not in caplog.text


def test_trained_labels_are_counted_alike_a_few_images_at_a_time(
    mostly_gray_reference, monkeypatch
):
    bundle = read_bundle(mostly_gray_reference)
    m = bundle.manifest
    whole = firing_counts(bundle.reference_embeddings, bundle.label_embeddings, m)
    monkeypatch.setattr(typed_thresholds, "SCORE_CHUNK", 7)  # one image at a time
    assert list(firing_counts(bundle.reference_embeddings, bundle.label_embeddings, m)) == list(
        whole
    )
    assert list(whole) == [2, 0, 0, 28]  # red, green, blue, gray


def test_a_bundle_without_reference_images_keeps_the_default_threshold(fp32_bundle, caplog):
    bundle = read_bundle(fp32_bundle)
    assert bundle.reference_embeddings is None
    with caplog.at_level(logging.INFO, logger="fuselite.runtime.typed_thresholds"):
        labels = typed_labels(bundle, ["red gray"])
    assert labels.thresholds[0] == pytest.approx(bundle.manifest.default_threshold)
    assert "threshold" not in caplog.text


def test_a_trained_bundle_carries_reference_images_and_bounds_unseen_phrases(converted_tiny_run):
    """The real chain: ``fuselite convert`` writes the reference, the board bounds the phrases."""
    bundle = read_bundle(converted_tiny_run["int8"].path)
    reference = bundle.manifest.reference
    assert reference is not None and reference.images == len(bundle.reference_embeddings) >= 32
    assert reference.images * reference.cells * bundle.manifest.embedding_dim <= 8 * 1024
    phrases = [
        "blue triangle",
        "large red circle",
        "small white cross",
        "small green square",
        "large purple square",
    ]
    labels = typed_labels(bundle, phrases)
    m = bundle.manifest
    assert np.all(labels.thresholds >= np.float32(m.default_threshold))
    trained = label_probabilities(
        bundle.reference_embeddings, bundle.label_embeddings, m.logit_scale, m.logit_bias
    )
    fired = (trained >= np.asarray(m.thresholds, np.float32)).sum(axis=0)
    for phrase, count in zip(phrases, _fires(bundle, labels)):
        assert count <= firing_bound(label_words(phrase), m.labels, fired).images, phrase
