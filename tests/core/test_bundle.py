"""The bundle contract (``fuselite.bundle``): what ``convert`` writes and ``runtime`` reads.

No TensorFlow: the "model" bytes here are opaque, because reading a bundle checks them
only by size and sha256, before any byte reaches an interpreter.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import replace

import numpy as np
import pytest

from fuselite.bundle import (
    CONCEPTS_MEMBER,
    CONCEPTS_SCHEMA_VERSION,
    EMBEDDINGS_MEMBER,
    MANIFEST_MEMBER,
    MAX_JSON_VALUES,
    REFERENCE_MEMBER,
    SCHEMA_VERSION,
    TEXT_ENCODER_MEMBER,
    TOKENIZER_MEMBER,
    BundleError,
    Manifest,
    Preprocessing,
    check_bundle,
    pack_bundle,
    read_bundle,
    read_manifest,
    sha256,
    write_bundle,
)
from fuselite.tokenizer import Tokenizer

MODEL = b"TFL3" + bytes(range(256)) * 4  # stands in for the image model's flatbuffer
TEXT_ENCODER = b"TFL3-text" + bytes(100)


def _manifest(**changes) -> Manifest:
    fields = {
        "variant": "int8", "task": "multi", "labels": ("red circle", "blue star"), "thresholds": (0.4, 0.7),
        "default_threshold": 0.5, "embedding_dim": 4, "logit_scale": 12.0, "logit_bias": -4.0,
        "preprocessing": Preprocessing(input_size=(64, 48), input_dtype="uint8", input_quant=(1.0, 0),
                                       output_quant=(0.0078125, -3)),
        "sparsity": 0.25, "provenance": {"source_run": "runs/scenes", "tensorflow": "2.21.0"},
        "numerics": {"max_abs_diff": 0.01},
    }
    return Manifest(**{**fields, **changes})


def _parts(**manifest_changes) -> dict:
    tokenizer = Tokenizer.fit(["red circle", "blue star"], max_length=4)
    embeddings = np.arange(8, dtype=np.float32).reshape(2, 4) / 10
    return {"model_bytes": MODEL, "manifest": _manifest(**manifest_changes), "tokenizer": tokenizer,
            "label_embeddings": embeddings, "text_encoder_bytes": TEXT_ENCODER}


@pytest.fixture
def bundle_path(tmp_path):
    return write_bundle(tmp_path / "int8.tflite", **_parts())


# --- the manifest ----------------------------------------------------------------


def test_manifest_json_round_trip_keeps_every_field():
    manifest = _manifest(model_sha256="ab" * 32, model_size=123, text_encoder_sha256="cd" * 32)
    assert Manifest.from_json(manifest.to_json()) == manifest


def test_manifest_json_is_plain_sorted_json():
    data = json.loads(_manifest().to_json())
    assert list(data) == sorted(data)
    assert data["preprocessing"]["input_size"] == [64, 48] and data["schema_version"] == 1


def _set(data: dict, path: str, value) -> None:
    *parents, name = path.split(".")
    for parent in parents:
        data = data[parent]
    if value is _DELETE:
        del data[name]
    else:
        data[name] = value


_DELETE = object()

# (field path, bad value, what the message must name)
MALFORMED = [
    ("schema_version", 2, "schema_version"),
    ("schema_version", "1", "schema_version"),
    ("variant", _DELETE, "variant"),
    ("variant", 8, "variant"),
    ("task", "pairs", "task"),
    ("labels", [], "labels"),
    ("labels", "red circle", "labels"),
    ("labels", ["red circle", ""], "label"),
    ("labels", ["red circle", "x" * 201], "label"),
    ("labels", ["red circle", 7], "label"),
    ("thresholds", [0.5], "thresholds"),
    ("thresholds", [0.5, 1.5], "thresholds"),
    ("thresholds", [0.5, True], "thresholds"),
    ("default_threshold", -0.1, "default_threshold"),
    ("default_threshold", True, "default_threshold"),
    ("embedding_dim", 0, "embedding_dim"),
    ("embedding_dim", 4097, "embedding_dim"),
    ("embedding_dim", 4.0, "embedding_dim"),
    ("logit_scale", float("nan"), "logit_scale"),
    ("logit_bias", float("inf"), "logit_bias"),
    ("logit_bias", "-4", "logit_bias"),
    ("logit_scale", 1e300, "logit_scale"),  # finite in float64, infinite in float32
    ("logit_scale", 1e39, "logit_scale"),
    ("logit_scale", 0.0, "logit_scale"),  # the board folds the scale into its label matrix
    ("logit_scale", -12.0, "logit_scale"),
    ("logit_scale", 1001.0, "logit_scale"),
    ("logit_bias", -1e39, "logit_bias"),
    ("logit_bias", 1e4, "logit_bias"),
    ("model_sha256", None, "model_sha256"),
    ("model_size", "123", "model_size"),
    ("text_encoder_sha256", 5, "text_encoder_sha256"),
    ("sparsity", 1.5, "sparsity"),
    ("provenance", [], "provenance"),
    ("numerics", None, "numerics"),
    ("preprocessing", "rgb", "preprocessing"),
    ("preprocessing.input_size", [64], "input_size"),
    ("preprocessing.input_size", [4, 4], "input_size"),
    ("preprocessing.input_size", [64, 2048], "input_size"),
    ("preprocessing.color_order", "HSV", "color_order"),
    ("preprocessing.resize", "cubic", "resize"),
    ("preprocessing.input_dtype", "float16", "input_dtype"),
    ("preprocessing.normalization", [1.0], "normalization"),
    ("preprocessing.normalization", [1.0, None], "normalization"),
    ("preprocessing.input_quant", [0.0, 0], "input_quant"),
    ("preprocessing.output_quant", [0.1, 0.5], "output_quant"),
    ("preprocessing.output_quant", [1e39, 0], "output_quant"),  # infinite in float32
    ("preprocessing.output_quant", [1e-50, 0], "output_quant"),  # 0 in float32
    ("preprocessing.input_quant", [1e300, 0], "input_quant"),
    ("preprocessing.normalization", [1e300, -1.0], "normalization"),
]


@pytest.mark.parametrize(("path", "value", "name"), MALFORMED,
                         ids=[f"{p}={v!r}"[:40] for p, v, _ in MALFORMED])
def test_each_malformed_manifest_field_is_refused_naming_it(path, value, name):
    data = json.loads(_manifest().to_json())
    _set(data, path, value)
    with pytest.raises(BundleError) as caught:
        Manifest.from_json(json.dumps(data))
    message = str(caught.value)
    assert name in message and "\n" not in message


@pytest.mark.parametrize(("text", "words"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_manifest_text_that_is_not_a_json_object_is_refused(text, words):
    with pytest.raises(BundleError, match=words):
        Manifest.from_json(text)


# --- writing and reading a bundle ------------------------------------------------


def test_bundle_round_trip_keeps_labels_tokenizer_thresholds_and_provenance(bundle_path):
    parts = _parts()
    bundle = read_bundle(bundle_path)
    assert bundle.path == bundle_path
    assert bundle.model_bytes == MODEL and bundle.text_encoder_bytes == TEXT_ENCODER
    assert bundle.tokenizer == parts["tokenizer"]
    assert bundle.tokenizer.encode("blue star") == parts["tokenizer"].encode("blue star")
    assert np.array_equal(bundle.label_embeddings, parts["label_embeddings"])
    assert bundle.label_embeddings.dtype == np.float32
    manifest = bundle.manifest
    assert manifest.labels == ("red circle", "blue star") and manifest.thresholds == (0.4, 0.7)
    assert manifest.provenance == {"source_run": "runs/scenes", "tensorflow": "2.21.0"}
    assert manifest.preprocessing == parts["manifest"].preprocessing
    assert manifest == replace(parts["manifest"], model_sha256=sha256(MODEL), model_size=len(MODEL),
                               text_encoder_sha256=sha256(TEXT_ENCODER))


def test_the_file_starts_with_the_model_so_any_interpreter_loads_it(bundle_path):
    data = bundle_path.read_bytes()
    assert data.startswith(MODEL)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert set(zf.namelist()) == {MANIFEST_MEMBER, TOKENIZER_MEMBER, EMBEDDINGS_MEMBER, TEXT_ENCODER_MEMBER}


def test_read_manifest_reads_only_the_manifest(bundle_path):
    assert read_manifest(bundle_path) == read_bundle(bundle_path).manifest


def test_write_leaves_no_temporary_file(bundle_path):
    assert [p.name for p in bundle_path.parent.iterdir()] == [bundle_path.name]


def _read_error(path) -> str:
    with pytest.raises(BundleError) as caught:
        read_bundle(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    return message


def test_model_bytes_that_do_not_match_the_sha256_are_refused(bundle_path):
    data = bytearray(bundle_path.read_bytes())
    data[100] ^= 0xFF  # inside the model, before the zip
    bundle_path.write_bytes(bytes(data))
    assert "sha256" in _read_error(bundle_path)


def test_a_swapped_text_encoder_is_refused(bundle_path, tmp_path):
    data = bundle_path.read_bytes()
    members = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for name in zf.namelist():
            members[name] = zf.read(name)
    members[TEXT_ENCODER_MEMBER] = b"TFL3-other" + bytes(100)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    swapped = tmp_path / "swapped.tflite"
    swapped.write_bytes(MODEL + archive.getvalue())
    assert "text encoder" in _read_error(swapped)


def test_a_truncated_bundle_is_refused(bundle_path):
    bundle_path.write_bytes(bundle_path.read_bytes()[:-50])
    assert "not a fuselite bundle" in _read_error(bundle_path)


def test_a_plain_tflite_file_is_not_a_bundle(tmp_path):
    plain = tmp_path / "plain.tflite"
    plain.write_bytes(MODEL)
    assert "not a fuselite bundle" in _read_error(plain)


def test_a_missing_file_is_refused_saying_so(tmp_path):
    assert "cannot read" in _read_error(tmp_path / "missing.tflite")


def test_a_bundle_missing_a_member_is_refused_naming_it(tmp_path):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(MANIFEST_MEMBER, _manifest().to_json())
    path = tmp_path / "partial.tflite"
    path.write_bytes(MODEL + archive.getvalue())
    assert TOKENIZER_MEMBER in _read_error(path)


@pytest.mark.parametrize(("embeddings", "words"), [
    (np.zeros((3, 4), np.float32), "shape"),
    (np.zeros((2, 5), np.float32), "shape"),
    (np.array([[0, 0, 0, np.nan], [0, 0, 0, 0]], np.float32), "NaN"),
    (np.array([[1e38, -1e38, 0, 0], [0, 0, 0, 1]], np.float32), "overflow float32"),
    (np.array([[0, 0, 0, 1], [0, 0, 1001, 0]], np.float32), "label embedding 1 ('blue star')"),
])
def test_label_embeddings_must_fit_the_labels_and_be_finite(embeddings, words):
    with pytest.raises(BundleError, match=words.replace("(", r"\(").replace(")", r"\)")):
        pack_bundle(**{**_parts(), "label_embeddings": embeddings})


def _with_member(path, name: str, content: bytes) -> None:
    """Replaces one zip member of the bundle at ``path``, the model bytes kept."""
    with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members[name] = content
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for member, data in members.items():
            zf.writestr(member, data)
    path.write_bytes(MODEL + archive.getvalue())


@pytest.mark.parametrize("value", [1e38, -3e38, 1e20])
def test_label_embeddings_whose_scores_overflow_float32_are_refused_when_read(bundle_path, value):
    """A re-signed bundle skips pack_bundle's check; reading checks the same."""
    npy = io.BytesIO()
    np.save(npy, np.full((2, 4), value, np.float32), allow_pickle=False)
    _with_member(bundle_path, EMBEDDINGS_MEMBER, npy.getvalue())
    assert "its scores would overflow float32" in _read_error(bundle_path)


