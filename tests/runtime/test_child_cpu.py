"""CPU per frame counts the decoder the run started, and only the processes it started."""

from __future__ import annotations

import subprocess
import sys
import time

from fuselite.runtime import stats
from fuselite.runtime.scaled import _kill_keeping_final_cpu

BUSY = [sys.executable, "-c", "while True: pass"]


def _cpu_over(seconds: float) -> float:
    before = stats.process_cpu_s()
    time.sleep(seconds)
    return stats.process_cpu_s() - before


def test_a_child_the_run_did_not_start_is_not_counted():
    # A test runner's servers, or anything else the process happens to have started.
    stranger = subprocess.Popen(BUSY)
    try:
        assert _cpu_over(1.0) < 0.15  # this process sleeps; the stranger burns a core
    finally:
        stranger.kill()
        stranger.wait()


def test_a_registered_decoder_is_counted_while_it_runs_and_after_it_is_stopped():
    decoder = subprocess.Popen(BUSY)
    stats.child_started(decoder.pid)
    try:
        assert _cpu_over(1.0) > 0.2
    finally:
        before_stop = stats.process_cpu_s()
        _kill_keeping_final_cpu(decoder)
        decoder.wait()
    after_stop = stats.process_cpu_s()
    assert after_stop >= before_stop - 0.01  # its CPU stays in the total once reaped
    assert _cpu_over(0.3) < 0.15  # and stops growing


def test_a_decoder_that_ended_by_itself_keeps_its_cpu():
    # FFmpeg exits at the end of a file before the run stops it.
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    decoder = subprocess.Popen([sys.executable, "-c", burn])
    stats.child_started(decoder.pid)
    before = stats.process_cpu_s()
    time.sleep(2.0)  # it has ended, not yet reaped
    _kill_keeping_final_cpu(decoder)
    decoder.wait()
    assert stats.process_cpu_s() - before > 0.1
