"""``fuselite run``: annotate a camera, video, stream or image folder with a bundle.

Only argparse is imported at module level, so ``fuselite --help`` stays fast; the
runtime (numpy, OpenCV, the interpreter) loads when the command runs.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fuselite.errors import UserError

log = logging.getLogger(__name__)

EPILOG = """examples:
  fuselite run --bundle model.tflite --source 0 --preview 8080
  fuselite run --bundle model.tflite --source clip.mp4 --video-out out.mp4 --jsonl ev.jsonl
  fuselite run --bundle model.tflite --source rtsp://cam.local/stream --labels "red circle,cup"
  fuselite run --config cameras.toml     # several cameras, one process (docs/cameras.md)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``run`` options to ``parser``."""
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    _model_arguments(parser.add_argument_group("model and labels"))
    _source_arguments(parser.add_argument_group("source"))
    _output_arguments(parser.add_argument_group("outputs"))
    _mqtt_arguments(parser.add_argument_group("MQTT and Home Assistant (fuselite[mqtt])"))


def _model_arguments(group) -> None:
    group.add_argument("--bundle", type=Path, help="the bundle (.tflite written by fuselite convert) to run (required without --config)")
    group.add_argument(
        "--threads",
        type=int,
        default=None,
        help="interpreter threads (default: CPU count, at most 4)",
    )
    group.add_argument(
        "--labels",
        help='labels to look for instead of the bundle\'s, e.g. "red circle,cup" '
        "(embedded on the device by the bundle's text encoder)",
    )
    group.add_argument(
        "--threshold",
        type=float,
        help="one score threshold for every label (default: the bundle's calibrated thresholds)",
    )
    group.add_argument("--max-results", type=int, help="report at most this many labels per frame")
    group.add_argument(
        "--no-explain",
        dest="explain",
        action="store_false",
        help="skip where each label fired (heatmap, point, box); bundles without label maps never have them",
    )
    group.add_argument("--allow", help="comma-separated labels to report (all others are hidden)")
    group.add_argument("--deny", help="comma-separated labels never to report")
    group.add_argument(
        "--invoke-timeout",
        type=_seconds_or_auto,
        metavar="SECONDS",
        help="end the run (exit code 124, outputs flushed) when one invoke takes longer "
        "(default auto: 50x the invoke at load, at least 2 s; 0: off)",
    )
    group.add_argument(
        "--smoothing",
        type=float,
        default=None,
        help="weight of the past in the score moving average, 0 (off) to <1 "
        "(default: 0.5 for cameras, streams and videos, 0 for image folders)",
    )
    group.add_argument(
        "--hysteresis",
        type=float,
        default=None,
        help="margin around each threshold before a label flips "
        "(default: 0.05 for cameras, streams and videos, 0 for image folders)",
    )


def _seconds_or_auto(text: str) -> float | None:
    """A number of seconds, or ``auto`` (None), as the systemd settings file writes it."""
    return None if text.strip().lower() == "auto" else float(text)


def _source_arguments(group) -> None:
    group.add_argument(
        "--config",
        type=Path,
        metavar="CAMERAS.toml",
        help="run every camera of this file in one process, instead of --bundle and --source "
        "(see docs/cameras.md)",
    )
    group.add_argument(
        "--source",
        help="camera index (0), video file, rtsp:// or http:// URL, image folder, "
        "'picamera2[:WxH]', or 'camera' (picamera2 if present, else camera 0)",
    )
    group.add_argument(
        "--fps-limit", type=float, help="annotate at most this many frames per second"
    )
    group.add_argument("--max-frames", type=int, help="stop after this many annotated frames")
    group.add_argument(
        "--drop-stale",
        choices=("auto", "yes", "no"),
        default="auto",
        help="keep only the newest frame (auto: yes for cameras and streams, "
        "no for files and folders, whose every frame is annotated)",
    )
    group.add_argument("--loop", action="store_true", help="replay a video file or folder forever")
    group.add_argument(
        "--stream-timeout",
        type=float,
        default=5.0,
        help="seconds without frames before a stream counts as lost (default 5)",
    )
    group.add_argument(
        "--decode-threads",
        type=int,
        help="video decoder threads for files and streams (default: the cores the "
        "interpreter leaves free, at least 1; 0: FFmpeg's choice)",
    )
    group.add_argument(
        "--decode-resize",
        choices=("auto", "ffmpeg", "off"),
        help="auto (default): when no output needs whole frames (no video, preview or window), let "
        "FFmpeg decode files and streams straight to the model's size, which costs far less "
        "CPU; ffmpeg: insist on it; off: decode whole frames with OpenCV",
    )
    group.add_argument(
        "--pin-threads",
        choices=("auto", "off"),
        default="auto",
        help="auto: when there are more cores than interpreter threads, keep capture and "
        "outputs off the interpreter's cores (default auto)",
    )
    group.add_argument(
        "--reconnect-delay",
        type=float,
        default=0.5,
        help="first wait before reconnecting, doubled per attempt (default 0.5 s)",
    )
    group.add_argument(
        "--reconnect-max-delay",
        type=float,
        default=10.0,
        help="longest wait between reconnect attempts (default 10 s)",
    )


