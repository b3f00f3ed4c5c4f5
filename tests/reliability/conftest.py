"""Fixtures of the reliability tests: a two-image source.

The bundles to damage are the colour bundles (``colour_bundles`` in ``tests/conftest.py``,
built with TensorFlow once per session by ``tests/support/bundles.py``): real TFLite
models that ``fuselite run`` loads and answers "red" or "blue" with.  The long runs
(large fuzz, two-minute RTSP run, 20,000-frame soak) are scripts beside these tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import reliability_support


@pytest.fixture(scope="session")
def two_images(tmp_path_factory) -> Path:
    """A folder with a red and a blue image: ``fuselite run`` answers ``red`` then ``blue``."""
    return reliability_support.write_colour_folder(tmp_path_factory.mktemp("two-images"))
