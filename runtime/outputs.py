"""Where annotations go: JSONL events, an annotated video, the preview, a window, and
:class:`Outputs`, which opens them together and finishes each frame on its own thread.

The video is written under a temporary name beside the target and renamed into
place when it is closed, so a half-written file never sits at the path the user
gave.  JSONL lines are written one by one (one ``write`` each), so ``tail -f`` and
pipes see every event and nothing is lost on SIGTERM; an events file is appended to,
never truncated, so a restarted service keeps what the previous run wrote.

A sink that fails while the run goes on (a full disk, a video that cannot be
opened) does not end the run: its first error is logged as one line, what it could
not write is counted (``sink_errors`` in the stats), and it is retried after a
pause that doubles up to a minute.  Only when no output is left does the run end,
with one line (:class:`OutputsFailed`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from fuselite.errors import UserError
from fuselite.runtime.affinity import pin_thread
from fuselite.runtime.annotator import Annotator
from fuselite.runtime.handoff import POLL_SECONDS, LazyHandoff
from fuselite.runtime.mqtt import MqttPublisher, compact_json
from fuselite.runtime.options import DEFAULT_SEGMENT_MINUTES, RunOptions
from fuselite.runtime.overlay import draw_overlay
from fuselite.runtime.preview import MjpegPreview
from fuselite.runtime.reader import NO_PIXELS, Frame
from fuselite.runtime.results import AnnotationResult, Category
from fuselite.runtime.stats import RunStats, describe

log = logging.getLogger(__name__)

FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
DEFAULT_VIDEO_FPS = 15.0
OUTPUT_QUEUE = 4  # annotated frames waiting for the writer thread (bounds memory and latency)
SINK_RETRY_S = 1.0  # first pause before a failed sink is tried again; it doubles
SINK_RETRY_MAX_S = 60.0  # longest pause between tries of a failed sink


class OutputsFailed(UserError):
    """Every output of the run failed, so annotating on would write nothing."""


def _score(value: float) -> float | None:
    """A score for JSON: rounded, or ``None`` when not finite (NaN is not JSON)."""
    return round(value, 4) if math.isfinite(value) else None


def event_record(
    frame: Frame, result: AnnotationResult, total_ms: float, all_scores: bool = False,
    heatmaps: bool = False,
) -> dict[str, Any]:
    """The JSONL event for one annotated frame.

    ``labels`` holds the reported labels, each with ``point`` and ``box`` when the
    annotator located it (:func:`label_entry`); ``heatmaps`` adds each one's grid.
    ``all_scores`` adds ``scores``, every allowed label's score (formatting 50 of them
    per frame costs CPU, so it is opt-in).
    """
    latency = result.latency
    record = {
        "type": "annotation",
        "frame": frame.index,
        "timestamp_ms": round(frame.timestamp_ms, 3),
        "time": round(frame.wall_time, 3),
        "labels": [label_entry(c, heatmaps) for c in result.categories],
    }
    if all_scores:
        record["scores"] = {label: _score(score) for label, score in result.scores.items()}
    record.update({
        "latency_ms": {
            "capture": round(frame.capture_ms, 3),
            "preprocess": round(latency.preprocess_ms, 3),
            "inference": round(latency.inference_ms, 3),
            "postprocess": round(latency.postprocess_ms, 3),
            "total": round(total_ms, 3),
        },
    })
    if frame.name is not None:
        record["name"] = frame.name
    return record


def label_entry(category: Category, heatmap: bool = False) -> dict[str, Any]:
    """One reported label of an event: ``label``, ``score``, and where it fired.

    ``point`` (normalised ``[x, y]``) and ``box`` (normalised ``[x0, y0, x1, y1]``)
    to 4 decimals (a tenth of a pixel on a 1080p frame), when the annotator gave
    them; ``heatmap`` adds the grid of probabilities, rows first, to 3 decimals.
    """
    entry: dict[str, Any] = {"label": category.label, "score": _score(category.score)}
    if category.peak is not None:  # the annotator rounds them to 4 decimals
        entry["point"] = list(category.peak)
        entry["box"] = list(category.box)
    if heatmap and category.heatmap is not None:
        entry["heatmap"] = np.round(category.heatmap.astype(np.float64), 3).tolist()
    return entry


def to_json_line(record: dict[str, Any]) -> str:
    """One compact JSON line; a non-finite number anywhere becomes ``null``."""
    return compact_json(record) + "\n"


_STDOUT_LOCK = threading.Lock()
# Lines a JSONL writer holds back at most before it writes them (see JsonlWriter.write).
MAX_HELD_LINES = 64


class JsonlWriter:
    """Writes one JSON object per line to a file or stdout (``"-"``), one write per line,
    or one write for several lines held back with ``hold=True``.

    A file is appended to (a restarted service keeps the previous run's events).  If
    the file ends in the middle of a line (a run killed mid-write, or a write cut
    short by a full disk), the next event starts on a new line, so every later line
    stays valid JSON.  Safe to call from several threads (the video writer reports
    finished files).
    """

    def __init__(self, target: str | Path) -> None:
        self.target = str(target)
        self.closed = False
        # Cameras of one process may all write to stdout: their lines must not interleave.
        self._lock = _STDOUT_LOCK if self.target == "-" else threading.Lock()
        self._fd: int | None = None
        self._stream: IO[str] | None = None
        self._mid_line = False
        self._held: list[str] = []
        self.lines_in_last_write = 0  # what a failed write lost
        if self.target == "-":
            self._stream = sys.stdout
        else:
            Path(self.target).parent.mkdir(parents=True, exist_ok=True)
            self._fd = _open_append(self.target)
            self._mid_line = _ends_mid_line(self._fd)

    def write(self, record: dict[str, Any], hold: bool = False) -> bool:
        """Writes one record, after the lines held back before it; False once the reader
        has gone away (a closed pipe).

        With ``hold`` the line waits (at most :data:`MAX_HELD_LINES` of them) for the next
        write, :meth:`flush` or :meth:`close`: a writer that knows more records are coming
        makes one system call for several.  Each such call releases the interpreter lock,
        and with several cameras in one process every release is a turn another thread
        may keep (four cameras annotated 1,213 frames/s with a write per line, 1,442 with no
        JSONL written at all; docs/cameras.md, Figures).

        Raises:
            OSError: the lines could not be written (e.g. ``ENOSPC``); the caller
                decides whether to try again later.
        """
        line = to_json_line(record)
        with self._lock:
            if self.closed:
                return False
            self._held.append(line)
            if hold and len(self._held) < MAX_HELD_LINES:
                return True
            return self._write_held()

    @property
    def holding(self) -> bool:
        """Whether lines are held back, waiting for the next write."""
        return bool(self._held)

    def flush(self) -> bool:
        """Writes the lines held back; False once the reader has gone away (see :meth:`write`)."""
        with self._lock:
            if self.closed or not self._held:
                return not self.closed
            return self._write_held()

    def _write_held(self) -> bool:
        """Writes the held lines in one go (the lock is held); False if the reader went away."""
        self.lines_in_last_write = len(self._held)
        text, self._held = "".join(self._held), []
        try:
            if self._fd is not None:
                self._write_file(text.encode())
                return True
            self._stream.write(text)
            self._stream.flush()
        except BrokenPipeError:  # stdout's or a FIFO's reader
            log.warning("the reader of the JSONL events went away; stopping")
            self._silence_stdout()
            self.closed = True
            return False
        return True

    def _write_file(self, data: bytes) -> None:
        if self._mid_line:
            data = b"\n" + data
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError:
            # Part of the line may be down: look at the file's end before the next one.
            self._mid_line = _ends_mid_line(self._fd)
            raise
        self._mid_line = False

    def close(self) -> None:
        """Writes the lines held back, then flushes stdout or closes the file.

        Raises:
            OSError: the held lines could not be written (the file is closed all the same).
        """
        with self._lock:
            try:
                if self._held and not self.closed:
                    self._write_held()
            finally:
                self._close_target()

    def _close_target(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        elif not self.closed:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._silence_stdout()
        self.closed = True

    def _silence_stdout(self) -> None:
        # Python would otherwise complain about the broken pipe again at exit.
        if self._stream is sys.stdout:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)


def _open_append(path: str) -> int:
    """A descriptor appending to ``path`` (created if missing).

    A regular file is opened readable too when allowed, so its last byte can be
    checked; anything else (a FIFO, a device) write-only, so that a FIFO's reader
    going away shows as a broken pipe instead of a write that blocks forever.
    """
    flags = os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        regular = True  # created now, as a regular file
    except OSError:
        regular = False
    if regular:
        with contextlib.suppress(PermissionError):  # a write-only file
            return os.open(path, flags | os.O_RDWR, 0o644)
    return os.open(path, flags | os.O_WRONLY, 0o644)


def _ends_mid_line(fd: int) -> bool:
    """Whether a regular file's last byte is not a newline (its last line is cut)."""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
            return False
        return os.pread(fd, 1, info.st_size - 1) != b"\n"
    except OSError:
        return False  # not readable: nothing to check


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


class SinkHealth:
    """How one sink is doing: what it could not write, and when to try it again.

    The first failure is logged as one warning line; later ones only at debug, so a
    full disk does not log once per frame.  A failed sink is skipped (its records
    counted as lost) until the pause is over, then tried again; the pause doubles
    from :data:`SINK_RETRY_S` up to :data:`SINK_RETRY_MAX_S`.
    """

    def __init__(self, description: str) -> None:
        self.description = description  # e.g. "events /var/lib/fuselite/events.jsonl"
        self.lost = 0  # records or frames not written
        self.error: BaseException | None = None  # the last failure, while down
        self._delay = SINK_RETRY_S
        self._retry_at = 0.0
        self._warned = False

    @property
    def down(self) -> bool:
        """Whether the last try failed."""
        return self.error is not None

    def ready(self) -> bool:
        """Whether to try the sink now (it works, or its pause is over); counts a skip."""
        if self.error is None or time.monotonic() >= self._retry_at:
            return True
        self.lost += 1
        return False

    def failed(self, exc: BaseException, log_it: bool = True, lost: int = 1) -> None:
        """Counts a failed write (of ``lost`` records) and schedules the next try."""
        self.lost += lost
        if self.error is not None:
            self._delay = min(self._delay * 2, SINK_RETRY_MAX_S)
        self.error = exc
        self._retry_at = time.monotonic() + self._delay
        if log_it and not self._warned:
            self._warned = True
            log.warning(
                "cannot write %s: %s; the run goes on, what is lost is counted "
                "(sink_errors in the stats) and it is tried again",
                self.description,
                _reason(exc),
            )
        else:
            log.debug("%s still failing: %s", self.description, _reason(exc))

    def succeeded(self) -> None:
        """Marks the sink working again."""
        if self.error is not None:
            log.info("%s works again (%d lost)", self.description, self.lost)
            self.error = None
            self._delay = SINK_RETRY_S


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}"
    return str(exc) or type(exc).__name__


