"""`fuselite convert` on the command line: targets, bad input, listings, and a kill -9 mid-write."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from fuselite.bundle import read_bundle
from fuselite.cli import main
from fuselite.convert.export import remove_stale_parts
from fuselite.convert.variants import get_variant

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:distutils Version classes are deprecated:DeprecationWarning"),
]

# Runs `fuselite ...` after making the second bundle write stop halfway and wait to be
# killed: the first bundle is complete, the second one's temp file is half written.
HALF_WRITE = r"""
import os, sys, time
from pathlib import Path

marker, real_fdopen, writes = Path(sys.argv[1]), os.fdopen, []

class HalfThenHang:
    def __init__(self, f): self.f = f
    def __enter__(self): return self
    def __exit__(self, *exc): self.f.close()
    def fileno(self): return self.f.fileno()
    def flush(self): self.f.flush()
    def write(self, data):
        self.f.write(data[: len(data) // 2]); self.f.flush(); os.fsync(self.f.fileno())
        marker.write_text(str(len(data)))
        time.sleep(600)

def fdopen(fd, *args, **kwargs):
    f = real_fdopen(fd, *args, **kwargs)
    name = os.readlink(f"/proc/self/fd/{fd}")
    if ".tflite." in name and name.endswith(".part"):
        writes.append(name)
        if len(writes) == 2:
            return HalfThenHang(f)
    return f

os.fdopen = fdopen
from fuselite.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_target_refuses_a_variant_its_runtime_cannot_load_and_names_op_and_remedy(
    tiny_run, tmp_path, capsys, monkeypatch
):
    from fuselite.devices.compat import get_runtime

    # The tiny run's towers load everywhere; shrink tflite-runtime 2.14's CONV_2D to v4 so
    # that the dynamic-range model (hybrid CONV_2D v5) is one it cannot load.
    monkeypatch.setitem(get_runtime("tflite-runtime-2.14").max_versions, "CONV_2D", 4)
    out = tmp_path / "out"
    code = main(["convert", str(tiny_run), "--out", str(out), "--variants", "fp32", "dynamic",
                 "--target", "raspberry-pi-32bit", "--eval-samples", "40"])
    captured = capsys.readouterr()
    assert code == 2
    error = captured.err.strip().splitlines()[-1]
    assert "dynamic not written" in error and "CONV_2D v5" in error
    assert "use the fp32 or int8 variant" in error and "ai-edge-litert" in error
    assert read_bundle(out / "fp32.tflite").manifest.variant == "fp32"
    assert not (out / "dynamic.tflite").exists()
    assert "refused" in captured.out and "fp32" in captured.out
    report = json.loads((out / "convert-report.json").read_text())
    assert [v["status"] for v in report["variants"]] == ["ok", "refused"]


def test_an_unknown_target_is_refused_before_any_work(tiny_run, tmp_path, capsys):
    assert main(["convert", str(tiny_run), "--out", str(tmp_path), "--target", "pi-9000"]) == 2
    err = capsys.readouterr().err
    assert "unknown --target 'pi-9000'" in err and "raspberry-pi-5" in err and "tflite-runtime-2.14" in err


def test_a_run_missing_pieces_is_named_piece_by_piece(tiny_run, tmp_path, capsys):
    broken = tmp_path / "run"
    shutil.copytree(tiny_run, broken)
    (broken / "scorer.json").unlink()
    (broken / "text_encoder.weights.h5").unlink()
    assert main(["convert", str(broken), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "scorer.json" in err and "text_encoder.weights.h5" in err
    assert not (tmp_path / "out").exists()


def test_a_missing_run_directory_is_a_one_line_error(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_weights_that_do_not_fit_the_config_are_reported(tiny_run, tmp_path, capsys):
    broken = tmp_path / "run"
    shutil.copytree(tiny_run, broken)
    (broken / "image_encoder.weights.h5").write_bytes(b"not hdf5 at all")
    assert main(["convert", str(broken), "--out", str(tmp_path / "out")]) == 2
    assert "weights do not load" in capsys.readouterr().err


def test_list_shows_each_bundle_with_its_size_and_runtimes(converted_tiny_run, capsys):
    folder = converted_tiny_run["fp32"].path.parent
    assert main(["convert", "--list", str(folder)]) == 0
    out = capsys.readouterr().out
    for name in converted_tiny_run:
        assert f"{name}.tflite" in out
    assert "kB" in out and "ai-edge-litert" in out


def test_killing_a_conversion_mid_write_never_leaves_a_partial_bundle(tiny_run, tmp_path):
    out, marker = tmp_path / "out", tmp_path / "second-write-started"
    command = [sys.executable, "-c", HALF_WRITE, str(marker), "convert", str(tiny_run), "--out", str(out),
               "--variants", "fp32", "fp16", "--eval-samples", "40"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 150
        while not marker.exists():
            assert process.poll() is None, "the conversion ended before its second write"
            assert time.monotonic() < deadline, "the second write never started"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    # fp32 was complete and renamed into place; fp16 died halfway, in its temp file.
    assert read_bundle(out / "fp32.tflite").manifest.variant == "fp32"
    assert not (out / "fp16.tflite").exists()
    (part,) = out.glob(".fp16.tflite.*.part")
    assert part.stat().st_size < int(marker.read_text())
    for bundle in out.glob("*.tflite"):
        read_bundle(bundle)  # every file named like a bundle is whole
    remove_stale_parts(out, get_variant("fp16"))  # what the next conversion does first
    assert not part.exists()


def test_stale_temp_files_of_other_variants_are_left_alone(tmp_path):
    mine, other = tmp_path / ".int8.tflite.abc.part", tmp_path / ".fp32.tflite.abc.part"
    mine.write_bytes(b"x")
    other.write_bytes(b"x")
    remove_stale_parts(tmp_path, get_variant("int8"))
    assert not mine.exists() and other.exists()


@pytest.mark.parametrize("argv", [["--sparsity", "1.5"], ["--threads", "0"]])
def test_bad_numeric_options_are_one_line_errors(tiny_run, tmp_path, capsys, argv):
    assert main(["convert", str(tiny_run), "--out", str(tmp_path), *argv]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1

