"""``qat-int8``: partial quantization-aware training of the tiny run's tower, then a full-int8 bundle.

Converted once (``TEST_FINETUNE_STEPS`` steps of QAT) through the session's tiny
converter, so the file adds a few seconds to a session that converts anyway.
"""

from __future__ import annotations

import numpy as np
import pytest

from fuselite.bundle import Manifest, read_bundle
from fuselite.convert.variants import get_variant

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:distutils Version classes are deprecated:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def qat(tiny_converter):
    """The ``qat-int8`` result of the tiny run and its bundle read back from disk."""
    result = tiny_converter.convert(get_variant("qat-int8"))
    assert result.status == "ok", result.message
    return result, read_bundle(result.path)


def test_qat_int8_is_not_a_default_but_converts_on_request(tiny_converter, qat):
    from fuselite.convert.variants import default_variants, resolve_variants

    assert "qat-int8" not in default_variants()
    assert [v.name for v in resolve_variants(["qat-int8"])] == ["qat-int8"]
    result, _ = qat
    assert result.path == tiny_converter.out_dir / "qat-int8.tflite" and result.path.is_file()


def test_the_bundle_is_full_integer_and_runs_in_the_runtime(qat, tiny_converter):
    from ai_edge_litert.interpreter import Interpreter

    from fuselite.convert.numerics import tflite_embeddings
    from fuselite.runtime import Annotator

    result, bundle = qat
    interpreter = Interpreter(model_path=str(result.path), num_threads=1)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert np.dtype(inp["dtype"]) == np.uint8 and np.dtype(out["dtype"]) == np.int8
    assert bundle.manifest.preprocessing.input_quant == (1.0, 0)  # raw pixels, as the int8 variant
    # No float kernels left: every convolution and fully connected weight is int8.
    weights = [d for d in interpreter.get_tensor_details() if len(d["shape"]) in (2, 4) and d["index"] != inp["index"]]
    assert weights and {np.dtype(d["dtype"]) for d in weights} <= {np.dtype(np.int8)}

    image = tiny_converter.data.test.images[0]
    embedding = tflite_embeddings(bundle.model_bytes, image[None], 1)[0]
    similarity = embedding @ bundle.label_embeddings.T
    similarity = similarity.max(axis=0) if similarity.ndim == 2 else similarity  # a regional run scores its best cell
    manifest = bundle.manifest
    expected = 1 / (1 + np.exp(-(manifest.logit_scale * similarity + manifest.logit_bias)))
    with Annotator.create_from_bundle_path(result.path) as annotator:
        annotated = annotator.annotate(np.ascontiguousarray(image[..., ::-1]), timestamp_ms=0)
    assert np.allclose([annotated.scores[label] for label in manifest.labels], expected, atol=1e-5)


def test_the_manifest_round_trips_and_records_the_qat_in_its_provenance(qat, tiny_converter):
    from fuselite.convert.compress import quantizable

    _, bundle = qat
    manifest = bundle.manifest
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert manifest.variant == "qat-int8" and manifest.preprocessing.input_dtype == "uint8"
    provenance = manifest.provenance
    assert provenance["quantization"] == {"mode": "int8", "per_channel": True}
    assert provenance["calibration_samples"] > 0
    assert provenance["thresholds"] == "recalibrated on validation"
    qat = provenance["compression"]
    assert qat["method"] == "qat" and "quantize_apply" in qat["api"]
    assert qat["steps"] == tiny_converter.options.finetune_steps
    assert qat["seconds"] > 0 and np.isfinite(qat["final_loss"]) and qat["tfmot"]
    tower = tiny_converter.run.image_encoder
    assert qat["layers"] == [layer.name for layer in tower.layers if quantizable(layer)]
    assert {"stem", "project"} <= set(qat["layers"])
    assert not {"normalize", "cells", "embedding"} & set(qat["layers"])  # TFMOT cannot quantize these


def test_the_numeric_check_against_the_qat_keras_tower_is_recorded_and_within_tolerance(qat):
    variant = get_variant("qat-int8")
    numerics = qat[1].manifest.numerics
    assert numerics["reference"] == "quantization-aware trained Keras image tower (fake-quant)"
    assert numerics["passed"] is True
    assert numerics["tolerance"] == {"min_agreement": variant.min_agreement, "max_score_error": variant.max_score_error}
    assert numerics["top1_agreement"] >= variant.min_agreement
    assert numerics["max_score_error"] <= variant.max_score_error
    assert numerics["samples"] > 0 and 0.0 <= numerics["task_metric"] <= 1.0


def test_the_qat_tower_fakes_quantization_only_where_tfmot_can_and_keeps_batch_norm_frozen(qat, tiny_converter):
    """The Keras model the bundle was checked against: wrapped convolutions, float glue layers."""
    from fuselite.convert.numerics import tflite_embeddings
    from fuselite.train.pipeline import embed_images

    model, _ = tiny_converter._keras_model(get_variant("qat-int8"))  # the cached fine-tuned tower
    kinds = {layer.name: type(layer).__name__ for layer in model.layers}
    assert kinds["quant_stem"] == "QuantizeWrapperV2" and kinds["quant_project"] == "QuantizeWrapperV2"
    assert kinds["normalize"] == "Rescaling" and kinds["embedding"] == "UnitNormalization"
    original = tiny_converter.run.image_encoder.get_layer("stem_bn")
    assert np.array_equal(model.get_layer("quant_stem_bn").layer.moving_mean.numpy(), original.moving_mean.numpy())

    images = tiny_converter.data.test.images[:32]
    keras, tflite = embed_images(model, images), tflite_embeddings(qat[1].model_bytes, images, 2)
    cosine = (keras * tflite).sum(axis=-1)
    assert cosine.mean() > 0.98  # the fake-quant ranges carried over into the int8 graph


def test_list_shows_the_qat_bundle(qat, capsys):
    from fuselite.cli import main

    assert main(["convert", "--list", str(qat[0].path.parent)]) == 0
    assert "qat-int8.tflite" in capsys.readouterr().out
