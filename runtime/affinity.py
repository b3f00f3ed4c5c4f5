"""Where the pipeline's threads run: pinning, claims between processes, and the sequential fallback.

A board rarely runs fuselite alone: it records, serves a page, runs a second camera.
The policy (:func:`plan_schedule`) is decided once, when a run starts, from what the
process really has:

* **Free capacity.**  The idle time of each core the process may use (its affinity
  mask, so ``taskset`` and container cpusets count) is sampled for
  ``LOAD_SAMPLE_SECONDS`` before the model loads.  A core is *free* when it was at
  least ``FREE_CORE_IDLE`` idle.
* **Pipeline or sequential.**  The threaded pipeline (capture, inference and outputs
  threads overlapping) needs a second core to overlap anything; on one core its
  hand-offs only cost.  With less than ``PIPELINE_MIN_FREE_CORES`` of free capacity, a
  file or folder source runs sequentially: read, preprocess, infer and write in the
  loop's own thread, like the TFLite Raspberry Pi example.  A live source keeps its
  capture thread, which must drain the camera whatever the load.
* **Pinning only on owned cores.**  Confining the inference thread to its own core
  spares it the helpers' interruptions (1.4-2.4 % of its time on this 2-core VM,
  measured with ``/proc/self/task/TID/schedstat``; 0.0-0.4 % once pinned), but a pinned
  thread cannot move when another process sits on its core: pinned runs then got
  0.2-0.6 of a core, unpinned ones about 1.0.  So threads are pinned only when the
  inference cores and at least one helper core are all free, and the inference cores
  are *claimed*: an exclusive ``flock`` on one lock file per core (in ``/dev/shm``),
  held for the run and dropped by the kernel if the process dies.  A second fuselite
  process (a second camera) never pins to a core another one holds; it runs unpinned.
  The inference cores are the last free ones: Linux and the Raspberry Pi route most
  interrupts to core 0.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

LOAD_SAMPLE_SECONDS = 0.1
FREE_CORE_IDLE = 0.8
# Below this much free capacity the sequential loop beats the pipeline (docs/runtime.md,
# "On a busy board", measured with python -m fuselite.bench.suite busy).
PIPELINE_MIN_FREE_CORES = 1.5


@dataclass(frozen=True)
class CoreSplit:
    """Which cores run inference and which run everything else.

    Attributes:
        inference: The cores of the inference thread (and so of the interpreter).
        helpers: The cores of the capture and outputs threads.
    """

    inference: frozenset[int]
    helpers: frozenset[int]


def allowed_cores() -> frozenset[int] | None:
    """The cores this thread may run on, or ``None`` where the OS cannot tell."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def usable_core_count() -> int:
    """How many cores this process may run on: its affinity mask, else the CPU count.

    In a container limited with a cpuset (``docker run --cpuset-cpus``) or under
    ``taskset``, ``os.cpu_count()`` still reports every core of the host; sizing
    thread pools by it oversubscribes the cores the process really has.
    """
    allowed = allowed_cores()
    return len(allowed) if allowed else max(1, os.cpu_count() or 1)


def split_cores(interpreter_threads: int, allowed: frozenset[int] | None = None) -> CoreSplit | None:
    """The split for ``interpreter_threads``, or ``None`` when no core would be left over."""
    allowed = allowed_cores() if allowed is None else allowed
    if not allowed or len(allowed) <= interpreter_threads:
        return None
    cores = sorted(allowed)
    return CoreSplit(frozenset(cores[-interpreter_threads:]), frozenset(cores[:-interpreter_threads]))


def pin_thread(cores: frozenset[int]) -> bool:
    """Confines the calling thread to ``cores``; ``False`` (and a debug line) if it cannot."""
    try:
        os.sched_setaffinity(0, cores)
    except (AttributeError, OSError) as exc:
        log.debug("cannot pin %s to cores %s: %s", threading.current_thread().name, sorted(cores), exc)
        return False
    return True


@contextlib.contextmanager
def pinned(cores: frozenset[int] | None) -> Iterator[None]:
    """Confines the calling thread to ``cores`` (``None``: no change) and restores it after."""
    before = allowed_cores() if cores else None
    if not before or not pin_thread(cores):
        yield
        return
    try:
        yield
    finally:
        pin_thread(before)


# --- how busy the cores are -------------------------------------------------------


def _core_times() -> dict[int, tuple[int, int]]:
    """``core -> (idle ticks, total ticks)`` since boot, from ``/proc/stat`` (Linux; else empty)."""
    times = {}
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return times
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        ticks = [int(value) for value in fields[:8]]
        times[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))  # idle + iowait
    return times


class LoadSample:
    """The idle share of each core over a window that starts when this is made.

    The window may cover this process's own work (loading the model, and the load
    probe's child process): that CPU time is counted as idle, since the question is
    what *other* programs leave free.  It is credited to the core the calling thread
    runs on first, then to the busiest other cores.
    """

    def __init__(self) -> None:
        self._start = _core_times()
        self._started = time.monotonic()
        self._own_cpu = _own_cpu_seconds()

    def idle_shares(self, min_seconds: float = LOAD_SAMPLE_SECONDS) -> dict[int, float]:
        """``core -> idle share (0-1)`` since creation, waiting until ``min_seconds`` have passed.

        Empty where the OS does not tell (then nothing is assumed busy or free).
        """
        time.sleep(max(0.0, self._started + min_seconds - time.monotonic()))
        end, wall = _core_times(), time.monotonic() - self._started
        shares = {}
        for core, (idle, total) in end.items():
            idle_then, total_then = self._start.get(core, (idle, total))
            if total > total_then:
                shares[core] = (idle - idle_then) / (total - total_then)
        if shares and wall > 0:
            _credit(shares, (_own_cpu_seconds() - self._own_cpu) / wall, _current_core())
        return shares


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have ended (the load probe)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _credit(shares: dict[int, float], own: float, own_core: int | None) -> None:
    """Counts ``own`` cores' worth of this process's CPU as idle: its own core first,
    then the busiest others (where the rest of its work most likely ran)."""
    order = sorted(shares, key=lambda core: (core != own_core, shares[core]))
    for core in order:
        if own <= 0:
            return
        added = min(own, 1.0 - shares[core])
        shares[core] += added
        own -= added


