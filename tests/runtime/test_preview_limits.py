"""The preview cannot be used to take a run down: a connection cap, socket timeouts,
and accept errors that are counted instead of ending anything.

Real sockets on 127.0.0.1 throughout; the last test lowers the open-file limit of a
real ``fuselite run`` and floods its preview.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import socket
import subprocess
import time
import urllib.request

import pytest
from runtime_helpers import RED, count_frames, events, fuselite_command, runtime_env, solid

from fuselite.runtime.preview import DEFAULT_MAX_CLIENTS, SOCKET_TIMEOUT_S, MjpegPreview

FD_LIMIT = 32  # the run's own files take about 10; 1,024 is systemd's default


def connect(port: int, count: int) -> list[socket.socket]:
    """``count`` idle TCP connections that never send a request."""
    sockets = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        sockets.append(s)
    return sockets


def with_fd_limit(limit: int, command: list[str]) -> list[str]:
    """``command`` (a Python one) run with its open-file limit lowered to ``limit``."""
    lower = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit})); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    )
    return [command[0], "-c", lower, *command[1:]]


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_the_defaults_are_bounded():
    assert 1 <= DEFAULT_MAX_CLIENTS <= 64 and 0 < SOCKET_TIMEOUT_S <= 30


def test_connections_over_the_cap_get_503_and_idle_ones_are_dropped():
    preview = MjpegPreview(port=0, max_clients=4, socket_timeout=0.5).start()
    idle = []
    try:
        preview.publish(solid(RED))
        preview.set_stats({"frames": 7})
        idle = connect(preview.port, 40)
        time.sleep(0.3)
        over = [s.recv(200) for s in idle[4:]]  # answered and closed at once
        assert all(reply.startswith((b"HTTP/1.0 503", b"HTTP/1.1 503")) for reply in over)
        time.sleep(1.0)  # past the timeout: the 4 idle ones were dropped
        assert [s.recv(10) for s in idle[:4]] == [b""] * 4
        assert get(preview.url + "stats.json") == (200, b'{"frames": 7}')
        status, jpeg = get(preview.url + "snapshot.jpg")
        assert status == 200 and jpeg.startswith(b"\xff\xd8")
        counts = preview.counts()
        # the 4 idle ones; on a loaded machine one of the test's own requests may also be
        # slower than the 0.5 s timeout, so a fifth is not an error
        assert counts["rejected"] == 36 and counts["timeouts"] >= 4
    finally:
        for s in idle:
            s.close()
        preview.close()


def test_a_viewer_that_stops_reading_is_dropped_and_others_are_served():
    preview = MjpegPreview(port=0, max_clients=2, socket_timeout=0.5).start()
    try:
        preview.publish(solid(RED, size=(480, 640), noise=40))  # big JPEGs fill buffers fast
        slow = socket.create_connection(("127.0.0.1", preview.port))
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
        deadline = time.monotonic() + 10
        while preview.counts()["timeouts"] == 0 and time.monotonic() < deadline:
            preview.publish(solid(RED, size=(480, 640), noise=40, seed=int(time.monotonic() * 1e3)))
            time.sleep(0.05)
        assert preview.counts()["timeouts"] >= 1, "a viewer that reads nothing is never dropped"
        assert get(preview.url + "snapshot.jpg")[0] == 200
        slow.close()
    finally:
        preview.close()


def test_accept_failing_with_emfile_is_counted_once_and_the_server_recovers(caplog):
    preview = MjpegPreview(port=0, max_clients=4, socket_timeout=0.5).start()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hog = []
    try:
        preview.set_stats({"ok": True})
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
        with contextlib.suppress(OSError):
            while True:  # use up every file descriptor this process may open
                hog.append(open("/dev/null", "rb"))  # noqa: SIM115 - closed below
        hog.pop().close()
        with caplog.at_level(logging.DEBUG, logger="fuselite.runtime.preview"):
            client = socket.create_connection(("127.0.0.1", preview.port))  # the last fd
            time.sleep(0.5)
        errors = preview.counts()["errors"]
        assert 1 <= errors <= 10, "accept failures must be counted, without spinning"
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "Too many open files" in warnings[0].getMessage()
    finally:
        for f in hog:
            f.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        client.close()
        assert get(preview.url + "stats.json") == (200, b'{"ok": true}')
    finally:
        preview.close()


def test_a_flood_of_idle_connections_under_a_low_fd_limit_does_not_end_the_run(
    fp32_bundle, tmp_path
):
    """About 1,000 idle connections ended a run at the default limit of 1,024; here
    the limit is FD_LIMIT and 300 connections are held open while the run records video
    in segments (today's code ends with exit 1, ``[Errno 24] Too many open files``)."""
    from support.frames import write_clip

    clip = write_clip(tmp_path / "clip.mp4", [RED], frames_each=90)
    jsonl, video = tmp_path / "events.jsonl", tmp_path / "out.mp4"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = fuselite_command(
        "--bundle", fp32_bundle, "--source", clip, "--fps-limit", 15, "--preview", port,
        "--jsonl", jsonl, "--video-out", video, "--video-segment-minutes", 0.01,
        "--stats-interval", 0,
    )
    run = subprocess.Popen(
        with_fd_limit(FD_LIMIT, command),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=runtime_env(),
    )
    held = []
    try:
        _wait_for(port)
        for _ in range(300):
            with contextlib.suppress(OSError):
                held.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        _, stderr = run.communicate(timeout=60)
    finally:
        for s in held:
            s.close()
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, stderr
    assert len(held) >= 200
    assert [e["frame"] for e in events(jsonl)] == list(range(90))
    segments = sorted(tmp_path.glob("out-*.mp4"))
    assert len(segments) >= 3 and sum(count_frames(p) for p in segments) == 90
    final = json.loads(jsonl.read_text().splitlines()[-1])
    assert final["stopped_by"] == "end" and final["preview"]["rejected"] > 0


def _wait_for(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    pytest.fail(f"no preview on port {port}")


def test_a_client_dribbling_its_request_loses_its_slot():
    """One byte every 0.2 s never trips a 0.5 s socket timeout; the request deadline does."""
    preview = MjpegPreview(port=0, max_clients=1, socket_timeout=0.5).start()
    try:
        preview.set_stats({"ok": True})
        slow = socket.create_connection(("127.0.0.1", preview.port))
        dropped = False
        for byte in b"GET /stats.json HTTP/1.1\r\nX-Slow: " + b"a" * 20:
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                dropped = True
                break
            time.sleep(0.2)
            if get(preview.url + "stats.json", timeout=2)[0] == 200:
                dropped = True  # the only slot is free again
                break
        slow.close()
        assert dropped, "a slowloris client kept the only slot for 9 s"
        assert preview.counts()["timeouts"] >= 1
    finally:
        preview.close()
