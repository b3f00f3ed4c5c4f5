"""Several cameras in one process: the runner behind ``fuselite run --config cameras.toml``.

* Each camera keeps its capture thread (``reader.FrameSource``): a live camera keeps
  only its latest frame, and a camera that stalls or reconnects does so on its own
  thread.
* Cameras that name the same bundle file share one image model (one interpreter):
  the model only turns pixels into an embedding; each camera scores that embedding
  against its own labels, thresholds and smoothing (its own ``Annotator`` around the
  shared model).
* One thread runs every inference.  :class:`RoundRobin` picks the next camera that has
  a frame waiting and whose FPS cap allows another frame, starting after the camera it
  picked last, so a fast camera cannot starve a slow one and a camera without a frame
  costs nothing.
* Each camera has its own outputs (events, video segments, stats) and, with a preview,
  its own tile of one page; a retention keeper deletes the oldest closed files.  The
  cameras that only write events share one writer thread (``outputs.OutputsWriter``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from fuselite.bundle import Bundle, read_bundle
from fuselite.runtime.annotator import Annotator
from fuselite.runtime.cameras import CameraConfig, CamerasConfig
from fuselite.runtime.interpreter import TfliteModel
from fuselite.runtime.labels import LabelSet, bundle_labels, typed_labels
from fuselite.runtime.loop import (
    STATS_WAKEUP_S,
    RunSummary,
    SetupError,
    _flush,
    _handle,
    _one_line,
    _setup_errors,
    _stop_on_signals,
    located_only_if_read,
)
from fuselite.runtime.mqtt import MqttPublisher, mqtt_settings_from_table
from fuselite.runtime.options import AnnotatorOptions
from fuselite.runtime.outputs import Outputs, OutputsFailed, OutputsWriter
from fuselite.runtime.preview import CameraPreviews
from fuselite.runtime.reader import FrameSource
from fuselite.runtime.retention import RetentionKeeper, RetentionRule, Series
from fuselite.runtime.scaled import choose_capture
from fuselite.runtime.stats import RunStats
from fuselite.runtime.watchdog import RunWatchdog, budget_rule, invoke_budget

log = logging.getLogger(__name__)


class SharedModels:
    """The image models of a run, one per bundle file; cameras naming the same file share it.

    It also serves as the watchdog's invoke clock (``invoke_started``, ``name``): one
    thread runs every model, so at most one invoke is in progress.
    """

    def __init__(self, num_threads: int) -> None:
        self.num_threads = num_threads
        self._loaded: dict[Path, tuple[Bundle, TfliteModel]] = {}

    def get(self, bundle_path: Path) -> tuple[Bundle, TfliteModel]:
        """The bundle and its loaded image model (loaded on first use)."""
        key = Path(bundle_path).resolve()
        if key not in self._loaded:
            bundle = read_bundle(bundle_path)
            model = TfliteModel(bundle.model_bytes, self.num_threads, name="image model")
            self._loaded[key] = (bundle, model)
        return self._loaded[key]

    @property
    def count(self) -> int:
        """How many models are loaded."""
        return len(self._loaded)

    @property
    def load_invoke_s(self) -> float:
        """The slowest model's invoke at load (the watchdog's budget follows it)."""
        return max((model.load_invoke_s for _b, model in self._loaded.values()), default=0.0)

    @property
    def invoke_started(self) -> float:
        """When the invoke in progress started (0.0: none runs), whichever model runs it."""
        return max((model.invoke_started for _b, model in self._loaded.values()), default=0.0)

    @property
    def name(self) -> str:
        """What the watchdog calls the models in its log line."""
        return "image model"

    def close(self) -> None:
        """Releases every interpreter."""
        for _bundle, model in self._loaded.values():
            model.close()
        self._loaded.clear()


def shared_annotator(
    options: AnnotatorOptions,
    models: SharedModels,
    label_thresholds: tuple[tuple[str, float], ...] = (),
) -> Annotator:
    """An annotator with ``options``' labels and thresholds around the shared image model of
    its bundle (never close it: :meth:`SharedModels.close` releases the model).

    ``label_thresholds`` overrides the threshold of the labels it names.

    Raises:
        ValueError: ``label_thresholds`` names a label this annotator does not score.
    """
    bundle, model = models.get(options.bundle_path)
    if options.labels is None:
        label_set = bundle_labels(bundle)
    else:
        label_set = typed_labels(bundle, options.labels, num_threads=1)
    if label_thresholds:
        label_set = _with_thresholds(label_set, options.score_threshold, label_thresholds)
        options = replace(options, score_threshold=None)  # folded into the label set
    return Annotator(options, bundle, model, label_set)


def _with_thresholds(label_set: LabelSet, threshold: float | None, overrides) -> LabelSet:
    thresholds = np.array(label_set.thresholds, dtype=np.float32)
    if threshold is not None:
        thresholds[:] = threshold
    for label, value in overrides:
        if label not in label_set.labels:
            raise ValueError(
                f"thresholds names {label!r}, which this camera does not score; "
                f"its labels are: {', '.join(label_set.labels)}"
            )
        thresholds[label_set.labels.index(label)] = value
    return replace(label_set, thresholds=thresholds)


class RegionCapture:
    """A capture whose frames are cropped to a region of interest ``(x, y, width, height)``.

    A region partly outside the frame is clipped to it; one wholly outside gives empty
    frames, which the source skips and counts (and this logs once).
    """

    def __init__(self, capture, roi: tuple[int, int, int, int]) -> None:
        self.capture = capture
        self.roi = roi
        self.name = capture.name
        self.live = capture.live
        self._warned = False

    @property
    def fps(self) -> float | None:
        """The frame rate of the wrapped capture."""
        return self.capture.fps

    def open(self) -> None:
        """Opens the wrapped capture."""
        self.capture.open()

    def read(self):
        """Reads and crops the next frame (see ``sources.Capture.read``)."""
        ok, image, media_ms, name = self.capture.read()
        if ok and image is not None:
            image = self._crop(image)
        return ok, image, media_ms, name

    def _crop(self, image: np.ndarray) -> np.ndarray:
        x, y, width, height = self.roi
        region = image[y : y + height, x : x + width]
        if region.size == 0 and not self._warned:
            self._warned = True
            log.warning(
                "%s: roi %s lies outside its %dx%d frames; every frame is skipped",
                self.name,
                list(self.roi),
                image.shape[1],
                image.shape[0],
            )
        return np.ascontiguousarray(region)

    def release(self) -> None:
        """Releases the wrapped capture."""
        self.capture.release()


@dataclass
class CameraSlot:
    """One camera while the run goes on.

    Attributes:
        config: The camera's part of the cameras file.
        annotator: Its labels and thresholds around the shared model.
        source: Its capture thread and latest frame.
        outputs: Its sinks.
        period: Seconds between two annotated frames at its FPS cap (0: no cap).
        cameras_sharing: How many cameras take turns on the inference thread.
        next_due: When (``time.monotonic()``) its FPS cap allows the next frame.
        inferred: Frames run through the model.
        stopped_by: Why it ended (``None`` while it runs).
        summary: How it ended.
    """

    config: CameraConfig
    annotator: Annotator
    source: FrameSource
    outputs: Outputs | None
    stats: RunStats | None = None
    period: float = 0.0
    cameras_sharing: int = 1
    next_due: float = 0.0
    inferred: int = 0
    stopped_by: str | None = None
    summary: RunSummary | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """The camera's name."""
        return self.config.name


