"""The invoke watchdog and the stop bound, with a bundle that really hangs.

``hanging_bundle`` passes every load-time check (its WHILE loop runs 0 times on the
zero input of the load probe) and then runs 2e9 loop steps on the first frame with a
non-zero pixel: minutes, inside one native ``invoke`` that Python cannot interrupt.
Every test runs ``fuselite run`` in a subprocess with the real interpreter.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from runtime_helpers import (
    RED,
    count_frames,
    error_lines,
    events,
    fuselite_popen,
    fuselite_run,
    solid,
    write_clip,
)

from fuselite.runtime.watchdog import (
    EXIT_INVOKE_TIMEOUT,
    MIN_BUDGET_S,
    STOP_GRACE_S,
    InvokeTimeout,
    invoke_budget,
    run_with_deadline,
)

BLACK = (0, 0, 0)
STARTUP_S = 20.0  # interpreter start, imports and the load probe on a busy 2-core host


def _black_then_red(folder: Path, black: int = 3) -> Path:
    """``black`` all-zero images (the hanging model runs them at once), then a red one."""
    folder.mkdir()
    for i in range(black):
        cv2.imwrite(str(folder / f"{i}-black.png"), solid(BLACK))
    cv2.imwrite(str(folder / f"{black}-red.png"), solid(RED))
    return folder


def _watchdog_line(stderr: str) -> str:
    lines = [line for line in error_lines(stderr) if "invoke" in line and "budget" in line]
    assert len(lines) == 1, stderr
    return lines[0]


def test_the_budget_is_fifty_times_the_load_invoke_and_at_least_the_floor():
    assert invoke_budget(0.0001) == MIN_BUDGET_S
    assert invoke_budget(0.2) == pytest.approx(10.0)


def test_a_bundle_that_hangs_on_a_video_frame_ends_within_the_automatic_budget(
    hanging_bundle, tmp_path
):
    clip = write_clip(tmp_path / "red.mp4", [RED], frames_each=5)
    jsonl = tmp_path / "events.jsonl"
    process = fuselite_popen("--bundle", hanging_bundle, "--source", clip, "--jsonl", jsonl)
    try:
        _, stderr = process.communicate(timeout=STARTUP_S + MIN_BUDGET_S + 5)
    finally:
        process.kill()
    assert process.returncode == EXIT_INVOKE_TIMEOUT, stderr
    line = _watchdog_line(stderr)
    assert "hangs.tflite" in line and "--invoke-timeout" in line
    assert f"budget of {MIN_BUDGET_S:g} s (50 x the " in line and "invoke at load" in line
    assert "Traceback" not in stderr
    assert events(jsonl) == []
    assert events(jsonl, "stats")[-1]["stopped_by"] == "invoke_timeout"


def test_a_hang_on_a_folder_image_keeps_the_frames_before_it_in_jsonl_and_video(
    hanging_bundle, tmp_path
):
    folder = _black_then_red(tmp_path / "images")
    jsonl, video = tmp_path / "events.jsonl", tmp_path / "out.mp4"
    started = time.monotonic()
    done = fuselite_run("--bundle", hanging_bundle, "--source", folder, "--jsonl", jsonl,
                        "--video-out", video, "--invoke-timeout", 1, timeout=STARTUP_S + 6)
    assert done.returncode == EXIT_INVOKE_TIMEOUT, done.stderr
    assert "budget of 1 s (from --invoke-timeout)" in _watchdog_line(done.stderr)
    assert time.monotonic() - started < STARTUP_S + 6
    assert [e["name"] for e in events(jsonl)] == ["0-black.png", "1-black.png", "2-black.png"]
    assert events(jsonl, "stats")[-1]["stopped_by"] == "invoke_timeout"
    assert count_frames(video) == 3  # closed cleanly at its own name
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 128 + 15), (signal.SIGINT, 128 + 2)], ids=["SIGTERM", "SIGINT"]
)
def test_a_signal_mid_invoke_ends_the_run_within_the_grace_period(
    hanging_bundle, tmp_path, signum, code
):
    folder = _black_then_red(tmp_path / "images")
    jsonl = tmp_path / "events.jsonl"
    process = fuselite_popen("--bundle", hanging_bundle, "--source", folder, "--jsonl", jsonl,
                             "--invoke-timeout", 600)
    try:
        _wait_for_events(jsonl, 3)
        time.sleep(0.5)  # the red image is in its invoke now
        assert process.poll() is None
        sent = time.monotonic()
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=STOP_GRACE_S + 5)
        took = time.monotonic() - sent
    finally:
        process.kill()
    assert process.returncode == code, stderr
    assert STOP_GRACE_S - 0.5 < took < STOP_GRACE_S + 2.5
    assert signal.Signals(signum).name in stderr and "Traceback" not in stderr
    assert len(events(jsonl)) == 3
    assert events(jsonl, "stats")[-1]["stopped_by"] == "signal"


def test_a_second_sigint_mid_invoke_ends_the_run_at_once(hanging_bundle, tmp_path):
    folder = _black_then_red(tmp_path / "images")
    jsonl = tmp_path / "events.jsonl"
    process = fuselite_popen("--bundle", hanging_bundle, "--source", folder, "--jsonl", jsonl,
                             "--invoke-timeout", 600)
    try:
        _wait_for_events(jsonl, 3)
        time.sleep(0.5)
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=STOP_GRACE_S + 5)
        took = time.monotonic() - sent
    finally:
        process.kill()
    assert process.returncode == 130
    assert took < STOP_GRACE_S
    assert len(events(jsonl)) == 3


def _wait_for_events(jsonl: Path, count: int) -> None:
    """Waits until ``jsonl`` holds ``count`` annotation events (the run is then past startup)."""
    deadline = time.monotonic() + STARTUP_S
    while (not jsonl.exists() or len(events(jsonl)) < count) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(events(jsonl)) == count


def test_a_normal_bundle_is_unaffected_by_a_tight_budget(fp32_bundle, red_blue_clip, tmp_path):
    jsonl = tmp_path / "events.jsonl"
    done = fuselite_run("--bundle", fp32_bundle, "--source", red_blue_clip, "--jsonl", jsonl,
                        "--invoke-timeout", 1)
    assert done.returncode == 0, done.stderr
    assert len(events(jsonl)) == 40
    assert events(jsonl, "stats")[-1]["stopped_by"] == "end"


def test_a_negative_invoke_timeout_is_one_line_and_exit_2(fp32_bundle, red_blue_clip):
    done = fuselite_run("--bundle", fp32_bundle, "--source", red_blue_clip, "--invoke-timeout", -1)
    assert done.returncode == 2
    assert error_lines(done.stderr) == [
        "fuselite run: error: invoke_timeout must be a number of seconds (0: off), not -1.0"
    ]


def test_run_with_deadline_returns_the_result_or_raises_in_time():
    assert run_with_deadline(np.add, 1.0, 2, 3) == 5
    started = time.monotonic()
    with pytest.raises(InvokeTimeout, match="0.2 s"):
        run_with_deadline(time.sleep, 0.2, 5)
    assert time.monotonic() - started < 1.0
