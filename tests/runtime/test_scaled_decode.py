"""Resize at decode time: a headless run lets FFmpeg decode straight to the model's size.

Real ``ffmpeg`` processes on real video files and a real RTSP stream on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from rtsp_relay import RtspRelay
from runtime_helpers import error_lines, events, fuselite_run, runtime_env

from fuselite.runtime.scaled import DecodeSize, ScaledCapture, decode_scaling
from fuselite.runtime.sources import SourceError

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")


@pytest.fixture(scope="module")
def pattern_clip(tmp_path_factory) -> Path:
    """2 s of FFmpeg's moving test pattern, 320x240 at 25 fps, H.264: detail to resize."""
    path = tmp_path_factory.mktemp("scaled") / "pattern.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-t", "2",
         "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)],
        check=True, timeout=60,
    )  # fmt: skip
    return path


def decoded_whole(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def test_ffmpeg_gives_every_frame_at_the_model_size_as_the_preprocessor_would(pattern_clip):
    capture = ScaledCapture(str(pattern_clip), live=False, size=DecodeSize(48, 32, "area"))
    capture.open()
    frames, stamps = [], []
    try:
        while True:
            ok, image, media_ms, _ = capture.read()
            if not ok:
                break
            frames.append(image)
            stamps.append(media_ms)
    finally:
        capture.release()
    whole = decoded_whole(pattern_clip)
    assert len(frames) == len(whole) == 50
    assert {f.shape for f in frames} == {(32, 48, 3)}
    assert stamps[:3] == [0.0, 40.0, 80.0]  # media time at the file's 25 fps
    resized = [cv2.resize(f, (48, 32), interpolation=cv2.INTER_AREA) for f in whole]
    difference = np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(frames, resized)])
    assert difference < 2.0  # grey levels: the same picture, up to rounding


def test_a_source_ffmpeg_cannot_read_is_refused_with_its_reason(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video" * 100)
    capture = ScaledCapture(str(broken), live=False, size=DecodeSize(32, 32, "area"))
    with pytest.raises(SourceError, match="cannot open .*broken.mp4 with ffmpeg: .+"):
        capture.open()


@pytest.mark.parametrize(
    ("mode", "whole", "resize", "reason"),
    [
        ("auto", None, "area", None),
        ("off", None, "area", "--decode-resize off"),
        ("auto", "--video-out", "area", "--video-out needs whole frames"),
        ("auto", None, "linear", "the bundle resizes 'linear'"),
        ("ffmpeg", None, "linear", None),  # asked for: FFmpeg's bilinear
    ],
)
def test_when_a_run_decodes_at_the_model_size(pattern_clip, mode, whole, resize, reason):
    said = decode_scaling(mode, str(pattern_clip), whole, resize)
    assert said == reason or (reason and said.startswith(reason))


def test_cameras_and_folders_keep_their_own_captures(tmp_path):
    assert "not cameras or folders" in decode_scaling("auto", "0", None)
    assert "not cameras or folders" in decode_scaling("auto", str(tmp_path), None)


def final_stats(path: Path) -> dict:
    return next(r for r in map(json.loads, path.open()) if r.get("type") == "stats" and r.get("final"))


def test_a_headless_run_annotates_the_same_labels_and_counts_ffmpegs_cpu(
    regional_colour_bundles, red_blue_clip, tmp_path
):
    runs = {}
    for mode in ("auto", "off"):
        jsonl = tmp_path / f"{mode}.jsonl"
        result = fuselite_run(
            "--bundle", regional_colour_bundles["int8"], "--source", red_blue_clip, "--jsonl", jsonl,
            "--display", "off", "--threads", "1", "--decode-resize", mode,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        runs[mode] = (result.stderr, events(jsonl), final_stats(jsonl))
    stderr, scaled, stats = runs["auto"]
    assert "FFmpeg decodes it straight to the model's 32x32 (area)" in stderr
    assert "FFmpeg decodes" not in runs["off"][0]
    assert len(scaled) == len(runs["off"][1]) == 40
    tops = [[e["labels"][0]["label"] if e["labels"] else None for e in run[1]] for run in runs.values()]
    assert tops[0] == tops[1]  # red, then blue, frame for frame
    assert tops[0][5] == "red" and tops[0][-1] == "blue"
    assert all("point" in label for e in scaled for label in e["labels"])
    assert stats["cpu_ms_per_frame"] > 0 and stats["cores"] > 0  # the ffmpeg child's CPU is in it


def test_insisting_on_ffmpeg_beside_a_video_output_is_one_line(
    regional_colour_bundles, red_blue_clip, tmp_path
):
    result = fuselite_run(
        "--bundle", regional_colour_bundles["int8"], "--source", red_blue_clip, "--jsonl", "none",
        "--video-out", tmp_path / "out.mp4", "--display", "off", "--decode-resize", "ffmpeg",
    )  # fmt: skip
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        "fuselite run: error: --decode-resize ffmpeg: --video-out needs whole frames"
    ]


def test_without_ffmpeg_auto_decodes_with_opencv_and_insisting_says_how_to_install(
    regional_colour_bundles, red_blue_clip, tmp_path
):
    python_only = tmp_path / "bin"
    python_only.mkdir()
    os.symlink(sys.executable, python_only / "python")
    env = {**runtime_env(), "PATH": str(python_only)}
    base = [sys.executable, "-m", "fuselite.cli", "run", "--bundle", str(regional_colour_bundles["int8"]),
            "--source", str(red_blue_clip), "--display", "off", "--threads", "1"]  # fmt: skip
    jsonl = tmp_path / "events.jsonl"
    auto = subprocess.run(
        [*base, "--jsonl", str(jsonl)], check=False, env=env, capture_output=True, text=True, timeout=60
    )
    assert auto.returncode == 0, auto.stderr
    assert len(events(jsonl)) == 40
    insisted = subprocess.run(
        [*base, "--jsonl", "none", "--decode-resize", "ffmpeg"],
        check=False, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert insisted.returncode == 2
    assert error_lines(insisted.stderr) == [
        "fuselite run: error: --decode-resize ffmpeg: ffmpeg is not installed (sudo apt install ffmpeg)"
    ]


def test_an_rtsp_stream_is_decoded_at_the_model_size(regional_colour_bundles, pattern_clip, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    relay = RtspRelay(pattern_clip, port, tmp_path)
    relay.start()
    try:
        jsonl = tmp_path / "events.jsonl"
        result = fuselite_run(
            "--bundle", regional_colour_bundles["int8"], "--source", relay.url, "--jsonl", jsonl,
            "--display", "off", "--threads", "1", "--max-frames", "20", timeout=90,
        )  # fmt: skip
    finally:
        relay.kill()
    assert result.returncode == 0, result.stderr
    assert "FFmpeg decodes it straight to the model's 32x32 (area)" in result.stderr
    assert len(events(jsonl)) == 20
