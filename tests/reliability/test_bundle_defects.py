"""The smallest case of each defect the bundle fuzz found, one regression test each.

Each test says what the runtime must do with one defect the fuzzer found (zip
members that cannot be decompressed, deeply nested JSON, lying .npy headers,
impossible quantization that crashed XNNPACK, models that cannot run, a
tokenizer larger than the text encoder); docs/reliability.md has the details.
"""

from __future__ import annotations

import pytest
from bundle_fuzz import CATALOGUES, Case, Sandbox, Seed, run_cases

from fuselite.bundle import BundleError, read_bundle


@pytest.fixture(scope="module")
def seed(colour_bundles) -> Seed:
    return Seed.read(colour_bundles["int8"])


PREFIXES = {"members": "members", "manifest": "manifest-field", "embeddings": "embeddings",
            "tokenizer": "tokenizer", "crafted": "crafted-model", "oversize": "oversize",
            "junk": "junk"}


def catalogue_case(seed: Seed, name: str) -> Case:
    """The catalogue case called ``name`` (see bundle_fuzz.py)."""
    family = PREFIXES[name.split(":", 1)[0]]
    return next(case for case in CATALOGUES[family](seed) if case.name == name)


def read_case(seed: Seed, name: str, tmp_path):
    path = tmp_path / "case.fuselite"
    path.write_bytes(catalogue_case(seed, name).data)
    return read_bundle(path)


def run_one(seed: Seed, name: str, folder, source):
    (outcome,) = run_cases([catalogue_case(seed, name)], Sandbox(folder, source))
    return outcome


@pytest.mark.parametrize(
    "name",
    ["members:manifest-broken-deflate", "members:manifest-encrypted-flag",
     "members:manifest-unknown-compression"],
)
def test_a_zip_member_that_cannot_be_decompressed_is_a_bundle_error(seed, tmp_path, name):
    with pytest.raises(BundleError, match="not a fuselite bundle"):
        read_case(seed, name, tmp_path)


def test_a_deeply_nested_manifest_is_a_bundle_error(seed, tmp_path):
    with pytest.raises(BundleError, match="manifest"):
        read_case(seed, "manifest:provenance-nested-100k", tmp_path)


@pytest.mark.parametrize(
    "name", ["embeddings:empty", "embeddings:huge-shape", "embeddings:garbage-header"]
)
def test_label_embeddings_are_checked_against_their_header_before_loading(seed, tmp_path, name):
    with pytest.raises(BundleError):
        read_case(seed, name, tmp_path)


def test_a_tokenizer_bigger_than_the_text_encoder_gets_one_clear_error(
    seed, two_images, tmp_path
):
    outcome = run_one(seed, "tokenizer:ids-beyond-the-text-tower", tmp_path / "sb", two_images)
    assert outcome.verdict == "rejected", outcome


@pytest.mark.parametrize(
    "name",
    ["crafted:tensor0:scale-zero", "crafted:tensor6:zero-point-out-of-range",
     "crafted:tensor11:scale-nan"],
)
def test_a_flatbuffer_with_impossible_quantization_is_refused_not_a_segfault(
    seed, two_images, tmp_path, name
):
    outcome = run_one(seed, name, tmp_path / "sb", two_images)
    assert outcome.verdict == "rejected", outcome


@pytest.mark.parametrize("name", ["crafted:buffer2:no-data", "crafted:graph-no-operators"])
def test_a_model_that_cannot_run_is_refused_when_it_loads(seed, two_images, tmp_path, name):
    outcome = run_one(seed, name, tmp_path / "sb", two_images)
    assert outcome.verdict == "rejected", outcome


def test_a_round_trip_through_the_flatbuffer_schema_still_loads_and_answers(
    seed, two_images, tmp_path
):
    """The crafted cases are only meaningful if an unchanged re-serialised model still works."""
    outcome = run_one(seed, "crafted:roundtrip", tmp_path / "sb", two_images)
    assert outcome.verdict == "loaded", outcome
    assert outcome.answers == (("red",), ("blue",))