def test_a_bundle_with_no_model_bytes_is_refused(tmp_path):
    path = write_bundle(tmp_path / "zip-only.tflite", **{**_parts(), "model_bytes": b""})
    assert "model_size 0 leaves no image model" in _read_error(path)


def test_check_bundle_refuses_model_bytes_that_are_not_a_tflite_model(bundle_path):
    read_bundle(bundle_path)  # the opaque stand-in passes the reader's checks ...
    with pytest.raises(BundleError, match="image model: not a TFLite flatbuffer") as caught:
        check_bundle(bundle_path)  # ... not the model check
    assert str(bundle_path) in str(caught.value)


def test_packing_fills_in_the_checksums():
    data = pack_bundle(**_parts())
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        manifest = Manifest.from_json(zf.read(MANIFEST_MEMBER).decode())
    assert (manifest.model_sha256, manifest.model_size) == (sha256(MODEL), len(MODEL))
    assert manifest.text_encoder_sha256 == sha256(TEXT_ENCODER)


# --- zero-shot bundles: a concept index instead of a tokenizer and text tower ---------


def _concepts():
    from fuselite.concepts import ConceptIndex

    return ConceptIndex(phrases={"cat": (0, 1), "dog": (2,), "animal": (0, 1, 2), "car": (3,)},
                        class_names=("tabby", "tiger cat", "beagle", "sports car"))


