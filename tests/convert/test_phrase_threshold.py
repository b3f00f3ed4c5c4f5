"""Typed phrases that are none of a bundle's labels (issue 32): a phrase made of known words
gets a threshold relative to its own scores on the manifest's reference frames, so it no
longer fires on frames it does not apply to, while one that applies still fires.

The trained-model tests use the session's ``tiny_run`` conversion (``scenes-tiny``: the
scenes' tags say what each image holds); the manifest tests repack the colour bundle.
"""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
from support.bundles import repack

from fuselite.bundle import BundleError, Manifest, read_bundle
from fuselite.runtime.labels import phrase_thresholds, typed_labels

COLOURS = ("red", "green", "blue", "yellow", "purple", "white")
SHAPES = ("circle", "square", "triangle", "star", "cross")


@pytest.fixture(scope="module")
def tiny_fp32(tiny_converter, tmp_path_factory):
    """``(converter, bundle)``: the fp32 bundle of ``tiny_run``, read back from disk."""
    from fuselite.convert.variants import get_variant

    converter = copy.copy(tiny_converter)
    converter.out_dir = tmp_path_factory.mktemp("phrase-bundles")
    result = converter.convert(get_variant("fp32"))
    assert result.status == "ok", result.reason
    return converter, read_bundle(result.path)


def _test_frames(converter):
    """Float image embeddings of the run's test scenes and their tags."""
    from fuselite.convert.export import _embed

    return _embed(converter.run.image_encoder, converter.data.test.images), list(converter.data.test.tags)


def _unseen_phrases(bundle) -> list[str]:
    """``"large red star"``-style phrases: every word known, none of them a label."""
    words = set(bundle.tokenizer.vocab)
    phrases = [f"{size} {colour} {shape}" for size in ("large", "small") for colour in COLOURS for shape in SHAPES]
    return [p for p in phrases if p not in bundle.manifest.labels and set(p.split()) <= words]


def _applies(phrase: str, tags: list[str]) -> bool:
    size, colour, shape = phrase.split()
    return f"{size} {shape}" in tags and f"{colour} {shape}" in tags


def test_unseen_phrases_fire_far_less_where_they_do_not_apply(tiny_fp32):
    converter, bundle = tiny_fp32
    frames, tags = _test_frames(converter)
    phrases = _unseen_phrases(bundle)
    labels = typed_labels(bundle, phrases)
    scores = converter.scorer(frames, labels.embeddings)
    absent = ~np.array([[_applies(p, t) for p in labels.labels] for t in tags])
    before = (scores >= bundle.manifest.default_threshold)[absent].mean()
    after = (scores >= labels.thresholds)[absent].mean()
    assert before > 0.15  # the trap: one global threshold lets them fire on many such frames
    assert after < before / 2 and after < 0.15, (before, after)


def test_a_phrase_that_applies_still_fires(tiny_fp32):
    converter, bundle = tiny_fp32
    frames, tags = _test_frames(converter)
    # Colour words the tiny model learned, scored by the unseen-phrase rule as if typed new.
    for word in ("yellow", "green"):
        embedding = bundle.label_embeddings[bundle.manifest.labels.index(word)][None]
        fires = converter.scorer(frames, embedding)[:, 0] >= phrase_thresholds(bundle, embedding)[0]
        present = np.array([word in t for t in tags])
        assert fires[present].mean() >= 0.7, word
        assert fires[~present].mean() <= 0.1, word


def test_the_manifest_ships_the_calibration_and_the_log_says_the_threshold(tiny_fp32, caplog):
    _, bundle = tiny_fp32
    calibration = bundle.manifest.phrase_calibration
    assert calibration is not None and 0 < calibration["spread_factor"] <= 8
    assert 1 <= len(calibration["reference"]) <= 64
    with caplog.at_level(logging.INFO):
        labels = typed_labels(bundle, ["A Large Red Star"])
    assert "'A Large Red Star' read as 'large red star'" in caplog.text
    assert f"threshold {labels.thresholds[0]:.3f}" in caplog.text


def test_phrase_calibration_round_trips_and_is_validated(fp32_bundle, tmp_path):
    dim = read_bundle(fp32_bundle).manifest.embedding_dim
    calibration = {"reference": np.eye(3, dim).round(4).tolist(), "spread_factor": 2.5, "false_rate": 0.05}
    path = repack(fp32_bundle, tmp_path / "calibrated.tflite", phrase_calibration=calibration)
    manifest = read_bundle(path).manifest
    assert manifest.phrase_calibration == calibration
    assert Manifest.from_json(manifest.to_json()) == manifest
    data = json.loads(manifest.to_json())
    bad = [{"reference": [[0.1] * (dim + 1)], "spread_factor": 1.0},
           {"reference": [[float("nan")] * dim], "spread_factor": 1.0},
           {"reference": [], "spread_factor": 1.0},
           {"reference": [[0.1] * dim], "spread_factor": -1},
           {"reference": [[0.1] * dim, [0.1]], "spread_factor": 1.0},
           "reference"]
    for value in bad:
        with pytest.raises(BundleError, match="phrase_calibration"):
            Manifest.from_json(json.dumps({**data, "phrase_calibration": value}))


def test_an_old_bundle_without_calibration_keeps_the_default_threshold(fp32_bundle, caplog):
    bundle = read_bundle(fp32_bundle)
    assert bundle.manifest.phrase_calibration is None
    with caplog.at_level(logging.INFO):
        labels = typed_labels(bundle, ["red", "red green"])
    assert labels.thresholds[1] == pytest.approx(bundle.manifest.default_threshold)
    assert "default threshold" in caplog.text
