"""Resize at decode time: FFmpeg decodes a file or stream and scales it to the model's size.

A headless run (events to a file or MQTT, no video, preview or window) never looks at
the full picture: it needs the model's input.  OpenCV's capture converts every
decoded 640x480 frame to BGR, then the preprocessor resizes it; FFmpeg can scale in
its converter instead, from the decoder's own YUV planes, so only the model's
pixels are ever made.  Measured on a 640x480 H.264 clip (2-core Xeon): decoding plus
resizing cost 1.29-1.48 ms of CPU per frame through OpenCV, and 0.90-0.92 ms through an
``ffmpeg`` process scaling to 64x64, the child's CPU included (1.71-1.84 against
1.42-1.53 ms to 224x224; docs/runtime.md).

The frames arrive as raw BGR on a pipe from ``ffmpeg`` (Debian's package; on a
Raspberry Pi ``sudo apt install ffmpeg``).  The scaler uses the manifest's resize
method (``area`` or ``bilinear``) with full-resolution chroma, so the model sees what
the preprocessor would have made to within about one grey level on average.  :func:`decode_scaling` chooses it for a run; the
capture is :class:`ScaledCapture`.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass

import cv2
import numpy as np

from fuselite.runtime.sources import STREAM_SCHEMES, SourceError, capture_for
from fuselite.runtime.stats import child_ending, child_started

log = logging.getLogger(__name__)

# The manifest's resize method -> FFmpeg's scaler (libswscale) flag.
SCALER_FLAGS = {"area": "area", "linear": "bilinear"}
# Chroma interpolated at full resolution and exact rounding: without them the scaled
# pixels differed from OpenCV's decode-then-resize by 8.4 levels on average (64x64
# area from a 640x480 clip), with them by 0.85, for 7% more of the scaler's CPU.
SCALER_EXACTNESS = "+accurate_rnd+full_chroma_int"
STOP_TIMEOUT_S = 2.0
ERROR_TAIL_BYTES = 2000


@dataclass(frozen=True)
class DecodeSize:
    """The picture the model takes: FFmpeg scales every frame to it.

    Attributes:
        width: Model input width in pixels.
        height: Model input height in pixels.
        resize: The manifest's resize method, ``"area"`` or ``"linear"``.
    """

    width: int
    height: int
    resize: str

    @property
    def text(self) -> str:
        """E.g. ``64x64 (area)``."""
        return f"{self.width}x{self.height} ({self.resize})"


def decode_size(manifest) -> DecodeSize:
    """The :class:`DecodeSize` a bundle's manifest asks for (its input size and resize)."""
    height, width = manifest.preprocessing.input_size
    return DecodeSize(int(width), int(height), manifest.preprocessing.resize)


def ffmpeg_path() -> str | None:
    """The ``ffmpeg`` program on ``PATH``, or None."""
    return shutil.which("ffmpeg")


def scalable_source(spec: str) -> bool:
    """Whether FFmpeg can read ``spec`` here: a stream URL or a video file.

    Camera indices, ``picamera2`` and folders of pictures keep their own captures.
    """
    spec = str(spec).strip()
    if spec.lower().startswith(STREAM_SCHEMES):
        return True
    return os.path.isfile(spec)


def decode_scaling(
    mode: str, source: str, full_frames: str | None, resize: str = "area"
) -> str | None:
    """Why FFmpeg cannot scale this run's frames, or None when it will.

    ``mode`` is ``--decode-resize``: ``"off"`` never, ``"auto"`` whenever it can, and
    ``"ffmpeg"`` always (a reason is then an error the caller reports).
    ``full_frames`` names the output that needs whole frames (a video, the preview,
    a window), or None; ``resize`` is the bundle's resize method.
    """
    if mode == "off":
        return "--decode-resize off"
    if full_frames:
        return f"{full_frames} needs whole frames"
    if resize != "area" and mode == "auto":
        # OpenCV's "linear" samples 2x2 pixels however far it shrinks; FFmpeg's bilinear
        # filters properly: 1.9-8.7 grey levels apart on average, so only when asked.
        return f"the bundle resizes {resize!r}, which FFmpeg's scaler does not reproduce"
    if not scalable_source(source):
        return "FFmpeg reads files and stream URLs, not cameras or folders"
    if ffmpeg_path() is None:
        return "ffmpeg is not installed (sudo apt install ffmpeg)"
    return None


def choose_capture(
    source: str,
    mode: str,
    manifest,
    whole_frames: str | None,
    timeout_s: float = 5.0,
    decode_threads: int = 0,
):
    """A run's capture: a :class:`ScaledCapture` at the bundle's input size when
    :func:`decode_scaling` allows it (logged once), else the whole-frame capture
    :func:`fuselite.runtime.sources.capture_for` picks.

    Raises:
        SourceError: ``mode`` is ``"ffmpeg"`` and FFmpeg cannot scale this source.
    """
    source = str(source)
    size = decode_size(manifest)
    reason = decode_scaling(mode, source, whole_frames, size.resize)
    if reason is None:
        log.info("%s: FFmpeg decodes it straight to the model's %s (decode_resize off: whole "
                 "frames through OpenCV)", source, size.text)
        live = source.lower().startswith(STREAM_SCHEMES)
        return ScaledCapture(source, live, size, timeout_s, decode_threads)
    if mode == "ffmpeg":
        raise SourceError(f"--decode-resize ffmpeg: {reason}")
    log.debug("%s: decoding whole frames: %s", source, reason)
    return capture_for(source, timeout_s, decode_threads)


