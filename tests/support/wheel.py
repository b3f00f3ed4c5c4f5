"""A wheel of this checkout installed into a fresh venv, as a user installs it."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from support import REPO


def install_wheel(out: Path) -> tuple[Path, Path]:
    """Builds a wheel of this checkout into ``out`` and installs it into ``out/venv``.

    Returns ``(python, site_packages)`` of that venv.  Its dependencies (numpy, OpenCV,
    the interpreter) are not reinstalled: :func:`installed_env` lends the test venv's.
    """
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True, timeout=300,
    )
    env_dir = out / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    wheel = next(out.glob("fuselite-*.whl"))
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300)
    site = Path(subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    return python, site


def installed_env(site: Path) -> dict[str, str]:
    """Environment for the installed wheel's venv: the test venv's packages on PYTHONPATH.

    Only ``.pth`` files of real site folders run, so the test venv's editable finder
    (which maps ``fuselite`` to this checkout) stays off; numpy, OpenCV and the
    interpreter come from there, ``fuselite`` from the wheel.
    """
    return {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
