"""The run loop behind ``fuselite run``: frames in, annotations out, until told to stop.

SIGINT and SIGTERM ask the loop to stop; the outputs are then flushed and the video
is closed cleanly (a second SIGINT interrupts at once).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from fuselite.runtime.affinity import pin_thread, pinned, split_cores
from fuselite.runtime.annotator import Annotator
from fuselite.runtime.handoff import LazyHandoff
from fuselite.runtime.options import (
    DEFAULT_SEGMENT_MINUTES,
    AnnotatorOptions,
    RunOptions,
    default_decode_threads,
)
from fuselite.runtime.outputs import Display, JsonlWriter, VideoOutput, draw_overlay, event_record
from fuselite.runtime.preprocess import frame_problem
from fuselite.runtime.preview import MjpegPreview
from fuselite.runtime.sources import (
    NO_PIXELS,
    Frame,
    FrameSource,
    capture_for,
    lower_thread_priority,
)
from fuselite.runtime.stats import RunStats, describe

log = logging.getLogger(__name__)

STATS_WAKEUP_S = 0.5
OUTPUT_QUEUE = 4  # annotated frames waiting for the writer thread (bounds memory and latency)


class SetupError(ValueError):
    """The run could not start (bundle, source, option or output); the message says why."""


@dataclass(frozen=True)
class RunSummary:
    """How a run ended.

    Attributes:
        frames: Frames annotated.
        dropped: Stale live frames dropped.
        skipped: Empty or corrupt frames skipped.
        reconnects: Times a lost source was reopened.
        seconds: Wall time of the loop.
        stopped_by: ``"end"`` (source ended), ``"max_frames"``, ``"signal"``,
            ``"window"`` (q pressed) or ``"output"`` (the JSONL reader went away).
        cpu_s: CPU seconds of each thread of the pipeline: ``"capture"`` (reading and
            preprocessing; decoder threads of the capture library not included),
            ``"inference"`` (the loop: invoke, scoring) and ``"outputs"``.
    """

    frames: int
    dropped: int
    skipped: int
    reconnects: int
    seconds: float
    stopped_by: str
    cpu_s: dict[str, float] = field(default_factory=dict)


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
    """

    def __init__(self, options: RunOptions, fps: float | None, live: bool = False) -> None:
        self.jsonl = self.video = self.preview = self.display = None
        self._queue = LazyHandoff(maxsize=OUTPUT_QUEUE)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._annotator: Annotator | None = None
        self._stats: RunStats | None = None
        self.stop_reason: str | None = None
        self.cpu_s = 0.0  # of the writer thread
        self.helper_cores: frozenset[int] | None = None  # where the writer thread runs
        try:
            if options.video_out is not None:
                self.video = VideoOutput(
                    options.video_out,
                    fps,
                    segment_seconds=segment_seconds(options, live),
                    on_file=self._video_file_written,
                )
            if options.jsonl is not None:
                self.jsonl = JsonlWriter(options.jsonl)
            if options.preview_port is not None:
                self.preview = MjpegPreview(options.preview_bind, options.preview_port).start()
            self.display = Display.open(options.display)
        except BaseException:
            self.close()
            raise

    @property
    def visual(self) -> bool:
        """Whether any output shows pixels (so the overlay must be drawn)."""
        return bool(self.video or self.preview or self.display)

    def start(self, annotator: Annotator, stats: RunStats) -> None:
        """Starts the writer thread (when anything is written) for this annotator and stats."""
        self._annotator, self._stats = annotator, stats
        if self.display is None and (self.jsonl or self.video or self.preview):
            self._thread = threading.Thread(target=self._work, name="outputs", daemon=True)
            self._thread.start()

    def write(
        self, frame: Frame, output: np.ndarray, preprocess_ms: float, inference_ms: float
    ) -> str | None:
        """Finishes one inferred frame and sends it everywhere; returns a reason to stop.

        Raises what a sink raised for an earlier frame (e.g. a video that cannot be written).
        """
        self._raise_error()
        if self.stop_reason is not None:
            return self.stop_reason
        if self._thread is None:
            self._finish_frame(frame, output, preprocess_ms, inference_ms)
            return self.stop_reason
        if self.video is None and self.preview is None and frame.image is not NO_PIXELS:
            frame = replace(frame, image=NO_PIXELS)  # no sink needs the pixels: free them now
        self._queue.put(("frame", frame, output, preprocess_ms, inference_ms))
        return None

    def write_stats(self, final: bool = False, **extra) -> dict | None:
        """Writes a stats record (in order with the frames); the final one is returned.

        A periodic record is made on the writer thread, so that it counts exactly the
        frames written before it.
        """
        if self._thread is not None and not final:
            self._queue.put(("stats",), urgent=True)
            return None
        record = self._stats.snapshot(final=final)
        record.update(extra)
        self._publish_stats(record)
        return record

    def drain(self) -> None:
        """Waits until everything sent so far is written, and stops the writer thread.

        Raises what a sink raised on the way.
        """
        if self._thread is not None:
            self._queue.put(None, urgent=True)
            self._thread.join()
            self._thread = None
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
            except Exception:
                log.exception("could not close %s cleanly", type(sink).__name__)

    def close_video(self) -> None:
        """Finishes the video file now (its JSONL record then precedes the final stats)."""
        if self.video is not None:
            self.video.close()

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _work(self) -> None:
        if self.helper_cores:
            pin_thread(self.helper_cores)
        lower_thread_priority()  # finishing frames can wait; inference is the bottleneck
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep the queue moving so the loop never blocks on it
            try:
                if item[0] == "stats":
                    self._publish_stats(self._stats.snapshot())
                else:
                    self._finish_frame(*item[1:])
            except BaseException as exc:  # noqa: BLE001 - re-raised on the loop's thread
                self._error = exc
            self.cpu_s = time.thread_time()

    def _finish_frame(
        self, frame: Frame, output: np.ndarray, preprocess_ms: float, inference_ms: float
    ) -> None:
        """Scores one frame's model output, counts it and writes it to every sink."""
        result = self._annotator.postprocess(
            output, frame.timestamp_ms, preprocess_ms, inference_ms
        )
        # From the moment the frame was read to its result; the read itself is left out
        # because on a live source it is mostly waiting for the camera.
        total_ms = (time.time() - frame.wall_time) * 1000.0
        stats = self._stats
        stats.record(total_ms, inference_ms)
        if self.jsonl is not None and not self.jsonl.write(event_record(frame, result, total_ms)):
            self.stop_reason = "output"
        if not self.visual:
            return
        status = f"{stats.inference_fps:.1f} fps  dropped {stats.counters.dropped}"
        image = draw_overlay(frame.image, result, status)
        if self.display is not None and not self.display.show(image):
            self.stop_reason = "window"
        if self.video is not None:
            self.video.write(image, frame.timestamp_ms, frame.index)
        if self.preview is not None:
            self.preview.publish(image)

    def _publish_stats(self, record: dict) -> None:
        log.info("%s", describe(record))
        if self.preview is not None:
            self.preview.set_stats(record)
        if self.jsonl is not None:
            self.jsonl.write(record)

    def _video_file_written(self, record: dict) -> None:
        if self.jsonl is not None:
            self.jsonl.write(record)


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


