"""Board profiles: what a target board runs and what a bundle must fit into.

Profiles are data, one JSON file per board in ``profiles/``; this module only
loads and validates them.  ``convert --target`` reads ``runtime`` to check op
versions, ``bench --device`` reads ``limits``, ``devices verify`` reads
``architecture``, ``python`` and ``cpu`` to emulate the board, and
``devices setup-files`` renders the board's install script, systemd unit and
settings from ``name``, ``architecture``, ``runtime``, ``threads``, ``ram_mb``,
``camera_backend``, ``limits.max_memory_mb`` and ``kernel_hint``
(see :mod:`fuselite.devices.setup_files`).  Adding a board is one JSON file.

Example:
    >>> list_profiles()
    ['generic-x86_64', 'raspberry-pi-32bit', 'raspberry-pi-4', ...]
    >>> get_profile("raspberry-pi-5").runtime_spec.requirements
    ('ai-edge-litert>=2.3,<3',)
"""

from __future__ import annotations

import functools
import json
import operator
import re
from dataclasses import dataclass
from pathlib import Path

from fuselite.devices.compat import RuntimeSpec, get_runtime
from fuselite.errors import UserError

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
# platform.machine() -> Debian's name for the same architecture (dpkg --print-architecture)
DEBIAN_ARCHITECTURES = {"aarch64": "arm64", "armv7l": "armhf", "x86_64": "amd64"}
ARCHITECTURES = tuple(DEBIAN_ARCHITECTURES)
CAMERA_BACKENDS = ("libcamera", "v4l2")
# The name lands unquoted in shell scripts and systemd units: keep it to a slug.
PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
# One clause of a runtime's Python range (RuntimeSpec.python, e.g. ">=3.10,<3.15").
PYTHON_CLAUSE = re.compile(r"(>=|<=|==|!=|>|<)\s*3\.(\d+)")
_COMPARE = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
            ">": operator.gt, "<": operator.lt}


@dataclass(frozen=True)
class Limits:
    """What ``bench --device`` demands of a bundle on the board.

    Attributes:
        max_bundle_mb: Largest bundle file, in MB (10^6 bytes).
        min_fps: Lowest acceptable frames per second for a single stream.
        max_memory_mb: Most resident memory the runtime may use, in MB.
    """

    max_bundle_mb: float
    min_fps: float
    max_memory_mb: float


@dataclass(frozen=True)
class Profile:
    """One target board.

    Attributes:
        name: Registry name (``"raspberry-pi-5"``).
        title: One line naming the hardware.
        system: Operating system the profile assumes.
        architecture: ``platform.machine()`` on the board (aarch64, armv7l, x86_64).
        python: Python version of that system (``"3.11"``); must be in the runtime's range.
        runtime: Key of the interpreter in :mod:`fuselite.devices.compat`'s op tables.
        threads: Interpreter threads to use (``num_threads``).
        ram_mb: Memory of the smallest common variant of the board, in MB.
        camera_backend: ``"libcamera"`` (the Pi camera, streamed by rpicam-vid)
            or ``"v4l2"`` (a USB camera opened by OpenCV).
        cpu: QEMU CPU model used to emulate it (``""`` when not emulated).
        debian_suite: Debian release the board's userland is built from.
        limits: See :class:`Limits`.
        notes: What to watch out for on this board.
        kernel_hint: What ``install.sh`` adds when the system's packages match
            ``architecture`` but ``uname -m`` does not (a 64-bit kernel under a
            32-bit system); ``""`` for none.
    """

    name: str
    title: str
    system: str
    architecture: str
    python: str
    runtime: str
    threads: int
    ram_mb: int
    camera_backend: str
    cpu: str
    debian_suite: str
    limits: Limits
    notes: str = ""
    kernel_hint: str = ""

    @property
    def runtime_spec(self) -> RuntimeSpec:
        """The interpreter package this board installs, with its op table."""
        return get_runtime(self.runtime)

    @property
    def debian_architecture(self) -> str:
        """Debian's name for ``architecture`` (``arm64``), what ``dpkg --print-architecture`` says."""
        return DEBIAN_ARCHITECTURES[self.architecture]


def load_profile(path: Path) -> Profile:
    """Reads and validates one profile JSON file; a bad file raises ValueError naming it and the field."""
    path = Path(path)
    data = json.loads(path.read_text())
    try:
        profile = Profile(**{**data, "limits": Limits(**data["limits"])})
    except (TypeError, KeyError) as exc:
        raise ValueError(f"{path.name}: invalid profile ({exc})") from None
    problem = _problem(profile, path.stem)
    if problem:
        raise ValueError(f"{path.name}: {problem}")
    return profile


def _problem(profile: Profile, stem: str) -> str | None:
    """What is wrong with ``profile`` loaded from ``<stem>.json``, or None."""
    if profile.name != stem:
        return f"name {profile.name!r} does not match the file name"
    if not PROFILE_NAME.fullmatch(profile.name):
        return "name must be lower-case letters, digits, dashes and underscores"
    if profile.architecture not in ARCHITECTURES:
        return f"architecture must be one of {', '.join(ARCHITECTURES)}"
    if profile.camera_backend not in CAMERA_BACKENDS:
        return f"camera_backend must be one of {', '.join(CAMERA_BACKENDS)}"
    if not isinstance(profile.threads, int) or profile.threads < 1:
        return "threads must be a whole number of at least 1"
    if not 0 < profile.limits.max_memory_mb < profile.ram_mb:
        return "limits.max_memory_mb must be above 0 and below ram_mb"
    spec = get_runtime(profile.runtime)  # fails listing the known runtimes
    if profile.architecture not in spec.architectures:
        return f"{spec.name} has no {profile.architecture} wheels (only {', '.join(spec.architectures)})"
    if not python_satisfies(profile.python, spec.python):
        return f"{spec.name} has no wheels for Python {profile.python} (only {spec.python})"
    return None


def python_clauses(spec: str) -> tuple[tuple[str, tuple[int, int]], ...]:
    """Parses a Python range (``">=3.10,<3.15"``) into ``(op, (3, minor))`` pairs.

    Wheels are built per ``major.minor`` of Python 3, so only those are accepted;
    anything else raises ValueError.
    """
    clauses = []
    for part in spec.split(","):
        match = PYTHON_CLAUSE.fullmatch(part.strip())
        if match is None:
            raise ValueError(f"Python range {spec!r}: {part.strip()!r} is not like '>=3.10'")
        clauses.append((match.group(1), (3, int(match.group(2)))))
    return tuple(clauses)


def python_satisfies(version: str, spec: str) -> bool:
    """Whether Python ``version`` (``"3.11"``) falls in the range ``spec`` (``">=3.8,<3.12"``)."""
    major, minor = (int(x) for x in version.split(".")[:2])
    return all(_COMPARE[op]((major, minor), bound) for op, bound in python_clauses(spec))


@functools.lru_cache(maxsize=1)
def _profiles() -> dict[str, Profile]:
    return {p.stem: load_profile(p) for p in sorted(PROFILES_DIR.glob("*.json"))}


def list_profiles() -> list[str]:
    """Names of every board profile, sorted."""
    return sorted(_profiles())


def get_profile(name: str) -> Profile:
    """The profile called ``name``; an unknown name raises UserError (a ValueError) listing the known ones."""
    try:
        return _profiles()[name]
    except KeyError:
        raise UserError(f"unknown device profile {name!r}; known: {', '.join(list_profiles())}") from None