class RoundRobin:
    """Picks the camera whose frame is annotated next.

    Only cameras with a frame waiting and due under their FPS cap compete; among them,
    the first after the camera picked last wins, so under load every camera gets the
    same share of the model.
    """

    def __init__(self, slots: list[CameraSlot]) -> None:
        self.slots = slots
        self._next = 0

    def pick(self, now: float) -> tuple[CameraSlot | None, float]:
        """``(the camera to annotate now, or None; seconds until a waiting frame is due)``."""
        count = len(self.slots)
        soonest = None
        for step in range(count):
            index = (self._next + step) % count
            slot = self.slots[index]
            if slot.stopped_by is not None or not slot.source.waiting:
                continue
            if slot.next_due <= now:
                self._next = (index + 1) % count
                return slot, 0.0
            soonest = slot.next_due if soonest is None else min(soonest, slot.next_due)
        return None, (soonest - now if soonest is not None else STATS_WAKEUP_S)


def run_cameras(
    config: CamerasConfig, stop: threading.Event | None = None
) -> dict[str, RunSummary]:
    """Annotates every camera of ``config`` until each ends (files), reaches its
    ``max_frames``, a signal arrives (main thread only) or ``stop`` is set; returns each
    camera's summary by name.

    Raises:
        SetupError: a bundle, source or output of a camera is unusable (the message
            names the camera).
        InterpreterNotFoundError: no TFLite interpreter is installed.
    """
    stop = stop or threading.Event()
    wake = threading.Event()
    names = [camera.name for camera in config.cameras]
    watchdog = RunWatchdog(f"{len(names)} cameras")
    with _stop_on_signals(stop), watchdog, contextlib.ExitStack() as stack:
        models = SharedModels(config.threads)
        stack.callback(models.close)
        previews = _previews(config, names, stack)
        slots = [
            _camera_source(camera, models, previews is not None, config.mqtt is not None)
            for camera in config.cameras
        ]
        for slot in slots:
            slot.source.share_consumer(len(slots))
            slot.cameras_sharing = len(slots)
        _start_sources(slots, wake, stack)
        # Sinks shared by every camera (one per process, such as a broker connection made
        # from config.mqtt) are created here, once, and handed to each camera's Outputs.
        publisher = _mqtt_publisher(config, stack)
        for slot in slots:
            _open_outputs(slot, previews, publisher, stack)
        keeper = RetentionKeeper(
            _retention_rules(config),
            config.retention_check_s,
            lambda: [p for slot in slots for p in slot.outputs.open_paths()],
        )
        stack.callback(keeper.close)
        log.info(
            "%d cameras, %d shared model(s) of %d thread(s); retention: %s",
            len(slots),
            models.count,
            config.threads,
            _retention_text(keeper),
        )
        budget, rule = config.invoke_timeout, "from invoke_timeout in the cameras file"
        if budget is None:
            budget, rule = invoke_budget(models.load_invoke_s), budget_rule(models.load_invoke_s)
        watchdog.watch(models, budget, lambda stopped_by: _flush_all(slots, stopped_by), rule)
        keeper.start()
        _annotate_cameras(slots, stop, wake, config.stats_interval)
        return {slot.name: slot.summary for slot in slots}


