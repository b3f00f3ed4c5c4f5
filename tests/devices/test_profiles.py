"""Board profiles (fuselite.devices.profiles): the registry and the checks on each JSON file."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from fuselite.devices.compat import list_runtimes
from fuselite.devices.profiles import (
    ARCHITECTURES,
    CAMERA_BACKENDS,
    DEBIAN_ARCHITECTURES,
    PROFILES_DIR,
    get_profile,
    list_profiles,
    load_profile,
    python_clauses,
    python_satisfies,
)
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
    assert python_satisfies(p.python, p.runtime_spec.python)
    assert p.debian_architecture == DEBIAN_ARCHITECTURES[p.architecture]
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


def _write_profile(folder, **changes):
    data = {**json.loads((PROFILES_DIR / "raspberry-pi-4.json").read_text()), **changes}
    path = folder / f"{data['name']}.json"
    path.write_text(json.dumps(data))
    return path


def test_a_profile_json_in_any_folder_loads(tmp_path):
    profile = load_profile(_write_profile(tmp_path, name="my-board", kernel_hint="use the 64-bit OS"))
    assert profile.name == "my-board" and profile.kernel_hint == "use the 64-bit OS"
    assert profile.debian_architecture == "arm64"


@pytest.mark.parametrize(("changes", "message"), [
    ({"name": "Other Board"}, "does not match the file name"),
    ({"architecture": "riscv64"}, "architecture must be one of"),
    ({"camera_backend": "csi"}, "camera_backend must be one of"),
    ({"threads": 0}, "threads must be"),
    ({"ram_mb": 256}, "limits.max_memory_mb must be"),
    ({"architecture": "armv7l"}, "ai-edge-litert 2.x has no armv7l wheels"),
    ({"python": "3.9"}, "ai-edge-litert 2.x has no wheels for Python 3.9"),
    ({"colour": "red"}, "invalid profile"),
])
def test_a_bad_profile_fails_naming_the_file_and_the_field(tmp_path, changes, message):
    path = _write_profile(tmp_path, **changes)
    if "name" in changes:
        path = path.rename(tmp_path / "other-board.json")
    with pytest.raises(ValueError, match=message) as info:
        load_profile(path)
    assert str(info.value).startswith(f"{path.name}: ")


@pytest.mark.parametrize(("version", "spec", "expected"), [
    ("3.11", ">=3.10,<3.15", True), ("3.9", ">=3.10,<3.15", False), ("3.15", ">=3.10,<3.15", False),
    ("3.11", ">=3.8,<3.12", True), ("3.12", ">=3.8,<3.12", False), ("3.11", "==3.11", True),
])
def test_python_ranges_compare_major_minor(version, spec, expected):
    assert python_satisfies(version, spec) is expected


def test_a_malformed_python_range_is_refused():
    with pytest.raises(ValueError, match="is not like '>=3.10'"):
        python_clauses(">=3.10,~=2.7")


def test_devices_never_imports_tensorflow_train_or_convert():
    code = (
        "import sys\n"
        "import fuselite.devices.cli, fuselite.devices.compat, fuselite.devices.profiles\n"
        "import fuselite.devices.verify, fuselite.devices.probe, fuselite.devices.setup_files\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras')\n"
        "       or m.startswith(('fuselite.train', 'fuselite.convert'))]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
