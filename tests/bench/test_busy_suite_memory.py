"""The busy-board suite's peak memory is the measured child's own, not the benchmark's."""

from __future__ import annotations

import sys

from fuselite.bench.busy_suite import _finish, _start
from fuselite.bench.measure import peak_memory_mb


def python_child(script: str) -> float:
    return _finish(_start([sys.executable, "-c", script]))[1]


def test_a_small_child_reports_its_own_peak_not_the_forking_benchmarks():
    # The old reading (wait4's ru_maxrss) carried this process's pre-exec peak into every child.
    ballast = b"x" * (100 * 2**20)  # written, so resident: the benchmark is surely larger
    assert peak_memory_mb() > 100
    assert python_child("import time; time.sleep(0.3)") < 40
    del ballast


def test_a_child_that_holds_memory_reports_it():
    held = python_child("import time; block = bytearray(120 * 2**20); time.sleep(0.5)")
    assert 120 <= held < 200


def test_the_programs_a_child_starts_count_in_its_peak():
    # fuselite run's ffmpeg decoder is memory the board pays for too.
    script = (
        "import subprocess, sys, time\n"
        "grandchild = subprocess.Popen([sys.executable, '-c', "
        "'import time; block = b\"x\" * (80 * 2**20); time.sleep(1.0)'])\n"
        "time.sleep(0.8); grandchild.wait()\n"
    )
    assert python_child(script) >= 80
