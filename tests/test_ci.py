"""CI runs what the README tells a newcomer to run: the fast set, then the slow set."""

from __future__ import annotations

import re

import pytest
from support import REPO


def _readme_test_command() -> str:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"Run the tests:\n\n```bash\n(.+?)\n```", readme, re.DOTALL)
    assert block, "README lost its 'Run the tests:' code block"
    return block.group(1).strip()


def _ci_command() -> str:
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    return next(line for line in reversed(lines) if line.strip() and not line.startswith("#")).strip()


def test_ci_runs_the_readme_test_command_verbatim():
    assert _ci_command() == _readme_test_command()


def test_ci_runs_the_fast_set_then_the_slow_set_and_nothing_else():
    steps = _ci_command().split(" && ")
    assert steps == [
        "bash .ci/setup.sh",
        '.venv/bin/python -m pytest -m "not slow"',
        ".venv/bin/python -m pytest -m slow",
    ]


def test_a_plain_pytest_run_deselects_nothing():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "-m" not in options.get("addopts", "").split()
    assert any(marker.startswith("slow:") for marker in options["markers"])
