"""``fuselite devices list/show/check/verify`` and the failure messages of verify
(``setup-files``: test_setup_files.py)."""

from __future__ import annotations

import pytest

from fuselite.cli import main
from fuselite.devices.profiles import get_profile, list_profiles
from fuselite.devices.verify import check_mirror, debian_mirror
from fuselite.errors import UserError


def test_list_shows_every_profile(capsys):
    assert main(["devices", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["profile", "arch", "python", "runtime"]
    for name in list_profiles():
        assert name in out


@pytest.mark.parametrize("name", list_profiles())
def test_show_prints_runtime_limits_and_how_to_get_the_setup_files(capsys, name):
    assert main(["devices", "show", name]) == 0
    out = capsys.readouterr().out
    profile = get_profile(name)
    assert out.startswith(f"{name}: {profile.title}")
    assert all(r in out for r in profile.runtime_spec.requirements)
    assert f"bundle <= {profile.limits.max_bundle_mb:g} MB" in out
    assert f"fuselite devices setup-files --device {name} --out DIR" in out


def test_show_unknown_profile_exits_2_listing_the_known_ones(capsys):
    assert main(["devices", "show", "raspberry-pi-6"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "unknown device profile 'raspberry-pi-6'" in err
    assert all(name in err for name in list_profiles())


def test_devices_without_an_action_exits_2(capsys):
    assert main(["devices"]) == 2
    assert "choose an action" in capsys.readouterr().err


def test_check_passes_a_bundle_the_runtime_loads(capsys, handmade_bundle):
    assert main(["devices", "check", "raspberry-pi-32bit", "--bundle", str(handmade_bundle)]) == 0
    out = capsys.readouterr().out
    assert "FULLY_CONNECTED v1" in out and out.rstrip().splitlines()[-1].startswith("PASS")


@pytest.mark.slow
def test_check_fails_a_dynamic_range_bundle_on_the_32bit_board(capsys, op_bundles):
    assert main(["devices", "check", "raspberry-pi-32bit", "--bundle", str(op_bundles["dynamic"])]) == 1
    out = capsys.readouterr().out
    assert "problem: FULLY_CONNECTED v12 needs a newer runtime than tflite-runtime 2.14 (max v10)" in out
    assert out.rstrip().splitlines()[-1].startswith("FAIL")


def test_check_a_broken_bundle_is_a_user_error(capsys, tmp_path):
    broken = tmp_path / "broken.fuselite"
    broken.write_bytes(b"garbage")
    assert main(["devices", "check", "raspberry-pi-5", "--bundle", str(broken)]) == 2
    assert "not a fuselite bundle" in capsys.readouterr().err


def test_verify_without_qemu_says_what_to_install(capsys, handmade_bundle, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # qemu-user-static lives in /usr/bin: not on this PATH
    code = main(["devices", "verify", "raspberry-pi-5", "--bundle", str(handmade_bundle),
                 "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2
    assert "qemu-aarch64-static" in err and "not found" in err
    assert "apt-get install qemu-user-static debootstrap" in err
    assert not (tmp_path / "cache").exists(), "nothing may be built before the tools are there"


def test_verify_of_a_native_profile_is_a_user_error(capsys, handmade_bundle):
    assert main(["devices", "verify", "generic-x86_64", "--bundle", str(handmade_bundle)]) == 2
    assert "nothing to emulate" in capsys.readouterr().err


def test_verify_of_a_missing_bundle_is_a_user_error(capsys, tmp_path):
    assert main(["devices", "verify", "raspberry-pi-5", "--bundle", str(tmp_path / "none.fuselite")]) == 2
    assert "no such bundle file" in capsys.readouterr().err


def test_unreachable_mirror_is_a_clear_message_within_the_timeout():
    # Port 9 on loopback: nothing listens, so the connection is refused at once.
    with pytest.raises(UserError, match=r"cannot reach the Debian mirror http://127\.0\.0\.1:9/debian .*--mirror"):
        check_mirror("http://127.0.0.1:9/debian", "bookworm", timeout=5)


def test_mirror_is_read_from_deb822_and_one_line_apt_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n"
    )
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list").write_text("deb http://other.example/debian bookworm main\n")
    assert debian_mirror(tmp_path) == "http://other.example/debian"
    assert debian_mirror(tmp_path / "nowhere") == "http://deb.debian.org/debian"
