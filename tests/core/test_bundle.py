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
    EMBEDDINGS_MEMBER,
    MANIFEST_MEMBER,
    TEXT_ENCODER_MEMBER,
    TOKENIZER_MEMBER,
    BundleError,
    Manifest,
    Preprocessing,
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
])
def test_label_embeddings_must_fit_the_labels_and_be_finite(embeddings, words):
    with pytest.raises(BundleError, match=words):
        pack_bundle(**{**_parts(), "label_embeddings": embeddings})


def test_packing_fills_in_the_checksums():
    data = pack_bundle(**_parts())
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        manifest = Manifest.from_json(zf.read(MANIFEST_MEMBER).decode())
    assert (manifest.model_sha256, manifest.model_size) == (sha256(MODEL), len(MODEL))
    assert manifest.text_encoder_sha256 == sha256(TEXT_ENCODER)