def run(options: RunOptions, annotator_options: AnnotatorOptions) -> RunSummary:
    """Annotates ``options.source`` until it ends, ``max_frames`` is reached or a signal arrives.

    Raises:
        SetupError: the bundle is unusable, the source cannot be opened, an option does
            not fit the bundle, or an output cannot be created (the message says which).
        InterpreterNotFoundError: no TFLite interpreter is installed.
    """
    stop = threading.Event()
    cores = split_cores(annotator_options.num_threads) if options.pin_threads else None
    helper_cores = cores.helpers if cores else None
    with _stop_on_signals(stop), contextlib.ExitStack() as stack:
        with _setup_errors():
            annotator = stack.enter_context(Annotator.create(annotator_options))
            source = _frame_source(options, annotator_options.num_threads, annotator, helper_cores)
            stack.enter_context(source)
            outputs = Outputs(options, options.fps_limit or source.fps, source.live)
            outputs.helper_cores = helper_cores
            stack.callback(outputs.close)
            # Without a video, preview or window, a frame's pixels are dropped as soon as
            # the model input is made: the queues then hold no 640x480 images.
            source.keep_pixels = outputs.visual
        with pinned(cores.inference if cores else None):
            return _annotate_stream(source, annotator, outputs, options, stop)


def _frame_source(
    options: RunOptions,
    interpreter_threads: int,
    annotator: Annotator,
    helper_cores: frozenset[int] | None,
) -> FrameSource:
    """The run's frame source, not started yet: it preprocesses with ``annotator``."""
    decode_threads = options.decode_threads
    if decode_threads is None:
        decode_threads = default_decode_threads(interpreter_threads)
    source = FrameSource(
        capture_for(options.source, options.stream_timeout, decode_threads),
        drop_stale=options.drop_stale,
        loop=options.loop,
        reconnect_delay=options.reconnect_delay,
        reconnect_max_delay=options.reconnect_max_delay,
        prepare=annotator.preprocess,
    )
    source.helper_cores = helper_cores
    return source


