"""A live RTSP stream from ffmpeg on 127.0.0.1, killed and restarted mid-run.

Debian's ffmpeg cannot listen as an RTSP server (see ``rtsp_relay.py``): ffmpeg makes
and paces the RTP stream, and a small relay answers the RTSP requests.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from rtsp_relay import RtspRelay
from runtime_helpers import error_lines, events, fuselite_popen

FFMPEG = shutil.which("ffmpeg")
pytestmark = pytest.mark.skipif(FFMPEG is None, reason="needs ffmpeg (Debian package `ffmpeg`)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def h264_clip(tmp_path_factory) -> Path:
    """Two seconds (red, then blue) of H.264 with a keyframe every 5 frames."""
    clip = tmp_path_factory.mktemp("rtsp") / "clip.mp4"
    colours = "color=c=red:size=160x120:rate=25:duration=1"
    blue = "color=c=blue:size=160x120:rate=25:duration=1"
    subprocess.run(
        [
            FFMPEG,
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            colours,
            "-f",
            "lavfi",
            "-i",
            blue,
            "-filter_complex",
            "[0][1]concat=n=2:v=1",
            "-c:v",
            "libx264",
            "-g",
            "5",
            "-pix_fmt",
            "yuv420p",
            str(clip),
        ],
        check=True,
        timeout=60,
    )
    return clip


def wait_for_events(jsonl: Path, count: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if jsonl.exists() and len(events(jsonl)) >= count:
            break
        time.sleep(0.1)
    return len(events(jsonl)) if jsonl.exists() else 0


def wait_for_labels(jsonl: Path, labels: set[str], timeout: float) -> set[str]:
    """The labels the run's events named, once they include ``labels`` or at ``timeout``."""
    deadline, seen = time.monotonic() + timeout, set()
    while time.monotonic() < deadline and not labels <= seen:
        seen = {lab["label"] for e in events(jsonl) for lab in e["labels"]}
        time.sleep(0.1)
    return seen


def test_run_reconnects_after_the_stream_drops_and_events_continue(
    fp32_bundle, h264_clip, tmp_path
):
    server = RtspRelay(h264_clip, free_port(), tmp_path)
    jsonl = tmp_path / "events.jsonl"
    server.start()
    run = fuselite_popen(
        "--bundle",
        fp32_bundle,
        "--source",
        server.url,
        "--jsonl",
        jsonl,
        "--reconnect-delay",
        0.2,
        "--reconnect-max-delay",
        1,
        "--stream-timeout",
        2,
        "--threads",
        1,
        stdout=subprocess.DEVNULL,
    )
    try:
        seen = wait_for_events(jsonl, 10, timeout=20)
        assert seen >= 10, "no events from the stream"
        for _ in range(2):
            server.kill()
            time.sleep(1.0)  # the stream is gone for a while
            before = len(events(jsonl))
            server.start()
            after = wait_for_events(jsonl, before + 10, timeout=20)
            assert after >= before + 10, "events did not continue after the stream came back"
        # The clip restarts red with every restart of the server, for one second: a run
        # slow to reconnect (a loaded machine) sees it when the loop comes round again.
        labels = wait_for_labels(jsonl, {"red", "blue"}, timeout=20)
    finally:
        run.send_signal(signal.SIGTERM)
        _, stderr = run.communicate(timeout=20)
        server.kill()
    assert run.returncode == 0, stderr
    assert "Traceback" not in stderr
    log = "\n".join(error_lines(stderr))
    assert log.count("lost the stream") >= 2 and "reconnect attempt 1" in log
    final = events(jsonl, "stats")[-1]
    assert final["reconnects"] >= 2 and final["stopped_by"] == "signal"
    assert {"red", "blue"} <= labels