def _concept_parts(**manifest_changes) -> dict:
    concepts = _concepts()
    labels = ("animal", "car")
    manifest = _manifest(labels=labels, thresholds=(0.5, 0.5), embedding_dim=concepts.num_classes,
                         **manifest_changes)
    return {"model_bytes": MODEL, "manifest": manifest, "concepts": concepts,
            "label_embeddings": concepts.label_matrix(labels)}


@pytest.fixture
def concepts_path(tmp_path):
    return write_bundle(tmp_path / "imagenet-lite0.tflite", **_concept_parts())


def _members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _repack(path, members: dict[str, bytes]) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    path.write_bytes(MODEL + archive.getvalue())


def test_concepts_bundle_round_trip_keeps_the_index_and_has_no_text_tower(concepts_path):
    bundle = read_bundle(concepts_path)
    assert bundle.concepts == _concepts()
    assert bundle.tokenizer is None and bundle.text_encoder_bytes == b""
    assert bundle.model_bytes == MODEL
    assert np.array_equal(bundle.label_embeddings, [[1, 1, 1, 0], [0, 0, 0, 1]])
    manifest = bundle.manifest
    assert (manifest.label_source, manifest.schema_version) == ("concepts", CONCEPTS_SCHEMA_VERSION)
    assert manifest.text_encoder_sha256 == "" and manifest.model_sha256 == sha256(MODEL)
    assert read_manifest(concepts_path) == manifest


