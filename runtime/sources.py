"""Where frames come from: cameras, video files, RTSP/HTTP streams, image folders, picamera2.

A *capture* reads frames one by one and blocks; a :class:`FrameSource` runs one on
its own thread so that decoding overlaps inference:

* live sources (camera, stream, picamera2) keep only the latest frame: a frame not
  taken before the next one arrives is dropped and counted, so latency stays bounded
  when inference is slower than the camera.  A lost source is reopened with
  exponential backoff, each attempt logged, and the stream carries on.
* files and folders are not live: every frame is annotated, through a small queue
  that also lets the capture thread preprocess ahead.

Empty or unreadable frames are skipped and counted.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Protocol

import cv2
import numpy as np

from fuselite.runtime.preprocess import frame_problem

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")
QUEUE_SIZE = 4
POLL_SECONDS = 0.1
PICAMERA2_HINT = (
    "picamera2 is not importable: on Raspberry Pi OS run `sudo apt install python3-picamera2` "
    "and create the venv with --system-site-packages"
)


class SourceError(ValueError):
    """A source that cannot be opened or understood; the message says what to change."""


@dataclass(frozen=True)
class Frame:
    """One captured frame.

    Attributes:
        image: BGR uint8 pixels.
        index: Position in the source, counting dropped and skipped frames.
        timestamp_ms: Media time for files, milliseconds since the start for live sources.
        wall_time: Unix time when the frame was read.
        capture_ms: Time spent reading (decoding) the frame.
        name: File name for folder sources, else ``None``.
        model_input: The annotator's input when the capture thread preprocessed it.
        preprocess_ms: Time that preprocessing took on the capture thread.
    """

    image: np.ndarray
    index: int
    timestamp_ms: float
    wall_time: float
    capture_ms: float
    name: str | None = None
    model_input: np.ndarray | None = None
    preprocess_ms: float = 0.0


@dataclass
class SourceCounters:
    """Running totals kept by the capture thread.

    Attributes:
        read: Frames read successfully.
        dropped: Live frames replaced by a newer one before they were annotated.
        skipped: Empty, corrupt or unreadable frames.
        reconnects: Successful reopenings after the source was lost.
    """

    read: int = 0
    dropped: int = 0
    skipped: int = 0
    reconnects: int = 0


class Capture(Protocol):
    """A blocking frame reader that a :class:`FrameSource` drives."""

    name: str
    live: bool
    fps: float | None

    def open(self) -> None:
        """Opens the device or file; raises :class:`SourceError` or ``OSError`` on failure."""

    def read(self) -> tuple[bool, np.ndarray | None, float | None, str | None]:
        """Returns ``(ok, image, media_ms, name)``; ``ok`` False means lost or ended.

        ``ok`` with ``image`` None means a frame was there but unreadable.
        """

    def release(self) -> None:
        """Closes the device or file."""


class OpenCVCapture:
    """A V4L2 camera, a video file, or an RTSP/HTTP stream read by OpenCV's FFmpeg."""

    def __init__(self, target: int | str, live: bool, timeout_s: float = 5.0) -> None:
        self.target = target
        self.live = live
        self.timeout_ms = int(timeout_s * 1000)
        self.name = f"camera {target}" if isinstance(target, int) else str(target)
        self.fps: float | None = None
        self._capture = None

    def open(self) -> None:
        """Opens the capture; raises :class:`SourceError` when OpenCV cannot."""
        capture = self._new_capture()
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"cannot open {self.name}")
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0 < fps <= 1000 else None
        self._capture = capture

    def _new_capture(self):
        if isinstance(self.target, int):
            backend = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
            return cv2.VideoCapture(self.target, backend)
        if self.target.startswith(("rtsp://", "rtsps://")):
            # TCP survives loopback and Wi-Fi far better than RTP over UDP.
            os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.timeout_ms]
        return cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, params)

    def read(self) -> tuple[bool, np.ndarray | None, float | None, str | None]:
        """Reads the next frame (see :class:`Capture`)."""
        ok, image = self._capture.read()
        if not ok:
            return False, None, None, None
        media_ms = None if self.live else self._capture.get(cv2.CAP_PROP_POS_MSEC)
        return True, image, media_ms, None

    def release(self) -> None:
        """Releases the OpenCV capture."""
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class FolderCapture:
    """The images of a folder, in name order; unreadable files count as skipped frames."""

    live = False
    fps = None

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.name = str(folder)
        self._files: list[Path] = []
        self._position = 0

    def open(self) -> None:
        """Lists the folder's images; raises :class:`SourceError` when there are none."""
        self._files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise SourceError(f"{self.folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self._position = 0

    def read(self) -> tuple[bool, np.ndarray | None, float | None, str | None]:
        """Reads the next image (see :class:`Capture`)."""
        if self._position >= len(self._files):
            return False, None, None, None
        path = self._files[self._position]
        self._position += 1
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            log.warning("skipping %s: not a readable image", path)
        return True, image, None, path.name

    def release(self) -> None:
        """Nothing to release; the list is rebuilt on the next open."""


class Picamera2Capture:
    """The Raspberry Pi camera through picamera2 (libcamera)."""

    live = True
    fps = None

    def __init__(self, size: tuple[int, int] = (640, 480)) -> None:
        self.size = size
        self.name = "picamera2"
        self._camera = None

    def open(self) -> None:
        """Starts the camera; raises :class:`SourceError` when picamera2 is missing."""
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise SourceError(PICAMERA2_HINT) from None
        camera = Picamera2()
        # "RGB888" is stored B, G, R in memory: exactly OpenCV's BGR.
        camera.configure(camera.create_video_configuration(main={"size": self.size, "format": "RGB888"}))
        camera.start()
        self._camera = camera

    def read(self) -> tuple[bool, np.ndarray | None, float | None, str | None]:
        """Captures the next frame (see :class:`Capture`)."""
        try:
            image = self._camera.capture_array("main")
        except Exception as exc:  # the camera library raises many kinds; all mean "lost"
            log.warning("picamera2: %s", exc)
            return False, None, None, None
        return True, np.ascontiguousarray(image[..., :3]), None, None

    def release(self) -> None:
        """Stops and closes the camera."""
        if self._camera is not None:
            try:
                self._camera.stop()
                self._camera.close()
            finally:
                self._camera = None


def picamera2_available() -> bool:
    """Whether picamera2 can be imported (a Raspberry Pi with the camera stack)."""
    try:
        import picamera2  # noqa: F401
    except ImportError:
        return False
    return True


def capture_for(spec: str, stream_timeout: float = 5.0) -> Capture:
    """Chooses the capture for a ``--source`` value.

    ``0``/``1``... is a V4L2 camera; ``picamera2`` (or ``picamera2:1280x720``) the Pi
    camera; ``camera`` the Pi camera when picamera2 imports, else camera 0; a URL a
    stream; a folder its images; any other existing path a video file.
    """
    spec = str(spec).strip()
    if spec.isdigit():
        return OpenCVCapture(int(spec), live=True)
    if spec == "camera":
        return Picamera2Capture() if picamera2_available() else OpenCVCapture(0, live=True)
    match = re.fullmatch(r"picamera2(?::(\d+)x(\d+))?", spec)
    if match:
        if not picamera2_available():
            raise SourceError(PICAMERA2_HINT)
        size = (int(match[1]), int(match[2])) if match[1] else (640, 480)
        return Picamera2Capture(size)
    if spec.lower().startswith(STREAM_SCHEMES):
        return OpenCVCapture(spec, live=True, timeout_s=stream_timeout)
    path = Path(spec)
    if path.is_dir():
        return FolderCapture(path)
    if path.is_file():
        return OpenCVCapture(str(path), live=False, timeout_s=stream_timeout)
    raise SourceError(
        f"source {spec!r} is not a camera index, 'picamera2', a URL, a folder or an existing file"
    )


class FrameSource:
    """Runs a capture on its own thread and hands frames to one consumer.

    Example:
        >>> with FrameSource(capture_for("clip.mp4")) as source:
        ...     while (frame := source.next_frame(stop_event)) is not None:
        ...         handle(frame)
    """

    def __init__(
        self,
        capture: Capture,
        *,
        drop_stale: bool | None = None,
        loop: bool = False,
        reconnect_delay: float = 0.5,
        reconnect_max_delay: float = 10.0,
        prepare: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.capture = capture
        self.drop_stale = capture.live if drop_stale is None else drop_stale
        self.loop = loop
        self.reconnect_delay = reconnect_delay
        self.reconnect_max_delay = max(reconnect_delay, reconnect_max_delay)
        # Preprocessing ahead only pays when every frame is annotated.
        self.prepare = None if self.drop_stale else prepare
        self.counters = SourceCounters()
        self._frames: collections.deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self._ended = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._index = 0
        self._start = time.monotonic()

    @property
    def live(self) -> bool:
        """Whether the source is a live one (camera or stream)."""
        return self.capture.live

    @property
    def fps(self) -> float | None:
        """The frame rate the source announces, if any."""
        return self.capture.fps

    def start(self) -> "FrameSource":
        """Opens the capture and starts the thread.

        A file or folder that cannot be opened raises :class:`SourceError` at once; a
        live source that cannot be opened yet is retried in the background.
        """
        opened = self._try_open(first=True)
        if not opened and not self.live:
            raise SourceError(f"cannot open {self.capture.name}")
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(opened,), name="capture", daemon=True)
        self._thread.start()
        return self

    def next_frame(self, stop: threading.Event | None = None) -> Frame | None:
        """Waits for the next frame; ``None`` once the source ended, closed or ``stop`` is set."""
        with self._cond:
            while True:
                if self._frames:
                    frame = self._frames.popleft()
                    self._cond.notify_all()
                    return frame
                if self._error is not None:
                    raise self._error
                if self._ended or self._closed.is_set() or (stop is not None and stop.is_set()):
                    return None
                self._cond.wait(POLL_SECONDS)

    def close(self, timeout: float = 2.0) -> None:
        """Stops the thread and releases the capture (from the thread, which owns it)."""
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.debug("capture thread still blocked in a read; it stops with the process")

    def __enter__(self) -> "FrameSource":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- capture thread ---------------------------------------------------------

    def _run(self, opened: bool) -> None:
        try:
            if not opened and not self._reconnect():
                return
            while not self._closed.is_set():
                if not self._read_one() and not self._recover():
                    return
        except BaseException as exc:  # a bug: surface it on the consumer's thread
            with self._cond:
                self._error = exc
        finally:
            self.capture.release()
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def _read_one(self) -> bool:
        """Reads and delivers one frame; False when the capture is lost or ended."""
        start = time.perf_counter()
        ok, image, media_ms, name = self.capture.read()
        capture_ms = (time.perf_counter() - start) * 1000.0
        if not ok:
            return False
        index, self._index = self._index, self._index + 1
        problem = frame_problem(image) if image is not None else "unreadable frame"
        if problem:
            self.counters.skipped += 1
            log.debug("%s: skipping frame %d: %s", self.capture.name, index, problem)
            return True
        self.counters.read += 1
        timestamp_ms = media_ms if media_ms is not None else (time.monotonic() - self._start) * 1000.0
        frame = Frame(image, index, timestamp_ms, time.time(), capture_ms, name)
        frame = self._prepared(frame)
        if frame is not None:
            self._deliver(frame)
        return True

    def _prepared(self, frame: Frame) -> Frame | None:
        if self.prepare is None:
            return frame
        start = time.perf_counter()
        try:
            model_input = self.prepare(frame.image)
        except ValueError as exc:
            self.counters.skipped += 1
            log.debug("%s: skipping frame %d: %s", self.capture.name, frame.index, exc)
            return None
        preprocess_ms = (time.perf_counter() - start) * 1000.0
        return replace(frame, model_input=model_input, preprocess_ms=preprocess_ms)

    def _deliver(self, frame: Frame) -> None:
        with self._cond:
            if self.drop_stale:
                self.counters.dropped += len(self._frames)
                self._frames.clear()
            else:
                while len(self._frames) >= QUEUE_SIZE and not self._closed.is_set():
                    self._cond.wait(POLL_SECONDS)
            self._frames.append(frame)
            self._cond.notify_all()

    def _recover(self) -> bool:
        """After a failed read: reconnect a live source, rewind a looping file, or end."""
        self.capture.release()
        if self.live:
            log.warning("%s: lost the stream", self.capture.name)
            return self._reconnect()
        if self.loop and self.counters.read and self._try_open():
            log.debug("%s: replaying from the start", self.capture.name)
            return True
        log.info("%s: end of source", self.capture.name)
        return False

    def _reconnect(self) -> bool:
        """Reopens a live source with exponential backoff until it works or we close."""
        delay, attempt = self.reconnect_delay, 0
        while not self._closed.is_set():
            attempt += 1
            log.warning("%s: reconnect attempt %d in %.1f s", self.capture.name, attempt, delay)
            if self._closed.wait(delay):
                return False
            if self._try_open():
                self.counters.reconnects += 1
                log.warning("%s: reconnected after %d attempt(s)", self.capture.name, attempt)
                return True
            delay = min(delay * 2, self.reconnect_max_delay)
        return False

    def _try_open(self, first: bool = False) -> bool:
        try:
            self.capture.open()
        except (SourceError, OSError, cv2.error) as exc:
            if first and not self.live:
                raise SourceError(str(exc)) from None
            log.log(logging.WARNING if first else logging.DEBUG, "%s: %s", self.capture.name, exc)
            return False
        return True