class OutputsWriter:
    """The ``outputs`` thread: finishes the frames of one :class:`Outputs`, or of several
    cameras' in one process.

    Each camera's frames keep their order through one bounded queue, which the thread
    looks into every few milliseconds (``handoff.LazyHandoff``).  Several cameras share
    one such thread: every Python thread more is one more contender for the interpreter
    lock, and four saturated cameras with a writer thread each annotated 0.78x the frames
    a second of one camera on a loaded 2-core machine, 1.14x with one writer for the four
    (docs/cameras.md, Figures).
    """

    def __init__(self, cameras: int = 1) -> None:
        self.queue = LazyHandoff(maxsize=OUTPUT_QUEUE * max(1, cameras), poll_seconds=POLL_SECONDS)
        self.helper_cores: frozenset[int] | None = None  # where the thread runs; before start()
        self.cpu_s = 0.0  # of the thread so far
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        """Whether more items wait in the queue (so a line can wait for theirs)."""
        return len(self.queue) > 0

    def start(self) -> OutputsWriter:
        """Starts the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="outputs", daemon=True)
            self._thread.start()
        return self

    def put(self, outputs: Outputs, item: tuple, urgent: bool = False) -> None:
        """Queues ``item`` for ``outputs`` (waits while the queue is full)."""
        self.queue.put((outputs, item), urgent=urgent)

    def wait_for(self, outputs: Outputs) -> None:
        """Waits until everything queued for ``outputs`` so far is finished and written."""
        thread = self._thread
        if thread is None:
            return  # closed: it finished everything queued before it stopped
        done = threading.Event()
        self.put(outputs, ("done", done), urgent=True)
        while not done.wait(0.1) and thread.is_alive():
            pass

    def close(self) -> None:
        """Finishes what is queued, then stops the thread."""
        if self._thread is not None:
            self.queue.put(None, urgent=True)
            self._thread.join()
            self._thread = None

    def _work(self) -> None:
        if self.helper_cores:
            pin_thread(self.helper_cores)
        served: set[Outputs] = set()
        while (entry := self.queue.get()) is not None:
            outputs, item = entry
            if item[0] == "done":
                outputs.flush_held()
                item[1].set()
            else:
                outputs.handle(item, more_waiting=self.busy)
                served.add(outputs)
            if served and not self.busy:  # nothing waits: no line may wait either
                for each in served:
                    each.flush_held()
                served.clear()
            self.cpu_s = time.thread_time()
        for each in served:
            each.flush_held()


class Outputs:
    """Every sink of one run, opened together and closed together, and the thread that
    finishes each frame.

    Scoring the model's output (scores, smoothing, labels), formatting JSON, drawing the
    overlay and encoding video happen on a thread of its own (``outputs``), so they
    overlap the next frame's inference instead of adding to it.  Frames keep their
    order through a small bounded queue; when it is full the inference loop waits, so
    every inferred frame reaches every sink.  The on-screen window is the exception:
    GUI calls belong to the loop's thread, so with a window every frame is finished
    there, as is everything when no sink is open.

    With MQTT settings in the options, events and label states also go to the broker
    through a publisher made here; a process running several cameras passes one
    shared ``mqtt_publisher`` instead (it is then the caller's to close).
    """

    def __init__(
        self,
        options: RunOptions,
        fps: float | None,
        live: bool = False,
        preview: MjpegPreview | None = None,
        mqtt_publisher: MqttPublisher | None = None,
    ) -> None:
        """Opens the sinks of ``options``; ``preview``, when given, is a channel of a preview
        shared by several cameras (``preview.CameraPreviews``), used instead of a server
        of its own; ``mqtt_publisher``, when given, is a broker connection they share."""
        self.jsonl = self.video = self.preview = self.display = None
        # Set by the multi-camera runner: every record then carries the camera's name.
        self.camera: str | None = None
        self._run_camera = options.camera  # the name in MQTT topics when camera is not set
        self.mqtt = mqtt_publisher
        self._owns_mqtt = False
        self._writer: OutputsWriter | None = None
        self._owns_writer = False
        self._error: BaseException | None = None
        self._annotator: Annotator | None = None
        self._stats: RunStats | None = None
        self.stop_reason: str | None = None
        self.cpu_s = 0.0  # of the writer thread, once drained
        self.helper_cores: frozenset[int] | None = None  # where its own writer thread runs
        # False: frames are finished on the loop's thread (the sequential arrangement of a
        # busy board, see affinity.py), set before start().
        self.threaded = True
        self.all_scores = options.all_scores
        self.event_heatmaps = options.event_heatmaps
        self.draw_heatmaps = options.draw_heatmaps
        self.health: dict[str, SinkHealth] = {}
        self._failed: OutputsFailed | None = None
        try:
            if options.video_out is not None:
                self.video = VideoOutput(
                    options.video_out,
                    fps,
                    segment_seconds=segment_seconds(options, live),
                    on_file=self._video_file_written,
                )
                self.health["video"] = SinkHealth(f"video {options.video_out}")
            if options.jsonl is not None:
                self.jsonl = _events_writer(options)
                where = "stdout" if self.jsonl.target == "-" else self.jsonl.target
                self.health["jsonl"] = SinkHealth(f"events to {where}")
            if preview is not None:
                self.preview = preview
            elif options.preview_port is not None:
                self.preview = MjpegPreview(
                    options.preview_bind,
                    options.preview_port,
                    max_clients=options.preview_max_clients,
                ).start()
            self.display = Display.open(options.display)
            if self.mqtt is None and options.mqtt is not None:
                self.mqtt = MqttPublisher(options.mqtt).start()
                self._owns_mqtt = True
        except BaseException:
            self.close()
            raise

    @property
    def mqtt_camera(self) -> str:
        """The camera's name in MQTT topics: the runner's name for it, else the run's."""
        return self.camera or self._run_camera

    @property
    def visual(self) -> bool:
        """Whether any output shows pixels (so the overlay must be drawn)."""
        return bool(self.video or self.preview or self.display)

    def start(
        self, annotator: Annotator, stats: RunStats, writer: OutputsWriter | None = None
    ) -> None:
        """Starts finishing frames for this annotator and stats: on a writer thread of its
        own when anything is written, or on ``writer``, one shared by several cameras."""
        self._annotator, self._stats = annotator, stats
        if self.mqtt is not None:
            bundle = annotator.options.bundle_path.name
            self.mqtt.set_labels(self.mqtt_camera, annotator.allowed_labels, bundle=bundle)
        writes = self.jsonl or self.video or self.preview or self.mqtt
        if self.threaded and self.display is None and writes:
            self._owns_writer = writer is None
            if writer is None:
                writer = OutputsWriter()
                writer.helper_cores = self.helper_cores
            self._writer = writer.start()

    def write(
        self, frame: Frame, output: np.ndarray, preprocess_ms: float, inference_ms: float
    ) -> str | None:
        """Finishes one inferred frame and sends it everywhere; returns a reason to stop.

        Raises what a sink raised for an earlier frame (e.g. a video that cannot be written).
        """
        self._raise_error()
        if self.stop_reason is not None:
            return self.stop_reason
        if self._writer is None:
            self._finish_frame(frame, output, preprocess_ms, inference_ms)
            return self.stop_reason
        if self.video is None and self.preview is None and frame.image is not NO_PIXELS:
            frame = replace(frame, image=NO_PIXELS)  # no sink needs the pixels: free them now
        self._writer.put(self, ("frame", frame, output, preprocess_ms, inference_ms))
        return None

    def write_stats(self, final: bool = False, **extra) -> dict | None:
        """Writes a stats record (in order with the frames); the final one is returned.

        A periodic record is made on the writer thread, so that it counts exactly the
        frames written before it.
        """
        if self._writer is not None and not final:
            self._writer.put(self, ("stats",), urgent=True)
            return None
        record = self._stats.snapshot(final=final)
        record.update(extra)
        self._publish_stats(record)
        return record

    def drain(self) -> None:
        """Waits until everything sent so far is written; from then on frames are finished
        on the caller's thread (its own writer thread stops, a shared one goes on).

        Raises what a sink raised on the way.
        """
        writer, self._writer = self._writer, None
        if writer is not None:
            if self._owns_writer:
                writer.close()
            else:
                writer.wait_for(self)
            self.cpu_s = writer.cpu_s
        self._raise_error()

    def close(self) -> None:
        """Flushes and closes every sink; a failing one does not stop the others."""
        try:
            self.drain()
        except Exception:
            log.exception("could not write the last frames")
        for sink in (self.video, self.jsonl, self.preview, self.display):
            if sink is None:
                continue
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 - one line, the other sinks still close
                log.warning("could not close %s cleanly: %s", type(sink).__name__, _reason(exc))
        if self._owns_mqtt:
            self._owns_mqtt = False
            self.mqtt.close()

    def close_video(self) -> None:
        """Finishes the video file now (its JSONL record then precedes the final stats)."""
        if self.video is not None and self._failed is None:
            try:
                self.video.close()
            except (OSError, cv2.error) as exc:
                self.health["video"].failed(exc)

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def handle(self, item: tuple, more_waiting: bool = False) -> None:
        """Finishes one queued item, ``("frame", ...)`` or ``("stats",)``, on the writer
        thread (``more_waiting``: other items are queued behind it, so its event line may
        wait for theirs); what fails is raised later on the loop's thread."""
        if self._error is not None:
            return  # keep the queue moving so the loop never blocks on it
        try:
            if item[0] == "stats":
                self._publish_stats(self._stats.snapshot())
            else:
                self._finish_frame(*item[1:], hold=more_waiting)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the loop's thread
            self._error = exc

    def flush_held(self) -> None:
        """Writes the event lines held back for the frames that were waiting (see
        :meth:`JsonlWriter.write`)."""
        if self.jsonl is not None and self.jsonl.holding:
            self._to_jsonl(self.jsonl.flush)

    def _finish_frame(
        self,
        frame: Frame,
        output: np.ndarray,
        preprocess_ms: float,
        inference_ms: float,
        hold: bool = False,
    ) -> None:
        """Scores one frame's model output, counts it and writes it to every sink (``hold``:
        its event line may wait for the next frame's, see :meth:`JsonlWriter.write`)."""
        if self._failed is not None:
            return  # every sink is gone; the loop is being told
        result = self._annotator.postprocess(
            output, frame.timestamp_ms, preprocess_ms, inference_ms
        )
        # From the moment the frame was read to its result; the read itself is left out
        # because on a live source it is mostly waiting for the camera.
        total_ms = (time.time() - frame.wall_time) * 1000.0
        stats = self._stats
        stats.record(total_ms, inference_ms)
        if self.jsonl is not None or self.mqtt is not None:
            record = event_record(frame, result, total_ms, self.all_scores, self.event_heatmaps)
            if self.jsonl is not None:
                if self.camera is not None:
                    record = {"camera": self.camera, **record}
                self._write_jsonl(record, hold=hold)
            if self.mqtt is not None:  # never blocks: a bounded queue (see mqtt.py)
                self.mqtt.publish_record(self.mqtt_camera, record)
        if not self.visual:
            return
        status = f"{stats.inference_fps:.1f} fps  dropped {stats.counters.dropped}"
        image = draw_overlay(frame.image, result, status, heatmaps=self.draw_heatmaps)
        if self.display is not None and not self.display.show(image):
            self.stop_reason = "window"
        if self.video is not None:
            self._write_video(image, frame)
        if self.preview is not None:
            self.preview.publish(image)

    def _write_jsonl(self, record: dict, hold: bool = False) -> None:
        """Writes one record (``hold``: with the next one, see :meth:`JsonlWriter.write`)."""
        self._to_jsonl(lambda: self.jsonl.write(record, hold=hold))

    def _to_jsonl(self, write: Callable[[], bool]) -> None:
        """Runs one write of the JSONL sink (False: the reader went away); a failure is
        counted, every line it carried, and ends the run only with no sink left."""
        health = self.health["jsonl"]
        if not health.ready():
            return
        try:
            if not write():
                self.stop_reason = "output"  # stdout's reader went away
                return
        except OSError as exc:
            self._sink_failed(health, exc, lost=self.jsonl.lines_in_last_write)
            return
        health.succeeded()

    def _write_video(self, image: np.ndarray, frame: Frame) -> None:
        health = self.health["video"]
        if not health.ready():
            return
        try:
            self.video.write(image, frame.timestamp_ms, frame.index)
        except (OSError, cv2.error) as exc:
            self._sink_failed(health, exc)
            return
        health.succeeded()

    def _sink_failed(self, health: SinkHealth, exc: BaseException, lost: int = 1) -> None:
        """Counts a failure (of ``lost`` records); raises :class:`OutputsFailed` when no
        output is left."""
        alive = self.preview is not None or self.display is not None or self.mqtt is not None
        alive = alive or any(not other.down for other in self.health.values() if other is not health)
        health.failed(exc, log_it=alive, lost=lost)
        if not alive:
            self._failed = OutputsFailed(
                f"cannot write {health.description}: {_reason(exc)}, and no other output is "
                "left; stopping (free the space or fix the path, then run again: an events "
                "file is appended to)"
            )
            raise self._failed

    def _publish_stats(self, record: dict) -> None:
        if self._failed is not None:
            return
        if self.camera is not None:
            record["camera"] = self.camera
        if self.health:
            record["sink_errors"] = {name: health.lost for name, health in self.health.items()}
        if self.preview is not None:
            record["preview"] = self.preview.counts()
        if self.mqtt is not None:
            record["mqtt"] = self.mqtt.stats(self.mqtt_camera)
        log.info("%s%s", describe(record), _mqtt_text(record))
        if record.get("final") and any(health.lost for health in self.health.values()):
            # The events file may be what failed: the final record goes to the log too.
            log.warning("final stats: %s", to_json_line(record).strip())
        if self.preview is not None:
            self.preview.set_stats(record)
        if self.jsonl is not None:
            self._write_jsonl(record)

    def _video_file_written(self, record: dict) -> None:
        if self.jsonl is not None:
            if self.camera is not None:
                record = {"camera": self.camera, **record}
            self._write_jsonl(record)

    def open_paths(self) -> list[Path]:
        """The files being written now (a retention cap must never delete them)."""
        paths = []
        current = getattr(self.jsonl, "current", None)  # a rotating events writer
        if current is not None:
            paths.append(Path(current))
        elif self.jsonl is not None and self.jsonl.target != "-":
            paths.append(Path(self.jsonl.target))
        return paths


def _events_writer(options: RunOptions):
    """The JSONL writer of ``options``: numbered files with ``jsonl_rotate_mb``, else one file."""
    if options.jsonl_rotate_mb is not None and str(options.jsonl) != "-":
        from fuselite.runtime.retention import RotatingJsonlWriter  # imports this module

        return RotatingJsonlWriter(options.jsonl, options.jsonl_rotate_mb)
    return JsonlWriter(options.jsonl)


def _mqtt_text(record: dict) -> str:
    """The MQTT part of the stats log line, or nothing without MQTT."""
    counts = record.get("mqtt")
    if not counts:
        return ""
    state = "connected" if counts["connected"] else "broker away"
    return (
        f" | mqtt {state}: {counts['published']} published, {counts['queued']} queued, "
        f"{counts['dropped']} dropped"
    )


def segment_seconds(options: RunOptions, live: bool) -> float | None:
    """Length of the video's segments in seconds, or ``None`` for a single file.

    ``video_segment_minutes`` ``None`` means automatic: a live source (a camera or
    stream, which may run for days) gets files of :data:`DEFAULT_SEGMENT_MINUTES`; a
    file or folder gets one file, even with ``loop``.  ``0`` always means one file.
    """
    minutes = options.video_segment_minutes
    if minutes is None:
        minutes = DEFAULT_SEGMENT_MINUTES if live else 0.0
    return minutes * 60.0 if minutes else None
