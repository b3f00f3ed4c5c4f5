"""Captures: blocking frame readers for cameras, files, streams, folders and picamera2.

A capture reads one frame at a time and blocks; :class:`fuselite.runtime.reader.FrameSource`
runs one on its own thread.  :func:`capture_for` turns a ``--source`` value into one.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from fuselite.images import read_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")
PICAMERA2_HINT = (
    "picamera2 is not importable: on Raspberry Pi OS run `sudo apt install python3-picamera2` "
    "and create the venv with --system-site-packages"
)


class SourceError(ValueError):
    """A source that cannot be opened or understood; the message says what to change."""


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

    def __init__(
        self, target: int | str, live: bool, timeout_s: float = 5.0, decode_threads: int = 0
    ) -> None:
        self.target = target
        self.live = live
        self.timeout_ms = int(timeout_s * 1000)
        self.decode_threads = decode_threads
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
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            self.timeout_ms,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            self.timeout_ms,
        ]
        if self.decode_threads:
            # FFmpeg's default, one decoder thread per core, takes turns with the
            # interpreter's threads on a small board; fewer decoder threads leave it its cores.
            params += [cv2.CAP_PROP_N_THREADS, self.decode_threads]
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
    """The images of a folder, in name order; unreadable files count as skipped frames.

    Files are read through :func:`fuselite.images.read_image`: an image over
    ``fuselite.images.MAX_IMAGE_PIXELS``, a FIFO or a truncated JPEG is a skipped frame.
    """

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
            raise SourceError(
                f"{self.folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        self._position = 0

    def read(self) -> tuple[bool, np.ndarray | None, float | None, str | None]:
        """Reads the next image (see :class:`Capture`)."""
        if self._position >= len(self._files):
            return False, None, None, None
        path = self._files[self._position]
        self._position += 1
        # The same checks as training's reader: regular files only (a FIFO would block
        # here), the pixel count under the cap before decoding, JPEGs not cut short.
        image = read_image(path)
        if isinstance(image, str):
            log.warning("skipping %s: %s", path, image)
            return True, None, None, path.name
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
        camera.configure(
            camera.create_video_configuration(main={"size": self.size, "format": "RGB888"})
        )
        camera.start()
        self._camera = camera

    def read(self) -> tuple[bool, np.ndarray | None, float | None, str | None]:
        """Captures the next frame (see :class:`Capture`)."""
        try:
            image = self._camera.capture_array("main")
        except Exception as exc:  # noqa: BLE001 - libcamera raises many kinds; all mean "lost"
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


def capture_for(spec: str, stream_timeout: float = 5.0, decode_threads: int = 0) -> Capture:
    """Chooses the capture for a ``--source`` value.

    ``0``/``1``... is a V4L2 camera; ``picamera2`` (or ``picamera2:1280x720``) the Pi
    camera; ``camera`` the Pi camera when picamera2 imports, else camera 0; a URL a
    stream; a folder its images; any other existing path a video file.  Streams and
    files are decoded by FFmpeg with ``decode_threads`` threads (0: FFmpeg's choice).
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
        return OpenCVCapture(spec, live=True, timeout_s=stream_timeout, decode_threads=decode_threads)
    path = Path(spec)
    if path.is_dir():
        return FolderCapture(path)
    if path.is_file():
        return OpenCVCapture(
            str(path), live=False, timeout_s=stream_timeout, decode_threads=decode_threads
        )
    raise SourceError(
        f"source {spec!r} is not a camera index, 'picamera2', a URL, a folder or an existing file"
    )
