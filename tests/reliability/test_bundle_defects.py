"""The smallest case of each defect the bundle fuzz found, one regression test each.

Each test says what the runtime must do; the ones marked ``xfail(strict=True)`` fail
today, and their reason names the defect and where the fix goes (docs/reliability.md
has the details).  When a fix lands the test passes, strict xfail turns that into a
failure, and the marker comes off.
"""

from __future__ import annotations

import pytest
from bundle_fuzz import CATALOGUES, Case, Sandbox, Seed, run_cases

from fuselite.bundle import BundleError, read_bundle


@pytest.fixture(scope="module")
def seed(seed_bundles) -> Seed:
    return Seed.read(seed_bundles["int8"])


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


ZIP_BUG = (
    "BUG: fuselite/bundle.py read_bundle/_read_members catch only BadZipFile, EOFError, OSError "
    "and ValueError; zipfile also raises zlib.error (corrupt deflate data), RuntimeError "
    "(encrypted member) and NotImplementedError (unknown compression method). Fix: add "
    "zlib.error, RuntimeError, NotImplementedError to that except tuple (read_manifest too), "
    "or refuse members whose flag_bits & 1 or compress_type not in (STORED, DEFLATED) up front"
)


@pytest.mark.xfail(strict=True, reason=ZIP_BUG)
@pytest.mark.parametrize(
    "name",
    ["members:manifest-broken-deflate", "members:manifest-encrypted-flag",
     "members:manifest-unknown-compression"],
)
def test_a_zip_member_that_cannot_be_decompressed_is_a_bundle_error(seed, tmp_path, name):
    with pytest.raises(BundleError, match="not a fuselite bundle"):
        read_case(seed, name, tmp_path)


@pytest.mark.xfail(strict=True, reason=(
    "BUG: fuselite/bundle.py Manifest.from_json catches JSONDecodeError and UnicodeDecodeError "
    "but not RecursionError, which json.loads raises on deeply nested arrays/objects (here "
    "provenance nested 100,000 deep, 200 kB). Fix: catch RecursionError there too"))
def test_a_deeply_nested_manifest_is_a_bundle_error(seed, tmp_path):
    with pytest.raises(BundleError, match="manifest"):
        read_case(seed, "manifest:provenance-nested-100k", tmp_path)


NPY_BUG = (
    "BUG: fuselite/bundle.py _load_embeddings calls np.load on whatever the member holds: an "
    "empty member raises EOFError, and a header claiming a 10^12 x 8 array makes numpy "
    "allocate it (MemoryError). Fix: read the header with np.lib.format.read_magic/"
    "read_array_header_*, check dtype '<f4', shape (len(labels), embedding_dim) and that the "
    "member holds exactly that many bytes before loading; and catch EOFError in _parse_member"
)


@pytest.mark.xfail(strict=True, reason=NPY_BUG)
@pytest.mark.parametrize("name", ["embeddings:empty", "embeddings:huge-shape"])
def test_label_embeddings_are_checked_against_their_header_before_loading(seed, tmp_path, name):
    with pytest.raises(BundleError):
        read_case(seed, name, tmp_path)


@pytest.mark.xfail(strict=True, reason=(
    "BUG: runtime/labels.py embeds typed labels with token ids the text encoder's embedding "
    "table does not have (a tokenizer.json with more words than the tower): the GATHER op "
    "fails at invoke and `fuselite run --labels` exits 1 with a RuntimeError traceback. Fix: "
    "in _check_text_encoder compare bundle.tokenizer.vocab_size with the text encoder's "
    "vocabulary (the GATHER params' first dimension), and turn RuntimeError from "
    "encoder.run in _embed_one into BundleError"))
def test_a_tokenizer_bigger_than_the_text_encoder_gets_one_clear_error(
    seed, two_images, tmp_path
):
    outcome = run_one(seed, "tokenizer:ids-beyond-the-text-tower", tmp_path / "sb", two_images)
    assert outcome.verdict == "rejected", outcome


@pytest.mark.xfail(strict=True, reason=(
    "BUG: a re-signed flatbuffer whose QUANTIZE input/output tensor has a zero point outside "
    "its type's range, or a zero/negative/NaN scale, makes ai-edge-litert 2.3's default "
    "XNNPACK delegate segfault inside allocate_tensors (`fuselite run` dies with SIGSEGV; "
    "without the delegate the same model loads). Fix in runtime/interpreter.py before _load: "
    "validate every tensor's quantization (finite scale > 0, zero point within the dtype's "
    "range) with a small flatbuffer reader like devices/compat.py's, and load the model once "
    "in a forked child first, turning a child killed by a signal into BundleError"))
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


@pytest.mark.xfail(strict=True, reason=(
    "BUG: runtime/interpreter.py TfliteModel loads and allocates but never invokes, so a model "
    "whose constant tensor has no data (or that has no operators) passes Annotator.create and "
    "then raises RuntimeError/ValueError on the first frame: exit 1 with a traceback. Fix: "
    "invoke once on a zero input in TfliteModel.__init__ and turn RuntimeError/ValueError "
    "into BundleError"))
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
