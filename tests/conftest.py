"""Shared fixtures: a tiny trained run that later stages convert, run and bench.

Training it takes about ten seconds on two cores, once per test session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished ``scenes-tiny`` run directory (a few epochs; it learns, but only a little)."""
    from fuselite.train.configs import get_config
    from fuselite.train.trainer import train

    run_dir = tmp_path_factory.mktemp("tiny-run") / "run"
    train(get_config("scenes-tiny"), run_dir)
    return run_dir
