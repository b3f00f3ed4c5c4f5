"""The cameras file of ``fuselite run --config cameras.toml``: several cameras, one process.

Example ``cameras.toml``::

    threads = 2                 # interpreter threads (shared by the cameras)
    stats_interval = 30         # seconds between stats records and log lines
    preview = 8080              # one MJPEG page showing every camera
    keep_gb = 20                # global cap over every camera's closed files
    keep_days = 14

    [defaults]                  # any camera key, for every camera that does not set it
    bundle = "/etc/fuselite/model.tflite"
    fps = 5

    [[camera]]
    name = "door"
    source = "rtsp://192.168.1.20/stream1"
    labels = ["person", "cat"]
    threshold = 0.6
    roi = [0, 120, 640, 360]    # x, y, width, height in pixels, cropped before annotating
    jsonl = "/var/lib/fuselite/door/events.jsonl"
    jsonl_rotate_mb = 16
    video = "/var/lib/fuselite/door/door.mp4"
    video_segment_minutes = 10
    keep_gb = 5                 # this camera's own cap

    [mqtt]                      # the MQTT publisher's settings (runtime/mqtt.py)

A mistake is a :class:`ConfigError`: one line naming the file, the camera and the key.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuselite.runtime.options import (
    DECODE_RESIZE_MODES,
    AnnotatorOptions,
    RunOptions,
    default_threads,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CAMERA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
# The keys of the file's top level (the camera keys are CAMERA_KEYS, at the end).
TOP_KEYS = {
    "threads",
    "stats_interval",
    "preview",
    "bind",
    "preview_max_clients",
    "keep_gb",
    "keep_days",
    "retention_check_s",
    "invoke_timeout",
    "defaults",
    "camera",
    "mqtt",
}


class ConfigError(ValueError):
    """The cameras file is unusable; the one-line message names the camera and the key."""


@dataclass(frozen=True)
class RetentionCap:
    """How much of its own closed files fuselite keeps.

    Attributes:
        keep_gb: Total size (GB, 10^9 bytes) of the files of one series owner (a camera, or
            every camera for the global cap); the oldest closed files go first. ``None``: no cap.
        keep_days: Closed files older than this many days are deleted. ``None``: no cap.
    """

    keep_gb: float | None = None
    keep_days: float | None = None

    @property
    def active(self) -> bool:
        """Whether this cap deletes anything at all."""
        return self.keep_gb is not None or self.keep_days is not None


@dataclass(frozen=True)
class CameraConfig:
    """One camera of the cameras file.

    Attributes:
        name: Unique name (letters, digits, ``-`` and ``_``): in logs, records and topics.
        annotator: The model and labels of this camera.
        run: Where frames come from and where annotations go (``run.camera`` is ``name``).
        roi: ``(x, y, width, height)`` in pixels to crop before annotating, or ``None``.
        retention: This camera's own cap on its rotated files.
        label_thresholds: ``(label, threshold)`` pairs overriding the thresholds of
            those labels (``thresholds = {person = 0.7}``); checked against the labels
            once the bundle is loaded.
    """

    name: str
    annotator: AnnotatorOptions
    run: RunOptions
    roi: tuple[int, int, int, int] | None = None
    retention: RetentionCap = field(default_factory=RetentionCap)
    label_thresholds: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class CamerasConfig:
    """A whole cameras file.

    Attributes:
        path: The file read.
        cameras: The cameras, in the file's order.
        threads: Interpreter threads of each shared model.
        stats_interval: Seconds between stats records (0: none).
        preview_port: One MJPEG page for every camera on this port, or ``None``.
        preview_bind: Address of the preview.
        preview_max_clients: Preview connections served at once.
        retention: The global cap over every camera's rotated files.
        retention_check_s: Seconds between two passes of the retention keeper.
        invoke_timeout: As ``fuselite run --invoke-timeout`` (``None``: auto).
        mqtt: The ``[mqtt]`` table as written (the MQTT sink reads it), or ``None``.
    """

    path: Path
    cameras: tuple[CameraConfig, ...]
    threads: int
    stats_interval: float = 10.0
    preview_port: int | None = None
    preview_bind: str = "127.0.0.1"
    preview_max_clients: int = 16
    retention: RetentionCap = field(default_factory=RetentionCap)
    retention_check_s: float = 60.0
    invoke_timeout: float | None = None
    mqtt: dict | None = None


def load_cameras_config(path: str | Path) -> CamerasConfig:
    """Reads and checks a cameras file.

    Raises:
        ConfigError: the file is missing, not TOML, or a value is wrong (one line).
    """
    path = Path(path)
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the cameras file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (expected TOML)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_cameras_config(table, path)


def parse_cameras_config(table: dict[str, Any], path: Path) -> CamerasConfig:
    """Checks a parsed cameras file (see :func:`load_cameras_config`)."""
    where = _Where(path, None)
    unknown = sorted(set(table) - TOP_KEYS)
    if unknown:
        raise where.error(unknown[0], f"unknown key; the top level knows {_listed(TOP_KEYS)}")
    threads = where.get(table, "threads", _whole(1), default_threads())
    defaults = where.get(table, "defaults", _table, {})
    unknown = sorted(set(defaults) - set(CAMERA_KEYS) - {"name"})
    if unknown:
        raise where.error(f"defaults.{unknown[0]}", f"unknown camera key; {_known_camera_keys()}")
    cameras_table = table.get("camera")
    if not isinstance(cameras_table, list) or not cameras_table:
        raise where.error(
            "camera", "no camera: add at least one [[camera]] table with a name and a source"
        )
    cameras = tuple(
        _camera(entry, defaults, index, threads, path) for index, entry in enumerate(cameras_table)
    )
    _check_unique(cameras, where)
    mqtt = table.get("mqtt")
    if mqtt is not None and not isinstance(mqtt, dict):
        raise where.error("mqtt", "must be a table ([mqtt])")
    return CamerasConfig(
        path=path,
        cameras=cameras,
        threads=threads,
        stats_interval=where.get(table, "stats_interval", _seconds, 10.0),
        preview_port=where.get(table, "preview", _port, None),
        preview_bind=where.get(table, "bind", _text, "127.0.0.1"),
        preview_max_clients=where.get(table, "preview_max_clients", _whole(1, 1000), 16),
        retention=_retention(table, where),
        retention_check_s=where.get(table, "retention_check_s", _positive, 60.0),
        invoke_timeout=where.get(table, "invoke_timeout", _seconds, None),
        mqtt=mqtt,
    )


class _Where:
    """Where a value comes from, for error messages: the file and the camera."""

    def __init__(self, path: Path, camera: str | None) -> None:
        self.path, self.camera = path, camera

    def error(self, key: str, problem: str) -> ConfigError:
        camera = f"camera {self.camera!r}: " if self.camera is not None else ""
        return ConfigError(f"{self.path}: {camera}key {key!r}: {problem}")

    def get(self, table: dict, key: str, check: Callable[[Any], Any], default: Any) -> Any:
        if key not in table:
            return default
        try:
            return check(table[key])
        except (ValueError, TypeError) as exc:
            raise self.error(key, str(exc)) from None


def _camera(entry: Any, defaults: dict, index: int, threads: int, path: Path) -> CameraConfig:
    if not isinstance(entry, dict):
        raise _Where(path, f"#{index + 1}").error("camera", "must be a table ([[camera]])")
    name = entry.get("name")
    where = _Where(path, name if isinstance(name, str) else f"#{index + 1}")
    if name is None:
        raise where.error("name", "missing: every camera needs a name (letters, digits, - or _)")
    if not isinstance(name, str) or not CAMERA_NAME.fullmatch(name):
        raise where.error(
            "name",
            f"{name!r} is not a name: use letters, digits, - or _ "
            "(at most 63), starting with a letter or digit",
        )
    merged = {**defaults, **entry}
    unknown = sorted(set(merged) - set(CAMERA_KEYS) - {"name"})
    if unknown:
        raise where.error(unknown[0], f"unknown camera key; {_known_camera_keys()}")
    if "allow" in merged and "deny" in merged:
        raise where.error("allow", "use allow or deny, not both")
    for key in ("source", "bundle"):
        if key not in merged:
            raise where.error(
                key, f"missing: every camera needs a {key} (set it on the camera or in [defaults])"
            )
    values = {
        key: where.get(merged, key, CAMERA_KEYS[key], None) for key in merged if key != "name"
    }
    return _camera_options(name, values, threads, where)


def _camera_options(name: str, values: dict, threads: int, where: _Where) -> CameraConfig:
    temporal = not Path(values["source"]).is_dir()
    annotator_values = {
        "bundle_path": values["bundle"],
        "num_threads": threads,
        "score_threshold": values.get("threshold"),
        "max_results": values.get("max_results"),
        "category_allowlist": values.get("allow", ()),
        "category_denylist": values.get("deny", ()),
        "labels": values.get("labels"),
        "smoothing": values.get("smoothing", 0.5 if temporal else 0.0),
        "hysteresis": values.get("hysteresis", 0.05 if temporal else 0.0),
        "explain": values.get("explain", True),
    }
    run_values = {
        "source": values["source"],
        "camera": name,
        "jsonl": values.get("jsonl"),
        "jsonl_rotate_mb": values.get("jsonl_rotate_mb"),
        "video_out": values.get("video"),
        "video_segment_minutes": values.get("video_segment_minutes"),
        "all_scores": values.get("all_scores", False),
        "event_heatmaps": values.get("event_heatmaps", False),
        "draw_heatmaps": values.get("draw_heatmaps", False),
        "display": "off",
        "fps_limit": values.get("fps"),
        "max_frames": values.get("max_frames"),
        "drop_stale": values.get("drop_stale"),
        "loop": values.get("loop", False),
        "reconnect_delay": values.get("reconnect_delay", 0.5),
        "reconnect_max_delay": values.get("reconnect_max_delay", 10.0),
        "stream_timeout": values.get("stream_timeout", 5.0),
        "decode_threads": values.get("decode_threads", 1),
        # Off unless asked: each camera's ffmpeg is a process of its own (15 MB beside the
        # libraries' 43 MB), and eight of them would outweigh the cameras' own memory.
        "decode_resize": values.get("decode_resize", "off"),
        "pin_threads": False,
    }
    annotator, run = (
        _build(AnnotatorOptions, annotator_values, where),
        _build(RunOptions, run_values, where),
    )
    retention = RetentionCap(values.get("keep_gb"), values.get("keep_days"))
    if retention.active and not (run.video_out or run.jsonl_rotate_mb):
        raise where.error(
            "keep_gb" if retention.keep_gb is not None else "keep_days",
            "this camera writes no rotated files: set video (segments) or "
            "jsonl with jsonl_rotate_mb",
        )
    thresholds = tuple(values.get("thresholds", {}).items())
    return CameraConfig(name, annotator, run, values.get("roi"), retention, thresholds)


# The option fields named in the messages of AnnotatorOptions/RunOptions -> the file's keys.
_FIELD_KEYS = {
    "score_threshold": "threshold",
    "category_allowlist": "allow",
    "category_denylist": "deny",
    "fps_limit": "fps",
    "video_out": "video",
    "bundle_path": "bundle",
}


def _build(options_class, values: dict, where: _Where):
    """``options_class(**values)``, its ValueError turned into one line naming the file's key."""
    try:
        return options_class(**values)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        named = [name for name in values if re.search(rf"\b{name}\b", message)]
        if not named:
            raise where.error("camera", message) from None
        for name in named:  # the options' field names, as the file spells them
            message = re.sub(rf"\b{name}\b", _FIELD_KEYS.get(name, name), message)
        key = _FIELD_KEYS.get(named[0], named[0])
        problem = message.split(" ", 1)[1] if message.startswith(key + " ") else message
        raise where.error(key, problem) from None


