"""The event sinks survive what a board meets: a restart, a full disk, NaN scores.

Every test runs the real ``fuselite run`` (a subprocess, so a crash shows as one) or
the real :class:`JsonlWriter` on real files.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
from runtime_helpers import (
    BLUE,
    RED,
    count_frames,
    error_lines,
    fuselite_command,
    fuselite_run,
    runtime_env,
    write_clip,
)

from fuselite.devices.profiles import get_profile
from fuselite.devices.setup_files import render
from fuselite.runtime.options import RunOptions
from fuselite.runtime.outputs import MAX_HELD_LINES, JsonlWriter, Outputs, event_record
from fuselite.runtime.reader import Frame
from fuselite.runtime.results import AnnotationResult, Category

STATE_DIR = "/var/lib/fuselite"


def unit_command(bundle: Path, source: Path, state_dir: Path, extra: str = "") -> list[str]:
    """The shipped unit's ExecStart, filled in from its rendered env file.

    Paths under /var/lib/fuselite move to ``state_dir``; ``extra`` is appended to
    FUSELITE_ARGS the way a user would add options there.
    """
    profile = get_profile("raspberry-pi-5")
    env = {}
    for line in render(profile, "fuselite.env").splitlines():
        if "=" in line and not line.startswith("#"):
            name, value = line.split("=", 1)
            env[name] = value
    env.update(FUSELITE_BUNDLE=str(bundle), FUSELITE_SOURCE=str(source))
    env["FUSELITE_ARGS"] = f"{env['FUSELITE_ARGS']} {extra}".replace(STATE_DIR, str(state_dir))
    exec_start = next(
        line.split("=", 1)[1]
        for line in render(profile, "fuselite.service").splitlines()
        if line.startswith("ExecStart=")
    )
    args = []
    for word in shlex.split(exec_start)[2:]:  # drop '/opt/.../fuselite run'
        if word.startswith("${"):
            args.append(env[word[2:-1]])
        elif word.startswith("$"):
            args.extend(env[word[1:]].split())  # systemd splits $X on spaces
        else:
            args.append(word)
    return fuselite_command(*args)


def parsed_lines(path: Path) -> list[dict]:
    """Every line of a JSONL file, parsed (fails on any line that is not JSON)."""
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """300 frames (12 s of media time) of red then blue."""
    return write_clip(tmp_path_factory.mktemp("clip") / "long.mp4", [RED, BLUE], frames_each=150)


def test_a_restart_after_kill_9_keeps_every_earlier_event(int8_bundle, long_clip, tmp_path):
    """The unit's command line, killed with SIGKILL mid-run and restarted, appends."""
    log = tmp_path / "events.jsonl"
    command = unit_command(int8_bundle, long_clip, tmp_path, extra="--fps-limit 100")
    assert f"--jsonl {log} --stats-interval 60" in " ".join(command)
    first = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=runtime_env()
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(_lines(log)) < 40:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    _, first_err = first.communicate(timeout=10)
    text = log.read_text()
    # SIGKILL may land inside a write: a cut last line is kept as it is, and the next
    # run starts on a new line.
    complete, _, cut = text.rpartition("\n")
    before = [json.loads(line) for line in complete.splitlines()]
    assert 40 <= len(before) < 300, f"the first run must be killed mid-run: {first_err[-500:]}"
    done = subprocess.run(
        command, capture_output=True, text=True, env=runtime_env(), timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = log.read_text().splitlines()
    assert lines[: len(before)] == complete.splitlines()  # the first run's events are all there
    if cut:
        assert lines[len(before)] == cut
        lines.pop(len(before))
    after = [json.loads(line) for line in lines]  # every other line is valid JSON
    second = [r for r in after[len(before) :] if r["type"] == "annotation"]
    assert [r["frame"] for r in second] == list(range(300)), done.stderr[-2000:]
    assert after[-1]["type"] == "stats" and after[-1]["stopped_by"] == "end"


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_line_cut_by_a_kill_is_ended_before_new_events(fp32_bundle, red_blue_clip, tmp_path):
    log = tmp_path / "events.jsonl"
    log.write_text('{"type":"annotation","frame":0}\n{"type":"annotation","fra')
    done = fuselite_run("--bundle", fp32_bundle, "--source", red_blue_clip, "--jsonl", log)
    assert done.returncode == 0, done.stderr
    lines = log.read_text().splitlines()
    assert lines[:2] == ['{"type":"annotation","frame":0}', '{"type":"annotation","fra']
    assert [json.loads(line)["type"] for line in lines[2:]].count("annotation") == 40


def test_jsonl_on_a_full_disk_with_a_video_keeps_recording(fp32_bundle, red_blue_clip, tmp_path):
    video = tmp_path / "out.mp4"
    done = fuselite_run(
        "--bundle", fp32_bundle, "--source", red_blue_clip, "--jsonl", "/dev/full",
        "--video-out", video, "--stats-interval", 0,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert count_frames(video) == 40
    assert sum("No space left on device" in line for line in done.stderr.splitlines()) == 1
    final = _final_stats_line(done.stderr)
    assert final["sink_errors"]["jsonl"] >= 40 and final["sink_errors"]["video"] == 0


def _final_stats_line(stderr: str) -> dict:
    """The final stats record, which the run also logs as JSON when a sink failed."""
    line = next(line for line in reversed(stderr.splitlines()) if "final stats: " in line)
    return json.loads(line.split("final stats: ", 1)[1])


def test_jsonl_on_a_full_disk_alone_ends_the_run_with_one_line(fp32_bundle, red_blue_clip):
    done = fuselite_run("--bundle", fp32_bundle, "--source", red_blue_clip, "--jsonl", "/dev/full")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in error_lines(done.stderr) if not line.startswith("INFO ")]
    assert len(lines) == 1, lines
    assert "/dev/full" in lines[0] and "No space left on device" in lines[0]


def test_stdout_reader_going_away_still_stops_with_output(fp32_bundle, red_blue_clip, tmp_path):
    video = tmp_path / "out.mp4"
    run = subprocess.Popen(
        fuselite_command(
            "--bundle", fp32_bundle, "--source", red_blue_clip, "--loop", "--video-out", video,
        ),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=runtime_env(),
    )
    run.stdout.readline()
    run.stdout.close()  # the reader goes away
    _, stderr = run.communicate(timeout=30)
    assert run.returncode == 0, stderr
    assert b"stopped by output" in stderr and b"Traceback" not in stderr
    assert count_frames(video) > 0


def test_events_carry_only_reported_labels_unless_all_scores(fp32_bundle, red_blue_clip):
    common = ("--bundle", fp32_bundle, "--source", red_blue_clip, "--max-frames", 3)
    lean = [json.loads(line) for line in fuselite_run(*common).stdout.splitlines()]
    full = [json.loads(line) for line in fuselite_run(*common, "--all-scores").stdout.splitlines()]
    assert "scores" not in lean[0] and [c["label"] for c in lean[0]["labels"]] == ["red"]
    assert set(full[0]["scores"]) == {"red", "green", "blue", "gray"}
    assert full[0]["labels"] == lean[0]["labels"]


def test_non_finite_scores_are_written_as_null(tmp_path):
    frame = Frame(index=3, image=None, timestamp_ms=0.0, wall_time=time.time(), capture_ms=0.0)
    result = AnnotationResult(
        timestamp_ms=0.0,
        categories=(Category(0, "red", math.nan, math.nan, 0.5),),
        scores={"red": math.nan, "blue": math.inf, "gray": 0.25},
    )
    path = tmp_path / "events.jsonl"
    writer = JsonlWriter(path)
    assert writer.write(event_record(frame, result, 1.0, all_scores=True))
    writer.close()
    record = json.loads(path.read_text(), parse_constant=_refuse)
    assert record["scores"] == {"red": None, "blue": None, "gray": 0.25}
    assert record["labels"] == [{"label": "red", "score": None}]


def _refuse(name: str):
    raise AssertionError(f"{name} is not JSON")


def test_a_fifo_whose_reader_goes_away_stops_the_run_like_stdout(fp32_bundle, red_blue_clip,
                                                                  tmp_path):
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    run = subprocess.Popen(
        fuselite_command("--bundle", fp32_bundle, "--source", red_blue_clip, "--loop",
                         "--jsonl", fifo),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=runtime_env(),
    )
    with open(fifo, "rb") as reader:
        first = reader.readline()
    _, stderr = run.communicate(timeout=30)  # a write that blocked forever would time out
    assert json.loads(first)["type"] == "annotation"
    assert run.returncode == 0, stderr
    assert b"stopped by output" in stderr and b"Traceback" not in stderr


def test_a_video_file_that_cannot_be_opened_mid_run_loses_only_video(
    fp32_bundle, red_blue_clip, tmp_path
):
    """Segment 2's hidden file is taken by a folder: the video fails, the events go on."""
    jsonl, video = tmp_path / "events.jsonl", tmp_path / "out.mp4"
    (tmp_path / ".out-0002.partial.mp4").mkdir()
    done = fuselite_run(
        "--bundle", fp32_bundle, "--source", red_blue_clip, "--jsonl", jsonl,
        "--video-out", video, "--video-segment-minutes", 0.01, "--stats-interval", 0,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    records = parsed_lines(jsonl)
    assert [r["frame"] for r in records if r["type"] == "annotation"] == list(range(40))
    assert count_frames(tmp_path / "out-0001.mp4") == 15
    warnings = [line for line in done.stderr.splitlines() if "cannot write video" in line]
    assert len(warnings) == 1
    assert records[-1]["final"] and records[-1]["sink_errors"]["video"] >= 1


def test_held_lines_go_out_in_order_with_the_next_write_a_flush_or_the_close(tmp_path):
    path = tmp_path / "events.jsonl"
    writer = JsonlWriter(path)
    writer.write({"frame": 0}, hold=True)
    writer.write({"frame": 1}, hold=True)
    assert path.read_text() == ""  # held: more frames were waiting
    writer.write({"frame": 2})
    assert [json.loads(line)["frame"] for line in path.read_text().splitlines()] == [0, 1, 2]
    writer.write({"frame": 3}, hold=True)
    writer.flush()
    writer.write({"frame": 4}, hold=True)
    writer.close()  # a run that ends loses no held line
    assert [json.loads(line)["frame"] for line in path.read_text().splitlines()] == [0, 1, 2, 3, 4]


def test_a_writer_never_holds_more_than_a_bounded_number_of_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    writer = JsonlWriter(path)
    for frame in range(MAX_HELD_LINES):
        writer.write({"frame": frame}, hold=True)
    assert len(path.read_text().splitlines()) == MAX_HELD_LINES
    writer.close()


def test_a_failed_write_of_held_lines_counts_each_line_lost():
    writer = JsonlWriter("/dev/full")
    for frame in range(5):
        writer.write({"frame": frame}, hold=True)
    with pytest.raises(OSError):
        writer.write({"frame": 5})
    assert writer.lines_in_last_write == 6
    writer.close()


def test_flushing_held_lines_to_a_full_disk_counts_each_line_once(tmp_path):
    options = RunOptions("clip.mp4", jsonl="/dev/full", video_out=tmp_path / "out.mp4")
    outputs = Outputs(options, fps=25.0)
    outputs.jsonl.write({"frame": 0}, hold=True)
    outputs.jsonl.write({"frame": 1}, hold=True)
    outputs.flush_held()  # the write fails: both lines are lost
    outputs.flush_held()  # nothing held now: nothing more is lost
    assert outputs.health["jsonl"].lost == 2
    outputs.close()