@contextlib.contextmanager
def _setup_errors() -> Iterator[None]:
    """Turns the user-fixable errors of starting a run into :class:`SetupError`.

    ``BundleError`` and ``SourceError`` are ``ValueError``s; ``OSError`` covers paths
    and ports. Errors once the stream runs keep their type: they are bugs.
    """
    try:
        yield
    except (ValueError, OSError) as exc:
        raise SetupError(_one_line(exc)) from exc


def _one_line(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)


def _annotate_stream(
    source: FrameSource,
    annotator: Annotator,
    outputs: Outputs,
    options: RunOptions,
    stop: threading.Event,
) -> RunSummary:
    stats = RunStats(source.counters)
    outputs.start(annotator, stats)
    cpu_start = time.thread_time()
    period = 1.0 / options.fps_limit if options.fps_limit else 0.0
    next_report = time.monotonic() + options.stats_interval
    next_due = time.monotonic()
    inferred, stopped_by = 0, "signal"
    while not stop.is_set():
        # Wake up now and then even without frames, so stats keep coming during an outage.
        frame = source.next_frame(stop, timeout=STATS_WAKEUP_S)
        if frame is None and (source.ended or stop.is_set()):
            stopped_by = "end" if source.ended and not stop.is_set() else "signal"
            break
        reason = None
        if frame is not None:
            reason = _handle(frame, annotator, outputs, stats)
            inferred += reason != "skipped"
            reason = None if reason == "skipped" else reason
        reason = reason or outputs.stop_reason
        if reason is None and options.max_frames and inferred >= options.max_frames:
            reason = "max_frames"
        if reason is not None:
            stopped_by = reason
            break
        if options.stats_interval and time.monotonic() >= next_report:
            outputs.write_stats()
            next_report = time.monotonic() + options.stats_interval
        if period and frame is not None:
            next_due = max(next_due + period, time.monotonic())
            stop.wait(max(0.0, next_due - time.monotonic()))
    inference_cpu_s = time.thread_time() - cpu_start
    summary = _finish(stats, outputs, stopped_by)
    cpu = {"capture": source.counters.cpu_s, "inference": inference_cpu_s, "outputs": outputs.cpu_s}
    return replace(summary, cpu_s={name: round(value, 4) for name, value in cpu.items()})


def _handle(frame: Frame, annotator: Annotator, outputs: Outputs, stats: RunStats) -> str | None:
    """Runs the model on one frame and hands it on; returns a reason to stop, ``"skipped"``
    for an unusable frame, or ``None``."""
    if frame.model_input is not None:
        model_input, preprocess_ms = frame.model_input, frame.preprocess_ms
    elif frame_problem(frame.image) is not None:
        stats.skipped += 1
        return "skipped"
    else:  # the capture thread left the preprocessing to this one (see sources.py)
        start = time.perf_counter()
        model_input = annotator.preprocess(frame.image)
        preprocess_ms = (time.perf_counter() - start) * 1000.0
    output, inference_ms = annotator.infer(model_input)
    return outputs.write(frame, output, preprocess_ms, inference_ms)


def _finish(stats: RunStats, outputs: Outputs, stopped_by: str) -> RunSummary:
    outputs.drain()
    outputs.close_video()
    record = outputs.write_stats(final=True, stopped_by=stopped_by)
    return RunSummary(
        frames=stats.frames,
        dropped=record["dropped"],
        skipped=record["skipped"],
        reconnects=record["reconnects"],
        seconds=record["elapsed_s"],
        stopped_by=stopped_by,
    )


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop``; a second SIGINT raises KeyboardInterrupt. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, _frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.info("%s: finishing (flushing outputs)", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
