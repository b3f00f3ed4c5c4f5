"""A board's setup files rendered from its profile (fuselite.devices.setup_files, ``devices setup-files``).

Every test that takes ``name`` runs for every profile in the registry, so a new
profile JSON is tested for free.
"""

from __future__ import annotations

import argparse
import configparser
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fuselite.cli import main
from fuselite.devices import profiles, setup_files
from fuselite.devices.profiles import CAMERA_BACKENDS, get_profile, list_profiles, python_satisfies
from fuselite.devices.setup_files import (
    SETUP_FILES,
    SOURCES,
    SetupTemplate,
    render,
    write_setup_files,
)
from fuselite.runtime.watchdog import FLUSH_BOUND_S, STOP_GRACE_S

PROFILES = list_profiles()
AS_ROOT = pytest.mark.skipif(
    os.geteuid() != 0, reason="install.sh stops at its root check first; the checks after it need root"
)


@pytest.fixture
def files(tmp_path, name) -> dict[str, Path]:
    """The setup files of profile ``name`` (a test parameter), written into a temporary folder."""
    paths = write_setup_files(get_profile(name), tmp_path / name)
    return {path.name: path for path in paths}


by_profile = pytest.mark.parametrize("name", PROFILES)


def _unit(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True, empty_lines_in_values=False)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string(path.read_text(), source=str(path))
    return unit


def _assert_bash_syntax(script: Path) -> None:
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


