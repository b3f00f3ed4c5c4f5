"""Shared fixtures: a tiny trained run that later stages convert, run and bench.

Training it takes about ten seconds on two cores, once per test session.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
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


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory) -> tuple[Path, Path]:
    """A wheel of this checkout installed into a fresh venv, as a user installs it.

    Returns ``(python, site_packages)`` of that venv.  Its dependencies (numpy, OpenCV,
    the interpreter) are not reinstalled: :func:`installed_env` lends the test venv's.
    """
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True, timeout=300,
    )
    env_dir = out / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    wheel = next(out.glob("fuselite-*.whl"))
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300)
    site = Path(subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    return python, site


def installed_env(site: Path) -> dict[str, str]:
    """Environment for the installed wheel's venv: the test venv's packages on PYTHONPATH.

    Only ``.pth`` files of real site folders run, so the test venv's editable finder
    (which maps ``fuselite`` to this checkout) stays off; numpy, OpenCV and the
    interpreter come from there, ``fuselite`` from the wheel.
    """
    import sysconfig

    return {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
