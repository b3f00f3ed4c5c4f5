"""Board profiles: what a target board runs and what a bundle must fit into.

Profiles are data, one JSON file per board in ``profiles/``; this module only
loads and validates them.  ``convert --target`` reads ``runtime`` to check op
versions, ``bench --device`` reads ``limits``, ``devices verify`` reads
``architecture``, ``python`` and ``cpu`` to emulate the board.

Example:
    >>> list_profiles()
    ['generic-x86_64', 'raspberry-pi-32bit', 'raspberry-pi-4', ...]
    >>> get_profile("raspberry-pi-5").runtime_spec.requirements
    ('ai-edge-litert>=2.3,<3',)
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from fuselite.devices.compat import RuntimeSpec, get_runtime
from fuselite.errors import UserError

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
DEVICES_DIR = Path(__file__).resolve().parent
ARCHITECTURES = ("aarch64", "armv7l", "x86_64")
CAMERA_BACKENDS = ("libcamera", "v4l2")
SETUP_FILES = ("install.sh", "fuselite.service", "fuselite.env")


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
        python: Python version of that system (``"3.11"``).
        runtime: Key of the interpreter in :mod:`fuselite.devices.compat`'s op tables.
        threads: Interpreter threads to use (``num_threads``).
        ram_mb: Memory of the smallest common variant of the board, in MB.
        camera_backend: ``"libcamera"`` (the Pi camera, streamed by rpicam-vid)
            or ``"v4l2"`` (a USB camera opened by OpenCV).
        cpu: QEMU CPU model used to emulate it (``""`` when not emulated).
        debian_suite: Debian release the board's userland is built from.
        limits: See :class:`Limits`.
        notes: What to watch out for on this board.
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

    @property
    def runtime_spec(self) -> RuntimeSpec:
        """The interpreter package this board installs, with its op table."""
        return get_runtime(self.runtime)

    @property
    def setup_dir(self) -> Path:
        """Folder with this board's install script, systemd unit and example config."""
        return DEVICES_DIR / self.name

    def setup_files(self) -> dict[str, Path]:
        """Maps each setup file name to its path (files may be missing in a broken install)."""
        return {name: self.setup_dir / name for name in SETUP_FILES}


def _load(path: Path) -> Profile:
    data = json.loads(path.read_text())
    try:
        profile = Profile(**{**data, "limits": Limits(**data["limits"])})
    except (TypeError, KeyError) as exc:
        raise ValueError(f"{path.name}: invalid profile ({exc})") from None
    if profile.name != path.stem:
        raise ValueError(f"{path.name}: name {profile.name!r} does not match the file name")
    if profile.architecture not in ARCHITECTURES:
        raise ValueError(f"{path.name}: architecture must be one of {', '.join(ARCHITECTURES)}")
    if profile.camera_backend not in CAMERA_BACKENDS:
        raise ValueError(f"{path.name}: camera_backend must be one of {', '.join(CAMERA_BACKENDS)}")
    get_runtime(profile.runtime)  # fails listing the known runtimes
    return profile


@functools.lru_cache(maxsize=1)
def _profiles() -> dict[str, Profile]:
    return {p.stem: _load(p) for p in sorted(PROFILES_DIR.glob("*.json"))}


def list_profiles() -> list[str]:
    """Names of every board profile, sorted."""
    return sorted(_profiles())


def get_profile(name: str) -> Profile:
    """The profile called ``name``; an unknown name raises UserError (a ValueError) listing the known ones."""
    try:
        return _profiles()[name]
    except KeyError:
        raise UserError(f"unknown device profile {name!r}; known: {', '.join(list_profiles())}") from None