def _output_arguments(group) -> None:
    group.add_argument(
        "--jsonl",
        default="-",
        help="file for the JSONL events, '-' for stdout (default), 'none' for none",
    )
    group.add_argument(
        "--event-heatmaps",
        action="store_true",
        help="write each reported label's heatmap grid in its JSONL entry (point and box are always there)",
    )
    group.add_argument(
        "--draw-heatmaps",
        action="store_true",
        help="tint the video, preview and window with the top labels' heatmaps",
    )
    group.add_argument(
        "--all-scores",
        action="store_true",
        help="write every label's score in each JSONL event (default: only the reported labels)",
    )
    group.add_argument("--video-out", type=Path, help="write an annotated video (.mp4 or .avi)")
    group.add_argument(
        "--video-segment-minutes",
        type=float,
        metavar="MIN",
        help="cut the video into files of MIN minutes, OUT-0001.mp4, OUT-0002.mp4... "
        "(0: one file; default: 10 for cameras and streams, one file for files and folders)",
    )
    group.add_argument(
        "--preview",
        type=int,
        metavar="PORT",
        help="serve an MJPEG preview at http://BIND:PORT/ (0 picks a free port)",
    )
    group.add_argument(
        "--bind",
        default="127.0.0.1",
        help="address of the preview (default 127.0.0.1; 0.0.0.0 exposes it, no password)",
    )
    group.add_argument(
        "--preview-max-clients",
        type=int,
        default=16,
        metavar="N",
        help="preview connections served at once; more get HTTP 503 (default 16)",
    )
    group.add_argument(
        "--display",
        choices=("auto", "on", "off"),
        default="auto",
        help="on-screen window with the overlay (auto: when a display exists)",
    )
    group.add_argument(
        "--stats-interval",
        type=float,
        default=10.0,
        help="seconds between stats records and log lines, 0 for none (default 10)",
    )


def _mqtt_arguments(group) -> None:
    """``--mqtt`` and its companions (see docs/mqtt.md); the password never on the command line."""
    group.add_argument(
        "--mqtt",
        metavar="URL",
        help="publish events, label states and Home Assistant discovery to this broker, "
        "mqtt://host:1883 or mqtts://host:8883 (TLS)",
    )
    group.add_argument(
        "--camera-name",
        metavar="NAME",
        help="the camera's name in topics and in Home Assistant "
        "(default: from the source, e.g. porch.mp4 -> porch, camera index 0 -> camera0)",
    )
    group.add_argument("--mqtt-user", metavar="NAME", help="user name for the broker")
    group.add_argument(
        "--mqtt-password-file",
        type=Path,
        metavar="FILE",
        help="file whose first line is the broker password (or set FUSELITE_MQTT_PASSWORD)",
    )
    group.add_argument("--mqtt-tls-ca", metavar="FILE", help="CA certificate of the broker (mqtts)")
    group.add_argument("--mqtt-tls-cert", metavar="FILE", help="client certificate (mqtts)")
    group.add_argument("--mqtt-tls-key", metavar="FILE", help="key of the client certificate")
    group.add_argument(
        "--mqtt-tls-insecure",
        action="store_true",
        help="do not check the broker's host name against its certificate",
    )
    group.add_argument(
        "--mqtt-client-id", metavar="ID", help="MQTT client id (default fuselite-<host name>)"
    )
    group.add_argument(
        "--mqtt-topic-prefix",
        default="fuselite",
        metavar="PREFIX",
        help="first level of every topic (default fuselite: fuselite/<camera>/events)",
    )
    group.add_argument(
        "--mqtt-queue",
        type=int,
        default=10_000,
        metavar="N",
        help="events kept while the broker is away; the oldest beyond N are dropped "
        "and counted (default 10000)",
    )
    group.add_argument(
        "--mqtt-events",
        choices=("all", "changes"),
        default="all",
        help="publish an event for every annotated frame (all, the default) or only when a "
        "label comes or goes (changes, as Frigate does; the label states are the same)",
    )
    group.add_argument(
        "--mqtt-events-qos",
        type=int,
        choices=(0, 1),
        default=1,
        help="QoS of the events: 1 (default, at least once) or 0 (cheaper; an event on a "
        "connection that dies is lost); states and discovery stay QoS 1",
    )
    group.add_argument(
        "--no-ha-discovery",
        action="store_true",
        help="do not publish Home Assistant discovery configs",
    )
    group.add_argument(
        "--ha-discovery-prefix",
        default="homeassistant",
        metavar="PREFIX",
        help="Home Assistant's discovery prefix (default homeassistant)",
    )


# glibc's mallopt parameter for the number of malloc arenas.
M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Caps glibc's malloc arenas for this process (elsewhere: nothing).

    glibc gives each thread that allocates its own arena, up to 8 per core; the
    capture, inference, outputs and interpreter threads then each keep freed memory
    of their own.  Two arenas cost no measurable speed here and save about 1 MB of
    the resident memory a board has little of.  Called before any thread starts.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        pass  # musl and other C libraries have no mallopt