def _previews(config: CamerasConfig, names: list[str], stack) -> CameraPreviews | None:
    if config.preview_port is None:
        return None
    with _setup_errors():
        previews = CameraPreviews(
            names, config.preview_bind, config.preview_port, max_clients=config.preview_max_clients
        ).start()
    stack.callback(previews.close)
    return previews


@contextlib.contextmanager
def _camera_errors(camera: CameraConfig):
    """Setup errors of one camera, as one line that names it."""
    try:
        with _setup_errors():
            yield
    except SetupError as exc:
        raise SetupError(f"camera {camera.name!r}: {exc}") from None


def _camera_source(
    camera: CameraConfig, models: SharedModels, visual: bool, mqtt: bool
) -> CameraSlot:
    """Loads (or shares) the camera's model and makes its source (started later)."""
    with _camera_errors(camera):
        annotator_options = located_only_if_read(camera.annotator, camera.run, mqtt)
        annotator = shared_annotator(annotator_options, models, camera.label_thresholds)
        decode_threads = camera.run.decode_threads
        capture = choose_capture(
            camera.run.source,
            camera.run.decode_resize,
            annotator.manifest,
            _whole_frames(camera, visual),
            camera.run.stream_timeout,
            1 if decode_threads is None else decode_threads,
        )
        if camera.roi is not None:
            capture = RegionCapture(capture, camera.roi)
        source = FrameSource(
            capture,
            drop_stale=camera.run.drop_stale,
            loop=camera.run.loop,
            reconnect_delay=camera.run.reconnect_delay,
            reconnect_max_delay=camera.run.reconnect_max_delay,
            prepare=annotator.preprocess,
        )
    # Without a video or preview, a frame's pixels go as soon as its model input is made.
    source.keep_pixels = visual or camera.run.video_out is not None
    period = 1.0 / camera.run.fps_limit if camera.run.fps_limit else 0.0
    return CameraSlot(camera, annotator, source, outputs=None, period=period)


