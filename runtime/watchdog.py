"""The run's watchdog: an invoke that overruns its budget, or a stop that takes too long,
ends the process after its outputs are flushed.

A TFLite ``invoke`` is one native call that Python cannot interrupt: a signal's Python
handler runs on the main thread only between bytecodes, so a model that loops for
minutes on real frames (a data-dependent ``WHILE``; it passes every load-time check,
which runs zeros) also makes SIGTERM and SIGINT wait for minutes.  ai-edge-litert 2.3's
``Interpreter`` offers no cancellation (its wrapper has no cancel call, nor an
``experimental_`` one), so the honest fix is a thread that watches:

* the invoke clock of the model (``TfliteModel.invoke_started``, stamped around each
  invoke: about 0.1 us on the normal path, no thread handoff): an invoke that has run
  longer than its budget gets one log line, the outputs are flushed, and the process
  exits with :data:`EXIT_INVOKE_TIMEOUT` (systemd's ``Restart=on-failure`` restarts it);
* the signals, through :func:`signal.set_wakeup_fd` (the C-level handler writes the
  signal number to a socket even while the main thread is inside native code): after
  the first SIGINT/SIGTERM the run has :data:`STOP_GRACE_S` to finish by itself;
  otherwise, or at once on a second signal, the outputs are flushed and the process
  exits with ``128 + signal`` (the shell's convention).

The flush itself is bounded (:data:`FLUSH_BOUND_S`): a sink that blocks cannot keep
the process alive.

Example:
    >>> with RunWatchdog(bundle_name="model.tflite") as watchdog:
    ...     watchdog.watch(model, invoke_budget(model.load_invoke_s), flush)
    ...     ...  # the run
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

EXIT_INVOKE_TIMEOUT = 124  # as timeout(1): the invoke ran out of time
BUDGET_FACTOR = 50.0  # the budget is this many times the invoke at load...
MIN_BUDGET_S = 2.0  # ...and never less: a busy board can stall a fast model for a second
STOP_GRACE_S = 3.0  # after a signal, the run may take this long to finish by itself
FLUSH_BOUND_S = 5.0  # the flush before a forced exit may take this long
POLL_S = 0.1  # how often the watchdog looks at the invoke clock
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class InvokeTimeout(TimeoutError):
    """A call run by :func:`run_with_deadline` did not finish in time."""


class InvokeClock(Protocol):
    """What the watchdog reads: ``invoke_started``, the monotonic time the invoke in
    progress started (0.0 when none runs), and the model's ``name``."""

    invoke_started: float
    name: str


def invoke_budget(load_invoke_s: float) -> float:
    """The per-frame budget: :data:`BUDGET_FACTOR` times the invoke measured at load, at
    least :data:`MIN_BUDGET_S` (a model's first invoke, on zeros, is warm-up included)."""
    return max(MIN_BUDGET_S, BUDGET_FACTOR * load_invoke_s)


def budget_rule(load_invoke_s: float) -> str:
    """How :func:`invoke_budget` made a budget, e.g. ``50 x the 0.4 ms invoke at load, at least 2 s``."""
    return (f"{BUDGET_FACTOR:g} x the {load_invoke_s * 1000:.1f} ms invoke at load, "
            f"at least {MIN_BUDGET_S:g} s")


