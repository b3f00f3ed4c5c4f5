"""Loads a model once in a child process, so that a crash in the interpreter kills the child.

The static graph check (``runtime/graphcheck.py``) cannot see everything: under
ai-edge-litert 2.3's XNNPACK delegate, a float32 activation re-declared int8
corrupts the heap, and glibc only notices when the memory is freed ("double free
or corruption", SIGABRT); kernels may have bugs no check knows of.  So before the
real load, :func:`probe_load` does the same load in a child,
``sys.executable -S -c PROBE_SCRIPT`` with this process's import path, the model
bytes on stdin: the same interpreter module and thread count (hence the same
default delegates), allocate, one invoke on zeros, then the interpreter is deleted
while the child still runs, so that glibc's heap checks run.  A child killed by a
signal, or one that fails, after it has said "ready" (imports done, model not yet
read) becomes one :class:`BundleError`; the board's process never runs the model
first.  A child that cannot even start the interpreter (no ``fork``, a Python that
cannot run here, as under ``devices verify``'s qemu) is not the bundle's fault: the
probe is skipped with a warning and the load goes on as it did before the probe.

A child costs about 0.15 s (Python, numpy and the interpreter start).  A model that
passed is remembered: one small file per sha256 of the model bytes, interpreter
build and thread count under ``load-probe/`` in ``$FUSELITE_CACHE_DIR``, else
``$XDG_CACHE_HOME/fuselite``, else ``~/.cache/fuselite``, written atomically.
Failures are never remembered, so a child killed by something else (the OOM
killer, a timeout on a busy board) costs one more probe, not a refused bundle
forever.  ``FUSELITE_LOAD_PROBE=off`` skips the probe (a board that only runs
bundles it built itself, and cannot spare the cold start).

Example:
    >>> probe_load(bundle.model_bytes, "ai_edge_litert.interpreter", 2, "image model")
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fuselite.bundle import BundleError
from fuselite.files import cache_root

log = logging.getLogger(__name__)

SWITCH_ENV = "FUSELITE_LOAD_PROBE"  # "off" (or 0, no, false) skips the probe
OFF_VALUES = ("0", "off", "no", "false")
PROBE_TIMEOUT_S = 30.0  # generous for a small model on a Pi Zero; a hang is a failure too
LOAD_ERROR_EXIT = 3  # the interpreter raised: the child prints the error's first line
READY = b"ready"  # the child's first line on stdout: imports done, the model comes next
CACHE_FOLDER = "load-probe"

# The child imports only the interpreter and numpy (never TensorFlow, never fuselite),
# from the import path it is given: the parent's, without the working folder.  It does
# not choose an interpreter: it imports by name the module that the parent's
# fuselite.interpreter chose (the one place that picks ai_edge_litert or tflite_runtime),
# so both run the same build.  It cannot import fuselite.interpreter itself: under -S an
# editable install's import hook (a .pth file) is never run, and every import costs
# start-up time on a board.
PROBE_SCRIPT = r"""
import sys
module, threads, sys.path[:] = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
import gc, importlib
try:
    import numpy as np
    Interpreter = importlib.import_module(module).Interpreter
except ImportError as exc:
    print(f"cannot import {module}: {exc}", file=sys.stderr)
    sys.exit(1)
print("ready", flush=True)  # from here on, whatever happens is the model's doing
model = sys.stdin.buffer.read()
try:
    interpreter = Interpreter(model_content=model, num_threads=threads)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    interpreter.invoke()
except Exception as exc:
    text = str(exc).strip()
    print(text.splitlines()[0] if text else type(exc).__name__, file=sys.stderr)
    sys.exit(3)