def _retention(table: dict, where: _Where) -> RetentionCap:
    return RetentionCap(
        where.get(table, "keep_gb", _positive, None), where.get(table, "keep_days", _positive, None)
    )


def _check_unique(cameras: tuple[CameraConfig, ...], where: _Where) -> None:
    seen: dict[str, str] = {}
    for camera in cameras:
        if camera.name in seen:
            raise _Where(where.path, camera.name).error(
                "name", f"two cameras are named {camera.name!r}; names must differ"
            )
        seen[camera.name] = camera.name
    outputs: dict[str, str] = {}
    for camera in cameras:
        for target in (camera.run.jsonl, camera.run.video_out):
            if target is None or str(target) == "-":
                continue
            resolved = str(Path(target).resolve())
            if resolved in outputs:
                raise _Where(where.path, camera.name).error(
                    "jsonl" if target == camera.run.jsonl else "video",
                    f"{target} is also written by camera {outputs[resolved]!r}; give each camera "
                    "its own files",
                )
            outputs[resolved] = camera.name


# --- value checkers: each returns the value or raises ValueError saying what it must be --


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, not {value!r}")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"must be a number, not {value!r}")
    return float(value)


def _positive(value: Any) -> float:
    number = _number(value)
    if number <= 0:
        raise ValueError(f"must be more than 0, not {value!r}")
    return number


