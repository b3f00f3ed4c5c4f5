"""Several cameras in one process: fair turns, FPS caps, a stalled camera, per-camera stats,
one preview page, and `fuselite run --config` end to end (real files, streams and bundles)."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from runtime_helpers import error_lines, events, fuselite_run, solid, write_clip
from support.frames import BLUE, RED

from fuselite.runtime.cameras import load_cameras_config
from fuselite.runtime.multicam import CameraSlot, RoundRobin, run_cameras
from fuselite.runtime.preview import MjpegPreview
from fuselite.runtime.reader import QUEUE_SIZE, FrameSource
from fuselite.runtime.sources import capture_for

STATS_KEYS = {"camera", "inference_fps", "camera_fps", "dropped", "reconnects", "latency_p50_ms"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    """Three short clips: red then blue, blue then red, all red (40 frames at 25 fps)."""
    folder = tmp_path_factory.mktemp("multicam-clips")
    colours = [[RED, BLUE], [BLUE, RED], [RED, RED]]
    return [write_clip(folder / f"clip{i}.mp4", c, frames_each=20) for i, c in enumerate(colours)]


def file_slots(clips: list[Path]) -> list[CameraSlot]:
    """Started file sources (every frame kept), each in a slot of its own, their queues full."""
    slots = []
    for clip in clips:
        source = FrameSource(capture_for(str(clip)), drop_stale=False).start()
        slots.append(CameraSlot(config=None, annotator=None, source=source, outputs=None))
    deadline = time.monotonic() + 5
    # A capture thread that has read QUEUE_SIZE + 1 frames waits for room: its queue is full.
    while time.monotonic() < deadline and not all(
        slot.source.counters.read > QUEUE_SIZE for slot in slots
    ):
        time.sleep(0.01)
    return slots


def take_turns(scheduler: RoundRobin, slots: list[CameraSlot], turns: int) -> list[int]:
    order = []
    for _ in range(turns):
        slot, _wait = scheduler.pick(time.monotonic())
        assert slot is not None
        assert slot.source.next_frame(timeout=0) is not None
        order.append(slots.index(slot))
    return order


def test_cameras_with_frames_waiting_take_turns(clips):
    slots = file_slots(clips)
    try:
        order = take_turns(RoundRobin(slots), slots, 3 * QUEUE_SIZE)
    finally:
        for slot in slots:
            slot.source.close()
    assert order == [0, 1, 2] * QUEUE_SIZE


def test_a_file_camera_sharing_the_model_keeps_frames_for_its_longer_wait(clips):
    # Its turn comes a quarter as often: its capture thread keeps four times the frames
    # ready, so each wake-up decodes several (not one) and the queue never runs dry.
    shared = FrameSource(capture_for(str(clips[0])), drop_stale=False)
    shared.keep_pixels = False  # no video or preview: each frame is its small model input
    shared.share_consumer(4)
    drawn = FrameSource(capture_for(str(clips[2])), drop_stale=False)
    drawn.share_consumer(4)  # its frames keep their pixels: not held four times over
    assert drawn.queue_size == QUEUE_SIZE
    live_like = FrameSource(capture_for(str(clips[1])), drop_stale=True)
    live_like.share_consumer(4)  # latest frame only: nothing to keep
    with shared, live_like:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and shared.counters.read <= 4 * QUEUE_SIZE:
            time.sleep(0.01)
        time.sleep(0.1)
        assert shared.counters.read == 4 * QUEUE_SIZE + 1  # one more read waits for room
        assert live_like.queue_size == QUEUE_SIZE
        frames = [shared.next_frame(timeout=0) for _ in range(4 * QUEUE_SIZE)]
        assert [f.index for f in frames] == list(range(4 * QUEUE_SIZE))  # none dropped


def test_a_camera_over_its_fps_cap_waits_and_the_others_go_on(clips):
    slots = file_slots(clips)
    slots[0].next_due = time.monotonic() + 0.5  # camera 0 just had its frame
    scheduler = RoundRobin(slots)
    try:
        assert take_turns(scheduler, slots, 6) == [1, 2] * 3
        slots[1].stopped_by = slots[2].stopped_by = "end"
        slot, wait = scheduler.pick(time.monotonic())
        assert slot is None and 0.3 < wait <= 0.5  # asleep until camera 0 is due
    finally:
        for slot in slots:
            slot.source.close()


def toml_value(value) -> str:
    """A TOML value: JSON's spelling, except tables, which TOML writes ``{key = value}``."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def camera_toml(name: str, source, bundle: Path, out: Path, **keys) -> str:
    lines = [
        f'[[camera]]\nname = "{name}"\nsource = "{source}"\nbundle = "{bundle}"',
        f'jsonl = "{out / name}.jsonl"',
    ]
    lines += [f"{key} = {toml_value(value)}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def test_each_camera_keeps_its_own_fps_cap(clips, int8_bundle, tmp_path):
    config = tmp_path / "cameras.toml"
    config.write_text(
        "threads = 1\nstats_interval = 0\n"
        + camera_toml("slow", clips[0], int8_bundle, tmp_path, fps=10, max_frames=10, loop=True)
        + camera_toml("fast", clips[1], int8_bundle, tmp_path, fps=25, max_frames=25, loop=True)
    )
    summaries = run_cameras(load_cameras_config(config))
    for name, fps in (("slow", 10), ("fast", 25)):
        assert summaries[name].frames == fps
        final = events(tmp_path / f"{name}.jsonl", "stats")[-1]
        # N frames at F fps take (N - 1) / F seconds: 0.9 s and 0.96 s, not the 0.1 s a
        # file takes uncapped; a busy machine may add time, never remove it.
        assert 0.85 <= final["elapsed_s"] < 5.0, final


def test_cameras_without_a_video_share_one_writer_thread_and_keep_every_event(
    clips, int8_bundle, tmp_path
):
    """One writer thread for the cameras that only write events (a thread each cost four
    saturated cameras a fifth of their frames); a camera with a video keeps its own."""
    config = tmp_path / "cameras.toml"
    config.write_text(
        "threads = 1\nstats_interval = 0\n"
        + "".join(
            camera_toml(name, clip, int8_bundle, tmp_path, loop=True)
            for name, clip in zip("abc", clips, strict=True)
        )
        + camera_toml("recorded", clips[0], int8_bundle, tmp_path, loop=True)
        + f'video = "{tmp_path / "recorded.mp4"}"\n'
    )
    stop = threading.Event()
    runner = threading.Thread(target=run_cameras, args=(load_cameras_config(config), stop))
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(
            len(_lines(tmp_path / f"{name}.jsonl")) >= 60 for name in [*"abc", "recorded"]
        ):
            time.sleep(0.05)
        writers = [thread.name for thread in threading.enumerate()].count("outputs")
    finally:
        stop.set()
        runner.join(30)
    assert writers == 2
    for name in [*"abc", "recorded"]:
        annotated = events(tmp_path / f"{name}.jsonl")
        assert len(annotated) >= 60  # more than the 40-frame clip: it looped
        assert [e["frame"] for e in annotated] == list(range(len(annotated)))
        final = events(tmp_path / f"{name}.jsonl", "stats")[-1]
        assert final["final"] and final["frames"] == len(annotated)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


class StallingCamera:
    """A real MJPEG-over-HTTP camera on 127.0.0.1 that sends frames, then stalls (the
    connection stays open and nothing comes), as a camera does whose network hangs."""

    def __init__(self) -> None:
        self.server = MjpegPreview("127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.server.port}/stream.mjpg"
        self.sending = threading.Event()
        self.sending.set()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        while not self._closed.wait(0.04):
            if self.sending.is_set():
                self.server.publish(solid(BLUE).copy())

    def close(self) -> None:
        self._closed.set()
        self.server.close()


def final_stats(path: Path) -> dict | None:
    """The final stats record of a camera's events, once written."""
    stats = events(path, "stats") if path.exists() else []
    return stats[-1] if stats and stats[-1]["final"] else None


def http_get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


def test_a_stalled_camera_slows_no_other_and_every_camera_has_stats_and_a_preview_tile(
    clips, int8_bundle, tmp_path, caplog
):
    camera, port = StallingCamera(), free_port()
    config = tmp_path / "cameras.toml"
    config.write_text(
        f"threads = 1\nstats_interval = 0.5\npreview = {port}\n"
        + camera_toml(
            "stalls",
            camera.url,
            int8_bundle,
            tmp_path,
            stream_timeout=0.5,
            reconnect_delay=0.1,
            reconnect_max_delay=0.2,
        )
        + camera_toml("file", clips[0], int8_bundle, tmp_path, fps=20, max_frames=50, loop=True)
    )
    stop, result = threading.Event(), {}
    runner = threading.Thread(
        target=lambda: result.update(run_cameras(load_cameras_config(config), stop))
    )
    caplog.set_level(logging.INFO, logger="fuselite")
    try:
        runner.start()
        time.sleep(0.5)
        camera.sending.clear()  # the stream hangs: reads time out, reopening fails
        time.sleep(1.5)
        page = http_get(f"http://127.0.0.1:{port}/")[1].decode()
        status, jpeg = http_get(f"http://127.0.0.1:{port}/camera/file/snapshot.jpg")
        preview_stats = json.loads(http_get(f"http://127.0.0.1:{port}/stats.json")[1])
        camera.sending.set()  # back: the next attempt reconnects
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not final_stats(tmp_path / "file.jsonl"):
            time.sleep(0.1)
        time.sleep(1.0)
    finally:
        stop.set()
        runner.join(15)
        camera.close()
    assert not runner.is_alive()
    annotated = events(tmp_path / "file.jsonl")
    assert len(annotated) == 50
    # 50 frames at its 20 fps cap take 2.45 s however long the other camera hangs; waiting
    # on the stalled one in turn (0.5 s a stall) would allow about 2 fps: 25 s. The margin
    # is for a busy CI machine.
    span = annotated[-1]["time"] - annotated[0]["time"]
    assert span < 6.0, span
    stalled = events(tmp_path / "stalls.jsonl", "stats")[-1]
    assert stalled["final"] and stalled["reconnects"] >= 1 and stalled["frames"] >= 1
    for name in ("stalls", "file"):
        record = events(tmp_path / f"{name}.jsonl", "stats")[-1]
        assert STATS_KEYS <= set(record) and record["camera"] == name
        assert all(e["camera"] == name for e in events(tmp_path / f"{name}.jsonl"))
        assert f'id="img-{name}"' in page
        assert any(
            r.getMessage().startswith(f"{name}: ") and "reconnects" in r.getMessage()
            for r in caplog.records
        )  # the stats log line names its camera
        assert STATS_KEYS <= set(preview_stats[name])
    assert status == 200 and jpeg[:2] == b"\xff\xd8"


def test_fuselite_run_config_annotates_two_video_files_with_one_shared_model(
    red_blue_clip, clips, int8_bundle, tmp_path
):
    out = tmp_path / "out"
    config = tmp_path / "cameras.toml"
    config.write_text(
        f'threads = 1\n[defaults]\nbundle = "{int8_bundle}"\n'
        f'[[camera]]\nname = "front"\nsource = "{red_blue_clip}"\n'
        f'jsonl = "{out}/front.jsonl"\nvideo = "{out}/front.mp4"\n'
        f'[[camera]]\nname = "back"\nsource = "{clips[1]}"\nlabels = ["red", "blue"]\n'
        f'roi = [0, 0, 80, 60]\njsonl = "{out}/back.jsonl"\n'
    )
    done = fuselite_run("--config", config, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "2 cameras, 1 shared model(s)" in done.stderr
    front, back = events(out / "front.jsonl"), events(out / "back.jsonl")
    assert [e["frame"] for e in front] == list(range(40)) == [e["frame"] for e in back]
    assert [lab["label"] for lab in front[5]["labels"]] == ["red"]
    assert [lab["label"] for lab in back[5]["labels"]] == ["blue"]  # its own clip, its own labels
    assert [lab["label"] for lab in back[-1]["labels"]] == ["red"]
    assert events(out / "front.jsonl", "video")[0]["frames"] == 40
    for path in (out / "front.jsonl", out / "back.jsonl"):
        final = events(path, "stats")[-1]
        assert final["final"] and final["stopped_by"] == "end" and final["frames"] == 40
    assert not [line for line in error_lines(done.stderr) if "WARNING" in line or "ERROR" in line]


def test_a_region_of_interest_is_what_the_model_sees(int8_bundle, tmp_path):
    """The left half red, the right half blue: each camera's region decides its label."""
    frame = np.concatenate([solid(RED), solid(BLUE)], axis=1)  # 320 x 120
    clip = tmp_path / "halves.mp4"
    import cv2

    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 25, (320, 120))
    for _ in range(10):
        writer.write(frame)
    writer.release()
    config = tmp_path / "cameras.toml"
    config.write_text(
        "threads = 1\nstats_interval = 0\n"
        + camera_toml("left", clip, int8_bundle, tmp_path, roi=[0, 0, 160, 120])
        + camera_toml("right", clip, int8_bundle, tmp_path, roi=[160, 0, 160, 120])
    )
    run_cameras(load_cameras_config(config))
    for name, label in (("left", "red"), ("right", "blue")):
        assert {
            lab["label"] for e in events(tmp_path / f"{name}.jsonl") for lab in e["labels"]
        } == {label}


def test_per_label_thresholds_decide_what_each_camera_reports(red_blue_clip, int8_bundle, tmp_path):
    config = tmp_path / "cameras.toml"
    config.write_text(
        "threads = 1\nstats_interval = 0\n"
        + camera_toml("usual", red_blue_clip, int8_bundle, tmp_path)
        + camera_toml("strict", red_blue_clip, int8_bundle, tmp_path, thresholds={"red": 1.0})
    )
    run_cameras(load_cameras_config(config))
    reported = {
        name: {lab["label"] for e in events(tmp_path / f"{name}.jsonl") for lab in e["labels"]}
        for name in ("usual", "strict")
    }
    assert reported == {"usual": {"red", "blue"}, "strict": {"blue"}}  # no score reaches 1.0


def test_a_threshold_for_a_label_the_camera_does_not_score_is_one_line(
    red_blue_clip, int8_bundle, tmp_path
):
    config = tmp_path / "cameras.toml"
    config.write_text(
        camera_toml("door", red_blue_clip, int8_bundle, tmp_path, thresholds={"purple": 0.5})
    )
    done = fuselite_run("--config", config, timeout=60)
    assert done.returncode == 2
    (line,) = error_lines(done.stderr)
    assert "camera 'door'" in line and "thresholds names 'purple'" in line and "red" in line


def test_a_missing_bundle_or_video_is_one_line_naming_the_camera(
    red_blue_clip, int8_bundle, tmp_path
):
    for name, source, bundle, expected in (
        ("door", red_blue_clip, tmp_path / "absent.tflite", "absent.tflite"),
        ("yard", tmp_path / "absent.mp4", int8_bundle, "absent.mp4"),
    ):
        config = tmp_path / f"{name}.toml"
        config.write_text(camera_toml(name, source, bundle, tmp_path))
        done = fuselite_run("--config", config, timeout=60)
        assert done.returncode == 2, done.stderr
        (line,) = error_lines(done.stderr)
        assert f"camera '{name}'" in line and expected in line, line


def test_each_camera_says_where_its_labels_fired_and_can_turn_it_off(regional_colour_bundles, tmp_path):
    """A regional bundle in a cameras file: events carry each label's point and box, as a
    single-camera run's do, unless the camera says ``explain = false``."""
    import cv2

    frame = np.concatenate([solid(RED), solid(BLUE)], axis=1)  # red left, blue right
    clip = tmp_path / "halves.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 25, frame.shape[1::-1])
    for _ in range(6):
        writer.write(frame)
    writer.release()
    bundle = regional_colour_bundles["int8"]
    config = tmp_path / "cameras.toml"
    config.write_text(
        "threads = 1\nstats_interval = 0\n"
        + camera_toml("where", clip, bundle, tmp_path, labels=["red", "blue"])
        + camera_toml("quiet", clip, bundle, tmp_path, labels=["red", "blue"], explain=False)
    )
    run_cameras(load_cameras_config(config))
    located = {lab["label"]: lab for lab in events(tmp_path / "where.jsonl")[-1]["labels"]}
    assert located["red"]["point"][0] < 0.5 < located["blue"]["point"][0]
    assert all(0 <= v <= 1 for lab in located.values() for v in lab["box"])
    assert not [lab for e in events(tmp_path / "quiet.jsonl") for lab in e["labels"] if "point" in lab]


def test_a_headless_camera_is_decoded_at_the_model_size_and_others_keep_whole_frames(
    red_blue_clip, int8_bundle, tmp_path
):
    import shutil

    if shutil.which("ffmpeg") is None:
        pytest.skip("needs ffmpeg")
    out = tmp_path / "out"
    config = tmp_path / "cameras.toml"
    config.write_text(
        f'threads = 1\n[defaults]\nbundle = "{int8_bundle}"\nsource = "{red_blue_clip}"\n'
        f'[[camera]]\nname = "lean"\ndecode_resize = "auto"\njsonl = "{out}/lean.jsonl"\n'
        f'[[camera]]\nname = "whole"\njsonl = "{out}/whole.jsonl"\n'
        f'[[camera]]\nname = "cut"\ndecode_resize = "auto"\nroi = [0, 0, 80, 60]\njsonl = "{out}/cut.jsonl"\n'
    )
    import subprocess
    import sys

    from runtime_helpers import runtime_env

    done = subprocess.run(
        [sys.executable, "-m", "fuselite.cli", "--verbose", "run", "--config", str(config)],
        capture_output=True, text=True, check=False, timeout=60, env=runtime_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    scaled = [line for line in done.stderr.splitlines() if "FFmpeg decodes it straight" in line]
    assert len(scaled) == 1  # "lean" only: "whole" keeps the default (off), "cut" needs whole frames
    assert "decoding whole frames: its roi (cut from whole frames)" in done.stderr
    lean, whole = events(out / "lean.jsonl"), events(out / "whole.jsonl")
    assert len(lean) == len(whole) == 40
    assert [e["labels"][0]["label"] for e in lean] == [e["labels"][0]["label"] for e in whole]


def test_a_bad_decode_resize_in_a_cameras_file_is_one_line(red_blue_clip, int8_bundle, tmp_path):
    config = tmp_path / "cameras.toml"
    config.write_text(
        f'[[camera]]\nname = "door"\nbundle = "{int8_bundle}"\nsource = "{red_blue_clip}"\n'
        'decode_resize = "always"\n'
    )
    done = fuselite_run("--config", config, timeout=60)
    assert done.returncode == 2
    expected = f"{config}: camera 'door': key 'decode_resize': must be auto, ffmpeg, off, not 'always'"
    assert error_lines(done.stderr) == [f"fuselite run: error: {expected}"]
