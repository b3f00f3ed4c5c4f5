"""The pipelined loop: capture and preprocessing on one thread, inference on another,
outputs on a third; every frame of a file in order, drops counted on live sources."""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
import time

import numpy as np
import pytest
from runtime_helpers import BLUE, RED, ScriptedCapture, SyntheticCamera, events, solid, write_clip

from fuselite.runtime import AnnotatorOptions, RunOptions, affinity, reader, run
from fuselite.runtime import outputs as run_outputs
from fuselite.runtime import scaled as run_scaled
from fuselite.runtime.annotator import Annotator
from fuselite.runtime.outputs import OutputsFailed, VideoOutput
from fuselite.runtime.reader import FrameSource

STAGES = {"capture", "preprocess", "inference", "postprocess", "total"}


@pytest.fixture
def preprocess_threads(monkeypatch) -> collections.Counter:
    """Counts the threads that call ``Annotator.preprocess``, by name."""
    threads: collections.Counter = collections.Counter()
    original = Annotator.preprocess

    def spy(self, frame):
        threads[threading.current_thread().name] += 1
        return original(self, frame)

    monkeypatch.setattr(Annotator, "preprocess", spy)
    return threads


def test_a_file_gets_every_frame_in_order_preprocessed_on_the_capture_thread(
    int8_bundle, tmp_path, preprocess_threads
):
    clip = write_clip(tmp_path / "clip.mp4", [RED, BLUE], frames_each=20)
    jsonl = tmp_path / "events.jsonl"
    # The loop is paced slower than decoding, as a heavy model would make it.
    summary = run(
        RunOptions(str(clip), jsonl=jsonl, fps_limit=50, stats_interval=0),
        AnnotatorOptions(int8_bundle, num_threads=1),
    )
    annotations = events(jsonl)
    assert summary.frames == 40 and summary.dropped == 0
    assert [e["frame"] for e in annotations] == list(range(40))
    stamps = [e["timestamp_ms"] for e in annotations]
    assert stamps == sorted(stamps)
    assert [lab["label"] for lab in annotations[10]["labels"]] == ["red"]
    assert [lab["label"] for lab in annotations[-1]["labels"]] == ["blue"]
    for event in annotations:
        latency = event["latency_ms"]
        assert set(latency) == STAGES
        assert latency["preprocess"] > 0 and latency["inference"] > 0
        assert latency["total"] >= latency["inference"]
    # The inference thread waits for nothing here, so the capture thread preprocesses.
    assert preprocess_threads["capture"] >= 30, preprocess_threads
    assert sum(preprocess_threads.values()) == 40
    assert set(summary.cpu_s) == {"capture", "inference", "outputs"}
    assert all(seconds > 0 for seconds in summary.cpu_s.values())


def test_a_live_source_drops_stale_frames_and_counts_them(
    fp32_bundle, tmp_path, monkeypatch, preprocess_threads
):
    camera = SyntheticCamera(BLUE, delay=0.001)
    monkeypatch.setattr(run_scaled, "capture_for", lambda *_: camera)  # the whole-frame capture
    jsonl = tmp_path / "events.jsonl"
    summary = run(  # inference (paced at 40 fps) is slower than the camera
        RunOptions("camera", jsonl=jsonl, fps_limit=40, max_frames=12, stats_interval=0),
        AnnotatorOptions(fp32_bundle, num_threads=1),
    )
    annotations = events(jsonl)
    indices = [e["frame"] for e in annotations]
    assert summary.frames == 12 and len(annotations) == 12
    assert indices == sorted(set(indices))
    final = events(jsonl, "stats")[-1]
    assert summary.dropped > 0 and final["dropped"] == summary.dropped
    # Every index skipped between two annotated frames was dropped (none was corrupt).
    assert indices[-1] - indices[0] - 11 <= summary.dropped
    assert all(set(e["latency_ms"]) == STAGES for e in annotations)
    assert all([lab["label"] for lab in e["labels"]] == ["blue"] for e in annotations)
    assert preprocess_threads["capture"] > 0


