"""Fixtures every test folder shares, each built once per test session.

* ``tiny_run`` and its conversions: a tiny trained run that later stages convert, run
  and bench (training takes about ten seconds on two cores);
* the colour bundles (``colour_bundles``, ``fp32_bundle``, ``int8_bundle``) and a
  red-then-blue clip, which the runtime, reliability and bench tests run;
* the op bundles (``op_bundles``), which the devices tests check and verify;
* ``installed_wheel``, this checkout installed into a fresh venv.

The builders live in ``tests/support`` (importable as ``support`` from every folder:
pytest's default ``prepend`` import mode puts ``tests/`` on ``sys.path`` when it
imports this file).  Fixtures one folder alone uses stay in that folder's conftest.
Never import from ``conftest``: each folder has one, and the module of that name is
whichever pytest imported last.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.bundles import build_colour_bundles, build_op_bundles
from support.frames import BLUE, RED, write_clip
from support.wheel import install_wheel

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Fixtures that train or convert a model: every test using one is slow, marked or not,
# so `-m "not slow"` never trains (a new test of the trained run cannot slip into it).
SLOW_FIXTURES = frozenset({"tiny_run", "tiny_converter", "converted_tiny_run", "op_bundles"})


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks ``slow`` every test that uses one of :data:`SLOW_FIXTURES`."""
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


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
# Accuracy budget of the shared converter: the budget is judged on the tiny run's 120
# validation images, where a compressed variant's mAP moves 1-2 pt on noise alone
# (clustered-int8: -1.07 pt on validation, +1.56 pt on test).  The bundle tests check
# what is written; the budget's own tests set theirs.
TEST_MAX_LOSS = 3.0


@pytest.fixture(scope="session")
def tiny_converter(tiny_run, tmp_path_factory):
    """A :class:`fuselite.convert.export.Converter` of ``tiny_run`` writing into a temp folder."""
    from fuselite.convert.export import Converter, ConvertOptions

    out_dir = tmp_path_factory.mktemp("tiny-bundles")
    return Converter.load(tiny_run, out_dir, ConvertOptions(finetune_steps=TEST_FINETUNE_STEPS,
                                                                  max_loss=TEST_MAX_LOSS))


@pytest.fixture(scope="session")
def converted_tiny_run(tiny_converter) -> dict:
    """Every variant of ``tiny_run`` converted once: variant name -> ``VariantResult``.

    Written bundles are at ``result.path`` (``<variant>.tflite``).
    """
    from fuselite.convert.variants import VARIANTS

    return {name: tiny_converter.convert(variant) for name, variant in VARIANTS.items()}


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory) -> tuple[Path, Path]:
    """``(python, site_packages)`` of a fresh venv with a wheel of this checkout installed.

    Run its commands with ``env=support.wheel.installed_env(site)``.
    """
    return install_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def colour_bundles(tmp_path_factory) -> dict[str, Path]:
    """``{variant: path}``: the colour bundles fp32, int8 (uint8 I/O) and int8-signed-io.

    Shared by every folder: treat the files as read-only (copy or ``repack`` to change one).
    """
    return build_colour_bundles(tmp_path_factory.mktemp("colour-bundles"))


@pytest.fixture(scope="session")
def fp32_bundle(colour_bundles) -> Path:
    """The float colour bundle (float32 input and output)."""
    return colour_bundles["fp32"]


@pytest.fixture(scope="session")
def int8_bundle(colour_bundles) -> Path:
    """The full-int8 colour bundle (uint8 input and output, quantization in the manifest)."""
    return colour_bundles["int8"]


@pytest.fixture(scope="session")
def regional_colour_bundles(tmp_path_factory) -> dict[str, Path]:
    """``{variant: path}``: fp32 and int8 colour bundles whose image model outputs one
    embedding per 8x8 cell (``[1, 16, 8]``, a 4x4 grid named in ``label_maps``).

    A coloured patch lights up its label in the cells it covers, so heatmaps have a
    known answer.  Treat the files as read-only.
    """
    return build_colour_bundles(tmp_path_factory.mktemp("regional-colour"), variants=("fp32", "int8"),
                                regional=True)


@pytest.fixture(scope="session")
def red_blue_clip(tmp_path_factory) -> Path:
    """20 red frames then 20 blue frames, 160x120 at 25 fps."""
    return write_clip(tmp_path_factory.mktemp("clips") / "red_blue.mp4", [RED, BLUE], frames_each=20)


@pytest.fixture(scope="session")
def op_bundles(tmp_path_factory) -> dict[str, Path]:
    """``{variant: path}``: the op bundles fp32, dynamic and int8 (``tiny-<variant>.fuselite``)."""
    pytest.importorskip("tensorflow")
    return build_op_bundles(tmp_path_factory.mktemp("op-bundles"))
