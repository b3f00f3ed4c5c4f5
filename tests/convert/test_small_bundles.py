"""Small end to end (issue 31): an int8 bundle's text tower is int8 too, and
``--fixed-labels`` bundles carry label embeddings only.

The trained-run tests use the session's ``tiny_run`` conversions; the runtime's
fixed-label tests repack the colour bundle (no training).
"""

from __future__ import annotations

import copy
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fuselite.bundle import EMBEDDINGS_MEMBER, MANIFEST_MEMBER, read_bundle, write_bundle
from fuselite.errors import UserError
from fuselite.flatbuffer import read_graph

INT8_TENSOR = 9  # TFLite TensorType INT8


def _members(path: Path) -> set[str]:
    data = path.read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return set(zf.namelist())


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _int8_weights(model_bytes: bytes) -> int:
    """How many constant tensors of the flatbuffer hold int8 values."""
    graph = read_graph(model_bytes)
    sub = graph.subgraphs[0]
    return sum(1 for t, b in enumerate(sub.buffers)
               if sub.types[t] == INT8_TENSOR and 0 <= b < len(graph.constant_buffers) and graph.constant_buffers[b])


def _fixed_converter(converter, out_dir: Path):
    """The session converter writing ``--fixed-labels`` bundles into ``out_dir`` (a copy: the
    session's own keeps its options)."""
    from dataclasses import replace

    fixed = copy.copy(converter)
    fixed.options, fixed.out_dir = replace(converter.options, fixed_labels=True), out_dir
    return fixed


@pytest.fixture(scope="module")
def converted(tiny_converter, tmp_path_factory) -> dict:
    """fp32 and int8 bundles of ``tiny_run``: variant name -> ``VariantResult``."""
    from fuselite.convert.variants import get_variant

    converter = copy.copy(tiny_converter)
    converter.out_dir = tmp_path_factory.mktemp("small-bundles")
    return {name: converter.convert(get_variant(name)) for name in ("fp32", "int8")}


# --- the int8 text tower ----------------------------------------------------------------


def test_an_int8_bundle_carries_an_int8_text_encoder_that_agrees_with_float(converted, tiny_converter):
    from fuselite.convert.export import TEXT_INT8_MIN_COSINE
    from fuselite.runtime.labels import embed_texts
    from fuselite.train.pipeline import embed_texts as keras_embed_texts

    int8, fp32 = (read_bundle(converted[name].path) for name in ("int8", "fp32"))
    checks = int8.manifest.numerics["text_encoder"]
    assert checks["precision"] == "int8" and checks["min_cosine"] >= TEXT_INT8_MIN_COSINE
    assert checks["labels"] == len(int8.manifest.labels) and checks["phrases"] > 0
    assert int8.manifest.provenance["text_encoder"] == "int8"
    assert _int8_weights(int8.text_encoder_bytes) >= 3 and _int8_weights(fp32.text_encoder_bytes) == 0
    assert len(int8.text_encoder_bytes) < 0.5 * len(fp32.text_encoder_bytes)
    # Every runtime the project supports loads it (no hybrid FULLY_CONNECTED v12 for tflite-runtime 2.14).
    assert all(int8.manifest.provenance["runtimes"].values()), int8.manifest.provenance["runtime_problems"]
    # On the board: a typed phrase embedded by the bundle's int8 tower is close to the Keras one.
    run = tiny_converter.run
    phrase = " ".join(run.labels[:2])
    board = embed_texts(int8, [phrase])[phrase][np.newaxis]
    keras = keras_embed_texts(run.text_encoder, run.tokenizer, [phrase])
    assert _cosines(board, keras)[0] >= TEXT_INT8_MIN_COSINE


def test_float_bundles_keep_the_float_text_encoder(converted):
    fp32 = read_bundle(converted["fp32"].path)
    assert fp32.manifest.numerics["text_encoder"]["precision"] == "float32"
    assert converted["fp32"].numerics["text_encoder"]["precision"] == "float32"  # convert-report.json


def test_the_text_encoder_falls_back_to_float16_below_the_cosine_floor(tiny_converter, monkeypatch):
    from fuselite.convert import export
    from fuselite.convert.variants import get_variant

    converter = copy.copy(tiny_converter)
    converter._small_text_encoder = None
    monkeypatch.setattr(export, "TEXT_INT8_MIN_COSINE", 1.01)  # no int8 tower can reach it
    model_bytes, info = converter.text_encoder_for(get_variant("int8"))
    assert info["precision"] == "float16" and set(info["rejected"]) == {"int8"}
    assert info["rejected"]["int8"]["min_cosine"] < 1.01 and info["min_cosine"] > 0.999
    assert _int8_weights(model_bytes) == 0 and model_bytes != tiny_converter.text_encoder_bytes


