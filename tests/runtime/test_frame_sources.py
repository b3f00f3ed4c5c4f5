"""Frame sources: latest-frame capture, no drops for files, reconnects, folders, picamera2."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import types

import cv2
import numpy as np
import pytest
from runtime_helpers import BLUE, RED, ScriptedCapture, solid

from fuselite.runtime import options
from fuselite.runtime.options import default_decode_threads
from fuselite.runtime.reader import FrameSource
from fuselite.runtime.sources import (
    FolderCapture,
    OpenCVCapture,
    Picamera2Capture,
    SourceError,
    capture_for,
)


def drain(source: FrameSource, stop_after: float = 5.0, per_frame: float = 0.0):
    frames, deadline = [], time.monotonic() + stop_after
    stop = threading.Event()
    while time.monotonic() < deadline:
        frame = source.next_frame(stop)
        if frame is None:
            break
        frames.append(frame)
        time.sleep(per_frame)
    return frames


def numbered(n: int) -> list[np.ndarray]:
    return [np.full((8, 8, 3), i % 256, np.uint8) for i in range(n)]


def test_file_sources_deliver_every_frame_in_order_even_to_a_slow_consumer():
    capture = ScriptedCapture(numbered(30), live=False)
    with FrameSource(capture) as source:
        frames = drain(source, per_frame=0.002)
    assert [int(f.image[0, 0, 0]) for f in frames] == list(range(30))
    assert source.counters.dropped == 0


def test_live_sources_keep_only_the_latest_frame_and_count_the_dropped_ones():
    capture = ScriptedCapture(numbered(5000), live=True, delay=0.001)
    with FrameSource(capture, reconnect_delay=10) as source:
        frames = []
        stop = threading.Event()
        while len(frames) < 10:
            frame = source.next_frame(stop, timeout=5)
            frames.append((frame, time.time() - frame.wall_time))
            time.sleep(0.02)  # inference slower than the camera
    indices = [f.index for f, _ in frames]
    assert indices == sorted(indices)
    assert source.counters.dropped >= (indices[-1] - indices[0]) - 10 > 10
    # A queue would make every frame older than the last; the newest frame stays fresh.
    ages = [age for _, age in frames[1:]]
    assert sorted(ages)[len(ages) // 2] < 0.02 and max(ages) < 0.5


def test_empty_and_corrupt_frames_are_skipped_and_counted():
    script = [
        solid(RED),
        None,
        np.zeros((0, 0, 3), np.uint8),
        np.zeros((5, 5), np.float64),
        solid(BLUE),
    ]
    with FrameSource(ScriptedCapture(script, live=False)) as source:
        frames = drain(source)
    assert len(frames) == 2
    assert source.counters.skipped == 3
    assert [f.index for f in frames] == [0, 4]


def test_a_lost_live_source_is_reconnected_with_backoff_and_each_attempt_logged(caplog):
    capture = ScriptedCapture(numbered(5) + ["lost"] + numbered(5), live=True)
    stop = threading.Event()
    threading.Timer(5, stop.set).start()  # a bound, should the test fail
    with caplog.at_level(logging.WARNING, logger="fuselite.runtime.reader"):
        source = FrameSource(
            capture, drop_stale=False, reconnect_delay=0.01, reconnect_max_delay=0.04
        )
        with source:
            capture.failed_opens = 3  # the next three opens fail
            frames = [source.next_frame(stop) for _ in range(10)]
    stop.set()
    assert None not in frames and source.counters.reconnects >= 1
    attempts = [r.getMessage() for r in caplog.records if "reconnect attempt" in r.getMessage()]
    assert [m.split("attempt ")[1].split(" ")[0] for m in attempts[:4]] == ["1", "2", "3", "4"]
    delays = [float(m.split(" in ")[1].split(" s")[0]) for m in attempts[:4]]
    assert delays == sorted(delays) and delays[-1] <= 0.04 + 1e-9
    assert "reconnected after 4 attempt(s)" in caplog.text


def test_a_live_source_that_cannot_open_yet_is_retried_in_the_background():
    capture = ScriptedCapture(numbered(3), live=True, failed_opens=2)
    with FrameSource(capture, reconnect_delay=0.01) as source:
        frame = source.next_frame(threading.Event())
    assert frame is not None and capture.opens == 3


def test_a_file_that_cannot_be_opened_fails_at_once():
    with pytest.raises(SourceError, match="camera unplugged"):
        FrameSource(ScriptedCapture([], live=False, failed_opens=1)).start()


def test_next_frame_returns_none_when_stop_is_set():
    stop = threading.Event()
    with FrameSource(ScriptedCapture([], live=True), reconnect_delay=10) as source:
        threading.Timer(0.2, stop.set).start()
        start = time.monotonic()
        assert source.next_frame(stop) is None
    assert time.monotonic() - start < 2


def test_folder_source_reads_images_in_name_order_and_skips_unreadable_files(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), solid(RED))
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (tmp_path / "c.png").write_bytes(b"")
    cv2.imwrite(str(tmp_path / "d.jpg"), solid(BLUE))
    (tmp_path / "notes.txt").write_text("not an image")
    with FrameSource(FolderCapture(tmp_path)) as source:
        frames = drain(source)
    assert [f.name for f in frames] == ["a.png", "d.jpg"]
    assert source.counters.skipped == 2


def test_an_empty_folder_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="holds no images"):
        FrameSource(FolderCapture(tmp_path)).start()


def test_a_looping_file_source_replays_from_the_start(red_blue_clip):
    capture = capture_for(str(red_blue_clip))
    with FrameSource(capture, loop=True) as source:
        stop = threading.Event()
        frames = [source.next_frame(stop) for _ in range(100)]
    assert all(f is not None for f in frames)
    assert frames[40].timestamp_ms < frames[39].timestamp_ms  # the media clock restarted


@pytest.mark.parametrize("threads", [1, 2])
def test_video_files_are_decoded_with_the_decoder_threads_asked_for(red_blue_clip, threads):
    capture = capture_for(str(red_blue_clip), decode_threads=threads)
    capture.open()
    try:
        assert capture._capture.get(cv2.CAP_PROP_N_THREADS) == threads
        assert capture.read()[0]
    finally:
        capture.release()


def test_the_default_decoder_threads_leave_the_interpreter_its_cores(monkeypatch):
    monkeypatch.setattr(options, "usable_core_count", lambda: 4)
    assert [default_decode_threads(n) for n in (1, 2, 4, 8)] == [3, 2, 1, 1]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2,
                    reason="needs Linux CPU affinity and 2+ cores to tell the counts apart")
def test_default_threads_count_the_cores_the_process_may_use_not_the_host():
    # As in a container started with --cpuset-cpus=0: os.cpu_count() still sees every core.
    script = (
        "import os; os.sched_setaffinity(0, {0}); "
        "from fuselite.runtime.options import default_threads, default_decode_threads; "
        "print(default_threads(), default_decode_threads(1))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1"]


def test_without_outputs_that_draw_frames_drop_their_pixels_once_preprocessed():
    capture = ScriptedCapture(numbered(30), live=False)
    source = FrameSource(capture, prepare=lambda image: image[:2, :2].copy())
    source.keep_pixels = False
    with source:
        frames = drain(source, per_frame=0.01)  # a slow consumer: the capture thread prepares
    prepared = [f for f in frames if f.model_input is not None]
    assert len(frames) == 30 and len(prepared) >= 20
    assert all(f.image.size == 0 for f in prepared)
    # A frame left for the consumer to preprocess keeps its pixels, or it could not.
    assert all(f.image.size > 0 for f in frames if f.model_input is None)


def test_source_specs_map_to_the_right_capture(tmp_path, red_blue_clip):
    assert isinstance(capture_for("0"), OpenCVCapture) and capture_for("0").live
    assert capture_for("rtsp://127.0.0.1:8554/cam").live
    assert capture_for("http://127.0.0.1:8080/video.mjpg").live
    assert isinstance(capture_for(str(tmp_path)), FolderCapture)
    assert not capture_for(str(red_blue_clip)).live
    with pytest.raises(SourceError, match="not a camera index"):
        capture_for(str(tmp_path / "missing.mp4"))


def test_picamera2_source_explains_how_to_install_it_when_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(SourceError, match="apt install python3-picamera2"):
        capture_for("picamera2")


def test_picamera2_source_reads_frames_when_picamera2_imports(monkeypatch):
    class FakePicamera2:
        def create_video_configuration(self, main):
            self.size = main["size"]
            assert main["format"] == "RGB888"
            return main

        def configure(self, config):
            self.config = config

        def start(self):
            self.started = True

        def capture_array(self, stream):
            width, height = self.size
            return np.full((height, width, 3), (255, 0, 0), np.uint8)

        def stop(self):
            pass

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=FakePicamera2))
    capture = capture_for("picamera2:320x240")
    assert isinstance(capture, Picamera2Capture) and capture.live
    with FrameSource(capture) as source:
        frame = source.next_frame(threading.Event())
    assert frame.image.shape == (240, 320, 3)
    assert isinstance(capture_for("camera"), Picamera2Capture)


def test_a_file_source_without_a_capture_thread_reads_every_frame_in_the_callers_thread():
    capture = ScriptedCapture(numbered(12), live=False)
    threads_before = threading.active_count()
    with FrameSource(capture, threaded=False) as source:
        assert threading.active_count() == threads_before  # no capture thread
        frames = drain(source)
    assert [int(f.image[0, 0, 0]) for f in frames] == list(range(12))
    assert all(f.model_input is None for f in frames)  # the caller preprocesses
    assert source.ended


def test_a_looping_file_source_without_a_capture_thread_replays_from_the_start(red_blue_clip):
    with FrameSource(capture_for(str(red_blue_clip)), loop=True, threaded=False) as source:
        frames = [source.next_frame() for _ in range(90)]
    assert all(f is not None for f in frames)
    assert [f.index for f in frames[:3]] == [0, 1, 2]
    second_pass_red, second_pass_blue = frames[45].image.mean(axis=(0, 1)), frames[65].image.mean(axis=(0, 1))
    assert second_pass_red[2] > 150 > second_pass_red[0]  # 20 red frames, then 20 blue, again
    assert second_pass_blue[0] > 150 > second_pass_blue[2]


def test_a_live_source_keeps_its_capture_thread_even_when_asked_for_none():
    capture = ScriptedCapture(numbered(5000), live=True, delay=0.001)
    with FrameSource(capture, threaded=False, reconnect_delay=10) as source:
        assert source.threaded
        assert source.next_frame(threading.Event(), timeout=5) is not None
