"""The several-camera setup files: a unit that runs the cameras file, and an example cameras
file that `fuselite run --config` accepts as it is written for each board."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from fuselite.devices.profiles import get_profile, list_profiles
from fuselite.devices.setup_files import write_setup_files
from fuselite.runtime.cameras import load_cameras_config

PROFILES = list(list_profiles())


@pytest.fixture
def files(tmp_path, name) -> dict[str, Path]:
    """Every setup file of profile ``name`` (a test parameter), in a temporary folder."""
    return {path.name: path for path in write_setup_files(get_profile(name), tmp_path / name)}


def _service(path: Path) -> configparser.SectionProxy:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str
    unit.read_string(path.read_text())
    return unit["Service"]


@pytest.mark.parametrize("name", PROFILES)
def test_the_cameras_unit_runs_the_cameras_file_like_the_one_camera_unit(files, name):
    cameras, single = (
        _service(files["fuselite-cameras.service"]),
        _service(files["fuselite.service"]),
    )
    command = shlex.split(cameras["ExecStart"])
    assert command == [
        "/opt/fuselite/venv/bin/fuselite",
        "run",
        "--config",
        "/etc/fuselite/cameras.toml",
    ]
    for key in (
        "User",
        "Restart",
        "TimeoutStopSec",
        "SuccessExitStatus",
        "MemoryMax",
        "LimitNOFILE",
        "ReadWritePaths",
        "ProtectSystem",
    ):
        assert cameras[key] == single[key], key
    assert "Conflicts=fuselite.service" in files["fuselite-cameras.service"].read_text()


@pytest.mark.parametrize("name", PROFILES)
def test_the_example_cameras_file_is_a_valid_config_for_the_board(files, name):
    config = load_cameras_config(files["cameras.toml"])
    profile = get_profile(name)
    assert config.threads == profile.threads
    (camera,) = config.cameras
    assert camera.name == "camera1" and camera.annotator.bundle_path == Path(
        "/etc/fuselite/model.tflite"
    )
    assert config.retention.keep_gb == 8 and camera.run.jsonl_rotate_mb == 32


@pytest.mark.parametrize("name", PROFILES[:1])
def test_install_script_installs_the_cameras_unit_and_keeps_an_edited_cameras_file(files, name):
    script = files["install.sh"].read_text()
    assert "for unit in fuselite.service fuselite-cameras.service; do" in script
    assert '[[ -e "$CONFIG_DIR/cameras.toml" ]] || install' in script


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
@pytest.mark.parametrize("name", PROFILES[:1])
def test_systemd_analyze_verifies_the_cameras_unit(files, tmp_path):
    # As install.sh does when FUSELITE_PREFIX moves: point the unit at a prefix that exists here.
    fuselite = tmp_path / "prefix" / "venv" / "bin" / "fuselite"
    fuselite.parent.mkdir(parents=True)
    fuselite.write_text("#!/bin/sh\nexit 0\n")
    fuselite.chmod(0o755)
    unit = tmp_path / "fuselite-cameras.service"
    text = files["fuselite-cameras.service"].read_text()
    unit.write_text(text.replace("/opt/fuselite", str(fuselite.parents[2])))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert str(unit) not in done.stderr, done.stderr


@pytest.mark.parametrize("name", PROFILES[:1])
def test_the_board_gets_mqtt_and_the_example_mqtt_table_is_valid_once_uncommented(files, name, tmp_path):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from fuselite.runtime.mqtt import mqtt_settings_from_table

    # install.sh installs the [mqtt] extra's requirement as pyproject pins it
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    (paho,) = pyproject["project"]["optional-dependencies"]["mqtt"]
    assert f'"$PREFIX/venv/bin/pip" install "{paho}"' in files["install.sh"].read_text()
    # the commented [mqtt] table, uncommented, is a config the runtime accepts
    text = files["cameras.toml"].read_text()
    block = text[text.index("# [mqtt]"):]
    uncommented = "\n".join(line.removeprefix("# ") for line in block.splitlines())
    password = tmp_path / "mqtt.pw"
    password.write_text("secret\n")
    uncommented = uncommented.replace("/etc/fuselite/mqtt.pw", str(password))  # read at start
    edited = tmp_path / "cameras.toml"
    edited.write_text(text[: text.index("# [mqtt]")] + uncommented + "\n")
    settings = mqtt_settings_from_table(load_cameras_config(edited).mqtt)
    assert settings.url == "mqtt://192.168.1.10:1883" and settings.username == "fuselite"


@pytest.mark.parametrize("name", PROFILES[:1])
def test_the_board_gets_ffmpeg_for_decoding_at_the_models_size(files, name):
    # A headless unit's files and streams are decoded by ffmpeg (fuselite run --decode-resize auto).
    lines = files["install.sh"].read_text().splitlines()
    assert "command -v ffmpeg >/dev/null 2>&1 || apt-get install -y --no-install-recommends ffmpeg" in lines
