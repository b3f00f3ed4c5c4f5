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


# Fine-tuning steps of pruned variants in tests: enough to reach the target sparsity
# (it ramps over the first 70 %), far too few to recover accuracy.
TEST_FINETUNE_STEPS = 40


@pytest.fixture(scope="session")
def tiny_converter(tiny_run, tmp_path_factory):
    """A :class:`fuselite.convert.export.Converter` of ``tiny_run`` writing into a temp folder."""
    from fuselite.convert.export import Converter, ConvertOptions

    out_dir = tmp_path_factory.mktemp("tiny-bundles")
    return Converter.load(tiny_run, out_dir, ConvertOptions(finetune_steps=TEST_FINETUNE_STEPS))


@pytest.fixture(scope="session")
def converted_tiny_run(tiny_converter) -> dict:
    """Every variant of ``tiny_run`` converted once: variant name -> ``VariantResult``.

    Written bundles are at ``result.path`` (``<variant>.tflite``).
    """
    from fuselite.convert.variants import VARIANTS

    return {name: tiny_converter.convert(variant) for name, variant in VARIANTS.items()}