def run_with_deadline(function: Callable[..., Any], seconds: float, *args: Any) -> Any:
    """Returns ``function(*args)``, run on a helper thread, or raises :class:`InvokeTimeout`
    after ``seconds``.

    A native invoke cannot be stopped: on a timeout the helper thread keeps running, so
    the caller should give up on that model (and a process that must end, end).  The
    thread costs about 0.1 ms, which is why ``fuselite run`` uses :class:`RunWatchdog`
    instead; this suits one-off calls such as a benchmark's warm-up.
    """
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["value"] = function(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            outcome["error"] = exc

    helper = threading.Thread(target=call, name="deadline", daemon=True)
    helper.start()
    helper.join(seconds)
    if helper.is_alive():
        raise InvokeTimeout(f"{getattr(function, '__name__', 'the call')} did not finish "
                            f"within {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class RunWatchdog:
    """The thread that ends a run whose invoke overruns or whose stop takes too long.

    Use it as a context manager around the run; :meth:`watch` gives it the model, the
    budget (0: no invoke budget) and the flush to call before a forced exit.  The signal
    side works only on the main thread (where Python's signal handlers live) and needs
    Python handlers for SIGINT/SIGTERM installed first; elsewhere only the budget is kept.
    """

    def __init__(self, bundle_name: str, grace_s: float = STOP_GRACE_S) -> None:
        self.bundle_name = bundle_name
        self.grace_s = grace_s
        self._model: InvokeClock | None = None
        self._budget_s = 0.0
        self._budget_rule = ""
        self._flush: Callable[[str], None] | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._reader: socket.socket | None = None
        self._writer: socket.socket | None = None
        self._previous_fd: int | None = None

    def watch(self, model: InvokeClock, budget_s: float, flush: Callable[[str], None],
              budget_rule: str = "") -> None:
        """Starts watching ``model``'s invoke clock; ``flush(stopped_by)`` runs before an exit.

        ``budget_rule`` says where the budget came from, for the log line (see :func:`budget_rule`).
        """
        self._model, self._budget_s, self._flush = model, budget_s, flush
        self._budget_rule = budget_rule

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self._reader, self._writer = socket.socketpair()
            for end in (self._reader, self._writer):
                end.setblocking(False)
            self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        if self._reader is not None:
            signal.set_wakeup_fd(self._previous_fd if self._previous_fd is not None else -1)
            self._reader.close()
            self._writer.close()

    def _run(self) -> None:
        stop_deadline, signum = None, 0
        while not self._done.is_set():
            for number in self._signals(POLL_S):
                if number not in STOP_SIGNALS:
                    continue
                # The first signal starts the grace period; a second one ends it now.
                stop_deadline = time.monotonic() + self.grace_s if not signum else 0.0
                signum = number
            if self._done.is_set():
                return
            if stop_deadline is not None and time.monotonic() >= stop_deadline:
                self._stop_overrun(signum)
            self._check_invoke()

    def _signals(self, timeout: float) -> bytes:
        """The signal numbers that arrived, waiting at most ``timeout`` for one."""
        if self._reader is None:
            self._done.wait(timeout)
            return b""
        readable, _, _ = select.select([self._reader], [], [], timeout)
        if not readable:
            return b""
        with contextlib.suppress(OSError):
            return self._reader.recv(64)
        return b""

    def _check_invoke(self) -> None:
        model = self._model
        if model is None or not self._budget_s:
            return
        started = model.invoke_started
        if started and time.monotonic() - started > self._budget_s:
            self._invoke_overrun(time.monotonic() - started)

    def _invoke_overrun(self, seconds: float) -> None:
        rule = f" ({self._budget_rule})" if self._budget_rule else ""
        log.error(
            "%s of %s: one invoke has run for %.1f s, over its budget of %g s%s: the model "
            "hangs on real frames; re-convert it, or raise the budget with --invoke-timeout "
            "SECONDS (0: off); exiting with code %d",
            self._model.name, self.bundle_name, seconds, self._budget_s, rule, EXIT_INVOKE_TIMEOUT,
        )
        self._exit("invoke_timeout", EXIT_INVOKE_TIMEOUT)

    def _stop_overrun(self, signum: int) -> None:
        name = _signal_name(signum)
        model = self._model
        where = " (an invoke is still running)" if model is not None and model.invoke_started else ""
        log.warning("%s: the run did not finish within %g s%s; flushing the outputs and "
                    "exiting now", name, self.grace_s, where)
        self._exit("signal", 128 + signum)

    def _exit(self, stopped_by: str, code: int) -> None:
        """Flushes what was written (bounded by :data:`FLUSH_BOUND_S`), then ends the process."""
        bound = threading.Timer(FLUSH_BOUND_S, os._exit, (code,))
        bound.daemon = True
        bound.start()
        try:
            if self._flush is not None:
                self._flush(stopped_by)
        except Exception as exc:  # noqa: BLE001 - the exit must happen whatever the sinks do
            log.error("could not flush every output before exiting: %s", exc)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
