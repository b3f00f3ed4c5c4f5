"""Every variant of a tiny trained run becomes a bundle that loads, describes itself and agrees with Keras."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fuselite.bundle import Manifest, read_bundle
from fuselite.convert.variants import VARIANTS, get_variant

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:distutils Version classes are deprecated:DeprecationWarning"),
]

ALL = list(VARIANTS)


def _probabilities(manifest: Manifest, image_emb, label_emb):
    """The scorer written out again: a label scores its best cell in regional models."""
    similarity = image_emb @ label_emb.T
    if similarity.ndim == 3:
        similarity = similarity.max(axis=1)
    return 1 / (1 + np.exp(-(manifest.logit_scale * similarity + manifest.logit_bias)))


def bundle_output_rank(bundle) -> int:
    from ai_edge_litert.interpreter import Interpreter

    return len(Interpreter(model_content=bundle.model_bytes).get_output_details()[0]["shape"])


@pytest.mark.parametrize("name", ALL)
def test_each_variant_is_written_and_loads_in_ai_edge_litert_from_its_path(converted_tiny_run, name):
    from ai_edge_litert.interpreter import Interpreter

    result = converted_tiny_run[name]
    assert result.status == "ok", result.message
    assert result.path.name == f"{name}.tflite"
    interpreter = Interpreter(model_path=str(result.path), num_threads=1)  # trailing zip and all
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    manifest = read_bundle(result.path).manifest
    assert list(inp["shape"]) == [1, *manifest.preprocessing.input_size, 3]
    assert np.dtype(inp["dtype"]) == np.uint8  # every variant takes raw pixels
    # [1, D], or [1, cells, D] for regional models
    assert out["shape"][0] == 1 and out["shape"][-1] == manifest.embedding_dim and len(out["shape"]) in (2, 3)


@pytest.mark.parametrize("name", ALL)
def test_each_manifest_round_trips_and_carries_what_the_runtime_needs(converted_tiny_run, tiny_converter, name):
    bundle = read_bundle(converted_tiny_run[name].path)
    manifest, run = bundle.manifest, tiny_converter.run
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert manifest.variant == name and manifest.task == run.task
    assert list(manifest.labels) == run.labels and len(manifest.thresholds) == len(run.labels)
    assert bundle.tokenizer == run.tokenizer
    assert manifest.preprocessing.input_size == (run.config.image_size,) * 2
    assert manifest.preprocessing.color_order == "RGB" and manifest.preprocessing.input_dtype == "uint8"
    assert np.allclose(bundle.label_embeddings, tiny_converter.label_embeddings)
    provenance = manifest.provenance
    assert provenance["source_run"] == str(run.run_dir.resolve())
    assert provenance["tensorflow"] and provenance["ops"] and provenance["text_encoder_ops"]
    assert provenance["runtimes"]["ai-edge-litert"] is True
    assert 0.0 < manifest.default_threshold < 1.0


@pytest.mark.parametrize("name", [n for n in ALL if VARIANTS[n].compression == "none"])
def test_each_variant_scores_test_images_like_the_keras_model(converted_tiny_run, tiny_converter, name):
    """Re-checked here, independently of the numbers the converter stored."""
    from fuselite.convert.numerics import tflite_embeddings
    from fuselite.train.model import mirror_averaged
    from fuselite.train.pipeline import embed_images

    bundle = read_bundle(converted_tiny_run[name].path)
    images = tiny_converter.data.test.images
    variant = get_variant(name)
    encoder = tiny_converter.run.image_encoder
    keras = _probabilities(bundle.manifest, embed_images(mirror_averaged(encoder) if variant.mirror else encoder,
                                                         images), bundle.label_embeddings)
    tflite = _probabilities(bundle.manifest, tflite_embeddings(bundle.model_bytes, images, num_threads=2),
                            bundle.label_embeddings)
    assert np.mean(keras.argmax(1) == tflite.argmax(1)) >= variant.min_agreement
    assert np.abs(keras - tflite).max() <= variant.max_score_error


@pytest.mark.parametrize("name", ALL)
def test_each_manifest_stores_its_numeric_check_and_task_metric(converted_tiny_run, tiny_run, name):
    import json

    numerics = read_bundle(converted_tiny_run[name].path).manifest.numerics
    assert numerics["passed"] is True and numerics["samples"] > 0
    assert numerics["top1_agreement"] >= numerics["tolerance"]["min_agreement"]
    assert numerics["max_score_error"] <= numerics["tolerance"]["max_score_error"]
    text = numerics["text_encoder"]
    if text["precision"] == "float32":
        assert numerics["text_encoder_max_error"] < 1e-4
    else:  # int8 bundles carry an int8 (or float16) text encoder, judged by cosine with float
        assert text["min_cosine"] >= 0.995
    assert 0.0 <= numerics["max_logit_error"] < (1e-3 if name == "fp32" else 10.0)
    assert 0.9 <= numerics["decision_agreement"] <= 1.0
    # The Keras reference goes through the same metric code as training: same number.
    run_metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert numerics["keras_task_metric"] == pytest.approx(run_metrics["mAP"], abs=1e-6)
    assert numerics["keras_metrics"]["heldout_combo_ap"] == pytest.approx(run_metrics["heldout_combo_ap"], abs=1e-6)
    assert 0.0 <= numerics["task_metric"] <= 1.0
    # the budget judged the validation split (issue 31); the figures above are the test split's
    assert numerics["split"] == "test" and numerics["judged_on"] == "validation"
    assert numerics["judged"]["split"] == "validation" and numerics["judged"]["samples"] > 0
    assert numerics["judged"]["fallback"] is None and numerics["judged"]["delta_pt"] is not None


def test_full_integer_bundles_take_raw_pixels_and_give_int8_embeddings(converted_tiny_run):
    for name in ("int8", "pruned-int8", "int8-per-tensor"):
        pre = read_bundle(converted_tiny_run[name].path).manifest.preprocessing
        assert pre.input_quant == (1.0, 0), name
        assert pre.output_quant is not None and pre.output_quant[1] == 0
    pre = read_bundle(converted_tiny_run["fp32"].path).manifest.preprocessing
    assert pre.input_quant is None and pre.output_quant is None


@pytest.mark.parametrize("name", ["fp32", "int8"])
def test_inner_tensors_carry_short_names_and_inputs_keep_theirs(converted_tiny_run, name):
    from ai_edge_litert.interpreter import Interpreter

    bundle = read_bundle(converted_tiny_run[name].path)
    for model_bytes, input_name in ((bundle.model_bytes, "image"), (bundle.text_encoder_bytes, "token_ids")):
        interpreter = Interpreter(model_content=model_bytes)
        ends = interpreter.get_input_details() + interpreter.get_output_details()
        assert input_name in ends[0]["name"]
        outer = {d["index"] for d in ends}
        inner = [d for d in interpreter.get_tensor_details() if d["index"] not in outer]
        assert inner and all(d["name"] == f"t{d['index']}" for d in inner)


def test_quantized_bundles_are_smaller_than_fp32(converted_tiny_run):
    sizes = {name: r.model_size for name, r in converted_tiny_run.items()}
    assert sizes["fp16"] < 0.7 * sizes["fp32"]
    for name in ("dynamic", "int8", "int8-per-tensor"):
        assert sizes[name] < 0.5 * sizes["fp32"], name


def test_pruning_leaves_small_kernels_dense(converted_tiny_run, tiny_converter):
    from fuselite.convert.compress import CompressSettings, compressible

    pruned = set(read_bundle(converted_tiny_run["pruned-int8"].path).manifest.provenance["compression"]["layers"])
    sizes = {
        layer.name: int(np.prod(layer.kernel.shape))
        for layer in tiny_converter.run.image_encoder.layers
        if compressible(layer)
    }
    small = {name for name, size in sizes.items() if size < CompressSettings().min_pruned_weights}
    assert small and pruned and pruned == set(sizes) - small


def test_pruned_bundle_reaches_the_sparsity_and_compresses_better(converted_tiny_run):
    result = converted_tiny_run["pruned-int8"]
    manifest = read_bundle(result.path).manifest
    pruning = manifest.provenance["compression"]
    assert pruning["method"] == "prune"
    # The sparsity the budget's search kept (0.9 down to 0.5), reached in the kernels.
    chosen = manifest.numerics["sparsity_search"]["chosen"]
    assert chosen in (0.9, 0.8, 0.7, 0.6, 0.5)
    assert pruning["layers_sparsity"] == pytest.approx(chosen, abs=0.02)
    # Measured in the flatbuffer over every kernel, the dense stem, depthwise and small ones too.
    assert 0.3 < manifest.sparsity < pruning["layers_sparsity"]
    assert converted_tiny_run["int8"].sparsity < 0.1
    assert result.model_gzip_size < 0.8 * converted_tiny_run["int8"].model_gzip_size
    assert manifest.numerics["reference"] == "pruned, fine-tuned Keras image tower"


def test_clustered_bundle_shares_few_values_per_kernel_and_compresses_better(converted_tiny_run):
    result = converted_tiny_run["clustered-int8"]
    manifest = read_bundle(result.path).manifest
    clustering = manifest.provenance["compression"]
    # The fewest of 8, 16, 32 values per kernel within the budget, reached in every kernel.
    chosen = manifest.numerics["cluster_search"]["chosen"]
    assert chosen in (8, 16, 32) and clustering["clusters"] == chosen
    assert clustering["method"] == "cluster" and clustering["layers_max_unique_values"] <= chosen
    assert result.model_gzip_size < 0.9 * converted_tiny_run["int8"].model_gzip_size


def test_each_bundle_records_its_ops_and_the_runtimes_that_load_them(converted_tiny_run):
    from fuselite.devices.compat import OpCode, loadable_runtimes

    for name, result in converted_tiny_run.items():
        provenance = read_bundle(result.path).manifest.provenance
        ops = [OpCode.parse(op) for op in provenance["ops"] + provenance["text_encoder_ops"]]
        assert provenance["runtimes"] == loadable_runtimes(ops), name
        assert set(provenance["runtime_problems"]) == {k for k, ok in provenance["runtimes"].items() if not ok}


def test_dynamic_range_dense_layers_need_a_runtime_newer_than_tflite_runtime_214():
    """The GUIDE's finding, on a global-scoring tower (its projection is a Dense layer)."""
    from fuselite.convert.modelinfo import model_ops, runtime_problems
    from fuselite.convert.tflite import convert_image_model
    from fuselite.train.configs import get_config
    from fuselite.train.model import image_encoder

    config = get_config("fashion-mnist-tiny")
    assert config.scoring == "global"
    ops = model_ops(convert_image_model(image_encoder(config), get_variant("dynamic")))
    problems = runtime_problems(ops)
    assert problems["ai-edge-litert"] == []
    assert any("FULLY_CONNECTED v12" in p and "use the fp32 or int8 variant" in p
               for p in problems["tflite-runtime-2.14"])