def test_concepts_bundle_holds_only_the_manifest_embeddings_and_concepts(concepts_path):
    assert set(_members(concepts_path)) == {MANIFEST_MEMBER, EMBEDDINGS_MEMBER, CONCEPTS_MEMBER}


def test_packing_sets_label_source_and_schema_from_what_it_is_given():
    """The caller's manifest may say anything: the members decide what kind of bundle it is."""
    data = pack_bundle(**_concept_parts(label_source="text_encoder", schema_version=SCHEMA_VERSION))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        manifest = Manifest.from_json(zf.read(MANIFEST_MEMBER).decode())
    assert (manifest.label_source, manifest.schema_version) == ("concepts", CONCEPTS_SCHEMA_VERSION)
    data = pack_bundle(**_parts(label_source="concepts", schema_version=CONCEPTS_SCHEMA_VERSION))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        manifest = Manifest.from_json(zf.read(MANIFEST_MEMBER).decode())
    assert (manifest.label_source, manifest.schema_version) == ("text_encoder", SCHEMA_VERSION)


@pytest.mark.parametrize("extra", [{}, {"tokenizer": Tokenizer.fit(["animal car"], max_length=4)}],
                         ids=["neither", "both"])
def test_packing_needs_either_a_tokenizer_or_a_concept_index(extra):
    parts = _concept_parts()
    if not extra:
        del parts["concepts"]
    with pytest.raises(ValueError, match="tokenizer .* concept index"):
        pack_bundle(**{**parts, **extra})