def _whole_frames(camera: CameraConfig, visual: bool) -> str | None:
    """What of this camera needs whole frames (so FFmpeg may not shrink them), or None."""
    if visual:
        return "the preview"
    if camera.run.video_out is not None:
        return "its video"
    if camera.roi is not None:
        return "its roi (cut from whole frames)"
    return None


def _mqtt_publisher(config: CamerasConfig, stack) -> MqttPublisher | None:
    """The one broker connection of every camera, from the file's ``[mqtt]`` table (closed
    after every camera's outputs, so their last events go out), or ``None``."""
    if config.mqtt is None:
        return None
    with _setup_errors():
        publisher = MqttPublisher(mqtt_settings_from_table(config.mqtt)).start()
    stack.callback(publisher.close)
    return publisher


def _open_outputs(
    slot: CameraSlot, previews: CameraPreviews | None, publisher: MqttPublisher | None, stack
) -> None:
    """Opens the camera's outputs, once its source is open (its frame rate is known)."""
    camera = slot.config
    with _camera_errors(camera):
        channel = previews.channel(camera.name) if previews is not None else None
        slot.outputs = Outputs(
            camera.run,
            camera.run.fps_limit or slot.source.fps,
            slot.source.live,
            preview=channel,
            mqtt_publisher=publisher,
        )
    slot.outputs.camera = camera.name
    stack.callback(slot.outputs.close)


def _start_sources(slots: list[CameraSlot], wake: threading.Event, stack) -> None:
    """Starts every capture at once, and waits for the files and folders only: a live
    source that does not answer yet keeps trying on its own thread, delaying no other."""
    errors: dict[str, BaseException] = {}

    def start(slot: CameraSlot) -> None:
        try:
            slot.source.start()
        except Exception as exc:  # noqa: BLE001 - reported below, on this thread
            errors[slot.name] = exc

    for slot in slots:
        slot.source.on_frame = wake.set
        stack.callback(slot.source.close)
    threads = [
        threading.Thread(target=start, args=(slot,), name=f"open-{slot.name}") for slot in slots
    ]
    for thread in threads:
        thread.start()
    for slot, thread in zip(slots, threads, strict=True):
        if not slot.source.live:
            thread.join()
    for slot in slots:  # in the file's order, so the first camera's error is the one shown
        if slot.name in errors:
            raise SetupError(f"camera {slot.name!r}: {_one_line(errors[slot.name])}")


def _annotate_cameras(
    slots: list[CameraSlot], stop: threading.Event, wake: threading.Event, stats_interval: float
) -> None:
    """The inference thread: annotates the picked camera's frame, until every camera ends."""
    shared_writer = _shared_writer(slots)
    try:
        _start_outputs(slots, shared_writer)
        _take_turns(slots, stop, wake, stats_interval)
        _flush_all(slots, "signal")
    finally:
        shared_writer.close()


def _start_outputs(slots: list[CameraSlot], shared_writer: OutputsWriter) -> None:
    """Starts each camera's outputs: on the shared writer thread unless they draw."""
    for slot in slots:
        slot.stats = RunStats(slot.source.counters)
        writer = shared_writer if not slot.outputs.visual else None
        slot.outputs.start(slot.annotator, slot.stats, writer)


def _take_turns(
    slots: list[CameraSlot], stop: threading.Event, wake: threading.Event, stats_interval: float
) -> None:
    """Annotates the picked camera's frame, turn after turn, until every camera ends or
    ``stop`` is set."""
    scheduler = RoundRobin(slots)
    next_report = time.monotonic() + stats_interval
    while not stop.is_set():
        wake.clear()  # before looking: a frame arriving from now on sets it again
        running = [slot for slot in slots if slot.stopped_by is None]
        for slot in running:
            if slot.source.ended:
                _finish(slot, "end")
        if all(slot.stopped_by is not None for slot in slots):
            break
        slot, wait = scheduler.pick(time.monotonic())
        if slot is None:
            wake.wait(min(wait, STATS_WAKEUP_S))
        else:
            _annotate_one(slot)
        if stats_interval and time.monotonic() >= next_report:
            for slot in slots:
                if slot.stopped_by is None:
                    slot.outputs.write_stats()
            next_report = time.monotonic() + stats_interval