def _current_core() -> int | None:
    """The core the calling thread last ran on (field 39 of ``/proc/thread-self/stat``)."""
    try:
        stat = Path("/proc/thread-self/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return None


# --- claims between processes -------------------------------------------------------


def _lock_dir() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


@dataclass
class CoreClaim:
    """Cores this process holds for its inference thread, one ``flock`` per core."""

    cores: frozenset[int] = frozenset()
    _files: list = field(default_factory=list, repr=False)

    @classmethod
    def take(cls, candidates: list[int], count: int, lock_dir: Path | None = None) -> CoreClaim:
        """Claims up to ``count`` of ``candidates``, the last first, skipping cores other processes hold."""
        claim, lock_dir = cls(), lock_dir or _lock_dir()
        for core in reversed(candidates):
            if len(claim.cores) == count:
                break
            handle = _try_lock(lock_dir / f"fuselite-core-{core}.lock")
            if handle is not None:
                claim._files.append(handle)
                claim.cores = claim.cores | {core}
        return claim

    def release(self) -> None:
        """Drops the claims (closing the files releases the locks)."""
        for handle in self._files:
            handle.close()
        self._files.clear()
        self.cores = frozenset()


def _try_lock(path: Path):
    """An open file holding an exclusive lock on ``path``, or ``None`` if another process holds it."""
    try:
        handle = open(path, "a+b")  # noqa: SIM115 - held for the run, closed by CoreClaim.release
    except OSError as exc:
        log.debug("cannot open the core lock %s: %s", path, exc)
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


# --- the policy ---------------------------------------------------------------------


@dataclass
class Schedule:
    """How a run arranges its threads (see the module docstring for the rules).

    Attributes:
        threaded: Whether capture (and outputs) run on threads of their own.
        split: The inference and helper cores when pinned, else ``None``.
        reason: One line for the log: what was decided and why.
        claim: The cores claimed from other processes; :meth:`release` drops them.
    """

    threaded: bool
    split: CoreSplit | None
    reason: str
    claim: CoreClaim | None = None

    def release(self) -> None:
        """Drops this run's core claims."""
        if self.claim is not None:
            self.claim.release()


def plan_schedule(
    interpreter_threads: int,
    live: bool,
    pin: bool = True,
    idle: dict[int, float] | None = None,
    allowed: frozenset[int] | None = None,
    lock_dir: Path | None = None,
) -> Schedule:
    """Decides pipeline or sequential, and pinning, from the cores' idle shares (:class:`LoadSample`)."""
    allowed = allowed_cores() if allowed is None else allowed
    idle = {} if idle is None else idle
    if not allowed:
        return Schedule(threaded=True, split=None, reason="pipeline: the OS does not tell which cores are free")
    if not idle:  # no /proc/stat: only the affinity mask is known
        idle = dict.fromkeys(allowed, 1.0)
    capacity = sum(idle.get(core, 0.0) for core in allowed)
    free = sorted(core for core in allowed if idle.get(core, 0.0) >= FREE_CORE_IDLE)
    load = f"{capacity:.1f} of {len(allowed)} core(s) free"
    if not live and capacity < PIPELINE_MIN_FREE_CORES:
        return Schedule(threaded=False, split=None, reason=f"sequential: {load}")
    if not pin:
        return Schedule(threaded=True, split=None, reason=f"pipeline, not pinned (--pin-threads off): {load}")
    return _pinned_pipeline(interpreter_threads, free, load, lock_dir)


def _pinned_pipeline(interpreter_threads: int, free: list[int], load: str, lock_dir: Path | None) -> Schedule:
    """Pins when ``interpreter_threads`` free cores can be claimed and one more free core is left
    that no other fuselite process holds; otherwise the pipeline runs unpinned."""
    if len(free) <= interpreter_threads:
        return Schedule(threaded=True, split=None, reason=f"pipeline, not pinned: {load}, "
                        f"pinning needs {interpreter_threads + 1} idle cores")
    # Claim every free core first (to learn which ones others hold), then keep what is needed.
    probe = CoreClaim.take(free, len(free), lock_dir)
    unheld = probe.cores
    probe.release()
    held = f"pipeline, not pinned: {load}, but another fuselite process holds the idle cores"
    split = split_cores(interpreter_threads, unheld)  # None: no unheld core left for capture
    if split is None:
        return Schedule(threaded=True, split=None, reason=held)
    claim = CoreClaim.take(sorted(split.inference), interpreter_threads, lock_dir)
    if claim.cores != split.inference:  # lost a race with another run starting
        claim.release()
        return Schedule(threaded=True, split=None, reason=held)
    return Schedule(threaded=True, split=split, claim=claim,
                    reason=f"pipeline: {load}; inference pinned to core(s) {sorted(split.inference)}, "
                    f"capture and outputs to {sorted(split.helpers)}")