@pytest.mark.parametrize(("label_source", "version"), [("concepts", 1), ("text_encoder", 2)])
def test_a_label_source_that_does_not_match_its_schema_version_is_refused_in_one_line(label_source, version):
    """A schema-1 reader would take a concepts bundle for a text-tower one: version 2 marks it."""
    data = json.loads(_manifest().to_json())
    data.update(label_source=label_source, schema_version=version)
    with pytest.raises(BundleError) as caught:
        Manifest.from_json(json.dumps(data))
    message = str(caught.value)
    assert "label_source" in message and "schema_version" in message and "\n" not in message


def test_an_unknown_label_source_is_refused_naming_the_known():
    data = json.loads(_manifest().to_json())
    data["label_source"] = "clip"
    with pytest.raises(BundleError, match="label_source.*concepts"):
        Manifest.from_json(json.dumps(data))


def test_a_concept_index_whose_class_count_is_not_the_embedding_dim_is_refused(concepts_path):
    from fuselite.concepts import ConceptIndex

    members = _members(concepts_path)
    members[CONCEPTS_MEMBER] = ConceptIndex(phrases={"cat": (0,)}, class_names=("tabby",) * 5).to_json()
    _repack(concepts_path, members)
    message = _read_error(concepts_path)
    assert "concepts.json" in message and "5 classes" in message and "embedding_dim is 4" in message


OUT_OF_RANGE_INDEX = json.dumps({"format": "fuselite.concepts", "version": 1, "class_names": ["a"],
                                 "class_sets": [[5]], "phrases": {}}).encode()


@pytest.mark.parametrize("damage", [b"{not json", b'{"format": "other"}', OUT_OF_RANGE_INDEX],
                         ids=["not-json", "other-format", "class-out-of-range"])
def test_a_damaged_concepts_member_is_refused_naming_it(concepts_path, damage):
    members = _members(concepts_path)
    members[CONCEPTS_MEMBER] = damage
    _repack(concepts_path, members)
    assert "concepts.json" in _read_error(concepts_path)


def test_a_concept_index_of_too_many_json_values_is_refused_before_parsing(concepts_path):
    members = _members(concepts_path)
    document = json.loads(members[CONCEPTS_MEMBER])
    document["padding"] = [0] * (MAX_JSON_VALUES + 1)  # 1 MB on disk; parsed, 4 MB of list
    members[CONCEPTS_MEMBER] = json.dumps(document).encode()
    _repack(concepts_path, members)
    assert f"{CONCEPTS_MEMBER} holds about" in _read_error(concepts_path)


def test_a_concepts_bundle_without_its_index_is_refused_naming_it(concepts_path):
    members = _members(concepts_path)
    del members[CONCEPTS_MEMBER]
    _repack(concepts_path, members)
    assert CONCEPTS_MEMBER in _read_error(concepts_path)