def test_the_bundled_text_encoder_embeds_the_labels_like_keras(converted_tiny_run, tiny_converter):
    from fuselite.convert.numerics import tflite_embeddings

    bundle = read_bundle(converted_tiny_run["int8"].path)
    ids = bundle.tokenizer.encode_batch(list(bundle.manifest.labels))
    embeddings = tflite_embeddings(bundle.text_encoder_bytes, ids, num_threads=1)
    # The int8 text encoder keeps each label's direction (cosine with the shipped
    # float embeddings, which come from Keras), within the convert check's floor.
    cosines = np.sum(embeddings * bundle.label_embeddings, axis=1) / (
        np.linalg.norm(embeddings, axis=1) * np.linalg.norm(bundle.label_embeddings, axis=1))
    assert cosines.min() >= 0.995


@pytest.mark.parametrize("name", ["fp32", "int8"])
def test_the_runtime_annotator_gets_the_converters_scores(converted_tiny_run, tiny_converter, name):
    """The contract end to end: fuselite.runtime reads the bundle and scores a frame the same way."""
    from fuselite.convert.numerics import tflite_embeddings
    from fuselite.runtime import Annotator

    bundle = read_bundle(converted_tiny_run[name].path)
    image = tiny_converter.data.test.images[0]
    expected = _probabilities(bundle.manifest, tflite_embeddings(bundle.model_bytes, image[None], 1),
                              bundle.label_embeddings)[0]
    with Annotator.create_from_bundle_path(converted_tiny_run[name].path) as annotator:
        result = annotator.annotate(np.ascontiguousarray(image[..., ::-1]), timestamp_ms=0)
    assert np.allclose([result.scores[label] for label in bundle.manifest.labels], expected, atol=1e-5)