# --- --fixed-labels -----------------------------------------------------------------------


def test_a_fixed_labels_bundle_has_no_text_encoder_and_scores_its_own_labels(converted, tiny_converter,
                                                                            tmp_path):
    from fuselite.convert.variants import get_variant
    from fuselite.runtime.annotator import Annotator

    result = _fixed_converter(tiny_converter, tmp_path).convert(get_variant("int8"))
    assert result.status == "ok", result.message
    assert _members(result.path) == {MANIFEST_MEMBER, EMBEDDINGS_MEMBER}
    full = converted["int8"]
    # The same image model; the text tower (deflated in the zip) and the tokenizer are gone.
    assert result.model_size == full.model_size
    assert result.file_size < full.file_size - 0.5 * len(read_bundle(full.path).text_encoder_bytes)
    bundle = read_bundle(result.path)
    assert bundle.manifest.label_source == "fixed" and bundle.tokenizer is None
    assert bundle.manifest.numerics["text_encoder"]["precision"] == "none"
    np.testing.assert_array_equal(bundle.label_embeddings, read_bundle(full.path).label_embeddings)
    label = tiny_converter.run.labels[0]
    with Annotator.create_from_bundle_path(result.path, labels=[label.upper()]) as annotator:
        assert annotator.labels == (label.upper(),)
    with pytest.raises(UserError, match="this bundle has fixed labels; choose from: "):
        Annotator.create_from_bundle_path(result.path, labels=[label, "purple elephant"])


@pytest.fixture
def fixed_colour_bundle(int8_bundle, tmp_path) -> Path:
    """The colour int8 bundle repacked as a fixed-labels bundle."""
    source = read_bundle(int8_bundle)
    return write_bundle(tmp_path / "fixed.tflite", model_bytes=source.model_bytes, manifest=source.manifest,
                        label_embeddings=source.label_embeddings, fixed_labels=True)


def test_typed_labels_of_a_fixed_bundle_reuse_its_embeddings_and_thresholds(fixed_colour_bundle):
    from fuselite.runtime.labels import typed_labels

    bundle = read_bundle(fixed_colour_bundle)
    first, second = bundle.manifest.labels[:2]
    labels = typed_labels(bundle, [f"The {second.title()}", first])
    assert labels.labels == (f"The {second.title()}", first)
    np.testing.assert_array_equal(labels.embeddings, bundle.label_embeddings[[1, 0]])
    np.testing.assert_array_equal(labels.thresholds, np.asarray(bundle.manifest.thresholds, np.float32)[[1, 0]])


def test_a_label_a_fixed_bundle_does_not_hold_is_one_line_naming_its_labels(fixed_colour_bundle):
    from fuselite.runtime.labels import has_fixed_labels, typed_labels

    bundle = read_bundle(fixed_colour_bundle)
    assert has_fixed_labels(bundle)
    near = bundle.manifest.labels[0] + "s"
    with pytest.raises(UserError) as caught:
        typed_labels(bundle, [near])
    message = str(caught.value)
    assert message.startswith(f"label {near!r}: this bundle has fixed labels; choose from: ")
    assert all(label in message for label in bundle.manifest.labels) and "\n" not in message
    assert f"(closest: {bundle.manifest.labels[0]}" in message


def test_fixed_labels_with_pretrained_is_a_usage_error():
    import argparse

    from fuselite.convert import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--pretrained", "efficientnet-lite0", "--out", "x", "--fixed-labels"])
    with pytest.raises(UserError, match="--fixed-labels applies to a trained run"):
        cli.run(args)
    assert parser.parse_args(["run", "--out", "x", "--fixed-labels"]).fixed_labels


def test_the_report_of_a_fixed_labels_conversion_says_so(tmp_path):
    from fuselite.convert.export import ConvertOptions
    from fuselite.convert.report import write_report

    path = write_report(tmp_path, [], {"options": vars(ConvertOptions(fixed_labels=True))})
    assert json.loads(path.read_text())["options"]["fixed_labels"] is True


def test_the_board_probe_takes_a_fixed_bundles_label_embeddings_as_they_are(fixed_colour_bundle):
    """``fuselite devices verify`` runs the probe on the board: a fixed bundle has no text tower to run."""
    from fuselite.devices.probe import label_embeddings_on_board

    bundle = read_bundle(fixed_colour_bundle)
    np.testing.assert_array_equal(label_embeddings_on_board(bundle, num_threads=1), bundle.label_embeddings)
