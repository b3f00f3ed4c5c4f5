"""The run loop behind ``fuselite run``: frames in, annotations out, until told to stop.

SIGINT and SIGTERM ask the loop to stop; the outputs are then flushed and the video
is closed cleanly (a second SIGINT interrupts at once).  The watchdog
(``watchdog.py``) bounds what the loop cannot: an invoke that overruns its budget, or
a run still going :data:`~fuselite.runtime.watchdog.STOP_GRACE_S` after a signal (a
native invoke blocks the handlers), ends the process once the outputs are flushed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from fuselite.runtime.affinity import LoadSample, pinned, plan_schedule
from fuselite.runtime.annotator import FRAME_ERROR_LOG_EVERY, Annotator, FrameError
from fuselite.runtime.options import (
    AnnotatorOptions,
    RunOptions,
    default_decode_threads,
)
from fuselite.runtime.outputs import Outputs
from fuselite.runtime.preprocess import frame_problem
from fuselite.runtime.reader import (
    Capture,
    Frame,
    FrameSource,
)
from fuselite.runtime.scaled import choose_capture
from fuselite.runtime.stats import RunStats
from fuselite.runtime.watchdog import RunWatchdog, budget_rule, invoke_budget

log = logging.getLogger(__name__)

STATS_WAKEUP_S = 0.5


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


def run(options: RunOptions, annotator_options: AnnotatorOptions) -> RunSummary:
    """Annotates ``options.source`` until it ends, ``max_frames`` is reached or a signal arrives.

    Raises:
        SetupError: the bundle is unusable, the source cannot be opened, an option does
            not fit the bundle, or an output cannot be created (the message says which).
        InterpreterNotFoundError: no TFLite interpreter is installed.
    """
    stop = threading.Event()
    annotator_options = located_only_if_read(annotator_options, options)
    load = LoadSample()  # over the model's loading: what other programs leave free
    watchdog = RunWatchdog(annotator_options.bundle_path.name)
    with _stop_on_signals(stop), watchdog, contextlib.ExitStack() as stack:
        with _setup_errors():
            annotator = stack.enter_context(Annotator.create(annotator_options))
            capture = _capture(options, annotator_options.num_threads, annotator)
            schedule = plan_schedule(annotator_options.num_threads, capture.live, options.pin_threads,
                                     load.idle_shares())
            stack.callback(schedule.release)
            if not schedule.threaded and options.decode_threads is None and hasattr(capture, "decode_threads"):
                # Decoding is then the only overlap left: FFmpeg's own threads decode the
                # next frames while this thread infers, as in the naive loop.
                capture.decode_threads = 0
            helper_cores = schedule.split.helpers if schedule.split else None
            source = _frame_source(options, capture, annotator, schedule.threaded, helper_cores)
            stack.enter_context(source)
            outputs = Outputs(options, options.fps_limit or source.fps, source.live)
            outputs.helper_cores = helper_cores
            outputs.threaded = schedule.threaded
            stack.callback(outputs.close)
            # Without a video, preview or window, a frame's pixels are dropped as soon as
            # the model input is made: the queues then hold no 640x480 images.
            source.keep_pixels = outputs.visual
        log.info("scheduling: %s", schedule.reason)  # once setup can no longer fail
        budget, rule = _budget(options, annotator.model.load_invoke_s)
        watchdog.watch(annotator.model, budget,
                       lambda stopped_by: _flush_before_exit(outputs, stopped_by), rule)
        with pinned(schedule.split.inference if schedule.split else None):
            return _annotate_stream(source, annotator, outputs, options, stop)


def located_only_if_read(
    annotator_options: AnnotatorOptions, options: RunOptions, mqtt: bool = False
) -> AnnotatorOptions:
    """``annotator_options`` with explanations off when no output of the run reads them.

    Locating every reported label costs CPU on each frame (see docs/explanations.md);
    a run that only shows a preview or records video without heatmaps never uses it.
    """
    if annotator_options.explain and not options.reads_locations(mqtt):
        log.debug("explanations off: no output of this run uses where labels fired")
        return replace(annotator_options, explain=False)
    return annotator_options


def _budget(options: RunOptions, load_invoke_s: float) -> tuple[float, str]:
    """``(seconds one invoke may take, where that came from)``: the option, else the rule
    of :func:`invoke_budget`."""
    if options.invoke_timeout is not None:
        return options.invoke_timeout, "from --invoke-timeout"
    budget, rule = invoke_budget(load_invoke_s), budget_rule(load_invoke_s)
    log.debug("invoke budget %g s (%s)", budget, rule)
    return budget, rule


def _flush_before_exit(outputs: Outputs, stopped_by: str) -> None:
    """What the watchdog runs before it ends the process: :func:`_flush`, then every sink closed."""
    _flush(outputs, stopped_by)
    outputs.close()


def _flush(outputs: Outputs, stopped_by: str) -> dict:
    """The frames already inferred reach their sinks, the video is closed at its name, and a
    final stats record says why the run ended; returns that record."""
    outputs.drain()
    outputs.close_video()
    return outputs.write_stats(final=True, stopped_by=stopped_by)


def _capture(options: RunOptions, interpreter_threads: int, annotator: Annotator) -> Capture:
    """The run's capture, not opened yet, with its decoder threads: FFmpeg decoding to
    the model's size when the run allows it (``decode_resize``), else a whole-frame one."""
    decode_threads = options.decode_threads
    if decode_threads is None:
        decode_threads = default_decode_threads(interpreter_threads)
    return choose_capture(
        options.source,
        options.decode_resize,
        annotator.manifest,
        _whole_frame_output(options),
        options.stream_timeout,
        decode_threads,
    )


def _whole_frame_output(options: RunOptions) -> str | None:
    """The output of the run that needs whole frames (``--video-out``...), or None."""
    if options.video_out is not None:
        return "--video-out"
    if options.preview_port is not None:
        return "--preview"
    window = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if options.display == "on" or (options.display == "auto" and window):
        return "the window (--display off if you do not need it)"
    return None


def _frame_source(
    options: RunOptions,
    capture: Capture,
    annotator: Annotator,
    threaded: bool,
    helper_cores: frozenset[int] | None,
) -> FrameSource:
    """The run's frame source, not started yet: it preprocesses with ``annotator``
    (on its capture thread, or, when not ``threaded``, in the loop's thread)."""
    source = FrameSource(
        capture,
        drop_stale=options.drop_stale,
        loop=options.loop,
        reconnect_delay=options.reconnect_delay,
        reconnect_max_delay=options.reconnect_max_delay,
        prepare=annotator.preprocess,
        threaded=threaded,
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
    try:
        output, inference_ms = annotator.infer(model_input)
    except FrameError as exc:  # e.g. NaN out of the model: counted and logged, the run goes on
        stats.frame_errors += 1
        if stats.frame_errors % FRAME_ERROR_LOG_EVERY == 1:
            log.warning("frame %d not annotated: %s (%d frame errors so far; one line per %d)",
                        frame.index, exc, stats.frame_errors, FRAME_ERROR_LOG_EVERY)
        return None
    return outputs.write(frame, output, preprocess_ms, inference_ms)


def _finish(stats: RunStats, outputs: Outputs, stopped_by: str) -> RunSummary:
    record = _flush(outputs, stopped_by)
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
