"""What machine the figures were measured on: one description for every benchmark.

The core count is the host's (``os.cpu_count()``), not the cores this process may
use: a record describes the machine, and the benchmarks print their own thread counts.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_description() -> str:
    """``"<CPU model>, <n> cores, Python <version>"``, for a results table."""
    return f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"
