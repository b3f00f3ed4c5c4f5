"""What the reliability tests and scripts share: paths, the CLI runner, process sampling.

The shared test helpers (``tests/support``: the colour bundles, frames and clips) and
the runtime tests' helpers (``tests/runtime``: the CLI runner, the RTSP relay) are
reused, not copied: this module puts ``tests/`` and ``tests/runtime`` on ``sys.path``
so that the scripts here, run as ``python tests/reliability/X.py``, import them
exactly like pytest does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fuselite.host import cpu_model

RELIABILITY_DIR = Path(__file__).resolve().parent
REPO = RELIABILITY_DIR.parents[1]
RUNTIME_TESTS = REPO / "tests" / "runtime"
for folder in (REPO / "tests", RUNTIME_TESTS):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from runtime_helpers import error_lines, runtime_env  # found through the path above

__all__ = [
    "REPO",
    "ProcessSample",
    "error_lines",
    "fuselite_command",
    "runtime_env",
    "sample_process",
    "write_colour_folder",
]

# BGR frames that the runtime tests' colour model names "red" and "blue".
RED, BLUE = (0, 0, 255), (255, 0, 0)


def fuselite_command(command: str, *args) -> list[str]:
    """``fuselite COMMAND ARGS`` run by this interpreter (no reliance on PATH)."""
    return [sys.executable, "-m", "fuselite.cli", command, *map(str, args)]


def quiet_env(**extra: str) -> dict[str, str]:
    """The runtime tests' subprocess environment (no display) with TensorFlow quiet."""
    env = runtime_env()
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("TF_USE_LEGACY_KERAS", "1")
    env.update(extra)
    return env


def run_cli(command: str, *args, timeout: float, cwd: Path | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs ``fuselite COMMAND ARGS`` to completion, text output captured, with a timeout."""
    return subprocess.run(
        fuselite_command(command, *args), capture_output=True, text=True, check=False,
        timeout=timeout, cwd=cwd, env=env or quiet_env(),
    )


def write_colour_folder(folder: Path, colours=(RED, BLUE), size=(120, 160)) -> Path:
    """A folder of one PNG per colour (``0.png``, ``1.png``...), the smallest real source."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, colour in enumerate(colours):
        image = np.empty((*size, 3), np.uint8)
        image[:] = colour
        assert cv2.imwrite(str(folder / f"{index}.png"), image)
    return folder


@dataclass(frozen=True)
class ProcessSample:
    """One look at a running process.

    Attributes:
        seconds: Time since sampling started.
        rss_kb: Resident memory (``VmRSS``), in kB.
        fds: Open file descriptors (entries of ``/proc/PID/fd``).
        threads: Threads (``Threads`` in ``/proc/PID/status``).
    """

    seconds: float
    rss_kb: int
    fds: int
    threads: int


def sample_process(pid: int, started: float) -> ProcessSample | None:
    """Reads ``/proc/PID``; ``None`` once the process has gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if "VmRSS" not in fields:  # a zombie: exited, not reaped yet
        return None
    return ProcessSample(
        seconds=round(time.monotonic() - started, 2),
        rss_kb=int(fields["VmRSS"].split()[0]),
        fds=fds,
        threads=int(fields["Threads"].split()[0]),
    )


def machine_description() -> str:
    """CPU model, core count and memory of this machine, for the figures in the docs."""
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    return f"{cpu_model()}, {os.cpu_count()} cores, {mem_kb / 2**20:.0f} GB RAM, Python {sys.version.split()[0]}"
