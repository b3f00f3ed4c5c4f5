"""Fixtures for the runtime tests: real tiny bundles built once per session, colour clips.

The bundles are built with TensorFlow (see ``runtime_bundles.py``); the runtime under
test never imports TensorFlow itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import runtime_bundles
from runtime_helpers import BLUE, RED, write_clip


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """``{variant: path}``: real TFLite bundles (fp32, int8 with uint8 and with int8 I/O)."""
    return runtime_bundles.build_bundles(tmp_path_factory.mktemp("bundles"))


@pytest.fixture(scope="session")
def fp32_bundle(bundles) -> Path:
    """The float bundle (float32 input and output)."""
    return bundles["fp32"]


@pytest.fixture(scope="session")
def int8_bundle(bundles) -> Path:
    """The full-int8 bundle (uint8 input and output, quantization in the manifest)."""
    return bundles["int8"]


@pytest.fixture(params=sorted(runtime_bundles.VARIANTS))
def any_bundle(request, bundles) -> Path:
    """Each bundle variant in turn."""
    return bundles[request.param]


@pytest.fixture(scope="session")
def red_blue_clip(tmp_path_factory) -> Path:
    """20 red frames then 20 blue frames, 160x120 at 25 fps."""
    return write_clip(
        tmp_path_factory.mktemp("clips") / "red_blue.mp4", [RED, BLUE], frames_each=20
    )
