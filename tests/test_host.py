"""The machine line every benchmark records beside its figures."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from fuselite.host import cpu_model, machine_description


def test_the_machine_line_names_the_cpu_the_cores_and_python():
    cpuinfo = Path("/proc/cpuinfo").read_text()
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    model = cpu_model()
    if names:
        assert model == names[0]
    else:  # arm64 kernels often print no model name: platform's answer stands in
        assert model
    assert machine_description() == f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"
