"""Keeping the interpreter's cores for it: CPU affinity of the pipeline's threads (Linux).

When the process may run on more cores than the interpreter has threads, the
inference thread is confined to ``num_threads`` cores and the capture and outputs
threads to the others.  Left to the scheduler, the helpers now and then land on the
inference thread's core and it waits its turn: 1.4-2.4 % of its time on this 2-core
VM (``/proc/self/task/TID/schedstat``), 0.0-0.4 % once pinned.  The inference cores
are the last ones: Linux and the Raspberry Pi route most interrupts to core 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)


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
