"""The scheduling policy: pipeline or sequential, and pinning only on cores the run owns."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading

from fuselite.runtime import AnnotatorOptions, RunOptions, affinity, run
from fuselite.runtime import annotator as affinity_annotator
from fuselite.runtime.affinity import CoreSplit, LoadSample, plan_schedule

TWO_CORES = frozenset({0, 1})


def test_two_idle_cores_run_the_pipeline_with_inference_pinned_to_the_last(tmp_path):
    schedule = plan_schedule(1, live=False, idle={0: 0.95, 1: 0.97}, allowed=TWO_CORES, lock_dir=tmp_path)
    try:
        assert schedule.threaded
        assert schedule.split == CoreSplit(frozenset({1}), frozenset({0}))
        assert "pinned" in schedule.reason
    finally:
        schedule.release()


def test_a_busy_core_means_no_pinning_and_the_pipeline_unpinned(tmp_path):
    # One core taken by another process (the stress-ng --cpu 1 --taskset 0).
    schedule = plan_schedule(1, live=False, idle={0: 0.02, 1: 0.98}, allowed=TWO_CORES, lock_dir=tmp_path)
    assert schedule.split is None and schedule.claim is None
    assert schedule.threaded is False  # 1.0 free core is below PIPELINE_MIN_FREE_CORES (1.5): sequential
    assert "1.0 of 2 core(s) free" in schedule.reason


def test_one_usable_core_runs_files_sequentially_but_keeps_a_cameras_capture_thread(tmp_path):
    file_run = plan_schedule(1, live=False, idle={3: 1.0}, allowed=frozenset({3}), lock_dir=tmp_path)
    camera_run = plan_schedule(1, live=True, idle={3: 1.0}, allowed=frozenset({3}), lock_dir=tmp_path)
    assert not file_run.threaded and file_run.reason.startswith("sequential")
    assert camera_run.threaded and camera_run.split is None


def test_pinning_can_be_turned_off(tmp_path):
    schedule = plan_schedule(1, live=False, pin=False, idle={0: 1.0, 1: 1.0}, allowed=TWO_CORES,
                             lock_dir=tmp_path)
    assert schedule.threaded and schedule.split is None and "--pin-threads off" in schedule.reason


def test_a_second_run_never_pins_to_a_core_the_first_holds(tmp_path):
    four = frozenset(range(4))
    idle = dict.fromkeys(four, 1.0)
    first = plan_schedule(1, live=False, idle=idle, allowed=four, lock_dir=tmp_path)
    second = plan_schedule(1, live=False, idle=idle, allowed=four, lock_dir=tmp_path)
    try:
        assert first.split.inference == {3}
        assert second.split.inference == {2}  # the next free core, not the first run's
        first.release()
        third = plan_schedule(1, live=False, idle=idle, allowed=four, lock_dir=tmp_path)
        assert third.split.inference == {3}  # released claims are free again
        third.release()
    finally:
        first.release()
        second.release()


def test_a_claim_held_by_another_process_is_respected_and_freed_when_it_dies(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from fuselite.runtime.affinity import plan_schedule
            s = plan_schedule(1, live=False, idle={{0: 1.0, 1: 1.0}}, allowed=frozenset({{0, 1}}),
                              lock_dir=Path({str(tmp_path)!r}))
            print(sorted(s.split.inference), flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "[1]"
        blocked = plan_schedule(1, live=False, idle={0: 1.0, 1: 1.0}, allowed=TWO_CORES, lock_dir=tmp_path)
        # Core 0 is free but pinning there would leave no core for capture: run unpinned.
        assert blocked.split is None and "another fuselite process" in blocked.reason
    finally:
        holder.kill()
        holder.wait()
    after = plan_schedule(1, live=False, idle={0: 1.0, 1: 1.0}, allowed=TWO_CORES, lock_dir=tmp_path)
    assert after.split.inference == {1}
    after.release()


def test_the_load_sample_sees_a_burning_process(tmp_path, monkeypatch):
    monkeypatch.undo()  # the real sample, not the idle_machine fixture's
    burner = subprocess.Popen([sys.executable, "-c", "import os\nos.sched_setaffinity(0, {0})\nwhile True: pass"])
    try:
        sample = LoadSample()
        idle = sample.idle_shares(min_seconds=0.3)
    finally:
        burner.kill()
        burner.wait()
    assert set(idle) >= {0}
    assert idle[0] < 0.5  # the burner held core 0 for most of the window


def test_a_busy_machine_annotates_a_file_sequentially_in_the_loops_thread(
    int8_bundle, red_blue_clip, tmp_path, monkeypatch
):
    monkeypatch.setattr(affinity.LoadSample, "idle_shares", lambda self, min_seconds=0.0: {0: 0.0, 1: 0.6})
    threads = set()
    original = affinity_annotator.Annotator.preprocess
    monkeypatch.setattr(affinity_annotator.Annotator, "preprocess",
                        lambda self, image: threads.add(threading.current_thread().name) or original(self, image))
    jsonl = tmp_path / "events.jsonl"
    # OpenCV decodes in the loop's own thread here. With FFmpeg decoding (the headless
    # default) the run counts its CPU too, read from /proc in 10 ms clock ticks: over this
    # whole run's ~10 ms one tick of it reads as a whole core (1.4 and 2.7 cores were seen).
    # FFmpeg's path and its CPU are tested in test_scaled_decode.py.
    options = RunOptions(str(red_blue_clip), jsonl=jsonl, stats_interval=0, decode_resize="off")
    summary = run(options, AnnotatorOptions(int8_bundle, num_threads=1))
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    frames = [r for r in records if r.get("type") != "stats"]
    assert summary.frames == 40 and [f["frame"] for f in frames] == list(range(40))
    assert threads == {threading.current_thread().name}  # no capture thread
    assert [f["labels"][0]["label"] for f in (frames[0], frames[-1])] == ["red", "blue"]
    final = records[-1]
    assert final["final"] and final["cpu_ms_per_frame"] > 0 and 0 < final["cores"] <= 2.5


def test_the_run_logs_its_arrangement(int8_bundle, red_blue_clip, tmp_path, caplog):
    caplog.set_level("INFO", logger="fuselite.runtime.loop")
    run(RunOptions(str(red_blue_clip), jsonl=tmp_path / "events.jsonl", stats_interval=0, max_frames=2),
        AnnotatorOptions(int8_bundle, num_threads=1))
    assert any(m.startswith("scheduling: pipeline") for m in caplog.messages)  # idle_machine fixture
