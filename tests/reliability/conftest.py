"""Fixtures of the reliability tests: real tiny bundles to damage, and a two-image source.

The bundles are the runtime tests' colour bundles (``tests/runtime/runtime_bundles.py``,
built with TensorFlow once per session): real TFLite models that ``fuselite run`` loads
and answers "red" or "blue" with.  The long runs (large fuzz, two-minute RTSP run,
20,000-frame soak) are scripts beside these tests, not tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import reliability_support
import runtime_bundles  # importable once reliability_support has put tests/runtime on the path


@pytest.fixture(scope="session")
def seed_bundles(tmp_path_factory) -> dict[str, Path]:
    """``{"fp32": path, "int8": path, "int8-signed-io": path}``: good bundles to damage."""
    return runtime_bundles.build_bundles(tmp_path_factory.mktemp("seed-bundles"))


@pytest.fixture(scope="session")
def two_images(tmp_path_factory) -> Path:
    """A folder with a red and a blue image: ``fuselite run`` answers ``red`` then ``blue``."""
    return reliability_support.write_colour_folder(tmp_path_factory.mktemp("two-images"))