def test_a_mirror_bundle_scores_a_frame_and_its_mirror_alike(converted_tiny_run, tiny_converter):
    """int8-mirror averages each frame with its mirror inside the model, so both give one answer."""
    from fuselite.convert.numerics import tflite_embeddings

    bundle = read_bundle(converted_tiny_run["int8-mirror"].path)
    images = tiny_converter.data.test.images[:16]
    plain = tflite_embeddings(bundle.model_bytes, images, 1)
    mirrored = tflite_embeddings(bundle.model_bytes, np.ascontiguousarray(images[:, :, ::-1]), 1)
    side = int(np.sqrt(plain.shape[1]))  # regional: flip the cell grid back to compare places
    mirrored = mirrored.reshape(len(images), side, side, -1)[:, :, ::-1].reshape(plain.shape)
    assert np.abs(plain - mirrored).max() <= 1 / 128  # one int8 step
    single = tflite_embeddings(read_bundle(converted_tiny_run["int8"].path).model_bytes, images, 1)
    assert np.abs(plain - single).max() > 0.05  # the mirror really is in the graph
    manifest = bundle.manifest
    assert manifest.provenance["views"].startswith("the frame and its left-right mirror")
    assert "mirror-averaged" in manifest.numerics["reference"]
    # one set of weights: within a few kB of the single-view int8 model
    assert converted_tiny_run["int8-mirror"].model_size < converted_tiny_run["int8"].model_size + 4096


