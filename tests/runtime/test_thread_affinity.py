"""Pinning: with cores to spare, capture and outputs stay off the interpreter's cores."""

from __future__ import annotations

import os
import threading

import pytest

from fuselite.runtime import AnnotatorOptions, RunOptions, affinity, run
from fuselite.runtime.affinity import CoreSplit, split_cores

CORES = affinity.allowed_cores()


def test_the_last_cores_run_inference_and_the_rest_everything_else():
    assert split_cores(1, frozenset({0, 1})) == CoreSplit(frozenset({1}), frozenset({0}))
    assert split_cores(3, frozenset({0, 1, 2, 3})) == CoreSplit(frozenset({1, 2, 3}), frozenset({0}))
    assert split_cores(2, frozenset({4, 9, 6})) == CoreSplit(frozenset({6, 9}), frozenset({4}))


@pytest.mark.parametrize("threads", [2, 4])
def test_no_split_when_the_interpreter_needs_every_core(threads):
    assert split_cores(threads, frozenset(range(threads))) is None
    assert split_cores(threads, frozenset()) is None


@pytest.fixture
def thread_cores(monkeypatch) -> dict[str, frozenset[int]]:
    """The cores each pipeline thread ran on, read from inside it after its first pinning."""
    seen: dict[str, frozenset[int]] = {}
    original = affinity.pin_thread

    def spy(cores):
        done = original(cores)
        seen.setdefault(threading.current_thread().name, frozenset(os.sched_getaffinity(0)))
        return done

    for module in ("fuselite.runtime.affinity", "fuselite.runtime.reader", "fuselite.runtime.loop",
                   "fuselite.runtime.outputs"):
        monkeypatch.setattr(f"{module}.pin_thread", spy, raising=False)
    return seen


@pytest.mark.skipif(not CORES or len(CORES) < 2, reason="needs two cores and sched_setaffinity")
def test_a_run_pins_its_threads_and_gives_the_caller_its_cores_back(
    int8_bundle, red_blue_clip, tmp_path, thread_cores
):
    before = frozenset(os.sched_getaffinity(0))
    summary = run(
        RunOptions(str(red_blue_clip), jsonl=tmp_path / "events.jsonl", stats_interval=0),
        AnnotatorOptions(int8_bundle, num_threads=1),
    )
    split = split_cores(1, before)
    assert summary.frames == 40
    assert thread_cores["capture"] == split.helpers
    assert thread_cores["outputs"] == split.helpers
    assert thread_cores["MainThread"] == split.inference
    assert frozenset(os.sched_getaffinity(0)) == before


@pytest.mark.skipif(not CORES or len(CORES) < 2, reason="needs two cores and sched_setaffinity")
def test_pinning_can_be_turned_off(int8_bundle, red_blue_clip, tmp_path, thread_cores):
    run(
        RunOptions(str(red_blue_clip), jsonl=tmp_path / "events.jsonl", stats_interval=0,
                   pin_threads=False),
        AnnotatorOptions(int8_bundle, num_threads=1),
    )
    assert thread_cores == {}
