"""Segmented video output: files rotate, each is closed cleanly and plays in OpenCV."""

from __future__ import annotations

import signal
import time

import cv2
import pytest
from runtime_helpers import (
    BLUE,
    RED,
    count_frames,
    error_lines,
    events,
    fuselite_popen,
    fuselite_run,
    solid,
    write_clip,
)

from fuselite.runtime.options import DEFAULT_SEGMENT_MINUTES, RunOptions
from fuselite.runtime.outputs import VideoOutput, segment_seconds


def playable_frames(path) -> int:
    """Frames OpenCV decodes from ``path``; fails unless it opens as a video."""
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), path
    capture.release()
    return count_frames(path)


def test_segments_rotate_on_stream_time_and_each_plays(fp32_bundle, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", [RED, BLUE], frames_each=20)  # 1.6 s at 25 fps
    out, jsonl = tmp_path / "video" / "out.mp4", tmp_path / "events.jsonl"
    done = fuselite_run(
        "--bundle", fp32_bundle, "--source", clip, "--jsonl", jsonl,
        "--video-out", out, "--video-segment-minutes", 0.01,  # 0.6 s
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    files = sorted(out.parent.iterdir())
    assert [f.name for f in files] == ["out-0001.mp4", "out-0002.mp4", "out-0003.mp4"]
    frames = [playable_frames(f) for f in files]
    assert frames == [15, 15, 10]
    # One JSONL record per finished file, before the final stats.
    records = events(jsonl, "video")
    assert [(r["path"], r["frames"], r["first_frame"]) for r in records] == [
        (str(files[0]), 15, 0),
        (str(files[1]), 15, 15),
        (str(files[2]), 10, 30),
    ]
    # The first segment is red, the last blue: frames went to the right file.
    capture = cv2.VideoCapture(str(files[-1]))
    ok, frame = capture.read()
    capture.release()
    assert ok and frame[110, 80, 0] > 200 and frame[110, 80, 2] < 60  # below the overlay

    # A second run continues the numbering instead of overwriting.
    done = fuselite_run(
        "--bundle", fp32_bundle, "--source", clip, "--jsonl", "none",
        "--video-out", out, "--video-segment-minutes", 0.01,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [f.name for f in sorted(out.parent.iterdir())] == [
        f"out-{n:04d}.mp4" for n in range(1, 7)
    ]


def test_a_signal_closes_the_open_segment_and_leaves_no_partial_file(fp32_bundle, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", [RED, BLUE], frames_each=10)
    out, jsonl = tmp_path / "out.mp4", tmp_path / "events.jsonl"
    process = fuselite_popen(
        "--bundle", fp32_bundle, "--source", clip, "--loop", "--fps-limit", 50,
        "--jsonl", jsonl, "--video-out", out, "--video-segment-minutes", 0.005,  # 0.3 s
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("out-*.mp4"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    files = sorted(tmp_path.glob("out-*.mp4"))
    assert len(files) >= 3 and not list(tmp_path.glob(".*partial*"))
    written = [playable_frames(f) for f in files]
    assert all(n > 0 for n in written)
    assert sum(written) == len(events(jsonl))
    assert [r["path"] for r in events(jsonl, "video")] == [str(f) for f in files]


def test_segment_length_follows_timestamps_and_a_replay_does_not_end_one(tmp_path):
    video = VideoOutput(tmp_path / "v.avi", fps=10, segment_seconds=1.0)
    stamps = [0, 100, 200, 300, 400, 0, 100, 200, 300, 400, 500, 600]  # a file looping
    for i, ms in enumerate(stamps):
        video.write(solid(RED), ms, i)
    assert video.files == [tmp_path / "v-0001.avi"]  # 1.0 s of stream time, then a new file
    assert video.partial == tmp_path / ".v-0002.partial.avi" and video.partial.exists()
    video.close()
    assert video.files == [tmp_path / "v-0001.avi", tmp_path / "v-0002.avi"]
    assert [count_frames(f) for f in video.files] == [11, 1]
    assert not video.partial.exists()


def test_without_timestamps_each_frame_counts_one_over_fps(tmp_path):
    video = VideoOutput(tmp_path / "v.mp4", fps=10, segment_seconds=0.5)
    for _ in range(12):
        video.write(solid(BLUE))
    video.close()
    assert [count_frames(f) for f in video.files] == [5, 5, 2]


def test_segments_by_default_only_for_live_sources():
    assert segment_seconds(RunOptions("clip.mp4"), live=False) is None
    assert segment_seconds(RunOptions("clip.mp4", loop=True), live=False) is None
    assert segment_seconds(RunOptions("0"), live=True) == 60 * DEFAULT_SEGMENT_MINUTES
    assert segment_seconds(RunOptions("0", video_segment_minutes=0), live=True) is None
    assert segment_seconds(RunOptions("clip.mp4", video_segment_minutes=2), live=False) == 120


@pytest.mark.parametrize("minutes", ["-1", "nan"])
def test_a_bad_segment_length_is_one_error_line(fp32_bundle, red_blue_clip, tmp_path, minutes):
    done = fuselite_run(
        "--bundle", fp32_bundle, "--source", red_blue_clip,
        "--video-out", tmp_path / "v.mp4", "--video-segment-minutes", minutes,
    )  # fmt: skip
    assert done.returncode == 2
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and "video_segment_minutes" in lines[0], done.stderr