def test_a_mirror_variant_of_a_run_trained_without_flips_is_refused(tiny_converter, monkeypatch):
    run = tiny_converter.run
    monkeypatch.setattr(tiny_converter, "run", replace(run, config=replace(run.config, flip=False)))
    result = tiny_converter.convert(get_variant("int8-mirror"))
    assert result.status == "refused"
    assert "trained without flips" in result.message and "convert int8 instead" in result.message
    assert not list(tiny_converter.out_dir.glob(".int8-mirror*"))


def test_a_variant_outside_its_tolerance_and_budget_is_an_error_not_a_file(tiny_converter, monkeypatch):
    from fuselite.convert import export

    # Out of budget whatever the (tiny, noisy) metric change: no agreement can reach the floor.
    monkeypatch.setattr(export, "BUDGET_MIN_AGREEMENT", 1.01)
    strict = replace(get_variant("int8"), name="int8-strict", max_score_error=0.0, min_agreement=1.01)
    result = tiny_converter.convert(strict)
    assert result.status == "failed" and result.message.startswith("broken conversion: its top label agrees")
    assert "try --variants qat-int8" in result.message
    assert not (tiny_converter.out_dir / "int8-strict.tflite").exists()
    assert not list(tiny_converter.out_dir.glob(".int8-strict*"))


def test_a_variant_past_its_tolerance_but_within_the_accuracy_budget_is_written(tiny_converter, monkeypatch,
                                                                                 caplog):
    monkeypatch.setattr(tiny_converter, "options", replace(tiny_converter.options, max_loss=100.0))
    strict = replace(get_variant("int8"), name="int8-budget", max_score_error=0.0, min_agreement=1.01)
    # (the tiny run's int8 agrees with Keras on ~96% of images: above the budget's 75% floor)
    with caplog.at_level("WARNING"):
        result = tiny_converter.convert(strict)
    assert result.status == "ok" and result.numerics["passed_by"] == "accuracy budget"
    assert (tiny_converter.out_dir / "int8-budget.tflite").exists()
    assert "within the 100.0 pt budget" in caplog.text
    assert result.warnings and result.warnings[0].startswith("score check exceeded: max score error")


def test_a_badly_calibrated_int8_conversion_is_refused_or_written_with_a_calibration_warning(tiny_converter,
                                                                                            monkeypatch):
    # Calibrating on flat grey frames gives every activation a range far too narrow
    # for real images: the kind of broken conversion the gate exists for.
    grey = np.full_like(tiny_converter.calibration, 127)
    monkeypatch.setattr(tiny_converter, "calibration", grey)
    # The product's budget (1 pt), not the shared test converter's 3 pt. The tiny run is weak
    # and not bit-reproducible, so what grey calibration costs it varies by run: refused as
    # broken, refused at -1.27 pt (0.767 of the top labels kept), and once written at -0.13 pt
    # on validation with 0.683 agreement on test. Never silently: a written one says to check
    # the calibration.
    monkeypatch.setattr(tiny_converter, "options", replace(tiny_converter.options, max_loss=1.0))
    broken = replace(get_variant("int8"), name="int8-grey")
    result = tiny_converter.convert(broken)
    if result.status == "ok":
        judged = result.numerics["judged"]
        assert -judged["delta_pt"] <= 1.0 and result.numerics["passed_by"] == "accuracy budget"
        assert result.warnings and "--calibration-samples" in result.warnings[0], result.warnings
        return
    assert result.status == "failed", result.message
    if "broken conversion" in result.message:
        assert "--calibration-samples" in result.message
    else:
        assert result.message.startswith("lost ") and "--max-loss" in result.message
    assert not (tiny_converter.out_dir / "int8-grey.tflite").exists()


