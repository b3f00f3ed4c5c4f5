"""The Annotator API: real frames in, the expected labels out."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
from runtime_helpers import BLUE, GRAY, GREEN, RED, YELLOW, solid
from support.bundles import repack

from fuselite.bundle import BundleError
from fuselite.runtime import AnnotationResult, Annotator, AnnotatorOptions


def labels_of(result: AnnotationResult) -> list[str]:
    return [c.label for c in result.categories]


@pytest.mark.parametrize(
    ("colour", "expected"),
    [
        (RED, ["red"]),
        (GREEN, ["green"]),
        (BLUE, ["blue"]),
        (GRAY, ["gray"]),
        (YELLOW, ["red", "green"]),
    ],
)
def test_annotate_names_the_colour_of_the_frame(any_bundle, colour, expected):
    with Annotator.create(AnnotatorOptions(any_bundle, num_threads=1)) as annotator:
        result = annotator.annotate(solid(colour, noise=10), timestamp_ms=0)
    assert sorted(labels_of(result)) == sorted(expected)
    assert set(result.scores) == {"red", "green", "blue", "gray"}
    for category in result.categories:
        assert category.score >= category.threshold
    assert result.latency.inference_ms > 0


def test_fp32_and_int8_bundles_agree_on_scores(fp32_bundle, int8_bundle):
    frame = solid(YELLOW, noise=20)
    with (
        Annotator.create_from_bundle_path(fp32_bundle) as fp32,
        Annotator.create_from_bundle_path(int8_bundle) as int8,
    ):
        a, b = fp32.annotate(frame, 0).scores, int8.annotate(frame, 0).scores
    assert a.keys() == b.keys()
    assert max(abs(a[k] - b[k]) for k in a) < 0.05


def test_annotate_accepts_any_frame_size_grey_and_bgra(fp32_bundle):
    with Annotator.create(AnnotatorOptions(fp32_bundle)) as annotator:
        big = annotator.annotate(solid(RED, size=(721, 1283)), 0)
        grey = annotator.annotate(np.full((50, 70), 90, np.uint8), 1)
        bgra = annotator.annotate(np.dstack([solid(BLUE), np.full((120, 160), 255, np.uint8)]), 2)
    assert labels_of(big) == ["red"]
    assert labels_of(grey) == ["gray"]
    assert labels_of(bgra) == ["blue"]


@pytest.mark.parametrize(
    "frame",
    [
        None,
        np.zeros((0, 10, 3), np.uint8),
        np.zeros((10, 10, 3), np.float32),
        np.zeros((4, 4, 2), np.uint8),
    ],
    ids=["none", "empty", "float", "two-channels"],
)
def test_annotate_rejects_unusable_frames_with_a_value_error(fp32_bundle, frame):
    with (
        Annotator.create(AnnotatorOptions(fp32_bundle)) as annotator,
        pytest.raises(ValueError, match="frame"),
    ):
        annotator.annotate(frame, 0)


def test_annotate_after_close_says_so(fp32_bundle):
    annotator = Annotator.create(AnnotatorOptions(fp32_bundle))
    annotator.close()
    annotator.close()
    with pytest.raises(ValueError, match="closed"):
        annotator.annotate(solid(RED), 0)


def test_labels_typed_at_run_time_are_embedded_by_the_text_encoder(any_bundle, caplog):
    options = AnnotatorOptions(any_bundle, labels=("red circle", "blue star", "green cup"))
    with caplog.at_level(logging.WARNING), Annotator.create(options) as annotator:
        red = annotator.annotate(solid(RED), 0)
        blue = annotator.annotate(solid(BLUE), 1)
    assert annotator.labels == ("red circle", "blue star", "green cup")
    assert labels_of(red) == ["red circle"]
    assert labels_of(blue) == ["blue star"]
    assert 0.8 < red.scores["red circle"] < 0.95  # half-way between "red" and "circle"
    assert red.scores["green cup"] < 0.05
    assert "does not know 'cup'; ignored" in caplog.text


def test_a_typed_label_without_any_known_word_is_left_out_with_a_warning(fp32_bundle, caplog):
    options = AnnotatorOptions(fp32_bundle, labels=("red", "coffee mug"))
    with caplog.at_level(logging.WARNING), Annotator.create(options) as annotator:
        assert annotator.labels == ("red",)
    assert "'coffee mug' left out" in caplog.text
    with pytest.raises(ValueError, match="none of the labels uses a word the bundle knows"):
        Annotator.create(AnnotatorOptions(fp32_bundle, labels=("coffee mug",)))


def test_typed_label_that_the_bundle_knows_keeps_its_calibrated_threshold(fp32_bundle):
    options = AnnotatorOptions(fp32_bundle, labels=("gray", "red circle"))
    with Annotator.create(options) as annotator:
        assert annotator.thresholds == pytest.approx((0.6, 0.5))


def test_labels_are_read_the_way_people_write_them(fp32_bundle, caplog):
    # The bundle knows "gray" (threshold 0.6), "circle" and "star"; a user types articles,
    # capitals and the other number.
    options = AnnotatorOptions(fp32_bundle, labels=("The Grays", "a circle", "stars", "Red Circles"))
    with caplog.at_level(logging.INFO), Annotator.create(options) as annotator:
        assert annotator.labels == ("The Grays", "a circle", "stars", "Red Circles")
        assert annotator.thresholds == pytest.approx((0.6, 0.5, 0.5, 0.5))
        frame = solid(RED)
        scores = annotator.annotate(frame, 0).scores
    assert scores["Red Circles"] > 0.5 and scores["The Grays"] < 0.5
    assert "'Red Circles' read as 'red circle'" in caplog.text


def test_score_threshold_overrides_the_calibrated_thresholds(fp32_bundle):
    frame = solid(YELLOW)
    with Annotator.create(AnnotatorOptions(fp32_bundle, score_threshold=0.9)) as annotator:
        assert labels_of(annotator.annotate(frame, 0)) == []
    with Annotator.create(AnnotatorOptions(fp32_bundle, score_threshold=0.001)) as annotator:
        assert len(annotator.annotate(frame, 0).categories) == 4


def test_allowlist_denylist_and_max_results_filter_the_answer(fp32_bundle):
    yellow = solid(YELLOW, noise=5)
    with Annotator.create(
        AnnotatorOptions(fp32_bundle, category_allowlist=("green", "blue"))
    ) as annotator:
        result = annotator.annotate(yellow, 0)
    assert labels_of(result) == ["green"]
    assert set(result.scores) == {"green", "blue"}
    with Annotator.create(AnnotatorOptions(fp32_bundle, category_denylist=("green",))) as annotator:
        assert labels_of(annotator.annotate(yellow, 0)) == ["red"]
    with Annotator.create(
        AnnotatorOptions(fp32_bundle, score_threshold=0.0, max_results=2)
    ) as annotator:
        result = annotator.annotate(yellow, 0)
    assert len(result.categories) == 2
    assert result.categories[0].score >= result.categories[1].score
    assert len(result.scores) == 4


def test_unknown_allowlist_label_is_a_value_error_listing_the_labels(fp32_bundle):
    with pytest.raises(ValueError, match="does not score; its labels are: red, green, blue, gray"):
        Annotator.create(AnnotatorOptions(fp32_bundle, category_allowlist=("purple",)))


def test_single_task_answers_with_the_top_label_only(fp32_bundle, tmp_path):
    single = repack(fp32_bundle, tmp_path / "single.tflite", task="single")
    with Annotator.create(AnnotatorOptions(single, score_threshold=0.1)) as annotator:
        result = annotator.annotate(solid(YELLOW, noise=5), 0)
    assert len(result.categories) == 1
    assert result.top.label in ("red", "green")
    assert len(result.scores) == 4


def test_model_output_inconsistent_with_the_labels_is_a_bundle_error(fp32_bundle, tmp_path):
    wide = repack(
        fp32_bundle,
        tmp_path / "wide.tflite",
        embedding_dim=16,
        label_embeddings=np.eye(4, 16, dtype=np.float32),
    )
    with pytest.raises(BundleError, match=r"outputs \[1, 8\].*embedded in 16 dimensions"):
        Annotator.create(AnnotatorOptions(wide))


def test_manifest_input_size_disagreeing_with_the_model_is_a_bundle_error(fp32_bundle, tmp_path):
    from fuselite.bundle import read_manifest

    preprocessing = dataclasses.replace(
        read_manifest(fp32_bundle).preprocessing, input_size=(64, 64)
    )
    wrong = repack(fp32_bundle, tmp_path / "wrong.tflite", preprocessing=preprocessing)
    with pytest.raises(BundleError, match=r"input is \[1, 32, 32, 3\].*\[1, 64, 64, 3\]"):
        Annotator.create(AnnotatorOptions(wrong))


def test_missing_output_quantization_in_the_manifest_is_a_bundle_error(int8_bundle, tmp_path):
    from fuselite.bundle import read_manifest

    preprocessing = dataclasses.replace(read_manifest(int8_bundle).preprocessing, output_quant=None)
    wrong = repack(int8_bundle, tmp_path / "noquant.tflite", preprocessing=preprocessing)
    with pytest.raises(BundleError, match="no output_quant"):
        Annotator.create(AnnotatorOptions(wrong))


def test_options_are_frozen_and_validated():
    options = AnnotatorOptions("model.tflite", category_allowlist=["red"])
    assert options.category_allowlist == ("red",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.num_threads = 3
    bad_options = [
        {"num_threads": 0},
        {"score_threshold": 1.5},
        {"max_results": 0},
        {"smoothing": 1.0},
        {"category_allowlist": ("a",), "category_denylist": ("b",)},
        {"hysteresis": -0.1},
        {"labels": ("", " ")},
    ]
    for bad in bad_options:
        with pytest.raises(ValueError):
            AnnotatorOptions("model.tflite", **bad)
    with pytest.raises(TypeError, match="list of label texts"):
        AnnotatorOptions("model.tflite", labels="red,blue")


def test_preprocess_can_run_apart_from_annotate(fp32_bundle):
    with Annotator.create(AnnotatorOptions(fp32_bundle)) as annotator:
        model_input = annotator.preprocess(solid(BLUE))
        assert model_input.shape == (1, 32, 32, 3) and model_input.dtype == np.float32
        result = annotator.annotate_preprocessed(model_input, 0, preprocess_ms=1.5)
    assert labels_of(result) == ["blue"]
    assert result.latency.preprocess_ms == 1.5


def test_infer_and_postprocess_split_annotate_preprocessed(int8_bundle):
    options = AnnotatorOptions(int8_bundle, smoothing=0.5, hysteresis=0.05)
    with Annotator.create(options) as whole, Annotator.create(options) as split:
        for t, colour in enumerate([RED, RED, BLUE, BLUE, BLUE]):
            model_input = whole.preprocess(solid(colour))
            expected = whole.annotate_preprocessed(model_input, t * 40.0)
            output, inference_ms = split.infer(model_input)
            result = split.postprocess(output, t * 40.0, 0.0, inference_ms)
            assert labels_of(result) == labels_of(expected)
            assert result.scores == pytest.approx(expected.scores)
            assert result.latency.inference_ms == inference_ms
    with pytest.raises(ValueError, match="closed"):
        split.infer(model_input)