def _shared_writer(slots: list[CameraSlot]) -> OutputsWriter:
    """One writer thread for every camera whose outputs draw nothing (events, MQTT): a
    thread per camera costs more in turns of the interpreter lock than it overlaps.  A
    camera with a video or a preview keeps a thread of its own for its drawing and encoding."""
    return OutputsWriter(cameras=sum(not slot.outputs.visual for slot in slots))


def _annotate_one(slot: CameraSlot) -> None:
    """Runs the model on the camera's waiting frame and hands it to its outputs."""
    picked_at = time.monotonic()
    frame = slot.source.next_frame(timeout=0)
    if frame is None:
        return
    try:
        reason = _handle(frame, slot.annotator, slot.outputs, slot.stats)
    except OutputsFailed as exc:
        log.error("camera %r: %s", slot.name, exc)
        _finish(slot, "output")
        return
    slot.inferred += reason != "skipped"
    reason = None if reason == "skipped" else reason
    reason = reason or slot.outputs.stop_reason
    max_frames = slot.config.run.max_frames
    if reason is None and max_frames and slot.inferred >= max_frames:
        reason = "max_frames"
    if reason is not None:
        _finish(slot, reason)
        return
    if slot.period:
        # On time, the next frame is due one period after this one was; late by a period or
        # more (no frame came), one period after now: the cap never allows a burst.
        late = picked_at - slot.next_due >= slot.period
        slot.next_due = (picked_at if late else slot.next_due) + slot.period


def _finish(slot: CameraSlot, stopped_by: str) -> None:
    """Ends one camera: its capture stops, its outputs are flushed, a final stats record is written."""
    slot.stopped_by = stopped_by
    slot.source.close()
    try:
        record = _flush(slot.outputs, stopped_by)
    except Exception as exc:  # noqa: BLE001 - one camera's sinks never end the others
        log.error("camera %r: could not flush its outputs: %s", slot.name, exc)
        record = slot.stats.snapshot(final=True)
    slot.summary = RunSummary(
        frames=slot.stats.frames,
        dropped=record["dropped"],
        skipped=record["skipped"],
        reconnects=record["reconnects"],
        seconds=record["elapsed_s"],
        stopped_by=stopped_by,
    )
    log.info(
        "camera %r: %d frames annotated (stopped by %s)", slot.name, slot.stats.frames, stopped_by
    )


def _flush_all(slots: list[CameraSlot], stopped_by: str) -> None:
    for slot in slots:
        if slot.stopped_by is None and slot.stats is not None:
            _finish(slot, stopped_by)


def _retention_rules(config: CamerasConfig) -> list[RetentionRule]:
    """A rule per camera with a cap of its own, and the global one over every camera."""
    rules = []
    every_series: list[Series] = []
    for camera in config.cameras:
        series = _camera_series(camera)
        every_series += series
        cap = camera.retention
        if cap.active:
            rules.append(
                RetentionRule(f"camera {camera.name!r}", tuple(series), cap.keep_gb, cap.keep_days)
            )
    if config.retention.active and every_series:
        rules.append(
            RetentionRule(
                "all cameras",
                tuple(every_series),
                config.retention.keep_gb,
                config.retention.keep_days,
            )
        )
    return rules


def _camera_series(camera: CameraConfig) -> list[Series]:
    """The numbered files this camera writes: video segments, rotated events."""
    series = []
    if camera.run.video_out is not None:
        series.append(Series.beside(camera.run.video_out))
    if camera.run.jsonl_rotate_mb is not None and str(camera.run.jsonl) != "-":
        series.append(Series.beside(camera.run.jsonl))
    return series


def _retention_text(keeper: RetentionKeeper) -> str:
    if not keeper.rules:
        return "off"
    caps = []
    for rule in keeper.rules:
        parts = [
            f"{rule.keep_gb:g} GB" if rule.keep_gb is not None else "",
            f"{rule.keep_days:g} days" if rule.keep_days is not None else "",
        ]
        caps.append(f"{rule.name} {' / '.join(p for p in parts if p)}")
    return "; ".join(caps)
