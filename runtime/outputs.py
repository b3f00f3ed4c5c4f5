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
import sys
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
    """Writes one JSON object per line to a file or stdout (``"-"``), flushing each line."""

    def __init__(self, target: str | Path) -> None:
        self.target = str(target)
        self.closed = False
        if self.target == "-":
            self._stream: IO[str] = sys.stdout
        else:
            Path(self.target).parent.mkdir(parents=True, exist_ok=True)
            self._stream = open(self.target, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: dict[str, Any]) -> bool:
        """Writes one record; False once the reader has gone away (a closed pipe)."""
        if self.closed:
            return False
        try:
            self._stream.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._stream.flush()
        except BrokenPipeError:
            log.warning("the reader of the JSONL events went away; stopping")
            self._silence_stdout()
            self.closed = True
            return False
        return True

    def close(self) -> None:
        """Flushes, and closes a file (never stdout)."""
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
    """Writes annotated frames to a video, renamed into place on :meth:`close`.

    The writer opens on the first frame (its size sets the video's); later frames of
    another size are resized to it.
    """

    def __init__(self, path: str | Path, fps: float | None) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in FOURCC:
            raise ValueError(
                f"video output {self.path} must end in one of {', '.join(sorted(FOURCC))}"
            )
        self.fps = fps if fps and 1 <= fps <= 240 else DEFAULT_VIDEO_FPS
        self.partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.frames = 0
        self._writer = None
        self._size: tuple[int, int] | None = None

    def write(self, image: np.ndarray) -> None:
        """Appends one BGR frame."""
        if self._writer is None:
            self._open(image)
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(image)
        self.frames += 1

    def _open(self, image: np.ndarray) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._size = (image.shape[1], image.shape[0])
        fourcc = cv2.VideoWriter_fourcc(*FOURCC[self.path.suffix.lower()])
        writer = cv2.VideoWriter(str(self.partial), fourcc, self.fps, self._size)
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot write video {self.path}")
        self._writer = writer

    def close(self) -> None:
        """Finishes the file and renames it to its final name (nothing if no frame came)."""
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        os.replace(self.partial, self.path)
        log.info("wrote %d frames to %s", self.frames, self.path)


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
