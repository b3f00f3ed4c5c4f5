"""Options of the annotation task and of the streaming run, as frozen dataclasses.

A wrong value raises a :class:`ValueError` whose message says what to change.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from fuselite.runtime.affinity import usable_core_count
from fuselite.runtime.mqtt import MqttSettings

# Video segments of runs that may last for days (cameras and streams).
DEFAULT_SEGMENT_MINUTES = 10.0


def default_threads() -> int:
    """Interpreter threads when none are given: the cores this process may use, at most 4."""
    return min(4, usable_core_count())


DECODE_RESIZE_MODES = ("auto", "ffmpeg", "off")


def default_decode_threads(interpreter_threads: int) -> int:
    """Video decoder threads when none are given: the cores the interpreter leaves free, at least 1."""
    return max(1, usable_core_count() - interpreter_threads)


def camera_name_for(source: str) -> str:
    """A camera name made from a source: ``"0"`` -> ``camera0``, ``clip.mp4`` -> ``clip``,
    ``rtsp://host/live`` -> ``host-live`` (letters, digits, ``-`` and ``_`` only)."""
    text = source.strip()
    if text.isdigit():
        return f"camera{text}"
    if "://" in text:
        text = text.split("://", 1)[1].split("@")[-1]
    else:
        text = Path(text).stem or text
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-_")
    return name[:63] or "camera"


def _as_tuple(value, name: str) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError(f"{name} must be a list of label texts, not one string {value!r}")
    return tuple(str(v) for v in value)


@dataclass(frozen=True)
class AnnotatorOptions:
    """Options for :class:`fuselite.runtime.Annotator`.

    Attributes:
        bundle_path: Path of the bundle (``.tflite``) written by ``fuselite convert``.
        num_threads: Interpreter threads (passed to the interpreter explicitly).
        score_threshold: One probability threshold for every label; ``None`` uses the
            bundle's calibrated per-label thresholds (and its default threshold for
            labels typed at run time).
        max_results: Keep at most this many labels per frame (best first); ``None`` keeps all.
        category_allowlist: Report only these labels; empty means all.
        category_denylist: Never report these labels. Cannot be combined with the allowlist.
        labels: Label texts to use instead of the bundle's own labels, embedded on the
            device by the bundle's text encoder (no retraining); ``None`` keeps the
            bundle's labels.
        smoothing: Weight of the past in an exponential moving average of each label's
            score, from 0 (off: every frame stands alone) to below 1. Use it on video,
            not on unrelated images.
        hysteresis: A label turns on when its score reaches threshold + hysteresis and
            turns off only when it falls below threshold - hysteresis, so it does not
            flicker around its threshold. 0 turns this off.
        explain: Give each reported label its heatmap, peak and box
            (:class:`~fuselite.runtime.results.Category`) when the bundle has label maps
            (regional bundles do; pooled ones, like imported classifiers, have none and
            report labels without them).  Turn it off to save the per-label work.
    """

    bundle_path: str | Path
    num_threads: int = field(default_factory=default_threads)
    score_threshold: float | None = None
    max_results: int | None = None
    category_allowlist: tuple[str, ...] = ()
    category_denylist: tuple[str, ...] = ()
    labels: tuple[str, ...] | None = None
    smoothing: float = 0.0
    hysteresis: float = 0.0
    explain: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "bundle_path", Path(self.bundle_path))
        object.__setattr__(
            self, "category_allowlist", _as_tuple(self.category_allowlist, "category_allowlist")
        )
        object.__setattr__(
            self, "category_denylist", _as_tuple(self.category_denylist, "category_denylist")
        )
        if self.labels is not None:
            object.__setattr__(self, "labels", _as_tuple(self.labels, "labels"))
        self._validate()

    def _validate(self) -> None:
        if (
            isinstance(self.num_threads, bool)
            or not isinstance(self.num_threads, int)
            or self.num_threads < 1
        ):
            raise ValueError(
                f"num_threads must be a whole number of at least 1, not {self.num_threads!r}"
            )
        if self.score_threshold is not None and not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be from 0 to 1, not {self.score_threshold}")
        if self.max_results is not None and self.max_results < 1:
            raise ValueError(
                f"max_results must be at least 1 (or None for all), not {self.max_results}"
            )
        if self.category_allowlist and self.category_denylist:
            raise ValueError("use category_allowlist or category_denylist, not both")
        if self.labels is not None and not any(label.strip() for label in self.labels):
            raise ValueError("labels must hold at least one non-empty label text")
        if not (0.0 <= self.smoothing < 1.0):
            raise ValueError(f"smoothing must be from 0 (off) to below 1, not {self.smoothing}")
        if not (0.0 <= self.hysteresis < 0.5):
            raise ValueError(f"hysteresis must be from 0 (off) to below 0.5, not {self.hysteresis}")


