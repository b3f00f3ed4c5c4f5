"""Where annotations go: JSONL events, an annotated video, an overlay, a window.

The video is written under a temporary name beside the target and renamed into
place when it is closed, so a half-written file never sits at the path the user
gave.  JSONL lines are flushed one by one, so ``tail -f`` and pipes see every event
and nothing is lost on SIGTERM.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from fuselite.runtime.results import AnnotationResult
from fuselite.runtime.sources import Frame

log = logging.getLogger(__name__)

FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
DEFAULT_VIDEO_FPS = 15.0
OVERLAY_ROWS = 5
GREEN, GREY, WHITE, BLACK = (80, 230, 80), (190, 190, 190), (255, 255, 255), (0, 0, 0)


def event_record(frame: Frame, result: AnnotationResult, total_ms: float) -> dict[str, Any]:
    """The JSONL event for one annotated frame."""
    latency = result.latency
    record = {
        "type": "annotation",
        "frame": frame.index,
        "timestamp_ms": round(frame.timestamp_ms, 3),
        "time": round(frame.wall_time, 3),
        "labels": [{"label": c.label, "score": round(c.score, 4)} for c in result.categories],
        "scores": {label: round(score, 4) for label, score in result.scores.items()},
        "latency_ms": {
            "capture": round(frame.capture_ms, 3),
            "preprocess": round(latency.preprocess_ms, 3),
            "inference": round(latency.inference_ms, 3),
            "postprocess": round(latency.postprocess_ms, 3),
            "total": round(total_ms, 3),
        },
    }
    if frame.name is not None:
        record["name"] = frame.name
    return record


class JsonlWriter:
    """Writes one JSON object per line to a file or stdout (``"-"``), flushing each line.

    Safe to call from several threads (the video writer reports finished files).
    """

    def __init__(self, target: str | Path) -> None:
        self.target = str(target)
        self.closed = False
        self._lock = threading.Lock()
        if self.target == "-":
            self._stream: IO[str] = sys.stdout
        else:
            Path(self.target).parent.mkdir(parents=True, exist_ok=True)
            self._stream = open(self.target, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: dict[str, Any]) -> bool:
        """Writes one record; False once the reader has gone away (a closed pipe)."""
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            if self.closed:
                return False
            try:
                self._stream.write(line)
                self._stream.flush()
            except BrokenPipeError:
                log.warning("the reader of the JSONL events went away; stopping")
                self._silence_stdout()
                self.closed = True
                return False
            return True

    def close(self) -> None:
        """Flushes, and closes a file (never stdout)."""
        with self._lock:
            if self._stream is sys.stdout:
                if not self.closed:
                    try:
                        self._stream.flush()
                    except BrokenPipeError:
                        self._silence_stdout()
            else:
                self._stream.close()
            self.closed = True

    def _silence_stdout(self) -> None:
        # Python would otherwise complain about the broken pipe again at exit.
        if self._stream is sys.stdout:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)


class VideoOutput:
    """Writes annotated frames to a video, renamed into place when each file is closed.

    The writer opens on the first frame (its size sets the video's); later frames of
    another size are resized to it.

    With ``segment_seconds``, the video is cut into files of that much stream time
    (media time for files, wall time for live sources) named ``<stem>-0001<suffix>``,
    ``<stem>-0002<suffix>``... beside ``path``; numbering continues after the files a
    previous run left there.  An MP4 writer keeps the file's index in memory until the
    file is closed (about 70 bytes a frame), so segments also bound memory on a long
    unattended run.  Every file is written under a hidden ``.partial`` name and renamed
    only when complete, so a final path never holds a half-written video.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float | None,
        segment_seconds: float | None = None,
        on_file: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in FOURCC:
            raise ValueError(
                f"video output {self.path} must end in one of {', '.join(sorted(FOURCC))}"
            )
        if segment_seconds is not None and not segment_seconds > 0:
            raise ValueError(f"video segments must last more than 0 s, not {segment_seconds}")
        self.path.parent.mkdir(parents=True, exist_ok=True)  # a bad folder fails at setup
        self.fps = fps if fps and 1 <= fps <= 240 else DEFAULT_VIDEO_FPS
        self.segment_seconds = segment_seconds
        self.on_file = on_file
        self.frames = 0  # in every file
        self.files: list[Path] = []
        self._number = self._last_number() if segment_seconds else 0
        self._writer = None
        self._size: tuple[int, int] | None = None
        self._current = self.path
        self._file_frames = 0
        self._file_first_frame: int | None = None
        self._file_seconds = 0.0  # stream time covered by the current file
        self._last_ms: float | None = None

    @property
    def partial(self) -> Path:
        """Where the file being written lives until it is complete."""
        return self._current.with_name(f".{self._current.stem}.partial{self._current.suffix}")

    def segment_path(self, number: int) -> Path:
        """The final path of segment ``number`` (from 1)."""
        return self.path.with_name(f"{self.path.stem}-{number:04d}{self.path.suffix}")

    def write(
        self, image: np.ndarray, timestamp_ms: float | None = None, frame_index: int | None = None
    ) -> None:
        """Appends one BGR frame; ``timestamp_ms`` (stream time) decides when a segment ends.

        Without a timestamp, each frame counts as ``1 / fps`` seconds.
        """
        step = self._step_seconds(timestamp_ms)
        if self._writer is not None and self.segment_seconds is not None:
            if self._file_seconds + step >= self.segment_seconds - 1e-9:
                self._close_file()
            else:
                self._file_seconds += step
        if self._writer is None:
            self._open(image, frame_index)
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(image)
        self.frames += 1
        self._file_frames += 1

    def _step_seconds(self, timestamp_ms: float | None) -> float:
        """Stream time since the previous frame; a clock that jumps back (a replay) adds 0."""
        if timestamp_ms is None:
            return 1.0 / self.fps
        last, self._last_ms = self._last_ms, timestamp_ms
        if last is None:
            return 0.0
        return max(0.0, timestamp_ms - last) / 1000.0

    def _open(self, image: np.ndarray, frame_index: int | None) -> None:
        if self.segment_seconds is not None:
            self._number += 1
            self._current = self.segment_path(self._number)
        self._size = (image.shape[1], image.shape[0])
        fourcc = cv2.VideoWriter_fourcc(*FOURCC[self.path.suffix.lower()])
        writer = cv2.VideoWriter(str(self.partial), fourcc, self.fps, self._size)
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot write video {self._current}")
        self._writer = writer
        self._file_frames = 0
        self._file_first_frame = frame_index
        self._file_seconds = 0.0

    def _close_file(self) -> None:
        self._writer.release()
        self._writer = None
        os.replace(self.partial, self._current)
        self.files.append(self._current)
        log.info("wrote %d frames to %s", self._file_frames, self._current)
        if self.on_file is not None:
            record = {
                "type": "video",
                "path": str(self._current),
                "frames": self._file_frames,
                "first_frame": self._file_first_frame,
                "time": round(time.time(), 3),
            }
            self.on_file(record)

    def _last_number(self) -> int:
        """The highest segment number already beside ``path`` (0 if none)."""
        pattern = re.compile(rf"{re.escape(self.path.stem)}-(\d+){re.escape(self.path.suffix)}")
        if not self.path.parent.is_dir():
            return 0
        numbers = [
            int(match[1])
            for entry in self.path.parent.iterdir()
            if (match := pattern.fullmatch(entry.name))
        ]
        return max(numbers, default=0)

    def close(self) -> None:
        """Finishes the file being written and renames it to its final name."""
        if self._writer is not None:
            self._close_file()


def draw_overlay(image: np.ndarray, result: AnnotationResult, status: str = "") -> np.ndarray:
    """Draws the best scores (text over a score bar) and a status line onto ``image`` in place."""
    scale = max(0.7, min(2.0, image.shape[0] / 480))
    row = int(26 * scale)
    present = {c.label for c in result.categories}
    best = sorted(result.scores.items(), key=lambda item: -item[1])[:OVERLAY_ROWS]
    width = min(image.shape[1], int(240 * scale))
    height = row * (len(best) + (1 if status else 0)) + int(8 * scale)
    panel = image[:height, :width]
    panel[:] = (panel * 0.35).astype(np.uint8)  # darken behind the text, no copy of the frame
    y = int(4 * scale)
    if status:
        _text(image, status, (6, y + row - int(8 * scale)), scale, WHITE)
        y += row
    for label, score in best:
        colour = GREEN if label in present else GREY
        _text(image, f"{label[:24]}  {score:.2f}", (8, y + row - int(10 * scale)), scale, colour)
        bar_y = y + row - int(6 * scale)
        cv2.rectangle(
            image,
            (8, bar_y),
            (8 + int((width - 16) * score), bar_y + max(2, int(3 * scale))),
            colour,
            cv2.FILLED,
        )
        y += row
    return image


def _text(image: np.ndarray, text: str, origin: tuple[int, int], scale: float, colour) -> None:
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, BLACK, 3, cv2.LINE_AA)
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, colour, 1, cv2.LINE_AA)


class Display:
    """An on-screen OpenCV window; only where a display and an OpenCV GUI exist."""

    WINDOW = "fuselite"

    def __init__(self) -> None:
        cv2.namedWindow(self.WINDOW, cv2.WINDOW_NORMAL)

    @classmethod
    def open(cls, mode: str) -> Display | None:
        """A window for ``mode`` ``"on"``/``"auto"``, or ``None`` for ``"off"`` or none available.

        Raises:
            ValueError: ``mode`` is ``"on"`` but no window can be shown.
        """
        if mode == "off":
            return None
        problem = None
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            problem = "no display (DISPLAY is not set)"
        else:
            try:
                return cls()
            except cv2.error:
                problem = "this OpenCV has no GUI (opencv-python-headless); install opencv-python"
        if mode == "on":
            raise ValueError(
                f"cannot show a window: {problem}; use --preview PORT to watch in a browser"
            )
        log.debug("no on-screen window: %s", problem)
        return None

    def show(self, image: np.ndarray) -> bool:
        """Shows a frame; False when the user pressed q or Esc."""
        cv2.imshow(self.WINDOW, image)
        return (cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)

    def close(self) -> None:
        """Closes the window."""
        cv2.destroyWindow(self.WINDOW)
