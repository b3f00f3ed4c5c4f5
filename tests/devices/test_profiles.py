"""Board profiles and their setup files (fuselite.devices.profiles, devices/<profile>/)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from fuselite.devices.compat import list_runtimes
from fuselite.devices.profiles import ARCHITECTURES, CAMERA_BACKENDS, get_profile, list_profiles
from fuselite.devices.verify import CPU_MODELS, EMULATIONS
from fuselite.errors import UserError

PROFILES = list_profiles()
BOARDS = [name for name in PROFILES if name.startswith("raspberry-pi")]


def test_registry_has_the_issue_profiles():
    assert set(PROFILES) >= {
        "raspberry-pi-5", "raspberry-pi-4", "raspberry-pi-zero-2w", "raspberry-pi-32bit", "generic-x86_64",
    }


def test_unknown_profile_fails_listing_the_known_ones():
    with pytest.raises(UserError) as info:
        get_profile("raspberry-pi-6")
    assert all(name in str(info.value) for name in PROFILES)


@pytest.mark.parametrize("name", PROFILES)
def test_profile_fields_are_valid(name):
    p = get_profile(name)
    assert p.name == name and p.title and p.system and p.notes
    assert p.architecture in ARCHITECTURES
    assert re.fullmatch(r"3\.\d+", p.python)
    assert p.runtime in list_runtimes()
    assert p.architecture in p.runtime_spec.architectures
    assert p.threads >= 1 and p.ram_mb >= 256
    assert p.camera_backend in CAMERA_BACKENDS
    assert p.limits.max_bundle_mb > 0 and p.limits.min_fps > 0
    assert 0 < p.limits.max_memory_mb < p.ram_mb
    if p.architecture in EMULATIONS:
        assert p.cpu in CPU_MODELS, "emulated boards need a CPU model for qemu and /proc/cpuinfo"


def test_32bit_board_uses_tflite_runtime_and_the_zero_has_512_mb():
    assert get_profile("raspberry-pi-32bit").runtime == "tflite-runtime-2.14"
    assert "numpy<2" in get_profile("raspberry-pi-32bit").runtime_spec.requirements
    assert get_profile("raspberry-pi-zero-2w").ram_mb == 512
    assert {get_profile(n).runtime for n in ("raspberry-pi-5", "raspberry-pi-4")} == {"ai-edge-litert"}


@pytest.mark.parametrize("name", PROFILES)
def test_setup_files_exist(name):
    for file_name, path in get_profile(name).setup_files().items():
        assert path.is_file(), f"{name} is missing {file_name}"


@pytest.mark.parametrize("name", PROFILES)
def test_install_script_is_valid_bash_and_installs_the_runtime(name):
    profile = get_profile(name)
    script = profile.setup_files()["install.sh"]
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert "set -euo pipefail" in text and f"PROFILE={name}" in text
    for requirement in profile.runtime_spec.requirements:
        assert f'"{requirement}"' in text
    commands = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "[train]" not in commands and "tensorflow" not in commands.lower()


@pytest.mark.parametrize("name", PROFILES)
def test_systemd_unit_restarts_fuselite_run_on_failure(name):
    unit = get_profile(name).setup_files()["fuselite.service"].read_text()
    assert re.search(r"^Restart=on-failure$", unit, re.MULTILINE)
    exec_start = re.search(r"^ExecStart=(.*)$", unit, re.MULTILINE).group(1)
    assert re.match(r"\S*/fuselite run ", exec_start)
    assert "EnvironmentFile=/etc/fuselite/fuselite.env" in unit
    assert "WantedBy=multi-user.target" in unit


def _settings(name: str) -> dict[str, str]:
    text = get_profile(name).setup_files()["fuselite.env"].read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


@pytest.mark.parametrize("name", PROFILES)
def test_example_settings_fill_every_variable_of_the_unit(name):
    unit = get_profile(name).setup_files()["fuselite.service"].read_text()
    used = set(re.findall(r"\$\{?(FUSELITE_\w+)\}?", unit))
    settings = _settings(name)
    assert used <= set(settings)
    assert settings["FUSELITE_THREADS"] == str(get_profile(name).threads)


@pytest.mark.parametrize("name", PROFILES)
def test_unit_command_line_is_accepted_by_fuselite_run(name):
    runtime_cli = pytest.importorskip("fuselite.runtime.cli")
    import argparse

    settings = _settings(name)
    parser = argparse.ArgumentParser(exit_on_error=False)
    runtime_cli.add_arguments(parser)
    args = parser.parse_args([
        "--bundle", settings["FUSELITE_BUNDLE"], "--source", settings["FUSELITE_SOURCE"],
        "--threads", settings["FUSELITE_THREADS"], *settings["FUSELITE_ARGS"].split(),
    ])
    assert args.threads == get_profile(name).threads


def test_devices_never_imports_tensorflow_train_or_convert():
    code = (
        "import sys\n"
        "import fuselite.devices.cli, fuselite.devices.compat, fuselite.devices.profiles\n"
        "import fuselite.devices.verify, fuselite.devices.probe\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras')\n"
        "       or m.startswith(('fuselite.train', 'fuselite.convert'))]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