@dataclass(frozen=True)
class RunOptions:
    """Options for :func:`fuselite.runtime.loop.run`: where frames come from and go to.

    Attributes:
        source: A camera index (``"0"``), a video file, an ``rtsp://``/``http(s)://`` URL,
            a folder of images, or ``"picamera2"``.
        jsonl: Where annotation events go, one JSON object per line: a path, ``"-"`` for
            stdout, or ``None`` for nowhere.
        video_out: Path of an annotated video to write (``.mp4`` or ``.avi``), or ``None``.
        video_segment_minutes: Cut the video into files of this many minutes of stream
            time, ``<stem>-0001.mp4``, ``<stem>-0002.mp4``...; ``0`` writes one file;
            ``None`` (auto) cuts every :data:`DEFAULT_SEGMENT_MINUTES` minutes for live
            sources (cameras, streams) and writes one file for files and folders.
        preview_port: Serve an MJPEG preview on this port (0 picks a free one), or ``None``.
        preview_bind: Address the preview listens on; loopback unless you say otherwise.
        preview_max_clients: Preview connections served at once; more get HTTP 503.
        all_scores: Write every label's score in each JSONL event (``"scores"``), not
            only the reported labels.
        event_heatmaps: Write each reported label's heatmap grid in its JSONL entry
            (its ``point`` and ``box`` are always there when the annotator explains).
        draw_heatmaps: Tint the overlay (video, preview, window) with the heatmaps of
            the top reported labels, each outlined.
        display: ``"auto"`` shows an on-screen window when a display and an OpenCV GUI
            exist, ``"on"`` insists on one, ``"off"`` never opens one.
        fps_limit: Annotate at most this many frames per second; ``None`` for no limit.
        max_frames: Stop after this many annotated frames; ``None`` to run until the
            source ends or a signal arrives.
        drop_stale: ``None`` (auto) keeps only the latest frame of live sources (camera,
            stream: stale frames are dropped and counted) and annotates every frame of a
            file or folder; ``True``/``False`` force either behaviour.
        loop: Replay a video file or folder from the start when it ends.
        stats_interval: Seconds between stats records (0 turns them off).
        reconnect_delay: First wait before reconnecting a lost live source, in seconds;
            it doubles on every failed attempt.
        reconnect_max_delay: Longest wait between reconnect attempts, in seconds.
        stream_timeout: Seconds without a frame before a stream counts as lost.
        decode_threads: FFmpeg decoder threads for files and streams; ``None`` (auto)
            uses the cores the interpreter leaves free, at least 1
            (:func:`default_decode_threads`); ``0`` lets FFmpeg choose (one per core).
        decode_resize: ``"auto"``: when no output needs whole frames (no video,
            preview or window) and ``ffmpeg`` is installed, a file or stream is decoded
            by FFmpeg straight to the model's size (:mod:`fuselite.runtime.scaled`);
            ``"ffmpeg"`` insists on it (an error when it cannot); ``"off"`` decodes
            whole frames with OpenCV.
        pin_threads: When the process may use more cores than the interpreter has
            threads, confine the inference thread to ``num_threads`` cores and the
            capture and outputs threads to the others (Linux; see ``affinity.py``).
        invoke_timeout: Seconds one invoke may take before the run is ended (flushed,
            exit code 124: see ``watchdog.py``); ``None`` (auto) allows 50 times the
            invoke measured at load, at least 2 s; ``0`` turns the budget off.
        camera: The camera's name (logs, records, topics); empty derives one from the
            source (:func:`camera_name_for`).
        jsonl_rotate_mb: Write the events to numbered files ``<stem>-0001.jsonl``...
            beside ``jsonl``, starting the next one when a file reaches this many MB
            (so a retention cap can delete old ones); ``None`` writes one file.
        mqtt: Publish events, label states and Home Assistant discovery to this broker
            (:class:`fuselite.runtime.mqtt.MqttSettings`), or ``None``.
    """

    source: str
    jsonl: str | Path | None = "-"
    video_out: str | Path | None = None
    video_segment_minutes: float | None = None
    preview_port: int | None = None
    preview_bind: str = "127.0.0.1"
    preview_max_clients: int = 16
    all_scores: bool = False
    event_heatmaps: bool = False
    draw_heatmaps: bool = False
    display: str = "auto"
    fps_limit: float | None = None
    max_frames: int | None = None
    drop_stale: bool | None = None
    loop: bool = False
    stats_interval: float = 10.0
    reconnect_delay: float = 0.5
    reconnect_max_delay: float = 10.0
    stream_timeout: float = 5.0
    decode_threads: int | None = None
    decode_resize: str = "auto"
    pin_threads: bool = True
    invoke_timeout: float | None = None
    camera: str = ""
    jsonl_rotate_mb: float | None = None
    mqtt: MqttSettings | None = None

    def reads_locations(self, mqtt: bool = False) -> bool:
        """Whether an output of this run uses where labels fired: events (JSONL, or MQTT
        when ``mqtt`` or :attr:`mqtt` is set) carry each label's point and box, and
        ``draw_heatmaps`` tints the pictures.  A run without one skips locating."""
        return bool(self.jsonl is not None or mqtt or self.mqtt is not None or self.draw_heatmaps)

    def __post_init__(self) -> None:
        if not str(self.source).strip():
            raise ValueError("source must name a camera index, a file, a folder or a URL")
        if not self.camera:
            object.__setattr__(self, "camera", camera_name_for(str(self.source)))
        if self.jsonl_rotate_mb is not None and not (
            self.jsonl_rotate_mb > 0 and math.isfinite(self.jsonl_rotate_mb)
        ):
            raise ValueError(
                f"jsonl_rotate_mb must be a positive number of MB, not {self.jsonl_rotate_mb}"
            )
        if self.decode_resize not in DECODE_RESIZE_MODES:
            raise ValueError(
                f"decode_resize must be one of {', '.join(DECODE_RESIZE_MODES)}, not {self.decode_resize!r}"
            )
        if self.display not in ("auto", "on", "off"):
            raise ValueError(f"display must be 'auto', 'on' or 'off', not {self.display!r}")
        if self.preview_port is not None and not 0 <= self.preview_port <= 65535:
            raise ValueError(f"preview_port must be from 0 to 65535, not {self.preview_port}")
        if not 1 <= self.preview_max_clients <= 1000:
            raise ValueError(
                f"preview_max_clients must be from 1 to 1000, not {self.preview_max_clients}"
            )
        if self.fps_limit is not None and not (
            self.fps_limit > 0 and math.isfinite(self.fps_limit)
        ):
            raise ValueError(f"fps_limit must be a positive number, not {self.fps_limit}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, not {self.max_frames}")
        if self.video_segment_minutes is not None and not (
            self.video_segment_minutes >= 0 and math.isfinite(self.video_segment_minutes)
        ):
            raise ValueError(
                "video_segment_minutes must be a positive number of minutes (0 for one file), "
                f"not {self.video_segment_minutes}"
            )
        for name in ("stats_interval", "reconnect_delay", "reconnect_max_delay", "stream_timeout"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must not be negative, not {getattr(self, name)}")
        if self.invoke_timeout is not None and not (
            self.invoke_timeout >= 0 and math.isfinite(self.invoke_timeout)
        ):
            raise ValueError(
                f"invoke_timeout must be a number of seconds (0: off), not {self.invoke_timeout}"
            )
        if self.stream_timeout == 0:
            raise ValueError("stream_timeout must be more than 0 seconds")
        if self.decode_threads is not None and (
            isinstance(self.decode_threads, bool)
            or not isinstance(self.decode_threads, int)
            or self.decode_threads < 0
        ):
            raise ValueError(
                f"decode_threads must be a whole number, 0 for FFmpeg's choice, not {self.decode_threads!r}"
            )
