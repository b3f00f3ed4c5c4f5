"""Fixtures for the bench tests: colour bundles, a colour dataset and one benchmark of them.

Every bundle comes from ``tests/support/bundles.py``: ``bundle_dir`` holds the session's
colour bundles re-packed as single-label (no TensorFlow), ``regional_dir`` and
``dynamic_bundle`` are built once here.  The benchmark under test runs them through the
runtime in child processes, without TensorFlow.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.bundles import build_dynamic_colour_bundle, repack
from support.frames import write_colour_dataset

from fuselite.bench.runner import run_bench

FAST = {"warmup": 2, "runs": 10, "sustain_s": 0.3}  # sustain: a short loop keeps tests fast


@pytest.fixture(scope="session")
def colour_data(tmp_path_factory) -> Path:
    """Class folders of noisy red/green/blue/gray frames (three gray ones filed as red)."""
    return write_colour_dataset(tmp_path_factory.mktemp("colours") / "colours")


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory, colour_bundles) -> Path:
    """Single-label fp32 and int8 colour bundles, plus a corrupt copy of fp32."""
    folder = tmp_path_factory.mktemp("bundles")
    for variant in ("fp32", "int8"):
        repack(colour_bundles[variant], folder / f"{variant}.tflite", task="single")
    data = bytearray((folder / "fp32.tflite").read_bytes())
    data[200:210] = b"\xff" * 10  # inside the flatbuffer: the sha256 no longer matches
    (folder / "corrupt.tflite").write_bytes(bytes(data))
    return folder


@pytest.fixture(scope="session")
def dynamic_bundle(tmp_path_factory) -> Path:
    """A dynamic-range bundle whose FULLY_CONNECTED v12 the 32-bit Pi's runtime cannot load."""
    return build_dynamic_colour_bundle(tmp_path_factory.mktemp("dynamic") / "dynamic.tflite")


@pytest.fixture(scope="session")
def bench_out(tmp_path_factory, bundle_dir, colour_data):
    """``(report, out_dir)`` of one benchmark of ``bundle_dir`` on the colour data, with --device."""
    out_dir = tmp_path_factory.mktemp("bench-out")
    report = run_bench(bundle_dir, colour_data, out_dir, threads=1, device="generic-x86_64", **FAST)
    return report, out_dir


@pytest.fixture()
def good_bundles(tmp_path, bundle_dir) -> Path:
    """A folder with only the fp32 and int8 bundles."""
    folder = tmp_path / "good"
    folder.mkdir()
    for name in ("fp32.tflite", "int8.tflite"):
        shutil.copy(bundle_dir / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def regional_dir(regional_colour_bundles) -> Path:
    """fp32 and int8 multi-label colour bundles whose image model outputs ``[1, 16, 8]`` (one per cell)."""
    return regional_colour_bundles["fp32"].parent
