"""A bundle straight from ``fuselite convert`` of the default kind of run, damaged and not.

The session's ``scenes-tiny`` run uses regional scoring like the default
``scenes-default`` (the image model outputs one embedding per cell).  While this suite
was written the runtime refused such bundles; the first test guards the fix.  The
second fuzzes this real bundle the way test_bundle_fuzz.py fuzzes the tiny colour one.
"""

from __future__ import annotations

import json

import pytest
from bundle_fuzz import BEFORE_INTERPRETER, Sandbox, Seed, make_cases, run_cases, summary_table
from reliability_support import run_cli


@pytest.fixture(scope="module")
def regional_int8_bundle(tiny_run, tmp_path_factory):
    """The int8 bundle of the session's scenes-tiny run (regional scoring)."""
    from fuselite.convert.export import Converter, ConvertOptions
    from fuselite.convert.variants import get_variant

    out = tmp_path_factory.mktemp("regional-bundles")
    options = ConvertOptions(calibration_samples=50, eval_samples=50, num_threads=1)
    result = Converter.load(tiny_run, out, options).convert(get_variant("int8"))
    assert result.status == "ok", result.message
    return result.path


def test_a_bundle_converted_from_a_regional_run_annotates_frames(
    regional_int8_bundle, two_images, tmp_path
):
    events = tmp_path / "events.jsonl"
    done = run_cli("run", "--bundle", regional_int8_bundle, "--source", two_images,
                   "--jsonl", events, "--threads", 1, timeout=120)
    assert done.returncode == 0, done.stderr[-1000:]
    records = [json.loads(line) for line in events.read_text().splitlines()]
    assert [r["type"] for r in records] == ["annotation", "annotation", "stats"]


def test_a_seeded_fuzz_of_a_converted_bundle_never_crashes_hangs_or_writes_elsewhere(
    regional_int8_bundle, two_images, tmp_path
):
    """Damage that read_bundle sees, two cases a family: a clear error or a load, always."""
    seed = Seed.read(regional_int8_bundle)
    cases = make_cases(seed, 7, 2, families=BEFORE_INTERPRETER, always=())
    sandbox = Sandbox(tmp_path / "sandbox", two_images)
    outcomes = run_cases(cases, sandbox)
    unsafe = [o for o in outcomes if o.verdict in ("crash", "hang") or o.strays]
    assert not unsafe, summary_table(outcomes)
    assert sandbox.strays() == []