def run(args: argparse.Namespace) -> int:
    """Runs the annotation loop; returns 0 when it ends or is stopped by a signal."""
    from fuselite.interpreter import InterpreterNotFoundError
    from fuselite.runtime.loop import SetupError
    from fuselite.runtime.loop import run as run_loop

    if args.config is not None:
        return run_config(args)
    if args.bundle is None or args.source is None:
        missing = " and ".join(name for name, value in (("--bundle", args.bundle),
                                                         ("--source", args.source)) if value is None)
        raise UserError(f"fuselite run needs {missing} (or --config CAMERAS.toml for several cameras)")
    try:
        annotator_options, run_options = _build_options(args)
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc)) from None
    limit_malloc_arenas()
    try:
        summary = run_loop(run_options, annotator_options)
    except (SetupError, InterpreterNotFoundError) as exc:
        raise UserError(str(exc)) from None
    log.info(
        "annotated %d frames in %.1f s (stopped by %s)",
        summary.frames,
        summary.seconds,
        summary.stopped_by,
    )
    return 0


# Options a cameras file sets per camera (or once): refused beside --config, not ignored.
CAMERA_FILE_OPTIONS = ("bundle", "source", "threads", "labels", "threshold", "max_results", "allow",
                       "deny", "smoothing", "hysteresis", "fps_limit", "max_frames", "video_out",
                       "video_segment_minutes", "preview", "decode_threads", "decode_resize", "invoke_timeout",
                       "camera_name", "mqtt", "mqtt_user", "mqtt_password_file", "mqtt_tls_ca",
                       "mqtt_tls_cert", "mqtt_tls_key", "mqtt_client_id")


def run_config(args: argparse.Namespace) -> int:
    """Runs every camera of ``args.config`` in this process; returns 0 when they end or a
    signal stops them."""
    from fuselite.interpreter import InterpreterNotFoundError
    from fuselite.runtime.cameras import load_cameras_config
    from fuselite.runtime.loop import SetupError
    from fuselite.runtime.mqtt import mqtt_settings_from_table
    from fuselite.runtime.multicam import run_cameras

    given = [f"--{name.replace('_', '-')}" for name in CAMERA_FILE_OPTIONS
             if getattr(args, name, None) is not None]
    if given:
        raise UserError(f"with --config, the cameras file says what {', '.join(given)} would: "
                        "drop them and set them in the file (docs/cameras.md)")
    try:
        config = load_cameras_config(args.config)
        if config.mqtt is not None:  # checked before any model loads
            mqtt_settings_from_table(config.mqtt, where=f"{args.config}: [mqtt]")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    limit_malloc_arenas()
    try:
        summaries = run_cameras(config)
    except (SetupError, InterpreterNotFoundError) as exc:
        raise UserError(f"{args.config}: {exc}") from None
    for name, summary in summaries.items():
        log.info("%s: annotated %d frames in %.1f s (stopped by %s)", name, summary.frames,
                 summary.seconds, summary.stopped_by)
    return 0


def _build_options(args: argparse.Namespace):
    from fuselite.runtime.labels import parse_label_text
    from fuselite.runtime.mqtt import mqtt_settings_from_args
    from fuselite.runtime.options import AnnotatorOptions, RunOptions, default_threads

    temporal = not Path(args.source).is_dir()
    annotator_options = AnnotatorOptions(
        bundle_path=args.bundle,
        num_threads=args.threads if args.threads is not None else default_threads(),
        score_threshold=args.threshold,
        max_results=args.max_results,
        category_allowlist=parse_label_text(args.allow or ""),
        category_denylist=parse_label_text(args.deny or ""),
        labels=parse_label_text(args.labels) if args.labels is not None else None,
        smoothing=args.smoothing if args.smoothing is not None else (0.5 if temporal else 0.0),
        hysteresis=args.hysteresis if args.hysteresis is not None else (0.05 if temporal else 0.0),
        explain=args.explain,
    )
    run_options = RunOptions(
        source=args.source,
        jsonl=None if args.jsonl.lower() == "none" else args.jsonl,
        video_out=args.video_out,
        video_segment_minutes=args.video_segment_minutes,
        preview_port=args.preview,
        preview_bind=args.bind,
        preview_max_clients=args.preview_max_clients,
        all_scores=args.all_scores,
        event_heatmaps=args.event_heatmaps,
        draw_heatmaps=args.draw_heatmaps,
        display=args.display,
        fps_limit=args.fps_limit,
        max_frames=args.max_frames,
        drop_stale={"auto": None, "yes": True, "no": False}[args.drop_stale],
        loop=args.loop,
        stats_interval=args.stats_interval,
        reconnect_delay=args.reconnect_delay,
        reconnect_max_delay=args.reconnect_max_delay,
        stream_timeout=args.stream_timeout,
        decode_threads=args.decode_threads,
        decode_resize=args.decode_resize or "auto",
        pin_threads=args.pin_threads == "auto",
        invoke_timeout=args.invoke_timeout,
        camera=args.camera_name or "",
        mqtt=mqtt_settings_from_args(args),
    )
    return annotator_options, run_options
