"""Helpers shared by the runtime tests: colour frames and clips, a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from fuselite.runtime.sources import SourceError

# BGR colours, as OpenCV frames hold them.
RED, GREEN, BLUE, GRAY, YELLOW = (
    (0, 0, 255),
    (0, 255, 0),
    (255, 0, 0),
    (128, 128, 128),
    (0, 255, 255),
)
FRAME_SIZE = (120, 160)  # height, width


def solid(bgr, size=FRAME_SIZE, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """A frame of one colour, optionally with Gaussian noise."""
    frame = np.empty((*size, 3), np.uint8)
    frame[:] = bgr
    if noise:
        rng = np.random.default_rng(seed)
        frame = np.clip(frame + rng.normal(0, noise, frame.shape), 0, 255).astype(np.uint8)
    return frame


def write_clip(
    path: Path, colours, frames_each: int = 10, fps: float = 25.0, size=FRAME_SIZE
) -> Path:
    """Writes an mp4 of ``frames_each`` frames per colour with OpenCV (no ffmpeg needed)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size[::-1])
    assert writer.isOpened()
    for colour in colours:
        for _ in range(frames_each):
            writer.write(solid(colour, size=size))
    writer.release()
    return path


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