def test_a_model_the_converter_rejects_gets_a_message_naming_the_variant():
    from fuselite.convert.tflite import ConversionError, convert_image_model
    from fuselite.train.backend import keras, tf

    inputs = keras.Input((8, 8, 3), dtype="uint8")
    x = keras.layers.Lambda(lambda t: tf.numpy_function(lambda a: a, [t], tf.uint8))(inputs)
    model = keras.Model(inputs, x)
    with pytest.raises(ConversionError, match="fp32 image model: the TFLite converter failed"):
        convert_image_model(model, get_variant("fp32"))


def _buffer_alignments(flatbuffer: bytes) -> list[int]:
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    base = np.frombuffer(flatbuffer, np.uint8).ctypes.data
    buffers = (model.Buffers(i) for i in range(model.BuffersLength()))
    return [(b.DataAsNumpy().ctypes.data - base) % 16 for b in buffers if b.DataLength()]


def _zero_point_vectors(flatbuffer: bytes) -> tuple[int, int]:
    """(quantized tensors, distinct zero-point vectors stored) of a flatbuffer."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    base = np.frombuffer(flatbuffer, np.uint8).ctypes.data
    starts = set()
    quantized = 0
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for t in range(subgraph.TensorsLength()):
            params = subgraph.Tensors(t).Quantization()
            if params is not None and params.ZeroPointLength():
                quantized += 1
                starts.add(params.ZeroPointAsNumpy().ctypes.data - base)
    return quantized, len(starts)


@pytest.mark.parametrize("name", ["fp32", "int8"])
def test_compacting_changes_neither_weights_alignment_nor_results(tiny_converter, monkeypatch, name):
    from ai_edge_litert.interpreter import Interpreter

    from fuselite.convert import tflite

    calibration = tiny_converter.calibration[:8]
    encoder = tiny_converter.run.image_encoder
    monkeypatch.setattr(tflite, "compact_flatbuffer", lambda flatbuffer: flatbuffer)
    converted = tflite.convert_image_model(encoder, get_variant(name), calibration)
    monkeypatch.undo()
    compact = tflite.compact_flatbuffer(converted)
    assert len(compact) < len(converted) - 500
    assert _buffer_alignments(compact) == _buffer_alignments(converted)
    quantized, stored = _zero_point_vectors(compact)
    if name == "int8":
        # kernels and biases of equal channel count share one all-zero vector
        assert quantized > 10 and stored < quantized / 3
        assert _zero_point_vectors(converted) == (quantized, quantized)
    pixels = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    outputs = []
    for flatbuffer in (converted, compact):
        interpreter = Interpreter(model_content=flatbuffer)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], pixels)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_int8_maps_peak_where_the_fp32_maps_do(converted_tiny_run, tiny_run):
    """Each (test image, label it holds) pair: the int8 bundle's heatmap peaks on the fp32
    bundle's peak cell wherever fp32 has a clear peak, and elsewhere on a near-tie of it.

    On this weak tiny run (8x8 grid) some peaks fall between two cells fp32 scores within
    0.002 of each other, where int8 rounding picks either (scenes-default: 97.8 % of all
    peaks equal, docs/explanations.md).
    """
    from fuselite.bench.data import run_test_split
    from fuselite.maps import cell_of
    from fuselite.runtime import Annotator, AnnotatorOptions

    test = run_test_split(tiny_run)
    maps = {}
    for name in ("fp32", "int8"):
        assert read_bundle(converted_tiny_run[name].path).manifest.label_maps.grid == (8, 8)
        with Annotator.create(AnnotatorOptions(converted_tiny_run[name].path, num_threads=1)) as annotator:
            maps[name] = [{c.label: (c.heatmap, cell_of(c.peak, (8, 8)))
                           for c in annotator.explain(image[..., ::-1].copy())} for image in test.images]
    pairs = [(*maps["fp32"][i][label], maps["int8"][i][label][1])
             for i, tags in enumerate(test.tags) for label in tags if label in maps["fp32"][i]]
    assert len(pairs) > 500
    clear = [(peak, int8_peak) for f, peak, int8_peak in pairs if np.diff(np.sort(f.ravel())[-2:])[0] >= 0.01]
    assert len(clear) > len(pairs) / 2
    assert np.mean([peak == int8_peak for peak, int8_peak in clear]) >= 0.95
    shortfall = [f[peak] - f[int8_peak] for f, peak, int8_peak in pairs]  # fp32's view of int8's peak
    assert np.percentile(shortfall, 95) <= 0.01
