"""The load probe: a model's first load happens in a child, whose crash becomes a BundleError.

``runtime/childprobe.py`` runs load + allocate + one invoke in ``sys.executable -c``
before the board's process touches the model.  These tests make the child die on
purpose (a signal, an exit code, a hang) and check the message each becomes, then the
verdict cache (a pass is remembered per model, interpreter and threads; nothing else
is), the off switch, and that the child imports neither TensorFlow nor files from the
working folder.  The real crashes the probe exists for are in
``tests/reliability/test_graph_check.py`` and ``test_real_bundle.py``.
"""

from __future__ import annotations

import json
import logging
import signal

import pytest

from fuselite.bundle import BundleError, read_bundle
from fuselite.interpreter import interpreter_name
from fuselite.runtime import childprobe
from fuselite.runtime.interpreter import TfliteModel

DAMAGED = "the bundle is damaged: re-convert it"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh, empty verdict cache for this test."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("FUSELITE_CACHE_DIR", str(folder))
    monkeypatch.delenv(childprobe.SWITCH_ENV, raising=False)
    return folder / childprobe.CACHE_FOLDER


@pytest.fixture(scope="module")
def model_bytes(fp32_bundle) -> bytes:
    """A real image model that loads."""
    return read_bundle(fp32_bundle).model_bytes


def probe(model: bytes, threads: int = 1, name: str = "image model") -> None:
    interpreter_name()  # imports the interpreter module, as TfliteModel has by then
    childprobe.probe_load(model, interpreter_name(), threads, name)


@pytest.mark.parametrize(
    ("returncode", "stderr", "message"),
    [
        (0, "", None),
        (-signal.SIGSEGV, "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n",
         f"text encoder crashed the interpreter (SIGSEGV) while loading; {DAMAGED}"),
        (-signal.SIGABRT, "INFO: Created ...\ndouble free or corruption (!prev)\n",
         ("text encoder crashed the interpreter (SIGABRT: double free or corruption (!prev)) "
         f"while loading; {DAMAGED}")),
        (-200, "", f"text encoder crashed the interpreter (signal 200) while loading; {DAMAGED}"),
        (3, "Node number 2 (CONV_2D) failed to prepare.\n",
         ("text encoder: the interpreter cannot load it (Node number 2 (CONV_2D) failed to "
         f"prepare.); {DAMAGED}")),
        (1, "Traceback ...\nMemoryError\n",
         f"text encoder made the interpreter's test process fail (exit 1: MemoryError); {DAMAGED}"),
        (None, "", ("text encoder did not load and run once within 30 s in a test process; "
                   f"{DAMAGED}")),
    ],
    ids=["loaded", "sigsegv", "sigabrt-with-glibc-message", "unnamed-signal", "load-error",
         "other-exit", "timeout"],
)
def test_each_way_the_child_ends_maps_to_one_message(returncode, stderr, message):
    assert childprobe.child_problem("text encoder", returncode, stderr) == message


READY = "print('ready', flush=True); import sys; sys.stdin.buffer.read(); "


@pytest.mark.parametrize(
    ("script", "cause"),
    [
        ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "SIGSEGV"),
        ("import os; os.abort()", "SIGABRT"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGBUS)", "SIGBUS"),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "SIGKILL"),
    ],
)
def test_a_child_killed_by_a_signal_is_a_bundle_error_and_is_not_remembered(
    model_bytes, cache, monkeypatch, script, cause
):
    monkeypatch.setattr(childprobe, "PROBE_SCRIPT", READY + script)
    with pytest.raises(BundleError) as caught:
        probe(model_bytes)
    assert str(caught.value).startswith(f"image model crashed the interpreter ({cause}")
    assert str(caught.value).endswith(DAMAGED)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_a_child_that_hangs_is_killed_at_the_timeout(model_bytes, cache, monkeypatch):
    monkeypatch.setattr(childprobe, "PROBE_SCRIPT", READY + "import time; time.sleep(60)")
    monkeypatch.setattr(childprobe, "PROBE_TIMEOUT_S", 0.5)
    with pytest.raises(BundleError, match=r"did not load and run once within 0\.5 s"):
        probe(model_bytes)


def test_a_child_that_exits_with_an_error_is_a_bundle_error(model_bytes, cache, monkeypatch):
    monkeypatch.setattr(childprobe, "PROBE_SCRIPT", READY + "sys.exit('no luck')")
    with pytest.raises(BundleError, match=r"test process fail \(exit 1: no luck\)"):
        probe(model_bytes)


def test_bytes_the_interpreter_refuses_are_its_error_not_a_crash(cache):
    with pytest.raises(BundleError, match=r"^image model: the interpreter cannot load it \("):
        probe(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 40)


