"""Non-finite numbers never become scores (issue 36, item 6).

A model whose weights hold NaN outputs NaN on every frame; before, that gave
``"scores": {"red": NaN}`` lines (not JSON) and crashed ``draw_overlay`` with
``--video-out``.  Now :meth:`Annotator.infer` raises :class:`FrameError`, the run loop
counts it (``frame_errors`` in the stats records), logs the first and every 100th, and
goes on.  Manifest numbers that overflow float32 are refused when the bundle is read.
"""

from __future__ import annotations

import json

import cv2
import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from runtime_helpers import BLUE, RED, error_lines, fuselite_run, solid
from support.bundles import repack

from fuselite.bundle import BundleError, read_bundle
from fuselite.runtime import Annotator, AnnotatorOptions
from fuselite.runtime.annotator import FrameError
from fuselite.runtime.interpreter import TfliteModel
from fuselite.runtime.labels import LabelSet
from fuselite.runtime.overlay import draw_overlay
from fuselite.runtime.results import AnnotationResult, Category


def with_float_weights(model_bytes: bytes, value: float) -> bytes:
    """The model with every float32 constant (its weights and biases) set to ``value``."""
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(model_bytes, 0))
    for tensor in model.subgraphs[0].tensors:
        data = model.buffers[tensor.buffer].data
        if tensor.type == schema.TensorType.FLOAT32 and data is not None and len(data):
            model.buffers[tensor.buffer].data = np.full(len(data) // 4, value, np.float32).view(np.uint8)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@pytest.fixture(scope="module")
def nan_bundle(fp32_bundle, tmp_path_factory):
    """The fp32 colour bundle with NaN weights: it loads, and outputs NaN on every frame."""
    model = with_float_weights(read_bundle(fp32_bundle).model_bytes, np.nan)
    return repack(fp32_bundle, tmp_path_factory.mktemp("nan") / "nan.tflite", model_bytes=model)


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    """A folder of two frames, a red one and a blue one."""
    folder = tmp_path_factory.mktemp("frames")
    for name, colour in (("0-red.png", RED), ("1-blue.png", BLUE)):
        cv2.imwrite(str(folder / name), solid(colour))
    return folder


def strict_json(line: str) -> dict:
    """``json.loads`` that refuses NaN and Infinity, as every JSON parser but Python's does."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(line, parse_constant=refuse)


def test_a_nan_output_is_a_frame_error_not_a_score(nan_bundle):
    with Annotator.create(AnnotatorOptions(nan_bundle)) as annotator, \
            pytest.raises(FrameError, match="NaN or infinity"):
        annotator.annotate(solid(RED), timestamp_ms=0)


def test_fuselite_run_counts_and_logs_nan_frames_and_writes_only_valid_json(nan_bundle, two_images, tmp_path):
    jsonl, video = tmp_path / "events.jsonl", tmp_path / "out.mp4"
    done = fuselite_run("--bundle", nan_bundle, "--source", two_images, "--jsonl", jsonl, "--video-out", video)
    assert done.returncode == 0, done.stderr
    records = [strict_json(line) for line in jsonl.read_text().splitlines()]
    assert not [r for r in records if r["type"] == "annotation"]
    final = next(r for r in records if r["type"] == "stats" and r["final"])
    assert final["frame_errors"] == 2 and final["frames"] == 0
    warnings = [line for line in error_lines(done.stderr) if "not annotated" in line]
    assert len(warnings) == 1 and "the model output NaN or infinity" in warnings[0]  # the first only


def test_a_finite_model_reports_no_frame_errors(fp32_bundle, two_images, tmp_path):
    jsonl = tmp_path / "events.jsonl"
    assert fuselite_run("--bundle", fp32_bundle, "--source", two_images, "--jsonl", jsonl).returncode == 0
    final = [strict_json(line) for line in jsonl.read_text().splitlines()][-1]
    assert final["frame_errors"] == 0 and final["frames"] == 2


@pytest.mark.parametrize("score", [float("nan"), float("inf"), float("-inf"), 7.0])
def test_draw_overlay_never_crashes_on_a_score_outside_0_to_1(score):
    image = np.zeros((240, 320, 3), np.uint8)
    result = AnnotationResult(0.0, (Category(0, "blue", score, score, 0.5),), {"blue": score, "red": 0.2})
    assert draw_overlay(image, result, "status") is image


@pytest.mark.parametrize(("field", "value"), [("logit_scale", 1e300), ("logit_scale", 1e39),
                                              ("logit_bias", -1e39), ("logit_scale", -10.0)])
def test_a_manifest_number_unusable_in_float32_is_refused_in_one_line(fp32_bundle, tmp_path, field, value):
    path = repack(fp32_bundle, tmp_path / "b.tflite", **{field: value})
    with pytest.raises(BundleError, match=field) as caught:
        read_bundle(path)
    assert "\n" not in str(caught.value)


def test_label_embeddings_made_at_run_time_that_would_overflow_are_refused(fp32_bundle):
    """Typed labels are embedded by the bundle's text encoder, after read_bundle's checks."""
    bundle = read_bundle(fp32_bundle)
    model = TfliteModel(bundle.model_bytes, 1, name="image model")
    dim = bundle.manifest.embedding_dim
    huge = LabelSet(("red circle",), np.full((1, dim), 1e20, np.float32), np.full(1, 0.5, np.float32))
    try:
        with pytest.raises(BundleError, match=r"'red circle'\) has length .* overflow float32"):
            Annotator(AnnotatorOptions(fp32_bundle), bundle, model, huge)
    finally:
        model.close()
