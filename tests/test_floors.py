"""The house's floors: every import runs downward (docs/architecture.md).

Ground floor: ``core/`` (the bundle contract and shared TensorFlow-free pieces) and
``data/``.  Stages above it: ``train/``, ``runtime/``, then ``devices/`` and
``convert/``.  On top: ``bench/`` and the CLI and demo.  A room may import its own
modules and the rooms listed for it here, nothing sideways or upward; function-level
imports count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GROUND = {"core"}
ALLOWED = {
    "core": GROUND,
    "data": GROUND | {"data"},
    "train": GROUND | {"data", "train"},
    "runtime": GROUND | {"runtime"},
    "devices": GROUND | {"runtime", "devices"},
    "convert": GROUND | {"data", "train", "devices", "convert"},
}
# The command line and the demo live in core/ (the package root) but sit on the top floor.
TOP_FLOOR_MODULES = {"core/cli.py", "core/demo.py"}
ROOMS = {"train", "convert", "runtime", "devices", "bench", "data"}


def _room_of(module: str) -> str | None:
    """The room a ``fuselite...`` module name lives in (``core`` for the package root)."""
    parts = module.split(".")
    if parts[0] != "fuselite":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else "core"


def _imported_rooms(path: Path) -> set[tuple[str, int]]:
    """(room, line) of every fuselite import in ``path``, at any depth."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            room = _room_of(name)
            if room is not None:
                found.add((room, node.lineno))
    return found


def _modules(room: str) -> list[Path]:
    return sorted(p for p in (REPO / room).rglob("*.py") if str(p.relative_to(REPO)) not in TOP_FLOOR_MODULES)


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_every_import_of_a_room_runs_downward(room: str):
    wrong = []
    for path in _modules(room):
        for imported, line in sorted(_imported_rooms(path)):
            if imported not in ALLOWED[room]:
                wrong.append(f"{path.relative_to(REPO)}:{line} imports fuselite.{imported}")
    assert not wrong, "\n".join(wrong)