def test_a_child_without_the_interpreter_skips_the_probe_with_a_warning(
    model_bytes, cache, caplog
):
    with caplog.at_level(logging.WARNING, logger="fuselite.runtime.childprobe"):
        childprobe.probe_load(model_bytes, "no_such_interpreter_module", 1, "image model")
    assert "load probe skipped" in caplog.text
    assert "cannot import no_such_interpreter_module" in caplog.text
    assert not cache.exists()


@pytest.mark.parametrize(
    "script",
    ["import os; os.abort()", "import sys; sys.exit(1)", "import time; time.sleep(60)"],
    ids=["killed", "failed", "hung"],
)
def test_a_child_that_dies_before_it_reads_the_model_does_not_blame_the_bundle(
    model_bytes, cache, caplog, monkeypatch, script
):
    """E.g. a Python that cannot start here (devices verify's qemu): not the bundle's fault."""
    monkeypatch.setattr(childprobe, "PROBE_SCRIPT", script)
    monkeypatch.setattr(childprobe, "PROBE_TIMEOUT_S", 2.0)
    with caplog.at_level(logging.WARNING, logger="fuselite.runtime.childprobe"):
        probe(model_bytes)
    assert "load probe skipped: the test process did not start the interpreter" in caplog.text
    assert not cache.exists()


def test_a_python_that_cannot_be_started_skips_the_probe(model_bytes, cache, caplog, monkeypatch):
    monkeypatch.setattr(childprobe.sys, "executable", "/nonexistent/python")
    with caplog.at_level(logging.WARNING, logger="fuselite.runtime.childprobe"):
        probe(model_bytes)
    assert "load probe skipped: cannot start /nonexistent/python" in caplog.text


def test_a_model_that_loads_is_probed_once_then_remembered(model_bytes, cache, monkeypatch):
    probe(model_bytes, threads=2)
    (entry,) = cache.iterdir()
    assert len(entry.stem) == 64 and entry.suffix == ".json"
    assert json.loads(entry.read_text())["verdict"] == "loads"
    started = []
    monkeypatch.setattr(childprobe, "run_child", lambda *args: started.append(args))
    probe(model_bytes, threads=2)
    assert started == []
    probe(model_bytes, threads=1)  # other threads: the delegate's setup differs, probe again
    probe(model_bytes + b"\x00", threads=2)  # other bytes
    assert len(started) == 2


def test_a_broken_cache_entry_is_a_miss_and_an_unwritable_cache_no_error(
    model_bytes, cache, tmp_path, monkeypatch
):
    key = childprobe.verdict_key(model_bytes, interpreter_name(), 1)
    cache.mkdir(parents=True)
    (cache / f"{key}.json").write_text('{"verdict": "loa')
    started = []
    monkeypatch.setattr(childprobe, "run_child", lambda *args: started.append(args) or (0, ""))
    probe(model_bytes)
    assert len(started) == 1 and json.loads((cache / f"{key}.json").read_text())["verdict"] == "loads"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FUSELITE_CACHE_DIR", str(blocker))  # mkdir under a file fails
    probe(model_bytes)
    assert len(started) == 2


def test_the_off_switch_skips_the_child(model_bytes, cache, monkeypatch):
    monkeypatch.setenv(childprobe.SWITCH_ENV, "off")
    monkeypatch.setattr(childprobe, "PROBE_SCRIPT", READY + "import os; os.abort()")
    probe(model_bytes)
    assert not cache.exists()


def test_the_child_imports_no_tensorflow_no_fuselite_and_nothing_from_the_working_folder(
    model_bytes, cache, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "numpy.py").write_text("import os; os._exit(9)\n")  # a planted module
    check = (
        "\nheavy = [m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'tf_keras', 'fuselite')]\n"
        "sys.exit(f'imported {heavy}' if heavy else 0)\n"
    )
    monkeypatch.setattr(childprobe, "PROBE_SCRIPT", childprobe.PROBE_SCRIPT + check)
    probe(model_bytes)


def test_tflite_model_probes_with_the_real_loads_interpreter_and_threads(
    model_bytes, monkeypatch
):
    calls = []
    monkeypatch.setattr("fuselite.runtime.interpreter.probe_load",
                        lambda *args: calls.append(args[1:]))
    TfliteModel(model_bytes, num_threads=3, name="image model").close()
    assert calls == [(interpreter_name(), 3, "image model")]


def test_a_crashing_probe_stops_the_load_before_this_process_runs_the_model(
    model_bytes, cache, monkeypatch
):
    monkeypatch.setattr(childprobe, "PROBE_SCRIPT", READY + "import os; os.abort()")
    monkeypatch.setattr("fuselite.runtime.interpreter._load", lambda *a: pytest.fail("loaded"))
    with pytest.raises(BundleError, match="crashed the interpreter"):
        TfliteModel(model_bytes, num_threads=1, name="image model")