def test_reading_a_concepts_bundle_imports_no_tensorflow(concepts_path):
    import subprocess
    import sys

    code = ("import sys; from fuselite.bundle import read_bundle; "
            f"b = read_bundle({str(concepts_path)!r}); assert b.concepts.resolve('cats') == (0, 1); "
            "assert not any(m.split('.')[0] in ('tensorflow', 'tf_keras', 'keras') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_softmax_output_activation_round_trips_in_a_concepts_bundle(tmp_path):
    path = write_bundle(tmp_path / "z.tflite", **_concept_parts(output_activation="softmax"))
    assert read_bundle(path).manifest.output_activation == "softmax"


@pytest.mark.parametrize("activation, version", [("softmax", 1), ("relu", 2)])
def test_an_output_activation_a_runtime_cannot_honour_is_refused(activation, version):
    data = json.loads(_manifest().to_json())
    data.update(output_activation=activation, schema_version=version,
                label_source="concepts" if version == 2 else "text_encoder")
    with pytest.raises(BundleError, match="output_activation") as info:
        Manifest.from_json(json.dumps(data))
    assert "\n" not in str(info.value)


def test_pixels_normalised_on_the_board_need_a_schema_older_runtimes_refuse(tmp_path):
    # A runtime that predates normalize_on_board would feed raw pixels: the version stops it.
    from fuselite.bundle import BOARD_NORMALISATION_SCHEMA_VERSION, CONCEPTS_SCHEMA_VERSION
    from fuselite.concepts import ConceptIndex

    index = ConceptIndex({"cat": (0,), "dog": (1,)}, ("cat", "dog"))
    base = Manifest(variant="fp32", task="single", labels=("cat", "dog"), thresholds=(0.5, 0.5),
                    default_threshold=0.5, embedding_dim=2, logit_scale=10.0, logit_bias=-5.0,
                    preprocessing=Preprocessing(input_size=(8, 8), input_dtype="float32"),
                    output_activation="softmax")
    embeddings = np.eye(2, dtype=np.float32)
    for on_board, version in ((False, CONCEPTS_SCHEMA_VERSION), (True, BOARD_NORMALISATION_SCHEMA_VERSION)):
        manifest = replace(base, preprocessing=replace(base.preprocessing, normalize_on_board=on_board))
        path = write_bundle(tmp_path / f"{on_board}.tflite", model_bytes=b"TFL3" * 8, manifest=manifest,
                            concepts=index, label_embeddings=embeddings)
        assert read_manifest(path).schema_version == version
    forged = json.loads(read_manifest(tmp_path / "True.tflite").to_json())
    forged["schema_version"] = CONCEPTS_SCHEMA_VERSION
    with pytest.raises(BundleError, match="normalize_on_board needs schema_version 3"):
        Manifest.from_json(json.dumps(forged))


# --- fixed labels (issue 31): label embeddings only, no tokenizer and no text tower ----------


def _fixed_parts(**manifest_changes) -> dict:
    parts = _parts(**manifest_changes)
    del parts["tokenizer"], parts["text_encoder_bytes"]
    return {**parts, "fixed_labels": True}


def test_a_fixed_labels_bundle_holds_only_its_manifest_and_label_embeddings(tmp_path):
    from fuselite.bundle import FIXED_LABELS_SCHEMA_VERSION

    path = write_bundle(tmp_path / "int8.tflite", **_fixed_parts())
    assert set(_members(path)) == {MANIFEST_MEMBER, EMBEDDINGS_MEMBER}
    bundle = read_bundle(path)
    assert (bundle.manifest.label_source, bundle.manifest.schema_version) == ("fixed", FIXED_LABELS_SCHEMA_VERSION)
    assert bundle.tokenizer is None and bundle.concepts is None and bundle.text_encoder_bytes == b""
    assert bundle.manifest.text_encoder_sha256 == ""
    np.testing.assert_array_equal(bundle.label_embeddings, _parts()["label_embeddings"])


def test_fixed_labels_and_a_text_encoder_together_are_refused_when_packing():
    with pytest.raises(ValueError, match="exactly one"):
        pack_bundle(**{**_parts(), "fixed_labels": True})


@pytest.mark.parametrize(("label_source", "version"), [("fixed", 1), ("fixed", 2), ("text_encoder", 4),
                                                       ("concepts", 4)])
def test_the_fixed_label_source_needs_schema_version_4_and_only_it(label_source, version):
    """A schema-1 runtime would look for a text encoder: version 4 makes it refuse the bundle."""
    data = json.loads(_manifest().to_json())
    data.update(label_source=label_source, schema_version=version)
    with pytest.raises(BundleError, match="label_source .* does not match schema_version"):
        Manifest.from_json(json.dumps(data))


def test_a_fixed_labels_bundle_cannot_ask_for_a_softmax(tmp_path):
    data = json.loads(read_manifest(write_bundle(tmp_path / "f.tflite", **_fixed_parts())).to_json())
    data["output_activation"] = "softmax"
    with pytest.raises(BundleError, match="output_activation"):
        Manifest.from_json(json.dumps(data))


def test_a_fixed_labels_bundle_without_its_embeddings_is_refused_in_one_line(tmp_path):
    path = write_bundle(tmp_path / "f.tflite", **_fixed_parts())
    members = _members(path)
    del members[EMBEDDINGS_MEMBER]
    _repack(path, members)
    assert "missing label_embeddings.npy" in _read_error(path)


# --- reference images (labels typed on the board) --------------------------------


def _reference(images: int = 6, cells: int = 2) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(0.0, 0.3, (images, cells, 4)).astype(np.float32)


def test_reference_embeddings_round_trip_as_int8_within_half_a_step(tmp_path):
    reference = _reference()
    path = write_bundle(tmp_path / "r.tflite", **_parts(), reference_embeddings=reference)
    bundle = read_bundle(path)
    assert bundle.manifest.reference.images == 6 and bundle.manifest.reference.cells == 2
    assert bundle.reference_embeddings.dtype == np.float32 and bundle.reference_embeddings.shape == (6, 2, 4)
    step = bundle.manifest.reference.scale
    assert np.abs(bundle.reference_embeddings - reference).max() <= step / 2 + 1e-7
    assert len(_members(path)[REFERENCE_MEMBER]) < 6 * 2 * 4 + 200  # one byte a value, and the .npy header


def test_a_bundle_written_before_reference_images_loads_without_them(bundle_path):
    members = _members(bundle_path)
    manifest = json.loads(members[MANIFEST_MEMBER])
    del manifest["reference"]  # the field did not exist then
    members[MANIFEST_MEMBER] = json.dumps(manifest).encode()
    _repack(bundle_path, members)
    bundle = read_bundle(bundle_path)
    assert bundle.manifest.reference is None and bundle.reference_embeddings is None


def test_a_manifest_naming_reference_images_the_zip_lacks_is_refused_in_one_line(tmp_path):
    path = write_bundle(tmp_path / "r.tflite", **_parts(), reference_embeddings=_reference())
    members = _members(path)
    del members[REFERENCE_MEMBER]
    _repack(path, members)
    message = _read_error(path)
    assert "reference_embeddings.npy is missing" in message and "\n" not in message


@pytest.mark.parametrize("array", [np.zeros((6, 2, 4), np.float32), np.zeros((5, 2, 4), np.int8),
                                   np.zeros((6, 2, 3), np.int8)])
def test_reference_images_that_do_not_match_the_manifest_are_refused(tmp_path, array):
    path = write_bundle(tmp_path / "r.tflite", **_parts(), reference_embeddings=_reference())
    stream = io.BytesIO()
    np.save(stream, array)
    _with_member(path, REFERENCE_MEMBER, stream.getvalue())
    assert "reference embeddings must be int8 (6, 2, 4)" in _read_error(path)


@pytest.mark.parametrize(("value", "name"), [
    ({"scale": 0.0, "images": 6, "cells": 2}, "reference.scale"),
    ({"scale": float("nan"), "images": 6, "cells": 2}, "reference.scale"),
    ({"scale": 0.01, "images": 0, "cells": 2}, "reference.images"),
    ({"scale": 0.01, "images": 6, "cells": 5000}, "reference.cells"),
    ({"scale": 0.01, "images": 6, "cells": True}, "reference.cells"),
    ({"scale": 0.01, "images": 1024, "cells": 64}, "over 4096 embeddings"),  # 65,536 cells to score
    ([0.01, 6, 2], "reference must be an object"),
])
def test_a_malformed_reference_field_is_refused_naming_it(value, name):
    data = json.loads(_manifest().to_json())
    data["reference"] = value
    with pytest.raises(BundleError, match=name):
        Manifest.from_json(json.dumps(data))


def test_reference_images_a_board_could_not_score_quickly_are_not_packed():
    with pytest.raises(ValueError, match="over 4096 embeddings"):
        pack_bundle(**_parts(), reference_embeddings=np.zeros((512, 16, 4), np.float32))


def test_only_a_bundle_with_a_text_encoder_takes_reference_images():
    with pytest.raises(ValueError, match="text encoder"):
        pack_bundle(**_fixed_parts(), reference_embeddings=_reference())
