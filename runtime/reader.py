"""Where frames come from: cameras, video files, RTSP/HTTP streams, image folders, picamera2.

A *capture* reads frames one by one and blocks; a :class:`FrameSource` runs one on
its own thread so that decoding overlaps inference:

* live sources (camera, stream, picamera2) keep only the latest frame: a frame not
  taken before the next one arrives is dropped and counted, so latency stays bounded
  when inference is slower than the camera.  A lost source is reopened with
  exponential backoff, each attempt logged, and the stream carries on.
* files and folders are not live: every frame is annotated, through a small queue.

With a ``prepare`` function (the annotator's preprocessing: resize, colour order,
quantization), the capture thread also turns each frame into the model's input, so
the consumer only runs the model.  One exception keeps both cores busy: when the
consumer is the side that waits (decoding is the bottleneck: a light model and a big
video, or a camera slower than inference), the idle consumer preprocesses instead and
the capture thread only decodes.  The pipeline decides from the waits it sees: the
capture thread waiting on a full queue, or a live frame dropped, means the consumer
is the bottleneck; the consumer finding no frame means the capture side is.

Empty or unreadable frames are skipped and counted.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import cv2
import numpy as np

from fuselite.runtime.affinity import pin_thread
from fuselite.runtime.preprocess import frame_problem
from fuselite.runtime.sources import Capture, SourceError, capture_for

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Frame", "FrameSource", "SourceCounters", "SourceError", "capture_for"]

log = logging.getLogger(__name__)

QUEUE_SIZE = 4
NO_PIXELS = np.zeros((0, 0, 3), np.uint8)  # stands for a frame's image once no output needs it
POLL_SECONDS = 0.1
# How soon a capture thread waiting on a full queue first looks for room again (then
# ever less often, up to POLL_SECONDS): well under the time QUEUE_SIZE frames take to
# infer, so the queue never runs dry.
FULL_QUEUE_POLL_SECONDS = 0.004
BALANCE_LIMIT = 8  # how many waits of one side outweigh the other's, to avoid flapping
# The capture and outputs threads keep the inference thread's priority: a nicer helper
# starved the pipeline on a busy board (the capture thread waited 24x its run time,
# the outputs thread 110x; docs/runtime.md, "On a busy board").


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
        cpu_s: CPU seconds of the capture thread so far (decoder threads that the
            capture library runs on its own are not included).
    """

    read: int = 0
    dropped: int = 0
    skipped: int = 0
    reconnects: int = 0
    cpu_s: float = 0.0


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
        threaded: bool = True,
    ) -> None:
        self.capture = capture
        # False: no capture thread; next_frame() reads in the caller's thread (files and
        # folders only: a live source must be drained while the consumer works).
        self.threaded = threaded or capture.live
        self.drop_stale = capture.live if drop_stale is None else drop_stale
        self.loop = loop
        self.reconnect_delay = reconnect_delay
        self.reconnect_max_delay = max(reconnect_delay, reconnect_max_delay)
        self.prepare = prepare
        # Whether frames keep their pixels once the model input is made (outputs that
        # draw need them); the loop sets it once it knows its outputs.
        self.keep_pixels = True
        # Cores the capture thread is confined to (None: any); set before start().
        self.helper_cores: frozenset[int] | None = None
        # Frames a file or folder source keeps ready, and how soon its capture thread,
        # waiting on a full queue, first looks for room again.  A consumer serving several
        # cameras takes each one's frames less often: it scales both (see share_consumer).
        self.queue_size = QUEUE_SIZE
        self.full_queue_poll = FULL_QUEUE_POLL_SECONDS
        # Called (on the capture thread) after each frame delivered and when the source
        # ends: a consumer of several sources waits on one event instead of polling each.
        self.on_frame: Callable[[], None] | None = None
        # > 0: the consumer is the bottleneck, so the capture thread preprocesses (the
        # starting assumption: inference is the slow stage on a board).
        self._balance = 1
        self.counters = SourceCounters()
        self._frames: collections.deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self._ended = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._index = 0
        self._start = time.monotonic()

    def share_consumer(self, sources: int) -> None:
        """Tells a file or folder source that its consumer takes turns among ``sources``
        sources: its queue and its full-queue poll grow that many times, so its capture
        thread still decodes several frames per wake-up instead of about one (each wake-up
        takes the interpreter lock from the others).  Live sources keep their latest frame
        only, and frames that keep their pixels (for a video or a preview) would hold that
        much more memory: both are left as they are.  Call after setting
        :attr:`keep_pixels`, before :meth:`start`."""
        if not self.live and not self.drop_stale and not self.keep_pixels:
            self.queue_size = QUEUE_SIZE * max(1, sources)
            self.full_queue_poll = FULL_QUEUE_POLL_SECONDS * max(1, sources)

    @property
    def preprocessing_ahead(self) -> bool:
        """Whether the capture thread currently preprocesses the frames it delivers."""
        return self.prepare is not None and self._balance > 0

    @property
    def live(self) -> bool:
        """Whether the source is a live one (camera or stream)."""
        return self.capture.live

    @property
    def fps(self) -> float | None:
        """The frame rate the source announces, if any."""
        return self.capture.fps

    def start(self) -> FrameSource:
        """Opens the capture and starts the thread.

        A file or folder that cannot be opened raises :class:`SourceError` at once; a
        live source that cannot be opened yet is retried in the background.
        """
        opened = self._try_open(first=True)
        if not opened and not self.live:
            raise SourceError(f"cannot open {self.capture.name}")
        self._start = time.monotonic()
        if not self.threaded:
            return self
        self._thread = threading.Thread(
            target=self._run, args=(opened,), name="capture", daemon=True
        )
        self._thread.start()
        return self

    @property
    def waiting(self) -> bool:
        """Whether a frame is ready, so :meth:`next_frame` would return it at once."""
        return bool(self._frames)

    @property
    def ended(self) -> bool:
        """Whether no frame will ever come again (the source ended or was closed)."""
        return (self._ended or self._closed.is_set()) and not self._frames

    def next_frame(
        self, stop: threading.Event | None = None, timeout: float | None = None
    ) -> Frame | None:
        """Waits for the next frame.

        Returns ``None`` once the source has ended or closed, when ``stop`` is set, or
        after ``timeout`` seconds without a frame (check :attr:`ended` to tell apart).
        """
        if not self.threaded:
            return self._read_inline(stop)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if not self._frames:
                self._lean(-1)  # the consumer waits: it has time to preprocess
            while True:
                if self._frames:
                    # No wake-up for a capture thread waiting on a full queue: it looks
                    # again every FULL_QUEUE_POLL_SECONDS, which spares this thread, the
                    # bottleneck, a system call per frame (see handoff.py).
                    return self._frames.popleft()
                if self._error is not None:
                    raise self._error
                if self._ended or self._closed.is_set() or (stop is not None and stop.is_set()):
                    return None
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                self._cond.wait(POLL_SECONDS)

    def close(self, timeout: float = 2.0) -> None:
        """Stops the thread and releases the capture (from the thread, which owns it)."""
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
        if not self.threaded:
            self.capture.release()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.debug("capture thread still blocked in a read; it stops with the process")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- capture thread ---------------------------------------------------------

    def _run(self, opened: bool) -> None:
        if self.helper_cores:
            pin_thread(self.helper_cores)
        try:
            if not opened and not self._reconnect():
                return
            while not self._closed.is_set():
                if not self._read_one() and not self._recover():
                    return
        except BaseException as exc:  # noqa: BLE001 - a bug: re-raised on the consumer's thread
            with self._cond:
                self._error = exc
        finally:
            self.capture.release()
            with self._cond:
                self._ended = True
                self._cond.notify_all()
            if self.on_frame is not None:
                self.on_frame()

    def _read_one(self) -> bool:
        """Reads and delivers one frame; False when the capture is lost or ended."""
        ok, frame = self._read_frame()
        if frame is not None:
            frame = self._prepared(frame)
        if frame is not None:
            self._deliver(frame)
        self.counters.cpu_s = time.thread_time()
        return ok

    def _read_frame(self) -> tuple[bool, Frame | None]:
        """Reads one frame: ``(False, None)`` when the capture is lost or ended, and
        ``(True, None)`` for a frame skipped as empty or corrupt."""
        start = time.perf_counter()
        ok, image, media_ms, name = self.capture.read()
        capture_ms = (time.perf_counter() - start) * 1000.0
        if not ok:
            return False, None
        index, self._index = self._index, self._index + 1
        problem = frame_problem(image) if image is not None else "unreadable frame"
        if problem:
            self.counters.skipped += 1
            log.debug("%s: skipping frame %d: %s", self.capture.name, index, problem)
            return True, None
        self.counters.read += 1
        timestamp_ms = (
            media_ms if media_ms is not None else (time.monotonic() - self._start) * 1000.0
        )
        return True, Frame(image, index, timestamp_ms, time.time(), capture_ms, name)

    def _read_inline(self, stop: threading.Event | None) -> Frame | None:
        """The next frame, read in the caller's thread (a source without a capture thread).

        The caller preprocesses it (``model_input`` stays ``None``): with one thread
        there is nothing to overlap.
        """
        while not (self._ended or self._closed.is_set() or (stop is not None and stop.is_set())):
            ok, frame = self._read_frame()
            if frame is not None:
                return frame
            if not ok and not self._recover():
                self._ended = True
        return None

    def _lean(self, step: int) -> None:
        self._balance = max(-BALANCE_LIMIT, min(BALANCE_LIMIT, self._balance + step))

    def _prepared(self, frame: Frame) -> Frame | None:
        if not self.preprocessing_ahead:
            return frame
        start = time.perf_counter()
        try:
            model_input = self.prepare(frame.image)
        except ValueError as exc:
            self.counters.skipped += 1
            log.debug("%s: skipping frame %d: %s", self.capture.name, frame.index, exc)
            return None
        preprocess_ms = (time.perf_counter() - start) * 1000.0
        image = frame.image if self.keep_pixels else NO_PIXELS
        return replace(frame, image=image, model_input=model_input, preprocess_ms=preprocess_ms)

    def _deliver(self, frame: Frame) -> None:
        with self._cond:
            if self.drop_stale:
                if self._frames:
                    self._lean(+1)  # the consumer did not take the last one: it is the bottleneck
                    self.counters.dropped += len(self._frames)
                    self._frames.clear()
            else:
                if len(self._frames) >= self.queue_size:
                    self._lean(+1)  # the capture thread waits: it has time to preprocess
                wait = self.full_queue_poll
                while len(self._frames) >= self.queue_size and not self._closed.is_set():
                    self._cond.wait(wait)
                    # A slow model (a board) frees room rarely: look less often.
                    wait = min(wait * 2, POLL_SECONDS)
            self._frames.append(frame)
            self._cond.notify_all()
        if self.on_frame is not None:
            self.on_frame()

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