def _seconds(value: Any) -> float:
    number = _number(value)
    if number < 0:
        raise ValueError(f"must be 0 or more seconds, not {value!r}")
    return number


def _fraction(value: Any) -> float:
    number = _number(value)
    if not 0.0 <= number < 1.0:
        raise ValueError(f"must be from 0 to below 1, not {value!r}")
    return number


def _probability(value: Any) -> float:
    number = _number(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"must be a score from 0 to 1, not {value!r}")
    return number


def _label_thresholds(value: Any) -> dict[str, float]:
    if not isinstance(value, dict) or not value:
        raise TypeError(
            f"must be a table of label = threshold, e.g. {{person = 0.7}}, not {value!r}"
        )
    return {str(label): _probability(threshold) for label, threshold in value.items()}


def _whole(low: int, high: int | None = None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < low
            or (high is not None and value > high)
        ):
            span = f"from {low} to {high}" if high is not None else f"of {low} or more"
            raise ValueError(f"must be a whole number {span}, not {value!r}")
        return value

    return check


def _port(value: Any) -> int:
    return _whole(0, 65535)(value)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"must be true or false, not {value!r}")
    return value


def _path(value: Any) -> str:
    return _text(value)


def _source(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"must be a file, a URL, a folder or a camera index, not {value!r}")
    return _text(str(value))


