"""Fixtures for the runtime tests: each colour bundle in turn.

The colour bundles themselves (``colour_bundles``, ``fp32_bundle``, ``int8_bundle``) and
``red_blue_clip`` are session fixtures of ``tests/conftest.py``, built with TensorFlow by
``tests/support/bundles.py``; the runtime under test never imports TensorFlow itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.bundles import COLOUR_VARIANTS, build_hanging_bundle

from fuselite.runtime import affinity


@pytest.fixture(autouse=True)
def idle_machine(monkeypatch, tmp_path_factory) -> None:
    """In-process runs see every core idle and claim cores in a folder of their own.

    The arrangement of the pipeline (threads, pinning) follows the machine's load
    (``fuselite.runtime.affinity``); the tests of that policy give it loads of their own
    (``test_scheduling.py``), and every other test gets the same arrangement however
    busy the CI machine is.  ``idle`` is the affinity mask, all idle.
    """
    monkeypatch.setattr(affinity.LoadSample, "idle_shares",
                        lambda self, min_seconds=0.0: dict.fromkeys(affinity.allowed_cores() or (), 1.0))
    lock_dir = tmp_path_factory.mktemp("core-locks")
    monkeypatch.setattr(affinity, "_lock_dir", lambda: lock_dir)


@pytest.fixture(params=sorted(COLOUR_VARIANTS))
def any_bundle(request, colour_bundles) -> Path:
    """Each colour bundle variant in turn."""
    return colour_bundles[request.param]


@pytest.fixture(scope="session")
def hanging_bundle(fp32_bundle, tmp_path_factory) -> Path:
    """A valid bundle that loads (its WHILE loop runs 0 times on zeros) and then hangs for
    minutes on the first frame with a non-zero pixel (2e9 loop steps)."""
    return build_hanging_bundle(fp32_bundle, tmp_path_factory.mktemp("hanging") / "hangs.tflite")