class ScaledCapture:
    """A file or stream decoded by an ``ffmpeg`` process at the model's size.

    The same contract as the other captures (:class:`fuselite.runtime.sources.Capture`):
    :meth:`open` raises :class:`SourceError` when FFmpeg cannot read the source,
    :meth:`read` returns ``(False, ...)`` when it ends or stalls for ``timeout_s``.
    """

    def __init__(
        self,
        target: str,
        live: bool,
        size: DecodeSize,
        timeout_s: float = 5.0,
        decode_threads: int = 0,
    ) -> None:
        self.target = str(target)
        self.live = live
        self.size = size
        self.timeout_s = timeout_s
        self.decode_threads = decode_threads
        self.name = self.target
        self.fps: float | None = None
        self._process: subprocess.Popen | None = None
        self._errors = None
        self._index = 0
        self._first: np.ndarray | None = None

    def command(self) -> list[str]:
        """The ``ffmpeg`` command line that decodes and scales the source."""
        command = [ffmpeg_path() or "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin"]
        if self.target.lower().startswith(("rtsp://", "rtsps://")):
            # TCP survives loopback and Wi-Fi far better than RTP over UDP; the socket
            # timeout (microseconds) ends a dead connection instead of hanging.
            command += ["-rtsp_transport", "tcp", "-timeout", str(int(self.timeout_s * 1e6))]
        elif self.live:
            command += ["-rw_timeout", str(int(self.timeout_s * 1e6))]
        flags = SCALER_FLAGS[self.size.resize] + SCALER_EXACTNESS
        scale = f"scale={self.size.width}:{self.size.height}:flags={flags}"
        return command + [
            "-threads", str(self.decode_threads), "-i", self.target, "-an", "-sn", "-dn",
            "-vf", scale, "-fps_mode", "passthrough",  # every decoded frame, none repeated
            "-pix_fmt", "bgr24", "-f", "rawvideo", "pipe:1",
        ]  # fmt: skip

    def open(self) -> None:
        """Starts ``ffmpeg`` and waits for its first frame; raises :class:`SourceError`
        with FFmpeg's own reason when none comes."""
        self.release()
        if not self.live:
            self.fps = _file_fps(self.target)
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed by release(); a pipe left unread could block ffmpeg
        self._process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=self._errors, bufsize=0,
        )  # fmt: skip
        child_started(self._process.pid)
        self._index = 0
        first = self._read_image()
        if first is None:
            reason = self._ffmpeg_error() or "no frame"
            self.release()
            raise SourceError(f"cannot open {self.name} with ffmpeg: {reason}")
        self._first = first

    def read(self) -> tuple[bool, np.ndarray | None, float | None, str | None]:
        """Reads the next frame (see :class:`fuselite.runtime.sources.Capture`)."""
        image, self._first = (self._first, None) if self._first is not None else (None, None)
        if image is None and self._process is not None:
            image = self._read_image()
        if image is None:
            reason = self._ffmpeg_error()
            if reason:
                log.warning("%s: ffmpeg: %s", self.name, reason)
            return False, None, None, None
        media_ms = None if self.live or not self.fps else self._index * 1000.0 / self.fps
        self._index += 1
        return True, image, media_ms, None

    def release(self) -> None:
        """Stops ``ffmpeg`` and closes its pipes."""
        process, self._process = self._process, None
        self._first = None
        if process is not None:
            _kill_keeping_final_cpu(process)
            process.stdout.close()
            process.wait(STOP_TIMEOUT_S)
        if self._errors is not None:
            self._errors.close()
            self._errors = None

    def _read_image(self) -> np.ndarray | None:
        """One whole frame from the pipe, or None at its end or after ``timeout_s`` of silence."""
        image = np.empty((self.size.height, self.size.width, 3), np.uint8)
        view, got = memoryview(image).cast("B"), 0
        pipe = self._process.stdout
        while got < len(view):
            ready, _, _ = select.select([pipe], [], [], self.timeout_s)
            if not ready:
                log.warning("%s: no frame from ffmpeg for %g s", self.name, self.timeout_s)
                return None
            count = pipe.readinto(view[got:])
            if not count:
                return None
            got += count
        return image

    def _ffmpeg_error(self) -> str:
        """The last line FFmpeg wrote to its error output, if any."""
        if self._errors is None:
            return ""
        self._errors.seek(0, os.SEEK_END)
        self._errors.seek(max(0, self._errors.tell() - ERROR_TAIL_BYTES))
        lines = self._errors.read().decode(errors="replace").strip().splitlines()
        return lines[-1].strip() if lines else ""


def _file_fps(path: str) -> float | None:
    """A video file's frame rate, for media timestamps (OpenCV reads the container's)."""
    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    try:
        fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0.0
    finally:
        capture.release()
    return fps if 0 < fps <= 1000 else None


def _kill_keeping_final_cpu(process: subprocess.Popen) -> None:
    """Kills ``ffmpeg`` and waits for it to exit without reaping it, so its final CPU time
    is read for the run's CPU per frame (:func:`fuselite.runtime.stats.child_ending`).

    ``os.kill``, not ``Popen.kill``: the latter first polls, which reaps a child that
    already ended at the end of its file, and its CPU time with it.  Until reaped its
    pid cannot be reused, so the signal cannot reach another process.
    """
    try:
        os.kill(process.pid, signal.SIGKILL)
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
    except (AttributeError, ChildProcessError, OSError):
        process.kill()  # no waitid here, or already reaped: its CPU is then left out
    child_ending(process.pid)
