"""The `fuselite` command line as a user meets it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fuselite.cli import COMMANDS, main


def test_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_works_for_every_subcommand(command: str):
    proc = subprocess.run([sys.executable, "-m", "fuselite.cli", command, "--help"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "usage: fuselite " + command in proc.stdout


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_command_is_one_line_exit_2():
    proc = subprocess.run([sys.executable, "-m", "fuselite.cli", "fly"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "invalid choice" in proc.stderr


@pytest.mark.parametrize("command", ["run", "bench", "devices"])
def test_device_commands_load_no_host_stage(command: str):
    code = (
        "import sys\n"
        "from fuselite.cli import build_parser\n"
        f"build_parser({command!r})\n"
        "print(sorted(m for m in sys.modules if m.startswith(('fuselite.train', 'fuselite.convert', "
        "'tensorflow', 'tf_keras', 'keras'))))\n"
    )
    printed = subprocess.check_output([sys.executable, "-c", code], text=True)
    assert printed.strip() == "[]"
