"""The headless MJPEG preview: served on loopback, watched by headless Chromium."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import cv2
import numpy as np
import pytest
from runtime_helpers import RED, fuselite_popen, solid, write_clip

from fuselite.runtime.preview import BOUNDARY, MjpegPreview

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5.0) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.headers["Content-Type"], response.read()


def decode(jpeg: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)


def test_preview_serves_a_page_a_snapshot_and_an_mjpeg_stream_on_loopback():
    preview = MjpegPreview(port=0).start()
    try:
        assert preview.bind == "127.0.0.1" and preview.url.startswith("http://127.0.0.1:")
        preview.publish(solid(RED))
        kind, page = get(preview.url)
        assert kind.startswith("text/html") and b'src="/stream.mjpg"' in page
        kind, jpeg = get(preview.url + "snapshot.jpg")
        assert kind == "image/jpeg"
        assert decode(jpeg)[60, 80].tolist() == pytest.approx([0, 0, 255], abs=8)
        with urllib.request.urlopen(preview.url + "stream.mjpg", timeout=5) as stream:
            assert (
                stream.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
            )
            assert stream.readline().strip() == f"--{BOUNDARY}".encode()
            headers = dict(stream.readline().decode().strip().split(": ", 1) for _ in range(2))
            stream.readline()
            jpeg = stream.read(int(headers["Content-Length"]))
        assert headers["Content-Type"] == "image/jpeg" and decode(jpeg).shape == (120, 160, 3)
    finally:
        preview.close()


@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (Debian package `chromium`)")
def test_headless_chromium_sees_the_annotated_stream(fp32_bundle, tmp_path):
    clip = write_clip(tmp_path / "red.mp4", [RED], frames_each=50, size=(480, 640))
    port = free_port()
    run = fuselite_popen(
        "--bundle",
        fp32_bundle,
        "--source",
        clip,
        "--loop",
        "--fps-limit",
        25,
        "--preview",
        port,
        "--jsonl",
        "none",
        stdout=subprocess.DEVNULL,
    )
    screenshot = tmp_path / "preview.png"
    try:
        _wait_for_snapshot(f"http://127.0.0.1:{port}/snapshot.jpg")
        subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={tmp_path / 'chromium'}",
                f"--screenshot={screenshot}",
                "--window-size=640,400",
                f"http://127.0.0.1:{port}/",
            ],
            capture_output=True,
            timeout=90,
            check=True,
        )
    finally:
        run.send_signal(signal.SIGTERM)
        _, stderr = run.communicate(timeout=20)
    assert run.returncode == 0, stderr
    shot = cv2.imread(str(screenshot))
    assert shot is not None and shot.shape[:2] == (400, 640)
    red = np.all(np.abs(shot.astype(int) - (0, 0, 255)) < 40, axis=2)
    green_bar = np.all(np.abs(shot.astype(int) - (80, 230, 80)) < 40, axis=2)
    assert red.mean() > 0.15, "the video frame is not on the page"
    assert green_bar.sum() > 100, "the overlay's 'red' score bar is not on the page"
    shutil.copy(screenshot, tmp_path.parent / "latest-preview-screenshot.png")  # for a human look


def _wait_for_snapshot(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if get(url)[0] == "image/jpeg":
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"no preview at {url}")