# Free the interpreter (and what a delegate allocated) while the child still runs:
# glibc checks the heap on free, so a corrupted heap aborts here, not in the board's process.
del interpreter
gc.collect()
print("loaded", flush=True)
"""


def probe_load(model_bytes: bytes, interpreter_module: str, num_threads: int, name: str) -> None:
    """Loads, allocates and invokes the model once in a child process.

    Raises:
        BundleError: the child was killed by a signal, failed, or timed out.
    """
    if os.environ.get(SWITCH_ENV, "").strip().lower() in OFF_VALUES:
        return
    key = verdict_key(model_bytes, interpreter_module, num_threads)
    if remembered(key):
        return
    started = time.monotonic()
    outcome = run_child(model_bytes, interpreter_module, num_threads)
    if outcome is None:  # the probe itself could not run; the load goes on unprotected
        return
    problem = child_problem(name, *outcome)
    if problem:
        raise BundleError(problem)
    log.debug("%s passed the load probe in %.2f s", name, time.monotonic() - started)
    remember(key, interpreter_module, num_threads)


def run_child(model_bytes: bytes, interpreter_module: str,
              num_threads: int) -> tuple[int | None, str] | None:
    """``(returncode, stderr)`` of the probe child (returncode None: it timed out), or
    None when the child never got as far as reading the model."""
    cwd = os.getcwd()
    path = [p for p in sys.path if p and p != "." and p != cwd]  # never import from the cwd
    # -S: the path above is the whole import path (and startup is quicker without site).
    command = [sys.executable, "-S", "-c", PROBE_SCRIPT, interpreter_module, str(num_threads),
               *path]
    # glibc writes its fatal messages to the terminal unless told to use stderr.
    env = dict(os.environ, LIBC_FATAL_STDERR_="1")
    try:
        done = subprocess.run(command, input=model_bytes, capture_output=True, env=env,
                              timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:  # run() has killed and reaped the child
        returncode, stdout, stderr = None, exc.stdout or b"", exc.stderr or b""
    except OSError as exc:  # e.g. no memory to fork, or a Python that cannot run here
        log.warning("load probe skipped: cannot start %s (%s)", sys.executable, exc)
        return None
    else:
        returncode, stdout, stderr = done.returncode, done.stdout, done.stderr
    text = stderr.decode("utf-8", "replace")
    if READY not in stdout.splitlines():
        log.warning("load probe skipped: the test process did not start the interpreter (%s)",
                    _last_line(text) or f"exit {returncode}")
        return None
    return returncode, text


def child_problem(name: str, returncode: int | None, stderr: str) -> str | None:
    """The error message for how the probe child of model ``name`` ended (None: it loaded).

    A negative return code is the signal that killed the child (subprocess's convention),
    e.g. "text encoder crashed the interpreter (SIGSEGV) while loading; ...".
    """
    damaged = "the bundle is damaged: re-convert it"
    if returncode == 0:
        return None
    if returncode is None:
        return (f"{name} did not load and run once within {PROBE_TIMEOUT_S:g} s in a test "
                f"process; {damaged}")
    detail = _last_line(stderr)
    if returncode < 0:
        cause = signal_name(-returncode) + (f": {detail}" if detail else "")
        return f"{name} crashed the interpreter ({cause}) while loading; {damaged}"
    if returncode == LOAD_ERROR_EXIT:
        return f"{name}: the interpreter cannot load it ({detail}); {damaged}"
    return f"{name} made the interpreter's test process fail (exit {returncode}: {detail}); {damaged}"


def signal_name(number: int) -> str:
    """``SIGSEGV`` for 11; ``signal 99`` for a number with no name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _last_line(stderr: str) -> str:
    """The child's last message line, without the interpreter's INFO chatter, shortened."""
    lines = [line.strip() for line in stderr.splitlines()
             if line.strip() and not line.startswith(("INFO:", "WARNING:"))]
    return lines[-1][:160] if lines else ""


# --- the verdict cache ---------------------------------------------------------------------


def cache_dir() -> Path | None:
    """Where verdicts live; None when there is no home to put them in."""
    root = cache_root()
    return None if root is None else root / CACHE_FOLDER


def verdict_key(model_bytes: bytes, interpreter_module: str, num_threads: int) -> str:
    """A hex digest of the model bytes, the interpreter build and the threads.

    The interpreter's file (path, size, modification time) stands for its version:
    an upgrade rewrites it, and its crashes are that build's, so verdicts do not carry over.
    """
    path = getattr(sys.modules.get(interpreter_module), "__file__", None)
    try:
        stat = os.stat(path) if path else None
    except OSError:
        stat = None
    build = f"{path}:{stat.st_size}:{stat.st_mtime_ns}" if stat else ""
    digest = hashlib.sha256(model_bytes).hexdigest()
    return hashlib.sha256(f"{digest}|{interpreter_module}|{build}|{num_threads}".encode()).hexdigest()


def remembered(key: str) -> bool:
    """Whether a model with this key passed the probe before (a broken entry is a miss)."""
    folder = cache_dir()
    if folder is None:
        return False
    try:
        entry = json.loads((folder / f"{key}.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(entry, dict) and entry.get("verdict") == "loads"


def remember(key: str, interpreter_module: str, num_threads: int) -> None:
    """Writes the pass verdict; a cache that cannot be written only costs another probe."""
    folder = cache_dir()
    if folder is None:
        return
    entry = {"verdict": "loads", "interpreter": interpreter_module, "threads": num_threads,
             "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, part = tempfile.mkstemp(dir=folder, prefix=".", suffix=".part")
    except OSError as exc:
        log.debug("load probe verdict not cached in %s: %s", folder, exc)
        return
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(entry, file)
        os.replace(part, folder / f"{key}.json")  # atomic: readers see all of it or nothing
    except OSError as exc:
        log.debug("load probe verdict not cached in %s: %s", folder, exc)
        with contextlib.suppress(OSError):
            os.unlink(part)