def _labels(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f'must be a list of label texts, e.g. ["person", "cat"], not {value!r}')
    if not value:
        raise ValueError("must hold at least one label")
    return tuple(v.strip() for v in value)


def _table(value: Any) -> dict:
    if not isinstance(value, dict):
        raise TypeError(f"must be a table, not {value!r}")
    return value


def _roi(value: Any) -> tuple[int, int, int, int]:
    shape_hint = "must be [x, y, width, height] in whole pixels, width and height at least 8"
    if (
        not isinstance(value, list)
        or len(value) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"{shape_hint}, not {value!r}")
    x, y, width, height = value
    if x < 0 or y < 0 or width < 8 or height < 8:
        raise ValueError(f"{shape_hint}, not {value!r}")
    return x, y, width, height


def _decode_resize(value: Any) -> str:
    if value not in DECODE_RESIZE_MODES:
        raise ValueError(f"must be {', '.join(DECODE_RESIZE_MODES)}, not {value!r}")
    return value


def _stale(value: Any) -> bool | None:
    if value == "auto":
        return None
    return _flag(value)


CAMERA_KEYS: dict[str, Callable[[Any], Any]] = {
    "source": _source,
    "bundle": _path,
    "labels": _labels,
    "threshold": _probability,
    "thresholds": _label_thresholds,
    "max_results": _whole(1),
    "allow": _labels,
    "deny": _labels,
    "smoothing": _fraction,
    "hysteresis": _fraction,
    "fps": _positive,
    "max_frames": _whole(1),
    "drop_stale": _stale,
    "loop": _flag,
    "roi": _roi,
    "jsonl": _path,
    "jsonl_rotate_mb": _positive,
    "all_scores": _flag,
    "explain": _flag,
    "event_heatmaps": _flag,
    "draw_heatmaps": _flag,
    "video": _path,
    "video_segment_minutes": _seconds,
    "keep_gb": _positive,
    "keep_days": _positive,
    "stream_timeout": _positive,
    "reconnect_delay": _seconds,
    "reconnect_max_delay": _seconds,
    "decode_threads": _whole(0),
    "decode_resize": _decode_resize,
}


def _known_camera_keys() -> str:
    return f"a camera knows name, {_listed(CAMERA_KEYS)}"


def _listed(names) -> str:
    return ", ".join(sorted(names))
