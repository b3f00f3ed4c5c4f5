"""The cameras file of `fuselite run --config`: what a good file gives, and one clear line for
each kind of mistake, naming the camera and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from runtime_helpers import error_lines, fuselite_run

from fuselite.runtime.cameras import ConfigError, load_cameras_config

GOOD = """
threads = 2
stats_interval = 30
preview = 8080
keep_gb = 20

[defaults]
bundle = "/etc/fuselite/model.tflite"
fps = 5

[[camera]]
name = "door"
source = "rtsp://192.168.1.20/stream1"
labels = ["person", "cat"]
threshold = 0.6
roi = [0, 120, 640, 360]
jsonl = "door/events.jsonl"
jsonl_rotate_mb = 16
video = "door/door.mp4"
keep_days = 7

[[camera]]
name = "yard"
source = 0
bundle = "/etc/fuselite/yard.tflite"
fps = 2
allow = ["dog"]
explain = false
draw_heatmaps = true

[mqtt]
url = "mqtt://broker:1883"
username = "fuselite"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cameras.toml"
    path.write_text(text)
    return path


def test_a_good_cameras_file_gives_each_camera_its_options_and_keeps_the_mqtt_table(tmp_path):
    config = load_cameras_config(write(tmp_path, GOOD))
    door, yard = config.cameras
    assert (door.name, yard.name) == ("door", "yard")
    assert door.annotator.bundle_path == Path("/etc/fuselite/model.tflite")  # from [defaults]
    assert yard.annotator.bundle_path == Path("/etc/fuselite/yard.tflite")  # its own wins
    assert door.annotator.labels == ("person", "cat") and door.annotator.score_threshold == 0.6
    assert yard.annotator.category_allowlist == ("dog",)
    assert (door.run.fps_limit, yard.run.fps_limit) == (5.0, 2.0)
    assert (door.run.camera, yard.run.source) == ("door", "0")
    assert door.roi == (0, 120, 640, 360) and yard.roi is None
    assert door.run.jsonl_rotate_mb == 16 and str(door.run.video_out) == "door/door.mp4"
    assert (door.retention.keep_gb, door.retention.keep_days) == (None, 7.0)
    assert (config.retention.keep_gb, config.preview_port, config.threads) == (20.0, 8080, 2)
    assert config.mqtt == {"url": "mqtt://broker:1883", "username": "fuselite"}  # as written
    assert door.annotator.num_threads == yard.annotator.num_threads == 2
    # where labels fired: on by default, per camera
    assert door.annotator.explain and not yard.annotator.explain
    assert yard.run.draw_heatmaps and not door.run.draw_heatmaps and not door.run.event_heatmaps


CAMERA = '[[camera]]\nname = "door"\nsource = "clip.mp4"\nbundle = "m.tflite"\n'
BAD = {
    "typo in a key": (CAMERA + "fsp = 5\n", ["'door'", "'fsp'", "unknown camera key"]),
    "negative fps": (CAMERA + "fps = -1\n", ["'door'", "'fps'", "more than 0"]),
    "fps as text": (CAMERA + 'fps = "fast"\n', ["'door'", "'fps'", "must be a number"]),
    "roi of three numbers": (
        CAMERA + "roi = [0, 0, 10]\n",
        ["'door'", "'roi'", "[x, y, width, height]"],
    ),
    "label thresholds as a list": (
        CAMERA + "thresholds = [0.5]\n",
        ["'door'", "'thresholds'", "label = threshold"],
    ),
    "threshold above 1": (CAMERA + "threshold = 2\n", ["'door'", "'threshold'", "from 0 to 1"]),
    "labels as a number": (CAMERA + "labels = 3\n", ["'door'", "'labels'", "list of label texts"]),
    "allow and deny": (CAMERA + 'allow = ["a"]\ndeny = ["b"]\n', ["'door'", "'allow'", "not both"]),
    "no source": (
        '[[camera]]\nname = "yard"\nbundle = "m.tflite"\n',
        ["'yard'", "'source'", "missing"],
    ),
    "no name": (
        '[[camera]]\nsource = "a.mp4"\nbundle = "m.tflite"\n',
        ["'#1'", "'name'", "missing"],
    ),
    "bad name": (
        '[[camera]]\nname = "front door"\nsource = "a.mp4"\nbundle = "m"\n',
        ["'name'", "letters, digits"],
    ),
    "two cameras of one name": (
        CAMERA + CAMERA,
        ["'door'", "'name'", "two cameras are named 'door'"],
    ),
    "two cameras, one events file": (
        CAMERA + 'jsonl = "ev.jsonl"\n' + CAMERA.replace("door", "yard") + 'jsonl = "ev.jsonl"\n',
        ["'yard'", "'jsonl'", "also written by camera 'door'"],
    ),
    "keep_gb without rotated files": (
        CAMERA + "keep_gb = 1\n",
        ["'door'", "'keep_gb'", "no rotated files"],
    ),
    "no camera": ("threads = 1\n", ["'camera'", "add at least one [[camera]]"]),
    "unknown top-level key": ("thread = 2\n" + CAMERA, ["'thread'", "unknown key"]),
    "zero threads": ("threads = 0\n" + CAMERA, ["'threads'", "of 1 or more"]),
    "defaults with a typo": ("[defaults]\nbundel = 'm'\n" + CAMERA, ["'defaults.bundel'"]),
    "not TOML": ("[[camera]\nname = 'x'\n", ["not valid TOML"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_cameras_file_is_one_line_naming_the_camera_and_the_key(tmp_path, case):
    text, expected = BAD[case]
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_cameras_config(path)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(str(path))
    for part in expected:
        assert part in message, message


def test_a_missing_cameras_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the cameras file"):
        load_cameras_config(tmp_path / "absent.toml")


def test_fuselite_run_with_a_bad_config_exits_2_with_one_line(tmp_path):
    path = write(tmp_path, CAMERA + "fps = 0\n")
    done = fuselite_run("--config", path, timeout=60)
    assert done.returncode == 2
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and "camera 'door': key 'fps'" in lines[0], done.stderr


def test_fuselite_run_refuses_config_with_bundle_or_source(tmp_path):
    path = write(tmp_path, CAMERA)
    done = fuselite_run("--config", path, "--source", "0", timeout=60)
    assert done.returncode == 2 and "--source would: drop them" in done.stderr


def test_fuselite_run_without_config_still_needs_bundle_and_source():
    done = fuselite_run("--source", "0", timeout=60)
    assert done.returncode == 2 and "needs --bundle" in done.stderr
