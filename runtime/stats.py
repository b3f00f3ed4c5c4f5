"""Running statistics of a stream: camera and inference FPS, drops, latency percentiles, memory."""

from __future__ import annotations

import collections
import os
import resource
import sys
import threading
import time
from typing import Any

import numpy as np

from fuselite.runtime.reader import SourceCounters

LATENCY_WINDOW = 1000


def resident_mb() -> float:
    """This process's resident memory in MB (current on Linux, peak elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def process_cpu_s() -> float:
    """CPU seconds of this process and of the programs it started for itself: every
    thread, and the ``ffmpeg`` that decodes for a :class:`~fuselite.runtime.scaled.ScaledCapture`
    (registered with :func:`child_started`; running ones read from ``/proc``, ended ones
    as they ended).  A board pays for both, so CPU per frame counts both.  Other children
    of the same process (a test runner's servers, say) are not counted."""
    # Under the lock, so a child that ends meanwhile is counted once, as running or as ended.
    with _CHILDREN_LOCK:
        children = _ENDED_CHILDREN_CPU_S[0] + sum(pid_cpu_s(pid) or 0.0 for pid in _RUNNING_CHILDREN)
    return time.process_time() + children


_CHILDREN_LOCK = threading.Lock()
_RUNNING_CHILDREN: set[int] = set()
_ENDED_CHILDREN_CPU_S = [0.0]


def child_started(pid: int) -> None:
    """Counts a child process's CPU in :func:`process_cpu_s` from now on."""
    with _CHILDREN_LOCK:
        _RUNNING_CHILDREN.add(pid)


def child_ending(pid: int) -> None:
    """Call after the child exited and before it is reaped (``waitid(WNOWAIT)``): its final
    CPU time is read from ``/proc`` and kept in :func:`process_cpu_s`."""
    with _CHILDREN_LOCK:
        final = pid_cpu_s(pid)
        if pid in _RUNNING_CHILDREN:
            _RUNNING_CHILDREN.discard(pid)
            _ENDED_CHILDREN_CPU_S[0] += final or 0.0


def pid_cpu_s(pid: int) -> float | None:
    """A process's user + system CPU seconds from ``/proc/<pid>/stat`` (an unreaped child
    keeps its final times there); None where it cannot be read (not Linux, reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class RunStats:
    """Counts annotated frames and keeps recent latencies; :meth:`snapshot` summarises them.

    Rates are measured since the previous snapshot, so each stats record describes
    its own interval; totals cover the whole run.
    """

    def __init__(self, counters: SourceCounters) -> None:
        self.counters = counters
        self.frames = 0
        self.skipped = 0
        self.frame_errors = 0  # frames whose model output could not be scored (annotator.FrameError)
        self.started = time.monotonic()
        # Process CPU time (every thread, the interpreter's and the decoder's too, and an
        # FFmpeg child's): CPU per frame is what a board pays for each annotation,
        # whatever runs where.
        self.cpu_started = process_cpu_s()
        self._latency = collections.deque(maxlen=LATENCY_WINDOW)
        self._inference = collections.deque(maxlen=LATENCY_WINDOW)
        self._mark = (self.started, 0, 0, self.cpu_started)

    def record(self, total_ms: float, inference_ms: float) -> None:
        """Counts one annotated frame."""
        self.frames += 1
        self._latency.append(total_ms)
        self._inference.append(inference_ms)

    @property
    def inference_fps(self) -> float:
        """Annotated frames per second over the whole run so far."""
        elapsed = time.monotonic() - self.started
        return self.frames / elapsed if elapsed > 0 else 0.0

    def snapshot(self, final: bool = False) -> dict[str, Any]:
        """A stats record for the interval since the last snapshot (or the run, if ``final``)."""
        now = time.monotonic()
        cpu_now = process_cpu_s()
        start = (self.started, 0, 0, self.cpu_started)
        since, frames_then, read_then, cpu_then = start if final else self._mark
        elapsed = max(now - since, 1e-9)
        cpu_s, frames = cpu_now - cpu_then, self.frames - frames_then
        latency = np.asarray(self._latency, dtype=np.float64)
        inference = np.asarray(self._inference, dtype=np.float64)
        record = {
            "type": "stats",
            "final": final,
            "time": round(time.time(), 3),
            "elapsed_s": round(now - self.started, 3),
            "frames": self.frames,
            "camera_fps": round((self.counters.read - read_then) / elapsed, 2),
            "inference_fps": round((self.frames - frames_then) / elapsed, 2),
            "dropped": self.counters.dropped,
            "skipped": self.counters.skipped + self.skipped,
            "reconnects": self.counters.reconnects,
            "frame_errors": self.frame_errors,
            "latency_p50_ms": _percentile(latency, 50),
            "latency_p90_ms": _percentile(latency, 90),
            "inference_p50_ms": _percentile(inference, 50),
            "cpu_ms_per_frame": round(cpu_s * 1000 / frames, 3) if frames else None,
            "cores": round(cpu_s / elapsed, 3),
            "rss_mb": round(resident_mb(), 1),
        }
        self._mark = (now, self.frames, self.counters.read, cpu_now)
        self._latency.clear()
        self._inference.clear()
        return record


def _percentile(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values.size else None


def describe(record: dict[str, Any]) -> str:
    """One human line for a stats record."""
    p50, p90 = record["latency_p50_ms"], record["latency_p90_ms"]
    latency = f"latency p50 {p50:.1f} ms p90 {p90:.1f} ms" if p50 is not None else "no frames"
    camera = f"{record['camera']}: " if record.get("camera") else ""  # several cameras, one log
    return (
        f"{camera}{record['frames']} frames | camera {record['camera_fps']:.1f} fps | "
        f"inference {record['inference_fps']:.1f} fps | dropped {record['dropped']} | "
        f"skipped {record['skipped']} | reconnects {record['reconnects']} | {latency} | "
        f"{_cpu_text(record)} | rss {record['rss_mb']:.0f} MB"
    )


def _cpu_text(record: dict[str, Any]) -> str:
    """CPU per frame and the cores the process got; records written before these fields lack them."""
    per_frame, cores = record.get("cpu_ms_per_frame"), record.get("cores")
    per_frame_text = f"{per_frame:.1f} ms CPU/frame" if per_frame is not None else "no CPU/frame"
    return per_frame_text if cores is None else f"{per_frame_text} on {cores:.2f} cores"
