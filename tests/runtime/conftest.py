"""Fixtures for the runtime tests: each colour bundle in turn.

The colour bundles themselves (``colour_bundles``, ``fp32_bundle``, ``int8_bundle``) and
``red_blue_clip`` are session fixtures of ``tests/conftest.py``, built with TensorFlow by
``tests/support/bundles.py``; the runtime under test never imports TensorFlow itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.bundles import COLOUR_VARIANTS


@pytest.fixture(params=sorted(COLOUR_VARIANTS))
def any_bundle(request, colour_bundles) -> Path:
    """Each colour bundle variant in turn."""
    return colour_bundles[request.param]