def _settings(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


# --- rendering ---------------------------------------------------------------------


def test_every_placeholder_of_the_templates_has_a_value_and_every_value_a_placeholder():
    used = set()
    for kind in SETUP_FILES:
        text = (setup_files.TEMPLATES_DIR / f"{kind}.in").read_text()
        used |= {m.group("braced") for m in SetupTemplate.pattern.finditer(text) if m.group("braced")}
    for name in PROFILES:
        assert set(setup_files.template_values(get_profile(name))) == used


def test_every_camera_backend_has_a_default_source():
    assert set(SOURCES) == set(CAMERA_BACKENDS)


@pytest.mark.parametrize("name", PROFILES)
@pytest.mark.parametrize("kind", SETUP_FILES)
def test_rendered_files_name_the_profile_and_leave_no_placeholder(name, kind):
    text = render(get_profile(name), kind)
    assert "@{" not in text and name in text and text.endswith("\n")


def test_an_unknown_setup_file_kind_is_refused_listing_the_known_ones():
    with pytest.raises(ValueError, match="unknown setup file 'run.sh'; known: install.sh, fuselite.service"):
        render(get_profile("raspberry-pi-5"), "run.sh")


# --- install.sh --------------------------------------------------------------------


@by_profile
def test_install_script_is_valid_bash_and_installs_the_runtime(files, name):
    profile = get_profile(name)
    script = files["install.sh"]
    _assert_bash_syntax(script)
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text and f"PROFILE={profile.name}\n" in text
    for requirement in profile.runtime_spec.requirements:
        assert f'"{requirement}"' in text
    commands = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "[train]" not in commands and "tensorflow" not in commands.lower()


@by_profile
def test_install_script_python_check_accepts_exactly_the_runtime_python_range(files, name):
    spec = get_profile(name).runtime_spec
    code = re.search(r"^python3 -c '(.*)' \\$", files["install.sh"].read_text(), re.MULTILINE).group(1)
    done = subprocess.run([sys.executable, "-c", code], timeout=30, check=False)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert done.returncode == (0 if python_satisfies(here, spec.python) else 1)


def _stub(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def _run_install(script: Path, tmp_path: Path, *, dpkg: str, machine: str) -> subprocess.CompletedProcess:
    """Runs install.sh with stub dpkg, uname and python3 (Python 3.0) as the only commands on PATH.

    Every case stops at a check; were one to pass, the next command (apt-get,
    useradd, ...) is not on PATH, so nothing is ever installed.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    _stub(bin_dir / "dpkg", f"echo {dpkg}")
    _stub(bin_dir / "uname", f"echo {machine}")
    _stub(bin_dir / "python3", 'if [ "$1" = -V ]; then echo "Python 3.0.0"; exit 0; fi; exit 1')
    if not (bin_dir / "dirname").exists():
        (bin_dir / "dirname").symlink_to(shutil.which("dirname"))
    env = {"PATH": str(bin_dir), "FUSELITE_PREFIX": str(tmp_path / "opt"), "FUSELITE_CONFIG_DIR": str(tmp_path / "etc")}
    return subprocess.run([shutil.which("bash"), str(script)], env=env, capture_output=True, text=True,
                          timeout=30, check=False)


@AS_ROOT
@pytest.mark.parametrize("name", PROFILES)
def test_install_script_refuses_another_architecture_a_foreign_kernel_and_an_old_python(tmp_path, name):
    profile = get_profile(name)
    other = "s390x"
    script = write_setup_files(profile, tmp_path / name)[0]

    wrong_system = _run_install(script, tmp_path, dpkg=other, machine=profile.architecture)
    assert wrong_system.returncode == 2
    assert f"packages are {other}, the {name} profile is for {profile.debian_architecture}" in wrong_system.stderr

    wrong_kernel = _run_install(script, tmp_path, dpkg=profile.debian_architecture, machine=other)
    assert wrong_kernel.returncode == 2
    assert f"this machine is {other}, the {name} profile is for {profile.architecture}" in wrong_kernel.stderr
    assert profile.kernel_hint in wrong_kernel.stderr

    old_python = _run_install(script, tmp_path, dpkg=profile.debian_architecture, machine=profile.architecture)
    assert old_python.returncode == 2
    assert f"needs Python {profile.runtime_spec.python}" in old_python.stderr
    assert "found Python 3.0.0" in old_python.stderr
    assert not (tmp_path / "opt").exists() and not (tmp_path / "etc").exists()


@AS_ROOT
def test_a_32bit_system_under_a_64bit_kernel_is_told_to_boot_the_32bit_kernel(tmp_path):
    script = write_setup_files(get_profile("raspberry-pi-32bit"), tmp_path / "pi")[0]
    done = _run_install(script, tmp_path, dpkg="armhf", machine="aarch64")
    assert done.returncode == 2 and "add arm_64bit=0 to /boot/firmware/config.txt" in done.stderr


@AS_ROOT
def test_profile_texts_reach_the_script_as_plain_text_never_as_shell(tmp_path):
    hint = 'say "$(touch pwned)" `touch pwned` \\ $HOME'
    profile = dataclasses.replace(get_profile("raspberry-pi-5"), kernel_hint=hint, title="a\nb")
    script = write_setup_files(profile, tmp_path / "pi")[0]
    done = _run_install(script, tmp_path, dpkg="arm64", machine="s390x")
    assert done.returncode == 2 and hint in done.stderr
    assert not list(tmp_path.rglob("pwned"))


# --- fuselite.service --------------------------------------------------------------


@by_profile
def test_systemd_unit_has_its_sections_and_runs_fuselite_run(files, name):
    profile = get_profile(name)
    unit = _unit(files["fuselite.service"])
    assert unit.sections() == ["Unit", "Service", "Install"]
    service = unit["Service"]
    assert re.match(r"/opt/fuselite/venv/bin/fuselite run ", service["ExecStart"])
    assert service["Restart"] == "on-failure" and service["User"] == "fuselite"
    assert service["EnvironmentFile"] == "/etc/fuselite/fuselite.env"
    assert service["MemoryMax"] == f"{round(2 * profile.limits.max_memory_mb)}M"
    assert service["LimitNOFILE"] == "4096"  # not systemd's 1024: previews take descriptors
    assert profile.name in unit["Unit"]["Description"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


@by_profile
def test_systemd_waits_for_the_runs_own_stop_bound_before_its_sigkill(files, name):
    service = _unit(files["fuselite.service"])["Service"]
    # The watchdog ends a run mid-invoke within the grace period plus the bounded flush.
    assert float(service["TimeoutStopSec"]) >= STOP_GRACE_S + FLUSH_BOUND_S + 5
    assert "143" in service["SuccessExitStatus"].split()  # 128 + SIGTERM: a stop, not a failure
    assert "--invoke-timeout ${FUSELITE_INVOKE_TIMEOUT}" in service["ExecStart"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
@by_profile
def test_systemd_analyze_verifies_the_unit(files, tmp_path):
    # As install.sh does when FUSELITE_PREFIX moves: point the unit at a prefix that exists here.
    fuselite = tmp_path / "prefix" / "venv" / "bin" / "fuselite"
    fuselite.parent.mkdir(parents=True)
    _stub(fuselite, "exit 0")
    unit = tmp_path / "fuselite.service"
    unit.write_text(files["fuselite.service"].read_text().replace("/opt/fuselite", str(fuselite.parents[2])))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert str(unit) not in done.stderr, done.stderr  # no "Unknown key" or parse warnings


# --- fuselite.env ------------------------------------------------------------------


@by_profile
def test_settings_fill_every_variable_of_the_unit_with_the_profile_values(files, name):
    profile = get_profile(name)
    used = set(re.findall(r"\$\{?(FUSELITE_\w+)\}?", files["fuselite.service"].read_text()))
    settings = _settings(files["fuselite.env"])
    assert used <= set(settings)
    assert settings["FUSELITE_THREADS"] == str(profile.threads)
    assert settings["FUSELITE_SOURCE"] == SOURCES[profile.camera_backend][1]
    assert settings["FUSELITE_BUNDLE"] == "/etc/fuselite/model.tflite"


def _exec_start_arguments(service: Path, env: Path) -> list[str]:
    """The arguments after ``fuselite run`` of the unit's ExecStart, expanded as systemd
    does from the settings file: ``${X}`` is one argument, ``$X`` splits on spaces."""
    settings = _settings(env)
    words = []
    for word in _unit(service)["Service"]["ExecStart"].split()[2:]:
        if match := re.fullmatch(r"\$\{(\w+)\}", word):
            words.append(settings[match[1]])
        elif match := re.fullmatch(r"\$(\w+)", word):
            words += settings[match[1]].split()
        else:
            words.append(word)
    return words


@by_profile
def test_unit_command_line_is_accepted_by_fuselite_run(files, name):
    runtime_cli = pytest.importorskip("fuselite.runtime.cli")
    parser = argparse.ArgumentParser(exit_on_error=False)
    runtime_cli.add_arguments(parser)
    args = parser.parse_args(_exec_start_arguments(files["fuselite.service"], files["fuselite.env"]))
    assert args.threads == get_profile(name).threads
    assert args.invoke_timeout is None  # auto: the budget comes from the invoke at load
    _, run_options = runtime_cli._build_options(args)
    assert run_options.invoke_timeout is None


# --- writing and the CLI -----------------------------------------------------------


@pytest.mark.parametrize("name", PROFILES)
def test_cli_writes_the_three_files_with_their_modes(capsys, tmp_path, name):
    out = tmp_path / "board"
    assert main(["devices", "setup-files", "--device", name, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(SETUP_FILES)
    for kind, mode in SETUP_FILES.items():
        assert (out / kind).stat().st_mode & 0o777 == mode
        assert (out / kind).read_text() == render(get_profile(name), kind)
    assert "sudo ./board/install.sh" in capsys.readouterr().out


def test_cli_writes_into_a_folder_named_after_the_device_by_default(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(["devices", "setup-files", "--device", "raspberry-pi-5"]) == 0
    assert (tmp_path / "raspberry-pi-5" / "install.sh").is_file()


def test_cli_unknown_device_exits_2_in_one_line_listing_the_known_ones(capsys, tmp_path):
    assert main(["devices", "setup-files", "--device", "raspberry-pi-6", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "unknown device profile 'raspberry-pi-6'" in err and all(name in err for name in PROFILES)
    assert not (tmp_path / "x").exists()


def test_cli_out_that_is_a_file_exits_2(capsys, tmp_path):
    (tmp_path / "taken").write_text("")
    assert main(["devices", "setup-files", "--device", "raspberry-pi-5", "--out", str(tmp_path / "taken")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_rewriting_replaces_the_files_and_leaves_no_temporary_ones(tmp_path):
    (tmp_path / "install.sh").write_text("old")
    (tmp_path / "model.tflite").write_bytes(b"mine")
    write_setup_files(get_profile("raspberry-pi-4"), tmp_path)
    assert (tmp_path / "install.sh").read_text() == render(get_profile("raspberry-pi-4"), "install.sh")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*SETUP_FILES, "model.tflite"])


def test_a_failing_render_writes_nothing(monkeypatch, tmp_path):
    real = setup_files.render

    def render_or_fail(profile, kind):
        if kind == "fuselite.env":
            raise RuntimeError("broken template")
        return real(profile, kind)

    monkeypatch.setattr(setup_files, "render", render_or_fail)
    with pytest.raises(RuntimeError):
        write_setup_files(get_profile("raspberry-pi-4"), tmp_path / "board")
    assert not (tmp_path / "board").exists()


@pytest.fixture
def registry_with_a_new_board(monkeypatch, tmp_path) -> str:
    """A profiles folder holding the shipped profiles plus ``my-board.json``, and nothing else changed."""
    folder = tmp_path / "profiles"
    shutil.copytree(profiles.PROFILES_DIR, folder)
    data = json.loads((folder / "raspberry-pi-zero-2w.json").read_text())
    data.update(name="my-board", title="A new board", threads=3, ram_mb=1024, camera_backend="v4l2")
    (folder / "my-board.json").write_text(json.dumps(data))
    monkeypatch.setattr(profiles, "PROFILES_DIR", folder)
    profiles._profiles.cache_clear()
    yield "my-board"
    profiles._profiles.cache_clear()


def test_adding_a_board_is_one_json_file(registry_with_a_new_board, tmp_path):
    name = registry_with_a_new_board
    assert name in list_profiles()
    out = tmp_path / "out"
    assert main(["devices", "setup-files", "--device", name, "--out", str(out)]) == 0
    _assert_bash_syntax(out / "install.sh")
    assert "PROFILE=my-board\n" in (out / "install.sh").read_text()
    assert _unit(out / "fuselite.service")["Unit"]["Description"].endswith("(my-board)")
    assert _settings(out / "fuselite.env")["FUSELITE_THREADS"] == "3"
    assert _settings(out / "fuselite.env")["FUSELITE_SOURCE"] == "0"