def test_a_live_source_preprocesses_the_latest_frame_on_the_capture_thread(fp32_bundle):
    with Annotator.create(AnnotatorOptions(fp32_bundle, num_threads=1)) as annotator:
        capture = ScriptedCapture([solid(RED)] * 400, live=True, delay=0.001)
        with FrameSource(capture, prepare=annotator.preprocess, reconnect_delay=10) as source:
            stop = threading.Event()
            frames = []
            for _ in range(8):
                frames.append(source.next_frame(stop, timeout=5))
                time.sleep(0.02)  # inference slower than the camera
    assert all(f is not None for f in frames)
    assert source.counters.dropped > 0
    prepared = [f for f in frames if f.model_input is not None]
    assert len(prepared) >= 6  # the first one or two may come before the capture leans ahead
    for frame in prepared:
        assert frame.model_input.shape == (1, 32, 32, 3) and frame.preprocess_ms > 0


def test_the_consumer_preprocesses_when_it_is_the_one_waiting(fp32_bundle):
    # Decoding is the bottleneck (a slow capture): the idle consumer takes the resize.
    with Annotator.create(AnnotatorOptions(fp32_bundle, num_threads=1)) as annotator:
        capture = ScriptedCapture([solid(RED)] * 30, live=False, delay=0.01)
        with FrameSource(capture, prepare=annotator.preprocess) as source:
            stop = threading.Event()
            frames = [source.next_frame(stop, timeout=5) for _ in range(30)]
    assert [f.index for f in frames] == list(range(30))
    assert sum(f.model_input is None for f in frames[5:]) >= 20


def test_outputs_keep_their_order_and_the_final_stats_come_last(int8_bundle, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", [RED], frames_each=30)
    jsonl, video = tmp_path / "events.jsonl", tmp_path / "out.mp4"
    run(
        RunOptions(str(clip), jsonl=jsonl, video_out=video, stats_interval=0.01, fps_limit=200),
        AnnotatorOptions(int8_bundle, num_threads=1),
    )
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert records[-1]["type"] == "stats" and records[-1]["final"]
    frames = [r["frame"] for r in records if r["type"] == "annotation"]
    assert frames == list(range(30))
    # Stats records go through the same queue: each counts the annotations before it.
    seen, stats = 0, 0
    for record in records:
        if record["type"] == "annotation":
            seen += 1
        elif record["type"] == "stats":
            stats += 1
            assert record["frames"] == seen
    assert stats >= 2
    assert [r["path"] for r in records if r["type"] == "video"] == [str(video)]
    assert video.exists()


def test_the_only_sink_failing_on_the_writer_thread_stops_the_run_with_its_error(
    fp32_bundle, red_blue_clip, tmp_path, monkeypatch
):
    def broken(self, image, timestamp_ms=None, frame_index=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(VideoOutput, "write", broken)
    with pytest.raises(OutputsFailed, match="No space left on device, and no other output is left"):
        run(
            RunOptions(str(red_blue_clip), jsonl=None, video_out=tmp_path / "v.mp4"),
            AnnotatorOptions(fp32_bundle, num_threads=1),
        )


def test_without_a_visual_output_frames_are_not_drawn_on(fp32_bundle, monkeypatch, tmp_path):
    drawn = []
    monkeypatch.setattr(run_outputs, "draw_overlay", lambda *a: drawn.append(1) or a[0])
    frames = [solid(RED) for _ in range(5)]
    monkeypatch.setattr(
        run_scaled, "capture_for", lambda *_: ScriptedCapture(list(frames), live=False)
    )
    run(RunOptions("clip", jsonl=tmp_path / "e.jsonl"), AnnotatorOptions(fp32_bundle))
    assert drawn == []
    assert all(np.array_equal(f, solid(RED)) for f in frames)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_helper_threads_keep_the_inference_threads_priority(fp32_bundle, red_blue_clip, monkeypatch):
    # A nicer capture or outputs thread starved the pipeline on a busy board.
    seen = {}
    monkeypatch.setattr(affinity, "PIPELINE_MIN_FREE_CORES", 0.0)  # the threaded pipeline, whatever the load

    def spy(original):
        def record(self, *args, **kwargs):
            name = threading.current_thread().name
            seen.setdefault(name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            return original(self, *args, **kwargs)
        return record

    monkeypatch.setattr(reader.FrameSource, "_read_one", spy(reader.FrameSource._read_one))
    monkeypatch.setattr(run_outputs.Outputs, "_finish_frame", spy(run_outputs.Outputs._finish_frame))
    caller = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    run(RunOptions(str(red_blue_clip), jsonl=os.devnull), AnnotatorOptions(fp32_bundle))
    assert seen == {"capture": caller, "outputs": caller}
