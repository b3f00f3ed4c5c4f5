"""The run loop in-process: HTTP sources, pacing, stats, outputs, the window."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest
from runtime_helpers import RED, events, fuselite_command, runtime_env, solid, write_clip

from fuselite.runtime import AnnotatorOptions, RunOptions, run
from fuselite.runtime.outputs import Display, VideoOutput
from fuselite.runtime.preview import MjpegPreview


def test_an_http_mjpeg_stream_is_a_live_source(fp32_bundle, tmp_path):
    camera = MjpegPreview(port=0).start()  # an MJPEG camera on loopback
    stop = threading.Event()

    def feed():
        while not stop.is_set():
            camera.publish(solid(RED))
            time.sleep(0.02)

    threading.Thread(target=feed, daemon=True).start()
    jsonl = tmp_path / "events.jsonl"
    try:
        summary = run(
            RunOptions(camera.url + "stream.mjpg", jsonl=jsonl, max_frames=5, stats_interval=0),
            AnnotatorOptions(fp32_bundle),
        )
    finally:
        stop.set()
        camera.close()
    assert summary.frames == 5 and summary.stopped_by == "max_frames"
    assert all([lab["label"] for lab in e["labels"]] == ["red"] for e in events(jsonl))


def test_fps_limit_paces_the_annotations(fp32_bundle, red_blue_clip):
    start = time.monotonic()
    summary = run(
        RunOptions(str(red_blue_clip), jsonl=None, fps_limit=20, max_frames=6, stats_interval=0),
        AnnotatorOptions(fp32_bundle),
    )
    assert summary.frames == 6
    assert time.monotonic() - start >= 5 / 20


def test_periodic_stats_report_fps_drops_and_latency_percentiles(fp32_bundle, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", [RED], frames_each=30)
    jsonl = tmp_path / "events.jsonl"
    run(
        RunOptions(str(clip), jsonl=jsonl, fps_limit=50, stats_interval=0.2),
        AnnotatorOptions(fp32_bundle),
    )
    stats = events(jsonl, "stats")
    assert len(stats) >= 2 and stats[-1]["final"]
    for key in ("camera_fps", "inference_fps", "dropped", "skipped", "reconnects", "rss_mb"):
        assert key in stats[0]
    assert stats[0]["latency_p50_ms"] <= stats[0]["latency_p90_ms"]
    assert 20 < stats[-1]["inference_fps"] <= 55


def test_jsonl_reader_going_away_ends_the_run_cleanly(fp32_bundle, red_blue_clip):
    command = fuselite_command("--bundle", fp32_bundle, "--source", red_blue_clip, "--loop")
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=runtime_env()
    )
    first = [json.loads(process.stdout.readline()) for _ in range(3)]
    process.stdout.close()  # like `fuselite run ... | head -n 3`
    stderr = process.stderr.read()
    assert process.wait(timeout=20) == 0, stderr
    assert [r["frame"] for r in first] == [0, 1, 2]
    assert "went away" in stderr and "Traceback" not in stderr


def test_video_output_is_written_under_a_temporary_name_until_closed(tmp_path):
    video = VideoOutput(tmp_path / "out.mp4", fps=25)
    video.write(solid(RED))
    video.write(solid(RED, size=(240, 320)))  # another size is resized to the first
    assert not (tmp_path / "out.mp4").exists() and video.partial.exists()
    video.close()
    assert (tmp_path / "out.mp4").exists() and not video.partial.exists()


def test_no_window_without_a_display_and_a_clear_error_when_one_is_demanded(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert Display.open("auto") is None
    assert Display.open("off") is None
    with pytest.raises(ValueError, match="--preview"):
        Display.open("on")
