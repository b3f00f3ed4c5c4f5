"""Damaged bundles end in a clear error or a correct load; nothing is written elsewhere.

A seeded fuzz sized for CI (``bundle_fuzz.py`` makes the cases): hundreds of damaged
files through ``read_bundle`` in this process, and a sample of every family through
``fuselite run`` in subprocesses, where a crash shows as a negative exit code.  The
large run is ``python tests/reliability/fuzz_bundles.py`` (see docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
from bundle_fuzz import (
    BEFORE_INTERPRETER,
    ESCAPE_TOKEN,
    FAMILIES,
    REGRESSION_CASES,
    Case,
    Sandbox,
    Seed,
    fingerprint,
    in_process_verdict,
    make_cases,
    member_cases,
    oversize_cases,
    pickled_embeddings,
    run_cases,
    summary_table,
)

from fuselite.bundle import MAX_LABELS, BundleError, read_bundle

CI_SEED = 20261127
IN_PROCESS_PER_FAMILY = 40  # random families; catalogues are read whole
SUBPROCESS_PER_FAMILY = 3


@pytest.fixture(scope="module")
def seed(colour_bundles) -> Seed:
    """The int8 colour bundle, taken apart (the int8 model has the most to damage)."""
    return Seed.read(colour_bundles["int8"])


@pytest.fixture(scope="module")
def in_process_cases(seed) -> list[Case]:
    return make_cases(seed, CI_SEED, IN_PROCESS_PER_FAMILY, sample_catalogues=False)


@pytest.fixture(scope="module")
def subprocess_outcomes(seed, two_images, tmp_path_factory):
    """A seeded sample of every family, and every known defect class, through `fuselite run`."""
    cases = make_cases(seed, CI_SEED, SUBPROCESS_PER_FAMILY)
    sandbox = Sandbox(tmp_path_factory.mktemp("fuzz-sandbox"), two_images)
    (reference,) = run_cases([Case("seed", "seed", seed.data)], sandbox)
    assert reference.verdict == "loaded", reference
    sandbox.reference = (fingerprint(seed.bundle), reference.answers)
    return run_cases(cases, sandbox, timeout=60), sandbox


def _described(outcomes) -> str:
    rows = [f"{o.verdict:<8} {o.case}: {o.message} {list(o.strays) or ''}" for o in outcomes]
    return "\n".join(rows[:40])


@pytest.mark.parametrize("family", BEFORE_INTERPRETER)
def test_read_bundle_answers_each_damaged_file_with_a_bundle_error_or_a_bundle(
    family, in_process_cases, tmp_path
):
    cases = [c for c in in_process_cases if c.family == family]
    verdicts = [(c, *in_process_verdict(c, tmp_path / f"{i}.fuselite")) for i, c in enumerate(cases)]
    bugs = [f"{c.name}: {message}" for c, verdict, message in verdicts if verdict == "bug"]
    assert len(cases) >= 8
    assert not bugs, "\n".join(bugs)


def test_read_bundle_returns_only_bundles_whose_checksums_types_and_ranges_hold(
    in_process_cases, tmp_path
):
    accepted = []
    for i, case in enumerate(in_process_cases):
        path = tmp_path / f"{i}.fuselite"
        if in_process_verdict(case, path)[0] == "loaded":
            accepted.append((case.name, read_bundle(path)))
    assert len(accepted) >= 50  # the re-signed and crafted models, and harmless changes
    for name, bundle in accepted:
        m, p = bundle.manifest, bundle.manifest.preprocessing
        assert hashlib.sha256(bundle.model_bytes).hexdigest() == m.model_sha256, name
        assert len(bundle.model_bytes) == m.model_size, name
        assert hashlib.sha256(bundle.text_encoder_bytes).hexdigest() == m.text_encoder_sha256
        assert 1 <= len(m.labels) <= MAX_LABELS and len(m.thresholds) == len(m.labels), name
        assert all(isinstance(t, float) and 0 <= t <= 1 for t in m.thresholds), name
        assert math.isfinite(m.logit_scale) and math.isfinite(m.logit_bias), name
        assert all(isinstance(s, int) and 8 <= s <= 1024 for s in p.input_size), name
        assert bundle.label_embeddings.dtype == np.float32, name
        assert bundle.label_embeddings.shape == (len(m.labels), m.embedding_dim), name
        assert np.isfinite(bundle.label_embeddings).all(), name


@pytest.mark.slow
def test_fuselite_run_never_crashes_hangs_or_writes_elsewhere_on_damage_read_bundle_sees(
    subprocess_outcomes,
):
    outcomes, sandbox = subprocess_outcomes
    mine = [o for o in outcomes if o.family in BEFORE_INTERPRETER]
    assert {o.family for o in mine} == set(BEFORE_INTERPRETER)
    unsafe = [o for o in mine if o.verdict in ("crash", "hang", "wrong") or o.strays]
    assert not unsafe, _described(unsafe) + "\n" + summary_table(outcomes)
    assert sandbox.strays() == []


@pytest.mark.slow
def test_fuselite_run_ends_every_damaged_bundle_in_one_clear_error_or_a_correct_load(
    subprocess_outcomes,
):
    outcomes, _ = subprocess_outcomes
    assert {o.family for o in outcomes} == set(FAMILIES)
    assert set(REGRESSION_CASES) <= {o.case for o in outcomes}
    bad = [o for o in outcomes if not o.ok]
    assert not bad, _described(bad) + "\n" + summary_table(outcomes)


# --- the attacks the issue names, one by one ---------------------------------------------


def test_zip_member_names_with_dotdot_or_a_root_are_refused_and_nothing_is_written(
    seed, two_images, tmp_path
):
    cases = [c for c in member_cases(seed) if ":extra-" in c.name or ":dotdot-" in c.name]
    assert len(cases) == 10
    sandbox = Sandbox(tmp_path / "sandbox", two_images)
    outcomes = run_cases(cases, sandbox)
    assert all(o.verdict == "rejected" for o in outcomes), _described(outcomes)
    assert all("unsafe member name" in o.message for o in outcomes), _described(outcomes)
    assert not any(o.strays for o in outcomes) and sandbox.strays() == []
    assert not list(Path("/tmp").glob(f"{ESCAPE_TOKEN}*"))


def test_an_oversize_manifest_is_refused_whatever_its_header_claims(seed, tmp_path):
    for case in oversize_cases(seed):
        if "manifest" not in case.name:
            continue
        path = tmp_path / "big.fuselite"
        path.write_bytes(case.data)
        with pytest.raises(BundleError, match=r"over|CRC|not a fuselite bundle"):
            read_bundle(path)


def test_label_embeddings_holding_a_pickle_are_refused_and_never_unpickled(
    seed, two_images, tmp_path
):
    marker = tmp_path / "unpickled-marker"
    case = Case("pickle", "embeddings", pickled_embeddings(seed, marker))
    (outcome,) = run_cases([case], Sandbox(tmp_path / "sandbox", two_images))
    assert outcome.verdict == "rejected" and "pickle" in outcome.message.lower(), outcome
    assert not marker.exists()


def test_more_labels_than_allowed_are_refused_and_the_most_allowed_still_run(
    seed, two_images, tmp_path
):
    cases = [c for c in oversize_cases(seed) if "labels-" in c.name]
    outcomes = {o.case: o for o in run_cases(cases, Sandbox(tmp_path / "sandbox", two_images))}
    assert outcomes["oversize:labels-10001"].verdict == "rejected"
    assert "1 to 10000 labels" in outcomes["oversize:labels-10001"].message
    assert outcomes["oversize:labels-10000"].verdict == "loaded"
