"""Helpers shared by the runtime tests: a CLI runner, scripted captures, JSONL events.

Colour frames and clips live in ``support.frames`` (every test folder uses them) and
are re-exported here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
from support.frames import BLUE, FRAME_SIZE, GRAY, GREEN, RED, YELLOW, solid, write_clip  # noqa: F401

from fuselite.runtime.sources import SourceError


def count_frames(path: Path) -> int:
    """Decodes a video to the end and counts its frames."""
    capture = cv2.VideoCapture(str(path))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    return frames


def runtime_env() -> dict[str, str]:
    """Environment for CLI subprocesses: unbuffered, and no display."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    return env


def fuselite_command(*args) -> list[str]:
    """The command line of ``fuselite run ARGS`` with this interpreter."""
    return [sys.executable, "-m", "fuselite.cli", "run", *map(str, args)]


def fuselite_run(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs ``fuselite run ARGS`` in a subprocess (so a crash shows as a crash)."""
    return subprocess.run(
        fuselite_command(*args),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env=runtime_env(),
    )


def fuselite_popen(*args, stdout=subprocess.PIPE) -> subprocess.Popen:
    """Starts ``fuselite run ARGS`` in the background; stderr is piped."""
    return subprocess.Popen(
        fuselite_command(*args), stdout=stdout, stderr=subprocess.PIPE, text=True, env=runtime_env()
    )


def error_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` that are not the interpreter's native INFO chatter."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("INFO: ")]


def events(path: Path, kind: str = "annotation") -> list[dict]:
    """The records of one type from a JSONL file."""
    import json

    lines = Path(path).read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("type") == kind]


class ScriptedCapture:
    """A capture that plays a script: a frame, ``None`` (corrupt frame) or ``"lost"``."""

    def __init__(self, script, live=True, failed_opens=0, delay=0.0):
        self.name, self.live, self.fps = "scripted", live, None
        self.script = list(script)
        self.failed_opens = failed_opens
        self.delay = delay
        self.opens = 0
        self.released = 0

    def open(self):
        self.opens += 1
        if self.failed_opens:
            self.failed_opens -= 1
            raise SourceError("camera unplugged")

    def read(self):
        time.sleep(self.delay)
        if not self.script:
            if self.live:  # a live source idles rather than ending
                time.sleep(0.01)
                return False, None, None, None
            return False, None, None, None
        item = self.script.pop(0)
        if isinstance(item, str):
            return False, None, None, None
        return True, item, None, None

    def release(self):
        self.released += 1


class SyntheticCamera:
    """A live capture that delivers a fresh frame of one colour every ``delay`` seconds."""

    def __init__(self, colour=RED, delay: float = 0.002, size=FRAME_SIZE):
        self.name, self.live, self.fps = "synthetic camera", True, 30.0
        self.colour, self.delay, self.size = colour, delay, size
        self.reads = 0

    def open(self):
        pass

    def read(self):
        time.sleep(self.delay)
        self.reads += 1
        return True, solid(self.colour, size=self.size), None, None

    def release(self):
        pass
